//! The native call API: `POST /v1/calls`, `GET /v1/calls/{call_id}`, `GET /v1/calls`,
//! `POST /v1/calls/{call_id}/hangup`, `GET /v1/events`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{CallFilter, CallStatus, IdempotencyRecord, TypeId};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::client::{Caller, Scope};
use crate::error::ApiError;
use crate::events::StreamEvent;
use crate::http::{parse_json, JsonBytes, Query};
use crate::place::{place_call, AgentSel, PlaceRequest};
use crate::schemas::{
    CallId, CallStatusName, CallbackUrl, Cursor, DialString, E164Number, EventId, IdempotencyKey,
    TimeFilter, UserId,
};
use crate::state::{Shared, IDEMPOTENCY_TTL_MS};
use crate::time::{now_ms, parse_time_ms, rfc3339_ms};
use crate::views;

/// `POST /v1/calls` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCall {
    /// The agent whose devices ring first.
    #[schema(value_type = UserId)]
    pub user_id: String,
    /// The customer: E.164, local (account region), extension or emergency number.
    #[schema(value_type = DialString)]
    pub dial_string: String,
    /// One of the account's numbers; defaults to a number of the user, then of the account.
    #[serde(default)]
    #[schema(value_type = Option<E164Number>)]
    pub caller_id: Option<String>,
    /// Where status callbacks are POSTed.
    #[serde(default)]
    #[schema(value_type = Option<CallbackUrl>)]
    pub callback_url: Option<String>,
    /// Agent ring time in seconds (default `calls.agent_ring_secs`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 300)]
    pub ring_timeout: Option<u32>,
    /// Returned as given, in the call and its callbacks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Agent confirm: the agent who answers hears a prompt, and the customer is dialled
    /// only after DTMF `1` (within `calls.confirm_secs`, else `no-answer`, leg `agent`).
    /// Default: the account's `confirm_calls`.
    #[serde(default)]
    pub confirm: Option<bool>,
    /// Record both legs (dual-channel WAV, `GET /v1/calls/{call_id}/recording`). Default:
    /// the account's `record_calls`.
    #[serde(default)]
    pub record: Option<bool>,
}

/// The answer to `POST /v1/calls`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct CallAccepted {
    #[schema(value_type = CallId)]
    pub call_id: String,
    /// `queued`.
    #[schema(value_type = CallStatusName)]
    pub status: String,
    #[schema(value_type = UserId)]
    pub user_id: String,
    pub dial_string: String,
    /// The dial string after the dial plan.
    pub destination: Option<String>,
    pub caller_id: Option<String>,
    pub callback_url: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// The error body of every endpoint: `{"error": {"code", "message"}}`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `{"code", "message"}`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, snake_case; each operation lists the codes it may answer.
    pub code: String,
    /// For people; names the field of a 400.
    pub message: String,
}

fn request_hash(body: &[u8]) -> String {
    // Canonical JSON (keys sorted) when it parses, so key order does not matter.
    let canonical = serde_json::from_slice::<Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    hex::encode(Sha256::digest(&canonical))
}

fn json_response(status: StatusCode, body: &str) -> Response {
    let mut resp = (status, body.to_owned()).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn create_call_inner(
    shared: &Arc<Shared>,
    account: &store::Account,
    scope: &Scope,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let req: CreateCall = parse_json(body)?;
    let (user_id, dial_string) = (req.user_id, req.dial_string);
    if !scope.reaches_user(&user_id) {
        return Err(crate::routes::client_sessions::other_user());
    }
    if TypeId::parse_with_prefix(&user_id, store::provision::USER_PREFIX).is_err() {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            "Invalid user_id format",
        ));
    }
    let user = shared
        .user(&user_id)
        .await?
        .filter(|u| u.account_id == account.id)
        .ok_or(ApiError::NotFound {
            code: "user_not_found",
            message: "User not found",
        })?;
    let metadata = match req.metadata {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_metadata",
                "metadata must be a JSON object",
            ))
        }
    };
    let detail = json!({
        "endpoint": "POST /v1/calls",
        "user_id": user_id,
        "dial_string": dial_string,
        "caller_id": req.caller_id,
        "callback_url": req.callback_url,
        "ring_timeout": req.ring_timeout,
        "metadata": metadata,
        "confirm": req.confirm,
        "record": req.record,
    });
    let rec = place_call(
        shared,
        account,
        PlaceRequest {
            agent: AgentSel::User(user),
            dial_string,
            caller_id: req.caller_id,
            default_caller_id: None,
            callback_url: req.callback_url,
            agent_ring_secs: req.ring_timeout,
            metadata,
            request_id: None,
            request_detail: detail,
            confirm: req.confirm,
            record: req.record,
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        json!({
            "call_id": rec.id,
            "status": rec.status.as_str(),
            "user_id": rec.user_id,
            "dial_string": rec.dial_string,
            "destination": rec.destination,
            "caller_id": rec.caller_id,
            "callback_url": rec.callback_url,
            "metadata": rec.metadata,
            "created_at": rfc3339_ms(rec.created_at_ms),
        }),
    ))
}

