//! The SAM template against the code: each function is given every environment variable
//! its code needs (and none it does not read), and exactly the AWS actions its handler
//! calls: no fewer (it would fail in AWS) and no more (least privilege).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use imagegen_shared::app::App;
use imagegen_shared::aws::iam_actions;
use imagegen_shared::bootstrap::{TokenSource, boot_config};
use imagegen_shared::config::Settings;
use imagegen_shared::memory::{
    FakeReplicate, MemoryObjects, MemoryRecords, MemorySource, Recorded,
};
use imagegen_shared::outputs::PART_SIZE;
use imagegen_shared::record::{Claim, PredictionId};
use imagegen_shared::registry::ModelRegistry;
use imagegen_shared::replicate::{PredictionStatus, ReplicateError};
use imagegen_shared::webhook::WebhookSecret;
use lambda_http::Body;
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

const FUNCTIONS: [(&str, Handler); 4] = [
    ("SubmitFunction", Handler::Submit),
    ("WebhookFunction", Handler::Webhook),
    ("FetchResultFunction", Handler::Fetch),
    ("ReconcilerFunction", Handler::Reconcile),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Submit,
    Webhook,
    Fetch,
    Reconcile,
}

// ---- reading the template ----

fn template() -> Yaml {
    let text = include_str!("../../template.yaml");
    YamlLoader::load_from_str(text)
        .expect("template.yaml is YAML")
        .remove(0)
}

fn as_strings(node: &Yaml) -> Vec<String> {
    match node {
        Yaml::String(s) => vec![s.clone()],
        Yaml::Array(items) => items.iter().flat_map(as_strings).collect(),
        _ => Vec::new(),
    }
}

/// A template value as the function would see it. With tags dropped by the YAML reader,
/// `!Ref Param` reads as `Param`: it takes the parameter's default; `!Ref Resource` stays
/// the logical id (a name); a conditional `!If [...]` reads as not set.
fn resolve(template: &Yaml, value: &Yaml) -> Option<String> {
    let parameters = &template["Parameters"];
    match value {
        Yaml::String(s) => match &parameters[s.as_str()]["Default"] {
            Yaml::String(d) => Some(d.clone()),
            Yaml::Integer(n) => Some(n.to_string()),
            Yaml::BadValue => Some(s.clone()),
            other => panic!("unexpected default {other:?}"),
        },
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Array(_) => None,
        other => panic!("unexpected environment value {other:?}"),
    }
}

/// The environment a function gets: Globals plus its own.
fn environment(template: &Yaml, function: &str) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for variables in [
        &template["Globals"]["Function"]["Environment"]["Variables"],
        &template["Resources"][function]["Properties"]["Environment"]["Variables"],
    ] {
        if let Yaml::Hash(map) = variables {
            for (name, value) in map {
                env.insert(
                    name.as_str().expect("variable name").to_owned(),
                    resolve(template, value),
                );
            }
        }
    }
    env
}

/// The actions a function's policies allow, each with the resources it is allowed on.
fn allowed_actions(template: &Yaml, function: &str) -> BTreeMap<String, Vec<String>> {
    let mut actions = BTreeMap::new();
    let policies = &template["Resources"][function]["Properties"]["Policies"];
    for policy in policies.as_vec().expect("inline policies") {
        for statement in policy["Statement"].as_vec().expect("statements") {
            assert_eq!(statement["Effect"].as_str(), Some("Allow"));
            let resources = as_strings(&statement["Resource"]);
            for action in as_strings(&statement["Action"]) {
                actions.insert(action, resources.clone());
            }
        }
    }
    actions
}

// ---- what the code reads and calls ----

/// The variables `boot_config` reads, given the template's environment; fails if it lacks
/// one the code needs.
fn variables_read(env: &BTreeMap<String, Option<String>>) -> BTreeSet<String> {
    let read = Mutex::new(BTreeSet::new());
    let config = boot_config(|name| {
        read.lock().unwrap().insert(name.to_owned());
        env.get(name).cloned().flatten()
    })
    .unwrap_or_else(|e| panic!("the template's environment does not configure the function: {e}"));
    assert!(
        matches!(config.token, TokenSource::Parameter(_)),
        "in AWS the token must come from SSM, not a plain environment value"
    );
    read.into_inner().unwrap()
}

/// The in-memory ports, with every storage call written down.
struct Recording;

impl imagegen_shared::app::Ports for Recording {
    type Replicate = FakeReplicate;
    type Records = Recorded<MemoryRecords>;
    type Objects = Recorded<MemoryObjects>;
    type Downloads = MemorySource;
}

