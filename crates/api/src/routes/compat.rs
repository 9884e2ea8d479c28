//! The compatibility shapes (SPEC §5): JustCall-style `POST /v2/calls/make` and
//! Click-2-Call-style `GET /click2call` and `GET /click2call/status/{request_id}`, mapped onto
//! the same call path as the native API.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Uri;
use b2bua::dialplan::{self, Dialled};
use serde::Deserialize;
use serde_json::{json, Value};
use store::{Account, TypeId};
use utoipa::ToSchema;

use crate::error::{ApiError, JustCallError};
use crate::http::{Json, KeyPairAccount};
use crate::place::{check_number, check_ring, place_call, AgentSel, PlaceRequest};
use crate::schemas::{CallbackUrl, DialString, E164Number};
use crate::state::Shared;
use crate::views;

/// `POST /v2/calls/make` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeCall {
    /// One of the account's numbers, in any dialable form; its owner is the default agent.
    #[schema(value_type = DialString)]
    pub from: String,
    /// The customer's number.
    #[schema(value_type = DialString)]
    pub to: String,
    /// The agent's numeric id; defaults to the owner of `from`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub agent_id: Option<i64>,
    #[serde(default)]
    #[schema(value_type = Option<CallbackUrl>)]
    pub callback_url: Option<String>,
    /// One of the account's numbers; defaults to `from`.
    #[serde(default)]
    #[schema(value_type = Option<E164Number>)]
    pub caller_id: Option<String>,
}

/// JustCall-style: rings the agent, then calls `to`.
#[utoipa::path(post, path = "/v2/calls/make", tag = "compat", request_body = MakeCall,
    responses(
        (status = 200, description = "{\"status\":\"success\",\"message\":\"Call initiated\",\"data\":{...}}", body = Object),
        (status = 400, description = "from is required / to is required", body = Object),
        (status = 401, description = "Unauthorized", body = Object),
        (status = 404, description = "from is not a number of the account / Agent not found", body = Object),
        (status = 422, description = "invalid_destination / destination_not_allowed / caller ID not allowed", body = Object),
        (status = 429, description = "Rate or concurrency limit (Retry-After)", body = Object),
    ),
    security(("key_pair" = [])))]
pub async fn make_call(
    State(shared): State<Arc<Shared>>,
    KeyPairAccount(account): KeyPairAccount,
    Json(req): Json<MakeCall>,
) -> Result<axum::Json<Value>, JustCallError> {
    let (from, to) = (req.from, req.to);
    // `from` may be written in any dialable form of a number.
    let from_e164 = match dialplan::normalize(&from, &account.region) {
        Ok(Dialled::E164(n)) => n,
        _ => from.clone(),
    };
    let number = shared
        .store
        .number(&from_e164)
        .await?
        .filter(|n| n.account_id == account.id)
        .ok_or(ApiError::NotFound {
            code: "number_not_found",
            message: "from is not a number of this account",
        })?;
    const AGENT_NOT_FOUND: ApiError = ApiError::NotFound {
        code: "agent_not_found",
        message: "Agent not found",
    };
    let user = match req.agent_id {
        Some(id) => shared
            .store
            .user_by_agent_id(&account.id, id)
            .await?
            .ok_or(AGENT_NOT_FOUND)?,
        None => {
            let owner = number.owner_user_id.as_deref().ok_or_else(|| {
                ApiError::unprocessable("agent_required", "from has no owner: give agent_id")
            })?;
            shared
                .store
                .user(owner)
                .await?
                .filter(|u| u.account_id == account.id)
                .ok_or(AGENT_NOT_FOUND)?
        }
    };
    let detail = json!({
        "endpoint": "POST /v2/calls/make",
        "from": from, "to": to, "agent_id": req.agent_id,
        "callback_url": req.callback_url, "caller_id": req.caller_id,
    });
    let agent_id = user.agent_id;
    let rec = place_call(
        &shared,
        &account,
        PlaceRequest {
            agent: AgentSel::User(user),
            dial_string: to.clone(),
            caller_id: req.caller_id,
            default_caller_id: Some(number.number.clone()),
            callback_url: req.callback_url,
            agent_ring_secs: None,
            metadata: json!({}),
            request_id: None,
            request_detail: detail,
            confirm: None,
            record: None,
        },
    )
    .await?;
    Ok(axum::Json(json!({
        "status": "success",
        "message": "Call initiated",
        "data": {
            "call_id": rec.id,
            "from": number.number,
            "to": rec.destination.unwrap_or(to),
            "agent_id": agent_id,
            "direction": "outbound",
            "status": "ringing",
        }
    })))
}

