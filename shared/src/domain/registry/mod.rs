//! Which models this deployment may run, how each is called, and what inputs each accepts.
//!
//! The shipped `models.json` is compiled in; an operator overrides it at deploy time with
//! `MODELS_CONFIG`, a JSON Merge Patch (RFC 7396) over the shipped document, given inline or
//! as a file path. Swapping a version is then `{"models":{"sdxl":{"version":"<hash>"}}}`.

mod canonical;
mod spec;
mod validate;

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

pub use canonical::{CacheKey, canonical_json};
pub use spec::{
    AliasSpec, DEFAULT_MAX_INLINE_IMAGE_BYTES, FieldSpec, PriceSpec, RegistryDocument, Rule,
};
pub use validate::ValidatedInput;

use crate::domain::cost::Price;

use crate::domain::input_errors::InputErrors;
use crate::domain::money::micros_from_usd;
use crate::domain::replicate::{ModelRef, VersionId};

/// The registry compiled into every binary.
pub const SHIPPED_MODELS_JSON: &str = include_str!("../../../models.json");

/// Environment variable holding the deploy-time override (inline JSON or a file path).
pub const MODELS_CONFIG_ENV: &str = "MODELS_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model configuration is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("could not read model configuration file `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model configuration: alias `{alias}`: {message}")]
    Alias { alias: String, message: String },
    #[error("model configuration: {0}")]
    Document(String),
}

/// A requested model that this deployment does not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct UnknownModel {
    pub reason: String,
}

/// An alias ready to use: where it runs and how its input is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAlias {
    pub alias: String,
    pub model: ModelRef,
    pub inputs: BTreeMap<String, FieldSpec>,
    pub rules: Vec<Rule>,
    /// What Replicate charges for a run (estimates and settled costs use it).
    pub price: Price,
}

impl ModelAlias {
    /// Validates and canonicalises a request's `input`: unknown fields and every limit are
    /// reported per field; defaults are filled in.
    pub fn validate(&self, input: &Value) -> Result<ValidatedInput, InputErrors> {
        validate::validate(&self.inputs, &self.rules, input)
    }

    /// The result-cache key of `tenant` running this alias's model version on `input`.
    pub fn cache_key(&self, tenant: &str, input: &ValidatedInput) -> CacheKey {
        self.cache_key_of(tenant, input.as_map())
    }

    /// The cache key of an input as stored (inline images replaced by their references).
    pub fn cache_key_of(&self, tenant: &str, input: &serde_json::Map<String, Value>) -> CacheKey {
        CacheKey::new(tenant, &self.alias, &self.model, input)
    }
}

#[derive(Debug, Clone)]
pub struct ModelRegistry {
    aliases: BTreeMap<String, ModelAlias>,
    /// `owner/name` → the alias a request naming that model means.
    by_model: HashMap<String, String>,
}

impl ModelRegistry {
    /// The shipped registry, with the operator's override from `MODELS_CONFIG` if set.
    pub fn from_env() -> Result<Self, RegistryError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As `from_env`, reading `MODELS_CONFIG` through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, RegistryError> {
        match lookup(MODELS_CONFIG_ENV) {
            Some(value) if !value.trim().is_empty() => Self::from_override_source(&value),
            _ => Self::shipped(),
        }
    }

    /// The shipped registry patched by `source`: inline JSON (starting with `{`) or the
    /// path of a JSON file (e.g. in a Lambda layer).
    pub fn from_override_source(source: &str) -> Result<Self, RegistryError> {
        Self::with_override(&read_override(source)?)
    }

    pub fn shipped() -> Result<Self, RegistryError> {
        Self::from_json(SHIPPED_MODELS_JSON)
    }

    /// The shipped document with `patch` (a JSON Merge Patch) applied.
    pub fn with_override(patch: &str) -> Result<Self, RegistryError> {
        let mut document: Value = serde_json::from_str(SHIPPED_MODELS_JSON)?;
        merge_patch(&mut document, serde_json::from_str(patch)?);
        Self::from_document(serde_json::from_value(document)?)
    }

    pub fn from_json(json: &str) -> Result<Self, RegistryError> {
        Self::from_document(serde_json::from_str(json)?)
    }

    pub fn from_document(document: RegistryDocument) -> Result<Self, RegistryError> {
        if document.models.is_empty() {
            return Err(RegistryError::Document("no models configured".to_owned()));
        }
        let mut aliases = BTreeMap::new();
        for (alias, spec) in document.models {
            let price =
                build_price(&spec.price, &document.hardware_usd_per_second).map_err(|message| {
                    RegistryError::Alias {
                        alias: alias.clone(),
                        message: format!("price: {message}"),
                    }
                })?;
            let model = build_alias(&alias, spec.clone(), price)?;
            aliases.insert(alias, (model, spec.primary));
        }
        let by_model = index_by_model(&aliases)?;
        Ok(Self {
            aliases: aliases.into_iter().map(|(k, (m, _))| (k, m)).collect(),
            by_model,
        })
    }

    pub fn aliases(&self) -> impl Iterator<Item = &ModelAlias> {
        self.aliases.values()
    }

    pub fn get(&self, alias: &str) -> Option<&ModelAlias> {
        self.aliases.get(alias)
    }

    /// Resolves a request's `model`: an alias, `owner/name`, or `owner/name:version`. Only
    /// configured models resolve; a version must be the pinned one, so a client cannot run
    /// arbitrary code on the operator's account.
    pub fn resolve(&self, requested: &str) -> Result<&ModelAlias, UnknownModel> {
        if let Some(alias) = self.aliases.get(requested) {
            return Ok(alias);
        }
        let unknown = || UnknownModel {
            reason: format!(
                "model `{}` is not available here; available: {}",
                printable(requested),
                self.aliases.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        let Ok(reference) = ModelRef::parse(requested) else {
            return Err(unknown());
        };
        let alias = self
            .by_model
            .get(&reference.path())
            .and_then(|name| self.aliases.get(name))
            .ok_or_else(unknown)?;
        match (&reference.version, &alias.model.version) {
            (None, _) => Ok(alias),
            (Some(asked), Some(pinned)) if asked == pinned => Ok(alias),
            (Some(_), pinned) => Err(UnknownModel {
                reason: match pinned {
                    Some(pinned) => format!(
                        "only version {pinned} of `{}` is available here",
                        reference.path()
                    ),
                    None => format!(
                        "`{}` runs without a version here; omit `:version`",
                        reference.path()
                    ),
                },
            }),
        }
    }
}

fn read_override(value: &str) -> Result<String, RegistryError> {
    if value.trim_start().starts_with('{') {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(value.trim()).map_err(|source| RegistryError::Read {
        path: value.trim().to_owned(),
        source,
    })
}

/// RFC 7396: objects merge recursively, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
        } else {
            merge_patch(target.entry(key).or_insert(Value::Null), value);
        }
    }
}

fn valid_alias_name(alias: &str) -> bool {
    !alias.is_empty()
        && alias.len() <= 64
        && alias.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        })
}

/// An alias's price: per image, or per second of a listed hardware.
fn build_price(spec: &PriceSpec, hardware: &BTreeMap<String, f64>) -> Result<Price, String> {
    let dollars = |usd: f64| micros_from_usd(usd).ok_or(format!("`{usd}` is not a price"));
    let scaled = spec.typical_pixels.is_some()
        || spec.typical_steps.is_some()
        || spec.seconds_with_image.is_some();
    match (spec.usd_per_image, &spec.hardware, spec.typical_seconds) {
        (Some(usd), None, None) if !scaled => Ok(Price::Image {
            micros: dollars(usd)?,
        }),
        (None, Some(name), Some(typical_seconds)) if typical_seconds > 0 => {
            let per_second = hardware.get(name).ok_or(format!(
                "hardware `{name}` is not in `hardware_usd_per_second`"
            ))?;
            if spec.typical_pixels == Some(0)
                || spec.typical_steps == Some(0)
                || spec.seconds_with_image == Some(0)
            {
                return Err(
                    "typical_pixels, typical_steps and seconds_with_image must be positive".into(),
                );
            }
            Ok(Price::Second {
                micros: dollars(*per_second)?,
                typical_seconds,
                typical_pixels: spec.typical_pixels,
                typical_steps: spec.typical_steps,
                seconds_with_image: spec.seconds_with_image,
            })
        }
        _ => Err(
            "give either `usd_per_image`, or `hardware` and `typical_seconds` (> 0) \
             (with `typical_pixels`/`typical_steps`/`seconds_with_image` if any)"
                .into(),
        ),
    }
}

fn build_alias(alias: &str, spec: AliasSpec, price: Price) -> Result<ModelAlias, RegistryError> {
    let fail = |message: String| RegistryError::Alias {
        alias: alias.to_owned(),
        message,
    };
    if !valid_alias_name(alias) {
        return Err(fail(
            "alias names use lowercase letters, digits, `-`, `.` and `_`".to_owned(),
        ));
    }
    let mut model = ModelRef::parse(&spec.model).map_err(|e| fail(format!("model: {e}")))?;
    if model.version.is_some() {
        return Err(fail(
            "give the version in `version`, not in `model`".to_owned(),
        ));
    }
    model.version = spec
        .version
        .as_deref()
        .map(VersionId::parse)
        .transpose()
        .map_err(|e| fail(format!("version: {e}")))?;
    if spec.inputs.is_empty() {
        return Err(fail("no inputs declared".to_owned()));
    }
    for (field, field_spec) in &spec.inputs {
        check_field_spec(field_spec).map_err(|m| fail(format!("input `{field}`: {m}")))?;
    }
    for rule in &spec.rules {
        let named: Vec<&String> = match rule {
            Rule::Requires { field, requires } => vec![field, requires],
            Rule::OnlyWhen { fields, field, .. } => fields.iter().chain([field]).collect(),
        };
        if let Some(missing) = named.into_iter().find(|f| !spec.inputs.contains_key(*f)) {
            return Err(fail(format!(
                "a rule names `{missing}`, which is not an input"
            )));
        }
    }
    Ok(ModelAlias {
        alias: alias.to_owned(),
        model,
        inputs: spec.inputs,
        rules: spec.rules,
        price,
    })
}

/// A spec must be satisfiable and its default must pass its own checks.
fn check_field_spec(spec: &FieldSpec) -> Result<(), String> {
    let default = match spec {
        FieldSpec::Integer {
            min: Some(lo),
            max: Some(hi),
            ..
        } if lo > hi => return Err("min is above max".into()),
        FieldSpec::Number {
            min: Some(lo),
            max: Some(hi),
            ..
        } if lo > hi => return Err("min is above max".into()),
        FieldSpec::Integer {
            multiple_of: Some(step),
            ..
        } if *step <= 0 => return Err("multiple_of must be positive".into()),
        FieldSpec::Enum { values, .. } if values.is_empty() => {
            return Err("an enum needs values".into());
        }
        FieldSpec::String { default, .. } | FieldSpec::Enum { default, .. } => {
            default.clone().map(Value::String)
        }
        FieldSpec::Integer { default, .. } => default.map(Value::from),
        FieldSpec::Number { default, .. } => default.map(Value::from),
        FieldSpec::Boolean { default, .. } => default.map(Value::Bool),
        FieldSpec::Image { .. } => None,
    };
    if spec.is_required() && default.is_some() {
        return Err("a required input cannot have a default".into());
    }
    match default {
        // An empty default string is allowed even where clients must not send one.
        Some(Value::String(s)) if s.is_empty() && matches!(spec, FieldSpec::String { .. }) => {
            Ok(())
        }
        Some(value) => validate::check_value(spec, &value)
            .map(|_| ())
            .map_err(|m| format!("default {m}")),
        None => Ok(()),
    }
}

fn index_by_model(
    aliases: &BTreeMap<String, (ModelAlias, bool)>,
) -> Result<HashMap<String, String>, RegistryError> {
    let mut groups: BTreeMap<String, Vec<(&String, bool)>> = BTreeMap::new();
    for (name, (alias, primary)) in aliases {
        groups
            .entry(alias.model.path())
            .or_default()
            .push((name, *primary));
    }
    let mut by_model = HashMap::new();
    for (model, members) in groups {
        let primaries: Vec<&String> = members
            .iter()
            .filter(|(_, p)| *p)
            .map(|(n, _)| *n)
            .collect();
        let chosen = match (members.as_slice(), primaries.as_slice()) {
            ([(only, _)], _) => *only,
            (_, [primary]) => *primary,
            _ => {
                return Err(RegistryError::Document(format!(
                    "aliases {} share `{model}`; mark exactly one of them `\"primary\": true`",
                    members
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        by_model.insert(model, chosen.clone());
    }
    Ok(by_model)
}

/// A client-supplied name, shortened and stripped of control characters for messages.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests;
