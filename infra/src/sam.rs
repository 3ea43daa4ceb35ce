//! The SAM template as the local stack and the cost model read it: each function's memory
//! and what invokes it (HTTP routes, a schedule, a queue), the bucket's lifecycle rules and
//! the table's secondary indexes. The local API Gateway routes by it (`route_of`), and
//! `make cost` prices by it. `local-stack` has no YAML parser, and the template is plain
//! block YAML, so it is flattened here into `dotted.path → scalar` (list items as `[n]`).

use std::collections::BTreeMap;

/// Lambda's default when neither the function nor `Globals` sets `MemorySize`.
const DEFAULT_MEMORY_MB: u32 = 128;

/// Flattens block-style YAML: `Resources.SubmitFunction.Properties.MemorySize → "256"`.
/// Folded and literal blocks (`>-`, `|`) are skipped; flow collections stay one scalar.
pub fn flatten(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // (indent, path segment) of the keys and list items enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut list_lengths: BTreeMap<String, usize> = BTreeMap::new();
    let mut skip_deeper_than: Option<usize> = None;
    let path = |stack: &[(usize, String)]| {
        stack
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join(".")
    };
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - trimmed.len();
        if let Some(block) = skip_deeper_than {
            if indent > block {
                continue;
            }
            skip_deeper_than = None;
        }
        let mut content = trimmed;
        while let Some(rest) = content
            .strip_prefix("- ")
            .or((content == "-").then_some(""))
        {
            stack.retain(|(i, _)| *i < indent);
            let n = list_lengths.entry(path(&stack)).or_default();
            stack.push((indent, format!("[{n}]")));
            *n += 1;
            indent += content.len() - rest.len();
            content = rest.trim_start();
        }
        if content.is_empty() {
            continue;
        }
        let (key, value) = match content.split_once(": ") {
            Some((k, v)) if !k.starts_with(['"', '\'', '!', '[', '{']) => (Some(k), v.trim()),
            _ => match content.strip_suffix(':') {
                Some(k) => (Some(k), ""),
                None => (None, content),
            },
        };
        let value = strip_comment(value);
        match key {
            Some(key) => {
                stack.retain(|(i, _)| *i < indent);
                let key = unquote(key.trim()).to_owned();
                if value.is_empty() {
                    stack.push((indent, key));
                } else if matches!(value, ">" | ">-" | ">+" | "|" | "|-" | "|+") {
                    skip_deeper_than = Some(indent);
                } else {
                    let mut full = path(&stack);
                    if !full.is_empty() {
                        full.push('.');
                    }
                    full.push_str(&key);
                    out.insert(full, unquote(value).to_owned());
                }
            }
            // A scalar list item: `- arm64`.
            None => {
                out.insert(path(&stack), unquote(value).to_owned());
            }
        }
    }
    out
}

