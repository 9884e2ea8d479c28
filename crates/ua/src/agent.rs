//! The user agent: one sip-core [`Endpoint`], a registration client, one task per call.
//!
//! ```text
//!  incoming INVITE ──► 180 Ringing ──(answer after the ring)──► 200 OK + SDP ──► ACK
//!        │ CANCEL: 487, Ended{CancelledByRemote}                      │
//!        ▼                                                           ▼
//!  outgoing INVITE ──► 1xx ──► 2xx: ACK ─────────────────────► established: RTP flows
//!        │ 401/407: once more with credentials                      │ BYE either way,
//!        │ hang-up / ring limit: CANCEL                             │ no ACK, max duration
//!        ▼                                                          ▼
//!      Ended{Rejected | CancelledLocally | Timeout}           Ended{RemoteBye | LocalBye ...}
//! ```
//!
//! A dispatcher task reads the endpoint's events and hands each request, ACK and CANCEL to
//! the task of its call (by Call-ID); requests outside any call are answered there (OPTIONS
//! 200, others 481/405). Every wait is bounded: the ring limit, Timer B/F of the
//! transactions, 32 s for the ACK of a 2xx (64·T1), the maximum call duration.

use crate::g711::{parse_wav, G711};
use crate::rtp::{self, MediaHandle, MediaMode, MediaPlan, RtpStats};
use bytes::Bytes;
use sip_core::auth::DigestClient;
use sip_core::dialog::Dialog;
use sip_core::endpoint::{
    new_tag, resolve_uri, ClientEvent, ClientTransaction, Destination, Endpoint, EndpointConfig,
    EndpointError, EndpointEvent, IncomingRequest,
};
use sip_core::message::{ContactValue, HeaderAccess, HeaderName, Method, Request, Response, Uri};
use sip_core::sdp::{audio_offer, Codec, SessionDescription};
use sip_core::transport::{ListenAddr, Transport, TransportConfig};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How long a 2xx waits for its ACK (64·T1, RFC 3261 §13.3.1.4).
const ACK_WAIT: Duration = Duration::from_secs(32);
/// How long a non-INVITE transaction may take (Timer F) plus a margin.
const NON_INVITE_WAIT: Duration = Duration::from_secs(40);

/// What the UA does with an incoming call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMode {
    /// 180, then 200 after this long.
    Auto { after: Duration },
    /// 180 and keep ringing (until CANCEL, or 480 after the ring limit).
    Never,
    /// Refuse with this status (e.g. 486).
    Reject(u16),
}

/// User agent settings.
#[derive(Debug, Clone)]
pub struct UaConfig {
    /// Where its SIP transport listens.
    pub listen: ListenAddr,
    /// Where its RTP sockets bind (and what the SDP says).
    pub media_ip: IpAddr,
    /// The user part of its From and Contact (the device username once registered).
    pub user: String,
    /// The host part of its From.
    pub domain: String,
    pub answer: AnswerMode,
    pub media: MediaMode,
    /// A directory where each call's received audio is written as `<call>.wav`.
    pub record_dir: Option<PathBuf>,
    /// DTMF sent as RFC 4733 events in each call, when the peer took telephone-event.
    pub dtmf: Option<crate::rtp::Dtmf>,
    /// An unanswered call is given up after this long.
    pub ring_limit: Duration,
    /// A call is hung up after this long.
    pub max_call: Duration,
    pub user_agent: String,
}

