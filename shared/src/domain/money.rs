//! Money: whole micro-dollars, so DynamoDB adds them atomically and exactly, and every
//! listed price is a whole number of them.

/// Millionths of a US dollar.
pub type Micros = u64;

/// One dollar.
pub const MICROS_PER_USD: Micros = 1_000_000;

/// Dollars as shown to clients (`0.003`).
pub fn usd(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

/// Dollars from configuration or a command line, to whole micro-dollars (rounded). `None`
/// for anything negative, not finite, or above a billion dollars.
pub fn micros_from_usd(dollars: f64) -> Option<Micros> {
    (dollars.is_finite() && (0.0..=1e9).contains(&dollars))
        .then(|| (dollars * MICROS_PER_USD as f64).round() as Micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_convert_exactly_for_listed_prices() {
        assert_eq!(micros_from_usd(0.003), Some(3_000));
        assert_eq!(micros_from_usd(0.000225), Some(225));
        assert_eq!(micros_from_usd(25.0), Some(25_000_000));
        assert_eq!(micros_from_usd(-1.0), None);
        assert_eq!(micros_from_usd(f64::INFINITY), None);
        assert_eq!(usd(3_000), 0.003);
    }
}
