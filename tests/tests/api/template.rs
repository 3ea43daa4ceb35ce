//! The SAM template against the code: each function is given every environment variable
//! its code needs (and none it does not read), and exactly the AWS actions its handler
//! calls, each on exactly the resources it calls them on (table items by key prefix,
//! through `dynamodb:LeadingKeys`): no fewer (it would fail in AWS) and no more (least
//! privilege: a function that does not check API keys cannot read or write them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use imagegen_shared::adapters::aws::{
    OPEN_INDEX, OPEN_SHARD_ATTRIBUTE, TENANT_INDEX, TTL_ATTRIBUTE, iam_actions, item_actions,
};
use imagegen_shared::app::App;
use imagegen_shared::app::Settings;
use imagegen_shared::app::inputs::{INPUT_URL_TTL, input_key};
use imagegen_shared::bootstrap::{TokenSource, boot_config};
use imagegen_shared::domain::claims::Claim;
use imagegen_shared::domain::ids::PredictionId;
use imagegen_shared::domain::outputs::PART_SIZE;
use imagegen_shared::domain::record::PredictionRecord;
use imagegen_shared::domain::registry::ModelRegistry;
use imagegen_shared::domain::replicate::{Prediction, PredictionStatus, ReplicateError};
use imagegen_shared::domain::signing::SigningSecret;
use imagegen_shared::domain::tenancy::{ApiKey, KeyRecord, TenantId, TenantLimits};
use imagegen_shared::domain::time::Timestamp;
use imagegen_shared::lambda::sqs::{
    SqsBatchResponse, callback_batch, copy_batch, create_batch, sqs_event, sqs_message,
};
use imagegen_shared::ports::PortSet;
use imagegen_shared::ports::StoreError;
use imagegen_shared::ports::callbacks::CallbackOutcome;
use imagegen_shared::ports::jobs::Redelivery;
use imagegen_shared::ports::objects::ObjectStore;
use imagegen_shared::ports::records::{RecordStore, SyncMark};
use imagegen_shared::ports::replicate::ReplicateApi;
use imagegen_shared::testing::fakes::{
    FakeReplicate, MemoryCallbacks, MemoryObjects, MemoryQueue, MemoryRecords, MemoryResolver,
    MemorySource, Recorded, RecordedCall,
};
use lambda_http::Body;
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

