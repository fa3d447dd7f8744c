//! Benchmarks live in `pipeline.rs`, `sandbox.rs` and `privacy.rs` (sharing `gate_plan.rs`);
//! results in `README.md`.