/// How long a reservation of an `Idempotency-Key` (status 0: its first request is being
/// processed, on any node) holds the key. One older than this belonged to a node that died
/// mid-request, and the key is free again.
const RESERVATION_TTL_MS: i64 = 60_000;

/// Releases the reservation of an idempotency key unless its answer was stored (the request
/// failed transiently, or was dropped), so that a retry may proceed at once.
struct Reservation {
    shared: Arc<Shared>,
    account_id: String,
    key: String,
    done: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = self.shared.clone();
        let (account_id, key) = (self.account_id.clone(), self.key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = shared.store.release_idempotency(&account_id, &key).await {
                    tracing::warn!(error = %e, "idempotency reservation not released (it lapses by itself)");
                }
            });
        }
    }
}

/// Starts a click-to-call.
#[utoipa::path(post, path = "/v1/calls", tag = "calls",
    request_body = CreateCall,
    params(("Idempotency-Key" = Option<IdempotencyKey>, Header, description = "Replays the same answer for 24 h")),
    responses(
        (status = 202, description = "Call queued", body = CallAccepted),
        (status = 400, description = "user_id is required / dial_string is required / Invalid user_id format", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "User not found", body = ErrorBody),
        (status = 422, description = "invalid_destination (with the reason), destination_not_allowed (naming the country or type), caller ID not allowed, bad callback URL, reused Idempotency-Key", body = ErrorBody),
        (status = 429, description = "Rate or concurrency limit (Retry-After)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_call(
    State(shared): State<Arc<Shared>>,
    Caller { account, scope }: Caller,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(s) if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(s.to_owned())
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ))
            }
        },
    };
    let Some(key) = key else {
        let (status, body) = create_call_inner(&shared, &account, &scope, &body).await?;
        return Ok((status, axum::Json(body)).into_response());
    };
    // A client secret's keys live in its user's own space.
    let key = match scope.user() {
        Some(user) => format!("{user}/{key}"),
        None => key,
    };
    let hash = request_hash(&body);
    let now = now_ms();
    // The key is reserved in the store (status 0) before the call is placed: the store is
    // shared by every node, so a key is processed once cluster-wide.
    let reservation = IdempotencyRecord {
        account_id: account.id.clone(),
        key: key.clone(),
        request_hash: hash.clone(),
        response_status: 0,
        response_body: String::new(),
        created_at_ms: now,
    };
    let mut reserved = false;
    for _ in 0..3 {
        if shared.store.put_idempotency(&reservation).await? {
            reserved = true;
            break;
        }
        let Some(prev) = shared.store.get_idempotency(&account.id, &key).await? else {
            continue;
        };
        if prev.created_at_ms <= now - IDEMPOTENCY_TTL_MS {
            shared
                .store
                .purge_idempotency(now - IDEMPOTENCY_TTL_MS)
                .await?;
            continue;
        }
        if prev.response_status == 0 {
            if prev.created_at_ms < now - RESERVATION_TTL_MS {
                shared.store.release_idempotency(&account.id, &key).await?;
                continue;
            }
            return Err(ApiError::Conflict {
                code: "idempotency_key_in_progress",
                message: "A request with this Idempotency-Key is still being processed".to_owned(),
            });
        }
        if prev.request_hash != hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "Idempotency-Key was already used with a different request",
            ));
        }
        let status = StatusCode::from_u16(prev.response_status).unwrap_or(StatusCode::ACCEPTED);
        let mut resp = json_response(status, &prev.response_body);
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(resp);
    }
    if !reserved {
        return Err(ApiError::Conflict {
            code: "idempotency_key_in_progress",
            message: "A request with this Idempotency-Key is still being processed".to_owned(),
        });
    }
    let mut guard = Reservation {
        shared: shared.clone(),
        account_id: account.id.clone(),
        key: key.clone(),
        done: false,
    };
    let (status, body_json) = match create_call_inner(&shared, &account, &scope, &body).await {
        Ok(ok) => ok,
        // Transient refusals are not remembered: a retry with the same key may succeed.
        Err(
            e @ (ApiError::RateLimited { .. } | ApiError::Unavailable { .. } | ApiError::Store(_)),
        ) => return Err(e),
        Err(e) => (e.status(), e.body()),
    };
    let text = body_json.to_string();
    shared
        .store
        .complete_idempotency(&IdempotencyRecord {
            account_id: account.id.clone(),
            key,
            request_hash: hash,
            response_status: status.as_u16(),
            response_body: text.clone(),
            created_at_ms: now,
        })
        .await?;
    guard.done = true;
    Ok(json_response(status, &text))
}

