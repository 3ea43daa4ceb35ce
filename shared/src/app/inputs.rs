//! Inline (data URL) images: kept in the bucket under a content address, referenced by a
//! short `inline://<sha256>` in the record and every response, and sent to Replicate as a
//! presigned URL of that object. A record's size so never depends on the images in it
//! (DynamoDB items stop at 400 KB; the contract allows 1 MB images). Always a URL, even for
//! small images Replicate would take inline: a URL naming `inputs/<sha256>` is how a lost
//! create is recognised in Replicate's list, whatever Replicate does with data URLs.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::domain::digest::hex;
use crate::domain::registry::{FieldSpec, ModelAlias, ValidatedInput};
use crate::ports::StoreError;
use crate::ports::objects::ObjectStore;

/// How long the presigned URL of an input image given to Replicate stays valid: a
/// prediction may wait through a cold boot and runs up to 30 minutes.
pub const INPUT_URL_TTL: Duration = Duration::from_secs(2 * 3600);
pub const REFERENCE_SCHEME: &str = "inline://";

/// One inline image of a request, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineImage {
    pub field: String,
    pub sha256: String,
    pub content_type: String,
    pub bytes: Bytes,
}

impl InlineImage {
    pub fn key(&self) -> String {
        input_key(&self.sha256)
    }

    pub fn reference(&self) -> String {
        format!("{REFERENCE_SCHEME}{}", self.sha256)
    }
}

pub fn input_key(sha256: &str) -> String {
    format!("inputs/{sha256}")
}

/// The input as stored (inline images replaced by references) and the images themselves.
pub fn extract_inline_images(
    alias: &ModelAlias,
    input: &ValidatedInput,
) -> (Map<String, Value>, Vec<InlineImage>) {
    let mut stored = input.as_map().clone();
    let mut images = Vec::new();
    for (field, value) in input.as_map() {
        if !matches!(alias.inputs.get(field), Some(FieldSpec::Image { .. })) {
            continue;
        }
        let Some(image) = value.as_str().and_then(|s| decode_data_url(field, s)) else {
            continue;
        };
        stored.insert(field.clone(), Value::String(image.reference()));
        images.push(image);
    }
    (stored, images)
}

/// `data:image/<type>[;…];base64,<payload>` (already validated) → the decoded image.
fn decode_data_url(field: &str, s: &str) -> Option<InlineImage> {
    let rest = s.get(..5).filter(|p| p.eq_ignore_ascii_case("data:"))?;
    let (meta, payload) = s[rest.len()..].split_once(',')?;
    let media_type = meta.split(';').next()?.trim().to_ascii_lowercase();
    let bytes = BASE64.decode(payload).ok()?;
    let content_type = if media_type
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/.+-".contains(&b))
        && media_type.len() <= 64
    {
        media_type
    } else {
        "application/octet-stream".to_owned()
    };
    Some(InlineImage {
        field: field.to_owned(),
        sha256: hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        content_type,
        bytes: Bytes::from(bytes),
    })
}

/// Stores the images (idempotent: same bytes, same key) and returns the input to send to
/// Replicate, each image a presigned URL of its object.
pub async fn materialize<O: ObjectStore>(
    objects: &O,
    stored: &Map<String, Value>,
    images: &[InlineImage],
) -> Result<Map<String, Value>, StoreError> {
    let mut sent = stored.clone();
    for image in images {
        let key = image.key();
        objects
            .put_object(&key, &image.content_type, image.bytes.clone())
            .await?;
        let url = objects.presign_get(&key, INPUT_URL_TTL).await?;
        sent.insert(image.field.clone(), Value::String(url));
    }
    Ok(sent)
}

/// The input with each uploaded image (`upload://<id>`, whose slot may be written again)
/// named by the content submit verified (`inline://<sha256>`): what the result cache keys
/// on and what a create lost in Replicate's list is matched by.
pub fn with_file_references(
    stored: &Map<String, Value>,
    files: &std::collections::BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut input = stored.clone();
    for (field, sha256) in files {
        if input.contains_key(field) {
            input.insert(
                field.clone(),
                Value::String(format!("{REFERENCE_SCHEME}{sha256}")),
            );
        }
    }
    input
}

/// How an input Replicate reports compares with the one a record stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMatch {
    Same,
    /// Equal but for inline images Replicate shows in a form we cannot check (its own file
    /// URL, say): perhaps the same request, perhaps not. Never adopted; never taken as proof
    /// that nothing was created either.
    Possible,
    Different,
}

