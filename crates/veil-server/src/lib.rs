//! Veil's HTTP service: the engine behind a versioned JSON API (`/v1/...`), a pool of job workers,
//! and the operator's view (`/metrics`, a structured log).
//!
//! ```text
//!  holder ──PUT policy / POST dataset──┐
//!  consumer ──POST /v1/jobs───────────▶│ request engines ─▶ store (SQLite: jobs, ledger, audit)
//!  reviewer ──GET /v1/audit/...───────┘        │ wake                  ▲
//!                                              ▼                       │ debit + job_started,
//!                                    worker pool (N engines) ──────────┘ release + audit entry
//! ```
//!
//! Every request except `GET /v1/health`, `/v1/public-key`, `/v1/audit/checkpoint` (published on
//! purpose: reviewers compare checkpoints to detect a forked log) and `/v1/openapi.json` carries
//! `Authorization: Bearer <token>`; the token names a principal and its role
//! ([`veil_engine::Role`]). Handlers parse the request, call the engine as that [`Caller`] and
//! serialise its answer: the engine decides roles and, per object, visibility (an object the
//! caller may not see answers `404` exactly like one that does not exist). Errors are JSON with a
//! stable `code` (see [`ApiError`]):
//!
//! ```json
//! {"error": {"code": "unauthenticated", "message": "unknown or invalid token"}}
//! ```
//!
//! Jobs are durable: a submission or approval only records the job as `queued` in the store, and
//! the [worker pool](workers) runs it. The engine's ordering guarantees (budget debited before a
//! run, result readable only with its audit record, orphaned runs closed on restart) hold for the
//! service because it uses the same engine. The API is described in `openapi.json` beside this
//! crate, served at `/v1/openapi.json`.
#![forbid(unsafe_code)]

mod api;
mod config;
mod console;
mod error;
mod limits;
mod telemetry;
mod workers;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::http::header;
use axum::routing::{get, post};
use tokio::sync::watch;
use veil_engine::{Caller, EngineConfig, Operation, Principal, Runtime, Veil};

pub use config::{LogFormat, ServerConfig};
pub use error::{ApiError, ServerError};
pub use telemetry::init_logging;

use telemetry::Metrics;
use workers::Pool;

/// Engines answering requests at the same time (see `RequestEngines`).
const REQUEST_ENGINES: usize = 4;

/// The OpenAPI 3.1 description of the API, as served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The engines that answer requests. Each owns a store connection and a sandbox; a request takes
/// a free one, so a slow request (compiling a new module, a large query) holds up only its own.
struct RequestEngines {
    engines: Vec<Mutex<Veil>>,
    next: std::sync::atomic::AtomicUsize,
}

impl RequestEngines {
    /// Runs `f` on a free engine, or waits for one (taken in turn).
    fn run<T>(&self, f: impl FnOnce(&mut Veil) -> T) -> T {
        for engine in &self.engines {
            if let Ok(mut veil) = engine.try_lock() {
                return f(&mut veil);
            }
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.engines.len();
        let mut veil = self.engines[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut veil)
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    veil: Arc<RequestEngines>,
    /// The process's one engine runtime (sandbox, compile cache, tokio), for engines opened per
    /// request (uploads).
    runtime: Arc<Runtime>,
    pool: Pool,
    metrics: Arc<Metrics>,
    config: Arc<ServerConfig>,
    /// The memory buffered request bodies may take at once (`max_buffered_bytes`).
    bodies: Arc<limits::BodyBudget>,
    /// Becomes `true` when the server starts shutting down; long polls end early.
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// Runs `f` on a request engine, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Veil) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let engines = self.veil.clone();
        tokio::task::spawn_blocking(move || engines.run(f))
            .await
            .map_err(|_| ApiError::internal())?
    }

    /// Authenticates the request's bearer token, then runs `f` on the engine as that principal.
    /// With `operation`, first checks the principal's role may call it (the engine's table,
    /// [`veil_engine::Operation::roles`]) — before the request body is looked at.
    async fn as_caller<T: Send + 'static>(
        &self,
        headers: &HeaderMap,
        operation: Option<Operation>,
        f: impl FnOnce(&mut Veil, Caller) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.as_principal(headers, move |veil, who| {
            let caller = Caller::from(&who);
            if let Some(operation) = operation {
                veil_engine::require(&caller, operation)?;
            }
            f(veil, caller)
        })
        .await
    }

