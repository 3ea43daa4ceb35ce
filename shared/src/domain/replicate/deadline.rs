//! A prediction's deadline: Replicate's `Cancel-After` (README, "The API"). Replicate aborts
//! a prediction that has not started by then and cancels one still running.

use std::fmt;
use std::time::Duration;

/// Between 5 seconds and 30 minutes: Replicate's minimum, and the longest any prediction of
/// this service may run (its give-ups and retention checks rely on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be a duration from 5s to 30m, written like 90s, 5m or 1m30s")]
pub struct InvalidDeadline;

impl Deadline {
    pub const MIN: Deadline = Deadline(Duration::from_secs(5));
    /// What every create carries unless the client asks for less.
    pub const MAX: Deadline = Deadline(Duration::from_secs(30 * 60));

    /// `90s`, `5m`, `1m30s`, `1h` (whole hours, minutes and seconds, each at most once, in
    /// that order), from 5 s to 30 min.
    pub fn parse(text: &str) -> Result<Self, InvalidDeadline> {
        let text = text.trim();
        if text.is_empty() || text.len() > 16 {
            return Err(InvalidDeadline);
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        let mut last_unit = 0; // 0 none, 3 h, 2 m, 1 s: units must come in falling order.
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let (rank, seconds) = match c {
                'h' => (3, 3600),
                'm' => (2, 60),
                's' => (1, 1),
                _ => return Err(InvalidDeadline),
            };
            if digits.is_empty() || (last_unit != 0 && rank >= last_unit) {
                return Err(InvalidDeadline);
            }
            let value: u64 = digits.parse().map_err(|_| InvalidDeadline)?;
            total = total
                .checked_add(value.checked_mul(seconds).ok_or(InvalidDeadline)?)
                .ok_or(InvalidDeadline)?;
            digits.clear();
            last_unit = rank;
        }
        if !digits.is_empty() || last_unit == 0 {
            return Err(InvalidDeadline);
        }
        let deadline = Deadline(Duration::from_secs(total));
        if (Self::MIN..=Self::MAX).contains(&deadline) {
            Ok(deadline)
        } else {
            Err(InvalidDeadline)
        }
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::MAX
    }
}

/// As the `Cancel-After` header: whole seconds (`90s`).
impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_durations_from_five_seconds_to_thirty_minutes() {
        for (text, seconds) in [
            ("90s", 90),
            ("5m", 300),
            ("1m30s", 90),
            ("5s", 5),
            ("30m", 1800),
            ("0h30m", 1800),
            (" 2m ", 120),
        ] {
            assert_eq!(
                Deadline::parse(text).map(|d| d.as_duration().as_secs()),
                Ok(seconds),
                "{text}"
            );
        }
        for bad in [
            "",
            "4s",
            "31m",
            "30m1s",
            "1h",
            "90",
            "s",
            "1s1m",
            "1m1m",
            "5 m",
            "-5s",
            "1.5m",
            "99999999999999999999s",
            "5x",
        ] {
            assert_eq!(Deadline::parse(bad), Err(InvalidDeadline), "{bad:?}");
        }
        assert_eq!(Deadline::parse("1m30s").unwrap().to_string(), "90s");
        assert_eq!(Deadline::MAX.to_string(), "1800s");
    }
}