/// Query of `GET /click2call`.
#[derive(Debug, Default, Deserialize)]
pub struct Click2CallQuery {
    api_key: Option<String>,
    dial_first: Option<String>,
    dial_second: Option<String>,
    timeout: Option<String>,
    dial_as: Option<String>,
    pbx: Option<String>,
}

/// TypeID prefix of Click-2-Call request ids.
pub const REQUEST_PREFIX: &str = "req";

fn c2c_answer(shared: &Shared, request_id: &str, errors: Vec<String>, extra: Value) -> Value {
    let mut response = json!({
        "request_id": request_id,
        "status": if errors.is_empty() { "success" } else { "fail" },
        "errors": errors,
        "server_id": shared.cfg.server_id,
    });
    if let (Some(r), Value::Object(extra)) = (response.as_object_mut(), extra) {
        r.extend(extra);
    }
    json!({ "response": response })
}

async fn c2c_account(shared: &Shared, api_key: Option<&str>) -> Result<Account, ApiError> {
    let key = api_key
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    shared
        .account_by_api_secret(key)
        .await?
        .ok_or(ApiError::Unauthorized)
}

async fn click2call_inner(
    shared: &Arc<Shared>,
    q: Click2CallQuery,
    request_id: &str,
) -> Result<Value, ApiError> {
    let account = c2c_account(shared, q.api_key.as_deref()).await?;
    let first = q
        .dial_first
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_dial_first", "dial_first is required"))?;
    let second = q
        .dial_second
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_dial_second", "dial_second is required"))?;
    let timeout = match q.timeout.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| {
            ApiError::bad_request(
                "invalid_timeout",
                "timeout must be a whole number of seconds",
            )
        })?),
    };
    check_ring(shared, timeout, "timeout")?;
    let pbx = q.pbx.filter(|s| !s.is_empty());
    if let Some(name) = &pbx {
        let visible = shared
            .trunks_for_account(&account.id)
            .await?
            .iter()
            .any(|t| &t.name == name);
        if !visible {
            return Err(ApiError::unprocessable(
                "unknown_pbx",
                "pbx is not a trunk of this account",
            ));
        }
    }
    // dial_first: a user (TypeID), a user's extension, or a number on the PBX trunk.
    let by_id = shared
        .store
        .user(first.trim())
        .await?
        .filter(|u| u.account_id == account.id);
    let by_ext = match by_id {
        Some(_) => None,
        None => {
            shared
                .store
                .user_by_extension(&account.id, first.trim())
                .await?
        }
    };
    let agent = match by_id.or(by_ext) {
        Some(u) if pbx.is_none() => AgentSel::User(u),
        _ => {
            let number = match dialplan::normalize(&first, &account.region) {
                Ok(Dialled::E164(n)) => {
                    // A number on a trunk is dialled like any other: the same guard.
                    let _ = check_number(&account, &n)?;
                    n
                }
                Ok(Dialled::Extension(x)) => x,
                Ok(Dialled::Emergency(_)) => {
                    return Err(ApiError::unprocessable(
                        "invalid_dial_first",
                        "dial_first cannot be an emergency number",
                    ))
                }
                Err(e) => {
                    return Err(ApiError::unprocessable(
                        "invalid_dial_first",
                        format!("dial_first is not dialable: {e}"),
                    ))
                }
            };
            if shared.trunks_for_account(&account.id).await?.is_empty() {
                return Err(ApiError::unprocessable(
                    "no_route",
                    "No trunk is available to reach dial_first",
                ));
            }
            AgentSel::Trunk {
                number,
                dial_as: q.dial_as.clone().filter(|s| !s.is_empty()),
                trunk: pbx.clone(),
            }
        }
    };
    // dial_as is also the caller ID shown to the customer when it is one of the account's
    // numbers.
    let default_caller_id = match q.dial_as.as_deref().filter(|s| !s.is_empty()) {
        Some(d) => shared
            .store
            .number(d)
            .await?
            .filter(|n| n.account_id == account.id)
            .map(|n| n.number),
        None => None,
    };
    let detail = json!({
        "endpoint": "GET /click2call",
        "request_id": request_id,
        "dial_first": first, "dial_second": second,
        "timeout": timeout, "dial_as": q.dial_as, "pbx": pbx,
    });
    let rec = place_call(
        shared,
        &account,
        PlaceRequest {
            agent,
            dial_string: second,
            caller_id: None,
            default_caller_id,
            callback_url: None,
            agent_ring_secs: timeout,
            metadata: json!({}),
            request_id: Some(request_id.to_owned()),
            request_detail: detail,
            confirm: None,
            record: None,
        },
    )
    .await?;
    Ok(json!({ "call_id": rec.id }))
}

