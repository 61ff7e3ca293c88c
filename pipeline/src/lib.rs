//! The Mamba backbone and everything users run: heads, checkpoints, training, inference
//! and the `seqmamba` command-line program.

pub mod error;
pub mod model;

pub use error::ModelError;
pub mod checkpoint;
pub mod fsutil;
pub mod train;
pub mod infer;
pub mod bench;