    /// Authenticates the request's bearer token, then runs `f` on the engine with the principal.
    async fn as_principal<T: Send + 'static>(
        &self,
        headers: &HeaderMap,
        f: impl FnOnce(&mut Veil, Principal) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let token = bearer(headers)?;
        // The request's span (see `telemetry::observe`), to name the caller in the operator log.
        let span = tracing::Span::current();
        self.with(move |veil| {
            let who = veil
                .authenticate(&token)
                .map_err(|_| ApiError::unauthenticated())?;
            span.record("principal", who.name.as_str());
            f(veil, who)
        })
        .await
    }
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(|t| t.trim().to_owned())
        .ok_or_else(ApiError::unauthenticated)
}

/// The whole application: routes, request ids and metrics, body limits.
fn app(state: AppState) -> Router {
    let upload_limit = DefaultBodyLimit::disable(); // the upload handler counts bytes itself
    let body_limit = DefaultBodyLimit::max(state.config.max_request_bytes);
    Router::new()
        .route("/v1/health", get(api::health))
        .route("/v1/openapi.json", get(api::openapi))
        .route("/v1/public-key", get(api::public_key))
        .route("/v1/whoami", get(api::whoami))
        .route(
            "/v1/datasets",
            get(api::datasets)
                .post(api::upload_dataset)
                .layer(upload_limit),
        )
        .route(
            "/v1/datasets/{name}",
            get(api::dataset).delete(api::remove_dataset),
        )
        .route(
            "/v1/datasets/{name}/policy",
            get(api::policy).put(api::set_policy),
        )
        .route(
            "/v1/datasets/{name}/policy/versions",
            get(api::policy_versions),
        )
        .route("/v1/datasets/{name}/budgets", get(api::dataset_budgets))
        .route("/v1/datasets/{name}/certificate", get(api::certificate))
        .route("/v1/jobs", get(api::jobs).post(api::submit_job))
        .route("/v1/jobs/check", post(api::check_job))
        .route("/v1/jobs/{id}", get(api::job))
        .route("/v1/jobs/{id}/approve", post(api::approve_job))
        .route("/v1/jobs/{id}/reject", post(api::reject_job))
        .route("/v1/jobs/{id}/result", get(api::job_result))
        .route("/v1/jobs/{id}/receipt", get(api::job_receipt))
        .route("/v1/jobs/{id}/logs", get(api::job_logs))
        .route("/v1/budget", get(api::budget))
        .route("/v1/link/key", get(api::link_key))
        .route("/v1/link/evaluate", post(api::evaluate_link))
        .route("/v1/links", get(api::links).post(api::propose_link))
        .route("/v1/links/{id}/accept", post(api::accept_link))
        .route("/v1/links/{id}/reject", post(api::reject_link))
        .route("/v1/links/{id}/revoke", post(api::revoke_link))
        .route("/v1/audit/checkpoint", get(api::checkpoint))
        .route("/v1/audit/log", get(api::audit_log))
        .route("/v1/audit/summary", get(api::audit_summary))
        .route("/v1/audit/export", get(api::audit_export))
        .route("/v1/audit/proof/inclusion", get(api::inclusion_proof))
        .route("/v1/audit/proof/consistency", get(api::consistency_proof))
        .route(
            "/v1/admin/principals",
            get(api::principals).post(api::add_principal),
        )
        .route(
            "/v1/admin/principals/{name}",
            axum::routing::delete(api::revoke_principal),
        )
        .route(
            "/v1/admin/principals/{name}/token",
            post(api::reissue_token),
        )
        .route("/metrics", get(api::metrics))
        .route("/", get(console::root))
        .route("/console/", get(console::index))
        .route("/console/{*path}", get(console::file))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(body_limit)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            telemetry::observe,
        ))
        .with_state(state)
}

