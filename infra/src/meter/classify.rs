//! Which AWS service and operation an HTTP request to the emulator is: DynamoDB and SQS
//! (JSON protocol) name it in `x-amz-target`, SQS's older query protocol in a form field
//! `Action`; everything else is S3 (path-style, as the local clients address it), told
//! apart by method, key and query.

use http::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Dynamo(String),
    Sqs(String),
    S3(S3Request),
    /// moto's own API or an operation of another service (`x-amz-target`).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub op: S3Op,
    pub bucket: String,
    /// The object key, percent-decoded.
    pub key: Option<String>,
    /// Signed in the query: a presigned URL someone was handed (an end user's download).
    pub presigned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum S3Op {
    PutObject,
    CopyObject,
    UploadPart,
    CreateMultipartUpload,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    GetObject,
    HeadObject,
    ListObjects,
    ListBuckets,
    ListParts,
    DeleteObject,
    DeleteObjects,
    /// `PUT`/`POST` on a bucket: creating it or setting its configuration.
    BucketWrite,
    /// `GET`/`HEAD` on a bucket's configuration.
    BucketRead,
    DeleteBucket,
}

/// S3's request price classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum S3Tier {
    /// PUT, COPY, POST, LIST.
    Tier1,
    /// GET, HEAD and all other requests.
    Tier2,
    /// DELETE and CANCEL (abort multipart).
    Free,
}

impl S3Op {
    pub fn tier(self) -> S3Tier {
        use S3Op::*;
        match self {
            PutObject
            | CopyObject
            | UploadPart
            | CreateMultipartUpload
            | CompleteMultipartUpload
            | ListObjects
            | ListBuckets
            | ListParts
            | BucketWrite => S3Tier::Tier1,
            GetObject | HeadObject | BucketRead => S3Tier::Tier2,
            AbortMultipartUpload | DeleteObject | DeleteObjects | DeleteBucket => S3Tier::Free,
        }
    }
}

pub fn classify(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Request {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return match target.split_once('.') {
            Some(("DynamoDB_20120810", op)) => Request::Dynamo(op.to_owned()),
            Some(("AmazonSQS", op)) => Request::Sqs(op.to_owned()),
            _ => Request::Other(target.to_owned()),
        };
    }
    if path.starts_with("/moto-api") {
        return Request::Other("moto-api".into());
    }
    let form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if method == "POST" && form {
        let fields: Vec<(String, String)> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(action) = field("Action") {
            return match field("Version").as_deref() {
                Some("2012-11-05") => Request::Sqs(action),
                _ => Request::Other(format!("query:{action}")),
            };
        }
    }
    Request::S3(classify_s3(method, path, query, headers))
}

