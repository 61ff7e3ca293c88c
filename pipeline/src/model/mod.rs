//! The Mamba-1 backbone with its heads: forward, backward and recurrent decoding over any
//! [`Backend`].
//!
//! ```text
//! r₀ = embedding(ids)
//! rᵢ₊₁ = rᵢ + mixerᵢ(rmsnormᵢ(rᵢ))            (+ reverse(mixer′ᵢ(reverse(·))) when bidirectional)
//! h = rmsnorm_f(r_L)
//! LM: logits = h · Eᵀ         classifier: logits = pool(h) · Wᵀ + b
//! ```
//! This is the official pre-norm block (Add → RMSNorm → mixer) with the residual in f32.

mod config;
pub mod mixer;
mod params;

pub use config::{MambaConfig, PoolingKind};
pub use mixer::{MixerState, Shape};
pub use params::{
    Bidirectional, ClassifierParams, Entry, Head, LayerParams, MixerParams, ParamTable,
};

use seqmamba_kernels::cross_entropy::CrossEntropyDims;
use seqmamba_kernels::embedding::EmbeddingDims;
use seqmamba_kernels::gemm::GemmDims;
use seqmamba_kernels::pool::{PoolDims, Pooling};
use seqmamba_kernels::rmsnorm::NormDims;
use seqmamba_kernels::{Backend, KernelError};

use mixer::{
    MixerActivations, MixerScratch, MixerWork, Stored, Weights, linear, linear_input_grad,
    linear_weight_grad,
};
use seqmamba_kernels::bf16::{Input, Output};

/// Target id that contributes no loss.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// A model: its shape, head, parameter table and flat parameters on a backend.
pub struct Model<B: Backend> {
    pub backend: B,
    pub config: MambaConfig,
    pub head: Head,
    pub table: ParamTable,
    pub params: B::Buffer,
}

/// Token ids of one batch and what the ops need to know about its rows.
pub struct Batch<B: Backend> {
    pub shape: Shape,
    /// `(batch, len)` token ids.
    pub ids: B::Ids,
    /// `(batch)` valid positions of right-padded rows (classification).
    pub lengths: Option<B::Ids>,
    /// `(batch, len)` flags: non-zero where a packed sequence starts.
    pub resets: Option<B::Ids>,
}

impl<B: Backend> Batch<B> {
    /// Uploads a batch; `ids` must hold `shape.tokens()` ids.
    pub fn new(
        be: &B,
        shape: Shape,
        ids: &[u32],
        lengths: Option<&[u32]>,
        resets: Option<&[u32]>,
    ) -> Result<Self, KernelError> {
        seqmamba_kernels::check_len("batch", "ids", shape.tokens(), ids)?;
        if let Some(lengths) = lengths {
            seqmamba_kernels::check_len("batch", "lengths", shape.batch, lengths)?;
        }
        if let Some(resets) = resets {
            seqmamba_kernels::check_len("batch", "resets", shape.tokens(), resets)?;
        }
        Ok(Self {
            shape,
            ids: be.upload_ids(ids)?,
            lengths: lengths.map(|l| be.upload_ids(l)).transpose()?,
            resets: resets.map(|r| be.upload_ids(r)).transpose()?,
        })
    }
}

struct LayerActivations<B: Backend> {
    rstd: B::Buffer,
    mixer: MixerActivations<B>,
    /// The reversed mixer's, when bidirectional.
    reverse: Option<MixerActivations<B>>,
}