/// Compares field by field, where a stored `inline://<sha256>` is the same as a data URL of
/// those bytes or a URL of the object `inputs/<sha256>` (how `materialize` sent it). Used to
/// find a prediction whose create answer was lost in Replicate's list, which carries inputs
/// but no webhook URL.
pub fn input_match(stored: &Map<String, Value>, remote: &Map<String, Value>) -> InputMatch {
    if stored.len() != remote.len() {
        return InputMatch::Different;
    }
    let mut result = InputMatch::Same;
    for (field, value) in stored {
        let Some(theirs) = remote.get(field) else {
            return InputMatch::Different;
        };
        let field_match = match value
            .as_str()
            .and_then(|s| s.strip_prefix(REFERENCE_SCHEME))
        {
            Some(sha) => theirs
                .as_str()
                .map_or(InputMatch::Different, |t| sent_as(sha, t)),
            None if same_value(value, theirs) => InputMatch::Same,
            None => InputMatch::Different,
        };
        match field_match {
            InputMatch::Different => return InputMatch::Different,
            InputMatch::Possible => result = InputMatch::Possible,
            InputMatch::Same => {}
        }
    }
    result
}

/// `input_match` is `Same`.
pub fn input_matches(stored: &Map<String, Value>, remote: &Map<String, Value>) -> bool {
    input_match(stored, remote) == InputMatch::Same
}

fn sent_as(sha256: &str, value: &str) -> InputMatch {
    if let Some(image) = decode_data_url("", value) {
        return if image.sha256 == sha256 {
            InputMatch::Same
        } else {
            InputMatch::Different
        };
    }
    match url::Url::parse(value) {
        Ok(url) if url.path().ends_with(&format!("/{}", input_key(sha256))) => InputMatch::Same,
        Ok(url) if url.path().contains("/inputs/") => InputMatch::Different,
        Ok(_) => InputMatch::Possible,
        Err(_) => InputMatch::Different,
    }
}

/// JSON equality where numbers compare by value (`4` and `4.0` are one input).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::registry::ModelRegistry;
    use crate::testing::fakes::MemoryObjects;
    use serde_json::json;

    fn data_url(bytes: &[u8]) -> String {
        format!("data:image/png;base64,{}", BASE64.encode(bytes))
    }

    fn img2img(image: &str) -> (ModelAlias, ValidatedInput) {
        let registry = ModelRegistry::shipped().unwrap();
        let alias = registry.get("sdxl-img2img").unwrap().clone();
        let input = alias
            .validate(&json!({"prompt": "a cat", "image": image}))
            .unwrap();
        (alias, input)
    }

    #[tokio::test]
    async fn images_go_by_url_of_their_object_and_match_back() {
        let objects = MemoryObjects::default();
        for size in [1000, 300_000] {
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let (alias, input) = img2img(&data_url(&bytes));
            let (stored, images) = extract_inline_images(&alias, &input);
            assert_eq!(images.len(), 1);
            let reference = stored["image"].as_str().unwrap();
            assert!(reference.starts_with("inline://") && reference.len() < 80);
            let sent = materialize(&objects, &stored, &images).await.unwrap();
            let value = sent["image"].as_str().unwrap();
            assert!(value.contains("/inputs/"), "{value}");
            assert!(input_matches(&stored, &sent), "{size}");
            let mut other = sent.clone();
            other.insert("prompt".into(), json!("a dog"));
            assert!(!input_matches(&stored, &other));
        }
        assert_eq!(objects.keys().len(), 2, "one object per distinct image");
    }

    #[tokio::test]
    async fn an_image_replicate_shows_as_its_own_url_is_only_a_possible_match() {
        let bytes = vec![7u8; 2000];
        let (alias, input) = img2img(&data_url(&bytes));
        let (stored, _) = extract_inline_images(&alias, &input);
        let mut rewritten = stored.clone();
        rewritten.insert(
            "image".into(),
            json!("https://replicate.delivery/pbxt/abc/image.png"),
        );
        assert_eq!(input_match(&stored, &rewritten), InputMatch::Possible);
        rewritten.insert("prompt".into(), json!("a dog"));
        assert_eq!(input_match(&stored, &rewritten), InputMatch::Different);
        let mut other_bytes = stored.clone();
        other_bytes.insert("image".into(), json!(data_url(&[8u8; 2000])));
        assert_eq!(input_match(&stored, &other_bytes), InputMatch::Different);
    }

    #[test]
    fn urls_stay_as_they_are_and_numbers_match_by_value() {
        let (alias, input) = img2img("https://example.com/cat.png");
        let (stored, images) = extract_inline_images(&alias, &input);
        assert!(images.is_empty());
        assert_eq!(&stored, input.as_map());
        let a = json!({"n": 4, "s": "x"});
        let b = json!({"n": 4.0, "s": "x"});
        assert!(input_matches(
            a.as_object().unwrap(),
            b.as_object().unwrap()
        ));
        let c = json!({"n": 4, "s": "x", "extra": 1});
        assert!(!input_matches(
            a.as_object().unwrap(),
            c.as_object().unwrap()
        ));
    }
}
