//! The configuration file (SPEC §3): a serde struct with defaults, loaded, then validated
//! before anything starts. Every refusal names the file, the key and the reason.

use serde::Deserialize;
use sip_core::transport::ListenAddr;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// A configuration problem: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub listen: Vec<String>,
    pub domain: String,
    pub advertise: Option<String>,
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    /// A TCP connection that received nothing for this long is closed, unless a
    /// registration lives on it.
    pub tcp_idle_secs: u64,
    /// An accepted TCP connection must deliver one complete message within this time.
    pub first_message_secs: u64,
    /// Accepted TCP connections open at once; 0: what the descriptor budget leaves.
    pub max_connections: usize,
    /// Accepted TCP connections open at once from one address (registered phones and trunks
    /// are not held to it); 0: a sixteenth of `max_connections`.
    pub max_connections_per_ip: usize,
    /// Requests one source address may send per second (and at once); past it the source
    /// is ignored for `request_mute_secs`. 0 turns the guard off. Registered phones,
    /// trunks and `refusal_exempt` are exempt.
    pub requests_per_sec: u32,
    pub request_mute_secs: u64,
    pub max_message_size: usize,
    pub user_agent: String,
    /// Answers to requests that open nothing (refusals, challenges, OPTIONS) one source
    /// address may get per second, and at once; past it the source gets nothing for
    /// `refusal_mute_secs`. 0 turns the budget off. Registered phones and trunks are exempt.
    pub refusals_per_sec: u32,
    pub refusal_mute_secs: u64,
    /// Source addresses tracked by the budget at most (bounded memory).
    pub refusal_sources: usize,
    /// Addresses or prefixes ("10.0.0.0/8") never muted: an edge proxy, a trunk named by DNS.
    pub refusal_exempt: Vec<String>,
    /// Stateless answers kept for `64*T1` so that a retransmitted request gets the same one.
    pub answered_cache: usize,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()],
            domain: "dialbridge.test".into(),
            advertise: None,
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            tcp_idle_secs: 300,
            first_message_secs: 10,
            max_connections: 0,
            max_connections_per_ip: 0,
            requests_per_sec: 200,
            request_mute_secs: 30,
            max_message_size: 65_535,
            user_agent: concat!("dialbridge/", env!("CARGO_PKG_VERSION")).into(),
            refusals_per_sec: 30,
            refusal_mute_secs: 10,
            refusal_sources: 65_536,
            refusal_exempt: Vec::new(),
            answered_cache: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub nonce_lifetime_secs: u64,
    /// Failed digest attempts (per source address or per username) before slowing down.
    pub auth_fail_limit: u32,
    pub auth_fail_window_secs: u64,
    /// How long a source/username that went over the limit is refused.
    pub auth_lockout_secs: u64,
    /// Digest challenges offered, in order: "MD5", "SHA-256" (both by default, MD5 first
    /// for UAs that answer only the first challenge).
    pub digest_algorithms: Vec<String>,
    /// User-Agent prefixes challenged with MD5 only (UAs that give up on an unknown
    /// algorithm instead of using MD5).
    pub md5_only_user_agents: Vec<String>,
    /// Shared by nodes so that each accepts the digest challenges of the others (at least
    /// 16 characters; never logged). Default: a random key per run.
    pub nonce_secret: Option<store::Secret>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            nonce_lifetime_secs: 300,
            auth_fail_limit: 5,
            auth_fail_window_secs: 60,
            auth_lockout_secs: 300,
            digest_algorithms: vec!["MD5".into(), "SHA-256".into()],
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub bind: String,
    pub ports: String,
    pub advertise: Option<String>,
    pub timeout_secs: u64,
    /// Forwarding threads; 0 = one per core.
    pub workers: usize,
    /// Accept a leg's media only from its peer's SDP and signalling addresses, and move to a
    /// new source port only after `probation_packets` in sequence (RTP Bleed protection).
    pub strict_source: bool,
    /// Packets in sequence with one SSRC before a leg follows a new source port.
    pub probation_packets: u8,
}

impl MediaConfig {
    /// The relay's latching policy these settings select.
    pub fn latch(&self) -> media::LatchMode {
        if self.strict_source {
            media::LatchMode::Strict {
                probation: self.probation_packets,
            }
        } else {
            media::LatchMode::LOOSE
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind: "127.0.0.1".into(),
            ports: "20000-29999".into(),
            advertise: None,
            timeout_secs: 30,
            workers: 0,
            strict_source: true,
            probation_packets: media::LatchMode::DEFAULT_PROBATION,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: String,
    /// Connections open at once; 0: what the descriptor budget leaves.
    pub max_connections: usize,
    /// Connections open at once from one address; 0: a sixteenth of `max_connections`.
    pub max_connections_per_ip: usize,
    /// A request's head must arrive within this time (a new connection's first one within
    /// this time of the accept).
    pub header_read_secs: u64,
    /// A request body may be silent this long between two reads.
    pub body_read_secs: u64,
    /// A kept-alive connection may wait this long for its next request.
    pub idle_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            max_connections: 0,
            max_connections_per_ip: 0,
            header_read_secs: 10,
            body_read_secs: 30,
            idle_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://dialbridge.db".into(),
        }
    }
}

