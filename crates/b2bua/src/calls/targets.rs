//! Where a leg's INVITEs go: the registered contacts of a user's devices (rung at once), or
//! a number through the account's trunk. The lookups read the store and resolve host names,
//! so the call's driver runs them and hands the machine the resulting [`Plan`].

use bytes::Bytes;
use sip_core::message::{Host, SipUri, Uri};
use sip_core::transport::Transport;
use store::CallStatus;

use super::machine::{outcome, Plan, Target};
use super::shared::{now_ms, EngineInner};
use super::{AgentTarget, CallSpec, CustomerTarget, Leg, Outcome};

/// The plan of one leg of `spec`.
pub(crate) async fn plan(inner: &EngineInner, spec: &CallSpec, leg: Leg) -> Result<Plan, Outcome> {
    match (leg, &spec.agent, &spec.customer) {
        (Leg::Agent, AgentTarget::Devices { user_id }, _)
        | (Leg::Customer, _, CustomerTarget::User { user_id }) => {
            device_targets(inner, user_id, leg).await.map(|t| vec![t])
        }
        (Leg::Agent, AgentTarget::Trunk { number, trunk, .. }, _) => {
            trunk_plan(inner, spec, number, trunk.as_deref(), false, leg).await
        }
        (Leg::Customer, _, CustomerTarget::E164(n)) => {
            trunk_plan(inner, spec, n, None, false, leg).await
        }
        (Leg::Customer, _, CustomerTarget::Emergency(n)) => {
            trunk_plan(inner, spec, n, None, true, leg).await
        }
    }
}

/// Every registered contact of every device of the user.
async fn device_targets(
    inner: &EngineInner,
    user_id: &str,
    leg: Leg,
) -> Result<Vec<Target>, Outcome> {
    let now = now_ms() / 1000;
    let bindings = inner
        .store
        .bindings_for_user(user_id, now)
        .await
        .map_err(|e| outcome(CallStatus::Failed, Some(leg), None, &format!("store: {e}")))?;
    let mut out = Vec::new();
    for b in &bindings {
        let conn = inner
            .registrar
            .connection_of(&b.device_username, &b.contact);
        if let Some((uri, dest)) = crate::registrar::binding_target(b, conn) {
            out.push(Target {
                request_uri: uri,
                to: format!("<sip:{}@{}>", b.device_username, inner.cfg.domain),
                contact: inner.endpoint.contact_uri(None, dest.transport, dest.addr),
                dest,
                credentials: None,
                label: format!("device {} at {}", b.device_username, b.contact),
                invite_timeout: None,
                failover_codes: Vec::new(),
            });
        }
    }
    if out.is_empty() {
        return Err(outcome(
            CallStatus::Failed,
            Some(leg),
            Some(480),
            "no registered device",
        ));
    }
    Ok(out)
}

/// The account's trunk for this number.
async fn trunk_plan(
    inner: &EngineInner,
    spec: &CallSpec,
    number: &str,
    trunk_name: Option<&str>,
    emergency: bool,
    leg: Leg,
) -> Result<Plan, Outcome> {
    let fail = |reason: String| outcome(CallStatus::Failed, Some(leg), None, &reason);
    let trunks = inner
        .store
        .trunks_for_account(&spec.account_id)
        .await
        .map_err(|e| fail(format!("store: {e}")))?;
    let trunk = trunks
        .into_iter()
        .find(|t| trunk_name.is_none_or(|n| t.name == n) && (!emergency || t.emergency))
        .ok_or_else(|| fail("no trunk for this call".into()))?;
    let transport = match trunk.transport {
        store::Transport::Tcp => Transport::Tcp,
        _ => Transport::Udp,
    };
    let user = format!(
        "{}{}",
        trunk.dial_prefix.clone().unwrap_or_default(),
        number
    );
    let (host, port) = split_host_port(&trunk.address);
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Domain(Bytes::from(host.to_string())),
    };
    let mut ruri = SipUri::new(Some(&user), host, port);
    if transport == Transport::Tcp {
        ruri.params.set("transport", Some("tcp"));
    }
    let request_uri = Uri::Sip(ruri);
    let dest = sip_core::endpoint::resolve_uri(&request_uri)
        .await
        .map_err(|_| fail(format!("cannot resolve trunk {}", trunk.address)))?;
    Ok(vec![vec![Target {
        to: format!("<{request_uri}>"),
        request_uri,
        contact: inner.endpoint.contact_uri(None, dest.transport, dest.addr),
        dest,
        credentials: match (&trunk.username, &trunk.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.expose().to_string())),
            _ => None,
        },
        label: format!("trunk {}", trunk.name),
        invite_timeout: None,
        failover_codes: Vec::new(),
    }]])
}

fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (s, None),
    }
}
