//! `GET /healthz`, `GET /metrics`, `GET /openapi.json`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::json;
use utoipa::OpenApi;

use crate::routes::{
    admin, calls, client_sessions, compat, console, live, lookup, publishable_keys,
};
use crate::schemas;
use crate::state::Shared;
use crate::views;

/// Health: `200 {"status": "ok"}`, or `503 {"status": "degraded", "store": "<reason>"}` while
/// the store refuses writes or too many call events wait for it, so that a load balancer
/// sends new work elsewhere. The store is probed with a small write at most once a second.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses(
        (status = 200, description = "{\"status\":\"ok\"}", body = Object),
        (status = 503, description = "{\"status\":\"degraded\",\"store\":\"<reason>\"}", body = Object),
    ))]
pub async fn healthz(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    if shared.store_health.probe_due() {
        match shared.store.probe_write(crate::time::now_ms()).await {
            Ok(()) if shared.journal.backlog() == 0 => shared.store_health.ok(),
            Ok(()) => {}
            Err(e) => shared.store_health.failed(&e.to_string()),
        }
    }
    let reason = shared.store_health.failure().or_else(|| {
        shared.journal.over_limit().then(|| {
            format!(
                "{} call events wait for the store",
                shared.journal.backlog()
            )
        })
    });
    match reason {
        None => axum::Json(json!({"status": "ok"})).into_response(),
        Some(r) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            axum::Json(json!({"status": "degraded", "store": r})),
        )
            .into_response(),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // The bindings in force, read from the store at most once a second (a source closure,
    // if one is installed, takes precedence).
    if shared.metrics.registrations_due(std::time::Instant::now()) {
        let now_secs = crate::time::now_ms() / 1000;
        match shared.store.count_bindings(now_secs).await {
            Ok(n) => shared.metrics.set_registrations(n),
            Err(e) => tracing::warn!(error = %e, "counting the bindings failed"),
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics.render(shared.calls.active_calls()),
    )
}

/// This document (also published as `docs/openapi.json`).
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi() -> axum::Json<&'static serde_json::Value> {
    axum::Json(crate::document::document())
}

/// The OpenAPI 3 document of the REST API, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "dialbridge REST API", description = "Click-to-call: native, JustCall-style and Click-2-Call-style calls, call log, live events, admin."),
    paths(
        calls::create_call, calls::list_calls, calls::get_call, calls::hangup_call, calls::get_recording, calls::events,
        live::transfer, live::transfer_complete, live::transfer_cancel, live::hold, live::unhold,
        live::mute, live::monitor, live::update_monitor, live::end_monitor,
        lookup::lookup,
        admin::get_account, admin::update_account,
        admin::list_users, admin::create_user, admin::get_user, admin::update_user, admin::delete_user,
        admin::list_devices, admin::create_device, admin::update_device, admin::delete_device,
        admin::registrations,
        admin::list_numbers, admin::create_number, admin::get_number, admin::update_number, admin::delete_number,
        admin::list_trunks, admin::create_trunk, admin::get_trunk, admin::update_trunk, admin::delete_trunk,
        admin::get_limits, admin::update_limits,
        compat::make_call, compat::click2call, compat::click2call_status,
        client_sessions::create_client_session, client_sessions::list_client_sessions,
        client_sessions::revoke_client_session,
        publishable_keys::list_publishable_keys, publishable_keys::create_publishable_key,
        publishable_keys::delete_publishable_key,
        console::index, console::asset_file,
        healthz, metrics, openapi,
    ),
    components(schemas(
        calls::CreateCall, calls::CallAccepted, calls::ErrorBody, calls::ErrorDetail,
        live::TransferRequest, live::TransferDestination, live::MuteRequest,
        live::MonitorRequest, live::MonitorUpdate,
        lookup::Lookup, admin::UpdateAccount,
        admin::CreateUser, admin::UpdateUser, admin::NewDevice, admin::ChangePassword,
        admin::CreateNumber, admin::UpdateNumber, admin::CreateTrunk, admin::UpdateTrunk,
        admin::Limits, admin::UpdateLimits,
        compat::MakeCall,
        client_sessions::CreateClientSession, client_sessions::ClientSessionView,
        schemas::UserId, schemas::CallId, schemas::E164Number, schemas::E164Prefix,
        schemas::Extension, schemas::SipUsername, schemas::TrunkName, schemas::HostPort,
        schemas::Host, schemas::DialPrefix, schemas::Name, schemas::Password,
        schemas::DialString, schemas::CallbackUrl, schemas::TimeFilter, schemas::Cursor,
        schemas::IdempotencyKey, schemas::EventId, schemas::Region, schemas::NumberTypeName,
        schemas::CallStatusName, schemas::TrunkTransport, schemas::TrunkSrtp,
        views::doc::CallView, views::doc::CallList, views::doc::TimelineEntryView,
        views::doc::CallbackView, views::doc::CallDetailParts, views::doc::Hangup,
        views::doc::AccountView, views::doc::DeviceView, views::doc::UserView,
        views::doc::NumberView, views::doc::TrunkView, views::doc::TrunkTargetView,
        views::doc::BindingView,
        views::doc::UserList, views::doc::DeviceList, views::doc::NumberList,
        views::doc::TrunkList, views::doc::BindingList,
    )),
    tags(
        (name = "calls", description = "The native call API"),
        (name = "admin", description = "The account's dialing permissions and call limits, users, devices, numbers, trunks, registrations"),
        (name = "browser", description = "Publishable keys and client sessions: a browser acting for one user (client secret + Dialbridge-Publishable-Key)"),
        (name = "compat", description = "JustCall- and Click-2-Call-style shapes"),
        (name = "console", description = "The web console, embedded in the binary"),
        (name = "meta", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;
