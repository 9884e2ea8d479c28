//! The rows the store keeps, as plain Rust values.
//!
//! Times are Unix time: `*_ms` fields in milliseconds (calls, timelines, the callback outbox,
//! idempotency records), binding times in seconds (SIP `Expires` counts seconds).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Milliseconds since the Unix epoch.
pub type UnixMs = i64;
/// Seconds since the Unix epoch.
pub type UnixSecs = i64;

/// A tenant: owns users, numbers, API keys, private trunks and calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// TypeID `acct_…`.
    pub id: String,
    pub name: String,
    /// ISO 3166-1 alpha-2 country used to normalise local dial strings.
    pub region: String,
    /// HMAC key that signs this account's callbacks. Kept retrievable (it must sign), never
    /// logged.
    pub webhook_secret: Secret,
    /// E.164 prefixes (`+1`, `+44`) this account may dial: a filter on top of
    /// `allowed_countries` and `blocked_number_types`.
    pub allowed_prefixes: Vec<String>,
    /// How fast and how many calls this account may place.
    pub limits: AccountLimits,
    /// ISO 3166-1 alpha-2 countries whose numbers this account may dial (by the number's
    /// country in libphonenumber's metadata, so `+1 876` is `JM`, not `US`).
    pub allowed_countries: Vec<String>,
    /// Kinds of number this account may not dial, in any country.
    pub blocked_number_types: Vec<NumberType>,
    /// The platform account this account is connected to (SPEC §9.3): its secret keys may
    /// act for this account with the `Dialbridge-Account` header.
    pub platform: Option<String>,
    /// Where the callbacks of calls not placed through the API go (inbound calls, calls
    /// from phones: SPEC §9.7); `None`: such calls send none.
    pub callback_url: Option<String>,
    /// Every call of the account asks the agent to confirm with DTMF `1` before the
    /// customer is dialled (SPEC §9.4), unless the request says otherwise.
    pub confirm_calls: bool,
    /// Every call of the account is recorded (SPEC §9.4), unless the request says otherwise.
    pub record_calls: bool,
}

/// A publishable key (`pk_…`, SPEC §9.3): a public identifier of an account that a browser
/// SDK is loaded with. It grants nothing by itself; a client secret must come with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishableKey {
    pub key: String,
    pub account_id: String,
    /// `config` (provisioned from `[[accounts]] publishable_keys`) or `api` (admin API).
    pub source: String,
    pub created_at_ms: UnixMs,
}

/// An account's call limits (SPEC §9.1): a token bucket for the call rate and a cap on the
/// calls in progress. Kept per account in the store; set by `[[accounts]]` and the admin API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountLimits {
    /// Sustained calls per second (may be fractional: `0.5` is one call every 2 s).
    pub calls_per_second: f64,
    /// Calls that may start at once after a quiet period (the bucket's size).
    pub burst: u32,
    /// Calls of the account in progress at the same time.
    pub max_concurrent: u32,
}

impl AccountLimits {
    /// `calls_per_second` when none is configured.
    pub const DEFAULT_CALLS_PER_SECOND: f64 = 5.0;
    /// `burst` when none is configured.
    pub const DEFAULT_BURST: u32 = 20;
    /// `max_concurrent` when none is configured.
    pub const DEFAULT_MAX_CONCURRENT: u32 = 100;
    /// Largest `calls_per_second` accepted (far above what one node can place).
    pub const MAX_CALLS_PER_SECOND: f64 = 100_000.0;

    /// Checks each value; returns the field name and the reason of every problem.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let cps = self.calls_per_second;
        if !cps.is_finite() || cps <= 0.0 || cps > Self::MAX_CALLS_PER_SECOND {
            out.push((
                "calls_per_second",
                format!(
                    "must be a number above 0 and at most {}",
                    Self::MAX_CALLS_PER_SECOND
                ),
            ));
        }
        if self.burst == 0 {
            out.push(("burst", "must be at least 1".to_owned()));
        }
        if self.max_concurrent == 0 {
            out.push(("max_concurrent", "must be at least 1".to_owned()));
        }
        out
    }
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            calls_per_second: Self::DEFAULT_CALLS_PER_SECOND,
            burst: Self::DEFAULT_BURST,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
        }
    }
}

