//! api: dialbridge's REST API — the native call API, the JustCall- and Click-2-Call-style
//! shapes, admin CRUD, the call log with timelines, live events (SSE), signed and reliable
//! status callbacks, OpenAPI, health and Prometheus metrics (SPEC §5).
//!
//! # Use
//!
//! ```ignore
//! let api = Api::new(cfg, store, engine_handle, metrics);
//! engine.set_hooks(api.hooks());            // call events -> log, callbacks, SSE, metrics
//! let dispatcher = api.spawn_dispatcher();  // callback outbox -> receivers
//! api.serve(listener, shutdown).await?;
//! ```
//!
//! # Layout
//!
//! - [`state`]: [`ApiConfig`] and the state shared by handlers, hooks and dispatcher.
//! - [`http`]: auth extractors (Bearer, `key:secret`), JSON body / query extractors with the
//!   API's error answers, request ids and the access log (path only, never the query).
//! - [`error`]: [`ApiError`], the one mapping of errors to status codes and JSON bodies.
//! - [`contract`]: the layer that authenticates each request and checks it against the
//!   OpenAPI document before any handler (400 naming the field).
//! - [`document`]: the OpenAPI document as served (the handlers' annotations, completed with
//!   the security schemes and each operation's error answers and codes) and its Markdown view.
//! - [`schemas`]: the named value types of the document (TypeIDs, E.164, names, enums).
//! - [`place`]: the call path shared by all three API shapes (dial plan, guards, caller ID,
//!   limits, call record, hand-over to the engine).
//! - [`routes`]: handlers — `calls` (native), `lookup` (number lookup), `admin` (the
//!   account's dialing permissions and call limits, users, devices, numbers, trunks),
//!   `compat` (JustCall, Click-2-Call), `meta` (healthz, metrics, OpenAPI document),
//!   `client_sessions` and `publishable_keys` (the browser side), `console` (the web
//!   console's embedded assets).
//! - [`cors`]: cross-origin access for web pages to the routes a client secret may use.
//! - [`client`]: client secrets scoped to one user, and the [`client::Caller`] extractor of
//!   the routes they may use.
//! - [`hooks`]: the [`b2bua::calls::CallHooks`] implementation (queues each event) and the
//!   rules that turn an event into the call record's changes and a callback.
//! - [`journal`]: the call event write path: the queue, the writer thread that writes batches
//!   in one transaction each and retries them while the store refuses, the store's health,
//!   and the recovery of calls a crashed run left unfinished.
//! - [`callbacks`]: outbox dispatcher, signatures, backoff, callback URL guard.
//! - [`events`]: the SSE hub with its `Last-Event-ID` ring.
//! - [`limits`]: per-account call rate (token bucket) and concurrency.
//! - [`conn`]: the accept loop: connection caps overall and per source, header, body and
//!   idle time-outs.
//! - [`metrics`]: [`Metrics`], rendered in Prometheus text format.
//! - [`views`], [`time`]: JSON views of store rows; RFC 3339 UTC times.
//!
//! # What it does not do
//!
//! - No SIP: calls are started and hung up through [`b2bua::calls::CallControl`]; everything
//!   it knows about a call comes through the hooks.
//! - No TLS termination (put a proxy in front); accounts and API keys come from provisioning
//!   (an account may change only its own dialing permissions).
//! - Event ids of the live stream are kept in memory only: `Last-Event-ID` resume works within
//!   one process and the last 10 000 events.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod callbacks;
pub mod client;
pub mod conn;
pub mod contract;
pub mod cors;
pub mod document;
pub mod error;
pub mod events;
pub mod forward;
pub mod hooks;
pub mod http;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod place;
pub mod routes;
pub mod schemas;
pub mod state;
pub mod time;
pub mod views;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use b2bua::calls::{CallControl, CallHooks};
use store::Store;
use tokio::task::JoinHandle;

pub use callbacks::{CallbackPolicy, SIGNATURE_HEADER};
pub use error::ApiError;
pub use limits::AccountLimits;
pub use metrics::Metrics;
pub use routes::meta::ApiDoc;
pub use state::ApiConfig;

