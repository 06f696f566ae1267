//! Kubernetes resource quantities (`500m`, `128Mi`, `1e3`): parsing, exact scaled values and serde.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Why a quantity could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not a number: it is empty, has no digits, or has a stray sign, dot or space.
    #[error(
        "invalid quantity {input:?}: expected a number with an optional suffix (m, k, Ki, Mi, Gi, ...)"
    )]
    Malformed {
        /// The text as given.
        input: String,
    },
    /// The number is followed by something that is neither an SI suffix nor a decimal exponent.
    #[error(
        "invalid quantity {input:?}: expected a number with an optional suffix (m, k, Ki, Mi, Gi, ...); {suffix:?} is not a known suffix"
    )]
    UnknownSuffix {
        /// The text as given.
        input: String,
        /// Everything after the number.
        suffix: String,
    },
    /// The value in thousandths does not fit in an `i128`.
    #[error("invalid quantity {input:?}: the value is too large")]
    Overflow {
        /// The text as given.
        input: String,
    },
}

/// A resource quantity as written in a manifest, with its value worked out once when parsed.
///
/// The text is kept exactly as given so that objects round-trip unchanged; equality and hashing
/// therefore follow the text, so `"1000m"` and `"1"` are different quantities of equal value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    text: String,
    /// The value times 1000, rounded away from zero.
    milli: i128,
    /// The value rounded away from zero to an integer.
    value: i128,
}

impl Quantity {
    /// Parses Kubernetes quantity syntax: an optional sign, digits with an optional fraction, and
    /// an optional binary SI (`Ki`..`Ei`), decimal SI (`n`, `u`, `m`, `k`, `M`..`E`) or decimal
    /// exponent (`e3`, `E-2`) suffix.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let (milli, value) = evaluate(s)?;
        Ok(Quantity {
            text: s.to_owned(),
            milli,
            value,
        })
    }

    /// Like [`Quantity::parse`], keeping the given string rather than copying it.
    fn from_string(text: String) -> Result<Quantity, QuantityError> {
        let (milli, value) = evaluate(&text)?;
        Ok(Quantity { text, milli, value })
    }

    /// The text exactly as it was given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value times 1000, rounded up (away from zero): `"500m"` is 500, `"0.1"` is 100 and
    /// `"1Ki"` is 1_024_000.
    pub fn milli_value(&self) -> i128 {
        self.milli
    }

    /// The value rounded up (away from zero) to an integer: `"128Mi"` is 134_217_728 and
    /// `"500m"` is 1.
    pub fn value(&self) -> i128 {
        self.value
    }

    /// Whether the quantity is below zero (`"-0"` is not).
    pub fn is_negative(&self) -> bool {
        self.milli < 0
    }

    /// Whether the quantity is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.milli == 0
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// Accepts a string or a bare number, since manifests often say `cpu: 1` or `cpu: 0.5`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

struct QuantityVisitor;

