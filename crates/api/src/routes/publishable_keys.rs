//! Publishable keys (SPEC §9.3): `GET /v1/publishable_keys`, `POST /v1/publishable_keys`,
//! `DELETE /v1/publishable_keys/{key}`. A publishable key is public — it goes into a web
//! page — and grants nothing on its own: a browser sends it beside a client secret.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde_json::{json, Value};
use store::PublishableKey;

use crate::error::ApiError;
use crate::http::BearerAccount;
use crate::routes::calls::ErrorBody;
use crate::state::Shared;
use crate::time::{now_ms, rfc3339_ms};

fn view(k: &PublishableKey) -> Value {
    json!({
        "key": k.key,
        "source": k.source,
        "created_at": rfc3339_ms(k.created_at_ms),
    })
}

/// A new publishable key's text: `pk_` and 24 random bytes in hex.
pub fn new_publishable_key() -> String {
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("pk_{}", hex::encode(raw))
}

/// The account's publishable keys, oldest first.
#[utoipa::path(get, path = "/v1/publishable_keys", tag = "browser",
    responses(
        (status = 200, description = "{\"data\": [{\"key\",\"source\",\"created_at\"}]}", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not with a client secret", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_publishable_keys(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
) -> Result<axum::Json<Value>, ApiError> {
    let keys = shared
        .store
        .publishable_keys_for_account(&account.id)
        .await?;
    Ok(axum::Json(
        json!({ "data": keys.iter().map(view).collect::<Vec<_>>() }),
    ))
}

/// Makes a new publishable key for the account.
#[utoipa::path(post, path = "/v1/publishable_keys", tag = "browser",
    responses(
        (status = 201, description = "{\"key\",\"source\":\"api\",\"created_at\"}", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not with a client secret", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_publishable_key(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
) -> Result<Response, ApiError> {
    let key = PublishableKey {
        key: new_publishable_key(),
        account_id: account.id.clone(),
        source: "api".to_owned(),
        created_at_ms: now_ms(),
    };
    shared.store.create_publishable_key(&key).await?;
    Ok((StatusCode::CREATED, axum::Json(view(&key))).into_response())
}

/// Removes a publishable key: pages loaded with it stop working at their next request.
#[utoipa::path(delete, path = "/v1/publishable_keys/{key}", tag = "browser",
    params(("key" = String, Path, description = "pk_…")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not with a client secret", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_publishable_key(
    State(shared): State<Arc<Shared>>,
    BearerAccount(account): BearerAccount,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    if shared
        .store
        .delete_publishable_key(&account.id, &key)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound {
            code: "publishable_key_not_found",
            message: "Publishable key not found",
        })
    }
}
