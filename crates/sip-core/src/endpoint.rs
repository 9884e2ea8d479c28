//! The endpoint: transport + transaction layer, driven by one tokio task.
//!
//! The task owns every transaction machine ([`crate::transaction`]) in a table keyed per
//! RFC 3261 §17.1.3 (client: branch + CSeq method) and §17.2.3 (server: branch + sent-by +
//! method, or the RFC 2543 fallback), a timer heap fed by each machine's `poll_timeout()`,
//! and the transports. It parses what arrives, refuses malformed requests statelessly (400,
//! 505, 501 ...), absorbs retransmissions and stray responses, builds ACKs for non-2xx
//! finals (§17.1.1.3) and CANCELs (§9.1), answers CANCEL with 200 or 481, and routes
//! responses per §18.2.2 and RFC 3581 (`received`/`rport`).
//!
//! The transaction user (registrar, B2BUA, UA) talks to it through [`Endpoint`], a cloneable
//! channel client, and receives [`EndpointEvent`]s from one channel.
//!
//! A new request waits for the TU in a server transaction that has sent nothing yet. The TU
//! either answers through it ([`Endpoint::respond`]: the RFC 3261 §17.2 machine, with
//! `100 Trying` after [`TimerConfig::trying`] for an INVITE the TU has not answered, Timer G
//! retransmissions of an INVITE's final, and so on) or, for a request that opens nothing,
//! statelessly ([`Endpoint::reply_stateless`], §8.2.7): the transaction is dropped, the
//! answer goes out once, and the [`crate::stateless`] cache hands the same bytes to the
//! request's retransmissions for `64*T1`. Every answer sent without a transaction — these,
//! and the endpoint's own refusals of malformed requests and of CANCELs that match nothing —
//! is paced by a per-source budget ([`crate::stateless::RefusalGuard`]): a forged source
//! gets a few small answers, then silence.
//!
//! A non-INVITE server transaction over UDP whose final answer has gone out is in
//! `Completed` until Timer J (`64*T1`, §17.2.2): all it does there is re-send that answer to
//! a retransmission of its request. The layer keeps it as just that: the answer's bytes,
//! where they went and when Timer J fires, in a second answer cache of its own (never
//! evicted before Timer J, and exempt from the refusal budget, as the transaction was),
//! instead of the whole entry. A registrar answering thousands of REGISTERs a second holds
//! tens of thousands of these (`docs/benchmarks.md`, "Completed transactions kept as their
//! answers").

use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::map::Map;
use crate::message::{
    parse_message, HeaderAccess, HeaderName, Host, Method, Request, Response, SipMessage, Uri, Via,
};
use crate::observe::{Direction, MessageObserver, WireMessage};
use crate::stateless::{
    Answered, AnsweredCache, RefusalGuard, RefusalGuardConfig, StatelessStats, Verdict,
};
use crate::transaction::{
    ClientInviteTransaction, ClientNonInviteTransaction, ServerInviteState,
    ServerInviteTransaction, ServerNonInviteState, ServerNonInviteTransaction, TimerConfig,
    Transaction, TxEvent,
};
use crate::transport::{
    Flow, Inbound, ListenAddr, Transport, TransportConfig, TransportError, Transports,
};
use std::sync::atomic::Ordering;

/// Endpoint settings.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub transport: TransportConfig,
    pub timers: TimerConfig,
    /// Address written in Via/Contact instead of the bound one (behind NAT).
    pub advertise: Option<IpAddr>,
    /// `User-Agent` / `Server` value.
    pub user_agent: String,
    /// Answers sent without a transaction: how many are kept for retransmissions, and the
    /// per-source budget.
    pub stateless: StatelessConfig,
    /// Sees every SIP message received and sent, retransmissions included
    /// ([`crate::observe`]); `None`: nothing is watched, at no cost.
    pub observer: Option<Arc<dyn MessageObserver>>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            transport: TransportConfig::default(),
            timers: TimerConfig::default(),
            advertise: None,
            user_agent: concat!("dialbridge/", env!("CARGO_PKG_VERSION")).to_string(),
            stateless: StatelessConfig::default(),
            observer: None,
        }
    }
}

/// Settings of the answers sent without a transaction (RFC 3261 §8.2.7).
#[derive(Debug, Clone)]
pub struct StatelessConfig {
    /// Answers kept (each for `64*T1`) so that a retransmitted request gets the same bytes.
    pub answered_capacity: usize,
    /// The per-source budget of such answers.
    pub guard: RefusalGuardConfig,
}

impl Default for StatelessConfig {
    fn default() -> Self {
        StatelessConfig {
            answered_capacity: 4096,
            guard: RefusalGuardConfig::default(),
        }
    }
}

/// Whether a stateless answer counts against its destination's refusal budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalBudget {
    /// A stranger: past the budget, the answer is dropped.
    PerSource,
    /// A known peer (a registered phone, a trunk): always answered.
    Exempt,
}

/// Endpoint errors.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("no route for request URI {0}")]
    NoRoute(String),
    #[error("the endpoint has stopped")]
    Stopped,
    #[error("bad request to send: {0}")]
    BadRequest(&'static str),
}

/// A server transaction key (RFC 3261 §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerKey {
    /// Branch, sent-by and method (§17.2.3), plus the Call-ID: a genuine retransmission
    /// always repeats it, and it keeps peers that reuse a branch across requests apart.
    Rfc3261 {
        branch: Bytes,
        sent_by: Bytes,
        method: Method,
        call_id: Bytes,
    },
    /// RFC 2543 peers without the magic cookie: matched on the request's identity.
    Rfc2543(String),
}

impl ServerKey {
    /// The same key in one buffer of its own: a key taken from a request shares that
    /// request's buffer, which a key kept until Timer J would hold alive with it.
    fn detached(&self) -> ServerKey {
        match self {
            ServerKey::Rfc3261 {
                branch,
                sent_by,
                method,
                call_id,
            } => {
                let mut buf = Vec::with_capacity(branch.len() + sent_by.len() + call_id.len());
                for part in [branch, sent_by, call_id] {
                    buf.extend_from_slice(part);
                }
                let buf = Bytes::from(buf);
                let (b, s) = (branch.len(), branch.len() + sent_by.len());
                let method = match method {
                    // An unknown method's name is a slice of the request too.
                    Method::Extension(name) => Method::Extension(Bytes::copy_from_slice(name)),
                    known => known.clone(),
                };
                ServerKey::Rfc3261 {
                    branch: buf.slice(..b),
                    sent_by: buf.slice(b..s),
                    method,
                    call_id: buf.slice(s..),
                }
            }
            ServerKey::Rfc2543(k) => ServerKey::Rfc2543(k.clone()),
        }
    }
}

/// A client transaction key (RFC 3261 §17.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub branch: Bytes,
    pub method: Method,
}

/// A request that opened a new server transaction.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    /// The request; its top Via already carries `received`/`rport` (RFC 3581).
    pub request: Request,
    pub flow: Flow,
    pub key: ServerKey,
}

/// What the endpoint tells its transaction user.
#[derive(Debug, Clone)]
pub enum EndpointEvent {
    /// A new request (not ACK, not CANCEL). Answer it with [`Endpoint::respond`].
    Request(IncomingRequest),
    /// An ACK that no server transaction absorbed: the ACK for a 2xx (it belongs to a dialog).
    Ack { request: Request, flow: Flow },
    /// A CANCEL matched this INVITE server transaction; the CANCEL was answered 200. The TU
    /// answers the INVITE with 487 (§9.2).
    Cancelled { key: ServerKey, cancel: Request },
    /// A 2xx to an INVITE that no transaction took (a retransmission after the transaction
    /// ended, or another fork): the UAC core must ACK it (and may BYE it).
    StrayResponse { response: Response, flow: Flow },
    /// Timer H fired: no ACK came for a non-2xx final response.
    AckTimeout { key: ServerKey },
}

/// What a client transaction reports to its owner.
// Events live only on their way through a channel, a few per transaction, and nearly all
// are responses: boxing the response would add an allocation to each for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Response(Response),
    /// Timer B or F: no final response.
    Timeout,
    TransportError,
}

/// Where to send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// An existing TCP connection to use (a registered phone's connection).
    pub conn: Option<crate::transport::ConnId>,
}

enum Command {
    Send {
        request: Request,
        flow: Flow,
        events: EventSink,
        reply: tokio::sync::oneshot::Sender<(ClientKey, Request)>,
    },
    Respond {
        key: ServerKey,
        response: Response,
    },
    Cancel {
        key: ClientKey,
        extra: Vec<(HeaderName, Bytes)>,
    },
    Stateless {
        data: Bytes,
        flow: Flow,
    },
    ReplyStateless {
        key: ServerKey,
        flow: Flow,
        response: Response,
        budget: RefusalBudget,
        /// Whether the answer is kept for the request's retransmissions.
        keep: bool,
    },
}

