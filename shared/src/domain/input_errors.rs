//! The per-field problems of a request, bounded: what a 422 lists (`errors[]` in
//! problem+json), whatever the request holds.

use std::fmt;

use serde::Serialize;

/// One problem with one field, as reported to the client (`errors[]` in problem+json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The per-field problems of a request: every one is counted, the first
/// [`MAX_LISTED`](Self::MAX_LISTED) are kept (field names and messages cut to a bounded length),
/// so a hostile request with half a million bad fields still gets a small 422.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputErrors {
    listed: Vec<FieldError>,
    total: usize,
}

impl InputErrors {
    /// How many errors are kept (and listed in a 422).
    pub const MAX_LISTED: usize = 20;
    /// Longest field name kept in an error, in characters (a longer one ends with `…`).
    pub const MAX_FIELD_CHARS: usize = 100;
    /// Longest message kept in an error, in characters.
    pub const MAX_MESSAGE_CHARS: usize = 500;

    pub fn new() -> Self {
        Self::default()
    }

    /// Records one problem. Past [`MAX_LISTED`](Self::MAX_LISTED) it is only counted: the
    /// field is not formatted and the message not converted. Control characters are dropped.
    pub fn push(&mut self, field: impl fmt::Display, message: impl Into<String>) {
        self.total = self.total.saturating_add(1);
        if self.listed.len() < Self::MAX_LISTED {
            let message: String = message.into();
            self.listed.push(FieldError {
                field: clipped(field, Self::MAX_FIELD_CHARS),
                message: clipped(message, Self::MAX_MESSAGE_CHARS),
            });
        }
    }

    /// Counts `n` more problems without listing them.
    pub fn add_unlisted(&mut self, n: usize) {
        self.total = self.total.saturating_add(n);
    }

    /// The problems kept, in the order found: at most [`MAX_LISTED`](Self::MAX_LISTED).
    pub fn listed(&self) -> &[FieldError] {
        &self.listed
    }

    /// How many problems were found, listed or not.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// One line for a client: how many fields are invalid, and whether all are listed.
    pub fn summary(&self) -> String {
        if self.total > self.listed.len() {
            format!(
                "the request has {} invalid fields; the first {} are listed",
                self.total,
                self.listed.len()
            )
        } else {
            format!("the request has {} invalid field(s)", self.total)
        }
    }
}

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid input: ")?;
        for (i, e) in self.listed.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        match self.total - self.listed.len() {
            0 => Ok(()),
            more => write!(f, "; and {more} more"),
        }
    }
}

impl std::error::Error for InputErrors {}

/// The listed errors (at most [`InputErrors::MAX_LISTED`]), in the order found.
impl IntoIterator for InputErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.listed.into_iter()
    }
}

/// `text` without control characters and cut to `max` characters, ending with `…` when cut.
/// Formats into a bounded buffer, so a huge `text` costs no more than a short one.
fn clipped(text: impl fmt::Display, max: usize) -> String {
    struct Clip {
        out: String,
        room: usize,
        cut: bool,
    }
    impl fmt::Write for Clip {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars().filter(|c| !c.is_control()) {
                if self.room == 0 {
                    self.cut = true;
                    return Err(fmt::Error); // stops the formatting early
                }
                self.out.push(c);
                self.room -= 1;
            }
            Ok(())
        }
    }
    let mut clip = Clip {
        out: String::new(),
        room: max,
        cut: false,
    };
    // An error here only means the text was cut.
    let _ = fmt::write(&mut clip, format_args!("{text}"));
    if clip.cut {
        clip.out.push('…');
    }
    clip.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_cut_and_cleaned() {
        let mut errors = InputErrors::new();
        errors.push(
            format_args!("input.{}", "a\u{0}\n\u{1b}".repeat(1000)),
            "bad",
        );
        errors.push("é".repeat(100), "m".repeat(10_000));
        errors.push("input.猫\u{7f}", "x\ny");
        let [long, exact, short] = errors.listed() else {
            panic!("{errors:?}")
        };
        assert_eq!(long.field, format!("input.{}…", "a".repeat(94)));
        assert_eq!(exact.field, "é".repeat(100), "exactly the limit: not cut");
        assert_eq!(
            exact.message,
            format!("{}…", "m".repeat(InputErrors::MAX_MESSAGE_CHARS))
        );
        assert_eq!(
            (short.field.as_str(), short.message.as_str()),
            ("input.猫", "xy")
        );
        assert_eq!(errors.summary(), "the request has 3 invalid field(s)");
        errors.add_unlisted(usize::MAX);
        assert_eq!(errors.total(), usize::MAX);
    }
}
