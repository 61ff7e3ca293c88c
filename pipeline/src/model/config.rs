//! Model configuration: the official `mamba_ssm` defaults, both checkpoint layouts' config
//! files, and named presets.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ModelError;

/// How a classifier turns a sequence of hidden states into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingKind {
    Mean,
    Last,
}

/// The Mamba-1 language model shape, as `mamba_ssm`'s `MambaConfig` + `ssm_cfg` define it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MambaConfig {
    pub d_model: usize,
    pub n_layer: usize,
    /// The vocabulary as given; the model uses [`MambaConfig::padded_vocab`] rows.
    pub vocab_size: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub expand: usize,
    pub dt_rank: usize,
    pub norm_eps: f32,
    pub pad_vocab_size_multiple: usize,
    pub tie_embeddings: bool,
    pub dt_min: f64,
    pub dt_max: f64,
    pub dt_init_floor: f64,
}

impl MambaConfig {
    /// The official defaults for the given size (`d_state` 16, `d_conv` 4, `expand` 2,
    /// `dt_rank` = ⌈d_model/16⌉, vocabulary padded to a multiple of 8, tied embeddings).
    ///
    /// ```
    /// use seqmamba::model::MambaConfig;
    /// let c = MambaConfig::new(768, 24, 50277);
    /// assert_eq!((c.dt_rank, c.d_inner(), c.padded_vocab()), (48, 1536, 50280));
    /// ```
    pub fn new(d_model: usize, n_layer: usize, vocab_size: usize) -> Self {
        Self {
            d_model,
            n_layer,
            vocab_size,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            dt_rank: d_model.div_ceil(16),
            norm_eps: 1e-5,
            pad_vocab_size_multiple: 8,
            tie_embeddings: true,
            dt_min: 1e-3,
            dt_max: 1e-1,
            dt_init_floor: 1e-4,
        }
    }

    /// A named preset: `tiny` (d 64, 2 layers), `small` (d 128, 4 layers), `130m`
    /// (d 768, 24 layers, the official mamba-130m shape).
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ModelError> {
        match name {
            "tiny" => Ok(Self::new(64, 2, vocab_size)),
            "small" => Ok(Self::new(128, 4, vocab_size)),
            "130m" => Ok(Self::new(768, 24, vocab_size)),
            _ => Err(ModelError::Config(format!(
                "unknown preset `{name}` (known: tiny, small, 130m)"
            ))),
        }
    }

    /// Channels of the mixer (`expand · d_model`).
    pub fn d_inner(&self) -> usize {
        self.expand * self.d_model
    }

    /// Outputs of x_proj: `dt_rank + 2 · d_state` (dt, B, C).
    ///
    /// ```
    /// use seqmamba::model::MambaConfig;
    /// assert_eq!(MambaConfig::new(768, 24, 256).x_proj_width(), 48 + 2 * 16);
    /// ```
    pub fn x_proj_width(&self) -> usize {
        self.dt_rank + 2 * self.d_state
    }

