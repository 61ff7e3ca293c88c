//! The selective scan of Mamba-1 (Gu & Dao 2023), fused with softplus, the D skip and the
//! SiLU(z) gate.
//!
//! For each batch row `b`, channel `d` and state index `n`:
//! ```text
//! Δ_t   = softplus(delta[b,t,d] + delta_bias[d])      (Δ = x above 20, as the official)
//! A     = -exp(a_log[d,n])
//! h_t   = exp(Δ_t·A) · h_{t-1} + Δ_t · B[b,t,n] · u[b,t,d]     (h_{t-1} = 0 after a reset)
//! y_t   = Σ_n h_t[n] · C[b,t,n] + D[d] · u[b,t,d]
//! out_t = y_t · silu(z[b,t,d])                          (out_t = y_t without z)
//! ```
//! States and sums are f32; the `(batch, len, channels, state)` tensor never exists. The
//! forward saves the state at the start of every chunk of `chunk` positions; the backward
//! recomputes the states inside a chunk from those checkpoints.

pub mod cpu;
pub mod cuda;
#[cfg(test)]
pub(crate) mod reference;
#[cfg(test)]
mod tests;

/// Shape of a selective scan over `(batch, len, channels)` with `state` states per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanDims {
    pub batch: usize,
    pub len: usize,
    pub channels: usize,
    pub state: usize,
    /// Positions between two saved states.
    pub chunk: usize,
}

impl ScanDims {
    /// Default checkpoint spacing.
    pub const DEFAULT_CHUNK: usize = 64;

    /// A shape with the default checkpoint spacing.
    ///
    /// ```
    /// use seqmamba_kernels::scan::ScanDims;
    /// let dims = ScanDims::new(2, 100, 8, 16);
    /// assert_eq!(dims.chunks(), 2);
    /// assert_eq!(dims.checkpoint_len(), 2 * 2 * 8 * 16);
    /// ```
    pub fn new(batch: usize, len: usize, channels: usize, state: usize) -> Self {
        Self {
            batch,
            len,
            channels,
            state,
            chunk: Self::DEFAULT_CHUNK,
        }
    }

    /// Number of chunks (checkpoints) per row.
    pub fn chunks(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }

    /// Elements of the checkpoint tensor `(batch, chunks, channels, state)`.
    pub fn checkpoint_len(&self) -> usize {
        self.batch * self.chunks() * self.channels * self.state
    }

    /// Elements of one `(batch, channels, state)` state tensor.
    pub fn state_len(&self) -> usize {
        self.batch * self.channels * self.state
    }
}

/// Inputs of the scan; `V` is a backend's read-only view (`&[f32]` on the CPU), `S` what
/// the `(batch, len, channels)` streams `u`, `delta` and `z` are (a [`crate::bf16::Input`]
/// in [`crate::Backend`]: bf16 training keeps them as bf16).
#[derive(Clone, Copy, Debug)]
pub struct ScanInputs<V, S = V> {
    /// `(batch, len, channels)`: the conv output.
    pub u: S,
    /// `(batch, len, channels)`: `dt_proj` output before its bias and softplus.
    pub delta: S,
    /// `(channels, state)`.
    pub a_log: V,
    /// `(batch, len, state)`.
    pub b: V,
    /// `(batch, len, state)`.
    pub c: V,
    /// `(channels)`: the D skip.
    pub d_skip: V,
    /// `(channels)`: `dt_proj.bias`.
    pub delta_bias: V,
    /// `(batch, len, channels)`: the gate; `None` for no gate.
    pub z: Option<S>,
}

/// Gradient outputs of the scan; `M` is a backend's mutable view (`&mut [f32]` on the CPU),
/// `O` where the `(batch, len, channels)` ones go (a [`crate::bf16::Output`] in
/// [`crate::Backend`]: bf16 training keeps them as bf16). Activation gradients are
/// overwritten, parameter gradients (`da_log`, `dd_skip`, `ddelta_bias`) accumulated.
#[derive(Debug)]
pub struct ScanGrads<M, O = M> {
    pub du: O,
    pub ddelta: O,
    pub da_log: M,
    pub db: M,
    pub dc: M,
    pub dd_skip: M,
    pub ddelta_bias: M,
    /// Required exactly when the inputs have `z`.
    pub dz: Option<O>,
    /// When given, receives the forward's output made again (the backward rebuilds every
    /// state anyway), so that a caller who needs it only after the backward (out_proj's
    /// weight gradient) need not keep it.
    pub out: Option<O>,
}
