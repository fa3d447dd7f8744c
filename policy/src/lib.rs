//! Veil's policy crate: what a data holder allows, and the trusted code that enforces it on output.
//!
//! The flow through this crate, for one job:
//! 1. [`Policy::from_toml`] parses the holder's release policy and
//!    [`Policy::validate_against`] checks it against the dataset's schema.
//! 2. [`JobManifest::from_toml`] parses the consumer's manifest; [`precheck`] decides whether the
//!    consumer may run it (access, forbidden columns, per-job ε and δ caps) and produces a
//!    [`JobPlan`] that carries the job's price ([`accountant::Charge`]: pure ε, zCDP ρ, δ).
//! 3. After the sandbox has run the module once per privacy unit, each unit's contributions go
//!    through a [`gate::Bounder`] (tagging, group limit, clamping), [`gate::aggregate`] computes
//!    exact aggregates with DataFusion, and [`gate::add_noise`] adds exact discrete Laplace or
//!    Gaussian noise ([`mechanisms`]) and selects the groups to release (partition selection, or
//!    the holder's public partitions).
//!
//! [`accountant`] is pure arithmetic; the ledger itself and the audit record live in
//! `veil-engine`, which calls the gate only after it has committed the debit. docs/privacy.md
//! states the promise this crate implements.
#![forbid(unsafe_code)]

pub mod accountant;
pub mod error;
pub mod fixed;
pub mod gate;
pub mod manifest;
pub mod mechanisms;
pub mod model;
pub mod schedule;
pub mod sql;

pub use accountant::{Charge, Delta, Spent};
pub use error::{PolicyError, Result};
pub use gate::{
    BlockEstimate, Bounder, BoundingStats, GateContribution, Mean, QuantileCell, Release,
    ReleasedValue,
};
pub use manifest::{
    Aggregate, DeliveredColumn, DeliveredType, JobManifest, JobPlan, Noise, precheck,
    precheck_with_lookups,
};
pub use model::{
    Approval, ColumnClass, ColumnRule, Epsilon, Policy, consumer_view_of_text, document_hash,
};