/// `[node]`: this node among several sharing one database (SPEC §9.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unique per node; default: the host name.
    pub id: Option<String>,
    /// How other nodes reach this one's REST API; default: `http://` + `api.listen`.
    pub api_url: Option<String>,
    /// How long a node's lease holds without a heartbeat; a node silent that long is taken
    /// to be dead and another node ends its calls. Renewed every third of it.
    pub lease_secs: u64,
    /// Shared by the nodes: signs the requests one node forwards to another (a hang-up of a
    /// call another node runs). Without it nothing is forwarded.
    pub secret: Option<store::Secret>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: None,
            api_url: None,
            lease_secs: 15,
            secret: None,
        }
    }
}

/// `[node]`, checked and completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    pub id: String,
    pub api_url: String,
    pub lease: Duration,
}

/// The host name (`/proc/sys/kernel/hostname`), the default node id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dialbridge".to_owned())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub agent_ring_secs: u64,
    pub customer_ring_secs: u64,
    pub max_concurrent: usize,
    /// On SIGTERM, how long live calls may go on before they are hung up.
    pub shutdown_grace_secs: u64,
    /// Agent confirm: how long the agent has to press `1` (SPEC §9.4).
    pub confirm_secs: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            agent_ring_secs: 30,
            customer_ring_secs: 45,
            max_concurrent: 10_000,
            shutdown_grace_secs: 30,
            confirm_secs: 10,
        }
    }
}

/// `[recording]`: where call recordings go and how long they are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// The directory of the recordings (`<call id>.wav`); created by the first recording.
    pub dir: std::path::PathBuf,
    /// Recordings older than this many days are deleted (checked hourly); 0 keeps them.
    pub retention_days: u32,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            dir: std::path::PathBuf::from("recordings"),
            retention_days: 0,
        }
    }
}

/// `[runtime]`: the threads that run SIP, the REST API and the calls.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads of the async runtime; 0 = [`default_workers`].
    pub workers: usize,
}

impl RuntimeConfig {
    /// The worker threads to start: `workers`, or [`default_workers`] when 0.
    pub fn worker_threads(&self) -> usize {
        if self.workers == 0 {
            default_workers()
        } else {
            self.workers
        }
    }
}

/// Most worker threads `[runtime] workers` may ask for.
pub const MAX_RUNTIME_WORKERS: usize = 1024;

/// One worker thread fewer than the cores, and at least one. The server's other busy
/// threads (the relay's forwarding threads, the call journal's writer, the store's threads)
/// are not the runtime's, and on a small machine a second worker mostly wakes up to find
/// nothing it may take: the task that was just woken waits in the first worker's own slot.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// `[log]`: what the log shows besides its level (`RUST_LOG`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Every SIP message received and sent, whole, under the log target `sip_trace`
    /// (also `serve --sip-trace`).
    pub sip_trace: bool,
}

/// `[hep]`: SIP (and RTCP) to a Homer collector as HEPv3. Off without `addr`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HepConfig {
    /// `udp:HOST:PORT` or `tcp:HOST:PORT`.
    pub addr: Option<String>,
    /// The capture agent id Homer shows (chunk 0x000c).
    pub agent_id: u32,
    /// The collector's authentication key (chunk 0x000e).
    pub password: Option<String>,
    /// Packets waiting for the sender before new ones are dropped (and counted).
    pub queue: usize,
}

impl Default for HepConfig {
    fn default() -> Self {
        HepConfig {
            addr: None,
            agent_id: 2001,
            password: None,
            queue: 8192,
        }
    }
}

impl std::fmt::Debug for HepConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HepConfig")
            .field("addr", &self.addr)
            .field("agent_id", &self.agent_id)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("queue", &self.queue)
            .finish()
    }
}

/// `[dns]`: the DNS servers trunk addresses are resolved with (RFC 3263).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `"IP:PORT"` or `"IP"` (port 53); empty = the system resolver (`/etc/resolv.conf`).
    pub servers: Vec<String>,
}

