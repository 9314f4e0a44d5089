//! Money, exactly. Every amount in tollgate is a [`Usd`]: a decimal (never a float) that travels
//! in the contracts as a decimal string (`"0.000375"`).
//!
//! Precision rules, chosen so that every cost is exact:
//! - prices are per million tokens with at most 6 fractional digits ([`Usd::parse_price`]);
//! - a cost is `tokens × price / 1e6`, hence at most 12 fractional digits, computed without
//!   rounding by [`Usd::cost_of_tokens`];
//! - amounts given by callers may have at most 12 fractional digits ([`Usd::parse`]).
//!
//! 12 fractional digits is a pico-dollar: [`Usd::to_picos`] gives an exact integer for stores
//! that keep money as integers.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Fractional digits of any amount.
pub const MAX_SCALE: u32 = 12;
/// Fractional digits of a price per million tokens.
pub const MAX_PRICE_SCALE: u32 = 6;
const PICOS_PER_USD: i64 = 1_000_000_000_000; // 10^MAX_SCALE

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct MoneyError {
    pub field: String,
    pub problem: String,
}

impl MoneyError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

/// An exact amount of US dollars.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Usd(Decimal);

impl Usd {
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    /// Parses a caller's amount: plain decimal notation (`12`, `0.5`, `-3.25`), at most 12
    /// fractional digits. Exponents, `NaN`, spaces and empty strings are refused; `field` names
    /// the input in the error.
    pub fn parse(field: &str, text: &str) -> Result<Usd, MoneyError> {
        Self::parse_with_scale(field, text, MAX_SCALE)
    }

    /// Like [`Usd::parse`], and also refuses negative amounts.
    pub fn parse_non_negative(field: &str, text: &str) -> Result<Usd, MoneyError> {
        let amount = Self::parse(field, text)?;
        if amount.is_negative() {
            return Err(MoneyError::new(
                field,
                format!("must not be negative, got {text:?}"),
            ));
        }
        Ok(amount)
    }

    /// Parses a price per million tokens: non-negative, at most 6 fractional digits.
    pub fn parse_price(field: &str, text: &str) -> Result<Usd, MoneyError> {
        let price = Self::parse_with_scale(field, text, MAX_PRICE_SCALE)?;
        if price.is_negative() {
            return Err(MoneyError::new(
                field,
                format!("a price must not be negative, got {text:?}"),
            ));
        }
        Ok(price)
    }

    fn parse_with_scale(field: &str, text: &str, max_scale: u32) -> Result<Usd, MoneyError> {
        let plain = !text.is_empty()
            && text
                .trim_start_matches('-')
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
            && text.matches('.').count() <= 1
            && text
                .trim_start_matches('-')
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit());
        if !plain {
            return Err(MoneyError::new(
                field,
                format!("expected a decimal amount such as \"0.0025\", got {text:?}"),
            ));
        }
        let value = Decimal::from_str(text)
            .map_err(|e| MoneyError::new(field, format!("not a decimal amount ({e}): {text:?}")))?;
        if value.scale() > max_scale && value.normalize().scale() > max_scale {
            return Err(MoneyError::new(
                field,
                format!("at most {max_scale} fractional digits, got {text:?}"),
            ));
        }
        Ok(Usd(value.normalize()))
    }

    /// `tokens × price_per_million / 1e6`, exactly (see the module header).
    pub fn cost_of_tokens(tokens: u64, price_per_million: Usd) -> Option<Usd> {
        let product = Decimal::from(tokens).checked_mul(price_per_million.0)?;
        product
            .checked_div(Decimal::from(1_000_000u32))
            .map(|cost| Usd(cost.normalize()))
    }

    pub fn from_decimal(value: Decimal) -> Usd {
        Usd(value.normalize())
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    pub fn from_micros(micros: i64) -> Usd {
        Usd(Decimal::new(micros, 6).normalize())
    }

    /// The exact number of pico-dollars (1e-12 USD); None when the amount has finer digits or
    /// does not fit.
    pub fn to_picos(&self) -> Option<i128> {
        use rust_decimal::prelude::ToPrimitive;
        let picos = self.0.checked_mul(Decimal::from(PICOS_PER_USD))?;
        if !picos.fract().is_zero() {
            return None;
        }
        picos.to_i128()
    }

    pub fn from_picos(picos: i128) -> Option<Usd> {
        Decimal::try_from_i128_with_scale(picos, MAX_SCALE)
            .ok()
            .map(|value| Usd(value.normalize()))
    }

    pub fn is_negative(&self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    pub fn checked_sub(self, other: Usd) -> Option<Usd> {
        self.0.checked_sub(other.0).map(Usd)
    }
}

/// The contract form: plain decimal notation, no trailing zeros, `"0"` for zero.
impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

impl From<Usd> for String {
    fn from(value: Usd) -> String {
        value.to_string()
    }
}

impl TryFrom<String> for Usd {
    type Error = MoneyError;
    fn try_from(text: String) -> Result<Usd, MoneyError> {
        Usd::parse("amount", &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> Usd {
        Usd::parse("test", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_plain_decimals_and_prints_them_back() {
        for (input, printed) in [
            ("0", "0"),
            ("0.000375", "0.000375"),
            ("12.50", "12.5"),
            ("-3", "-3"),
            ("0.000000000001", "0.000000000001"),
        ] {
            assert_eq!(usd(input).to_string(), printed);
        }
    }

    #[test]
    fn refuses_floats_exponents_and_excess_precision_naming_the_field() {
        for bad in [
            "",
            " 1",
            "1e-3",
            "NaN",
            "inf",
            "1.2.3",
            "0.0000000000001",
            "$1",
            "+1",
            ".5",
            "-",
        ] {
            let error = Usd::parse("hints.max_cost_usd", bad).err();
            assert!(
                error
                    .as_ref()
                    .is_some_and(|e| e.field == "hints.max_cost_usd"),
                "{bad:?} gave {error:?}"
            );
        }
        assert!(Usd::parse_non_negative("cost_usd", "-0.1").is_err());
        assert!(
            Usd::parse_price("price", "0.0000001").is_err(),
            "prices have at most 6 fractional digits"
        );
    }

    #[test]
    fn token_costs_are_exact() {
        // 1 cached token of a model at $0.0375 per million tokens.
        assert_eq!(
            Usd::cost_of_tokens(1, usd("0.0375"))
                .map(|c| c.to_string())
                .as_deref(),
            Some("0.0000000375")
        );
        // A million requests of 1 token each sum to exactly the price of a million tokens.
        let one = Usd::cost_of_tokens(1, usd("0.15")).unwrap_or_default();
        let mut total = Usd::ZERO;
        for _ in 0..1_000_000 {
            total = total.checked_add(one).unwrap_or_default();
        }
        assert_eq!(total, usd("0.15"));
    }

    #[test]
    fn picos_round_trip() {
        let amount = usd("1234.000000000001");
        assert_eq!(amount.to_picos(), Some(1_234_000_000_000_001));
        assert_eq!(Usd::from_picos(1_234_000_000_000_001), Some(amount));
        assert_eq!(Usd::from_micros(1_500_000), usd("1.5"));
    }

    #[test]
    fn serde_uses_the_decimal_string() {
        let json = serde_json::to_string(&usd("0.25")).unwrap_or_default();
        assert_eq!(json, "\"0.25\"");
        let back: Result<Usd, _> = serde_json::from_str("\"1e3\"");
        assert!(back.is_err());
    }
}
