//! The SIP dispatcher: pre-checks every request, then hands it to its owner.
//!
//! A request that opens nothing — a refusal of any kind (pre-check failures, 404, 405, 481,
//! 501, the registrar's 401/403/423 ...), and the answer to OPTIONS — is answered
//! statelessly ([`Endpoint::reply_stateless`], RFC 3261 §8.2.7): once, with no `100 Trying`
//! before it, no retransmissions, no transaction kept, and no header the request did not
//! need. Such answers to strangers count against the per-source refusal budget; registered
//! phones and the configured trunks are exempt ([`SipServer::budget_for`]). Requests that
//! start or belong to a call go to the call engine and keep their server transaction.
//!
//! A REGISTER is taken on the endpoint's own task ([`Endpoint::set_request_hook`]): the
//! pre-checks, then the registrar, answered there when that waits for nothing.
//!
//! The same known peers are handed to the transports, which let them past the per-address
//! TCP connection cap and the per-source request budget; and a REGISTER accepted over TCP
//! holds its connection open past `sip.tcp_idle_secs` for as long as a binding lives on it.

use crate::calls::engine::Engine;
use crate::registrar::{unix_now, Decision, Registrar};
use sip_core::endpoint::{Endpoint, EndpointEvent, IncomingRequest, RefusalBudget};
use sip_core::message::{HeaderAccess, HeaderName, Method, Response, Uri};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use crate::capabilities::{ACCEPT, ALLOW, SUPPORTED};

/// How long the trunks' addresses are trusted before the store is read again.
const TRUNK_REFRESH: Duration = Duration::from_secs(30);

/// The SIP side of dialbridge.
pub struct SipServer {
    endpoint: Endpoint,
    engine: Option<Engine>,
    peers: Arc<KnownPeers>,
    registrations: Arc<Registrations>,
}

/// What answers REGISTERs. It runs on the endpoint's own task ([`Endpoint::set_request_hook`]):
/// a REGISTER that waits for nothing (a challenge, a refresh of bindings the registrar
/// keeps) is answered there, with no hand-over to the dispatcher's task and back.
struct Registrations {
    endpoint: Endpoint,
    registrar: Arc<Registrar>,
    peers: Arc<KnownPeers>,
}

/// Who counts as a known peer: a phone registered from the address, or a configured trunk
/// (by IP literal, or an address a trunk named by DNS resolved to).
struct KnownPeers {
    registrar: Arc<Registrar>,
    store: Option<Arc<dyn store::Store>>,
    trunks: Option<Arc<crate::trunks::Trunks>>,
    /// The trunks' addresses (IP literals) as last read from the store.
    trunk_ips: Mutex<TrunkIps>,
}

/// The trunks' IP addresses, read from the store in the background: the transports ask on
/// their own path, which never waits on the store.
#[derive(Default)]
struct TrunkIps {
    read_at: Option<Instant>,
    reading: bool,
    ips: Vec<IpAddr>,
    /// The trunks' addresses that name a port.
    addrs: Vec<std::net::SocketAddr>,
}

impl KnownPeers {
    fn budget_for(self: &Arc<Self>, source: IpAddr) -> RefusalBudget {
        if self.is_known(source) {
            RefusalBudget::Exempt
        } else {
            RefusalBudget::PerSource
        }
    }

    fn is_known(self: &Arc<Self>, source: IpAddr) -> bool {
        let now = unix_now();
        self.registrar.is_registered_source(source, now)
            || self.is_trunk(source)
            || self.trunks.as_ref().is_some_and(|t| t.is_target_ip(source))
    }

