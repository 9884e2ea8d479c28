//! `dialbridge serve`: wires the store, the SIP endpoint and the application together.

use crate::config::{Config, Validated};
use sip_core::endpoint::{Endpoint, EndpointConfig};
use sip_core::transport::TransportConfig;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// A line on standard output (where the server says where it listens) that never panics,
/// whatever happened to standard output.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($t)*);
        let _ = out.flush();
    }};
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("SIP: {0}")]
    Sip(#[from] sip_core::endpoint::EndpointError),
    #[error("REST API on {0}: {1}")]
    Api(std::net::SocketAddr, std::io::Error),
    #[error("media relay: {0}")]
    Media(#[from] media::MediaError),
    #[error("registrar: {0}")]
    Registrar(#[from] b2bua::registrar::RegistrarError),
    #[error("starting the call journal's writer thread: {0}")]
    Journal(std::io::Error),
    #[error("starting the HEP sender thread: {0}")]
    Hep(std::io::Error),
    #[error("descriptor budget: {0}")]
    Budget(crate::config::ConfigError),
}

pub async fn serve(cfg: Config, valid: Validated) -> Result<(), ServeError> {
    serve_until(cfg, valid, shutdown_signal(), None).await
}

/// Where an in-process server listens, reported once it is ready.
#[derive(Debug, Clone)]
pub struct Bound {
    pub sip: Vec<sip_core::transport::ListenAddr>,
    pub api: std::net::SocketAddr,
}

/// Runs the server until `shutdown` completes; `ready` learns the bound addresses.
pub async fn serve_until(
    cfg: Config,
    valid: Validated,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), ServeError> {
    // Descriptors: the soft limit up to the hard one, then shared out (see crate::budget).
    let nofile = match crate::budget::raise_nofile() {
        Ok((before, now)) => {
            if before != now {
                tracing::info!(
                    from = before,
                    to = now,
                    "nofile soft limit raised to the hard limit"
                );
            }
            now
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the nofile limit");
            crate::budget::nofile()
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let budget =
        crate::budget::Budget::plan(nofile, &cfg, valid.media_ports).map_err(ServeError::Budget)?;
    say!("dialbridge: {budget}");
    tracing::info!(
        nofile = budget.nofile,
        relay = budget.relay,
        store = budget.store,
        reserve = budget.reserve,
        sip_connections = budget.sip,
        sip_connections_per_ip = budget.sip_per_ip,
        api_connections = budget.api,
        api_connections_per_ip = budget.api_per_ip,
        "descriptor budget"
    );
    tracing::info!(
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "runtime started"
    );
    let store = store::open(&cfg.store.url).await?;
    let report = store
        .apply_provisioning(&cfg.provisioning(), &cfg.sip.domain)
        .await?;
    tracing::info!(url = %store::redact_url(&cfg.store.url), ?report, "store ready");
    let development = if cfg.embedded_defaults {
        crate::development::DevelopmentAccount::create_if_empty(&*store, &cfg.sip.domain).await?
    } else {
        None
    };
    if let Some(dev) = &development {
        tracing::info!(account = %dev.account_id, "development account created (its keys are printed once on standard output)");
    }
    // This node's lease: refuses to run beside another live node with the same id.
    let lease =
        Arc::new(crate::node::Lease::acquire(Arc::clone(&store), valid.node.clone()).await?);
    // The numbering metadata is loaded on first use (about 0.2 s in a release build): do it
    // now, beside the start-up, rather than in the first call request.
    if let Ok(accounts) = store.list_accounts().await {
        let regions: Vec<String> = accounts
            .into_iter()
            .flat_map(|a| std::iter::once(a.region).chain(a.allowed_countries))
            .collect();
        tokio::task::spawn_blocking(move || b2bua::numbering::preload(&regions));
    }

    // Who watches the SIP messages: the trace in the log, the HEP exporter, both or none.
    let hep = match &valid.hep {
        Some(settings) => {
            Some(crate::hep::HepExporter::start(settings.clone()).map_err(ServeError::Hep)?)
        }
        None => None,
    };
    let rtcp_tap = hep
        .as_ref()
        .map(|h| crate::hep::HepRtcpTap::new(Arc::clone(h)));
    let mut observers: Vec<Arc<dyn sip_core::observe::MessageObserver>> = Vec::new();
    if cfg.log.sip_trace {
        observers.push(Arc::new(crate::sip_trace::SipTrace {
            json: crate::logging::is_json(),
        }));
    }
    if let Some(h) = &hep {
        observers.push(Arc::clone(h) as Arc<dyn sip_core::observe::MessageObserver>);
    }
    let observer: Option<Arc<dyn sip_core::observe::MessageObserver>> = match observers.len() {
        0 => None,
        1 => observers.pop(),
        _ => Some(Arc::new(sip_core::observe::Observers(observers))),
    };
    let ep_cfg = EndpointConfig {
        transport: TransportConfig {
            listen: valid.listen.clone(),
            tcp_idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_secs),
            tcp_first_message_timeout: Duration::from_secs(cfg.sip.first_message_secs),
            max_message_size: cfg.sip.max_message_size,
            tcp_limits: sip_core::limits::ConnectionLimitsConfig {
                max_total: budget.sip,
                max_per_source: budget.sip_per_ip,
                ..Default::default()
            },
            request_guard: sip_core::stateless::RefusalGuardConfig {
                per_sec: cfg.sip.requests_per_sec,
                mute: Duration::from_secs(cfg.sip.request_mute_secs),
                ..valid.stateless.guard.clone()
            },
            tls: valid.tls.clone(),
            ..Default::default()
        },
        timers: valid.timers,
        advertise: valid.sip_advertise,
        user_agent: cfg.sip.user_agent.clone(),
        stateless: valid.stateless.clone(),
        observer,
    };
    let trunks_at_start = store.list_trunks().await;
    if let Err(e) = &trunks_at_start {
        tracing::warn!(error = %e, "trunks not readable at start-up; read again in the background");
    }
    let (endpoint, events) = Endpoint::start(ep_cfg).await?;
    reload_tls_on_sighup(valid.tls.clone());
    let sip_addrs = endpoint.local_addrs();
    for a in endpoint.local_addrs() {
        say!("dialbridge: SIP listening on {a}");
    }
    say!("dialbridge: store {}", store::redact_url(&cfg.store.url));
    let relay = Arc::new(media::Relay::start(media::RelayConfig {
        bind: valid.media_bind,
        advertise: valid.media_advertise.unwrap_or(valid.media_bind),
        port_min: valid.media_ports.0,
        port_max: valid.media_ports.1,
        timeout: Duration::from_secs(cfg.media.timeout_secs),
        workers: cfg.media.workers,
        latch: cfg.media.latch(),
        rtcp_tap: media::RtcpTapHandle(rtcp_tap.clone().map(|t| t as Arc<dyn media::RtcpTap>)),
        ..Default::default()
    })?);
    say!(
        "dialbridge: media relay on {} ports {}-{}",
        valid.media_bind,
        valid.media_ports.0,
        valid.media_ports.1
    );
    let r = &cfg.registrar;
    let registrar = Arc::new(b2bua::registrar::Registrar::new(
        b2bua::registrar::RegistrarConfig {
            realm: cfg.sip.domain.clone(),
            min_expires: r.min_expires,
            max_expires: r.max_expires,
            default_expires: r.default_expires,
            nonce_lifetime_secs: r.nonce_lifetime_secs,
            guard: b2bua::registrar::GuardConfig {
                limit: r.auth_fail_limit,
                window_secs: r.auth_fail_window_secs,
                lockout_secs: r.auth_lockout_secs,
                ..Default::default()
            },
            algorithms: r
                .digest_algorithms
                .iter()
                .filter_map(|a| sip_core::auth::Algorithm::from_token(a))
                .collect(),
            md5_only_user_agents: r.md5_only_user_agents.clone(),
            nonce_secret: r.nonce_secret.clone(),
        },
        Arc::clone(&store),
    )?);
    // Binding refreshes held in memory are written twice a second (see
    // `Store::refresh_binding`).
    let refresh_writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if let Err(e) = store.flush_refreshes().await {
                    tracing::warn!(error = %e, "binding refreshes not written yet; trying again");
                }
            }
        })
    };
    // Expired bindings are swept once a minute.
    let sweeper = {
        let registrar = Arc::clone(&registrar);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match registrar.sweep().await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "expired bindings swept"),
                    Err(e) => tracing::warn!(error = %e, "binding sweep failed"),
                    _ => {}
                }
            }
        })
    };
    let retention = b2bua::calls::recordings::spawn_retention(
        cfg.recording.dir.clone(),
        cfg.recording.retention_days,
    );
    let engine = b2bua::calls::Engine::new(
        b2bua::calls::EngineConfig {
            domain: cfg.sip.domain.clone(),
            max_concurrent: cfg.calls.max_concurrent,
            dns_servers: valid.dns_servers.clone(),
            inbound_ring: std::time::Duration::from_secs(cfg.calls.agent_ring_secs),
            recording_dir: cfg.recording.dir.clone(),
            ..Default::default()
        },
        endpoint.clone(),
        Arc::clone(&store),
        Arc::clone(&registrar),
        Arc::clone(&relay),
    );
    if let Some(h) = &hep {
        let e = engine.clone();
        h.set_correlate(Arc::new(move |sip_call_id: &str| {
            e.call_for_sip_call_id(sip_call_id)
        }));
        if let Some(t) = &rtcp_tap {
            let e = engine.clone();
            t.set_correlate(Arc::new(move |session, leg| {
                e.sip_call_id_of_media(session, leg)
            }));
        }
        if let Some(target) = &valid.hep {
            say!(
                "dialbridge: HEP to {}:{}:{} (agent id {})",
                target.target.transport,
                target.target.host,
                target.target.port,
                target.agent_id
            );
        }
    }
    let stateless_stats = endpoint.stateless_stats();
    let sip_conns = endpoint.transports().connection_limits();
    let sip_guards = endpoint.transports().stats();
    // The trunks as read before the endpoint started: a carrier's first requests are not
    // budgeted as a stranger's. Unreadable then, they are read in the background.
    let server = match &trunks_at_start {
        Ok(trunks) => b2bua::server::SipServer::with_trunks(
            endpoint,
            Arc::clone(&registrar),
            Some(engine.clone()),
            trunks,
        ),
        Err(_) => {
            b2bua::server::SipServer::new(endpoint, Arc::clone(&registrar), Some(engine.clone()))
        }
    };
    let sip = tokio::spawn(server.run(events));

    // The REST API, its call hooks and the callback dispatcher.
    let metrics = Arc::new(api::Metrics::new());
    {
        // The registrations gauge is read from the store by the metrics handler.
        let e = engine.clone();
        metrics.set_relay_packets_source(move || e.relayed_packets());
        let trunks = engine.trunks();
        metrics.add_family(
            "dialbridge_trunk_up",
            "gauge",
            "Whether a trunk target takes calls (1) or is down (0), by trunk and target.",
            move || trunks.metric_lines().0,
        );
        let trunks = engine.trunks();
        metrics.add_family(
            "dialbridge_trunk_attempts_total",
            "counter",
            "Customer-leg attempts through a trunk, by trunk and answer (SIP code, timeout, transport_error).",
            move || trunks.metric_lines().1,
        );
        metrics.add_source(
            "dialbridge_heap_bytes",
            "gauge",
            "Heap bytes the process has allocated and not freed (the allocator's own count; memory freed but kept by the allocator is not in it).",
            heap_bytes,
        );
        metrics.add_source(
            "dialbridge_log_lines_dropped_total",
            "counter",
            "Log lines dropped because standard error could not take them (disk full, slow disk).",
            crate::logging::dropped_lines,
        );
        let e = engine.clone();
        metrics.add_source(
            "dialbridge_media_hijack_dropped_total",
            "counter",
            "Media packets dropped because they came from a source their leg does not accept (media.strict_source), by ended calls.",
            move || e.hijack_dropped(),
        );
        if let Some(h) = &hep {
            let st = h.stats();
            metrics.add_source(
                "dialbridge_hep_packets_sent_total",
                "counter",
                "HEP packets sent to the collector.",
                move || st.sent.load(std::sync::atomic::Ordering::Relaxed),
            );
            let st = h.stats();
            metrics.add_source(
                "dialbridge_hep_packets_dropped_total",
                "counter",
                "HEP packets dropped: the queue was full or the collector could not be reached.",
                move || st.dropped.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        metrics.add_counters::<b2bua::registrar::Registrar>(
            &registrar,
            &[
                (
                    "dialbridge_registrar_auth_failures_total",
                    "Digest attempts with wrong credentials or unknown devices.",
                    |r| r.stats.auth_failures.load(Relaxed),
                ),
                (
                    "dialbridge_registrar_lockouts_total",
                    "Sources or usernames locked out after repeated failures.",
                    |r| r.stats.auth_lockouts.load(Relaxed),
                ),
                (
                    "dialbridge_registrar_refused_locked_total",
                    "REGISTERs refused because their source or username was locked out.",
                    |r| r.stats.auth_refused_locked.load(Relaxed),
                ),
            ],
        );
        let stateless: [api::metrics::Counter<sip_core::stateless::StatelessStats>; 4] = [
            (
                "dialbridge_sip_stateless_answers_total",
                "Answers sent without a transaction (refusals, challenges, OPTIONS), replays included.",
                |s| s.sent.load(Relaxed),
            ),
            (
                "dialbridge_sip_stateless_replays_total",
                "Stateless answers sent again for a retransmitted request.",
                |s| s.replayed.load(Relaxed),
            ),
            (
                "dialbridge_sip_refusals_dropped_total",
                "Stateless answers not sent because their destination was muted.",
                |s| s.dropped.load(Relaxed),
            ),
            (
                "dialbridge_sip_refusal_mutes_total",
                "Times a source went past sip.refusals_per_sec and was muted.",
                |s| s.mutes.load(Relaxed),
            ),
        ];
        metrics.add_counters(&stateless_stats, &stateless);
    }
    let api_cfg = api::ApiConfig {
        listen: valid.api_listen,
        server_id: valid.node.id.clone(),
        node_secret: cfg.node.secret.clone(),
        realm: cfg.sip.domain.clone(),
        agent_ring_secs: u32::try_from(cfg.calls.agent_ring_secs).unwrap_or(u32::MAX),
        customer_ring_secs: u32::try_from(cfg.calls.customer_ring_secs).unwrap_or(u32::MAX),
        confirm_secs: cfg.calls.confirm_secs,
        connections: sip_core::limits::ConnectionLimitsConfig {
            max_total: budget.api,
            max_per_source: budget.api_per_ip,
            ..Default::default()
        },
        timeouts: api::conn::HttpTimeouts {
            header_read: Duration::from_secs(cfg.api.header_read_secs),
            body_read: Duration::from_secs(cfg.api.body_read_secs),
            idle: Duration::from_secs(cfg.api.idle_secs),
        },
        ..Default::default()
    };
    let rest = api::Api::new(
        api_cfg,
        Arc::clone(&store),
        Arc::new(engine.clone()),
        Arc::clone(&metrics),
    );
    add_connection_metrics(&metrics, &sip_conns, &sip_guards, &rest, budget.nofile);
    // Calls the previous run left unfinished (a crash) end now, with their final callback.
    match rest.recover_interrupted().await {
        Ok(0) => {}
        Ok(n) => say!("dialbridge: {n} call(s) left unfinished by the previous run ended failed (interrupted)"),
        Err(e) => tracing::error!(error = %e, "cannot end the calls the previous run left unfinished"),
    }
    let journal = rest.start_journal().map_err(ServeError::Journal)?;
    let lease_keeper = tokio::spawn(Arc::clone(&lease).keep(rest.takeover()));
    engine.set_hooks(rest.hooks());
    let dispatcher = rest.spawn_dispatcher();
    let listener = tokio::net::TcpListener::bind(valid.api_listen)
        .await
        .map_err(|e| ServeError::Api(valid.api_listen, e))?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| ServeError::Api(valid.api_listen, e))?;
    say!("dialbridge: REST listening on http://{api_addr}/");
    let (stop_api_tx, stop_api_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(rest.serve(listener, async move {
        let _ = stop_api_rx.await;
    }));
    if let Some(dev) = &development {
        let sip = sip_addrs
            .iter()
            .find(|a| a.to_string().starts_with("udp:"))
            .map(|a| a.to_string().trim_start_matches("udp:").to_owned());
        say!("{}", dev.announcement(api_addr, sip));
    }
    say!("dialbridge: ready");
    if let Some(tx) = ready {
        let _ = tx.send(Bound {
            sip: sip_addrs,
            api: api_addr,
        });
    }

    shutdown.await;
    tracing::info!("shutting down: no new calls; live calls may finish");
    engine
        .shutdown(Duration::from_secs(cfg.calls.shutdown_grace_secs))
        .await;
    let _ = stop_api_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    // The calls have ended: write their last events, then stop delivering callbacks (those
    // not delivered stay in the outbox for the next start).
    let _ = tokio::task::spawn_blocking(move || journal.stop()).await;
    dispatcher.abort();
    sip.abort();
    sweeper.abort();
    if let Some(r) = retention {
        r.abort();
    }
    refresh_writer.abort();
    if let Err(e) = store.flush_refreshes().await {
        tracing::warn!(error = %e, "binding refreshes not written at shutdown");
    }
    lease_keeper.abort();
    lease.release().await;
    Ok(())
}

/// The metrics of the connection caps, time-outs and request budget (see
/// `docs/operations.md`, "Limits").
fn add_connection_metrics(
    metrics: &api::Metrics,
    sip: &Arc<sip_core::limits::ConnectionLimits>,
    guards: &Arc<sip_core::transport::TransportStats>,
    rest: &api::Api,
    nofile: u64,
) {
    type Limit = (
        &'static str,
        &'static str,
        &'static str,
        fn(&sip_core::limits::ConnectionStats) -> u64,
    );
    let sip_limits: [Limit; 3] = [
        (
            "dialbridge_sip_tcp_connections",
            "gauge",
            "SIP TCP connections accepted and open now.",
            |s| s.open.load(Relaxed),
        ),
        (
            "dialbridge_sip_tcp_connections_refused_total",
            "counter",
            "SIP TCP connections closed at once: sip.max_connections was reached.",
            |s| s.refused_total.load(Relaxed),
        ),
        (
            "dialbridge_sip_tcp_connections_refused_per_ip_total",
            "counter",
            "SIP TCP connections closed at once: their address had sip.max_connections_per_ip.",
            |s| s.refused_per_source.load(Relaxed),
        ),
    ];
    let http_limits: [Limit; 3] = [
        (
            "dialbridge_http_connections",
            "gauge",
            "REST connections open now.",
            |s| s.open.load(Relaxed),
        ),
        (
            "dialbridge_http_connections_refused_total",
            "counter",
            "REST connections closed at once: api.max_connections was reached.",
            |s| s.refused_total.load(Relaxed),
        ),
        (
            "dialbridge_http_connections_refused_per_ip_total",
            "counter",
            "REST connections closed at once: their address had api.max_connections_per_ip.",
            |s| s.refused_per_source.load(Relaxed),
        ),
    ];
    for (limits, l) in [
        (sip_limits, Arc::clone(sip)),
        (http_limits, rest.connection_limits()),
    ] {
        for (name, kind, help, read) in limits {
            let l = Arc::clone(&l);
            metrics.add_source(name, kind, help, move || read(&l.stats));
        }
    }
    let sip_guards: [api::metrics::Counter<sip_core::transport::TransportStats>; 4] = [
        (
            "dialbridge_sip_tcp_first_message_timeouts_total",
            "SIP TCP connections closed for not delivering a complete message within sip.first_message_secs.",
            |s| s.closed_first_message.load(Relaxed),
        ),
        (
            "dialbridge_sip_tcp_idle_timeouts_total",
            "SIP TCP connections without a registration closed after sip.tcp_idle_secs idle.",
            |s| s.closed_idle.load(Relaxed),
        ),
        (
            "dialbridge_sip_requests_dropped_total",
            "SIP requests ignored because their source sent more than sip.requests_per_sec.",
            |s| s.requests_dropped.load(Relaxed),
        ),
        (
            "dialbridge_sip_request_mutes_total",
            "Times a source went past sip.requests_per_sec and was ignored for sip.request_mute_secs.",
            |s| s.request_mutes.load(Relaxed),
        ),
    ];
    metrics.add_counters(guards, &sip_guards);
    let http: [api::metrics::Counter<api::conn::HttpStats>; 3] = [
        (
            "dialbridge_http_header_timeouts_total",
            "REST connections closed: a request head took longer than api.header_read_secs.",
            |s| s.header_timeouts.load(Relaxed),
        ),
        (
            "dialbridge_http_body_timeouts_total",
            "REST connections closed: a request body was silent for api.body_read_secs.",
            |s| s.body_timeouts.load(Relaxed),
        ),
        (
            "dialbridge_http_idle_timeouts_total",
            "REST connections closed after api.idle_secs without a request.",
            |s| s.idle_timeouts.load(Relaxed),
        ),
    ];
    metrics.add_counters(&rest.http_stats(), &http);
    metrics.add_source(
        "dialbridge_open_fds",
        "gauge",
        "Descriptors the process has open now.",
        || crate::budget::open_descriptors().unwrap_or(0),
    );
    metrics.add_source(
        "dialbridge_fd_limit",
        "gauge",
        "The nofile limit the descriptor budget was planned for.",
        move || nofile,
    );
}

/// Reads `[tls] cert` and `key` again on each SIGHUP: new handshakes use the new pair,
/// open connections keep theirs; a pair that does not load leaves the old one in place.
fn reload_tls_on_sighup(tls: Option<Arc<sip_core::tls::TlsContext>>) {
    #[cfg(unix)]
    if let Some(tls) = tls.filter(|t| t.has_server()) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: the TLS certificate is not reloadable");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = ?tls.settings().cert,
                        "SIGHUP: tls certificate and key reloaded"
                    ),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "SIGHUP: tls certificate and key not reloaded: the previous pair stays"
                    ),
                }
            }
        });
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Bytes the allocator has handed out and not taken back: what a benchmark divides by the
/// live calls or bindings (the resident set also holds what was freed and kept). With
/// tcmalloc linked in (`build.rs`), its own count of allocated bytes; on glibc's malloc,
/// `mallinfo2`'s in-use small blocks plus its mmapped blocks, summed over all arenas.
#[cfg(dialbridge_tcmalloc)]
fn heap_bytes() -> u64 {
    unsafe extern "C" {
        // gperftools' C interface (malloc_extension_c.h): 1 when the property is known.
        fn MallocExtension_GetNumericProperty(
            property: *const std::ffi::c_char,
            value: *mut usize,
        ) -> std::ffi::c_int;
    }
    let mut value = 0usize;
    // SAFETY: the property name is a NUL-terminated string and `value` a valid place for
    // the one `size_t` the function writes.
    let known = unsafe {
        MallocExtension_GetNumericProperty(c"generic.current_allocated_bytes".as_ptr(), &mut value)
    };
    if known == 1 {
        value as u64
    } else {
        0
    }
}

/// See above: glibc's malloc.
#[cfg(all(target_os = "linux", target_env = "gnu", not(dialbridge_tcmalloc)))]
fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_bytes() -> u64 {
    0
}
