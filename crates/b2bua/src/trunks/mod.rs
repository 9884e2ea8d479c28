//! Trunks to carriers: where a customer leg's INVITEs go, in which order, and which targets
//! are fit to take them (SPEC §9.8).
//!
//! Layout:
//! - [`resolve`]: RFC 3263 (NAPTR → SRV → A/AAAA) for a trunk's `address`, RFC 2782's
//!   weighted order, the hickory-resolver client (`[dns] servers`).
//! - [`health`]: one target's up/down state from checks, attempts and `503` + `Retry-After`.
//! - [`limits`]: per-trunk channels (`max_calls`) and `calls_per_second`.
//! - [`failover`]: when a leg goes on to its next attempt ([`failover::after_final`]).
//! - [`check`]: the OPTIONS health checks (the only part here that sends anything).
//! - [`call_glue`]: what the call machine's targets carry ([`call_glue::TrunkAttempt`]) and
//!   the lookup of a leg's attempts.
//!
//! [`Trunks`] ties them together: [`Trunks::plan`] lists the attempts of one leg — each
//! target of each trunk of the account, trunks by `priority`, targets in DNS order, down
//! targets left out —, [`Trunks::acquire`] takes a trunk's channel before an attempt's
//! INVITE, [`Trunks::report`] learns what the attempt came to. [`Trunks::status`] is what
//! `GET /v1/trunks/{name}` shows and [`Trunks::metric_lines`] what `/metrics` shows.
//!
//! Not here: sending INVITEs (the call task does), TLS/SCTP NAPTR services, per-target
//! limits.

pub(crate) mod call_glue;
pub mod check;
pub mod failover;
pub mod health;
pub mod limits;
pub mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use sip_core::endpoint::Destination;
use sip_core::message::{Host, SipUri, Uri};
use sip_core::transport::Transport;
use store::Store;
use tokio::time::Instant;

pub use failover::{after_final, Next};
pub use health::{Answer, TargetHealth, TargetState};
pub use limits::ChannelGuard;
pub use resolve::{Dns, DnsError, Resolution};

use limits::{Channels, RateGate};

/// One try of a customer leg: one target of one trunk.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub trunk: String,
    /// For the timeline: `trunk carrier udp:192.0.2.10:5060`.
    pub label: String,
    pub request_uri: Uri,
    pub dest: Destination,
    /// Digest credentials for when the carrier challenges.
    pub credentials: Option<(String, String)>,
    pub invite_timeout: Duration,
    pub failover_codes: Vec<u16>,
    /// The trunk's limits, as read for this call.
    pub max_calls: Option<u32>,
    pub calls_per_second: Option<u32>,
    /// Health checks run for this trunk (then time-outs count against the target).
    pub checked: bool,
    pub down_after: u32,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// A final response (2xx included); `rtt` until the first response.
    Final {
        code: u16,
        retry_after: Option<Duration>,
        rtt: Option<Duration>,
    },
    /// Nothing within `invite_timeout_ms`.
    Timeout,
    /// The transport refused.
    TransportError,
}

/// Why a customer leg has nothing to try.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("no trunk for this call")]
    NoTrunk,
    #[error("no trunk target is up ({0})")]
    AllDown(String),
    #[error("no trunk address could be resolved ({0})")]
    Unresolved(String),
}

/// Settings of the trunk layer (`[dns]`).
#[derive(Debug, Clone, Default)]
pub struct TrunksConfig {
    /// `[dns] servers`; empty = the system resolver.
    pub dns_servers: Vec<SocketAddr>,
}

/// The run-time state of one trunk.
#[derive(Default)]
struct TrunkRuntime {
    channels: Arc<Channels>,
    rate: Mutex<Option<RateGate>>,
    /// Its targets as last resolved, each with its health (targets that left DNS keep
    /// theirs in case they come back).
    targets: Mutex<Vec<(SocketAddr, TargetHealth)>>,
    /// Addresses of the last resolution, in a stable order.
    current: Mutex<Vec<SocketAddr>>,
    /// Attempts by answer (`503`, `timeout`, ...).
    attempts: Mutex<BTreeMap<String, u64>>,
    /// When its next round of checks is due.
    pub(crate) next_check: Mutex<Option<Instant>>,
}

