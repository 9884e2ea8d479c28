//! `dialbridge serve`: wires the store, the SIP endpoint and the application together.

use crate::config::{Config, Validated};
use sip_core::endpoint::{Endpoint, EndpointConfig};
use sip_core::transport::TransportConfig;
use std::time::Duration;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("SIP: {0}")]
    Sip(#[from] sip_core::endpoint::EndpointError),
}

pub async fn serve(cfg: Config, valid: Validated) -> Result<(), ServeError> {
    let store = store::open(&cfg.store.url)?;
    let report = store.apply_provisioning(&cfg.provisioning(), &cfg.sip.domain)?;
    tracing::info!(url = %cfg.store.url, ?report, "store ready");

    let ep_cfg = EndpointConfig {
        transport: TransportConfig {
            listen: valid.listen.clone(),
            tcp_idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_secs),
            max_message_size: cfg.sip.max_message_size,
            ..Default::default()
        },
        timers: valid.timers,
        advertise: valid.sip_advertise,
        user_agent: cfg.sip.user_agent.clone(),
    };
    let (endpoint, events) = Endpoint::start(ep_cfg).await?;
    for a in endpoint.local_addrs() {
        println!("dialbridge: SIP listening on {a}");
    }
    println!("dialbridge: store {}", cfg.store.url);
    let server = b2bua::server::SipServer::new(endpoint);
    let sip = tokio::spawn(server.run(events));

    shutdown_signal().await;
    tracing::info!("shutting down");
    sip.abort();
    Ok(())
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
