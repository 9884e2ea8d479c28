//! The API's error type and its one mapping to HTTP: every error leaves as
//! `{"error": {"code": "...", "message": "..."}}` with its status code (SPEC §5).
//!
//! Messages never quote a secret; store errors are logged server-side and answered with a
//! bare `internal_error`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `Retry-After` of a `503 store_unavailable`.
pub const STORE_RETRY_AFTER_SECS: u64 = 5;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials (401).
    #[error("Unauthorized")]
    Unauthorized,
    /// A client secret that is unknown, revoked or expired, or that came without a
    /// publishable key of its account (401; the SDK fetches a new secret on it).
    #[error("{message}")]
    ClientSecret {
        code: &'static str,
        message: &'static str,
    },
    /// A malformed request: missing field, wrong type, bad parameter (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The object does not exist in the caller's account (404).
    #[error("{message}")]
    NotFound {
        code: &'static str,
        message: &'static str,
    },
    /// The caller may see the object but not change it (403).
    #[error("{message}")]
    Forbidden {
        code: &'static str,
        message: &'static str,
    },
    /// The request clashes with the object's state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Well-formed but not allowed or not possible: undialable destination, foreign caller
    /// ID, reused idempotency key (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// A per-account limit was hit (429 with `Retry-After`).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// The call engine cannot take the call now (503 with `Retry-After`).
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// The store refuses writes, or too many call events wait for it (503 with
    /// `Retry-After`): no new call is taken until it recovers.
    #[error("The store is unavailable; try again later")]
    StoreUnavailable,
    /// The body is larger than the limit (413).
    #[error("Request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is not `application/json` (415).
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// No such route (404).
    #[error("Not found")]
    RouteNotFound,
    /// The route exists, the method does not (405).
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// The store failed (500).
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

impl ApiError {
    /// 400 with a code and a message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 422 with a code and a message.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::ClientSecret { .. } => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code (snake_case).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest { code, .. }
            | ApiError::ClientSecret { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RouteNotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Store(e) if e.is_unavailable() => "store_unavailable",
            ApiError::Store(_) => "internal_error",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            ApiError::Store(e) if e.is_unavailable() => {
                "The store is unavailable; try again later".to_owned()
            }
            ApiError::Store(_) => "Internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            ApiError::Store(e) if e.is_unavailable() => Some(STORE_RETRY_AFTER_SECS),
            ApiError::StoreUnavailable => Some(STORE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The JSON body: `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code(), "message": self.message()}})
    }

    /// The response with `body` as its JSON (used by the compatibility shapes).
    pub fn respond_with(&self, body: serde_json::Value) -> Response {
        if let ApiError::Store(e) = self {
            tracing::error!(error = %e, "store error");
        }
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        self.respond_with(body)
    }
}

/// An error in the JustCall-style shape: the common error object plus JustCall's
/// `status: "error"` and top-level `message`.
#[derive(Debug)]
pub struct JustCallError(pub ApiError);

impl From<ApiError> for JustCallError {
    fn from(e: ApiError) -> Self {
        JustCallError(e)
    }
}

impl From<store::StoreError> for JustCallError {
    fn from(e: store::StoreError) -> Self {
        JustCallError(ApiError::Store(e))
    }
}

impl IntoResponse for JustCallError {
    fn into_response(self) -> Response {
        let mut body = self.0.body();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("status".into(), json!("error"));
            obj.insert("message".into(), json!(self.0.message()));
        }
        self.0.respond_with(body)
    }
}
