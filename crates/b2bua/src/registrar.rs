//! The registrar (RFC 3261 §10.3): agents' phones register their contacts with digest
//! authentication; bindings live in the store and survive restarts.
//!
//! Processing of one REGISTER, in the RFC's order:
//! 1. Authenticate (§10.3 step 3, §22): no credentials, an unknown scheme, a stale or foreign
//!    nonce -> `401` with fresh SHA-256 and MD5 challenges. Wrong credentials -> `401` again
//!    and a failure counted against the source address and the username ([`AuthGuard`]);
//!    past the limit the source or username is refused with `403` for a while, and each
//!    failure before that is answered a little later than the one before.
//! 2. Authorise: the address-of-record (To) must be the authenticated device (`403`).
//! 3. Contacts (§10.3 steps 6-8): `*` with `Expires: 0` removes every binding; each contact's
//!    expiry comes from its `expires` parameter, else the `Expires` header, else the default;
//!    below `Min-Expires` -> `423`; above the maximum it is shortened; `0` removes it. A
//!    request whose CSeq is not above the one stored for the same Call-ID is out of order.
//! 4. Answer `200` with every current binding and its remaining time.
//!
//! Each binding keeps where the REGISTER really came from (source address, transport, the
//! TCP connection), so that a phone behind NAT is reached back the way it came in.
//!
//! Every answer but the `200` opens nothing and is sent statelessly by the caller (RFC 3261
//! §8.2.7); the registrar keeps in memory the source addresses of live bindings
//! ([`Registrar::is_registered_source`]) so that registered phones are exempt from the
//! per-source refusal budget. That memory starts empty at start-up: a phone counts as
//! registered again from its next refresh.
//!
//! Device credentials (the HA1 values, or that no such device exists) are kept in memory
//! for [`CREDENTIALS_TTL`] and dropped as soon as the store says its devices may have changed
//! ([`store::Store::provisioning_generation`]): a refresh costs no credential read, and a
//! changed or deleted device is seen at its next REGISTER. A change made by another node
//! sharing the store is seen within [`CREDENTIALS_TTL`].
//!
//! A device's bindings are kept in memory too, as this registrar last read or wrote them
//! ([`crate::binding_view`]), when the store is this node's alone (SQLite): a refresh (the
//! same contact from the same place, with a new expiry) reads nothing and waits for no store
//! call — the store keeps the refresh in memory and writes it with the others within half a
//! second. A new, changed or removed contact is written to the store before the `200`, and
//! the bindings are read back. On a store that other nodes write (PostgreSQL) nothing is
//! kept: the edge may hand a phone's next REGISTER to another node, and a node's memory
//! would then answer with bindings that are no longer so and judge CSeq order on them.

use sip_core::auth::{
    parse_authorization, Algorithm, Authorization, Credentials, DigestServer, DigestServerConfig,
    Verdict,
};
use sip_core::endpoint::new_tag;
use sip_core::map::Map;
use sip_core::message::{
    socket_addr_text, ContactValue, HeaderAccess, HeaderName, NameAddr, Request, Response, Uri,
    PATH,
};
use sip_core::transport::{ConnId, Flow};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Binding, Device, Store};

use crate::binding_view::{BindingViews, Seen};

/// How long a device's credentials read from the store are trusted at most.
pub const CREDENTIALS_TTL: Duration = Duration::from_secs(30);
/// Devices whose credentials are kept at most (the cache starts over past it); the same
/// bound holds for the devices whose bindings are kept.
const CREDENTIALS_CAPACITY: usize = 100_000;
/// How long the bindings of a device read from a store of this node alone (SQLite) are
/// trusted at most since that read (see [`crate::binding_view`]).
pub const BINDINGS_TTL: Duration = Duration::from_secs(30);

/// Registrar settings.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// The domain and digest realm.
    pub realm: String,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub nonce_lifetime_secs: u64,
    pub guard: GuardConfig,
    /// The challenges offered, in this order. Both MD5 and SHA-256 are always offered;
    /// MD5 goes first by default because many deployed UAs (SIPp 3.6 among them) answer
    /// only the first challenge and know only MD5, while UAs that follow RFC 8760 pick
    /// SHA-256 wherever it stands.
    pub algorithms: Vec<Algorithm>,
    /// User agents (matched case-insensitively as a prefix of `User-Agent`) that are
    /// challenged with MD5 only: their digest code gives up on a 401 as soon as one
    /// challenge names an algorithm it does not know, instead of using the one it knows
    /// (baresip 1.0 / libre 1.1 answer "Function not implemented"; Twinkle 1.10 and JsSIP 3 read only the last challenge and know only MD5; SIP.js knows only MD5).
    pub md5_only_user_agents: Vec<String>,
    /// `registrar.nonce_secret`: registrars (nodes) sharing it accept each other's digest
    /// challenges. `None`: a random key per run, whose nonces die with it.
    pub nonce_secret: Option<store::Secret>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            realm: "dialbridge.test".into(),
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            nonce_lifetime_secs: 300,
            guard: GuardConfig::default(),
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            md5_only_user_agents: vec![
                "baresip".into(),
                "libre".into(),
                "twinkle".into(),
                "jssip".into(),
                "sip.js".into(),
            ],
            nonce_secret: None,
        }
    }
}

/// Brute-force protection settings.
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Failures (per source address or per username) within the window before lock-out.
    pub limit: u32,
    pub window_secs: u64,
    pub lockout_secs: u64,
    /// Added delay per recent failure before answering (capped at 2 s).
    pub delay_step: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            limit: 5,
            window_secs: 60,
            lockout_secs: 300,
            delay_step: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct FailureRecord {
    count: u32,
    window_start: u64,
    locked_until: u64,
}

/// Counts failed digest attempts per source address and per username.
#[derive(Debug, Default)]
pub struct AuthGuard {
    cfg: GuardConfig,
    by_source: Map<IpAddr, FailureRecord>,
    by_user: Map<String, FailureRecord>,
}

impl AuthGuard {
    pub fn new(cfg: GuardConfig) -> AuthGuard {
        AuthGuard {
            cfg,
            ..Default::default()
        }
    }

    /// Whether the source or the username is locked out at `now`.
    pub fn is_locked(&self, source: IpAddr, user: Option<&str>, now: u64) -> bool {
        let locked = |r: Option<&FailureRecord>| r.is_some_and(|r| r.locked_until > now);
        locked(self.by_source.get(&source)) || user.is_some_and(|u| locked(self.by_user.get(u)))
    }

    /// Records a failure; returns the delay to apply before answering and whether this
    /// failure started a lock-out.
    pub fn fail(&mut self, source: IpAddr, user: Option<&str>, now: u64) -> (Duration, bool) {
        let cfg = self.cfg;
        let bump = |r: &mut FailureRecord| {
            if now.saturating_sub(r.window_start) > cfg.window_secs {
                r.count = 0;
                r.window_start = now;
            }
            r.count += 1;
            if r.count >= cfg.limit && r.locked_until <= now {
                r.locked_until = now + cfg.lockout_secs;
                return (r.count, true);
            }
            (r.count, false)
        };
        let (n1, l1) = bump(self.by_source.entry(source).or_default());
        let (n2, l2) = match user {
            Some(u) => bump(self.by_user.entry(u.to_string()).or_default()),
            None => (0, false),
        };
        let n = n1.max(n2);
        let delay = (cfg.delay_step * n).min(Duration::from_secs(2));
        // Bound memory: forget quiet records.
        if self.by_source.len() > 100_000 {
            self.by_source.retain(|_, r| {
                r.locked_until > now || now.saturating_sub(r.window_start) <= cfg.window_secs
            });
        }
        if self.by_user.len() > 100_000 {
            self.by_user.retain(|_, r| {
                r.locked_until > now || now.saturating_sub(r.window_start) <= cfg.window_secs
            });
        }
        (delay, l1 || l2)
    }

    /// A success clears the username's failures (not the source's).
    pub fn succeed(&mut self, user: &str) {
        self.by_user.remove(user);
    }
}

/// Counters the registrar keeps (exported as metrics).
#[derive(Debug, Default)]
pub struct RegistrarStats {
    pub registrations: std::sync::atomic::AtomicU64,
    pub auth_failures: std::sync::atomic::AtomicU64,
    pub auth_lockouts: std::sync::atomic::AtomicU64,
    pub auth_refused_locked: std::sync::atomic::AtomicU64,
}

/// What the registrar decided about one REGISTER.
#[derive(Debug)]
pub struct Decision {
    pub response: Response,
    /// Wait this long before sending the response (brute-force slow-down).
    pub delay: Duration,
    /// For an accepted REGISTER that came over a TCP connection: until when (unix seconds)
    /// a binding lives on that connection, `Some(0)` when none does any more. The caller
    /// keeps the connection open that long.
    pub flow_until: Option<u64>,
}

/// The registrar. Shared between tasks (`Arc`); internal state behind short locks.
pub struct Registrar {
    cfg: RegistrarConfig,
    store: Arc<dyn Store>,
    digest: Mutex<DigestServer>,
    guard: Mutex<AuthGuard>,
    /// TCP connections of bindings (`device/contact` -> connection): the way back to a
    /// phone that registered over TCP. Not persistent: a connection does not outlive us.
    conns: Mutex<HashMap<(String, String), ConnId>>,
    /// Source addresses of live bindings -> when the last of them expires (unix seconds).
    sources: Mutex<Map<IpAddr, u64>>,
    /// Device username -> its credentials as last read.
    credentials: store::cache::ReadCache<String, Option<Arc<Device>>>,
    /// Device username -> its bindings as last read or written (`crate::binding_view`).
    views: Mutex<BindingViews>,
    /// User id -> the usernames of its devices, sorted, as last read (a call's fork).
    user_devices: store::cache::ReadCache<String, Arc<Vec<String>>>,
    /// Keys the To tags of challenges, made from the request so that a retransmission gets
    /// the same one (they are not kept: `Endpoint::challenge_stateless`).
    tag_key: std::hash::RandomState,
    /// The last `Date` written, and for which second.
    date: Mutex<Option<(u64, bytes::Bytes)>>,
    /// Reads of a device's bindings after a write of them (`read_back`), for the tests.
    #[cfg(test)]
    read_backs: std::sync::atomic::AtomicU64,
    pub stats: RegistrarStats,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("realm", &self.cfg.realm)
            .finish()
    }
}