/// The trunk layer (cheap to share: `Arc<Trunks>`).
pub struct Trunks {
    store: Arc<dyn Store>,
    dns: Result<Dns, String>,
    cache: Mutex<HashMap<(String, Transport), Resolution>>,
    runtime: Mutex<HashMap<String, Arc<TrunkRuntime>>>,
    /// Every address a trunk resolved to so far: known peers, exempt from the per-source
    /// guards like trunks given by IP address.
    known_ips: std::sync::RwLock<std::collections::HashSet<std::net::IpAddr>>,
    /// An account's trunks as last read (see [`store::cache`]): a call does not read them
    /// from the store each time.
    by_account: store::cache::ReadCache<String, Vec<store::Trunk>>,
}

/// How long an account's trunks read from the store are trusted at most (changes through
/// this node are seen at once).
pub const TRUNKS_TTL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Trunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trunks").finish_non_exhaustive()
    }
}

fn transport_of(t: store::Transport) -> Transport {
    match t {
        store::Transport::Tcp => Transport::Tcp,
        _ => Transport::Udp,
    }
}

fn target_key(transport: Transport, addr: SocketAddr) -> String {
    let t = match transport {
        Transport::Tcp => "tcp",
        _ => "udp",
    };
    format!("{t}:{addr}")
}

impl Trunks {
    pub fn new(cfg: &TrunksConfig, store: Arc<dyn Store>) -> Trunks {
        let dns = Dns::new(&cfg.dns_servers).map_err(|e| {
            tracing::warn!(error = %e, "no DNS resolver: trunks given by domain cannot be used");
            e.to_string()
        });
        Trunks {
            store,
            dns,
            cache: Mutex::new(HashMap::new()),
            runtime: Mutex::new(HashMap::new()),
            known_ips: std::sync::RwLock::new(std::collections::HashSet::new()),
            by_account: store::cache::ReadCache::new(TRUNKS_TTL, 10_000),
        }
    }

    fn runtime(&self, trunk: &str) -> Arc<TrunkRuntime> {
        let Ok(mut m) = self.runtime.lock() else {
            return Arc::new(TrunkRuntime::default());
        };
        Arc::clone(m.entry(trunk.to_owned()).or_default())
    }