/// `[tls]`: the PEM files of SIP over TLS (SPEC §9.5).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain presented on `tls:` listen addresses (leaf first); reloaded on SIGHUP.
    pub cert: Option<String>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1); reloaded on SIGHUP.
    pub key: Option<String>,
    /// Trust anchors for the certificates of TLS trunks; default: the system's trust store.
    pub ca: Option<String>,
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub registrar: RegistrarConfig,
    pub media: MediaConfig,
    pub api: ApiConfig,
    pub store: StoreConfig,
    pub node: NodeConfig,
    pub calls: CallsConfig,
    pub recording: RecordingConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub hep: HepConfig,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    pub accounts: Vec<store::AccountSpec>,
    pub users: Vec<store::UserSpec>,
    pub trunks: Vec<store::TrunkSpec>,
    pub numbers: Vec<store::NumberSpec>,
    /// `serve` without `--config`: on an empty store it makes a development account (see
    /// [`crate::development`]).
    #[serde(skip)]
    pub embedded_defaults: bool,
}

/// The values the server runs with, checked.
#[derive(Debug, Clone)]
pub struct Validated {
    pub listen: Vec<ListenAddr>,
    pub sip_advertise: Option<IpAddr>,
    pub media_bind: IpAddr,
    pub media_ports: (u16, u16),
    pub media_advertise: Option<IpAddr>,
    pub api_listen: SocketAddr,
    pub timers: sip_core::transaction::TimerConfig,
    pub stateless: sip_core::endpoint::StatelessConfig,
    /// `[hep]`, when on.
    pub hep: Option<crate::hep::HepSettings>,
    /// `[dns] servers`.
    pub dns_servers: Vec<SocketAddr>,
    /// `[node]`.
    pub node: NodeSettings,
    /// `[tls]`, loaded: when a listen address or a trunk uses TLS, or `[tls]` is given.
    pub tls: Option<std::sync::Arc<sip_core::tls::TlsContext>>,
}

