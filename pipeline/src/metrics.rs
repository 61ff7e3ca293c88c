//! Classification metrics written out by hand: confusion matrix, per-class precision,
//! recall and F1, macro-F1, accuracy, multi-class MCC (Gorodkin's R_K) and rank-based AUROC.
//!
//! Conventions (those of scikit-learn): a ratio whose denominator is zero is 0 (precision of
//! a class never predicted, MCC when every example has the same label or prediction), and
//! macro-F1 averages over the classes that occur as a label or as a prediction.

/// Counts of (label, predicted) pairs over `classes` classes.
///
/// ```
/// use seqmamba::metrics::ConfusionMatrix;
/// let m = ConfusionMatrix::from_pairs(2, [(0, 0), (0, 1), (1, 1), (1, 1)]).unwrap();
/// assert_eq!(m.count(0, 1), 1);
/// assert_eq!(m.accuracy(), 0.75);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    /// `counts[label · classes + predicted]`.
    counts: Vec<u64>,
}

/// Precision, recall, F1 and support (number of examples with this label) of one class.
///
/// ```
/// use seqmamba::metrics::ConfusionMatrix;
/// let m = ConfusionMatrix::from_pairs(2, [(0, 0), (0, 1), (1, 1)]).unwrap();
/// let scores = m.class_scores(1);
/// assert_eq!((scores.precision, scores.recall, scores.support), (0.5, 1.0, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

impl ConfusionMatrix {
    /// An empty matrix over `classes` classes.
    ///
    /// ```
    /// let m = seqmamba::metrics::ConfusionMatrix::new(3);
    /// assert_eq!((m.classes(), m.total()), (3, 0));
    /// ```
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Counts `(label, predicted)` pairs; `None` when an id is not below `classes`.
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// assert!(ConfusionMatrix::from_pairs(2, [(0, 2)]).is_none());
    /// ```
    pub fn from_pairs(
        classes: usize,
        pairs: impl IntoIterator<Item = (usize, usize)>,
    ) -> Option<Self> {
        let mut matrix = Self::new(classes);
        for (label, predicted) in pairs {
            if label >= classes || predicted >= classes {
                return None;
            }
            matrix.counts[label * classes + predicted] += 1;
        }
        Some(matrix)
    }

    /// Number of classes (rows and columns).
    ///
    /// ```
    /// assert_eq!(seqmamba::metrics::ConfusionMatrix::new(4).classes(), 4);
    /// ```
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Examples with this `label` that were predicted as `predicted`.
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// let m = ConfusionMatrix::from_pairs(2, [(1, 0), (1, 0)]).unwrap();
    /// assert_eq!(m.count(1, 0), 2);
    /// ```
    pub fn count(&self, label: usize, predicted: usize) -> u64 {
        self.counts[label * self.classes + predicted]
    }

    /// Number of examples counted.
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// assert_eq!(ConfusionMatrix::from_pairs(2, [(1, 0), (0, 0)]).unwrap().total(), 2);
    /// ```
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn label_total(&self, class: usize) -> u64 {
        (0..self.classes).map(|p| self.count(class, p)).sum()
    }

    fn predicted_total(&self, class: usize) -> u64 {
        (0..self.classes).map(|l| self.count(l, class)).sum()
    }

