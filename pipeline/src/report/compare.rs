//! Side-by-side comparison of several runs: one row per run and split with the headline
//! metrics, written as `comparison.parquet`, `comparison.csv` and `report.md`.

use std::path::{Path, PathBuf};

use polars::prelude::{Column, DataFrame};

use super::markdown::{number, table};
use super::{summarise, tables, ReportError, ReportSummary};

/// One run and split of the comparison.
struct Row {
    run: String,
    name: Option<String>,
    split: Option<String>,
    examples: Option<u64>,
    accuracy: Option<f64>,
    macro_f1: Option<f64>,
    mcc: Option<f64>,
    auroc: Option<f64>,
    bits_per_token: Option<f64>,
    best_baseline: Option<String>,
    best_baseline_bits: Option<f64>,
    final_loss: Option<f64>,
}

fn rows(summary: &ReportSummary) -> Vec<Row> {
    let mut splits: Vec<&str> = Vec::new();
    let names = summary
        .classification
        .iter()
        .map(|m| m.split.as_str())
        .chain(summary.language_model.iter().map(|s| s.split.as_str()));
    for split in names {
        if !splits.contains(&split) {
            splits.push(split);
        }
    }
    let row = |split: Option<&str>| {
        let metrics = summary
            .classification
            .iter()
            .find(|m| Some(m.split.as_str()) == split);
        let lm = summary
            .language_model
            .iter()
            .filter(|s| Some(s.split.as_str()) == split);
        let model = lm.clone().find(|s| !s.is_baseline());
        let best = lm
            .filter(|s| s.is_baseline())
            .min_by(|a, b| a.bits_per_token.total_cmp(&b.bits_per_token));
        Row {
            run: summary.run_dir.display().to_string(),
            name: summary.name.clone(),
            split: split.map(str::to_string),
            examples: metrics.map(|m| m.examples),
            accuracy: metrics.map(|m| m.accuracy),
            macro_f1: metrics.map(|m| m.macro_f1),
            mcc: metrics.map(|m| m.mcc),
            auroc: metrics.and_then(|m| m.auroc),
            bits_per_token: model.map(|s| s.bits_per_token),
            best_baseline: best.map(|s| s.model.clone()),
            best_baseline_bits: best.map(|s| s.bits_per_token),
            final_loss: summary.final_loss,
        }
    };
    if splits.is_empty() {
        vec![row(None)]
    } else {
        splits.into_iter().map(|s| row(Some(s))).collect()
    }
}

fn frame(path: &Path, rows: &[Row]) -> Result<DataFrame, ReportError> {
    let text = |f: fn(&Row) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let real = |f: fn(&Row) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    let columns = vec![
        Column::new(
            "run".into(),
            rows.iter().map(|r| r.run.clone()).collect::<Vec<_>>(),
        ),
        Column::new("name".into(), text(|r| r.name.clone())),
        Column::new("split".into(), text(|r| r.split.clone())),
        Column::new(
            "examples".into(),
            rows.iter().map(|r| r.examples).collect::<Vec<_>>(),
        ),
        Column::new("accuracy".into(), real(|r| r.accuracy)),
        Column::new("macro_f1".into(), real(|r| r.macro_f1)),
        Column::new("mcc".into(), real(|r| r.mcc)),
        Column::new("auroc".into(), real(|r| r.auroc)),
        Column::new("bits_per_token".into(), real(|r| r.bits_per_token)),
        Column::new("best_baseline".into(), text(|r| r.best_baseline.clone())),
        Column::new("best_baseline_bits".into(), real(|r| r.best_baseline_bits)),
        Column::new("final_loss".into(), real(|r| r.final_loss)),
    ];
    DataFrame::new(rows.len(), columns).map_err(|source| ReportError::Table {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the raw files of each run in `run_dirs` and writes a side-by-side comparison of
/// their headline metrics into `out` (`comparison.parquet`, `comparison.csv`, `report.md`).
/// Returns each run's summary.
///
/// ```no_run
/// use std::path::{Path, PathBuf};
/// let runs = [PathBuf::from("runs/a"), PathBuf::from("runs/b")];
/// let summaries = seqmamba::report::compare(&runs, Path::new("runs/a-vs-b"))?;
/// assert_eq!(summaries.len(), 2);
/// # Ok::<(), seqmamba::report::ReportError>(())
/// ```
pub fn compare(run_dirs: &[PathBuf], out: &Path) -> Result<Vec<ReportSummary>, ReportError> {
    let summaries = run_dirs
        .iter()
        .map(|dir| summarise(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<Row> = summaries.iter().flat_map(rows).collect();
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    tables::write(
        out,
        "comparison",
        frame(&out.join("comparison.csv"), &rows)?,
    )?;

    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "–".into());
    let md_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.run.clone(),
                shown(&r.name),
                shown(&r.split),
                r.examples.map_or_else(|| "–".into(), |n| n.to_string()),
                number(r.accuracy),
                number(r.macro_f1),
                number(r.mcc),
                number(r.auroc),
                number(r.bits_per_token),
                match (&r.best_baseline, r.best_baseline_bits) {
                    (Some(name), bits) => format!("{name} {}", number(bits)),
                    _ => "–".into(),
                },
                number(r.final_loss),
            ]
        })
        .collect();
    let md = format!(
        "# Comparison of {} runs\n\nClassification metrics pool every fold; bits per token \
         are per base for DNA and per sample for audio.\n\n{}\n\
         Tables: [CSV](comparison.csv), [Parquet](comparison.parquet)\n",
        summaries.len(),
        table(
            &[
                "run",
                "name",
                "split",
                "examples",
                "accuracy",
                "macro-F1",
                "MCC",
                "AUROC",
                "bits/token",
                "best baseline",
                "final loss",
            ],
            &md_rows,
        )
    );
    crate::fsutil::write_atomic(&out.join("report.md"), md.as_bytes())?;
    Ok(summaries)
}