impl Default for UaConfig {
    fn default() -> Self {
        UaConfig {
            listen: ListenAddr {
                transport: Transport::Udp,
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            },
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            user: "phone".into(),
            domain: "dialbridge.test".into(),
            answer: AnswerMode::Auto {
                after: Duration::from_millis(500),
            },
            media: MediaMode::Tone(440.0),
            record_dir: None,
            dtmf: None,
            ring_limit: Duration::from_secs(60),
            max_call: Duration::from_secs(3600),
            user_agent: concat!("dialbridge-ua/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Where and as whom to register.
#[derive(Debug, Clone)]
pub struct Registration {
    pub registrar: SocketAddr,
    pub transport: Transport,
    pub username: String,
    pub password: String,
    /// The registrar's domain: the AOR is `sip:<username>@<domain>`.
    pub domain: String,
    /// Seconds asked for.
    pub expires: u32,
}

impl Registration {
    /// `sip:<username>@<domain>`.
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.username, self.domain)
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The peer sent BYE.
    RemoteBye,
    /// This side sent BYE.
    LocalBye,
    /// The peer CANCELled before the answer.
    CancelledByRemote,
    /// This side CANCELled (hang-up or ring limit).
    CancelledLocally,
    /// A final non-2xx (sent or received).
    Rejected(u16),
    /// No final response, or no ACK for the 2xx, or nobody answered in time.
    Timeout,
    TransportError,
    /// The maximum call duration was reached.
    MaxDuration,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::RemoteBye => f.write_str("remote BYE"),
            EndReason::LocalBye => f.write_str("local BYE"),
            EndReason::CancelledByRemote => f.write_str("cancelled by the caller"),
            EndReason::CancelledLocally => f.write_str("cancelled"),
            EndReason::Rejected(s) => write!(f, "rejected {s}"),
            EndReason::Timeout => f.write_str("time-out"),
            EndReason::TransportError => f.write_str("transport error"),
            EndReason::MaxDuration => f.write_str("maximum duration"),
        }
    }
}

/// What the UA reports.
#[derive(Debug, Clone)]
pub enum UaEvent {
    Registered {
        aor: String,
        expires: u32,
    },
    /// A refresh failed three times: the binding is left to expire.
    RegistrationFailed {
        aor: String,
        status: Option<u16>,
    },
    Unregistered {
        aor: String,
    },
    Incoming {
        call: String,
        from: String,
    },
    /// A 180/183 for an outgoing call.
    Ringing {
        call: String,
        status: u16,
    },
    Answered {
        call: String,
        codec: G711,
        remote_rtp: Option<SocketAddr>,
    },
    Ended {
        call: String,
        reason: EndReason,
        stats: RtpStats,
    },
}

/// User agent errors.
#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("RTP socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{method} answered {status}")]
    Rejected { method: &'static str, status: u16 },
    #[error("credentials refused for {0}")]
    Unauthorized(&'static str),
    #[error("no final response to {0}")]
    Timeout(&'static str),
    #[error("cannot answer the challenge: {0}")]
    Digest(#[from] sip_core::auth::AuthError),
    #[error("WAV file {path}: {source}")]
    Wav {
        path: PathBuf,
        #[source]
        source: crate::g711::WavError,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a SIP URI: {0}")]
    BadUri(String),
    #[error("no local address towards {0}")]
    NoRoute(SocketAddr),
    #[error("not registered")]
    NotRegistered,
}

/// Reads a WAV file for [`MediaMode::Wav`] (8 kHz mono 16-bit PCM only).
pub fn load_wav(path: &Path) -> Result<MediaMode, UaError> {
    let bytes = std::fs::read(path).map_err(|source| UaError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let samples = parse_wav(&bytes).map_err(|source| UaError::Wav {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(MediaMode::Wav(samples.into()))
}

enum CallMsg {
    Request(Box<IncomingRequest>),
    Ack,
    Cancelled,
    Hangup,
}

struct Identity {
    user: String,
    domain: String,
    credentials: Option<(String, String)>,
}

struct Shared {
    endpoint: Endpoint,
    cfg: UaConfig,
    events: mpsc::UnboundedSender<UaEvent>,
    calls: Mutex<HashMap<String, mpsc::UnboundedSender<CallMsg>>>,
    identity: Mutex<Identity>,
}

impl Shared {
    fn emit(&self, ev: UaEvent) {
        let _ = self.events.send(ev);
    }

    fn add_call(&self, id: &str) -> mpsc::UnboundedReceiver<CallMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut m) = self.calls.lock() {
            m.insert(id.to_string(), tx);
        }
        rx
    }

    fn remove_call(&self, id: &str) {
        if let Ok(mut m) = self.calls.lock() {
            m.remove(id);
        }
    }

    fn route(&self, id: &str, msg: CallMsg) -> Result<(), CallMsg> {
        let tx = self.calls.lock().ok().and_then(|m| m.get(id).cloned());
        match tx {
            Some(tx) => tx.send(msg).map_err(|e| e.0),
            None => Err(msg),
        }
    }

    fn user(&self) -> String {
        self.identity
            .lock()
            .map(|i| i.user.clone())
            .unwrap_or_default()
    }

    fn local_aor(&self) -> String {
        self.identity
            .lock()
            .map(|i| format!("sip:{}@{}", i.user, i.domain))
            .unwrap_or_default()
    }

    fn credentials(&self) -> Option<(String, String)> {
        self.identity
            .lock()
            .ok()
            .and_then(|i| i.credentials.clone())
    }

    fn respond(&self, inc: &IncomingRequest, status: u16, tag: Option<&str>) {
        let mut r = Response::for_request(&inc.request, status);
        r.set_to_tag(tag.unwrap_or(&new_tag()));
        self.endpoint.respond(&inc.key, r);
    }
}

/// A handle on one call.
#[derive(Debug, Clone)]
pub struct CallHandle {
    /// The SIP Call-ID.
    pub id: String,
    tx: mpsc::UnboundedSender<CallMsg>,
}

impl std::fmt::Debug for CallMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallMsg::Request(_) => "Request",
            CallMsg::Ack => "Ack",
            CallMsg::Cancelled => "Cancelled",
            CallMsg::Hangup => "Hangup",
        })
    }
}

impl CallHandle {
    /// BYE when answered, CANCEL while ringing.
    pub fn hangup(&self) {
        let _ = self.tx.send(CallMsg::Hangup);
    }
}

struct RegState {
    reg: Registration,
    call_id: String,
    from_tag: String,
    cseq: u32,
}

/// A running user agent. Dropping it stops its tasks.
pub struct UserAgent {
    shared: Arc<Shared>,
    dispatcher: tokio::task::JoinHandle<()>,
    registration: Option<(
        Arc<tokio::sync::Mutex<RegState>>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Drop for UserAgent {
    fn drop(&mut self) {
        self.dispatcher.abort();
        if let Some((_, t)) = &self.registration {
            t.abort();
        }
    }
}

impl UserAgent {
    /// Binds the SIP transport and starts the dispatcher.
    pub async fn start(
        cfg: UaConfig,
    ) -> Result<(UserAgent, mpsc::UnboundedReceiver<UaEvent>), UaError> {
        let (endpoint, ep_events) = Endpoint::start(EndpointConfig {
            transport: TransportConfig {
                listen: vec![cfg.listen],
                ..Default::default()
            },
            user_agent: cfg.user_agent.clone(),
            ..Default::default()
        })
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            endpoint,
            identity: Mutex::new(Identity {
                user: cfg.user.clone(),
                domain: cfg.domain.clone(),
                credentials: None,
            }),
            cfg,
            events: tx,
            calls: Mutex::new(HashMap::new()),
        });
        let dispatcher = tokio::spawn(dispatch(Arc::clone(&shared), ep_events));
        Ok((
            UserAgent {
                shared,
                dispatcher,
                registration: None,
            },
            rx,
        ))
    }

    /// Where its SIP transport listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.endpoint.local_addrs().first().map(|l| l.addr)
    }

    /// Registers (answering the digest challenge) and keeps the binding fresh: a refresh at
    /// half the granted time, three tries before giving up. Returns the granted seconds.
    pub async fn register(&mut self, reg: Registration) -> Result<u32, UaError> {
        if let Some((_, t)) = self.registration.take() {
            t.abort();
        }
        if let Ok(mut id) = self.shared.identity.lock() {
            id.user = reg.username.clone();
            id.domain = reg.domain.clone();
            id.credentials = Some((reg.username.clone(), reg.password.clone()));
        }
        let aor = reg.aor();
        let expires = reg.expires;
        let mut st = RegState {
            reg,
            call_id: format!("{}@ua", new_tag()),
            from_tag: new_tag(),
            cseq: 0,
        };
        let granted = register_once(&self.shared.endpoint, &mut st, expires).await?;
        self.shared.emit(UaEvent::Registered {
            aor: aor.clone(),
            expires: granted,
        });
        let st = Arc::new(tokio::sync::Mutex::new(st));
        let task = tokio::spawn(refresh(
            Arc::clone(&self.shared),
            Arc::clone(&st),
            granted,
            aor,
        ));
        self.registration = Some((st, task));
        Ok(granted)
    }

    /// Removes the binding (REGISTER with Expires: 0) and stops refreshing.
    pub async fn unregister(&mut self) -> Result<(), UaError> {
        let (st, task) = self.registration.take().ok_or(UaError::NotRegistered)?;
        task.abort();
        let mut st = st.lock().await;
        register_once(&self.shared.endpoint, &mut st, 0).await?;
        self.shared
            .emit(UaEvent::Unregistered { aor: st.reg.aor() });
        Ok(())
    }

    /// Places a call to `target` (a SIP URI), sent to `via` when given (an outbound proxy
    /// or trunk), else where the URI resolves.
    pub async fn call(&self, target: &str, via: Option<SocketAddr>) -> Result<CallHandle, UaError> {
        let uri = Uri::parse(target).map_err(|_| UaError::BadUri(target.to_string()))?;
        let dest = match via {
            Some(addr) => Destination {
                transport: Transport::Udp,
                addr,
                conn: None,
            },
            None => resolve_uri(&uri).await?,
        };
        let socket = bind_rtp(self.shared.cfg.media_ip).await?;
        let port = socket.local_addr().map_err(UaError::Socket)?.port();
        let offer = audio_offer(
            self.shared.cfg.media_ip,
            port,
            u64::from(rand::random::<u32>()),
            &[Codec::PCMU, Codec::PCMA, Codec::TELEPHONE_EVENT],
        )
        .to_bytes();
        let id = format!("{}@{}", new_tag(), self.shared.cfg.domain);
        let contact = self
            .shared
            .endpoint
            .contact_uri(Some(&self.shared.user()), dest.transport, dest.addr)
            .ok_or(UaError::NoRoute(dest.addr))?;
        let mut invite = Request::new(Method::Invite, uri.clone());
        invite.headers.add(
            HeaderName::From,
            format!("<{}>;tag={}", self.shared.local_aor(), new_tag()),
        );
        invite.headers.add(HeaderName::To, format!("<{uri}>"));
        invite.headers.add(HeaderName::CallId, id.clone());
        invite.headers.add(HeaderName::CSeq, "1 INVITE");
        invite
            .headers
            .add(HeaderName::Contact, format!("<{contact}>"));
        invite
            .headers
            .add(HeaderName::ContentType, "application/sdp");
        invite.body = offer.clone();
        let rx = self.shared.add_call(&id);
        let tx = self
            .shared
            .calls
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .ok_or(UaError::NoRoute(dest.addr))?;
        tokio::spawn(outgoing(
            Arc::clone(&self.shared),
            OutgoingCall {
                id: id.clone(),
                invite,
                dest,
                contact,
                socket,
                offer,
            },
            rx,
        ));
        Ok(CallHandle { id, tx })
    }

    /// Hangs up every call.
    pub fn hangup_all(&self) {
        if let Ok(m) = self.shared.calls.lock() {
            for tx in m.values() {
                let _ = tx.send(CallMsg::Hangup);
            }
        }
    }
}

async fn bind_rtp(ip: IpAddr) -> Result<UdpSocket, UaError> {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(UaError::Socket)
}

/// The final response of a client transaction, within `limit`.
async fn final_response(
    ct: &mut ClientTransaction,
    limit: Duration,
    method: &'static str,
) -> Result<Response, UaError> {
    let wait = async {
        while let Some(ev) = ct.next().await {
            match ev {
                ClientEvent::Response(r) if r.status >= 200 => return Some(r),
                ClientEvent::Response(_) => {}
                ClientEvent::Timeout | ClientEvent::TransportError => return None,
            }
        }
        None
    };
    tokio::time::timeout(limit, wait)
        .await
        .ok()
        .flatten()
        .ok_or(UaError::Timeout(method))
}

/// One REGISTER (with the digest answer when challenged); the granted expiry.
async fn register_once(
    endpoint: &Endpoint,
    st: &mut RegState,
    expires: u32,
) -> Result<u32, UaError> {
    let reg = st.reg.clone();
    let dest = Destination {
        transport: reg.transport,
        addr: reg.registrar,
        conn: None,
    };
    let contact = endpoint
        .contact_uri(Some(&reg.username), reg.transport, reg.registrar)
        .ok_or(UaError::NoRoute(reg.registrar))?;
    let ruri = Uri::parse(&format!("sip:{}", reg.domain))
        .map_err(|_| UaError::BadUri(reg.domain.clone()))?;
    let mut digest = DigestClient::new(reg.username.clone(), reg.password.clone());
    let mut auth: Option<(HeaderName, String)> = None;
    for _ in 0..2 {
        st.cseq += 1;
        let mut r = Request::new(Method::Register, ruri.clone());
        r.headers.add(
            HeaderName::From,
            format!("<{}>;tag={}", reg.aor(), st.from_tag),
        );
        r.headers.add(HeaderName::To, format!("<{}>", reg.aor()));
        r.headers.add(HeaderName::CallId, st.call_id.clone());
        r.headers
            .add(HeaderName::CSeq, format!("{} REGISTER", st.cseq));
        r.headers.add(HeaderName::Contact, format!("<{contact}>"));
        r.headers.add(HeaderName::Expires, expires.to_string());
        if let Some((h, v)) = &auth {
            r.headers.add(h.clone(), v.clone());
        }
        let mut ct = endpoint.send_request(r, Some(dest)).await?;
        let resp = final_response(&mut ct, NON_INVITE_WAIT, "REGISTER").await?;
        match resp.status {
            200..=299 => return Ok(granted_expiry(&resp, &contact, expires)),
            401 | 407 if auth.is_none() => {
                auth = Some(digest.answer_response(&resp, "REGISTER", &ruri.to_string(), b"")?);
            }
            401 | 407 => return Err(UaError::Unauthorized("REGISTER")),
            status => {
                return Err(UaError::Rejected {
                    method: "REGISTER",
                    status,
                })
            }
        }
    }
    Err(UaError::Unauthorized("REGISTER"))
}

/// The expiry the registrar granted our contact: its `expires` parameter in the 200's
/// Contact list, else the Expires header, else what was asked (RFC 3261 §10.2.4).
fn granted_expiry(resp: &Response, contact: &Uri, asked: u32) -> u32 {
    let ours = |u: &Uri| match (u.as_sip(), contact.as_sip()) {
        (Some(a), Some(b)) => a.host == b.host && a.port == b.port && a.user == b.user,
        _ => false,
    };
    if let Ok(Some(ContactValue::Addrs(list))) = resp.contacts() {
        if let Some(e) = list
            .iter()
            .filter(|n| ours(&n.uri))
            .find_map(|n| n.params.get_str("expires"))
            .and_then(|e| e.trim().parse().ok())
        {
            return e;
        }
    }
    resp.expires().ok().flatten().unwrap_or(asked)
}

async fn refresh(
    shared: Arc<Shared>,
    st: Arc<tokio::sync::Mutex<RegState>>,
    mut granted: u32,
    aor: String,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(u64::from(granted.max(2)) / 2)).await;
        let mut tries = 0u32;
        loop {
            let asked = st.lock().await.reg.expires;
            let result = {
                let mut s = st.lock().await;
                register_once(&shared.endpoint, &mut s, asked).await
            };
            match result {
                Ok(g) => {
                    granted = g;
                    shared.emit(UaEvent::Registered {
                        aor: aor.clone(),
                        expires: g,
                    });
                    break;
                }
                Err(e) => {
                    tries += 1;
                    tracing::warn!(error = %e, tries, "registration refresh failed");
                    if tries >= 3 {
                        let status = match e {
                            UaError::Rejected { status, .. } => Some(status),
                            _ => None,
                        };
                        shared.emit(UaEvent::RegistrationFailed { aor, status });
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1 << tries)).await;
                }
            }
        }
    }
}