impl de::Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity such as \"500m\", \"128Mi\" or 2")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Quantity::parse(v).map_err(E::custom)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Quantity, E> {
        Quantity::from_string(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Quantity::from_string(v.to_string()).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Quantity::from_string(v.to_string()).map_err(E::custom)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Quantity, E> {
        Quantity::from_string(v.to_string()).map_err(E::custom)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Quantity, E> {
        Quantity::from_string(v.to_string()).map_err(E::custom)
    }

    /// Rust prints the shortest text that reads back as the same float, never in exponent form
    /// and without a trailing `.0`, so `2.0` becomes `"2"`; NaN and infinities print as words
    /// and are then rejected as malformed.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        Quantity::from_string(v.to_string()).map_err(E::custom)
    }
}

/// The number a quantity's text denotes: `digits × 10^exp10 × 2^exp2`, with a sign.
#[derive(Debug)]
struct Number {
    negative: bool,
    /// Decimal digits (0..=9) of the integer and fraction parts, the decimal point dropped.
    digits: Vec<u8>,
    exp10: i64,
    /// At most 60 (`Ei`).
    exp2: u32,
}

/// Parses `text` and returns its value in thousandths and in units.
fn evaluate(text: &str) -> Result<(i128, i128), QuantityError> {
    let number = Number::parse(text)?;
    let overflow = || QuantityError::Overflow {
        input: text.to_owned(),
    };
    let milli = number.scaled(3).ok_or_else(overflow)?;
    let value = number.scaled(0).ok_or_else(overflow)?;
    Ok((milli, value))
}

impl Number {
    fn parse(text: &str) -> Result<Number, QuantityError> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (integer, rest) = split_digits(unsigned);
        let (fraction, suffix) = match rest.strip_prefix('.') {
            Some(rest) => split_digits(rest),
            None => ("", rest),
        };
        if integer.is_empty() && fraction.is_empty() {
            return Err(QuantityError::Malformed {
                input: text.to_owned(),
            });
        }
        let (exp10, exp2) = suffix_scale(suffix).ok_or_else(|| {
            // A suffix starting with a letter was meant as one; anything else (a second dot, a
            // space, a sign) means the number itself is malformed.
            if suffix.starts_with(|c: char| c.is_ascii_alphabetic()) {
                QuantityError::UnknownSuffix {
                    input: text.to_owned(),
                    suffix: suffix.to_owned(),
                }
            } else {
                QuantityError::Malformed {
                    input: text.to_owned(),
                }
            }
        })?;
        let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
        Ok(Number {
            negative,
            digits: integer
                .bytes()
                .chain(fraction.bytes())
                .map(|b| b - b'0')
                .collect(),
            exp10: exp10.saturating_sub(fraction_len),
            exp2,
        })
    }

    /// The value times `10^extra`, rounded away from zero; `None` if it does not fit in `i128`.
    fn scaled(&self, extra: i64) -> Option<i128> {
        let magnitude =
            scaled_magnitude(&self.digits, self.exp10.saturating_add(extra), self.exp2)?;
        let magnitude = i128::try_from(magnitude).ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

/// Splits `s` after its leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let len = s.bytes().take_while(u8::is_ascii_digit).count();
    s.split_at(len)
}

/// The powers of ten and two a suffix stands for, or `None` if it is not one.
fn suffix_scale(suffix: &str) -> Option<(i64, u32)> {
    let scale = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => (decimal_exponent(suffix)?, 0),
    };
    Some(scale)
}

