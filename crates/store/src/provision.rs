//! Declarative provisioning: the `[[accounts]]`, `[[users]]`, `[[trunks]]` and `[[numbers]]`
//! tables of the configuration (SPEC §3), their validation, and the report of an upsert.
//!
//! [`Provisioning::validate`] checks the tables on their own, before anything touches the
//! store: every reference must resolve inside the configuration itself, and every problem is
//! reported with its key path (`users[1].account`) and a reason. No reason ever quotes a
//! secret.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::e164::{is_e164, is_e164_prefix};
use crate::model::{AccountLimits, NumberType, Srtp, Transport, TrunkRouting};
use crate::secret::Secret;
use crate::typeid::TypeId;

/// TypeID prefix of accounts.
pub const ACCOUNT_PREFIX: &str = "acct";
/// TypeID prefix of users.
pub const USER_PREFIX: &str = "user";
/// TypeID prefix of devices.
pub const DEVICE_PREFIX: &str = "dev";

/// Checks the form of a publishable key: `pk_` then 8 to 120 letters, digits or `_`.
pub fn check_publishable_key(key: &str) -> Result<(), String> {
    let rest = key
        .strip_prefix("pk_")
        .ok_or_else(|| "a publishable key starts with \"pk_\"".to_owned())?;
    if !(8..=120).contains(&rest.len())
        || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(
            "a publishable key is \"pk_\" then 8 to 120 letters, digits or underscores".to_owned(),
        );
    }
    Ok(())
}

/// An `[[accounts]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    pub id: String,
    pub name: String,
    pub region: String,
    #[serde(default)]
    pub api_keys: Vec<ApiKeySpec>,
    pub webhook_secret: Secret,
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
    /// Call limits (SPEC §9.1). A limit the file leaves out takes its default on a new
    /// account and stays as it is on an existing one (the admin API may have changed it); a
    /// limit the file sets is applied at every start.
    #[serde(default)]
    pub calls_per_second: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// ISO 3166-1 alpha-2 codes; absent: the account's `region` only.
    #[serde(default)]
    pub allowed_countries: Option<Vec<String>>,
    /// [`NumberType`] names; absent: [`NumberType::DEFAULT_BLOCKED`].
    #[serde(default)]
    pub blocked_number_types: Option<Vec<String>>,
    /// Publishable keys (`pk_…`, SPEC §9.3): public identifiers a browser SDK is loaded
    /// with. Keys the file lists are created; keys it used to list are removed; keys made
    /// through the admin API are kept.
    #[serde(default)]
    pub publishable_keys: Vec<String>,
    /// The platform account (`acct_…`) this account is connected to: that platform's secret
    /// keys may act for this account with the `Dialbridge-Account` header.
    #[serde(default)]
    pub platform: Option<String>,
    /// The default callback URL of calls not placed through the API (inbound calls, calls
    /// from phones).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Every call asks the agent to confirm with DTMF `1` unless its request says otherwise.
    #[serde(default)]
    pub confirm_calls: bool,
    /// Every call is recorded unless its request says otherwise.
    #[serde(default)]
    pub record_calls: bool,
}

impl AccountSpec {
    /// `base` with the limits this entry sets.
    pub fn limits_over(&self, base: AccountLimits) -> AccountLimits {
        AccountLimits {
            calls_per_second: self.calls_per_second.unwrap_or(base.calls_per_second),
            burst: self.burst.unwrap_or(base.burst),
            max_concurrent: self.max_concurrent.unwrap_or(base.max_concurrent),
        }
    }

    /// `allowed_countries` with its default applied.
    pub fn allowed_countries(&self) -> Vec<String> {
        match &self.allowed_countries {
            Some(list) => list.clone(),
            None => vec![self.region.clone()],
        }
    }

    /// `blocked_number_types` with its default applied; names that are not types (refused
    /// by [`Provisioning::validate`]) are left out.
    pub fn blocked_number_types(&self) -> Vec<NumberType> {
        match &self.blocked_number_types {
            Some(list) => list.iter().filter_map(|t| t.parse().ok()).collect(),
            None => NumberType::DEFAULT_BLOCKED.to_vec(),
        }
    }
}

/// One `{ key, secret }` of `api_keys`. The key list of a provisioned account is authoritative:
/// keys of that account missing from the list are revoked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub key: String,
    pub secret: Secret,
}

/// A `[[users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub id: String,
    pub account: String,
    pub name: String,
    #[serde(default)]
    pub extension: Option<String>,
    #[serde(default)]
    pub agent_id: Option<i64>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
}