const FUNCTIONS: [(&str, Handler, &str); 7] = [
    ("SubmitFunction", Handler::Submit, "submit"),
    ("WebhookFunction", Handler::Webhook, "webhook"),
    ("FetchResultFunction", Handler::Fetch, "fetch-result"),
    ("ReconcilerFunction", Handler::Reconcile, "reconciler"),
    ("CopierFunction", Handler::Copy, "copier"),
    ("CallbacksFunction", Handler::Callbacks, "callbacks"),
    ("DrainerFunction", Handler::Drain, "drainer"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Handler {
    Submit,
    Webhook,
    Fetch,
    Reconcile,
    Copy,
    Callbacks,
    Drain,
}

/// What an IAM statement is scoped to, as the template names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    /// The whole table: never granted (every table statement names its items' prefixes).
    Table,
    /// The table's items whose key starts with this prefix (`pred#`): a statement on the
    /// table limited by a `dynamodb:LeadingKeys` condition.
    Items(String),
    OpenIndex,
    TenantIndex,
    /// Objects under one prefix of the bucket, e.g. `outputs/*`.
    Objects(String),
    /// The bucket itself (`s3:ListBucket`, limited to a prefix by its condition).
    Bucket,
    CopyQueue,
    CallbackQueue,
    CallbackDeadLetterQueue,
    CreateQueue,
    TokenParameter,
    TokenKey,
}

type Grants = BTreeSet<(String, Resource)>;

// ---- reading the template ----

fn template() -> Yaml {
    let text = include_str!("../../../template.yaml");
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

fn integer(node: &Yaml) -> i64 {
    match node {
        Yaml::Integer(n) => *n,
        Yaml::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other:?}"),
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

/// A policy resource as written in the template (tags dropped: `!GetAtt T.Arn` reads
/// `T.Arn`, `!Sub '…'` its string, `!Ref P` the parameter's name). Anything else fails:
/// no wildcards, no other table, bucket or queue.
fn parse_resource(text: &str) -> Resource {
    let open_index = format!("${{PredictionsTable.Arn}}/index/{OPEN_INDEX}");
    let tenant_index = format!("${{PredictionsTable.Arn}}/index/{TENANT_INDEX}");
    match text {
        "PredictionsTable.Arn" => Resource::Table,
        t if t == open_index => Resource::OpenIndex,
        t if t == tenant_index => Resource::TenantIndex,
        "CopyQueue.Arn" => Resource::CopyQueue,
        "OutputsBucket.Arn" => Resource::Bucket,
        "CallbackQueue.Arn" => Resource::CallbackQueue,
        "CallbackDeadLetterQueue.Arn" => Resource::CallbackDeadLetterQueue,
        "CreateQueue.Arn" => Resource::CreateQueue,
        "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ReplicateApiTokenParameter}" => {
            Resource::TokenParameter
        }
        "ReplicateApiTokenKmsKeyArn" => Resource::TokenKey,
        other => match other.strip_prefix("${OutputsBucket.Arn}/") {
            Some(prefix) if prefix.ends_with("/*") && !prefix[..prefix.len() - 2].contains('*') => {
                Resource::Objects(prefix.to_owned())
            }
            _ => panic!("unexpected policy resource {other:?}"),
        },
    }
}

/// A function's inline policies: the statements that always apply, as (action, resource)
/// pairs, and the conditional ones (`!If [Condition, statement, !Ref AWS::NoValue]`).
struct Policies {
    always: Grants,
    conditional: Vec<(String, Yaml)>,
}

fn statement_grants(function: &str, statement: &Yaml) -> Grants {
    assert_eq!(
        statement["Effect"].as_str(),
        Some("Allow"),
        "{function}: {statement:?}"
    );
    for key in ["NotAction", "NotResource", "Principal"] {
        assert!(
            statement[key].is_badvalue(),
            "{function}: no {key} in statements"
        );
    }
    let resources = as_strings(&statement["Resource"]);
    assert!(
        !resources.is_empty(),
        "{function}: a statement without Resource"
    );
    // `ForAllValues:StringLike: {dynamodb:LeadingKeys: [pred#*, …]}` narrows a statement on
    // the table to the items with those key prefixes.
    let leading_keys =
        as_strings(&statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]);
    let mut grants = Grants::new();
    for action in as_strings(&statement["Action"]) {
        for resource in &resources {
            let resource = parse_resource(resource);
            if resource == Resource::Table && !leading_keys.is_empty() {
                for pattern in &leading_keys {
                    let prefix = pattern
                        .strip_suffix('*')
                        .filter(|p| p.ends_with('#') && !p.contains('*'))
                        .unwrap_or_else(|| panic!("{function}: key pattern {pattern:?}"));
                    grants.insert((action.clone(), Resource::Items(prefix.to_owned())));
                }
            } else {
                grants.insert((action.clone(), resource));
            }
        }
    }
    grants
}

fn policies(template: &Yaml, function: &str) -> Policies {
    let mut found = Policies {
        always: Grants::new(),
        conditional: Vec::new(),
    };
    let properties = &template["Resources"][function]["Properties"];
    assert!(
        properties["Role"].is_badvalue(),
        "{function}: the role is SAM's, built from Policies"
    );
    for policy in properties["Policies"].as_vec().expect("inline policies") {
        for statement in policy["Statement"].as_vec().expect("statements") {
            match statement {
                Yaml::Array(branches) => {
                    let [condition, then, otherwise] = branches.as_slice() else {
                        panic!("{function}: !If takes three arguments: {branches:?}");
                    };
                    assert_eq!(
                        otherwise.as_str(),
                        Some("AWS::NoValue"),
                        "{function}: a conditional statement adds or adds nothing"
                    );
                    let condition = condition.as_str().expect("condition name").to_owned();
                    assert!(
                        !template["Conditions"][condition.as_str()].is_badvalue(),
                        "{function}: condition {condition} is not defined"
                    );
                    found.conditional.push((condition, then.clone()));
                }
                _ => found.always.extend(statement_grants(function, statement)),
            }
        }
    }
    found
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

/// The in-memory ports, with every storage and queue call written down.
struct Recording;

impl imagegen_shared::ports::Ports for Recording {
    type Replicate = FakeReplicate;
    type Records = Recorded<MemoryRecords>;
    type Objects = Recorded<MemoryObjects>;
    type Downloads = MemorySource;
    type Queue = Recorded<MemoryQueue>;
    type Callbacks = MemoryCallbacks;
    type Resolver = MemoryResolver;
}

type RecordingApp = App<Recording>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TENANT: &str = "template";
const API_KEY: &str = "igk_template_scenario_key_0123456789abcdef";
const SMALL: &str = "https://replicate.delivery/small.png";
const CALLBACK_HOST: &str = "127.0.0.1:9";
const LARGE: &str = "https://replicate.delivery/large.png";
/// Replicate no longer serves it (404): the copy fails for good.
const MISSING: &str = "https://replicate.delivery/missing.png";

struct Scenario {
    app: RecordingApp,
    /// Port calls, by method (and key prefix, for the object store).
    calls: Arc<Mutex<Vec<RecordedCall>>>,
    by_handler: BTreeMap<Handler, Grants>,
}

fn png(len: usize) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    bytes.resize(len, 3);
    bytes
}

/// The IAM grants one recorded port call needs: table items by key prefix, the open index,
/// the queue, or objects by key prefix.
fn grants_of(method: &str, prefix: Option<&str>) -> Vec<(String, Resource)> {
    let items = item_actions(method, prefix);
    if !items.is_empty() {
        return items
            .into_iter()
            .map(|(action, prefix)| (action.to_owned(), Resource::Items(prefix)))
            .collect();
    }
    let actions = iam_actions(method);
    assert!(
        !actions.is_empty(),
        "port method {method} has no IAM action"
    );
    let resource = match (method, prefix) {
        ("list_open", _) => Resource::OpenIndex,
        ("list_tenant", _) => Resource::TenantIndex,
        ("send_copy", _) => Resource::CopyQueue,
        ("send_callback", _) => Resource::CallbackQueue,
        ("dead_letter_callback", _) => Resource::CallbackDeadLetterQueue,
        ("send_create", _) => Resource::CreateQueue,
        (_, Some(prefix)) => Resource::Objects(prefix.to_owned()),
        (other, None) => panic!("port method {other} acts on nothing known"),
    };
    actions
        .iter()
        .map(|action| match *action {
            "s3:ListBucket" => (action.to_string(), Resource::Bucket),
            _ => ((*action).to_owned(), resource.clone()),
        })
        .collect()
}

impl Scenario {
    fn new() -> Self {
        Self::with_vars(&[])
    }

    /// A scenario whose settings also read `extra`.
    fn with_vars(extra: &[(&str, &str)]) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let settings = Settings::from_lookup(|name| match name {
            _ if extra.iter().any(|(k, _)| *k == name) => extra
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned()),
            "TABLE_NAME"
            | "BUCKET_NAME"
            | "COPY_QUEUE_URL"
            | "CALLBACK_QUEUE_URL"
            | "CALLBACK_DEAD_LETTER_QUEUE_URL"
            | "CREATE_QUEUE_URL" => Some("x".into()),
            "PUBLIC_BASE_URL" => Some("https://api.example.com".into()),
            // A literal loopback address, listed: no DNS; nothing is sent (MemoryCallbacks).
            "CALLBACK_ALLOW_HOSTS" => Some(CALLBACK_HOST.into()),
            "REPLICATE_WEBHOOK_SECRET" => Some(SECRET.into()),
            "RESOLVE_AFTER_SECONDS" => Some("1".into()),
            _ => None,
        })
        .unwrap();
        let source = MemorySource::default();
        source.insert(SMALL, png(100));
        source.insert(LARGE, png(PART_SIZE + 10));
        let records = MemoryRecords::default();
        let tenant = TenantId::parse(TENANT).unwrap();
        // A key as stored before keys carried their tenant's limits: its requests also read
        // the tenant's item, which the functions must stay allowed to do while such keys
        // exist (a key that carries them needs only its own read).
        records.put_key_without_limits(KeyRecord::new(
            &ApiKey::parse(API_KEY).unwrap(),
            tenant.clone(),
            Timestamp::EPOCH,
        ));
        records.put_limits(TenantLimits::new(tenant, 10_000, Some(1_000_000_000)).unwrap());
        let ports = PortSet::<Recording> {
            replicate: FakeReplicate::default(),
            records: Recorded::new(records, calls.clone()),
            objects: Recorded::new(MemoryObjects::default(), calls.clone()),
            downloads: source,
            queue: Recorded::new(MemoryQueue::default(), calls.clone()),
            callbacks: MemoryCallbacks::default(),
            resolver: MemoryResolver::default(),
        };
        Self {
            app: App::new(ports, ModelRegistry::shipped().unwrap(), settings),
            calls,
            by_handler: BTreeMap::new(),
        }
    }

    fn begin(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// Files the port calls made since `begin` under `handler`.
    fn file(&mut self, handler: Handler) {
        let grants: Grants = self
            .calls
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(method, prefix)| grants_of(method, prefix.as_deref()))
            .collect();
        self.by_handler.entry(handler).or_default().extend(grants);
    }

    /// Runs one HTTP handler and files the port calls it made.
    async fn http(&mut self, handler: Handler, request: lambda_http::Request) -> (u16, Value) {
        self.begin();
        let response = match handler {
            Handler::Submit => imagegen_shared::http::write(&self.app, request).await,
            Handler::Webhook => imagegen_shared::http::webhook(&self.app, request).await,
            Handler::Fetch => imagegen_shared::http::read(&self.app, request).await,
            other => unreachable!("{other:?} is not an HTTP handler"),
        };
        self.file(handler);
        (
            response.status().as_u16(),
            serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null),
        )
    }

    async fn submit(&mut self, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("/v1/predictions")
            .header("authorization", format!("Bearer {API_KEY}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.http(
            Handler::Submit,
            builder.body(Body::Text(body.to_string())).unwrap(),
        )
        .await
    }

    /// Submits and returns the new prediction's id and its Replicate id.
    async fn submitted(&mut self, p: &str) -> (String, String) {
        let (status, body) = self.submit(prompt(p), &[]).await;
        assert_eq!(status, 202, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            self.last_replicate_id(),
        )
    }

    fn last_replicate_id(&self) -> String {
        format!("rep-{}", self.app.replicate.created().len())
    }

    fn record(&self, id: &str) -> PredictionRecord {
        self.app
            .records
            .inner
            .records()
            .into_iter()
            .find(|r| r.id.as_str() == id)
            .expect("the record")
    }

    /// Sets Replicate's state of a prediction it created, and returns it.
    async fn set_remote(
        &self,
        replicate_id: &str,
        status: PredictionStatus,
        output: &[&str],
    ) -> Prediction {
        let mut remote = self
            .app
            .replicate
            .get_prediction(replicate_id)
            .await
            .expect("created at the fake");
        remote.status = status;
        remote.output = output.iter().map(|o| (*o).to_owned()).collect();
        self.app.replicate.set_prediction(remote.clone());
        remote
    }

    /// Replicate's signed delivery of `remote` to the record's webhook URL (with its token).
    async fn webhook(&mut self, id: &str, remote: &Prediction) -> (u16, Value) {
        let token = self
            .record(id)
            .webhook_token
            .expect("records carry a webhook token");
        let body = serde_json::to_string(remote).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signature = SigningSecret::parse(SECRET)
            .unwrap()
            .sign("msg_1", now, body.as_bytes());
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("/webhooks/replicate?id={id}&token={token}"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .body(Body::Text(body))
            .unwrap();
        self.http(Handler::Webhook, request).await
    }

    async fn fetch(&mut self, id: &str) -> (u16, Value) {
        let request = http::Request::builder()
            .uri(format!("/v1/predictions/{id}"))
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::Empty)
            .unwrap();
        self.http(Handler::Fetch, request).await
    }

    /// `POST /v1/predictions/{id}/cancel`, which the submit function serves.
    async fn cancel(&mut self, id: &str) -> (u16, Value) {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("/v1/predictions/{id}/cancel"))
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::Empty)
            .unwrap();
        self.http(Handler::Submit, request).await
    }

    /// `GET /v1/predictions`, which the fetch-result function serves.
    async fn list(&mut self, query: &str) -> (u16, Value) {
        let request = http::Request::builder()
            .uri(format!("/v1/predictions?{query}"))
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::Empty)
            .unwrap();
        self.http(Handler::Fetch, request).await
    }

    /// `GET /v1/usage`, which the fetch-result function serves.
    async fn usage(&mut self) -> (u16, Value) {
        let request = http::Request::builder()
            .uri("/v1/usage")
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::Empty)
            .unwrap();
        self.http(Handler::Fetch, request).await
    }

    async fn reconcile(&mut self) -> Value {
        self.begin();
        let report = self.app.reconcile(None).await;
        self.file(Handler::Reconcile);
        serde_json::to_value(report).unwrap()
    }

    /// Delivers each message to the copier, one per invocation (the template's BatchSize);
    /// returns those it reported as failed, for another delivery.
    async fn copy(&mut self, bodies: Vec<String>) -> Vec<String> {
        let mut failed = Vec::new();
        for (n, body) in bodies.into_iter().enumerate() {
            let batch = sqs_event([sqs_message(format!("m{n}"), body.clone())]);
            self.begin();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
            let response = copy_batch(&self.app, batch, deadline).await;
            self.file(Handler::Copy);
            if !response.batch_item_failures.is_empty() {
                failed.push(body);
            }
        }
        failed
    }

    /// Delivers every queued callback job once, as one batch of the callbacks function.
    async fn deliver_callbacks(&mut self) -> SqsBatchResponse {
        let records = self
            .app
            .queue
            .inner
            .drain_callbacks()
            .iter()
            .enumerate()
            .map(|(n, job)| sqs_message(format!("cb{n}"), serde_json::to_string(job).unwrap()))
            .collect::<Vec<_>>();
        self.begin();
        let response = callback_batch(&self.app, sqs_event(records), &NoRedelivery).await;
        self.file(Handler::Callbacks);
        response
    }

    /// Runs every queued create job once, as one batch of the drainer.
    async fn drain(&mut self) -> SqsBatchResponse {
        let records = self
            .app
            .queue
            .inner
            .drain_creates()
            .iter()
            .enumerate()
            .map(|(n, (job, _))| sqs_message(format!("cr{n}"), serde_json::to_string(job).unwrap()))
            .collect::<Vec<_>>();
        self.begin();
        let response = create_batch(&self.app, sqs_event(records), &NoRedelivery).await;
        self.file(Handler::Drain);
        response
    }

    /// `POST /v1/uploads`, which the submit function serves.
    async fn upload_slot(&mut self, size: usize) -> (u16, Value) {
        let request = http::Request::builder()
            .method("POST")
            .uri("/v1/uploads")
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::Text(
                json!({"content_type": "image/png", "size": size}).to_string(),
            ))
            .unwrap();
        self.http(Handler::Submit, request).await
    }

    /// `GET /v1/webhooks/secret`, which the fetch-result function serves.
    async fn callback_secret(&mut self) -> (u16, Value) {
        let request = http::Request::builder()
            .uri("/v1/webhooks/secret")
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::Empty)
            .unwrap();
        self.http(Handler::Fetch, request).await
    }

    /// Submits with a callback for both events and returns the ids.
    async fn submitted_with_callback(&mut self, p: &str) -> (String, String) {
        let mut body = prompt(p);
        body["webhook"] = json!(format!("http://{CALLBACK_HOST}/hook"));
        body["webhook_events_filter"] = json!(["start", "completed"]);
        let (status, body) = self.submit(body, &[]).await;
        assert_eq!(status, 202, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            self.last_replicate_id(),
        )
    }

    /// Runs every queued copy job once; returns the failed ones.
    async fn copy_queued(&mut self) -> Vec<String> {
        let bodies = self
            .app
            .queue
            .inner
            .drain()
            .iter()
            .map(|job| serde_json::to_string(job).unwrap())
            .collect();
        self.copy(bodies).await
    }
}