impl Config {
    /// Reads and parses a file; syntax errors, unknown keys and wrongly typed values are
    /// reported with the file, the key and the line.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        Config::parse(&text).map_err(|errs| {
            errs.into_iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect()
        })
    }

    pub fn parse(text: &str) -> Result<Config, Vec<String>> {
        toml::from_str::<Config>(text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            vec![format!("{msg}{at}")]
        })
    }

    /// The provisioning tables as the store takes them.
    pub fn provisioning(&self) -> store::Provisioning {
        store::Provisioning {
            accounts: self.accounts.clone(),
            users: self.users.clone(),
            trunks: self.trunks.clone(),
            numbers: self.numbers.clone(),
        }
    }

    /// Settings that are valid but weaken the server; `check-config` and `serve` print them.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut w = Vec::new();
        if !self.media.strict_source {
            w.push(err(
                "media.strict_source",
                "false: any address may take over a call's media in its first 3 s (RTP Bleed); \
                 keep it true unless media really comes from addresses that neither SDP nor \
                 signalling name",
            ));
        }
        w
    }

    /// Checks every value; all problems are reported at once.
    pub fn validate(&self) -> Result<Validated, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut listen = Vec::new();
        if self.sip.listen.is_empty() {
            errors.push(err("sip.listen", "at least one listen address is needed"));
        }
        for (i, l) in self.sip.listen.iter().enumerate() {
            match l.parse::<ListenAddr>() {
                Ok(a) => listen.push(a),
                Err(e) => errors.push(err(&format!("sip.listen[{i}]"), e)),
            }
        }
        if self.sip.domain.trim().is_empty()
            || self
                .sip
                .domain
                .contains(|c: char| c.is_whitespace() || c == '"')
        {
            errors.push(err("sip.domain", "must be a host name"));
        }
        let ip = |key: &str, v: &Option<String>, errors: &mut Vec<ConfigError>| -> Option<IpAddr> {
            let v = v.as_ref()?;
            match v.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errors.push(err(key, format!("\"{v}\" is not an IP address")));
                    None
                }
            }
        };
        let sip_advertise = ip("sip.advertise", &self.sip.advertise, &mut errors);
        let media_advertise = ip("media.advertise", &self.media.advertise, &mut errors);
        let media_bind = match self.media.bind.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                errors.push(err(
                    "media.bind",
                    format!("\"{}\" is not an IP address", self.media.bind),
                ));
                IpAddr::from([127, 0, 0, 1])
            }
        };
        let media_ports = match parse_port_range(&self.media.ports) {
            Ok(r) => r,
            Err(e) => {
                errors.push(err("media.ports", e));
                (0, 0)
            }
        };
        if self.media.timeout_secs == 0 {
            errors.push(err("media.timeout_secs", "must be at least 1"));
        }
        if !(1..=64).contains(&self.media.probation_packets) {
            errors.push(err("media.probation_packets", "must be between 1 and 64"));
        }
        if self.runtime.workers > MAX_RUNTIME_WORKERS {
            errors.push(err(
                "runtime.workers",
                format!("must be at most {MAX_RUNTIME_WORKERS} (0: one fewer than the cores)"),
            ));
        }
        let api_listen = match self.api.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errors.push(err(
                    "api.listen",
                    format!("\"{}\" is not an address:port", self.api.listen),
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let node_id = self.node.id.clone().unwrap_or_else(host_name);
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            errors.push(err(
                "node.id",
                format!("{node_id:?}: 1 to 64 letters, digits, '.', '-' or '_'"),
            ));
        }
        let api_url = self
            .node
            .api_url
            .clone()
            .unwrap_or_else(|| format!("http://{api_listen}"));
        if !(api_url.starts_with("http://") || api_url.starts_with("https://"))
            || api_url.len() <= "https://".len()
        {
            errors.push(err(
                "node.api_url",
                format!("{api_url:?} is not an http:// or https:// URL"),
            ));
        }
        if !(3..=600).contains(&self.node.lease_secs) {
            errors.push(err("node.lease_secs", "must be between 3 and 600"));
        }
        if self
            .node
            .secret
            .as_ref()
            .is_some_and(|s| s.expose().chars().count() < 16)
        {
            errors.push(err("node.secret", "must be at least 16 characters"));
        }
        let node = NodeSettings {
            id: node_id,
            api_url,
            lease: Duration::from_secs(self.node.lease_secs),
        };
        let timers = sip_core::transaction::TimerConfig {
            t1: Duration::from_millis(self.sip.t1_ms),
            t2: Duration::from_millis(self.sip.t2_ms),
            t4: Duration::from_millis(self.sip.t4_ms),
        };
        if let Err(e) = timers.validate() {
            errors.push(err("sip.t1_ms", e.to_string()));
        }
        if self.sip.max_message_size < 1024 {
            errors.push(err("sip.max_message_size", "must be at least 1024"));
        }
        if self.sip.refusals_per_sec > 0 && self.sip.refusal_mute_secs == 0 {
            errors.push(err(
                "sip.refusal_mute_secs",
                "must be at least 1 (or sip.refusals_per_sec = 0 turns the budget off)",
            ));
        }
        if self.sip.requests_per_sec > 0 && self.sip.request_mute_secs == 0 {
            errors.push(err(
                "sip.request_mute_secs",
                "must be at least 1 (or sip.requests_per_sec = 0 turns the guard off)",
            ));
        }
        for (key, v) in [
            ("sip.tcp_idle_secs", self.sip.tcp_idle_secs),
            ("sip.first_message_secs", self.sip.first_message_secs),
            ("api.header_read_secs", self.api.header_read_secs),
            ("api.body_read_secs", self.api.body_read_secs),
            ("api.idle_secs", self.api.idle_secs),
        ] {
            if v == 0 {
                errors.push(err(key, "must be at least 1"));
            }
        }
        for (key, per_ip, max) in [
            (
                "sip.max_connections_per_ip",
                self.sip.max_connections_per_ip,
                self.sip.max_connections,
            ),
            (
                "api.max_connections_per_ip",
                self.api.max_connections_per_ip,
                self.api.max_connections,
            ),
        ] {
            if max > 0 && per_ip > max {
                errors.push(err(
                    key,
                    format!("must not be above the overall cap ({max})"),
                ));
            }
        }
        if self.sip.refusal_sources == 0 {
            errors.push(err("sip.refusal_sources", "must be at least 1"));
        }
        let mut exempt = Vec::new();
        for (i, p) in self.sip.refusal_exempt.iter().enumerate() {
            match p.parse::<sip_core::stateless::IpPrefix>() {
                Ok(p) => exempt.push(p),
                Err(e) => errors.push(err(&format!("sip.refusal_exempt[{i}]"), e.to_string())),
            }
        }
        let stateless = sip_core::endpoint::StatelessConfig {
            answered_capacity: self.sip.answered_cache,
            guard: sip_core::stateless::RefusalGuardConfig {
                per_sec: self.sip.refusals_per_sec,
                mute: Duration::from_secs(self.sip.refusal_mute_secs),
                max_sources: self.sip.refusal_sources,
                exempt,
            },
        };
        let r = &self.registrar;
        if r.min_expires == 0 || r.min_expires > r.max_expires {
            errors.push(err(
                "registrar.min_expires",
                "must be at least 1 and at most registrar.max_expires",
            ));
        }
        if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
            errors.push(err(
                "registrar.default_expires",
                "must lie between registrar.min_expires and registrar.max_expires",
            ));
        }
        if r.digest_algorithms.is_empty() {
            errors.push(err(
                "registrar.digest_algorithms",
                "at least one algorithm is needed",
            ));
        }
        for (i, a) in r.digest_algorithms.iter().enumerate() {
            if !matches!(a.as_str(), "MD5" | "SHA-256") {
                errors.push(err(
                    &format!("registrar.digest_algorithms[{i}]"),
                    format!("\"{a}\" is not offered (MD5 or SHA-256)"),
                ));
            }
        }
        if self.recording.dir.as_os_str().is_empty() {
            errors.push(err("recording.dir", "must not be empty"));
        }
        if !(1..=300).contains(&self.calls.confirm_secs) {
            errors.push(err("calls.confirm_secs", "must be between 1 and 300"));
        }
        if self.calls.agent_ring_secs == 0 {
            errors.push(err("calls.agent_ring_secs", "must be at least 1"));
        }
        if self.calls.customer_ring_secs == 0 {
            errors.push(err("calls.customer_ring_secs", "must be at least 1"));
        }
        if self.calls.max_concurrent == 0 {
            errors.push(err("calls.max_concurrent", "must be at least 1"));
        }
        let hep = match &self.hep.addr {
            None => None,
            Some(a) => match a.parse::<crate::hep::HepTarget>() {
                Ok(target) => Some(crate::hep::HepSettings {
                    target,
                    agent_id: self.hep.agent_id,
                    password: self.hep.password.clone(),
                    queue: self.hep.queue,
                }),
                Err(e) => {
                    errors.push(err("hep.addr", e));
                    None
                }
            },
        };
        if self.hep.queue == 0 {
            errors.push(err("hep.queue", "must be at least 1"));
        }
        if self
            .registrar
            .nonce_secret
            .as_ref()
            .is_some_and(|s| s.expose().chars().count() < 16)
        {
            errors.push(err(
                "registrar.nonce_secret",
                "must be at least 16 characters",
            ));
        }
        if let Err(reason) = store::check_url(&self.store.url) {
            errors.push(err("store.url", reason));
        }
        if let Err(issues) = self.provisioning().validate() {
            errors.extend(issues.into_iter().map(|i| err(&i.key, i.reason)));
        }
        // ISO 3166 codes the numbering metadata has no numbers for (AQ, BV, ...) could never
        // match a number: refused rather than silently useless.
        for (i, a) in self.accounts.iter().enumerate() {
            let known = |c: &str| {
                !store::provision::is_iso3166_alpha2(c) || b2bua::numbering::is_known_region(c)
            };
            for (j, c) in a.allowed_countries.iter().flatten().enumerate() {
                if !known(c) {
                    errors.push(err(
                        &format!("accounts[{i}].allowed_countries[{j}]"),
                        format!(
                            "{c:?} has no telephone numbers of its own in the numbering metadata"
                        ),
                    ));
                }
            }
        }
        let mut dns_servers = Vec::new();
        for (i, d) in self.dns.servers.iter().enumerate() {
            let parsed = d
                .parse::<SocketAddr>()
                .or_else(|_| d.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => dns_servers.push(a),
                Err(_) => errors.push(err(
                    &format!("dns.servers[{i}]"),
                    format!("{d:?} is not IP:PORT or an IP address"),
                )),
            }
        }
        let tls = self.validate_tls(&listen, &mut errors);
        if errors.is_empty() {
            Ok(Validated {
                tls,
                dns_servers,
                listen,
                sip_advertise,
                media_bind,
                media_ports,
                media_advertise,
                api_listen,
                timers,
                stateless,
                hep,
                node,
            })
        } else {
            Err(errors)
        }
    }
}

