//! A phase's counts in dollars, by component, and the printed tables.

use std::fmt::Write as _;

use super::classify::{S3Tier, key_prefix};
use super::prices::{PRICES, gb_months, gb_seconds};
use super::size::STORAGE_OVERHEAD_BYTES;
use super::{InvocationTally, StoredItem, Tally};
use crate::sam::Template;

/// What one Lambda invocation adds to its log group besides the app's lines: the
/// `platform.start` and `platform.report` records of the JSON log format (shaped as AWS's
/// documentation shows them).
const PLATFORM_LINES: [&str; 2] = [
    r#"{"time":"2026-01-15T12:00:00.000Z","type":"platform.start","record":{"requestId":"6f7f0961-9bd4-4c56-a2d6-6c7d0c0a4b5e","version":"$LATEST"}}"#,
    r#"{"time":"2026-01-15T12:00:00.020Z","type":"platform.report","record":{"requestId":"6f7f0961-9bd4-4c56-a2d6-6c7d0c0a4b5e","metrics":{"durationMs":18.52,"billedDurationMs":19,"memorySizeMB":256,"maxMemoryUsedMB":31},"status":"success"}}"#,
];

/// Bytes Lambda adds to a function's log group per invocation under `template`: its
/// `platform.start` and `platform.report` records, which it sends at INFO and drops at WARN.
pub fn platform_log_bytes_per_invocation(template: &Template) -> u64 {
    match template.system_log_level.as_deref() {
        Some(level) if level.eq_ignore_ascii_case("warn") => 0,
        _ => PLATFORM_LINES.iter().map(|l| l.len() as u64 + 1).sum(),
    }
}

/// What a phase of the run caused.
pub struct Phase<'a> {
    pub template: &'a Template,
    pub aws: &'a Tally,
    pub lambda: &'a InvocationTally,
    /// Bytes and lines the app logged (JSON lines at the template's level).
    pub app_log_bytes: u64,
    /// Items the phase added to the table, and the time (epoch seconds) to read TTLs from.
    pub items: &'a [StoredItem],
    pub now_epoch: u64,
}

/// One priced component; `quantity` is the phase's total.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub component: String,
    pub quantity: f64,
    pub unit: String,
    pub usd: f64,
}

fn line(component: impl Into<String>, quantity: f64, unit: impl Into<String>, usd: f64) -> Line {
    Line {
        component: component.into(),
        quantity,
        unit: unit.into(),
        usd,
    }
}

/// Seconds DynamoDB keeps items with no TTL, and S3 objects with no expiration rule, for
/// pricing: a month (they are kept longer; the report says so).
const UNBOUNDED_SECONDS: f64 = 30.0 * 86400.0;

