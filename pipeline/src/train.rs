//! One training step: forward, loss, backward, global grad-norm clipping and AdamW, with a
//! warm-up and cosine learning-rate schedule. Gradients and both AdamW moments are flat
//! buffers laid out as the parameters.

use seqmamba_kernels::Backend;
use seqmamba_kernels::adamw::AdamW;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::model::{Activations, Batch, Model, Scratch, Shape};

/// Optimiser and schedule settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// Learning rate at the end of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f32,
    pub warmup_steps: u64,
    /// Steps of the whole schedule (the cosine ends here).
    pub total_steps: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm limit; 0 turns clipping off.
    pub clip_norm: f32,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            total_steps: 1000,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip_norm: 1.0,
        }
    }
}

impl OptimizerConfig {
    /// Learning rate of 1-based `step`: linear warm-up, then cosine decay to
    /// `min_lr_ratio · lr` at `total_steps`.
    ///
    /// ```
    /// use seqmamba::train::OptimizerConfig;
    /// let c = OptimizerConfig { lr: 1.0, warmup_steps: 10, total_steps: 110, ..Default::default() };
    /// assert_eq!(c.lr_at(5), 0.5);
    /// assert_eq!(c.lr_at(10), 1.0);
    /// assert!((c.lr_at(110) - 0.1).abs() < 1e-6);
    /// ```
    pub fn lr_at(&self, step: u64) -> f32 {
        if step <= self.warmup_steps {
            return self.lr * step as f32 / self.warmup_steps.max(1) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f32 / span as f32).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean loss over the counted targets.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f32,
}

/// Optimiser state and the buffers of one batch shape.
pub struct Trainer<B: Backend> {
    pub config: OptimizerConfig,
    /// Steps taken so far.
    pub step: u64,
    pub grads: B::Buffer,
    pub m: B::Buffer,
    pub v: B::Buffer,
    acts: Activations<B>,
    scratch: Scratch<B>,
}

/// Parameters, AdamW moments and step count on the host: what a resumable checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

impl<B: Backend> Trainer<B> {
    /// `model`'s parameters with this trainer's moments and step, on the host.
    pub fn state(&self, model: &Model<B>) -> Result<OptimizerState, ModelError> {
        let be = &model.backend;
        Ok(OptimizerState {
            params: be.download(be.all(&model.params))?,
            m: be.download(be.all(&self.m))?,
            v: be.download(be.all(&self.v))?,
            step: self.step,
        })
    }

    /// Puts `state` into `model` and this trainer, which then continue where it was taken.
    pub fn restore(
        &mut self,
        model: &mut Model<B>,
        state: &OptimizerState,
    ) -> Result<(), ModelError> {
        let n = model.table.total;
        if [&state.params, &state.m, &state.v]
            .iter()
            .any(|x| x.len() != n)
        {
            return Err(ModelError::Input(format!(
                "an optimizer state for this model holds {n} values per buffer"
            )));
        }
        let be = &model.backend;
        model.params = be.upload(&state.params)?;
        self.m = be.upload(&state.m)?;
        self.v = be.upload(&state.v)?;
        self.step = state.step;
        Ok(())
    }

    /// A trainer for `model` on batches of `shape`, at step 0.
    pub fn new(
        model: &Model<B>,
        shape: Shape,
        config: OptimizerConfig,
    ) -> Result<Self, ModelError> {
        let be = &model.backend;
        let n = model.table.total;
        Ok(Self {
            config,
            step: 0,
            grads: be.zeros(n)?,
            m: be.zeros(n)?,
            v: be.zeros(n)?,
            acts: model.activations(shape, true)?,
            scratch: model.scratch(shape)?,
        })
    }

    /// One optimisation step on `batch`: `targets` are next tokens `(batch, len)` for a
    /// language model or labels `(batch)` for a classifier; `count` is how many of them are
    /// not ignored (the loss is their mean). The same as [`Trainer::zero_grads`], one
    /// [`Trainer::accumulate`] and [`Trainer::update`].
    pub fn step(
        &mut self,
        model: &mut Model<B>,
        batch: &Batch<B>,
        targets: &B::Ids,
        count: usize,
    ) -> Result<StepStats, ModelError> {
        self.zero_grads(model)?;
        let loss_sum = self.accumulate(model, batch, targets, count)?;
        self.update(model, loss_sum / count as f64)
    }

