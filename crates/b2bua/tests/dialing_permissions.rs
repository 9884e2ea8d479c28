//! Dial strings from many countries through the dial plan, the numbering metadata and the
//! toll-fraud guard, each with its expected verdict.
//!
//! [`TABLE`] holds one row per dial string: the account region it is dialled from, the E.164
//! form it must resolve to (`None`: not a number at all), and what libphonenumber's metadata
//! says of it (region, type, valid), then whether [`wide_policy`] lets it through. The
//! policy allows twelve countries, blocks the default four types and allows every prefix, so
//! a row is refused for exactly one of: invalid, country, type.

use b2bua::dialplan::{self, normalize, Dialled, Permissions, Refusal};
use b2bua::numbering::classify;
use store::NumberType::{self, *};

struct Row {
    dial: &'static str,
    from: &'static str,
    e164: Option<&'static str>,
    region: Option<&'static str>,
    kind: NumberType,
    valid: bool,
    allowed: bool,
}

const fn row(
    dial: &'static str,
    from: &'static str,
    e164: Option<&'static str>,
    region: Option<&'static str>,
    kind: NumberType,
    valid: bool,
    allowed: bool,
) -> Row {
    Row {
        dial,
        from,
        e164,
        region,
        kind,
        valid,
        allowed,
    }
}

const ALLOWED: &[&str] = &[
    "US", "CA", "GB", "DE", "FR", "AU", "IT", "ES", "NL", "JP", "IN", "BR",
];