pub fn lines(phase: &Phase<'_>) -> Vec<Line> {
    let mut out = Vec::new();
    let api: u64 = phase.lambda.api_requests.values().sum();
    out.push(line(
        "API Gateway HTTP API requests",
        api as f64,
        "requests",
        api as f64 * PRICES.api_gateway_request,
    ));
    let invocations: u64 = phase.lambda.functions.values().map(|f| f.invocations).sum();
    out.push(line(
        "Lambda requests",
        invocations as f64,
        "invocations",
        invocations as f64 * PRICES.lambda_request,
    ));
    for (name, calls) in &phase.lambda.functions {
        let memory = phase.template.function(name).map_or(128, |f| f.memory_mb);
        out.push(line(
            format!("Lambda duration {name} ({memory} MB)"),
            calls.billed_ms as f64,
            "ms",
            gb_seconds(memory, calls.billed_ms) * PRICES.lambda_arm_gb_second,
        ));
    }
    let (table_writes, index_writes) = phase.aws.dynamo.values().fold((0, 0), |(t, i), c| {
        (t + c.write_units, i + c.index_write_units)
    });
    out.push(line(
        "DynamoDB writes (table)",
        table_writes as f64,
        "WRU",
        table_writes as f64 * PRICES.dynamo_write_unit,
    ));
    out.push(line(
        "DynamoDB writes (global secondary indexes)",
        index_writes as f64,
        "WRU",
        index_writes as f64 * PRICES.dynamo_write_unit,
    ));
    let reads: f64 = phase.aws.dynamo.values().map(|c| c.read_units).sum();
    out.push(line(
        "DynamoDB reads",
        reads,
        "RRU",
        reads * PRICES.dynamo_read_unit,
    ));
    if !phase.items.is_empty() {
        let (mut bytes, mut gbm) = (0.0, 0.0);
        for item in phase.items {
            let stored = (item.bytes + STORAGE_OVERHEAD_BYTES) as f64;
            let seconds = item.expires_at.map_or(UNBOUNDED_SECONDS, |at| {
                at.saturating_sub(phase.now_epoch) as f64
            });
            bytes += stored;
            gbm += gb_months(stored, seconds);
        }
        out.push(line(
            "DynamoDB storage + PITR (until TTL)",
            bytes,
            "bytes",
            gbm * (PRICES.dynamo_storage_gb_month + PRICES.dynamo_pitr_gb_month),
        ));
    }
    let s3 = |presigned: bool, tier: S3Tier| -> u64 {
        phase
            .aws
            .s3
            .iter()
            .filter(|((op, _, p), _)| *p == presigned && op.tier() == tier)
            .map(|(_, n)| n)
            .sum()
    };
    let (tier1, tier2) = (s3(false, S3Tier::Tier1), s3(false, S3Tier::Tier2));
    out.push(line(
        "S3 PUT/POST/LIST requests by the functions",
        tier1 as f64,
        "requests",
        tier1 as f64 * PRICES.s3_tier1_request,
    ));
    if tier2 > 0 {
        out.push(line(
            "S3 GET/HEAD requests by the functions",
            tier2 as f64,
            "requests",
            tier2 as f64 * PRICES.s3_tier2_request,
        ));
    }
    let user = s3(true, S3Tier::Tier2) + s3(true, S3Tier::Tier1);
    out.push(line(
        "S3 GETs of presigned URLs (client downloads)",
        user as f64,
        "requests",
        user as f64 * PRICES.s3_tier2_request,
    ));
    for (prefix, stored) in &phase.aws.stored {
        let days = phase.template.retention_days(prefix);
        let seconds = days.map_or(UNBOUNDED_SECONDS, |d| f64::from(d) * 86400.0);
        let kept = days.map_or("no expiry: 30 d priced".to_owned(), |d| format!("{d} d"));
        out.push(line(
            format!("S3 storage {prefix} (kept {kept})"),
            stored.bytes as f64,
            "bytes",
            gb_months(stored.bytes as f64, seconds) * PRICES.s3_storage_gb_month,
        ));
    }
    let sqs: u64 = phase.aws.sqs.values().map(|s| s.billed - s.empty).sum();
    out.push(line(
        "SQS requests (empty polls excluded)",
        sqs as f64,
        "requests",
        sqs as f64 * PRICES.sqs_request,
    ));
    let log_bytes =
        phase.app_log_bytes + invocations * platform_log_bytes_per_invocation(phase.template);
    out.push(line(
        "CloudWatch Logs ingestion",
        log_bytes as f64,
        "bytes",
        log_bytes as f64 / super::prices::GB * PRICES.logs_ingest_gb,
    ));
    out
}

fn quantity(q: f64) -> String {
    match q.abs() {
        x if x >= 1000.0 => format!("{q:.0}"),
        x if x >= 10.0 => format!("{q:.1}"),
        x if x >= 0.1 || x == 0.0 => format!("{q:.2}"),
        _ => format!("{q:.4}"),
    }
}

/// The component table: per `unit` (image or answer) quantity and dollars per 1,000.
pub fn render(lines: &[Line], count: u64, unit: &str) -> String {
    let n = count.max(1) as f64;
    let total: f64 = lines.iter().map(|l| l.usd).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<52} {:>24} {:>14} {:>6}",
        "component",
        format!("per {unit}"),
        format!("$ per 1,000 {unit}s"),
        "share"
    );
    for l in lines {
        let _ = writeln!(
            out,
            "  {:<52} {:>24} {:>14.6} {:>5.1}%",
            l.component,
            format!("{} {}", quantity(l.quantity / n), l.unit),
            l.usd / n * 1000.0,
            if total > 0.0 {
                l.usd / total * 100.0
            } else {
                0.0
            }
        );
    }
    let _ = writeln!(
        out,
        "  {:<52} {:>24} {:>14.6}",
        "AWS total",
        "",
        total / n * 1000.0
    );
    out
}

