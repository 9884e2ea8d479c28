//! Cross-origin requests from web pages (the browser SDK on an application's own origin):
//! the routes a client secret may use — `/v1/calls…` and `/v1/events` — answer CORS
//! preflights and carry `Access-Control-Allow-Origin: *` (the API takes no cookies: every
//! credential is an explicit header, so no origin gains anything by the browser's
//! ambient authority). Every other route (admin, secret-key only) gets no CORS headers, so a
//! page cannot use them from another origin.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// Request headers a page may send.
pub const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key, last-event-id, \
     dialbridge-publishable-key";
/// Response headers a page may read.
pub const EXPOSE_HEADERS: &str = "retry-after, x-request-id, idempotent-replayed";

/// Whether `path` is one of the routes a client secret may use.
pub fn is_browser_route(path: &str) -> bool {
    path == "/v1/events" || path == "/v1/calls" || path.starts_with("/v1/calls/")
}

/// The middleware (see the module documentation).
pub async fn cors(req: Request, next: Next) -> Response {
    let browser = is_browser_route(req.uri().path()) && req.headers().contains_key(ORIGIN);
    if !browser {
        return next.run(req).await;
    }
    if req.method() == Method::OPTIONS && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    h.append(VARY, HeaderValue::from_static("origin"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_client_secret_routes_are_cross_origin() {
        for p in [
            "/v1/calls",
            "/v1/calls/call_x",
            "/v1/calls/call_x/hangup",
            "/v1/events",
        ] {
            assert!(is_browser_route(p), "{p}");
        }
        for p in [
            "/v1/users",
            "/v1/account",
            "/v1/client_sessions",
            "/v1/publishable_keys",
            "/v1/callsx",
            "/console",
        ] {
            assert!(!is_browser_route(p), "{p}");
        }
    }
}
