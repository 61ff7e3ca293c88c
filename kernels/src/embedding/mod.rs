//! Token embedding lookup.

pub(crate) mod cuda;

use crate::parallel::{rows_per_job, run_jobs};
use crate::{check_len, element_count, KernelError};

/// Shape of an embedding of `tokens` ids into a `(vocab, dim)` table.
///
/// ```
/// use seqmamba_kernels::embedding::EmbeddingDims;
/// let dims = EmbeddingDims { tokens: 8 * 1024, vocab: 16, dim: 256 };
/// # let _ = dims;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingDims {
    pub tokens: usize,
    pub vocab: usize,
    pub dim: usize,
}

impl EmbeddingDims {
    /// Checks `ids` and returns the elements of `(tokens, dim)` and of the table.
    pub(crate) fn check(
        &self,
        op: &'static str,
        ids: &[u32],
    ) -> Result<(usize, usize), KernelError> {
        check_len(op, "ids", self.tokens, ids)?;
        if let Some(position) = ids.iter().position(|&id| id as usize >= self.vocab) {
            return Err(KernelError::Invalid {
                op,
                message: format!(
                    "token id {} at position {position} is not below the vocabulary size {}",
                    ids[position], self.vocab
                ),
            });
        }
        Ok((
            element_count(op, &[self.tokens, self.dim])?,
            element_count(op, &[self.vocab, self.dim])?,
        ))
    }
}

/// `out[t] = table[ids[t]]`; an id `>= vocab` is an error naming the position.
///
/// ```
/// use seqmamba_kernels::embedding::{forward, EmbeddingDims};
/// let dims = EmbeddingDims { tokens: 2, vocab: 3, dim: 1 };
/// let mut out = [0.0; 2];
/// forward(dims, &[2, 0], &[10.0, 11.0, 12.0], &mut out).unwrap();
/// assert_eq!(out, [12.0, 10.0]);
/// assert!(forward(dims, &[3, 0], &[10.0, 11.0, 12.0], &mut out).is_err());
/// ```
pub fn forward(
    dims: EmbeddingDims,
    ids: &[u32],
    table: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "embedding_forward";
    let (out_len, table_len) = dims.check(OP, ids)?;
    check_len(OP, "table", table_len, table)?;
    check_len(OP, "out", out_len, out)?;
    if out.is_empty() {
        return Ok(());
    }
    let dim = dims.dim;
    let tokens = rows_per_job(dim);
    let jobs: Vec<_> = out.chunks_mut(tokens * dim).collect();
    run_jobs(jobs, |job, out| {
        for (row, &id) in out.chunks_exact_mut(dim).zip(&ids[job * tokens..]) {
            row.copy_from_slice(&table[id as usize * dim..][..dim]);
        }
    });
    Ok(())
}

/// `dtable[ids[t]] += d_out[t]`, summed in token order (deterministic).
///
/// The tokens are grouped by id first (a stable counting sort), so each job owns whole
/// rows of the table and adds their tokens in order: the result is the same as the plain
/// sequential loop over `t`, bit for bit, on any number of threads.
///
/// ```
/// use seqmamba_kernels::embedding::{backward, EmbeddingDims};
/// let dims = EmbeddingDims { tokens: 3, vocab: 2, dim: 1 };
/// let mut dtable = [1.0, 0.0];
/// backward(dims, &[1, 0, 1], &[1.0, 2.0, 3.0], &mut dtable).unwrap();
/// assert_eq!(dtable, [3.0, 4.0]);
/// ```
pub fn backward(
    dims: EmbeddingDims,
    ids: &[u32],
    d_out: &[f32],
    dtable: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "embedding_backward";
    let (out_len, table_len) = dims.check(OP, ids)?;
    check_len(OP, "d_out", out_len, d_out)?;
    check_len(OP, "dtable", table_len, dtable)?;
    if d_out.is_empty() {
        return Ok(());
    }
    let dim = dims.dim;
    let (starts, by_id) = group_by_id(dims.vocab, ids);
    let rows = rows_per_job(dim);
    let jobs: Vec<_> = dtable.chunks_mut(rows * dim).collect();
    run_jobs(jobs, |job, dtable| {
        for (i, row) in dtable.chunks_exact_mut(dim).enumerate() {
            let v = job * rows + i;
            for &t in &by_id[starts[v]..starts[v + 1]] {
                for (g, &d) in row.iter_mut().zip(&d_out[t * dim..][..dim]) {
                    *g += d;
                }
            }
        }
    });
    Ok(())
}