/// One receiver for the events of many client transactions (started with
/// [`Endpoint::start_request`]), each told apart by the tag its starter gave it: a call hands
/// all of its transactions to its own inbox this way, with no task per transaction.
pub trait ClientEvents: Send + Sync {
    /// A response to, or the failure of, the transaction `tag`.
    fn event(&self, tag: u64, event: ClientEvent);
    /// The transaction `tag` has ended (or could not start): nothing more comes from it.
    fn ended(&self, tag: u64);
}

/// Where a client transaction's events go.
enum EventSink {
    /// The transaction's own channel ([`ClientTransaction`]); closing it says "ended".
    Own(mpsc::UnboundedSender<ClientEvent>),
    /// A receiver shared by many transactions.
    Shared { to: Arc<dyn ClientEvents>, tag: u64 },
}

impl EventSink {
    fn send(&self, ev: ClientEvent) {
        match self {
            EventSink::Own(tx) => {
                let _ = tx.send(ev);
            }
            EventSink::Shared { to, tag } => to.event(*tag, ev),
        }
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        if let EventSink::Shared { to, tag } = self {
            to.ended(*tag);
        }
    }
}

/// A transaction user's first look at a new request, on the endpoint's own task
/// ([`Endpoint::set_request_hook`]): it takes the request and returns `None` when it has
/// dealt with it there (answered it, or handed it to a task of its own), or gives it back to
/// go to the events channel as usual. It must not wait: the endpoint's task runs it.
pub type RequestHook = Arc<dyn Fn(IncomingRequest) -> Option<IncomingRequest> + Send + Sync>;

/// Where the [`RequestHook`] is kept, shared by the handles and the endpoint's task.
#[derive(Default)]
struct HookSlot(std::sync::OnceLock<RequestHook>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "HookSlot(set)"
        } else {
            "HookSlot(empty)"
        })
    }
}

/// A running client transaction, owned by the TU that sent the request.
#[derive(Debug)]
pub struct ClientTransaction {
    pub key: ClientKey,
    /// The request as sent (with our Via).
    pub request: Request,
    pub flow: Flow,
    rx: mpsc::UnboundedReceiver<ClientEvent>,
    endpoint: Endpoint,
}

impl ClientTransaction {
    /// The next response or failure; `None` once the transaction has ended.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// Sends a CANCEL for this INVITE (deferred until a provisional arrived, §9.1).
    pub fn cancel(&self, extra: Vec<(HeaderName, Bytes)>) {
        self.canceller().cancel(extra);
    }

    /// A handle that can CANCEL this INVITE from elsewhere (e.g. while another task owns
    /// the transaction and reads its responses).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            cmd: self.endpoint.cmd.clone(),
            key: self.key.clone(),
        }
    }
}

/// Cancels one client INVITE transaction (§9.1).
#[derive(Clone)]
pub struct Canceller {
    cmd: mpsc::UnboundedSender<Command>,
    key: ClientKey,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller").field("key", &self.key).finish()
    }
}

impl Canceller {
    /// Sends the CANCEL (deferred until a provisional arrived; nothing once a final did).
    pub fn cancel(&self, extra: Vec<(HeaderName, Bytes)>) {
        let _ = self.cmd.send(Command::Cancel {
            key: self.key.clone(),
            extra,
        });
    }
}

impl HookSlot {
    /// Which endpoint this is: the handles and the layer share the one slot.
    fn owner(slot: &Arc<HookSlot>) -> usize {
        Arc::as_ptr(slot) as usize
    }
}

thread_local! {
    /// The commands a request hook gives its own endpoint while the endpoint's task runs it
    /// (`Layer::run_hook`), by endpoint: the layer applies them when the hook returns. Sent
    /// through the channel instead, each would wake the very task that is running, and the
    /// runtime would poll it once more and wake another worker thread to do so.
    static IN_HOOK: std::cell::RefCell<Option<(usize, Vec<Command>)>> =
        const { std::cell::RefCell::new(None) };
}

/// A handle on the running endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoint {
    cmd: mpsc::UnboundedSender<Command>,
    transports: Arc<Transports>,
    advertise: Option<IpAddr>,
    user_agent: Arc<str>,
    /// The `Server` value ([`EndpointConfig::user_agent`]), shared by every answer.
    server_header: Bytes,
    stateless_stats: Arc<StatelessStats>,
    timers: TimerConfig,
    hook: Arc<HookSlot>,
}

impl Endpoint {
    /// Binds the transports and starts the transaction layer.
    pub async fn start(
        cfg: EndpointConfig,
    ) -> Result<(Endpoint, mpsc::UnboundedReceiver<EndpointEvent>), EndpointError> {
        cfg.timers
            .validate()
            .map_err(|_| EndpointError::BadRequest("invalid timer configuration"))?;
        let (in_tx, in_rx) = mpsc::channel(4096);
        let transports = Transports::bind(cfg.transport.clone(), in_tx).await?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let stateless_stats = Arc::new(StatelessStats::default());
        let hook = Arc::new(HookSlot::default());
        let layer = Layer {
            hook: Arc::clone(&hook),
            hook_queue: Vec::new(),
            stateless_stats: Arc::clone(&stateless_stats),
            transports: Arc::clone(&transports),
            timers: cfg.timers,
            txs: Map::default(),
            client_keys: Map::default(),
            server_keys: Map::default(),
            retx: Map::default(),
            retx_keys: Map::default(),
            heap: BinaryHeap::new(),
            answered: AnsweredCache::new(cfg.stateless.answered_capacity, cfg.timers.timeout()),
            // As many as there are transactions: none leaves before its Timer J.
            completed: AnsweredCache::new(usize::MAX, cfg.timers.timeout()),
            guard: RefusalGuard::new(cfg.stateless.guard.clone()),
            next_id: 1,
            events: ev_tx,
            user_agent: cfg.user_agent.clone(),
            advertise: cfg.advertise,
            observer: cfg.observer.clone(),
        };
        tokio::spawn(layer.run(in_rx, cmd_rx));
        Ok((
            Endpoint {
                cmd: cmd_tx,
                transports,
                advertise: cfg.advertise,
                server_header: Bytes::from(cfg.user_agent.clone()),
                user_agent: cfg.user_agent.into(),
                stateless_stats,
                timers: cfg.timers,
                hook,
            },
            ev_rx,
        ))
    }

    /// Hands a command to the layer: kept for the layer to apply when its request hook
    /// returns if this runs inside that hook on the layer's task (`IN_HOOK`), sent through
    /// the channel otherwise.
    fn post(&self, c: Command) -> Result<(), EndpointError> {
        let owner = HookSlot::owner(&self.hook);
        let c = IN_HOOK.with(|slot| match &mut *slot.borrow_mut() {
            Some((o, queue)) if *o == owner => {
                queue.push(c);
                None
            }
            _ => Some(c),
        });
        match c {
            None => Ok(()),
            Some(c) => self.cmd.send(c).map_err(|_| EndpointError::Stopped),
        }
    }