fn strip_comment(value: &str) -> &str {
    if value.starts_with(['"', '\'']) {
        return value;
    }
    value.split(" #").next().unwrap_or_default().trim()
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The template's logical id, e.g. `SubmitFunction`.
    pub name: String,
    pub memory_mb: u32,
    /// `(METHOD, /path/{param})` of its HttpApi events.
    pub routes: Vec<(String, String)>,
    /// `rate(…)` or `cron(…)` of a Schedule event.
    pub schedule: Option<String>,
    /// An SQS event source's batch size.
    pub queue_batch_size: Option<u32>,
    /// The queue an SQS event source reads (`CopyQueue.Arn`).
    pub queue: Option<String>,
    /// The cargo-lambda binary it is built from (`Metadata.BuildProperties.Binary`).
    pub binary: Option<String>,
    /// Its timeout in seconds (the function's or `Globals`', else Lambda's 3).
    pub timeout_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub functions: Vec<Function>,
    /// Days objects under a prefix are kept (`ExpirationInDays` of a lifecycle rule).
    pub expirations: Vec<(String, u32)>,
    /// The table's key attributes, its TTL attribute and its global secondary indexes.
    pub table_keys: Vec<String>,
    pub ttl_attribute: Option<String>,
    pub indexes: Vec<IndexSpec>,
    /// The functions' `RUST_LOG` (what their logs are filtered at).
    pub log_level: Option<String>,
    /// Lambda's own log level (`LoggingConfig.SystemLogLevel`; INFO when unset).
    pub system_log_level: Option<String>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let flat = flatten(text);
        let get = |path: &str| flat.get(path).map(String::as_str);
        // `!Ref Parameter` resolves to the parameter's default.
        let resolve = |value: &str| -> Option<String> {
            match value.strip_prefix("!Ref ") {
                Some(name) => get(&format!("Parameters.{name}.Default")).map(str::to_owned),
                None => Some(value.to_owned()),
            }
        };
        let number = |value: Option<&str>| value.and_then(|v| resolve(v)?.parse::<u32>().ok());
        let resources: Vec<&str> = flat
            .keys()
            .filter_map(|k| k.strip_prefix("Resources.")?.strip_suffix(".Type"))
            .filter(|r| !r.contains('.'))
            .collect();
        let default_memory =
            number(get("Globals.Function.MemorySize")).unwrap_or(DEFAULT_MEMORY_MB);
        let mut functions = Vec::new();
        let mut expirations = Vec::new();
        let mut indexes = Vec::new();
        let mut table_keys = Vec::new();
        let mut ttl_attribute = None;
        for resource in resources {
            let props = format!("Resources.{resource}.Properties");
            match get(&format!("Resources.{resource}.Type")) {
                Some("AWS::Serverless::Function") => {
                    let mut function = Function {
                        name: resource.to_owned(),
                        memory_mb: number(get(&format!("{props}.MemorySize")))
                            .unwrap_or(default_memory),
                        routes: Vec::new(),
                        schedule: None,
                        queue_batch_size: None,
                        queue: None,
                        binary: get(&format!(
                            "Resources.{resource}.Metadata.BuildProperties.Binary"
                        ))
                        .map(str::to_owned),
                        timeout_s: number(get(&format!("{props}.Timeout")))
                            .or(number(get("Globals.Function.Timeout")))
                            .unwrap_or(3),
                    };
                    let events = format!("{props}.Events.");
                    for (key, kind) in flat.range(events.clone()..) {
                        let Some(event) = key.strip_prefix(&events) else {
                            break;
                        };
                        let Some(event) = event.strip_suffix(".Type").filter(|e| !e.contains('.'))
                        else {
                            continue;
                        };
                        let event_props = format!("{events}{event}.Properties");
                        let field = |name: &str| get(&format!("{event_props}.{name}"));
                        match kind.as_str() {
                            "HttpApi" | "Api" => {
                                if let (Some(method), Some(path)) = (field("Method"), field("Path"))
                                {
                                    function
                                        .routes
                                        .push((method.to_ascii_uppercase(), path.to_owned()));
                                }
                            }
                            "Schedule" => function.schedule = field("Schedule").map(str::to_owned),
                            "SQS" => {
                                function.queue_batch_size =
                                    Some(number(field("BatchSize")).unwrap_or(10));
                                function.queue = field("Queue").map(str::to_owned);
                            }
                            _ => {}
                        }
                    }
                    functions.push(function);
                }
                Some("AWS::S3::Bucket") => {
                    let rules = format!("{props}.LifecycleConfiguration.Rules");
                    for i in 0.. {
                        let rule = format!("{rules}.[{i}]");
                        if !flat.keys().any(|k| k.starts_with(&format!("{rule}."))) {
                            break;
                        }
                        if get(&format!("{rule}.Status")) == Some("Disabled") {
                            continue;
                        }
                        if let Some(days) = number(get(&format!("{rule}.ExpirationInDays"))) {
                            let prefix = get(&format!("{rule}.Prefix")).unwrap_or_default();
                            expirations.push((prefix.to_owned(), days));
                        }
                    }
                }
                Some("AWS::DynamoDB::Table") => {
                    table_keys = (0..)
                        .map_while(|j| get(&format!("{props}.KeySchema.[{j}].AttributeName")))
                        .map(str::to_owned)
                        .collect();
                    ttl_attribute = get(&format!("{props}.TimeToLiveSpecification.AttributeName"))
                        .map(str::to_owned);
                    for i in 0.. {
                        let index = format!("{props}.GlobalSecondaryIndexes.[{i}]");
                        let Some(name) = get(&format!("{index}.IndexName")) else {
                            break;
                        };
                        let list = |path: &str| -> Vec<String> {
                            (0..)
                                .map_while(|j| get(&format!("{index}.{path}.[{j}]")))
                                .map(str::to_owned)
                                .collect()
                        };
                        let keys = (0..)
                            .map_while(|j| get(&format!("{index}.KeySchema.[{j}].AttributeName")))
                            .map(str::to_owned)
                            .collect();
                        let projection = match get(&format!("{index}.Projection.ProjectionType")) {
                            Some("KEYS_ONLY") => Projection::KeysOnly,
                            Some("INCLUDE") => {
                                Projection::Include(list("Projection.NonKeyAttributes"))
                            }
                            _ => Projection::All,
                        };
                        indexes.push(IndexSpec {
                            name: name.to_owned(),
                            keys,
                            projection,
                        });
                    }
                }
                _ => {}
            }
        }
        if functions.is_empty() {
            return Err("the template defines no AWS::Serverless::Function".into());
        }
        Ok(Self {
            functions,
            expirations,
            table_keys,
            ttl_attribute,
            indexes,
            log_level: get("Globals.Function.Environment.Variables.RUST_LOG").and_then(resolve),
            system_log_level: get("Globals.Function.LoggingConfig.SystemLogLevel")
                .and_then(resolve),
        })
    }

    /// The function serving `method path`, matching `{param}` segments.
    pub fn route(&self, method: &str, path: &str) -> Option<&Function> {
        self.functions.iter().find(|f| {
            f.routes
                .iter()
                .any(|(m, pattern)| m.eq_ignore_ascii_case(method) && route_matches(pattern, path))
        })
    }

    /// The function fed by the queue named `queue` (a logical id, e.g. `CopyQueue`).
    pub fn queue_consumer(&self, queue: &str) -> Option<&Function> {
        self.functions.iter().find(|f| {
            f.queue
                .as_deref()
                .and_then(|q| q.trim_start_matches("!GetAtt ").split('.').next())
                .is_some_and(|q| q == queue)
        })
    }

    /// The function and route pattern (`/v1/predictions/{id}`) API Gateway would pick for a
    /// request: the route with the most literal segments among those that match.
    pub fn route_of(&self, method: &str, path: &str) -> Option<(&Function, &str)> {
        self.functions
            .iter()
            .flat_map(|f| f.routes.iter().map(move |(m, p)| (f, m, p)))
            .filter(|(_, m, p)| m.eq_ignore_ascii_case(method) && route_matches(p, path))
            .max_by_key(|(_, _, p)| p.split('/').filter(|s| !s.starts_with('{')).count())
            .map(|(f, _, p)| (f, p.as_str()))
    }

    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Days a key is kept: the shortest expiration whose prefix it has.
    pub fn retention_days(&self, key: &str) -> Option<u32> {
        self.expirations
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, days)| *days)
            .min()
    }
}

