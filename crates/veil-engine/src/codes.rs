//! The one list of job outcome codes: what the store, the audit log, holders and reviewers see
//! ([`JobCode`]), and the coarser states and codes a consumer is told ([`ConsumerState`],
//! [`ConsumerCode`]). Serialised with serde in `snake_case`; `openapi.json` and docs/api.md list
//! the same values.
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// Why a job was refused, rejected or failed, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobCode {
    /// The pre-check refused it: the policy does not allow what the manifest asks.
    Policy,
    /// The consumer's remaining ε or δ on the dataset does not cover it.
    Budget,
    /// The dataset's owner rejected it.
    RejectedByHolder,
    /// The stored module could not be loaded when the job started.
    ModuleRejected,
    /// Veil could not run it: its stored inputs were unusable or the aggregation failed.
    Internal,
    /// The process running it stopped (a crash); found and closed at the next open.
    Interrupted,
    /// The service shut down before the run finished.
    Shutdown,
}

impl JobCode {
    /// Every code, in the order the docs list them.
    pub const ALL: [JobCode; 7] = [
        JobCode::Policy,
        JobCode::Budget,
        JobCode::RejectedByHolder,
        JobCode::ModuleRejected,
        JobCode::Internal,
        JobCode::Interrupted,
        JobCode::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobCode::Policy => "policy",
            JobCode::Budget => "budget",
            JobCode::RejectedByHolder => "rejected_by_holder",
            JobCode::ModuleRejected => "module_rejected",
            JobCode::Internal => "internal",
            JobCode::Interrupted => "interrupted",
            JobCode::Shutdown => "shutdown",
        }
    }

    /// Reads a code as stored.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        JobCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| EngineError::Internal(format!("unknown job code `{s}` in the store")))
    }

    /// What the consumer is told about a job that ended with this code.
    pub fn for_consumer(self) -> ConsumerCode {
        match self {
            JobCode::Policy => ConsumerCode::Policy,
            JobCode::Budget => ConsumerCode::Budget,
            JobCode::RejectedByHolder => ConsumerCode::Rejected,
            JobCode::ModuleRejected
            | JobCode::Internal
            | JobCode::Interrupted
            | JobCode::Shutdown => ConsumerCode::Failed,
        }
    }
}

impl rusqlite::types::FromSql for JobCode {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        JobCode::parse(text).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

impl rusqlite::types::ToSql for JobCode {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl std::fmt::Display for JobCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state as its consumer sees it: the run's own states are not told apart from refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerState {
    Queued,
    AwaitingApproval,
    Running,
    Released,
    /// Refused, rejected or failed: [`ConsumerCode`] says which.
    Refused,
}

impl ConsumerState {
    /// Whether a job in this state has left `queued` and `running`.
    pub fn settled(self) -> bool {
        !matches!(self, ConsumerState::Queued | ConsumerState::Running)
    }

    pub const ALL: [ConsumerState; 5] = [
        ConsumerState::Queued,
        ConsumerState::AwaitingApproval,
        ConsumerState::Running,
        ConsumerState::Released,
        ConsumerState::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerState::Queued => "queued",
            ConsumerState::AwaitingApproval => "awaiting_approval",
            ConsumerState::Running => "running",
            ConsumerState::Released => "released",
            ConsumerState::Refused => "refused",
        }
    }
}

impl std::fmt::Display for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a consumer's job was refused, as the consumer is told: never more than which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerCode {
    Policy,
    Budget,
    Rejected,
    /// The run did not produce a releasable result; its budget stays spent.
    Failed,
}

impl ConsumerCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerCode::Policy => "policy",
            ConsumerCode::Budget => "budget",
            ConsumerCode::Rejected => "rejected",
            ConsumerCode::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ConsumerCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ε on the wire as its exact decimal text (`"0.5"`), not as millionths: what every answer and
/// document shows a person. Used as `#[serde(with = "crate::codes::epsilon_text")]`.
pub(crate) mod epsilon_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use veil_policy::Epsilon;

    pub fn serialize<S: Serializer>(epsilon: &Epsilon, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(epsilon)
    }

    /// Requires a positive decimal of at most six fractional digits (what [`Epsilon`] holds).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Epsilon, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<f64>()
            .ok()
            .and_then(Epsilon::from_f64)
            .filter(|e| e.to_string() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not an ε")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_they_are_stored() {
        for code in JobCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(JobCode::parse(code.as_str()).unwrap(), code);
        }
        for state in ConsumerState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Charged {
        #[serde(with = "epsilon_text")]
        epsilon: veil_policy::Epsilon,
    }

    #[test]
    fn epsilon_travels_as_its_exact_decimal_text() {
        use veil_policy::Epsilon;
        for (micro, text) in [(500_000, "0.5"), (1_000_000, "1"), (1, "0.000001")] {
            let value = Charged {
                epsilon: Epsilon(micro),
            };
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(json, format!("{{\"epsilon\":\"{text}\"}}"));
            assert_eq!(serde_json::from_str::<Charged>(&json).unwrap(), value);
        }
        for bad in ["0", "-1", "0.0000001", "1e400", "x", "0.50"] {
            let json = format!("{{\"epsilon\":\"{bad}\"}}");
            assert!(serde_json::from_str::<Charged>(&json).is_err(), "{bad}");
        }
    }
}
