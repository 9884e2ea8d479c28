//! Requests about a call owned by another node, forwarded to that node.
//!
//! A call runs on the node that placed it (its record names the node). Any node's REST API
//! accepts a hang-up or a query of any call: for a call of another node, this node looks up
//! the owner's lease in the store (its `api_url`, whether it is alive) and sends it an
//! internal request:
//!
//! - `POST {api_url}/internal/v1/calls/{call_id}/hangup`
//! - `GET {api_url}/internal/v1/calls/{call_id}/live` (the media counters so far)
//!
//! Internal requests carry `Dialbridge-Node: node=<sender>,t=<unix seconds>,v1=<hex
//! HMAC-SHA256(node.secret, t + "." + METHOD + " " + path)>`, keyed with `[node] secret`,
//! which every node shares. The owner accepts a signature at most 30 s old (a replay within
//! that window can only hang up the same call again). The account and scope were checked by
//! the node that took the public request. Every forward has a time-out
//! ([`FORWARD_TIMEOUT`]); an owner whose lease lapsed, or that does not answer in time, gives
//! a clear error at once (its calls are ended by the node that takes it over).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::error::ApiError;
use crate::state::Shared;
use crate::time::now_ms;

/// The header of internal requests.
pub const NODE_HEADER: &str = "Dialbridge-Node";
/// How long a forwarded request may take (connect and answer).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How old an internal request's signature may be.
const MAX_SKEW_SECS: i64 = 30;

fn mac(secret: &str, t: i64, method: &str, path: &str) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("{t}.{method} {path}").as_bytes());
    Some(mac)
}

/// The `Dialbridge-Node` value of a request by node `node` at Unix time `t`.
pub fn sign(secret: &str, node: &str, t: i64, method: &str, path: &str) -> String {
    let v1 = mac(secret, t, method, path)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("node={node},t={t},v1={v1}")
}

/// Checks a `Dialbridge-Node` value at Unix time `now`; returns the sending node.
pub fn verify(
    secret: &str,
    header: &str,
    now: i64,
    method: &str,
    path: &str,
) -> Result<String, &'static str> {
    let (mut node, mut t, mut v1) = (None, None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("node", v)) => node = Some(v.to_owned()),
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(node), Some(t), Some(v1)) = (node, t, v1) else {
        return Err("malformed");
    };
    if (now - t).abs() > MAX_SKEW_SECS {
        return Err("expired");
    }
    let m = mac(secret, t, method, path).ok_or("malformed")?;
    m.verify_slice(&v1).map_err(|_| "bad signature")?;
    Ok(node)
}

/// The HTTP client of forwarded requests.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(FORWARD_TIMEOUT)
        .connect_timeout(FORWARD_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Where the owner is reached, or why it cannot be.
async fn owner_url(shared: &Shared, owner: &str) -> Result<(String, String), ApiError> {
    let Some(secret) = shared.cfg.node_secret.as_ref() else {
        return Err(ApiError::Conflict {
            code: "call_not_active",
            message: format!(
                "The call runs on node {owner}; requests are not forwarded to it ([node] secret is not set)"
            ),
        });
    };
    match shared.store.node_lease(owner).await? {
        Some(lease) if lease.until_ms > now_ms() => {
            Ok((lease.api_url, secret.expose().to_owned()))
        }
        _ => Err(ApiError::Unavailable {
            message: format!(
                "The call's node {owner} is down; its calls end (failed) when another node takes it over"
            ),
            retry_after_secs: 5,
        }),
    }
}

async fn send(
    shared: &Shared,
    owner: &str,
    method: Method,
    call_id: &str,
    what: &str,
) -> Result<reqwest::Response, ApiError> {
    let (base, secret) = owner_url(shared, owner).await?;
    let path = format!("/internal/v1/calls/{call_id}/{what}");
    let auth = sign(
        &secret,
        &shared.cfg.server_id,
        now_ms() / 1000,
        method.as_str(),
        &path,
    );
    let url = format!("{}{path}", base.trim_end_matches('/'));
    shared
        .forward
        .request(method, url)
        .header(NODE_HEADER, auth)
        .send()
        .await
        .map_err(|e| ApiError::Unavailable {
            message: format!(
                "The call's node {owner} did not answer ({})",
                if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                }
            ),
            retry_after_secs: 1,
        })
}

