//! Telephone numbers classified with libphonenumber's metadata: validity, country and type.
//!
//! The metadata comes with the `phonenumber` crate (libphonenumber's `PhoneNumberMetadata.xml`,
//! release 9.0.33, compiled into the binary); this is the only module that names that crate.
//!
//! ```text
//!   "+18765551234" ─ country calling code (1..=3 digits) ─▶ 1 ─▶ regions sharing it:
//!                    US AG AI AS BB BM BS CA DM DO GD GU JM KN KY LC MP MS PR SX TC TT VC VG VI
//!                 ─ region of the national number: the first whose leading digits match
//!                   (JM: 658|876), or, without leading digits, whose ranges hold it ─▶ JM
//!                 ─ type: the first range that holds the whole number, in libphonenumber's
//!                   order (premium rate, toll free, shared cost, VoIP, personal, pager, UAN,
//!                   voicemail, then fixed line / mobile) ─▶ mobile
//! ```
//!
//! The region and type lookups follow libphonenumber's `getRegionCodeForNumber` and
//! `getNumberType`: a pattern must match the whole national significant number (with any
//! leading zero, as in Italy), and its possible lengths must allow it. The patterns are
//! compiled once per region, on first use, anchored at both ends.
//!
//! Invalid numbers get a reason that a person can act on: too short, too long, a length no
//! number of the country has, or a length that fits but no range in use.
//!
//! Not here: extensions, emergency numbers and what an account may dial
//! ([`crate::dialplan`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use phonenumber::metadata::DATABASE;
use phonenumber::Metadata;
use regex::{Regex, RegexBuilder};
use store::NumberType;

/// What the metadata says about one number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The number in E.164 form, as given.
    pub e164: String,
    /// ISO 3166-1 alpha-2 region of the number; `None` for the non-geographic codes
    /// (`+800`, `+808`, `+870`, `+88x`, `+979`) and for numbers of no region.
    pub region: Option<String>,
    /// The type; [`NumberType::Unknown`] when the number is invalid.
    pub number_type: NumberType,
    /// `Err` with the reason when the number is not a valid number.
    pub validity: Result<(), Invalid>,
}

impl Classified {
    /// True when the metadata holds the number in one of its ranges.
    pub fn is_valid(&self) -> bool {
        self.validity.is_ok()
    }
}

/// Why a number in E.164 form is not a valid number. `place` is a region (`US`) or, for the
/// non-geographic codes and numbers of no region, the country calling code (`+800`, `+1`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not `+` and digits.
    #[error("not a number in E.164 form (\"+\" and digits)")]
    NotDigits,
    /// No country or network has this calling code.
    #[error("+{0} is not a country calling code")]
    UnknownCountryCode(String),
    /// The national number is shorter than any number of the place.
    #[error("too short for {place}")]
    TooShort { place: String },
    /// The national number is longer than any number of the place.
    #[error("too long for {place}")]
    TooLong { place: String },
    /// Between the shortest and the longest, but no number of the place has this length.
    #[error("no number in {place} has {digits} digits after the country code")]
    Length { place: String, digits: usize },
    /// The length fits, but the number is in no range in use.
    #[error("not in a range of numbers in use in {place}")]
    NotInUse { place: String },
}

/// The ranges of one region (or non-geographic code), compiled for whole-number matching.
struct Ranges {
    /// `^(?:leading digits)`: picks this region among those sharing a calling code.
    leading_digits: Option<Regex>,
    /// `^(?:general pattern)$`.
    general: Option<Regex>,
    /// The type patterns in libphonenumber's order, each with its possible lengths.
    types: Vec<(NumberType, Regex, Vec<u16>)>,
    /// Fixed line and mobile share one pattern (no way to tell them apart, as in the NANP).
    fixed_same_as_mobile: bool,
    /// Every possible length of a national number of the region, sorted.
    lengths: Vec<u16>,
    /// `^(?:international prefix)`, as dialled from this region.
    international_prefix: Option<Regex>,
}

fn anchored(pattern: &str, whole: bool) -> Option<Regex> {
    let source = if whole {
        format!("^(?:{pattern})$")
    } else {
        format!("^(?:{pattern})")
    };
    // The metadata writes its patterns over several lines.
    RegexBuilder::new(&source)
        .ignore_whitespace(true)
        .build()
        .ok()
}