fn wide_policy() -> (Vec<String>, Vec<NumberType>, Vec<String>) {
    (
        ALLOWED.iter().map(|c| c.to_string()).collect(),
        NumberType::DEFAULT_BLOCKED.to_vec(),
        vec!["+".to_owned()],
    )
}

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // --- US: E.164, national formats, types, lengths.
    row("+1 415 555 1234", "US", Some("+14155551234"), Some("US"), FixedLineOrMobile, true, true),
    row("(415) 555-1234", "US", Some("+14155551234"), Some("US"), FixedLineOrMobile, true, true),
    row("1-415-555-1234", "US", Some("+14155551234"), Some("US"), FixedLineOrMobile, true, true),
    row("+1 212 555 0123", "US", Some("+12125550123"), Some("US"), FixedLineOrMobile, true, true),
    row("+1 800 555 0199", "US", Some("+18005550199"), Some("US"), TollFree, true, true),
    row("+1 888 555 0100", "US", Some("+18885550100"), Some("US"), TollFree, true, true),
    row("+1 900 555 1234", "US", Some("+19005551234"), Some("US"), PremiumRate, true, false),
    row("+1 500 555 1234", "US", Some("+15005551234"), Some("US"), PersonalNumber, true, false),
    row("+1 555 555 1234", "US", Some("+15555551234"), None, Unknown, false, false),
    row("+1 555 0100", "US", Some("+15550100"), None, Unknown, false, false),
    row("+1 415 555 010", "US", Some("+1415555010"), None, Unknown, false, false),
    row("+1 415 555 12345", "US", Some("+141555512345"), None, Unknown, false, false),
    row("415 155 1234", "US", Some("+14151551234"), None, Unknown, false, false),
    row("555 1234", "US", Some("+15551234"), None, Unknown, false, false),
    row("+1 415", "US", None, None, Unknown, false, false),
    // --- Canada and the rest of the NANP: same +1, other countries.
    row("+1 613 555 0100", "CA", Some("+16135550100"), Some("CA"), FixedLineOrMobile, true, true),
    row("613 555 0100", "CA", Some("+16135550100"), Some("CA"), FixedLineOrMobile, true, true),
    row("+1 604 555 1234", "US", Some("+16045551234"), Some("CA"), FixedLineOrMobile, true, true),
    row("+1 876 555 1234", "US", Some("+18765551234"), Some("JM"), Mobile, true, false),
    row("876 927 1234", "US", Some("+18769271234"), Some("JM"), FixedLine, true, false),
    row("+1 809 555 1234", "US", Some("+18095551234"), Some("DO"), FixedLineOrMobile, true, false),
    row("1 809 221 1234", "US", Some("+18092211234"), Some("DO"), FixedLineOrMobile, true, false),
    row("+1 684 258 1234", "US", Some("+16842581234"), Some("AS"), Mobile, true, false),
    row("+1 684 622 1234", "US", Some("+16846221234"), Some("AS"), FixedLine, true, false),
    row("+1 684 555 1234", "US", Some("+16845551234"), Some("AS"), Unknown, false, false),
    row("+1 787 555 1234", "US", Some("+17875551234"), Some("PR"), FixedLineOrMobile, true, false),
    row("+1 268 464 1234", "US", Some("+12684641234"), Some("AG"), Mobile, true, false),
    row("+1 242 555 1234", "US", Some("+12425551234"), Some("BS"), Unknown, false, false),
    // --- United Kingdom.
    row("+44 20 7183 8750", "US", Some("+442071838750"), Some("GB"), FixedLine, true, true),
    row("011 44 20 7183 8750", "US", Some("+442071838750"), Some("GB"), FixedLine, true, true),
    row("020 7183 8750", "GB", Some("+442071838750"), Some("GB"), FixedLine, true, true),
    row("0044 20 7183 8750", "GB", Some("+442071838750"), Some("GB"), FixedLine, true, true),
    row("07400 123456", "GB", Some("+447400123456"), Some("GB"), Mobile, true, true),
    row("0909 876 5432", "GB", Some("+449098765432"), Some("GB"), PremiumRate, true, false),
    row("+44 871 234 5678", "GB", Some("+448712345678"), Some("GB"), PremiumRate, true, false),
    row("+44 800 123 4567", "GB", Some("+448001234567"), Some("GB"), TollFree, true, true),
    row("+44 70 1234 5678", "GB", Some("+447012345678"), Some("GB"), PersonalNumber, true, false),
    row("+44 56 1234 5678", "GB", Some("+445612345678"), Some("GB"), Voip, true, true),
    row("+44 55 1234 5678", "GB", Some("+445512345678"), Some("GB"), Uan, true, false),
    row("+44 20 7183 87501", "GB", Some("+4420718387501"), None, Unknown, false, false),
    // --- Germany.
    row("030 1234567", "DE", Some("+49301234567"), Some("DE"), FixedLine, true, true),
    row("+49 1512 3456789", "DE", Some("+4915123456789"), Some("DE"), Mobile, true, true),
    row("0900 1 234567", "DE", Some("+499001234567"), Some("DE"), PremiumRate, true, false),
    row("+49 900 12345678", "DE", Some("+4990012345678"), Some("DE"), Unknown, false, false),
    row("+49 180 2123456", "DE", Some("+491802123456"), Some("DE"), SharedCost, true, false),
    row("+49 700 12345678", "DE", Some("+4970012345678"), Some("DE"), PersonalNumber, true, false),
    row("+49 800 1234567", "DE", Some("+498001234567"), Some("DE"), TollFree, true, true),
    row("+49 30 12", "DE", None, None, Unknown, false, false),
    // --- France.
    row("01 23 45 67 89", "FR", Some("+33123456789"), Some("FR"), FixedLine, true, true),
    row("00 33 1 23 45 67 89", "DE", Some("+33123456789"), Some("FR"), FixedLine, true, true),
    row("06 12 34 56 78", "FR", Some("+33612345678"), Some("FR"), Mobile, true, true),
    row("+33 8 91 12 34 56", "FR", Some("+33891123456"), Some("FR"), PremiumRate, true, false),
    row("+33 8 10 12 34 56", "FR", Some("+33810123456"), Some("FR"), SharedCost, true, false),
    row("+33 1 23 45 67 8", "FR", Some("+3312345678"), Some("FR"), Unknown, false, false),
    // --- Australia.
    row("02 9374 4000", "AU", Some("+61293744000"), Some("AU"), FixedLine, true, true),
    row("0412 345 678", "AU", Some("+61412345678"), Some("AU"), Mobile, true, true),
    row("+61 1900 123 456", "AU", Some("+611900123456"), Some("AU"), PremiumRate, true, false),
    row("+61 1300 123 456", "AU", Some("+611300123456"), Some("AU"), SharedCost, true, false),
    row("0011 1 415 555 1234", "AU", Some("+14155551234"), Some("US"), FixedLineOrMobile, true, true),
    // --- Italy (the leading zero stays in the national number).
    row("02 3661 8300", "IT", Some("+390236618300"), Some("IT"), FixedLine, true, true),
    row("+39 312 345 6789", "IT", Some("+393123456789"), Some("IT"), Mobile, true, true),
    row("+39 899 123456", "IT", Some("+39899123456"), Some("IT"), PremiumRate, true, false),
    // --- Spain, the Netherlands.
    row("+34 91 123 45 67", "ES", Some("+34911234567"), Some("ES"), FixedLine, true, true),
    row("+34 803 123 456", "ES", Some("+34803123456"), Some("ES"), PremiumRate, true, false),
    row("06 12345678", "NL", Some("+31612345678"), Some("NL"), Mobile, true, true),
    row("+31 900 123 4567", "NL", Some("+319001234567"), Some("NL"), PremiumRate, true, false),
    // --- Japan, India, Brazil.
    row("03 1234 5678", "JP", Some("+81312345678"), Some("JP"), FixedLine, true, true),
    row("010 1 415 555 1234", "JP", Some("+14155551234"), Some("US"), FixedLineOrMobile, true, true),
    row("+81 90 1234 5678", "JP", Some("+819012345678"), Some("JP"), Mobile, true, true),
    row("011 2345 6789", "IN", Some("+911123456789"), Some("IN"), FixedLine, true, true),
    row("+91 98765 43210", "IN", Some("+919876543210"), Some("IN"), Mobile, true, true),
    row("+55 11 2345 6789", "BR", Some("+551123456789"), Some("BR"), FixedLine, true, true),
    row("+55 11 91234 5678", "BR", Some("+5511912345678"), Some("BR"), Mobile, true, true),
    // --- Countries outside the policy.
    row("+52 55 1234 5678", "US", Some("+525512345678"), Some("MX"), FixedLineOrMobile, true, false),
    row("8 495 123 45 67", "RU", Some("+74951234567"), Some("RU"), FixedLine, true, false),
    row("+7 900 123 45 67", "US", Some("+79001234567"), Some("RU"), Mobile, true, false),
    row("+353 1 234 5678", "GB", Some("+35312345678"), Some("IE"), FixedLine, true, false),
    row("+41 44 668 18 00", "DE", Some("+41446681800"), Some("CH"), FixedLine, true, false),
    row("+41 900 123 456", "DE", Some("+41900123456"), Some("CH"), PremiumRate, true, false),
    row("+64 9 323 4567", "AU", Some("+6493234567"), Some("NZ"), FixedLine, true, false),
    // --- International networks and codes that do not exist.
    row("+800 1234 5678", "US", Some("+80012345678"), None, TollFree, true, false),
    row("+882 1234 5678", "US", Some("+88212345678"), None, Unknown, false, false),
    row("+999 1234 5678", "US", Some("+99912345678"), None, Unknown, false, false),
];

