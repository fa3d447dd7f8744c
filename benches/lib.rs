//! Benchmarks live in `pipeline.rs`; results in `README.md`.
