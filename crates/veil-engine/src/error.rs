//! The engine's one error type. Variants are categories; messages are written for the person who
//! made the request and never contain data values.
use veil_audit::AuditError;
use veil_catalog::CatalogError;
use veil_policy::PolicyError;
use veil_sandbox::SandboxError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A request is malformed or names something that does not exist; nothing was changed.
    #[error("{0}")]
    BadRequest(String),
    /// The principal may not do this; nothing was changed.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// A job was refused by policy or budget; the refusal is recorded in the audit log.
    #[error("job {job} refused: {reason}")]
    Refused {
        job: String,
        code: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn bad(msg: impl Into<String>) -> EngineError {
    EngineError::BadRequest(msg.into())
}