/// One `{ username, password }` of `devices`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub username: String,
    pub password: Secret,
}

/// A `[[trunks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSpec {
    pub name: String,
    /// Omitted: shared by all accounts.
    #[serde(default)]
    pub account: Option<String>,
    pub address: String,
    /// `udp` (default), `tcp` or `tls`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// `none` (default) or `sdes`: SRTP keyed by `a=crypto` (needs `transport = "tls"`).
    #[serde(default)]
    pub srtp: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub dial_prefix: Option<String>,
    #[serde(default)]
    pub from_domain: Option<String>,
    /// Failover order: lower first (default 10).
    #[serde(default)]
    pub priority: Option<u32>,
    /// A target silent this long (no provisional response) is given up (default 2000).
    #[serde(default)]
    pub invite_timeout_ms: Option<u32>,
    /// Final responses after which the next target is tried (default 408, 500, 502, 503, 504).
    #[serde(default)]
    pub failover_codes: Option<Vec<u16>>,
    /// OPTIONS health checks every this many seconds; 0 (default) = off.
    #[serde(default)]
    pub options_interval_secs: Option<u32>,
    /// Failed checks in a row before a target is down (default 3).
    #[serde(default)]
    pub down_after: Option<u32>,
    /// Answered checks in a row before a down target is up again (default 2).
    #[serde(default)]
    pub up_after: Option<u32>,
    /// Calls through the trunk at once; absent = no cap.
    #[serde(default)]
    pub max_calls: Option<u32>,
    /// New calls per second through the trunk; absent = no cap.
    #[serde(default)]
    pub calls_per_second: Option<u32>,
}

impl TrunkSpec {
    /// The media encryption (`none` when absent or not valid: validation reports that).
    pub fn srtp(&self) -> Srtp {
        self.srtp
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }

    /// The routing settings, with the defaults of SPEC §9.8 for what is absent.
    pub fn routing(&self) -> TrunkRouting {
        let d = TrunkRouting::default();
        TrunkRouting {
            priority: self.priority.unwrap_or(d.priority),
            invite_timeout_ms: self.invite_timeout_ms.unwrap_or(d.invite_timeout_ms),
            failover_codes: self.failover_codes.clone().unwrap_or(d.failover_codes),
            options_interval_secs: self
                .options_interval_secs
                .unwrap_or(d.options_interval_secs),
            down_after: self.down_after.unwrap_or(d.down_after),
            up_after: self.up_after.unwrap_or(d.up_after),
            max_calls: self.max_calls,
            calls_per_second: self.calls_per_second,
        }
    }
}

/// What is wrong with a trunk's routing settings, as (field, reason) pairs.
pub fn routing_issues(r: &TrunkRouting) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !(100..=60_000).contains(&r.invite_timeout_ms) {
        out.push(("invite_timeout_ms", "must be 100 to 60000".to_owned()));
    }
    if let Some(c) = r.failover_codes.iter().find(|c| !(300..700).contains(*c)) {
        out.push((
            "failover_codes",
            format!("{c} is not a SIP final failure status (300-699)"),
        ));
    }
    if r.options_interval_secs > 86_400 {
        out.push(("options_interval_secs", "must be 0 to 86400".to_owned()));
    }
    if !(1..=100).contains(&r.down_after) {
        out.push(("down_after", "must be 1 to 100".to_owned()));
    }
    if !(1..=100).contains(&r.up_after) {
        out.push(("up_after", "must be 1 to 100".to_owned()));
    }
    if r.max_calls == Some(0) {
        out.push((
            "max_calls",
            "must be at least 1 (omit it for no cap)".to_owned(),
        ));
    }
    if r.calls_per_second == Some(0) {
        out.push((
            "calls_per_second",
            "must be at least 1 (omit it for no cap)".to_owned(),
        ));
    }
    out
}

fn default_transport() -> String {
    "udp".to_owned()
}

/// A `[[numbers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberSpec {
    pub number: String,
    pub account: String,
    #[serde(default)]
    pub owner: Option<String>,
}

/// The four provisioning tables of a configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    #[serde(default)]
    pub accounts: Vec<AccountSpec>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub trunks: Vec<TrunkSpec>,
    #[serde(default)]
    pub numbers: Vec<NumberSpec>,
}

/// One problem in the provisioning tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `users[1].devices[0].username`.
    pub key: String,
    /// Why it is refused.
    pub reason: String,
}

