//! SDP session descriptions (RFC 4566) and the offer/answer rules around them (RFC 3264), as
//! far as a back-to-back user agent that relays media needs them.
//!
//! dialbridge passes codecs through and relays RTP through its own ports, so for every leg it
//! reads the SDP the peer sent, learns which codecs were accepted, and rewrites the description
//! so that the other leg sends its media to the relay. Everything here is pure: bytes in, bytes
//! out, no sockets and no clock.
//!
//! The shape of a description (RFC 4566 §5; `*` marks an optional line):
//!
//! ```text
//! Session description
//!    v=  (protocol version)
//!    o=  (originator and session identifier)
//!    s=  (session name)
//!    i=* (session information)
//!    u=* (URI of description)
//!    e=* (email address)
//!    p=* (phone number)
//!    c=* (connection information -- not required if included in all media)
//!    b=* (zero or more bandwidth information lines)
//!    One or more time descriptions ("t=" and "r=" lines; see below)
//!    z=* (time zone adjustments)
//!    k=* (encryption key)
//!    a=* (zero or more session attribute lines)
//!    Zero or more media descriptions
//!
//! Time description
//!    t=  (time the session is active)
//!    r=* (zero or more repeat times)
//!
//! Media description, if present
//!    m=  (media name and transport address)
//!    i=* (media title)
//!    c=* (connection information -- optional if included at session level)
//!    b=* (zero or more bandwidth information lines)
//!    k=* (encryption key)
//!    a=* (zero or more media attribute lines)
//! ```
//!
//! Layout:
//! - [`SessionDescription::parse`] is liberal: CRLF or bare LF, blank lines skipped, unknown
//!   line types and attributes kept in their order, byte for byte. The lines it models are typed
//!   ([`Origin`], [`Connection`], [`MediaDescription`], [`Attribute`]); the others (`i u e p b t
//!   r z k` and unknown letters) are kept as [`Line`]s. Garbage gives an [`SdpError`], never a
//!   panic.
//! - [`SessionDescription::to_bytes`] / [`fmt::Display`] write CRLF lines in the order of the
//!   figure above; a description read from CRLF text in that order comes back byte-identical.
//! - Relay rewriting: [`SessionDescription::set_connection`], [`MediaDescription::set_port`],
//!   [`MediaDescription::set_rtcp`] (RFC 3605), [`SessionDescription::bump_version`]
//!   (RFC 3264 §8), [`MediaDescription::retain_formats`], [`MediaDescription::set_direction`].
//! - Offer/answer: [`audio_offer`] builds dialbridge's own offer from [`Codec`]s;
//!   [`accepted_codecs`] tells which codecs an answer accepted (RFC 3264 §6.1);
//!   [`SessionDescription::retain_audio_codecs`] narrows an offer to them.
//!
//! What it does not do: keep offer/answer state (the call does), transcode, or understand ICE,
//! SRTP keys or bundling; attributes it does not model pass through untouched.

use bytes::Bytes;
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

/// Errors of the SDP layer. Line numbers count from 1 and include blank lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is empty or does not start with a `v=` line.
    #[error("the session description does not start with v=")]
    MissingVersion,
    /// `v=` carries something other than 0 (RFC 4566 §5.1).
    #[error("line {line}: unsupported SDP version (only v=0 exists)")]
    UnsupportedVersion { line: usize },
    /// A line that is not `<type>=<value>` with a one-character type.
    #[error("line {line}: not a <type>=<value> line")]
    MalformedLine { line: usize },
    /// A line that is not UTF-8 (RFC 4566 §5: ISO 10646 in UTF-8 unless `a=charset` says
    /// otherwise; other charsets are not supported).
    #[error("line {line}: not UTF-8")]
    NotUtf8 { line: usize },
    /// No `o=` line before the first media description.
    #[error("no o= line")]
    MissingOrigin,
    /// An `o=` line without its six fields or with a non-numeric sess-version.
    #[error("line {line}: malformed o= line")]
    BadOrigin { line: usize },
    /// A `c=` line without nettype, addrtype and connection-address.
    #[error("line {line}: malformed c= line")]
    BadConnection { line: usize },
    /// An `m=` line without media, a port (and optional port count) and a proto.
    #[error("line {line}: malformed m= line")]
    BadMedia { line: usize },
}

/// Text of a description that most descriptions repeat word for word (`IN`, `IP4`,
/// `audio`, `RTP/AVP`, attribute names, payload type numbers): taken from a table of such
/// words without an allocation of its own, anything else owned.
pub type Text = Cow<'static, str>;

/// `s` as [`Text`]: a word of the table borrowed, anything else copied.
pub fn text(s: &str) -> Text {
    if let Some(pt) = s.parse::<u8>().ok().filter(|&n| n < 128) {
        // Only the canonical spelling ("8", not "08") is the table's.
        if PAYLOAD_TYPES[usize::from(pt)] == s {
            return Cow::Borrowed(PAYLOAD_TYPES[usize::from(pt)]);
        }
    }
    macro_rules! known {
        ($($word:literal),* $(,)?) => {
            match s {
                $($word => Cow::Borrowed($word),)*
                other => Cow::Owned(other.to_owned()),
            }
        };
    }
    known!(
        "IN",
        "IP4",
        "IP6",
        "audio",
        "video",
        "RTP/AVP",
        "RTP/SAVP",
        "RTP/AVPF",
        "RTP/SAVPF",
        "UDP/TLS/RTP/SAVPF",
        "rtpmap",
        "fmtp",
        "ptime",
        "maxptime",
        "sendrecv",
        "sendonly",
        "recvonly",
        "inactive",
        "rtcp",
        "rtcp-mux",
        "rtcp-fb",
        "ssrc",
        "mid",
        "crypto",
        "fingerprint",
        "setup",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "candidate",
        "end-of-candidates",
        "group",
        "msid",
        "msid-semantic",
        "extmap",
        "silenceSupp",
    )
}

/// The payload type number `n` as text: the RTP payload types, 0-127.
pub fn payload_type_text(n: u8) -> Text {
    match PAYLOAD_TYPES.get(usize::from(n)) {
        Some(t) => Cow::Borrowed(t),
        None => Cow::Owned(n.to_string()),
    }
}

static PAYLOAD_TYPES: [&str; 128] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
    "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
    "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61", "62", "63", "64",
    "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76", "77", "78", "79", "80",
    "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91", "92", "93", "94", "95", "96",
    "97", "98", "99", "100", "101", "102", "103", "104", "105", "106", "107", "108", "109", "110",
    "111", "112", "113", "114", "115", "116", "117", "118", "119", "120", "121", "122", "123",
    "124", "125", "126", "127",
];

/// The `o=` line (RFC 4566 §5.2):
/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `-` when the host has no notion of user IDs.
    pub username: String,
    /// Kept as text: a string of digits that may be as long as the creator likes.
    pub session_id: String,
    /// Incremented on every change of the session (RFC 3264 §8).
    pub session_version: u64,
    /// `IN`.
    pub net_type: Text,
    /// `IP4` or `IP6`.
    pub addr_type: Text,
    /// An address or a domain name.
    pub address: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.username,
            self.session_id,
            self.session_version,
            self.net_type,
            self.addr_type,
            self.address
        )
    }
}

impl Origin {
    fn parse(value: &str, line: usize) -> Result<Origin, SdpError> {
        let fields: Vec<&str> = value.split_ascii_whitespace().collect();
        // Some user agents put spaces in the username: the last five fields are fixed, the
        // username is everything before them.
        let Some(split) = fields.len().checked_sub(5).filter(|&n| n >= 1) else {
            return Err(SdpError::BadOrigin { line });
        };
        let fixed = &fields[split..];
        let session_version = fixed[1]
            .parse::<u64>()
            .map_err(|_| SdpError::BadOrigin { line })?;
        Ok(Origin {
            username: fields[..split].join(" "),
            session_id: fixed[0].to_owned(),
            session_version,
            net_type: text(fixed[2]),
            addr_type: text(fixed[3]),
            address: fixed[4].to_owned(),
        })
    }
}

/// A `c=` line (RFC 4566 §5.7): `c=<nettype> <addrtype> <connection-address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `IN`.
    pub net_type: Text,
    /// `IP4` or `IP6`.
    pub addr_type: Text,
    /// The address as written, with a multicast `/ttl` or `/count` suffix if any.
    pub address: String,
}

impl Connection {
    /// `IN IP4 <ip>` or `IN IP6 <ip>`.
    pub fn new(ip: IpAddr) -> Connection {
        Connection {
            net_type: Cow::Borrowed("IN"),
            addr_type: Cow::Borrowed(addr_type(ip)),
            address: ip.to_string(),
        }
    }

    /// The address as an IP address (without a multicast suffix); `None` for a domain name.
    pub fn ip(&self) -> Option<IpAddr> {
        let host = self.address.split('/').next().unwrap_or("");
        host.parse().ok()
    }

    /// `0.0.0.0` (or `::`): the old way of putting a call on hold (RFC 3264 §8.4, RFC 2543).
    pub fn is_unspecified(&self) -> bool {
        self.ip().is_some_and(|ip| ip.is_unspecified())
    }

    fn parse(value: &str, line: usize) -> Result<Connection, SdpError> {
        let mut fields = value.split_ascii_whitespace();
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(net), Some(addr_type), Some(address), None) => Ok(Connection {
                net_type: text(net),
                addr_type: text(addr_type),
                address: address.to_owned(),
            }),
            _ => Err(SdpError::BadConnection { line }),
        }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.net_type, self.addr_type, self.address)
    }
}

