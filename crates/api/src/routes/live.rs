//! Live call control (SPEC §9.7): `POST /v1/calls/{call_id}/transfer` (+ `/complete`,
//! `/cancel`), `/hold`, `/unhold`, `/mute`, `/monitor`, `PATCH` / `DELETE
//! /v1/calls/{call_id}/monitor/{monitor_id}`.
//!
//! Each finds the call in the caller's account, checks what it can here (the transfer's
//! destination through the same dial plan and guards as `POST /v1/calls`: a transfer is a
//! classic toll-fraud path), writes an `api.<command>` timeline entry and hands the command to
//! the call engine, whose answer (or refusal: 409 `call_not_in_progress`, 409
//! `codec_not_mixable`) is the route's. What then happens on the call (held, resumed,
//! transferred, monitor started / ended) comes as call events: timeline, event stream and
//! signed callbacks.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use b2bua::calls::{ControlError, Leg, LiveCommand, MonitorMode, TransferTo};
use serde::Deserialize;
use serde_json::{json, Value};
use store::{CallRecord, TypeId};
use utoipa::ToSchema;

use crate::client::Caller;
use crate::error::ApiError;
use crate::http::{parse_json, JsonBytes};
use crate::schemas::{CallId, DialString, UserId};
use crate::state::Shared;
use crate::time::now_ms;

/// TypeID prefix of monitors.
pub const MONITOR_PREFIX: &str = "mon";

/// Whom a transfer goes to: a user of the account, or a dial string.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferDestination {
    /// A user of the account (their registered devices ring).
    #[serde(default)]
    #[schema(value_type = Option<UserId>)]
    pub user_id: Option<String>,
    /// A number or extension, through the account's dial plan and guards.
    #[serde(default)]
    #[schema(value_type = Option<DialString>)]
    pub dial_string: Option<String>,
}

/// `POST /v1/calls/{call_id}/transfer` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub to: TransferDestination,
    /// `blind`: the customer is bridged to the target when it answers, and the agent is
    /// released. `warm`: the target first talks with the agent while the customer is held;
    /// then `…/transfer/complete` or `…/transfer/cancel`.
    #[schema(value_type = String, pattern = "^(blind|warm)$")]
    pub mode: String,
}

/// `POST /v1/calls/{call_id}/mute` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    /// Whose audio the relay stops (or resumes) relaying.
    #[schema(value_type = String, pattern = "^(agent|customer)$")]
    pub leg: String,
    pub muted: bool,
}

/// `POST /v1/calls/{call_id}/monitor` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorRequest {
    /// The supervisor, whose registered devices ring.
    #[schema(value_type = UserId)]
    pub user_id: String,
    /// `listen`: hears both sides. `whisper`: the agent alone also hears the supervisor.
    /// `barge`: both sides hear the supervisor.
    #[schema(value_type = String, pattern = "^(listen|whisper|barge)$")]
    pub mode: String,
}

/// `PATCH /v1/calls/{call_id}/monitor/{monitor_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorUpdate {
    #[schema(value_type = String, pattern = "^(listen|whisper|barge)$")]
    pub mode: String,
}

fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "call_not_found",
        message: "Call not found",
    }
}

fn not_in_progress(message: impl Into<String>) -> ApiError {
    ApiError::Conflict {
        code: "call_not_in_progress",
        message: message.into(),
    }
}

/// The call, in the caller's account (and a client session's scope), not ended.
async fn live_call(
    shared: &Shared,
    caller: &Caller,
    call_id: &str,
) -> Result<CallRecord, ApiError> {
    let rec = shared
        .store
        .get_call(&caller.account.id, call_id)
        .await?
        .filter(|rec| crate::routes::client_sessions::within(&caller.scope, rec))
        .ok_or_else(not_found)?;
    if rec.status.is_final() {
        return Err(not_in_progress(format!(
            "Call has already ended ({})",
            rec.status
        )));
    }
    Ok(rec)
}

/// Hands a command to the call and notes it in the timeline.
async fn run(
    shared: &Shared,
    rec: &CallRecord,
    endpoint: &str,
    kind: &str,
    cmd: LiveCommand,
    detail: Value,
) -> Result<Value, ApiError> {
    let answer = shared
        .calls
        .control(&rec.id, cmd)
        .await
        .map_err(|e| match e {
            ControlError::NotActive => not_in_progress("Call is not in progress on this server"),
            ControlError::NotInProgress(m) => not_in_progress(m),
            ControlError::CodecNotMixable(m) => ApiError::Conflict {
                code: "codec_not_mixable",
                message: m,
            },
            ControlError::NoSuchMonitor => ApiError::NotFound {
                code: "monitor_not_found",
                message: "Monitor not found on this call",
            },
            ControlError::TargetUnavailable(m) => ApiError::unprocessable("target_unavailable", m),
        })?;
    let mut detail = detail;
    if let Some(o) = detail.as_object_mut() {
        o.insert("endpoint".into(), json!(endpoint));
    }
    let _ = shared
        .store
        .append_timeline(
            &rec.id,
            &store::TimelineEntry {
                at_ms: now_ms(),
                kind: kind.to_owned(),
                leg: None,
                detail: detail.into(),
            },
        )
        .await;
    Ok(answer)
}