/// A call with its legs, outcome, media stats, timeline and callbacks.
#[utoipa::path(get, path = "/v1/calls/{call_id}", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 200, description = "The call", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_call(
    State(shared): State<Arc<Shared>>,
    Caller { account, scope }: Caller,
    Path(call_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let rec = shared
        .store
        .get_call(&account.id, &call_id)
        .await?
        .filter(|rec| crate::routes::client_sessions::within(&scope, rec))
        .ok_or(ApiError::NotFound {
            code: "call_not_found",
            message: "Call not found",
        })?;
    let timeline = shared.store.timeline(&rec.id).await?;
    let callbacks = shared.store.callbacks_for_call(&rec.id).await?;
    let mut view = views::call_detail(&rec, &timeline, &callbacks);
    if !rec.status.is_final() {
        // A running call: its media counters so far, straight from the relay (of the node
        // that runs it).
        let live = match rec.node_id.as_deref() {
            Some(owner) if owner != shared.cfg.server_id => {
                crate::forward::live_stats(&shared, owner, &rec.id).await
            }
            _ => shared.calls.live_stats(&rec.id),
        };
        if let Some(live) = live {
            view["stats"] = live;
        }
    }
    Ok(axum::Json(view))
}

/// Query of `GET /v1/calls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    user_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Largest page of the call log.
pub const MAX_PAGE: u32 = 100;