/// An account's token bucket for its call rate, as the store keeps it (one row per account,
/// shared by every node on the database). The arithmetic lives here, once, for both backends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBucket {
    /// Tokens left after the last call taken (fractional: refilled continuously).
    pub tokens: f64,
    /// When `tokens` was computed (milliseconds since the Unix epoch). Never moves back: a
    /// node whose clock is behind refills nothing until its clock passes it.
    pub at_ms: UnixMs,
}

impl RateBucket {
    /// Takes one token for a call at `now_ms` from `bucket` (`None`: never used, born full),
    /// refilled at `limits.calls_per_second` since its `at_ms` and capped at `limits.burst`
    /// (so a lowered burst applies at the next call). The bucket to store on success; the
    /// seconds until a token is back (at least 1) when none is left.
    pub fn take(
        bucket: Option<RateBucket>,
        limits: &AccountLimits,
        now_ms: UnixMs,
    ) -> Result<RateBucket, u64> {
        let cap = f64::from(limits.burst.max(1));
        let (tokens, at_ms) = match bucket {
            None => (cap, now_ms),
            Some(b) => {
                let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
                let refilled = b.tokens + elapsed * limits.calls_per_second;
                (refilled.min(cap), b.at_ms.max(now_ms))
            }
        };
        if tokens < 1.0 {
            let missing = 1.0 - tokens;
            let secs = if limits.calls_per_second > 0.0 {
                (missing / limits.calls_per_second).ceil() as u64
            } else {
                60
            };
            return Err(secs.max(1));
        }
        Ok(RateBucket {
            tokens: tokens - 1.0,
            at_ms,
        })
    }
}

/// What [`Store::admit_call`](crate::Store::admit_call) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Written: the call holds a slot until its status is final, and took a token.
    Admitted,
    /// The account has `max_concurrent` unfinished calls (of every node).
    Concurrency,
    /// The account's token bucket is empty; a token is back in `retry_after_secs`.
    Rate { retry_after_secs: u64 },
}

/// A new call to admit inside a batch of call writes
/// ([`Store::write_call_batch_admitting_here`](crate::Store::write_call_batch_admitting_here)):
/// what [`Store::admit_call`](crate::Store::admit_call) takes.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    /// The new call's record and its first timeline entry.
    pub writes: Vec<CallWrite>,
    /// The account's limits, as read with the account.
    pub limits: AccountLimits,
    /// When the request came (the rate bucket's clock).
    pub now_ms: UnixMs,
}

/// The kind of a telephone number, as libphonenumber's metadata classifies it. Spelled in
/// snake case in configuration and the API (`premium_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberType {
    FixedLine,
    Mobile,
    /// Where the number cannot tell (the NANP).
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    Voip,
    PersonalNumber,
    Pager,
    /// Universal access ("company") numbers.
    Uan,
    Voicemail,
    /// Not in any range of the metadata (the number is then invalid).
    Unknown,
}

impl NumberType {
    /// Every type, in the order libphonenumber tests them.
    pub const ALL: [NumberType; 12] = [
        NumberType::FixedLine,
        NumberType::Mobile,
        NumberType::FixedLineOrMobile,
        NumberType::TollFree,
        NumberType::PremiumRate,
        NumberType::SharedCost,
        NumberType::Voip,
        NumberType::PersonalNumber,
        NumberType::Pager,
        NumberType::Uan,
        NumberType::Voicemail,
        NumberType::Unknown,
    ];

    /// The types blocked when an account does not say: the ones that cost the caller more
    /// than a call, or that forward to wherever their owner wants.
    pub const DEFAULT_BLOCKED: [NumberType; 4] = [
        NumberType::PremiumRate,
        NumberType::SharedCost,
        NumberType::PersonalNumber,
        NumberType::Uan,
    ];

