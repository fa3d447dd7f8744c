//! The endpoint handlers: parse the request, call the engine as the authenticated [`Caller`]
//! ([`AppState::as_caller`]), serialise the answer. Who may do and see what is the engine's
//! (`veil_engine::access`); an object the caller may not see answers exactly like one that does
//! not exist.
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use veil_engine::{Caller, EngineError, JobState, Operation, Registered, Role, Veil};

use crate::AppState;
use crate::error::ApiError;
use crate::limits::{BodyShare, read_chunk};

/// For handlers open to every role (the engine checks the objects).
const ANYONE: Option<Operation> = None;

/// Longest a `GET /v1/jobs/{id}?wait=` may wait.
const MAX_WAIT: Duration = Duration::from_secs(30);

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// Reads a request body only once its token has been checked for `operation`: a request without
/// a valid token is answered before a byte of its body is read, so nobody unauthenticated can make
/// the server buffer a body. The body is then read up to `max_request_bytes` (413 beyond), within
/// the server's budget for bodies in flight (503 when spent) and without pauses longer than the
/// idle timeout (408).
async fn authenticated_body(
    state: &AppState,
    headers: &HeaderMap,
    operation: Operation,
    body: Body,
) -> Result<BufferedBody, ApiError> {
    state
        .as_caller(headers, Some(operation), |_, _| Ok(()))
        .await?;
    // The policy route takes TOML text under any label; every other route's body is JSON.
    if operation != Operation::SetPolicy {
        require_json(headers)?;
    }
    let limit = state.config.max_request_bytes;
    let too_large = || ApiError::too_large(format!("the request limit is {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let share = state
        .bodies
        .reserve(declared.unwrap_or(limit))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "the server is reading as many request bodies as it holds at once ({} bytes); \
             retry shortly",
                state.bodies.total_bytes()
            ))
        })?;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    let idle = state.config.idle_timeout();
    while let Some(chunk) = read_chunk(&mut stream, idle)
        .await
        .map_err(ApiError::stalled)?
    {
        // A body cut short cannot be read whole: like one past the limit.
        let chunk = chunk.map_err(|_| too_large())?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(BufferedBody {
        bytes,
        _share: share,
    })
}

/// Routes whose body is JSON say so: anything else labelled otherwise is refused (415) rather
/// than guessed at. A body without any `Content-Type` is read as JSON.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let has_body = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && !declared_json && headers.contains_key(header::CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "this route takes a JSON body: send it with `Content-Type: application/json`",
        ));
    }
    Ok(())
}

/// A request body read whole, holding its share of the server's body budget until dropped.
struct BufferedBody {
    bytes: Vec<u8>,
    _share: BodyShare,
}

impl std::ops::Deref for BufferedBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// Liveness and readiness: answers 200 only when the store answers too (503 `unavailable` if not).
pub(crate) async fn health(State(state): State<AppState>) -> ApiResult {
    state
        .with(|veil| {
            veil.check_store().map_err(|e| {
                tracing::error!(error = %e, "health check: the store does not answer");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store does not answer",
                )
            })?;
            Ok(Json(json!({ "status": "ok", "api": "v1" })))
        })
        .await
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

pub(crate) async fn public_key(State(state): State<AppState>) -> ApiResult {
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

pub(crate) async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state
        .as_principal(&headers, |_, who| Ok(Json(json!(who))))
        .await
}

// ---- datasets and policies ----

pub(crate) async fn datasets(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, |veil, who| {
            Ok(Json(json!({ "datasets": veil.datasets_as(&who)? })))
        })
        .await
}

pub(crate) async fn dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!(veil.dataset_as(&who, &name)?)))
        })
        .await
}

#[derive(Deserialize)]
pub(crate) struct UploadQuery {
    name: String,
    privacy_unit: Option<String>,
    // How to read a CSV file: the fields of `veil_engine::CsvFlags` (serde's `flatten` would
    // read `trim` as text).
    columns: Option<String>,
    header: Option<String>,
    delimiter: Option<String>,
    quote: Option<String>,
    trim: Option<bool>,
    null: Option<String>,
    /// Register the upload as the next version of the caller's existing dataset `name`.
    #[serde(default)]
    replace: bool,
    /// Comma-separated columns of join tokens (docs/linking.md).
    link_keys: Option<String>,
}

