//! Decoding the examples of a dataset in parallel (rayon), under the skip-or-fail policy.

use rayon::prelude::*;

use super::{Example, ExampleData};
use crate::audio::{load_mono, Normalization};
use crate::dna::{alignment::AlignmentOptions, read_tokens, tokenizer};
use crate::error::{Error, OnError, Result};

/// Gathers per-example results: under [`OnError::Fail`] the first error (in example order),
/// under [`OnError::Skip`] `None` in its place and a count.
fn collect<T>(results: Vec<Result<T>>, on_error: OnError) -> Result<(Vec<Option<T>>, u64)> {
    let mut skipped = 0;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(v) => out.push(Some(v)),
            Err(_) if on_error == OnError::Skip => {
                skipped += 1;
                out.push(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((out, skipped))
}

/// Decodes every audio example to mono f32 at `rate` Hz, in parallel. Returns the samples
/// (in example order, `None` for skipped ones) and how many were skipped.
///
/// ```
/// use seqmamba_modalities::{audio::Normalization, dataset, error::OnError};
/// let d = dataset::from_fsdd("../data-samples/audio/fsdd".as_ref()).unwrap();
/// let (clips, skipped) = dataset::decode_audio(&d.examples, 8000, Normalization::Peak, OnError::Skip).unwrap();
/// assert_eq!((clips.len(), skipped), (8, 0));
/// ```
pub fn decode_audio(
    examples: &[Example],
    rate: u32,
    normalization: Normalization,
    on_error: OnError,
) -> Result<(Vec<Option<Vec<f32>>>, u64)> {
    let results: Vec<Result<Vec<f32>>> = examples
        .par_iter()
        .map(|e| match &e.data {
            ExampleData::Path(path) => load_mono(path, rate, normalization),
            ExampleData::Tokens(_) => Err(Error::Invalid(format!(
                "example {} holds DNA tokens, not an audio file",
                e.id
            ))),
        })
        .collect();
    collect(results, on_error)
}

/// The DNA tokens of every example, in parallel: inline tokens as they are, files read whole
/// with their records joined by [`tokenizer::SEP`]. Returns tokens (`None` for skipped
/// examples) and how many were skipped.
///
/// ```
/// use seqmamba_modalities::dataset::{load_dna_tokens, Dataset, ExampleData};
/// use seqmamba_modalities::{dna::alignment::AlignmentOptions, error::OnError};
/// let d = Dataset::from_rows(vec![("a".into(), ExampleData::Tokens(vec![5, 6]), "x".into(), None, None)]);
/// let (tokens, skipped) = load_dna_tokens(&d.examples, AlignmentOptions::default(), OnError::Fail).unwrap();
/// assert_eq!((tokens[0].as_deref(), skipped), (Some(&[5u8, 6][..]), 0));
/// ```
pub fn load_dna_tokens(
    examples: &[Example],
    options: AlignmentOptions,
    on_error: OnError,
) -> Result<(Vec<Option<Vec<u8>>>, u64)> {
    let results: Vec<Result<Vec<u8>>> = examples
        .par_iter()
        .map(|e| match &e.data {
            ExampleData::Tokens(tokens) => Ok(tokens.clone()),
            ExampleData::Path(path) => {
                let mut joined = Vec::new();
                for record in read_tokens(path, options, OnError::Fail)? {
                    if !joined.is_empty() {
                        joined.push(tokenizer::SEP);
                    }
                    joined.extend_from_slice(&record?.tokens);
                }
                Ok(joined)
            }
        })
        .collect();
    collect(results, on_error)
}