/// The journal's writer thread (see [`Api::start_journal`]).
#[derive(Debug)]
pub struct JournalWriter {
    journal: Arc<journal::Journal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JournalWriter {
    /// Writes what is queued (trying for at most 5 s if the store refuses) and stops.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.journal.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

use state::{Shared, BODY_LIMIT};

/// Ends the live calls of another node whose lease lapsed (see [`Api::takeover`]).
#[derive(Clone)]
pub struct Takeover(Arc<Shared>);

impl Takeover {
    /// Ends the node's live calls: `failed`, with a reason that names the node, and their
    /// final callbacks (delivered by this node's dispatcher). Returns how many.
    pub async fn end_calls_of(&self, node_id: &str) -> Result<usize, store::StoreError> {
        journal::end_calls_of_lost_node(&self.0, node_id).await
    }
}

/// The REST API of one dialbridge node.
pub struct Api {
    shared: Arc<Shared>,
    conn_limits: Arc<sip_core::limits::ConnectionLimits>,
    http_stats: Arc<conn::HttpStats>,
}

impl Api {
    /// Builds the API on the store, the call engine's handle and the process's metrics.
    pub fn new(
        cfg: ApiConfig,
        store: Arc<dyn Store>,
        calls: Arc<dyn CallControl>,
        metrics: Arc<Metrics>,
    ) -> Api {
        let first_event_id = (time::now_ms().max(0) as u64).saturating_mul(1000);
        let conn_limits = sip_core::limits::ConnectionLimits::new(cfg.connections);
        Api {
            conn_limits,
            http_stats: Arc::default(),
            shared: Arc::new(Shared {
                cfg,
                store,
                calls,
                metrics,
                events: events::EventHub::new(first_event_id, events::RING_CAPACITY),
                dispatch: tokio::sync::Notify::new(),
                journal: Arc::default(),
                store_health: Default::default(),
                client_sessions: Default::default(),
                forward: forward::client(),
                reads: Default::default(),
            }),
        }
    }

    /// The call hooks to hand to the call engine.
    pub fn hooks(&self) -> Arc<dyn CallHooks> {
        Arc::new(hooks::ApiHooks {
            shared: self.shared.clone(),
        })
    }

    /// The queue of call events on their way to the store.
    pub fn journal(&self) -> Arc<journal::Journal> {
        self.shared.journal.clone()
    }

    /// Ends the calls a previous run left unfinished (`failed`, reason `interrupted`, with
    /// their final callback); run before taking calls. Returns how many.
    pub async fn recover_interrupted(&self) -> Result<usize, store::StoreError> {
        journal::recover_interrupted(&self.shared).await
    }

    /// What ends the calls of a lost node, for the binary's lease keeper.
    pub fn takeover(&self) -> Takeover {
        Takeover(Arc::clone(&self.shared))
    }

    /// Starts the journal's writer thread, which writes call events to the store in batches
    /// (see [`journal`]). Stop it with [`JournalWriter::stop`] after the calls have ended.
    /// Called from within the tokio runtime whose store calls the thread waits for.
    pub fn start_journal(&self) -> std::io::Result<JournalWriter> {
        let rt = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let writer = journal::Writer::new(self.shared.clone());
        let thread = std::thread::Builder::new()
            .name("call-journal".into())
            .spawn(move || writer.run(std::time::Duration::from_secs(5), &rt))?;
        Ok(JournalWriter {
            journal: self.shared.journal.clone(),
            thread: Some(thread),
        })
    }

    /// Starts the callback dispatcher task (abort the handle to stop it; pending callbacks
    /// stay in the store's outbox).
    pub fn spawn_dispatcher(&self) -> JoinHandle<()> {
        tokio::spawn(callbacks::run_dispatcher(self.shared.clone()))
    }

    /// The axum router with every route, the body limit and the access log.
    pub fn router(&self) -> Router {
        use routes::{
            admin, calls, client_sessions, compat, console, live, lookup, meta, publishable_keys,
        };
        Router::new()
            .route(
                "/v1/client_sessions",
                post(client_sessions::create_client_session)
                    .get(client_sessions::list_client_sessions),
            )
            .route(
                "/v1/client_sessions/{session_id}",
                axum::routing::delete(client_sessions::revoke_client_session),
            )
            .route(
                "/v1/publishable_keys",
                get(publishable_keys::list_publishable_keys)
                    .post(publishable_keys::create_publishable_key),
            )
            .route(
                "/v1/publishable_keys/{key}",
                axum::routing::delete(publishable_keys::delete_publishable_key),
            )
            .route("/v1/calls", post(calls::create_call).get(calls::list_calls))
            .route("/v1/calls/{call_id}", get(calls::get_call))
            .route("/v1/calls/{call_id}/hangup", post(calls::hangup_call))
            .route("/v1/calls/{call_id}/transfer", post(live::transfer))
            .route(
                "/v1/calls/{call_id}/transfer/complete",
                post(live::transfer_complete),
            )
            .route(
                "/v1/calls/{call_id}/transfer/cancel",
                post(live::transfer_cancel),
            )
            .route("/v1/calls/{call_id}/hold", post(live::hold))
            .route("/v1/calls/{call_id}/unhold", post(live::unhold))
            .route("/v1/calls/{call_id}/mute", post(live::mute))
            .route("/v1/calls/{call_id}/monitor", post(live::monitor))
            .route(
                "/v1/calls/{call_id}/monitor/{monitor_id}",
                patch(live::update_monitor).delete(live::end_monitor),
            )
            .route("/v1/calls/{call_id}/recording", get(calls::get_recording))
            .route("/v1/events", get(calls::events))
            // Between nodes, outside the published document (see `forward`).
            .route(
                "/internal/v1/calls/{call_id}/hangup",
                post(forward::internal_hangup),
            )
            .route(
                "/internal/v1/calls/{call_id}/live",
                get(forward::internal_live),
            )
            .route("/v1/lookup/{number}", get(lookup::lookup))
            .route(
                "/v1/account",
                get(admin::get_account).patch(admin::update_account),
            )
            .route("/v1/users", get(admin::list_users).post(admin::create_user))
            .route(
                "/v1/users/{user_id}",
                get(admin::get_user)
                    .patch(admin::update_user)
                    .delete(admin::delete_user),
            )
            .route(
                "/v1/users/{user_id}/devices",
                get(admin::list_devices).post(admin::create_device),
            )
            .route(
                "/v1/users/{user_id}/registrations",
                get(admin::registrations),
            )
            .route(
                "/v1/devices/{username}",
                patch(admin::update_device).delete(admin::delete_device),
            )
            .route(
                "/v1/numbers",
                get(admin::list_numbers).post(admin::create_number),
            )
            .route(
                "/v1/numbers/{number}",
                get(admin::get_number)
                    .patch(admin::update_number)
                    .delete(admin::delete_number),
            )
            .route(
                "/v1/trunks",
                get(admin::list_trunks).post(admin::create_trunk),
            )
            .route(
                "/v1/trunks/{name}",
                get(admin::get_trunk)
                    .patch(admin::update_trunk)
                    .delete(admin::delete_trunk),
            )
            .route(
                "/v1/account/limits",
                get(admin::get_limits).patch(admin::update_limits),
            )
            .route("/v2/calls/make", post(compat::make_call))
            .route("/click2call", get(compat::click2call))
            .route(
                "/click2call/status/{request_id}",
                get(compat::click2call_status),
            )
            .route("/console", get(console::index))
            .route("/console/", get(console::index))
            .route("/console/{asset}", get(console::asset_file))
            .route("/healthz", get(meta::healthz))
            .route("/metrics", get(meta::metrics))
            .route("/openapi.json", get(meta::openapi))
            .fallback(http::not_found)
            .method_not_allowed_fallback(http::method_not_allowed)
            // Inside the body limit, so that it reads bodies under it.
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                contract::enforce,
            ))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .layer(axum::middleware::from_fn(cors::cors))
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                http::access_log,
            ))
            .with_state(self.shared.clone())
    }

    /// The caps on connections, with their counters (open, accepted, refused).
    pub fn connection_limits(&self) -> Arc<sip_core::limits::ConnectionLimits> {
        self.conn_limits.clone()
    }

    /// The counters of connections closed by a time-out.
    pub fn http_stats(&self) -> Arc<conn::HttpStats> {
        self.http_stats.clone()
    }

    /// Serves the API on `listener` until `shutdown` completes, then lets requests in
    /// flight finish. Connections are held to the configured caps and time-outs
    /// ([`conn`]).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "REST API listening");
        }
        let timeouts = self.shared.cfg.timeouts;
        conn::serve(
            listener,
            self.router(),
            self.conn_limits.clone(),
            timeouts,
            self.http_stats.clone(),
            shutdown,
        )
        .await
    }
}
