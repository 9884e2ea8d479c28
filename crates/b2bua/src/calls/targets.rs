//! Where a leg's INVITEs go: the registered contacts of a user's devices (rung at once), or
//! a number through the account's trunk. The lookups read the store and resolve host names,
//! so the call's driver runs them and hands the machine the resulting [`Plan`].

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

/// The plan of a transfer's or a monitor's target: a user's devices, or a number (already
/// through the account's guards) on the account's trunks.
pub(crate) async fn side_plan(
    inner: &EngineInner,
    spec: &CallSpec,
    to: &super::TransferTo,
) -> Result<Plan, Outcome> {
    match to {
        super::TransferTo::User { user_id } => device_targets(inner, user_id, Leg::Agent)
            .await
            .map(|t| vec![t]),
        super::TransferTo::Number { e164 } => {
            trunk_plan(inner, spec, e164, None, false, Leg::Customer).await
        }
    }
}

/// The target of a REFER from a phone (RFC 3515): the Refer-To user part through the
/// account's dial plan and guards, as the API's calls go (toll fraud: a transfer is a call
/// the account pays for). A refusal is `403` and nothing is dialled; an unknown extension
/// `404`; no registered device `480`.
pub(crate) async fn refer_plan(
    inner: &EngineInner,
    spec: &CallSpec,
    to: &str,
) -> Result<Plan, (u16, String)> {
    use crate::dialplan::{self, Dialled};
    let account = inner
        .store
        .account(&spec.account_id)
        .await
        .map_err(|e| (503, format!("store: {e}")))?
        .ok_or((403, "no such account".to_string()))?;
    let dialled = dialplan::normalize(to, &account.region)
        .map_err(|e| (404, format!("not dialable: {e}")))?;
    let target = match dialled {
        Dialled::E164(n) => {
            let (_, verdict) = dialplan::check(&n, (&account).into());
            if let Err(refusal) = verdict {
                tracing::info!(account = %account.id, code = refusal.code(), "transfer destination refused");
                return Err((403, format!("{} ({})", refusal.code(), refusal)));
            }
            super::TransferTo::Number { e164: n }
        }
        Dialled::Extension(x) => match inner.store.user_by_extension(&account.id, &x).await {
            Ok(Some(u)) => super::TransferTo::User { user_id: u.id },
            Ok(None) => return Err((404, format!("no extension {x}"))),
            Err(e) => return Err((503, format!("store: {e}"))),
        },
        Dialled::Emergency(_) => {
            return Err((403, "emergency numbers are not transfer targets".into()));
        }
    };
    side_plan(inner, spec, &target)
        .await
        .map_err(|o| (o.sip_code.unwrap_or(480), o.reason))
}

/// Every registered contact of every device of the user.
async fn device_targets(
    inner: &EngineInner,
    user_id: &str,
    leg: Leg,
) -> Result<Vec<Target>, Outcome> {
    let now = now_ms() / 1000;
    let bindings = inner
        .registrar
        .bindings_for_user(user_id, now as u64)
        .await
        .map_err(|e| outcome(CallStatus::Failed, Some(leg), None, &format!("store: {e}")))?;
    let mut out = Vec::new();
    // One set of ICE credentials for the leg: every browser of the fork is offered it. Drawn
    // when the first browser is met, so a fork of plain phones costs no random bytes.
    let mut webrtc: Option<Option<super::machine::WebRtcOffer>> = None;
    for b in &bindings {
        let conn = inner
            .registrar
            .connection_of(&b.device_username, &b.contact);
        if let Some((uri, dest)) = crate::registrar::binding_target(b, conn) {
            // A device registered over WebSocket is a browser (RFC 7118 clients are WebRTC
            // endpoints): DTLS-SRTP media.
            let browser = matches!(
                dest.transport,
                sip_core::transport::Transport::Ws | sip_core::transport::Transport::Wss
            );
            let webrtc = if browser {
                webrtc
                    .get_or_insert_with(|| {
                        inner
                            .relay
                            .dtls_fingerprint()
                            .map(|fp| super::machine::WebRtcOffer {
                                ice: media::webrtc::IceCredentials::random(),
                                fingerprint: fp.clone(),
                            })
                    })
                    .clone()
            } else {
                None
            };
            out.push(Target {
                request_uri: uri,
                to: format!("<sip:{}@{}>", b.device_username, inner.cfg.domain),
                contact: inner.endpoint.contact_uri(None, dest.transport, dest.addr),
                dest,
                credentials: None,
                label: format!("device {} at {}", b.device_username, b.contact),
                invite_timeout: None,
                failover_codes: Vec::new(),
                trunk: None,
                sdes: None,
                webrtc,
                route: b.path.clone(),
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

/// The attempts of a leg through the account's trunks (`crate::trunks`): for the customer
/// leg each attempt is a stage of the plan (tried one after another, failover by the
/// trunk's `invite_timeout_ms` and `failover_codes`); the agent leg through a PBX trunk
/// takes the first.
async fn trunk_plan(
    inner: &EngineInner,
    spec: &CallSpec,
    number: &str,
    trunk_name: Option<&str>,
    emergency: bool,
    leg: Leg,
) -> Result<Plan, Outcome> {
    let attempts = crate::trunks::call_glue::attempts(
        &inner.trunks,
        &spec.account_id,
        number,
        trunk_name,
        emergency,
    )
    .await
    .map_err(|reason| outcome(CallStatus::Failed, Some(leg), None, &reason))?;
    let stages = attempts.into_iter().map(|a| {
        let t = &a.attempt;
        vec![Target {
            to: format!("<{}>", t.request_uri),
            request_uri: t.request_uri.clone(),
            contact: inner
                .endpoint
                .contact_uri(None, t.dest.transport, t.dest.addr),
            dest: t.dest,
            credentials: t.credentials.clone(),
            label: t.label.clone(),
            invite_timeout: Some(t.invite_timeout),
            failover_codes: t.failover_codes.clone(),
            sdes: (t.srtp == store::Srtp::Sdes).then(media::srtp::SrtpKey::random),
            webrtc: None,
            trunk: Some(a),
            route: Vec::new(),
        }]
    });
    Ok(match leg {
        Leg::Customer => stages.collect(),
        Leg::Agent => stages.take(1).collect(),
    })
}