fn addr_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// An `a=` line (RFC 4566 §5.13): a property (`a=<attribute>`) or a value attribute
/// (`a=<attribute>:<value>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: Text,
    /// `None` for a property attribute such as `a=sendrecv`.
    pub value: Option<String>,
}

impl Attribute {
    /// A value attribute.
    pub fn new(name: &str, value: &str) -> Attribute {
        Attribute::with_value(name, value.to_owned())
    }

    /// A value attribute whose value is already a `String` of its own (not copied again).
    pub fn with_value(name: &str, value: String) -> Attribute {
        Attribute {
            name: text(name),
            value: Some(value),
        }
    }

    /// A property attribute.
    pub fn property(name: &str) -> Attribute {
        Attribute {
            name: text(name),
            value: None,
        }
    }

    fn parse(value: &str) -> Attribute {
        match value.split_once(':') {
            Some((name, v)) => Attribute::new(name, v),
            None => Attribute::property(value),
        }
    }

    /// The payload type a format-specific attribute (`rtpmap`, `fmtp`, `rtcp-fb`) starts
    /// with, and the rest of its value.
    fn format_and_rest(&self) -> Option<(&str, &str)> {
        let v = self.value.as_deref()?;
        let v = v.trim_start();
        match v.split_once([' ', '\t']) {
            Some((fmt, rest)) => Some((fmt, rest.trim_start())),
            None => Some((v, "")),
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}:{}", self.name, v),
            None => f.write_str(&self.name),
        }
    }
}

/// A line that is kept as it came: `i u e p b t r z k` and unknown types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The type letter.
    pub kind: char,
    /// Everything after `=`, byte for byte.
    pub value: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.value)
    }
}

/// The direction attributes (RFC 3264 §5.1, §6.1). Seen from the side that wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an attribute name stands for.
    pub fn from_name(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The direction an answer takes for a stream offered with `self` when the answerer
    /// agrees (RFC 3264 §6.1: sendonly is answered recvonly and the other way round).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether the writer sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the writer receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>]`
/// (RFC 4566 §6), or the static assignment of RFC 3551 §6 for a payload type without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpMap<'a> {
    pub encoding: &'a str,
    pub clock_rate: u32,
    /// The audio channels; 1 when the encoding parameters are left out.
    pub channels: u16,
}

impl RtpMap<'_> {
    /// Same encoding (names compare case-insensitively, RFC 4855 §3) and clock rate.
    pub fn same_codec(&self, encoding: &str, clock_rate: u32) -> bool {
        self.encoding.eq_ignore_ascii_case(encoding) && self.clock_rate == clock_rate
    }

    fn parse(s: &str) -> Option<RtpMap<'_>> {
        let mut parts = s.trim_end().split('/');
        let encoding = parts.next().filter(|e| !e.is_empty())?;
        let clock_rate = parts.next()?.parse().ok()?;
        let channels = match parts.next() {
            Some(c) => c.parse().ok()?,
            None => 1,
        };
        Some(RtpMap {
            encoding,
            clock_rate,
            channels,
        })
    }
}

/// The static audio and video payload types of RFC 3551 §6 (Tables 4 and 5).
pub fn static_payload_type(pt: u8) -> Option<RtpMap<'static>> {
    let (encoding, clock_rate, channels) = match pt {
        0 => ("PCMU", 8000, 1),
        3 => ("GSM", 8000, 1),
        4 => ("G723", 8000, 1),
        5 => ("DVI4", 8000, 1),
        6 => ("DVI4", 16000, 1),
        7 => ("LPC", 8000, 1),
        8 => ("PCMA", 8000, 1),
        9 => ("G722", 8000, 1),
        10 => ("L16", 44100, 2),
        11 => ("L16", 44100, 1),
        12 => ("QCELP", 8000, 1),
        13 => ("CN", 8000, 1),
        14 => ("MPA", 90000, 1),
        15 => ("G728", 8000, 1),
        16 => ("DVI4", 11025, 1),
        17 => ("DVI4", 22050, 1),
        18 => ("G729", 8000, 1),
        25 => ("CelB", 90000, 1),
        26 => ("JPEG", 90000, 1),
        28 => ("nv", 90000, 1),
        31 => ("H261", 90000, 1),
        32 => ("MPV", 90000, 1),
        33 => ("MP2T", 90000, 1),
        34 => ("H263", 90000, 1),
        _ => return None,
    };
    Some(RtpMap {
        encoding,
        clock_rate,
        channels,
    })
}

/// One `a=crypto` attribute (RFC 4568 §9.1), borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crypto<'a> {
    pub tag: u32,
    /// `AES_CM_128_HMAC_SHA1_80`, ...
    pub suite: &'a str,
    /// The first key's `inline:` value: base64 key and salt, maybe `|lifetime|MKI:length`.
    pub inline: &'a str,
}

impl<'a> Crypto<'a> {
    /// Parses the value of an `a=crypto` attribute.
    pub fn parse(value: &'a str) -> Option<Crypto<'a>> {
        let mut parts = value.split_ascii_whitespace();
        let tag = parts.next()?.parse().ok()?;
        let suite = parts.next()?;
        // Several keys are joined by ';' (RFC 4568 §9.1); the first is used.
        let key = parts.next()?.split(';').next()?;
        let inline = key.strip_prefix("inline:")?;
        Some(Crypto { tag, suite, inline })
    }
}

/// A media description: the `m=` line (RFC 4566 §5.14) and the lines under it:
/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `text`, `application`, `message`.
    pub media: Text,
    /// 0 means the stream is rejected or disabled (RFC 3264 §6, §8.2).
    pub port: u16,
    /// The `/<number of ports>` suffix.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVP`, `RTP/AVPF`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: Text,
    /// The media formats: RTP payload type numbers for the RTP profiles.
    pub formats: Vec<Text>,
    /// The media-level `c=` (the first one, if there are several).
    pub connection: Option<Connection>,
    /// The `a=` lines in order.
    pub attributes: Vec<Attribute>,
    /// `i b k`, further `c=` lines and unknown types, in order.
    pub other_lines: Vec<Line>,
}