    /// Whether an INVITE from `source` that shares a trunk's IP comes from a registered phone
    /// instead: it carries device credentials, or it comes from a registered source on a
    /// port that no trunk at that IP names (phones and a trunk behind one address, as on
    /// loopback).
    fn phone_at_trunk_ip(
        self: &Arc<Self>,
        source: std::net::SocketAddr,
        has_credentials: bool,
    ) -> bool {
        if has_credentials {
            return true;
        }
        let now = unix_now();
        if !self.registrar.is_registered_source(source.ip(), now) {
            return false;
        }
        let Ok(cache) = self.trunk_ips.lock() else {
            return false;
        };
        let ports: Vec<u16> = cache
            .addrs
            .iter()
            .filter(|a| a.ip() == source.ip())
            .map(|a| a.port())
            .collect();
        !ports.is_empty() && !ports.contains(&source.port())
    }

    /// Whether `source` is a trunk's address as last read; starts a new read when that
    /// is older than [`TRUNK_REFRESH`].
    fn is_trunk(self: &Arc<Self>, source: IpAddr) -> bool {
        if self.store.is_none() {
            return false;
        }
        let Ok(mut cache) = self.trunk_ips.lock() else {
            return false;
        };
        let fresh = cache.read_at.is_some_and(|t| t.elapsed() < TRUNK_REFRESH);
        if !fresh && !cache.reading {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                cache.reading = true;
                rt.spawn(Arc::clone(self).read_trunks());
            }
        }
        cache.ips.contains(&source)
    }

    /// Reads the trunks' addresses from the store into the cache.
    async fn read_trunks(self: Arc<Self>) {
        let Some(store) = &self.store else {
            return;
        };
        let read = store.list_trunks().await;
        let Ok(mut cache) = self.trunk_ips.lock() else {
            return;
        };
        match read {
            Ok(trunks) => *cache = TrunkIps::of(&trunks),
            Err(e) => {
                tracing::warn!(error = %e, "trunks not readable");
                cache.read_at = Some(Instant::now());
                cache.reading = false;
            }
        }
    }
}

impl TrunkIps {
    /// The addresses of `trunks`, read now.
    fn of(trunks: &[store::Trunk]) -> TrunkIps {
        TrunkIps {
            read_at: Some(Instant::now()),
            reading: false,
            ips: trunks.iter().filter_map(|t| trunk_ip(&t.address)).collect(),
            addrs: trunks
                .iter()
                .filter_map(|t| t.address.parse::<std::net::SocketAddr>().ok())
                .collect(),
        }
    }
}

impl SipServer {
    /// The server; it also tells the transports who the known peers are (exempt from the
    /// per-source connection cap and the request budget).
    pub fn new(endpoint: Endpoint, registrar: Arc<Registrar>, engine: Option<Engine>) -> SipServer {
        let server = SipServer::with_trunk_ips(endpoint, registrar, engine, TrunkIps::default());
        // The first read of the trunks' addresses starts now rather than at the first
        // request.
        server.peers.is_trunk(IpAddr::from([0, 0, 0, 0]));
        server
    }

    /// [`SipServer::new`] with the trunks as the caller read them before the endpoint
    /// started: a carrier is exempt from the per-source budgets from its first request.
    pub fn with_trunks(
        endpoint: Endpoint,
        registrar: Arc<Registrar>,
        engine: Option<Engine>,
        trunks: &[store::Trunk],
    ) -> SipServer {
        SipServer::with_trunk_ips(endpoint, registrar, engine, TrunkIps::of(trunks))
    }

    fn with_trunk_ips(
        endpoint: Endpoint,
        registrar: Arc<Registrar>,
        engine: Option<Engine>,
        trunk_ips: TrunkIps,
    ) -> SipServer {
        let peers = Arc::new(KnownPeers {
            registrar: Arc::clone(&registrar),
            store: engine.as_ref().map(|e| Arc::clone(&e.inner.store)),
            trunks: engine.as_ref().map(|e| e.trunks()),
            trunk_ips: Mutex::new(trunk_ips),
        });
        let p = Arc::clone(&peers);
        endpoint
            .transports()
            .set_known_peers(Arc::new(move |ip| p.is_known(ip)));
        let registrations = Arc::new(Registrations {
            endpoint: endpoint.clone(),
            registrar,
            peers: Arc::clone(&peers),
        });
        let r = Arc::clone(&registrations);
        endpoint.set_request_hook(Arc::new(move |inc: IncomingRequest| {
            if inc.request.method == Method::Register {
                r.on_register(inc);
                None
            } else {
                Some(inc)
            }
        }));
        SipServer {
            endpoint,
            engine,
            peers,
            registrations,
        }
    }

