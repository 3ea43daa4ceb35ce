//! The API's OpenAPI 3.1 document (`shared/openapi.json`): it names exactly the routes
//! `template.yaml` deploys, its schemas compile, it is served without a key, and every
//! route's answers on moto and the simulator conform to it (statuses and bodies).

use std::collections::BTreeSet;

use integration_tests::contract::OpenApi;
use integration_tests::{Stack, noise_png_sized};
use local_stack::sam::Template;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[test]
fn the_document_names_exactly_the_routes_the_template_deploys() {
    let doc = OpenApi::get().document();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(move |method| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let template = Template::parse(local_stack::stack::gateway::TEMPLATE).unwrap();
    let deployed: BTreeSet<(String, String)> = template
        .functions
        .iter()
        .flat_map(|f| f.routes.iter().cloned())
        .collect();
    assert_eq!(documented, deployed);
}

#[test]
fn every_schema_compiles_and_every_reference_resolves() {
    let doc = OpenApi::get().document();
    let mut references = Vec::new();
    collect_refs(doc, &mut references);
    assert!(!references.is_empty());
    for reference in references {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference} is not a component schema"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{reference} resolves"
        );
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        let root = json!({"$ref": format!("#/components/schemas/{name}"), "components": doc["components"]});
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The checker fails what the document does not say.
    let api = OpenApi::get();
    assert!(
        api.check("GET", "/v1/usage", 418, None, &Value::Null)
            .is_err()
    );
    assert!(
        api.check(
            "GET",
            "/v1/usage",
            200,
            Some("application/json"),
            &json!({"tenant": "t"})
        )
        .is_err()
    );
    assert!(
        api.check("GET", "/v1/elsewhere", 200, None, &Value::Null)
            .is_err()
    );
}

fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                into.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

/// Sends a request and checks the answer against the document (for its method and path).
async fn conforming(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let (client, request) = request.build_split();
    let request = request.expect("a request");
    let (method, path) = (
        request.method().to_string(),
        request.url().path().to_owned(),
    );
    let response = client.execute(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    OpenApi::get().assert_conforms(
        &method,
        &path,
        status.as_u16(),
        content_type.as_deref(),
        &body,
    );
    (status, body)
}

#[tokio::test]
async fn every_route_answers_within_the_document() {
    // Through the binaries: what API Gateway and lambda_http make of each answer counts.
    let stack = Stack::start_binaries_with(|_| {}).await;
    let base = &stack.base;
    let (status, served) = conforming(stack.plain.get(format!("{base}/openapi.json"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &served,
        OpenApi::get().document(),
        "served as it is in the repository"
    );

    // Submit: 202, 200 from cache, 400, 401, 404, 422 (fields, Cancel-After, key reuse).
    let body = json!({"model": "flux-schnell", "input": {"prompt": "documented"}});
    let (status, created) = stack.submit(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = created["id"].as_str().unwrap().to_owned();
    let done = stack.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(stack.submit(&body).await.0, StatusCode::OK);
    let url = format!("{base}/v1/predictions");
    for (request, expected) in [
        (
            stack.http.post(&url).body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (stack.plain.post(&url).json(&body), StatusCode::UNAUTHORIZED),
        (
            stack
                .http
                .post(&url)
                .json(&json!({"model": "nope", "input": {}})),
            StatusCode::NOT_FOUND,
        ),
        (
            stack
                .http
                .post(&url)
                .json(&json!({"model": "flux-schnell", "input": {"prompt": 3}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            stack
                .http
                .post(&url)
                .header("cancel-after", "3s")
                .json(&body),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            stack.http.post(&url).json(
                &json!({"model": "flux-schnell", "input": {"prompt": "x"}, "webhook": "http://x"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(conforming(request).await.0, expected);
    }
    // Fetch, list, cancel, usage, secret, uploads.
    let (status, _) = conforming(stack.http.get(format!("{base}/v1/predictions/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        conforming(stack.http.get(format!("{base}/v1/predictions/{unknown}")))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    for query in ["limit=1", "limit=0", "cursor=%%%"] {
        conforming(stack.http.get(format!("{base}/v1/predictions?{query}"))).await;
    }
    assert_eq!(
        conforming(
            stack
                .http
                .post(format!("{base}/v1/predictions/{id}/cancel"))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        conforming(stack.http.get(format!("{base}/v1/usage")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        conforming(stack.http.get(format!("{base}/v1/webhooks/secret")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        conforming(stack.plain.get(format!("{base}/v1/webhooks/secret")))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let image = noise_png_sized(8, 8);
    for (body, expected) in [
        (
            json!({"content_type": "image/png", "size": image.len()}),
            StatusCode::CREATED,
        ),
        (
            json!({"content_type": "image/gif", "size": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, _) =
            conforming(stack.http.post(format!("{base}/v1/uploads")).json(&body)).await;
        assert_eq!(status, expected);
    }
    // The webhook: unsigned and malformed deliveries.
    let (status, _) = conforming(
        stack
            .plain
            .post(format!("{base}/webhooks/replicate?id={id}&token=x"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