impl UploadQuery {
    fn csv_flags(&self) -> veil_engine::CsvFlags {
        veil_engine::CsvFlags {
            columns: self.columns.clone(),
            header: self.header.clone(),
            delimiter: self.delimiter.clone(),
            quote: self.quote.clone(),
            trim: self.trim,
            null: self.null.clone(),
        }
    }
}

/// Registers the request body (CSV, Parquet or Arrow IPC; detected from its first bytes) as a
/// dataset owned by the calling holder. The body streams to a temporary file in the data directory
/// and is refused with 413 past `max_upload_bytes`; nothing is registered unless all of it is
/// valid.
pub(crate) async fn upload_dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = state
        .as_caller(&headers, Some(Operation::RegisterDataset), |_, who| Ok(who))
        .await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // Bad reading options are told before a byte of the body is read.
    let csv = query
        .csv_flags()
        .options()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = state.config.max_upload_bytes;
    let too_large = || ApiError::too_large(format!("the upload limit is {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let uploads = state.config.data_dir.join("uploads");
    std::fs::create_dir_all(&uploads).map_err(|e| internal(e.into()))?;
    let mut file = tempfile::NamedTempFile::new_in(&uploads).map_err(|e| internal(e.into()))?;
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    let idle = state.config.idle_timeout();
    while let Some(chunk) = read_chunk(&mut stream, idle)
        .await
        .map_err(ApiError::stalled)?
    {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(too_large());
        }
        use std::io::Write as _;
        file.write_all(&chunk).map_err(|e| internal(e.into()))?;
    }
    // Reading and converting a large file takes a while: do it on an engine of its own, so the
    // request engines keep answering everyone else meanwhile.
    let data_dir = state.config.data_dir.clone();
    let runtime = state.runtime.clone();
    let record = tokio::task::spawn_blocking(move || -> Result<Registered, ApiError> {
        let mut veil = Veil::open_with(&data_dir, runtime)?;
        let link_keys: Vec<String> = query
            .link_keys
            .iter()
            .flat_map(|k| k.split(','))
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        let options = veil_engine::RegisterOptions {
            privacy_unit: query.privacy_unit.as_deref(),
            csv,
            link_keys: &link_keys,
            replace: query.replace,
        };
        // Errors name the file; the caller knows it as "the upload", never by the server's path.
        let shown = file.path().display().to_string();
        let record = veil
            .register_with(&who, file.path(), &query.name, &options)
            .map_err(|e| {
                let mut e = ApiError::from(e);
                e.message = e.message.replace(&shown, "the upload");
                e
            })?;
        drop(file);
        Ok(record)
    })
    .await
    .map_err(|_| ApiError::internal())??;
    Ok((StatusCode::CREATED, Json(json!(record))))
}

/// Retires the caller's dataset: its files deleted, its waiting jobs refused, its history kept.
pub(crate) async fn remove_dataset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(
            &headers,
            Some(Operation::RemoveDataset),
            move |veil, who| {
                let versions = veil.remove_dataset(&who, &name)?;
                Ok(Json(json!({ "removed": name, "versions": versions })))
            },
        )
        .await
}

fn internal(e: EngineError) -> ApiError {
    ApiError::from(EngineError::Internal(e.to_string()))
}

pub(crate) async fn policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!(veil.policy_as(&who, &name)?)))
        })
        .await
}

/// Every policy version of a dataset, oldest first (its owner, reviewers, admins).
pub(crate) async fn policy_versions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, Some(Operation::ReadLedgers), move |veil, who| {
            Ok(Json(
                json!({ "versions": veil.policy_history_as(&who, &name)? }),
            ))
        })
        .await
}

/// Every consumer's ledger on a dataset (its owner, reviewers, admins).
pub(crate) async fn dataset_budgets(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, Some(Operation::ReadLedgers), move |veil, who| {
            Ok(Json(
                json!({ "budgets": veil.dataset_budgets_as(&who, &name)? }),
            ))
        })
        .await
}

/// Sets a new policy version from the TOML request body, as the dataset's owner.
pub(crate) async fn set_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult {
    let body = authenticated_body(&state, &headers, Operation::SetPolicy, body).await?;
    state
        .as_caller(&headers, Some(Operation::SetPolicy), move |veil, who| {
            let text = std::str::from_utf8(&body)
                .map_err(|_| ApiError::bad_request("the policy must be UTF-8 TOML"))?;
            Ok(Json(json!(
                veil.set_policy_text(&who, &name, text)?.version_info()
            )))
        })
        .await
}

pub(crate) async fn certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        // The engine checks visibility before the role (a hidden dataset answers 404).
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!(veil.dataset_certificate(&who, &name)?)))
        })
        .await
}