/// The callbacks function's `ChangeMessageVisibility` (granted by hand below: it is no
/// port call); here nothing to hide.
struct NoRedelivery;

impl Redelivery for NoRedelivery {
    async fn hide_for(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
}

fn prompt(p: &str) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": p}})
}

fn merge(into: &mut BTreeMap<Handler, Grants>, from: BTreeMap<Handler, Grants>) {
    for (handler, calls) in from {
        into.entry(handler).or_default().extend(calls);
    }
}

/// Drives every path of every handler and returns the port calls each made, with the
/// resource each was made on.
///
/// Calls no driven path makes, so no function is granted them: submit queues a copy only
/// through a cancel that finds the prediction succeeded (a create answered `processing` is
/// applied, and `processing` copies nothing; any later state is left to the webhook or a
/// sync); the copier never attaches a Replicate id (a job
/// is queued only once its record is tied to the prediction), presigns nothing and deletes
/// nothing; only submit touches cache claims (a claim is judged by its prediction's record,
/// so nothing updates it when the prediction ends).
async fn port_calls_by_handler() -> BTreeMap<Handler, Grants> {
    // Creates whose answer was lost, tied to their prediction by a webhook, a fetch and the
    // reconciler. First, in a scenario of their own: a search of Replicate's list needs the
    // records' clock to be the fake's.
    let mut u = Scenario::new();
    let mut unconfirmed = Vec::new();
    for p in ["adopt by webhook", "adopt by fetch", "adopt by reconcile"] {
        u.app.replicate.lose_next_create_answer();
        // Answered with the kept record, which stays unconfirmed until tied or given up.
        let (status, body) = u.submit(prompt(p), &[]).await;
        assert_eq!(status, 202, "{body}");
        let record = u
            .app
            .records
            .inner
            .records()
            .into_iter()
            .find(|r| r.input["prompt"] == p)
            .expect("the kept record");
        assert!(record.is_unconfirmed());
        unconfirmed.push((record.id.to_string(), u.last_replicate_id()));
    }
    let [(by_webhook, rep_w), (by_fetch, _), (by_reconcile, rep_r)] = unconfirmed.as_slice() else {
        unreachable!()
    };
    let processing = u.set_remote(rep_w, PredictionStatus::Processing, &[]).await;
    assert_eq!(
        u.webhook(by_webhook, &processing).await.1["result"],
        "applied"
    );
    // Past the fetch sync interval (a young prediction is left to its webhook).
    u.app.clock.advance(Duration::from_secs(6));
    u.fetch(by_fetch).await;
    assert!(
        u.record(by_fetch).replicate_id.is_some(),
        "found in the list"
    );
    u.set_remote(rep_r, PredictionStatus::Succeeded, &[SMALL])
        .await;
    u.app.clock.advance(Duration::from_secs(180));
    let report = u.reconcile().await;
    assert!(report["advanced"].as_u64() >= Some(1), "{report}");
    assert!(u.record(by_reconcile).replicate_id.is_some());
    assert!(u.copy_queued().await.is_empty());
    assert_eq!(u.record(by_reconcile).status, PredictionStatus::Succeeded);

    let mut s = Scenario::new();
    // Submit: create; join in flight; no-cache; idempotent create, replay and mismatch.
    let (first_id, first_rep) = s.submitted("a").await;
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
        202,
        "replayed as first answered"
    );
    assert_eq!(
        s.submit(prompt("c"), &[("idempotency-key", "k1")]).await.0,
        422
    );
    // Submit: Replicate throttles past the retry budget; the prediction waits in the
    // create queue (marked queued, its job sent) instead of failing.
    s.app.replicate.fail_next_create(ReplicateError::Throttled {
        retry_after: None,
        attempts: 4,
    });
    let (status, throttled) = s.submit(prompt("d"), &[]).await;
    assert_eq!(
        (status, throttled["status"].as_str()),
        (202, Some("queued"))
    );
    assert_eq!(s.app.queue.inner.drain_creates().len(), 1);
    // Submit: Replicate is down past the retry budget, with an Idempotency-Key: the record
    // is ended and the key freed for a retry.
    s.app
        .replicate
        .fail_next_create(ReplicateError::Unavailable {
            status: 503,
            retry_after: None,
            attempts: 4,
        });
    let keyed = [("idempotency-key", "k-unavailable")];
    assert_eq!(s.submit(prompt("d2"), &keyed).await.0, 503);
    assert_eq!(
        s.submit(prompt("d2"), &keyed).await.0,
        202,
        "the key was freed"
    );
    // Submit: an inline image too large for a data URL is stored under inputs/ and sent to
    // Replicate as a presigned URL.
    let image = png(300_000);
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    let img2img = json!({"model": "sdxl-img2img", "input": {"prompt": "a cat", "image": data_url}});
    let (status, body) = s.submit(img2img, &[]).await;
    assert_eq!(status, 202, "{body}");
    let sent = s.app.replicate.created().last().unwrap().input["image"].clone();
    assert!(sent.as_str().unwrap().contains("/inputs/"), "{sent}");

    // Webhook: processing, then succeeded: the copy is queued; the copier stores the output
    // and the record says succeeded; submit then serves the cache.
    let processing = s
        .set_remote(&first_rep, PredictionStatus::Processing, &[])
        .await;
    assert_eq!(
        s.webhook(&first_id, &processing).await.1["result"],
        "applied"
    );
    let done = s
        .set_remote(&first_rep, PredictionStatus::Succeeded, &[SMALL])
        .await;
    assert_eq!(s.webhook(&first_id, &done).await.1["result"], "queued");
    assert!(s.copy_queued().await.is_empty());
    assert_eq!(s.record(&first_id).status, PredictionStatus::Succeeded);
    let (status, cached) = s.submit(prompt("a"), &[]).await;
    assert_eq!((status, cached["cached"].clone()), (200, json!(true)));
    // The copier: a job for a prediction already ended changes nothing; an unreadable
    // message is reported failed.
    s.app.queue.inner.drain();
    let job =
        imagegen_shared::domain::jobs::CopyJob::new(PredictionId::parse(&first_id).unwrap(), &done);
    assert!(
        s.copy(vec![serde_json::to_string(&job).unwrap()])
            .await
            .is_empty()
    );
    assert_eq!(s.copy(vec!["{not a job".into()]).await.len(), 1);

    // The copier: a large output whose upload fails midway (aborted, the job reported failed),
    // then stored in parts on the next delivery.
    let (large_id, large_rep) = s.submitted("large").await;
    let done = s
        .set_remote(&large_rep, PredictionStatus::Succeeded, &[LARGE])
        .await;
    assert_eq!(s.webhook(&large_id, &done).await.1["result"], "queued");
    s.app.objects.inner.fail_next_puts(3);
    let failed = s.copy_queued().await;
    assert_eq!(failed.len(), 1);
    assert_eq!(s.record(&large_id).status, PredictionStatus::Starting);
    assert!(s.copy(failed).await.is_empty());
    assert_eq!(s.record(&large_id).status, PredictionStatus::Succeeded);

    // The copier: outputs Replicate no longer serves end the prediction failed, which frees
    // its cache key.
    let (gone_id, gone_rep) = s.submitted("gone outputs").await;
    let done = s
        .set_remote(&gone_rep, PredictionStatus::Succeeded, &[MISSING])
        .await;
    assert_eq!(s.webhook(&gone_id, &done).await.1["result"], "queued");
    assert!(
        s.copy_queued().await.is_empty(),
        "a permanent failure is final"
    );
    assert_eq!(s.record(&gone_id).status, PredictionStatus::Failed);

    // Webhook: a failure frees the cache key; submit then takes the key over.
    let (doomed_id, doomed_rep) = s.submitted("doomed").await;
    let failed = s
        .set_remote(&doomed_rep, PredictionStatus::Failed, &[])
        .await;
    assert_eq!(s.webhook(&doomed_id, &failed).await.1["result"], "applied");
    // The claim still points at the failed prediction, as after a lost cache update.
    let alias = s.app.registry.get("flux-schnell").unwrap().clone();
    let key = format!(
        "cache#{}",
        alias
            .cache_key(TENANT, &alias.validate(&prompt("doomed")["input"]).unwrap(),)
            .as_str()
    );
    s.app.records.inner.put_claim(Claim {
        key,
        token: "old".into(),
        prediction_id: Some(PredictionId::parse(&doomed_id).unwrap()),
        request_hash: None,
        lease_until: Timestamp::from_millis(u64::MAX),
        expires_at: 0,
        from_cache: false,
    });
    let (status, retried) = s.submit(prompt("doomed"), &[]).await;
    assert_eq!(status, 202);
    assert_ne!(
        retried["id"].as_str(),
        Some(doomed_id.as_str()),
        "a failed prediction is taken over"
    );

    // Fetch: lost webhooks synced: processing, then succeeded (the copy queued; the record
    // says succeeded once the copier stored it), and a failure.
    let (ok_id, ok_rep) = s.submitted("sync ok").await;
    s.set_remote(&ok_rep, PredictionStatus::Processing, &[])
        .await;
    assert_eq!(
        s.fetch(&ok_id).await.1["status"],
        "starting",
        "left to its webhook"
    );
    s.app.clock.advance(Duration::from_secs(10));
    assert_eq!(s.fetch(&ok_id).await.1["status"], "processing");
    s.set_remote(&ok_rep, PredictionStatus::Succeeded, &[LARGE])
        .await;
    s.app.clock.advance(Duration::from_secs(10));
    assert_eq!(s.fetch(&ok_id).await.1["status"], "processing");
    assert!(s.copy_queued().await.is_empty());
    let (status, view) = s.fetch(&ok_id).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("succeeded")));
    assert_eq!(view["output"].as_array().map(Vec::len), Some(1));
    let (failed_id, failed_rep) = s.submitted("sync failed").await;
    s.set_remote(&failed_rep, PredictionStatus::Failed, &[])
        .await;
    s.app.clock.advance(Duration::from_secs(10));
    assert_eq!(s.fetch(&failed_id).await.1["status"], "failed");
    // Cancel: a running prediction (Replicate confirms), one that had already succeeded
    // there (its copy is queued), one that ended here (unchanged, no call).
    let (run_id, _) = s.submitted("cancel running").await;
    let (status, canceled) = s.cancel(&run_id).await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (200, Some("canceled"))
    );
    let (done_id, done_rep) = s.submitted("cancel too late").await;
    s.set_remote(&done_rep, PredictionStatus::Succeeded, &[SMALL])
        .await;
    assert_eq!(s.cancel(&done_id).await.0, 200);
    assert_eq!(
        s.copy_queued().await.len(),
        0,
        "the copy was queued and ran"
    );
    assert_eq!(s.record(&done_id).status, PredictionStatus::Succeeded);
    assert_eq!(s.cancel(&done_id).await.1["status"], "succeeded");
    let (status, listed) = s.list("limit=2").await;
    assert_eq!(
        (status, listed["items"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    let (status, usage) = s.usage().await;
    assert_eq!((status, usage["tenant"].as_str()), (200, Some(TENANT)));

    // Reconciler: lost webhooks, nobody fetching: a success (its copy queued), a failure, a
    // prediction still running, and one Replicate no longer has; every shard is read.
    let mut recon = Vec::new();
    for (p, status, output) in [
        ("recon ok", PredictionStatus::Succeeded, vec![LARGE]),
        ("recon failed", PredictionStatus::Failed, vec![]),
        ("recon running", PredictionStatus::Processing, vec![]),
        ("recon vanished", PredictionStatus::Processing, vec![]),
    ] {
        let (id, rep) = s.submitted(p).await;
        s.set_remote(&rep, status, &output).await;
        recon.push((id, rep));
    }
    s.app.replicate.forget(&recon[3].1);
    s.app.clock.advance(Duration::from_secs(180));
    let report = s.reconcile().await;
    assert!(report["advanced"].as_u64() >= Some(3), "{report}");
    assert!(s.copy_queued().await.is_empty());
    assert_eq!(s.record(&recon[0].0).status, PredictionStatus::Succeeded);
    assert_eq!(s.record(&recon[1].0).status, PredictionStatus::Failed);
    assert_eq!(s.record(&recon[3].0).status, PredictionStatus::Failed);
    // ... and, past Replicate's output retention, ends what is still running.
    s.app.clock.advance(Duration::from_secs(75 * 60));
    let report = s.reconcile().await;
    assert!(report["expired"].as_u64() >= Some(1), "{report}");
    assert_eq!(s.record(&recon[2].0).status, PredictionStatus::Failed);

    // Fetch: a create never confirmed (nothing at Replicate) is given up.
    s.app
        .replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "timeout".into(),
        });
    assert_eq!(s.submit(prompt("orphan"), &[]).await.0, 202);
    let orphan = s
        .app
        .records
        .inner
        .records()
        .into_iter()
        .find(|r| r.is_unconfirmed())
        .expect("the kept record");
    s.app.clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(s.fetch(orphan.id.as_str()).await.1["status"], "failed");

    let c = callback_and_upload_calls().await;
    let q = queued_create_calls().await;
    let mut calls = s.by_handler;
    merge(&mut calls, u.by_handler);
    merge(&mut calls, c);
    merge(&mut calls, q);
    calls
}

