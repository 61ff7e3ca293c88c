//! Reports of a run folder: tables (Parquet and CSV), PNG plots and `report.md`, computed
//! only from the raw files the workflow runner writes (see the run folder contract), so old
//! runs can be re-rendered and compared.
//!
//! ```no_run
//! let summary = seqmamba::report::render(std::path::Path::new("runs/promoters"))?;
//! for m in &summary.classification {
//!     println!("{} accuracy {:.3} MCC {:.3}", m.split, m.accuracy, m.mcc);
//! }
//! # Ok::<(), seqmamba::report::ReportError>(())
//! ```

mod analysis;
mod compare;
mod error;
mod markdown;
mod plots;
mod records;
pub mod spectrum;
mod tables;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use analysis::SplitMetrics;
pub use compare::compare;
pub use error::ReportError;
pub use records::{LmScore, PredictedLabel};

use analysis::{ALL_FOLDS, Classification, analyse};
use records::RunRecords;

/// The headline numbers of one run, for `--json` summaries and comparisons.
///
/// ```
/// let summary = seqmamba::report::ReportSummary::default();
/// assert!(summary.classification.is_empty() && summary.final_loss.is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReportSummary {
    pub run_dir: PathBuf,
    /// `name` of `manifest.json`, when there is one.
    pub name: Option<String>,
    /// Metrics of each split over every fold's predictions pooled (fold `all`).
    pub classification: Vec<SplitMetrics>,
    /// The rows of `lm_eval.csv`: the model's bits per token and the baselines'.
    pub language_model: Vec<LmScore>,
    /// Training loss at the last step, averaged over folds.
    pub final_loss: Option<f64>,
    /// Files written by [`render`], relative to the run folder (empty from [`summarise`]).
    pub files: Vec<PathBuf>,
}

struct Analysis {
    records: RunRecords,
    classification: Classification,
}

impl Analysis {
    fn of(run_dir: &Path) -> Result<Self, ReportError> {
        let records = RunRecords::load(run_dir)?;
        let classification = records
            .predictions
            .as_ref()
            .map(analyse)
            .unwrap_or_default();
        Ok(Self {
            records,
            classification,
        })
    }

    fn summary(&self, run_dir: &Path) -> ReportSummary {
        let final_loss = self.records.training.as_deref().and_then(|log| {
            let last = markdown::last_steps(log);
            (!last.is_empty()).then(|| last.iter().map(|s| s.loss).sum::<f64>() / last.len() as f64)
        });
        ReportSummary {
            run_dir: run_dir.to_path_buf(),
            name: self.records.manifest_str("name").map(str::to_string),
            classification: self
                .classification
                .metrics
                .iter()
                .filter(|m| m.fold == ALL_FOLDS)
                .cloned()
                .collect(),
            language_model: self.records.lm_eval.clone().unwrap_or_default(),
            final_loss,
            files: Vec::new(),
        }
    }
}

/// Reads the raw files of `run_dir` and computes its headline numbers without writing.
///
/// ```no_run
/// let summary = seqmamba::report::summarise(std::path::Path::new("runs/lm"))?;
/// println!("{}", serde_json::to_string_pretty(&summary).unwrap());
/// # Ok::<(), seqmamba::report::ReportError>(())
/// ```
pub fn summarise(run_dir: &Path) -> Result<ReportSummary, ReportError> {
    Ok(Analysis::of(run_dir)?.summary(run_dir))
}

