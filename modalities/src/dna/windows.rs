//! Windows over genomes: fixed length with stride, seeded random, and position-based
//! train/validation/test splits in which no window of one split overlaps a window of another.

use std::ops::Range;

use seqmamba_kernels::rng::Rng;

use crate::dataset::splits::Split;
use crate::error::{Error, Result};

fn check(len: u64, window: u64) -> Result<()> {
    if window == 0 || window > len {
        return Err(Error::Invalid(format!(
            "window length {window} must be in 1..={len} (the sequence length)"
        )));
    }
    Ok(())
}

/// Windows `[start, start + window)` with `start = 0, stride, 2·stride, ...` that fit in a
/// sequence of `len` bases (a tail shorter than `window` is dropped).
///
/// ```
/// use seqmamba_modalities::dna::windows::fixed;
/// let w: Vec<_> = fixed(10, 4, 3).unwrap().collect();
/// assert_eq!(w, vec![0..4, 3..7, 6..10]);
/// ```
pub fn fixed(len: u64, window: u64, stride: u64) -> Result<impl Iterator<Item = Range<u64>>> {
    check(len, window)?;
    if stride == 0 {
        return Err(Error::Invalid("stride must be positive".into()));
    }
    let count = (len - window) / stride + 1;
    Ok((0..count).map(move |i| i * stride..i * stride + window))
}

/// `count` windows at seeded uniform random starts (the same seed gives the same windows).
///
/// ```
/// use seqmamba_modalities::dna::windows::random;
/// let a = random(1000, 100, 5, 42).unwrap();
/// assert_eq!(a, random(1000, 100, 5, 42).unwrap());
/// assert!(a.iter().all(|w| w.end <= 1000 && w.end - w.start == 100));
/// ```
pub fn random(len: u64, window: u64, count: usize, seed: u64) -> Result<Vec<Range<u64>>> {
    check(len, window)?;
    let mut rng = Rng::new(seed);
    Ok((0..count)
        .map(|_| {
            let start = rng.below(len - window + 1);
            start..start + window
        })
        .collect())
}

/// Splits a genome by position: it is cut into blocks of `block` bases and each block is
/// given to a split by a seeded draw (`validation` and `test` are fractions of blocks).
/// A window belongs to a split only if every block it touches has that split; windows across
/// a border between splits are dropped. So no window of one split shares a base with a
/// window of another.
///
/// ```
/// use seqmamba_modalities::dna::windows::PositionSplit;
/// use seqmamba_modalities::dataset::splits::Split;
/// let plan = PositionSplit { block: 10_000, validation: 0.1, test: 0.1, seed: 7 };
/// let windows = plan.windows(0, 1_000_000, 1_000, 500).unwrap();
/// let test: Vec<_> = windows.iter().filter(|(_, s)| *s == Split::Test).collect();
/// let train: Vec<_> = windows.iter().filter(|(_, s)| *s == Split::Train).collect();
/// assert!(!test.is_empty() && train.len() > test.len());
/// assert!(test.iter().all(|(t, _)| train.iter().all(|(r, _)| t.end <= r.start || r.end <= t.start)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PositionSplit {
    /// Block length in bases; at least the window length, so most windows fit in one block.
    pub block: u64,
    /// Fraction of blocks for validation.
    pub validation: f64,
    /// Fraction of blocks for test.
    pub test: f64,
    /// Seed of the block draws.
    pub seed: u64,
}

impl PositionSplit {
    /// The split of block `index` of sequence number `sequence` (0 for a one-sequence genome).
    pub fn split_of_block(&self, sequence: u64, index: u64) -> Split {
        // One draw per (sequence, block): the assignment never depends on the genome length.
        let u = Rng::new(self.seed).fork(sequence).fork(index).uniform();
        if u < self.test {
            Split::Test
        } else if u < self.test + self.validation {
            Split::Validation
        } else {
            Split::Train
        }
    }

    /// Windows of [`fixed`]`(len, window, stride)` over sequence number `sequence`, each with
    /// its split; windows spanning blocks of different splits are dropped.
    pub fn windows(
        &self,
        sequence: u64,
        len: u64,
        window: u64,
        stride: u64,
    ) -> Result<Vec<(Range<u64>, Split)>> {
        if self.block == 0 || !(0.0..=1.0).contains(&(self.validation + self.test)) {
            return Err(Error::Invalid(format!(
                "position split needs a positive block and validation + test in [0, 1] \
                 (block {}, validation {}, test {})",
                self.block, self.validation, self.test
            )));
        }
        Ok(fixed(len, window, stride)?
            .filter_map(|w| {
                let first = w.start / self.block;
                let last = (w.end - 1) / self.block;
                let split = self.split_of_block(sequence, first);
                (first + 1..=last)
                    .all(|b| self.split_of_block(sequence, b) == split)
                    .then_some((w, split))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_cover_and_reject_bad_arguments() {
        assert_eq!(
            fixed(8, 4, 4).unwrap().collect::<Vec<_>>(),
            vec![0..4, 4..8]
        );
        assert_eq!(fixed(9, 4, 4).unwrap().count(), 2);
        assert!(fixed(3, 4, 1).is_err());
        assert!(fixed(8, 4, 0).is_err());
    }

    #[test]
    fn position_split_never_overlaps_and_has_the_asked_fractions() {
        let plan = PositionSplit {
            block: 1_000,
            validation: 0.2,
            test: 0.1,
            seed: 3,
        };
        let windows = plan.windows(0, 2_000_000, 300, 100).unwrap();
        // Mark the bases covered per split and check no base is in two splits.
        let mut owner = vec![None; 2_000_000];
        for (w, split) in &windows {
            for base in w.start..w.end {
                let o = &mut owner[base as usize];
                assert!(
                    o.is_none() || *o == Some(*split),
                    "base {base} in two splits"
                );
                *o = Some(*split);
            }
        }
        let share = |s: Split| {
            windows.iter().filter(|(_, x)| *x == s).count() as f64 / windows.len() as f64
        };
        assert!(
            (share(Split::Test) - 0.1).abs() < 0.03,
            "test share {}",
            share(Split::Test)
        );
        assert!((share(Split::Validation) - 0.2).abs() < 0.04);
        // Different sequences get different block assignments.
        let other = plan.windows(1, 2_000_000, 300, 100).unwrap();
        assert_ne!(
            windows.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            other.iter().map(|(_, s)| *s).collect::<Vec<_>>()
        );
    }
}