/// The wall clock in unix seconds, as the registrar's `now` arguments take it.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Errors of the registrar (the store failing).
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("digest: {0}")]
    Digest(#[from] sip_core::auth::AuthError),
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig, store: Arc<dyn Store>) -> Result<Registrar, RegistrarError> {
        let digest_cfg = DigestServerConfig {
            nonce_lifetime_secs: cfg.nonce_lifetime_secs,
            algorithms: cfg.algorithms.clone(),
            ..Default::default()
        };
        let digest = match &cfg.nonce_secret {
            // The nonce key is derived from the shared secret, so every node computes the
            // same one; nonce counts (replay protection) stay per node.
            Some(secret) => DigestServer::new(nonce_key(secret), digest_cfg)?,
            None => DigestServer::with_random_key(digest_cfg)?,
        };
        Ok(Registrar {
            guard: Mutex::new(AuthGuard::new(cfg.guard)),
            cfg,
            digest: Mutex::new(digest),
            conns: Mutex::new(HashMap::new()),
            sources: Mutex::new(Map::default()),
            credentials: store::cache::ReadCache::new(CREDENTIALS_TTL, CREDENTIALS_CAPACITY),
            tag_key: std::hash::RandomState::new(),
            date: Mutex::new(None),
            // Another node may write the bindings of a shared store: none are kept then.
            views: Mutex::new(BindingViews::new(
                if store.shared() {
                    Duration::ZERO
                } else {
                    BINDINGS_TTL
                },
                CREDENTIALS_CAPACITY,
            )),
            user_devices: store::cache::ReadCache::new(CREDENTIALS_TTL, CREDENTIALS_CAPACITY),
            #[cfg(test)]
            read_backs: std::sync::atomic::AtomicU64::new(0),
            stats: RegistrarStats::default(),
            store,
        })
    }

    pub fn realm(&self) -> &str {
        &self.cfg.realm
    }

    /// A device's credentials: from memory while the store says nothing changed and they
    /// are younger than [`CREDENTIALS_TTL`], else read again.
    async fn device(&self, username: &str) -> Result<Option<Arc<Device>>, store::StoreError> {
        // Read before the lookup: a change that lands meanwhile makes the entry stale.
        let generation = self.store.provisioning_generation();
        // Kept: no key to build, no store call to set up.
        if let Some(kept) = self
            .credentials
            .get(username, generation, std::time::Instant::now())
        {
            return Ok(kept);
        }
        store::cache::read_through(&self.credentials, username.to_string(), generation, async {
            Ok::<_, store::StoreError>(self.store.device_by_username(username).await?.map(Arc::new))
        })
        .await
    }

    /// [`Self::device`] for a REGISTER: when neither the device's credentials nor its
    /// bindings are kept (a device not seen lately: after a restart, in a registration
    /// storm), both are read in one store call and the bindings kept for the REGISTER's
    /// next step, which then needs no store read of its own.
    async fn device_for_register(
        &self,
        username: &str,
        now: u64,
    ) -> Result<Option<Arc<Device>>, store::StoreError> {
        let generation = self.store.provisioning_generation();
        let instant = std::time::Instant::now();
        if let Some(kept) = self.credentials.get(username, generation, instant) {
            return Ok(kept);
        }
        let seen = match self.views.lock() {
            Ok(v) => v.peek(username, now, generation),
            Err(_) => None,
        };
        let Some(seen) = seen else {
            return self.device(username).await;
        };
        let (device, bindings) = self.store.device_and_bindings(username, now as i64).await?;
        let device = device.map(Arc::new);
        self.credentials
            .put(username.to_string(), device.clone(), generation, instant);
        if device.is_some() {
            if let Ok(mut v) = self.views.lock() {
                v.settle(username, seen, Arc::new(bindings), now, generation);
            }
        }
        Ok(device)
    }

    /// The unexpired bindings of every device of the user, by device then contact: what a
    /// call to the user forks to. From memory when every device's bindings are kept and
    /// trusted ([`crate::binding_view`]; on a store of this node alone), else read from the
    /// store; what that read finds is kept for the devices in turn, so that a user called
    /// often costs one store read per [`BINDINGS_TTL`], not one per call.
    pub async fn bindings_for_user(
        &self,
        user_id: &str,
        now: u64,
    ) -> Result<Vec<Binding>, store::StoreError> {
        let enabled = self.views.lock().is_ok_and(|v| v.enabled());
        if !enabled {
            return self.store.bindings_for_user(user_id, now as i64).await;
        }
        let generation = self.store.provisioning_generation();
        let devices = store::cache::read_through(
            &self.user_devices,
            user_id.to_string(),
            generation,
            async {
                let mut names: Vec<String> = self
                    .store
                    .devices_for_user(user_id)
                    .await?
                    .into_iter()
                    .map(|d| d.username)
                    .collect();
                names.sort();
                Ok::<_, store::StoreError>(Arc::new(names))
            },
        )
        .await?;
        // Each device either kept (its bindings) or to be read (what settles the read).
        let mut kept = Vec::with_capacity(devices.len());
        let mut to_read = Vec::new();
        if let Ok(v) = self.views.lock() {
            for d in devices.iter() {
                match v.kept(d, now, generation) {
                    Some(b) => kept.push(b),
                    None => to_read.push((d, v.peek(d, now, generation))),
                }
            }
        }
        if to_read.is_empty() && kept.len() == devices.len() {
            // In the store's order: by device (the names are sorted), then contact (a view
            // holds its device's bindings by contact, as `apply_changes` leaves them).
            return Ok(kept.iter().flat_map(|b| b.iter().cloned()).collect());
        }
        let all = self.store.bindings_for_user(user_id, now as i64).await?;
        if let Ok(mut v) = self.views.lock() {
            for (d, seen) in to_read {
                if let Some(seen) = seen {
                    let of_device = all
                        .iter()
                        .filter(|b| &b.device_username == d)
                        .cloned()
                        .collect();
                    v.settle(d, seen, Arc::new(of_device), now, generation);
                }
            }
        }
        Ok(all)
    }

    /// The TCP connection a device's contact registered over, if it is still known.
    pub fn connection_of(&self, device: &str, contact: &str) -> Option<ConnId> {
        self.conns
            .lock()
            .ok()?
            .get(&(device.to_string(), contact.to_string()))
            .copied()
    }

    /// Whether a phone registered from `ip` and its binding is live at `now` (unix seconds).
    pub fn is_registered_source(&self, ip: IpAddr, now: u64) -> bool {
        self.sources
            .lock()
            .map(|s| s.get(&ip).is_some_and(|&until| until > now))
            .unwrap_or(false)
    }

    /// Notes that `ip` holds a binding until `until`.
    fn note_source(&self, ip: IpAddr, until: u64, now: u64) {
        let Ok(mut s) = self.sources.lock() else {
            return;
        };
        let e = s.entry(ip).or_insert(until);
        *e = (*e).max(until);
        // Bounded by the live bindings: forget the expired ones now and then.
        if s.len() > 1024 && s.len().is_power_of_two() {
            s.retain(|_, &mut u| u > now);
        }
    }

    /// Removes expired bindings from the store.
    pub async fn sweep(&self) -> Result<usize, RegistrarError> {
        Ok(self.store.sweep_expired(unix_now() as i64).await?)
    }

    /// Checks digest credentials for `method` against a device's HA1 for our realm (MD5 or
    /// SHA-256, as the credentials say); an unknown device or another realm never verifies.
    fn verify(
        &self,
        creds: &Credentials,
        method: &str,
        device: Option<&Device>,
        now: u64,
    ) -> Verdict {
        let realm = &self.cfg.realm;
        let Ok(mut d) = self.digest.lock() else {
            return Verdict::BadNonce;
        };
        d.verify(
            creds,
            method,
            realm,
            |alg| {
                let dev = device?;
                if &dev.realm != realm {
                    return None;
                }
                match alg {
                    Algorithm::Md5 | Algorithm::Md5Sess => Some(dev.ha1_md5.expose().to_string()),
                    Algorithm::Sha256 | Algorithm::Sha256Sess => {
                        Some(dev.ha1_sha256.expose().to_string())
                    }
                    _ => None,
                }
            },
            now,
        )
    }

    fn challenge(&self, req: &Request, stale: bool, now: u64) -> Response {
        let mut resp = Response::for_request(req, 401);
        resp.set_to_tag(&self.stateless_tag(req));
        let md5_only = req.headers.get(&HeaderName::UserAgent).is_some_and(|ua| {
            self.cfg.md5_only_user_agents.iter().any(|p| {
                ua.get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
            })
        });
        let values: Vec<String> = match self.digest.lock() {
            Ok(d) => d.challenge_values(&self.cfg.realm, stale, now, |a| {
                !md5_only || a == Algorithm::Md5
            }),
            Err(_) => Vec::new(),
        };
        for v in values {
            resp.headers.add(HeaderName::WwwAuthenticate, v);
        }
        resp
    }

    /// The `Date` header's value for `now`, written once a second.
    fn date(&self, now: u64) -> bytes::Bytes {
        let Ok(mut d) = self.date.lock() else {
            return httpdate(now).into();
        };
        match &*d {
            Some((at, v)) if *at == now => v.clone(),
            _ => {
                let v = bytes::Bytes::from(httpdate(now));
                *d = Some((now, v.clone()));
                v
            }
        }
    }

    /// A To tag made from what names the request (Call-ID, From, CSeq, the top Via), keyed
    /// by this registrar: the same for a retransmission of the request, as a stateless UAS
    /// must make it (RFC 3261 §8.2.7), and not to be guessed from outside.
    fn stateless_tag(&self, req: &Request) -> String {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.tag_key.build_hasher();
        for name in [
            HeaderName::CallId,
            HeaderName::From,
            HeaderName::CSeq,
            HeaderName::Via,
        ] {
            if let Some(v) = req.headers.get(&name) {
                h.write(&v);
            }
            h.write_u8(0);
        }
        sip_core::auth::hex_lower(&h.finish().to_be_bytes())
    }

    /// Checks the device credentials of an out-of-dialog INVITE from a phone (a call from a
    /// registered device), with the digest rules of REGISTER — one-time nonces, replay
    /// refusal, failures delayed and locked out per source and per username — but as a proxy
    /// would: no `Proxy-Authorization` gets `407` with `Proxy-Authenticate`, a stale nonce a
    /// fresh `407`, and wrong credentials (or a device unknown) `403`, never a call.
    pub async fn authenticate_invite(
        &self,
        req: &Request,
        flow: &Flow,
        now: u64,
    ) -> Result<Device, Decision> {
        let quick = |response| Decision {
            response,
            delay: Duration::ZERO,
            flow_until: None,
        };
        let source = flow.remote.ip();
        let challenge = |stale: bool| {
            let c = self.challenge(req, stale, now);
            let mut r = Response::for_request(req, 407);
            r.set_to_tag(&new_tag());
            for v in c.headers.get_all(&HeaderName::WwwAuthenticate) {
                r.headers
                    .add(HeaderName::ProxyAuthenticate, v.to_str().into_owned());
            }
            r
        };
        let Some(auth_value) = req.header_str(&HeaderName::ProxyAuthorization) else {
            if self.locked(source, None, now) {
                return Err(quick(
                    Self::reply(req, 403).with_reason("Too many failed attempts"),
                ));
            }
            return Err(quick(challenge(false)));
        };
        let Ok(Authorization::Digest(creds)) = parse_authorization(&auth_value) else {
            return Err(quick(Self::reply(req, 403)));
        };
        let username = creds.username.clone();
        if self.locked(source, Some(&username), now) {
            return Err(quick(
                Self::reply(req, 403).with_reason("Too many failed attempts"),
            ));
        }
        let device = match self.device(&username).await {
            Ok(d) => d,
            Err(e) => return Err(quick(Self::store_failed(req, &e))),
        };
        let verdict = self.verify(&creds, &req.method.to_string(), device.as_deref(), now);
        match (verdict, device) {
            (Verdict::Ok, Some(d)) => {
                if let Ok(mut g) = self.guard.lock() {
                    g.succeed(&username);
                }
                Ok(Device::clone(&d))
            }
            (Verdict::Stale, _) => Err(quick(challenge(true))),
            (Verdict::BadNonce, _) => Err(quick(challenge(false))),
            (v, _) => {
                self.stats
                    .auth_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (delay, locked) = match self.guard.lock() {
                    Ok(mut g) => g.fail(source, Some(&username), now),
                    Err(_) => (Duration::ZERO, false),
                };
                if locked {
                    self.stats
                        .auth_lockouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(%source, username = %username, verdict = ?v, "INVITE from a phone: digest authentication failed");
                Err(Decision {
                    response: Self::reply(req, 403),
                    delay,
                    flow_until: None,
                })
            }
        }
    }

    fn reply(req: &Request, status: u16) -> Response {
        let mut resp = Response::for_request(req, status);
        resp.set_to_tag(&new_tag());
        resp
    }

    /// The answer when the store cannot serve a REGISTER: `503` with `Retry-After` (RFC 3261
    /// §21.5.4) when it is unavailable for now (disk full, I/O error), else `500`.
    fn store_failed(req: &Request, e: &store::StoreError) -> Response {
        if e.is_unavailable() {
            let mut r = Self::reply(req, 503).with_reason("Store Unavailable");
            r.headers.add(HeaderName::RetryAfter, "5");
            r
        } else {
            Self::reply(req, 500)
        }
    }

    /// Handles one REGISTER that arrived along `flow`, at `now` (unix seconds).
    pub async fn handle(&self, req: &Request, flow: &Flow, now: u64) -> Decision {
        let quick = |response| Decision {
            response,
            delay: Duration::ZERO,
            flow_until: None,
        };
        let source = flow.remote.ip();
        // 1. Authentication.
        let Some(auth_value) = req.header_str(&HeaderName::Authorization) else {
            return self.uncredentialed(req, source, now);
        };
        let creds = match parse_authorization(&auth_value) {
            Ok(Authorization::Digest(c)) => c,
            // An unknown scheme, or garbage: challenge with what we know (RFC 4475 §3.3.7).
            _ => return quick(self.challenge(req, false, now)),
        };
        let username = creds.username.clone();
        if self.locked(source, Some(&username), now) {
            self.stats
                .auth_refused_locked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return quick(Self::reply(req, 403).with_reason("Too many failed attempts"));
        }
        let device = match self.device_for_register(&username, now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "store lookup failed");
                return quick(Self::store_failed(req, &e));
            }
        };
        let verdict = self.verify(&creds, "REGISTER", device.as_deref(), now);
        let device = match (verdict, device) {
            (Verdict::Ok, Some(d)) => d,
            (Verdict::Stale, _) => return quick(self.challenge(req, true, now)),
            (Verdict::BadNonce | Verdict::Replay | Verdict::Unacceptable(_), _) => {
                return quick(self.challenge(req, false, now))
            }
            (v, _) => {
                // Wrong password or unknown device: the same answer for both.
                self.stats
                    .auth_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (delay, locked) = match self.guard.lock() {
                    Ok(mut g) => g.fail(source, Some(&username), now),
                    Err(_) => (Duration::ZERO, false),
                };
                if locked {
                    self.stats
                        .auth_lockouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%source, username = %username, "registration locked out after repeated failures");
                }
                tracing::info!(%source, username = %username, verdict = ?v, "digest authentication failed");
                return Decision {
                    response: self.challenge(req, false, now),
                    delay,
                    flow_until: None,
                };
            }
        };
        if let Ok(mut g) = self.guard.lock() {
            g.succeed(&username);
        }
        // 2. The address of record must be the device that authenticated.
        let to = req.view_to().ok();
        let aor_user = to
            .as_ref()
            .and_then(|t| t.uri.as_sip().and_then(|u| u.user));
        if aor_user != Some(device.username.as_bytes()) {
            return quick(Self::reply(req, 403).with_reason("To does not match the credentials"));
        }
        // 3. Contacts; 4. the bindings as they stand then.
        let bindings = match self.update_bindings(req, flow, &device, now).await {
            Ok(b) => b,
            Err(resp) => return quick(resp),
        };
        if let Some(last) = bindings.iter().map(|b| b.expires_at).max() {
            self.note_source(source, last.max(0) as u64, now);
        }
        let mut resp = Self::reply(req, 200);
        for b in bindings.iter() {
            let left = (b.expires_at - now as i64).max(0);
            use std::fmt::Write as _;
            let mut v = String::with_capacity(b.contact.len() + 96);
            let _ = write!(v, "<{}>;expires={left}", b.contact);
            if let Some(q) = b.q {
                let _ = write!(v, ";q={q}");
            }
            if let Some(i) = &b.instance {
                let _ = write!(v, ";+sip.instance=\"{i}\"");
            }
            if let Some(r) = b.reg_id {
                let _ = write!(v, ";reg-id={r}");
            }
            resp.headers.add(HeaderName::Contact, v);
        }
        resp.headers.add(HeaderName::Date, self.date(now));
        // RFC 3327 §5.3: the Path as received goes back in the 200 when the phone said it
        // supports path (Supported or Require); it is kept with the bindings either way.
        if has_option_tag(req, "path") {
            for p in req.headers.get_all(&PATH) {
                resp.headers.add(PATH, p.to_bytes());
            }
        }
        self.stats
            .registrations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let flow_until = flow.conn.map(|_| {
            let (source, transport) = (
                socket_addr_text(flow.remote),
                flow.transport.as_str().to_string(),
            );
            bindings
                .iter()
                .filter(|b| b.source == source && b.transport == transport)
                .map(|b| b.expires_at.max(0) as u64)
                .max()
                .unwrap_or(0)
        });
        Decision {
            response: resp,
            delay: Duration::ZERO,
            flow_until,
        }
    }

    /// [`Self::handle`] for a REGISTER without credentials (its first of a registration): a
    /// challenge, or a refusal while its source is locked out. Decided at once, with no
    /// store call to wait for, so a caller that sees no `Authorization` header needs no
    /// future or task for it.
    pub fn uncredentialed(&self, req: &Request, source: IpAddr, now: u64) -> Decision {
        let response = if self.locked(source, None, now) {
            self.stats
                .auth_refused_locked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Self::reply(req, 403).with_reason("Too many failed attempts")
        } else {
            self.challenge(req, false, now)
        };
        Decision {
            response,
            delay: Duration::ZERO,
            flow_until: None,
        }
    }

    fn locked(&self, source: IpAddr, user: Option<&str>, now: u64) -> bool {
        self.guard
            .lock()
            .map(|g| g.is_locked(source, user, now))
            .unwrap_or(false)
    }

    /// The unexpired bindings of `device` at `now`: from memory when the view of them is
    /// trusted, else read from the store (then with the provisioning generation read before).
    async fn current_bindings(
        &self,
        device: &str,
        now: u64,
    ) -> Result<(Arc<Vec<Binding>>, Seen, u64), store::StoreError> {
        let generation = self.store.provisioning_generation();
        let (kept, seen) = match self.views.lock() {
            Ok(mut v) => v.get(device, now, generation),
            Err(_) => (None, Seen::NOTHING),
        };
        if let Some(kept) = kept {
            return Ok((kept, seen, generation));
        }
        let read = self.store.bindings_for_device(device, now as i64).await?;
        Ok((Arc::new(read), seen, generation))
    }

    /// Reads `device`'s bindings back from the store after a write and keeps them in memory
    /// when nothing else changed them meanwhile (`seen`: from [`BindingViews::untrust`]).
    async fn read_back(
        &self,
        req: &Request,
        device: &str,
        seen: Seen,
        now: u64,
    ) -> Result<Arc<Vec<Binding>>, Response> {
        #[cfg(test)]
        self.read_backs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let generation = self.store.provisioning_generation();
        let read = match self.store.bindings_for_device(device, now as i64).await {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::error!(error = %e, "store lookup failed");
                self.abandon(device, seen, now);
                return Err(Self::store_failed(req, &e));
            }
        };
        if let Ok(mut v) = self.views.lock() {
            v.settle(device, seen, Arc::clone(&read), now, generation);
        }
        Ok(read)
    }

    /// [`BindingViews::abandon`] under the views' lock: a write of `device` that failed.
    fn abandon(&self, device: &str, write: Seen, now: u64) {
        if let Ok(mut v) = self.views.lock() {
            v.abandon(device, write, now);
        }
    }

    /// [`BindingViews::untrust_after`] under the views' lock.
    fn untrust_after(&self, device: &str, seen: Seen, now: u64) -> (Seen, bool) {
        match self.views.lock() {
            Ok(mut v) => v.untrust_after(device, seen, now),
            Err(_) => (Seen::NOTHING, false),
        }
    }

    /// The device's bindings after a write decided on `existing` (the bindings as they stood):
    /// the `done` changes applied to them in the order the store applied them (a contact
    /// twice in one REGISTER ends as its last change left it), unexpired, in the store's
    /// order (by contact). Kept and returned when nothing changed the device's entry while
    /// the write ran ([`BindingViews::settle_written`]); `None`: read the store.
    #[allow(clippy::too_many_arguments)]
    fn settle_written(
        &self,
        device: &str,
        seen: Seen,
        write: Seen,
        existing: &[Binding],
        done: Vec<Change>,
        now: u64,
        generation: u64,
    ) -> Option<Arc<Vec<Binding>>> {
        let mut views = self.views.lock().ok()?;
        let result = || Arc::new(apply_changes(existing, done, now));
        views.settle_written(device, seen, write, result, now, generation)
    }

    /// Marks the view of `device`'s bindings untrusted before a write of them.
    fn untrust(&self, device: &str, now: u64) -> Seen {
        match self.views.lock() {
            Ok(mut v) => v.untrust(device, now),
            Err(_) => Seen::NOTHING,
        }
    }

    /// Applies the REGISTER's contacts (RFC 3261 §10.3 steps 6-8) and returns the device's
    /// bindings as they stand then.
    ///
    /// Where each change goes: when every contact is a refresh of a binding as it stands and
    /// the store keeps refreshes in memory (SQLite), they are handed to it on this thread and
    /// kept in the registrar's view, with no store call to wait for (the store writes them
    /// within half a second). Anything else — a new, changed or removed contact, `*`, a store
    /// that writes refreshes at once — is written to the store before the answer and the
    /// bindings are read back.
    // The error is the response to send, built once per refused REGISTER: boxing it would
    // only add an allocation.
    #[allow(clippy::result_large_err)]
    async fn update_bindings(
        &self,
        req: &Request,
        flow: &Flow,
        device: &store::Device,
        now: u64,
    ) -> Result<Arc<Vec<Binding>>, Response> {
        let header_expires = req.expires().map_err(|_| Self::reply(req, 400))?;
        let call_id = req.call_id_str();
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let contacts = match req.contacts() {
            Ok(c) => c,
            Err(_) => return Err(Self::reply(req, 400).with_reason("Bad Contact")),
        };
        let (existing, seen, generation) = self
            .current_bindings(&device.username, now)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "store lookup failed");
                Self::store_failed(req, &e)
            })?;
        let username = &device.username;
        match contacts {
            None => {
                // A query: the bindings as read, kept in memory when they came from the store.
                if !seen.was_kept() {
                    if let Ok(mut v) = self.views.lock() {
                        v.settle(username, seen, Arc::clone(&existing), now, generation);
                    }
                }
                Ok(existing)
            }
            Some(ContactValue::Wildcard) => {
                if header_expires != Some(0) || req.headers.count(&HeaderName::Contact) > 1 {
                    return Err(Self::reply(req, 400).with_reason("Contact * needs Expires: 0"));
                }
                // §10.3 step 6: a `*` with a stale CSeq for the same Call-ID is out of order.
                if existing
                    .iter()
                    .any(|b| b.call_id == call_id && b.cseq >= cseq)
                {
                    return Err(Self::reply(req, 400).with_reason("Out of order CSeq"));
                }
                let write = self.untrust(username, now);
                if let Err(e) = self.store.remove_all_bindings(username).await {
                    self.abandon(username, write, now);
                    return Err(Self::store_failed(req, &e));
                }
                if let Ok(mut c) = self.conns.lock() {
                    c.retain(|(d, _), _| d != username);
                }
                self.read_back(req, username, write, now).await
            }
            Some(ContactValue::Addrs(addrs)) => {
                // RFC 3327: the Path of an edge proxy that relayed the REGISTER is kept with
                // each binding; requests to the binding go through it.
                let path: Vec<String> = match req.paths() {
                    Ok(p) => p.iter().map(|n| n.to_string()).collect(),
                    Err(_) => return Err(Self::reply(req, 400).with_reason("Bad Path")),
                };
                // Check everything first: the request is applied whole or not at all.
                let mut plan = Vec::with_capacity(addrs.len());
                for a in &addrs {
                    let exp = match a.params.get("expires") {
                        Some(Some(v)) => std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .ok_or_else(|| Self::reply(req, 400))?,
                        Some(None) => return Err(Self::reply(req, 400)),
                        None => u64::from(header_expires.unwrap_or(self.cfg.default_expires)),
                    };
                    if exp > 0 && exp < u64::from(self.cfg.min_expires) {
                        let mut r = Self::reply(req, 423);
                        r.headers
                            .add(HeaderName::MinExpires, self.cfg.min_expires.to_string());
                        return Err(r);
                    }
                    let exp = exp.min(u64::from(self.cfg.max_expires));
                    let contact = contact_key(a);
                    if let Some(b) = existing.iter().find(|b| b.contact == contact) {
                        if b.call_id == call_id && b.cseq >= cseq {
                            return Err(Self::reply(req, 400).with_reason("Out of order CSeq"));
                        }
                    }
                    plan.push((a, contact, exp));
                }
                let user_agent = req.header_str(&HeaderName::UserAgent);
                let (source, transport, local) = (
                    socket_addr_text(flow.remote),
                    flow.transport.as_str().to_string(),
                    socket_addr_text(flow.local),
                );
                let mut changes = Vec::with_capacity(plan.len());
                for (a, contact, exp) in plan {
                    if exp == 0 {
                        changes.push(Change::Remove(contact));
                        continue;
                    }
                    let binding = Binding {
                        device_username: username.clone(),
                        user_id: device.user_id.clone(),
                        contact,
                        source: source.clone(),
                        transport: transport.clone(),
                        local: local.clone(),
                        expires_at: (now + exp) as i64,
                        q: a.params
                            .get_str("q")
                            .and_then(|q| q.parse::<f32>().ok())
                            .filter(|q| (0.0..=1.0).contains(q)),
                        call_id: call_id.clone(),
                        cseq,
                        instance: a
                            .params
                            .get_str("+sip.instance")
                            .map(|i| i.trim_matches('"').to_string()),
                        reg_id: a.params.get_str("reg-id").and_then(|r| r.parse().ok()),
                        user_agent: user_agent.clone(),
                        updated_at: now as i64,
                        path: path.clone(),
                    };
                    // A refresh of a binding as it stands (only its expiry, CSeq, Call-ID or
                    // time changed) is written with others within half a second; a new or
                    // changed contact is durable before the answer.
                    if existing.iter().any(|old| is_refresh_of(old, &binding)) {
                        changes.push(Change::Refresh(binding));
                    } else {
                        changes.push(Change::Write(binding));
                    }
                }
                let changes = match self
                    .refresh_here(req, flow, &existing, seen, changes, now, generation)?
                {
                    Ok(kept) => return Ok(kept),
                    Err(changes) => changes,
                };
                let (write, current) = self.untrust_after(username, seen, now);
                // The changes as the store took them, in order, to make the result from when
                // nothing else changed the device's bindings meanwhile.
                let mut done: Vec<Change> = Vec::with_capacity(changes.len());
                for change in changes {
                    let (contact, stored) = match &change {
                        Change::Remove(contact) => {
                            let r = self.store.remove_binding(username, contact).await;
                            if let Ok(mut c) = self.conns.lock() {
                                c.remove(&(username.clone(), contact.clone()));
                            }
                            (None, r.map(|_| ()))
                        }
                        Change::Refresh(b) => {
                            (Some(&b.contact), self.store.refresh_binding(b).await)
                        }
                        Change::Write(b) => (Some(&b.contact), self.store.upsert_binding(b).await),
                    };
                    if let Err(e) = stored {
                        tracing::error!(error = %e, "cannot store binding");
                        self.abandon(username, write, now);
                        return Err(Self::store_failed(req, &e));
                    }
                    if let (Some(contact), Some(id), Ok(mut c)) =
                        (contact, flow.conn, self.conns.lock())
                    {
                        c.insert((username.clone(), contact.clone()), id);
                    }
                    done.push(change);
                }
                if current {
                    let after = self
                        .settle_written(username, seen, write, &existing, done, now, generation);
                    if let Some(after) = after {
                        return Ok(after);
                    }
                }
                self.read_back(req, username, write, now).await
            }
        }
    }

    /// When every change is a refresh and the store takes refreshes on this thread: hands
    /// them to it, keeps the result in the view (when nothing changed it since `seen`) and
    /// returns the bindings as they stand. `Ok(Err(changes))`: the changes, given back, go
    /// the way of writes.
    #[allow(clippy::result_large_err, clippy::too_many_arguments)]
    fn refresh_here(
        &self,
        req: &Request,
        flow: &Flow,
        existing: &[Binding],
        seen: Seen,
        changes: Vec<Change>,
        now: u64,
        generation: u64,
    ) -> Result<Result<Arc<Vec<Binding>>, Vec<Change>>, Response> {
        if changes.is_empty() || !changes.iter().all(|c| matches!(c, Change::Refresh(_))) {
            return Ok(Err(changes));
        }
        let refreshes: Vec<&Binding> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Refresh(b) => Some(b),
                _ => None,
            })
            .collect();
        let Some(first) = refreshes.first() else {
            return Ok(Err(changes));
        };
        let Ok(mut views) = self.views.lock() else {
            return Ok(Err(changes));
        };
        // The store's memory and the view change together, under the view's lock.
        match self.store.refresh_binding_here(first) {
            None => {
                drop(views);
                return Ok(Err(changes));
            }
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot store binding");
                views.forget(&first.device_username, now);
                return Err(Self::store_failed(req, &e));
            }
        }
        for b in &refreshes[1..] {
            if let Some(Err(e)) = self.store.refresh_binding_here(b) {
                tracing::error!(error = %e, "cannot store binding");
                views.forget(&first.device_username, now);
                return Err(Self::store_failed(req, &e));
            }
        }
        let device = first.device_username.clone();
        drop(refreshes);
        // The refreshed bindings move into the new view; the others are kept as they were.
        let mut refreshed: Vec<Binding> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Refresh(b) => Some(b),
                _ => None,
            })
            .collect();
        let mut fresh = Vec::with_capacity(refreshed.len());
        let now_bindings: Vec<Binding> = existing
            .iter()
            .enumerate()
            .map(
                |(i, old)| match refreshed.iter().position(|b| b.contact == old.contact) {
                    Some(j) => {
                        fresh.push(i);
                        refreshed.swap_remove(j)
                    }
                    None => old.clone(),
                },
            )
            .collect();
        let now_bindings = Arc::new(now_bindings);
        views.settle(&device, seen, Arc::clone(&now_bindings), now, generation);
        drop(views);
        if let (Some(id), Ok(mut c)) = (flow.conn, self.conns.lock()) {
            for &i in &fresh {
                let b = &now_bindings[i];
                c.insert((b.device_username.clone(), b.contact.clone()), id);
            }
        }
        Ok(Ok(now_bindings))
    }
}

