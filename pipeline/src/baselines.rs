//! Simple baselines that give a language model's bits per token a meaning: order-k Markov
//! counts and a general-purpose compressor.

use std::io::Write;

/// An order-`k` Markov model over `vocab` tokens with add-`alpha` smoothing.
///
/// ```
/// use seqmamba::baselines::Markov;
/// let m = Markov::fit(1, 2, 0.5, &[&[0, 1, 0, 1, 0, 1, 0, 1]]);
/// assert!(m.bits_per_token(&[0, 1, 0, 1]) < 0.5); // alternation is predictable
/// ```
#[derive(Clone, Debug)]
pub struct Markov {
    order: usize,
    vocab: usize,
    alpha: f64,
    /// `counts[context · vocab + token]`, contexts as base-`vocab` numbers.
    counts: Vec<u32>,
}

impl Markov {
    /// Counts every `(order)`-token context and its next token in `sequences`.
    pub fn fit(order: usize, vocab: usize, alpha: f64, sequences: &[&[u32]]) -> Self {
        let contexts = vocab.pow(order as u32);
        let mut counts = vec![0u32; contexts * vocab];
        for seq in sequences {
            for window in seq.windows(order + 1) {
                let context = Self::context(vocab, &window[..order]);
                counts[context * vocab + window[order] as usize] += 1;
            }
        }
        Self {
            order,
            vocab,
            alpha,
            counts,
        }
    }

    fn context(vocab: usize, tokens: &[u32]) -> usize {
        tokens.iter().fold(0, |c, &t| c * vocab + t as usize)
    }

    /// Mean bits per token of `sequence` from position `order` on (the first `order`
    /// tokens have no full context).
    pub fn bits_per_token(&self, sequence: &[u32]) -> f64 {
        let mut bits = 0.0;
        let mut n = 0usize;
        for window in sequence.windows(self.order + 1) {
            let context = Self::context(self.vocab, &window[..self.order]);
            let row = &self.counts[context * self.vocab..(context + 1) * self.vocab];
            let total: f64 =
                row.iter().map(|&c| c as f64).sum::<f64>() + self.alpha * self.vocab as f64;
            let p = (row[window[self.order] as usize] as f64 + self.alpha) / total;
            bits -= p.log2();
            n += 1;
        }
        bits / n.max(1) as f64
    }
}

/// Bits per byte that DEFLATE (level 9) needs for `test` after having seen `train`:
/// `8 · (|z(train ‖ test)| − |z(train)|) / |test|`.
pub fn deflate_bits_per_byte(train: &[u8], test: &[u8]) -> f64 {
    let size = |data: &[&[u8]]| {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        for part in data {
            encoder.write_all(part).expect("writing to memory");
        }
        encoder.finish().expect("writing to memory").len()
    };
    let both = size(&[train, test]);
    let alone = size(&[train]);
    8.0 * both.saturating_sub(alone) as f64 / test.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_data_costs_log2_vocab() {
        let mut rng = seqmamba_kernels::rng::Rng::new(1);
        let seq: Vec<u32> = (0..20_000).map(|_| rng.below(4) as u32).collect();
        let m = Markov::fit(0, 4, 1.0, &[&seq]);
        assert!((m.bits_per_token(&seq) - 2.0).abs() < 0.01);
    }

    #[test]
    fn higher_orders_capture_structure() {
        let seq: Vec<u32> = (0..3000u32).map(|i| [0, 1, 2, 1][i as usize % 4]).collect();
        let m0 = Markov::fit(0, 3, 0.5, &[&seq]).bits_per_token(&seq);
        let m2 = Markov::fit(2, 3, 0.5, &[&seq]).bits_per_token(&seq);
        assert!(m0 > 1.4 && m2 < 0.01, "{m0} {m2}");
    }

    #[test]
    fn compressor_finds_repeats() {
        let train = b"ACGTTGCAACGGTACCA".repeat(50);
        assert!(deflate_bits_per_byte(&train, &train[..400]) < 0.5);
    }
}
