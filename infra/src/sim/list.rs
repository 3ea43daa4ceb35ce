//! `GET /v1/predictions`: every prediction, newest first, 100 a page, optionally only those
//! created in [`created_after`, `created_before`). A page's `next` link names the last
//! prediction shown, so predictions created between two pages shift nothing.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Value, json};

use super::answers::{json, problem};
use super::lifecycle::SimPrediction;
use super::{State, lock};
use crate::http_server::HttpResponse;

/// Replicate's page size.
const PAGE_SIZE: usize = 100;

/// Where a prediction sits in the list: its `created_at` in microseconds (the precision it
/// is shown with) and its id. The list runs from the largest down.
type Position = (u128, String);

fn position(p: &SimPrediction) -> Position {
    let micros = p
        .created_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    (micros, p.id.clone())
}

fn encode_cursor((micros, id): &Position) -> String {
    format!("{micros}-{id}")
}

fn parse_cursor(cursor: &str) -> Result<Position, String> {
    let invalid = || format!("cursor: {cursor:?} is not a cursor of this list");
    let (micros, id) = cursor.split_once('-').ok_or_else(invalid)?;
    let micros = micros.parse().map_err(|_| invalid())?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid());
    }
    Ok((micros, id.to_owned()))
}

/// A list request's query.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    created_after: Option<SystemTime>,
    created_before: Option<SystemTime>,
    /// Only what comes after this position: the last prediction of the previous page.
    cursor: Option<Position>,
    /// `source=web`: the simulator makes only API predictions, so none match.
    web_only: bool,
    /// The filters as given, carried into `next` links.
    filters: Vec<(String, String)>,
}

impl ListQuery {
    fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "created_after" => parsed.created_after = Some(parse_time(&key, &value)?),
                "created_before" => parsed.created_before = Some(parse_time(&key, &value)?),
                "source" if value == "web" => parsed.web_only = true,
                "source" => return Err(format!("source: {value:?} is not one of [web]")),
                "cursor" => {
                    parsed.cursor = Some(parse_cursor(&value)?);
                    continue;
                }
                // Like Replicate, parameters it does not know are ignored.
                _ => continue,
            }
            parsed.filters.push((key.into_owned(), value.into_owned()));
        }
        Ok(parsed)
    }

    fn admits(&self, p: &SimPrediction) -> bool {
        !self.web_only
            && self.created_after.is_none_or(|after| p.created_at >= after)
            && self
                .created_before
                .is_none_or(|before| p.created_at < before)
            && self.cursor.as_ref().is_none_or(|last| position(p) < *last)
    }
}

fn parse_time(name: &str, value: &str) -> Result<SystemTime, String> {
    parse_iso8601(value).ok_or_else(|| format!("{name}: {value:?} is not an ISO 8601 date-time"))
}

