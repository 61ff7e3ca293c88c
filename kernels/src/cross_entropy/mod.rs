//! Softmax cross-entropy fused with its gradient.

pub(crate) mod cuda;

use crate::math::{exp, sum};
use crate::parallel::{rows_per_job, run_jobs};
use crate::{check_len, element_count, KernelError};

/// Shape of `rows` logit vectors over `vocab` classes.
///
/// ```
/// use seqmamba_kernels::cross_entropy::CrossEntropyDims;
/// let dims = CrossEntropyDims { rows: 8 * 1024, vocab: 16 };
/// # let _ = dims;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropyDims {
    pub rows: usize,
    pub vocab: usize,
}

/// An error naming the first target that is neither below `vocab` nor `ignore_index`.
pub(crate) fn check_targets(
    op: &'static str,
    vocab: usize,
    targets: &[u32],
    ignore_index: u32,
) -> Result<(), KernelError> {
    let bad = targets
        .iter()
        .position(|&t| t != ignore_index && t as usize >= vocab);
    match bad {
        Some(row) => Err(KernelError::Invalid {
            op,
            message: format!(
                "target {} of row {row} is neither below the vocabulary size {vocab} nor the \
                 ignore index {ignore_index}",
                targets[row]
            ),
        }),
        None => Ok(()),
    }
}