impl Config {
    /// `[tls]` and what needs it: a `tls:` listen address needs `cert` and `key`; a trunk
    /// over TLS needs a `tls:` listen address (its Via and Contact name it). The files are
    /// read here, so that `check-config` finds a bad one.
    fn validate_tls(
        &self,
        listen: &[ListenAddr],
        errors: &mut Vec<ConfigError>,
    ) -> Option<std::sync::Arc<sip_core::tls::TlsContext>> {
        use sip_core::tls::{TlsContext, TlsError, TlsSettings};
        use sip_core::transport::Transport;
        let t = &self.tls;
        let tls_listen = listen.iter().any(|l| l.transport == Transport::Tls);
        let secure_listen = listen.iter().any(|l| l.transport.is_secure());
        let tls_trunks: Vec<usize> = self
            .trunks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.transport == "tls")
            .map(|(i, _)| i)
            .collect();
        if secure_listen && (t.cert.is_none() || t.key.is_none()) {
            let key = if t.cert.is_none() {
                "tls.cert"
            } else {
                "tls.key"
            };
            errors.push(err(
                key,
                "a tls: or wss: address in sip.listen needs tls.cert and tls.key",
            ));
            return None;
        }
        if !tls_listen {
            for i in &tls_trunks {
                errors.push(err(
                    &format!("trunks[{i}].transport"),
                    "a trunk over TLS needs a tls: address in sip.listen (its Via and Contact)",
                ));
            }
        }
        let given = t.cert.is_some() || t.key.is_some() || t.ca.is_some();
        if !(secure_listen || !tls_trunks.is_empty() || given) {
            return None;
        }
        if t.cert.is_some() != t.key.is_some() {
            let key = if t.cert.is_none() {
                "tls.cert"
            } else {
                "tls.key"
            };
            errors.push(err(key, "tls.cert and tls.key go together"));
            return None;
        }
        let settings = TlsSettings {
            cert: t.cert.as_ref().map(Into::into),
            key: t.key.as_ref().map(Into::into),
            ca: t.ca.as_ref().map(Into::into),
        };
        let key_of = |path: &std::path::Path| {
            if settings.ca.as_deref() == Some(path) {
                "tls.ca"
            } else if settings.key.as_deref() == Some(path) {
                "tls.key"
            } else {
                "tls.cert"
            }
        };
        match TlsContext::load(settings.clone()) {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                let key = match &e {
                    TlsError::Read { path, .. }
                    | TlsError::NoCertificate { path }
                    | TlsError::NoKey { path }
                    | TlsError::BadPem { path, .. } => key_of(path),
                    TlsError::Incomplete | TlsError::Server(_) => "tls.key",
                    TlsError::Client(_) => "tls.ca",
                };
                errors.push(err(key, e.to_string()));
                None
            }
        }
    }
}

