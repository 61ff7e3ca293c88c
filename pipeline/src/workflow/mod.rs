//! Workflows: one TOML file describes a run (data, model, task, training, evaluation,
//! outputs); [`run::run`] executes it into a run folder of raw records (see
//! `docs/workflows.md`), resumable from its last checkpoint.
//!
//! - [`schema`]: the workflow file, defaults, `--set` overrides, validation.
//! - [`data`]: sources → token examples and splits → batches derived from `(seed, step)`.
//! - [`run`]: the run folder, manifest, checkpoints, the training loop and resume.
//! - [`classify`], [`pretrain`], [`generate`]: the tasks.

pub mod classify;
pub mod data;
pub mod generate;
pub mod pretrain;
pub mod run;
pub mod schema;

use std::path::PathBuf;

pub use run::{RunOptions, RunSummary, resume, run};
pub use schema::Workflow;

use crate::ModelError;

/// The demo workflows (`seqmamba demo`), embedded: `(file, text)`.
pub const DEMO_WORKFLOWS: [(&str, &str); 3] = [
    (
        "workflows/demo.toml",
        include_str!("../../../workflows/demo.toml"),
    ),
    (
        "workflows/demo-audio.toml",
        include_str!("../../../workflows/demo-audio.toml"),
    ),
    (
        "workflows/demo-promoters.toml",
        include_str!("../../../workflows/demo-promoters.toml"),
    ),
];

/// Everything that can go wrong in a workflow.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--set {assignment}: {message}")]
    Override { assignment: String, message: String },
    #[error("invalid workflow: {0}")]
    Invalid(String),
    #[error("device: {0}")]
    Device(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    RunFolder { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] seqmamba_modalities::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<seqmamba_kernels::KernelError> for WorkflowError {
    fn from(e: seqmamba_kernels::KernelError) -> Self {
        WorkflowError::Model(e.into())
    }
}

/// A failed write to the output stream (stdout, or the file behind it).
pub(crate) fn output_error(source: std::io::Error) -> WorkflowError {
    WorkflowError::Io {
        path: "<output>".into(),
        source,
    }
}

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WorkflowError {
    let path = path.into();
    move |source| WorkflowError::Io { path, source }
}