    /// Clears the gradient buffer: the start of a step made of several micro-batches.
    pub fn zero_grads(&mut self, model: &Model<B>) -> Result<(), ModelError> {
        let be = &model.backend;
        be.fill_zero(be.all_mut(&mut self.grads))?;
        Ok(())
    }

    /// Adds the gradient of one micro-batch (of the trainer's shape) to the gradient
    /// buffer. `total_count` is the number of counted targets over every micro-batch of the
    /// step (over every rank, in data-parallel training), so the summed gradients are
    /// those of the mean loss. Returns this micro-batch's loss summed over its targets.
    pub fn accumulate(
        &mut self,
        model: &Model<B>,
        batch: &Batch<B>,
        targets: &B::Ids,
        total_count: usize,
    ) -> Result<f64, ModelError> {
        if total_count == 0 {
            return Err(ModelError::Input("a training batch has no targets".into()));
        }
        model.forward(batch, &mut self.acts, None)?;
        let losses = model.loss(&mut self.acts, targets, Some(1.0 / total_count as f32))?;
        let loss_sum = losses.iter().map(|&l| l as f64).sum::<f64>();
        if !loss_sum.is_finite() {
            return Err(ModelError::Input(format!(
                "the loss became {loss_sum} at step {}; lower the learning rate",
                self.step + 1
            )));
        }
        model.backward(batch, &mut self.acts, &mut self.scratch, &mut self.grads)?;
        Ok(loss_sum)
    }

    /// Ends a step: clips the summed gradients to the global norm limit and applies AdamW.
    /// `loss` is the step's mean loss, reported back in the stats.
    pub fn update(&mut self, model: &mut Model<B>, loss: f64) -> Result<StepStats, ModelError> {
        let be = &model.backend;
        let grad_norm = be.sum_squares(be.all(&self.grads))?.sqrt();
        let clip = self.config.clip_norm as f64;
        if clip > 0.0 && grad_norm > clip {
            be.scale(be.all_mut(&mut self.grads), (clip / grad_norm) as f32)?;
        }
        self.step += 1;
        let lr = self.config.lr_at(self.step);
        let adamw = AdamW {
            lr,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
        };
        be.adamw(
            &adamw,
            self.step,
            model.table.decay_len,
            be.all_mut(&mut model.params),
            be.all(&self.grads),
            be.all_mut(&mut self.m),
            be.all_mut(&mut self.v),
        )?;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
        })
    }
}

#[cfg(test)]
mod tests {
    use seqmamba_kernels::Cpu;
    use seqmamba_kernels::rng::Rng;
    use seqmamba_kernels::testing::{max_scaled_error, to_f64};

    use super::*;
    use crate::model::{Head, MambaConfig, ParamTable};

