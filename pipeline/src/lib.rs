//! The Mamba backbone and everything users run: heads, checkpoints, training, inference
//! and the `seqmamba` command-line program.

pub mod error;
pub mod model;

pub use error::ModelError;
pub mod baselines;
pub mod bench;
pub mod checkpoint;
pub mod continuation;
pub mod fsutil;
pub mod infer;
pub mod metrics;
pub mod parallel;
pub mod predict;
pub mod records;
pub mod report;
pub mod train;
pub mod workflow;
