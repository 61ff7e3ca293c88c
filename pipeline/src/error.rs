//! Errors of the model, checkpoints and training.

use std::path::PathBuf;

use seqmamba_kernels::KernelError;

/// Everything that can go wrong below the command line.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}