    /// The refusal budget a stateless answer to this source counts against: none for a
    /// registered phone or a configured trunk, the per-source one for anybody else.
    pub fn budget_for(&self, source: IpAddr) -> RefusalBudget {
        self.peers.budget_for(source)
    }

    /// Serves endpoint events until the endpoint stops.
    pub async fn run(self, mut events: mpsc::UnboundedReceiver<EndpointEvent>) {
        while let Some(ev) = events.recv().await {
            match ev {
                EndpointEvent::Request(req) => self.on_request(req),
                EndpointEvent::Ack { request, flow } => {
                    if let Some(e) = &self.engine {
                        e.route_ack(&request, &flow);
                    }
                }
                EndpointEvent::Cancelled { cancel, .. } => {
                    // The call started by that INVITE answers it 487 (when no final
                    // response went out before).
                    if let Some(e) = &self.engine {
                        e.route_cancel(&cancel);
                    }
                }
                EndpointEvent::StrayResponse { response, flow } => {
                    if let Some(e) = &self.engine {
                        e.route_stray(response, flow);
                    }
                }
                EndpointEvent::AckTimeout { .. } => {}
            }
        }
    }

    /// Answers a request that opens nothing, statelessly (see the module documentation).
    fn reply(&self, inc: &IncomingRequest, status: u16, extra: &[(HeaderName, String)]) {
        reply(&self.endpoint, &self.peers, inc, status, extra);
    }

    fn on_request(&self, inc: IncomingRequest) {
        if let Some((status, extra)) = precheck(&inc) {
            self.reply(&inc, status, &extra);
            return;
        }
        let req = &inc.request;
        let in_dialog = req.to().ok().is_some_and(|t| t.tag().is_some());
        match &req.method {
            Method::Options => self.reply(
                &inc,
                200,
                &[
                    (HeaderName::Allow, ALLOW.into()),
                    (HeaderName::Accept, ACCEPT.into()),
                    (HeaderName::Supported, SUPPORTED.join(", ")),
                    (HeaderName::AcceptEncoding, "identity".into()),
                    (HeaderName::AcceptLanguage, "en".into()),
                ],
            ),
            Method::Invite
            | Method::Bye
            | Method::Update
            | Method::Info
            | Method::Prack
            | Method::Refer
            | Method::Notify
                if in_dialog =>
            {
                let routed = self.engine.as_ref().is_some_and(|e| e.route_request(&inc));
                if !routed {
                    self.reply(&inc, 481, &[]);
                }
            }
            Method::Bye
            | Method::Update
            | Method::Info
            | Method::Prack
            | Method::Refer
            | Method::Notify => {
                self.reply(&inc, 481, &[]);
            }
            Method::Invite => {
                // An INVITE that opens a call is an inbound call from a configured trunk (to
                // one of an account's numbers), or a registered phone placing a call (digest
                // challenged); anyone else gets 407 and then 403, and never a call.
                let src = inc.flow.remote.ip();
                let trunk = (self.peers.is_trunk(src)
                    || self
                        .peers
                        .trunks
                        .as_ref()
                        .is_some_and(|t| t.is_target_ip(src)))
                    && !self.peers.phone_at_trunk_ip(
                        inc.flow.remote,
                        req.headers.get(&HeaderName::ProxyAuthorization).is_some(),
                    );
                match &self.engine {
                    Some(e) if trunk => e.on_invite(inc, RefusalBudget::Exempt),
                    // Anyone else may only be a registered device placing a call: digest
                    // challenge (407), then 403 and no call without valid credentials.
                    Some(e) => {
                        let budget = self.budget_for(src);
                        e.on_phone_invite(inc, budget);
                    }
                    None => self.reply(&inc, 404, &[]),
                }
            }
            // Taken on the endpoint's task (`Registrations`) unless the hook was not
            // installed.
            Method::Register => self.registrations.on_register(inc),
            Method::Extension(_) => self.reply(&inc, 501, &[(HeaderName::Allow, ALLOW.into())]),
            _ => self.reply(&inc, 405, &[(HeaderName::Allow, ALLOW.into())]),
        }
    }
}

