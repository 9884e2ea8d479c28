//! HTTP plumbing: authentication extractors, the JSON body and query extractors (with the
//! API's own error answers), the request-id and access-log middleware, the fallbacks.
//!
//! Credentials:
//! - native and admin endpoints: `Authorization: Bearer <secret>`;
//! - JustCall-style: `Authorization: <key>:<secret>`, or the same pair as HTTP Basic
//!   (`Authorization: Basic base64(<key>:<secret>)`);
//! - Click-2-Call-style: the `api_key` query parameter (an API secret), checked by its
//!   handlers so that it can answer in its own shape.
//!
//! The access log has method, path (never the query string, which may carry `api_key`),
//! status, latency and request id; headers and bodies are never logged.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use store::Account;
use tracing::Instrument;

use crate::error::{ApiError, JustCallError};
use crate::state::{Shared, BODY_LIMIT};

/// `X-Request-Id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `Authorization` header as text.
fn authorization(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)
}

/// The header by which a platform's secret key acts for a connected account.
pub const ACCOUNT_HEADER: &str = "dialbridge-account";

/// The account of a `Bearer` API secret, or, with `Dialbridge-Account: acct_…`, the
/// connected account that secret's (platform) account acts for (403 `account_not_connected`
/// for any other). A client secret is refused here (403): the routes it may use take
/// [`crate::client::Caller`].
pub struct BearerAccount(pub Account);

impl FromRequestParts<Arc<Shared>> for BearerAccount {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(crate::contract::Authenticated::Bearer(a)) = parts.extensions.get() {
            return Ok(BearerAccount(a.clone()));
        }
        let value = authorization(parts)?;
        let (scheme, secret) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
            return Err(ApiError::Unauthorized);
        }
        if crate::client::has_client_secret(parts) {
            return Err(crate::client::not_for_client_secrets());
        }
        let Some(account) = state.account_by_api_secret(secret.trim()).await? else {
            return Err(ApiError::Unauthorized);
        };
        let Some(target) = parts.headers.get(ACCOUNT_HEADER) else {
            return Ok(BearerAccount(account));
        };
        let target = target.to_str().map(str::trim).unwrap_or("");
        if target == account.id {
            return Ok(BearerAccount(account));
        }
        let connected = if target.is_empty() {
            None
        } else {
            state.store.account(target).await?
        };
        match connected {
            Some(a) if a.platform.as_deref() == Some(account.id.as_str()) => Ok(BearerAccount(a)),
            _ => Err(ApiError::Forbidden {
                code: "account_not_connected",
                message: "The account in Dialbridge-Account is not connected to this platform",
            }),
        }
    }
}

/// The account of a JustCall-style `Authorization: <key>:<secret>`.
pub struct KeyPairAccount(pub Account);

impl FromRequestParts<Arc<Shared>> for KeyPairAccount {
    type Rejection = JustCallError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(crate::contract::Authenticated::KeyPair(a)) = parts.extensions.get() {
            return Ok(KeyPairAccount(a.clone()));
        }
        let value = authorization(parts)?.trim();
        let basic = match value.split_once(' ') {
            Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => {
                Some(decode_basic(b64.trim()).ok_or(ApiError::Unauthorized)?)
            }
            _ => None,
        };
        let value = basic.as_deref().unwrap_or(value);
        let (key, secret) = value.split_once(':').ok_or(ApiError::Unauthorized)?;
        if key.is_empty() || secret.is_empty() {
            return Err(ApiError::Unauthorized.into());
        }
        match state.store.account_by_key_pair(key, secret).await? {
            Some(a) => Ok(KeyPairAccount(a)),
            None => Err(ApiError::Unauthorized.into()),
        }
    }
}

/// The `key:secret` text of HTTP Basic credentials (RFC 7617), when it is standard base64
/// of UTF-8.
fn decode_basic(b64: &str) -> Option<String> {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(b64.len() / 4 * 3);
    let body = b64.trim_end_matches('=');
    if b64.len() % 4 != 0 || b64.len() - body.len() > 2 {
        return None;
    }
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn is_json(parts_ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = parts_ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5
            && mime[..mime.len() - 5].starts_with("application/")
            && mime.to_ascii_lowercase().ends_with("+json"))
}

/// A JSON body's raw bytes: `application/json`, at most [`BODY_LIMIT`] bytes.
pub struct JsonBytes(pub Bytes);

impl FromRequest<Arc<Shared>> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: BODY_LIMIT }
            } else {
                ApiError::bad_request("invalid_body", "Request body could not be read")
            }
        })?;
        Ok(JsonBytes(bytes))
    }
}

/// Parses a JSON body, answering 400 with serde's message on syntax and type errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "Request body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("Invalid JSON body: {e}")))
}

/// A parsed JSON body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Shared>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A query string parsed into `T`, answering 400 with a clear message.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// Request id (echoed or generated), a tracing span per request, and one access-log line.
pub async fn access_log(
    State(state): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(valid_request_id)
        .unwrap_or_else(|| format!("req_{}", hex::encode(rand::random::<[u8; 12]>())));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        req.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    let method = req.method().clone();
    // The path only: query strings may carry credentials (Click-2-Call `api_key`).
    let path = req.uri().path().to_owned();
    let span =
        tracing::info_span!("http", request_id = %request_id, method = %method, path = %path);
    let mut resp = next.run(req).instrument(span.clone()).await;
    state.metrics.http_request();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    let _g = span.enter();
    tracing::info!(
        status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Known routes, unknown methods.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let ok = |s: &str| is_json(Some(&HeaderValue::from_str(s).unwrap()));
        assert!(ok("application/json"));
        assert!(ok("application/json; charset=utf-8"));
        assert!(ok("Application/JSON"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!is_json(None));
    }

    #[test]
    fn request_ids() {
        let v = |s: &str| valid_request_id(&HeaderValue::from_str(s).unwrap());
        assert_eq!(v("abc-123"), Some("abc-123".into()));
        assert_eq!(v("bad id"), None);
        assert_eq!(v(&"x".repeat(200)), None);
    }
}