/// Every activation of a forward pass, allocated once per shape. Training keeps every
/// layer's; inference reuses one layer's buffers and two residual buffers.
pub struct Activations<B: Backend> {
    shape: Shape,
    train: bool,
    residuals: Vec<B::Buffer>,
    /// A mixer's input (in bf16 training its bf16 rounding alone, which only GEMMs read):
    /// made by a norm for each layer in the forward, and again from the layer's residual
    /// in the backward (cheaper than keeping one per layer).
    normed: Stored<B>,
    /// The reversed mixer's input and output, when bidirectional.
    reverse_in: B::Buffer,
    reverse_out: B::Buffer,
    layers: Vec<LayerActivations<B>>,
    work: MixerWork<B>,
    mix_out: B::Buffer,
    mix_reverse: B::Buffer,
    mix_sum: B::Buffer,
    hidden: B::Buffer,
    rstd_f: B::Buffer,
    pooled: B::Buffer,
    ones: B::Buffer,
    /// A bf16 copy of the parameters, rounded at the start of each forward, when training
    /// in bf16.
    params_bf16: Option<B::Bf16Buffer>,
    /// `(tokens, padded_vocab)` for the LM head, `(batch, classes)` for the classifier.
    pub logits: B::Buffer,
    dlogits: B::Buffer,
    losses: B::Buffer,
}

/// Gradient buffers of the backward, allocated once per shape.
pub struct Scratch<B: Backend> {
    d_residual: B::Buffer,
    /// d_residual's bf16 rounding, written beside it by the norm backward that makes it,
    /// when training in bf16: what the mixer below reads (as its output gradient).
    d_residual_copy: Option<B::Bf16Buffer>,
    d_normed: B::Buffer,
    d_hidden: B::Buffer,
    d_pooled: B::Buffer,
    d_reverse_out: B::Buffer,
    d_reverse_in: B::Buffer,
    d_reverse_back: B::Buffer,
    mixer: MixerScratch<B>,
}

/// The recurrent state of every layer, for chunked processing and decoding.
pub struct DecodeState<B: Backend> {
    pub batch: usize,
    layers: Vec<MixerState<B>>,
}

fn rows_of(head: &Head, shape: Shape) -> usize {
    match head {
        Head::LanguageModel => shape.tokens(),
        Head::Classifier { .. } => shape.batch,
    }
}

impl<B: Backend> Model<B> {
    /// A model with the given parameters (laid out as `ParamTable::new(config, head)`).
    pub fn new(
        backend: B,
        config: MambaConfig,
        head: Head,
        params: &[f32],
    ) -> Result<Self, KernelError> {
        let table = ParamTable::new(&config, &head);
        seqmamba_kernels::check_len("model", "params", table.total, params)?;
        let params = backend.upload(params)?;
        Ok(Self {
            backend,
            config,
            head,
            table,
            params,
        })
    }

    /// A freshly initialised model (official initialisation, seeded).
    pub fn initialised(
        backend: B,
        config: MambaConfig,
        head: Head,
        seed: u64,
    ) -> Result<Self, KernelError> {
        let params = ParamTable::new(&config, &head).initialise(&config, seed);
        Self::new(backend, config, head, &params)
    }

    /// Logit columns: the padded vocabulary or the classes.
    pub fn logit_width(&self) -> usize {
        match &self.head {
            Head::LanguageModel => self.config.padded_vocab(),
            Head::Classifier { classes, .. } => *classes,
        }
    }

    fn bidirectional(&self) -> Bidirectional {
        match &self.head {
            Head::Classifier { bidirectional, .. } => *bidirectional,
            Head::LanguageModel => Bidirectional::Off,
        }
    }

    fn pooling(&self) -> Pooling {
        match &self.head {
            Head::Classifier {
                pooling: PoolingKind::Last,
                ..
            } => Pooling::Last,
            _ => Pooling::Mean,
        }
    }

    /// Activation buffers for `shape`; `train` keeps what the backward needs. Training runs
    /// its mixers' GEMMs in bf16 where the backend asks for that ([`Backend::bf16_gemms`]).
    pub fn activations(&self, shape: Shape, train: bool) -> Result<Activations<B>, KernelError> {
        self.activations_with_bf16(shape, train, self.backend.bf16_gemms())
    }