// ---- jobs ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitJob {
    /// The job manifest (TOML); its `module` field is ignored.
    manifest: String,
    /// The WebAssembly module or component, base64 (standard alphabet, padded); empty or absent
    /// for a SQL job (a manifest with `sql`).
    #[serde(default)]
    module: String,
}

/// The manifest text and module bytes of a submission or check body ([`SubmitJob`]).
fn job_request(body: &[u8]) -> Result<(String, Vec<u8>), ApiError> {
    let request: SubmitJob = parse_body(body)?;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(request.module.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("`module` is not base64: {e}")))?;
    Ok((request.manifest, wasm))
}

/// Records a job as the calling consumer: `queued` (a worker runs it), `awaiting_approval`, or
/// `refused` (policy or budget; recorded in the audit log). Answers 201 with the consumer's view.
pub(crate) async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = authenticated_body(&state, &headers, Operation::SubmitJob, body).await?;
    let pool = state.pool.clone();
    let view = state
        .as_caller(&headers, Some(Operation::SubmitJob), move |veil, who| {
            let (manifest, wasm) = job_request(&body)?;
            Ok(veil.submit_as(&who, &manifest, &wasm, false)?)
        })
        .await?;
    tracing::Span::current().record("job", view.job.id.as_str());
    if view.job.state == veil_engine::ConsumerState::Queued {
        pool.wake();
    }
    Ok((StatusCode::CREATED, Json(json!(view))))
}

/// Checks a job as the calling consumer without submitting it (`veil job check`): every check
/// that needs no data, and the noise its release would carry. Spends nothing; records a
/// `job_checked` audit entry. Answers 200 with [`veil_engine::JobCheck`].
pub(crate) async fn check_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = authenticated_body(&state, &headers, Operation::SubmitJob, body).await?;
    let check = state
        .as_caller(&headers, Some(Operation::SubmitJob), move |veil, who| {
            let (manifest, wasm) = job_request(&body)?;
            Ok(veil.check_job(&who, &manifest, &wasm)?)
        })
        .await?;
    Ok(Json(json!(check)))
}

#[derive(Deserialize)]
pub(crate) struct JobsQuery {
    /// Only jobs in this state, as the caller sees states (a consumer: its coarse view).
    state: Option<JobState>,
}

/// Jobs the caller may see: a consumer's own (coarse view), those on a holder's datasets (its
/// approval queue with `?state=awaiting_approval`), or all of them for reviewers.
pub(crate) async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!({ "jobs": veil.jobs_as(&who, query.state)? })))
        })
        .await
}

#[derive(Deserialize)]
pub(crate) struct WaitQuery {
    /// Seconds to wait for the job to leave `queued` / `running` (at most 30).
    wait: Option<u64>,
}

/// A job as the caller may see it. With `?wait=S`, answers when the job is no longer queued or
/// running, or after S seconds (at most 30), whichever comes first.
pub(crate) async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait = Duration::from_secs(query.wait.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::bad_request(format!(
            "wait is at most {} seconds",
            MAX_WAIT.as_secs()
        )));
    }
    let deadline = Instant::now() + wait;
    let mut finished = state.pool.subscribe();
    let mut shutdown = state.shutdown.clone();
    loop {
        finished.mark_unchanged();
        let id = id.clone();
        let (view, settled) = state
            .as_caller(&headers, ANYONE, move |veil, who| {
                let job = veil.job_as(&who, &id)?;
                let settled = job.settled();
                Ok((json!(job), settled))
            })
            .await?;
        let left = deadline.saturating_duration_since(Instant::now());
        if settled || left.is_zero() || *shutdown.borrow() {
            return Ok(Json(view));
        }
        tokio::select! {
            _ = tokio::time::timeout(left, finished.changed()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn decide(
    state: AppState,
    headers: HeaderMap,
    id: String,
    reject: Option<String>,
) -> ApiResult {
    let pool = state.pool.clone();
    let view = state
        .as_caller(&headers, Some(Operation::DecideJob), move |veil, who| {
            // The engine decides: another holder's job is NotFound, one not awaiting approval a
            // Conflict (409).
            match reject {
                Some(reason) => veil.reject_job(&who, &id, &reason)?,
                None => veil.approve(&who, &id)?,
            }
            Ok(json!(veil.job_as(&who, &id)?))
        })
        .await?;
    pool.wake();
    Ok(Json(view))
}

/// Approves a job on the caller's dataset: it is queued for a worker.
pub(crate) async fn approve_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    decide(state, headers, id, None).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RejectJob {
    reason: Option<String>,
}

/// Rejects a job on the caller's dataset (body: optional `{"reason": "..."}`). Nothing is charged.
pub(crate) async fn reject_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    let body = authenticated_body(&state, &headers, Operation::DecideJob, body).await?;
    let request: RejectJob = if body.is_empty() {
        RejectJob::default()
    } else {
        parse_body(&body)?
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "rejected by the data holder".into());
    decide(state, headers, id, Some(reason)).await
}

/// The job `id` for its consumer only; others who may see it are told results are not theirs.
pub(crate) async fn job_result(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!(veil.job_result(&who, &id)?)))
        })
        .await
}