    /// Installs the transaction user's first look at each new request (not ACK, not
    /// CANCEL), run on the endpoint's task once the request has its server transaction:
    /// what it keeps is answered without a hand-over to the events channel's reader and
    /// back. Only the first hook installed is kept; returns whether this one was.
    pub fn set_request_hook(&self, hook: RequestHook) -> bool {
        self.hook.0.set(hook).is_ok()
    }

    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.transports.local_addrs()
    }

    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    /// Counters of the answers sent without a transaction (sent, replayed, dropped for a
    /// muted source, mutes).
    pub fn stateless_stats(&self) -> Arc<StatelessStats> {
        Arc::clone(&self.stateless_stats)
    }

    /// The transports: their guards (connection caps, time-outs, the request budget), the
    /// known-peer test and the hold on a registration's connection.
    pub fn transports(&self) -> &Arc<Transports> {
        &self.transports
    }

    /// The address and port to advertise (Via sent-by, Contact) for traffic to `dest`.
    pub fn advertised(&self, transport: Transport, dest: SocketAddr) -> Option<SocketAddr> {
        let local = self.transports.local_for(transport, dest)?;
        let ip = match self.advertise {
            Some(a) if a.is_ipv4() == dest.is_ipv4() => a,
            _ => local.ip(),
        };
        Some(SocketAddr::new(ip, local.port()))
    }

    /// A Contact URI for traffic to `dest`.
    pub fn contact_uri(
        &self,
        user: Option<&str>,
        transport: Transport,
        dest: SocketAddr,
    ) -> Option<Uri> {
        let a = self.advertised(transport, dest)?;
        let mut u = crate::message::SipUri::new(user, Host::Ip(a.ip()), Some(a.port()));
        if transport != Transport::Udp {
            u.params.set("transport", Some(transport.as_str()));
        }
        Some(Uri::Sip(u))
    }

    /// Where a request goes (RFC 3263 reduced to A/AAAA lookups): the first Route if it is a
    /// loose router, else the Request-URI; `;transport=` chooses the transport.
    pub async fn resolve(&self, request: &Request) -> Result<Destination, EndpointError> {
        let routes = request
            .routes()
            .map_err(|_| EndpointError::BadRequest("bad Route"))?;
        let target = routes
            .first()
            .map(|r| r.uri.clone())
            .unwrap_or_else(|| request.uri().clone());
        resolve_uri(&target).await
    }

    /// Sends a request in a new client transaction. The endpoint adds the top Via (with a new
    /// branch and `rport`), Max-Forwards and User-Agent when missing.
    pub async fn send_request(
        &self,
        request: Request,
        dest: Option<Destination>,
    ) -> Result<ClientTransaction, EndpointError> {
        if request.method == Method::Ack || request.method == Method::Cancel {
            return Err(EndpointError::BadRequest(
                "ACK and CANCEL are not sent in their own transactions",
            ));
        }
        let dest = match dest {
            Some(d) => d,
            None => self.resolve(&request).await?,
        };
        let flow = self.flow_for(dest).await?;
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        self.cmd
            .send(Command::Send {
                request,
                flow,
                events: EventSink::Own(ev_tx),
                reply: reply_tx,
            })
            .map_err(|_| EndpointError::Stopped)?;
        let (key, request) = reply_rx.await.map_err(|_| EndpointError::Stopped)?;
        Ok(ClientTransaction {
            key,
            request,
            flow,
            rx: ev_rx,
            endpoint: self.clone(),
        })
    }

    /// Like [`Endpoint::send_request`], but the transaction's events go to `events` under
    /// `tag`, which also hears when the transaction has ended ([`ClientEvents::ended`]).
    /// Returns the transaction's key (for [`Endpoint::cancel`]). When the request cannot be
    /// sent, `events` hears nothing and the error is returned.
    pub async fn start_request(
        &self,
        request: Request,
        dest: Destination,
        events: Arc<dyn ClientEvents>,
        tag: u64,
    ) -> Result<ClientKey, EndpointError> {
        if request.method == Method::Ack || request.method == Method::Cancel {
            return Err(EndpointError::BadRequest(
                "ACK and CANCEL are not sent in their own transactions",
            ));
        }
        let flow = self.flow_for(dest).await?;
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        self.cmd
            .send(Command::Send {
                request,
                flow,
                events: EventSink::Shared { to: events, tag },
                reply: reply_tx,
            })
            .map_err(|_| EndpointError::Stopped)?;
        let (key, _) = reply_rx.await.map_err(|_| EndpointError::Stopped)?;
        Ok(key)
    }

    /// Sends a CANCEL for the client INVITE transaction `key` (deferred until a provisional
    /// response arrived, §9.1; nothing once a final one did).
    pub fn cancel(&self, key: &ClientKey, extra: Vec<(HeaderName, Bytes)>) {
        let _ = self.cmd.send(Command::Cancel {
            key: key.clone(),
            extra,
        });
    }

    /// The SIP timers (T1, T2, T4) the transactions run on: what a transaction user derives
    /// its own waits from.
    pub fn timers(&self) -> TimerConfig {
        self.timers
    }

    /// Sends a request outside any transaction (the ACK for a 2xx, §13.2.2.4). The endpoint
    /// adds a top Via with a new branch.
    pub async fn send_ack(
        &self,
        mut ack: Request,
        dest: Option<Destination>,
    ) -> Result<(), EndpointError> {
        let dest = match dest {
            Some(d) => d,
            None => self.resolve(&ack).await?,
        };
        let flow = self.flow_for(dest).await?;
        let via = via_value(
            flow.transport,
            self.advertised(flow.transport, flow.remote),
            &new_branch(),
        );
        ack.headers.insert_first(HeaderName::Via, via);
        if ack.headers.get(&HeaderName::MaxForwards).is_none() {
            ack.headers.add(HeaderName::MaxForwards, "70");
        }
        self.cmd
            .send(Command::Stateless {
                data: ack.encode(),
                flow,
            })
            .map_err(|_| EndpointError::Stopped)
    }

    /// Answers a request through its server transaction.
    pub fn respond(&self, key: &ServerKey, mut response: Response) {
        if response.headers.get(&HeaderName::Server).is_none() && response.status >= 200 {
            response
                .headers
                .add(HeaderName::Server, self.server_header.clone());
        }
        let _ = self.post(Command::Respond {
            key: key.clone(),
            response,
        });
    }

    /// Answers a request without a transaction (RFC 3261 §8.2.7): for a request that opens
    /// nothing — a refusal, a challenge, an OPTIONS answer. The server transaction that held
    /// the request is dropped (so an INVITE gets no `100 Trying` once refused); the answer
    /// goes out once, within `budget`, and over UDP it is kept for `64*T1` so that a
    /// retransmission of the request gets the same bytes and an ACK is absorbed. No
    /// `Server` header is added: an answer to a stranger carries only what the request
    /// needs. A 2xx to an INVITE opens a dialog and so goes through the transaction as with
    /// [`Endpoint::respond`]; a provisional response is dropped.
    pub fn reply_stateless(
        &self,
        inc: &IncomingRequest,
        response: Response,
        budget: RefusalBudget,
    ) {
        let _ = self.post(Command::ReplyStateless {
            key: inc.key.clone(),
            flow: inc.flow,
            response,
            budget,
            keep: true,
        });
    }

    /// [`reply_stateless`](Self::reply_stateless) for a challenge to a non-INVITE request
    /// that carried no credentials (a REGISTER's first step), without keeping the answer: a
    /// retransmission of the request is challenged again, as a stateless UAS does (RFC 3261
    /// §8.2.7), instead of every challenge being held for `64*T1`. The TU must then make the
    /// To tag from the request, the same for its retransmissions (§8.2.7). There is no ACK
    /// to absorb (not an INVITE: those are kept as with `reply_stateless`).
    pub fn challenge_stateless(
        &self,
        inc: &IncomingRequest,
        response: Response,
        budget: RefusalBudget,
    ) {
        let keep = inc.request.method == Method::Invite;
        let _ = self.post(Command::ReplyStateless {
            key: inc.key.clone(),
            flow: inc.flow,
            response,
            budget,
            keep,
        });
    }

    async fn flow_for(&self, dest: Destination) -> Result<Flow, EndpointError> {
        let local = self.transports.local_for(dest.transport, dest.addr).ok_or(
            TransportError::NoListener {
                transport: dest.transport,
                family: if dest.addr.is_ipv4() { "IPv4" } else { "IPv6" },
                dest: dest.addr,
            },
        )?;
        let mut flow = Flow {
            transport: dest.transport,
            local,
            remote: dest.addr,
            conn: dest.conn,
        };
        if dest.transport.is_stream() {
            let alive = flow.conn.is_some_and(|c| self.transports.conn_alive(c));
            if !alive {
                flow.conn = Some(
                    self.transports
                        .connect_to(dest.transport, dest.addr)
                        .await?,
                );
            }
        }
        Ok(flow)
    }
}

/// Resolves a SIP URI to a destination (numeric hosts directly, names by A/AAAA). A `sips:`
/// URI or `;transport=tls` goes over TLS (RFC 3261 §26.2.2, default port 5061).
pub async fn resolve_uri(uri: &Uri) -> Result<Destination, EndpointError> {
    let sip = uri
        .as_sip()
        .ok_or_else(|| EndpointError::NoRoute(uri.to_string()))?;
    let transport = match (sip.secure, sip.transport().as_deref()) {
        (false, None | Some("udp")) => Transport::Udp,
        (true, None | Some("tcp")) | (_, Some("tls")) => Transport::Tls,
        (false, Some("tcp")) => Transport::Tcp,
        (false, Some("ws")) => Transport::Ws,
        (_, Some("wss")) => Transport::Wss,
        _ => return Err(EndpointError::NoRoute(uri.to_string())),
    };
    let port = sip.port.unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    let host = sip
        .params
        .get_str("maddr")
        .map(|m| m.into_owned())
        .unwrap_or_else(|| match &sip.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Domain(d) => String::from_utf8_lossy(d).into_owned(),
        });
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| EndpointError::Resolve(host.clone()))?
        .map_err(|_| EndpointError::Resolve(host.clone()))?
        .next()
        .ok_or_else(|| EndpointError::Resolve(host.clone()))?,
    };
    Ok(Destination {
        transport,
        addr,
        conn: None,
    })
}

