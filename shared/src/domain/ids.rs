//! This service's prediction ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// This service's id for a prediction: 128 random bits as 32 lowercase hex characters.
/// Knowing it is what lets a client read the prediction, so it must not be guessable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PredictionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a prediction id")]
pub struct InvalidPredictionId;

impl PredictionId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Result<Self, InvalidPredictionId> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPredictionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PredictionId {
    type Error = InvalidPredictionId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PredictionId> for String {
    fn from(id: PredictionId) -> String {
        id.0
    }
}

impl fmt::Display for PredictionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_parse_back() {
        let a = PredictionId::generate();
        let b = PredictionId::generate();
        assert_ne!(a, b);
        assert_eq!(PredictionId::parse(a.as_str()), Ok(a.clone()));
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            "../etc/passwd",
            &"a".repeat(33),
            "g".repeat(32).as_str(),
        ] {
            assert_eq!(PredictionId::parse(bad), Err(InvalidPredictionId), "{bad}");
        }
    }
}