pub(crate) async fn job_receipt(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!(veil.job_receipt(&who, &id)?)))
        })
        .await
}

/// The holder-side log of a job (module log lines, traps, bounding statistics): for the owner of
/// the job's dataset only — they can hold raw values a module chose to print.
pub(crate) async fn job_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            let lines = veil.job_logs(&who, &id)?;
            Ok(Json(json!({ "job": id, "lines": lines })))
        })
        .await
}

pub(crate) async fn budget(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state
        .as_caller(&headers, Some(Operation::ReadBudget), |veil, who| {
            Ok(Json(json!({ "budget": veil.budget(&who)? })))
        })
        .await
}

// ---- audit ----

pub(crate) async fn checkpoint(State(state): State<AppState>) -> Result<String, ApiError> {
    state.with(|veil| Ok(veil.audit_checkpoint()?)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    dataset: Option<String>,
    consumer: Option<String>,
    module: Option<String>,
    decision: Option<veil_audit::review::Decision>,
    since: Option<String>,
    until: Option<String>,
}

pub(crate) async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state
        .as_caller(&headers, Some(Operation::ReadAudit), move |veil, who| {
            let filter = veil_audit::review::Filter {
                dataset: q.dataset,
                consumer: q.consumer,
                module_hash: q.module,
                decision: q.decision,
                since: q.since,
                until: q.until,
            };
            Ok(Json(json!({ "entries": veil.audit_log_as(&who, filter)? })))
        })
        .await
}

pub(crate) async fn audit_summary(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state
        .as_caller(&headers, Some(Operation::ReadAudit), |veil, who| {
            Ok(Json(json!(veil_audit::review::summarize(
                &veil.audit_entries_for(&who)?
            ))))
        })
        .await
}