/// Answers a request that opens nothing, statelessly (see the module documentation).
fn reply(
    endpoint: &Endpoint,
    peers: &Arc<KnownPeers>,
    inc: &IncomingRequest,
    status: u16,
    extra: &[(HeaderName, String)],
) {
    let mut resp = Response::for_request(&inc.request, status);
    resp.set_to_tag(&sip_core::endpoint::new_tag());
    for (n, v) in extra {
        resp.headers.add(n.clone(), v.clone());
    }
    endpoint.reply_stateless(inc, resp, peers.budget_for(inc.flow.remote.ip()));
}

impl Registrations {
    /// A REGISTER: the pre-checks, then the registrar; answered here when that waits for
    /// nothing, else in a task of its own.
    fn on_register(&self, inc: IncomingRequest) {
        if let Some((status, extra)) = precheck(&inc) {
            reply(&self.endpoint, &self.peers, &inc, status, &extra);
            return;
        }
        let budget = self.peers.budget_for(inc.flow.remote.ip());
        let now = unix_now();
        let credentialed = inc
            .request
            .headers
            .get(&HeaderName::Authorization)
            .is_some();
        if !credentialed {
            // Half of all REGISTERs: answered here, without the registration's future (about
            // 2 KB, boxed by `run_here_or_spawn`) for a decision that never waits. A panic
            // ends this request only, as there.
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let decision =
                    self.registrar
                        .uncredentialed(&inc.request, inc.flow.remote.ip(), now);
                send_decision(&self.endpoint, &inc, decision, budget, now, credentialed);
            }));
            if answered.is_err() {
                tracing::error!("handling a request panicked; it goes unanswered");
            }
            return;
        }
        let registrar = Arc::clone(&self.registrar);
        let endpoint = self.endpoint.clone();
        run_here_or_spawn(async move {
            let decision = registrar.handle(&inc.request, &inc.flow, now).await;
            if !decision.delay.is_zero() {
                tokio::time::sleep(decision.delay).await;
            }
            send_decision(&endpoint, &inc, decision, budget, now, credentialed);
        });
    }
}

/// Sends the registrar's answer to `inc` (which carried `Authorization` when
/// `credentialed`) the way its kind asks for.
fn send_decision(
    endpoint: &Endpoint,
    inc: &IncomingRequest,
    decision: Decision,
    budget: RefusalBudget,
    now: u64,
    credentialed: bool,
) {
    if decision.response.status == 401 && !credentialed {
        // The first challenge of a registration is not kept for retransmissions: one
        // would be challenged again, with the same To tag.
        endpoint.challenge_stateless(inc, decision.response, budget);
    } else if decision.response.status >= 300 {
        // A challenge or a refusal binds nothing.
        endpoint.reply_stateless(inc, decision.response, budget);
    } else {
        endpoint.respond(&inc.key, decision.response);
        // A registration's connection stays open while a binding lives on it (past
        // sip.tcp_idle_secs).
        if let (Some(until), Some(conn)) = (decision.flow_until, inc.flow.conn) {
            let left = until.saturating_sub(now);
            endpoint
                .transports()
                .hold_connection(conn, std::time::Duration::from_secs(left));
        }
    }
}