async fn dispatch(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<EndpointEvent>) {
    while let Some(ev) = events.recv().await {
        match ev {
            EndpointEvent::Request(inc) => {
                let id = inc.request.call_id_str();
                let Err(CallMsg::Request(inc)) = shared.route(&id, CallMsg::Request(Box::new(inc)))
                else {
                    continue;
                };
                let in_dialog = inc.request.to().ok().is_some_and(|t| t.tag().is_some());
                match inc.request.method {
                    Method::Invite if !in_dialog => {
                        let rx = shared.add_call(&id);
                        tokio::spawn(incoming(Arc::clone(&shared), *inc, rx));
                    }
                    Method::Options if !in_dialog => shared.respond(&inc, 200, None),
                    _ if in_dialog => shared.respond(&inc, 481, None),
                    _ => shared.respond(&inc, 405, None),
                }
            }
            EndpointEvent::Ack { request, .. } => {
                let _ = shared.route(&request.call_id_str(), CallMsg::Ack);
            }
            EndpointEvent::Cancelled { cancel, .. } => {
                let _ = shared.route(&cancel.call_id_str(), CallMsg::Cancelled);
            }
            EndpointEvent::StrayResponse { .. } | EndpointEvent::AckTimeout { .. } => {}
        }
    }
}

/// The G.711 law, the telephone-event payload type and the RTP address of an SDP's first
/// audio stream; `None` when it offers no G.711.
fn media_of(sdp: &SessionDescription) -> Option<(G711, Option<u8>, Option<SocketAddr>)> {
    let m = sdp.first_audio()?;
    if m.is_rejected() {
        return None;
    }
    let law = m.payload_types().find_map(|pt| {
        let c = m.codec(pt)?;
        if c.same_codec("PCMU", 8000) {
            Some(G711::Pcmu)
        } else if c.same_codec("PCMA", 8000) {
            Some(G711::Pcma)
        } else {
            None
        }
    })?;
    let te = m.payload_types().find(|pt| {
        m.codec(*pt)
            .is_some_and(|c| c.same_codec("telephone-event", 8000))
    });
    let remote = sdp
        .connection_of(m)
        .and_then(|c| c.ip())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, m.port));
    Some((law, te, remote))
}