/// One contact's change, decided before any is made.
enum Change {
    /// `expires=0`: the binding of this contact goes.
    Remove(String),
    /// The binding as it stands with a new expiry (CSeq, Call-ID): written within half a
    /// second.
    Refresh(Binding),
    /// A new or changed binding: written before the answer.
    Write(Binding),
}

/// `existing` (the bindings as they stood) with `done` applied in order: a refresh or write
/// sets its contact's binding, a removal drops it; then the unexpired at `now`, by contact
/// (the store's order).
fn apply_changes(existing: &[Binding], done: Vec<Change>, now: u64) -> Vec<Binding> {
    let mut after: Vec<Binding> = existing.to_vec();
    for change in done {
        match change {
            Change::Remove(contact) => after.retain(|b| b.contact != contact),
            Change::Refresh(b) | Change::Write(b) => {
                match after.iter_mut().find(|old| old.contact == b.contact) {
                    Some(old) => *old = b,
                    None => after.push(b),
                }
            }
        }
    }
    after.retain(|b| b.expires_at > now as i64);
    after.sort_by(|a, b| a.contact.cmp(&b.contact));
    after
}

/// Whether `new` is `old` refreshed: the same binding but for its expiry, CSeq, Call-ID and
/// time (and the owner, which is read back from the device).
fn is_refresh_of(old: &Binding, new: &Binding) -> bool {
    let Binding {
        device_username,
        user_id: _,
        contact,
        source,
        transport,
        local,
        expires_at: _,
        q,
        call_id: _,
        cseq: _,
        instance,
        reg_id,
        user_agent,
        updated_at: _,
        path,
    } = old;
    *device_username == new.device_username
        && *contact == new.contact
        && *source == new.source
        && *transport == new.transport
        && *local == new.local
        && *q == new.q
        && *instance == new.instance
        && *reg_id == new.reg_id
        && *user_agent == new.user_agent
        && *path == new.path
}