/// A new RFC 3261 branch (magic cookie + 96 random bits).
pub fn new_branch() -> String {
    format!("z9hG4bK{:024x}", rand::random::<u128>() >> 32)
}

/// A new tag for From/To (RFC 3261 §19.3: at least 32 random bits).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn via_value(transport: Transport, sent_by: Option<SocketAddr>, branch: &str) -> String {
    let sent_by = sent_by
        .map(|a| a.to_string())
        .unwrap_or_else(|| "0.0.0.0".into());
    format!(
        "SIP/2.0/{} {};branch={};rport",
        transport.via_token(),
        sent_by,
        branch
    )
}

// The variants are named after the RFC's four transaction kinds.
#[allow(clippy::enum_variant_names)]
enum Machine {
    ClientInvite(ClientInviteTransaction),
    ClientNonInvite(ClientNonInviteTransaction),
    ServerInvite(ServerInviteTransaction),
    ServerNonInvite(ServerNonInviteTransaction),
}

impl Machine {
    fn polled(&mut self) -> &mut dyn Transaction {
        match self {
            Machine::ClientInvite(m) => m,
            Machine::ClientNonInvite(m) => m,
            Machine::ServerInvite(m) => m,
            Machine::ServerNonInvite(m) => m,
        }
    }
}

/// Its request is boxed: most transactions keep none, and the table's slots are as large
/// as its entries (`docs/benchmarks.md`, "The transaction table's entries"). A non-INVITE
/// server transaction over UDP leaves the table once `Completed` (`Layer::keep_as_answer`).
struct TxEntry {
    machine: Machine,
    flow: Flow,
    /// The request: for an INVITE client transaction the INVITE sent (to build the ACK of a
    /// failure and the CANCEL; a non-INVITE client transaction keeps none); for an
    /// INVITE server transaction the INVITE (its `100 Trying`, the ACK passed up). A
    /// non-INVITE server transaction keeps none: only its key and its answer's bytes live on
    /// through Timer J.
    request: Option<Box<Request>>,
    client_key: Option<ClientKey>,
    server_key: Option<ServerKey>,
    events: Option<EventSink>,
    cancel_pending: Option<Vec<(HeaderName, Bytes)>>,
    /// An INVITE server transaction whose TU has not answered yet: when to send
    /// `100 Trying` (§17.2.1).
    trying: Option<std::time::Instant>,
}

/// A 2xx to an INVITE sent over an unreliable transport, retransmitted by the UAS core until
/// its ACK arrives (RFC 3261 §13.3.1.4): the INVITE server transaction leaves this to the
/// layer above it (RFC 6026 `Accepted`), and doing it here serves every TU the same way.
struct Retransmit2xx {
    key: (Bytes, u32),
    data: Bytes,
    flow: Flow,
    /// The wait after the next send: doubling, up to T2.
    interval: std::time::Duration,
    next: std::time::Instant,
    /// 64*T1 after the first send: give up.
    until: std::time::Instant,
}

struct Layer {
    transports: Arc<Transports>,
    timers: TimerConfig,
    txs: Map<u64, TxEntry>,
    client_keys: Map<ClientKey, u64>,
    server_keys: Map<ServerKey, u64>,
    /// 2xx retransmissions, by id (ids shared with `txs`, deadlines in `heap`), and by
    /// (Call-ID, CSeq number) for the ACK that ends them.
    retx: Map<u64, Retransmit2xx>,
    retx_keys: Map<(Bytes, u32), u64>,
    heap: BinaryHeap<Reverse<(std::time::Instant, u64)>>,
    /// Answers sent without a transaction, for the retransmissions of their requests.
    answered: AnsweredCache<ServerKey, Flow>,
    /// Non-INVITE server transactions in `Completed` over UDP, kept as their final answers
    /// until Timer J (see the module documentation).
    completed: AnsweredCache<ServerKey, Flow>,
    /// The per-source budget of answers sent without a transaction.
    guard: RefusalGuard,
    stateless_stats: Arc<StatelessStats>,
    next_id: u64,
    events: mpsc::UnboundedSender<EndpointEvent>,
    user_agent: String,
    advertise: Option<IpAddr>,
    observer: Option<Arc<dyn MessageObserver>>,
    /// The transaction user's first look at a new request ([`Endpoint::set_request_hook`]).
    hook: Arc<HookSlot>,
    /// The commands the hook gave while it ran (`Layer::run_hook`), kept for its next run.
    hook_queue: Vec<Command>,
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// A table grown for a burst (a load peak's transactions) keeps its room after the burst
/// unless given back: once it is a quarter full, it is shrunk to twice what it holds. The
/// rehash is amortised over the removals that led to it.
fn shrink_after_burst<K: Eq + std::hash::Hash, V>(map: &mut Map<K, V>) {
    let room = map.capacity();
    if room > 64 && map.len() < room / 4 {
        map.shrink_to(map.len() * 2);
    }
}

impl Layer {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut cmds: mpsc::UnboundedReceiver<Command>,
    ) {
        // The layer's earliest deadline; most messages leave it where it is.
        let mut timer = crate::deadline::DeadlineTimer::new();
        loop {
            let next = self.heap.peek().map(|Reverse((t, _))| *t);
            timer.set(next.into_iter().chain(self.completed.next_expiry()).min());
            tokio::select! {
                biased;
                Some(c) = cmds.recv() => self.on_command(c),
                Some(i) = inbound.recv() => self.on_inbound(i),
                () = timer.fired(), if timer.is_armed() => self.on_timers(),
                else => return,
            }
        }
    }