/// Our answer to an offer (RFC 3264 §6.1): the chosen G.711 law and telephone-event.
fn answer_sdp(ip: IpAddr, port: u16, law: G711, te: Option<u8>) -> Bytes {
    let mut codecs = vec![match law {
        G711::Pcmu => Codec::PCMU,
        G711::Pcma => Codec::PCMA,
    }];
    if let Some(pt) = te {
        codecs.push(Codec {
            payload_type: pt,
            ..Codec::TELEPHONE_EVENT
        });
    }
    audio_offer(ip, port, u64::from(rand::random::<u32>()), &codecs).to_bytes()
}

fn record_path(shared: &Shared, call: &str) -> Option<PathBuf> {
    let dir = shared.cfg.record_dir.as_ref()?;
    let safe: String = call
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Some(dir.join(format!("{safe}.wav")))
}

async fn incoming(
    shared: Arc<Shared>,
    inc: IncomingRequest,
    mut rx: mpsc::UnboundedReceiver<CallMsg>,
) {
    let id = inc.request.call_id_str();
    let reason = answer_incoming(&shared, &inc, &mut rx).await;
    if let Err(reason) = reason {
        shared.emit(UaEvent::Ended {
            call: id.clone(),
            reason,
            stats: RtpStats::default(),
        });
    }
    shared.remove_call(&id);
}