impl Ranges {
    fn compile(meta: &Metadata) -> Ranges {
        let d = meta.descriptors();
        let listed = [
            (NumberType::PremiumRate, d.premium_rate()),
            (NumberType::TollFree, d.toll_free()),
            (NumberType::SharedCost, d.shared_cost()),
            (NumberType::Voip, d.voip()),
            (NumberType::PersonalNumber, d.personal_number()),
            (NumberType::Pager, d.pager()),
            (NumberType::Uan, d.uan()),
            (NumberType::Voicemail, d.voicemail()),
            (NumberType::FixedLine, d.fixed_line()),
            (NumberType::Mobile, d.mobile()),
        ];
        let mut types = Vec::new();
        let mut lengths: Vec<u16> = d.general().possible_length().to_vec();
        for (t, desc) in listed {
            let Some(desc) = desc else { continue };
            if let Some(re) = anchored(desc.national_number().as_str(), true) {
                lengths.extend_from_slice(desc.possible_length());
                types.push((t, re, desc.possible_length().to_vec()));
            }
        }
        lengths.sort_unstable();
        lengths.dedup();
        let fixed_same_as_mobile = match (d.fixed_line(), d.mobile()) {
            (Some(f), Some(m)) => f.national_number().as_str() == m.national_number().as_str(),
            _ => false,
        };
        Ranges {
            leading_digits: meta
                .leading_digits()
                .and_then(|r| anchored(r.as_str(), false)),
            general: anchored(d.general().national_number().as_str(), true),
            types,
            fixed_same_as_mobile,
            lengths,
            international_prefix: meta
                .international_prefix()
                .and_then(|r| anchored(r.as_str(), false)),
        }
    }

    fn matches(&self, t: NumberType, national: &str) -> bool {
        self.types.iter().any(|(kind, re, lengths)| {
            *kind == t
                && (lengths.is_empty() || lengths.contains(&(national.len() as u16)))
                && re.is_match(national)
        })
    }

    /// libphonenumber's `getNumberTypeHelper`.
    fn number_type(&self, national: &str) -> NumberType {
        if let Some(general) = &self.general {
            if !general.is_match(national) {
                return NumberType::Unknown;
            }
        }
        for t in [
            NumberType::PremiumRate,
            NumberType::TollFree,
            NumberType::SharedCost,
            NumberType::Voip,
            NumberType::PersonalNumber,
            NumberType::Pager,
            NumberType::Uan,
            NumberType::Voicemail,
        ] {
            if self.matches(t, national) {
                return t;
            }
        }
        if self.matches(NumberType::FixedLine, national) {
            if self.fixed_same_as_mobile || self.matches(NumberType::Mobile, national) {
                return NumberType::FixedLineOrMobile;
            }
            return NumberType::FixedLine;
        }
        if !self.fixed_same_as_mobile && self.matches(NumberType::Mobile, national) {
            return NumberType::Mobile;
        }
        NumberType::Unknown
    }

    /// Why a national number of `place` of no known type is invalid.
    fn invalid(&self, national: &str, place: String) -> Invalid {
        let len = national.len() as u16;
        match (self.lengths.first(), self.lengths.last()) {
            (Some(&min), _) if len < min => Invalid::TooShort { place },
            (_, Some(&max)) if len > max => Invalid::TooLong { place },
            _ if !self.lengths.is_empty() && !self.lengths.contains(&len) => Invalid::Length {
                place,
                digits: national.len(),
            },
            _ => Invalid::NotInUse { place },
        }
    }
}