/// The call log, newest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/calls", tag = "calls",
    params(
        ("status" = Option<CallStatusName>, Query),
        ("user_id" = Option<UserId>, Query),
        ("since" = Option<TimeFilter>, Query, description = "RFC 3339 or Unix seconds, inclusive"),
        ("until" = Option<TimeFilter>, Query, description = "RFC 3339 or Unix seconds, exclusive"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size, default 20"),
        ("cursor" = Option<Cursor>, Query),
    ),
    responses(
        (status = 200, description = "{\"data\": [...], \"next_cursor\": ...}", body = Object),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_calls(
    State(shared): State<Arc<Shared>>,
    Caller { account, scope }: Caller,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer between 1 and {MAX_PAGE}"),
                ))
            }
        },
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<CallStatus>().map_err(|_| {
            ApiError::bad_request(
                "invalid_status",
                "status must be one of queued, ringing, in-progress, completed, busy, no-answer, failed, canceled",
            )
        })?),
    };
    let time = |v: Option<&str>, name: &'static str| -> Result<Option<i64>, ApiError> {
        match v {
            None | Some("") => Ok(None),
            Some(s) => parse_time_ms(s).map(Some).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_time",
                    format!("{name} must be an RFC 3339 time or Unix seconds"),
                )
            }),
        }
    };
    let mut filter = CallFilter::new(account.id.clone(), limit);
    filter.status = status;
    filter.user_id = match scope.user() {
        Some(user) => Some(user.to_owned()),
        None => q.user_id.filter(|s| !s.is_empty()),
    };
    filter.since_ms = time(q.since.as_deref(), "since")?;
    filter.until_ms = time(q.until.as_deref(), "until")?;
    filter.cursor = q.cursor.filter(|s| !s.is_empty());
    let (page, next) = shared
        .store
        .list_calls(&filter)
        .await
        .map_err(|e| match e {
            store::StoreError::Invalid { .. } => {
                ApiError::bad_request("invalid_cursor", "cursor is not valid")
            }
            other => ApiError::Store(other),
        })?;
    Ok(axum::Json(json!({
        "data": page.iter().map(views::call).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// Ends a call in any state (CANCEL while ringing, BYE when answered).
#[utoipa::path(post, path = "/v1/calls/{call_id}/hangup", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 202, description = "Hang-up requested", body = Object),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Call not found", body = ErrorBody),
        (status = 409, description = "Call has already ended / is not active on its node", body = ErrorBody),
        (status = 503, description = "The node running the call is down or did not answer in time (Retry-After)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn hangup_call(
    State(shared): State<Arc<Shared>>,
    Caller { account, scope }: Caller,
    Path(call_id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = shared
        .store
        .get_call(&account.id, &call_id)
        .await?
        .filter(|rec| crate::routes::client_sessions::within(&scope, rec))
        .ok_or(ApiError::NotFound {
            code: "call_not_found",
            message: "Call not found",
        })?;
    if rec.status.is_final() {
        return Err(ApiError::Conflict {
            code: "call_ended",
            message: format!("Call has already ended ({})", rec.status),
        });
    }
    let mut detail = json!({"endpoint": "POST /v1/calls/{call_id}/hangup"});
    match rec.node_id.as_deref() {
        // A call of another node: its owner hangs it up.
        Some(owner) if owner != shared.cfg.server_id => {
            crate::forward::hangup(&shared, owner, &rec.id).await?;
            detail["forwarded_to"] = owner.into();
        }
        _ => {
            if shared.calls.hangup(&rec.id).is_err() {
                return Err(ApiError::Conflict {
                    code: "call_not_active",
                    message: "Call is not active on this server".to_owned(),
                });
            }
        }
    }
    let _ = shared
        .store
        .append_timeline(
            &rec.id,
            &store::TimelineEntry {
                at_ms: now_ms(),
                kind: "api.hangup".to_owned(),
                leg: None,
                detail: detail.into(),
            },
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"call_id": rec.id, "status": rec.status.as_str(), "hangup": "requested"}),
        ),
    )
        .into_response())
}

/// The call's recording: a dual-channel WAV (8 kHz, 16-bit PCM; the agent on the left, the
/// customer on the right).
#[utoipa::path(get, path = "/v1/calls/{call_id}/recording", tag = "calls",
    params(("call_id" = CallId, Path)),
    responses(
        (status = 200, description = "audio/wav: 8 kHz 16-bit PCM, 2 channels (left: agent, right: customer)", content_type = "audio/wav"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "No such call, or it is not recorded", body = ErrorBody),
        (status = 409, description = "The recording is not finished yet", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_recording(
    State(shared): State<Arc<Shared>>,
    Caller { account, scope }: Caller,
    Path(call_id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = shared
        .store
        .get_call(&account.id, &call_id)
        .await?
        .filter(|rec| crate::routes::client_sessions::within(&scope, rec))
        .ok_or(ApiError::NotFound {
            code: "call_not_found",
            message: "Call not found",
        })?;
    let not_recorded = ApiError::NotFound {
        code: "recording_not_found",
        message: "This call has no recording",
    };
    let state = rec.recording["state"].as_str().unwrap_or("");
    match state {
        "ready" | "incomplete" => {}
        "pending" => {
            return Err(ApiError::Conflict {
                code: "recording_not_ready",
                message: "The recording is not finished yet".to_owned(),
            })
        }
        _ => return Err(not_recorded),
    }
    let Some(file) = rec.recording["file"].as_str() else {
        return Err(not_recorded);
    };
    let bytes = match tokio::fs::read(file).await {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(call_id = %rec.id, file, error = %e, "recording file unreadable");
            return Err(ApiError::NotFound {
                code: "recording_not_found",
                message: "The recording's file is gone (retention, or another node)",
            });
        }
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("audio/wav"),
    );
    Ok(resp)
}

fn sse_event(ev: &StreamEvent) -> Event {
    Event::default()
        .id(ev.id.to_string())
        .event(ev.name)
        .data(ev.data())
}

/// Server-Sent Events of the account's call events, with `Last-Event-ID` resume.
#[utoipa::path(get, path = "/v1/events", tag = "calls",
    params(("Last-Event-ID" = Option<EventId>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(shared): State<Arc<Shared>>,
    Caller { account, scope }: Caller,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    let (mut backlog, rx) = shared.events.subscribe(&account.id, last);
    let user = scope.user().map(str::to_owned);
    backlog.retain(|ev| crate::routes::client_sessions::event_within(user.as_deref(), ev));
    let state = (backlog.into_iter(), rx, account.id, last.unwrap_or(0));
    let stream =
        futures_util::stream::unfold(state, move |(mut backlog, mut rx, acct, mut last)| {
            let user = user.clone();
            async move {
                if let Some(ev) = backlog.next() {
                    last = ev.id;
                    let e = sse_event(&ev);
                    return Some((Ok(e), (backlog, rx, acct, last)));
                }
                loop {
                    match rx.recv().await {
                        Ok(ev)
                            if ev.account_id == acct
                                && ev.id > last
                                && crate::routes::client_sessions::event_within(
                                    user.as_deref(),
                                    &ev,
                                ) =>
                        {
                            last = ev.id;
                            let e = sse_event(&ev);
                            return Some((Ok(e), (backlog, rx, acct, last)));
                        }
                        Ok(_) => continue,
                        // Fell behind: end the stream; the client resumes with Last-Event-ID.
                        Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}