    /// [`Model::activations`], choosing whether the mixers' GEMMs read bf16 copies of
    /// their operands (training only; pair with [`Model::scratch_with_bf16`]).
    pub fn activations_with_bf16(
        &self,
        shape: Shape,
        train: bool,
        bf16: bool,
    ) -> Result<Activations<B>, KernelError> {
        let be = &self.backend;
        let bf16 = train && bf16;
        let c = &self.config;
        let t = shape.tokens();
        let d = c.d_model;
        let bidirectional = self.bidirectional() != Bidirectional::Off;
        let layer_count = if train { c.n_layer } else { 1 };
        let layers = (0..layer_count)
            .map(|_| {
                Ok(LayerActivations {
                    rstd: be.zeros(t)?,
                    mixer: MixerActivations::new(be, c, shape, train, bf16)?,
                    reverse: bidirectional
                        .then(|| MixerActivations::new(be, c, shape, train, bf16))
                        .transpose()?,
                })
            })
            .collect::<Result<_, KernelError>>()?;
        let residual_count = if train { c.n_layer + 1 } else { 2 };
        let rows = rows_of(&self.head, shape);
        let width = self.logit_width();
        let extra = |on: bool, len: usize| be.zeros(if on { len } else { 0 });
        Ok(Activations {
            shape,
            train,
            residuals: (0..residual_count)
                .map(|_| be.zeros(t * d))
                .collect::<Result<_, _>>()?,
            normed: Stored::new(be, t * d, bf16)?,
            reverse_in: extra(bidirectional, t * d)?,
            reverse_out: extra(bidirectional, t * d)?,
            layers,
            work: MixerWork::new(be, c, shape, bf16)?,
            mix_out: be.zeros(t * d)?,
            mix_reverse: extra(bidirectional, t * d)?,
            mix_sum: extra(bidirectional, t * d)?,
            hidden: be.zeros(t * d)?,
            rstd_f: be.zeros(t)?,
            pooled: be.zeros(shape.batch * d)?,
            ones: be.upload(&vec![1.0; shape.batch])?,
            params_bf16: if bf16 {
                Some(be.zeros_bf16(be.buffer_len(&self.params))?)
            } else {
                None
            },
            logits: be.zeros(rows * width)?,
            dlogits: extra(train, rows * width)?,
            losses: be.zeros(rows)?,
        })
    }

    /// Gradient buffers for `shape` (with bf16 copies where [`Model::activations`] makes
    /// them).
    pub fn scratch(&self, shape: Shape) -> Result<Scratch<B>, KernelError> {
        self.scratch_with_bf16(shape, self.backend.bf16_gemms())
    }

    /// [`Model::scratch`] for activations made by [`Model::activations_with_bf16`].
    pub fn scratch_with_bf16(&self, shape: Shape, bf16: bool) -> Result<Scratch<B>, KernelError> {
        let be = &self.backend;
        let td = shape.tokens() * self.config.d_model;
        let bidirectional = self.bidirectional() != Bidirectional::Off;
        let extra = |len: usize| be.zeros(if bidirectional { len } else { 0 });
        Ok(Scratch {
            d_residual: be.zeros(td)?,
            d_residual_copy: bf16.then(|| be.zeros_bf16(td)).transpose()?,
            d_normed: be.zeros(td)?,
            d_hidden: be.zeros(td)?,
            d_pooled: be.zeros(shape.batch * self.config.d_model)?,
            d_reverse_out: extra(td)?,
            d_reverse_in: extra(td)?,
            d_reverse_back: extra(td)?,
            mixer: MixerScratch::new(be, &self.config, shape, bf16)?,
        })
    }

