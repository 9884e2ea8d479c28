//! The dial plan: what a dial string typed by a person or sent by an application means, and
//! whether an account may dial it.
//!
//! ```text
//!   dial string ──strip " " "-" "." "(" ")"──┬─ emergency number of the region ─▶ Emergency
//!                                           ├─ "+" digits                      ─▶ E164
//!                                           ├─ international prefix + digits   ─▶ E164
//!                                           │    (the region's, from the metadata: 011 in
//!                                           │     the NANP, 0011 in AU, 00 in most places)
//!                                           ├─ 2..=6 digits                    ─▶ Extension
//!                                           └─ national format of the region   ─▶ E164
//!                                                (national prefix rules of the metadata)
//! ```
//!
//! Every E.164 result is checked with [`store::e164::is_e164`] (`+`, 7..=15 digits, no leading
//! 0, ITU-T E.164 §6); whether it is a number in use, in which country and of which type is
//! [`crate::numbering`]'s answer (libphonenumber's metadata). Emergency numbers are recognised
//! before anything else, so `112` is never taken for an extension. 112 is treated as an
//! emergency number in every region (as GSM handsets do, 3GPP TS 22.101 §10.1.1), 911 likewise.
//! Extensions and emergency numbers are this module's own: the metadata does not cover them.
//!
//! [`permit`] is the toll-fraud guard, in this order: the number must be valid, in one of the
//! account's `allowed_countries` (by the number's country, so `+1 876` is Jamaica, not the
//! US), not of one of its `blocked_number_types`, and under one of its `allowed_prefixes`.
//!
//! Pure: no store, no I/O. Whether an emergency call has a route is up to the caller, who
//! knows the trunks.

use store::e164::is_e164;
use store::{Account, NumberType};

use crate::numbering::{self, Classified, Invalid};

/// What a dial string resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialled {
    /// A number in E.164 form (`+14155551234`).
    E164(String),
    /// An internal extension (`1001`): an internal user's devices.
    Extension(String),
    /// An emergency number as dialled (`911`, `112`), to be routed only through a trunk
    /// flagged for emergency calls.
    Emergency(String),
}

impl Dialled {
    /// The normalised destination as text.
    pub fn as_str(&self) -> &str {
        match self {
            Dialled::E164(s) | Dialled::Extension(s) | Dialled::Emergency(s) => s,
        }
    }
}

/// Why a dial string cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// Nothing left after removing separators.
    #[error("dial string is empty")]
    Empty,
    /// A character that is neither a digit, a leading `+` nor a separator.
    #[error("dial string contains {0:?}, which cannot be dialled")]
    BadCharacter(char),
    /// The digits do not make a valid E.164 number.
    #[error("{0} is not a valid E.164 number")]
    InvalidNumber(String),
    /// The digits are not a national number of the region.
    #[error("{digits} is not a dialable number in region {region}")]
    NotNational { digits: String, region: String },
    /// A national number was dialled but the region is unknown to the numbering metadata.
    #[error("region {0:?} has no known country code; dial the number in E.164 form (+...)")]
    UnknownRegion(String),
}

/// Shortest and longest extensions.
pub const EXTENSION_DIGITS: std::ops::RangeInclusive<usize> = 2..=6;

/// Numbers that reach emergency services everywhere (3GPP TS 22.101 §10.1.1).
const UNIVERSAL_EMERGENCY: &[&str] = &["112", "911"];

/// Emergency numbers by region (ISO 3166-1 alpha-2), in addition to [`UNIVERSAL_EMERGENCY`].
const EMERGENCY: &[(&str, &[&str])] = &[
    ("US", &["911", "933"]),
    ("CA", &["911"]),
    ("GB", &["999"]),
    ("IE", &["999"]),
    ("AU", &["000", "106"]),
    ("NZ", &["111"]),
    ("IN", &["100", "101", "102", "108"]),
    ("DE", &["110"]),
    (
        "FR",
        &["15", "17", "18", "114", "115", "119", "191", "196", "197"],
    ),
    ("ES", &["091", "092", "061", "080", "085"]),
    ("IT", &["113", "115", "118"]),
    ("NL", &[]),
    ("BE", &["100", "101"]),
    ("AT", &["122", "133", "144"]),
    ("CH", &["117", "118", "144"]),
    ("JP", &["110", "119", "118"]),
    ("BR", &["190", "192", "193"]),
    ("MX", &[]),
];