    /// What DNS says about a trunk, from the cache while its TTL lasts.
    pub async fn resolution(&self, trunk: &store::Trunk) -> Result<Resolution, DnsError> {
        let transport = transport_of(trunk.transport);
        let key = (trunk.address.clone(), transport);
        let now = Instant::now();
        if let Some(r) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&key).filter(|r| r.valid_until > now).cloned())
        {
            return Ok(r);
        }
        let dns = self
            .dns
            .as_ref()
            .map_err(|e| DnsError::BadAddress(format!("{} ({e})", trunk.address)))?;
        let r = dns.resolve(&trunk.address, transport).await?;
        tracing::debug!(trunk = %trunk.name, address = %trunk.address, via = r.via, targets = ?r.all_addrs(), "trunk resolved");
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, r.clone());
        }
        let rt = self.runtime(&trunk.name);
        let addrs = r.all_addrs();
        if let Ok(mut known) = self.known_ips.write() {
            known.extend(addrs.iter().map(SocketAddr::ip));
        }
        if let Ok(mut t) = rt.targets.lock() {
            for a in &addrs {
                if !t.iter().any(|(x, _)| x == a) {
                    t.push((*a, TargetHealth::default()));
                }
            }
        }
        if let Ok(mut cur) = rt.current.lock() {
            *cur = addrs;
        }
        Ok(r)
    }

    /// Whether `ip` is an address some trunk resolved to (a carrier's edge).
    pub fn is_target_ip(&self, ip: std::net::IpAddr) -> bool {
        self.known_ips.read().is_ok_and(|k| k.contains(&ip))
    }

    /// The health state of one target now (logging a change once).
    fn target_state(&self, trunk: &str, rt: &TrunkRuntime, addr: SocketAddr) -> TargetState {
        let now = Instant::now();
        let Ok(mut targets) = rt.targets.lock() else {
            return TargetState::Up;
        };
        match targets.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, h)) => {
                log_change(trunk, addr, h, now);
                h.state(now)
            }
            None => TargetState::Up,
        }
    }

    /// The ordered attempts of one leg towards `number`: the account's trunks (own first,
    /// then shared; only `trunk` when named; only emergency trunks for an emergency call) by
    /// `priority`, each trunk's targets in DNS order; down targets are left out.
    pub async fn plan(
        &self,
        account_id: &str,
        number: &str,
        trunk: Option<&str>,
        emergency: bool,
    ) -> Result<Vec<Attempt>, PlanError> {
        let generation = self.store.provisioning_generation();
        let mut trunks: Vec<store::Trunk> = store::cache::read_through(
            &self.by_account,
            account_id.to_owned(),
            generation,
            self.store.trunks_for_account(account_id),
        )
        .await?
        .into_iter()
        .filter(|t| trunk.is_none_or(|n| t.name == n) && (!emergency || t.emergency))
        .collect();
        if trunks.is_empty() {
            return Err(PlanError::NoTrunk);
        }
        trunks.sort_by_key(|t| t.routing.priority);
        let mut out = Vec::new();
        let mut down = Vec::new();
        let mut unresolved = Vec::new();
        for t in &trunks {
            let res = match self.resolution(t).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(trunk = %t.name, error = %e, "trunk not resolved");
                    unresolved.push(format!("{}: {e}", t.name));
                    continue;
                }
            };
            let rt = self.runtime(&t.name);
            let order = res.ordered(&mut rand::thread_rng());
            for addr in order {
                let key = target_key(res.transport, addr);
                if self.target_state(&t.name, &rt, addr) == TargetState::Down {
                    down.push(format!("{} {key}", t.name));
                    continue;
                }
                out.push(attempt_for(t, &res, addr, number));
            }
        }
        if out.is_empty() {
            if !down.is_empty() {
                return Err(PlanError::AllDown(down.join(", ")));
            }
            return Err(PlanError::Unresolved(unresolved.join("; ")));
        }
        Ok(out)
    }

    /// A channel of the attempt's trunk, taken just before its INVITE goes out: `None` when
    /// the trunk is at `max_calls` or `calls_per_second` (skip to the next attempt).
    /// Dropping the guard frees the channel.
    pub fn acquire(&self, attempt: &Attempt) -> Option<ChannelGuard> {
        let rt = self.runtime(&attempt.trunk);
        let guard = rt.channels.try_take(attempt.max_calls)?;
        if let Some(rate) = attempt.calls_per_second {
            let mut gate = rt.rate.lock().ok()?;
            let g = match gate.as_mut() {
                Some(g) if g.rate() == rate => g,
                _ => gate.insert(RateGate::new(rate)),
            };
            if !g.try_take(Instant::now()) {
                return None;
            }
        }
        Some(guard)
    }

    /// What an attempt came to: feeds the target's health, the `503` + `Retry-After` hold
    /// and `dialbridge_trunk_attempts_total`.
    pub fn report(&self, attempt: &Attempt, result: AttemptResult) {
        let rt = self.runtime(&attempt.trunk);
        let label = match &result {
            AttemptResult::Final { code, .. } => code.to_string(),
            AttemptResult::Timeout => "timeout".to_owned(),
            AttemptResult::TransportError => "transport_error".to_owned(),
        };
        if let Ok(mut a) = rt.attempts.lock() {
            *a.entry(label).or_default() += 1;
        }
        let now = Instant::now();
        let addr = attempt.dest.addr;
        let Ok(mut targets) = rt.targets.lock() else {
            return;
        };
        let h = match targets.iter().position(|(a, _)| *a == addr) {
            Some(i) => &mut targets[i].1,
            None => {
                targets.push((addr, TargetHealth::default()));
                let last = targets.len() - 1;
                &mut targets[last].1
            }
        };
        match result {
            AttemptResult::Final {
                code,
                retry_after,
                rtt,
            } => {
                h.answered(code, rtt);
                if code == 503 {
                    if let Some(d) = retry_after.filter(|d| !d.is_zero()) {
                        h.hold(now, d);
                    }
                }
            }
            AttemptResult::Timeout | AttemptResult::TransportError => {
                let answer = if result == AttemptResult::Timeout {
                    Answer::Timeout
                } else {
                    Answer::TransportError
                };
                if attempt.checked {
                    h.check_failed(answer, attempt.down_after);
                } else {
                    h.last_answer = Some(answer);
                }
            }
        }
        log_change(&attempt.trunk, addr, h, now);
    }

    /// A health check of one target came back (`Some(code)`, with the round trip) or not.
    pub(crate) fn checked(
        &self,
        trunk: &store::Trunk,
        addr: SocketAddr,
        result: Result<(u16, Duration), Answer>,
    ) {
        let rt = self.runtime(&trunk.name);
        let now = Instant::now();
        let Ok(mut targets) = rt.targets.lock() else {
            return;
        };
        let Some((_, h)) = targets.iter_mut().find(|(a, _)| *a == addr) else {
            return;
        };
        match result {
            Ok((503, rtt)) => {
                h.last_rtt = Some(rtt);
                h.check_failed(Answer::Status(503), trunk.routing.down_after);
            }
            Ok((code, rtt)) => h.check_answered(code, rtt, trunk.routing.up_after),
            Err(a) => h.check_failed(a, trunk.routing.down_after),
        }
        log_change(&trunk.name, addr, h, now);
    }

    /// `GET /v1/trunks/{name}`: the trunk's state and its targets; `None` when there is no
    /// such trunk.
    pub async fn status(&self, name: &str) -> Option<Value> {
        let trunk = self.store.trunk(name).await.ok().flatten()?;
        let resolved = self.resolution(&trunk).await;
        let rt = self.runtime(name);
        let now = Instant::now();
        let current = rt.current.lock().map(|c| c.clone()).unwrap_or_default();
        let transport = transport_of(trunk.transport);
        let mut targets = Vec::new();
        let mut any_up = false;
        if let Ok(mut list) = rt.targets.lock() {
            for addr in &current {
                let Some((_, h)) = list.iter_mut().find(|(a, _)| a == addr) else {
                    continue;
                };
                log_change(name, *addr, h, now);
                let st = h.state(now);
                any_up |= st == TargetState::Up;
                targets.push(json!({
                    "address": addr.to_string(),
                    "transport": if transport == Transport::Tcp { "tcp" } else { "udp" },
                    "state": st.as_str(),
                    "last_rtt_ms": h.last_rtt.map(|d| d.as_millis() as u64),
                    "last_answer": h.last_answer.as_ref().map(|a| a.to_string()),
                    "reason": if st == TargetState::Down { h.reason.clone() } else { None },
                }));
            }
        }
        let state = if any_up { "up" } else { "down" };
        Some(json!({
            "state": state,
            "resolved_by": resolved.as_ref().map(|r| r.via).ok(),
            "resolve_error": resolved.as_ref().err().map(|e| e.to_string()),
            "targets": targets,
            "calls_in_progress": rt.channels.in_use(),
        }))
    }

    /// `/metrics`: `dialbridge_trunk_up{trunk,target}` and
    /// `dialbridge_trunk_attempts_total{trunk,code}` lines (labels, value).
    pub fn metric_lines(&self) -> (MetricLines, MetricLines) {
        let now = Instant::now();
        let mut up = Vec::new();
        let mut attempts = Vec::new();
        let runtimes: Vec<(String, Arc<TrunkRuntime>)> = match self.runtime.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect(),
            Err(_) => return (up, attempts),
        };
        let mut runtimes = runtimes;
        runtimes.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, rt) in runtimes {
            let current = rt.current.lock().map(|c| c.clone()).unwrap_or_default();
            if let Ok(list) = rt.targets.lock() {
                for addr in &current {
                    if let Some((_, h)) = list.iter().find(|(a, _)| a == addr) {
                        up.push((
                            format!("{{trunk=\"{}\",target=\"{addr}\"}}", escape(&name)),
                            u64::from(h.state(now) == TargetState::Up),
                        ));
                    }
                }
            }
            if let Ok(a) = rt.attempts.lock() {
                for (code, n) in a.iter() {
                    attempts.push((
                        format!("{{trunk=\"{}\",code=\"{code}\"}}", escape(&name)),
                        *n,
                    ));
                }
            }
        }
        (up, attempts)
    }
}