/// Whether `tag` is in the request's Supported or Require option tags.
fn has_option_tag(req: &Request, tag: &str) -> bool {
    [HeaderName::Supported, HeaderName::Require]
        .iter()
        .flat_map(|n| req.headers.get_all(n))
        .any(|v| {
            sip_core::message::typed::parse_token_list(&v)
                .unwrap_or_default()
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tag.as_bytes()))
        })
}

/// The nonce key of `registrar.nonce_secret`: SHA-256 of a label and the secret.
fn nonce_key(secret: &store::Secret) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"dialbridge registrar nonce key\0");
    h.update(secret.expose().as_bytes());
    h.finalize().into()
}

/// A binding's contact as stored: the URI alone (header parameters dropped).
fn contact_key(a: &NameAddr) -> String {
    use std::fmt::Write;
    // Room for a usual contact at once, not grown piece by piece.
    let mut key = String::with_capacity(96);
    let _ = write!(key, "{}", a.uri);
    key
}

/// Where to reach a binding (NAT traversal, RFC 3261 §18 with the registration's flow):
/// - over TCP, the connection the phone registered on (its source address);
/// - over UDP, the Contact when it names the very IP address the REGISTER came from (the
///   phone is not behind NAT; it may listen on another port than it sent from), else the
///   source address: a private or rewritten Contact is behind NAT, and the NAT binding the
///   REGISTER opened is the way back.
///
/// A binding registered through an edge proxy (RFC 3327 `Path`) is reached through the
/// first Path entry instead (its host must be an IP address; the transport is its
/// `transport` parameter, UDP by default); the caller puts the Path into Route headers.
pub fn binding_target(
    b: &Binding,
    conn: Option<ConnId>,
) -> Option<(Uri, sip_core::endpoint::Destination)> {
    let uri = Uri::parse(&b.contact).ok()?;
    if let Some(first) = b.path.first() {
        let text = bytes::Bytes::from(first.clone());
        let hop = NameAddr::parse_single(&text, &text).ok()?;
        let sip = hop.uri.as_sip()?;
        let ip = sip.host.ip()?;
        let transport = match sip.params.get_str("transport") {
            Some(t) => sip_core::transport::Transport::parse(&t)?,
            None => sip_core::transport::Transport::Udp,
        };
        return Some((
            uri,
            sip_core::endpoint::Destination {
                transport,
                addr: SocketAddr::new(ip, sip.port.unwrap_or(5060)),
                conn: None,
            },
        ));
    }
    let source: SocketAddr = b.source.parse().ok()?;
    let transport = sip_core::transport::Transport::parse(&b.transport)?;
    let contact_addr = uri.as_sip().and_then(|s| {
        s.host
            .ip()
            .map(|ip| SocketAddr::new(ip, s.port.unwrap_or(5060)))
    });
    let addr = match (transport, contact_addr) {
        (sip_core::transport::Transport::Udp, Some(a)) if a.ip() == source.ip() => a,
        _ => source,
    };
    Some((
        uri,
        sip_core::endpoint::Destination {
            transport,
            addr,
            conn,
        },
    ))
}