/// ISO 8601 as Replicate takes it: a date, or a date-time with an optional fraction and
/// `Z`, a `±HH:MM` offset or none (UTC).
fn parse_iso8601(value: &str) -> Option<SystemTime> {
    if value.len() == "2025-01-01".len() {
        return humantime::parse_rfc3339_weak(&format!("{value}T00:00:00Z")).ok();
    }
    let Some((local, east_seconds)) = split_offset(value) else {
        return humantime::parse_rfc3339_weak(value).ok();
    };
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    let offset = Duration::from_secs(east_seconds.unsigned_abs());
    if east_seconds >= 0 {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

/// Splits `<date-time>±HH:MM` into the date-time and the offset east of UTC, in seconds. A
/// `+` sent unescaped in a query string arrives as a space, so a space is read as `+`.
fn split_offset(value: &str) -> Option<(&str, i64)> {
    let at = value.len().checked_sub("+00:00".len())?;
    let (local, offset) = (value.get(..at)?, value.get(at..)?.as_bytes());
    let sign = match offset[0] {
        b'+' | b' ' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digit = |i: usize| {
        offset[i]
            .is_ascii_digit()
            .then(|| i64::from(offset[i] - b'0'))
    };
    let hours = digit(1)? * 10 + digit(2)?;
    let minutes = digit(4)? * 10 + digit(5)?;
    let is_date_time = local.len() >= "2025-01-01T00:00:00".len();
    (offset[3] == b':' && is_date_time && hours < 24 && minutes < 60)
        .then_some((local, sign * (hours * 3600 + minutes * 60)))
}

impl State {
    pub(super) fn list(&self, query: Option<&str>) -> HttpResponse {
        lock(&self.stats).lists += 1;
        let query = match ListQuery::parse(query.unwrap_or_default()) {
            Ok(query) => query,
            Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
        };
        let predictions = lock(&self.predictions);
        let mut listed: Vec<(Position, &SimPrediction)> = predictions
            .values()
            .filter(|p| query.admits(p))
            .map(|p| (position(p), p))
            .collect();
        listed.sort_by(|a, b| b.0.cmp(&a.0));
        let more = listed.len() > PAGE_SIZE;
        listed.truncate(PAGE_SIZE);
        let next = match listed.last() {
            Some((last, _)) if more => Some(self.next_link(&query, last)),
            _ => None,
        };
        let results: Vec<Value> = listed.iter().map(|(_, p)| self.to_json(p)).collect();
        json(
            StatusCode::OK,
            &json!({"next": next, "previous": null, "results": results}),
        )
    }

    /// The absolute URL of the page after `last`, with the same filters.
    fn next_link(&self, query: &ListQuery, last: &Position) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        pairs.append_pair("cursor", &encode_cursor(last));
        for (key, value) in &query.filters {
            pairs.append_pair(key, value);
        }
        format!("{}/v1/predictions?{}", self.origin, pairs.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn iso_8601_dates_times_and_offsets() {
        let midnight = at("2025-01-01T00:00:00Z");
        for same in [
            "2025-01-01",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00.000Z",
            "2025-01-01T00:00:00",
            "2025-01-01T00:00:00+00:00",
            "2025-01-01T01:30:00+01:30",
            "2025-01-01T01:30:00 01:30",
            "2024-12-31T22:00:00-02:00",
        ] {
            assert_eq!(parse_iso8601(same), Some(midnight), "{same}");
        }
        assert_eq!(
            parse_iso8601("2025-01-01T00:00:00.123456Z"),
            Some(midnight + Duration::from_micros(123_456))
        );
        for junk in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-01-01T25:00:00Z",
            "2025-01-01T00:00:00+24:00",
            "2025-01-01T00:00:00+1:00",
            "1735689600",
        ] {
            assert_eq!(parse_iso8601(junk), None, "{junk}");
        }
    }

    #[test]
    fn queries_parse_and_bad_ones_say_why() {
        let query = ListQuery::parse(
            "created_after=2025-01-01T00%3A00%3A00Z&cursor=1735689600000000-abc&x=1",
        )
        .unwrap();
        assert_eq!(query.created_after, Some(at("2025-01-01T00:00:00Z")));
        assert_eq!(query.created_before, None);
        assert_eq!(
            query.cursor,
            Some((1_735_689_600_000_000, "abc".to_owned()))
        );
        assert_eq!(
            query.filters,
            vec![(
                "created_after".to_owned(),
                "2025-01-01T00:00:00Z".to_owned()
            )]
        );
        assert!(ListQuery::parse("source=web").unwrap().web_only);
        for (bad, named) in [
            ("created_before=soon", "created_before"),
            ("created_after=", "created_after"),
            ("cursor=abc", "cursor"),
            ("cursor=12-a%2Fb", "cursor"),
            ("source=api", "source"),
        ] {
            let err = ListQuery::parse(bad).unwrap_err();
            assert!(err.starts_with(named), "{bad}: {err}");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let last = (
            1_735_689_600_123_456,
            "q2wbz7xkdhrgc0cmq5gbwqyw0g".to_owned(),
        );
        assert_eq!(parse_cursor(&encode_cursor(&last)), Ok(last));
    }
}