impl MediaDescription {
    /// The `a=crypto` lines (RFC 4568 §9.1: `a=crypto:<tag> <crypto-suite> <key-params>
    /// [<session-params>]`), in order; malformed ones are left out.
    pub fn cryptos(&self) -> Vec<Crypto<'_>> {
        self.attributes
            .iter()
            .filter(|a| a.name.eq_ignore_ascii_case("crypto"))
            .filter_map(|a| Crypto::parse(a.value.as_deref()?))
            .collect()
    }

    /// A media description with no attributes.
    pub fn new(media: &str, port: u16, proto: &str, formats: Vec<Text>) -> MediaDescription {
        MediaDescription {
            media: text(media),
            port,
            port_count: None,
            proto: text(proto),
            formats,
            connection: None,
            attributes: Vec::new(),
            other_lines: Vec::new(),
        }
    }

    fn parse(value: &str, line: usize) -> Result<MediaDescription, SdpError> {
        let bad = SdpError::BadMedia { line };
        let mut fields = value.split_ascii_whitespace();
        let (Some(media), Some(port), Some(proto)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad);
        };
        let (port, port_count) = match port.split_once('/') {
            Some((p, n)) => (p, Some(n.parse::<u16>().map_err(|_| bad.clone())?)),
            None => (port, None),
        };
        let port = port.parse::<u16>().map_err(|_| bad)?;
        Ok(MediaDescription {
            media: text(media),
            port,
            port_count,
            proto: text(proto),
            formats: fields.map(text).collect(),
            connection: None,
            attributes: Vec::new(),
            other_lines: Vec::new(),
        })
    }

    /// `m=audio`.
    pub fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    /// Port 0: a rejected or disabled stream.
    pub fn is_rejected(&self) -> bool {
        self.port == 0
    }

    /// The formats that are RTP payload type numbers, in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// The first attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The value of the first attribute with this name.
    pub fn attribute_value(&self, name: &str) -> Option<&str> {
        self.attribute(name).and_then(|a| a.value.as_deref())
    }

    /// Whether an attribute with this name is present.
    pub fn has_attribute(&self, name: &str) -> bool {
        self.attribute(name).is_some()
    }

    /// Removes every attribute with this name; returns how many there were.
    pub fn remove_attributes(&mut self, name: &str) -> usize {
        let before = self.attributes.len();
        self.attributes.retain(|a| a.name != name);
        before - self.attributes.len()
    }

    /// The `a=rtpmap` of a payload type, if the description has one.
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap<'_>> {
        self.format_attributes("rtpmap", pt)
            .find_map(|(_, rest)| RtpMap::parse(rest))
    }

    /// The codec of a payload type: its `a=rtpmap`, else the static assignment of RFC 3551
    /// (a description may use payload type 0, 8 or 9 without an rtpmap).
    pub fn codec(&self, pt: u8) -> Option<RtpMap<'_>> {
        self.rtpmap(pt).or_else(|| static_payload_type(pt))
    }

    /// The format parameters of `a=fmtp:<pt> <params>` (RFC 4566 §6).
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.format_attributes("fmtp", pt)
            .map(|(_, rest)| rest)
            .next()
    }

    fn format_attributes<'a>(
        &'a self,
        name: &'a str,
        pt: u8,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.attributes
            .iter()
            .filter(move |a| a.name == name)
            .filter_map(Attribute::format_and_rest)
            .filter(move |(fmt, _)| fmt.parse::<u8>().ok() == Some(pt))
    }

    /// The media-level direction attribute, if any. [`SessionDescription::direction_of`]
    /// falls back to the session level.
    pub fn own_direction(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }

    /// Sets the media-level direction: the first direction attribute is rewritten in place
    /// (one is appended if there is none), any others are removed.
    pub fn set_direction(&mut self, direction: Direction) {
        let mut seen = false;
        self.attributes.retain_mut(|a| {
            if a.value.is_some() || Direction::from_name(&a.name).is_none() {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            a.name = Cow::Borrowed(direction.as_str());
            true
        });
        if !seen {
            self.attributes
                .push(Attribute::property(direction.as_str()));
        }
    }

    /// The RTCP port and address of `a=rtcp:<port> [<nettype> <addrtype> <address>]`
    /// (RFC 3605 §2.1). The address is `None` when left out or when it is a domain name.
    pub fn rtcp(&self) -> Option<(u16, Option<IpAddr>)> {
        let value = self.attribute_value("rtcp")?;
        let mut fields = value.split_ascii_whitespace();
        let port = fields.next()?.parse().ok()?;
        let addr = fields.nth(2).and_then(|a| a.parse().ok());
        Some((port, addr))
    }

    /// `a=rtcp-mux`: RTP and RTCP share the port (RFC 5761 §5.1.1).
    pub fn rtcp_mux(&self) -> bool {
        self.has_attribute("rtcp-mux")
    }

    /// Sets the `m=` port (the RTP port).
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Rewrites `a=rtcp:` (RFC 3605) to point at `port` (and `addr`, if given), adding it if
    /// missing. With `a=rtcp-mux` RTCP goes to the RTP port, so the attribute is removed
    /// instead.
    pub fn set_rtcp(&mut self, port: u16, addr: Option<IpAddr>) {
        if self.rtcp_mux() {
            self.remove_attributes("rtcp");
            return;
        }
        let value = match addr {
            Some(ip) => format!("{port} IN {} {ip}", addr_type(ip)),
            None => port.to_string(),
        };
        let mut seen = false;
        self.attributes.retain_mut(|a| {
            if a.name != "rtcp" {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            a.value = Some(value.clone());
            true
        });
        if !seen {
            self.attributes.push(Attribute::new("rtcp", &value));
        }
    }

    /// Keeps the formats for which `keep(format, codec)` is true (`codec` as in
    /// [`MediaDescription::codec`]) and drops the `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines
    /// of the others. Returns whether any format is left.
    ///
    /// An `m=` line needs at least one format, so when none is left the stream is disabled
    /// as RFC 3264 §6 rejects a stream: port 0, and the first format kept as a placeholder.
    pub fn retain_formats<F>(&mut self, mut keep: F) -> bool
    where
        F: FnMut(&str, Option<RtpMap<'_>>) -> bool,
    {
        let formats = std::mem::take(&mut self.formats);
        let mut kept = Vec::with_capacity(formats.len());
        let mut removed = Vec::new();
        for f in formats {
            let codec = f.parse::<u8>().ok().and_then(|pt| self.codec(pt));
            if keep(&f, codec) {
                kept.push(f);
            } else {
                removed.push(f);
            }
        }
        let any_left = !kept.is_empty();
        if !any_left && !removed.is_empty() {
            kept.push(removed.remove(0));
            self.port = 0;
        }
        self.formats = kept;
        self.attributes.retain(|a| {
            if !matches!(a.name.as_ref(), "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            match a.format_and_rest() {
                Some((fmt, _)) => !removed.iter().any(|r| r == fmt),
                None => true,
            }
        });
        any_left
    }
}

fn direction_in(attributes: &[Attribute]) -> Option<Direction> {
    attributes
        .iter()
        .filter(|a| a.value.is_none())
        .find_map(|a| Direction::from_name(&a.name))
}

impl fmt::Display for MediaDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(n) = self.port_count {
            write!(f, "/{n}")?;
        }
        write!(f, " {}", self.proto)?;
        for fmt in &self.formats {
            write!(f, " {fmt}")?;
        }
        f.write_str("\r\n")?;
        let mut others: Vec<&Line> = self.other_lines.iter().collect();
        others.sort_by_key(|l| media_rank(l.kind));
        let c_rank = media_rank('c');
        for l in others.iter().filter(|l| media_rank(l.kind) < c_rank) {
            write!(f, "{l}\r\n")?;
        }
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for l in others.iter().filter(|l| media_rank(l.kind) >= c_rank) {
            write!(f, "{l}\r\n")?;
        }
        for a in &self.attributes {
            write!(f, "a={a}\r\n")?;
        }
        Ok(())
    }
}

/// Where a kept line goes in a media description: `i c b k`, then unknown types.
fn media_rank(kind: char) -> u8 {
    match kind {
        'i' => 0,
        'c' => 1,
        'b' => 2,
        'k' => 3,
        _ => 4,
    }
}

/// Where a kept line goes at the session level: `i u e p c b (t r) z k`, then unknown types.
fn session_rank(kind: char) -> u8 {
    match kind {
        'i' => 0,
        'u' => 1,
        'e' => 2,
        'p' => 3,
        'c' => 4,
        'b' => 5,
        't' | 'r' => 6,
        'z' => 7,
        'k' => 8,
        _ => 9,
    }
}

/// A session description (RFC 4566 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    /// `s=`; `-` when the description had none.
    pub session_name: String,
    /// The session-level `c=` (the first one, if there are several).
    pub connection: Option<Connection>,
    /// The session-level `a=` lines in order.
    pub attributes: Vec<Attribute>,
    pub media: Vec<MediaDescription>,
    /// `i u e p b t r z k`, further `c=` lines and unknown types at the session level, in
    /// order. A description without `t=` is written with `t=0 0`.
    pub other_lines: Vec<Line>,
}

impl SessionDescription {
    /// Parses a session description. Lines end in CRLF or LF; blank lines are skipped.
    pub fn parse(input: &[u8]) -> Result<SessionDescription, SdpError> {
        let mut origin = None;
        let mut session_name = None;
        let mut connection = None;
        let mut attributes = Vec::new();
        let mut media: Vec<MediaDescription> = Vec::new();
        let mut other_lines = Vec::new();
        let mut seen_version = false;

        for (index, raw) in input.split(|&b| b == b'\n').enumerate() {
            let line = index + 1;
            let mut raw = raw;
            while let [rest @ .., b'\r'] = raw {
                raw = rest;
            }
            if !seen_version {
                if let [0xEF, 0xBB, 0xBF, rest @ ..] = raw {
                    raw = rest;
                }
            }
            if raw.iter().all(|b| matches!(b, b' ' | b'\t')) {
                continue;
            }
            let (kind, value) = match raw {
                [k, b'=', value @ ..] if k.is_ascii_graphic() && *k != b'=' => {
                    let value =
                        std::str::from_utf8(value).map_err(|_| SdpError::NotUtf8 { line })?;
                    (char::from(*k), value)
                }
                _ if !seen_version => return Err(SdpError::MissingVersion),
                _ => return Err(SdpError::MalformedLine { line }),
            };
            if !seen_version {
                if kind != 'v' {
                    return Err(SdpError::MissingVersion);
                }
                if value.trim() != "0" {
                    return Err(SdpError::UnsupportedVersion { line });
                }
                seen_version = true;
                continue;
            }
            if let Some(m) = media.last_mut() {
                match kind {
                    'm' => media.push(MediaDescription::parse(value, line)?),
                    'a' => m.attributes.push(Attribute::parse(value)),
                    'c' if m.connection.is_none() => {
                        m.connection = Some(Connection::parse(value, line)?)
                    }
                    'c' => {
                        Connection::parse(value, line)?;
                        m.other_lines.push(Line {
                            kind,
                            value: value.to_owned(),
                        })
                    }
                    _ => m.other_lines.push(Line {
                        kind,
                        value: value.to_owned(),
                    }),
                }
                continue;
            }
            match kind {
                'o' if origin.is_none() => origin = Some(Origin::parse(value, line)?),
                's' if session_name.is_none() => session_name = Some(value.to_owned()),
                'c' if connection.is_none() => connection = Some(Connection::parse(value, line)?),
                'c' => {
                    Connection::parse(value, line)?;
                    other_lines.push(Line {
                        kind,
                        value: value.to_owned(),
                    })
                }
                'a' => attributes.push(Attribute::parse(value)),
                'm' => {
                    if origin.is_none() {
                        return Err(SdpError::MissingOrigin);
                    }
                    media.push(MediaDescription::parse(value, line)?)
                }
                _ => other_lines.push(Line {
                    kind,
                    value: value.to_owned(),
                }),
            }
        }
        if !seen_version {
            return Err(SdpError::MissingVersion);
        }
        Ok(SessionDescription {
            origin: origin.ok_or(SdpError::MissingOrigin)?,
            session_name: session_name.unwrap_or_else(|| "-".to_owned()),
            connection,
            attributes,
            media,
            other_lines,
        })
    }

    /// The description as SDP text with CRLF line ends, written into a buffer sized for a
    /// usual audio description (about 250-500 bytes) so that it is not grown step by step.
    pub fn to_bytes(&self) -> Bytes {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(512);
        // Writing into a String fails only when a Display impl does, and none of these do.
        let _ = write!(text, "{self}");
        Bytes::from(text.into_bytes())
    }

