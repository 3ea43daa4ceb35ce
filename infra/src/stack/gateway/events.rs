//! The event payloads AWS hands the functions, built locally in the same shapes: API
//! Gateway HTTP API v2 requests, SQS batches, EventBridge scheduled events; and the answers
//! read back (v2 responses, partial batch responses).

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::http_server::{HttpRequest, HttpResponse};

/// The API Gateway v2 event of `request`, which the template routes to `route` (a pattern
/// such as `/v1/predictions/{id}`).
pub fn http_api_v2(request: &HttpRequest, method: &str, route: &str, source_ip: &str) -> Bytes {
    let path = request.uri().path();
    let raw_query = request.uri().query().unwrap_or_default();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in request.headers() {
        // Bytes outside visible ASCII reach the function too (as text), for it to refuse.
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = value.as_ref();
        if name == http::header::COOKIE {
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()));
            continue;
        }
        // API Gateway joins repeated headers with commas.
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    let host = headers
        .get("host")
        .map(|h| h.split(':').next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let route_key = format!("{method} {route}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or_default(),
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers_value(request, "user-agent"),
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": route_key,
            "stage": "$default",
            "time": httpdate::fmt_http_date(SystemTime::now()),
            "timeEpoch": now.as_millis() as u64,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    let query = query_parameters(raw_query);
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    let parameters = path_parameters(route, path);
    if !parameters.is_empty() {
        event["pathParameters"] = Value::Object(parameters);
    }
    if !request.body().is_empty() {
        // Text bodies go as they are, anything else base64-encoded, as API Gateway does.
        match std::str::from_utf8(request.body()) {
            Ok(text) => event["body"] = Value::String(text.to_owned()),
            Err(_) => {
                event["body"] = Value::String(BASE64.encode(request.body()));
                event["isBase64Encoded"] = Value::Bool(true);
            }
        }
    }
    Bytes::from(event.to_string())
}

fn headers_value(request: &HttpRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// `a=1&b=2&a=3` → `{"a": "1,3", "b": "2"}` (API Gateway v2 joins repeats with commas).
fn query_parameters(raw: &str) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        match out.get_mut(name.as_ref()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                out.insert(name.into_owned(), Value::String(value.into_owned()));
            }
        }
    }
    out
}

/// The `{name}` segments of `route` as found in `path` (percent-decoded).
pub fn path_parameters(route: &str, path: &str) -> Map<String, Value> {
    route
        .trim_end_matches('/')
        .split('/')
        .zip(path.trim_end_matches('/').split('/'))
        .filter_map(|(pattern, segment)| {
            let name = pattern.strip_prefix('{')?.strip_suffix('}')?;
            let decoded = url::form_urlencoded::parse(format!("v={segment}").as_bytes())
                .next()
                .map_or_else(|| segment.to_owned(), |(_, v)| v.into_owned());
            Some((name.to_owned(), Value::String(decoded)))
        })
        .collect()
}

