//! Classification results per split and fold: the confusion matrix and everything derived
//! from it, AUROC for two classes, and accuracy by sequence-length bucket.

use serde::Serialize;

use super::records::{Prediction, Predictions};
use crate::metrics::{auroc, ConfusionMatrix};

/// Headline metrics of one split and fold (`fold` is the fold number, `all` for the
/// predictions of every fold pooled, `mean` for the mean over folds).
///
/// ```
/// use seqmamba::report::SplitMetrics;
/// let m = SplitMetrics {
///     split: "test".into(), fold: "all".into(), examples: 10,
///     accuracy: 0.9, macro_f1: 0.88, mcc: 0.8, auroc: Some(0.95),
/// };
/// assert_eq!(m.fold, "all");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitMetrics {
    pub split: String,
    pub fold: String,
    pub examples: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub mcc: f64,
    /// Only for two classes (scores: probability of class 1).
    pub auroc: Option<f64>,
}

/// Examples with length in `[low, high]` and the fraction classified right.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthBucket {
    pub low: u64,
    pub high: u64,
    pub examples: u64,
    pub accuracy: f64,
}

/// One split and fold with its confusion matrix.
#[derive(Clone, Debug)]
pub struct Group {
    pub metrics: SplitMetrics,
    pub confusion: ConfusionMatrix,
    pub by_length: Vec<LengthBucket>,
}

/// The groups of every split, and the metrics rows in display order: per fold, pooled,
/// then the mean over folds (which has no confusion matrix of its own).
#[derive(Clone, Debug, Default)]
pub struct Classification {
    pub groups: Vec<Group>,
    pub metrics: Vec<SplitMetrics>,
}

/// The label used for pooled predictions of every fold.
pub const ALL_FOLDS: &str = "all";

/// Analyses each split (in order of first appearance): one group per fold when there are
/// several, then the pooled `all`; the metrics add the `mean` over folds.
pub fn analyse(predictions: &Predictions) -> Classification {
    let classes = predictions.class_names.len();
    let mut splits: Vec<&str> = Vec::new();
    for row in &predictions.rows {
        if !splits.contains(&row.split.as_str()) {
            splits.push(&row.split);
        }
    }
    let mut result = Classification::default();
    for split in splits {
        let rows: Vec<&Prediction> = predictions
            .rows
            .iter()
            .filter(|r| r.split == split)
            .collect();
        let mut folds: Vec<u32> = rows.iter().map(|r| r.fold).collect();
        folds.sort_unstable();
        folds.dedup();
        let mut per_fold = Vec::new();
        if folds.len() > 1 {
            for &fold in &folds {
                let fold_rows: Vec<&Prediction> =
                    rows.iter().copied().filter(|r| r.fold == fold).collect();
                per_fold.push(group(split, &fold.to_string(), classes, &fold_rows));
            }
        }
        let pooled = group(split, ALL_FOLDS, classes, &rows);
        result
            .metrics
            .extend(per_fold.iter().map(|g| g.metrics.clone()));
        result.metrics.push(pooled.metrics.clone());
        if !per_fold.is_empty() {
            result
                .metrics
                .push(mean_over_folds(&per_fold, &pooled.metrics));
        }
        result.groups.extend(per_fold);
        result.groups.push(pooled);
    }
    result
}

fn group(split: &str, fold: &str, classes: usize, rows: &[&Prediction]) -> Group {
    let confusion =
        ConfusionMatrix::from_pairs(classes, rows.iter().map(|r| (r.label, r.predicted)))
            .expect("class ids were checked against the prob_ columns when read");
    let auroc = (classes == 2)
        .then(|| {
            let scores: Vec<f64> = rows.iter().map(|r| r.probabilities[1]).collect();
            let positive: Vec<bool> = rows.iter().map(|r| r.label == 1).collect();
            auroc(&scores, &positive)
        })
        .flatten();
    Group {
        metrics: SplitMetrics {
            split: split.to_string(),
            fold: fold.to_string(),
            examples: confusion.total(),
            accuracy: confusion.accuracy(),
            macro_f1: confusion.macro_f1(),
            mcc: confusion.mcc(),
            auroc,
        },
        by_length: by_length(rows),
        confusion,
    }
}