/// Runs `task` on this thread until it first waits, and hands it to the runtime only then.
/// Most REGISTERs (a challenge, a refresh of a device whose bindings the registrar keeps)
/// wait for nothing: they are answered here (on the endpoint's task, through its request
/// hook), without a task of their own and the wake-up of another worker thread that
/// spawning one costs; one that waits (a store call, the delay after a failed attempt) goes
/// on as a task. A future polled again with another waker registers that one (the `Future`
/// contract), so the task is woken as usual. A panic in that first poll ends that request
/// only, as it would in a task of its own, not the endpoint.
fn run_here_or_spawn(task: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::future::Future::poll(task.as_mut(), &mut cx)
    }));
    match polled {
        Ok(std::task::Poll::Pending) => {
            tokio::spawn(task);
        }
        Ok(std::task::Poll::Ready(())) => {}
        Err(_) => tracing::error!("handling a request panicked; it goes unanswered"),
    }
}

/// The IP of a trunk's `address` when it is written as one (`192.0.2.1`, `192.0.2.1:5060`,
/// `[2001:db8::1]:5060`).
fn trunk_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

/// RFC 3261 §8.2.1-§8.2.3 checks, in the RFC's order. Returns the refusal, if any.
pub fn precheck(inc: &IncomingRequest) -> Option<(u16, Vec<(HeaderName, String)>)> {
    let req = &inc.request;
    // §8.2.1: method inspection comes first for unknown methods.
    if let Method::Extension(_) = req.method {
        return Some((501, vec![(HeaderName::Allow, ALLOW.into())]));
    }
    // §8.2.2.1: Request-URI scheme.
    match req.uri() {
        Uri::Sip(_) | Uri::Tel(_) => {}
        Uri::Other { .. } => return Some((416, vec![])),
    }
    // Max-Forwards: 0 means no further hop; OPTIONS may still be answered (RFC 3261 §16.3).
    if req.method != Method::Options && matches!(req.max_forwards(), Ok(Some(0))) {
        return Some((483, vec![]));
    }
    // §8.2.2.3: Require.
    if req.method != Method::Ack && req.method != Method::Cancel {
        let mut unsupported = Vec::new();
        for v in req.headers.get_all(&HeaderName::Require) {
            for opt in sip_core::message::typed::parse_token_list(&v).unwrap_or_default() {
                let opt = String::from_utf8_lossy(opt).into_owned();
                if !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(&opt)) {
                    unsupported.push(opt);
                }
            }
        }
        if !unsupported.is_empty() {
            return Some((420, vec![(HeaderName::Unsupported, unsupported.join(", "))]));
        }
    }
    // §8.2.3: body type. An INVITE/UPDATE/ACK body must be SDP.
    if !req.body.is_empty() && matches!(req.method, Method::Invite | Method::Update | Method::Ack) {
        let ct = req.content_type().unwrap_or_default();
        let base = ct.split(';').next().unwrap_or("").trim().to_string();
        if base != "application/sdp" {
            return Some((415, vec![(HeaderName::Accept, ACCEPT.into())]));
        }
    }
    // The answer will carry SDP; a peer that cannot accept SDP cannot take it.
    if req.method == Method::Invite {
        if let Some(accept) = req.header_str(&HeaderName::Accept) {
            let ok = accept.split(',').any(|a| {
                let a = a
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                a == "application/sdp" || a == "application/*" || a == "*/*"
            });
            if !ok && !accept.trim().is_empty() {
                return Some((415, vec![(HeaderName::Accept, ACCEPT.into())]));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::run_here_or_spawn;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn work_that_waits_for_nothing_is_done_before_the_call_returns() {
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        run_here_or_spawn(async move { d.store(true, Ordering::SeqCst) });
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn work_that_waits_goes_on_as_a_task_and_is_woken() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        run_here_or_spawn(async move {
            let v = rx.await.unwrap_or(0);
            let _ = done_tx.send(v + 1);
        });
        tx.send(41).unwrap();
        assert_eq!(done_rx.await.unwrap(), 42);
    }

    #[tokio::test]
    async fn a_panic_in_the_first_poll_ends_that_work_only() {
        run_here_or_spawn(async { panic!("boom") });
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        run_here_or_spawn(async move { d.store(true, Ordering::SeqCst) });
        assert!(done.load(Ordering::SeqCst));
    }
}
