//! The parameter table: every tensor of the model as a range of one flat f32 buffer, under
//! its official `mamba_ssm` name, and the official initialisation.
//!
//! Tensors that take weight decay (matrices, the embedding, conv taps) come first, the rest
//! (A_log, D, norms, biases) after them, so AdamW decays `params[..decay_len]` in one launch.

use std::collections::HashMap;
use std::ops::Range;

use seqmamba_kernels::rng::Rng;
use serde::{Deserialize, Serialize};

use super::config::{MambaConfig, PoolingKind};

/// Whether and how a classifier reads the sequence both ways (Caduceus's BiMamba).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bidirectional {
    /// Causal only.
    Off,
    /// A reversed pass with the same mixer weights.
    Shared,
    /// A reversed pass with its own mixer weights.
    Separate,
}

/// What sits on top of the backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Head {
    /// Next-token logits through the (tied) LM head.
    LanguageModel,
    /// Class logits from a pooled sequence.
    Classifier {
        classes: usize,
        pooling: PoolingKind,
        bidirectional: Bidirectional,
    },
}

/// Ranges of one mixer's tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixerParams {
    pub in_proj: Range<usize>,
    pub conv_weight: Range<usize>,
    pub conv_bias: Range<usize>,
    pub x_proj: Range<usize>,
    pub dt_proj_weight: Range<usize>,
    pub dt_proj_bias: Range<usize>,
    pub a_log: Range<usize>,
    pub d_skip: Range<usize>,
    pub out_proj: Range<usize>,
}

/// Ranges of one residual block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerParams {
    pub norm: Range<usize>,
    pub mixer: MixerParams,
    /// The reversed pass's own mixer ([`Bidirectional::Separate`] only).
    pub reverse: Option<MixerParams>,
}

/// Ranges of the classification head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifierParams {
    pub weight: Range<usize>,
    pub bias: Range<usize>,
}

/// One named tensor of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The official name, e.g. `backbone.layers.0.mixer.in_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// Where each tensor lives in the flat parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamTable {
    pub embedding: Range<usize>,
    pub layers: Vec<LayerParams>,
    pub norm_f: Range<usize>,
    /// The untied LM head, when embeddings are not tied.
    pub lm_head: Option<Range<usize>>,
    pub classifier: Option<ClassifierParams>,
    pub entries: Vec<Entry>,
    /// Parameters `[0, decay_len)` take weight decay.
    pub decay_len: usize,
    pub total: usize,
}

const MIXER_TENSORS: [&str; 9] = [
    "in_proj.weight",
    "conv1d.weight",
    "x_proj.weight",
    "dt_proj.weight",
    "out_proj.weight",
    "A_log",
    "D",
    "dt_proj.bias",
    "conv1d.bias",
];

fn mixer_shapes(c: &MambaConfig) -> [Vec<usize>; 9] {
    let di = c.d_inner();
    [
        vec![2 * di, c.d_model],
        vec![di, 1, c.d_conv],
        vec![c.x_proj_width(), di],
        vec![di, c.dt_rank],
        vec![c.d_model, di],
        vec![di, c.d_state],
        vec![di],
        vec![di],
        vec![di],
    ]
}

fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.ends_with("norm.weight") && !name.ends_with("norm_f.weight")
}

