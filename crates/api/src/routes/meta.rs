//! `GET /healthz`, `GET /metrics`, `GET /openapi.json`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, calls, client_sessions, compat, console, lookup, publishable_keys};
use crate::state::Shared;

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
    // The bindings in force, read at each scrape (a source closure, if one is installed,
    // takes precedence).
    let now_secs = crate::time::now_ms() / 1000;
    match shared.store.count_bindings(now_secs).await {
        Ok(n) => shared.metrics.set_registrations(n),
        Err(e) => tracing::warn!(error = %e, "counting the bindings failed"),
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics.render(shared.calls.active_calls()),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "key_pair",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "<key>:<secret>",
            ))),
        );
        components.add_security_scheme(
            "client_secret",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A client secret (cs_…) from POST /v1/client_sessions, with the header \
                         Dialbridge-Publishable-Key: pk_… of the same account; reaches one \
                         user's calls only",
                    ))
                    .build(),
            ),
        );
        // The routes a client secret may use take it as an alternative to the secret key.
        for path in crate::client::CLIENT_SECRET_ROUTES {
            let Some(item) = doc.paths.paths.get_mut(*path) else {
                continue;
            };
            for op in [item.get.as_mut(), item.post.as_mut()]
                .into_iter()
                .flatten()
            {
                op.security.get_or_insert_with(Vec::new).push(
                    utoipa::openapi::security::SecurityRequirement::new(
                        "client_secret",
                        Vec::<String>::new(),
                    ),
                );
            }
        }
    }
}

/// The OpenAPI 3 document of the REST API, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "dialbridge REST API", description = "Click-to-call: native, JustCall-style and Click-2-Call-style calls, call log, live events, admin."),
    paths(
        calls::create_call, calls::list_calls, calls::get_call, calls::hangup_call, calls::events,
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
        lookup::Lookup, admin::UpdateAccount,
        admin::CreateUser, admin::UpdateUser, admin::NewDevice, admin::ChangePassword,
        admin::CreateNumber, admin::UpdateNumber, admin::CreateTrunk, admin::UpdateTrunk,
        admin::Limits, admin::UpdateLimits,
        compat::MakeCall,
        client_sessions::CreateClientSession, client_sessions::ClientSessionView,
    )),
    modifiers(&SecuritySchemes),
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
