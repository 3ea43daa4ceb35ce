//! Upload slots (`POST /v1/uploads`), and what submit does with an `upload://<id>` input (README,
//! "Uploads"): the slot must be the caller's, the object there, exactly the declared size,
//! and really an image of the declared type within the model's pixel limit. The bytes
//! verified are what Replicate gets: they are stored by content address like an inline
//! image, so a later PUT to the slot changes nothing already submitted.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::inputs::InlineImage;
use super::{ApiError, App};
use crate::domain::digest::hex;
use crate::domain::input_errors::InputErrors;
use crate::domain::record::ttl_passed;
use crate::domain::registry::{FieldSpec, ModelAlias};
use crate::domain::tenancy::Caller;
use crate::domain::uploads::{
    MAX_UPLOAD_BYTES, UPLOAD_RETENTION, UPLOAD_URL_TTL, UploadId, UploadRecord, UploadRequest,
    inspect_image,
};
use crate::ports::Ports;
use crate::ports::accounts::AccountStore;
use crate::ports::objects::{ObjectRead, ObjectStore};

/// The answer to `POST /v1/uploads`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadSlot {
    pub id: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub upload_url: String,
    pub method: &'static str,
    pub headers: BTreeMap<String, String>,
    pub expires_at: String,
}

/// The uploads a submit's input names, verified: the images to store and send, and each
/// field's content hash (what the record keeps and the result cache keys on).
#[derive(Debug, Default)]
pub(super) struct VerifiedUploads {
    pub images: Vec<InlineImage>,
    pub files: BTreeMap<String, String>,
}

impl<P: Ports> App<P> {
    /// A new upload slot for `caller` (counted and checked already): its record, and a
    /// presigned PUT for exactly the declared type and size.
    pub async fn create_upload(
        &self,
        caller: &Caller,
        wanted: UploadRequest,
    ) -> Result<UploadSlot, ApiError> {
        let now = self.clock.now();
        let id = UploadId::generate();
        let upload = UploadRecord {
            id: id.clone(),
            tenant: caller.tenant.clone(),
            kind: wanted.kind,
            size: wanted.size,
            created_at: now,
            expires_at: now.plus(UPLOAD_RETENTION).unix_seconds(),
        };
        self.records.put_upload(&upload).await?;
        let put = self
            .objects
            .presign_put(
                &id.object_key(),
                wanted.kind.content_type(),
                wanted.size,
                UPLOAD_URL_TTL,
            )
            .await?;
        tracing::info!(upload_id = %id, size = wanted.size, "upload slot created");
        Ok(UploadSlot {
            id: id.to_string(),
            reference: id.reference(),
            upload_url: put.url,
            method: "PUT",
            headers: put.headers.into_iter().collect(),
            expires_at: now.plus(UPLOAD_URL_TTL).rfc3339(),
        })
    }

    /// Checks every `upload://` image input of `stored` (422 naming each bad field, before
    /// anything is created) and reads the verified bytes.
    pub(super) async fn verify_uploads(
        &self,
        caller: &Caller,
        alias: &ModelAlias,
        stored: &Map<String, Value>,
    ) -> Result<VerifiedUploads, ApiError> {
        let mut verified = VerifiedUploads::default();
        let mut errors = InputErrors::new();
        for (field, value) in stored {
            let Some(FieldSpec::Image { max_pixels, .. }) = alias.inputs.get(field) else {
                continue;
            };
            let Some(Ok(id)) = value.as_str().and_then(UploadId::from_reference) else {
                continue;
            };
            match self.verify_upload(caller, &id, *max_pixels).await? {
                Ok(image) => {
                    verified.files.insert(field.clone(), image.sha256.clone());
                    verified.images.push(InlineImage {
                        field: field.clone(),
                        ..image
                    });
                }
                Err(message) => errors.push(format_args!("input.{field}"), message),
            }
        }
        if errors.is_empty() {
            Ok(verified)
        } else {
            Err(ApiError::InvalidInput(errors))
        }
    }

    /// One upload: `Ok(Err(reason))` when it is not usable (the reason is the caller's to
    /// see); another tenant's slot reads exactly like an unknown one.
    async fn verify_upload(
        &self,
        caller: &Caller,
        id: &UploadId,
        max_pixels: Option<u64>,
    ) -> Result<Result<InlineImage, String>, ApiError> {
        let now = self.clock.now();
        let upload = self
            .records
            .get_upload(id)
            .await?
            .filter(|u| u.tenant == caller.tenant && !ttl_passed(u.expires_at, now));
        let Some(upload) = upload else {
            return Ok(Err(
                "names no upload of yours (unknown or expired)".to_owned()
            ));
        };
        let declared = upload.size;
        let bytes = match self
            .objects
            .read_object(&id.object_key(), declared.min(MAX_UPLOAD_BYTES))
            .await?
        {
            ObjectRead::Missing => {
                return Ok(Err(
                    "has not been uploaded yet (PUT the file to its upload_url first)".to_owned(),
                ));
            }
            ObjectRead::TooLarge { .. } => {
                return Ok(Err(format!("is larger than the {declared} bytes declared")));
            }
            ObjectRead::Found { bytes, .. } => bytes,
        };
        if bytes.len() as u64 != declared {
            return Ok(Err(format!(
                "is {} bytes, not the {declared} bytes declared",
                bytes.len()
            )));
        }
        let info = match inspect_image(&bytes) {
            Ok(info) => info,
            Err(reason) => return Ok(Err(format!("upload {reason}"))),
        };
        if info.kind != upload.kind {
            return Ok(Err(format!(
                "is {}, not the {} declared",
                info.kind.content_type(),
                upload.kind.content_type()
            )));
        }
        if let Some(max) = max_pixels
            && info.pixels() > max
        {
            return Ok(Err(format!(
                "is {}×{} ({} pixels); this model takes at most {max} pixels",
                info.width,
                info.height,
                info.pixels()
            )));
        }
        Ok(Ok(InlineImage {
            field: String::new(),
            sha256: hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            content_type: info.kind.content_type().to_owned(),
            bytes,
        }))
    }
}