    /// Trains a few steps of a small LM on a repetitive sequence; returns the parameters and
    /// the losses.
    fn train_steps(threads: usize) -> (Vec<f32>, Vec<f64>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let config = MambaConfig::new(32, 2, 6);
            let mut model = Model::initialised(Cpu, config, Head::LanguageModel, 42).unwrap();
            let shape = Shape { batch: 4, len: 64 };
            let mut rng = Rng::new(43);
            let optimizer = OptimizerConfig {
                lr: 1e-2,
                warmup_steps: 4,
                total_steps: 40,
                ..Default::default()
            };
            let mut trainer = Trainer::new(&model, shape, optimizer).unwrap();
            let mut losses = Vec::new();
            for _ in 0..40 {
                // Periodic sequences with a random phase: learnable in a few steps.
                let ids: Vec<u32> = (0..shape.batch)
                    .flat_map(|_| {
                        let phase = rng.below(6) as u32;
                        (0..shape.len as u32).map(move |t| (t * 5 + phase) % 6)
                    })
                    .collect();
                let targets: Vec<u32> = (0..ids.len())
                    .map(|i| {
                        if (i + 1) % shape.len == 0 {
                            crate::model::IGNORE_INDEX
                        } else {
                            ids[i + 1]
                        }
                    })
                    .collect();
                let batch = Batch::new(&Cpu, shape, &ids, None, None).unwrap();
                let count = shape.tokens() - shape.batch;
                let stats = trainer.step(&mut model, &batch, &targets, count).unwrap();
                losses.push(stats.loss);
            }
            (model.params, losses)
        })
    }

    #[test]
    fn training_is_bit_identical_across_thread_counts_and_learns() {
        let (params_1, losses_1) = train_steps(1);
        let (params_2, losses_2) = train_steps(2);
        assert_eq!(losses_1, losses_2);
        assert!(
            params_1
                .iter()
                .zip(&params_2)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // ln 8 ≈ 2.08 (padded vocabulary) at the start; the period-6 pattern is learnt quickly.
        assert!(losses_1[0] > 1.8, "{losses_1:?}");
        assert!(
            *losses_1.last().unwrap() < 0.2 * losses_1[0],
            "{losses_1:?}"
        );
    }

    /// Next-token targets of `(rows, len)` ids, the last position of each row ignored.
    fn next_token_targets(ids: &[u32], len: usize) -> Vec<u32> {
        (0..ids.len())
            .map(|i| {
                if (i + 1) % len == 0 {
                    crate::model::IGNORE_INDEX
                } else {
                    ids[i + 1]
                }
            })
            .collect()
    }

    #[test]
    fn accumulated_micro_batches_equal_one_batch() {
        let config = MambaConfig::new(32, 2, 6);
        let len = 32;
        let whole_shape = Shape { batch: 4, len };
        let half_shape = Shape { batch: 2, len };
        let optimizer = OptimizerConfig {
            lr: 1e-2,
            warmup_steps: 1,
            ..Default::default()
        };
        let mut whole = Model::initialised(Cpu, config.clone(), Head::LanguageModel, 42).unwrap();
        let mut halves = Model::initialised(Cpu, config, Head::LanguageModel, 42).unwrap();
        let mut whole_trainer = Trainer::new(&whole, whole_shape, optimizer.clone()).unwrap();
        let mut halves_trainer = Trainer::new(&halves, half_shape, optimizer).unwrap();
        let mut rng = Rng::new(5);
        for _ in 0..3 {
            let ids: Vec<u32> = (0..whole_shape.tokens())
                .map(|_| rng.below(6) as u32)
                .collect();
            let targets = next_token_targets(&ids, len);
            let count = whole_shape.tokens() - whole_shape.batch;
            let batch = Batch::new(&Cpu, whole_shape, &ids, None, None).unwrap();
            let want = whole_trainer
                .step(&mut whole, &batch, &targets, count)
                .unwrap();

            halves_trainer.zero_grads(&halves).unwrap();
            let mut loss_sum = 0.0;
            for half in [0..half_shape.tokens(), half_shape.tokens()..ids.len()] {
                let batch = Batch::new(&Cpu, half_shape, &ids[half.clone()], None, None).unwrap();
                loss_sum += halves_trainer
                    .accumulate(&halves, &batch, &targets[half].to_vec(), count)
                    .unwrap();
            }
            let got = halves_trainer
                .update(&mut halves, loss_sum / count as f64)
                .unwrap();
            assert!(
                (got.loss - want.loss).abs() <= 1e-6 * want.loss,
                "{got:?} {want:?}"
            );
            assert!(
                (got.grad_norm - want.grad_norm).abs() <= 1e-5 * want.grad_norm,
                "{got:?} {want:?}"
            );
        }
        let error = max_scaled_error(&halves.params, &to_f64(&whole.params), 1e-5, 0.0);
        assert!(error <= 1.0, "parameters differ: {error}");
        // Not trivially equal: the parameters moved from their initial values.
        let initial = ParamTable::new(&whole.config, &whole.head).initialise(&whole.config, 42);
        assert!(max_scaled_error(&whole.params, &to_f64(&initial), 1e-3, 0.0) > 1.0);
    }
}
