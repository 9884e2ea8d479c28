//! The browser side (SPEC §9.3): `POST /v1/client_sessions`, `GET /v1/client_sessions`,
//! `DELETE /v1/client_sessions/{session_id}` (with a secret key), and the rules by which a
//! client secret reaches only its own user's calls (used by the call routes).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{CallRecord, TypeId};
use utoipa::ToSchema;

use crate::client::{ClientSession, Scope, DEFAULT_TTL_SECS, TTL_RANGE_SECS};
use crate::error::ApiError;
use crate::events::StreamEvent;
use crate::http::{BearerAccount, Json};
use crate::routes::calls::ErrorBody;
use crate::schemas::UserId;
use crate::state::Shared;
use crate::time::{now_ms, rfc3339_ms};

/// `POST /v1/client_sessions` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClientSession {
    /// The user (TypeID `user_…`) whose calls the client secret may place, watch and hang up.
    #[schema(value_type = UserId)]
    pub user_id: String,
    /// Lifetime in seconds, 60 to 86400; default 900.
    #[serde(default)]
    #[schema(minimum = 60, maximum = 86400)]
    pub expires_in: Option<u32>,
}

/// A client session. `client_secret` is in the answer to its creation only.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientSessionView {
    /// `clisess_…`: names the session to revoke it.
    pub id: String,
    /// `cs_…`: hand it to the browser; shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub user_id: String,
    pub created_at: String,
    pub expires_at: String,
}

fn view(s: &ClientSession, secret: Option<String>) -> ClientSessionView {
    ClientSessionView {
        id: s.id.clone(),
        client_secret: secret,
        user_id: s.user_id.clone(),
        created_at: rfc3339_ms(s.created_at_ms),
        expires_at: rfc3339_ms(s.expires_at_ms),
    }
}

/// The refusal of a client secret asking for another user's call.
pub(crate) fn other_user() -> ApiError {
    ApiError::Forbidden {
        code: "user_not_allowed",
        message: "A client secret may only place calls for its own user",
    }
}

/// Whether `rec` is within the reach of `scope` (a client secret reaches its user's calls).
pub(crate) fn within(scope: &Scope, rec: &CallRecord) -> bool {
    match scope {
        Scope::Account => true,
        Scope::User(u) => rec.user_id.as_deref() == Some(u.as_str()),
    }
}

/// Whether an event of the live stream goes to a subscriber scoped to `user` (all of the
/// account's events when `None`).
pub(crate) fn event_within(user: Option<&str>, ev: &StreamEvent) -> bool {
    let Some(user) = user else {
        return true;
    };
    ev.user_id.as_deref() == Some(user)
}

/// Makes a short-lived client secret that lets a browser act for one user: place, watch and
/// hang up that user's calls, and nothing else. Call it from the application's backend with
/// a secret key; the browser sends the secret with a publishable key of the account.
#[utoipa::path(post, path = "/v1/client_sessions", tag = "browser",
    request_body = CreateClientSession,
    responses(
        (status = 201, description = "The session, with its client_secret (shown once)", body = ClientSessionView),
        (status = 400, description = "user_id is required / Invalid user_id format / bad expires_in", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "A client secret cannot make client sessions; account not connected", body = ErrorBody),
        (status = 404, description = "User not found", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_client_session(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Json(req): Json<CreateClientSession>,
) -> Result<Response, ApiError> {
    let user_id = req.user_id;
    if TypeId::parse_with_prefix(&user_id, store::provision::USER_PREFIX).is_err() {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            "Invalid user_id format",
        ));
    }
    let ttl = req.expires_in.unwrap_or(DEFAULT_TTL_SECS);
    if !TTL_RANGE_SECS.contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_expires_in",
            format!(
                "expires_in must be between {} and {} seconds",
                TTL_RANGE_SECS.start(),
                TTL_RANGE_SECS.end()
            ),
        ));
    }
    shared
        .store
        .user(&user_id)
        .await?
        .filter(|u| u.account_id == account.id)
        .ok_or(ApiError::NotFound {
            code: "user_not_found",
            message: "User not found",
        })?;
    let (session, secret) = shared
        .client_sessions
        .create(&account.id, &user_id, now_ms(), ttl);
    tracing::info!(session = %session.id, user = %user_id, account = %account.id, "client session created");
    Ok((
        StatusCode::CREATED,
        axum::Json(view(&session, Some(secret))),
    )
        .into_response())
}

/// The account's client sessions that have not expired (without their secrets).
#[utoipa::path(get, path = "/v1/client_sessions", tag = "browser",
    responses(
        (status = 200, description = "{\"data\": [session, ...]}", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not with a client secret", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_client_sessions(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
) -> axum::Json<Value> {
    let data: Vec<_> = shared
        .client_sessions
        .list(&account.id, now_ms())
        .iter()
        .map(|s| view(s, None))
        .collect();
    axum::Json(json!({ "data": data }))
}

/// Revokes a client session: its secret stops working at once.
#[utoipa::path(delete, path = "/v1/client_sessions/{session_id}", tag = "browser",
    params(("session_id" = String, Path, description = "clisess_…")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not with a client secret", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn revoke_client_session(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if shared.client_sessions.revoke(&account.id, &session_id) {
        tracing::info!(session = %session_id, account = %account.id, "client session revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound {
            code: "client_session_not_found",
            message: "Client session not found",
        })
    }
}