/// The whole log as JSON lines with a fresh signed checkpoint: what `veil audit verify --log`
/// checks offline.
pub(crate) async fn audit_export(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = state
        .as_caller(&headers, Some(Operation::ReadAudit), |veil, who| {
            Ok(veil.export_audit_for(&who)?)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionQuery {
    entry: u64,
    size: Option<u64>,
}

/// Proof that entry `entry` is in the first `size` entries (default: all), showing the caller only
/// what it may see of the entry (see `Veil::prove_inclusion_as`): a consumer gets the public part
/// of its own jobs' entries and nothing of any other entry, which answers `not_found` exactly like
/// an entry or size beyond the log.
pub(crate) async fn inclusion_proof(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    proof(state, headers, move |veil, who| {
        veil.prove_inclusion_as(who, q.entry, q.size)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    from: u64,
    size: Option<u64>,
}

/// Proof that the first `size` entries (default: all) extend the first `from`.
pub(crate) async fn consistency_proof(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    proof(state, headers, move |veil, _| {
        veil.prove_consistency(q.from, q.size)
    })
    .await
}

async fn proof(
    state: AppState,
    headers: HeaderMap,
    make: impl FnOnce(&Veil, &Caller) -> veil_engine::Result<veil_audit::Proof> + Send + 'static,
) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, move |veil, who| {
            Ok(Json(json!(make(veil, &who)?)))
        })
        .await
}

// ---- administration and operations ----

pub(crate) async fn principals(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state
        .as_caller(&headers, Some(Operation::ManagePrincipals), |veil, who| {
            Ok(Json(json!({ "principals": veil.principals_as(&who)? })))
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPrincipal {
    name: String,
    role: String,
}

/// Creates a principal and answers its token, once (only its hash is stored).
pub(crate) async fn add_principal(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = authenticated_body(&state, &headers, Operation::ManagePrincipals, body).await?;
    state
        .as_caller(
            &headers,
            Some(Operation::ManagePrincipals),
            move |veil, admin| {
                let request: AddPrincipal = parse_body(&body)?;
                let role = Role::parse(&request.role).ok_or_else(|| {
                    ApiError::bad_request("role is one of holder, consumer, reviewer, admin")
                })?;
                let token = veil.create_principal(&admin, &request.name, role)?;
                Ok((
                    StatusCode::CREATED,
                    Json(json!({ "name": request.name, "role": role, "token": token })),
                ))
            },
        )
        .await
}

/// Revokes a principal's token (admin). The name stays taken; the log records who did it.
pub(crate) async fn revoke_principal(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(
            &headers,
            Some(Operation::ManagePrincipals),
            move |veil, admin| {
                veil.revoke_principal(&admin, &name)?;
                Ok(Json(json!(veil.principal_as(&admin, &name)?)))
            },
        )
        .await
}

/// Replaces a principal's token with a fresh one, answered once (admin); re-enables a revoked one.
pub(crate) async fn reissue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    state
        .as_caller(
            &headers,
            Some(Operation::ManagePrincipals),
            move |veil, admin| {
                let who = veil.principal_as(&admin, &name)?;
                let token = veil.reissue_token(&admin, &name)?;
                Ok(Json(
                    json!({ "name": name, "role": who.role, "token": token }),
                ))
            },
        )
        .await
}

/// Prometheus metrics, for reviewers and admins (a scraper uses such a token).
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    let text = state
        .as_caller(&headers, Some(Operation::ReadAudit), move |veil, _| {
            Ok(metrics.render(veil)?)
        })
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The domain's published link key, which evaluations are proved against (public).
pub(crate) async fn link_key(State(state): State<AppState>) -> ApiResult {
    state.with(|veil| Ok(Json(json!(veil.link_key())))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateLink {
    /// Blinded identifiers, hex (`veil_link::Request::blinded`).
    blinded: Vec<String>,
}

/// Evaluates a holder's batch of blinded identifiers with the link key and its proof
/// (`veil_link`): the server sees only uniformly random points.
pub(crate) async fn evaluate_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = authenticated_body(&state, &headers, Operation::EvaluateLink, body).await?;
    let request: EvaluateLink = parse_body(&body)?;
    state
        .as_caller(&headers, Some(Operation::EvaluateLink), move |veil, who| {
            Ok(Json(json!(veil.evaluate_link(&who, &request.blinded)?)))
        })
        .await
}

/// The links the caller may see.
pub(crate) async fn links(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    state
        .as_caller(&headers, ANYONE, |veil, who| {
            Ok(Json(json!({ "links": veil.links_as(&who)? })))
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeLink {
    dataset: String,
    key: String,
    with: String,
    their_key: String,
}

/// Proposes a link from the caller's dataset to another's (holders).
pub(crate) async fn propose_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = authenticated_body(&state, &headers, Operation::ManageLinks, body).await?;
    let p: ProposeLink = parse_body(&body)?;
    let link = state
        .as_caller(&headers, Some(Operation::ManageLinks), move |veil, who| {
            Ok(json!(veil.propose_link(
                &who,
                &p.dataset,
                &p.key,
                &p.with,
                &p.their_key
            )?))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(link)))
}

/// Accepts a link proposed to one of the caller's datasets.
pub(crate) async fn accept_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    state
        .as_caller(&headers, Some(Operation::ManageLinks), move |veil, who| {
            Ok(Json(json!(veil.decide_link(&who, &id, None)?)))
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectLink {
    reason: String,
}

/// Rejects a link proposed to one of the caller's datasets (body: `{"reason": "..."}`).
pub(crate) async fn reject_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    let body = authenticated_body(&state, &headers, Operation::ManageLinks, body).await?;
    let r: RejectLink = parse_body(&body)?;
    state
        .as_caller(&headers, Some(Operation::ManageLinks), move |veil, who| {
            Ok(Json(json!(veil.decide_link(&who, &id, Some(&r.reason))?)))
        })
        .await
}

/// Revokes a link touching one of the caller's datasets (body: `{"reason": "..."}`).
pub(crate) async fn revoke_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    let body = authenticated_body(&state, &headers, Operation::ManageLinks, body).await?;
    let r: RejectLink = parse_body(&body)?;
    state
        .as_caller(&headers, Some(Operation::ManageLinks), move |veil, who| {
            Ok(Json(json!(veil.revoke_link(&who, &id, &r.reason)?)))
        })
        .await
}