/// Click-2-Call-style: always `200` with `{"response": {...}}`.
#[utoipa::path(get, path = "/click2call", tag = "compat",
    params(
        ("dial_first" = String, Query, description = "Agent leg: extension, user id or number"),
        ("dial_second" = String, Query, description = "Customer"),
        ("timeout" = Option<u32>, Query, description = "Agent ring time, seconds"),
        ("dial_as" = Option<String>, Query, description = "Identity the PBX sees"),
        ("pbx" = Option<String>, Query, description = "Trunk name for the agent leg"),
    ),
    responses((status = 200, description = "Always 200, as the Click-2-Call shape requires: `{\"response\":{\"request_id\",\"status\":\"success\"|\"fail\",\"errors\":[...],\"server_id\"}}`; a request that is not valid, not authorised or refused is answered `status: \"fail\"` with the reasons in `errors`", body = Object)),
    security(("c2c_api_key" = [])))]
pub async fn click2call(State(shared): State<Arc<Shared>>, uri: Uri) -> axum::Json<Value> {
    let request_id = TypeId::new(REQUEST_PREFIX).to_string();
    let result = match axum::extract::Query::<Click2CallQuery>::try_from_uri(&uri) {
        Ok(q) => click2call_inner(&shared, q.0, &request_id).await,
        Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
    };
    axum::Json(match result {
        Ok(extra) => c2c_answer(&shared, &request_id, Vec::new(), extra),
        Err(e) => {
            if let ApiError::Store(err) = &e {
                tracing::error!(error = %err, "store error");
            }
            c2c_answer(&shared, &request_id, vec![e.message()], json!({}))
        }
    })
}

/// The whole timeline of a Click-2-Call request.
#[utoipa::path(get, path = "/click2call/status/{request_id}", tag = "compat",
    params(
        ("request_id" = String, Path),
    ),
    responses((status = 200, description = "Always 200: `{\"response\":{..., \"call_id\", \"call_status\", \"timeline\": [...]}}`, or `status: \"fail\"` with the reasons in `errors`", body = Object)),
    security(("c2c_api_key" = [])))]
pub async fn click2call_status(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    uri: Uri,
) -> axum::Json<Value> {
    let q = axum::extract::Query::<Click2CallQuery>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let result: Result<Value, ApiError> = async {
        let account = c2c_account(&shared, q.api_key.as_deref()).await?;
        let rec = shared
            .store
            .call_by_request_id(&account.id, &request_id)
            .await?
            .ok_or(ApiError::NotFound {
                code: "request_not_found",
                message: "Request not found",
            })?;
        let timeline = shared.store.timeline(&rec.id).await?;
        let callbacks = shared.store.callbacks_for_call(&rec.id).await?;
        let call = views::call_detail(&rec, &timeline, &callbacks);
        Ok(json!({
            "call_id": rec.id,
            "call_status": rec.status.as_str(),
            "call": call,
            "timeline": timeline.iter().map(views::timeline_entry).collect::<Vec<_>>(),
        }))
    }
    .await;
    axum::Json(match result {
        Ok(extra) => c2c_answer(&shared, &request_id, Vec::new(), extra),
        Err(e) => c2c_answer(&shared, &request_id, vec![e.message()], json!({})),
    })
}