/// `"20000-29999"`: an even first port, at least two ports.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("\"{s}\": expected FIRST-LAST, e.g. 20000-29999"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\": \"{a}\" is not a port number"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\": \"{b}\" is not a port number"))?;
    if a < 1024 || b <= a {
        return Err(format!(
            "\"{s}\": the range must start at 1024 or above and hold at least two ports"
        ));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `validate` refuses in `text` (which must parse), in order.
    fn refused_keys(text: &str) -> Vec<String> {
        Config::parse(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("").unwrap();
        let v = c.validate().unwrap();
        assert_eq!(v.listen.len(), 2);
        assert_eq!(v.media_ports, (20000, 29999));
    }

    #[test]
    fn tls_settings_are_checked_and_named() {
        let keys = |text: &str| -> Vec<(String, String)> {
            match Config::parse(text).unwrap().validate() {
                Ok(_) => Vec::new(),
                Err(e) => e.into_iter().map(|e| (e.key, e.reason)).collect(),
            }
        };
        // A tls: listen address without a certificate.
        let e = keys("[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n");
        assert_eq!(e[0].0, "tls.cert", "{e:?}");
        // A file that is not there is named by its key.
        let e = keys(
            "[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
        );
        assert_eq!(e[0].0, "tls.cert", "{e:?}");
        assert!(e[0].1.contains("/nonexistent/c.pem"), "{e:?}");
        // A key without a certificate.
        let e = keys("[tls]\nkey = \"/nonexistent/k.pem\"\n");
        assert_eq!(e[0].0, "tls.cert", "{e:?}");
        // A trunk over TLS needs a tls: listen address; srtp = sdes needs TLS.
        let e =
            keys("[[trunks]]\nname = \"t\"\naddress = \"127.0.0.1:5061\"\ntransport = \"tls\"\n");
        assert!(e.iter().any(|(k, _)| k == "trunks[0].transport"), "{e:?}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[sip]\nlisen = []\n").unwrap_err();
        assert!(e[0].contains("lisen"), "{e:?}");
        let e = Config::parse("[nosuch]\n").unwrap_err();
        assert!(e[0].contains("nosuch"), "{e:?}");
    }

    #[test]
    fn bad_values_are_named() {
        let keys = refused_keys(
            "[sip]\nlisten = [\"udp:nothing\"]\n[media]\nports = \"30000-20000\"\nbind = \"x\"\n[api]\nlisten = \"8080\"\n",
        );
        assert!(keys.contains(&"sip.listen[0]".to_string()), "{keys:?}");
        assert!(keys.contains(&"media.ports".to_string()));
        assert!(keys.contains(&"media.bind".to_string()));
        assert!(keys.contains(&"api.listen".to_string()));
    }

    #[test]
    fn runtime_workers_default_to_one_fewer_than_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = Config::parse("").unwrap();
        assert_eq!(c.runtime.worker_threads(), (cores - 1).max(1));
        let c = Config::parse("[runtime]\nworkers = 3\n").unwrap();
        assert_eq!(c.runtime.worker_threads(), 3);
        assert!(c.validate().is_ok());
        assert_eq!(
            refused_keys("[runtime]\nworkers = 5000\n"),
            vec!["runtime.workers".to_string()]
        );
        assert!(Config::parse("[runtime]\nworkers = -1\n").is_err());
        assert!(Config::parse("[runtime]\nthreads = 2\n").is_err());
    }

    #[test]
    fn strict_source_is_the_default_and_turning_it_off_is_warned_about() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.media.latch(),
            media::LatchMode::Strict {
                probation: media::LatchMode::DEFAULT_PROBATION
            }
        );
        assert!(c.warnings().is_empty());
        let c = Config::parse("[media]\nstrict_source = false\n").unwrap();
        assert_eq!(c.media.latch(), media::LatchMode::LOOSE);
        assert!(c.validate().is_ok());
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].key, "media.strict_source");
        assert!(w[0].reason.contains("RTP Bleed"), "{}", w[0]);
        assert_eq!(
            refused_keys("[media]\nprobation_packets = 0\n"),
            vec!["media.probation_packets".to_string()]
        );
    }

    const ACCOUNT: &str = r#"