/// Bursts: creates over the rate are queued, refused past the backlog limit, canceled
/// while queued (by the route, and by a cancel racing the drainer), created by the drainer
/// (an inline image presigned again, the `start` callback queued), and queued again by the
/// reconciler when a job was lost.
async fn queued_create_calls() -> BTreeMap<Handler, Grants> {
    let mut q = Scenario::with_vars(&[
        ("REPLICATE_CREATES_PER_MINUTE", "1"),
        ("MAX_QUEUE_SECONDS", "200"),
    ]);
    let (first, _) = q.submitted("created at once").await;
    assert_eq!(q.record(&first).queue, None);
    let image = png(2_000);
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    let mut with_image =
        json!({"model": "sdxl-img2img", "input": {"prompt": "queued", "image": data_url}});
    with_image["webhook"] = json!(format!("http://{CALLBACK_HOST}/hook"));
    with_image["webhook_events_filter"] = json!(["start", "completed"]);
    let mut queued = Vec::new();
    for body in [
        with_image,
        prompt("canceled while queued"),
        prompt("canceled in a race"),
    ] {
        let (status, view) = q.submit(body, &[]).await;
        assert_eq!(
            (status, view["status"].as_str()),
            (202, Some("queued")),
            "{view}"
        );
        queued.push(view["id"].as_str().unwrap().to_owned());
    }
    let (status, refused) = q.submit(prompt("over the backlog"), &[]).await;
    assert_eq!(status, 503, "{refused}");
    let (status, canceled) = q.cancel(&queued[1]).await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (200, Some("canceled"))
    );
    // A cancel that lands as the drainer reads the record: the drainer ends it.
    let id = imagegen_shared::domain::ids::PredictionId::parse(&queued[2]).unwrap();
    let now = q.app.clock.now();
    assert!(
        q.app
            .records
            .inner
            .claim_sync(&id, SyncMark::CancelRequested, now, now)
            .await
            .unwrap()
    );
    // Past every slot given out (four, a minute apart).
    q.app.clock.advance(Duration::from_secs(300));
    let created_before = q.app.replicate.created().len();
    assert!(q.drain().await.batch_item_failures.is_empty());
    assert_eq!(
        q.app.replicate.created().len(),
        created_before + 1,
        "only the first queued"
    );
    let sent = q.app.replicate.created().last().unwrap().input["image"].clone();
    assert!(sent.as_str().unwrap().contains("/inputs/"), "{sent}");
    assert_eq!(q.record(&queued[2]).status, PredictionStatus::Canceled);
    // A queued prediction whose job was lost: the reconciler queues it again.
    q.submitted("at once again").await;
    let (status, lost) = q.submit(prompt("job lost"), &[]).await;
    assert_eq!((status, lost["status"].as_str()), (202, Some("queued")));
    assert_eq!(q.app.queue.inner.drain_creates().len(), 1, "the job, lost");
    q.app.clock.advance(Duration::from_secs(600));
    assert_eq!(q.reconcile().await["creates_requeued"], 1);
    assert_eq!(q.app.queue.inner.drain_creates().len(), 1, "queued again");
    // A drainer that died after claiming a create: a fetch finds nothing at Replicate, and
    // gives it back to the queue.
    q.submitted("at once, once more").await;
    let (status, orphaned) = q.submit(prompt("its drainer died"), &[]).await;
    assert_eq!((status, orphaned["status"].as_str()), (202, Some("queued")));
    q.app.queue.inner.drain_creates();
    let id = imagegen_shared::domain::ids::PredictionId::parse(orphaned["id"].as_str().unwrap())
        .unwrap();
    let now = q.app.clock.now();
    assert!(q.app.records.inner.claim_create(&id, now).await.unwrap());
    q.app.clock.advance(Duration::from_secs(30));
    let (status, fetched) = q.fetch(id.as_str()).await;
    assert_eq!(
        (status, fetched["status"].as_str()),
        (200, Some("queued")),
        "{fetched}"
    );
    assert_eq!(
        q.app.queue.inner.drain_creates().len(),
        1,
        "its job, sent again"
    );
    // A create Replicate throttles in the drainer: the record takes a new slot from the
    // pacer (`pace#creates`), so the retry stays inside the paced rate.
    q.app.queue.inner.drain_creates();
    q.app.clock.advance(Duration::from_secs(300));
    q.submitted("at once, a last time").await;
    let (status, throttled) = q.submit(prompt("throttled in the drainer"), &[]).await;
    assert_eq!(
        (status, throttled["status"].as_str()),
        (202, Some("queued"))
    );
    q.app.clock.advance(Duration::from_secs(300));
    q.app.replicate.fail_next_create(ReplicateError::Throttled {
        retry_after: None,
        attempts: 4,
    });
    q.drain().await;
    assert!(
        q.record(throttled["id"].as_str().unwrap()).is_queued(),
        "given back to the queue"
    );
    let mut calls = q.by_handler;
    // Not a port call: a job not due yet hides its message (`Redelivery`).
    calls.entry(Handler::Drain).or_default().insert((
        "sqs:ChangeMessageVisibility".to_owned(),
        Resource::CreateQueue,
    ));
    calls
}