    /// The configuration and API spelling: `fixed_line`, `premium_rate`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            NumberType::FixedLine => "fixed_line",
            NumberType::Mobile => "mobile",
            NumberType::FixedLineOrMobile => "fixed_line_or_mobile",
            NumberType::TollFree => "toll_free",
            NumberType::PremiumRate => "premium_rate",
            NumberType::SharedCost => "shared_cost",
            NumberType::Voip => "voip",
            NumberType::PersonalNumber => "personal_number",
            NumberType::Pager => "pager",
            NumberType::Uan => "uan",
            NumberType::Voicemail => "voicemail",
            NumberType::Unknown => "unknown",
        }
    }
}

impl fmt::Display for NumberType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not the name of a [`NumberType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a number type (one of fixed_line, mobile, fixed_line_or_mobile, toll_free, premium_rate, shared_cost, voip, personal_number, pager, uan, voicemail, unknown)")]
pub struct UnknownNumberType(pub String);

impl FromStr for NumberType {
    type Err = UnknownNumberType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NumberType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownNumberType(s.to_owned()))
    }
}

/// The public half of an API credential; the secret is only stored as a keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key: String,
    pub account_id: String,
}

/// An agent: a person who answers the agent leg on one of their devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// TypeID `user_…`.
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// Internal extension, unique within the account.
    pub extension: Option<String>,
    /// Numeric id used by the JustCall-style API, unique within the account.
    pub agent_id: Option<i64>,
}

/// A SIP device (desk phone, softphone) that registers as `sip:<username>@<realm>`.
///
/// Only the digest HA1 values are kept (RFC 2617 §3.2.2.2 for MD5, RFC 7616 §3.4.2 for
/// SHA-256), computed for `realm`; the clear password is never stored. A change of realm
/// therefore needs the password again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// TypeID `dev_…`.
    pub id: String,
    pub user_id: String,
    /// SIP username; unique across the whole store.
    pub username: String,
    /// The digest realm the HA1 values were computed for.
    pub realm: String,
    /// `MD5(username:realm:password)`, lowercase hex.
    pub ha1_md5: Secret,
    /// `SHA-256(username:realm:password)`, lowercase hex.
    pub ha1_sha256: Secret,
}

/// An E.164 number owned by an account, usable as caller ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    pub number: String,
    pub account_id: String,
    /// The default agent for calls from this number.
    pub owner_user_id: Option<String>,
}

/// SIP transport of a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (SPEC §9.5): the carrier's certificate is verified for its host name.
    Tls,
}

impl Transport {
    /// `"udp"`, `"tcp"` or `"tls"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was none of `udp`, `tcp`, `tls`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transport must be udp, tcp or tls, not {0:?}")]
pub struct UnknownTransport(pub String);

impl FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// Media encryption toward a trunk (SPEC §9.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Srtp {
    /// Plain RTP.
    #[default]
    None,
    /// SRTP keyed by SDES (`a=crypto`, RFC 4568), `AES_CM_128_HMAC_SHA1_80`.
    Sdes,
}

impl Srtp {
    /// `"none"` or `"sdes"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Srtp::None => "none",
            Srtp::Sdes => "sdes",
        }
    }
}

