//! The model registry's configuration document, as written in `models.json`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Decoded size limit for an image passed inline as a data URL (README, "The API").
pub const DEFAULT_MAX_INLINE_IMAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryDocument {
    /// Replicate's price per second of `predict_time` on each hardware, in US dollars
    /// (replicate.com/pricing); aliases priced per second name one of these.
    #[serde(default)]
    pub hardware_usd_per_second: BTreeMap<String, f64>,
    pub models: BTreeMap<String, AliasSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// `owner/name` on Replicate.
    pub model: String,
    /// Pinned 64-hex version; `null` runs an official model through its model endpoint.
    pub version: Option<String>,
    /// Where several aliases share one model, the one `owner/name` in a request stands for.
    #[serde(default)]
    pub primary: bool,
    pub inputs: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    pub price: PriceSpec,
}

/// How Replicate bills an alias's model: `usd_per_image` (official models), or `hardware`
/// (a key of `hardware_usd_per_second`) with the `typical_seconds` one output takes, which
/// budget estimates use until the real `predict_time` is known, at `typical_pixels`
/// (width × height) and `typical_steps` if given: estimates scale with a request's size and
/// steps. A request with an input image reserves `seconds_with_image` per output instead:
/// the image, whose size is unknown at submit, sets the run time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    #[serde(default)]
    pub usd_per_image: Option<f64>,
    #[serde(default)]
    pub hardware: Option<String>,
    #[serde(default)]
    pub typical_seconds: Option<u32>,
    #[serde(default)]
    pub typical_pixels: Option<u64>,
    #[serde(default)]
    pub typical_steps: Option<u64>,
    #[serde(default)]
    pub seconds_with_image: Option<u32>,
}

/// One input field's type, limits and default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldSpec {
    String {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        min_length: Option<usize>,
        /// In characters (Unicode scalar values), not bytes.
        max_length: usize,
        #[serde(default)]
        default: Option<String>,
    },
    Integer {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        min: Option<i64>,
        #[serde(default)]
        max: Option<i64>,
        #[serde(default)]
        multiple_of: Option<i64>,
        #[serde(default)]
        default: Option<i64>,
    },
    Number {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        default: Option<f64>,
    },
    Boolean {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        default: Option<bool>,
    },
    Enum {
        #[serde(default)]
        required: bool,
        values: Vec<String>,
        #[serde(default)]
        default: Option<String>,
    },
    /// An http(s) URL the model fetches, a small `data:image/...;base64,` URL, or an
    /// `upload://<id>` reference.
    Image {
        #[serde(default)]
        required: bool,
        #[serde(default)]
        max_inline_bytes: Option<usize>,
        /// The model's input limit in pixels, where known: an upload (whose size submit
        /// reads) above it is refused before anything is created.
        #[serde(default)]
        max_pixels: Option<u64>,
    },
}

impl FieldSpec {
    pub fn is_required(&self) -> bool {
        match self {
            Self::String { required, .. }
            | Self::Integer { required, .. }
            | Self::Number { required, .. }
            | Self::Boolean { required, .. }
            | Self::Enum { required, .. }
            | Self::Image { required, .. } => *required,
        }
    }
}

/// A constraint between fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// `field` may only be given together with `requires` (e.g. `mask` needs `image`).
    Requires { field: String, requires: String },
    /// `fields` may only be given when `field` equals `equals` (e.g. width with a custom
    /// aspect ratio). Checked after defaults are applied.
    OnlyWhen {
        fields: Vec<String>,
        field: String,
        equals: String,
    },
}
