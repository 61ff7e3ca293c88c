//! Errors of reading a run folder and writing its report.

use std::path::PathBuf;

/// Everything that can go wrong while reading a run folder's raw files or writing its
/// report; each variant names the file at fault.
///
/// ```
/// use seqmamba::report::ReportError;
/// let error = ReportError::Csv {
///     path: "run/predictions.csv".into(),
///     line: 7,
///     message: "prob_1: not a number: \"x\"".into(),
/// };
/// assert_eq!(error.to_string(), "run/predictions.csv:7: prob_1: not a number: \"x\"");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed record; `line` counts from 1, the header being line 1.
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A file that is well formed but does not fit the run folder contract.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Table {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("{}: drawing failed: {message}", path.display())]
    Plot { path: PathBuf, message: String },
    #[error("{}: no raw files of a run (train_log.csv, predictions.csv, lm_eval.csv, predicted_labels.csv, generated/)", path.display())]
    NoRecords { path: PathBuf },
    #[error(transparent)]
    Write(#[from] crate::ModelError),
}
