//! The policy crate's one error type.
use std::fmt;

/// Where in a TOML document a problem is: a 1-based line and the dotted field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: Option<usize>,
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}, field `{}`", self.field),
            None => write!(f, "field `{}`", self.field),
        }
    }
}

/// Errors of the policy model, the job manifest check and the output gate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The document is not valid TOML or does not have the expected shape.
    #[error("{what} is not valid: {message}")]
    Syntax { what: &'static str, message: String },
    /// A field has a value the model does not allow.
    #[error("{what}: {location}: {message}")]
    Invalid {
        what: &'static str,
        location: Location,
        message: String,
    },
    /// A job asks for something the policy does not allow; the message is safe to show the consumer.
    #[error("refused by policy: {0}")]
    Refused(String),
    /// The aggregation engine failed (a bug or resource problem, not a policy decision).
    #[error("aggregation failed: {0}")]
    Aggregation(String),
}

impl From<datafusion::error::DataFusionError> for PolicyError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        PolicyError::Aggregation(e.to_string())
    }
}

impl From<datafusion::arrow::error::ArrowError> for PolicyError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        PolicyError::Aggregation(e.to_string())
    }
}

pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

/// 1-based line of a byte offset in `source`.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
