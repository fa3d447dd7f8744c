//! Operations: Prometheus metrics, request ids and the operator log.
//!
//! The operator log carries request ids, routes, statuses and latencies, job ids and states —
//! never tokens, request bodies, module logs or results (those stay in the store, for holders).
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::config::LogFormat;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatasetLabels {
    dataset: String,
}

/// The service's metrics. Job and budget gauges are read from the store at scrape time, so they
/// count jobs run by any process on the store.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram>,
    jobs: Family<StateLabels, Gauge>,
    budget_spent: Family<DatasetLabels, Gauge<f64, AtomicU64>>,
    units: Counter,
    sandbox_seconds: Counter<f64, AtomicU64>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("veil");
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            requests.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Jobs in the store by state", jobs.clone());
        let budget_spent = Family::<DatasetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_spent_epsilon",
            "Privacy budget (epsilon) spent on each dataset, summed over consumers",
            budget_spent.clone(),
        );
        let units = Counter::default();
        registry.register(
            "sandbox_units",
            "Privacy units run through the sandbox by this server's workers",
            units.clone(),
        );
        let sandbox_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "sandbox_seconds",
            "Time this server's workers spent in the sandbox stage (units/s = rate(units) / rate(seconds))",
            sandbox_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            jobs,
            budget_spent,
            units,
            sandbox_seconds,
        }
    }

    pub(crate) fn job_ran(&self, units: u64, sandbox_time: Duration) {
        self.units.inc_by(units);
        self.sandbox_seconds.inc_by(sandbox_time.as_secs_f64());
    }

    fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                route: route.into(),
                status,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition, with the store's gauges refreshed from `veil`.
    pub(crate) fn render(&self, veil: &veil_engine::Veil) -> veil_engine::Result<String> {
        self.jobs.clear();
        for (state, n) in veil.job_counts()? {
            self.jobs
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(n as i64);
        }
        self.budget_spent.clear();
        for (dataset, eps) in veil.spent_by_dataset()? {
            self.budget_spent
                .get_or_create(&DatasetLabels { dataset })
                .set(eps.0 as f64 / veil_engine::Epsilon::MICRO as f64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| veil_engine::EngineError::Internal(e.to_string()))?;
        Ok(out)
    }
}

/// Gives every request an id (the caller's `x-request-id` if it is short and plain, else a fresh
/// one), runs it in a span carrying that id, logs its outcome, records its latency, and returns the
/// id in the response's `x-request-id`.
pub(crate) async fn observe(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(fresh_id);
    let method = request.method().as_str().to_owned();
    // The route template (`/v1/jobs/{id}`), not the path, keeps metric labels bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // `principal` and `job` are filled in by handlers that learn them.
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %method,
        route = %route,
        principal = tracing::field::Empty,
        job = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let mut response = crate::error::json_errors(response).await;
    let status = response.status().as_u16();
    metrics.request(&method, &route, status, elapsed);
    span.in_scope(|| {
        tracing::info!(
            status,
            ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn fresh_id() -> String {
    let mut bytes = [0u8; 8];
    // Request ids only correlate log lines; if the OS cannot supply randomness, a zero id will do.
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

/// Installs the operator log: `RUST_LOG`-style filter from `VEIL_LOG` (default `info`), text or
/// JSON lines on standard error.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