/// An RFC 1123 date for the `Date` header.
fn httpdate(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let weekday = DAYS[(days % 7) as usize];
    let (y, m, d) = store::calendar::civil_from_days(days as i64);
    format!(
        "{weekday}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sip_core::auth::DigestClient;
    use sip_core::message::{parse_message, SipMessage};
    use sip_core::transport::Transport;

    const REALM: &str = "dialbridge.test";

    fn store_with_alice() -> Arc<dyn Store> {
        use store::BlockingStore;
        let s = store::SqliteStore::open_in_memory().unwrap();
        let prov: store::Provisioning = toml_like();
        s.apply_provisioning(&prov, REALM).unwrap();
        Arc::new(store::StoreThreads::new(s, 1).unwrap())
    }

    fn toml_like() -> store::Provisioning {
        // Built through serde to exercise the same path as the config file.
        let text = r#"{
          "accounts": [{"id": "acct_01h2xcejqtf2nbrexx3vqjhp41", "name": "Acme", "region": "US",
             "api_keys": [{"key": "ak_test_1", "secret": "sk_test_1"}],
             "webhook_secret": "whsec_test_1", "allowed_prefixes": ["+1"]}],
          "users": [{"id": "user_01h2xcejqtf2nbrexx3vqjhp42", "account": "acct_01h2xcejqtf2nbrexx3vqjhp41",
             "name": "Alice", "extension": "1001", "agent_id": 42,
             "devices": [{"username": "alice-desk", "password": "s3cret-desk"}]}]
        }"#;
        serde_json::from_str(text).unwrap()
    }

    fn flow() -> Flow {
        Flow {
            transport: Transport::Udp,
            local: "127.0.0.1:5060".parse().unwrap(),
            remote: "192.0.2.10:40000".parse().unwrap(),
            conn: None,
        }
    }

    fn register(cseq: u32, contact: &str, expires: Option<u32>, auth: Option<String>) -> Request {
        let mut text = format!(
            "REGISTER sip:{REALM} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK{cseq}x\r\nFrom: <sip:alice-desk@{REALM}>;tag=f1\r\nTo: <sip:alice-desk@{REALM}>\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\nContact: {contact}\r\n"
        );
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = auth {
            text.push_str(&format!("Authorization: {a}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        match parse_message(Bytes::from(text)) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    /// A REGISTER with `extra` header lines, answered to its challenge.
    async fn authed_with(reg: &Registrar, cseq: u32, contact: &str, extra: &str) -> Decision {
        let build = |cseq: u32, auth: Option<String>| {
            let r = register(cseq, contact, Some(600), auth);
            let text = String::from_utf8_lossy(&r.encode()).replacen(
                "Content-Length: 0\r\n",
                &format!("{extra}Content-Length: 0\r\n"),
                1,
            );
            match parse_message(Bytes::from(text)) {
                Ok(SipMessage::Request(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        let now = 1_700_000_000;
        let first = reg.handle(&build(cseq, None), &flow(), now).await;
        assert_eq!(first.response.status, 401);
        let challenges: Vec<String> = first
            .response
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| v.to_str().into_owned())
            .collect();
        let refs: Vec<&str> = challenges.iter().map(String::as_str).collect();
        let value = DigestClient::new("alice-desk", "s3cret-desk")
            .answer(&refs, "REGISTER", &format!("sip:{REALM}"), b"")
            .unwrap();
        reg.handle(&build(cseq + 1, Some(value)), &flow(), now)
            .await
    }

    #[tokio::test]
    async fn a_path_is_kept_echoed_to_a_phone_that_supports_it_and_routes_requests() {
        let reg = registrar();
        let path = "<sip:127.0.0.2:5070;lr;received=sip:10.0.0.5:5060>";
        let d = authed_with(
            &reg,
            1,
            "<sip:alice@10.0.0.5:5060>",
            &format!("Supported: path, outbound\r\nPath: {path}\r\nPath: <sip:127.0.0.3;lr;transport=tcp>\r\n"),
        )
        .await;
        assert_eq!(d.response.status, 200);
        let echoed: Vec<String> = d
            .response
            .headers
            .get_all(&PATH)
            .map(|v| v.to_str().into_owned())
            .collect();
        assert_eq!(echoed, [path, "<sip:127.0.0.3;lr;transport=tcp>"]);
        let b = reg
            .store
            .bindings_for_device("alice-desk", 1_700_000_000)
            .await
            .unwrap();
        assert_eq!(
            b[0].path,
            [
                path.to_owned(),
                "<sip:127.0.0.3;lr;transport=tcp>".to_owned()
            ]
        );
        // Requests to the binding go to the first Path hop, not to the REGISTER's source.
        let (uri, dest) = binding_target(&b[0], None).unwrap();
        assert_eq!(uri.to_string(), "sip:alice@10.0.0.5:5060");
        assert_eq!(dest.addr, "127.0.0.2:5070".parse().unwrap());
        assert_eq!(dest.transport, Transport::Udp);

        // A phone that did not say it supports path: kept, not echoed.
        let reg = registrar();
        let d = authed_with(
            &reg,
            1,
            "<sip:alice@10.0.0.5:5060>",
            &format!("Path: {path}\r\n"),
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(d.response.headers.get_all(&PATH).count(), 0);
        let b = reg
            .store
            .bindings_for_device("alice-desk", 1_700_000_000)
            .await
            .unwrap();
        assert_eq!(b[0].path, [path.to_owned()]);

        // A direct registration has none, and is reached as before.
        let reg = registrar();
        let d = authed_with(&reg, 1, "<sip:alice@192.0.2.10:5060>", "").await;
        assert_eq!(d.response.status, 200);
        let b = reg
            .store
            .bindings_for_device("alice-desk", 1_700_000_000)
            .await
            .unwrap();
        assert!(b[0].path.is_empty());
        assert_eq!(
            binding_target(&b[0], None).unwrap().1.addr,
            "192.0.2.10:5060".parse().unwrap()
        );
    }

    async fn authed(
        reg: &Registrar,
        cseq: u32,
        contact: &str,
        expires: Option<u32>,
        password: &str,
        now: u64,
    ) -> Decision {
        authed_on(reg, &flow(), cseq, contact, expires, password, now).await
    }

    /// A digest REGISTER answered 200 (the challenge, then the credentials).
    async fn registered(
        reg: &Registrar,
        cseq: u32,
        contact: &str,
        expires: Option<u32>,
        password: &str,
        now: u64,
    ) {
        let d = authed(reg, cseq, contact, expires, password, now).await;
        assert_eq!(d.response.status, 200);
    }

    async fn authed_on(
        reg: &Registrar,
        flow: &Flow,
        cseq: u32,
        contact: &str,
        expires: Option<u32>,
        password: &str,
        now: u64,
    ) -> Decision {
        let first = reg
            .handle(&register(cseq, contact, expires, None), flow, now)
            .await;
        assert_eq!(first.response.status, 401);
        let challenges: Vec<String> = first
            .response
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| v.to_str().into_owned())
            .collect();
        assert_eq!(challenges.len(), 2);
        assert!(challenges.iter().any(|c| c.contains("algorithm=SHA-256")));
        assert!(challenges.iter().any(|c| c.contains("algorithm=MD5")));
        let mut client = DigestClient::new("alice-desk", password);
        let refs: Vec<&str> = challenges.iter().map(String::as_str).collect();
        let value = client
            .answer(&refs, "REGISTER", &format!("sip:{REALM}"), b"")
            .unwrap();
        reg.handle(
            &register(cseq + 1, contact, expires, Some(value)),
            flow,
            now,
        )
        .await
    }

    #[tokio::test]
    async fn a_registration_over_tcp_says_how_long_its_connection_carries_a_binding() {
        let reg = registrar();
        let now = 1_700_000_000;
        let tcp = Flow {
            transport: Transport::Tcp,
            conn: Some(7),
            ..flow()
        };
        let d = authed_on(
            &reg,
            &tcp,
            1,
            "<sip:alice@10.0.0.5:5060;transport=tcp>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(d.flow_until, Some(now + 600));
        // Removing the binding ends the hold; over UDP there is no connection to hold.
        let d = authed_on(
            &reg,
            &tcp,
            10,
            "<sip:alice@10.0.0.5:5060;transport=tcp>",
            Some(0),
            "s3cret-desk",
            now + 5,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(d.flow_until, Some(0));
        let d = authed(
            &reg,
            20,
            "<sip:alice@10.0.0.5:5060>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.flow_until, None);
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig::default(), store_with_alice()).unwrap()
    }

    /// A challenge issued by one node verifies on another that shares
    /// `registrar.nonce_secret`, and not on one with another secret (or none).
    #[tokio::test]
    async fn a_shared_nonce_secret_lets_another_node_verify_the_challenge() {
        let with = |secret: Option<&str>| {
            let cfg = RegistrarConfig {
                nonce_secret: secret.map(store::Secret::from),
                ..RegistrarConfig::default()
            };
            Registrar::new(cfg, store_with_alice()).unwrap()
        };
        let a = with(Some("cluster-secret-0123456789"));
        let b = with(Some("cluster-secret-0123456789"));
        let other = with(Some("another-secret-0123456789"));
        let none = with(None);
        let now = 1_700_000_000;
        let contact = "<sip:alice@10.0.0.5:5060>";
        let first = a
            .handle(&register(1, contact, Some(600), None), &flow(), now)
            .await;
        assert_eq!(first.response.status, 401);
        let challenges: Vec<String> = first
            .response
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| v.to_str().into_owned())
            .collect();
        let refs: Vec<&str> = challenges.iter().map(String::as_str).collect();
        let answer = |cseq: u32| {
            let mut client = DigestClient::new("alice-desk", "s3cret-desk");
            let value = client
                .answer(&refs, "REGISTER", &format!("sip:{REALM}"), b"")
                .unwrap();
            register(cseq, contact, Some(600), Some(value))
        };
        for (reg, status) in [(&other, 401), (&none, 401), (&b, 200)] {
            let d = reg.handle(&answer(2), &flow(), now + 1).await;
            assert_eq!(d.response.status, status);
        }
    }

    /// The first challenge is not kept for retransmissions (`Endpoint::challenge_stateless`),
    /// so a retransmission is challenged again: with the same To tag (RFC 3261 §8.2.7), and
    /// another request with another.
    #[tokio::test]
    async fn a_retransmitted_register_is_challenged_with_the_same_to_tag() {
        let reg = registrar();
        let now = 1_700_000_000;
        let contact = "<sip:alice@10.0.0.5:5060>";
        let to_tag = |d: &Decision| {
            assert_eq!(d.response.status, 401);
            d.response.to().unwrap().tag().unwrap().to_owned()
        };
        let first = reg
            .handle(&register(1, contact, Some(600), None), &flow(), now)
            .await;
        let again = reg
            .handle(&register(1, contact, Some(600), None), &flow(), now + 1)
            .await;
        let next = reg
            .handle(&register(2, contact, Some(600), None), &flow(), now + 1)
            .await;
        assert_eq!(to_tag(&first), to_tag(&again));
        assert_ne!(to_tag(&first), to_tag(&next));
        // Another registrar (another run) makes other tags of the same request.
        let other = registrar()
            .handle(&register(1, contact, Some(600), None), &flow(), now)
            .await;
        assert_ne!(to_tag(&first), to_tag(&other));
    }

    #[tokio::test]
    async fn register_binds_and_lists_contacts() {
        let reg = registrar();
        let now = 1_700_000_000;
        let d = authed(
            &reg,
            1,
            "<sip:alice@10.0.0.5:5060>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.response.status, 200);
        let contacts: Vec<String> = d
            .response
            .headers
            .get_all(&HeaderName::Contact)
            .map(|v| v.to_str().into_owned())
            .collect();
        assert_eq!(
            contacts,
            vec!["<sip:alice@10.0.0.5:5060>;expires=600".to_string()]
        );
        let b = reg
            .store
            .bindings_for_device("alice-desk", now as i64)
            .await
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].source, "192.0.2.10:40000");
        // A second contact, then the remaining time counts down with the (virtual) clock.
        let d = authed(
            &reg,
            10,
            "<sip:alice@10.0.0.5:5070>;q=0.5",
            Some(300),
            "s3cret-desk",
            now + 100,
        )
        .await;
        assert_eq!(d.response.status, 200);
        let listed: Vec<String> = d
            .response
            .headers
            .get_all(&HeaderName::Contact)
            .map(|v| v.to_str().into_owned())
            .collect();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(
            listed.iter().any(|c| c.contains(":5060>;expires=500")),
            "{listed:?}"
        );
        assert!(
            listed
                .iter()
                .any(|c| c.contains(":5070>;expires=300;q=0.5")),
            "{listed:?}"
        );
        // Expired bindings are not listed and are swept.
        assert_eq!(
            reg.store
                .bindings_for_device("alice-desk", (now + 450) as i64)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            reg.store.sweep_expired((now + 1000) as i64).await.unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn credentials_are_read_once_and_a_password_change_or_deletion_is_seen_at_once() {
        let reg = registrar();
        let now = 1_700_000_000;
        let ok = authed(
            &reg,
            1,
            "<sip:alice@10.0.0.5>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(ok.response.status, 200);
        let generation = reg.store.provisioning_generation();
        assert!(reg.credentials.contains_key("alice-desk"));
        // A refresh is authenticated from memory: the same entry serves it.
        let ok = authed(
            &reg,
            3,
            "<sip:alice@10.0.0.5>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(ok.response.status, 200);
        assert_eq!(reg.credentials.len(), 1);
        // A new password through the store: the old one no longer works, the new one does.
        reg.store
            .set_device_password("alice-desk", &store::Secret::new("n3w-pass"), REALM)
            .await
            .unwrap();
        assert!(reg.store.provisioning_generation() > generation);
        let old = authed(
            &reg,
            5,
            "<sip:alice@10.0.0.5>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(old.response.status, 401);
        let new = authed(&reg, 7, "<sip:alice@10.0.0.5>", Some(600), "n3w-pass", now).await;
        assert_eq!(new.response.status, 200);
        // A deleted device is refused at its next REGISTER.
        assert!(reg.store.delete_device("alice-desk").await.unwrap());
        let gone = authed(&reg, 9, "<sip:alice@10.0.0.5>", Some(600), "n3w-pass", now).await;
        assert_eq!(gone.response.status, 401);
    }

    #[tokio::test]
    async fn wrong_password_is_challenged_again_then_locked_out() {
        let reg = registrar();
        let now = 1_700_000_000;
        let mut delays = Vec::new();
        for i in 0..5 {
            let d = authed(
                &reg,
                1 + i * 2,
                "<sip:alice@10.0.0.5>",
                Some(600),
                "wrong",
                now,
            )
            .await;
            assert_eq!(d.response.status, 401);
            delays.push(d.delay);
        }
        assert!(
            delays.windows(2).all(|w| w[1] >= w[0]) && delays[4] > delays[0],
            "{delays:?}"
        );
        // Locked: even the right password is refused for a while.
        let d = reg
            .handle(
                &register(50, "<sip:alice@10.0.0.5>", Some(600), None),
                &flow(),
                now + 1,
            )
            .await;
        assert_eq!(d.response.status, 403);
        // After the lock-out the right password works.
        let d = authed(
            &reg,
            60,
            "<sip:alice@10.0.0.5>",
            Some(600),
            "s3cret-desk",
            now + 301,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(
            reg.stats
                .auth_lockouts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_registered_source_is_known_until_its_last_binding_expires() {
        let reg = registrar();
        let now = 1_700_000_000;
        let source: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(!reg.is_registered_source(source, now));
        // A challenge or a wrong password makes nobody known.
        let d = reg
            .handle(
                &register(1, "<sip:alice@10.0.0.5>", Some(600), None),
                &flow(),
                now,
            )
            .await;
        assert_eq!(d.response.status, 401);
        assert!(!reg.is_registered_source(source, now));
        let d = authed(
            &reg,
            2,
            "<sip:alice@10.0.0.5>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert!(reg.is_registered_source(source, now));
        assert!(reg.is_registered_source(source, now + 599));
        assert!(!reg.is_registered_source(source, now + 600));
        assert!(!reg.is_registered_source("192.0.2.11".parse().unwrap(), now));
    }

    #[tokio::test]
    async fn expires_rules() {
        let reg = registrar();
        let now = 1_700_000_000;
        let d = authed(
            &reg,
            1,
            "<sip:alice@10.0.0.5>",
            Some(10),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.response.status, 423);
        assert_eq!(
            d.response
                .headers
                .get(&HeaderName::MinExpires)
                .map(|v| v.as_bytes()),
            Some(&b"60"[..])
        );
        let d = authed(
            &reg,
            3,
            "<sip:alice@10.0.0.5>;expires=99999",
            None,
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.response.status, 200);
        let c = String::from_utf8_lossy(&d.response.headers.get(&HeaderName::Contact).unwrap())
            .into_owned();
        assert!(c.ends_with("expires=7200"), "{c}");
        // Unregister all with * and Expires: 0.
        let d = authed(&reg, 5, "*", Some(0), "s3cret-desk", now).await;
        assert_eq!(d.response.status, 200);
        assert!(d.response.headers.get(&HeaderName::Contact).is_none());
        assert!(reg
            .store
            .bindings_for_device("alice-desk", now as i64)
            .await
            .unwrap()
            .is_empty());
        // * without Expires: 0 is a bad request.
        let d = authed(&reg, 7, "*", Some(60), "s3cret-desk", now).await;
        assert_eq!(d.response.status, 400);
    }

    #[tokio::test]
    async fn known_md5_only_agents_get_md5_only() {
        let reg = registrar();
        let mut r = register(1, "<sip:x@10.0.0.5>", Some(600), None);
        r.headers
            .add(HeaderName::UserAgent, "baresip v1.0.0 (x86_64/linux)");
        let d = reg.handle(&r, &flow(), 1).await;
        let ch: Vec<String> = d
            .response
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| v.to_str().into_owned())
            .collect();
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert!(ch[0].contains("algorithm=MD5"), "{ch:?}");
    }

    #[tokio::test]
    async fn to_must_match_credentials() {
        let reg = registrar();
        let mut r = register(1, "<sip:x@10.0.0.5>", Some(600), None);
        r.headers.set(HeaderName::To, format!("<sip:bob@{REALM}>"));
        let first = reg.handle(&r, &flow(), 1).await;
        let ch: Vec<String> = first
            .response
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|v| v.to_str().into_owned())
            .collect();
        let refs: Vec<&str> = ch.iter().map(String::as_str).collect();
        let mut client = DigestClient::new("alice-desk", "s3cret-desk");
        let v = client
            .answer(&refs, "REGISTER", &format!("sip:{REALM}"), b"")
            .unwrap();
        r.headers.add(HeaderName::Authorization, v);
        assert_eq!(reg.handle(&r, &flow(), 1).await.response.status, 403);
    }

    #[test]
    fn nat_target_uses_source() {
        let b = Binding {
            device_username: "d".into(),
            user_id: "u".into(),
            contact: "sip:alice@10.0.0.5:5060".into(),
            source: "203.0.113.9:40001".into(),
            transport: "udp".into(),
            local: "127.0.0.1:5060".into(),
            expires_at: 0,
            q: None,
            call_id: "c".into(),
            cseq: 1,
            instance: None,
            reg_id: None,
            user_agent: None,
            updated_at: 0,
            path: Vec::new(),
        };
        let (_, d) = binding_target(&b, None).unwrap();
        assert_eq!(d.addr, "203.0.113.9:40001".parse().unwrap());
        // Same IP as the source: the contact's port is where the phone listens.
        let b2 = Binding {
            contact: "sip:alice@203.0.113.9:5062".into(),
            ..b.clone()
        };
        let (_, d) = binding_target(&b2, None).unwrap();
        assert_eq!(d.addr, "203.0.113.9:5062".parse().unwrap());
        // TCP: always the connection's source.
        let b3 = Binding {
            transport: "tcp".into(),
            ..b2
        };
        let (_, d) = binding_target(&b3, Some(7)).unwrap();
        assert_eq!(
            (d.addr, d.conn),
            ("203.0.113.9:40001".parse().unwrap(), Some(7))
        );
    }

    /// A registrar on an SQLite file, and a second connection to the file that sees only
    /// what is written to it (none of the refreshes the first keeps in memory).
    struct OnFile {
        reg: Registrar,
        disk: store::SqliteStore,
        path: std::path::PathBuf,
    }

    impl OnFile {
        fn new(name: &str) -> OnFile {
            use store::BlockingStore;
            let path = std::env::temp_dir().join(format!(
                "dialbridge-registrar-{name}-{}.db",
                std::process::id()
            ));
            OnFile::remove(&path);
            let s = store::SqliteStore::open_path(&path).unwrap();
            s.apply_provisioning(&toml_like(), REALM).unwrap();
            let store: Arc<dyn Store> = Arc::new(store::StoreThreads::new(s, 1).unwrap());
            OnFile {
                reg: Registrar::new(RegistrarConfig::default(), store).unwrap(),
                disk: store::SqliteStore::open_path(&path).unwrap(),
                path,
            }
        }

        fn remove(path: &std::path::Path) {
            for ext in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(ext);
                let _ = std::fs::remove_file(p);
            }
        }

        /// Expiry (unix seconds) of each binding of alice-desk as written to the file.
        fn on_disk(&self, now: u64) -> Vec<(String, i64)> {
            use store::BlockingStore;
            self.disk
                .bindings_for_device("alice-desk", now as i64)
                .unwrap()
                .into_iter()
                .map(|b| (b.contact, b.expires_at))
                .collect()
        }
    }

    fn contact_expires(d: &Decision) -> Vec<String> {
        d.response
            .headers
            .get_all(&HeaderName::Contact)
            .map(|v| v.to_str().into_owned())
            .collect()
    }

    /// A new contact is on disk when its 200 is sent; a refresh is answered at once, kept
    /// in memory, and on disk after the next flush (the server flushes twice a second).
    #[tokio::test]
    async fn a_new_contact_is_written_before_the_200_and_a_refresh_at_the_next_flush() {
        let f = OnFile::new("durable");
        let now = 1_700_000_000;
        let d = authed(
            &f.reg,
            1,
            "<sip:alice@192.0.2.10:5060>",
            Some(600),
            "s3cret-desk",
            now,
        )
        .await;
        assert_eq!(d.response.status, 200);
        let contact = "sip:alice@192.0.2.10:5060".to_owned();
        assert_eq!(f.on_disk(now), [(contact.clone(), (now + 600) as i64)]);

        let later = now + 100;
        let d = authed(
            &f.reg,
            3,
            "<sip:alice@192.0.2.10:5060>",
            Some(1200),
            "s3cret-desk",
            later,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(contact_expires(&d), [format!("<{contact}>;expires=1200")]);
        // Readers of the store see the refresh; the file gets it at the flush.
        let seen = f
            .reg
            .store
            .bindings_for_device("alice-desk", later as i64)
            .await
            .unwrap();
        assert_eq!(seen[0].expires_at, (later + 1200) as i64);
        assert_eq!(f.on_disk(later), [(contact.clone(), (now + 600) as i64)]);
        assert_eq!(f.reg.store.flush_refreshes().await.unwrap(), 1);
        assert_eq!(f.on_disk(later), [(contact.clone(), (later + 1200) as i64)]);

        // A second contact and the removal of the first are on disk before their 200s.
        let d = authed(
            &f.reg,
            5,
            "<sip:alice@192.0.2.10:5070>",
            Some(600),
            "s3cret-desk",
            later,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(contact_expires(&d).len(), 2);
        assert_eq!(f.on_disk(later).len(), 2);
        let d = authed(
            &f.reg,
            7,
            "<sip:alice@192.0.2.10:5060>",
            Some(0),
            "s3cret-desk",
            later,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(
            contact_expires(&d),
            ["<sip:alice@192.0.2.10:5070>;expires=600"]
        );
        assert_eq!(
            f.on_disk(later),
            [("sip:alice@192.0.2.10:5070".to_owned(), (later + 600) as i64)]
        );
        drop(f.reg);
        OnFile::remove(&f.path);
    }

    /// A write decided on bindings that nothing else touched answers with them and its own
    /// changes, made in memory, with no read of the store after it; the answer is what the
    /// store then holds. A write while another write of the device may be under way (one
    /// whose REGISTER went away) reads the store back instead.
    #[tokio::test]
    async fn a_write_on_bindings_as_they_stand_answers_without_reading_them_back() {
        use std::sync::atomic::Ordering::Relaxed;
        let f = OnFile::new("written");
        let now = 1_700_000_000;
        let from = |port: u16| Flow {
            remote: SocketAddr::from(([192, 0, 2, 10], port)),
            ..flow()
        };
        let a = "<sip:alice@192.0.2.10:5060>";
        let b = "<sip:alice@192.0.2.10:5070>";
        // (cseq, contact, expires, source port, time): a new contact, a second one, a
        // refresh, the first moved to another source (a changed binding), a removal, one
        // that ends at once.
        let steps = [
            (1, a, Some(600), 40000, now),
            (3, b, Some(300), 40000, now + 1),
            (5, a, Some(900), 40000, now + 2),
            (7, a, Some(900), 40002, now + 3),
            (9, b, Some(0), 40000, now + 4),
            (11, b, Some(60), 40000, now + 5),
        ];
        for (cseq, contact, expires, port, at) in steps {
            let d = authed_on(
                &f.reg,
                &from(port),
                cseq,
                contact,
                expires,
                "s3cret-desk",
                at,
            )
            .await;
            assert_eq!(d.response.status, 200, "step {cseq}");
            let stored: Vec<String> = f
                .reg
                .store
                .bindings_for_device("alice-desk", at as i64)
                .await
                .unwrap()
                .iter()
                .map(|b| format!("<{}>;expires={}", b.contact, b.expires_at - at as i64))
                .collect();
            assert_eq!(contact_expires(&d), stored, "step {cseq}");
        }
        // The first REGISTER read the device's bindings before its write; none was read
        // back after one.
        assert_eq!(f.reg.read_backs.load(Relaxed), 0);

        // A write of the device that never settled: the next one cannot trust what it reads.
        f.reg.untrust("alice-desk", now + 5);
        let d = authed_on(
            &f.reg,
            &from(40004),
            13,
            b,
            Some(120),
            "s3cret-desk",
            now + 6,
        )
        .await;
        assert_eq!(d.response.status, 200);
        assert_eq!(f.reg.read_backs.load(Relaxed), 1);
        assert_eq!(
            contact_expires(&d),
            [
                "<sip:alice@192.0.2.10:5060>;expires=897",
                "<sip:alice@192.0.2.10:5070>;expires=120"
            ]
        );
        // The write that never settled still counts as under way: the next reads back too.
        let d = authed_on(&f.reg, &from(40004), 15, b, Some(0), "s3cret-desk", now + 7).await;
        assert_eq!(
            contact_expires(&d),
            ["<sip:alice@192.0.2.10:5060>;expires=896"]
        );
        assert_eq!(f.reg.read_backs.load(Relaxed), 2);
        // A lifetime after it began it no longer does: writes are decided on bindings as
        // they stand again.
        let d = authed_on(
            &f.reg,
            &from(40004),
            17,
            b,
            Some(60),
            "s3cret-desk",
            now + 40,
        )
        .await;
        assert_eq!(
            contact_expires(&d),
            [
                "<sip:alice@192.0.2.10:5060>;expires=863",
                "<sip:alice@192.0.2.10:5070>;expires=60"
            ]
        );
        assert_eq!(f.reg.read_backs.load(Relaxed), 2);
        // A contact given twice in one REGISTER ends as its last change left it, in the
        // answer as in the store.
        let twice =
            "<sip:alice@192.0.2.10:5080>;expires=600, <sip:alice@192.0.2.10:5080>;expires=0";
        let d = authed_on(
            &f.reg,
            &from(40004),
            19,
            twice,
            None,
            "s3cret-desk",
            now + 41,
        )
        .await;
        assert_eq!(d.response.status, 200);
        let stored: Vec<String> = f
            .reg
            .store
            .bindings_for_device("alice-desk", (now + 41) as i64)
            .await
            .unwrap()
            .iter()
            .map(|b| {
                format!(
                    "<{}>;expires={}",
                    b.contact,
                    b.expires_at - (now + 41) as i64
                )
            })
            .collect();
        assert_eq!(contact_expires(&d), stored);
        assert_eq!(stored.len(), 2);
        assert_eq!(f.reg.read_backs.load(Relaxed), 2);
        drop(f.reg);
        OnFile::remove(&f.path);
    }

    /// A call's fork reads the user's bindings from the registrar's memory while they are
    /// trusted: what the registrar wrote itself at once, a binding written behind its back
    /// (another process on the same file) once the lifetime since the last read has passed.
    /// A read for a call keeps what it found for the next calls.
    #[tokio::test]
    async fn a_call_reads_the_bindings_the_registrar_keeps() {
        let f = OnFile::new("fork");
        let now = 1_700_000_000;
        let user = "user_01h2xcejqtf2nbrexx3vqjhp42";
        let contacts = |bindings: Vec<Binding>| -> Vec<String> {
            bindings.into_iter().map(|b| b.contact).collect()
        };
        let a = "<sip:alice@192.0.2.10:5060>";
        let d = authed_on(&f.reg, &flow(), 1, a, Some(600), "s3cret-desk", now).await;
        assert_eq!(d.response.status, 200);
        let first = f.reg.bindings_for_user(user, now).await.unwrap();
        assert_eq!(contacts(first), ["sip:alice@192.0.2.10:5060"]);

        // Another writer of the file: not seen while the registrar's memory is trusted.
        let write_behind = |contact: &str, at: u64| {
            let binding = Binding {
                device_username: "alice-desk".into(),
                user_id: user.into(),
                contact: contact.into(),
                source: "192.0.2.10:5090".into(),
                transport: "udp".into(),
                local: "127.0.0.1:5060".into(),
                expires_at: at as i64 + 600,
                q: None,
                call_id: "elsewhere".into(),
                cseq: 1,
                instance: None,
                reg_id: None,
                user_agent: None,
                updated_at: at as i64,
                path: Vec::new(),
            };
            let store = Arc::clone(&f.reg.store);
            async move { store.upsert_binding(&binding).await.unwrap() }
        };
        let reg = &f.reg;
        let fork_at =
            |at: u64| async move { contacts(reg.bindings_for_user(user, at).await.unwrap()) };
        write_behind("sip:alice@192.0.2.10:5090", now + 1).await;
        assert_eq!(fork_at(now + 1).await, ["sip:alice@192.0.2.10:5060"]);
        // A lifetime after the registrar read them, the store is read again, and what the
        // read found is kept: a write behind its back after it is not seen yet.
        let later = now + BINDINGS_TTL.as_secs();
        let both = ["sip:alice@192.0.2.10:5060", "sip:alice@192.0.2.10:5090"];
        assert_eq!(fork_at(later).await, both);
        write_behind("sip:alice@192.0.2.10:5099", later + 1).await;
        assert_eq!(fork_at(later + 1).await, both);
        // A REGISTER through the registrar is seen by the next call at once, in the store's
        // order (by contact).
        let c = "<sip:alice@192.0.2.10:5070>";
        let d = authed_on(&f.reg, &flow(), 3, c, Some(600), "s3cret-desk", later + 2).await;
        assert_eq!(d.response.status, 200);
        let after = contacts(f.reg.bindings_for_user(user, later + 2).await.unwrap());
        assert_eq!(
            after,
            [
                "sip:alice@192.0.2.10:5060",
                "sip:alice@192.0.2.10:5070",
                "sip:alice@192.0.2.10:5090"
            ]
        );
        // A provisioning change drops what is kept: the store is read.
        f.reg
            .store
            .apply_provisioning(&toml_like(), REALM)
            .await
            .unwrap();
        let read = contacts(f.reg.bindings_for_user(user, later + 3).await.unwrap());
        assert!(
            read.contains(&"sip:alice@192.0.2.10:5099".to_owned()),
            "{read:?}"
        );
        drop(f.reg);
        OnFile::remove(&f.path);
    }

    /// A process that dies with refreshes in memory loses only their new expiries: every
    /// binding it answered 200 for is on disk, with its expiry as last written.
    #[tokio::test]
    async fn a_crash_loses_the_new_expiry_of_a_refresh_never_a_binding() {
        let f = OnFile::new("crash");
        let now = 1_700_000_000;
        let a = "<sip:alice@192.0.2.10:5060>";
        let b = "<sip:alice@192.0.2.10:5070>";
        registered(&f.reg, 1, a, Some(600), "s3cret-desk", now).await;
        registered(&f.reg, 3, a, Some(3600), "s3cret-desk", now + 60).await;
        registered(&f.reg, 5, b, Some(600), "s3cret-desk", now + 60).await;
        // Gone without a flush (no destructor runs).
        let path = f.path.clone();
        std::mem::forget(f.reg);
        drop(f.disk);
        use store::BlockingStore;
        let reopened = store::SqliteStore::open_path(&path).unwrap();
        let kept: Vec<(String, i64)> = reopened
            .bindings_for_device("alice-desk", now as i64)
            .unwrap()
            .into_iter()
            .map(|b| (b.contact, b.expires_at))
            .collect();
        assert_eq!(
            kept,
            [
                ("sip:alice@192.0.2.10:5060".to_owned(), (now + 600) as i64),
                (
                    "sip:alice@192.0.2.10:5070".to_owned(),
                    (now + 60 + 600) as i64
                ),
            ]
        );
        drop(reopened);
        OnFile::remove(&path);
    }

    /// The bindings kept in memory are read from the store again after a provisioning change
    /// through it, and after their lifetime: a binding removed behind the registrar's back
    /// (on the file) is then seen gone, and a refresh of it writes it anew.
    #[tokio::test]
    async fn kept_bindings_are_read_again_after_a_provisioning_change_or_their_lifetime() {
        use store::BlockingStore;
        let f = OnFile::new("coherent");
        let now = 1_700_000_000;
        let a = "<sip:alice@192.0.2.10:5060>";
        let b = "<sip:alice@192.0.2.10:5070>";
        registered(&f.reg, 1, a, Some(600), "s3cret-desk", now).await;
        registered(&f.reg, 3, b, Some(600), "s3cret-desk", now).await;
        // Removed on the file by someone else.
        assert!(f
            .disk
            .remove_binding("alice-desk", "sip:alice@192.0.2.10:5070")
            .unwrap());
        f.reg
            .store
            .apply_provisioning(&toml_like(), REALM)
            .await
            .unwrap();
        let d = authed(&f.reg, 5, a, Some(600), "s3cret-desk", now + 1).await;
        assert_eq!(
            contact_expires(&d),
            ["<sip:alice@192.0.2.10:5060>;expires=600"]
        );

        // Again (once the refresh just made is written, as the server does within half a
        // second), and this time nothing tells the registrar but time.
        f.reg.store.flush_refreshes().await.unwrap();
        assert!(f
            .disk
            .remove_binding("alice-desk", "sip:alice@192.0.2.10:5060")
            .unwrap());
        let late = now + 1 + BINDINGS_TTL.as_secs();
        let d = authed(&f.reg, 7, a, Some(600), "s3cret-desk", late).await;
        assert_eq!(
            contact_expires(&d),
            ["<sip:alice@192.0.2.10:5060>;expires=600"]
        );
        // Not a refresh of what the registrar remembered: written before the 200.
        assert_eq!(
            f.on_disk(late),
            [("sip:alice@192.0.2.10:5060".to_owned(), (late + 600) as i64)]
        );
        drop(f.reg);
        OnFile::remove(&f.path);
    }

    #[test]
    fn http_dates() {
        assert_eq!(httpdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(httpdate(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
