//! E.164 numbers as written in the config and the API: `+`, then 7 to 15 digits, the first
//! one not `0`.
//!
//! ITU-T E.164 §6 caps a number at 15 digits and no country code starts with 0. The lower
//! bound is the shortest international number in service (a 3-digit country code with 4-digit
//! subscriber numbers, e.g. Niue `+683 xxxx`); anything shorter, like `+1415`, is a prefix or a
//! typo, not a number.

/// Fewest digits in an E.164 number accepted here.
pub const MIN_DIGITS: usize = 7;
/// Most digits in an E.164 number (ITU-T E.164 §6).
pub const MAX_DIGITS: usize = 15;

/// True when `number` is `+` followed by 7..=15 ASCII digits, the first in `1..=9`.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (MIN_DIGITS..=MAX_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// True when `prefix` is a dial-prefix filter: `+` followed by 0..=15 digits (`"+"` matches
/// every E.164 number).
pub fn is_e164_prefix(prefix: &str) -> bool {
    let Some(digits) = prefix.strip_prefix('+') else {
        return false;
    };
    digits.len() <= MAX_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_numbers() {
        for n in [
            "+14155551234",
            "+442071838750",
            "+6834002",
            "+123456789012345",
        ] {
            assert!(is_e164(n), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_numbers() {
        for n in [
            "14155551234",
            "+",
            "+1",
            "+1415",
            "+683400",
            "+0123456789",
            "+1234567890123456",
            "+1 415 555 1234",
            "+1-415",
            "",
            "+１２３",
        ] {
            assert!(!is_e164(n), "{n}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(is_e164_prefix("+"));
        assert!(is_e164_prefix("+1"));
        assert!(is_e164_prefix("+4420"));
        assert!(!is_e164_prefix("1"));
        assert!(!is_e164_prefix("+0"));
        assert!(!is_e164_prefix("+1a"));
    }
}
