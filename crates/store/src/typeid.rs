//! TypeIDs: `prefix_` followed by a UUIDv7 in 26 characters of lowercase Crockford base32.
//!
//! ```text
//!   user_01h2xcejqtf2nbrexx3vqjhp42
//!   └──┘ └────────────────────────┘
//!  prefix  suffix: 128 bits as 26 base32 digits, 2 leading pad bits
//!          so the first digit is 0..=7
//! ```
//!
//! Follows the TypeID specification (jetify-com/typeid, v0.3): the prefix is lowercase ASCII
//! letters and underscores, at most 63 characters, starting and ending with a letter; the suffix
//! alphabet is `0123456789abcdefghjkmnpqrstvwxyz`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const SUFFIX_LEN: usize = 26;
const MAX_PREFIX_LEN: usize = 63;

/// A parsed, valid TypeID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId {
    prefix: String,
    uuid: u128,
}

/// Why a string is not a valid TypeID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeIdError {
    /// The prefix is not the one required.
    #[error("invalid TypeID {input:?} (expected prefix {expected}_)")]
    WrongPrefix { input: String, expected: String },
    /// The prefix has characters other than `a-z` and `_`, or is too long.
    #[error("invalid TypeID {input:?} (bad prefix)")]
    BadPrefix { input: String },
    /// The suffix is not 26 characters long.
    #[error("invalid TypeID {input:?} (suffix must be 26 characters)")]
    BadLength { input: String },
    /// The suffix has a character outside the lowercase Crockford alphabet.
    #[error("invalid TypeID {input:?} (suffix must be lowercase Crockford base32)")]
    BadChar { input: String },
    /// The suffix encodes more than 128 bits (first character above `7`).
    #[error("invalid TypeID {input:?} (suffix overflows 128 bits)")]
    Overflow { input: String },
}

impl TypeId {
    /// A new TypeID with a fresh UUIDv7 (RFC 9562 §5.7) from the system clock.
    ///
    /// The prefix is taken as given; use a constant of the `a-z_` form.
    pub fn new(prefix: &str) -> TypeId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        TypeId::from_parts(prefix, ms as u64, rand::random::<u128>())
    }

    /// A TypeID whose UUIDv7 carries `unix_ms` and the random bits of `random`.
    pub fn from_parts(prefix: &str, unix_ms: u64, random: u128) -> TypeId {
        // unix_ts_ms (48) | ver (4) = 7 | rand_a (12) | var (2) = 0b10 | rand_b (62)
        let ts = u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80;
        let ver = 0x7u128 << 76;
        let rand_a = (random >> 62 & 0xFFF) << 64;
        let var = 0b10u128 << 62;
        let rand_b = random & ((1u128 << 62) - 1);
        TypeId {
            prefix: prefix.to_owned(),
            uuid: ts | ver | rand_a | var | rand_b,
        }
    }

    /// Builds a TypeID from a prefix and a UUID in its 128-bit form.
    pub fn from_uuid(prefix: &str, uuid: u128) -> TypeId {
        TypeId {
            prefix: prefix.to_owned(),
            uuid,
        }
    }

    /// Parses any valid TypeID.
    pub fn parse(input: &str) -> Result<TypeId, TypeIdError> {
        let (prefix, suffix) = match input.rfind('_') {
            Some(i) => (&input[..i], &input[i + 1..]),
            None => ("", input),
        };
        if input.contains('_') && !valid_prefix(prefix) {
            return Err(TypeIdError::BadPrefix {
                input: input.to_owned(),
            });
        }
        let uuid = decode_suffix(input, suffix)?;
        Ok(TypeId {
            prefix: prefix.to_owned(),
            uuid,
        })
    }

    /// Parses a TypeID and requires its prefix to be `expected`.
    pub fn parse_with_prefix(input: &str, expected: &str) -> Result<TypeId, TypeIdError> {
        let wrong = || TypeIdError::WrongPrefix {
            input: input.to_owned(),
            expected: expected.to_owned(),
        };
        match input.strip_prefix(expected) {
            Some(rest) if rest.starts_with('_') => {}
            _ => return Err(wrong()),
        }
        let id = TypeId::parse(input)?;
        if id.prefix != expected {
            return Err(wrong());
        }
        Ok(id)
    }

    /// The prefix, without the underscore.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The UUID as a 128-bit integer (big-endian bit order).
    pub fn uuid(&self) -> u128 {
        self.uuid
    }

    /// The UUIDv7 timestamp, in milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> u64 {
        (self.uuid >> 80) as u64
    }

    /// The 26-character suffix.
    pub fn suffix(&self) -> String {
        let mut out = String::with_capacity(SUFFIX_LEN);
        for i in 0..SUFFIX_LEN {
            let shift = 125 - 5 * i as u32;
            let mask = if i == 0 { 0x7 } else { 0x1F };
            let idx = (self.uuid >> shift) as usize & mask;
            out.push(char::from(ALPHABET[idx]));
        }
        out
    }
}