    /// The start and stop time of the first `t=` line (RFC 4566 §5.9); `t=0 0` is a
    /// permanent session.
    pub fn timing(&self) -> Option<(u64, u64)> {
        let t = self.other_lines.iter().find(|l| l.kind == 't')?;
        let mut fields = t.value.split_ascii_whitespace();
        let start = fields.next()?.parse().ok()?;
        let stop = fields.next()?.parse().ok()?;
        Some((start, stop))
    }

    /// The first session-level attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The session-level direction attribute, if any.
    pub fn own_direction(&self) -> Option<Direction> {
        direction_in(&self.attributes)
    }

    /// The first `m=audio` stream.
    pub fn first_audio(&self) -> Option<&MediaDescription> {
        self.media.iter().find(|m| m.is_audio())
    }

    /// The first `m=audio` stream, to rewrite it.
    pub fn first_audio_mut(&mut self) -> Option<&mut MediaDescription> {
        self.media.iter_mut().find(|m| m.is_audio())
    }

    /// The index of the first `m=audio` stream in [`SessionDescription::media`].
    pub fn first_audio_index(&self) -> Option<usize> {
        self.media.iter().position(|m| m.is_audio())
    }

    /// The connection of a stream: its own `c=`, else the session-level one.
    pub fn connection_of<'a>(&'a self, media: &'a MediaDescription) -> Option<&'a Connection> {
        media.connection.as_ref().or(self.connection.as_ref())
    }

    /// The direction of a stream: its own attribute, else the session-level one, else
    /// sendrecv (RFC 3264 §5.1).
    pub fn direction_of(&self, media: &MediaDescription) -> Direction {
        media
            .own_direction()
            .or_else(|| self.own_direction())
            .unwrap_or(Direction::SendRecv)
    }

    /// Whether the writer puts this stream on hold: sendonly or inactive (RFC 3264 §8.4), or
    /// a connection address of `0.0.0.0` (the RFC 2543 way).
    pub fn is_held(&self, media: &MediaDescription) -> bool {
        matches!(
            self.direction_of(media),
            Direction::SendOnly | Direction::Inactive
        ) || self
            .connection_of(media)
            .is_some_and(Connection::is_unspecified)
    }

    /// Whether the description puts the call on hold: it has streams that are not rejected
    /// and every one of them is held ([`SessionDescription::is_held`]).
    pub fn is_hold(&self) -> bool {
        let mut active = self.media.iter().filter(|m| !m.is_rejected()).peekable();
        active.peek().is_some() && active.all(|m| self.is_held(m))
    }

    /// Points the media at `ip`: the session-level `c=` and the `o=` address become `ip`
    /// (`IN IP4` or `IN IP6`), media-level `c=` lines are removed so that every stream uses
    /// the session-level one.
    ///
    /// A stream held the RFC 2543 way (`c=0.0.0.0`) keeps its meaning: it is marked sendonly
    /// (inactive if it was recvonly), as RFC 3264 §8.4 does it.
    pub fn set_connection(&mut self, ip: IpAddr) {
        let session_unspecified = self
            .connection
            .as_ref()
            .is_some_and(Connection::is_unspecified);
        let session_direction = self.own_direction();
        for m in &mut self.media {
            let unspecified = match &m.connection {
                Some(c) => c.is_unspecified(),
                None => session_unspecified,
            };
            if unspecified && !m.is_rejected() {
                let held = match m
                    .own_direction()
                    .or(session_direction)
                    .unwrap_or(Direction::SendRecv)
                {
                    Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
                    Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
                };
                m.set_direction(held);
            }
            m.connection = None;
            m.other_lines.retain(|l| l.kind != 'c');
        }
        self.connection = Some(Connection::new(ip));
        self.other_lines.retain(|l| l.kind != 'c');
        self.origin.net_type = Cow::Borrowed("IN");
        self.origin.addr_type = Cow::Borrowed(addr_type(ip));
        self.origin.address = ip.to_string();
    }

    /// Increments the `o=` sess-version, as every changed offer in a session must
    /// (RFC 3264 §8). Wraps at 2^64.
    pub fn bump_version(&mut self) {
        self.origin.session_version = self.origin.session_version.wrapping_add(1);
    }

    /// Sets the direction of every stream ([`MediaDescription::set_direction`]) and removes
    /// the session-level direction attribute.
    pub fn set_direction(&mut self, direction: Direction) {
        self.attributes
            .retain(|a| a.value.is_some() || Direction::from_name(&a.name).is_none());
        for m in &mut self.media {
            m.set_direction(direction);
        }
    }

    /// Narrows the first audio stream to the codecs of `accepted` (same encoding name and
    /// clock rate; the payload type numbers of this description stay). Used to offer one
    /// leg only what the other leg accepted. Returns whether any codec is left (see
    /// [`MediaDescription::retain_formats`]); `false` too when there is no audio stream.
    pub fn retain_audio_codecs(&mut self, accepted: &[AcceptedCodec]) -> bool {
        let Some(audio) = self.first_audio_mut() else {
            return false;
        };
        audio.retain_formats(|_, codec| {
            codec.is_some_and(|c| {
                accepted
                    .iter()
                    .any(|a| c.same_codec(&a.encoding, a.clock_rate))
            })
        })
    }
}

impl std::str::FromStr for SessionDescription {
    type Err = SdpError;

    fn from_str(s: &str) -> Result<SessionDescription, SdpError> {
        SessionDescription::parse(s.as_bytes())
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v=0\r\no={}\r\ns={}\r\n", self.origin, self.session_name)?;
        let mut others: Vec<&Line> = self.other_lines.iter().collect();
        others.sort_by_key(|l| session_rank(l.kind));
        let c_rank = session_rank('c');
        let t_rank = session_rank('t');
        for l in others.iter().filter(|l| session_rank(l.kind) < c_rank) {
            write!(f, "{l}\r\n")?;
        }
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        let mut need_time = !others.iter().any(|l| l.kind == 't');
        for l in others.iter().filter(|l| session_rank(l.kind) >= c_rank) {
            if need_time && session_rank(l.kind) >= t_rank {
                f.write_str("t=0 0\r\n")?;
                need_time = false;
            }
            write!(f, "{l}\r\n")?;
        }
        if need_time {
            f.write_str("t=0 0\r\n")?;
        }
        for a in &self.attributes {
            write!(f, "a={a}\r\n")?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// An audio codec dialbridge offers (RTP/AVP, RFC 3551).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub encoding: &'static str,
    /// The payload type dialbridge offers it with.
    pub payload_type: u8,
    pub clock_rate: u32,
    pub channels: u16,
    /// `a=fmtp` parameters.
    pub fmtp: Option<&'static str>,
}

impl Codec {
    /// G.711 µ-law (RFC 3551 §4.5.14), static payload type 0.
    pub const PCMU: Codec = Codec {
        encoding: "PCMU",
        payload_type: 0,
        clock_rate: 8000,
        channels: 1,
        fmtp: None,
    };
    /// G.711 A-law, static payload type 8.
    pub const PCMA: Codec = Codec {
        encoding: "PCMA",
        payload_type: 8,
        clock_rate: 8000,
        channels: 1,
        fmtp: None,
    };
    /// G.722, static payload type 9; its RTP clock is 8000 although it samples at 16 kHz
    /// (RFC 3551 §4.5.2).
    pub const G722: Codec = Codec {
        encoding: "G722",
        payload_type: 9,
        clock_rate: 8000,
        channels: 1,
        fmtp: None,
    };
    /// Opus (RFC 7587 §7: always `opus/48000/2`), with in-band FEC.
    pub const OPUS: Codec = Codec {
        encoding: "opus",
        payload_type: 111,
        clock_rate: 48000,
        channels: 2,
        fmtp: Some("useinbandfec=1"),
    };
    /// DTMF events (RFC 4733 §7.1.1): the 16 DTMF events and flash.
    pub const TELEPHONE_EVENT: Codec = Codec {
        encoding: "telephone-event",
        payload_type: 101,
        clock_rate: 8000,
        channels: 1,
        fmtp: Some("0-16"),
    };
    /// What dialbridge offers by default, in order of preference.
    pub const DEFAULTS: &'static [Codec] = &[
        Codec::PCMU,
        Codec::PCMA,
        Codec::G722,
        Codec::OPUS,
        Codec::TELEPHONE_EVENT,
    ];

    /// The value of its `a=rtpmap` line.
    pub fn rtpmap_value(&self) -> String {
        if self.channels == 1 {
            format!(
                "{} {}/{}",
                self.payload_type, self.encoding, self.clock_rate
            )
        } else {
            format!(
                "{} {}/{}/{}",
                self.payload_type, self.encoding, self.clock_rate, self.channels
            )
        }
    }
}

/// dialbridge's offer of one audio stream (RFC 3264 §5):
///
/// ```text
/// v=0
/// o=- <session_id> <session_id> IN IP4 <origin_addr>
/// s=-
/// c=IN IP4 <origin_addr>
/// t=0 0
/// m=audio <port> RTP/AVP 0 8 9 111 101
/// a=rtpmap:0 PCMU/8000
/// ...
/// a=rtpmap:111 opus/48000/2
/// a=fmtp:111 useinbandfec=1
/// a=rtpmap:101 telephone-event/8000
/// a=fmtp:101 0-16
/// a=ptime:20
/// a=sendrecv
/// a=rtcp:<port + 1>
/// ```
///
/// `a=rtcp` is left out when `port + 1` does not exist (port 0 or 65535). `codecs` should
/// not be empty: an `m=` line needs a format.
pub fn audio_offer(
    origin_addr: IpAddr,
    port: u16,
    session_id: u64,
    codecs: &[Codec],
) -> SessionDescription {
    let mut audio = MediaDescription::new(
        "audio",
        port,
        "RTP/AVP",
        codecs
            .iter()
            .map(|c| payload_type_text(c.payload_type))
            .collect(),
    );
    for c in codecs {
        audio
            .attributes
            .push(Attribute::with_value("rtpmap", c.rtpmap_value()));
        if let Some(params) = c.fmtp {
            audio.attributes.push(Attribute::with_value(
                "fmtp",
                format!("{} {params}", c.payload_type),
            ));
        }
    }
    audio.attributes.push(Attribute::new("ptime", "20"));
    audio
        .attributes
        .push(Attribute::property(Direction::SendRecv.as_str()));
    if let Some(rtcp) = port.checked_add(1).filter(|_| port != 0) {
        audio
            .attributes
            .push(Attribute::with_value("rtcp", rtcp.to_string()));
    }
    SessionDescription {
        origin: Origin {
            username: "-".to_owned(),
            session_id: session_id.to_string(),
            session_version: session_id,
            net_type: Cow::Borrowed("IN"),
            addr_type: Cow::Borrowed(addr_type(origin_addr)),
            address: origin_addr.to_string(),
        },
        session_name: "-".to_owned(),
        connection: Some(Connection::new(origin_addr)),
        attributes: Vec::new(),
        media: vec![audio],
        other_lines: vec![Line {
            kind: 't',
            value: "0 0".to_owned(),
        }],
    }
}

/// A codec an answer accepted (RFC 3264 §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCodec {
    /// The payload type in the answer: what the answerer expects to receive.
    pub payload_type: u8,
    /// The payload type of the same codec in the offer: what the offerer expects to receive.
    /// It differs from `payload_type` only for dynamic payload types.
    pub offer_payload_type: u8,
    /// The encoding name as the answer wrote it.
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u16,
}

