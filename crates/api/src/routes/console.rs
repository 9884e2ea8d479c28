//! The web console at `/console`: a page, a script, a stylesheet and the browser SDK, all
//! embedded in the binary (no CDN, works offline), served with a strict
//! Content-Security-Policy. The page talks to the same REST API as everyone else, with the
//! secret key the user signs in with (kept in the tab's session storage only).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The console's page.
pub const INDEX_HTML: &str = include_str!("../../console/index.html");
/// The console's script.
pub const CONSOLE_JS: &str = include_str!("../../console/console.js");
/// The console's stylesheet.
pub const CONSOLE_CSS: &str = include_str!("../../console/console.css");
/// The browser SDK (`sdk/js`, built), which the console uses for its Call button and stream.
pub const SDK_JS: &str = include_str!("../../../../sdk/js/dist/index.js");

/// The browser phone's page (`/console/phone.html`).
pub const PHONE_HTML: &str = include_str!("../../console/phone.html");
/// The browser phone's script.
pub const PHONE_JS: &str = include_str!("../../console/phone.js");
/// JsSIP (npm `jssip`, pinned in `crates/api/console/package.json`), bundled by esbuild
/// into one script (`npm run build` there; `npm run check` verifies this copy).
pub const JSSIP_JS: &str = include_str!("../../console/vendor/jssip.js");

/// The browser phone's policy: the console's, plus WebSocket connections to any host (the
/// SIP listener is another origin: another port, often another host) and the call's audio.
pub const PHONE_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self' wss: ws:; img-src 'self'; media-src 'self' blob: mediastream:; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Scripts, styles and connections from this origin only; no inline script or style, no
/// framing, no plug-ins, no forms posted elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    asset_with_policy(content_type, body, CONTENT_SECURITY_POLICY)
}

fn asset_with_policy(
    content_type: &'static str,
    body: &'static str,
    policy: &'static str,
) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(policy),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The console's page (also at `/console/`).
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The web console (HTML)", content_type = "text/html")))]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The console's script, stylesheet and the SDK.
#[utoipa::path(get, path = "/console/{asset}", tag = "console",
    params(("asset" = String, Path, description = "console.js, console.css, sdk.js, or the browser phone's phone.html, phone.js, jssip.js")),
    responses(
        (status = 200, description = "The asset", content_type = "text/javascript"),
        (status = 404, description = "No such asset", body = crate::routes::calls::ErrorBody),
    ))]
pub async fn asset_file(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "console.js" => Ok(asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        "sdk.js" => Ok(asset("text/javascript; charset=utf-8", SDK_JS)),
        "console.css" => Ok(asset("text/css; charset=utf-8", CONSOLE_CSS)),
        "phone.html" | "phone" => Ok(asset_with_policy(
            "text/html; charset=utf-8",
            PHONE_HTML,
            PHONE_CONTENT_SECURITY_POLICY,
        )),
        "phone.js" => Ok(asset("text/javascript; charset=utf-8", PHONE_JS)),
        "jssip.js" => Ok(asset("text/javascript; charset=utf-8", JSSIP_JS)),
        "" | "index.html" => Ok(asset("text/html; charset=utf-8", INDEX_HTML)),
        _ => Err(ApiError::RouteNotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_builds_no_html_from_data() {
        // Everything from the network goes in as text: no HTML parsing sinks in the script.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!CONSOLE_JS.contains(sink), "console.js uses {sink}");
            assert!(!SDK_JS.contains(sink), "sdk.js uses {sink}");
            assert!(!PHONE_JS.contains(sink), "phone.js uses {sink}");
        }
        // No inline script or style that the policy would have to allow.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(!PHONE_HTML.contains("<script>") && !PHONE_HTML.contains("style="));
        assert!(!PHONE_CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(JSSIP_JS.contains("JsSIP"), "the bundled JsSIP");
    }
}
