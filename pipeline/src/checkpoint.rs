//! Checkpoints in the official `mamba_ssm` layout: `config.json` + `model.safetensors`
//! (`backbone.*`, `lm_head.weight` when untied), also readable in the Hugging Face layout.
//!
//! What the official layout has no place for sits beside it, so official tools still load
//! the backbone: `seqmamba.json` (head, labels, tokenizer and other metadata) and
//! `head.safetensors` (classifier weights, the reversed mixers of a bidirectional model).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::fsutil::write_atomic;
use crate::model::{Head, MambaConfig, ParamTable};
use crate::workflow::schema::{self, Modality};

/// How the training run turned its files into tokens: what `seqmamba classify` repeats on
/// new files so that they reach the model as the training examples did.
///
/// ```
/// use seqmamba::checkpoint::InputSpec;
/// use seqmamba::workflow::schema::Modality;
/// let spec = InputSpec::defaults(Modality::Dna, 1024);
/// assert_eq!((spec.seq_len, spec.sample_rate), (1024, 8000));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub modality: Modality,
    /// Positions the model saw an example over (longer examples were centre-cropped).
    pub seq_len: usize,
    /// Audio: sampling rate after resampling, `mulaw` or `linear` quantisation, and the
    /// amplitude normalisation (`peak`, `min-max`, `none`).
    pub sample_rate: u32,
    pub quantizer: String,
    pub normalization: String,
    /// DNA from SAM/BAM: reverse-strand reads turned back to the sequencer's orientation.
    pub restore_orientation: bool,
    /// DNA: probabilities averaged with the reverse complement's at evaluation.
    pub reverse_complement: bool,
}

impl InputSpec {
    /// The workflow schema's defaults for `modality` at `seq_len` positions.
    pub fn defaults(modality: Modality, seq_len: usize) -> Self {
        Self {
            modality,
            seq_len,
            sample_rate: schema::default_sample_rate(),
            quantizer: schema::default_quantizer(),
            normalization: schema::default_normalization(),
            restore_orientation: false,
            reverse_complement: false,
        }
    }
}

/// Our metadata beside the official files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub head: Head,
    /// Class names in label-id order (classifiers).
    #[serde(default)]
    pub labels: Vec<String>,
    /// How the training examples were made (absent in checkpoints written before it was
    /// recorded, and in those of other tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
    /// Free-form facts about the model (tokenizer, training run, ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    /// Metadata of a model with `head` and nothing else recorded yet.
    ///
    /// ```
    /// use seqmamba::checkpoint::Metadata;
    /// use seqmamba::model::Head;
    /// assert!(Metadata::new(Head::LanguageModel).labels.is_empty());
    /// ```
    pub fn new(head: Head) -> Self {
        Self {
            head,
            labels: Vec::new(),
            input: None,
            extra: Default::default(),
        }
    }
}

/// A loaded checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: MambaConfig,
    pub metadata: Metadata,
    /// Flat parameters laid out as `ParamTable::new(&config, &metadata.head)`.
    pub params: Vec<f32>,
}

const MODEL_FILE: &str = "model.safetensors";
const HEAD_FILE: &str = "head.safetensors";
const CONFIG_FILE: &str = "config.json";
const METADATA_FILE: &str = "seqmamba.json";

fn is_backbone(name: &str) -> bool {
    (name.starts_with("backbone.") && !name.contains(".mixer_rev.")) || name == "lm_head.weight"
}