    fn insert(&mut self, entry: TxEntry) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(k) = &entry.client_key {
            self.client_keys.insert(k.clone(), id);
        }
        if let Some(k) = &entry.server_key {
            self.server_keys.insert(k.clone(), id);
        }
        self.txs.insert(id, entry);
        id
    }

    /// Forgets a transaction (its heap entries lapse on their own).
    fn remove(&mut self, id: u64) {
        if let Some(e) = self.txs.remove(&id) {
            if let Some(k) = e.client_key {
                self.client_keys.remove(&k);
                shrink_after_burst(&mut self.client_keys);
            }
            if let Some(k) = e.server_key {
                self.server_keys.remove(&k);
                shrink_after_burst(&mut self.server_keys);
            }
            shrink_after_burst(&mut self.txs);
        }
    }

    /// Sends an answer outside any transaction, within its destination's refusal budget
    /// unless `exempt`. Returns the bytes if they were sent.
    fn send_paced(
        &mut self,
        flow: &Flow,
        data: Bytes,
        exempt: bool,
        now: std::time::Instant,
    ) -> Option<Bytes> {
        let stats = &self.stateless_stats;
        if !exempt {
            match self.guard.check(flow.remote.ip(), now) {
                Verdict::Send => {}
                Verdict::Muted => {
                    tracing::info!(
                        source = %flow.remote.ip(),
                        "too many refusals to one source: it gets no answers for a while"
                    );
                    stats.mutes.fetch_add(1, Ordering::Relaxed);
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Verdict::Silent => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        self.transmit(flow, data.clone());
        Some(data)
    }

    /// A response from the TU through its server transaction.
    fn respond(&mut self, key: ServerKey, response: Response) {
        let Some(&id) = self.server_keys.get(&key) else {
            tracing::debug!(?key, "response for a finished server transaction dropped");
            return;
        };
        let Some(e) = self.txs.get_mut(&id) else {
            return;
        };
        e.trying = None;
        let data = response.encode();
        let now = now_std();
        let invite_2xx = matches!(e.machine, Machine::ServerInvite(_))
            && response.is_success()
            && !e.flow.transport.is_reliable();
        let flow = e.flow;
        let kept = invite_2xx.then(|| data.clone());
        let r = match &mut e.machine {
            Machine::ServerInvite(m) => m.send_response(response.status, data, now),
            Machine::ServerNonInvite(m) => m.send_response(response.status, data, now),
            _ => Ok(()),
        };
        match (r, kept) {
            (Err(err), _) => {
                tracing::debug!(error = %err, "response refused by the transaction")
            }
            (Ok(()), Some(data)) => self.start_2xx_retransmission(&response, data, flow, now),
            (Ok(()), None) => {}
        }
        self.drive(id);
    }

    /// The TU answers a request statelessly (§8.2.7); see [`Endpoint::reply_stateless`].
    fn reply_stateless(
        &mut self,
        key: ServerKey,
        flow: Flow,
        response: Response,
        budget: RefusalBudget,
        keep: bool,
    ) {
        if response.status < 200 {
            tracing::debug!(
                status = response.status,
                "provisional answers are not sent statelessly"
            );
            return;
        }
        if response.is_success() && response.cseq().is_ok_and(|c| c.method == Method::Invite) {
            // A 2xx to an INVITE opens a dialog: it needs its transaction (and its
            // retransmissions until the ACK).
            self.respond(key, response);
            return;
        }
        if self.completed.get(&key, now_std()).is_some() {
            tracing::debug!(
                ?key,
                "stateless answer to a request already answered dropped"
            );
            return;
        }
        if let Some(&id) = self.server_keys.get(&key) {
            let answered = match self.txs.get(&id).map(|e| &e.machine) {
                Some(Machine::ServerInvite(m)) => m.state() != ServerInviteState::Proceeding,
                Some(Machine::ServerNonInvite(m)) => !matches!(
                    m.state(),
                    ServerNonInviteState::Trying | ServerNonInviteState::Proceeding
                ),
                _ => false,
            };
            if answered {
                tracing::debug!(
                    ?key,
                    "stateless answer to a request already answered dropped"
                );
                return;
            }
            self.remove(id);
        }
        let now = now_std();
        let exempt = budget == RefusalBudget::Exempt;
        let rflow = response_flow(&response.headers, &flow);
        let data = self.send_paced(&rflow, response.encode(), exempt, now);
        if keep && !rflow.transport.is_reliable() {
            self.answered.insert(
                key,
                Answered {
                    data,
                    flow: rflow,
                    exempt,
                },
                now,
            );
        }
    }

    /// A retransmitted request that was answered gets the same answer again: one of a
    /// completed non-INVITE transaction always, one sent statelessly within the budget.
    /// Returns whether `key` was such a request.
    fn replay_answered(&mut self, key: &ServerKey, now: std::time::Instant) -> bool {
        if let Some(a) = self.completed.get(key, now) {
            // A completed transaction's answer, re-sent as the transaction would have.
            if let Some(data) = a.data.clone() {
                let flow = a.flow;
                self.transmit(&flow, data);
            }
            return true;
        }
        let Some(a) = self.answered.get(key, now) else {
            return false;
        };
        if let Some(data) = a.data.clone() {
            let (flow, exempt) = (a.flow, a.exempt);
            if self.send_paced(&flow, data, exempt, now).is_some() {
                self.stateless_stats
                    .replayed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    fn transmit(&self, flow: &Flow, data: Bytes) {
        self.observe(Direction::Sent, flow, &data);
        if let Err(e) = self.transports.try_send(flow, data) {
            tracing::debug!(remote = %flow.remote, error = %e, "transmit failed");
        }
    }

    /// Drains a machine's outputs: transmissions, events, and its next deadline.
    fn drive(&mut self, id: u64) {
        self.drive_with(id, None);
    }

    /// [`Layer::drive`] after the transaction took `resp` (a client transaction's response,
    /// handed up with its `Response` event).
    fn drive_with(&mut self, id: u64, resp: Option<Response>) {
        let Some(e) = self.txs.get_mut(&id) else {
            return;
        };
        let m = e.machine.polled();
        // Nearly always one datagram and one event at most: those are kept out of the
        // vectors, which then allocate nothing.
        let (first_out, out) = first_and_rest(|| m.poll_transmit());
        let (first_ev, evs) = first_and_rest(|| m.poll_event());
        let deadline = m.poll_timeout();
        let terminated = m.is_terminated();
        let flow = e.flow;
        let client_events = e.events.take();
        let server_key = e.server_key.clone();
        let request = if first_ev
            .iter()
            .chain(&evs)
            .any(|ev| matches!(ev, TxEvent::Ack))
        {
            e.request.as_deref().cloned()
        } else {
            None
        };
        for b in first_out.into_iter().chain(out) {
            self.transmit(&flow, b);
        }
        for ev in first_ev.into_iter().chain(evs) {
            match ev {
                TxEvent::Response(_) => {
                    if let (Some(tx), Some(r)) = (&client_events, &resp) {
                        tx.send(ClientEvent::Response(r.clone()));
                    }
                }
                TxEvent::Timeout => {
                    if let Some(tx) = &client_events {
                        tx.send(ClientEvent::Timeout);
                    } else if let Some(k) = &server_key {
                        let _ = self
                            .events
                            .send(EndpointEvent::AckTimeout { key: k.clone() });
                    }
                }
                TxEvent::TransportError => {
                    if let Some(tx) = &client_events {
                        tx.send(ClientEvent::TransportError);
                    }
                }
                TxEvent::Ack => {
                    if let Some(request) = &request {
                        let _ = self.events.send(EndpointEvent::Ack {
                            request: request.clone(),
                            flow,
                        });
                    }
                }
                TxEvent::Terminated => {}
            }
        }
        if terminated {
            // Dropping the sink tells its receiver the transaction has ended.
            drop(client_events);
            self.remove(id);
            return;
        }
        if self.keep_as_answer(id) {
            return;
        }
        if let Some(e) = self.txs.get_mut(&id) {
            e.events = client_events;
        }
        if let Some(d) = deadline {
            self.heap.push(Reverse((d, id)));
        }
    }

    /// A non-INVITE server transaction that has reached `Completed` over UDP goes from the
    /// table to [`Layer::completed`] as its final answer: all it would do until Timer J is
    /// re-send that answer to its request's retransmissions (§17.2.2). True when it went.
    fn keep_as_answer(&mut self, id: u64) -> bool {
        let Some(e) = self.txs.get(&id) else {
            return false;
        };
        let Machine::ServerNonInvite(m) = &e.machine else {
            return false;
        };
        if m.state() != ServerNonInviteState::Completed || e.flow.transport.is_reliable() {
            return false;
        }
        let (Some(key), Some(data)) = (
            e.server_key.as_ref().map(ServerKey::detached),
            m.last_response().cloned(),
        ) else {
            return false;
        };
        let flow = e.flow;
        self.remove(id);
        self.completed.insert(
            key,
            Answered {
                data: Some(data),
                flow,
                exempt: true,
            },
            now_std(),
        );
        true
    }

    fn on_timers(&mut self) {
        let now = now_std();
        self.completed.expire(now);
        while let Some(Reverse((t, id))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            let room = self.heap.capacity();
            if room > 64 && self.heap.len() < room / 4 {
                // As for the tables (`shrink_after_burst`): the deadlines of a peak go.
                self.heap.shrink_to(self.heap.len() * 2);
            }
            let Some(e) = self.txs.get_mut(&id) else {
                self.retransmit_2xx(id, now);
                continue;
            };
            if e.trying.is_some_and(|due| due <= now) {
                // The TU has not answered the INVITE yet: 100 Trying (§17.2.1) — unless the
                // source is muted for too many refusals (a flood that outpaces the TU gets
                // no provisional answers either; a real client retransmits).
                e.trying = None;
                let muted = self.guard.is_muted(e.flow.remote.ip(), now);
                if let (Machine::ServerInvite(m), false, Some(invite)) =
                    (&mut e.machine, muted, &e.request)
                {
                    let trying = Response::for_request(invite, 100);
                    let _ = m.send_response(100, trying.encode(), now);
                }
                self.drive(id);
                continue;
            }
            // Lazy deletion: only fire if the machine's deadline is really due.
            let m = e.machine.polled();
            match m.poll_timeout() {
                Some(d) if d <= now => m.handle_timeout(now),
                _ => continue,
            }
            self.drive(id);
        }
    }

    /// Starts retransmitting a 2xx to an INVITE (§13.3.1.4): at T1, then doubling up to T2,
    /// until the ACK or 64*T1. A later 2xx for the same INVITE replaces the earlier one.
    fn start_2xx_retransmission(
        &mut self,
        response: &Response,
        data: Bytes,
        flow: Flow,
        now: std::time::Instant,
    ) {
        let (Ok(call_id), Ok(cseq)) = (response.call_id(), response.cseq()) else {
            return;
        };
        let key = (call_id.to_bytes(), cseq.seq);
        if let Some(old) = self.retx_keys.remove(&key) {
            self.retx.remove(&old);
        }
        let id = self.next_id;
        self.next_id += 1;
        let t1 = self.timers.t1;
        let next = now + t1;
        self.retx.insert(
            id,
            Retransmit2xx {
                key: key.clone(),
                data,
                flow,
                interval: (t1 * 2).min(self.timers.t2),
                next,
                until: now + t1 * 64,
            },
        );
        self.retx_keys.insert(key, id);
        self.heap.push(Reverse((next, id)));
    }

    /// The ACK for a 2xx arrived: no more retransmissions of it.
    fn stop_2xx_retransmission(&mut self, ack: &Request) {
        let (Ok(call_id), Ok(cseq)) = (ack.call_id(), ack.cseq()) else {
            return;
        };
        if let Some(id) = self.retx_keys.remove(&(call_id.to_bytes(), cseq.seq)) {
            self.retx.remove(&id);
            shrink_after_burst(&mut self.retx);
            shrink_after_burst(&mut self.retx_keys);
        }
    }

    fn retransmit_2xx(&mut self, id: u64, now: std::time::Instant) {
        let Some(r) = self.retx.get_mut(&id) else {
            return;
        };
        if r.next > now {
            return;
        }
        if now >= r.until {
            tracing::debug!(remote = %r.flow.remote, "no ACK for a 2xx within 64*T1");
            let key = r.key.clone();
            self.retx.remove(&id);
            self.retx_keys.remove(&key);
            shrink_after_burst(&mut self.retx);
            shrink_after_burst(&mut self.retx_keys);
            return;
        }
        let (flow, data) = (r.flow, r.data.clone());
        r.next = (now + r.interval).min(r.until);
        r.interval = (r.interval * 2).min(self.timers.t2);
        self.heap.push(Reverse((r.next, id)));
        self.transmit(&flow, data);
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Send {
                mut request,
                flow,
                events,
                reply,
            } => {
                let branch = new_branch();
                let sent_by = match self.advertise {
                    Some(ip) if ip.is_ipv4() == flow.local.is_ipv4() => {
                        SocketAddr::new(ip, flow.local.port())
                    }
                    _ => flow.local,
                };
                request.headers.insert_first(
                    HeaderName::Via,
                    via_value(flow.transport, Some(sent_by), &branch),
                );
                if request.headers.get(&HeaderName::MaxForwards).is_none() {
                    request.headers.add(HeaderName::MaxForwards, "70");
                }
                if request.headers.get(&HeaderName::UserAgent).is_none() {
                    request
                        .headers
                        .add(HeaderName::UserAgent, self.user_agent.clone());
                }
                let key = ClientKey {
                    branch: Bytes::from(branch),
                    method: request.method.clone(),
                };
                let data = request.encode();
                let now = now_std();
                let reliable = flow.transport.is_reliable();
                let machine = if request.method == Method::Invite {
                    Machine::ClientInvite(ClientInviteTransaction::new(
                        data,
                        reliable,
                        self.timers,
                        now,
                    ))
                } else {
                    Machine::ClientNonInvite(ClientNonInviteTransaction::new(
                        data,
                        reliable,
                        self.timers,
                        now,
                    ))
                };
                // Only an INVITE's transaction reads its request again (its CANCEL, the ACK of
                // a failure); another request goes to the caller without a copy.
                let kept = (request.method == Method::Invite).then(|| Box::new(request.clone()));
                let _ = reply.send((key.clone(), request));
                let id = self.insert(TxEntry {
                    machine,
                    flow,
                    request: kept,
                    client_key: Some(key),
                    server_key: None,
                    events: Some(events),
                    cancel_pending: None,
                    trying: None,
                });
                self.drive(id);
            }
            Command::Respond { key, response } => self.respond(key, response),
            Command::Cancel { key, extra } => {
                let Some(&id) = self.client_keys.get(&key) else {
                    return;
                };
                let Some(e) = self.txs.get_mut(&id) else {
                    return;
                };
                let Machine::ClientInvite(m) = &e.machine else {
                    return;
                };
                let Some(invite) = &e.request else {
                    return;
                };
                if m.can_cancel() {
                    let cancel = build_cancel(invite, &extra);
                    let flow = e.flow;
                    self.start_cancel(cancel, flow, &key);
                } else if m.state() == crate::transaction::ClientInviteState::Calling {
                    // §9.1: no CANCEL before a provisional response.
                    e.cancel_pending = Some(extra);
                }
                // After a final response there is nothing left to cancel.
            }
            Command::Stateless { data, flow } => self.transmit(&flow, data),
            Command::ReplyStateless {
                key,
                flow,
                response,
                budget,
                keep,
            } => self.reply_stateless(key, flow, response, budget, keep),
        }
    }

    fn start_cancel(&mut self, cancel: Request, flow: Flow, invite: &ClientKey) {
        let key = ClientKey {
            branch: invite.branch.clone(),
            method: Method::Cancel,
        };
        if self.client_keys.contains_key(&key) {
            return;
        }
        let data = cancel.encode();
        let machine = Machine::ClientNonInvite(ClientNonInviteTransaction::new(
            data,
            flow.transport.is_reliable(),
            self.timers,
            now_std(),
        ));
        let id = self.insert(TxEntry {
            machine,
            flow,
            // A CANCEL needs nothing of itself once sent.
            request: None,
            client_key: Some(key),
            server_key: None,
            events: None,
            cancel_pending: None,
            trying: None,
        });
        self.drive(id);
    }

    /// Shows a message to the observer, if there is one.
    fn observe(&self, direction: Direction, flow: &Flow, data: &[u8]) {
        if let Some(o) = &self.observer {
            o.on_message(&WireMessage {
                direction,
                transport: flow.transport,
                local: flow.local,
                remote: flow.remote,
                data,
            });
        }
    }

    fn on_inbound(&mut self, i: Inbound) {
        self.observe(Direction::Received, &i.flow, &i.data);
        match parse_message(i.data) {
            Ok(SipMessage::Request(r)) => self.on_request(r, i.flow),
            Ok(SipMessage::Response(r)) => self.on_response(r, i.flow),
            Err(rej) => {
                if let Some(h) = rej.request_headers {
                    if h.get(&HeaderName::Via).is_some() {
                        let resp = Response::for_headers(&h, rej.status).with_reason(rej.reason);
                        let flow = response_flow(&h, &i.flow);
                        self.send_paced(&flow, resp.encode(), false, now_std());
                    }
                }
                tracing::debug!(remote = %i.flow.remote, reason = rej.reason, "message refused");
            }
        }
    }

    /// Refuses a request that could not be matched to a transaction (malformed), once and
    /// within the source's budget.
    fn stateless_reply(&mut self, req: &Request, flow: &Flow, status: u16, reason: Option<&str>) {
        if req.method == Method::Ack {
            return;
        }
        let mut resp = Response::for_request(req, status);
        if let Some(r) = reason {
            resp = resp.with_reason(r);
        }
        resp.set_to_tag(&new_tag());
        let rflow = response_flow(&req.headers, flow);
        self.send_paced(&rflow, resp.encode(), false, now_std());
    }

    fn on_request(&mut self, mut req: Request, flow: Flow) {
        if let Err(f) = req.check() {
            tracing::debug!(remote = %flow.remote, status = f.status, reason = %f.reason, "request refused");
            self.stateless_reply(&req, &flow, f.status, Some(&f.reason));
            return;
        }
        stamp_via(&mut req, &flow);
        let Some(key) = server_key(&req) else {
            self.stateless_reply(&req, &flow, 400, Some("Bad Via"));
            return;
        };
        let now = now_std();
        match req.method {
            Method::Ack => {
                if self.answered.get(&key, now).is_some() {
                    // The ACK of an INVITE refused statelessly.
                    return;
                }
                self.stop_2xx_retransmission(&req);
                let invite_key = with_method(&key, Method::Invite);
                if let Some(&id) = self.server_keys.get(&invite_key) {
                    if let Some(e) = self.txs.get_mut(&id) {
                        if let Machine::ServerInvite(m) = &mut e.machine {
                            if m.state() == ServerInviteState::Accepted {
                                // The ACK of a 2xx: the TU's business.
                                let _ = self.events.send(EndpointEvent::Ack { request: req, flow });
                                return;
                            }
                            m.handle_ack(now);
                        }
                    }
                    self.drive(id);
                    return;
                }
                let _ = self.events.send(EndpointEvent::Ack { request: req, flow });
            }
            Method::Cancel => {
                if self.replay_answered(&key, now) {
                    return;
                }
                if let Some(&id) = self.server_keys.get(&key) {
                    // A retransmitted CANCEL.
                    if let Some(e) = self.txs.get_mut(&id) {
                        if let Machine::ServerNonInvite(m) = &mut e.machine {
                            m.handle_request_retransmit(now);
                        }
                    }
                    self.drive(id);
                    return;
                }
                let invite_key = with_method(&key, Method::Invite);
                let status = match self
                    .server_keys
                    .get(&invite_key)
                    .and_then(|id| self.txs.get(id))
                {
                    Some(TxEntry {
                        machine: Machine::ServerInvite(m),
                        ..
                    }) if m.state() == ServerInviteState::Proceeding => 200,
                    Some(_) => 200,
                    None => 481,
                };
                let mut resp = Response::for_request(&req, status);
                resp.set_to_tag(&new_tag());
                if status == 481 {
                    // Nothing to cancel: a refusal like any other, sent once.
                    self.reply_stateless(key, flow, resp, RefusalBudget::PerSource, true);
                    return;
                }
                let machine = Machine::ServerNonInvite(ServerNonInviteTransaction::new(
                    flow.transport.is_reliable(),
                    self.timers,
                    now,
                ));
                let rflow = response_flow(&req.headers, &flow);
                let id = self.insert(TxEntry {
                    machine,
                    flow: rflow,
                    request: None,
                    client_key: None,
                    server_key: Some(key),
                    events: None,
                    cancel_pending: None,
                    trying: None,
                });
                if let Some(TxEntry {
                    machine: Machine::ServerNonInvite(m),
                    ..
                }) = self.txs.get_mut(&id)
                {
                    let _ = m.send_response(status, resp.encode(), now);
                }
                self.drive(id);
                if status == 200 {
                    let _ = self.events.send(EndpointEvent::Cancelled {
                        key: invite_key,
                        cancel: req,
                    });
                }
            }
            _ => {
                if self.replay_answered(&key, now) {
                    return;
                }
                if let Some(&id) = self.server_keys.get(&key) {
                    if let Some(e) = self.txs.get_mut(&id) {
                        match &mut e.machine {
                            Machine::ServerInvite(m) => m.handle_request_retransmit(now),
                            Machine::ServerNonInvite(m) => m.handle_request_retransmit(now),
                            _ => {}
                        }
                    }
                    self.drive(id);
                    return;
                }
                let rflow = response_flow(&req.headers, &flow);
                let reliable = flow.transport.is_reliable();
                let mut trying = None;
                let machine = if req.method == Method::Invite {
                    // The 100 waits for the TU a moment: a refusal goes out alone.
                    let due = now + self.timers.trying();
                    trying = Some(due);
                    Machine::ServerInvite(ServerInviteTransaction::new(reliable, self.timers, now))
                } else {
                    Machine::ServerNonInvite(ServerNonInviteTransaction::new(
                        reliable,
                        self.timers,
                        now,
                    ))
                };
                let id = self.insert(TxEntry {
                    machine,
                    flow: rflow,
                    request: (req.method == Method::Invite).then(|| Box::new(req.clone())),
                    client_key: None,
                    server_key: Some(key.clone()),
                    events: None,
                    cancel_pending: None,
                    trying,
                });
                if let Some(due) = trying {
                    self.heap.push(Reverse((due, id)));
                }
                self.drive(id);
                let inc = IncomingRequest {
                    request: req,
                    flow,
                    key,
                };
                let inc = match self.hook.0.get().cloned() {
                    Some(hook) => match self.run_hook(&hook, inc) {
                        Ok(Some(inc)) => inc,
                        Ok(None) => return,
                        Err(()) => {
                            tracing::error!("handling a request panicked; it goes unanswered");
                            return;
                        }
                    },
                    None => inc,
                };
                let _ = self.events.send(EndpointEvent::Request(inc));
            }
        }
    }

    /// Runs the request hook on this task. What it answers through its [`Endpoint`] handle
    /// is applied here when it returns, in the order given (`IN_HOOK`), not sent through
    /// the command channel. A panic in the hook ends that request only, not the endpoint
    /// (`Err`); what it gave before panicking is still applied.
    fn run_hook(
        &mut self,
        hook: &RequestHook,
        inc: IncomingRequest,
    ) -> Result<Option<IncomingRequest>, ()> {
        let owner = HookSlot::owner(&self.hook);
        let queue = std::mem::take(&mut self.hook_queue);
        let outer = IN_HOOK.with(|slot| slot.borrow_mut().replace((owner, queue)));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(inc)));
        let mut queue = IN_HOOK
            .with(|slot| std::mem::replace(&mut *slot.borrow_mut(), outer))
            .map(|(_, q)| q)
            .unwrap_or_default();
        for c in queue.drain(..) {
            self.on_command(c);
        }
        self.hook_queue = queue;
        outcome.map_err(|_| ())
    }

    fn on_response(&mut self, resp: Response, flow: Flow) {
        // §8.1.3.3 / RFC 4475 §3.3.10: more than one Via in a response to us -> discard.
        let Ok(vias) = resp.vias() else { return };
        if vias.len() != 1 {
            tracing::debug!(remote = %flow.remote, "response with several Via discarded");
            return;
        }
        let Ok(cseq) = resp.cseq() else { return };
        let Some(branch) = vias[0].branch() else {
            return;
        };
        let key = ClientKey {
            branch: Bytes::copy_from_slice(branch),
            method: cseq.method.clone(),
        };
        let Some(&id) = self.client_keys.get(&key) else {
            if cseq.method == Method::Invite && resp.is_success() {
                let _ = self.events.send(EndpointEvent::StrayResponse {
                    response: resp,
                    flow,
                });
            }
            return;
        };
        let now = now_std();
        let Some(e) = self.txs.get_mut(&id) else {
            return;
        };
        let status = resp.status;
        let mut cancel_now = None;
        match &mut e.machine {
            Machine::ClientInvite(m) => {
                let Some(req) = &e.request else {
                    return;
                };
                let _ = m.handle_response(status, now, || build_ack(req, &resp).encode());
                if status < 200 {
                    if let Some(extra) = e.cancel_pending.take() {
                        cancel_now = Some((build_cancel(req, &extra), e.flow));
                    }
                } else {
                    e.cancel_pending = None;
                }
            }
            Machine::ClientNonInvite(m) => {
                let _ = m.handle_response(status, now);
            }
            _ => {}
        }
        self.drive_with(id, Some(resp));
        if let Some((cancel, flow)) = cancel_now {
            let invite = key.clone();
            self.start_cancel(cancel, flow, &invite);
        }
    }
}

fn with_method(key: &ServerKey, method: Method) -> ServerKey {
    match key {
        ServerKey::Rfc3261 {
            branch,
            sent_by,
            call_id,
            ..
        } => ServerKey::Rfc3261 {
            branch: branch.clone(),
            sent_by: sent_by.clone(),
            method,
            call_id: call_id.clone(),
        },
        ServerKey::Rfc2543(k) => {
            // The 2543 key embeds the CSeq method last; swap it.
            let base = k.rsplit_once('|').map(|(b, _)| b).unwrap_or(k);
            ServerKey::Rfc2543(format!("{base}|{method}"))
        }
    }
}

/// §17.2.3 matching key of a request.
fn server_key(req: &Request) -> Option<ServerKey> {
    // Read through the borrowed view: this runs on every request taken in. The branch is
    // kept as a slice of the message's buffer, as the Call-ID is: clones of the key (the
    // transaction tables, the answered cache, the transaction user) share it.
    let top = req.headers.get(&HeaderName::Via)?;
    let via = crate::message::ViaView::parse_first(top.as_bytes()).ok()?;
    let method = match &req.method {
        Method::Ack => Method::Invite,
        m => m.clone(),
    };
    match via.branch() {
        Some(b) if b.starts_with(b"z9hG4bK") && b.len() > 7 => {
            let sent_by = Bytes::from(format!("{}:{}", via.host, via.port.unwrap_or(5060)));
            Some(ServerKey::Rfc3261 {
                branch: shared_slice(top.base(), b),
                sent_by,
                method,
                call_id: req.call_id().ok()?.to_bytes(),
            })
        }
        _ => {
            // RFC 2543: Request-URI, To tag, From tag, Call-ID, CSeq number, top Via, method.
            // (The To tag is left out: the ACK of a non-2xx carries the tag the INVITE lacked.)
            let cseq = req.cseq().ok()?;
            let from_tag = req
                .view_from()
                .ok()?
                .tag()
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            Some(ServerKey::Rfc2543(format!(
                "{}|{}|{}|{}|{}|{}",
                req.uri(),
                String::from_utf8_lossy(&from_tag),
                req.call_id_str(),
                cseq.seq,
                req.top_via().ok()?,
                method
            )))
        }
    }
}

/// Drains `next` into its first item and the rest: the usual lone item allocates nothing.
fn first_and_rest<T>(mut next: impl FnMut() -> Option<T>) -> (Option<T>, Vec<T>) {
    let first = next();
    let mut rest = Vec::new();
    if first.is_some() {
        while let Some(x) = next() {
            rest.push(x);
        }
    }
    (first, rest)
}

/// `part`, a slice of `base`, as a `Bytes` that shares `base`'s buffer; a copy when it is not
/// within it.
fn shared_slice(base: &Bytes, part: &[u8]) -> Bytes {
    let (b, p) = (base.as_ptr() as usize, part.as_ptr() as usize);
    if p >= b && p + part.len() <= b + base.len() {
        base.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Adds `received` and `rport` to the top Via (RFC 3261 §18.2.1, RFC 3581 §4).
fn stamp_via(req: &mut Request, flow: &Flow) {
    match stamped_plain_via(&req.headers, flow) {
        Some(value) => req.headers.replace_first(HeaderName::Via, value),
        None => stamp_parsed_via(req, flow),
    }
}

/// [`stamp_via`] the general way: the top Via parsed, given its parameters, written out.
fn stamp_parsed_via(req: &mut Request, flow: &Flow) {
    let Ok(mut via) = req.top_via() else { return };
    let src_ip = flow.remote.ip();
    let wants_rport = via.rport().is_some();
    let host_matches = via.host.ip() == Some(src_ip);
    if host_matches && !wants_rport {
        return;
    }
    if !host_matches || wants_rport {
        let mut received = String::with_capacity(15);
        crate::message::push_ip(&mut received, src_ip);
        via.params.set("received", Some(&received));
    }
    if wants_rport {
        via.params
            .set("rport", Some(&flow.remote.port().to_string()));
    }
    replace_top_via(&mut req.headers, &via);
}

/// The top Via with `received` and `rport` filled in, written straight from its text in the
/// usual case: a field line holding one value that ends with a bare `;rport` (RFC 3581) and
/// has no `received` yet, as most UAs send it. `None`: anything else, for the general way
/// (parse, set, write out).
fn stamped_plain_via(headers: &crate::message::Headers, flow: &Flow) -> Option<Vec<u8>> {
    let v = headers.get(&HeaderName::Via)?;
    let raw = v.trim_ascii();
    let head = raw.len().checked_sub(b";rport".len())?;
    if !raw[head..].eq_ignore_ascii_case(b";rport")
        || memchr::memchr3(b',', b'"', b'(', raw).is_some()
    {
        return None;
    }
    // No other `rport` and no `received` among the parameters before it.
    let named = |at: usize, name: &[u8]| {
        raw.get(at + 1..at + 1 + name.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    };
    if memchr::memchr_iter(b';', &raw[..head])
        .any(|at| named(at, b"received") || named(at, b"rport"))
    {
        return None;
    }
    use std::fmt::Write as _;
    let mut more = String::with_capacity(40);
    let _ = write!(more, "={};received=", flow.remote.port());
    crate::message::push_ip(&mut more, flow.remote.ip());
    Some([raw, more.as_bytes()].concat())
}

fn replace_top_via(headers: &mut crate::message::Headers, via: &Via) {
    let Some(v) = headers.get(&HeaderName::Via) else {
        return;
    };
    // The first Via field line usually holds one value: it is replaced alone; the other
    // values of a line that holds several are written back after it.
    let value = if memchr::memchr(b',', &v).is_none() {
        via.to_string()
    } else {
        let mut rest = Vec::new();
        let _ = Via::parse_list(v.base(), &v, &mut rest);
        let mut parts = vec![via.to_string()];
        parts.extend(rest.iter().skip(1).map(|v| v.to_string()));
        parts.join(", ")
    };
    headers.replace_first(HeaderName::Via, value);
}

/// Where responses to a request go (RFC 3261 §18.2.2, RFC 3581 §4).
fn response_flow(headers: &crate::message::Headers, flow: &Flow) -> Flow {
    if flow.transport.is_reliable() {
        return *flow;
    }
    let v = headers.get(&HeaderName::Via);
    // The top value, read in place (nothing kept).
    let via = v
        .as_deref()
        .and_then(|v| crate::message::typed::ViaView::parse_first(v).ok());
    let remote = match via {
        Some(v) if v.rport().is_some() => flow.remote,
        Some(v) => SocketAddr::new(flow.remote.ip(), v.port.unwrap_or(5060)),
        None => flow.remote,
    };
    Flow { remote, ..*flow }
}

/// A request of the INVITE's transaction sent hop by hop — the ACK for a non-2xx final
/// (§17.1.1.3) and the CANCEL (§9.1) share it: same Request-URI, only the top Via, the same
/// From, Call-ID, CSeq number and Route; `to` as given.
fn same_transaction_request(invite: &Request, method: Method, to: Option<Bytes>) -> Request {
    let mut r = Request::new(method.clone(), invite.uri().clone());
    if let Some(v) = invite.headers.get(&HeaderName::Via) {
        let top = Via::parse_first(v.base(), &v)
            .map(|x| x.to_string())
            .unwrap_or_else(|_| String::from_utf8_lossy(&v).into_owned());
        r.headers.add(HeaderName::Via, top);
    }
    r.headers.add(HeaderName::MaxForwards, "70");
    if let Some(v) = invite.headers.get(&HeaderName::From) {
        r.headers.add(HeaderName::From, v);
    }
    if let Some(v) = to {
        r.headers.add(HeaderName::To, v);
    }
    if let Some(v) = invite.headers.get(&HeaderName::CallId) {
        r.headers.add(HeaderName::CallId, v);
    }
    if let Ok(c) = invite.cseq() {
        r.headers
            .add(HeaderName::CSeq, format!("{} {method}", c.seq));
    }
    for route in invite.headers.get_all(&HeaderName::Route) {
        r.headers.add(HeaderName::Route, route);
    }
    r
}

/// The ACK for a non-2xx final response (§17.1.1.3): To (with its tag) from the response.
pub fn build_ack(invite: &Request, resp: &Response) -> Request {
    same_transaction_request(
        invite,
        Method::Ack,
        resp.headers.get(&HeaderName::To).map(|v| v.to_bytes()),
    )
}

/// A CANCEL for an INVITE (§9.1), with `extra` headers (e.g. Reason).
pub fn build_cancel(invite: &Request, extra: &[(HeaderName, Bytes)]) -> Request {
    let mut c = same_transaction_request(
        invite,
        Method::Cancel,
        invite.headers.get(&HeaderName::To).map(|v| v.to_bytes()),
    );
    for (n, v) in extra {
        c.headers.add(n.clone(), v.clone());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse_message, SipMessage};

    fn request_with_via(via: &str) -> Request {
        let text = format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@example.test>;tag=1\r\n\
             To: <sip:a@example.test>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match parse_message(Bytes::from(text)) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    /// The Via written straight from its text says what the general way says: the same
    /// transport, host, port and parameters, `received` and `rport` filled in.
    #[test]
    fn a_plain_via_is_stamped_as_the_general_way_stamps_it() {
        let flow = Flow {
            transport: Transport::Udp,
            local: "127.0.0.1:5060".parse().unwrap(),
            remote: "192.0.2.7:40123".parse().unwrap(),
            conn: None,
        };
        for via in [
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1-1-0;rport",
            "SIP/2.0/UDP 192.0.2.7:40123;branch=z9hG4bKx;RPORT",
            "SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKv6;rport  ",
            "SIP/2.0/UDP host.example.test;rport;branch=z9hG4bKmid",
            "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKr;received=10.9.9.9;rport",
            "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa, SIP/2.0/UDP 10.0.0.6;branch=z9hG4bKb;rport",
            "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKn",
        ] {
            let req = request_with_via(via);
            let mut general = req.clone();
            stamp_parsed_via(&mut general, &flow);
            let mut stamped = req.clone();
            stamp_via(&mut stamped, &flow);
            let (a, b) = (stamped.top_via().unwrap(), general.top_via().unwrap());
            assert_eq!(a.to_string().len(), b.to_string().len(), "{via}");
            assert_eq!(a.host, b.host, "{via}");
            assert_eq!(a.port, b.port, "{via}");
            assert_eq!(a.branch(), b.branch(), "{via}");
            assert_eq!(a.received(), b.received(), "{via}");
            assert_eq!(a.rport(), b.rport(), "{via}");
            let plain = stamped_plain_via(&req.headers, &flow).is_some();
            assert_eq!(
                plain,
                via.trim_end().to_ascii_lowercase().ends_with(";rport")
                    && !via.contains(',')
                    && !via.contains("received"),
                "{via}"
            );
        }
    }
}