/// True when `digits` is an emergency number in `region`.
pub fn is_emergency(digits: &str, region: &str) -> bool {
    let region = region.to_ascii_uppercase();
    UNIVERSAL_EMERGENCY.contains(&digits)
        || EMERGENCY
            .iter()
            .any(|(r, list)| *r == region && list.contains(&digits))
}

/// The country calling code of a region, without `+` (from the numbering metadata).
pub fn country_code(region: &str) -> Option<u16> {
    numbering::country_code(&region.trim().to_ascii_uppercase())
}

/// `digits` after the international prefix of `region`: the metadata's prefix where the region
/// is known, else `00` (ITU-T E.164 Annex A's recommendation).
fn after_international_prefix<'a>(digits: &'a str, region: &str) -> Option<&'a str> {
    if numbering::is_known_region(region) {
        numbering::strip_international_prefix(digits, region)
    } else {
        digits.strip_prefix("00")
    }
}

/// Resolves a dial string in the context of an account's region (ISO 3166-1 alpha-2).
pub fn normalize(dial_string: &str, region: &str) -> Result<Dialled, DialError> {
    let region = region.trim().to_ascii_uppercase();
    let mut cleaned = String::with_capacity(dial_string.len());
    for (i, c) in dial_string.trim().chars().enumerate() {
        match c {
            ' ' | '-' | '.' | '(' | ')' => {}
            '+' if i == 0 => cleaned.push(c),
            '0'..='9' => cleaned.push(c),
            other => return Err(DialError::BadCharacter(other)),
        }
    }
    let (plus, digits) = match cleaned.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, cleaned.as_str()),
    };
    if digits.is_empty() {
        return Err(DialError::Empty);
    }
    if plus {
        return e164(format!("+{digits}"));
    }
    if is_emergency(digits, &region) {
        return Ok(Dialled::Emergency(digits.to_owned()));
    }
    if let Some(rest) = after_international_prefix(digits, &region) {
        return e164(format!("+{rest}"));
    }
    if EXTENSION_DIGITS.contains(&digits.len()) {
        return Ok(Dialled::Extension(digits.to_owned()));
    }
    national(digits, &region)
}

fn e164(candidate: String) -> Result<Dialled, DialError> {
    if is_e164(&candidate) {
        Ok(Dialled::E164(candidate))
    } else {
        Err(DialError::InvalidNumber(candidate))
    }
}

fn national(digits: &str, region: &str) -> Result<Dialled, DialError> {
    if !numbering::is_known_region(region) {
        return Err(DialError::UnknownRegion(region.to_owned()));
    }
    let not_national = || DialError::NotNational {
        digits: digits.to_owned(),
        region: region.to_owned(),
    };
    let candidate = numbering::national_to_e164(digits, region).ok_or_else(not_national)?;
    e164(candidate).map_err(|_| not_national())
}

/// True when `e164` starts with one of the account's allowed prefixes (an empty list allows
/// nothing).
pub fn allowed(e164: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| e164.starts_with(p.as_str()))
}

/// What an account may dial: [`permit`]'s three lists.
#[derive(Debug, Clone, Copy)]
pub struct Permissions<'a> {
    /// ISO 3166-1 alpha-2 codes.
    pub allowed_countries: &'a [String],
    pub blocked_number_types: &'a [NumberType],
    /// E.164 prefixes; `["+"]` allows every prefix.
    pub allowed_prefixes: &'a [String],
}

impl<'a> From<&'a Account> for Permissions<'a> {
    fn from(a: &'a Account) -> Permissions<'a> {
        Permissions {
            allowed_countries: &a.allowed_countries,
            blocked_number_types: &a.blocked_number_types,
            allowed_prefixes: &a.allowed_prefixes,
        }
    }
}

