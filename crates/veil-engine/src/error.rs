//! The engine's one error type. Variants are categories; messages are written for the person who
//! made the request and never contain data values.
use veil_audit::AuditError;
use veil_catalog::CatalogError;
use veil_policy::PolicyError;
use veil_sandbox::SandboxError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A request is malformed or invalid (a file, policy, manifest, module or argument); the
    /// message names what is wrong and how to fix it. Nothing was changed.
    #[error("{0}")]
    BadInput(String),
    /// The request names something that does not exist — or that the caller may not know exists,
    /// which answers exactly the same; nothing was changed.
    #[error("{0}")]
    NotFound(String),
    /// The principal may not do this; nothing was changed.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The request clashes with what exists (a name already taken); nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// Too much is already pending for this principal; try again later. Nothing was changed.
    #[error("{0}")]
    Busy(String),
    /// The store cannot be used by this build (written by a newer Veil); nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// A job was refused by policy or budget; the refusal is recorded in the audit log.
    #[error("job {job} refused: {reason}")]
    Refused {
        job: String,
        code: crate::JobCode,
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
    EngineError::BadInput(msg.into())
}

/// What kind of failure an error is: how a service should answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was malformed or invalid; nothing changed.
    BadInput,
    /// The caller may not do this; nothing changed.
    Forbidden,
    /// The request names something that does not exist.
    NotFound,
    /// The request clashes with what exists (a duplicate name).
    Conflict,
    /// The job was refused by policy or budget (and the refusal recorded).
    Refused,
    /// Too much is pending for the caller; retry later.
    Busy,
    /// The store cannot serve requests as it is (see [`EngineError::Unavailable`]).
    Unavailable,
    /// Veil's own fault; the message is for the operator's log, not the caller.
    Internal,
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::BadInput(_) => ErrorKind::BadInput,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::Busy(_) => ErrorKind::Busy,
            EngineError::Unavailable(_) => ErrorKind::Unavailable,
            EngineError::Refused { .. } => ErrorKind::Refused,
            EngineError::Policy(PolicyError::Aggregation(_)) => ErrorKind::Internal,
            EngineError::Policy(_) => ErrorKind::BadInput,
            EngineError::Catalog(CatalogError::BadInput(_) | CatalogError::Read(_)) => {
                ErrorKind::BadInput
            }
            EngineError::Catalog(CatalogError::Duplicate(_)) => ErrorKind::Conflict,
            EngineError::Catalog(CatalogError::NotFound(_)) => ErrorKind::NotFound,
            EngineError::Sandbox(SandboxError::ModuleRejected(_)) => ErrorKind::BadInput,
            // Asking for a proof the log cannot give (an entry or size beyond it).
            EngineError::Audit(AuditError::Verification { .. }) => ErrorKind::BadInput,
            _ => ErrorKind::Internal,
        }
    }
}