type RecordingApp = App<Recording>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SMALL: &str = "https://replicate.delivery/small.png";
const LARGE: &str = "https://replicate.delivery/large.png";

struct Scenario {
    app: RecordingApp,
    calls: Arc<Mutex<Vec<&'static str>>>,
    by_handler: BTreeMap<&'static str, BTreeSet<&'static str>>,
}

fn png(len: usize) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    bytes.resize(len, 3);
    bytes
}

impl Scenario {
    fn new() -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let settings = Settings::from_lookup(|name| match name {
            "TABLE_NAME" | "BUCKET_NAME" => Some("x".into()),
            "REPLICATE_WEBHOOK_SECRET" => Some(SECRET.into()),
            _ => None,
        })
        .unwrap();
        let source = MemorySource::default();
        source.insert(SMALL, png(100));
        source.insert(LARGE, png(PART_SIZE + 10));
        let app = App::new(
            FakeReplicate::default(),
            Recorded::new(MemoryRecords::default(), calls.clone()),
            Recorded::new(MemoryObjects::default(), calls.clone()),
            source,
            ModelRegistry::shipped().unwrap(),
            settings,
        );
        Self {
            app,
            calls,
            by_handler: BTreeMap::new(),
        }
    }

    /// Runs one handler and files the port calls it made under its name.
    async fn run(&mut self, handler: Handler, request: lambda_http::Request) -> (u16, Value) {
        self.calls.lock().unwrap().clear();
        let response = match handler {
            Handler::Submit => self.app.submit(request).await,
            Handler::Webhook => self.app.webhook(request).await,
            Handler::Fetch => self.app.fetch(request).await,
            Handler::Reconcile => {
                let report = self.app.reconcile().await.expect("reconcile");
                lambda_http::Response::new(Body::Text(serde_json::to_string(&report).unwrap()))
            }
        };
        let name = format!("{handler:?}").leak();
        self.by_handler
            .entry(name)
            .or_default()
            .extend(self.calls.lock().unwrap().iter().copied());
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null),
        )
    }

    async fn submit(&mut self, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("/v1/predictions")
            .header("host", "api.example.com");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.run(
            Handler::Submit,
            builder.body(Body::Text(body.to_string())).unwrap(),
        )
        .await
    }

    async fn webhook(
        &mut self,
        id: &str,
        replicate_id: &str,
        status: PredictionStatus,
        output: &str,
    ) -> (u16, Value) {
        let outputs = if status == PredictionStatus::Succeeded {
            vec![output.to_owned()]
        } else {
            vec![]
        };
        let body = serde_json::to_string(&FakeReplicate::prediction(replicate_id, status, outputs))
            .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signature = WebhookSecret::parse(SECRET)
            .unwrap()
            .sign("msg_1", now, body.as_bytes());
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("/webhooks/replicate?id={id}"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(Body::Text(body))
            .unwrap();
        self.run(Handler::Webhook, request).await
    }

    async fn reconcile(&mut self) -> Value {
        self.run(Handler::Reconcile, http::Request::new(Body::Empty))
            .await
            .1
    }

    async fn fetch(&mut self, id: &str) -> (u16, Value) {
        let request = http::Request::builder()
            .uri(format!("/v1/predictions/{id}"))
            .body(Body::Empty)
            .unwrap();
        self.run(Handler::Fetch, request).await
    }
}

fn prompt(p: &str) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": p}})
}

