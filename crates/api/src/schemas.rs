//! The named value types of the API document: identifiers, numbers, names and the lists of
//! allowed values, each with the exact pattern, length or enumeration the server applies.
//! Request fields refer to them (`#[schema(value_type = UserId)]`), and the contract layer
//! ([`crate::contract`]) checks requests against the same schemas.
//!
//! Enumerations are built from the store's own lists (call statuses, number types,
//! transports) and from the numbering metadata (regions), so they cannot drift from what the
//! handlers parse.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// TypeID suffix: 26 Crockford base32 characters, the first one 0-7.
macro_rules! typeid {
    ($prefix:literal) => {
        concat!("^", $prefix, "_[0-7][0-9a-hjkmnp-tv-z]{25}$")
    };
}

/// A DNS label: letters, digits and hyphens, not at either end, 1 to 63 long.
macro_rules! label {
    () => {
        "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    };
}
macro_rules! domain {
    () => {
        concat!(label!(), "(\\.", label!(), ")*\\.?")
    };
}
/// IPv6 in full or compressed form (at most three groups on each side of `::`).
macro_rules! ipv6 {
    () => {
        "(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(([0-9A-Fa-f]{1,4}:){0,2}[0-9A-Fa-f]{1,4})?::(([0-9A-Fa-f]{1,4}:){0,2}[0-9A-Fa-f]{1,4})?)"
    };
}
/// A port, 1 to 65535, without leading zeros.
macro_rules! port {
    () => {
        "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
    };
}

/// TypeID of a user.
pub const USER_ID: &str = typeid!("user");
/// TypeID of a call.
pub const CALL_ID: &str = typeid!("call");
/// TypeID of an account.
pub const ACCOUNT_ID: &str = typeid!("acct");
/// E.164: `+`, then 7 to 15 digits, the first not 0 (`store::e164::is_e164`).
pub const E164: &str = r"^\+[1-9][0-9]{6,14}$";
/// `+` then up to 15 digits (`store::e164::is_e164_prefix`).
pub const E164_PREFIX: &str = r"^\+([1-9][0-9]{0,14})?$";
/// 1 to 15 digits (`store::provision::is_extension`).
pub const EXTENSION: &str = "^[0-9]{1,15}$";
/// RFC 3261 user characters (`store::provision::is_sip_username`).
pub const SIP_USERNAME: &str = r"^[A-Za-z0-9_.!~*'()&=+$,;?/-]{1,64}$";
/// `store::provision::is_trunk_name`.
pub const TRUNK_NAME: &str = "^[A-Za-z0-9._-]{1,64}$";
/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address
/// (`store::provision::is_trunk_address`).
pub const HOST_PORT: &str = concat!(
    "^(",
    domain!(),
    "(:",
    port!(),
    ")?|\\[",
    ipv6!(),
    "\\]:",
    port!(),
    "|",
    ipv6!(),
    ")$"
);
/// A domain name or an IP address.
pub const HOST: &str = concat!("^(", domain!(), "|", ipv6!(), ")$");
/// Digits and `+ * #`.
pub const DIAL_PREFIX: &str = "^[0-9+*#]{1,32}$";
/// Text with at least one character that is not white space: a visible ASCII character, or
/// one of the Basic Multilingual Plane that no regex dialect counts as white space. (`\S`
/// differs between dialects: ECMA-262 does not count U+0085 as space, Rust does.)
pub const NON_BLANK: &str = r"[!-~]|[\u00A1-\u167F\u1681-\u1FFF\u200B-\u2027\u202A-\u202E\u2030-\u205E\u2060-\u2FFF\u3001-\uD7FF\uE000-\uFEFE\uFF00-\uFFFD]";
/// Unix seconds, or RFC 3339 (`crate::time::parse_time_ms`).
pub const TIME: &str = concat!(
    "^([0-9]{1,15}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]",
    "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
);
/// `next_cursor` of a page of the call log (hex of `<ms>.<call id>`).
pub const CURSOR: &str = "^(3[0-9]){1,18}2e(2[0-9a-f]|[3-6][0-9a-f]|7[0-9a-e]){1,64}$";
/// `http://` or `https://` then visible ASCII (no spaces, no raw non-ASCII).
pub const URL: &str = "^https?://[!-~]+$";
/// Visible ASCII, no spaces.
pub const IDEMPOTENCY_KEY: &str = "^[!-~]{1,255}$";
/// An event id of the live stream.
pub const EVENT_ID: &str = "^[0-9]{1,20}$";

fn string(
    description: &str,
    pattern: Option<&str>,
    min: Option<usize>,
    max: Option<usize>,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(min)
        .max_length(max)
        .into()
}

fn one_of(description: &str, values: Vec<String>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

macro_rules! named {
    ($(#[$m:meta])* $name:ident => $body:expr) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $body
            }
        }
        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

named!(/// TypeID of a user (`user_…`).
    UserId => string("TypeID of a user: `user_` and 26 base32 characters", Some(USER_ID), None, None));
named!(/// TypeID of a call (`call_…`).
    CallId => string("TypeID of a call: `call_` and 26 base32 characters", Some(CALL_ID), None, None));
named!(/// An E.164 number.
    E164Number => string("E.164: `+`, then 7 to 15 digits, the first not 0", Some(E164), None, None));
named!(/// An E.164 prefix.
    E164Prefix => string("`+` then up to 15 digits; `+` alone allows every number", Some(E164_PREFIX), None, None));
named!(/// An extension.
    Extension => string("An internal extension: 1 to 15 digits", Some(EXTENSION), None, None));
named!(/// A device's SIP user name.
    SipUsername => string("A SIP user name: 1 to 64 of `A-Z a-z 0-9 - _ . ! ~ * ' ( ) & = + $ , ; ? /`", Some(SIP_USERNAME), None, None));
named!(/// A trunk's name.
    TrunkName => string("1 to 64 of `A-Z a-z 0-9 - _ .`", Some(TRUNK_NAME), None, None));
named!(/// A trunk's address.
    HostPort => string("`host`, `host:port`, `[IPv6]:port` or an IPv6 address; host is a domain name or IPv4 address", Some(HOST_PORT), None, Some(253)));
named!(/// A domain name or IP address.
    Host => string("A domain name or an IP address", Some(HOST), None, Some(253)));
named!(/// Digits dialled before the number on a trunk.
    DialPrefix => string("1 to 32 of digits, `+`, `*`, `#`", Some(DIAL_PREFIX), None, None));
named!(/// A name shown to people.
    Name => string("Any text with a visible character (not only white space)", Some(NON_BLANK), Some(1), Some(200)));
named!(/// A password (write-only).
    Password => string("Write-only; never shown", None, Some(1), Some(128)));
named!(/// A dial string.
    DialString => string("E.164 (`+15551234567`), a local number (read in the account's region), an extension (`1001`) or an emergency number (`911`)", Some(NON_BLANK), Some(1), Some(64)));
named!(/// A callback URL.
    CallbackUrl => string("`http://` or `https://` URL in ASCII (non-ASCII percent-encoded); addresses the server refuses to call are answered 422 `invalid_callback_url`", Some(URL), None, Some(2048)));
named!(/// A time filter.
    TimeFilter => string("Unix seconds, or RFC 3339 (`2024-05-01T12:00:00Z`)", Some(TIME), None, None));
named!(/// A page cursor.
    Cursor => string("`next_cursor` of the previous page", Some(CURSOR), None, None));
named!(/// An idempotency key.
    IdempotencyKey => string("1 to 255 visible ASCII characters; the same key with the same body within 24 h replays the first answer", Some(IDEMPOTENCY_KEY), None, None));
named!(/// An event id.
    EventId => string("Id of the last event received", Some(EVENT_ID), None, None));

named!(/// ISO 3166-1 alpha-2 codes of the countries with telephone numbers.
    Region => one_of("ISO 3166-1 alpha-2 code of a country with telephone numbers, in upper or lower case", regions().into_iter().flat_map(|r| [r.to_ascii_lowercase(), r]).collect()));
named!(/// Number types.
    NumberTypeName => one_of("A number type of libphonenumber's metadata", store::NumberType::ALL.iter().map(|t| t.as_str().to_owned()).collect()));
named!(/// Call statuses.
    CallStatusName => one_of("A call's status", store::CallStatus::ALL.iter().map(|s| s.as_str().to_owned()).collect()));
named!(/// Media encryption toward a trunk.
    TrunkSrtp => one_of("Media encryption toward the trunk: none, or SRTP keyed by SDES (needs transport tls)", [store::Srtp::None, store::Srtp::Sdes].iter().map(|s| s.as_str().to_owned()).collect()));
named!(/// Trunk transports.
    TrunkTransport => one_of("SIP transport toward the trunk", ["udp", "tcp", "tls"].iter().filter(|t| t.parse::<store::Transport>().is_ok()).map(|t| (*t).to_owned()).collect()));

/// The regions that `allowed_countries` and `?region=` accept: ISO 3166-1 alpha-2 codes of
/// countries in the numbering metadata.
pub fn regions() -> Vec<String> {
    let mut out = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            let code = String::from_utf8(vec![a, b]).unwrap_or_default();
            if store::provision::is_iso3166_alpha2(&code)
                && b2bua::numbering::is_known_region(&code)
            {
                out.push(code);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn re(p: &str) -> Regex {
        Regex::new(p).unwrap()
    }

    /// The patterns accept what the store accepts, and no more, on samples of each side.
    #[test]
    fn patterns_agree_with_the_store() {
        let e164 = re(E164);
        for n in [
            "+14155551234",
            "+6834002",
            "+123456789012345",
            "+1415",
            "+0123456",
            "14155551234",
            "+1234567890123456",
        ] {
            assert_eq!(e164.is_match(n), store::e164::is_e164(n), "{n}");
        }
        let prefix = re(E164_PREFIX);
        for p in [
            "+",
            "+1",
            "+44",
            "+0",
            "1",
            "+1234567890123456",
            "+123456789012345",
        ] {
            assert_eq!(prefix.is_match(p), store::e164::is_e164_prefix(p), "{p}");
        }
        let user = re(SIP_USERNAME);
        for u in [
            "alice-desk",
            "a.b_c!~*'()&=+$,;?/",
            "",
            "a b",
            "a@b",
            &"x".repeat(64),
            &"x".repeat(65),
        ] {
            assert_eq!(
                user.is_match(u),
                store::provision::is_sip_username(u),
                "{u}"
            );
        }
        let trunk = re(TRUNK_NAME);
        for t in ["carrier", "a.b-c_d", "", "a b", &"x".repeat(65)] {
            assert_eq!(trunk.is_match(t), store::provision::is_trunk_name(t), "{t}");
        }
        let ext = re(EXTENSION);
        for x in ["1001", "", "12a", "1234567890123456"] {
            assert_eq!(ext.is_match(x), store::provision::is_extension(x), "{x}");
        }
        // Every address the pattern takes, the store takes.
        let addr = re(HOST_PORT);
        for a in [
            "127.0.0.1:5080",
            "127.0.0.1",
            "[::1]:5060",
            "::1",
            "carrier.example",
            "sip.example.com:5061",
            "a-b.c.",
            "fe80::1:2",
            "1:2:3:4:5:6:7:8",
        ] {
            assert!(addr.is_match(a), "{a}");
            assert!(store::provision::is_trunk_address(a), "{a}");
        }
        for a in [
            "",
            "host:0",
            "host:65536",
            "-a.b",
            "a..b",
            "[::1]",
            "host:port",
        ] {
            assert!(!addr.is_match(a), "{a}");
        }
        let time = re(TIME);
        for t in [
            "1714564800",
            "2024-05-01T12:00:00Z",
            "2024-05-01 12:00:00.5+02:00",
            "2024-12-31t23:59:60z",
        ] {
            assert!(time.is_match(t), "{t}");
            assert!(crate::time::parse_time_ms(t).is_some(), "{t}");
        }
        for t in [
            "",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "yesterday",
        ] {
            assert!(!time.is_match(t), "{t}");
        }
        // Text that is only white space in any dialect is blank; the store agrees.
        let name = re(NON_BLANK);
        for (t, blank) in [
            ("Alice", false),
            ("李", false),
            (" \u{85}\u{a0}\u{2028}\u{3000}\t", true),
            ("", true),
        ] {
            assert_eq!(!name.is_match(t), blank, "{t:?}");
            assert_eq!(t.trim().is_empty(), blank, "{t:?}");
        }
        let ids = re(USER_ID);
        assert!(ids.is_match("user_01h2xcejqtf2nbrexx3vqjhp42"));
        assert!(
            store::TypeId::parse_with_prefix("user_01h2xcejqtf2nbrexx3vqjhp42", "user").is_ok()
        );
        assert!(!ids.is_match("user_81h2xcejqtf2nbrexx3vqjhp42"));
        assert!(!ids.is_match("user_01h2xcejqtf2nbrexx3vqjhpi2"));
        assert!(!ids.is_match("acct_01h2xcejqtf2nbrexx3vqjhp42"));
    }

    #[test]
    fn regions_are_the_countries_of_the_metadata() {
        let r = regions();
        assert!(
            r.contains(&"US".to_owned())
                && r.contains(&"JM".to_owned())
                && r.contains(&"GB".to_owned())
        );
        assert!(!r.contains(&"ZZ".to_owned()));
        assert!(r.len() > 200, "{}", r.len());
    }
}
