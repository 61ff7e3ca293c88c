//! The report's tables as polars frames, each written as Parquet and CSV.

use std::path::{Path, PathBuf};

use polars::prelude::{Column, CsvWriter, DataFrame, NamedFrom, ParquetWriter, SerWriter, Series};

use super::ReportError;
use super::analysis::{Group, SplitMetrics};
use super::records::{LmScore, PredictedLabel, Predictions, TrainStep};
use crate::fsutil::write_atomic;

fn frame(path: &Path, columns: Vec<Column>) -> Result<DataFrame, ReportError> {
    let height = columns.first().map_or(0, |c| c.len());
    DataFrame::new(height, columns).map_err(|source| ReportError::Table {
        path: path.to_path_buf(),
        source,
    })
}

fn column<T, P: ?Sized>(name: &str, values: T) -> Column
where
    Series: NamedFrom<T, P>,
{
    Column::new(name.into(), values)
}

fn group_keys(groups: &[Group], repeat: impl Fn(&Group) -> usize) -> Vec<Column> {
    let mut split = Vec::new();
    let mut fold = Vec::new();
    for g in groups {
        for _ in 0..repeat(g) {
            split.push(g.metrics.split.clone());
            fold.push(g.metrics.fold.clone());
        }
    }
    vec![column("split", split), column("fold", fold)]
}

/// `metrics`: accuracy, macro-F1, MCC and AUROC of each split and fold.
pub fn metrics(path: &Path, rows: &[SplitMetrics]) -> Result<DataFrame, ReportError> {
    let m = |f: fn(&SplitMetrics) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    frame(
        path,
        vec![
            column(
                "split",
                rows.iter().map(|r| r.split.clone()).collect::<Vec<_>>(),
            ),
            column(
                "fold",
                rows.iter().map(|r| r.fold.clone()).collect::<Vec<_>>(),
            ),
            column(
                "examples",
                rows.iter().map(|r| r.examples).collect::<Vec<u64>>(),
            ),
            column("accuracy", m(|r| r.accuracy)),
            column("macro_f1", m(|r| r.macro_f1)),
            column("mcc", m(|r| r.mcc)),
            column(
                "auroc",
                rows.iter().map(|r| r.auroc).collect::<Vec<Option<f64>>>(),
            ),
        ],
    )
}

/// `per_class`: precision, recall, F1 and support of each class in each split and fold.
pub fn per_class(
    path: &Path,
    groups: &[Group],
    names: &[String],
) -> Result<DataFrame, ReportError> {
    let mut columns = group_keys(groups, |g| g.confusion.classes());
    let (mut id, mut name, mut precision, mut recall, mut f1, mut support) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for g in groups {
        for (k, class) in names.iter().enumerate().take(g.confusion.classes()) {
            let s = g.confusion.class_scores(k);
            id.push(k as u32);
            name.push(class.clone());
            precision.push(s.precision);
            recall.push(s.recall);
            f1.push(s.f1);
            support.push(s.support);
        }
    }
    columns.extend([
        column("class_id", id),
        column("class", name),
        column("precision", precision),
        column("recall", recall),
        column("f1", f1),
        column("support", support),
    ]);
    frame(path, columns)
}

/// `confusion`: the count of every (label, predicted) pair in each split and fold.
pub fn confusion(
    path: &Path,
    groups: &[Group],
    names: &[String],
) -> Result<DataFrame, ReportError> {
    let mut columns = group_keys(groups, |g| g.confusion.classes().pow(2));
    let (mut label, mut label_name, mut predicted, mut predicted_name, mut count) =
        (vec![], vec![], vec![], vec![], vec![]);
    for g in groups {
        let classes = g.confusion.classes();
        for l in 0..classes {
            for p in 0..classes {
                label.push(l as u32);
                label_name.push(names[l].clone());
                predicted.push(p as u32);
                predicted_name.push(names[p].clone());
                count.push(g.confusion.count(l, p));
            }
        }
    }
    columns.extend([
        column("label", label),
        column("label_name", label_name),
        column("predicted", predicted),
        column("predicted_name", predicted_name),
        column("count", count),
    ]);
    frame(path, columns)
}

/// `by_length`: accuracy per power-of-two sequence-length bucket.
pub fn by_length(path: &Path, groups: &[Group]) -> Result<DataFrame, ReportError> {
    let mut columns = group_keys(groups, |g| g.by_length.len());
    let buckets = || groups.iter().flat_map(|g| &g.by_length);
    columns.extend([
        column("length_low", buckets().map(|b| b.low).collect::<Vec<u64>>()),
        column(
            "length_high",
            buckets().map(|b| b.high).collect::<Vec<u64>>(),
        ),
        column(
            "examples",
            buckets().map(|b| b.examples).collect::<Vec<u64>>(),
        ),
        column(
            "accuracy",
            buckets().map(|b| b.accuracy).collect::<Vec<f64>>(),
        ),
    ]);
    frame(path, columns)
}