/// Uploads, and predictions with callbacks ended by every handler that ends predictions;
/// then the callbacks function delivers, retries and dead-letters their events.
async fn callback_and_upload_calls() -> BTreeMap<Handler, Grants> {
    let mut c = Scenario::new();
    // Uploads: a slot, then a submit naming it (read back, verified, stored under inputs/).
    // A PNG signature and header (640×480), then filler: what sniffing reads.
    let mut image = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    image.extend(640u32.to_be_bytes());
    image.extend(480u32.to_be_bytes());
    image.extend([8, 6, 0, 0, 0]);
    image.resize(4_000, 3);
    let (status, slot) = c.upload_slot(image.len()).await;
    assert_eq!(status, 201, "{slot}");
    let key = format!("uploads/{}", slot["id"].as_str().unwrap());
    c.app
        .objects
        .inner
        .put_object(&key, "image/png", image.into())
        .await
        .unwrap();
    let body = json!({"model": "sdxl-img2img", "input": {"prompt": "a cat", "image": slot["ref"]}});
    let (status, body) = c.submit(body, &[]).await;
    assert_eq!(status, 202, "{body}");

    // Callbacks: `start` is queued by submit; `completed` by whoever ends the prediction.
    let (hooked_run, _) = c.submitted_with_callback("cb cancel").await;
    assert_eq!(c.cancel(&hooked_run).await.1["status"], "canceled");
    let (by_webhook, rep) = c.submitted_with_callback("cb webhook").await;
    let failed = c.set_remote(&rep, PredictionStatus::Failed, &[]).await;
    assert_eq!(c.webhook(&by_webhook, &failed).await.1["result"], "applied");
    let (by_copier, rep) = c.submitted_with_callback("cb copier").await;
    let done = c
        .set_remote(&rep, PredictionStatus::Succeeded, &[SMALL])
        .await;
    assert_eq!(c.webhook(&by_copier, &done).await.1["result"], "queued");
    assert!(c.copy_queued().await.is_empty());
    let (by_fetch, rep) = c.submitted_with_callback("cb fetch").await;
    c.set_remote(&rep, PredictionStatus::Failed, &[]).await;
    c.app.clock.advance(Duration::from_secs(10));
    assert_eq!(c.fetch(&by_fetch).await.1["status"], "failed");
    let (by_reconcile, rep) = c.submitted_with_callback("cb reconcile").await;
    c.set_remote(&rep, PredictionStatus::Failed, &[]).await;
    // The reconciler also queues a `completed` event whose first send failed.
    let (lost_send, rep) = c.submitted_with_callback("cb lost send").await;
    let failed = c.set_remote(&rep, PredictionStatus::Failed, &[]).await;
    c.app.queue.inner.fail_next_sends(1);
    assert_eq!(c.webhook(&lost_send, &failed).await.1["result"], "applied");
    c.app.clock.advance(Duration::from_secs(180));
    let report = c.reconcile().await;
    assert!(report["callbacks_queued"].as_u64() >= Some(1), "{report}");
    for id in [&by_reconcile, &lost_send] {
        let callback = c.record(id).callback.expect("a callback");
        assert_eq!(
            callback.event,
            Some(imagegen_shared::domain::callbacks::CallbackEvent::Completed)
        );
    }
    // The callbacks function: delivered, then one rejected until its day is over.
    assert!(c.deliver_callbacks().await.batch_item_failures.is_empty());
    let (doomed, rep) = c.submitted_with_callback("cb doomed").await;
    let failed = c.set_remote(&rep, PredictionStatus::Failed, &[]).await;
    c.webhook(&doomed, &failed).await;
    c.app.clock.advance(Duration::from_secs(25 * 3600));
    c.app.callbacks.answer_next(std::iter::repeat_n(
        CallbackOutcome::Rejected { status: 500 },
        4,
    ));
    assert!(
        c.deliver_callbacks().await.batch_item_failures.is_empty(),
        "dead-lettered, done"
    );
    assert_eq!(c.app.queue.inner.dead_callbacks().len(), 2);
    // The secret route, in an app of its own: secrets are cached per process, and in AWS
    // the fetch-result and callbacks functions are separate processes.
    let mut f = Scenario::new();
    assert_eq!(f.callback_secret().await.0, 200);
    let mut calls = c.by_handler;
    merge(&mut calls, f.by_handler);
    // Not a port call: the backoff hides the message (`Redelivery`).
    calls.entry(Handler::Callbacks).or_default().insert((
        "sqs:ChangeMessageVisibility".to_owned(),
        Resource::CallbackQueue,
    ));
    calls
}