fn accepted(rec: &CallRecord, extra: Value) -> Response {
    let mut body = json!({"call_id": rec.id});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// Transfers the call (blind or warm) to a user's devices or a dial string.
#[utoipa::path(post, path = "/v1/calls/{call_id}/transfer", tag = "calls",
    params(("call_id" = CallId, Path)),
    request_body = TransferRequest,
    responses(
        (status = 202, description = "The target is being called", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress", body = ErrorBody),
        (status = 422, description = "destination_not_allowed and the other refusals of POST /v1/calls; target_unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn transfer(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let req: TransferRequest = parse_json(&body)?;
    let warm = match req.mode.as_str() {
        "blind" => false,
        "warm" => true,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_mode",
                "mode is blind or warm",
            ))
        }
    };
    let rec = live_call(&shared, &caller, &call_id).await?;
    let to = match (&req.to.user_id, &req.to.dial_string) {
        (Some(u), None) => {
            let user = shared
                .store
                .user(u)
                .await?
                .filter(|x| x.account_id == caller.account.id)
                .ok_or(ApiError::NotFound {
                    code: "user_not_found",
                    message: "User not found",
                })?;
            TransferTo::User { user_id: user.id }
        }
        (None, Some(d)) => {
            // The same dial plan and guards as a new call: nothing outside them is dialled.
            let (_, target, _) =
                crate::place::resolve_destination(&shared, &caller.account, d).await?;
            match target {
                b2bua::calls::CustomerTarget::E164(n) => TransferTo::Number { e164: n },
                b2bua::calls::CustomerTarget::User { user_id } => TransferTo::User { user_id },
                b2bua::calls::CustomerTarget::Emergency(_) => {
                    return Err(ApiError::unprocessable(
                        "destination_not_allowed",
                        "Emergency numbers are not transfer targets",
                    ))
                }
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_to",
                "to takes exactly one of user_id and dial_string",
            ))
        }
    };
    let label = to.label();
    let answer = run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/transfer",
        "api.transfer",
        LiveCommand::Transfer { to, warm },
        json!({"to": label, "mode": req.mode}),
    )
    .await?;
    Ok(accepted(
        &rec,
        json!({"transfer": answer, "mode": req.mode}),
    ))
}

/// Completes a warm transfer: the customer is bridged to the target, the agent released.
#[utoipa::path(post, path = "/v1/calls/{call_id}/transfer/complete", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 202, description = "Completing", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress (no warm transfer under way)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn transfer_complete(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = live_call(&shared, &caller, &call_id).await?;
    let a = run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/transfer/complete",
        "api.transfer_complete",
        LiveCommand::CompleteTransfer,
        json!({}),
    )
    .await?;
    Ok(accepted(&rec, json!({"transfer": a})))
}

/// Cancels a transfer: the target is released, the agent and customer talk again.
#[utoipa::path(post, path = "/v1/calls/{call_id}/transfer/cancel", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 202, description = "Cancelled", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress (no transfer under way)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn transfer_cancel(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = live_call(&shared, &caller, &call_id).await?;
    let a = run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/transfer/cancel",
        "api.transfer_cancel",
        LiveCommand::CancelTransfer,
        json!({}),
    )
    .await?;
    Ok(accepted(&rec, json!({"transfer": a})))
}

/// Puts the customer on hold (`a=sendonly` by re-INVITE; the agent's audio stops).
#[utoipa::path(post, path = "/v1/calls/{call_id}/hold", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 202, description = "Hold requested", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn hold(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = live_call(&shared, &caller, &call_id).await?;
    let a = run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/hold",
        "api.hold",
        LiveCommand::Hold,
        json!({}),
    )
    .await?;
    Ok(accepted(&rec, a))
}

/// Takes the customer off hold.
#[utoipa::path(post, path = "/v1/calls/{call_id}/unhold", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 202, description = "Resume requested", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn unhold(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = live_call(&shared, &caller, &call_id).await?;
    let a = run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/unhold",
        "api.unhold",
        LiveCommand::Unhold,
        json!({}),
    )
    .await?;
    Ok(accepted(&rec, a))
}