impl fmt::Display for Srtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was neither `none` nor `sdes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("srtp must be none or sdes, not {0:?}")]
pub struct UnknownSrtp(pub String);

impl FromStr for Srtp {
    type Err = UnknownSrtp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Srtp::None),
            "sdes" => Ok(Srtp::Sdes),
            other => Err(UnknownSrtp(other.to_owned())),
        }
    }
}

/// A SIP trunk to a carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    /// Unique name.
    pub name: String,
    /// Owning account; `None` = shared by all accounts.
    pub account_id: Option<String>,
    /// `host:port`, an IP literal or a domain resolved by DNS (NAPTR/SRV/A).
    pub address: String,
    pub transport: Transport,
    /// Digest credentials for when the carrier challenges (UAC side, RFC 3261 §22.2).
    /// Kept in the clear because the challenge's realm is only known at call time.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// This trunk may carry emergency calls.
    pub emergency: bool,
    /// Digits put in front of the dialled number on this trunk.
    pub dial_prefix: Option<String>,
    /// Host part of the From URI towards the carrier.
    pub from_domain: Option<String>,
    /// Failover order, time-outs, health checks and limits (SPEC §9.8).
    pub routing: TrunkRouting,
    /// Media encryption on calls through this trunk.
    pub srtp: Srtp,
}

/// How calls use a trunk: its place in the failover order, when one of its targets is given
/// up for the next, how its targets are health-checked, and its limits (SPEC §9.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRouting {
    /// Lower is tried first.
    pub priority: u32,
    /// A target that sends nothing (not even a provisional response) within this is given up.
    pub invite_timeout_ms: u32,
    /// Final responses after which the next target is tried.
    pub failover_codes: Vec<u16>,
    /// OPTIONS to each target every this many seconds; 0 = no health checks.
    pub options_interval_secs: u32,
    /// Failed checks in a row after which a target is down.
    pub down_after: u32,
    /// Answered checks in a row after which a down target is up again.
    pub up_after: u32,
    /// Calls through this trunk at once (channels); `None` = no cap.
    pub max_calls: Option<u32>,
    /// New calls per second through this trunk; `None` = no cap.
    pub calls_per_second: Option<u32>,
}

impl TrunkRouting {
    pub const DEFAULT_PRIORITY: u32 = 10;
    pub const DEFAULT_INVITE_TIMEOUT_MS: u32 = 2000;
    pub const DEFAULT_FAILOVER_CODES: [u16; 5] = [408, 500, 502, 503, 504];
    pub const DEFAULT_DOWN_AFTER: u32 = 3;
    pub const DEFAULT_UP_AFTER: u32 = 2;

    /// `failover_codes` as stored: comma-separated.
    pub fn failover_codes_text(&self) -> String {
        self.failover_codes
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads `failover_codes` as stored; `None` when a code is not a SIP status (300-699).
    pub fn parse_failover_codes(text: &str) -> Option<Vec<u16>> {
        text.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.parse::<u16>().ok().filter(|c| (300..700).contains(c)))
            .collect()
    }
}

impl Default for TrunkRouting {
    fn default() -> Self {
        TrunkRouting {
            priority: Self::DEFAULT_PRIORITY,
            invite_timeout_ms: Self::DEFAULT_INVITE_TIMEOUT_MS,
            failover_codes: Self::DEFAULT_FAILOVER_CODES.to_vec(),
            options_interval_secs: 0,
            down_after: Self::DEFAULT_DOWN_AFTER,
            up_after: Self::DEFAULT_UP_AFTER,
            max_calls: None,
            calls_per_second: None,
        }
    }
}

/// A registration binding (RFC 3261 §10.3): one Contact of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub device_username: String,
    /// The device's owner. Read back from the device row, so it is always current; the
    /// value given to [`crate::Store::upsert_binding`] is not stored.
    pub user_id: String,
    /// Contact URI as registered.
    pub contact: String,
    /// Where the REGISTER really came from (`ip:port`), for NAT traversal.
    pub source: String,
    /// `udp` or `tcp`.
    pub transport: String,
    /// The local listening address the REGISTER arrived on.
    pub local: String,
    pub expires_at: UnixSecs,
    /// Contact `q` parameter.
    pub q: Option<f32>,
    pub call_id: String,
    pub cseq: u32,
    /// RFC 5626 `+sip.instance`.
    pub instance: Option<String>,
    /// RFC 5626 `reg-id`.
    pub reg_id: Option<u32>,
    pub user_agent: Option<String>,
    pub updated_at: UnixSecs,
    /// RFC 3327 `Path` of the REGISTER (the edge proxies it came through, nearest to this
    /// server first), each value as received: requests to the binding are routed through
    /// them. Empty when it came straight.
    pub path: Vec<String>,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl CallStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [CallStatus; 8] = [
        CallStatus::Queued,
        CallStatus::Ringing,
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::Busy,
        CallStatus::NoAnswer,
        CallStatus::Failed,
        CallStatus::Canceled,
    ];

    /// The API spelling: `queued`, `ringing`, `in-progress`, `completed`, `busy`,
    /// `no-answer`, `failed`, `canceled`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Ringing => "ringing",
            CallStatus::InProgress => "in-progress",
            CallStatus::Completed => "completed",
            CallStatus::Busy => "busy",
            CallStatus::NoAnswer => "no-answer",
            CallStatus::Failed => "failed",
            CallStatus::Canceled => "canceled",
        }
    }

    /// True once the call has ended.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CallStatus::Queued | CallStatus::Ringing | CallStatus::InProgress
        )
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not a call status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status {0:?}")]
pub struct UnknownCallStatus(pub String);

impl FromStr for CallStatus {
    type Err = UnknownCallStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCallStatus(s.to_owned()))
    }
}

/// One click-to-call, as kept in the call log.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    /// TypeID `call_…`.
    pub id: String,
    pub account_id: String,
    /// The agent, when the agent leg targets a user.
    pub user_id: Option<String>,
    /// Request id of the Click-2-Call-style API, when the call came from there.
    pub request_id: Option<String>,
    pub status: CallStatus,
    /// The destination as the API received it.
    pub dial_string: String,
    /// The destination after normalisation (E.164 or extension).
    pub destination: Option<String>,
    pub caller_id: Option<String>,
    pub callback_url: Option<String>,
    /// Which leg ended the call (`agent`, `customer`, `api`, ...).
    pub end_leg: Option<String>,
    /// SIP status code that ended the call, if any.
    pub sip_code: Option<u16>,
    pub created_at_ms: UnixMs,
    pub answered_at_ms: Option<UnixMs>,
    pub ended_at_ms: Option<UnixMs>,
    /// Caller-supplied metadata, returned as given.
    pub metadata: serde_json::Value,
    /// Per-leg details (Call-IDs, contacts, trunk, codecs).
    pub legs: serde_json::Value,
    /// Media statistics per leg.
    pub stats: serde_json::Value,
    /// The node that owns the call (`[node] id`: it placed the call and runs its legs);
    /// `None` for calls written before nodes were recorded. Set at insert, never changed.
    pub node_id: Option<String>,
    /// `outbound` (placed through the API) or `inbound` (an INVITE from a trunk).
    pub direction: String,
    /// The call's recording (`state`, `file`, `duration`, `size`, `error`), `null` when the
    /// call is not recorded.
    pub recording: serde_json::Value,
}

impl CallRecord {
    /// A new call in `queued` state with empty JSON blobs.
    pub fn new(
        id: String,
        account_id: String,
        dial_string: String,
        created_at_ms: UnixMs,
    ) -> CallRecord {
        CallRecord {
            id,
            account_id,
            user_id: None,
            request_id: None,
            status: CallStatus::Queued,
            dial_string,
            destination: None,
            caller_id: None,
            callback_url: None,
            end_leg: None,
            sip_code: None,
            created_at_ms,
            answered_at_ms: None,
            ended_at_ms: None,
            metadata: serde_json::Value::Null,
            legs: serde_json::Value::Null,
            stats: serde_json::Value::Null,
            node_id: None,
            direction: "outbound".to_owned(),
            recording: serde_json::Value::Null,
        }
    }

    /// Whole seconds from answer to end, once both are known.
    pub fn duration_secs(&self) -> Option<i64> {
        match (self.answered_at_ms, self.ended_at_ms) {
            (Some(a), Some(e)) if e >= a => Some((e - a) / 1000),
            _ => None,
        }
    }
}

/// A node's lease in the store: nodes sharing one database each keep theirs alive
/// (heartbeat); a node whose lease lapses is taken to be dead, and another node ends its
/// calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLease {
    /// `[node] id`.
    pub node_id: String,
    /// This run of the node (new at every start): tells a restart of the node from a second
    /// process started with the same id.
    pub instance: String,
    /// `[node] api_url`: how other nodes reach this one.
    pub api_url: String,
    /// The lease holds until then.
    pub until_ms: UnixMs,
}

/// Which calls to list; newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFilter {
    pub account_id: String,
    pub status: Option<CallStatus>,
    pub user_id: Option<String>,
    /// Calls created at or after this time.
    pub since_ms: Option<UnixMs>,
    /// Calls created before this time.
    pub until_ms: Option<UnixMs>,
    /// Page size; clamped to `1..=`[`CallFilter::MAX_LIMIT`].
    pub limit: u32,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl CallFilter {
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 1000;

    /// All calls of an account, `limit` per page.
    pub fn new(account_id: impl Into<String>, limit: u32) -> CallFilter {
        CallFilter {
            account_id: account_id.into(),
            status: None,
            user_id: None,
            since_ms: None,
            until_ms: None,
            limit,
            cursor: None,
        }
    }
}

/// One step in a call's timeline: the API request, a SIP message of a leg, a callback
/// attempt, ...
///
/// Serialized (`{"at_ms", "kind", "leg", "detail"}`, no `leg` when `None`) in SQLite's
/// `call_timeline.more`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineEntry {
    pub at_ms: UnixMs,
    /// What happened, e.g. `api.request`, `sip.invite.sent`, `sip.response`, `callback`.
    pub kind: String,
    /// `agent`, `customer`, or `None` for call-wide steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    pub detail: Detail,
}

/// A timeline entry's detail: a JSON object, kept as the text it is written as.
///
/// A call writes a timeline entry for every SIP message of its legs; the entry's detail goes
/// to the store's row and to the live event stream as this text, made once from the event
/// (no tree of values between the event and its row). Readers that look inside parse it
/// ([`Detail::to_value`], [`Detail::get`]). Two details are equal when their JSON values are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Detail(Box<serde_json::value::RawValue>);

impl Detail {
    /// The detail written by `value`'s serialization.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Detail, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Detail)
    }

    /// `text` checked to be JSON.
    pub fn from_json(text: String) -> Result<Detail, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Detail)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The detail as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The value of one of the object's fields.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        match self.to_value() {
            serde_json::Value::Object(mut o) => o.remove(key),
            _ => None,
        }
    }
}

impl From<serde_json::Value> for Detail {
    fn from(v: serde_json::Value) -> Detail {
        // A `Value` always serializes (its map keys are strings).
        Detail::of(&v).unwrap_or_else(|_| Detail(serde_json::value::RawValue::NULL.to_owned()))
    }
}

impl PartialEq for Detail {
    fn eq(&self, other: &Detail) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

/// Delivery state of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting for (another) delivery attempt.
    Pending,
    /// Delivered; kept for the call's timeline.
    Delivered,
    /// Given up on; no further attempts.
    Abandoned,
}

impl OutboxState {
    fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Abandoned => "abandoned",
        }
    }

    pub(crate) fn to_sql(self) -> &'static str {
        self.as_str()
    }

    pub(crate) fn from_sql(s: &str) -> Option<OutboxState> {
        match s {
            "pending" => Some(OutboxState::Pending),
            "delivered" => Some(OutboxState::Delivered),
            "abandoned" => Some(OutboxState::Abandoned),
            _ => None,
        }
    }
}

/// A status callback waiting in the outbox. Callbacks of one call are handed out in `seq`
/// order: a later one is not due until every earlier one is delivered or abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Unique event id (TypeID `evt_…`), sent with the callback.
    pub event_id: String,
    pub call_id: String,
    pub account_id: String,
    /// Per-call sequence number, from 1.
    pub seq: i64,
    pub url: String,
    /// The JSON body exactly as it will be signed and sent.
    pub body: String,
    pub next_attempt_at_ms: UnixMs,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub state: OutboxState,
    pub created_at_ms: UnixMs,
}

impl OutboxEntry {
    /// A fresh pending entry, due at `created_at_ms`.
    pub fn new(
        event_id: String,
        call_id: String,
        account_id: String,
        seq: i64,
        url: String,
        body: String,
        created_at_ms: UnixMs,
    ) -> OutboxEntry {
        OutboxEntry {
            event_id,
            call_id,
            account_id,
            seq,
            url,
            body,
            next_attempt_at_ms: created_at_ms,
            attempts: 0,
            last_error: None,
            state: OutboxState::Pending,
            created_at_ms,
        }
    }
}

/// A stored response for an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub account_id: String,
    pub key: String,
    /// Hash of the request body, to detect the same key reused for another request.
    pub request_hash: String,
    pub response_status: u16,
    pub response_body: String,
    pub created_at_ms: UnixMs,
}

/// One write of the call event path, applied with others in one transaction
/// ([`crate::Store::write_call_batch`]).
// A batch's writes are built once, written once and dropped: boxing the call record would
// add an allocation per touched call for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CallWrite {
    /// A timeline entry of a call.
    Timeline {
        call_id: String,
        entry: TimelineEntry,
    },
    /// A new call record (as `insert_call`: a call that exists is refused).
    NewCall(CallRecord),
    /// The call's progress: what its events change (status, end leg, SIP code, answer and
    /// end times, legs, stats, recording). What was fixed when it was placed (user, request
    /// id, dial string, destination, caller id, callback URL, metadata) stays as stored;
    /// `update_call` writes the whole record.
    Call(CallRecord),
    /// As [`CallWrite::Call`], for a call whose status is not the one stored (a backend
    /// may write a status change differently; both variants are correct either way).
    CallStatus(CallRecord),
    /// A callback into the outbox.
    Callback(OutboxEntry),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(calls_per_second: f64, burst: u32) -> AccountLimits {
        AccountLimits {
            calls_per_second,
            burst,
            max_concurrent: 100,
        }
    }

    /// A bucket taken from `n` times at `now_ms`, starting from `b`: the bucket after, and how
    /// many takes passed.
    fn take_n(
        mut b: Option<RateBucket>,
        l: &AccountLimits,
        now_ms: i64,
        n: usize,
    ) -> (Option<RateBucket>, usize) {
        let mut passed = 0;
        for _ in 0..n {
            if let Ok(next) = RateBucket::take(b, l, now_ms) {
                b = Some(next);
                passed += 1;
            }
        }
        (b, passed)
    }

    #[test]
    fn a_bucket_is_born_full_and_refills_at_the_rate_up_to_the_burst() {
        let l = limits(2.0, 3);
        let (b, passed) = take_n(None, &l, 0, 5);
        assert_eq!(passed, 3);
        assert_eq!(RateBucket::take(b, &l, 0), Err(1));
        // Half a second later one token is back (2 per second).
        let (b, passed) = take_n(b, &l, 500, 3);
        assert_eq!(passed, 1);
        // A long pause refills only up to the burst.
        let (_, passed) = take_n(b, &l, 100_000, 10);
        assert_eq!(passed, 3);
    }

    #[test]
    fn a_slow_rate_asks_for_a_longer_wait() {
        let l = limits(0.1, 1);
        let b = RateBucket::take(None, &l, 0).unwrap();
        assert_eq!(RateBucket::take(Some(b), &l, 0), Err(10));
        assert_eq!(RateBucket::take(Some(b), &l, 5_000), Err(5));
    }

    #[test]
    fn changed_limits_apply_at_the_next_call() {
        let before = limits(1.0, 1);
        let (b, _) = take_n(None, &before, 0, 1);
        // Raised: refills at the new rate (10/s: one token per 100 ms), up to the new burst.
        let raised = limits(10.0, 5);
        assert!(RateBucket::take(b, &raised, 50).is_err());
        let (b, passed) = take_n(b, &raised, 150, 3);
        assert_eq!(passed, 1);
        let (b, passed) = take_n(b, &raised, 2_000, 9);
        assert_eq!(passed, 5);
        // Lowered: a full bucket is capped at the new burst.
        let lowered = limits(1.0, 2);
        let (_, passed) = take_n(b, &lowered, 60_000, 9);
        assert_eq!(passed, 2);
    }

    #[test]
    fn a_clock_behind_the_bucket_refills_nothing_and_does_not_move_it_back() {
        let l = limits(1.0, 2);
        let (b, _) = take_n(None, &l, 10_000, 2);
        // A node whose clock says 5 s earlier: no token, and the bucket keeps its time.
        assert_eq!(RateBucket::take(b, &l, 5_000), Err(1));
        // One second after the bucket's time, on any clock: one token.
        let next = RateBucket::take(b, &l, 11_000).unwrap();
        assert_eq!(next.at_ms, 11_000);
        assert!(RateBucket::take(Some(next), &l, 11_000).is_err());
        let b = RateBucket {
            tokens: 1.5,
            at_ms: 20_000,
        };
        assert_eq!(
            RateBucket::take(Some(b), &l, 19_000),
            Ok(RateBucket {
                tokens: 0.5,
                at_ms: 20_000
            })
        );
    }
}