fn classify_s3(method: &str, path: &str, query: &str, headers: &HeaderMap) -> S3Request {
    let path = path.trim_start_matches('/');
    let (bucket, key) = match path.split_once('/') {
        Some((bucket, key)) if !key.is_empty() => (bucket, Some(percent_decode(key))),
        Some((bucket, _)) => (bucket, None),
        None => (path, None),
    };
    let params: Vec<&str> = query
        .split('&')
        .map(|p| p.split('=').next().unwrap_or_default())
        .collect();
    let has = |name: &str| params.contains(&name);
    let copy = headers.contains_key("x-amz-copy-source");
    use S3Op::*;
    let op = match (method, key.is_some()) {
        ("GET", false) if bucket.is_empty() => ListBuckets,
        ("GET", false) if has("uploads") => ListObjects,
        ("GET", false) if query.is_empty() || has("list-type") || has("prefix") => ListObjects,
        ("GET" | "HEAD", false) => BucketRead,
        ("GET", true) if has("uploadId") => ListParts,
        ("GET", true) => GetObject,
        ("HEAD", true) => HeadObject,
        ("PUT", true) if has("uploadId") => UploadPart,
        ("PUT", true) if copy => CopyObject,
        ("PUT", true) => PutObject,
        ("POST", true) if has("uploads") => CreateMultipartUpload,
        ("POST", true) if has("uploadId") => CompleteMultipartUpload,
        ("POST", false) if has("delete") => DeleteObjects,
        ("PUT" | "POST", _) => BucketWrite,
        ("DELETE", true) if has("uploadId") => AbortMultipartUpload,
        ("DELETE", true) => DeleteObject,
        ("DELETE", false) => DeleteBucket,
        _ => BucketRead,
    };
    S3Request {
        op,
        bucket: bucket.to_owned(),
        key,
        presigned: has("X-Amz-Signature"),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The group an item's key belongs to: its `pk` up to and including the first `#`
/// (`pred#`, `cache#`, …).
pub fn key_prefix(pk: &str) -> String {
    match pk.find('#') {
        Some(i) => pk[..=i].to_owned(),
        None => "(no prefix)".to_owned(),
    }
}

/// An object key's group: its first path segment (`outputs/`, `inputs/`).
pub fn object_prefix(key: &str) -> String {
    match key.find('/') {
        Some(i) => key[..=i].to_owned(),
        None => "(root)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn s3(method: &str, path: &str, query: &str) -> S3Request {
        match classify(method, path, query, &HeaderMap::new(), b"") {
            Request::S3(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_protocol_targets() {
        let h = headers(&[("x-amz-target", "DynamoDB_20120810.PutItem")]);
        assert_eq!(
            classify("POST", "/", "", &h, b"{}"),
            Request::Dynamo("PutItem".into())
        );
        let h = headers(&[("x-amz-target", "AmazonSQS.ReceiveMessage")]);
        assert_eq!(
            classify("POST", "/", "", &h, b"{}"),
            Request::Sqs("ReceiveMessage".into())
        );
        let h = headers(&[("x-amz-target", "AmazonSSM.GetParameter")]);
        assert_eq!(
            classify("POST", "/", "", &h, b"{}"),
            Request::Other("AmazonSSM.GetParameter".into())
        );
    }

    #[test]
    fn sqs_query_protocol() {
        let h = headers(&[(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )]);
        let body = b"Action=SendMessage&Version=2012-11-05&MessageBody=x";
        assert_eq!(
            classify("POST", "/123/q", "", &h, body),
            Request::Sqs("SendMessage".into())
        );
    }

    #[test]
    fn s3_operations() {
        use S3Op::*;
        assert_eq!(
            s3("PUT", "/b/outputs/x/0.webp", "x-id=PutObject").op,
            PutObject
        );
        assert_eq!(
            s3("PUT", "/b/outputs/x/0.webp", "x-id=PutObject")
                .key
                .as_deref(),
            Some("outputs/x/0.webp")
        );
        assert_eq!(s3("PUT", "/b/k", "partNumber=1&uploadId=u").op, UploadPart);
        assert_eq!(s3("POST", "/b/k", "uploads").op, CreateMultipartUpload);
        assert_eq!(s3("POST", "/b/k", "uploadId=u").op, CompleteMultipartUpload);
        assert_eq!(s3("DELETE", "/b/k", "uploadId=u").op, AbortMultipartUpload);
        assert_eq!(s3("GET", "/b", "list-type=2").op, ListObjects);
        assert_eq!(s3("GET", "/b/", "").op, ListObjects);
        assert_eq!(s3("GET", "/b", "location").op, BucketRead);
        assert_eq!(s3("PUT", "/b", "").op, BucketWrite);
        assert_eq!(s3("HEAD", "/b/k", "").op, HeadObject);
        assert_eq!(s3("DELETE", "/b/k", "").op, DeleteObject);
        let get = s3(
            "GET",
            "/b/outputs/a%2Fb/0.webp",
            "X-Amz-Algorithm=A&X-Amz-Signature=f",
        );
        assert_eq!(get.op, GetObject);
        assert!(get.presigned);
        assert_eq!(get.key.as_deref(), Some("outputs/a/b/0.webp"));
        let copy = classify(
            "PUT",
            "/b/k",
            "",
            &headers(&[("x-amz-copy-source", "/b/j")]),
            b"",
        );
        assert!(matches!(
            copy,
            Request::S3(S3Request { op: CopyObject, .. })
        ));
    }

    #[test]
    fn tiers() {
        assert_eq!(S3Op::PutObject.tier(), S3Tier::Tier1);
        assert_eq!(S3Op::ListObjects.tier(), S3Tier::Tier1);
        assert_eq!(S3Op::GetObject.tier(), S3Tier::Tier2);
        assert_eq!(S3Op::HeadObject.tier(), S3Tier::Tier2);
        assert_eq!(S3Op::DeleteObject.tier(), S3Tier::Free);
        assert_eq!(S3Op::AbortMultipartUpload.tier(), S3Tier::Free);
    }

    #[test]
    fn prefixes() {
        assert_eq!(key_prefix("pred#abc"), "pred#");
        assert_eq!(key_prefix("replicate#x#y"), "replicate#");
        assert_eq!(key_prefix("plain"), "(no prefix)");
        assert_eq!(object_prefix("outputs/x/0.webp"), "outputs/");
        assert_eq!(object_prefix("file"), "(root)");
    }
}