/// DynamoDB by operation and key group, per `unit`: what to look at for savings.
pub fn render_dynamo(aws: &Tally, count: u64, unit: &str) -> String {
    let n = count.max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<12} {:<20} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation", "key group", "calls", "WRU", "GSI WRU", "RRU", "refused"
    );
    let mut by_group: std::collections::BTreeMap<&str, (f64, f64)> = Default::default();
    for ((op, group), c) in &aws.dynamo {
        let _ = writeln!(
            out,
            "  {:<12} {:<20} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            op,
            group,
            c.calls as f64 / n,
            c.write_units as f64 / n,
            c.index_write_units as f64 / n,
            c.read_units / n,
            c.failed_conditions as f64 / n
        );
        let entry = by_group.entry(group).or_default();
        entry.0 += (c.write_units + c.index_write_units) as f64;
        entry.1 += c.read_units;
    }
    let _ = writeln!(
        out,
        "  (per {unit}; refused = conditional writes that failed, billed anyway)"
    );
    for (group, (w, r)) in by_group {
        let _ = writeln!(
            out,
            "  {:<33} {:>9.2} WRU {:>9.2} RRU  ${:.6} per 1,000 {unit}s",
            group,
            w / n,
            r / n,
            (w * PRICES.dynamo_write_unit + r * PRICES.dynamo_read_unit) / n * 1000.0
        );
    }
    out
}

/// Items per key group with their mean stored size and the TTL they were given.
pub fn render_items(items: &[StoredItem], now_epoch: u64, count: u64, unit: &str) -> String {
    let n = count.max(1) as f64;
    // Per group: items, bytes, items with a TTL and their days left.
    let mut groups: std::collections::BTreeMap<String, (u64, u64, u64, f64)> = Default::default();
    for item in items {
        let entry = groups.entry(key_prefix(&item.pk)).or_default();
        entry.0 += 1;
        entry.1 += item.bytes;
        if let Some(at) = item.expires_at {
            entry.2 += 1;
            entry.3 += at.saturating_sub(now_epoch) as f64 / 86400.0;
        }
    }
    let mut out = String::new();
    for (group, (items, bytes, with_ttl, days)) in groups {
        let ttl = if with_ttl == items {
            format!("TTL {:.1} d", days / with_ttl as f64)
        } else {
            format!(
                "{} of {items} without TTL (priced for 30 d)",
                items - with_ttl
            )
        };
        let _ = writeln!(
            out,
            "  {:<14} {:>6.2} items per {unit}, {:>6.0} bytes each (+100 overhead), {ttl}",
            group,
            items as f64 / n,
            bytes as f64 / items as f64,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::classify::S3Op;
    use super::super::{Capacity, FunctionCalls, SqsCount, Stored};
    use super::*;

    #[test]
    fn prices_each_component() {
        let template = Template::parse(include_str!("../../../template.yaml")).unwrap();
        let mut aws = Tally::default();
        aws.dynamo.insert(
            ("PutItem".into(), "pred#".into()),
            Capacity {
                calls: 2,
                write_units: 2,
                index_write_units: 2,
                read_units: 0.0,
                failed_conditions: 0,
            },
        );
        aws.s3
            .insert((S3Op::PutObject, "outputs/".into(), false), 1);
        aws.stored.insert(
            "outputs/".into(),
            Stored {
                objects: 1,
                bytes: 1 << 20,
            },
        );
        aws.sqs.insert(
            "ReceiveMessage".into(),
            SqsCount {
                calls: 3,
                billed: 3,
                empty: 2,
                messages: 1,
            },
        );
        let mut lambda = InvocationTally::default();
        lambda.api_requests.insert("POST /v1/predictions".into(), 1);
        lambda.functions.insert(
            "SubmitFunction".into(),
            FunctionCalls {
                invocations: 1,
                billed_ms: 1000,
            },
        );
        let phase = Phase {
            template: &template,
            aws: &aws,
            lambda: &lambda,
            app_log_bytes: 0,
            items: &[],
            now_epoch: 0,
        };
        let lines = lines(&phase);
        let usd = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.component.starts_with(prefix))
                .unwrap()
                .usd
        };
        assert!((usd("API Gateway") - 1e-6).abs() < 1e-15);
        assert!((usd("DynamoDB writes (table)") - 1.25e-6).abs() < 1e-12);
        assert!((usd("Lambda duration SubmitFunction") - 0.25 * 0.000_013_333_4).abs() < 1e-12);
        assert!((usd("SQS") - 0.4e-6).abs() < 1e-15);
        // 1 MiB for the retention's hours of a 730-hour GB-month.
        let days = f64::from(template.retention_days("outputs/x").unwrap());
        let storage = usd("S3 storage outputs/");
        let expected = 0.023 / 1024.0 * days * 24.0 / 730.0;
        assert!((storage - expected).abs() < 1e-12, "{storage}");
        let text = render(&lines, 1, "image");
        assert!(text.contains("AWS total"), "{text}");
    }
}