impl ParamTable {
    /// The table of a model with `config` and `head`.
    ///
    /// ```
    /// use seqmamba::model::{Head, MambaConfig, ParamTable};
    /// let t = ParamTable::new(&MambaConfig::new(768, 24, 50277), &Head::LanguageModel);
    /// assert_eq!(t.total, 129_135_360); // mamba-130m, padded vocabulary 50280
    /// ```
    pub fn new(config: &MambaConfig, head: &Head) -> Self {
        let mut logical: Vec<(String, Vec<usize>)> = Vec::new();
        logical.push((
            "backbone.embedding.weight".into(),
            vec![config.padded_vocab(), config.d_model],
        ));
        if !config.tie_embeddings && matches!(head, Head::LanguageModel) {
            logical.push((
                "lm_head.weight".into(),
                vec![config.padded_vocab(), config.d_model],
            ));
        }
        let separate = matches!(
            head,
            Head::Classifier {
                bidirectional: Bidirectional::Separate,
                ..
            }
        );
        for i in 0..config.n_layer {
            logical.push((
                format!("backbone.layers.{i}.norm.weight"),
                vec![config.d_model],
            ));
            let mixers: &[&str] = if separate {
                &["mixer", "mixer_rev"]
            } else {
                &["mixer"]
            };
            for mixer in mixers {
                for (name, shape) in MIXER_TENSORS.iter().zip(mixer_shapes(config)) {
                    logical.push((format!("backbone.layers.{i}.{mixer}.{name}"), shape));
                }
            }
        }
        logical.push(("backbone.norm_f.weight".into(), vec![config.d_model]));
        if let Head::Classifier { classes, .. } = head {
            logical.push(("classifier.weight".into(), vec![*classes, config.d_model]));
            logical.push(("classifier.bias".into(), vec![*classes]));
        }

        let mut entries = Vec::with_capacity(logical.len());
        let mut offset = 0;
        let mut decay_len = 0;
        for pass_decays in [true, false] {
            for (name, shape) in logical.iter().filter(|(n, _)| decays(n) == pass_decays) {
                let len: usize = shape.iter().product();
                entries.push(Entry {
                    name: name.clone(),
                    shape: shape.clone(),
                    range: offset..offset + len,
                });
                offset += len;
            }
            if pass_decays {
                decay_len = offset;
            }
        }
        let by_name: HashMap<&str, Range<usize>> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.range.clone()))
            .collect();
        let get = |name: &str| by_name[name].clone();
        let mixer = |prefix: &str| MixerParams {
            in_proj: get(&format!("{prefix}.in_proj.weight")),
            conv_weight: get(&format!("{prefix}.conv1d.weight")),
            conv_bias: get(&format!("{prefix}.conv1d.bias")),
            x_proj: get(&format!("{prefix}.x_proj.weight")),
            dt_proj_weight: get(&format!("{prefix}.dt_proj.weight")),
            dt_proj_bias: get(&format!("{prefix}.dt_proj.bias")),
            a_log: get(&format!("{prefix}.A_log")),
            d_skip: get(&format!("{prefix}.D")),
            out_proj: get(&format!("{prefix}.out_proj.weight")),
        };
        let layers = (0..config.n_layer)
            .map(|i| LayerParams {
                norm: get(&format!("backbone.layers.{i}.norm.weight")),
                mixer: mixer(&format!("backbone.layers.{i}.mixer")),
                reverse: separate.then(|| mixer(&format!("backbone.layers.{i}.mixer_rev"))),
            })
            .collect();
        Self {
            embedding: get("backbone.embedding.weight"),
            layers,
            norm_f: get("backbone.norm_f.weight"),
            lm_head: by_name.get("lm_head.weight").cloned(),
            classifier: by_name.get("classifier.weight").map(|_| ClassifierParams {
                weight: get("classifier.weight"),
                bias: get("classifier.bias"),
            }),
            entries,
            decay_len,
            total: offset,
        }
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Fresh parameters as the official `mamba_ssm` initialises them, from `seed`.
    pub fn initialise(&self, config: &MambaConfig, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0f32; self.total];
        let mut rng = Rng::new(seed);
        for (index, entry) in self.entries.iter().enumerate() {
            let mut rng = rng.fork(index as u64);
            let values = &mut params[entry.range.clone()];
            let name = entry.name.as_str();
            let fan_in = *entry.shape.last().unwrap_or(&1) as f64;
            // nn.Linear / nn.Conv1d default: kaiming_uniform(a=√5) = U(±1/√fan_in).
            let mut uniform = |bound: f64, values: &mut [f32]| {
                values
                    .iter_mut()
                    .for_each(|v| *v = rng.uniform_in(-bound, bound) as f32)
            };
            if name.ends_with("embedding.weight") {
                values
                    .iter_mut()
                    .for_each(|v| *v = (0.02 * rng.normal()) as f32);
            } else if name.ends_with("out_proj.weight") {
                // Rescaled for the prenorm residual: one residual per layer.
                let scale = 1.0 / (config.n_layer as f64).sqrt();
                uniform(scale / fan_in.sqrt(), values);
            } else if name.ends_with("dt_proj.weight") {
                uniform(1.0 / (config.dt_rank as f64).sqrt(), values);
            } else if name.ends_with("dt_proj.bias") {
                let (lo, hi) = (config.dt_min.ln(), config.dt_max.ln());
                for v in values.iter_mut() {
                    let dt = rng.uniform_in(lo, hi).exp().max(config.dt_init_floor);
                    // Inverse of softplus: dt + ln(1 - e^-dt).
                    *v = (dt + (-(-dt).exp_m1()).ln()) as f32;
                }
            } else if name.ends_with("A_log") {
                for (i, v) in values.iter_mut().enumerate() {
                    *v = ((i % config.d_state) as f64 + 1.0).ln() as f32;
                }
            } else if name.ends_with(".D")
                || name.ends_with("norm.weight")
                || name.ends_with("norm_f.weight")
            {
                values.fill(1.0);
            } else if name.ends_with("conv1d.weight") || name.ends_with("conv1d.bias") {
                uniform(1.0 / (config.d_conv as f64).sqrt(), values);
            } else if name.ends_with(".weight") {
                uniform(1.0 / fan_in.sqrt(), values);
            }
            // Other biases (classifier.bias) stay zero.
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decayed_tensors_come_first() {
        let config = MambaConfig::new(32, 2, 10);
        let head = Head::Classifier {
            classes: 3,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Separate,
        };
        let t = ParamTable::new(&config, &head);
        for e in &t.entries {
            assert_eq!(e.range.end <= t.decay_len, decays(&e.name), "{}", e.name);
            assert_eq!(e.range.len(), e.shape.iter().product::<usize>());
        }
        assert!(t.entry("backbone.layers.1.mixer_rev.A_log").is_some());
        assert_eq!(t.entries.last().unwrap().range.end, t.total);
    }

    #[test]
    fn official_initialisation() {
        let config = MambaConfig::new(32, 2, 10);
        let t = ParamTable::new(&config, &Head::LanguageModel);
        let p = t.initialise(&config, 0);
        let a_log = &p[t.layers[0].mixer.a_log.clone()];
        assert_eq!(a_log[0], 0.0);
        assert!((a_log[15] - 16f32.ln()).abs() < 1e-6);
        assert!(
            p[t.layers[1].mixer.d_skip.clone()]
                .iter()
                .all(|&d| d == 1.0)
        );
        for &b in &p[t.layers[0].mixer.dt_proj_bias.clone()] {
            let dt = (b as f64).exp().ln_1p(); // softplus
            assert!((1e-3 * 0.999..=1e-1 * 1.001).contains(&dt), "dt {dt}");
        }
        assert_eq!(p, t.initialise(&config, 0));
        assert_ne!(p, t.initialise(&config, 1));
    }
}
