//! Uploads end to end on moto and the simulator, through the function binaries: a slot, a PUT of a few megabytes to S3,
//! img2img naming `upload://<id>`, and the model receiving those bytes exactly; every kind
//! of bad reference refused for its own field before anything is created.

use integration_tests::{Stack, client_with_key, hex_sha256, noise_png, noise_png_sized};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn error_fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap_or_default().to_owned(),
                        e["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_uploaded_image_of_a_few_megabytes_reaches_the_model_byte_for_byte() {
    let stack = Stack::start_binaries_with(|_| {}).await;
    let image = noise_png(3 * 1024 * 1024);
    assert!(image.len() > 3_000_000, "{}", image.len());
    let (status, slot) = stack
        .upload_slot(&stack.http, "image/png", image.len())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{slot}");
    let id = slot["id"].as_str().unwrap();
    assert_eq!(slot["ref"], format!("upload://{id}"));
    assert_eq!(slot["method"], "PUT");
    assert_eq!(slot["headers"]["content-type"], "image/png");
    assert_eq!(slot["headers"]["content-length"], image.len().to_string());
    assert!(slot["expires_at"].as_str().is_some());
    assert!(stack.put_upload(&slot, image.clone()).await.is_success());

    let reference = slot["ref"].as_str().unwrap();
    let (status, submitted) = stack
        .submit(&json!({"model": "sdxl-img2img", "input": {"prompt": "a lighthouse", "image": reference}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert_eq!(
        submitted["input"]["image"], reference,
        "the prediction shows the reference, not a URL"
    );
    let id = submitted["id"].as_str().unwrap();
    let done = stack.wait_terminal(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let replicate_id = stack.replicate_id(id).await;
    let received = stack.sim.input_files(&replicate_id);
    assert_eq!(
        received.get("image"),
        Some(&(hex_sha256(&image), image.len())),
        "the model fetched exactly the uploaded bytes"
    );
    // Replicate got a presigned URL of the verified copy, never of the slot itself.
    let sent = stack.sim.prediction(&replicate_id).unwrap()["input"]["image"].clone();
    let sent = sent.as_str().unwrap();
    assert!(
        sent.contains(&format!("/inputs/{}", hex_sha256(&image))),
        "{sent}"
    );

    // The same upload again is answered from the cache (keyed by content).
    let (status, again) = stack
        .submit(&json!({"model": "sdxl-img2img", "input": {"prompt": "a lighthouse", "image": reference}}))
        .await;
    assert_eq!(
        (status, again["cached"].as_bool()),
        (StatusCode::OK, Some(true))
    );
}

#[tokio::test]
async fn every_bad_upload_reference_is_refused_for_its_field_before_anything_is_created() {
    let stack = Stack::start_binaries_with(|_| {}).await;
    let good = stack.uploaded("image/png", noise_png_sized(64, 64)).await;

    // Not uploaded yet; larger than declared; not an image; another type than declared;
    // another tenant's; unknown; malformed.
    let (_, empty_slot) = stack.upload_slot(&stack.http, "image/png", 1000).await;
    let not_uploaded = empty_slot["ref"].as_str().unwrap().to_owned();
    let (_, big_slot) = stack.upload_slot(&stack.http, "image/png", 100).await;
    // moto does not hold the PUT to its signed length (S3 does): the check at submit must.
    assert!(
        stack
            .put_upload(&big_slot, noise_png_sized(64, 64))
            .await
            .is_success()
    );
    let too_large = big_slot["ref"].as_str().unwrap().to_owned();
    let text = b"this is not an image, whatever the slot says".to_vec();
    let (_, text_slot) = stack
        .upload_slot(&stack.http, "image/png", text.len())
        .await;
    assert!(stack.put_upload(&text_slot, text).await.is_success());
    let not_an_image = text_slot["ref"].as_str().unwrap().to_owned();
    let png = noise_png_sized(32, 32);
    let (_, jpeg_slot) = stack
        .upload_slot(&stack.http, "image/jpeg", png.len())
        .await;
    assert!(stack.put_upload(&jpeg_slot, png).await.is_success());
    let wrong_type = jpeg_slot["ref"].as_str().unwrap().to_owned();
    let other = client_with_key(&stack.new_key("uploads-other", 60, None).await);
    let (status, other_slot) = stack.upload_slot(&other, "image/png", 2000).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        stack
            .put_upload(&other_slot, noise_png_sized(16, 16))
            .await
            .is_success()
    );
    let theirs = other_slot["ref"].as_str().unwrap().to_owned();

    let created_before = stack.sim.predictions().len();
    let cases: [(&str, &str, &str); 6] = [
        (&not_uploaded, "input.image", "not been uploaded"),
        (
            &too_large,
            "input.image",
            "larger than the 100 bytes declared",
        ),
        (&not_an_image, "input.image", "not a PNG, JPEG or WebP"),
        (&wrong_type, "input.image", "not the image/jpeg declared"),
        (&theirs, "input.image", "no upload of yours"),
        (
            "upload://0123456789abcdef0123456789abcdef",
            "input.image",
            "no upload of yours",
        ),
    ];
    for (reference, field, message) in cases {
        let (status, problem) = stack
            .submit(&json!({"model": "sdxl-img2img", "input": {"prompt": "x", "image": reference}}))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{reference}: {problem}"
        );
        let errors = error_fields(&problem);
        assert_eq!(errors.len(), 1, "{problem}");
        assert_eq!(errors[0].0, field);
        assert!(errors[0].1.contains(message), "{reference}: {problem}");
    }
    let (status, problem) = stack
        .submit(
            &json!({"model": "sdxl-img2img", "input": {"prompt": "x", "image": "upload://../etc"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(error_fields(&problem)[0].0, "input.image");

    // Two image fields: only the bad one is named; the good upload is fine.
    let (status, problem) = stack
        .submit(&json!({"model": "sd-inpainting", "input": {
            "prompt": "x", "image": good, "mask": not_uploaded}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let fields: Vec<String> = error_fields(&problem).into_iter().map(|e| e.0).collect();
    assert_eq!(fields, ["input.mask"]);

    // Real-ESRGAN takes at most ~2.1 MP: a 2000×1100 upload is refused before Replicate.
    let huge = stack
        .uploaded("image/png", noise_png_sized(2000, 1100))
        .await;
    let (status, problem) = stack
        .submit(&json!({"model": "real-esrgan", "input": {"image": huge}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        error_fields(&problem)[0]
            .1
            .contains("at most 2096704 pixels"),
        "{problem}"
    );

    assert_eq!(
        stack.sim.predictions().len(),
        created_before,
        "nothing was created at Replicate"
    );

    // Slot requests are checked too.
    for body in [
        json!({"content_type": "image/gif", "size": 10}),
        json!({"content_type": "image/png", "size": 20 * 1024 * 1024 + 1}),
    ] {
        let response = stack
            .http
            .post(format!("{}/v1/uploads", stack.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }
    let response = stack
        .plain
        .post(format!("{}/v1/uploads", stack.base))
        .json(&json!({"content_type": "image/png", "size": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
