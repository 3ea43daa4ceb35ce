//! The simulator over HTTP: the list route, and the faults that lose or delay a create's
//! answer while its prediction really exists.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::answers::too_large;
use super::faults::Markers;
use super::lifecycle::SimPrediction;
use super::{Faults, SimConfig, Simulator, lock};
use crate::http_server::{Server, bind_loopback, serve};

const SDXL: &str = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc";

async fn start(faults: Faults) -> Simulator {
    Simulator::start(SimConfig {
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = http().get(url).bearer_auth("t").send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn create_request(
    sim: &Simulator,
    client: &reqwest::Client,
    body: Value,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/predictions", sim.api_base()))
        .bearer_auth("t")
        .json(&body)
}

fn small(prompt: &str) -> Value {
    json!({"version": SDXL, "input": {"prompt": prompt, "width": 64, "height": 64}})
}

/// A prediction put straight into the simulator's store (it does not run).
fn stored(sim: &Simulator, id: &str, created_at: SystemTime) {
    let prediction = SimPrediction {
        id: id.to_owned(),
        model: "stability-ai/sdxl".to_owned(),
        version: Some(SDXL.to_owned()),
        input: Map::from_iter([("prompt".to_owned(), json!(id))]),
        output: Value::Null,
        error: None,
        status: "starting",
        created_at,
        started_at: None,
        completed_at: None,
        webhook: Some("https://example.com/hook".to_owned()),
        events: Vec::new(),
        behaviour: Markers::default(),
    };
    lock(&sim.state.predictions).insert(id.to_owned(), prediction);
}

/// Every page from `first`, following `next`: the ids in order, and how many pages.
async fn list_all(first: String) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut url) = (Vec::new(), 0, Some(first));
    while let Some(page_url) = url {
        let (status, page) = get_json(&page_url).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["previous"], Value::Null);
        pages += 1;
        for listed in page["results"].as_array().unwrap() {
            assert!(listed.get("webhook").is_none(), "the list never shows it");
            ids.push(listed["id"].as_str().unwrap().to_owned());
        }
        url = page["next"].as_str().map(str::to_owned);
    }
    (ids, pages)
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Receives webhooks: the bodies posted to it.
struct Receiver {
    server: Server,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
        let listener = bind_loopback(0).await.unwrap();
        let server = serve(listener, 1 << 20, too_large, move |request| {
            let sink = sink.clone();
            async move {
                if let Ok(body) = serde_json::from_slice(request.body()) {
                    lock(&sink).push(body);
                }
                http::Response::new(Bytes::new())
            }
        });
        Self { server, bodies }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.server.addr)
    }

    async fn wait_for_status(&self, id: &str, status: &str) {
        let started = Instant::now();
        while !lock(&self.bodies)
            .iter()
            .any(|b| b["id"] == id && b["status"] == status)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no {status} webhook"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn the_list_is_newest_first_windowed_and_paged() {
    let sim = start(Faults::default()).await;
    let t0 = humantime::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
    // Three predictions a second, so equal `created_at`s straddle a page boundary.
    let ids: Vec<String> = (0..330).map(|i| format!("p{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        stored(&sim, id, t0 + Duration::from_secs(i as u64 / 3));
    }
    let after = t0 + Duration::from_secs(10);
    let before = t0 + Duration::from_secs(100);
    let first = format!(
        "{}/predictions?created_after={}&created_before={}",
        sim.api_base(),
        iso(after),
        iso(before)
    );
    let (listed, pages) = list_all(first).await;
    let expected: Vec<String> = ids[30..300].iter().rev().cloned().collect();
    assert_eq!(
        listed, expected,
        "[after, before), newest first, ties by id"
    );
    assert_eq!(pages, 3);

    // A prediction created between two pages shifts nothing.
    let (_, page) = get_json(&format!("{}/predictions", sim.api_base())).await;
    let next = page["next"].as_str().unwrap().to_owned();
    assert!(next.starts_with(&format!("{}/predictions?cursor=", sim.api_base())));
    stored(&sim, "newest", t0 + Duration::from_secs(3600));
    let (rest, _) = list_all(next).await;
    assert_eq!(rest, ids[..230].iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(sim.stats().lists, 7);
}

#[tokio::test]
async fn list_results_are_the_get_view_and_bad_filters_are_400() {
    let sim = start(Faults::default()).await;
    let client = http();
    let created: Value = create_request(&sim, &client, small("listed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let (_, page) = get_json(&format!("{}/predictions", sim.api_base())).await;
    let listed = &page["results"][0];
    let (_, fetched) = get_json(&format!("{}/predictions/{id}", sim.api_base())).await;
    // The prediction may move on between the two reads; compare where it cannot.
    for field in ["id", "model", "version", "input", "created_at", "urls"] {
        assert_eq!(listed[field], fetched[field], "{field}");
    }
    for bad in [
        "created_after=yesterday",
        "created_before=2025-01-01T00:00:00%2B25:00",
    ] {
        let (status, problem) = get_json(&format!("{}/predictions?{bad}", sim.api_base())).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("ISO 8601"));
    }
    let (_, web) = get_json(&format!("{}/predictions?source=web", sim.api_base())).await;
    assert_eq!(web["results"], json!([]));
}

#[tokio::test]
async fn a_lost_create_answer_still_creates_runs_and_lists_the_prediction() {
    let sim = start(Faults {
        create_lost: 1.0,
        ..Faults::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let before = SystemTime::now();
    let mut body = small("lost answer");
    body["webhook"] = json!(receiver.url());
    let response = create_request(&sim, &http(), body).send().await.unwrap();
    assert!(
        matches!(response.status().as_u16(), 502 | 504),
        "{}",
        response.status()
    );
    assert!(serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).is_err());
    let all = sim.predictions();
    assert_eq!(all.len(), 1, "created although the answer was lost");
    let id = all[0]["id"].as_str().unwrap();
    let window = format!(
        "{}/predictions?created_after={}&created_before={}",
        sim.api_base(),
        iso(before - Duration::from_millis(1)),
        iso(SystemTime::now() + Duration::from_secs(1))
    );
    let (listed, _) = list_all(window).await;
    assert_eq!(listed, vec![id.to_owned()]);
    receiver.wait_for_status(id, "succeeded").await;
    let stats = sim.stats();
    assert_eq!((stats.creates, stats.lost_creates), (1, 1));
}

#[tokio::test]
async fn a_slow_create_answer_comes_after_the_prediction_exists() {
    let sim = start(Faults {
        create_slow: 1.0,
        create_slow_ms: 500,
        ..Faults::default()
    })
    .await;
    let started = Instant::now();
    let pending = tokio::spawn(create_request(&sim, &http(), small("slow answer")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.predictions().len(), 1, "created before the answer");
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A caller that gives up first has created the prediction all the same.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = create_request(&sim, &impatient, small("given up"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(sim.predictions().len(), 2);
    assert_eq!(sim.stats().slow_creates, 2);
}

#[tokio::test]
async fn without_their_probability_the_new_faults_change_nothing() {
    let defaults: Faults = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, Faults::default());
    assert_eq!(defaults.create_slow_ms, 11_000);
    let sim = start(defaults).await;
    let started = Instant::now();
    let response = create_request(&sim, &http(), small("plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = sim.stats();
    assert_eq!((stats.lost_creates, stats.slow_creates), (0, 0));
}