/// The unweighted mean of each metric over folds; the example count is the pooled one.
fn mean_over_folds(per_fold: &[Group], pooled: &SplitMetrics) -> SplitMetrics {
    let mean = |f: fn(&SplitMetrics) -> f64| {
        per_fold.iter().map(|g| f(&g.metrics)).sum::<f64>() / per_fold.len() as f64
    };
    let aurocs: Vec<f64> = per_fold.iter().filter_map(|g| g.metrics.auroc).collect();
    SplitMetrics {
        split: pooled.split.clone(),
        fold: "mean".into(),
        examples: pooled.examples,
        accuracy: mean(|m| m.accuracy),
        macro_f1: mean(|m| m.macro_f1),
        mcc: mean(|m| m.mcc),
        auroc: (aurocs.len() == per_fold.len())
            .then(|| aurocs.iter().sum::<f64>() / aurocs.len() as f64),
    }
}

/// Power-of-two buckets `[2^k, 2^(k+1) − 1]` (length 0 in its own bucket), so runs with
/// different length ranges stay comparable.
fn bucket_of(length: u64) -> (u64, u64) {
    if length == 0 {
        return (0, 0);
    }
    let low = 1u64 << (63 - length.leading_zeros());
    (low, low.saturating_mul(2) - 1)
}

fn by_length(rows: &[&Prediction]) -> Vec<LengthBucket> {
    let mut buckets: Vec<LengthBucket> = Vec::new();
    for row in rows {
        let (low, high) = bucket_of(row.length);
        let index = match buckets.iter().position(|b| b.low == low) {
            Some(i) => i,
            None => {
                buckets.push(LengthBucket {
                    low,
                    high,
                    examples: 0,
                    accuracy: 0.0,
                });
                buckets.len() - 1
            }
        };
        let bucket = &mut buckets[index];
        bucket.examples += 1;
        // Holds the number correct until the division below.
        bucket.accuracy += f64::from(u8::from(row.label == row.predicted));
    }
    for bucket in &mut buckets {
        bucket.accuracy /= bucket.examples as f64;
    }
    buckets.sort_by_key(|b| b.low);
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(
        split: &str,
        fold: u32,
        length: u64,
        label: usize,
        predicted: usize,
        p1: f64,
    ) -> Prediction {
        Prediction {
            split: split.into(),
            fold,
            id: format!("{split}-{fold}-{length}"),
            length,
            label,
            predicted,
            probabilities: vec![1.0 - p1, p1],
        }
    }

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_of(0), (0, 0));
        assert_eq!(bucket_of(1), (1, 1));
        assert_eq!(bucket_of(200), (128, 255));
        assert_eq!(bucket_of(256), (256, 511));
    }

    #[test]
    fn folds_pooled_and_mean_groups() {
        let predictions = Predictions {
            class_names: vec!["neg".into(), "pos".into()],
            rows: vec![
                prediction("test", 0, 100, 1, 1, 0.9),
                prediction("test", 0, 100, 0, 0, 0.2),
                prediction("test", 1, 300, 1, 0, 0.4),
                prediction("test", 1, 300, 0, 0, 0.3),
                prediction("validation", 0, 300, 0, 0, 0.3),
            ],
        };
        let Classification { groups, metrics } = analyse(&predictions);
        let labels: Vec<(&str, &str)> = metrics
            .iter()
            .map(|m| (m.split.as_str(), m.fold.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("test", "0"),
                ("test", "1"),
                ("test", "all"),
                ("test", "mean"),
                ("validation", "all")
            ]
        );
        let folds: Vec<&str> = groups.iter().map(|g| g.metrics.fold.as_str()).collect();
        assert_eq!(folds, ["0", "1", "all", "all"]);
        assert_eq!(metrics[0].accuracy, 1.0);
        assert_eq!(metrics[1].accuracy, 0.5);
        assert_eq!(metrics[2].accuracy, 0.75);
        assert_eq!(metrics[3].accuracy, 0.75);
        // Pooled scores 0.9, 0.4 (positive) vs 0.2, 0.3: every pair right.
        assert_eq!(metrics[2].auroc, Some(1.0));
        // Fold 1: positive 0.4 over negative 0.3.
        assert_eq!(metrics[1].auroc, Some(1.0));
        // Validation has no positive example.
        assert_eq!(metrics[4].auroc, None);
        assert_eq!(groups[2].confusion.total(), 4);
        let buckets = &groups[2].by_length;
        assert_eq!(buckets.len(), 2);
        assert_eq!(
            (buckets[0].low, buckets[0].examples, buckets[0].accuracy),
            (64, 2, 1.0)
        );
        assert_eq!(
            (buckets[1].low, buckets[1].examples, buckets[1].accuracy),
            (256, 2, 0.5)
        );
    }
}