impl AcceptedCodec {
    /// Same encoding (case-insensitive) and clock rate.
    pub fn same_codec(&self, encoding: &str, clock_rate: u32) -> bool {
        self.encoding.eq_ignore_ascii_case(encoding) && self.clock_rate == clock_rate
    }
}

/// The codecs the answer accepted for the offer's first audio stream, in the answer's order
/// (its preference). The answer's stream is the one at the same `m=` index (RFC 3264 §6),
/// else its first audio stream. Codecs match by encoding name (case-insensitive) and clock
/// rate, so a dynamic payload type may be renumbered; static payload types without
/// `a=rtpmap` are recognised. A rejected stream (port 0) accepted nothing.
pub fn accepted_codecs(
    offer: &SessionDescription,
    answer: &SessionDescription,
) -> Vec<AcceptedCodec> {
    let Some(index) = offer.first_audio_index() else {
        return Vec::new();
    };
    let offered = &offer.media[index];
    let Some(answered) = answer
        .media
        .get(index)
        .filter(|m| m.is_audio())
        .or_else(|| answer.first_audio())
    else {
        return Vec::new();
    };
    if answered.is_rejected() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pt in answered.payload_types() {
        let Some(codec) = answered.codec(pt) else {
            continue;
        };
        let same = |opt: &u8| {
            offered
                .codec(*opt)
                .is_some_and(|c| c.same_codec(codec.encoding, codec.clock_rate))
        };
        let offer_pt = offered
            .payload_types()
            .find(|opt| *opt == pt && same(opt))
            .or_else(|| offered.payload_types().find(same));
        if let Some(offer_payload_type) = offer_pt {
            out.push(AcceptedCodec {
                payload_type: pt,
                offer_payload_type,
                encoding: codec.encoding.to_owned(),
                clock_rate: codec.clock_rate,
                channels: codec.channels,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// SIPp's built-in `uac` scenario with `-i 127.0.0.1 -mp 6000`.
    const SIPP_UAC: &str = "v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn common_words_are_borrowed_and_the_rest_owned() {
        for word in [
            "IN", "IP4", "audio", "RTP/AVP", "rtpmap", "0", "8", "101", "127",
        ] {
            assert!(
                matches!(super::text(word), Cow::Borrowed(w) if w == word),
                "{word}"
            );
        }
        // Not the canonical spelling of a payload type, out of its range, or unknown.
        for word in ["08", "128", "-1", "x-custom", "in", ""] {
            assert!(
                matches!(super::text(word), Cow::Owned(ref w) if w == word),
                "{word}"
            );
        }
        assert_eq!(payload_type_text(0), "0");
        assert_eq!(payload_type_text(127), "127");
        assert!(matches!(payload_type_text(101), Cow::Borrowed("101")));
        assert!(matches!(payload_type_text(200), Cow::Owned(ref w) if w == "200"));
        // A parsed description holds the same text whichever way it was stored.
        let sdp = SessionDescription::parse(SIPP_UAC.as_bytes()).unwrap();
        assert_eq!(sdp.media[0].proto, "RTP/AVP");
        assert_eq!(sdp.media[0].formats, ["0"]);
        assert!(matches!(sdp.media[0].proto, Cow::Borrowed(_)));
    }

    /// What baresip sends: several codecs, rtcp-mux, ssrc, label, a media-level c= and b=.
    const BARESIP: &str = "v=0\r\n\
        o=- 1318271462 3839165421 IN IP4 192.168.1.10\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.10\r\n\
        b=AS:128\r\n\
        t=0 0\r\n\
        a=tool:baresip 3.10.1\r\n\
        m=audio 10000 RTP/AVP 96 9 0 8 101\r\n\
        c=IN IP4 192.168.1.11\r\n\
        b=AS:64\r\n\
        a=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
        a=rtcp-fb:96 nack\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=rtcp-mux\r\n\
        a=sendrecv\r\n\
        a=label:1\r\n\
        a=ssrc:2907401727 cname:9bd4a8f0-ef03-4b56-a2ab-6c7a5c3e2f11\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";

    /// RFC 5118 §4.6 (an IPv6 session with audio and video), with its LF line ends.
    const RFC5118_IPV6: &str = "v=0\n\
        o=assistant 971731711378798081 0 IN IP6 2001:db8::20\n\
        s=Live video feed for today's meeting\n\
        c=IN IP6 2001:db8::20\n\
        t=3338481189 3370017201\n\
        m=audio 6000 RTP/AVP 2\n\
        a=rtpmap:2 G726-32/8000\n\
        m=video 6024 RTP/AVP 107\n\
        a=rtpmap:107 H263-1998/90000\n";

    /// RFC 3264 §10.1: audio and video, the connection a domain name.
    const AUDIO_VIDEO: &str = "v=0\r\n\
        o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\n\
        s=\r\n\
        c=IN IP4 host.atlanta.example.com\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 0 8 97\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:97 iLBC/8000\r\n\
        m=video 51372 RTP/AVP 31 32\r\n\
        a=rtpmap:31 H261/90000\r\n\
        a=rtpmap:32 MPV/90000\r\n";

    /// Hold the RFC 3264 §8.4 way.
    const HOLD_SENDONLY: &str = "v=0\r\n\
        o=alice 2890844526 2890844527 IN IP4 192.0.2.101\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.101\r\n\
        t=0 0\r\n\
        m=audio 49172 RTP/AVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=sendonly\r\n";

    /// Hold the RFC 2543 way.
    const HOLD_ZERO: &str = "v=0\r\n\
        o=- 3 4 IN IP4 192.0.2.5\r\n\
        s=-\r\n\
        c=IN IP4 0.0.0.0\r\n\
        t=0 0\r\n\
        m=audio 4000 RTP/AVP 8\r\n";

    const FIXTURES: &[&str] = &[
        SIPP_UAC,
        BARESIP,
        RFC5118_IPV6,
        AUDIO_VIDEO,
        HOLD_SENDONLY,
        HOLD_ZERO,
    ];

    fn parse(s: &str) -> SessionDescription {
        SessionDescription::parse(s.as_bytes()).unwrap()
    }

    fn text(sdp: &SessionDescription) -> String {
        String::from_utf8(sdp.to_bytes().to_vec()).unwrap()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn sipp_uac_fields_and_round_trip() {
        let sdp = parse(SIPP_UAC);
        assert_eq!(
            sdp.origin,
            Origin {
                username: "user1".into(),
                session_id: "53655765".into(),
                session_version: 2353687637,
                net_type: "IN".into(),
                addr_type: "IP4".into(),
                address: "127.0.0.1".into(),
            }
        );
        assert_eq!(sdp.session_name, "-");
        assert_eq!(sdp.timing(), Some((0, 0)));
        assert_eq!(sdp.media.len(), 1);
        let audio = sdp.first_audio().unwrap();
        assert_eq!(
            (audio.media.as_ref(), audio.port, audio.port_count),
            ("audio", 6000, None)
        );
        assert_eq!(audio.proto, "RTP/AVP");
        assert_eq!(audio.formats, ["0"]);
        assert_eq!(
            audio.rtpmap(0),
            Some(RtpMap {
                encoding: "PCMU",
                clock_rate: 8000,
                channels: 1
            })
        );
        assert_eq!(audio.rtpmap(8), None);
        assert_eq!(audio.connection, None);
        assert_eq!(
            sdp.connection_of(audio).and_then(Connection::ip),
            Some(v4(127, 0, 0, 1))
        );
        assert_eq!(sdp.direction_of(audio), Direction::SendRecv);
        assert_eq!(audio.rtcp(), None);
        assert!(!audio.rtcp_mux());
        assert!(!sdp.is_hold());
        assert_eq!(text(&sdp), SIPP_UAC);
        assert_eq!(sdp.to_string(), SIPP_UAC);
        assert_eq!(SIPP_UAC.parse::<SessionDescription>(), Ok(sdp));
    }

    #[test]
    fn lf_line_ends_parse_the_same_and_are_written_with_crlf() {
        let lf = SIPP_UAC.replace("\r\n", "\n");
        let sdp = parse(&lf);
        assert_eq!(sdp, parse(SIPP_UAC));
        assert_eq!(text(&sdp), SIPP_UAC);
        // Blank lines and a missing final line end are tolerated.
        let loose = format!("\r\n{}\r\n\r\n", SIPP_UAC.trim_end());
        assert_eq!(parse(&loose), sdp);
    }

    #[test]
    fn baresip_codecs_rtcp_mux_and_unknown_attributes() {
        let sdp = parse(BARESIP);
        assert_eq!(
            sdp.attribute("tool").and_then(|a| a.value.as_deref()),
            Some("baresip 3.10.1")
        );
        let audio = sdp.first_audio().unwrap();
        assert_eq!(audio.formats, ["96", "9", "0", "8", "101"]);
        assert_eq!(
            audio.payload_types().collect::<Vec<_>>(),
            [96, 9, 0, 8, 101]
        );
        assert_eq!(
            audio.rtpmap(96),
            Some(RtpMap {
                encoding: "opus",
                clock_rate: 48000,
                channels: 2
            })
        );
        assert_eq!(
            audio.rtpmap(101).map(|r| r.encoding),
            Some("telephone-event")
        );
        assert_eq!(audio.fmtp(96), Some("stereo=1;sprop-stereo=1"));
        assert_eq!(audio.fmtp(101), Some("0-15"));
        assert_eq!(audio.fmtp(0), None);
        assert!(audio.rtcp_mux());
        assert_eq!(audio.rtcp(), None);
        assert_eq!(audio.own_direction(), Some(Direction::SendRecv));
        // The media-level c= wins over the session-level one.
        assert_eq!(
            sdp.connection_of(audio).and_then(Connection::ip),
            Some(v4(192, 168, 1, 11))
        );
        assert_eq!(audio.attribute_value("label"), Some("1"));
        assert_eq!(
            audio.attribute_value("ssrc"),
            Some("2907401727 cname:9bd4a8f0-ef03-4b56-a2ab-6c7a5c3e2f11")
        );
        let names: Vec<&str> = audio.attributes.iter().map(|a| a.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "rtpmap", "fmtp", "rtcp-fb", "rtpmap", "rtpmap", "rtpmap", "rtpmap", "fmtp",
                "rtcp-mux", "sendrecv", "label", "ssrc", "extmap"
            ]
        );
        assert_eq!(
            audio.other_lines,
            [Line {
                kind: 'b',
                value: "AS:64".into()
            }]
        );
        assert_eq!(text(&sdp), BARESIP);
    }

    #[test]
    fn rfc5118_ipv6() {
        let sdp = parse(RFC5118_IPV6);
        assert_eq!(sdp.origin.username, "assistant");
        assert_eq!(sdp.origin.session_id, "971731711378798081");
        assert_eq!(sdp.origin.session_version, 0);
        assert_eq!(sdp.origin.addr_type, "IP6");
        assert_eq!(sdp.session_name, "Live video feed for today's meeting");
        let ip6: IpAddr = "2001:db8::20".parse().unwrap();
        let c = sdp.connection.as_ref().unwrap();
        assert_eq!((c.addr_type.as_ref(), c.ip()), ("IP6", Some(ip6)));
        assert_eq!(sdp.timing(), Some((3338481189, 3370017201)));
        assert_eq!(sdp.media.len(), 2);
        let audio = sdp.first_audio().unwrap();
        assert_eq!(
            audio.codec(2),
            Some(RtpMap {
                encoding: "G726-32",
                clock_rate: 8000,
                channels: 1
            })
        );
        assert_eq!(
            sdp.connection_of(&sdp.media[1]).and_then(Connection::ip),
            Some(ip6)
        );
        assert_eq!(sdp.media[1].rtpmap(107).map(|r| r.clock_rate), Some(90000));
        assert_eq!(text(&sdp), RFC5118_IPV6.replace('\n', "\r\n"));
    }

    #[test]
    fn audio_and_video() {
        let sdp = parse(AUDIO_VIDEO);
        assert_eq!(sdp.session_name, "");
        assert_eq!(sdp.first_audio_index(), Some(0));
        let video = &sdp.media[1];
        assert_eq!((video.media.as_ref(), video.port), ("video", 51372));
        assert!(!video.is_audio());
        assert_eq!(video.codec(31).map(|c| c.encoding), Some("H261"));
        // A domain name is not an IP address.
        let c = sdp.connection.as_ref().unwrap();
        assert_eq!(c.ip(), None);
        assert!(!c.is_unspecified());
        assert!(!sdp.is_hold());
        assert_eq!(text(&sdp), AUDIO_VIDEO);

        // Video first: first_audio still finds the audio stream.
        let mut swapped = sdp.clone();
        swapped.media.swap(0, 1);
        assert_eq!(swapped.first_audio_index(), Some(1));
        assert_eq!(swapped.first_audio().map(|m| m.port), Some(49170));
        swapped.first_audio_mut().unwrap().set_port(7000);
        assert_eq!(swapped.media[1].port, 7000);
    }

    #[test]
    fn hold_sendonly_inactive_and_zero_address() {
        let held = parse(HOLD_SENDONLY);
        let audio = held.first_audio().unwrap();
        assert_eq!(held.direction_of(audio), Direction::SendOnly);
        assert!(held.is_held(audio));
        assert!(held.is_hold());
        assert_eq!(text(&held), HOLD_SENDONLY);

        let inactive = parse(&HOLD_SENDONLY.replace("sendonly", "inactive"));
        assert!(inactive.is_hold());
        let recvonly = parse(&HOLD_SENDONLY.replace("sendonly", "recvonly"));
        assert!(!recvonly.is_hold());

        // Session-level sendonly applies to a stream without its own direction.
        let session_level = parse(&SIPP_UAC.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n"));
        let audio = session_level.first_audio().unwrap();
        assert_eq!(audio.own_direction(), None);
        assert_eq!(session_level.direction_of(audio), Direction::SendOnly);
        assert!(session_level.is_hold());

        let zero = parse(HOLD_ZERO);
        assert!(zero.connection.as_ref().unwrap().is_unspecified());
        assert_eq!(zero.direction_of(&zero.media[0]), Direction::SendRecv);
        assert!(zero.is_hold());
        assert_eq!(text(&zero), HOLD_ZERO);
        let zero6 = parse(&SIPP_UAC.replace("c=IN IP4 127.0.0.1", "c=IN IP6 ::"));
        assert!(zero6.is_hold());

        // Only active streams count: a rejected video does not make a call held or not.
        let mut av = parse(AUDIO_VIDEO);
        av.media[0].set_direction(Direction::SendOnly);
        assert!(!av.is_hold());
        av.media[1].set_port(0);
        assert!(av.is_hold());
        av.media[0].set_port(0);
        assert!(!av.is_hold(), "no active stream is not a hold");
    }

    #[test]
    fn set_connection_ports_rtcp_and_version_for_the_relay() {
        let mut sdp = parse(BARESIP);
        let relay = v4(203, 0, 113, 7);
        sdp.set_connection(relay);
        sdp.bump_version();
        let audio = sdp.first_audio_mut().unwrap();
        audio.set_port(30000);
        audio.remove_attributes("rtcp-mux");
        audio.set_rtcp(30001, None);
        assert_eq!(audio.rtcp(), Some((30001, None)));
        assert_eq!(audio.connection, None);
        let expected = BARESIP
            .replace(
                "o=- 1318271462 3839165421 IN IP4 192.168.1.10",
                "o=- 1318271462 3839165422 IN IP4 203.0.113.7",
            )
            .replace("c=IN IP4 192.168.1.10", "c=IN IP4 203.0.113.7")
            .replace("c=IN IP4 192.168.1.11\r\n", "")
            .replace("m=audio 10000", "m=audio 30000")
            .replace("a=rtcp-mux\r\n", "")
            .replace(
                "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
                "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=rtcp:30001\r\n",
            );
        assert_eq!(text(&sdp), expected);
        // And it reads back as it was written.
        let again = parse(&expected);
        assert_eq!(again, sdp);
        assert_eq!(
            again
                .connection_of(&again.media[0])
                .and_then(Connection::ip),
            Some(relay)
        );
        assert_eq!(again.origin.session_version, 3839165422);
    }

    #[test]
    fn set_connection_switches_address_family() {
        let mut sdp = parse(SIPP_UAC);
        let ip6: IpAddr = "2001:db8::1".parse().unwrap();
        sdp.set_connection(ip6);
        assert_eq!(
            text(&sdp),
            SIPP_UAC.replace("IN IP4 127.0.0.1", "IN IP6 2001:db8::1")
        );
        let mut back = parse(RFC5118_IPV6);
        back.set_connection(v4(10, 0, 0, 1));
        assert_eq!(back.origin.addr_type, "IP4");
        assert_eq!(back.origin.address, "10.0.0.1");
        assert_eq!(
            back.connection,
            Some(Connection {
                net_type: "IN".into(),
                addr_type: "IP4".into(),
                address: "10.0.0.1".into()
            })
        );
    }

    #[test]
    fn set_connection_keeps_an_old_hold_as_a_direction() {
        let mut zero = parse(HOLD_ZERO);
        assert!(zero.is_hold());
        zero.set_connection(v4(10, 0, 0, 1));
        assert_eq!(zero.media[0].own_direction(), Some(Direction::SendOnly));
        assert!(zero.is_hold());
        assert!(!zero.connection.as_ref().unwrap().is_unspecified());

        // A media-level 0.0.0.0 on a recvonly stream becomes inactive; the other stream
        // is left alone.
        let mut av = parse(AUDIO_VIDEO);
        av.media[0].connection = Some(Connection::new(v4(0, 0, 0, 0)));
        av.media[0].set_direction(Direction::RecvOnly);
        av.set_connection(v4(10, 0, 0, 1));
        assert_eq!(av.media[0].own_direction(), Some(Direction::Inactive));
        assert_eq!(av.media[1].own_direction(), None);
        assert_eq!(av.media[0].connection, None);

        // A stream that is not held keeps no direction attribute added.
        let mut plain = parse(SIPP_UAC);
        plain.set_connection(v4(10, 0, 0, 1));
        assert_eq!(plain.media[0].own_direction(), None);
    }

    #[test]
    fn set_rtcp_rewrites_adds_and_removes_with_rtcp_mux() {
        let sdp = parse(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/AVP 0\r\na=rtcp:5011 IN IP4 192.0.2.9\r\na=ptime:20\r\n",
        );
        let ip9 = v4(192, 0, 2, 9);
        assert_eq!(sdp.media[0].rtcp(), Some((5011, Some(ip9))));

        let mut m = sdp.media[0].clone();
        let ip6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        m.set_rtcp(40001, Some(ip6));
        assert_eq!(m.rtcp(), Some((40001, Some(ip6))));
        // Rewritten in place, before a=ptime.
        assert_eq!(m.attributes[0], Attribute::new("rtcp", "40001 IN IP6 ::1"));
        assert_eq!(m.attributes.len(), 2);

        let mut bare = parse(SIPP_UAC).media[0].clone();
        bare.set_rtcp(6001, None);
        assert_eq!(
            bare.attributes.last(),
            Some(&Attribute::new("rtcp", "6001"))
        );
        assert_eq!(bare.rtcp(), Some((6001, None)));

        let mut muxed = sdp.media[0].clone();
        muxed.attributes.push(Attribute::property("rtcp-mux"));
        muxed.set_rtcp(40001, None);
        assert_eq!(muxed.rtcp(), None);
        assert!(muxed.rtcp_mux());
    }

    #[test]
    fn set_direction_rewrites_in_place() {
        let mut sdp = parse(HOLD_SENDONLY);
        sdp.media[0].set_direction(Direction::SendRecv);
        assert_eq!(text(&sdp), HOLD_SENDONLY.replace("sendonly", "sendrecv"));
        // Duplicates go, a missing one is appended.
        let m = &mut sdp.media[0];
        m.attributes.push(Attribute::property("inactive"));
        m.set_direction(Direction::RecvOnly);
        let dirs: Vec<&str> = m
            .attributes
            .iter()
            .filter(|a| Direction::from_name(&a.name).is_some())
            .map(|a| a.name.as_ref())
            .collect();
        assert_eq!(dirs, ["recvonly"]);
        let mut plain = parse(SIPP_UAC);
        plain.media[0].set_direction(Direction::Inactive);
        assert_eq!(
            plain.media[0].attributes.last(),
            Some(&Attribute::property("inactive"))
        );
        // At the session level: the session attribute goes, every stream gets the direction.
        let mut session_level = parse(&AUDIO_VIDEO.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n"));
        session_level.set_direction(Direction::SendOnly);
        assert_eq!(session_level.own_direction(), None);
        assert!(session_level
            .media
            .iter()
            .all(|m| m.own_direction() == Some(Direction::SendOnly)));
    }

    #[test]
    fn direction_answer_rules() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::RecvOnly.reversed(), Direction::SendOnly);
        assert_eq!(Direction::SendRecv.reversed(), Direction::SendRecv);
        assert_eq!(Direction::Inactive.reversed(), Direction::Inactive);
        for d in [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ] {
            assert_eq!(Direction::from_name(d.as_str()), Some(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        assert!(Direction::SendOnly.sends() && !Direction::SendOnly.receives());
        assert!(!Direction::Inactive.sends() && !Direction::Inactive.receives());
        assert_eq!(Direction::from_name("SENDRECV"), None);
    }

    #[test]
    fn retain_formats_drops_rtpmap_fmtp_and_rtcp_fb() {
        let mut sdp = parse(BARESIP);
        let audio = sdp.first_audio_mut().unwrap();
        let mut seen = Vec::new();
        let left = audio.retain_formats(|pt, codec| {
            seen.push((pt.to_owned(), codec.map(|c| c.encoding.to_owned())));
            codec.is_some_and(|c| c.encoding == "PCMA" || c.encoding == "telephone-event")
        });
        assert!(left);
        assert_eq!(
            seen,
            [
                ("96".into(), Some("opus".into())),
                ("9".into(), Some("G722".into())),
                ("0".into(), Some("PCMU".into())),
                ("8".into(), Some("PCMA".into())),
                ("101".into(), Some("telephone-event".into())),
            ]
        );
        assert_eq!(audio.formats, ["8", "101"]);
        assert_eq!(audio.rtpmap(96), None);
        assert_eq!(audio.fmtp(96), None);
        assert!(!audio.attributes.iter().any(|a| a.name == "rtcp-fb"));
        assert_eq!(audio.fmtp(101), Some("0-15"));
        assert!(audio.has_attribute("ssrc") && audio.has_attribute("label"));
        assert_eq!(audio.port, 10000);

        // Nothing left: the stream is disabled, with one format so the m= line stays valid.
        let left = audio.retain_formats(|_, _| false);
        assert!(!left);
        assert_eq!(audio.port, 0);
        assert_eq!(audio.formats, ["8"]);
        assert!(audio.is_rejected());
        let written = text(&sdp);
        assert!(written.contains("m=audio 0 RTP/AVP 8\r\n"), "{written}");
        assert!(!written.contains("telephone-event"));
        assert_eq!(parse(&written), sdp);
    }

    #[test]
    fn audio_offer_text() {
        let sdp = audio_offer(v4(198, 51, 100, 4), 20000, 4242, Codec::DEFAULTS);
        assert_eq!(
            text(&sdp),
            "v=0\r\n\
             o=- 4242 4242 IN IP4 198.51.100.4\r\n\
             s=-\r\n\
             c=IN IP4 198.51.100.4\r\n\
             t=0 0\r\n\
             m=audio 20000 RTP/AVP 0 8 9 111 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:9 G722/8000\r\n\
             a=rtpmap:111 opus/48000/2\r\n\
             a=fmtp:111 useinbandfec=1\r\n\
             a=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\n\
             a=ptime:20\r\n\
             a=sendrecv\r\n\
             a=rtcp:20001\r\n"
        );
        assert_eq!(parse(&text(&sdp)), sdp);
        let audio = sdp.first_audio().unwrap();
        assert_eq!(audio.rtcp(), Some((20001, None)));
        assert_eq!(audio.codec(111).map(|c| c.channels), Some(2));

        let v6 = audio_offer(IpAddr::V6(Ipv6Addr::LOCALHOST), 65535, 1, &[Codec::PCMA]);
        let written = text(&v6);
        assert!(written.contains("o=- 1 1 IN IP6 ::1\r\n"), "{written}");
        assert!(written.contains("c=IN IP6 ::1\r\n"), "{written}");
        assert!(written.contains("m=audio 65535 RTP/AVP 8\r\n"), "{written}");
        assert!(!written.contains("a=rtcp"), "no port 65536: {written}");
    }

    fn answer_pcma_te100() -> SessionDescription {
        parse(
            "v=0\r\no=agent 77 78 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n\
             m=audio 8000 RTP/AVP 8 100\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:100 telephone-event/8000\r\na=fmtp:100 0-15\r\na=sendrecv\r\n",
        )
    }

    #[test]
    fn accepted_codecs_renumbered_telephone_event() {
        let offer = audio_offer(v4(198, 51, 100, 4), 20000, 1, Codec::DEFAULTS);
        let accepted = accepted_codecs(&offer, &answer_pcma_te100());
        assert_eq!(
            accepted,
            [
                AcceptedCodec {
                    payload_type: 8,
                    offer_payload_type: 8,
                    encoding: "PCMA".into(),
                    clock_rate: 8000,
                    channels: 1
                },
                AcceptedCodec {
                    payload_type: 100,
                    offer_payload_type: 101,
                    encoding: "telephone-event".into(),
                    clock_rate: 8000,
                    channels: 1
                },
            ]
        );
    }

    #[test]
    fn accepted_codecs_static_types_case_and_clock() {
        // The offer carries no rtpmap for 0 and 8; the answer writes "pcmu" in lower case,
        // adds a codec that was not offered, and G722 with a wrong clock rate.
        let offer = parse(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/AVP 0 8 9\r\n",
        );
        let answer = parse(
            "v=0\r\no=- 2 2 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n\
             m=audio 6000 RTP/AVP 96 18 97 8\r\na=rtpmap:96 pcmu/8000\r\n\
             a=rtpmap:97 G722/16000\r\n",
        );
        let accepted = accepted_codecs(&offer, &answer);
        let short: Vec<(u8, u8, &str)> = accepted
            .iter()
            .map(|a| (a.payload_type, a.offer_payload_type, a.encoding.as_str()))
            .collect();
        assert_eq!(short, [(96, 0, "pcmu"), (8, 8, "PCMA")]);

        // A rejected stream accepted nothing; neither did an answer without audio.
        let mut rejected = answer.clone();
        rejected.media[0].set_port(0);
        assert!(accepted_codecs(&offer, &rejected).is_empty());
        let mut video_only = answer.clone();
        video_only.media[0].media = "video".into();
        assert!(accepted_codecs(&offer, &video_only).is_empty());
        // 97 is iLBC in that offer, so G722/16000 on 97 still does not match.
        let offered: Vec<u8> = accepted_codecs(&parse(AUDIO_VIDEO), &answer)
            .iter()
            .map(|a| a.offer_payload_type)
            .collect();
        assert_eq!(offered, [0, 8]);
    }

    #[test]
    fn accepted_codecs_follow_the_m_line_index() {
        // Offer: video then audio. The answer's audio is found at the same index.
        let mut offer = parse(AUDIO_VIDEO);
        offer.media.swap(0, 1);
        let mut answer = offer.clone();
        answer.media[1].retain_formats(|pt, _| pt == "97");
        answer.media[1].attributes[0].value = Some("97 ilbc/8000".into());
        let accepted = accepted_codecs(&offer, &answer);
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].payload_type, 97);
        assert!(accepted[0].same_codec("iLBC", 8000));
    }

    #[test]
    fn offer_narrowed_to_what_the_other_leg_accepted() {
        let agent_offer = audio_offer(v4(198, 51, 100, 4), 20000, 1, Codec::DEFAULTS);
        let accepted = accepted_codecs(&agent_offer, &answer_pcma_te100());
        let mut customer_offer = audio_offer(v4(198, 51, 100, 4), 20002, 2, Codec::DEFAULTS);
        assert!(customer_offer.retain_audio_codecs(&accepted));
        let audio = customer_offer.first_audio().unwrap();
        assert_eq!(audio.formats, ["8", "101"]);
        assert_eq!(audio.fmtp(101), Some("0-16"));
        assert_eq!(audio.fmtp(111), None);
        assert_eq!(audio.rtpmap(0), None);
        assert_eq!(audio.port, 20002);
        assert!(!text(&customer_offer).contains("opus"));

        assert!(!customer_offer.clone().retain_audio_codecs(&[]));
        assert!(!parse(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=video 5000 RTP/AVP 31\r\n"
        )
        .retain_audio_codecs(&accepted));
    }

    #[test]
    fn rfc_order_and_defaults_when_written() {
        // Lines out of order, unknown types, no s= and no t=, a repeat time.
        let sdp = parse(
            "v=0\no=- 1 2 IN IP4 192.0.2.1\na=recvonly\nc=IN IP4 192.0.2.1\ni=info\n\
             x=unknown\nb=CT:100\nz=2882844526 -1h\nu=http://example.com/s\n\
             m=audio 5000/2 RTP/AVP 0\na=ptime:30\nb=AS:64\ni=title\nc=IN IP4 192.0.2.2\n\
             y=media unknown\n",
        );
        assert_eq!(sdp.session_name, "-");
        assert_eq!(sdp.media[0].port_count, Some(2));
        assert_eq!(sdp.timing(), None);
        assert_eq!(
            text(&sdp),
            "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\ni=info\r\nu=http://example.com/s\r\n\
             c=IN IP4 192.0.2.1\r\nb=CT:100\r\nt=0 0\r\nz=2882844526 -1h\r\nx=unknown\r\n\
             a=recvonly\r\nm=audio 5000/2 RTP/AVP 0\r\ni=title\r\nc=IN IP4 192.0.2.2\r\n\
             b=AS:64\r\ny=media unknown\r\na=ptime:30\r\n"
        );
        // t= and r= keep their pairing.
        let timed = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=1 2\r\nr=604800 3600 0\r\n\
                     t=3 4\r\nr=7d 1h 0 25h\r\nk=prompt\r\n";
        assert_eq!(text(&parse(timed)), timed);
        assert_eq!(parse(timed).timing(), Some((1, 2)));
    }

    #[test]
    fn odd_but_valid_input() {
        // A username with a space, a second c= line, an empty attribute value, BOM.
        let sdp = parse(
            "\u{feff}v=0\r\no=Alice Smith 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 224.2.1.1/127/3\r\n\
             c=IN IP4 224.2.1.4/127\r\nt=0 0\r\na=x-empty:\r\nm=audio 5000 RTP/AVP 0\r\n",
        );
        assert_eq!(sdp.origin.username, "Alice Smith");
        assert_eq!(sdp.origin.session_id, "1");
        assert_eq!(
            sdp.connection.as_ref().and_then(Connection::ip),
            Some(v4(224, 2, 1, 1))
        );
        assert_eq!(sdp.other_lines[0].kind, 'c');
        assert_eq!(sdp.attributes[0], Attribute::new("x-empty", ""));
        let written = text(&sdp);
        assert!(written.starts_with("v=0\r\no=Alice Smith 1 2 IN IP4 192.0.2.1\r\n"));
        assert!(written.contains(
            "c=IN IP4 224.2.1.1/127/3\r\nc=IN IP4 224.2.1.4/127\r\nt=0 0\r\na=x-empty:\r\n"
        ));
        // A description with no media at all is valid.
        let none = parse("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n");
        assert!(none.media.is_empty() && none.first_audio().is_none() && !none.is_hold());
        let mut bumped = none.clone();
        bumped.origin.session_version = u64::MAX;
        bumped.bump_version();
        assert_eq!(bumped.origin.session_version, 0);
    }

    #[test]
    fn garbage_is_an_error() {
        let cases: &[(&[u8], SdpError)] = &[
            (b"", SdpError::MissingVersion),
            (b"\r\n\r\n", SdpError::MissingVersion),
            (b"o=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::MissingVersion),
            (b"hello world", SdpError::MissingVersion),
            (b"v=1\r\n", SdpError::UnsupportedVersion { line: 1 }),
            (b"v=0\r\n", SdpError::MissingOrigin),
            (
                b"v=0\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n",
                SdpError::MissingOrigin,
            ),
            (
                b"v=0\r\no=- 1 IN IP4 1.2.3.4\r\n",
                SdpError::BadOrigin { line: 2 },
            ),
            (
                b"v=0\r\no=- 1 x IN IP4 1.2.3.4\r\n",
                SdpError::BadOrigin { line: 2 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4\r\n",
                SdpError::BadConnection { line: 3 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 a b\r\n",
                SdpError::BadConnection { line: 4 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 6000\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 6000/x RTP/AVP 0\r\n",
                SdpError::BadMedia { line: 3 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\nm=video\r\n",
                SdpError::BadMedia { line: 4 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n\r\ngarbage\r\n",
                SdpError::MalformedLine { line: 4 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nab=c\r\n",
                SdpError::MalformedLine { line: 3 },
            ),
            (
                b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=\xff\r\n",
                SdpError::NotUtf8 { line: 3 },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                SessionDescription::parse(input).as_ref(),
                Err(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            SdpError::BadMedia { line: 3 }.to_string(),
            "line 3: malformed m= line"
        );
    }

    /// Whatever parses is written as SDP that parses again to the same text.
    fn check_no_panic_and_stable(input: &[u8]) {
        if let Ok(sdp) = SessionDescription::parse(input) {
            let once = sdp.to_bytes();
            let again = SessionDescription::parse(&once)
                .unwrap_or_else(|e| panic!("{e} re-reading {:?}", String::from_utf8_lossy(&once)));
            assert_eq!(again.to_bytes(), once);
        }
    }

    #[test]
    fn truncated_at_every_byte() {
        let mut parsed = 0;
        for fixture in FIXTURES {
            let bytes = fixture.as_bytes();
            for end in 0..=bytes.len() {
                check_no_panic_and_stable(&bytes[..end]);
                parsed += usize::from(SessionDescription::parse(&bytes[..end]).is_ok());
            }
        }
        // Truncation after the o= line and before an m= line are complete parses too.
        assert!(parsed > 100, "{parsed}");
    }

    #[test]
    fn mutated_inputs_never_panic() {
        // xorshift64*: deterministic, no dependency.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        const ALPHABET: &[u8] = b"\r\n =:/ 0123456789amvcoIP4 \xff\xc3";
        for fixture in FIXTURES {
            for _ in 0..2000 {
                let mut bytes = fixture.as_bytes().to_vec();
                let edits = 1 + next() % 4;
                for _ in 0..edits {
                    let len = bytes.len() as u64;
                    let at = (next() % len.max(1)) as usize;
                    match next() % 3 {
                        0 if !bytes.is_empty() => {
                            bytes.remove(at);
                        }
                        1 => bytes.insert(
                            at.min(bytes.len()),
                            ALPHABET[(next() % ALPHABET.len() as u64) as usize],
                        ),
                        _ if !bytes.is_empty() => {
                            bytes[at] = ALPHABET[(next() % ALPHABET.len() as u64) as usize]
                        }
                        _ => {}
                    }
                }
                check_no_panic_and_stable(&bytes);
            }
        }
    }
}