/// Why an account may not dial a number. [`Refusal::code`] is the API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a number in use.
    #[error("{number} is not a valid number: {reason}")]
    Invalid { number: String, reason: Invalid },
    /// A number of a country the account may not call.
    #[error("{number} is a number in {region}, which is not in the account's allowed_countries ({allowed})")]
    Country {
        number: String,
        region: String,
        allowed: String,
    },
    /// A number of an international network, of no country (`+800`, `+882`).
    #[error("{number} belongs to an international network, not to a country; the account's allowed_countries cannot include it")]
    NoCountry { number: String },
    /// A number of a blocked type.
    #[error("{number} is a {number_type} number in {region}, and the account blocks {number_type} numbers")]
    NumberType {
        number: String,
        region: String,
        number_type: NumberType,
    },
    /// Outside every allowed prefix.
    #[error("{number} is outside the account's allowed_prefixes")]
    Prefix { number: String },
}

impl Refusal {
    /// `invalid_destination` for an invalid number, `destination_not_allowed` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid { .. } => "invalid_destination",
            _ => "destination_not_allowed",
        }
    }
}

/// The toll-fraud guard: may an account with `permissions` dial the classified number?
pub fn permit(number: &Classified, permissions: Permissions<'_>) -> Result<(), Refusal> {
    let e164 = || number.e164.clone();
    if let Err(reason) = &number.validity {
        return Err(Refusal::Invalid {
            number: e164(),
            reason: reason.clone(),
        });
    }
    let Some(region) = &number.region else {
        return Err(Refusal::NoCountry { number: e164() });
    };
    if !permissions
        .allowed_countries
        .iter()
        .any(|c| c.eq_ignore_ascii_case(region))
    {
        return Err(Refusal::Country {
            number: e164(),
            region: region.clone(),
            allowed: if permissions.allowed_countries.is_empty() {
                "none".to_owned()
            } else {
                permissions.allowed_countries.join(", ")
            },
        });
    }
    if permissions
        .blocked_number_types
        .contains(&number.number_type)
    {
        return Err(Refusal::NumberType {
            number: e164(),
            region: region.clone(),
            number_type: number.number_type,
        });
    }
    if !allowed(&number.e164, permissions.allowed_prefixes) {
        return Err(Refusal::Prefix { number: e164() });
    }
    Ok(())
}