    /// Fraction of examples on the diagonal (0 for an empty matrix).
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// assert_eq!(ConfusionMatrix::from_pairs(2, [(1, 0), (0, 0)]).unwrap().accuracy(), 0.5);
    /// ```
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|k| self.count(k, k)).sum();
        ratio(correct as f64, self.total() as f64)
    }

    /// Precision, recall, F1 and support of `class`.
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// let m = ConfusionMatrix::from_pairs(2, [(0, 0), (1, 0)]).unwrap();
    /// assert_eq!(m.class_scores(0).precision, 0.5);
    /// assert_eq!(m.class_scores(1).f1, 0.0);
    /// ```
    pub fn class_scores(&self, class: usize) -> ClassScores {
        let true_positive = self.count(class, class) as f64;
        let support = self.label_total(class);
        let precision = ratio(true_positive, self.predicted_total(class) as f64);
        let recall = ratio(true_positive, support as f64);
        ClassScores {
            precision,
            recall,
            f1: ratio(2.0 * precision * recall, precision + recall),
            support,
        }
    }

    /// Mean F1 over the classes that occur as a label or a prediction.
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// // Class 2 never occurs, so it does not pull the mean down.
    /// let m = ConfusionMatrix::from_pairs(3, [(0, 0), (1, 1)]).unwrap();
    /// assert_eq!(m.macro_f1(), 1.0);
    /// ```
    pub fn macro_f1(&self) -> f64 {
        let present: Vec<usize> = (0..self.classes)
            .filter(|&k| self.label_total(k) + self.predicted_total(k) > 0)
            .collect();
        let sum: f64 = present.iter().map(|&k| self.class_scores(k).f1).sum();
        ratio(sum, present.len() as f64)
    }

    /// Matthews correlation coefficient generalised to K classes (Gorodkin's R_K):
    /// `(c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))` with `c` correct, `s` total,
    /// `p_k` predicted and `t_k` true counts of class `k`.
    ///
    /// ```
    /// use seqmamba::metrics::ConfusionMatrix;
    /// let perfect = ConfusionMatrix::from_pairs(3, [(0, 0), (1, 1), (2, 2)]).unwrap();
    /// assert_eq!(perfect.mcc(), 1.0);
    /// ```
    pub fn mcc(&self) -> f64 {
        let s = self.total() as f64;
        let c: f64 = (0..self.classes).map(|k| self.count(k, k) as f64).sum();
        let (mut pt, mut pp, mut tt) = (0.0, 0.0, 0.0);
        for k in 0..self.classes {
            let p = self.predicted_total(k) as f64;
            let t = self.label_total(k) as f64;
            pt += p * t;
            pp += p * p;
            tt += t * t;
        }
        ratio(c * s - pt, ((s * s - pp) * (s * s - tt)).sqrt())
    }
}

