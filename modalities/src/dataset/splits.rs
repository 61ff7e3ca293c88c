//! Train/validation/test splits: seeded random, by group, and k-fold.

use std::{collections::BTreeSet, fmt, str::FromStr};

use seqmamba_kernels::rng::Rng;

use crate::error::{Error, Result};

/// Which part of a dataset an example belongs to.
///
/// ```
/// use seqmamba_modalities::dataset::splits::Split;
/// assert_eq!("valid".parse::<Split>().unwrap(), Split::Validation);
/// assert_eq!(Split::Test.to_string(), "test");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Ok(Split::Train),
            "validation" | "valid" | "val" | "dev" => Ok(Split::Validation),
            "test" | "testing" => Ok(Split::Test),
            other => Err(Error::Invalid(format!(
                "split must be train, validation or test, not {other:?}"
            ))),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        })
    }
}

fn check_fractions(validation: f64, test: f64) -> Result<()> {
    if validation < 0.0 || test < 0.0 || validation + test > 1.0 {
        return Err(Error::Invalid(format!(
            "validation {validation} and test {test} must be ≥ 0 and sum to at most 1"
        )));
    }
    Ok(())
}

/// A seeded permutation of `0..n` (Fisher–Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Splits `n` examples at random: `round(test·n)` to test, `round(validation·n)` to
/// validation, the rest to train. The same seed always gives the same split.
///
/// ```
/// use seqmamba_modalities::dataset::splits::{random_split, Split};
/// let s = random_split(10, 0.2, 0.3, 1).unwrap();
/// assert_eq!(s.iter().filter(|&&x| x == Split::Test).count(), 3);
/// assert_eq!(s.iter().filter(|&&x| x == Split::Validation).count(), 2);
/// assert_eq!(s, random_split(10, 0.2, 0.3, 1).unwrap());
/// ```
pub fn random_split(n: usize, validation: f64, test: f64, seed: u64) -> Result<Vec<Split>> {
    check_fractions(validation, test)?;
    let n_test = (test * n as f64).round() as usize;
    let n_val = ((validation * n as f64).round() as usize).min(n - n_test);
    let mut splits = vec![Split::Train; n];
    for (rank, &i) in permutation(n, seed).iter().enumerate() {
        if rank < n_test {
            splits[i] = Split::Test;
        } else if rank < n_test + n_val {
            splits[i] = Split::Validation;
        }
    }
    Ok(splits)
}

/// Holds out whole groups (e.g. speakers): examples whose group is in `test_groups` go to
/// test, the rest to train. Naming a group no example has is an error (a likely typo).
///
/// ```
/// use seqmamba_modalities::dataset::splits::{group_split, Split};
/// let groups = ["jackson", "theo", "jackson"];
/// assert_eq!(group_split(&groups, &["theo"]).unwrap(), vec![Split::Train, Split::Test, Split::Train]);
/// assert!(group_split(&groups, &["nobody"]).is_err());
/// ```
pub fn group_split<S: AsRef<str>>(groups: &[S], test_groups: &[&str]) -> Result<Vec<Split>> {
    let present: BTreeSet<&str> = groups.iter().map(|g| g.as_ref()).collect();
    if let Some(missing) = test_groups.iter().find(|g| !present.contains(*g)) {
        return Err(Error::Invalid(format!(
            "held-out group {missing:?} is not among the groups {present:?}"
        )));
    }
    Ok(groups
        .iter()
        .map(|g| {
            if test_groups.contains(&g.as_ref()) {
                Split::Test
            } else {
                Split::Train
            }
        })
        .collect())
}

/// Assigns each of `n` examples to one of `k` folds of (nearly) equal size at random.
///
/// ```
/// use seqmamba_modalities::dataset::splits::{k_fold, fold_split, Split};
/// let folds = k_fold(10, 5, 3).unwrap();
/// for f in 0..5 {
///     assert_eq!(folds.iter().filter(|&&x| x == f).count(), 2);
/// }
/// let split = fold_split(&folds, 0);
/// assert_eq!(split.iter().filter(|&&s| s == Split::Test).count(), 2);
/// ```
pub fn k_fold(n: usize, k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 || k > n {
        return Err(Error::Invalid(format!(
            "k-fold needs 2 ≤ k ≤ n examples (k = {k}, n = {n})"
        )));
    }
    let mut folds = vec![0; n];
    for (rank, &i) in permutation(n, seed).iter().enumerate() {
        folds[i] = rank % k;
    }
    Ok(folds)
}

/// The split for fold `fold` of a [`k_fold`] assignment: that fold is test, the rest train.
pub fn fold_split(folds: &[usize], fold: usize) -> Vec<Split> {
    folds
        .iter()
        .map(|&f| if f == fold { Split::Test } else { Split::Train })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_split_depends_on_the_seed_and_checks_fractions() {
        let a = random_split(1000, 0.1, 0.1, 1).unwrap();
        let b = random_split(1000, 0.1, 0.1, 2).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.iter().filter(|&&s| s == Split::Train).count(), 800);
        assert!(random_split(10, 0.6, 0.5, 1).is_err());
        assert!(random_split(10, -0.1, 0.5, 1).is_err());
    }

    #[test]
    fn every_example_is_tested_in_exactly_one_fold() {
        let folds = k_fold(23, 5, 9).unwrap();
        let mut tested = [0; 23];
        for f in 0..5 {
            for (i, s) in fold_split(&folds, f).iter().enumerate() {
                if *s == Split::Test {
                    tested[i] += 1;
                }
            }
        }
        assert!(tested.iter().all(|&t| t == 1));
        assert!(k_fold(3, 5, 0).is_err());
    }
}