    /// Rows of the embedding and logits: the vocabulary rounded up to the padding multiple.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size
            .div_ceil(self.pad_vocab_size_multiple.max(1))
            * self.pad_vocab_size_multiple.max(1)
    }

    /// Parses an official `config.json` (`d_model`, `n_layer`, `ssm_cfg`, ...) or a Hugging
    /// Face one (`hidden_size`, `num_hidden_layers`, `state_size`, ...); missing keys take
    /// the official defaults.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json is not valid JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json is not a JSON object".into()))?;
        if object.contains_key("hidden_size") {
            Self::from_hugging_face(&value)
        } else {
            Self::from_official(&value)
        }
    }

    fn from_official(value: &Value) -> Result<Self, ModelError> {
        let d_model = required(value, "d_model")?;
        let mut config = Self::new(
            d_model,
            required(value, "n_layer")?,
            required(value, "vocab_size")?,
        );
        if value.get("rms_norm").and_then(Value::as_bool) == Some(false) {
            return Err(ModelError::Config(
                "rms_norm = false (LayerNorm) is not supported; only RMSNorm models load".into(),
            ));
        }
        config.pad_vocab_size_multiple = optional(value, "pad_vocab_size_multiple")?.unwrap_or(8);
        config.tie_embeddings = value
            .get("tie_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if let Some(ssm) = value.get("ssm_cfg").filter(|v| !v.is_null()) {
            if let Some(layer) = ssm.get("layer").and_then(Value::as_str)
                && layer != "Mamba1"
            {
                return Err(ModelError::Config(format!(
                    "ssm_cfg.layer = {layer}: only Mamba1 is supported"
                )));
            }
            reject_true(ssm, "bias", "in/out projection biases")?;
            if ssm.get("conv_bias").and_then(Value::as_bool) == Some(false) {
                return Err(ModelError::Config(
                    "ssm_cfg.conv_bias = false is not supported".into(),
                ));
            }
            config.d_state = optional(ssm, "d_state")?.unwrap_or(config.d_state);
            config.d_conv = optional(ssm, "d_conv")?.unwrap_or(config.d_conv);
            config.expand = optional(ssm, "expand")?.unwrap_or(config.expand);
            config.dt_rank = match ssm.get("dt_rank") {
                None | Some(Value::Null) => config.dt_rank,
                Some(Value::String(s)) if s == "auto" => config.dt_rank,
                Some(_) => optional(ssm, "dt_rank")?.unwrap_or(config.dt_rank),
            };
            for (key, slot) in [
                ("dt_min", &mut config.dt_min),
                ("dt_max", &mut config.dt_max),
                ("dt_init_floor", &mut config.dt_init_floor),
            ] {
                if let Some(x) = ssm.get(key).and_then(Value::as_f64) {
                    *slot = x;
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn from_hugging_face(value: &Value) -> Result<Self, ModelError> {
        let d_model = required(value, "hidden_size")?;
        let mut config = Self::new(
            d_model,
            required(value, "num_hidden_layers")?,
            required(value, "vocab_size")?,
        );
        config.d_state = optional(value, "state_size")?.unwrap_or(16);
        config.d_conv = optional(value, "conv_kernel")?.unwrap_or(4);
        config.expand = optional(value, "expand")?.unwrap_or(2);
        config.dt_rank = match value.get("time_step_rank") {
            Some(Value::String(s)) if s == "auto" => d_model.div_ceil(16),
            _ => optional(value, "time_step_rank")?.unwrap_or(d_model.div_ceil(16)),
        };
        if let Some(eps) = value.get("layer_norm_epsilon").and_then(Value::as_f64) {
            config.norm_eps = eps as f32;
        }
        reject_true(value, "use_bias", "in/out projection biases")?;
        if value.get("use_conv_bias").and_then(Value::as_bool) == Some(false) {
            return Err(ModelError::Config(
                "use_conv_bias = false is not supported".into(),
            ));
        }
        // The Hugging Face vocabulary is already padded.
        config.pad_vocab_size_multiple = 1;
        config.tie_embeddings = value
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        for (key, slot) in [
            ("time_step_min", &mut config.dt_min),
            ("time_step_max", &mut config.dt_max),
            ("time_step_floor", &mut config.dt_init_floor),
        ] {
            if let Some(x) = value.get(key).and_then(Value::as_f64) {
                *slot = x;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The official `config.json` for this model.
    pub fn to_official_json(&self) -> Value {
        serde_json::json!({
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": {
                "layer": "Mamba1",
                "d_state": self.d_state,
                "d_conv": self.d_conv,
                "expand": self.expand,
                "dt_rank": self.dt_rank,
                "dt_min": self.dt_min,
                "dt_max": self.dt_max,
                "dt_init_floor": self.dt_init_floor,
            },
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": true,
            "residual_in_fp32": true,
            "fused_add_norm": true,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        })
    }

    /// Checks that every size is positive.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (name, v) in [
            ("d_model", self.d_model),
            ("n_layer", self.n_layer),
            ("vocab_size", self.vocab_size),
            ("d_state", self.d_state),
            ("d_conv", self.d_conv),
            ("expand", self.expand),
            ("dt_rank", self.dt_rank),
        ] {
            if v == 0 {
                return Err(ModelError::Config(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

fn optional(value: &Value, key: &str) -> Result<Option<usize>, ModelError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ModelError::Config(format!("config key `{key}` is not an integer: {v}"))
        }),
    }
}

fn required(value: &Value, key: &str) -> Result<usize, ModelError> {
    optional(value, key)?
        .ok_or_else(|| ModelError::Config(format!("config.json lacks the key `{key}`")))
}

fn reject_true(value: &Value, key: &str, what: &str) -> Result<(), ModelError> {
    if value.get(key).and_then(Value::as_bool) == Some(true) {
        return Err(ModelError::Config(format!(
            "{key} = true ({what}) is not supported"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_config_with_defaults() {
        let c = MambaConfig::from_json(
            r#"{"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {},
                "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true,
                "pad_vocab_size_multiple": 8}"#,
        )
        .unwrap();
        assert_eq!(c, MambaConfig::new(768, 24, 50277));
        assert_eq!(c.padded_vocab(), 50280);
    }

    #[test]
    fn hugging_face_config() {
        let c = MambaConfig::from_json(
            r#"{"hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280,
                "state_size": 16, "conv_kernel": 4, "expand": 2, "time_step_rank": 48,
                "use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-5}"#,
        )
        .unwrap();
        assert_eq!(c.d_inner(), 1536);
        assert_eq!(c.padded_vocab(), 50280);
        assert_eq!(c.dt_rank, 48);
    }

    #[test]
    fn round_trip_through_official_json() {
        let mut c = MambaConfig::new(96, 3, 11);
        c.d_state = 8;
        let back = MambaConfig::from_json(&c.to_official_json().to_string()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unsupported_and_missing_keys_are_errors() {
        let e = MambaConfig::from_json(r#"{"d_model": 8, "n_layer": 1}"#).unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        let e = MambaConfig::from_json(
            r#"{"d_model": 8, "n_layer": 1, "vocab_size": 4, "ssm_cfg": {"layer": "Mamba2"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Mamba2"), "{e}");
        assert!(MambaConfig::from_json("[1, 2]").is_err());
    }
}
