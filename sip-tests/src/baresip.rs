//! baresip 1.0 (Debian package) as a real softphone in black-box tests.
//!
//! [`Baresip::start`] writes a config directory (`config` + `accounts`) into a temporary
//! directory, starts `baresip -f DIR` headless (no sound card: the audio source is `ausine`
//! or `aufile`, the player is `aubridge`), logs to `DIR/baresip.log`, and on drop stops it
//! without ever hanging: `quit` over `ctrl_tcp`, then SIGINT twice, then SIGKILL.
//!
//! Layout:
//! - [`BaresipConfig`]: one account (a device of the registrar) and the headless media setup;
//!   [`BaresipConfig::config_text`] / [`BaresipConfig::account_line`] render baresip's files.
//! - [`Baresip`]: the running process; log polling ([`Baresip::wait_registered`],
//!   [`Baresip::wait_for_log`]) and, when [`BaresipConfig::ctrl_tcp`] is set, commands and
//!   events over the `ctrl_tcp` module ([`Baresip::command`], [`Baresip::dial`],
//!   [`Baresip::wait_event`]).
//! - [`parse_netstring`] / [`netstring`]: `ctrl_tcp` framing (`LEN:JSON,`).
//! - [`registration_outcome`]: reads baresip's log lines about REGISTER results.
//!
//! What baresip 1.0 needs from the registrar: its digest code (libre 1.1) knows only MD5
//! and gives up on the whole `401` (`Register: Function not implemented`, ENOSYS) as soon as
//! one `WWW-Authenticate` names another algorithm, wherever it stands. Serve it with
//! `[registrar] digest_algorithms = ["MD5"]` ([`MD5_ONLY_REGISTRAR`]), or be recognised by
//! its User-Agent (`registrar.md5_only_user_agents`, which lists baresip by default). See
//! `docs/interop.md`.
//!
//! It does not do video, or IPv6 listening together with IPv4.

use crate::TempDir;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The registrar section a dialbridge config needs for baresip 1.0 (MD5 challenge only).
pub const MD5_ONLY_REGISTRAR: &str = "[registrar]\ndigest_algorithms = [\"MD5\"]\n";

/// How long [`Baresip::start`] waits for `baresip is ready.`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long [`Baresip::command`] waits for the response carrying its token.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// Poll interval for the log and the process state.
const POLL: Duration = Duration::from_millis(20);
/// Start attempts (a port picked free can be taken before baresip binds it).
const START_ATTEMPTS: u32 = 5;
/// Largest `ctrl_tcp` message accepted.
const MAX_NETSTRING: usize = 1 << 20;

/// Errors of the baresip helper.
#[derive(Debug, thiserror::Error)]
pub enum BaresipError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("baresip exited during start-up ({status}); log:\n{log}")]
    Exited { status: String, log: String },
    #[error("baresip did not start after {attempts} attempts; last log:\n{log}")]
    NotStarted { attempts: u32, log: String },
    #[error("registration failed: {line}")]
    RegistrationFailed { line: String },
    #[error("timed out after {waited:?} waiting for {what}; log:\n{log}")]
    Timeout {
        what: String,
        waited: Duration,
        log: String,
    },
    #[error("ctrl_tcp is not enabled for this instance")]
    NoControl,
    #[error("ctrl_tcp connection closed")]
    ControlClosed,
    #[error("ctrl_tcp framing: {0}")]
    Netstring(#[from] NetstringError),
    #[error("ctrl_tcp JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ctrl_tcp command {command:?} refused: {data}")]
    CommandFailed { command: String, data: String },
    #[error("WAV file {path}: {reason}")]
    Wav { path: PathBuf, reason: &'static str },
}

/// Errors in `ctrl_tcp` netstring framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetstringError {
    #[error("length prefix is not a decimal number")]
    BadLength,
    #[error("length {0} is over the limit")]
    TooLong(usize),
    #[error("payload is not followed by ','")]
    MissingComma,
}

/// The SIP transport of the account (and of its outbound proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
    /// TLS: give the registrar's CA with `sip_cafile PATH` in
    /// [`BaresipConfig::extra_config`].
    Tls,
}