impl ConfigIssue {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The issues as one line, `; `-separated.
    pub fn join(issues: &[ConfigIssue]) -> String {
        issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// What one kind of object went through during [`crate::Store::apply_provisioning`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Only API keys are removed (revoked when dropped from their account's list).
    pub removed: usize,
}

impl Counts {
    pub(crate) fn record(&mut self, change: Change) {
        match change {
            Change::Created => self.created += 1,
            Change::Updated => self.updated += 1,
            Change::Unchanged => self.unchanged += 1,
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} created, {} updated, {} unchanged",
            self.created, self.updated, self.unchanged
        )?;
        if self.removed > 0 {
            write!(f, ", {} removed", self.removed)?;
        }
        Ok(())
    }
}

/// The outcome of an upsert of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// The result of applying the provisioning tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    pub accounts: Counts,
    pub api_keys: Counts,
    pub users: Counts,
    pub devices: Counts,
    pub trunks: Counts,
    pub numbers: Counts,
}

impl ProvisionReport {
    fn all(&self) -> [Counts; 6] {
        [
            self.accounts,
            self.api_keys,
            self.users,
            self.devices,
            self.trunks,
            self.numbers,
        ]
    }

    /// True when the store already matched the configuration.
    pub fn is_noop(&self) -> bool {
        self.all()
            .iter()
            .all(|c| c.created == 0 && c.updated == 0 && c.removed == 0)
    }

    /// Rows created, all kinds together.
    pub fn total_created(&self) -> usize {
        self.all().iter().map(|c| c.created).sum()
    }

    /// Rows updated, all kinds together.
    pub fn total_updated(&self) -> usize {
        self.all().iter().map(|c| c.updated).sum()
    }
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accounts: {}; api keys: {}; users: {}; devices: {}; trunks: {}; numbers: {}",
            self.accounts, self.api_keys, self.users, self.devices, self.trunks, self.numbers
        )
    }
}

/// ISO 3166-1 alpha-2 codes officially assigned.
const ISO_3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG \
BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY \
CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ \
GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP \
KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU \
MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA \
RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK \
TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// True when `region` is an assigned ISO 3166-1 alpha-2 code in upper case.
pub fn is_iso3166_alpha2(region: &str) -> bool {
    region.len() == 2
        && ISO_3166_ALPHA2
            .split_ascii_whitespace()
            .any(|c| c == region)
}

/// True when `username` can be the user part of a SIP URI without escaping: RFC 3261 §25.1
/// `unreserved` and `user-unreserved` characters, 1 to 64 of them.
pub fn is_sip_username(username: &str) -> bool {
    (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b))
}

/// True when `extension` is 1 to 15 digits.
pub fn is_extension(extension: &str) -> bool {
    (1..=15).contains(&extension.len()) && extension.bytes().all(|b| b.is_ascii_digit())
}

/// True when `name` is 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn is_trunk_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// True when `address` is `ip`, `ip:port`, `[v6]:port`, `domain` or `domain:port`.
pub fn is_trunk_address(address: &str) -> bool {
    if address.parse::<SocketAddr>().is_ok() || address.parse::<IpAddr>().is_ok() {
        return true;
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (address, None),
    };
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return false;
        }
    }
    is_domain_name(host)
}