/// Parses `e3`, `E-2` or `e+6`. Exponents beyond `i64` saturate: either way the value overflows
/// or rounds to the smallest unit, unless the digits are all zero.
fn decimal_exponent(suffix: &str) -> Option<i64> {
    let rest = suffix.strip_prefix(['e', 'E'])?;
    let (negative, digits) = match rest.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, rest.strip_prefix('+').unwrap_or(rest)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0_i64, |acc, b| {
        acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// `digits × 10^exp10 × 2^exp2` rounded up to an integer, or `None` if that exceeds `u128`.
///
/// Works digit by digit rather than through floating point so that any number of fraction
/// digits is exact and costs time linear in the input.
fn scaled_magnitude(digits: &[u8], exp10: i64, exp2: u32) -> Option<u128> {
    let factor = 1_u128 << exp2;
    if exp10 >= 0 {
        let mut n = integer(digits)?;
        for _ in 0..exp10 {
            if n == 0 {
                break;
            }
            n = n.checked_mul(10)?;
        }
        return n.checked_mul(factor);
    }

    // The last `shift` digits (padded on the left with zeros if there are fewer) are the fraction.
    let shift = exp10.unsigned_abs();
    let split = digits
        .len()
        .saturating_sub(usize::try_from(shift).unwrap_or(usize::MAX));
    let (whole, fraction) = digits.split_at(split);

    // floor(factor × 0.fraction) by long multiplication from the last digit, with `carry` staying
    // below `factor`; any non-zero digit shifted out means the product was not whole.
    let mut carry: u128 = 0;
    let mut inexact = false;
    for &digit in fraction.iter().rev() {
        let product = u128::from(digit) * factor + carry;
        inexact |= !product.is_multiple_of(10);
        carry = product / 10;
    }
    let mut padding = shift.saturating_sub(u64::try_from(fraction.len()).unwrap_or(u64::MAX));
    while padding > 0 && carry > 0 {
        inexact |= !carry.is_multiple_of(10);
        carry /= 10;
        padding -= 1;
    }

    let rounded_down = integer(whole)?.checked_mul(factor)?.checked_add(carry)?;
    if inexact {
        rounded_down.checked_add(1)
    } else {
        Some(rounded_down)
    }
}

/// The decimal digits as an integer, or `None` if it exceeds `u128`.
fn integer(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0_u128, |acc, &digit| {
        acc.checked_mul(10)?.checked_add(u128::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_quantities_have_exact_milli_values_and_values_rounded_away_from_zero()
    -> Result<(), QuantityError> {
        let cases: &[(&str, i128, i128)] = &[
            ("0", 0, 0),
            ("1", 1_000, 1),
            ("500m", 500, 1),
            ("0.1", 100, 1),
            ("1.5", 1_500, 2),
            (".5", 500, 1),
            ("5.", 5_000, 5),
            ("+1k", 1_000_000, 1_000),
            ("-500m", -500, -1),
            ("-1.5", -1_500, -2),
            ("-0", 0, 0),
            ("00012", 12_000, 12),
            ("1n", 1, 1),
            ("100u", 1, 1),
            ("1000u", 1, 1),
            ("250m", 250, 1),
            ("2M", 2_000_000_000, 2_000_000),
            ("3G", 3_000_000_000_000, 3_000_000_000),
            ("1T", 1_000_000_000_000_000, 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000_000, 1_000_000_000_000_000),
            (
                "2E",
                2_000_000_000_000_000_000_000,
                2_000_000_000_000_000_000,
            ),
            ("1Ki", 1_024_000, 1_024),
            ("1.5Ki", 1_536_000, 1_536),
            ("128Mi", 134_217_728_000, 134_217_728),
            ("1Gi", 1_073_741_824_000, 1_073_741_824),
            ("1Ti", 1_099_511_627_776_000, 1_099_511_627_776),
            ("1Pi", 1_125_899_906_842_624_000, 1_125_899_906_842_624),
            (
                "1Ei",
                1_152_921_504_606_846_976_000,
                1_152_921_504_606_846_976,
            ),
            ("0.001Ki", 1_024, 2),
            ("0.0001Ki", 103, 1),
            ("1e3", 1_000_000, 1_000),
            ("1E3", 1_000_000, 1_000),
            ("1e+6", 1_000_000_000, 1_000_000),
            ("1E-2", 10, 1),
            ("15e-1", 1_500, 2),
            ("1e-999999999999999999999999", 1, 1),
            ("0e999999999999999999999999", 0, 0),
            ("1.0000000000000000000000000000000000000000000001", 1_001, 2),
            (
                "100000000000000000000000000000000000",
                100_000_000_000_000_000_000_000_000_000_000_000_000,
                100_000_000_000_000_000_000_000_000_000_000_000,
            ),
        ];
        for &(text, milli, value) in cases {
            let q = Quantity::parse(text)?;
            assert_eq!(q.milli_value(), milli, "milli value of {text:?}");
            assert_eq!(q.value(), value, "value of {text:?}");
            assert_eq!(q.as_str(), text);
            assert_eq!(q.to_string(), text);
            assert_eq!(q.is_negative(), milli < 0, "sign of {text:?}");
        }
        Ok(())
    }

    #[test]
    fn malformed_numbers_unknown_suffixes_and_overflows_are_rejected() {
        let cases: &[&str] = &[
            "",
            " ",
            "12x",
            "1mi",
            "1KB",
            "1K",
            "1Kii",
            "abc",
            "m",
            "Ki",
            "1.2.3",
            "--1",
            "+-1",
            "-",
            ".",
            "-.",
            " 1",
            "1 ",
            "1 Ki",
            "1e",
            "1e+",
            "1e3.5",
            "1,5",
            "0x10",
            "NaN",
            "inf",
            "1e40",
            "200000000000000000000000000000000000",
            "1000000000000000000000000000000000000000000000",
            "200000000000000000Ei",
        ];
        for &text in cases {
            assert!(Quantity::parse(text).is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn errors_say_which_part_of_the_quantity_is_wrong() {
        assert_eq!(
            Quantity::parse("12x"),
            Err(QuantityError::UnknownSuffix {
                input: "12x".to_owned(),
                suffix: "x".to_owned()
            })
        );
        assert_eq!(
            Quantity::parse("1.2.3"),
            Err(QuantityError::Malformed {
                input: "1.2.3".to_owned()
            })
        );
        assert_eq!(
            Quantity::parse("1e40"),
            Err(QuantityError::Overflow {
                input: "1e40".to_owned()
            })
        );
        let message = Quantity::parse("abc").map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err(
                "invalid quantity \"abc\": expected a number with an optional suffix (m, k, Ki, Mi, Gi, ...)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn json_numbers_become_quantities_written_without_a_trailing_point_zero()
    -> Result<(), serde_json::Error> {
        let cases: &[(&str, &str, i128)] = &[
            ("1", "1", 1_000),
            ("0.5", "0.5", 500),
            ("2.0", "2", 2_000),
            ("-3", "-3", -3_000),
            ("0.25", "0.25", 250),
            (
                "18446744073709551615",
                "18446744073709551615",
                18_446_744_073_709_551_615_000,
            ),
        ];
        for &(json, text, milli) in cases {
            let q: Quantity = serde_json::from_str(json)?;
            assert_eq!(q.as_str(), text, "text of JSON {json}");
            assert_eq!(q.milli_value(), milli, "milli value of JSON {json}");
        }
        Ok(())
    }

    #[test]
    fn json_strings_deserialize_and_serialize_back_unchanged() -> Result<(), serde_json::Error> {
        let q: Quantity = serde_json::from_str("\"128Mi\"")?;
        assert_eq!(q.value(), 134_217_728);
        assert_eq!(serde_json::to_string(&q)?, "\"128Mi\"");

        let q: Quantity = serde_json::from_str("\"1000m\"")?;
        assert_eq!(serde_json::to_string(&q)?, "\"1000m\"");
        Ok(())
    }

    #[test]
    fn deserializing_a_bad_string_reports_the_text_and_the_expected_form() {
        #[derive(Debug, Deserialize)]
        struct Resources {
            cpu: Quantity,
        }
        let message = serde_json::from_str::<Resources>(r#"{"cpu": "12x"}"#)
            .map(|resources| resources.cpu.to_string())
            .map_err(|e| e.to_string());
        let Err(message) = message else {
            panic!("\"12x\" deserialized as a quantity");
        };
        assert!(
            message.starts_with(
                "invalid quantity \"12x\": expected a number with an optional suffix (m, k, Ki, Mi, Gi, ...)"
            ),
            "{message}"
        );
    }

    #[test]
    fn deserializing_neither_a_string_nor_a_number_is_an_error() {
        assert!(serde_json::from_str::<Quantity>("true").is_err());
        assert!(serde_json::from_str::<Quantity>("[1]").is_err());
        assert!(serde_json::from_str::<Quantity>("null").is_err());
        assert!(serde_json::from_str::<Quantity>("1e400").is_err());
    }

    #[test]
    fn quantities_with_the_same_text_are_equal_and_from_str_matches_parse()
    -> Result<(), QuantityError> {
        let parsed = Quantity::parse("250m")?;
        let from_str: Quantity = "250m".parse()?;
        assert_eq!(parsed, from_str);
        assert_ne!(Quantity::parse("1")?, Quantity::parse("1000m")?);
        assert!(Quantity::parse("0")?.is_zero());
        assert!(!Quantity::parse("-0")?.is_negative());
        Ok(())
    }
}