impl Checkpoint {
    /// Writes the checkpoint into `dir` (created if missing), each file atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let table = ParamTable::new(&self.config, &self.metadata.head);
        if self.params.len() != table.total {
            return Err(ModelError::Input(format!(
                "checkpoint has {} parameters, its table {}",
                self.params.len(),
                table.total
            )));
        }
        let bytes: Vec<u8> = self.params.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = |backbone: bool| -> Result<Vec<(String, TensorView<'_>)>, ModelError> {
            table
                .entries
                .iter()
                .filter(|e| is_backbone(&e.name) == backbone)
                .map(|e| {
                    let data = &bytes[e.range.start * 4..e.range.end * 4];
                    TensorView::new(Dtype::F32, e.shape.clone(), data)
                        .map(|v| (e.name.clone(), v))
                        .map_err(|err| ModelError::Input(format!("{}: {err}", e.name)))
                })
                .collect()
        };
        let serialize = |path: PathBuf, tensors: Vec<(String, TensorView<'_>)>| {
            let format = HashMap::from([("format".to_string(), "pt".to_string())]);
            let data = safetensors::serialize(tensors, Some(format)).map_err(|e| {
                ModelError::Checkpoint {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            write_atomic(&path, &data)
        };
        serialize(dir.join(MODEL_FILE), views(true)?)?;
        let head_tensors = views(false)?;
        let head_path = dir.join(HEAD_FILE);
        if head_tensors.is_empty() {
            if head_path.exists() {
                std::fs::remove_file(&head_path).map_err(|source| ModelError::Io {
                    path: head_path.clone(),
                    source,
                })?;
            }
        } else {
            serialize(head_path, head_tensors)?;
        }
        let config = serde_json::to_string_pretty(&self.config.to_official_json())
            .expect("JSON values serialise");
        write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())?;
        let metadata = serde_json::to_string_pretty(&self.metadata).expect("metadata serialises");
        write_atomic(&dir.join(METADATA_FILE), metadata.as_bytes())
    }

    /// Reads a checkpoint folder in the official or the Hugging Face layout. A folder
    /// without `seqmamba.json` holds a language model.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| ModelError::Io { path, source })
        };
        let config_text =
            String::from_utf8(read(CONFIG_FILE)?).map_err(|_| ModelError::Checkpoint {
                path: dir.join(CONFIG_FILE),
                message: "not UTF-8 text".into(),
            })?;
        let hugging_face = config_text.contains("\"hidden_size\"");
        let config = MambaConfig::from_json(&config_text).map_err(|e| ModelError::Checkpoint {
            path: dir.join(CONFIG_FILE),
            message: e.to_string(),
        })?;
        let metadata = match std::fs::read(dir.join(METADATA_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::Checkpoint {
                path: dir.join(METADATA_FILE),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Metadata::new(Head::LanguageModel)
            }
            Err(source) => {
                return Err(ModelError::Io {
                    path: dir.join(METADATA_FILE),
                    source,
                });
            }
        };
        if !dir.join(MODEL_FILE).exists() && dir.join("pytorch_model.bin").exists() {
            return Err(ModelError::Checkpoint {
                path: dir.join("pytorch_model.bin"),
                message: "PyTorch pickles are not read; convert the state dict to \
                          model.safetensors (safetensors.torch.save_file)"
                    .into(),
            });
        }
        let table = ParamTable::new(&config, &metadata.head);
        let mut params = vec![f32::NAN; table.total];
        let mut filled = vec![false; table.entries.len()];
        let index: HashMap<&str, usize> = table
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut files = vec![(dir.join(MODEL_FILE), read(MODEL_FILE)?)];
        if dir.join(HEAD_FILE).exists() {
            files.push((dir.join(HEAD_FILE), read(HEAD_FILE)?));
        }
        for (path, bytes) in &files {
            let fail = |message: String| ModelError::Checkpoint {
                path: path.clone(),
                message,
            };
            let tensors = SafeTensors::deserialize(bytes)
                .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
            for (stored_name, view) in tensors.tensors() {
                let name = if hugging_face {
                    stored_name.replace("backbone.embeddings.", "backbone.embedding.")
                } else {
                    stored_name.clone()
                };
                let Some(&i) = index.get(name.as_str()) else {
                    if name == "lm_head.weight" && config.tie_embeddings {
                        continue; // the tied copy of the embedding
                    }
                    return Err(fail(format!(
                        "unexpected tensor `{stored_name}` for this configuration"
                    )));
                };
                let entry = &table.entries[i];
                let shape_matches = view.shape() == entry.shape.as_slice()
                    // conv1d.weight may be stored (D, K) or (D, 1, K).
                    || (name.ends_with("conv1d.weight")
                        && view.shape().iter().product::<usize>() == entry.range.len()
                        && view.shape().first() == entry.shape.first());
                if !shape_matches {
                    return Err(fail(format!(
                        "tensor `{stored_name}` has shape {:?}, expected {:?}",
                        view.shape(),
                        entry.shape
                    )));
                }
                let values = to_f32(&view)
                    .map_err(|message| fail(format!("tensor `{stored_name}`: {message}")))?;
                params[entry.range.clone()].copy_from_slice(&values);
                filled[i] = true;
            }
        }
        if let Some(missing) = table.entries.iter().zip(&filled).find(|(_, f)| !**f) {
            return Err(ModelError::Checkpoint {
                path: dir.join(MODEL_FILE),
                message: format!("missing tensor `{}`", missing.0.name),
            });
        }
        Ok(Self {
            config,
            metadata,
            params,
        })
    }
}

fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (f32, f16, bf16 are)"
            ));
        }
    };
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("non-finite value at element {bad}"));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bidirectional, PoolingKind};

    fn language_model() -> Checkpoint {
        let mut config = MambaConfig::new(16, 2, 10);
        config.d_state = 4;
        let head = Head::LanguageModel;
        let params = ParamTable::new(&config, &head).initialise(&config, 3);
        Checkpoint {
            config,
            metadata: Metadata::new(head),
            params,
        }
    }

    fn write_tensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    /// The checkpoint's tensors as (name, dtype, shape, bytes), converted by `encode`.
    fn tensors_as(
        c: &Checkpoint,
        dtype: Dtype,
        encode: impl Fn(f32) -> Vec<u8>,
    ) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        ParamTable::new(&c.config, &c.metadata.head)
            .entries
            .iter()
            .map(|e| {
                let bytes = c.params[e.range.clone()]
                    .iter()
                    .flat_map(|&x| encode(x))
                    .collect();
                (e.name.clone(), dtype, e.shape.clone(), bytes)
            })
            .collect()
    }

    #[test]
    fn round_trip_language_model_and_classifier() {
        let dir = tempfile::tempdir().unwrap();
        let lm = language_model();
        lm.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), lm);
        assert!(!dir.path().join(HEAD_FILE).exists());

        let head = Head::Classifier {
            classes: 3,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Separate,
        };
        let params = ParamTable::new(&lm.config, &head).initialise(&lm.config, 4);
        let classifier = Checkpoint {
            config: lm.config.clone(),
            metadata: Metadata {
                head,
                labels: vec!["a".into(), "b".into(), "c".into()],
                input: Some(InputSpec {
                    reverse_complement: true,
                    ..InputSpec::defaults(Modality::Dna, 300)
                }),
                extra: Default::default(),
            },
            params,
        };
        classifier.save(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), classifier);
        // The official file holds the backbone alone.
        let bytes = std::fs::read(dir.path().join(MODEL_FILE)).unwrap();
        let names = SafeTensors::deserialize(&bytes).unwrap().names().len();
        assert_eq!(names, 2 + 2 * 10);
    }

    #[test]
    fn half_precision_tensors_load() {
        let lm = language_model();
        for (dtype, encode) in [
            (
                Dtype::F16,
                (|x| f16::from_f32(x).to_le_bytes().to_vec()) as fn(f32) -> Vec<u8>,
            ),
            (Dtype::BF16, |x| bf16::from_f32(x).to_le_bytes().to_vec()),
        ] {
            let dir = tempfile::tempdir().unwrap();
            lm.save(dir.path()).unwrap();
            write_tensors(
                &dir.path().join(MODEL_FILE),
                &tensors_as(&lm, dtype, encode),
            );
            let loaded = Checkpoint::load(dir.path()).unwrap();
            for (a, b) in loaded.params.iter().zip(&lm.params) {
                assert!(
                    (a - b).abs() <= 8e-3 * b.abs() + 1e-6,
                    "{dtype:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn hugging_face_layout_loads() {
        let lm = language_model();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 16, "state_size": 4,
                "conv_kernel": 4, "expand": 2, "time_step_rank": "auto", "use_bias": false,
                "use_conv_bias": true, "layer_norm_epsilon": 1e-5}"#,
        )
        .unwrap();
        let mut tensors = tensors_as(&lm, Dtype::F32, |x| x.to_le_bytes().to_vec());
        for t in &mut tensors {
            t.0 = t.0.replace("backbone.embedding.", "backbone.embeddings.");
        }
        write_tensors(&dir.path().join(MODEL_FILE), &tensors);
        let loaded = Checkpoint::load(dir.path()).unwrap();
        assert_eq!(loaded.params, lm.params);
        assert_eq!(loaded.config.padded_vocab(), 16);
    }

    #[test]
    fn bad_checkpoints_name_the_tensor() {
        let lm = language_model();
        let dir = tempfile::tempdir().unwrap();
        lm.save(dir.path()).unwrap();
        let path = dir.path().join(MODEL_FILE);
        let mut tensors = tensors_as(&lm, Dtype::F32, |x| x.to_le_bytes().to_vec());

        let missing: Vec<_> = tensors
            .iter()
            .filter(|t| !t.0.ends_with("layers.1.mixer.D"))
            .cloned()
            .collect();
        write_tensors(&path, &missing);
        let e = Checkpoint::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("missing tensor `backbone.layers.1.mixer.D`"),
            "{e}"
        );

        let wrong = tensors
            .iter_mut()
            .find(|t| t.0.ends_with("layers.0.mixer.A_log"))
            .unwrap();
        wrong.2 = vec![wrong.2[1], wrong.2[0]];
        write_tensors(&path, &tensors);
        let e = Checkpoint::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("backbone.layers.0.mixer.A_log") && e.contains("shape"),
            "{e}"
        );

        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let e = Checkpoint::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("not a valid safetensors"),
            "{e}"
        );
    }
}