/// Stops (or resumes) relaying one party's audio; no signalling.
#[utoipa::path(post, path = "/v1/calls/{call_id}/mute", tag = "calls",
    params(("call_id" = CallId, Path)),
    request_body = MuteRequest,
    responses(
        (status = 200, description = "Muted or unmuted", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn mute(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let req: MuteRequest = parse_json(&body)?;
    let leg = match req.leg.as_str() {
        "agent" => Leg::Agent,
        "customer" => Leg::Customer,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_leg",
                "leg is agent or customer",
            ))
        }
    };
    let rec = live_call(&shared, &caller, &call_id).await?;
    let a = run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/mute",
        "api.mute",
        LiveCommand::Mute {
            leg,
            muted: req.muted,
        },
        json!({"leg": req.leg, "muted": req.muted}),
    )
    .await?;
    let mut body = json!({"call_id": rec.id});
    if let (Some(b), Some(e)) = (body.as_object_mut(), a.as_object()) {
        b.extend(e.clone());
    }
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

fn mode_of(s: &str) -> Result<MonitorMode, ApiError> {
    MonitorMode::parse(s)
        .ok_or_else(|| ApiError::bad_request("invalid_mode", "mode is listen, whisper or barge"))
}

/// Rings a supervisor's devices; once answered they hear the call (`listen`), or also speak
/// to the agent (`whisper`) or to both (`barge`).
#[utoipa::path(post, path = "/v1/calls/{call_id}/monitor", tag = "calls",
    params(("call_id" = CallId, Path)),
    request_body = MonitorRequest,
    responses(
        (status = 201, description = "The supervisor is being called: {\"monitor_id\"}", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call or user not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress, codec_not_mixable", body = ErrorBody),
        (status = 422, description = "target_unavailable (no registered device)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn monitor(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path(call_id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let req: MonitorRequest = parse_json(&body)?;
    let mode = mode_of(&req.mode)?;
    let rec = live_call(&shared, &caller, &call_id).await?;
    let user = shared
        .store
        .user(&req.user_id)
        .await?
        .filter(|u| u.account_id == caller.account.id)
        .ok_or(ApiError::NotFound {
            code: "user_not_found",
            message: "User not found",
        })?;
    let monitor_id = TypeId::new(MONITOR_PREFIX).to_string();
    run(
        &shared,
        &rec,
        "POST /v1/calls/{call_id}/monitor",
        "api.monitor",
        LiveCommand::Monitor {
            monitor_id: monitor_id.clone(),
            user_id: user.id.clone(),
            mode,
        },
        json!({"monitor_id": monitor_id, "user_id": user.id, "mode": req.mode}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"call_id": rec.id, "monitor_id": monitor_id, "mode": req.mode})),
    )
        .into_response())
}

/// Changes a monitor's mode mid-call.
#[utoipa::path(patch, path = "/v1/calls/{call_id}/monitor/{monitor_id}", tag = "calls",
    params(("call_id" = CallId, Path), ("monitor_id" = String, Path)),
    request_body = MonitorUpdate,
    responses(
        (status = 200, description = "Mode changed", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call or monitor not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn update_monitor(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path((call_id, monitor_id)): Path<(String, String)>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let req: MonitorUpdate = parse_json(&body)?;
    let mode = mode_of(&req.mode)?;
    let rec = live_call(&shared, &caller, &call_id).await?;
    run(
        &shared,
        &rec,
        "PATCH /v1/calls/{call_id}/monitor/{monitor_id}",
        "api.monitor_mode",
        LiveCommand::SetMonitorMode {
            monitor_id: monitor_id.clone(),
            mode,
        },
        json!({"monitor_id": monitor_id, "mode": req.mode}),
    )
    .await?;
    Ok(
        axum::Json(json!({"call_id": rec.id, "monitor_id": monitor_id, "mode": req.mode}))
            .into_response(),
    )
}

/// Ends a monitor; the call goes on.
#[utoipa::path(delete, path = "/v1/calls/{call_id}/monitor/{monitor_id}", tag = "calls",
    params(("call_id" = CallId, Path), ("monitor_id" = String, Path)),
    responses(
        (status = 204, description = "Monitor ended"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call or monitor not found", body = ErrorBody),
        (status = 409, description = "call_not_in_progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn end_monitor(
    State(shared): State<Arc<Shared>>,
    caller: Caller,
    Path((call_id, monitor_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rec = live_call(&shared, &caller, &call_id).await?;
    run(
        &shared,
        &rec,
        "DELETE /v1/calls/{call_id}/monitor/{monitor_id}",
        "api.monitor_end",
        LiveCommand::EndMonitor {
            monitor_id: monitor_id.clone(),
        },
        json!({"monitor_id": monitor_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[allow(unused_imports)]
use crate::routes::calls::ErrorBody;