/// [`numbering::classify`] then [`permit`].
pub fn check(e164: &str, permissions: Permissions<'_>) -> (Classified, Result<(), Refusal>) {
    let classified = numbering::classify(e164);
    let verdict = permit(&classified, permissions);
    (classified, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Dialled {
        Dialled::E164(s.to_owned())
    }

    #[test]
    fn e164_with_separators() {
        assert_eq!(normalize("+1 (415) 555-1234", "US"), Ok(e("+14155551234")));
        assert_eq!(normalize("+44.20.7183.8750", "US"), Ok(e("+442071838750")));
        assert_eq!(
            normalize("+1415", "US"),
            Err(DialError::InvalidNumber("+1415".into()))
        );
        assert_eq!(
            normalize("+0123456789", "US"),
            Err(DialError::InvalidNumber("+0123456789".into()))
        );
    }

    #[test]
    fn international_prefixes() {
        assert_eq!(
            normalize("011 44 20 7183 8750", "US"),
            Ok(e("+442071838750"))
        );
        assert_eq!(normalize("0044 20 7183 8750", "GB"), Ok(e("+442071838750")));
        assert_eq!(
            normalize("0011 1 415 555 1234", "AU"),
            Ok(e("+14155551234"))
        );
        assert_eq!(normalize("0033 1 23 45 67 89", "DE"), Ok(e("+33123456789")));
    }

    #[test]
    fn national_formats() {
        assert_eq!(normalize("(415) 555-1234", "US"), Ok(e("+14155551234")));
        assert_eq!(normalize("1-415-555-1234", "us"), Ok(e("+14155551234")));
        assert_eq!(normalize("613 555 0100", "CA"), Ok(e("+16135550100")));
        assert_eq!(normalize("020 7183 8750", "GB"), Ok(e("+442071838750")));
        assert_eq!(normalize("030 1234567", "DE"), Ok(e("+49301234567")));
        assert_eq!(normalize("01 23 45 67 89", "FR"), Ok(e("+33123456789")));
        assert_eq!(normalize("02 9374 4000", "AU"), Ok(e("+61293744000")));
        assert_eq!(normalize("011 2345 6789", "IN"), Ok(e("+911123456789")));
        // A region from the country-code table without a special rule.
        assert_eq!(normalize("06 12345678", "NL"), Ok(e("+31612345678")));
    }

    #[test]
    fn bad_national_numbers() {
        let invalid = |dial: &str, region: &str| match normalize(dial, region) {
            Ok(Dialled::E164(n)) => numbering::classify(&n).validity.err(),
            other => panic!("{dial}: {other:?}"),
        };
        // NANP area codes and exchanges cannot start with 0 or 1.
        assert!(invalid("115 555 1234", "US").is_some());
        assert_eq!(
            invalid("415 155 1234", "US"),
            Some(Invalid::NotInUse {
                place: "any country of +1".into()
            })
        );
        // Seven digits: a local number without its area code.
        assert_eq!(
            invalid("555 1234", "US"),
            Some(Invalid::TooShort { place: "US".into() })
        );
        // The trunk prefix may be left out, as libphonenumber reads national numbers.
        assert_eq!(normalize("20 7183 8750", "GB"), Ok(e("+442071838750")));
        assert_eq!(
            normalize("020 7183 8750", "ZZ"),
            Err(DialError::UnknownRegion("ZZ".into()))
        );
    }

    #[test]
    fn extensions() {
        assert_eq!(
            normalize("1001", "US"),
            Ok(Dialled::Extension("1001".into()))
        );
        assert_eq!(normalize("42", "GB"), Ok(Dialled::Extension("42".into())));
        assert_eq!(
            normalize("123456", "US"),
            Ok(Dialled::Extension("123456".into()))
        );
        // A single digit is neither an extension nor a number.
        assert!(normalize("7", "US").is_err());
    }

    #[test]
    fn emergency_numbers_by_region() {
        for (dial, region) in [
            ("911", "US"),
            ("911", "CA"),
            ("112", "US"),
            ("112", "DE"),
            ("112", "FR"),
            ("999", "GB"),
            ("000", "AU"),
            ("100", "IN"),
            ("108", "IN"),
            ("15", "FR"),
            ("110", "DE"),
        ] {
            assert_eq!(
                normalize(dial, region),
                Ok(Dialled::Emergency(dial.into())),
                "{dial} in {region}"
            );
        }
        // 999 is only an emergency number where it is one; in the US it is an extension.
        assert_eq!(normalize("999", "US"), Ok(Dialled::Extension("999".into())));
        // An emergency number in E.164 form is a number like any other.
        assert_eq!(
            normalize("+1911", "US"),
            Err(DialError::InvalidNumber("+1911".into()))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(normalize("", "US"), Err(DialError::Empty));
        assert_eq!(normalize(" - ", "US"), Err(DialError::Empty));
        assert_eq!(normalize("+", "US"), Err(DialError::Empty));
        assert_eq!(
            normalize("415x555", "US"),
            Err(DialError::BadCharacter('x'))
        );
        assert_eq!(normalize("1+415", "US"), Err(DialError::BadCharacter('+')));
        assert_eq!(
            normalize("sip:a@b", "US"),
            Err(DialError::BadCharacter('s'))
        );
    }

    #[test]
    fn prefix_guard() {
        let us = vec!["+1".to_owned()];
        assert!(allowed("+14155551234", &us));
        assert!(!allowed("+442071838750", &us));
        assert!(!allowed("+14155551234", &[]));
        let all = vec!["+".to_owned()];
        assert!(allowed("+442071838750", &all));
        let two = vec!["+44".to_owned(), "+33".to_owned()];
        assert!(allowed("+33123456789", &two));
    }
}