/// The tokens grouped by id with a stable counting sort: `starts[v]..starts[v + 1]` indexes
/// the positions of id `v` in `by_id`, in token order. `ids` must be below `vocab`.
pub(crate) fn group_by_id(vocab: usize, ids: &[u32]) -> (Vec<usize>, Vec<usize>) {
    let mut starts = vec![0usize; vocab + 1];
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        starts[v + 1] += starts[v];
    }
    let mut next = starts.clone();
    let mut by_id = vec![0usize; ids.len()];
    for (t, &id) in ids.iter().enumerate() {
        by_id[next[id as usize]] = t;
        next[id as usize] += 1;
    }
    (starts, by_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, bits, finite_difference, on_threads, to_f64};

    fn random_ids(rng: &mut Rng, dims: EmbeddingDims) -> Vec<u32> {
        (0..dims.tokens)
            .map(|_| rng.below(dims.vocab as u64) as u32)
            .collect()
    }

    #[test]
    fn forward_copies_table_rows() {
        let mut rng = Rng::new(1);
        let dims = EmbeddingDims {
            tokens: 50,
            vocab: 7,
            dim: 5,
        };
        let ids = random_ids(&mut rng, dims);
        let table = rng.vec_uniform(dims.vocab * dims.dim, -1.0, 1.0);
        let mut out = vec![0.0; dims.tokens * dims.dim];
        forward(dims, &ids, &table, &mut out).unwrap();
        for (t, &id) in ids.iter().enumerate() {
            let expected = &table[id as usize * dims.dim..][..dims.dim];
            assert_eq!(&out[t * dims.dim..][..dims.dim], expected, "token {t}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        let dims = EmbeddingDims {
            tokens: 40,
            vocab: 6,
            dim: 4,
        };
        let ids = random_ids(&mut rng, dims);
        let table = to_f64(&rng.vec_uniform(dims.vocab * dims.dim, -1.0, 1.0));
        let projection: Vec<f64> = (0..dims.tokens * dims.dim)
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        let d_out: Vec<f32> = projection.iter().map(|&p| p as f32).collect();
        let dtable0 = rng.vec_uniform(table.len(), -1.0, 1.0);
        let mut dtable = dtable0.clone();
        backward(dims, &ids, &d_out, &mut dtable).unwrap();

        let loss = |table: &[f64]| {
            let mut sum = 0.0;
            for (t, &id) in ids.iter().enumerate() {
                for c in 0..dims.dim {
                    sum += projection[t * dims.dim + c] * table[id as usize * dims.dim + c];
                }
            }
            sum
        };
        let expected: Vec<f64> = finite_difference(loss, &table, 1e-6)
            .iter()
            .zip(&dtable0)
            .map(|(g, &s)| g + s as f64)
            .collect();
        assert_close("dtable", &dtable, &expected, 1e-5, 1e-7);
    }

    #[test]
    fn backward_sums_in_token_order_on_any_thread_count() {
        // 40 000 tokens of a 300-row table of 256 columns: several jobs of table rows.
        let mut rng = Rng::new(3);
        let dims = EmbeddingDims {
            tokens: 40_000,
            vocab: 300,
            dim: 256,
        };
        let ids = random_ids(&mut rng, dims);
        let d_out = rng.vec_uniform(dims.tokens * dims.dim, -1.0, 1.0);
        let mut sequential = vec![0.0f32; dims.vocab * dims.dim];
        for (t, &id) in ids.iter().enumerate() {
            for c in 0..dims.dim {
                sequential[id as usize * dims.dim + c] += d_out[t * dims.dim + c];
            }
        }
        for threads in [1, 2] {
            let mut dtable = vec![0.0; dims.vocab * dims.dim];
            on_threads(threads, || backward(dims, &ids, &d_out, &mut dtable)).unwrap();
            assert_eq!(bits(&dtable), bits(&sequential), "{threads} threads");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dims = EmbeddingDims {
            tokens: 4,
            vocab: 3,
            dim: 2,
        };
        let table = [0.0; 6];
        let mut out = [0.0; 8];
        let err = forward(dims, &[0, 1, 2, 3], &table, &mut out).unwrap_err();
        match err {
            KernelError::Invalid { op, message } => {
                assert_eq!(op, "embedding_forward");
                assert!(message.contains("position 3"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let err = backward(dims, &[0, 7, 0, 0], &out, &mut [0.0; 6]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Invalid {
                op: "embedding_backward",
                ..
            }
        ));
        let err = forward(dims, &[0, 1, 2], &table, &mut out).unwrap_err();
        assert!(matches!(err, KernelError::Shape { tensor: "ids", .. }));
        let err = forward(dims, &[0; 4], &table[..5], &mut out).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "table",
                ..
            }
        ));
        let err = backward(dims, &[0; 4], &out, &mut [0.0; 5]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "dtable",
                ..
            }
        ));
    }
}