#[test]
fn every_row_gets_its_verdict() {
    let (countries, blocked, prefixes) = wide_policy();
    let policy = Permissions {
        allowed_countries: &countries,
        blocked_number_types: &blocked,
        allowed_prefixes: &prefixes,
    };
    let mut regions = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for r in TABLE {
        let resolved = normalize(r.dial, r.from);
        let e164 = match &resolved {
            Ok(Dialled::E164(n)) => Some(n.as_str()),
            Ok(other) => {
                failures.push(format!("{} ({}): resolved to {other:?}", r.dial, r.from));
                continue;
            }
            Err(_) => None,
        };
        if e164 != r.e164 {
            failures.push(format!(
                "{} ({}): E.164 {e164:?}, expected {:?}",
                r.dial, r.from, r.e164
            ));
            continue;
        }
        let Some(e164) = e164 else {
            // Not a number at all: refused before the metadata is asked.
            assert!(!r.valid && !r.allowed, "{}: fix the row", r.dial);
            continue;
        };
        let c = classify(e164);
        let verdict = dialplan::permit(&c, policy);
        let got = (
            c.region.as_deref(),
            c.number_type,
            c.is_valid(),
            verdict.is_ok(),
        );
        if got != (r.region, r.kind, r.valid, r.allowed) {
            failures.push(format!(
                "{} ({}) = {e164}: got {got:?} ({verdict:?}), expected {:?}",
                r.dial,
                r.from,
                (r.region, r.kind, r.valid, r.allowed)
            ));
        }
        // The refusal says why, with the right API code.
        if let Err(refusal) = &verdict {
            let (code, message) = (refusal.code(), refusal.to_string());
            if !r.valid {
                assert_eq!(code, "invalid_destination", "{message}");
            } else {
                assert_eq!(code, "destination_not_allowed", "{message}");
                let named = match r.region {
                    Some(region) if !ALLOWED.contains(&region) => message.contains(region),
                    Some(_) => message.contains(r.kind.as_str()),
                    None => message.contains("international network"),
                };
                assert!(named, "{}: {message}", r.dial);
            }
        }
        if let Some(region) = c.region {
            regions.insert(region);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(TABLE.len() >= 60, "{} rows", TABLE.len());
    assert!(regions.len() >= 12, "{regions:?}");
}

/// The NANP example of docs/operations.md: `allowed_prefixes = ["+1"]` alone lets Jamaica,
/// the Dominican Republic and American Samoa through; `allowed_countries = ["US", "CA"]`
/// does not, and the default blocked types stop US premium-rate numbers.
#[test]
fn nanp_prefix_list_versus_countries() {
    let prefix_only_countries: Vec<String> = ["US", "CA", "JM", "DO", "AS", "PR", "AG"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let us_ca = vec!["US".to_owned(), "CA".to_owned()];
    let plus1 = vec!["+1".to_owned()];
    let none: Vec<NumberType> = Vec::new();
    let defaults = NumberType::DEFAULT_BLOCKED.to_vec();
    // What a "+1" prefix list alone amounts to: every country of +1, no type blocked.
    let prefix_only = Permissions {
        allowed_countries: &prefix_only_countries,
        blocked_number_types: &none,
        allowed_prefixes: &plus1,
    };
    let by_country = Permissions {
        allowed_countries: &us_ca,
        blocked_number_types: &defaults,
        allowed_prefixes: &plus1,
    };
    for n in [
        "+18765551234",
        "+18095551234",
        "+16842581234",
        "+19005551234",
    ] {
        assert_eq!(dialplan::check(n, prefix_only).1, Ok(()), "{n}");
    }
    let refusal = |n: &str| dialplan::check(n, by_country).1.unwrap_err();
    assert_eq!(
        refusal("+18765551234").to_string(),
        "+18765551234 is a number in JM, which is not in the account's allowed_countries (US, CA)"
    );
    assert!(matches!(refusal("+18095551234"), Refusal::Country { region, .. } if region == "DO"));
    assert!(matches!(refusal("+16842581234"), Refusal::Country { region, .. } if region == "AS"));
    assert_eq!(
        refusal("+19005551234").to_string(),
        "+19005551234 is a premium_rate number in US, and the account blocks premium_rate numbers"
    );
    assert_eq!(
        refusal("+15550100").to_string(),
        "+15550100 is not a valid number: too short for US"
    );
    assert_eq!(
        refusal("+1415555010").to_string(),
        "+1415555010 is not a valid number: too short for US"
    );
    assert_eq!(dialplan::check("+14155551234", by_country).1, Ok(()));
    assert_eq!(dialplan::check("+16135550100", by_country).1, Ok(()));
    // allowed_prefixes still filters on top of the countries.
    let gb = vec!["GB".to_owned()];
    let both = Permissions {
        allowed_countries: &gb,
        blocked_number_types: &defaults,
        allowed_prefixes: &plus1,
    };
    assert!(matches!(
        dialplan::check("+442071838750", both).1,
        Err(Refusal::Prefix { .. })
    ));
}
