//! Uploads (README, "Uploads"): a client asks for a slot, PUTs the image straight to S3 with
//! the presigned URL it gets, and names it `upload://<id>` in any image input. Large images
//! so never travel base64-inflated through API Gateway (10 MB) or Lambda (6 MB).
//!
//! The slot's record (`upload#<id>`: tenant, declared type and size) is what submit checks an
//! upload against; the object itself is untrusted until submit has read it back and sniffed
//! it. What submit verified is then stored by content address, like an inline image, so a
//! later PUT to the same slot cannot change what a prediction was given.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::ids::PredictionId;
use crate::domain::input_errors::InputErrors;
use crate::domain::tenancy::TenantId;
use crate::domain::time::Timestamp;

/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: u64 = 20 * 1024 * 1024;
/// How long an upload slot's PUT URL is valid.
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);
/// How long an upload (its record and its object) is kept; the bucket's lifecycle rule on
/// `uploads/` deletes the object after a day too.
pub const UPLOAD_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const UPLOAD_SCHEME: &str = "upload://";
/// Where upload objects live (the lifecycle rule's prefix).
pub const UPLOAD_PREFIX: &str = "uploads/";

/// An upload's id: 128 random bits as 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn generate() -> Self {
        Self(PredictionId::generate().into())
    }

    pub fn parse(s: &str) -> Option<Self> {
        PredictionId::parse(s).ok().map(|id| Self(id.into()))
    }

    /// The id an `upload://<id>` input names, if it is one.
    pub fn from_reference(value: &str) -> Option<Result<Self, InvalidUploadReference>> {
        let rest = value.strip_prefix(UPLOAD_SCHEME)?;
        Some(Self::parse(rest).ok_or(InvalidUploadReference))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn reference(&self) -> String {
        format!("{UPLOAD_SCHEME}{}", self.0)
    }

    /// The object the slot's URL writes.
    pub fn object_key(&self) -> String {
        format!("{UPLOAD_PREFIX}{}", self.0)
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be upload://<id> as POST /v1/uploads returned it")]
pub struct InvalidUploadReference;

/// The image types an upload may declare (and must then be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Png,
    Jpeg,
    Webp,
}

impl ImageKind {
    pub const ALL: [Self; 3] = [Self::Png, Self::Jpeg, Self::Webp];

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    pub fn from_content_type(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.content_type().eq_ignore_ascii_case(s.trim()))
    }
}

/// What `POST /v1/uploads` asks for, once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRequest {
    pub kind: ImageKind,
    pub size: u64,
}

/// Why an upload request was refused.
#[derive(Debug)]
pub enum UploadRequestError {
    /// Not a JSON object of the expected shape.
    Malformed(String),
    Invalid(InputErrors),
}

impl UploadRequest {
    /// `{"content_type": "image/png" | "image/jpeg" | "image/webp", "size": 1..=20 MiB}`.
    pub fn parse(body: &[u8]) -> Result<Self, UploadRequestError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            content_type: Option<serde_json::Value>,
            size: Option<serde_json::Value>,
        }
        let raw: Raw = serde_json::from_slice(body).map_err(|e| {
            UploadRequestError::Malformed(format!(
                "the body must be a JSON object with content_type and size: {e}"
            ))
        })?;
        let mut errors = InputErrors::new();
        let kind = match raw.content_type.as_ref().map(|v| v.as_str()) {
            Some(Some(s)) => ImageKind::from_content_type(s),
            _ => None,
        };
        if kind.is_none() {
            errors.push(
                "content_type",
                "must be \"image/png\", \"image/jpeg\" or \"image/webp\"",
            );
        }
        let size = raw
            .size
            .as_ref()
            // JSON Schema's integer: `1024.0` is one too.
            .and_then(crate::domain::numbers::as_integer)
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| (1..=MAX_UPLOAD_BYTES).contains(n));
        if size.is_none() {
            errors.push(
                "size",
                format!("must be a whole number of bytes from 1 to {MAX_UPLOAD_BYTES} (20 MiB)"),
            );
        }
        match (kind, size) {
            (Some(kind), Some(size)) => Ok(Self { kind, size }),
            _ => Err(UploadRequestError::Invalid(errors)),
        }
    }
}

/// An upload slot as stored: whose it is and what was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: UploadId,
    pub tenant: TenantId,
    pub kind: ImageKind,
    pub size: u64,
    pub created_at: Timestamp,
    /// DynamoDB TTL (seconds since the epoch).
    pub expires_at: u64,
}