/// `predictions`: every example with its class names, whether it was right, and the
/// probability of each class.
pub fn predictions(path: &Path, predictions: &Predictions) -> Result<DataFrame, ReportError> {
    let rows = &predictions.rows;
    let names = &predictions.class_names;
    let mut columns = vec![
        column(
            "split",
            rows.iter().map(|r| r.split.clone()).collect::<Vec<_>>(),
        ),
        column("fold", rows.iter().map(|r| r.fold).collect::<Vec<u32>>()),
        column("id", rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>()),
        column(
            "length",
            rows.iter().map(|r| r.length).collect::<Vec<u64>>(),
        ),
        column(
            "label",
            rows.iter().map(|r| r.label as u32).collect::<Vec<_>>(),
        ),
        column(
            "label_name",
            rows.iter()
                .map(|r| names[r.label].clone())
                .collect::<Vec<_>>(),
        ),
        column(
            "predicted",
            rows.iter().map(|r| r.predicted as u32).collect::<Vec<_>>(),
        ),
        column(
            "predicted_name",
            rows.iter()
                .map(|r| names[r.predicted].clone())
                .collect::<Vec<_>>(),
        ),
        column(
            "correct",
            rows.iter()
                .map(|r| r.label == r.predicted)
                .collect::<Vec<bool>>(),
        ),
    ];
    for k in 0..names.len() {
        let probability: Vec<f64> = rows.iter().map(|r| r.probabilities[k]).collect();
        columns.push(column(&format!("prob_{k}"), probability));
    }
    frame(path, columns)
}

/// `training`: the training log as read.
pub fn training(path: &Path, log: &[TrainStep]) -> Result<DataFrame, ReportError> {
    let f = |get: fn(&TrainStep) -> f64| log.iter().map(get).collect::<Vec<f64>>();
    frame(
        path,
        vec![
            column("step", log.iter().map(|s| s.step).collect::<Vec<u64>>()),
            column("fold", log.iter().map(|s| s.fold).collect::<Vec<u32>>()),
            column("loss", f(|s| s.loss)),
            column("grad_norm", f(|s| s.grad_norm)),
            column("lr", f(|s| s.lr)),
            column("tokens", log.iter().map(|s| s.tokens).collect::<Vec<u64>>()),
            column("seconds", f(|s| s.seconds)),
            column(
                "val_loss",
                log.iter().map(|s| s.val_loss).collect::<Vec<Option<f64>>>(),
            ),
        ],
    )
}

/// `predicted_labels`: records per predicted label of a predict run, with their share and
/// mean predicted probability.
pub fn predicted_labels(path: &Path, rows: &[PredictedLabel]) -> Result<DataFrame, ReportError> {
    frame(
        path,
        vec![
            column(
                "label",
                rows.iter().map(|r| r.label.clone()).collect::<Vec<_>>(),
            ),
            column(
                "records",
                rows.iter().map(|r| r.records).collect::<Vec<_>>(),
            ),
            column("share", rows.iter().map(|r| r.share).collect::<Vec<_>>()),
            column(
                "mean_probability",
                rows.iter().map(|r| r.mean_probability).collect::<Vec<_>>(),
            ),
        ],
    )
}

/// `lm_eval`: bits per token of the model and the baselines, with each row's difference from
/// the model on the same split (positive: the model needs fewer bits).
pub fn lm_eval(path: &Path, scores: &[LmScore]) -> Result<DataFrame, ReportError> {
    let model_bits = |split: &str| {
        scores
            .iter()
            .find(|s| s.split == split && !s.is_baseline())
            .map(|s| s.bits_per_token)
    };
    frame(
        path,
        vec![
            column(
                "split",
                scores.iter().map(|s| s.split.clone()).collect::<Vec<_>>(),
            ),
            column(
                "model",
                scores.iter().map(|s| s.model.clone()).collect::<Vec<_>>(),
            ),
            column(
                "bits_per_token",
                scores.iter().map(|s| s.bits_per_token).collect::<Vec<_>>(),
            ),
            column(
                "tokens",
                scores.iter().map(|s| s.tokens).collect::<Vec<_>>(),
            ),
            column(
                "bits_above_model",
                scores
                    .iter()
                    .map(|s| model_bits(&s.split).map(|m| s.bits_per_token - m))
                    .collect::<Vec<Option<f64>>>(),
            ),
        ],
    )
}

/// Writes `frame` as `<dir>/<name>.parquet` and `<dir>/<name>.csv`; returns both paths.
pub fn write(dir: &Path, name: &str, mut frame: DataFrame) -> Result<[PathBuf; 2], ReportError> {
    let parquet = dir.join(format!("{name}.parquet"));
    let csv = dir.join(format!("{name}.csv"));
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .finish(&mut frame)
        .map_err(|source| ReportError::Table {
            path: parquet.clone(),
            source,
        })?;
    write_atomic(&parquet, &bytes)?;
    let mut bytes = Vec::new();
    CsvWriter::new(&mut bytes)
        .finish(&mut frame)
        .map_err(|source| ReportError::Table {
            path: csv.clone(),
            source,
        })?;
    write_atomic(&csv, &bytes)?;
    Ok([parquet, csv])
}