fn is_domain_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Provisioning {
    /// True when there is nothing to provision.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.users.is_empty()
            && self.trunks.is_empty()
            && self.numbers.is_empty()
    }

    /// Checks the tables for consistency; returns every issue found, in file order.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let accounts = self.validate_accounts(&mut issues);
        let users = self.validate_users(&accounts, &mut issues);
        self.validate_trunks(&accounts, &mut issues);
        self.validate_numbers(&accounts, &users, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// Validates `[[accounts]]`; returns the set of declared account ids.
    fn validate_accounts<'a>(&'a self, issues: &mut Vec<ConfigIssue>) -> HashSet<&'a str> {
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        let mut secrets = HashSet::new();
        let mut pks = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let at = |field: &str| format!("accounts[{i}].{field}");
            if let Err(e) = TypeId::parse_with_prefix(&a.id, ACCOUNT_PREFIX) {
                issues.push(ConfigIssue::new(at("id"), e.to_string()));
            } else if !ids.insert(a.id.as_str()) {
                issues.push(ConfigIssue::new(
                    at("id"),
                    format!("duplicate account id {:?}", a.id),
                ));
            }
            if a.name.trim().is_empty() {
                issues.push(ConfigIssue::new(at("name"), "must not be empty"));
            }
            if !is_iso3166_alpha2(&a.region) {
                issues.push(ConfigIssue::new(
                    at("region"),
                    format!(
                        "region {:?} must be an ISO 3166-1 alpha-2 country code such as \"US\"",
                        a.region
                    ),
                ));
            }
            if a.webhook_secret.is_empty() {
                issues.push(ConfigIssue::new(at("webhook_secret"), "must not be empty"));
            }
            for (j, k) in a.api_keys.iter().enumerate() {
                if k.key.trim().is_empty() {
                    issues.push(ConfigIssue::new(
                        at(&format!("api_keys[{j}].key")),
                        "must not be empty",
                    ));
                } else if !keys.insert(k.key.as_str()) {
                    issues.push(ConfigIssue::new(
                        at(&format!("api_keys[{j}].key")),
                        format!("duplicate API key {:?}", k.key),
                    ));
                }
                if k.secret.is_empty() {
                    issues.push(ConfigIssue::new(
                        at(&format!("api_keys[{j}].secret")),
                        "must not be empty",
                    ));
                } else if !secrets.insert(k.secret.expose()) {
                    issues.push(ConfigIssue::new(
                        at(&format!("api_keys[{j}].secret")),
                        "duplicate API secret (each secret must identify one account)",
                    ));
                }
            }
            for (j, p) in a.allowed_prefixes.iter().enumerate() {
                if !is_e164_prefix(p) {
                    issues.push(ConfigIssue::new(
                        at(&format!("allowed_prefixes[{j}]")),
                        format!("{p:?} is not an E.164 prefix (\"+\" then up to 15 digits)"),
                    ));
                }
            }
            for (field, reason) in a.limits_over(AccountLimits::default()).problems() {
                issues.push(ConfigIssue::new(at(field), reason));
            }
            for (j, c) in a.allowed_countries.iter().flatten().enumerate() {
                if !is_iso3166_alpha2(c) {
                    issues.push(ConfigIssue::new(
                        at(&format!("allowed_countries[{j}]")),
                        format!("{c:?} is not an ISO 3166-1 alpha-2 country code such as \"US\""),
                    ));
                }
            }
            for (j, t) in a.blocked_number_types.iter().flatten().enumerate() {
                if let Err(e) = t.parse::<NumberType>() {
                    issues.push(ConfigIssue::new(
                        at(&format!("blocked_number_types[{j}]")),
                        e.to_string(),
                    ));
                }
            }
            for (j, k) in a.publishable_keys.iter().enumerate() {
                let path = at(&format!("publishable_keys[{j}]"));
                if let Err(reason) = check_publishable_key(k) {
                    issues.push(ConfigIssue::new(path, reason));
                } else if !pks.insert(k.as_str()) {
                    issues.push(ConfigIssue::new(
                        path,
                        format!("duplicate publishable key {k:?}"),
                    ));
                }
            }
            if let Some(u) = &a.callback_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    issues.push(ConfigIssue::new(
                        at("callback_url"),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            if let Some(p) = &a.platform {
                if let Err(e) = TypeId::parse_with_prefix(p, ACCOUNT_PREFIX) {
                    issues.push(ConfigIssue::new(at("platform"), e.to_string()));
                } else if *p == a.id {
                    issues.push(ConfigIssue::new(
                        at("platform"),
                        "an account cannot be its own platform",
                    ));
                }
            }
        }
        ids
    }

    /// Validates `[[users]]`; returns user id -> account id of the declared users.
    fn validate_users<'a>(
        &'a self,
        accounts: &HashSet<&str>,
        issues: &mut Vec<ConfigIssue>,
    ) -> HashMap<&'a str, &'a str> {
        let mut users = HashMap::new();
        let mut extensions = HashSet::new();
        let mut agent_ids = HashSet::new();
        let mut usernames = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let at = |field: &str| format!("users[{i}].{field}");
            if let Err(e) = TypeId::parse_with_prefix(&u.id, USER_PREFIX) {
                issues.push(ConfigIssue::new(at("id"), e.to_string()));
            } else if users.insert(u.id.as_str(), u.account.as_str()).is_some() {
                issues.push(ConfigIssue::new(
                    at("id"),
                    format!("duplicate user id {:?}", u.id),
                ));
            }
            if !accounts.contains(u.account.as_str()) {
                issues.push(ConfigIssue::new(
                    at("account"),
                    format!("unknown account {:?}", u.account),
                ));
            }
            if u.name.trim().is_empty() {
                issues.push(ConfigIssue::new(at("name"), "must not be empty"));
            }
            if let Some(ext) = &u.extension {
                if !is_extension(ext) {
                    issues.push(ConfigIssue::new(
                        at("extension"),
                        format!("extension {ext:?} must be 1 to 15 digits"),
                    ));
                } else if !extensions.insert((u.account.as_str(), ext.as_str())) {
                    issues.push(ConfigIssue::new(
                        at("extension"),
                        format!("duplicate extension {ext:?} in account {:?}", u.account),
                    ));
                }
            }
            if let Some(agent) = u.agent_id {
                if agent <= 0 {
                    issues.push(ConfigIssue::new(
                        at("agent_id"),
                        format!("agent_id {agent} must be a positive integer"),
                    ));
                } else if !agent_ids.insert((u.account.as_str(), agent)) {
                    issues.push(ConfigIssue::new(
                        at("agent_id"),
                        format!("duplicate agent_id {agent} in account {:?}", u.account),
                    ));
                }
            }
            for (j, d) in u.devices.iter().enumerate() {
                if !is_sip_username(&d.username) {
                    issues.push(ConfigIssue::new(
                        at(&format!("devices[{j}].username")),
                        format!(
                            "device username {:?} must be 1 to 64 SIP user characters \
                             (letters, digits, -_.!~*'()&=+$,;?/)",
                            d.username
                        ),
                    ));
                } else if !usernames.insert(d.username.as_str()) {
                    issues.push(ConfigIssue::new(
                        at(&format!("devices[{j}].username")),
                        format!("duplicate device username {:?}", d.username),
                    ));
                }
                if d.password.is_empty() {
                    issues.push(ConfigIssue::new(
                        at(&format!("devices[{j}].password")),
                        "must not be empty",
                    ));
                }
            }
        }
        users
    }

    fn validate_trunks(&self, accounts: &HashSet<&str>, issues: &mut Vec<ConfigIssue>) {
        let mut names = HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            let at = |field: &str| format!("trunks[{i}].{field}");
            if !is_trunk_name(&t.name) {
                issues.push(ConfigIssue::new(
                    at("name"),
                    format!(
                        "trunk name {:?} must be 1 to 64 of A-Z a-z 0-9 - _ .",
                        t.name
                    ),
                ));
            } else if !names.insert(t.name.as_str()) {
                issues.push(ConfigIssue::new(
                    at("name"),
                    format!("duplicate trunk name {:?}", t.name),
                ));
            }
            if let Some(account) = &t.account {
                if !accounts.contains(account.as_str()) {
                    issues.push(ConfigIssue::new(
                        at("account"),
                        format!("unknown account {account:?}"),
                    ));
                }
            }
            if !is_trunk_address(&t.address) {
                issues.push(ConfigIssue::new(
                    at("address"),
                    format!(
                        "address {:?} must be host:port, an IP address or a domain name",
                        t.address
                    ),
                ));
            }
            if let Err(e) = t.transport.parse::<Transport>() {
                issues.push(ConfigIssue::new(at("transport"), e.to_string()));
            }
            match t.srtp.as_deref().map(str::parse::<Srtp>) {
                Some(Err(e)) => issues.push(ConfigIssue::new(at("srtp"), e.to_string())),
                // RFC 4568 §8.3: the keys travel in the SDP, so only over a secure transport.
                Some(Ok(Srtp::Sdes)) if t.transport != "tls" => issues.push(ConfigIssue::new(
                    at("srtp"),
                    "srtp = \"sdes\" needs transport = \"tls\" (the keys travel in the SDP)",
                )),
                _ => {}
            }
            match (&t.username, &t.password) {
                (Some(u), _) if u.is_empty() => {
                    issues.push(ConfigIssue::new(at("username"), "must not be empty"));
                }
                (Some(_), None) => issues.push(ConfigIssue::new(
                    at("password"),
                    "password is required when username is set",
                )),
                (None, Some(_)) => issues.push(ConfigIssue::new(
                    at("username"),
                    "username is required when password is set",
                )),
                _ => {}
            }
            if let Some(p) = &t.dial_prefix {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit() || b"+*#".contains(&b)) {
                    issues.push(ConfigIssue::new(
                        at("dial_prefix"),
                        format!("dial_prefix {p:?} must be digits (and + * #)"),
                    ));
                }
            }
            if let Some(d) = &t.from_domain {
                if !is_domain_name(d) && d.parse::<IpAddr>().is_err() {
                    issues.push(ConfigIssue::new(
                        at("from_domain"),
                        format!("from_domain {d:?} is not a domain name or IP address"),
                    ));
                }
            }
            for (field, reason) in routing_issues(&t.routing()) {
                issues.push(ConfigIssue::new(at(field), reason));
            }
        }
    }

    fn validate_numbers(
        &self,
        accounts: &HashSet<&str>,
        users: &HashMap<&str, &str>,
        issues: &mut Vec<ConfigIssue>,
    ) {
        let mut numbers = HashSet::new();
        for (i, n) in self.numbers.iter().enumerate() {
            let at = |field: &str| format!("numbers[{i}].{field}");
            if !is_e164(&n.number) {
                issues.push(ConfigIssue::new(
                    at("number"),
                    format!("{:?} is not an E.164 number", n.number),
                ));
            } else if !numbers.insert(n.number.as_str()) {
                issues.push(ConfigIssue::new(
                    at("number"),
                    format!("duplicate number {:?}", n.number),
                ));
            }
            if !accounts.contains(n.account.as_str()) {
                issues.push(ConfigIssue::new(
                    at("account"),
                    format!("unknown account {:?}", n.account),
                ));
            }
            if let Some(owner) = &n.owner {
                if let Err(e) = TypeId::parse_with_prefix(owner, USER_PREFIX) {
                    issues.push(ConfigIssue::new(at("owner"), e.to_string()));
                } else {
                    match users.get(owner.as_str()) {
                        None => issues.push(ConfigIssue::new(
                            at("owner"),
                            format!("unknown user {owner:?}"),
                        )),
                        Some(account) if *account != n.account => issues.push(ConfigIssue::new(
                            at("owner"),
                            format!(
                                "user {owner:?} belongs to account {account:?}, not {:?}",
                                n.account
                            ),
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ACCT: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";
    const USER: &str = "user_01h2xcejqtf2nbrexx3vqjhp42";

    pub(crate) const SAMPLE: &str = r#"
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_test_1", secret = "sk_test_1" }]
webhook_secret = "whsec_test_1"
allowed_prefixes = ["+1"]

[[users]]
id = "user_01h2xcejqtf2nbrexx3vqjhp42"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Alice Agent"
extension = "1001"
agent_id = 42
devices = [{ username = "alice-desk", password = "s3cret-desk" },
           { username = "alice-soft", password = "s3cret-soft" }]

[[trunks]]
name = "carrier"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
address = "127.0.0.1:5080"
transport = "udp"
username = "acme"
password = "trunk-pass"

[[numbers]]
number = "+14155551234"
account = "acct_01h2xcejqtf2nbrexx3vqjhp41"
owner = "user_01h2xcejqtf2nbrexx3vqjhp42"
"#;

    fn sample() -> Provisioning {
        toml::from_str(SAMPLE).unwrap()
    }

    fn issues(p: &Provisioning) -> Vec<ConfigIssue> {
        p.validate().unwrap_err()
    }

    fn has(issues: &[ConfigIssue], key: &str, reason: &str) -> bool {
        issues
            .iter()
            .any(|i| i.key == key && i.reason.contains(reason))
    }

    #[test]
    fn spec_example_parses_and_validates() {
        let p = sample();
        assert_eq!(p.accounts.len(), 1);
        assert_eq!(p.users[0].devices.len(), 2);
        assert_eq!(p.users[0].agent_id, Some(42));
        assert_eq!(p.trunks[0].transport, "udp");
        assert!(!p.trunks[0].emergency);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = SAMPLE.replace("agent_id = 42", "agent_id = 42\nagnet = 1");
        let err = toml::from_str::<Provisioning>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("agnet"), "{err}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let dump = format!("{:?}", sample());
        for secret in [
            "sk_test_1",
            "whsec_test_1",
            "s3cret-desk",
            "s3cret-soft",
            "trunk-pass",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked in {dump}");
        }
        assert!(dump.contains("ak_test_1"));
        assert!(dump.contains("alice-desk"));
    }

    #[test]
    fn account_limits_default_and_parse() {
        let p = sample();
        assert_eq!(p.accounts[0].calls_per_second, None);
        assert_eq!(
            p.accounts[0].limits_over(AccountLimits::default()),
            AccountLimits {
                calls_per_second: 5.0,
                burst: 20,
                max_concurrent: 100
            }
        );
        let text = SAMPLE.replace(
            "allowed_prefixes = [\"+1\"]",
            "allowed_prefixes = [\"+1\"]\ncalls_per_second = 2\nmax_concurrent = 7",
        );
        let p: Provisioning = toml::from_str(&text).unwrap();
        assert_eq!(p.validate(), Ok(()));
        // Integers and fractions alike; what the entry leaves out comes from the base.
        let base = AccountLimits {
            calls_per_second: 9.0,
            burst: 9,
            max_concurrent: 9,
        };
        assert_eq!(
            p.accounts[0].limits_over(base),
            AccountLimits {
                calls_per_second: 2.0,
                burst: 9,
                max_concurrent: 7
            }
        );
        let text = SAMPLE.replace(
            "allowed_prefixes = [\"+1\"]",
            "allowed_prefixes = [\"+1\"]\ncalls_per_second = 0.5",
        );
        let p: Provisioning = toml::from_str(&text).unwrap();
        assert_eq!(p.accounts[0].calls_per_second, Some(0.5));
    }

    #[test]
    fn bad_account_limits_are_named() {
        let mut p = sample();
        p.accounts[0].calls_per_second = Some(0.0);
        p.accounts[0].burst = Some(0);
        p.accounts[0].max_concurrent = Some(0);
        let i = issues(&p);
        assert_eq!(i.len(), 3, "{i:?}");
        assert!(has(&i, "accounts[0].calls_per_second", "above 0"), "{i:?}");
        assert!(has(&i, "accounts[0].burst", "at least 1"), "{i:?}");
        assert!(has(&i, "accounts[0].max_concurrent", "at least 1"), "{i:?}");
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e6] {
            let mut p = sample();
            p.accounts[0].calls_per_second = Some(bad);
            let i = issues(&p);
            assert!(has(&i, "accounts[0].calls_per_second", "at most"), "{i:?}");
        }
        // A negative burst is not a u32: refused by the parser, naming the key.
        let text = SAMPLE.replace(
            "allowed_prefixes = [\"+1\"]",
            "allowed_prefixes = [\"+1\"]\nburst = -1",
        );
        let err = toml::from_str::<Provisioning>(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("burst"), "{err}");
    }

    #[test]
    fn user_in_unknown_account() {
        let mut p = sample();
        p.users[0].account = "acct_01h2xcejqtf2nbrexx3vqjhp99".into();
        let i = issues(&p);
        assert!(
            has(
                &i,
                "users[0].account",
                "unknown account \"acct_01h2xcejqtf2nbrexx3vqjhp99\""
            ),
            "{i:?}"
        );
        // The number owned by that user now crosses accounts.
        assert!(has(&i, "numbers[0].owner", "belongs to account"), "{i:?}");
    }

    #[test]
    fn duplicate_device_username_across_users() {
        let mut p = sample();
        let mut bob = p.users[0].clone();
        bob.id = "user_01h2xcejqtf2nbrexx3vqjhp43".into();
        bob.extension = Some("1002".into());
        bob.agent_id = Some(43);
        bob.devices = vec![DeviceSpec {
            username: "alice-desk".into(),
            password: "x".into(),
        }];
        p.users.push(bob);
        let i = issues(&p);
        assert_eq!(i.len(), 1, "{i:?}");
        assert!(has(
            &i,
            "users[1].devices[0].username",
            "duplicate device username \"alice-desk\""
        ));
    }

    #[test]
    fn number_not_e164() {
        let mut p = sample();
        p.numbers[0].number = "+1415".into();
        let i = issues(&p);
        assert!(
            has(&i, "numbers[0].number", "\"+1415\" is not an E.164 number"),
            "{i:?}"
        );
    }

    #[test]
    fn bad_typeids() {
        let mut p = sample();
        p.users[0].id = "usr_01h2xcejqtf2nbrexx3vqjhp42".into();
        p.accounts[0].id = "acct_01h2xcejqtf2nbrexx3vqjhp4".into();
        let i = issues(&p);
        assert!(
            has(
                &i,
                "users[0].id",
                "invalid TypeID \"usr_01h2xcejqtf2nbrexx3vqjhp42\" (expected prefix user_)"
            ),
            "{i:?}"
        );
        assert!(has(&i, "accounts[0].id", "invalid TypeID"), "{i:?}");
    }

    #[test]
    fn every_field_check_names_its_key() {
        let mut p = sample();
        p.accounts[0].region = "USA".into();
        p.accounts[0].name = " ".into();
        p.accounts[0].webhook_secret = "".into();
        p.accounts[0].allowed_prefixes = vec!["1".into()];
        p.accounts[0].allowed_countries = Some(vec!["CA".into(), "Jamaica".into()]);
        p.accounts[0].blocked_number_types = Some(vec!["premium".into()]);
        p.accounts[0].api_keys.push(ApiKeySpec {
            key: "ak_test_1".into(),
            secret: "sk_test_1".into(),
        });
        p.users[0].extension = Some("10a1".into());
        p.users[0].agent_id = Some(0);
        p.users[0].devices[1].username = "alice soft".into();
        p.users[0].devices[0].password = "".into();
        p.trunks[0].transport = "sctp".into();
        p.trunks[0].address = "bad host:5080".into();
        p.trunks[0].password = None;
        p.trunks[0].account = Some(USER.into());
        p.trunks.push(p.trunks[0].clone());
        p.numbers[0].owner = Some("user_01h2xcejqtf2nbrexx3vqjhp77".into());
        p.numbers.push(p.numbers[0].clone());
        let i = issues(&p);
        let expected = [
            ("accounts[0].region", "ISO 3166-1 alpha-2"),
            ("accounts[0].name", "must not be empty"),
            ("accounts[0].webhook_secret", "must not be empty"),
            ("accounts[0].allowed_prefixes[0]", "not an E.164 prefix"),
            (
                "accounts[0].allowed_countries[1]",
                "\"Jamaica\" is not an ISO 3166-1 alpha-2 country code",
            ),
            (
                "accounts[0].blocked_number_types[0]",
                "\"premium\" is not a number type",
            ),
            (
                "accounts[0].api_keys[1].key",
                "duplicate API key \"ak_test_1\"",
            ),
            ("accounts[0].api_keys[1].secret", "duplicate API secret"),
            ("users[0].extension", "1 to 15 digits"),
            ("users[0].agent_id", "positive"),
            ("users[0].devices[1].username", "\"alice soft\""),
            ("users[0].devices[0].password", "must not be empty"),
            (
                "trunks[0].transport",
                "transport must be udp, tcp or tls, not \"sctp\"",
            ),
            ("trunks[0].address", "\"bad host:5080\""),
            ("trunks[0].password", "required when username is set"),
            ("trunks[0].account", "unknown account"),
            ("trunks[1].name", "duplicate trunk name \"carrier\""),
            ("numbers[0].owner", "unknown user"),
            ("numbers[1].number", "duplicate number"),
        ];
        for (key, reason) in expected {
            assert!(has(&i, key, reason), "missing {key}: {reason} in {i:#?}");
        }
        // Reasons never quote a secret.
        let text = ConfigIssue::join(&i);
        assert!(!text.contains("sk_test_1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn duplicates_within_account() {
        let mut p = sample();
        let mut bob = p.users[0].clone();
        bob.id = "user_01h2xcejqtf2nbrexx3vqjhp43".into();
        bob.devices.clear();
        p.users.push(bob.clone());
        p.users.push(bob);
        let i = issues(&p);
        assert!(
            has(&i, "users[1].extension", "duplicate extension \"1001\""),
            "{i:?}"
        );
        assert!(
            has(&i, "users[1].agent_id", "duplicate agent_id 42"),
            "{i:?}"
        );
        assert!(has(&i, "users[2].id", "duplicate user id"), "{i:?}");
    }

    #[test]
    fn iso_codes() {
        assert_eq!(ISO_3166_ALPHA2.split_ascii_whitespace().count(), 249);
        assert!(is_iso3166_alpha2("US"));
        assert!(is_iso3166_alpha2("GB"));
        assert!(!is_iso3166_alpha2("UK"));
        assert!(!is_iso3166_alpha2("us"));
        assert!(!is_iso3166_alpha2("U"));
    }

    #[test]
    fn trunk_addresses() {
        for ok in [
            "127.0.0.1:5080",
            "[::1]:5080",
            "::1",
            "10.0.0.1",
            "sip.carrier.example",
            "sip.carrier.example:5060",
        ] {
            assert!(is_trunk_address(ok), "{ok}");
        }
        for bad in [
            "",
            "host:0",
            "host:99999",
            "a..b",
            "-a.example",
            "bad host",
            "h:p",
        ] {
            assert!(!is_trunk_address(bad), "{bad}");
        }
    }

    #[test]
    fn report_counts() {
        let mut r = ProvisionReport::default();
        assert!(r.is_noop());
        r.users.record(Change::Unchanged);
        assert!(r.is_noop());
        r.users.record(Change::Created);
        r.devices.record(Change::Updated);
        assert!(!r.is_noop());
        assert_eq!(r.total_created(), 1);
        assert_eq!(r.total_updated(), 1);
        assert!(r
            .to_string()
            .contains("users: 1 created, 0 updated, 1 unchanged"));
        let _ = ACCT;
    }
}