/// Prometheus sample lines: (`{label="…",…}`, value).
pub type MetricLines = Vec<(String, u64)>;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Logs a target's change of state, once.
fn log_change(trunk: &str, addr: SocketAddr, h: &mut TargetHealth, now: Instant) {
    match h.observe(now) {
        Some((_, TargetState::Down)) => tracing::warn!(
            trunk,
            target = %addr,
            reason = h.reason.as_deref().unwrap_or(""),
            "trunk target down"
        ),
        Some((_, TargetState::Up)) => tracing::info!(trunk, target = %addr, "trunk target up"),
        None => {}
    }
}

/// The attempt of trunk `t` at `addr`: Request-URI `sip:<prefix><number>@<domain or IP>`
/// (with the port when the address had one), sent to `addr`.
fn attempt_for(t: &store::Trunk, res: &Resolution, addr: SocketAddr, number: &str) -> Attempt {
    let user = format!("{}{}", t.dial_prefix.clone().unwrap_or_default(), number);
    let host = match res.uri_host.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Domain(Bytes::from(res.uri_host.clone())),
    };
    let mut ruri = SipUri::new(Some(&user), host, res.uri_port);
    if res.transport == Transport::Tcp {
        ruri.params.set("transport", Some("tcp"));
    }
    Attempt {
        trunk: t.name.clone(),
        label: format!("trunk {} {}", t.name, target_key(res.transport, addr)),
        request_uri: Uri::Sip(ruri),
        dest: Destination {
            transport: res.transport,
            addr,
            conn: None,
        },
        credentials: match (&t.username, &t.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.expose().to_string())),
            _ => None,
        },
        invite_timeout: Duration::from_millis(u64::from(t.routing.invite_timeout_ms)),
        failover_codes: t.routing.failover_codes.clone(),
        max_calls: t.routing.max_calls,
        calls_per_second: t.routing.calls_per_second,
        checked: t.routing.options_interval_secs > 0,
        down_after: t.routing.down_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "acct_01h2xcejqtf2nbrexx3vqjhp41";

    /// An account with three trunks given by IP address: "late" (priority 20), "early"
    /// (priority 5, a dial prefix, a channel cap), "sos" (emergency, TCP, priority 30).
    fn trunks() -> Trunks {
        use store::BlockingStore;
        let db = store::SqliteStore::open_in_memory().unwrap();
        let text = format!(
            r#"{{
              "accounts": [{{"id": "{ACCOUNT}", "name": "Acme", "region": "US",
                 "api_keys": [{{"key": "ak_test_1", "secret": "sk_test_1"}}],
                 "webhook_secret": "whsec_test_1", "allowed_prefixes": ["+1"]}}],
              "trunks": [
                {{"name": "late", "account": "{ACCOUNT}", "address": "127.0.0.3:5060",
                  "priority": 20}},
                {{"name": "early", "account": "{ACCOUNT}", "address": "127.0.0.2:5070",
                  "priority": 5, "dial_prefix": "9", "max_calls": 4}},
                {{"name": "sos", "account": "{ACCOUNT}", "address": "127.0.0.4",
                  "priority": 30, "emergency": true, "transport": "tcp"}}
              ]
            }}"#
        );
        db.apply_provisioning(&serde_json::from_str(&text).unwrap(), "dialbridge.test")
            .unwrap();
        let cfg = TrunksConfig {
            dns_servers: vec!["127.0.0.1:9".parse().unwrap()],
        };
        // Inline: on the paused clock a wait for a store thread would let timers jump.
        Trunks::new(&cfg, Arc::new(store::StoreThreads::inline(db)))
    }

    fn names(a: &[Attempt]) -> Vec<&str> {
        a.iter().map(|a| a.trunk.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn plan_orders_trunks_by_priority_and_filters() {
        let t = trunks();
        let plan = t.plan(ACCOUNT, "+15550100", None, false).await.unwrap();
        assert_eq!(names(&plan), ["early", "late", "sos"]);
        let first = &plan[0];
        assert_eq!(
            first.request_uri.to_string(),
            "sip:9+15550100@127.0.0.2:5070"
        );
        assert_eq!(first.dest.addr, "127.0.0.2:5070".parse().unwrap());
        assert_eq!(first.label, "trunk early udp:127.0.0.2:5070");
        assert_eq!(first.max_calls, Some(4));
        assert_eq!(first.invite_timeout, Duration::from_millis(2000));
        // An IP without a port: 5060 on the wire, no port in the Request-URI; TCP says so.
        let sos = &plan[2];
        assert_eq!(sos.dest.addr, "127.0.0.4:5060".parse().unwrap());
        assert_eq!(sos.dest.transport, Transport::Tcp);
        assert_eq!(
            sos.request_uri.to_string(),
            "sip:+15550100@127.0.0.4;transport=tcp"
        );
        // Emergency calls only through emergency trunks; a named trunk only.
        let plan = t.plan(ACCOUNT, "911", None, true).await.unwrap();
        assert_eq!(names(&plan), ["sos"]);
        let plan = t
            .plan(ACCOUNT, "+15550100", Some("late"), false)
            .await
            .unwrap();
        assert_eq!(names(&plan), ["late"]);
        assert!(matches!(
            t.plan(ACCOUNT, "+15550100", Some("nosuch"), false).await,
            Err(PlanError::NoTrunk)
        ));
        assert!(matches!(
            t.plan("acct_01h2xcejqtf2nbrexx3vqjhp50", "+15550100", None, false)
                .await,
            Err(PlanError::NoTrunk)
        ));
        // The resolved addresses are known peers.
        assert!(t.is_target_ip("127.0.0.2".parse().unwrap()));
        assert!(!t.is_target_ip("127.0.0.9".parse().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn down_targets_are_left_out_of_the_plan() {
        let t = trunks();
        let plan = t.plan(ACCOUNT, "+15550100", None, false).await.unwrap();
        let early = plan[0].clone();
        t.report(
            &early,
            AttemptResult::Final {
                code: 503,
                retry_after: Some(Duration::from_secs(60)),
                rtt: Some(Duration::from_millis(3)),
            },
        );
        let plan = t.plan(ACCOUNT, "+15550100", None, false).await.unwrap();
        assert_eq!(names(&plan), ["late", "sos"]);
        let status = t.status("early").await.unwrap();
        assert_eq!(status["state"], "down", "{status}");
        assert_eq!(status["targets"][0]["last_answer"], "503");
        assert_eq!(status["targets"][0]["last_rtt_ms"], 3);
        assert_eq!(status["resolved_by"], "ip");
        let (up, attempts) = t.metric_lines();
        assert!(up.contains(&("{trunk=\"early\",target=\"127.0.0.2:5070\"}".to_string(), 0)));
        assert!(attempts.contains(&("{trunk=\"early\",code=\"503\"}".to_string(), 1)));
        // Only one trunk, and its target down: nothing to try, and the error says why.
        match t.plan(ACCOUNT, "+15550100", Some("early"), false).await {
            Err(PlanError::AllDown(why)) => assert!(why.contains("127.0.0.2:5070"), "{why}"),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let plan = t.plan(ACCOUNT, "+15550100", None, false).await.unwrap();
        assert_eq!(names(&plan), ["early", "late", "sos"]);
    }
}