impl fmt::Display for TypeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            f.write_str(&self.suffix())
        } else {
            write!(f, "{}_{}", self.prefix, self.suffix())
        }
    }
}

impl fmt::Debug for TypeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypeId({self})")
    }
}

fn valid_prefix(prefix: &str) -> bool {
    let bytes = prefix.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_PREFIX_LEN
        && bytes.iter().all(|b| b.is_ascii_lowercase() || *b == b'_')
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.last().is_some_and(u8::is_ascii_lowercase)
}

fn decode_suffix(input: &str, suffix: &str) -> Result<u128, TypeIdError> {
    if suffix.len() != SUFFIX_LEN {
        return Err(TypeIdError::BadLength {
            input: input.to_owned(),
        });
    }
    let mut value: u128 = 0;
    for (i, b) in suffix.bytes().enumerate() {
        let digit = ALPHABET
            .iter()
            .position(|a| *a == b)
            .ok_or_else(|| TypeIdError::BadChar {
                input: input.to_owned(),
            })?;
        if i == 0 && digit > 7 {
            return Err(TypeIdError::Overflow {
                input: input.to_owned(),
            });
        }
        value = (value << 5) | digit as u128;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_round_trip() {
        // From the TypeID specification's valid.yml.
        let id = TypeId::parse("prefix_01h455vb4pex5vsknk084sn02q").unwrap();
        assert_eq!(id.prefix(), "prefix");
        assert_eq!(id.uuid(), 0x01890a5d_ac96_774b_bcce_b302099a8057);
        assert_eq!(id.to_string(), "prefix_01h455vb4pex5vsknk084sn02q");

        let nil = TypeId::parse("00000000000000000000000000").unwrap();
        assert_eq!(nil.uuid(), 0);
        assert_eq!(nil.to_string(), "00000000000000000000000000");

        let max = TypeId::parse("7zzzzzzzzzzzzzzzzzzzzzzzzz").unwrap();
        assert_eq!(max.uuid(), u128::MAX);
    }

    #[test]
    fn parse_with_prefix_accepts_the_config_examples() {
        let user = TypeId::parse_with_prefix("user_01h2xcejqtf2nbrexx3vqjhp42", "user").unwrap();
        assert_eq!(user.to_string(), "user_01h2xcejqtf2nbrexx3vqjhp42");
        TypeId::parse_with_prefix("acct_01h2xcejqtf2nbrexx3vqjhp41", "acct").unwrap();
    }

    #[test]
    fn rejects_invalid_ids() {
        let cases = [
            (
                "acct_01h2xcejqtf2nbrexx3vqjhp42",
                "user",
                "expected prefix user_",
            ),
            (
                "users_01h2xcejqtf2nbrexx3vqjhp42",
                "user",
                "expected prefix user_",
            ),
            (
                "01h2xcejqtf2nbrexx3vqjhp42",
                "user",
                "expected prefix user_",
            ),
            ("user_01h2xcejqtf2nbrexx3vqjhp4", "user", "26 characters"),
            ("user_01h2xcejqtf2nbrexx3vqjhp422", "user", "26 characters"),
            ("user_01h2xcejqtf2nbrexx3vqjhpl2", "user", "Crockford"),
            ("user_01H2XCEJQTF2NBREXX3VQJHP42", "user", "Crockford"),
            ("user_81h2xcejqtf2nbrexx3vqjhp42", "user", "overflows"),
            ("user_", "user", "26 characters"),
        ];
        for (input, prefix, reason) in cases {
            let err = TypeId::parse_with_prefix(input, prefix).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(reason), "{input}: {msg}");
            assert!(msg.contains(input), "{input}: {msg}");
        }
        assert!(matches!(
            TypeId::parse("User_01h2xcejqtf2nbrexx3vqjhp42"),
            Err(TypeIdError::BadPrefix { .. })
        ));
        assert!(matches!(
            TypeId::parse("_user_01h2xcejqtf2nbrexx3vqjhp42"),
            Err(TypeIdError::BadPrefix { .. })
        ));
    }

    #[test]
    fn from_parts_sets_version_variant_and_time() {
        let id = TypeId::from_parts("call", 0x0189_0a5d_ac96, u128::MAX);
        assert_eq!(id.unix_ms(), 0x0189_0a5d_ac96);
        assert_eq!((id.uuid() >> 76) & 0xF, 7, "version nibble");
        assert_eq!((id.uuid() >> 62) & 0b11, 0b10, "variant bits");
        let parsed = TypeId::parse_with_prefix(&id.to_string(), "call").unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn new_ids_are_valid_and_sort_by_time() {
        let a = TypeId::from_parts("call", 1_000, 0xFFFF);
        let b = TypeId::from_parts("call", 1_001, 0);
        assert!(a.to_string() < b.to_string());
        let fresh = TypeId::new("call");
        assert!(fresh.to_string().starts_with("call_"));
        assert_eq!(fresh.to_string().len(), "call_".len() + 26);
        TypeId::parse_with_prefix(&fresh.to_string(), "call").unwrap();
        assert_ne!(TypeId::new("call"), fresh);
    }
}