/// The (action, resource) pairs a handler's port calls need, against the template's.
/// Run on a thread with a large stack: polling the scenarios' nested futures takes more
/// than a test thread's 2 MiB in debug builds.
#[test]
fn each_function_gets_exactly_the_variables_and_actions_its_code_needs() {
    let checked = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(check_grants())
        })
        .expect("a thread")
        .join();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

async fn check_grants() {
    let template = template();
    let calls = port_calls_by_handler().await;
    for (function, handler, _) in FUNCTIONS {
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

        let mut needed = calls[&handler].clone();
        // The token, read from SSM by the first call to Replicate (`variables_read` checked
        // it is there).
        needed.insert(("ssm:GetParameter".to_owned(), Resource::TokenParameter));
        let policies = policies(&template, function);
        assert_eq!(
            policies.always, needed,
            "{function}: template grants (left) vs the code's calls (right)"
        );
        token_key_grant(&template, function, &policies.conditional);
    }
}

/// `kms:Decrypt` is checked here rather than in the equality above, by choice: no port
/// method calls KMS (SSM decrypts the SecureString on the function's behalf), and it is
/// needed only when the stack is deployed with `ReplicateApiTokenKmsKeyArn` set (a customer
/// managed key; the default aws/ssm key needs no grant). So every function reading the
/// token (all of them) has exactly one conditional statement: under "the key parameter is
/// not empty", `kms:Decrypt` on that key only, only through SSM; and nothing otherwise (an
/// unconditional `kms:Decrypt` would fail the equality).
fn token_key_grant(template: &Yaml, function: &str, conditional: &[(String, Yaml)]) {
    let [(condition, statement)] = conditional else {
        panic!("{function}: expected one conditional statement, kms:Decrypt of the token key");
    };
    let definition = &template["Conditions"][condition.as_str()];
    assert_eq!(
        definition,
        &Yaml::Array(vec![Yaml::Array(vec![
            Yaml::String("ReplicateApiTokenKmsKeyArn".into()),
            Yaml::String(String::new()),
        ])]),
        "{function}: {condition} must be !Not [!Equals [!Ref ReplicateApiTokenKmsKeyArn, \"\"]]"
    );
    assert_eq!(
        template["Parameters"]["ReplicateApiTokenKmsKeyArn"]["Default"].as_str(),
        Some(""),
        "no key by default: nothing changes unless one is given"
    );
    let grants = statement_grants(function, statement);
    assert_eq!(
        grants,
        Grants::from([("kms:Decrypt".to_owned(), Resource::TokenKey)]),
        "{function}"
    );
    assert_eq!(
        statement["Condition"]["StringEquals"]["kms:ViaService"].as_str(),
        Some("ssm.${AWS::Region}.amazonaws.com"),
        "{function}: the key is usable through SSM only"
    );
}