/// `losses[r] = -ln softmax(logits[r])[targets[r]]` (0 where `targets[r] == ignore_index`).
/// With `dlogits`, also writes `dlogits[r] = (softmax(logits[r]) - onehot) · grad_scale`
/// (zero rows where ignored). A target `>= vocab` other than `ignore_index` is an error
/// naming the row.
///
/// The log-sum-exp subtracts the row's maximum first, so large logits neither overflow nor
/// lose the loss to rounding; sums are f32 ([`crate::math::sum`]). A typical `grad_scale` is one over the number of
/// rows not ignored, which makes `dlogits` the gradient of the mean loss.
///
/// ```
/// use seqmamba_kernels::cross_entropy::{forward_backward, CrossEntropyDims};
/// let dims = CrossEntropyDims { rows: 2, vocab: 2 };
/// let mut losses = [0.0; 2];
/// let mut dlogits = [0.0; 4];
/// forward_backward(dims, &[0.0, 0.0, 5.0, 1.0], &[1, u32::MAX], u32::MAX, &mut losses,
///     Some(&mut dlogits), 1.0).unwrap();
/// assert_eq!(losses, [2f32.ln(), 0.0]);
/// assert_eq!(dlogits, [0.5, -0.5, 0.0, 0.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    dims: CrossEntropyDims,
    logits: &[f32],
    targets: &[u32],
    ignore_index: u32,
    losses: &mut [f32],
    dlogits: Option<&mut [f32]>,
    grad_scale: f32,
) -> Result<(), KernelError> {
    const OP: &str = "cross_entropy";
    let CrossEntropyDims { rows, vocab } = dims;
    if vocab == 0 {
        return Err(KernelError::Invalid {
            op: OP,
            message: "the vocabulary must have at least one class".into(),
        });
    }
    let elements = element_count(OP, &[rows, vocab])?;
    check_len(OP, "logits", elements, logits)?;
    check_len(OP, "targets", rows, targets)?;
    check_len(OP, "losses", rows, losses)?;
    if let Some(dlogits) = &dlogits {
        check_len(OP, "dlogits", elements, dlogits)?;
    }
    check_targets(OP, vocab, targets, ignore_index)?;

    let per_job = rows_per_job(vocab);
    // The loss of row `r`; `work` receives e^(z - max), turned into the gradient when
    // `gradient` (so the losses are the same bits with and without the gradient).
    let row_loss = |r: usize, work: &mut [f32], gradient: bool| -> f32 {
        let target = targets[r];
        if target == ignore_index {
            work.fill(0.0);
            return 0.0;
        }
        let z = &logits[r * vocab..][..vocab];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (e, &v) in work.iter_mut().zip(z) {
            *e = exp(v - max);
        }
        let sum = sum(work);
        if gradient {
            let scale = grad_scale / sum;
            for d in work.iter_mut() {
                *d *= scale;
            }
            work[target as usize] -= grad_scale;
        }
        sum.ln() - (z[target as usize] - max)
    };
    match dlogits {
        Some(dlogits) => {
            let jobs: Vec<_> = losses
                .chunks_mut(per_job)
                .zip(dlogits.chunks_mut(per_job * vocab))
                .collect();
            run_jobs(jobs, |job, (losses, dlogits)| {
                for (i, (loss, d_row)) in losses
                    .iter_mut()
                    .zip(dlogits.chunks_exact_mut(vocab))
                    .enumerate()
                {
                    *loss = row_loss(job * per_job + i, d_row, true);
                }
            });
        }
        None => {
            let jobs: Vec<_> = losses.chunks_mut(per_job).collect();
            run_jobs(jobs, |job, losses| {
                let mut work = vec![0.0; vocab];
                for (i, loss) in losses.iter_mut().enumerate() {
                    *loss = row_loss(job * per_job + i, &mut work, false);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, finite_difference, to_f64};

    const IGNORE: u32 = u32::MAX;

    /// `-ln softmax(z)[target]` in f64, by the definition (shifted by the max to stay finite).
    fn reference_loss(z: &[f64], target: u32) -> f64 {
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        max + sum.ln() - z[target as usize]
    }

    fn random_targets(rng: &mut Rng, dims: CrossEntropyDims) -> Vec<u32> {
        (0..dims.rows)
            .map(|_| {
                if rng.below(4) == 0 {
                    IGNORE
                } else {
                    rng.below(dims.vocab as u64) as u32
                }
            })
            .collect()
    }

    #[test]
    fn losses_match_reference_also_for_large_logits() {
        let mut rng = Rng::new(1);
        let dims = CrossEntropyDims {
            rows: 30,
            vocab: 17,
        };
        for offset in [0.0, 1000.0, -1000.0] {
            let logits: Vec<f32> = rng
                .vec_uniform(dims.rows * dims.vocab, -4.0, 4.0)
                .iter()
                .map(|v| v + offset)
                .collect();
            let targets = random_targets(&mut rng, dims);
            let mut losses = vec![f32::NAN; dims.rows];
            forward_backward(dims, &logits, &targets, IGNORE, &mut losses, None, 1.0).unwrap();
            // Subtracting the offset in f64 shows the reference the same f32 logits.
            let expected: Vec<f64> = (0..dims.rows)
                .map(|r| match targets[r] {
                    IGNORE => 0.0,
                    t => reference_loss(&to_f64(&logits[r * dims.vocab..][..dims.vocab]), t),
                })
                .collect();
            assert_close(
                &format!("losses at offset {offset}"),
                &losses,
                &expected,
                1e-5,
                1e-6,
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(2);
        let grad_scale = 0.37;
        // 4096 classes make jobs of 8 rows: two jobs.
        for dims in [
            CrossEntropyDims { rows: 12, vocab: 9 },
            CrossEntropyDims {
                rows: 10,
                vocab: 4096,
            },
        ] {
            let logits = rng.vec_uniform(dims.rows * dims.vocab, -3.0, 3.0);
            let targets = random_targets(&mut rng, dims);
            let mut losses = vec![0.0; dims.rows];
            let mut dlogits = vec![f32::NAN; logits.len()];
            forward_backward(
                dims,
                &logits,
                &targets,
                IGNORE,
                &mut losses,
                Some(&mut dlogits),
                grad_scale,
            )
            .unwrap();
            let mut losses_only = vec![0.0; dims.rows];
            forward_backward(
                dims,
                &logits,
                &targets,
                IGNORE,
                &mut losses_only,
                None,
                grad_scale,
            )
            .unwrap();
            assert_eq!(
                losses, losses_only,
                "{dims:?}: losses with and without the gradient"
            );

            // Rows are independent: each row's gradient is the difference of its own loss.
            let mut expected = vec![0.0; logits.len()];
            for r in 0..dims.rows {
                if targets[r] == IGNORE {
                    continue;
                }
                let z = to_f64(&logits[r * dims.vocab..][..dims.vocab]);
                let g = finite_difference(
                    |z| grad_scale as f64 * reference_loss(z, targets[r]),
                    &z,
                    1e-6,
                );
                expected[r * dims.vocab..][..dims.vocab].copy_from_slice(&g);
            }
            assert_close(
                &format!("{dims:?} dlogits"),
                &dlogits,
                &expected,
                1e-4,
                1e-7,
            );
        }
    }

    #[test]
    fn ignored_rows_have_zero_loss_and_gradient() {
        let dims = CrossEntropyDims { rows: 2, vocab: 3 };
        let mut losses = [f32::NAN; 2];
        let mut dlogits = [f32::NAN; 6];
        let logits = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        forward_backward(
            dims,
            &logits,
            &[7, 2],
            7,
            &mut losses,
            Some(&mut dlogits),
            1.0,
        )
        .unwrap();
        assert_eq!(losses[0], 0.0);
        assert_eq!(dlogits[..3], [0.0; 3]);
        assert!(losses[1] > 0.0 && dlogits[3..].iter().all(|d| d.is_finite()));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dims = CrossEntropyDims { rows: 2, vocab: 3 };
        let logits = [0.0; 6];
        let err =
            forward_backward(dims, &logits, &[0, 3], IGNORE, &mut [0.0; 2], None, 1.0).unwrap_err();
        match err {
            KernelError::Invalid { op, message } => {
                assert_eq!(op, "cross_entropy");
                assert!(message.contains("row 1"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let err = forward_backward(
            dims,
            &logits[..5],
            &[0, 0],
            IGNORE,
            &mut [0.0; 2],
            None,
            1.0,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "logits",
                ..
            }
        ));
        let err = forward_backward(
            dims,
            &logits,
            &[0, 0],
            IGNORE,
            &mut [0.0; 2],
            Some(&mut [0.0; 5]),
            1.0,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "dlogits",
                ..
            }
        ));
        let err =
            forward_backward(dims, &logits, &[0], IGNORE, &mut [0.0; 2], None, 1.0).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "targets",
                ..
            }
        ));
        let empty = CrossEntropyDims { rows: 0, vocab: 0 };
        let err = forward_backward(empty, &[], &[], IGNORE, &mut [], None, 1.0).unwrap_err();
        assert!(matches!(err, KernelError::Invalid { .. }));
    }
}
