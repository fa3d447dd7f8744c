//! Differential-privacy mechanisms. Each file documents its guarantee, its sensitivity argument
//! and its sources next to the code, and tests its sampler statistically.
mod discrete_gaussian;
mod discrete_laplace;
mod sample_aggregate;

pub use discrete_gaussian::DiscreteGaussian;
pub use discrete_laplace::DiscreteLaplace;
pub use sample_aggregate::{SampleAggregate, assign_blocks};