/// Asks the owner to hang a call up.
pub(crate) async fn hangup(shared: &Shared, owner: &str, call_id: &str) -> Result<(), ApiError> {
    let resp = send(shared, owner, Method::POST, call_id, "hangup").await?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        404 | 409 => Err(ApiError::Conflict {
            code: "call_not_active",
            message: format!("Call is not active on its node {owner}"),
        }),
        code => Err(ApiError::Unavailable {
            message: format!("The call's node {owner} answered HTTP {code}"),
            retry_after_secs: 1,
        }),
    }
}

/// The media counters so far of a call running on `owner`; `None` when it cannot say.
pub(crate) async fn live_stats(shared: &Shared, owner: &str, call_id: &str) -> Option<Value> {
    let resp = match send(shared, owner, Method::GET, call_id, "live").await {
        Ok(r) if r.status().is_success() => r,
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(node = owner, error = %e, "live query not answered by the owner");
            return None;
        }
    };
    let v: Value = resp.json().await.ok()?;
    v.get("stats").cloned().filter(|s| !s.is_null())
}

/// Authenticates an internal request; `None` with the answer to give when it fails.
fn authenticate(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let refuse = |why: &str| {
        tracing::warn!(path, reason = why, "internal request refused");
        Some(ApiError::Unauthorized.into_response())
    };
    let Some(secret) = shared.cfg.node_secret.as_ref() else {
        return refuse("node.secret is not set");
    };
    let Some(header) = headers.get(NODE_HEADER).and_then(|v| v.to_str().ok()) else {
        return refuse("no Dialbridge-Node header");
    };
    match verify(
        secret.expose(),
        header,
        now_ms() / 1000,
        method.as_str(),
        path,
    ) {
        Ok(_) => None,
        Err(why) => refuse(why),
    }
}

/// `POST /internal/v1/calls/{call_id}/hangup`: another node forwards a hang-up.
pub(crate) async fn internal_hangup(
    State(shared): State<Arc<Shared>>,
    Path(call_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/internal/v1/calls/{call_id}/hangup");
    if let Some(refused) = authenticate(&shared, &Method::POST, &path, &headers) {
        return refused;
    }
    if shared.calls.hangup(&call_id).is_err() {
        return ApiError::Conflict {
            code: "call_not_active",
            message: "Call is not active on this server".to_owned(),
        }
        .into_response();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"call_id": call_id, "hangup": "requested"})),
    )
        .into_response()
}

/// `GET /internal/v1/calls/{call_id}/live`: another node asks for a running call's media
/// counters.
pub(crate) async fn internal_live(
    State(shared): State<Arc<Shared>>,
    Path(call_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/internal/v1/calls/{call_id}/live");
    if let Some(refused) = authenticate(&shared, &Method::GET, &path, &headers) {
        return refused;
    }
    axum::Json(json!({"call_id": call_id, "stats": shared.calls.live_stats(&call_id)}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_node_time_method_and_path() {
        let h = sign(
            "s3cret-cluster-key",
            "node-a",
            1_000,
            "POST",
            "/internal/v1/calls/c/hangup",
        );
        assert_eq!(
            verify(
                "s3cret-cluster-key",
                &h,
                1_010,
                "POST",
                "/internal/v1/calls/c/hangup"
            ),
            Ok("node-a".to_owned())
        );
        assert_eq!(
            verify(
                "another-secret-key",
                &h,
                1_010,
                "POST",
                "/internal/v1/calls/c/hangup"
            ),
            Err("bad signature")
        );
        assert_eq!(
            verify(
                "s3cret-cluster-key",
                &h,
                1_010,
                "POST",
                "/internal/v1/calls/d/hangup"
            ),
            Err("bad signature")
        );
        assert_eq!(
            verify(
                "s3cret-cluster-key",
                &h,
                1_010,
                "GET",
                "/internal/v1/calls/c/hangup"
            ),
            Err("bad signature")
        );
        assert_eq!(
            verify(
                "s3cret-cluster-key",
                &h,
                1_031,
                "POST",
                "/internal/v1/calls/c/hangup"
            ),
            Err("expired")
        );
        assert_eq!(
            verify("s3cret-cluster-key", "node=a,t=x", 1_000, "POST", "/"),
            Err("malformed")
        );
        assert_eq!(verify("k", "", 1_000, "POST", "/"), Err("malformed"));
    }
}
