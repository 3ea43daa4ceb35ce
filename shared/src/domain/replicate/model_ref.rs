use std::fmt;

/// A model on Replicate: `owner/name`, pinned to a version or (for official models) run
/// through the model's own endpoint without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub owner: String,
    pub name: String,
    pub version: Option<VersionId>,
}

/// A 64-hex Replicate version id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefError {
    #[error("expected `owner/name` or `owner/name:version`")]
    Shape,
    #[error("`{0}` is not a valid model owner or name (letters, digits, `-`, `_`, `.`)")]
    Segment(String),
    #[error("a version id is 64 hexadecimal characters")]
    Version,
}

impl VersionId {
    pub fn parse(s: &str) -> Result<Self, ModelRefError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(ModelRefError::Version)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

impl ModelRef {
    /// Parses `owner/name` or `owner/name:version`.
    pub fn parse(s: &str) -> Result<Self, ModelRefError> {
        let (path, version) = match s.split_once(':') {
            Some((path, version)) => (path, Some(VersionId::parse(version)?)),
            None => (s, None),
        };
        let (owner, name) = path.split_once('/').ok_or(ModelRefError::Shape)?;
        for segment in [owner, name] {
            if !valid_segment(segment) {
                return Err(ModelRefError::Segment(segment.to_owned()));
            }
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
            version,
        })
    }

    /// `owner/name`, without the version.
    pub fn path(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// Official models run through `/models/{owner}/{name}/predictions`, others by version.
    pub fn is_official(&self) -> bool {
        self.version.is_none()
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{}/{}:{}", self.owner, self.name, version),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDXL: &str = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc";

    #[test]
    fn parses_both_forms_and_round_trips() {
        let official = ModelRef::parse("black-forest-labs/flux-schnell").unwrap();
        assert!(official.is_official());
        assert_eq!(official.to_string(), "black-forest-labs/flux-schnell");
        let pinned = ModelRef::parse(&format!("stability-ai/sdxl:{SDXL}")).unwrap();
        assert_eq!(pinned.version.as_ref().unwrap().as_str(), SDXL);
        assert_eq!(pinned.path(), "stability-ai/sdxl");
        assert_eq!(pinned.to_string(), format!("stability-ai/sdxl:{SDXL}"));
    }

    #[test]
    fn rejects_malformed_references() {
        assert_eq!(ModelRef::parse("sdxl"), Err(ModelRefError::Shape));
        assert_eq!(ModelRef::parse("a/b:1234"), Err(ModelRefError::Version));
        assert_eq!(
            ModelRef::parse(&format!("a/b:{}", "g".repeat(64))),
            Err(ModelRefError::Version)
        );
        assert!(matches!(
            ModelRef::parse("a/b/c"),
            Err(ModelRefError::Segment(_))
        ));
        assert!(matches!(
            ModelRef::parse("/b"),
            Err(ModelRefError::Segment(_))
        ));
        assert!(matches!(
            ModelRef::parse("a/../x"),
            Err(ModelRefError::Segment(_))
        ));
        assert!(matches!(
            ModelRef::parse("a/b%2f"),
            Err(ModelRefError::Segment(_))
        ));
    }
}
