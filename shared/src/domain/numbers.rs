//! JSON numbers as this service reads them: a request's `4` and `4.0` mean (and hash) the
//! same.

use serde_json::Value;

/// An integer, also when written as `4.0`; so `4` and `4.0` mean (and hash) the same.
pub fn as_integer(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let x = value.as_f64()?;
    // i64::MAX as f64 rounds up to 2^63, so the upper bound must be exclusive.
    (x.fract() == 0.0 && x >= i64::MIN as f64 && x < i64::MAX as f64).then_some(x as i64)
}