impl SipTransport {
    /// The URI `transport` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }
}

/// What the softphone sends as its microphone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// A sine tone (`ausine`, 48 kHz stereo only), endless.
    Sine { hz: u32 },
    /// A WAV file (`aufile`), played once: at its end baresip 1.0 hangs up the call
    /// (`AUDIO_ERROR` "end of file", then `CALL_CLOSED`).
    WavFile(PathBuf),
}

/// The account's `answermode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMode {
    /// Rings until answered through `ctrl_tcp` (`accept`).
    Manual,
    /// Answers incoming calls at once.
    Auto,
}

/// One softphone: one account registered with the registrar at `registrar`.
#[derive(Debug, Clone)]
pub struct BaresipConfig {
    /// Device username (digest user and AOR user part).
    pub username: String,
    pub password: String,
    /// The registrar's domain (AOR host part and digest realm), e.g. `dialbridge.test`.
    pub domain: String,
    /// Where REGISTER and every other request go (the account's `outbound` proxy).
    pub registrar: SocketAddr,
    pub transport: SipTransport,
    /// `regint`: REGISTER expiry asked for, seconds; 0 = no REGISTER at all.
    pub register_interval_secs: u32,
    pub answer_mode: AnswerMode,
    pub audio: AudioSource,
    /// Load `ctrl_tcp` (JSON commands and events) on a free loopback port.
    pub ctrl_tcp: bool,
    /// Load `sndfile`: write sent and received audio as WAV files under [`Baresip::recordings`].
    pub record_audio: bool,
    /// RTP port range.
    pub rtp_ports: (u16, u16),
    /// Extra `config` lines, appended as given.
    pub extra_config: Vec<String>,
    /// Extra account parameters (`mediaenc=srtp-mand`), appended to the account line.
    pub account_params: Vec<String>,
}

impl BaresipConfig {
    /// A device registering to `registrar` in domain `dialbridge.test`, auto-answer on,
    /// a 440 Hz tone as audio, `ctrl_tcp` off.
    pub fn device(
        username: &str,
        password: &str,
        registrar: SocketAddr,
        transport: SipTransport,
    ) -> BaresipConfig {
        BaresipConfig {
            username: username.to_string(),
            password: password.to_string(),
            domain: "dialbridge.test".to_string(),
            registrar,
            transport,
            register_interval_secs: 300,
            answer_mode: AnswerMode::Auto,
            audio: AudioSource::Sine { hz: 440 },
            ctrl_tcp: false,
            record_audio: false,
            rtp_ports: (10000, 19999),
            extra_config: Vec::new(),
            account_params: Vec::new(),
        }
    }