/// Compiled ranges by metadata key: the calling code and the region (`001` for the
/// non-geographic codes, which share that id).
fn ranges(meta: &'static Metadata) -> Arc<Ranges> {
    type Cache = RwLock<HashMap<(u16, &'static str), Arc<Ranges>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (meta.country_code(), meta.id());
    if let Some(r) = cache.read().ok().and_then(|m| m.get(&key).cloned()) {
        return r;
    }
    let compiled = Arc::new(Ranges::compile(meta));
    if let Ok(mut m) = cache.write() {
        return m.entry(key).or_insert(compiled).clone();
    }
    compiled
}

/// Splits `+<digits>` into the country calling code and the national significant number.
/// Calling codes are prefix-free (ITU-T E.164), so the first 1..=3 digits that name one are it.
fn split_country_code(digits: &str) -> Option<(u16, &str)> {
    (1..=3.min(digits.len())).find_map(|n| {
        let code: u16 = digits[..n].parse().ok()?;
        DATABASE.region(&code).map(|_| (code, &digits[n..]))
    })
}

/// Classifies a number in E.164 form (`+` and 7..=15 digits; anything else is invalid).
pub fn classify(e164: &str) -> Classified {
    let unknown = |validity: Invalid| Classified {
        e164: e164.to_owned(),
        region: None,
        number_type: NumberType::Unknown,
        validity: Err(validity),
    };
    let digits = e164.strip_prefix('+').unwrap_or(e164);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return unknown(Invalid::NotDigits);
    }
    let Some((code, national)) = split_country_code(digits) else {
        let shown = digits.get(..3.min(digits.len())).unwrap_or(digits);
        return unknown(Invalid::UnknownCountryCode(shown.to_owned()));
    };
    let Some(metas) = DATABASE.by_code(&code) else {
        return unknown(Invalid::UnknownCountryCode(code.to_string()));
    };
    let Some(&main) = metas
        .iter()
        .find(|m| m.is_main_country_for_code())
        .or(metas.first())
    else {
        return unknown(Invalid::UnknownCountryCode(code.to_string()));
    };
    let place_of = |m: &Metadata| {
        if m.id() == "001" {
            None
        } else {
            Some(m.id().to_owned())
        }
    };
    // getRegionCodeForNumberFromRegionList.
    let mut found = None;
    for &meta in &metas {
        let r = ranges(meta);
        match &r.leading_digits {
            Some(ld) => {
                if ld.is_match(national) {
                    found = Some((meta, r));
                    break;
                }
            }
            None => {
                if r.number_type(national) != NumberType::Unknown {
                    found = Some((meta, r));
                    break;
                }
            }
        }
    }
    match found {
        Some((meta, r)) => {
            let number_type = r.number_type(national);
            let region = place_of(meta);
            let validity = if number_type == NumberType::Unknown {
                let place = region.clone().unwrap_or_else(|| format!("+{code}"));
                Err(r.invalid(national, place))
            } else {
                Ok(())
            };
            Classified {
                e164: e164.to_owned(),
                region,
                number_type,
                validity,
            }
        }
        None => {
            // No region holds it: judge the length by the main region of the code, and say
            // "not in use" for the code as a whole when it is shared (+1, +7, +44, ...).
            let r = ranges(main);
            let place = if metas.len() == 1 {
                place_of(main).unwrap_or_else(|| format!("+{code}"))
            } else {
                main.id().to_owned()
            };
            let reason = match r.invalid(national, place) {
                Invalid::NotInUse { .. } if metas.len() > 1 => Invalid::NotInUse {
                    place: format!("any country of +{code}"),
                },
                other => other,
            };
            Classified {
                e164: e164.to_owned(),
                // As getRegionCodeForNumber: a code of one region names it, valid or not.
                region: if metas.len() == 1 {
                    place_of(main)
                } else {
                    None
                },
                number_type: NumberType::Unknown,
                validity: Err(reason),
            }
        }
    }
}

/// Loads the metadata and compiles the ranges of `regions` (and of the codes they share), so
/// that the first classification does not pay for it.
pub fn preload(regions: &[String]) {
    for region in regions {
        let Some(code) = country_code(region) else {
            continue;
        };
        for meta in DATABASE.by_code(&code).unwrap_or_default() {
            ranges(meta);
        }
    }
}

/// True when the metadata knows `region` (ISO 3166-1 alpha-2, upper case).
pub fn is_known_region(region: &str) -> bool {
    region != "001" && DATABASE.by_id(region).is_some()
}

/// The country calling code of a region, without `+`.
pub fn country_code(region: &str) -> Option<u16> {
    if region == "001" {
        return None;
    }
    DATABASE.by_id(region).map(|m| m.country_code())
}