/// Drives every path of every handler and returns the port calls each made.
async fn port_calls_by_handler() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut s = Scenario::new();
    // Submit: create; join in flight; no-cache; idempotent create, replay and mismatch.
    let (status, first) = s.submit(prompt("a"), &[]).await;
    assert_eq!(status, 202);
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(s.submit(prompt("a"), &[]).await.0, 202);
    assert_eq!(
        s.submit(prompt("a"), &[("cache-control", "no-cache")])
            .await
            .0,
        202
    );
    assert_eq!(
        s.submit(prompt("b"), &[("idempotency-key", "k1")]).await.0,
        202
    );
    assert_eq!(
        s.submit(prompt("b"), &[("idempotency-key", "k1")]).await.0,
        200
    );
    assert_eq!(
        s.submit(prompt("c"), &[("idempotency-key", "k1")]).await.0,
        422
    );
    // Submit: Replicate throttles; the claim is released and the record removed.
    s.app.replicate.fail_next_create(ReplicateError::Throttled {
        retry_after: None,
        attempts: 4,
    });
    assert_eq!(s.submit(prompt("d"), &[]).await.0, 429);

    // Webhook: processing, then succeeded with a small output; submit then serves the cache.
    assert_eq!(
        s.webhook(&first_id, "rep-1", PredictionStatus::Processing, SMALL)
            .await
            .1["result"],
        "applied"
    );
    assert_eq!(
        s.webhook(&first_id, "rep-1", PredictionStatus::Succeeded, SMALL)
            .await
            .1["result"],
        "applied"
    );
    let (status, cached) = s.submit(prompt("a"), &[]).await;
    assert_eq!((status, cached["cached"].clone()), (200, json!(true)));

    // Webhook: a large output whose upload fails midway (aborted), then succeeds in parts.
    let (_, large) = s.submit(prompt("large"), &[]).await;
    let large_id = large["id"].as_str().unwrap().to_owned();
    let rep = s.app.replicate.created().len();
    s.app.objects.inner.fail_next_puts(3);
    assert_eq!(
        s.webhook(
            &large_id,
            &format!("rep-{rep}"),
            PredictionStatus::Succeeded,
            LARGE
        )
        .await
        .0,
        500
    );
    assert_eq!(
        s.webhook(
            &large_id,
            &format!("rep-{rep}"),
            PredictionStatus::Succeeded,
            LARGE
        )
        .await
        .0,
        200
    );

    // Webhook: a failure frees the cache key; submit then takes the key over.
    let (_, doomed) = s.submit(prompt("doomed"), &[]).await;
    let doomed_id = doomed["id"].as_str().unwrap().to_owned();
    let rep = s.app.replicate.created().len();
    s.webhook(
        &doomed_id,
        &format!("rep-{rep}"),
        PredictionStatus::Failed,
        SMALL,
    )
    .await;
    // The claim still points at the failed prediction, as after a lost cache update.
    let alias = s.app.registry.get("flux-schnell").unwrap().clone();
    let key = format!(
        "cache#{}",
        alias
            .cache_key(&alias.validate(&prompt("doomed")["input"]).unwrap())
            .as_str()
    );
    s.app.records.inner.put_claim(Claim {
        key,
        token: "old".into(),
        prediction_id: Some(PredictionId::parse(&doomed_id).unwrap()),
        request_hash: None,
        lease_until: u64::MAX,
        expires_at: 0,
    });
    let (status, retried) = s.submit(prompt("doomed"), &[]).await;
    assert_eq!(status, 202);
    assert_ne!(
        retried["id"].as_str(),
        Some(doomed_id.as_str()),
        "a failed prediction is taken over"
    );

    // Fetch: a lost webhook synced (processing, then succeeded with outputs in parts after a
    // failed attempt, then a failure), and a never-confirmed create given up.
    for (p, output, status) in [
        ("sync ok", LARGE, PredictionStatus::Succeeded),
        ("sync failed", SMALL, PredictionStatus::Failed),
    ] {
        let (_, body) = s.submit(prompt(p), &[]).await;
        let id = body["id"].as_str().unwrap().to_owned();
        let rep = format!("rep-{}", s.app.replicate.created().len());
        s.app.replicate.set_prediction(FakeReplicate::prediction(
            &rep,
            PredictionStatus::Processing,
            vec![],
        ));
        assert_eq!(s.fetch(&id).await.1["status"], "processing");
        let outputs = if status == PredictionStatus::Succeeded {
            vec![output.to_owned()]
        } else {
            vec![]
        };
        s.app
            .replicate
            .set_prediction(FakeReplicate::prediction(&rep, status.clone(), outputs));
        s.app.clock.advance(std::time::Duration::from_secs(10));
        if status == PredictionStatus::Succeeded {
            s.app.objects.inner.fail_next_puts(3);
            assert_eq!(
                s.fetch(&id).await.1["status"],
                "processing",
                "the failed upload is retried later"
            );
            s.app.clock.advance(std::time::Duration::from_secs(10));
        }
        assert_eq!(s.fetch(&id).await.1["status"], status.as_str());
    }
    // Reconciler: lost webhooks, nobody fetching: a success stored in parts after a failed
    // upload, a failure, and a create never confirmed.
    for (p, status) in [
        ("recon ok", PredictionStatus::Succeeded),
        ("recon failed", PredictionStatus::Failed),
    ] {
        s.submit(prompt(p), &[]).await;
        let rep = format!("rep-{}", s.app.replicate.created().len());
        let outputs = if status == PredictionStatus::Succeeded {
            vec![LARGE.to_owned()]
        } else {
            vec![]
        };
        s.app
            .replicate
            .set_prediction(FakeReplicate::prediction(&rep, status, outputs));
    }
    s.app
        .replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "timeout".into(),
        });
    assert_eq!(s.submit(prompt("recon orphan"), &[]).await.0, 502);
    s.app.clock.advance(std::time::Duration::from_secs(11 * 60));
    s.app.objects.inner.fail_next_puts(3);
    let first = s.reconcile().await;
    assert!(first["errors"].as_u64() >= Some(1), "{first}");
    let second = s.reconcile().await;
    assert!(second["advanced"].as_u64() >= Some(1), "{second}");
    for record in s.app.records.inner.records() {
        if record.input["prompt"]
            .as_str()
            .is_some_and(|p| p.starts_with("recon"))
        {
            assert!(record.status.is_terminal(), "{record:?}");
        }
    }

    s.app
        .replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "timeout".into(),
        });
    assert_eq!(s.submit(prompt("orphan"), &[]).await.0, 502);
    let orphan = s
        .app
        .records
        .inner
        .records()
        .into_iter()
        .find(|r| r.is_unconfirmed())
        .expect("the kept record");
    s.app.clock.advance(std::time::Duration::from_secs(11 * 60));
    assert_eq!(s.fetch(orphan.id.as_str()).await.1["status"], "failed");
    s.by_handler
}