    /// The address-of-record, `sip:USER@DOMAIN`.
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.username, self.domain)
    }

    /// The loopback address of the registrar's family, where baresip listens.
    pub fn local_ip(&self) -> IpAddr {
        match self.registrar {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }

    /// The one line of the `accounts` file.
    pub fn account_line(&self) -> String {
        let t = self.transport.as_str();
        let answer = match self.answer_mode {
            AnswerMode::Manual => "manual",
            AnswerMode::Auto => "auto",
        };
        format!(
            "<sip:{user}@{domain};transport={t}>;auth_user={user};auth_pass={pass};\
             outbound=\"sip:{proxy};transport={t}\";regint={regint};answermode={answer}{extra}\n",
            extra = self
                .account_params
                .iter()
                .map(|p| format!(";{p}"))
                .collect::<String>(),
            user = self.username,
            domain = self.domain,
            pass = self.password,
            proxy = self.registrar,
            regint = self.register_interval_secs,
        )
    }

    /// The `config` file for SIP on `sip_port` (UDP and TCP; TLS takes `sip_port + 1`) and
    /// `ctrl_tcp` on `ctrl_port`, with recordings under `dir/recordings`.
    pub fn config_text(
        &self,
        sip_port: u16,
        ctrl_port: Option<u16>,
        dir: &Path,
    ) -> Result<String, BaresipError> {
        let ip = self.local_ip();
        let listen = SocketAddr::new(ip, sip_port);
        let (source, srate, channels) = match &self.audio {
            AudioSource::Sine { hz } => (format!("ausine,{hz}"), 48000, 2),
            AudioSource::WavFile(path) => {
                let (rate, ch) = wav_format(path)?;
                (format!("aufile,{}", path.display()), rate, ch)
            }
        };
        let mut c = String::new();
        let mut line = |s: String| {
            c.push_str(&s);
            c.push('\n');
        };
        line(format!("sip_listen {listen}"));
        line(format!("net_interface {ip}"));
        line("audio_player aubridge,nil".into());
        line("audio_alert aubridge,nil".into());
        line(format!("audio_source {source}"));
        line(format!("ausrc_srate {srate}"));
        line(format!("ausrc_channels {channels}"));
        line(format!(
            "rtp_ports {}-{}",
            self.rtp_ports.0, self.rtp_ports.1
        ));
        line("statmode_default off".into());
        line("module_path /usr/lib/baresip/modules".into());
        line("module g711.so".into());
        line("module ausine.so".into());
        line("module aufile.so".into());
        line("module aubridge.so".into());
        if self.record_audio {
            line("module sndfile.so".into());
            line(format!("snd_path {}", dir.join("recordings").display()));
        }
        line("module_app account.so".into());
        line("module_app menu.so".into());
        if let Some(port) = ctrl_port {
            line("module_app ctrl_tcp.so".into());
            line(format!("ctrl_tcp_listen {}", SocketAddr::new(ip, port)));
        }
        for extra in &self.extra_config {
            line(extra.clone());
        }
        Ok(c)
    }
}

/// Sample rate and channel count of a PCM WAV file (the `fmt ` chunk).
pub fn wav_format(path: &Path) -> Result<(u32, u16), BaresipError> {
    let bad = |reason| BaresipError::Wav {
        path: path.to_path_buf(),
        reason,
    };
    let data = std::fs::read(path)?;
    if data.len() < 12 || &data[0..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut at = 12;
    while let Some(header) = data.get(at..at + 8) {
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if &header[0..4] == b"fmt " {
            let fmt = data
                .get(at + 8..at + 8 + len.min(16))
                .filter(|f| f.len() == 16)
                .ok_or_else(|| bad("short fmt chunk"))?;
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
            if channels == 0 || rate == 0 {
                return Err(bad("zero rate or channels"));
            }
            return Ok((rate, channels));
        }
        at += 8 + len + (len & 1);
    }
    Err(bad("no fmt chunk"))
}

/// Encodes one `ctrl_tcp` message: `LEN:PAYLOAD,`.
pub fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

/// Decodes one netstring from the front of `buf`: `Ok(Some((payload, consumed)))`, or
/// `Ok(None)` when more bytes are needed.
pub fn parse_netstring(buf: &[u8]) -> Result<Option<(&[u8], usize)>, NetstringError> {
    let Some(colon) = buf.iter().position(|&b| b == b':') else {
        if buf.len() > 7 || !buf.iter().all(u8::is_ascii_digit) {
            return Err(NetstringError::BadLength);
        }
        return Ok(None);
    };
    let digits = &buf[..colon];
    if digits.is_empty() || digits.len() > 7 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(NetstringError::BadLength);
    }
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(NetstringError::BadLength)?;
    if len > MAX_NETSTRING {
        return Err(NetstringError::TooLong(len));
    }
    let start = colon + 1;
    let end = start + len;
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some((&buf[start..end], end + 1))),
        Some(_) => Err(NetstringError::MissingComma),
    }
}

