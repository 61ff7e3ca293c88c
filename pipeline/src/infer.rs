//! Inference with a language model: per-token log-likelihoods of long sequences, processed
//! in chunks with the recurrent state carried between them.

use seqmamba_kernels::Backend;

use crate::model::{Batch, Head, Model, Shape, IGNORE_INDEX};
use crate::ModelError;

/// Natural-log probability of each token given all before it: entry `i` is for position
/// `i + 1` (position 0 has no context). Memory stays bounded by `chunk_len` positions
/// whatever the sequence length.
pub fn score_tokens<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    chunk_len: usize,
) -> Result<Vec<f32>, ModelError> {
    if model.head != Head::LanguageModel {
        return Err(ModelError::Input(
            "scoring needs a language model; this checkpoint holds a classifier".into(),
        ));
    }
    let vocab = model.config.vocab_size;
    if let Some((pos, id)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab)
    {
        return Err(ModelError::Input(format!(
            "token id {id} at position {pos} is outside the model's vocabulary of {vocab}"
        )));
    }
    let be = &model.backend;
    let chunk_len = chunk_len.max(1);
    let mut state = model.decode_state(1)?;
    let mut logprobs = Vec::with_capacity(tokens.len().saturating_sub(1));
    let mut acts = None;
    for (chunk_index, chunk) in tokens.chunks(chunk_len).enumerate() {
        let start = chunk_index * chunk_len;
        let shape = Shape {
            batch: 1,
            len: chunk.len(),
        };
        if acts.as_ref().is_none_or(|(s, _)| *s != shape) {
            acts = Some((shape, model.activations(shape, false)?));
        }
        let acts = &mut acts.as_mut().expect("just set").1;
        let batch = Batch::new(be, shape, chunk, None, None)?;
        model.forward(&batch, acts, Some(&mut state))?;
        let targets: Vec<u32> = (start + 1..start + 1 + chunk.len())
            .map(|i| tokens.get(i).copied().unwrap_or(IGNORE_INDEX))
            .collect();
        let losses = model.loss(acts, &be.upload_ids(&targets)?, None)?;
        logprobs.extend(
            losses
                .iter()
                .zip(&targets)
                .filter(|(_, &t)| t != IGNORE_INDEX)
                .map(|(&l, _)| -l),
        );
    }
    Ok(logprobs)
}

#[cfg(test)]
mod tests {
    use seqmamba_kernels::Cpu;

    use super::*;
    use crate::model::MambaConfig;

    #[test]
    fn chunked_scores_equal_one_chunk_and_are_log_probabilities() {
        let model =
            Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 3).unwrap();
        let tokens: Vec<u32> = (0..37).map(|i| (i * 7 % 5) as u32).collect();
        let whole = score_tokens(&model, &tokens, 1000).unwrap();
        let chunked = score_tokens(&model, &tokens, 8).unwrap();
        assert_eq!(whole.len(), 36);
        for (a, b) in whole.iter().zip(&chunked) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
            assert!(*a < 0.0);
        }
        assert!(score_tokens(&model, &[1, 5], 8).is_err());
    }
}