/// `digits` without the region's international (IDD) prefix, when they start with it
/// (`011` in the NANP, `00` in most of Europe, `0011` in Australia, `010` in Japan).
pub fn strip_international_prefix<'a>(digits: &'a str, region: &str) -> Option<&'a str> {
    let meta = DATABASE.by_id(region).filter(|_| region != "001")?;
    let r = ranges(meta);
    let m = r.international_prefix.as_ref()?.find(digits)?;
    Some(&digits[m.end()..]).filter(|rest| !rest.is_empty())
}

/// A national dial string (digits only, as dialled in `region`, with or without the national
/// prefix) in E.164 form, by the region's national-prefix rules from the metadata (`0` in
/// most of Europe, `1` in the NANP, `8` in Russia, none in Italy). `None` when it cannot be
/// read as a number of the region.
pub fn national_to_e164(digits: &str, region: &str) -> Option<String> {
    let id: phonenumber::country::Id = region.parse().ok()?;
    let number = phonenumber::parse(Some(id), digits).ok()?;
    // Display of the national number keeps its leading zeros (Italy).
    Some(format!("+{}{}", number.code().value(), number.national()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e164: &str, region: Option<&str>, t: NumberType) {
        let c = classify(e164);
        assert_eq!(c.region.as_deref(), region, "{e164}: {c:?}");
        assert_eq!(c.number_type, t, "{e164}: {c:?}");
        assert_eq!(c.is_valid(), t != NumberType::Unknown, "{e164}: {c:?}");
    }

    #[test]
    fn regions_and_types() {
        check("+14155551234", Some("US"), NumberType::FixedLineOrMobile);
        check("+18765551234", Some("JM"), NumberType::Mobile);
        check("+19005551234", Some("US"), NumberType::PremiumRate);
        check("+390236618300", Some("IT"), NumberType::FixedLine);
        check("+80012345678", None, NumberType::TollFree);
    }

    #[test]
    fn reasons() {
        let reason = |n: &str| classify(n).validity.unwrap_err().to_string();
        assert_eq!(reason("+15550100"), "too short for US");
        assert_eq!(reason("+1415555010"), "too short for US");
        assert_eq!(reason("+141555512345"), "too long for US");
        assert_eq!(
            reason("+15555551234"),
            "not in a range of numbers in use in any country of +1"
        );
        assert_eq!(
            reason("+16845551234"),
            "not in a range of numbers in use in AS"
        );
        assert_eq!(reason("+99912345678"), "+999 is not a country calling code");
        assert_eq!(reason("+"), "not a number in E.164 form (\"+\" and digits)");
        assert_eq!(
            reason("+é123456"),
            "not a number in E.164 form (\"+\" and digits)"
        );
    }

    /// Any digits, in any region, come back with an answer and never a panic.
    #[test]
    fn arbitrary_digits_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1000 {
            let len = 7 + (next() % 12) as usize;
            let digits: String = (0..len)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            let c = classify(&format!("+{digits}"));
            assert_eq!(c.is_valid(), c.number_type != NumberType::Unknown);
            for region in ["US", "GB", "DE", "IT", "BR", "RU", "JP", "AU"] {
                if let Some(e164) = national_to_e164(&digits, region) {
                    let _ = classify(&e164);
                }
                let _ = strip_international_prefix(&digits, region);
            }
        }
    }

    #[test]
    fn international_and_national_forms() {
        assert_eq!(
            strip_international_prefix("011442071838750", "US"),
            Some("442071838750")
        );
        assert_eq!(
            strip_international_prefix("001114155551234", "AU"),
            Some("14155551234")
        );
        assert_eq!(
            strip_international_prefix("0101234567890", "JP"),
            Some("1234567890")
        );
        assert_eq!(strip_international_prefix("4155551234", "US"), None);
        assert_eq!(
            national_to_e164("0236618300", "IT").as_deref(),
            Some("+390236618300")
        );
        assert_eq!(
            national_to_e164("84951234567", "RU").as_deref(),
            Some("+74951234567")
        );
        assert_eq!(national_to_e164("0301234567", "ZZ"), None);
    }
}