async fn answer_incoming(
    shared: &Arc<Shared>,
    inc: &IncomingRequest,
    rx: &mut mpsc::UnboundedReceiver<CallMsg>,
) -> Result<(), EndReason> {
    let id = inc.request.call_id_str();
    let tag = new_tag();
    let Some(contact) =
        shared
            .endpoint
            .contact_uri(Some(&shared.user()), inc.flow.transport, inc.flow.remote)
    else {
        shared.respond(inc, 500, Some(&tag));
        return Err(EndReason::Rejected(500));
    };
    let Ok(mut dialog) = Dialog::uas(&inc.request, &tag, contact.clone()) else {
        shared.respond(inc, 400, Some(&tag));
        return Err(EndReason::Rejected(400));
    };
    shared.emit(UaEvent::Incoming {
        call: id.clone(),
        from: inc
            .request
            .from()
            .map(|f| f.uri.to_string())
            .unwrap_or_default(),
    });
    let offer = SessionDescription::parse(&inc.request.body).ok();
    let Some((law, te, remote)) = offer.as_ref().and_then(media_of) else {
        shared.respond(inc, 488, Some(&tag));
        return Err(EndReason::Rejected(488));
    };
    let ring = match shared.cfg.answer {
        AnswerMode::Reject(code) => {
            shared.respond(inc, code, Some(&tag));
            return Err(EndReason::Rejected(code));
        }
        AnswerMode::Auto { after } => after,
        AnswerMode::Never => shared.cfg.ring_limit,
    };
    let mut ringing = Response::for_request(&inc.request, 180);
    ringing.set_to_tag(&tag);
    ringing
        .headers
        .add(HeaderName::Contact, format!("<{contact}>"));
    shared.endpoint.respond(&inc.key, ringing);
    let timer = tokio::time::sleep(ring);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            _ = &mut timer => {
                if shared.cfg.answer == AnswerMode::Never {
                    shared.respond(inc, 480, Some(&tag));
                    return Err(EndReason::Timeout);
                }
                break;
            }
            msg = rx.recv() => match msg {
                Some(CallMsg::Cancelled) => {
                    shared.respond(inc, 487, Some(&tag));
                    return Err(EndReason::CancelledByRemote);
                }
                Some(CallMsg::Hangup) | None => {
                    shared.respond(inc, 603, Some(&tag));
                    return Err(EndReason::Rejected(603));
                }
                Some(CallMsg::Request(r)) => shared.respond(&r, 481, None),
                Some(CallMsg::Ack) => {}
            },
        }
    }
    let socket = bind_rtp(shared.cfg.media_ip)
        .await
        .map_err(|_| EndReason::Rejected(500))?;
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let answer = answer_sdp(shared.cfg.media_ip, port, law, te);
    let mut ok = Response::for_request(&inc.request, 200);
    ok.set_to_tag(&tag);
    ok.headers.add(HeaderName::Contact, format!("<{contact}>"));
    ok.headers.add(HeaderName::ContentType, "application/sdp");
    ok.body = answer.clone();
    let _ = dialog.confirm(&ok);
    shared.endpoint.respond(&inc.key, ok);
    let media = rtp::start(MediaPlan {
        socket,
        remote,
        codec: law,
        mode: shared.cfg.media.clone(),
        record: record_path(shared, &id),
        dtmf: shared.cfg.dtmf.clone().zip(te),
    });
    shared.emit(UaEvent::Answered {
        call: id.clone(),
        codec: law,
        remote_rtp: remote,
    });
    established(shared, &id, dialog, None, media, answer, rx, true).await;
    Ok(())
}