#[tokio::test]
async fn each_function_gets_exactly_the_variables_and_actions_its_code_needs() {
    let template = template();
    let calls = port_calls_by_handler().await;
    for (function, handler) in FUNCTIONS {
        assert!(
            matches!(template["Resources"][function], Yaml::Hash(_)),
            "{function} missing"
        );
        let env = environment(&template, function);
        let read = variables_read(&env);
        for name in env.keys() {
            assert!(
                read.contains(name),
                "{function}: {name} is set but the code never reads it"
            );
        }

        let needed: BTreeSet<String> = calls[format!("{handler:?}").as_str()]
            .iter()
            .flat_map(|method| iam_actions(method).iter().map(|a| (*a).to_owned()))
            .chain(["ssm:GetParameter".to_owned()]) // the token, at cold start
            .collect();
        let allowed = allowed_actions(&template, function);
        let granted: BTreeSet<String> = allowed.keys().cloned().collect();
        assert_eq!(
            granted, needed,
            "{function}: template actions (left) vs the code's (right)"
        );
        for (action, resources) in &allowed {
            let expected = match action.split(':').next() {
                Some("dynamodb") if action == "dynamodb:Query" => {
                    "${PredictionsTable.Arn}/index/open-index"
                }
                Some("dynamodb") => "PredictionsTable.Arn",
                Some("s3") => "${OutputsBucket.Arn}/outputs/*",
                _ => ":parameter${ReplicateApiTokenParameter}",
            };
            assert!(
                resources.len() == 1 && resources[0].contains(expected),
                "{function}: {action} must be scoped to {expected}, not {resources:?}"
            );
        }
    }
}

#[test]
fn the_template_wires_routes_and_arm64_cargo_lambda_builds() {
    let template = template();
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(as_strings(&globals["Architectures"]), vec!["arm64"]);
    assert_eq!(globals["Handler"].as_str(), Some("bootstrap"));
    for (function, route, binary) in [
        ("SubmitFunction", ("POST", "/v1/predictions"), "submit"),
        (
            "WebhookFunction",
            ("POST", "/webhooks/replicate"),
            "webhook",
        ),
        (
            "FetchResultFunction",
            ("GET", "/v1/predictions/{id}"),
            "fetch-result",
        ),
    ] {
        let resource = &template["Resources"][function];
        assert_eq!(
            resource["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda")
        );
        assert_eq!(
            resource["Metadata"]["BuildProperties"]["Binary"].as_str(),
            Some(binary)
        );
        let events = resource["Properties"]["Events"].as_hash().expect("events");
        let event = events.values().next().expect("one event");
        assert_eq!(event["Type"].as_str(), Some("HttpApi"));
        assert_eq!(event["Properties"]["Method"].as_str(), Some(route.0));
        assert_eq!(event["Properties"]["Path"].as_str(), Some(route.1));
        assert!(
            std::path::Path::new(&format!(
                "{}/../functions/{binary}/Cargo.toml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .exists()
        );
    }
}