#[test]
fn the_copy_queue_feeds_the_copier_and_ends_in_an_alarmed_dead_letter_queue() {
    let template = template();
    let resources = &template["Resources"];
    assert_eq!(
        template["Globals"]["Function"]["Environment"]["Variables"]["COPY_QUEUE_URL"].as_str(),
        Some("CopyQueue"),
        "every function gets the queue's URL (!Ref)"
    );
    let copier = &resources["CopierFunction"]["Properties"];
    let events = copier["Events"].as_hash().expect("events");
    assert_eq!(events.len(), 1);
    let event = events.values().next().unwrap();
    assert_eq!(event["Type"].as_str(), Some("SQS"));
    assert_eq!(event["Properties"]["Queue"].as_str(), Some("CopyQueue.Arn"));
    assert_eq!(integer(&event["Properties"]["BatchSize"]), 1);
    assert_eq!(
        as_strings(&event["Properties"]["FunctionResponseTypes"]),
        vec!["ReportBatchItemFailures"],
        "copy_batch answers with a partial batch response"
    );
    // SAM attaches AWSLambdaSQSQueueExecutionRole (receive, delete, get attributes) to the
    // role it generates for a function with an SQS event; `policies` checks the role is
    // SAM's and that no inline statement repeats those actions.

    let queue = &resources["CopyQueue"];
    assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"));
    let timeout = integer(&copier["Timeout"]);
    assert!(
        integer(&queue["Properties"]["VisibilityTimeout"]) >= 6 * timeout,
        "visibility timeout at least six times the copier's timeout"
    );
    let redrive = &queue["Properties"]["RedrivePolicy"];
    assert_eq!(
        redrive["deadLetterTargetArn"].as_str(),
        Some("CopyDeadLetterQueue.Arn")
    );
    assert_eq!(integer(&redrive["maxReceiveCount"]), 5);
    let dead = &resources["CopyDeadLetterQueue"];
    assert_eq!(dead["Type"].as_str(), Some("AWS::SQS::Queue"));
    assert_eq!(
        integer(&dead["Properties"]["MessageRetentionPeriod"]),
        14 * 24 * 3600
    );
    for q in [queue, dead] {
        assert_eq!(
            q["Properties"]["SqsManagedSseEnabled"].as_bool(),
            Some(true)
        );
    }

    let alarm = &resources["CopyDeadLetterAlarm"]["Properties"];
    assert_eq!(alarm["Namespace"].as_str(), Some("AWS/SQS"));
    assert_eq!(
        alarm["MetricName"].as_str(),
        Some("ApproximateNumberOfMessagesVisible")
    );
    assert_eq!(
        alarm["Dimensions"][0]["Value"].as_str(),
        Some("CopyDeadLetterQueue.QueueName")
    );
    assert_eq!(integer(&alarm["Threshold"]), 0);
    assert_eq!(
        alarm["ComparisonOperator"].as_str(),
        Some("GreaterThanThreshold")
    );
}