    /// A zero recurrent state for `batch` rows.
    pub fn decode_state(&self, batch: usize) -> Result<DecodeState<B>, KernelError> {
        Ok(DecodeState {
            batch,
            layers: (0..self.config.n_layer)
                .map(|_| MixerState::new(&self.backend, &self.config, batch))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Sets row `row` of `state` to row `from_row` of `from` (both states of this model):
    /// several samples continue one prompt read once, or prompts read one at a time
    /// decode together.
    ///
    /// ```
    /// use seqmamba::model::{Head, MambaConfig, Model};
    /// use seqmamba_kernels::Cpu;
    /// let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 1)?;
    /// let mut rows = model.decode_state(3)?;
    /// model.copy_state_row(&model.decode_state(1)?, 0, &mut rows, 2)?;
    /// assert!(model.copy_state_row(&model.decode_state(1)?, 1, &mut rows, 0).is_err());
    /// # Ok::<(), seqmamba_kernels::KernelError>(())
    /// ```
    pub fn copy_state_row(
        &self,
        from: &DecodeState<B>,
        from_row: usize,
        state: &mut DecodeState<B>,
        row: usize,
    ) -> Result<(), KernelError> {
        if from_row >= from.batch || row >= state.batch {
            return Err(KernelError::Invalid {
                op: "copy_state_row",
                message: format!(
                    "row {from_row} of a {}-row state into row {row} of a {}-row state",
                    from.batch, state.batch
                ),
            });
        }
        let be = &self.backend;
        let c = &self.config;
        for (src, dst) in from.layers.iter().zip(&mut state.layers) {
            for (width, src, dst) in [
                ((c.d_conv - 1) * c.d_inner(), &src.conv, &mut dst.conv),
                (c.d_inner() * c.d_state, &src.ssm, &mut dst.ssm),
            ] {
                be.copy(
                    be.view(src, from_row * width..(from_row + 1) * width),
                    be.view_mut(dst, row * width..(row + 1) * width),
                )?;
            }
        }
        Ok(())
    }

    fn check_batch(&self, batch: &Batch<B>, acts: &Activations<B>) -> Result<(), KernelError> {
        let invalid = |message: String| KernelError::Invalid {
            op: "model",
            message,
        };
        if batch.shape != acts.shape {
            return Err(invalid(format!(
                "batch shape {:?} does not match the activations' {:?}",
                batch.shape, acts.shape
            )));
        }
        if matches!(self.head, Head::Classifier { .. }) && batch.lengths.is_none() {
            return Err(invalid("a classifier batch needs row lengths".into()));
        }
        if self.bidirectional() != Bidirectional::Off && batch.resets.is_some() {
            return Err(invalid(
                "bidirectional layers cannot read packed rows with resets".into(),
            ));
        }
        Ok(())
    }

    /// Runs the model on `batch`, leaving the logits in `acts.logits`. With `state`, every
    /// layer starts from it and leaves its final state there (LM only).
    pub fn forward(
        &self,
        batch: &Batch<B>,
        acts: &mut Activations<B>,
        mut state: Option<&mut DecodeState<B>>,
    ) -> Result<(), KernelError> {
        self.check_batch(batch, acts)?;
        let be = &self.backend;
        let c = &self.config;
        let shape = batch.shape;
        let t = shape.tokens();
        let d = c.d_model;
        let w = |range: std::ops::Range<usize>| be.view(&self.params, range);
        let norm = NormDims {
            rows: t,
            cols: d,
            eps: c.norm_eps,
        };
        if let Some(state) = &state
            && (state.batch != shape.batch || self.bidirectional() != Bidirectional::Off)
        {
            return Err(KernelError::Invalid {
                op: "model",
                message: "a recurrent state needs a causal model and the batch it was made for"
                    .into(),
            });
        }
        be.embedding_forward(
            EmbeddingDims {
                tokens: t,
                vocab: c.padded_vocab(),
                dim: d,
            },
            &batch.ids,
            w(self.table.embedding.clone()),
            be.all_mut(&mut acts.residuals[0]),
        )?;
        if let Some(copy) = &mut acts.params_bf16 {
            be.round_bf16(be.all(&self.params), copy)?;
        }
        let weights = Weights {
            f32: &self.params,
            bf16: acts.params_bf16.as_ref(),
        };
        let train = acts.train;
        let pool_dims = PoolDims {
            batch: shape.batch,
            len: shape.len,
            dim: d,
        };
        // The first layer's norm reads the embedding; every later norm, and norm_f, is fused
        // with the residual add that makes its input (at the end of the layer before).
        let slot = |i: usize| if train { i } else { 0 };
        be.rmsnorm_forward(
            norm,
            be.all(&acts.residuals[0]),
            w(self.table.layers[0].norm.clone()),
            acts.normed.output(be),
            be.all_mut(&mut acts.layers[0].rstd),
        )?;
        for (i, layer) in self.table.layers.iter().enumerate() {
            let (r_in, r_out) = residual_pair(acts.train, i, acts.residuals.len());
            let la = &mut acts.layers[slot(i)];
            mixer::forward(
                be,
                c,
                shape,
                weights,
                &layer.mixer,
                acts.normed.input(be),
                &mut la.mixer,
                &mut acts.work,
                be.all_mut(&mut acts.mix_out),
                state.as_deref_mut().map(|s| &mut s.layers[i]),
                batch.resets.as_ref(),
                train,
            )?;
            let mix = if let Some(rev) = &mut la.reverse {
                let lengths = batch.lengths.as_ref().expect("checked in check_batch");
                let params = layer.reverse.as_ref().unwrap_or(&layer.mixer);
                // reverse_out is free until the reversed mixer writes it.
                let normed = acts.normed.values(be, &mut acts.reverse_out)?;
                be.reverse(pool_dims, lengths, normed, be.all_mut(&mut acts.reverse_in))?;
                mixer::forward(
                    be,
                    c,
                    shape,
                    weights,
                    params,
                    Input::F32(be.all(&acts.reverse_in)),
                    rev,
                    &mut acts.work,
                    be.all_mut(&mut acts.reverse_out),
                    None,
                    None,
                    train,
                )?;
                be.reverse(
                    pool_dims,
                    lengths,
                    be.all(&acts.reverse_out),
                    be.all_mut(&mut acts.mix_reverse),
                )?;
                be.add(
                    be.all(&acts.mix_out),
                    be.all(&acts.mix_reverse),
                    be.all_mut(&mut acts.mix_sum),
                )?;
                &acts.mix_sum
            } else {
                &acts.mix_out
            };
            let (r_in_buf, r_out_buf) = pair_mut(&mut acts.residuals, r_in, r_out);
            let (next_weight, normed, rstd) = match self.table.layers.get(i + 1) {
                Some(next) => (
                    next.norm.clone(),
                    acts.normed.output(be),
                    &mut acts.layers[slot(i + 1)].rstd,
                ),
                None => (
                    self.table.norm_f.clone(),
                    Output::F32(be.all_mut(&mut acts.hidden)),
                    &mut acts.rstd_f,
                ),
            };
            be.add_rmsnorm_forward(
                norm,
                be.all(r_in_buf),
                be.all(mix),
                w(next_weight),
                be.all_mut(r_out_buf),
                normed,
                be.all_mut(rstd),
            )?;
        }
        match &self.head {
            Head::LanguageModel => be.gemm(
                linear(t, c.padded_vocab(), d),
                be.all(&acts.hidden),
                w(self.lm_weight()),
                be.all_mut(&mut acts.logits),
                false,
            ),
            Head::Classifier { classes, .. } => {
                let head = self.table.classifier.as_ref().expect("classifier table");
                let lengths = batch.lengths.as_ref().expect("checked in check_batch");
                be.pool_forward(
                    pool_dims,
                    self.pooling(),
                    lengths,
                    be.all(&acts.hidden),
                    be.all_mut(&mut acts.pooled),
                )?;
                be.gemm(
                    linear(shape.batch, *classes, d),
                    be.all(&acts.pooled),
                    w(head.weight.clone()),
                    be.all_mut(&mut acts.logits),
                    false,
                )?;
                // logits += 1 · biasᵀ (a rank-one GEMM adds the bias to every row)
                be.gemm(
                    GemmDims {
                        m: shape.batch,
                        n: *classes,
                        k: 1,
                        transpose_a: false,
                        transpose_b: false,
                    },
                    be.all(&acts.ones),
                    w(head.bias.clone()),
                    be.all_mut(&mut acts.logits),
                    true,
                )
            }
        }
    }

    fn lm_weight(&self) -> std::ops::Range<usize> {
        self.table
            .lm_head
            .clone()
            .unwrap_or_else(|| self.table.embedding.clone())
    }

    /// Per-row losses (`-ln p(target)`; 0 where the target is [`IGNORE_INDEX`]) of the
    /// logits of the last forward. With `grad_scale`, also keeps `dlogits` for
    /// [`Model::backward`] (scale by `1/count` for a mean loss).
    pub fn loss(
        &self,
        acts: &mut Activations<B>,
        targets: &B::Ids,
        grad_scale: Option<f32>,
    ) -> Result<Vec<f32>, KernelError> {
        let be = &self.backend;
        let dims = CrossEntropyDims {
            rows: rows_of(&self.head, acts.shape),
            vocab: self.logit_width(),
        };
        let dlogits = match grad_scale {
            Some(_) if !acts.train => {
                return Err(KernelError::Invalid {
                    op: "loss",
                    message: "gradients need activations made for training".into(),
                });
            }
            Some(_) => Some(be.all_mut(&mut acts.dlogits)),
            None => None,
        };
        be.cross_entropy(
            dims,
            be.all(&acts.logits),
            targets,
            IGNORE_INDEX,
            be.all_mut(&mut acts.losses),
            dlogits,
            grad_scale.unwrap_or(0.0),
        )?;
        be.download(be.all(&acts.losses))
    }

    /// Accumulates into `grads` (laid out as the parameters) the gradient of the loss whose
    /// `dlogits` the last [`Model::loss`] call kept.
    pub fn backward(
        &self,
        batch: &Batch<B>,
        acts: &mut Activations<B>,
        scratch: &mut Scratch<B>,
        grads: &mut B::Buffer,
    ) -> Result<(), KernelError> {
        self.check_batch(batch, acts)?;
        if !acts.train {
            return Err(KernelError::Invalid {
                op: "backward",
                message: "activations were made for inference".into(),
            });
        }
        let be = &self.backend;
        let c = &self.config;
        let shape = batch.shape;
        let t = shape.tokens();
        let d = c.d_model;
        let w = |range: std::ops::Range<usize>| be.view(&self.params, range);
        let weights = Weights {
            f32: &self.params,
            bf16: acts.params_bf16.as_ref(),
        };
        let norm = NormDims {
            rows: t,
            cols: d,
            eps: c.norm_eps,
        };
        let pool_dims = PoolDims {
            batch: shape.batch,
            len: shape.len,
            dim: d,
        };
        match &self.head {
            Head::LanguageModel => {
                let v = c.padded_vocab();
                be.gemm(
                    linear_input_grad(t, v, d),
                    be.all(&acts.dlogits),
                    w(self.lm_weight()),
                    be.all_mut(&mut scratch.d_hidden),
                    false,
                )?;
                be.gemm(
                    linear_weight_grad(t, v, d),
                    be.all(&acts.dlogits),
                    be.all(&acts.hidden),
                    be.view_mut(grads, self.lm_weight()),
                    true,
                )?;
            }
            Head::Classifier { classes, .. } => {
                let head = self.table.classifier.as_ref().expect("classifier table");
                let lengths = batch.lengths.as_ref().expect("checked in check_batch");
                let n = shape.batch;
                be.gemm(
                    linear_input_grad(n, *classes, d),
                    be.all(&acts.dlogits),
                    w(head.weight.clone()),
                    be.all_mut(&mut scratch.d_pooled),
                    false,
                )?;
                be.gemm(
                    linear_weight_grad(n, *classes, d),
                    be.all(&acts.dlogits),
                    be.all(&acts.pooled),
                    be.view_mut(grads, head.weight.clone()),
                    true,
                )?;
                be.gemm(
                    GemmDims {
                        m: 1,
                        n: *classes,
                        k: n,
                        transpose_a: true,
                        transpose_b: false,
                    },
                    be.all(&acts.ones),
                    be.all(&acts.dlogits),
                    be.view_mut(grads, head.bias.clone()),
                    true,
                )?;
                be.pool_backward(
                    pool_dims,
                    self.pooling(),
                    lengths,
                    be.all(&scratch.d_pooled),
                    be.all_mut(&mut scratch.d_hidden),
                )?;
            }
        }
        be.fill_zero(be.all_mut(&mut scratch.d_residual))?;
        be.rmsnorm_backward(
            norm,
            be.all(&acts.residuals[c.n_layer]),
            w(self.table.norm_f.clone()),
            be.all(&acts.rstd_f),
            be.all(&scratch.d_hidden),
            be.all_mut(&mut scratch.d_residual),
            scratch.d_residual_copy.as_mut(),
            be.view_mut(grads, self.table.norm_f.clone()),
        )?;
        for (i, layer) in self.table.layers.iter().enumerate().rev() {
            let la = &mut acts.layers[i];
            be.rmsnorm_forward(
                norm,
                be.all(&acts.residuals[i]),
                w(layer.norm.clone()),
                acts.normed.output(be),
                be.all_mut(&mut la.rstd),
            )?;
            mixer::backward(
                be,
                c,
                shape,
                weights,
                &layer.mixer,
                acts.normed.input(be),
                &la.mixer,
                &mut acts.work,
                match &scratch.d_residual_copy {
                    Some(bits) => Input::Bf16(bits),
                    None => Input::F32(be.all(&scratch.d_residual)),
                },
                batch.resets.as_ref(),
                grads,
                &mut scratch.mixer,
                be.all_mut(&mut scratch.d_normed),
            )?;
            if let Some(rev) = &la.reverse {
                let lengths = batch.lengths.as_ref().expect("checked in check_batch");
                let params = layer.reverse.as_ref().unwrap_or(&layer.mixer);
                // reverse_out is free: the backward does not read it.
                let normed = acts.normed.values(be, &mut acts.reverse_out)?;
                be.reverse(pool_dims, lengths, normed, be.all_mut(&mut acts.reverse_in))?;
                be.reverse(
                    pool_dims,
                    lengths,
                    be.all(&scratch.d_residual),
                    be.all_mut(&mut scratch.d_reverse_out),
                )?;
                mixer::backward(
                    be,
                    c,
                    shape,
                    weights,
                    params,
                    Input::F32(be.all(&acts.reverse_in)),
                    rev,
                    &mut acts.work,
                    Input::F32(be.all(&scratch.d_reverse_out)),
                    None,
                    grads,
                    &mut scratch.mixer,
                    be.all_mut(&mut scratch.d_reverse_in),
                )?;
                be.reverse(
                    pool_dims,
                    lengths,
                    be.all(&scratch.d_reverse_in),
                    be.all_mut(&mut scratch.d_reverse_back),
                )?;
                // d_normed += d_reverse_back, through a copy: `add` may not alias.
                be.copy(
                    be.all(&scratch.d_normed),
                    be.all_mut(&mut scratch.d_reverse_out),
                )?;
                be.add(
                    be.all(&scratch.d_reverse_out),
                    be.all(&scratch.d_reverse_back),
                    be.all_mut(&mut scratch.d_normed),
                )?;
            }
            be.rmsnorm_backward(
                norm,
                be.all(&acts.residuals[i]),
                w(layer.norm.clone()),
                be.all(&la.rstd),
                be.all(&scratch.d_normed),
                be.all_mut(&mut scratch.d_residual),
                scratch.d_residual_copy.as_mut(),
                be.view_mut(grads, layer.norm.clone()),
            )?;
        }
        be.embedding_backward(
            EmbeddingDims {
                tokens: t,
                vocab: c.padded_vocab(),
                dim: d,
            },
            &batch.ids,
            be.all(&scratch.d_residual),
            be.view_mut(grads, self.table.embedding.clone()),
        )
    }
}

/// Indices of layer `i`'s input and output residual buffers: one per layer when training,
/// two alternating otherwise.
fn residual_pair(train: bool, i: usize, count: usize) -> (usize, usize) {
    if train {
        (i, i + 1)
    } else {
        (i % count, (i + 1) % count)
    }
}

/// A shared and a mutable reference to two different elements.
fn pair_mut<T>(items: &mut [T], read: usize, write: usize) -> (&T, &mut T) {
    assert_ne!(read, write);
    if read < write {
        let (head, tail) = items.split_at_mut(write);
        (&head[read], &mut tail[0])
    } else {
        let (head, tail) = items.split_at_mut(read);
        (&tail[0], &mut head[write])
    }
}

#[cfg(test)]
mod tests;