/// Removes ANSI colour escapes (`ESC [ ... m`) that baresip writes into its log.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The REGISTER outcome that baresip logged for `user@domain`, if any yet: the last one
/// wins. `Ok(code)` for a 2xx, `Err(line)` for a failure (`reg: ...: Register: <errno>`
/// or a final non-2xx status).
///
/// baresip 1.0 writes `USER@DOMAIN: {0/UDP/v4} 200 OK (Server) [1 binding]` on success
/// and `USER@DOMAIN: {0/UDP/v4} 403 Forbidden (Server)` on a final failure.
pub fn registration_outcome(log: &str, user_at_domain: &str) -> Option<Result<u16, String>> {
    let text = strip_ansi(log);
    let mut outcome = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("reg: ") && line.contains("Register:") {
            outcome = Some(Err(line.to_string()));
            continue;
        }
        let Some(rest) = line
            .strip_prefix(user_at_domain)
            .and_then(|r| r.strip_prefix(": {"))
        else {
            continue;
        };
        let Some((_, after)) = rest.split_once("} ") else {
            continue;
        };
        let Some(code) = after.get(..3).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        outcome = Some(if (200..300).contains(&code) {
            Ok(code)
        } else {
            Err(line.to_string())
        });
    }
    outcome
}

/// A message from `ctrl_tcp`.
#[derive(Debug, Clone, PartialEq)]
pub enum CtrlMessage {
    Event(CtrlEvent),
    Response(CtrlResponse),
}

impl CtrlMessage {
    /// Interprets one decoded JSON object (`{"event":true,...}` or `{"response":true,...}`).
    pub fn from_json(v: Value) -> Option<CtrlMessage> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if v.get("event").and_then(Value::as_bool) == Some(true) {
            Some(CtrlMessage::Event(CtrlEvent {
                kind: s("type").unwrap_or_default(),
                class: s("class").unwrap_or_default(),
                call_id: s("id"),
                peer_uri: s("peeruri"),
                param: s("param"),
                raw: v,
            }))
        } else if v.get("response").and_then(Value::as_bool) == Some(true) {
            Some(CtrlMessage::Response(CtrlResponse {
                ok: v.get("ok").and_then(Value::as_bool).unwrap_or(false),
                data: s("data").unwrap_or_default(),
                token: s("token"),
            }))
        } else {
            None
        }
    }
}

/// A `ctrl_tcp` event, e.g. `CALL_INCOMING`, `CALL_ESTABLISHED`, `CALL_CLOSED`.
#[derive(Debug, Clone, PartialEq)]
pub struct CtrlEvent {
    /// The event `type`.
    pub kind: String,
    pub class: String,
    /// baresip's call id (not the SIP Call-ID).
    pub call_id: Option<String>,
    pub peer_uri: Option<String>,
    /// e.g. the reason of `CALL_CLOSED` (`"Connection reset by user"`, `"486 Busy Here"`).
    pub param: Option<String>,
    pub raw: Value,
}

/// The response to a `ctrl_tcp` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrlResponse {
    pub ok: bool,
    pub data: String,
    pub token: Option<String>,
}

struct Control {
    stream: TcpStream,
    rx: mpsc::Receiver<Result<Value, BaresipError>>,
    /// Events received and not yet taken by [`Baresip::wait_event`].
    pending: VecDeque<CtrlEvent>,
    /// Every event received, in order.
    history: Vec<CtrlEvent>,
    /// Responses received and not yet matched to a command.
    responses: Vec<CtrlResponse>,
    next_token: u64,
}

impl Control {
    fn connect(addr: SocketAddr) -> Result<Control, BaresipError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        let mut reader = stream.try_clone()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let parsed = match parse_netstring(&buf) {
                        Ok(Some((payload, used))) => {
                            let v = serde_json::from_slice::<Value>(payload);
                            buf.drain(..used);
                            v.map_err(BaresipError::from)
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    if tx.send(parsed).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Control {
            stream,
            rx,
            pending: VecDeque::new(),
            history: Vec::new(),
            responses: Vec::new(),
            next_token: 1,
        })
    }

    /// Takes one message from the reader thread, waiting until `deadline`.
    /// `Ok(false)` on time-out.
    fn pump(&mut self, deadline: Instant) -> Result<bool, BaresipError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(v) => {
                match CtrlMessage::from_json(v?) {
                    Some(CtrlMessage::Event(e)) => {
                        self.history.push(e.clone());
                        self.pending.push_back(e);
                    }
                    Some(CtrlMessage::Response(r)) => self.responses.push(r),
                    None => {}
                }
                Ok(true)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(BaresipError::ControlClosed),
        }
    }

    fn send(&mut self, command: &str, params: &str) -> Result<String, BaresipError> {
        let token = self.next_token.to_string();
        self.next_token += 1;
        let body = serde_json::json!({ "command": command, "params": params, "token": token });
        self.stream
            .write_all(&netstring(body.to_string().as_bytes()))?;
        Ok(token)
    }
}