#[test]
fn the_table_and_bucket_match_the_adapters() {
    let template = template();
    let table = &template["Resources"]["PredictionsTable"]["Properties"];
    let index = &table["GlobalSecondaryIndexes"][0];
    assert_eq!(index["IndexName"].as_str(), Some(OPEN_INDEX));
    assert_eq!(
        index["KeySchema"][0]["AttributeName"].as_str(),
        Some(OPEN_SHARD_ATTRIBUTE)
    );
    assert_eq!(
        table["TimeToLiveSpecification"]["AttributeName"].as_str(),
        Some(TTL_ATTRIBUTE)
    );

    let rules =
        template["Resources"]["OutputsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
            .as_vec()
            .expect("lifecycle rules");
    let expiring = |prefix: &str| {
        rules
            .iter()
            .find(|r| r["Prefix"].as_str() == Some(prefix))
            .unwrap_or_else(|| panic!("no lifecycle rule for {prefix}"))
    };
    expiring("outputs/");
    let inputs = expiring(input_key("").as_str());
    let days = integer(&inputs["ExpirationInDays"]);
    assert!(
        days >= 1 && days as u64 * 24 * 3600 > INPUT_URL_TTL.as_secs(),
        "input images outlive the URLs Replicate fetches them by"
    );
}

#[test]
fn the_template_wires_routes_and_arm64_cargo_lambda_builds() {
    let template = template();
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(as_strings(&globals["Architectures"]), vec!["arm64"]);
    assert_eq!(globals["Handler"].as_str(), Some("bootstrap"));
    for (function, _, binary) in FUNCTIONS {
        let resource = &template["Resources"][function];
        assert_eq!(
            resource["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda")
        );
        assert_eq!(
            resource["Metadata"]["BuildProperties"]["Binary"].as_str(),
            Some(binary)
        );
        assert!(
            std::path::Path::new(&format!(
                "{}/../functions/{binary}/Cargo.toml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .exists(),
            "{binary}"
        );
    }
    for (function, routes) in [
        (
            "SubmitFunction",
            vec![
                ("POST", "/v1/predictions"),
                ("POST", "/v1/predictions/{id}/cancel"),
                ("POST", "/v1/uploads"),
            ],
        ),
        ("WebhookFunction", vec![("POST", "/webhooks/replicate")]),
        (
            "FetchResultFunction",
            vec![
                ("GET", "/v1/predictions/{id}"),
                ("GET", "/v1/predictions"),
                ("GET", "/v1/usage"),
                ("GET", "/v1/webhooks/secret"),
                ("GET", "/openapi.json"),
            ],
        ),
    ] {
        let events = template["Resources"][function]["Properties"]["Events"]
            .as_hash()
            .expect("events");
        let served: Vec<(&str, &str)> = events
            .values()
            .map(|event| {
                assert_eq!(event["Type"].as_str(), Some("HttpApi"));
                (
                    event["Properties"]["Method"].as_str().unwrap_or_default(),
                    event["Properties"]["Path"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(served, routes, "{function}");
    }
}
