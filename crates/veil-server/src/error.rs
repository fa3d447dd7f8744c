//! The server's errors: startup failures ([`ServerError`]) and API answers ([`ApiError`]), which
//! are JSON with a stable `code`.
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use veil_engine::{EngineError, ErrorKind};

/// Errors of the server crate (starting, configuring, serving).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("config {path}: {message}")]
    Config { path: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// An API error: HTTP status, stable machine-readable code, and a message for the caller.
///
/// Codes: `unauthenticated` (401), `forbidden` (403), `not_found` (404), `bad_request` (400),
/// `conflict` (409: a name taken, a job not in the state asked for, or without a result yet),
/// `too_large` (413),
/// `unsupported_media_type` (415), `busy` (429: too many of the caller's jobs are open),
/// `request_timeout` (408: a body sent nothing for the idle timeout),
/// `internal` (500; details go to the operator's log only), `unavailable` (503: the store does not
/// answer, from the health check; or the server is reading as many request bodies as its memory
/// budget allows — retry shortly).
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unknown or invalid token",
        )
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub(crate) fn stalled(stalled: crate::limits::BodyStalled) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the body sent nothing for {} s; send it without pauses",
                stalled.0.as_secs()
            ),
        )
    }
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e.kind() {
            ErrorKind::BadInput => Self::bad_request(e.to_string()),
            ErrorKind::Forbidden => Self::forbidden(e.to_string()),
            ErrorKind::NotFound => Self::not_found(e.to_string()),
            ErrorKind::Conflict => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ErrorKind::Busy => Self::new(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string()),
            ErrorKind::Unavailable => {
                tracing::error!(error = %e, "the store is unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is unavailable",
                )
            }
            // Refusals are answered as the job's state, not as errors; reaching here is a bug.
            _ => {
                tracing::error!(error = %e, "internal error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}

/// Rewrites an error answer that is not JSON — axum's own rejections (a body over the limit, a
/// path that is not UTF-8, ...) — as a JSON error with a code, so every error has one shape.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "busy",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if status.is_server_error() {
        "internal error".to_owned()
    } else {
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        }
    };
    ApiError::new(status, code, message).into_response()
}