struct OutgoingCall {
    id: String,
    invite: Request,
    dest: Destination,
    contact: Uri,
    socket: UdpSocket,
    offer: Bytes,
}

async fn outgoing(
    shared: Arc<Shared>,
    call: OutgoingCall,
    mut rx: mpsc::UnboundedReceiver<CallMsg>,
) {
    let id = call.id.clone();
    if let Err(reason) = place(&shared, call, &mut rx).await {
        shared.emit(UaEvent::Ended {
            call: id.clone(),
            reason,
            stats: RtpStats::default(),
        });
    }
    shared.remove_call(&id);
}

async fn place(
    shared: &Arc<Shared>,
    call: OutgoingCall,
    rx: &mut mpsc::UnboundedReceiver<CallMsg>,
) -> Result<(), EndReason> {
    let OutgoingCall {
        id,
        mut invite,
        dest,
        contact,
        socket,
        offer,
    } = call;
    let mut ct = shared
        .endpoint
        .send_request(invite.clone(), Some(dest))
        .await
        .map_err(|_| EndReason::TransportError)?;
    let mut challenged = false;
    let mut cancelled = false;
    let mut rang = false;
    let ring = tokio::time::sleep(shared.cfg.ring_limit);
    tokio::pin!(ring);
    let (resp, ct) = loop {
        tokio::select! {
            ev = ct.next() => {
                let resp = match ev {
                    Some(ClientEvent::Response(r)) => r,
                    Some(ClientEvent::Timeout) => return Err(EndReason::Timeout),
                    Some(ClientEvent::TransportError) | None => return Err(EndReason::TransportError),
                };
                if resp.status < 200 {
                    if matches!(resp.status, 180 | 183) && !rang {
                        rang = true;
                        shared.emit(UaEvent::Ringing { call: id.clone(), status: resp.status });
                    }
                    continue;
                }
                if resp.is_success() {
                    break (resp, ct);
                }
                if matches!(resp.status, 401 | 407) && !challenged && !cancelled {
                    if let Some((user, pass)) = shared.credentials() {
                        challenged = true;
                        let mut digest = DigestClient::new(user, pass);
                        let uri = invite.uri().to_string();
                        let Ok((h, v)) = digest.answer_response(&resp, "INVITE", &uri, &invite.body) else {
                            return Err(EndReason::Rejected(resp.status));
                        };
                        invite.headers.set(HeaderName::CSeq, "2 INVITE");
                        invite.headers.set(h, v);
                        ct = shared.endpoint.send_request(invite.clone(), Some(dest)).await.map_err(|_| EndReason::TransportError)?;
                        continue;
                    }
                }
                if cancelled && resp.status == 487 {
                    return Err(EndReason::CancelledLocally);
                }
                return Err(EndReason::Rejected(resp.status));
            }
            msg = rx.recv() => match msg {
                Some(CallMsg::Hangup) | None => {
                    if !cancelled {
                        cancelled = true;
                        ct.cancel(Vec::new());
                        ring.as_mut().reset(tokio::time::Instant::now() + ACK_WAIT);
                    }
                }
                Some(CallMsg::Request(r)) => shared.respond(&r, 481, None),
                Some(CallMsg::Ack | CallMsg::Cancelled) => {}
            },
            _ = &mut ring => {
                if cancelled {
                    return Err(EndReason::Timeout);
                }
                cancelled = true;
                ct.cancel(Vec::new());
                ring.as_mut().reset(tokio::time::Instant::now() + ACK_WAIT);
            }
        }
    };
    let Ok(dialog) = Dialog::uac(&ct.request, &resp, contact) else {
        return Err(EndReason::Rejected(resp.status));
    };
    let cseq = ct.request.cseq().map(|c| c.seq).unwrap_or(1);
    let _ = shared
        .endpoint
        .send_ack(dialog.ack_for_2xx(cseq, None), Some(dest))
        .await;
    let answered = SessionDescription::parse(&resp.body)
        .ok()
        .as_ref()
        .and_then(media_of);
    let media = rtp::start(MediaPlan {
        socket,
        remote: answered.and_then(|(_, _, r)| r),
        codec: answered.map(|(l, _, _)| l).unwrap_or(G711::Pcmu),
        mode: shared.cfg.media.clone(),
        record: record_path(shared, &id),
        dtmf: shared
            .cfg
            .dtmf
            .clone()
            .zip(answered.and_then(|(_, te, _)| te)),
    });
    shared.emit(UaEvent::Answered {
        call: id.clone(),
        codec: answered.map(|(l, _, _)| l).unwrap_or(G711::Pcmu),
        remote_rtp: answered.and_then(|(_, _, r)| r),
    });
    if cancelled {
        // The 2xx crossed our CANCEL: the call is up, end it with BYE.
        let _ = rx;
        let stats = media.stop().await;
        let mut d = dialog;
        bye(shared, &mut d, Some(dest)).await;
        shared.emit(UaEvent::Ended {
            call: id,
            reason: EndReason::CancelledLocally,
            stats,
        });
        return Ok(());
    }
    established(shared, &id, dialog, Some(dest), media, offer, rx, false).await;
    Ok(())
}