/// Whether `path` matches an API route `pattern` (`{param}` matches one segment).
pub fn route_matches(pattern: &str, path: &str) -> bool {
    let (pattern, path) = (pattern.trim_end_matches('/'), path.trim_end_matches('/'));
    let mut wanted = pattern.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {}
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// Invocations a month of a `rate(n unit)` schedule (a month being 730 hours, as AWS
/// prices them); `None` for a `cron(…)` schedule.
pub fn runs_per_month(schedule: &str) -> Option<f64> {
    let inner = schedule.strip_prefix("rate(")?.strip_suffix(')')?;
    let (n, unit) = inner.trim().split_once(' ')?;
    let n: f64 = n.parse().ok()?;
    let minutes = match unit.trim_end_matches('s') {
        "minute" => n,
        "hour" => n * 60.0,
        "day" => n * 1440.0,
        _ => return None,
    };
    Some(730.0 * 60.0 / minutes)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    /// Hash and range key attributes: an item is in a (sparse) index only with all of them.
    pub keys: Vec<String>,
    pub projection: Projection,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    All,
    KeysOnly,
    /// These non-key attributes besides the keys.
    Include(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Parameters:
  Days:
    Type: Number
    Default: 30  # a month
    Description: >-
      Text: with a colon
      - and a dash
Globals:
  Function:
    MemorySize: 192
    Architectures: [arm64]
Resources:
  A:
    Type: AWS::Serverless::Function
    Properties:
      MemorySize: 256
      Policies:
        - Version: \"2012-10-17\"
          Statement:
            - Effect: Allow
              Action:
                - dynamodb:GetItem
      Events:
        Get:
          Type: HttpApi
          Properties:
            Path: /v1/things/{id}
            Method: get
  B:
    Type: AWS::Serverless::Function
    Properties:
      Events:
        Tick:
          Type: Schedule
          Properties:
            Schedule: rate(5 minutes)
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      LifecycleConfiguration:
        Rules:
          - Id: One
            Status: Enabled
            Prefix: outputs/
            ExpirationInDays: !Ref Days
          - Id: Two
            Prefix: inputs/
            ExpirationInDays: 1
";

    #[test]
    fn flattens_block_yaml() {
        let flat = flatten(SAMPLE);
        assert_eq!(flat["Parameters.Days.Default"], "30");
        assert!(!flat.keys().any(|k| k.contains("Text")));
        assert_eq!(flat["Globals.Function.Architectures"], "[arm64]");
        assert_eq!(
            flat["Resources.A.Properties.Policies.[0].Statement.[0].Action.[0]"],
            "dynamodb:GetItem"
        );
        assert_eq!(
            flat["Resources.A.Properties.Policies.[0].Version"],
            "2012-10-17"
        );
        assert_eq!(
            flat["Resources.Bucket.Properties.LifecycleConfiguration.Rules.[1].Prefix"],
            "inputs/"
        );
    }

    #[test]
    fn reads_functions_routes_and_lifecycle() {
        let t = Template::parse(SAMPLE).unwrap();
        let a = t.function("A").unwrap();
        assert_eq!(a.memory_mb, 256);
        assert_eq!(t.function("B").unwrap().memory_mb, 192);
        assert_eq!(t.route("GET", "/v1/things/abc").unwrap().name, "A");
        assert!(t.route("GET", "/v1/things").is_none());
        assert!(t.route("POST", "/v1/things/abc").is_none());
        assert_eq!(
            t.function("B").unwrap().schedule.as_deref(),
            Some("rate(5 minutes)")
        );
        assert_eq!(t.retention_days("outputs/x/0.webp"), Some(30));
        assert_eq!(t.retention_days("inputs/abc"), Some(1));
        assert_eq!(t.retention_days("other"), None);
    }

    #[test]
    fn schedules() {
        assert_eq!(runs_per_month("rate(5 minutes)"), Some(8760.0));
        assert_eq!(runs_per_month("rate(1 hour)"), Some(730.0));
        assert_eq!(runs_per_month("cron(0 * * * ? *)"), None);
    }

    /// The real template: every function found with its memory, the routes the app serves.
    #[test]
    fn reads_the_real_template() {
        let t = Template::parse(include_str!("../../template.yaml")).unwrap();
        assert!(t.functions.len() >= 5, "{:?}", t.functions);
        for f in &t.functions {
            assert!(f.memory_mb >= 128, "{f:?}");
        }
        assert!(t.route("POST", "/v1/predictions").is_some());
        assert!(t.route("POST", "/webhooks/replicate").is_some());
        assert!(t.route("GET", "/v1/predictions/abc").is_some());
        assert_eq!(
            t.queue_consumer("CopyQueue").map(|f| f.name.as_str()),
            Some("CopierFunction")
        );
        assert_eq!(
            t.queue_consumer("CallbackQueue").map(|f| f.name.as_str()),
            Some("CallbacksFunction")
        );
        assert!(t.functions.iter().any(|f| f.schedule.is_some()));
        assert!(t.retention_days("outputs/a/0.webp").is_some());
        assert_eq!(t.retention_days("inputs/abc"), Some(1));
        let index = &t.indexes[0];
        assert_eq!(index.keys, ["open_shard", "created_at"]);
        assert_eq!(t.table_keys, ["pk"]);
        assert_eq!(t.ttl_attribute.as_deref(), Some("expires_at"));
        assert_eq!(t.log_level.as_deref(), Some("info"));
        assert_eq!(t.system_log_level.as_deref(), Some("WARN"));
    }
}