fn create_dir(path: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Letters, digits, `-` and `_` of a split name, for file names.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads the raw files of `run_dir` and writes its report there: `tables/*.parquet` and
/// `tables/*.csv`, `plots/*.png` and `report.md`. Sections whose raw file is absent are
/// left out. Returns the headline numbers and the files written.
///
/// ```no_run
/// let summary = seqmamba::report::render(std::path::Path::new("runs/promoters"))?;
/// assert!(summary.files.iter().any(|f| f.ends_with("report.md")));
/// # Ok::<(), seqmamba::report::ReportError>(())
/// ```
pub fn render(run_dir: &Path) -> Result<ReportSummary, ReportError> {
    let analysis = Analysis::of(run_dir)?;
    let records = &analysis.records;
    let table_dir = run_dir.join("tables");
    let plot_dir = run_dir.join("plots");
    create_dir(&table_dir)?;
    create_dir(&plot_dir)?;
    let mut written: Vec<PathBuf> = Vec::new();
    let mut table_names: Vec<String> = Vec::new();
    let mut save = |name: &str, frame| -> Result<(), ReportError> {
        written.extend(tables::write(&table_dir, name, frame)?);
        table_names.push(name.to_string());
        Ok(())
    };
    let csv = |name: &str| table_dir.join(format!("{name}.csv"));

    let mut training_plot = None;
    if let Some(log) = records.training.as_deref() {
        save("training", tables::training(&csv("training"), log)?)?;
        if !log.is_empty() {
            plots::training_curve(&plot_dir.join("training.png"), log)?;
            training_plot = Some("plots/training.png".to_string());
        }
    }
    let mut confusion_plots = Vec::new();
    if let Some(predictions) = &records.predictions {
        let (groups, names) = (&analysis.classification.groups, &predictions.class_names);
        let metrics = &analysis.classification.metrics;
        save("metrics", tables::metrics(&csv("metrics"), metrics)?)?;
        save(
            "per_class",
            tables::per_class(&csv("per_class"), groups, names)?,
        )?;
        save(
            "confusion",
            tables::confusion(&csv("confusion"), groups, names)?,
        )?;
        save("by_length", tables::by_length(&csv("by_length"), groups)?)?;
        let table = tables::predictions(&csv("predictions"), predictions)?;
        save("predictions", table)?;
        for g in groups.iter().filter(|g| g.metrics.fold == ALL_FOLDS) {
            let split = &g.metrics.split;
            let link = format!("plots/confusion-{}.png", file_stem(split));
            let title = format!("Confusion matrix: {split}");
            plots::confusion_heat_map(&run_dir.join(&link), &title, &g.confusion, names)?;
            confusion_plots.push((split.clone(), link));
        }
    }
    if let Some(scores) = &records.lm_eval {
        save("lm_eval", tables::lm_eval(&csv("lm_eval"), scores)?)?;
    }
    if let Some(rows) = &records.predicted_labels {
        let table = tables::predicted_labels(&csv("predicted_labels"), rows)?;
        save("predicted_labels", table)?;
    }
    let mut audio_plots = Vec::new();
    for (index, path) in &records.generated_audio {
        let clip = plots::Clip::read(path)?;
        let waveform = format!("plots/sample-{index}-waveform.png");
        let spectrogram = format!("plots/sample-{index}-spectrogram.png");
        plots::waveform(
            &run_dir.join(&waveform),
            &format!("sample-{index}.wav: waveform"),
            &clip,
        )?;
        plots::spectrogram(
            &run_dir.join(&spectrogram),
            &format!("sample-{index}.wav: spectrogram"),
            &clip,
        )?;
        let seconds = clip.samples.len() as f64 / f64::from(clip.sample_rate.max(1));
        audio_plots.push((*index, seconds, clip.sample_rate, waveform, spectrogram));
    }

    let title = records
        .manifest_str("name")
        .map(str::to_string)
        .unwrap_or_else(|| run_dir.display().to_string());
    let md = markdown::render(
        &title,
        &markdown::Contents {
            records,
            classification: &analysis.classification,
            confusion_plots: &confusion_plots,
            training_plot: training_plot.as_deref(),
            audio_plots: &audio_plots,
            tables: &table_names,
        },
    )?;
    let report = run_dir.join("report.md");
    crate::fsutil::write_atomic(&report, md.as_bytes())?;

    let mut summary = analysis.summary(run_dir);
    summary.files = written
        .iter()
        .filter_map(|p| p.strip_prefix(run_dir).ok().map(Path::to_path_buf))
        .chain(training_plot.map(PathBuf::from))
        .chain(
            confusion_plots
                .into_iter()
                .map(|(_, link)| PathBuf::from(link)),
        )
        .chain(
            audio_plots
                .into_iter()
                .flat_map(|(_, _, _, w, s)| [PathBuf::from(w), PathBuf::from(s)]),
        )
        .chain([PathBuf::from("report.md")])
        .collect();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("test"), "test");
        assert_eq!(file_stem("../x y"), "___x_y");
    }
}