/// A running baresip.
pub struct Baresip {
    child: Option<Child>,
    /// The config directory (also holds the log and recordings).
    pub dir: TempDir,
    log: PathBuf,
    sip: SocketAddr,
    ctrl: Option<Control>,
    user_at_domain: String,
}

impl std::fmt::Debug for Baresip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baresip")
            .field("dir", &self.dir.path())
            .field("sip", &self.sip)
            .field("ctrl_tcp", &self.ctrl.is_some())
            .finish()
    }
}

impl Baresip {
    /// Writes the config and starts baresip; returns once it logged `baresip is ready.`
    /// (and, with `ctrl_tcp`, once the control connection is up). Ports are picked free on
    /// loopback; a start that loses a port race is retried with new ports.
    pub fn start(cfg: &BaresipConfig) -> Result<Baresip, BaresipError> {
        let mut dir = TempDir::new("baresip");
        let log = dir.path().join("baresip.log");
        std::fs::write(dir.path().join("accounts"), cfg.account_line())?;
        if cfg.record_audio {
            std::fs::create_dir_all(dir.path().join("recordings"))?;
        }
        let ip = cfg.local_ip();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let sip_port = free_sip_port(ip)?;
            let ctrl_port = if cfg.ctrl_tcp {
                Some(TcpListener::bind((ip, 0))?.local_addr()?.port())
            } else {
                None
            };
            std::fs::write(
                dir.path().join("config"),
                cfg.config_text(sip_port, ctrl_port, dir.path())?,
            )?;
            let child = Command::new("baresip")
                .arg("-f")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(std::fs::File::create(&log)?))
                .stderr(Stdio::from(std::fs::File::create(
                    dir.path().join("baresip.stderr"),
                )?))
                .spawn()?;
            let mut phone = Baresip {
                child: Some(child),
                dir,
                log: log.clone(),
                sip: SocketAddr::new(ip, sip_port),
                ctrl: None,
                user_at_domain: format!("{}@{}", cfg.username, cfg.domain),
            };
            match phone.wait_ready() {
                Ok(()) => {}
                // Lost the race for a port picked free: try other ports.
                Err(BaresipError::Exited { log, .. }) if log.contains("already in use") => {
                    last_log = log;
                    dir = phone.stop();
                    continue;
                }
                Err(e) => return Err(e),
            }
            let Some(port) = ctrl_port else {
                return Ok(phone);
            };
            match Control::connect(SocketAddr::new(ip, port)) {
                Ok(c) => {
                    phone.ctrl = Some(c);
                    return Ok(phone);
                }
                Err(_) => {
                    last_log = phone.log_text();
                    dir = phone.stop();
                }
            }
        }
        Err(BaresipError::NotStarted {
            attempts: START_ATTEMPTS,
            log: last_log,
        })
    }

    fn wait_ready(&mut self) -> Result<(), BaresipError> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let log = self.log_text();
            if log.contains("baresip is ready.") {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                return Err(BaresipError::Exited {
                    status,
                    log: self.log_text(),
                });
            }
            if Instant::now() >= deadline {
                return Err(BaresipError::Timeout {
                    what: "baresip is ready.".into(),
                    waited: START_LIMIT,
                    log,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn exit_status(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(st))) => Some(st.to_string()),
            Some(Err(e)) => Some(e.to_string()),
            None => Some("not running".into()),
            Some(Ok(None)) => None,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where baresip listens for SIP (UDP and TCP; TLS is on the next port).
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// The log so far, colour escapes removed.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Where `sndfile` writes its WAV files (when [`BaresipConfig::record_audio`] is set).
    pub fn recordings(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Polls the log until a line contains `needle`; returns that line.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> Result<String, BaresipError> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if Instant::now() >= deadline || !self.is_running() {
                return Err(BaresipError::Timeout {
                    what: format!("log line {needle:?}"),
                    waited: limit,
                    log,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls the log until the account's REGISTER got a 2xx (`Ok`), or failed
    /// ([`BaresipError::RegistrationFailed`]), or `limit` passed.
    pub fn wait_registered(&mut self, limit: Duration) -> Result<(), BaresipError> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log_text();
            match registration_outcome(&log, &self.user_at_domain) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(line)) => return Err(BaresipError::RegistrationFailed { line }),
                None => {}
            }
            if Instant::now() >= deadline || !self.is_running() {
                return Err(BaresipError::Timeout {
                    what: "REGISTER outcome".into(),
                    waited: limit,
                    log,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends a `ctrl_tcp` command (`dial`, `hangup`, `accept`, `reginfo`, `quit`, ...) and
    /// waits for its response. A response with `ok: false` is an error.
    pub fn command(&mut self, command: &str, params: &str) -> Result<CtrlResponse, BaresipError> {
        let ctrl = self.ctrl.as_mut().ok_or(BaresipError::NoControl)?;
        let token = ctrl.send(command, params)?;
        let deadline = Instant::now() + COMMAND_LIMIT;
        loop {
            if let Some(i) = ctrl
                .responses
                .iter()
                .position(|r| r.token.as_deref() == Some(token.as_str()))
            {
                let r = ctrl.responses.remove(i);
                if !r.ok {
                    return Err(BaresipError::CommandFailed {
                        command: command.to_string(),
                        data: r.data,
                    });
                }
                return Ok(r);
            }
            if !ctrl.pump(deadline)? {
                return Err(BaresipError::Timeout {
                    what: format!("response to {command:?}"),
                    waited: COMMAND_LIMIT,
                    log: self.log_text(),
                });
            }
        }
    }

    /// Places a call to `uri` (through the account's outbound proxy).
    pub fn dial(&mut self, uri: &str) -> Result<CtrlResponse, BaresipError> {
        self.command("dial", uri)
    }

    /// Hangs up the current call.
    pub fn hangup(&mut self) -> Result<CtrlResponse, BaresipError> {
        self.command("hangup", "")
    }

    /// Waits for the next event of type `kind` (e.g. `CALL_ESTABLISHED`) not taken before;
    /// events of other types stay queued for later calls.
    pub fn wait_event(&mut self, kind: &str, limit: Duration) -> Result<CtrlEvent, BaresipError> {
        let deadline = Instant::now() + limit;
        let ctrl = self.ctrl.as_mut().ok_or(BaresipError::NoControl)?;
        loop {
            if let Some(i) = ctrl.pending.iter().position(|e| e.kind == kind) {
                if let Some(e) = ctrl.pending.remove(i) {
                    return Ok(e);
                }
            }
            if !ctrl.pump(deadline)? {
                return Err(BaresipError::Timeout {
                    what: format!("event {kind}"),
                    waited: limit,
                    log: self.log_text(),
                });
            }
        }
    }

    /// Every `ctrl_tcp` event received so far (including ones taken by [`Self::wait_event`]).
    pub fn events(&mut self) -> Vec<CtrlEvent> {
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Vec::new();
        };
        while let Ok(true) = ctrl.pump(Instant::now()) {}
        ctrl.history.clone()
    }

    /// Stops baresip (see [`Self::terminate`]) and keeps its directory (log, recordings).
    pub fn stop(mut self) -> TempDir {
        self.terminate();
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    /// `quit` over `ctrl_tcp` (3 s), then SIGINT (4 s), SIGINT again (2 s), then SIGKILL.
    /// Bounded: returns within about 9 s whatever baresip does.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let exited = |child: &mut Child, limit: Duration| {
            let deadline = Instant::now() + limit;
            loop {
                if !matches!(child.try_wait(), Ok(None)) {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(POLL);
            }
        };
        if exited(&mut child, Duration::ZERO) {
            return;
        }
        if let Some(ctrl) = self.ctrl.as_mut() {
            if ctrl.send("quit", "").is_ok() && exited(&mut child, Duration::from_secs(3)) {
                return;
            }
        }
        // The first SIGINT lets it un-REGISTER (a 401 round trip), the second forces it.
        let pid = child.id().to_string();
        for grace in [Duration::from_secs(4), Duration::from_secs(2)] {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            if exited(&mut child, grace) {
                return;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.terminate();
        if let Some(ctrl) = self.ctrl.take() {
            let _ = ctrl.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A port `p` where UDP `p`, TCP `p` (SIP) and TCP `p + 1` (SIP over TLS) are all free now.
fn free_sip_port(ip: IpAddr) -> Result<u16, BaresipError> {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        let Some(tls) = port.checked_add(1) else {
            continue;
        };
        if TcpListener::bind((ip, port)).is_ok() && TcpListener::bind((ip, tls)).is_ok() {
            return Ok(port);
        }
    }
    Err(BaresipError::Io(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free UDP+TCP+TCP port triple on loopback",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BaresipConfig {
        BaresipConfig::device(
            "alice-desk",
            "s3cret-desk",
            "127.0.0.1:5099".parse().unwrap(),
            SipTransport::Tcp,
        )
    }

    #[test]
    fn account_line_routes_through_registrar_with_transport() {
        let line = cfg().account_line();
        assert_eq!(
            line,
            "<sip:alice-desk@dialbridge.test;transport=tcp>;auth_user=alice-desk;\
             auth_pass=s3cret-desk;outbound=\"sip:127.0.0.1:5099;transport=tcp\";\
             regint=300;answermode=auto\n"
        );
        let mut v6 = cfg();
        v6.registrar = "[::1]:5099".parse().unwrap();
        v6.transport = SipTransport::Udp;
        v6.answer_mode = AnswerMode::Manual;
        let line = v6.account_line();
        assert!(
            line.contains("outbound=\"sip:[::1]:5099;transport=udp\""),
            "{line}"
        );
        assert!(line.contains("answermode=manual"), "{line}");
        assert_eq!(v6.local_ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn config_for_sine_forces_48k_stereo_and_optional_modules() {
        let dir = Path::new("/x");
        let text = cfg().config_text(5080, None, dir).unwrap();
        assert!(text.contains("sip_listen 127.0.0.1:5080\n"));
        assert!(text.contains("audio_source ausine,440\nausrc_srate 48000\nausrc_channels 2\n"));
        assert!(!text.contains("ctrl_tcp"));
        assert!(!text.contains("sndfile"));
        let mut c = cfg();
        c.ctrl_tcp = true;
        c.record_audio = true;
        c.extra_config.push("sip_trans_def tcp".into());
        let text = c.config_text(5080, Some(4444), dir).unwrap();
        assert!(text.contains("module_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:4444\n"));
        assert!(text.contains("module sndfile.so\nsnd_path /x/recordings\n"));
        assert!(text.ends_with("sip_trans_def tcp\n"));
    }

    fn wav(rate: u32, channels: u16, extra_chunk: bool) -> Vec<u8> {
        let mut w = b"RIFF\0\0\0\0WAVE".to_vec();
        if extra_chunk {
            w.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        }
        w.extend_from_slice(b"fmt \x10\0\0\0");
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        w.extend_from_slice(&(2 * channels).to_le_bytes());
        w.extend_from_slice(&16u16.to_le_bytes());
        w.extend_from_slice(b"data\0\0\0\0");
        w
    }

    #[test]
    fn wav_format_reads_fmt_chunk_after_other_chunks() {
        let dir = TempDir::new("wav");
        let p = dir.path().join("a.wav");
        std::fs::write(&p, wav(8000, 1, true)).unwrap();
        assert_eq!(wav_format(&p).unwrap(), (8000, 1));
        std::fs::write(&p, wav(16000, 2, false)).unwrap();
        assert_eq!(wav_format(&p).unwrap(), (16000, 2));
        let mut c = cfg();
        c.audio = AudioSource::WavFile(p.clone());
        let text = c.config_text(5080, None, dir.path()).unwrap();
        assert!(text.contains(&format!(
            "audio_source aufile,{}\nausrc_srate 16000\nausrc_channels 2\n",
            p.display()
        )));
        std::fs::write(&p, b"RIFF\0\0\0\0WAVEdata\0\0\0\0").unwrap();
        assert!(matches!(wav_format(&p), Err(BaresipError::Wav { .. })));
        std::fs::write(&p, b"not a wav").unwrap();
        assert!(matches!(wav_format(&p), Err(BaresipError::Wav { .. })));
    }

    #[test]
    fn netstring_round_trip_and_partial_input() {
        let msg = br#"{"command":"dial"}"#;
        let enc = netstring(msg);
        assert_eq!(&enc[..3], b"18:");
        assert_eq!(parse_netstring(&enc), Ok(Some((&msg[..], enc.len()))));
        for cut in 0..enc.len() {
            assert_eq!(parse_netstring(&enc[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = enc.clone();
        two.extend_from_slice(b"2:{},");
        let (_, used) = parse_netstring(&two).unwrap().unwrap();
        assert_eq!(parse_netstring(&two[used..]), Ok(Some((&b"{}"[..], 5))));
        assert_eq!(parse_netstring(b"x:"), Err(NetstringError::BadLength));
        assert_eq!(parse_netstring(b":"), Err(NetstringError::BadLength));
        assert_eq!(parse_netstring(b"2:abX"), Err(NetstringError::MissingComma));
        assert_eq!(
            parse_netstring(b"9999999:"),
            Err(NetstringError::TooLong(9_999_999))
        );
    }

    #[test]
    fn ctrl_messages_from_baresip_json() {
        let ev: Value = serde_json::from_str(
            r#"{"event":true,"type":"CALL_CLOSED","class":"call","accountaor":"sip:a@b",
                "direction":"outgoing","peeruri":"sip:1234@127.0.0.1:5099;transport=tcp",
                "id":"4e98f7614314ae2a","param":"404 Not Found"}"#,
        )
        .unwrap();
        let Some(CtrlMessage::Event(e)) = CtrlMessage::from_json(ev) else {
            panic!("not an event");
        };
        assert_eq!(e.kind, "CALL_CLOSED");
        assert_eq!(e.call_id.as_deref(), Some("4e98f7614314ae2a"));
        assert_eq!(e.param.as_deref(), Some("404 Not Found"));
        let r: Value =
            serde_json::from_str(r#"{"response":true,"ok":false,"data":"x","token":"7"}"#).unwrap();
        assert_eq!(
            CtrlMessage::from_json(r),
            Some(CtrlMessage::Response(CtrlResponse {
                ok: false,
                data: "x".into(),
                token: Some("7".into())
            }))
        );
        assert_eq!(CtrlMessage::from_json(serde_json::json!({"x": 1})), None);
    }

    #[test]
    fn registration_outcome_from_real_log_lines() {
        let who = "alice-desk@dialbridge.test";
        assert_eq!(registration_outcome("baresip is ready.\n", who), None);
        let ok = "baresip is ready.\n\u{1b}[32malice-desk@dialbridge.test: {0/UDP/v4} 200 OK \
                  (dialbridge/0.1.0) [1 binding]\u{1b}[;m\n";
        assert_eq!(registration_outcome(ok, who), Some(Ok(200)));
        // Another account's success does not count.
        assert_eq!(registration_outcome(ok, "bob@dialbridge.test"), None);
        let enosys = "reg: sip:alice-desk@dialbridge.test: Register: Function not implemented\n";
        assert_eq!(
            registration_outcome(enosys, who),
            Some(Err(enosys.trim().to_string()))
        );
        let forbidden = format!(
            "{ok}alice-desk@dialbridge.test: {{0/TCP/v4}} 403 Forbidden (dialbridge/0.1.0)\n"
        );
        assert!(matches!(registration_outcome(&forbidden, who), Some(Err(l)) if l.contains("403")));
    }

    #[test]
    fn strip_ansi_removes_colour_codes_only() {
        assert_eq!(strip_ansi("\u{1b}[36;1m#\u{1b}[;m ok [1]"), "# ok [1]");
    }
}