/// Area under the ROC curve from scores of the positive class: the Mann–Whitney statistic
/// with mid-ranks, so a tied (positive, negative) pair counts one half. `None` when there is
/// no positive or no negative example, or a score is NaN.
///
/// ```
/// use seqmamba::metrics::auroc;
/// assert_eq!(auroc(&[0.9, 0.1, 0.5, 0.5], &[true, false, true, false]), Some(0.875));
/// ```
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one label per score");
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let positives = positive.iter().filter(|&&p| p).count();
    let negatives = positive.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, mid-ranked) ranks of the positives.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mid_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&i| positive[i]).count();
        positive_rank_sum += mid_rank * tied_positives as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmamba_kernels::rng::Rng;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Rows are labels, columns predictions.
    fn matrix(rows: &[&[u64]]) -> ConfusionMatrix {
        let classes = rows.len();
        let mut m = ConfusionMatrix::new(classes);
        for (l, row) in rows.iter().enumerate() {
            for (p, &n) in row.iter().enumerate() {
                m.counts[l * classes + p] = n;
            }
        }
        m
    }

    #[test]
    fn binary_scores_match_hand_computation() {
        // TP 5, FN 2, FP 1, TN 12 (class 1 positive).
        let m = matrix(&[&[12, 1], &[2, 5]]);
        assert!(close(m.accuracy(), 17.0 / 20.0));
        let pos = m.class_scores(1);
        assert!(close(pos.precision, 5.0 / 6.0));
        assert!(close(pos.recall, 5.0 / 7.0));
        assert!(close(pos.f1, 2.0 * 5.0 / (2.0 * 5.0 + 1.0 + 2.0)));
        assert_eq!(pos.support, 7);
        let neg = m.class_scores(0);
        assert!(close(neg.precision, 12.0 / 14.0));
        assert!(close(neg.recall, 12.0 / 13.0));
        assert!(close(m.macro_f1(), (pos.f1 + neg.f1) / 2.0));
        // Binary MCC: (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
        let expected = (5.0 * 12.0 - 1.0 * 2.0) / (6.0f64 * 7.0 * 13.0 * 14.0).sqrt();
        assert!(close(m.mcc(), expected), "{} vs {expected}", m.mcc());
    }

    #[test]
    fn three_class_scores_match_hand_computation() {
        // labels 0: [3,1,0]; 1: [0,2,2]; 2: [1,0,3]  → s = 12, c = 8
        let m = matrix(&[&[3, 1, 0], &[0, 2, 2], &[1, 0, 3]]);
        assert!(close(m.accuracy(), 8.0 / 12.0));
        let s1 = m.class_scores(1);
        assert!(close(s1.precision, 2.0 / 3.0));
        assert!(close(s1.recall, 2.0 / 4.0));
        assert!(close(s1.f1, 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5)));
        let s2 = m.class_scores(2);
        assert!(close(s2.precision, 3.0 / 5.0));
        assert!(close(s2.recall, 3.0 / 4.0));
        // F1 per class = 2TP / (2TP + FP + FN): 6/8, 4/7, 6/9.
        assert!(close(
            m.macro_f1(),
            (6.0 / 8.0 + 4.0 / 7.0 + 6.0 / 9.0) / 3.0
        ));
        // t = (4,4,4), p = (4,3,5): (8·12 − 48) / sqrt((144 − 50)(144 − 48))
        let expected = 48.0 / (94.0f64 * 96.0).sqrt();
        assert!(close(m.mcc(), expected), "{} vs {expected}", m.mcc());
    }

    #[test]
    fn degenerate_matrices_give_zero_not_nan() {
        let constant = matrix(&[&[0, 4], &[0, 6]]);
        assert_eq!(constant.mcc(), 0.0);
        assert_eq!(constant.class_scores(0).precision, 0.0);
        assert_eq!(constant.class_scores(0).f1, 0.0);
        let empty = ConfusionMatrix::new(3);
        assert_eq!(
            (empty.accuracy(), empty.macro_f1(), empty.mcc()),
            (0.0, 0.0, 0.0)
        );
        // Fully wrong binary predictions are perfectly anti-correlated.
        assert!(close(matrix(&[&[0, 3], &[3, 0]]).mcc(), -1.0));
    }

    #[test]
    fn from_pairs_counts_and_rejects_out_of_range_ids() {
        let m = ConfusionMatrix::from_pairs(3, [(0, 0), (2, 1), (2, 1), (1, 2)]).unwrap();
        assert_eq!(m, matrix(&[&[1, 0, 0], &[0, 0, 1], &[0, 2, 0]]));
        assert!(ConfusionMatrix::from_pairs(3, [(3, 0)]).is_none());
    }

    /// The definition: fraction of (positive, negative) pairs ranked right, ties one half.
    fn pairwise_auroc(scores: &[f64], positive: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if positive[i] && !positive[j] {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auroc_matches_pairwise_count_with_ties() {
        let mut rng = Rng::new(7);
        for trial in 0..50 {
            let n = 2 + trial % 40;
            // Few distinct scores, so ties are common.
            let scores: Vec<f64> = (0..n)
                .map(|_| (rng.uniform() * 5.0).floor() / 4.0)
                .collect();
            let mut positive: Vec<bool> = (0..n).map(|_| rng.uniform() < 0.4).collect();
            positive[0] = true;
            positive[1] = false;
            let fast = auroc(&scores, &positive).unwrap();
            let slow = pairwise_auroc(&scores, &positive);
            assert!(close(fast, slow), "trial {trial}: {fast} vs {slow}");
        }
    }

    #[test]
    fn auroc_hand_cases_and_undefined_cases() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5, 0.5, 0.5], &[true, false, false]), Some(0.5));
        assert_eq!(auroc(&[0.5, 0.7], &[true, true]), None);
        assert_eq!(auroc(&[f64::NAN, 0.7], &[true, false]), None);
    }
}
