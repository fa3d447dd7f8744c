//! Veil's HTTP service: the engine behind a versioned JSON API (`/v1/...`).
//!
//! Every request except `GET /v1/health`, `GET /v1/public-key` and `GET /v1/audit/checkpoint`
//! (published on purpose: reviewers compare checkpoints to detect a forked log) carries
//! `Authorization: Bearer <token>`; the token names a principal and its role
//! ([`veil_engine::Role`]). Each endpoint checks the role and, per object, ownership: holders see
//! their own datasets, consumers the datasets their policies admit them to and their own budget,
//! reviewers the audit log. Errors are JSON with a stable `code`:
//!
//! ```json
//! {"error": {"code": "unauthenticated", "message": "unknown or invalid token"}}
//! ```
//!
//! The engine owns one SQLite connection, so requests take turns on it (`spawn_blocking` under a
//! mutex); the store's own locking keeps several server or CLI processes consistent.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use veil_engine::{EngineConfig, EngineError, Principal, Role, Veil};

/// Server settings: a TOML file, then `VEIL_LISTEN`, `VEIL_DATA_DIR` and `VEIL_WORKERS`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Worker threads for job execution.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8420".parse().expect("valid address")
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./veil-data")
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            data_dir: default_data_dir(),
            workers: default_workers(),
        }
    }
}

/// Errors of the server crate.
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

impl ServerConfig {
    /// Reads the optional config file, then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<ServerConfig, ServerError> {
        let mut config = match path {
            Some(path) => {
                let err = |message: String| ServerError::Config {
                    path: path.display().to_string(),
                    message,
                };
                let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                toml::from_str(&text).map_err(|e| err(e.to_string()))?
            }
            None => ServerConfig::default(),
        };
        if let Ok(v) = std::env::var("VEIL_LISTEN") {
            config.listen = v.parse().map_err(|e| ServerError::Env {
                name: "VEIL_LISTEN",
                message: format!("{e}"),
            })?;
        }
        if let Ok(v) = std::env::var("VEIL_DATA_DIR") {
            config.data_dir = v.into();
        }
        if let Ok(v) = std::env::var("VEIL_WORKERS") {
            config.workers = v.parse().ok().filter(|n| *n > 0).ok_or(ServerError::Env {
                name: "VEIL_WORKERS",
                message: "must be a positive integer".into(),
            })?;
        }
        Ok(config)
    }
}

/// A JSON error with an HTTP status and a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unknown or invalid token",
        )
    }
    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadRequest(m) => Self::new(StatusCode::BAD_REQUEST, "bad_request", m),
            EngineError::Forbidden(m) => Self::forbidden(m),
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
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

#[derive(Clone)]
struct AppState {
    veil: Arc<Mutex<Veil>>,
}

impl AppState {
    /// Runs `f` on the engine off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Veil) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let veil = self.veil.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = veil.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })?
    }
}

impl AppState {
    /// Authenticates the request's bearer token, checks the caller has one of `roles` (any role
    /// when empty), then runs `f` on the engine as that principal.
    async fn as_principal<T: Send + 'static>(
        &self,
        headers: &HeaderMap,
        roles: &'static [Role],
        f: impl FnOnce(&mut Veil, Principal) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let token = bearer(headers)?;
        self.with(move |veil| {
            let who = authenticate(veil, &token)?;
            if !roles.is_empty() {
                require(&who, roles)?;
            }
            f(veil, who)
        })
        .await
    }
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(ApiError::unauthenticated)
}

fn authenticate(veil: &Veil, token: &str) -> Result<Principal, ApiError> {
    veil.authenticate(token)
        .map_err(|_| ApiError::unauthenticated())
}

fn require(who: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&who.role) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this needs the role {}",
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "api": "v1" }))
}

async fn public_key(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .with(|veil| {
            let current = veil.public_key();
            let first = veil.first_public_key()?;
            Ok(Json(json!({
                "public_key": current.to_string(),
                "fingerprint": current.fingerprint(),
                "first_public_key": first.to_string(),
            })))
        })
        .await
}

async fn checkpoint(State(state): State<AppState>) -> Result<String, ApiError> {
    state.with(|veil| Ok(veil.audit_checkpoint()?)).await
}

async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Principal>, ApiError> {
    state
        .as_principal(&headers, &[], |_, who| Ok(Json(who)))
        .await
}

async fn datasets(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .as_principal(&headers, &[], |veil, who| {
            let mut visible = Vec::new();
            for d in veil.datasets()? {
                let show = match who.role {
                    Role::Holder => d.owner == who.name,
                    Role::Consumer => veil
                        .policy(&d.name)?
                        .is_some_and(|p| p.policy.allows_consumer(&who.name)),
                    Role::Reviewer | Role::Admin => true,
                };
                if show {
                    visible.push(d);
                }
            }
            Ok(Json(json!({ "datasets": visible })))
        })
        .await
}

async fn budget(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .as_principal(&headers, &[Role::Consumer], |veil, who| {
            Ok(Json(json!({ "budget": veil.budget(&who.name)? })))
        })
        .await
}

async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .as_principal(&headers, &[Role::Reviewer, Role::Admin], |veil, _| {
            Ok(Json(json!({ "entries": veil.audit_entries()? })))
        })
        .await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The API's routes over an open engine.
pub fn router(veil: Veil) -> Router {
    let state = AppState {
        veil: Arc::new(Mutex::new(veil)),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/public-key", get(public_key))
        .route("/v1/audit/checkpoint", get(checkpoint))
        .route("/v1/audit/log", get(audit_log))
        .route("/v1/whoami", get(whoami))
        .route("/v1/datasets", get(datasets))
        .route("/v1/budget", get(budget))
        .fallback(not_found)
        .with_state(state)
}

/// Opens the store and serves until the process ends. Prints `listening on ADDR` once bound (the
/// actual port when the configured one is 0).
pub fn serve(config: &ServerConfig) -> Result<(), ServerError> {
    let veil = Veil::open(
        &config.data_dir,
        EngineConfig::builder().workers(config.workers).build(),
    )?;
    let app = router(veil);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        println!("listening on {}", listener.local_addr()?);
        use std::io::Write as _;
        std::io::stdout().flush()?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/veil.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config: ServerConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8420".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/veil"));
        assert_eq!(config.workers, 2);
        // Unknown fields are errors that name the field.
        let err = toml::from_str::<ServerConfig>("listen = \"127.0.0.1:1\"\nworkerz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workerz"), "{err}");
        assert!(matches!(
            ServerConfig::load(Some(Path::new("/nonexistent/veil.toml"))),
            Err(ServerError::Config { .. })
        ));
    }
}