async fn bye(shared: &Shared, dialog: &mut Dialog, dest: Option<Destination>) {
    let req = dialog.new_request(Method::Bye, None);
    if let Ok(mut ct) = shared.endpoint.send_request(req, dest).await {
        let _ = final_response(&mut ct, NON_INVITE_WAIT, "BYE").await;
    }
    dialog.terminate();
}

#[allow(clippy::too_many_arguments)]
async fn established(
    shared: &Arc<Shared>,
    id: &str,
    mut dialog: Dialog,
    dest: Option<Destination>,
    media: MediaHandle,
    local_sdp: Bytes,
    rx: &mut mpsc::UnboundedReceiver<CallMsg>,
    mut ack_pending: bool,
) {
    let limit = tokio::time::sleep(shared.cfg.max_call);
    tokio::pin!(limit);
    let ack = tokio::time::sleep(ACK_WAIT);
    tokio::pin!(ack);
    let reason = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(CallMsg::Ack) => ack_pending = false,
                Some(CallMsg::Cancelled) => {}
                Some(CallMsg::Hangup) | None => {
                    bye(shared, &mut dialog, dest).await;
                    break EndReason::LocalBye;
                }
                Some(CallMsg::Request(inc)) => {
                    if dialog.receive_request(&inc.request).is_err() {
                        shared.respond(&inc, 500, None);
                        continue;
                    }
                    match inc.request.method {
                        Method::Bye => {
                            shared.respond(&inc, 200, None);
                            break EndReason::RemoteBye;
                        }
                        Method::Invite | Method::Update => {
                            // A refresh or change: answer with the same session, and send
                            // where the offer now says.
                            if let Some(to) = SessionDescription::parse(&inc.request.body)
                                .ok()
                                .as_ref()
                                .and_then(media_of)
                                .and_then(|(_, _, r)| r)
                            {
                                media.set_remote(to);
                            }
                            let mut ok = Response::for_request(&inc.request, 200);
                            ok.headers.add(HeaderName::Contact, format!("<{}>", dialog.local_contact()));
                            ok.headers.add(HeaderName::ContentType, "application/sdp");
                            ok.body = local_sdp.clone();
                            shared.endpoint.respond(&inc.key, ok);
                        }
                        Method::Options | Method::Info => shared.respond(&inc, 200, None),
                        _ => shared.respond(&inc, 405, None),
                    }
                }
            },
            _ = &mut ack, if ack_pending => {
                bye(shared, &mut dialog, dest).await;
                break EndReason::Timeout;
            }
            _ = &mut limit => {
                bye(shared, &mut dialog, dest).await;
                break EndReason::MaxDuration;
            }
        }
    };
    let stats = media.stop().await;
    shared.emit(UaEvent::Ended {
        call: id.to_string(),
        reason,
        stats,
    });
}
