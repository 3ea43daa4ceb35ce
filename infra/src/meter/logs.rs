//! Bytes the functions would send to CloudWatch Logs: a `tracing` subscriber that builds
//! each enabled event of the app's crate as the JSON line `telemetry::init_json_logs`
//! writes (`level`, `fields`, the current span's fields and name; no time, no target),
//! counts its length and drops it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Debug, Default)]
pub struct LogBytes {
    bytes: AtomicU64,
    lines: AtomicU64,
}

impl LogBytes {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }
}

/// Installs the counter as the process's subscriber: events at `level` (`info`, …; the
/// functions' `RUST_LOG`) or more severe whose target starts with `target_prefix` are
/// counted. Fails if a subscriber is set.
pub fn install(level: &str, target_prefix: &'static str) -> Result<Arc<LogBytes>, String> {
    let level: Level = level.parse().map_err(|_| format!("log level `{level}`"))?;
    let counts = Arc::new(LogBytes::default());
    let subscriber = Counting {
        counts: counts.clone(),
        level,
        target_prefix,
        spans: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    };
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    Ok(counts)
}

struct SpanData {
    name: &'static str,
    fields: Map<String, Value>,
    references: usize,
}

struct Counting {
    counts: Arc<LogBytes>,
    level: Level,
    target_prefix: &'static str,
    spans: Mutex<HashMap<u64, SpanData>>,
    next_id: AtomicU64,
}

thread_local! {
    /// Spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
}

impl Counting {
    fn spans(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SpanData>> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Subscriber for Counting {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.level))
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut fields = Map::new();
        attributes.record(&mut Fields(&mut fields));
        self.spans().insert(
            id,
            SpanData {
                name: attributes.metadata().name(),
                fields,
                references: 1,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(data) = self.spans().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut data.fields));
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        if !metadata.target().starts_with(self.target_prefix) {
            return;
        }
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let mut line = json!({"level": metadata.level().as_str(), "fields": fields});
        let current = ENTERED.with(|entered| entered.borrow().last().copied());
        if let Some(data) = current.and_then(|id| {
            self.spans().get(&id).map(|d| {
                let mut span = d.fields.clone();
                span.insert("name".into(), json!(d.name));
                span
            })
        }) {
            line["span"] = Value::Object(data);
        }
        let bytes = line.to_string().len() as u64 + 1;
        self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.counts.lines.fetch_add(1, Ordering::Relaxed);
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if let Some(at) = entered.iter().rposition(|e| *e == id) {
                entered.remove(at);
            }
        });
    }

    fn clone_span(&self, span: &Id) -> Id {
        if let Some(data) = self.spans().get_mut(&span.into_u64()) {
            data.references += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        let mut spans = self.spans();
        let id = span.into_u64();
        let closed = spans.get_mut(&id).is_some_and(|data| {
            data.references -= 1;
            data.references == 0
        });
        if closed {
            spans.remove(&id);
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_json_line_of_each_event_with_its_span() {
        let counts = Arc::new(LogBytes::default());
        let subscriber = Counting {
            counts: counts.clone(),
            level: Level::INFO,
            target_prefix: "local_stack",
            spans: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("not at info");
            let span = tracing::info_span!("request", request_id = "r1");
            let _entered = span.enter();
            tracing::info!(key = 3, "hello");
        });
        assert_eq!(counts.lines(), 1);
        let expected = r#"{"fields":{"key":3,"message":"hello"},"level":"INFO","span":{"name":"request","request_id":"r1"}}"#;
        assert_eq!(counts.bytes(), expected.len() as u64 + 1);
    }
}