/// A running service: the API on a bound address, the worker pool, the request engines. Start with
/// [`Service::start`]; stop with [`Service::shutdown`] (what SIGTERM does under [`serve`]).
///
/// ```no_run
/// # fn main() -> Result<(), veil_server::ServerError> {
/// let config = veil_server::ServerConfig::load(None)?;
/// let service = veil_server::Service::start(&config)?;
/// println!("API on http://{}", service.local_addr());
/// service.shutdown()?; // finishes running jobs within the configured grace
/// # Ok(()) }
/// ```
pub struct Service {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    http: std::thread::JoinHandle<std::io::Result<()>>,
    pool: Pool,
    config: ServerConfig,
    runtime: Arc<Runtime>,
}

impl Service {
    /// Opens the store (closing jobs a crashed predecessor left running), starts the workers and
    /// binds the listener; requests are served on a thread of its own from here on.
    pub fn start(config: &ServerConfig) -> Result<Service, ServerError> {
        // The cores are shared out: with as many workers as cores each job runs its units on one
        // thread (small jobs pay no hand-off between threads), with one worker a job gets them
        // all. One configuration for every handle, so a job is scheduled alike at submission
        // and at start.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads_per_job = (cores / config.workers.max(1)).max(1);
        let runtime = Runtime::new(
            EngineConfig::builder()
                .workers(threads_per_job)
                .max_open_jobs(config.max_open_jobs)
                .build(),
        )?;
        // Opening the store also closes jobs a crashed predecessor left running.
        let engines = (0..REQUEST_ENGINES)
            .map(|_| Veil::open_with(&config.data_dir, runtime.clone()).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        // Uploads a killed predecessor was receiving: never registered, only taking space.
        if let Ok(stale) = std::fs::read_dir(config.data_dir.join("uploads")) {
            for entry in stale.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let metrics = Arc::new(Metrics::new());
        let pool = Pool::start(
            config.data_dir.clone(),
            config.workers,
            runtime.clone(),
            metrics.clone(),
        )?;
        let (stop, shutdown) = watch::channel(false);
        let state = AppState {
            veil: Arc::new(RequestEngines {
                engines,
                next: Default::default(),
            }),
            runtime: runtime.clone(),
            pool: pool.clone(),
            metrics,
            config: Arc::new(config.clone()),
            bodies: Arc::new(limits::BodyBudget::new(config.max_buffered_bytes)),
            shutdown: shutdown.clone(),
        };
        let connection_limits = limits::ConnectionLimits {
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout(),
        };
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, workers = config.workers, data_dir = %config.data_dir.display(), "serving");
        let http = std::thread::Builder::new()
            .name("veil-http".into())
            .spawn(move || {
                // The engine owns a runtime of its own, which must not be dropped inside this one:
                // keep a handle so the last reference goes away after `block_on`.
                let engine = state.veil.clone();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("veil-http")
                    .enable_all()
                    .build()?;
                let served = runtime.block_on(async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    limits::serve_connections(listener, app(state), connection_limits, shutdown)
                        .await;
                    Ok::<(), std::io::Error>(())
                });
                drop(runtime);
                drop(engine);
                served
            })?;
        Ok(Service {
            addr,
            stop,
            http,
            pool,
            config: config.clone(),
            runtime,
        })
    }

    /// The address the API listens on (the actual port when the configured one was 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops accepting connections and finishes requests in flight; stops taking jobs and lets
    /// running ones finish within `shutdown_grace_secs`; closes any still running as failed
    /// (their budget stays spent, the audit log says `shutdown`).
    pub fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        let served = self
            .http
            .join()
            .map_err(|_| ServerError::Io(std::io::Error::other("the HTTP thread panicked")))?;
        let left = self.pool.stop(self.config.shutdown_grace());
        if left > 0 {
            let mut veil = Veil::open_with(&self.config.data_dir, self.runtime.clone())?;
            let closed = veil.close_own_running_jobs()?;
            tracing::warn!(closed, "closed jobs still running after the shutdown grace");
        }
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// Starts a [`Service`], prints `listening on ADDR` once bound, and runs until SIGTERM or SIGINT,
/// then shuts down gracefully (see [`Service::shutdown`]).
pub fn serve(config: &ServerConfig) -> Result<(), ServerError> {
    init_logging(config.log_format);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let service = Service::start(config)?;
    println!("listening on {}", service.local_addr());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    signals.handle().close();
    service.shutdown()
}