/// An image's type and dimensions, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub kind: ImageKind,
    pub width: u64,
    pub height: u64,
}

impl ImageInfo {
    pub fn pixels(&self) -> u64 {
        self.width.saturating_mul(self.height)
    }
}

/// Sniffs `bytes`: a PNG, JPEG or WebP whose header gives non-zero dimensions, whatever
/// the name or declared type says.
pub fn inspect_image(bytes: &[u8]) -> Result<ImageInfo, String> {
    let not_an_image = || "is not a PNG, JPEG or WebP image".to_owned();
    let kind = match imagesize::image_type(bytes).map_err(|_| not_an_image())? {
        imagesize::ImageType::Png => ImageKind::Png,
        imagesize::ImageType::Jpeg => ImageKind::Jpeg,
        imagesize::ImageType::Webp => ImageKind::Webp,
        #[allow(unreachable_patterns)]
        _ => return Err(not_an_image()),
    };
    let size = imagesize::blob_size(bytes)
        .map_err(|_| format!("is not a readable {} image", kind.content_type()))?;
    if size.width == 0 || size.height == 0 {
        return Err("is an image without pixels".to_owned());
    }
    Ok(ImageInfo {
        kind,
        width: size.width as u64,
        height: size.height as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        // Signature and IHDR: all the header sniffing reads.
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        bytes.extend(width.to_be_bytes());
        bytes.extend(height.to_be_bytes());
        bytes.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]);
        bytes
    }

    #[test]
    fn requests_declare_an_image_type_and_a_bounded_size() {
        let ok = UploadRequest::parse(br#"{"content_type": "image/png", "size": 1024}"#).unwrap();
        assert_eq!(ok.kind, ImageKind::Png);
        assert_eq!(ok.size, 1024);
        let float = UploadRequest::parse(br#"{"content_type": "image/png", "size": 1024.0}"#);
        assert_eq!(
            float.unwrap().size,
            1024,
            "an integer, as JSON Schema counts them"
        );
        let max = format!(r#"{{"content_type": "image/webp", "size": {MAX_UPLOAD_BYTES}}}"#);
        assert!(UploadRequest::parse(max.as_bytes()).is_ok());
        for (body, fields) in [
            (
                r#"{"content_type": "image/gif", "size": 10}"#,
                vec!["content_type"],
            ),
            (r#"{"content_type": "image/png", "size": 0}"#, vec!["size"]),
            (
                r#"{"content_type": "image/png", "size": 20971521}"#,
                vec!["size"],
            ),
            (
                r#"{"content_type": "image/png", "size": 1.5}"#,
                vec!["size"],
            ),
            (r#"{"size": -1}"#, vec!["content_type", "size"]),
        ] {
            match UploadRequest::parse(body.as_bytes()) {
                Err(UploadRequestError::Invalid(errors)) => {
                    let named: Vec<&str> =
                        errors.listed().iter().map(|e| e.field.as_str()).collect();
                    assert_eq!(named, fields, "{body}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        for malformed in [
            "",
            "[]",
            "{",
            r#"{"content_type": "image/png", "size": 1, "x": 1}"#,
        ] {
            assert!(
                matches!(
                    UploadRequest::parse(malformed.as_bytes()),
                    Err(UploadRequestError::Malformed(_))
                ),
                "{malformed}"
            );
        }
    }

    #[test]
    fn references_name_a_well_formed_id() {
        let id = UploadId::generate();
        assert_eq!(
            UploadId::from_reference(&id.reference()),
            Some(Ok(id.clone()))
        );
        assert_eq!(id.object_key(), format!("uploads/{id}"));
        assert_eq!(UploadId::from_reference("https://x/y.png"), None);
        assert_eq!(
            UploadId::from_reference("upload://../../etc/passwd"),
            Some(Err(InvalidUploadReference))
        );
    }

    #[test]
    fn sniffing_reads_the_type_and_size_from_the_bytes() {
        let info = inspect_image(&png(640, 480)).unwrap();
        assert_eq!(
            (info.kind, info.width, info.height, info.pixels()),
            (ImageKind::Png, 640, 480, 307_200)
        );
        assert!(inspect_image(b"GIF89a....").is_err());
        assert!(inspect_image(b"<html>not an image</html>").is_err());
        assert!(inspect_image(&[]).is_err());
        assert!(inspect_image(&png(0, 10)).is_err());
    }
}
