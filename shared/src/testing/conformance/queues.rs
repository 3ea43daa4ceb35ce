//! The durable queues: jobs come back whole.

use super::*;

/// A copy job with every field of Replicate's prediction that survives `CopyJob::new` set.
pub(super) fn full_copy_job() -> CopyJob {
    let remote = Prediction {
        id: format!("conformance-{}", unique()),
        model: "black-forest-labs/flux-schnell".to_owned(),
        version: Some("a".repeat(64)),
        input: Map::from_iter([("prompt".to_owned(), json!("dropped by CopyJob::new"))]),
        output: vec![
            "https://replicate.delivery/xezq/abc/out-0.webp".to_owned(),
            "https://replicate.delivery/xezq/abc/out-1.webp".to_owned(),
        ],
        error: Some("a warning ünïcödé".to_owned()),
        logs: Some("dropped by CopyJob::new".to_owned()),
        status: PredictionStatus::Succeeded,
        data_removed: false,
        created_at: Some("2025-01-01T00:00:00.123Z".to_owned()),
        started_at: Some("2025-01-01T00:00:01.5Z".to_owned()),
        completed_at: Some("2025-01-01T00:00:02.000000Z".to_owned()),
        urls: PredictionUrls {
            get: Some("https://api.replicate.com/v1/predictions/x".to_owned()),
            cancel: Some("https://api.replicate.com/v1/predictions/x/cancel".to_owned()),
            web: Some("https://replicate.com/p/x".to_owned()),
            stream: None,
        },
        metrics: metrics(1.5, ("image_count", json!(2))),
        deadline: Some("2025-01-01T01:00:00Z".to_owned()),
    };
    CopyJob::new(PredictionId::generate(), &remote)
}

pub(super) fn bare_copy_job() -> CopyJob {
    let remote = Prediction {
        id: format!("conformance-{}", unique()),
        model: String::new(),
        version: None,
        input: Map::new(),
        output: Vec::new(),
        error: None,
        logs: None,
        status: PredictionStatus::Succeeded,
        data_removed: true,
        created_at: None,
        started_at: None,
        completed_at: None,
        urls: PredictionUrls::default(),
        metrics: Metrics::default(),
        deadline: None,
    };
    CopyJob::new(PredictionId::generate(), &remote)
}

/// `send_copy` queues jobs that come back whole. `receive` takes what the queue holds now
/// (possibly not everything yet, as SQS may); it is called until the jobs are back.
pub async fn copy_queue_suite<Q, F, Fut>(queue: &Q, mut receive: F)
where
    Q: JobQueue,
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<CopyJob>>,
{
    let sent = [full_copy_job(), bare_copy_job(), full_copy_job()];
    assert!(sent[0].remote.input.is_empty() && sent[0].remote.logs.is_none());
    for job in &sent {
        queue
            .send_copy(job)
            .await
            .unwrap_or_else(|e| panic!("send_copy {}: {e}", job.prediction_id));
    }
    let mut pending: HashMap<PredictionId, &CopyJob> = sent
        .iter()
        .map(|job| (job.prediction_id.clone(), job))
        .collect();
    for _ in 0..50 {
        if pending.is_empty() {
            break;
        }
        for job in receive().await {
            // Jobs of other runs sharing the queue are not this suite's business.
            if let Some(expected) = pending.remove(&job.prediction_id) {
                assert_eq!(&job, expected, "send_copy: the job comes back as sent");
            } else {
                assert!(
                    !sent.iter().any(|s| s.prediction_id == job.prediction_id),
                    "send_copy: job {} came back twice",
                    job.prediction_id
                );
            }
        }
    }
    assert!(
        pending.is_empty(),
        "send_copy: jobs never came back: {:?}",
        pending.keys().collect::<Vec<_>>()
    );
}

/// Callback jobs come back as sent, from the callback queue and from its dead-letter queue.
pub async fn callback_queue_suite<Q, F, Fut>(queue: &Q, mut receive: F)
where
    Q: JobQueue,
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Vec<CallbackJob>>,
{
    let job = CallbackJob {
        prediction_id: PredictionId::generate(),
        event: CallbackEvent::Completed,
        queued_at: NOW,
    };
    queue.send_callback(&job).await.expect("send_callback");
    let dead = CallbackJob {
        event: CallbackEvent::Start,
        ..job.clone()
    };
    queue
        .dead_letter_callback(&dead)
        .await
        .expect("dead_letter_callback");
    for (dead_letter, expected) in [(false, &job), (true, &dead)] {
        let mut found = false;
        for _ in 0..20 {
            if receive(dead_letter)
                .await
                .iter()
                .any(|received| received == expected)
            {
                found = true;
                break;
            }
        }
        assert!(
            found,
            "{}: the job comes back as sent",
            if dead_letter {
                "dead_letter_callback"
            } else {
                "send_callback"
            }
        );
    }
}