[[accounts]]
id = "acct_01h2xcejqtf2nbrexx3vqjhp41"
name = "Acme"
region = "US"
webhook_secret = "whsec_test_1"
"#;

    #[test]
    fn account_limits_are_checked_and_named() {
        let c = Config::parse(&format!(
            "{ACCOUNT}calls_per_second = 40\nburst = 80\nmax_concurrent = 400\n"
        ))
        .unwrap();
        assert!(c.validate().is_ok());
        let a = &c.provisioning().accounts[0];
        assert_eq!(
            (a.calls_per_second, a.burst, a.max_concurrent),
            (Some(40.0), Some(80), Some(400))
        );
        let c = Config::parse(&format!(
            "{ACCOUNT}calls_per_second = 0\nburst = 0\nmax_concurrent = 0\n"
        ))
        .unwrap();
        let errs = c.validate().unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "accounts[0].calls_per_second",
                "accounts[0].burst",
                "accounts[0].max_concurrent"
            ]
        );
        assert!(errs[0].to_string().contains("above 0"), "{}", errs[0]);
        // Not a number at all: refused by the parser, with the line of the key.
        let e = Config::parse(&format!("{ACCOUNT}calls_per_second = \"fast\"\n")).unwrap_err();
        assert!(e[0].contains("expected f64 (line 7)"), "{e:?}");
    }

    #[test]
    fn dns_servers_and_trunk_routing_are_checked_and_named() {
        let c = Config::parse(&format!(
            "[dns]\nservers = [\"127.0.0.1:5353\", \"::1\"]\n{ACCOUNT}\n[[trunks]]\nname = \"edges\"\naddress = \"carrier.test\"\npriority = 5\nfailover_codes = [503]\noptions_interval_secs = 10\nmax_calls = 30\n"
        ))
        .unwrap();
        let v = c.validate().unwrap();
        assert_eq!(
            v.dns_servers,
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        let r = c.provisioning().trunks[0].routing();
        assert_eq!(
            (r.priority, r.max_calls, r.calls_per_second),
            (5, Some(30), None)
        );
        assert_eq!(r.failover_codes, vec![503]);
        assert_eq!(
            (r.invite_timeout_ms, r.down_after, r.up_after),
            (2000, 3, 2)
        );
        let c = Config::parse(&format!(
            "[dns]\nservers = [\"resolver\"]\n{ACCOUNT}\n[[trunks]]\nname = \"edges\"\naddress = \"carrier.test\"\nfailover_codes = [200]\ndown_after = 0\nmax_calls = 0\n"
        ))
        .unwrap();
        let errs = c.validate().unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "dns.servers[0]",
            "trunks[0].failover_codes",
            "trunks[0].down_after",
            "trunks[0].max_calls",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
    }

    #[test]
    fn log_and_hep_keys_are_checked() {
        let c = Config::parse("").unwrap();
        assert!(!c.log.sip_trace);
        assert!(c.validate().unwrap().hep.is_none());
        let c = Config::parse(
            "[log]\nsip_trace = true\n[hep]\naddr = \"tcp:127.0.0.1:9061\"\nagent_id = 7\npassword = \"hep-secret\"\n",
        )
        .unwrap();
        assert!(c.log.sip_trace);
        assert!(
            !format!("{c:?}").contains("hep-secret"),
            "the key is not printed"
        );
        let hep = c.validate().unwrap().hep.unwrap();
        assert_eq!(hep.target.port, 9061);
        assert_eq!(hep.agent_id, 7);
        assert_eq!(hep.password.as_deref(), Some("hep-secret"));
        let keys = refused_keys("[hep]\naddr = \"127.0.0.1:9060\"\nqueue = 0\n");
        assert_eq!(keys, ["hep.addr", "hep.queue"]);
        assert!(Config::parse("[hep]\nadress = \"udp:h:1\"\n").is_err());
    }

    #[test]
    fn nonce_secret_is_checked_and_not_printed() {
        let c =
            Config::parse("[registrar]\nnonce_secret = \"cluster-secret-0123456789\"\n").unwrap();
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("cluster-secret"));
        let errors = Config::parse("[registrar]\nnonce_secret = \"short\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(errors[0].key, "registrar.nonce_secret");
        assert!(!errors[0].to_string().contains("short\""));
        let errors = Config::parse("[node]\nsecret = \"short\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(errors[0].key, "node.secret");
        let c = Config::parse("[node]\nsecret = \"node-secret-0123456789\"\n").unwrap();
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("node-secret-0"));
    }

    #[test]
    fn node_keys_default_and_are_checked() {
        let v = Config::parse("[api]\nlisten = \"127.0.0.1:18081\"\n")
            .unwrap()
            .validate()
            .unwrap();
        assert!(!v.node.id.is_empty());
        assert_eq!(v.node.api_url, "http://127.0.0.1:18081");
        assert_eq!(v.node.lease, Duration::from_secs(15));
        let v = Config::parse(
            "[node]\nid = \"node-a\"\napi_url = \"http://10.0.0.1:8080\"\nlease_secs = 5\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(v.node.id, "node-a");
        assert_eq!(v.node.api_url, "http://10.0.0.1:8080");
        let keys: Vec<String> =
            Config::parse("[node]\nid = \"a b\"\napi_url = \"ftp://x\"\nlease_secs = 1\n")
                .unwrap()
                .validate()
                .unwrap_err()
                .into_iter()
                .map(|e| e.key)
                .collect();
        assert_eq!(keys, ["node.id", "node.api_url", "node.lease_secs"]);
    }

    #[test]
    fn store_url_forms_are_checked() {
        for good in [
            "sqlite://dialbridge.db",
            "sqlite::memory:",
            "postgres://dialbridge:pw@127.0.0.1:5432/dialbridge",
            "postgresql://db.example/dialbridge",
        ] {
            let c = Config::parse(&format!("[store]\nurl = \"{good}\"\n")).unwrap();
            assert!(c.validate().is_ok(), "{good}");
        }
        let errors = Config::parse("[store]\nurl = \"postgres://u:secretpw@h:port/db\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "store.url");
        assert!(!errors[0].to_string().contains("secretpw"), "{}", errors[0]);
        let errors = Config::parse("[store]\nurl = \"mysql://h/db\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(errors[0].key, "store.url");
    }

    #[test]
    fn refusal_budget_keys_are_checked() {
        let v = Config::parse("").unwrap().validate().unwrap();
        assert_eq!(v.stateless.guard.per_sec, 30);
        assert_eq!(v.stateless.answered_capacity, 4096);
        let v = Config::parse(
            "[sip]\nrefusals_per_sec = 5\nrefusal_mute_secs = 60\nrefusal_exempt = [\"10.0.0.0/8\", \"::1\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(v.stateless.guard.per_sec, 5);
        assert_eq!(v.stateless.guard.mute, Duration::from_secs(60));
        assert!(v.stateless.guard.exempt[0].contains("10.9.8.7".parse().unwrap()));
        let keys: Vec<String> = Config::parse(
            "[sip]\nrefusal_mute_secs = 0\nrefusal_sources = 0\nrefusal_exempt = [\"10.0.0.0/40\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .into_iter()
        .map(|e| e.key)
        .collect();
        assert_eq!(
            keys,
            [
                "sip.refusal_mute_secs",
                "sip.refusal_sources",
                "sip.refusal_exempt[0]"
            ]
        );
    }

    #[test]
    fn dialing_permissions_are_checked_with_their_keys() {
        let account = |extra: &str| {
            format!(
                "[[accounts]]\nid = \"acct_01h2xcejqtf2nbrexx3vqjhp41\"\nname = \"Acme\"\nregion = \"US\"\nwebhook_secret = \"w\"\n{extra}"
            )
        };
        let c = Config::parse(&account(
            "allowed_countries = [\"US\", \"CA\"]\nblocked_number_types = [\"premium_rate\"]\n",
        ))
        .unwrap();
        assert!(c.validate().is_ok());
        let c = Config::parse(&account(
            "allowed_countries = [\"US\", \"AQ\", \"usa\"]\nblocked_number_types = [\"premium_rate\", \"900\"]\n",
        ))
        .unwrap();
        let errors = c.validate().unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "accounts[0].allowed_countries[2]",
                "accounts[0].blocked_number_types[1]",
                "accounts[0].allowed_countries[1]"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let e = Config::parse("[calls]\nagent_ring_secs = \"thirty\"\n").unwrap_err();
        assert!(
            e[0].contains("agent_ring_secs") || e[0].contains("line 2"),
            "{e:?}"
        );
    }
}
