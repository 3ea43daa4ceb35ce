//! Counting SQS and S3 calls as they pass the meter: SQS bills every 64 KB of payload as a
//! request; S3 by request tier, and by the bytes it keeps (an overwrite is not stored
//! twice, a multipart upload counts once completed).

use super::classify::{S3Op, S3Request, object_prefix};
use super::tally::SqsCount;
use super::{Meter, SQS_CHUNK_BYTES, State};
use crate::http_server::HttpResponse;
use http::HeaderMap;
use serde_json::Value;

impl Meter {
    pub(super) fn count_sqs(&self, op: &str, body: &[u8], response: &HttpResponse) {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let chunks = |bytes: u64| bytes.div_ceil(SQS_CHUNK_BYTES).max(1);
        let mut count = SqsCount {
            calls: 1,
            billed: 1,
            ..SqsCount::default()
        };
        match op {
            "SendMessage" => {
                count.billed = chunks(request["MessageBody"].as_str().map_or(0, str::len) as u64);
                count.messages = 1;
            }
            "SendMessageBatch" => {
                let entries = request["Entries"].as_array().cloned().unwrap_or_default();
                let bytes: usize = entries
                    .iter()
                    .filter_map(|e| e["MessageBody"].as_str())
                    .map(str::len)
                    .sum();
                count.billed = chunks(bytes as u64);
                count.messages = entries.len() as u64;
            }
            "ReceiveMessage" if response.status().is_success() => {
                let answer: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
                let messages = answer["Messages"].as_array().cloned().unwrap_or_default();
                let bytes: usize = messages
                    .iter()
                    .filter_map(|m| m["Body"].as_str())
                    .map(str::len)
                    .sum();
                count.billed = chunks(bytes as u64);
                count.messages = messages.len() as u64;
                count.empty = u64::from(messages.is_empty());
            }
            _ => {}
        }
        let mut state = self.lock();
        *state
            .tally
            .requests
            .entry(("sqs".into(), op.to_owned()))
            .or_default() += 1;
        let entry = state.tally.sqs.entry(op.to_owned()).or_default();
        entry.calls += count.calls;
        entry.billed += count.billed;
        entry.empty += count.empty;
        entry.messages += count.messages;
    }

    pub(super) fn count_s3(
        &self,
        request: S3Request,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
        response: &HttpResponse,
    ) {
        let key = request.key.clone().unwrap_or_default();
        let prefix = if request.key.is_some() {
            object_prefix(&key)
        } else {
            "(bucket)".to_owned()
        };
        // With aws-chunked uploads the body carries signatures; this header has the size.
        let size = headers
            .get("x-amz-decoded-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(body.len() as u64);
        let param = |name: &str| {
            query.split('&').find_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k == name).then(|| v.to_owned())
            })
        };
        let ok = response.status().is_success();
        let mut state = self.lock();
        let op_name = format!("{:?}", request.op);
        *state
            .tally
            .requests
            .entry(("s3".into(), op_name))
            .or_default() += 1;
        *state
            .tally
            .s3
            .entry((request.op, prefix, request.presigned))
            .or_default() += 1;
        if !ok {
            return;
        }
        let upload = || (key.clone(), param("uploadId").unwrap_or_default());
        match request.op {
            S3Op::PutObject | S3Op::CopyObject => set_object(&mut state, &key, Some(size)),
            S3Op::UploadPart => {
                let part = param("partNumber").unwrap_or_default();
                state
                    .uploads
                    .entry(upload())
                    .or_default()
                    .insert(part, size);
            }
            S3Op::CompleteMultipartUpload => {
                let total = state
                    .uploads
                    .remove(&upload())
                    .map(|parts| parts.values().sum());
                set_object(&mut state, &key, total);
            }
            S3Op::AbortMultipartUpload => {
                state.uploads.remove(&upload());
            }
            S3Op::DeleteObject => set_object(&mut state, &key, None),
            S3Op::GetObject if request.presigned => {
                state.tally.downloaded_bytes += response.body().len() as u64;
            }
            _ => {}
        }
    }
}

/// Records `key`'s new size (`None`: deleted) in the per-prefix totals.
pub(super) fn set_object(state: &mut State, key: &str, size: Option<u64>) {
    let old = match size {
        Some(size) => state.objects.insert(key.to_owned(), size),
        None => state.objects.remove(key),
    };
    let stored = state.tally.stored.entry(object_prefix(key)).or_default();
    match (old, size) {
        (None, Some(new)) => {
            stored.objects += 1;
            stored.bytes += new;
        }
        (Some(old), Some(new)) => stored.bytes = (stored.bytes + new).saturating_sub(old),
        (Some(old), None) => {
            stored.objects = stored.objects.saturating_sub(1);
            stored.bytes = stored.bytes.saturating_sub(old);
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Stored;

    #[test]
    fn overwrites_and_deletes_keep_stored_bytes_right() {
        let mut state = State::default();
        set_object(&mut state, "outputs/a/0.webp", Some(100));
        set_object(&mut state, "outputs/a/0.webp", Some(120));
        set_object(&mut state, "inputs/x", Some(7));
        assert_eq!(
            state.tally.stored["outputs/"],
            Stored {
                objects: 1,
                bytes: 120
            }
        );
        set_object(&mut state, "inputs/x", None);
        assert_eq!(state.tally.stored["inputs/"], Stored::default());
    }
}