/// The HTTP response an API Gateway v2 function response stands for; `None` if it is not
/// one (API Gateway then answers 500).
pub fn http_response(payload: &[u8]) -> Option<HttpResponse> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let status = value["statusCode"].as_u64().unwrap_or(200);
    let body = match value["body"].as_str() {
        Some(text) if value["isBase64Encoded"].as_bool() == Some(true) => {
            Bytes::from(BASE64.decode(text).ok()?)
        }
        Some(text) => Bytes::from(text.to_owned()),
        None => Bytes::new(),
    };
    let mut response = HttpResponse::new(body);
    *response.status_mut() = http::StatusCode::from_u16(u16::try_from(status).ok()?).ok()?;
    let headers = response.headers_mut();
    if let Some(map) = value["headers"].as_object() {
        for (name, value) in map {
            if let (Ok(name), Some(Ok(value))) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                value.as_str().map(http::HeaderValue::from_str),
            ) {
                headers.append(name, value);
            }
        }
    }
    if let Some(map) = value["multiValueHeaders"].as_object() {
        for (name, values) in map {
            let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for value in values.as_array().into_iter().flatten() {
                if let Some(Ok(value)) = value.as_str().map(http::HeaderValue::from_str)
                    && !headers.get_all(&name).iter().any(|v| *v == value)
                {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
    for cookie in value["cookies"].as_array().into_iter().flatten() {
        if let Some(Ok(value)) = cookie.as_str().map(http::HeaderValue::from_str) {
            headers.append(http::header::SET_COOKIE, value);
        }
    }
    Some(response)
}

/// An SQS event of `messages` from the queue `queue_arn`.
pub fn sqs_batch(messages: &[aws_sdk_sqs::types::Message], queue_arn: &str) -> Bytes {
    use aws_sdk_sqs::types::MessageSystemAttributeName as Name;
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attribute = |name: Name| {
                m.attributes
                    .as_ref()
                    .and_then(|a| a.get(&name))
                    .cloned()
                    .unwrap_or_default()
            };
            json!({
                "messageId": m.message_id.clone().unwrap_or_default(),
                "receiptHandle": m.receipt_handle.clone().unwrap_or_default(),
                "body": m.body.clone().unwrap_or_default(),
                "attributes": {
                    "ApproximateReceiveCount": attribute(Name::ApproximateReceiveCount),
                    "SentTimestamp": attribute(Name::SentTimestamp),
                    "SenderId": attribute(Name::SenderId),
                    "ApproximateFirstReceiveTimestamp": attribute(Name::ApproximateFirstReceiveTimestamp),
                },
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body.clone().unwrap_or_default(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    Bytes::from(json!({ "Records": records }).to_string())
}

/// The message ids a partial batch response reports as failed; `None` when the answer is
/// not a partial batch response (Lambda then takes the whole batch as failed).
pub fn batch_failures(payload: &[u8]) -> Option<HashSet<String>> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    if !value.is_object() {
        return None;
    }
    Some(
        value["batchItemFailures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// An EventBridge scheduled event for `function`'s rule.
pub fn scheduled(function: &str) -> Bytes {
    Bytes::from(
        json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "region": "us-east-1",
            "resources": [format!("arn:aws:events:us-east-1:000000000000:rule/{function}")],
            "detail": {},
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_the_v2_event_lambda_http_reads() {
        let request = http::Request::builder()
            .method("POST")
            .uri("/v1/predictions/abc%20d/cancel?x=1&x=2")
            .header("host", "127.0.0.1:3000")
            .header("x-many", "a")
            .header("x-many", "b")
            .header("cookie", "a=1; b=2")
            .header(
                "idempotency-key",
                http::HeaderValue::from_bytes("×ø".as_bytes()).unwrap(),
            )
            .body(Bytes::from_static(&[0xff, 0x00]))
            .unwrap();
        let event: Value = serde_json::from_slice(&http_api_v2(
            &request,
            "POST",
            "/v1/predictions/{id}/cancel",
            "127.0.0.1",
        ))
        .unwrap();
        assert_eq!(event["routeKey"], "POST /v1/predictions/{id}/cancel");
        assert_eq!(event["pathParameters"]["id"], "abc d");
        assert_eq!(event["queryStringParameters"]["x"], "1,2");
        assert_eq!(event["headers"]["x-many"], "a,b");
        assert_eq!(
            event["headers"]["idempotency-key"], "×ø",
            "a header outside visible ASCII is passed on for the function to judge"
        );
        assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["body"], BASE64.encode([0xff, 0x00]));
        assert_eq!(event["requestContext"]["domainName"], "127.0.0.1");
        // lambda_http reads it as an API Gateway v2 request.
        let parsed = lambda_http::request::from_str(&event.to_string()).expect("a v2 event");
        assert_eq!(parsed.uri().path(), "/v1/predictions/abc%20d/cancel");
    }

    #[test]
    fn a_v2_response_becomes_the_http_response() {
        let payload = json!({
            "statusCode": 201,
            "headers": {"content-type": "application/json"},
            "multiValueHeaders": {"x-a": ["1", "2"]},
            "body": BASE64.encode(b"{}"),
            "isBase64Encoded": true,
            "cookies": ["s=1"],
        });
        let response = http_response(payload.to_string().as_bytes()).unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.body().as_ref(), b"{}");
        assert_eq!(response.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(response.headers()["set-cookie"], "s=1");
        assert!(http_response(b"not json").is_none());
    }
}
