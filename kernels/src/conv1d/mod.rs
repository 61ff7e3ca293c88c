//! Causal depthwise 1-D convolution fused with SiLU (Mamba's `conv1d` + activation).
//!
//! Work is split into jobs of consecutive positions of one batch row, all channels at once,
//! so every job reads and writes contiguous memory and the inner loops run over contiguous
//! channels (they vectorise). The weight and bias gradients are summed per job and the job
//! sums added in job order, so results do not depend on the number of threads.

pub(crate) mod cuda;

use crate::math::{silu, silu_derivative};
use crate::parallel::{rows_per_job, run_jobs};
use crate::{check_len, element_count, KernelError};

/// Shape of a causal depthwise convolution over `x: (batch, len, channels)`.
///
/// ```
/// use seqmamba_kernels::conv1d::ConvDims;
/// let dims = ConvDims { batch: 2, len: 128, channels: 1536, kernel: 4 };
/// assert_eq!(dims.state_len(), 2 * 3 * 1536);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub batch: usize,
    pub len: usize,
    pub channels: usize,
    /// Taps per channel (Mamba's `d_conv`, 4 by default).
    pub kernel: usize,
}

impl ConvDims {
    /// Elements of the carried state `(batch, kernel - 1, channels)`.
    pub fn state_len(&self) -> usize {
        self.batch * self.kernel.saturating_sub(1) * self.channels
    }
}

/// `out[b,t,c] = silu(bias[c] + Σ_k weight[c,k] · x[b, t-(K-1)+k, c])`.
///
/// `weight` is `(channels, kernel)` (the official `conv1d.weight` of shape `(D, 1, K)`);
/// `bias` is `(channels)`, or empty for a convolution without bias.
/// Inputs before position 0 come from `state` `(batch, kernel-1, channels)` when given,
/// else are zero. `resets` `(batch, len)`: a non-zero flag at `t` starts a new sequence, so
/// inputs before `t` (and the state) are treated as zero from `t` on. On return `state`
/// holds the last `kernel-1` inputs of each row as the next chunk needs them (zero where
/// they lie before the row's last reset), so `len = 1` with a state is the decode step.
/// Sums are f32, in tap order after the bias; SiLU is [`crate::math::silu`].
///
/// ```
/// use seqmamba_kernels::conv1d::{forward, ConvDims};
/// use seqmamba_kernels::math::silu;
/// let dims = ConvDims { batch: 1, len: 3, channels: 1, kernel: 2 };
/// let mut state = [1.0]; // the input just before position 0
/// let mut out = [0.0; 3];
/// forward(dims, &[2.0, 3.0, 4.0], &[1.0, 0.0], &[], None, Some(&mut state), &mut out).unwrap();
/// assert_eq!(out, [silu(1.0), silu(2.0), silu(3.0)]);
/// assert_eq!(state, [4.0]);
/// ```
pub fn forward(
    dims: ConvDims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    resets: Option<&[u32]>,
    mut state: Option<&mut [f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "conv1d_forward";
    if let (1, Some(state)) = (dims.len, state.as_deref_mut()) {
        check_args(OP, dims, x, weight, bias, resets, Some(state))?;
        check_len(OP, "out", x.len(), out)?;
        if !x.is_empty() {
            decode_step(dims, x, weight, bias, resets, state, out);
        }
        return Ok(());
    }
    let conv = Conv::new(OP, dims, x, weight, bias, resets, state.as_deref())?;
    check_len(OP, "out", x.len(), out)?;
    if x.is_empty() {
        return Ok(());
    }
    let jobs = conv.position_jobs(out);
    run_jobs(jobs, |_, (b, t0, out_chunk)| {
        for (i, out_t) in out_chunk.chunks_exact_mut(dims.channels).enumerate() {
            conv.preactivation(b, t0 + i, out_t);
            for o in out_t.iter_mut() {
                *o = silu(*o);
            }
        }
    });
    if let Some(state) = state {
        carry_state(dims, x, resets, state);
    }
    Ok(())
}

/// Gradients of [`forward`]: `dx` is overwritten, `dweight` and `dbias` are accumulated
/// (`dbias` is empty when `bias` is). `initial_state` is the state `forward` was entered
/// with (no gradient flows into it). The pre-activations are recomputed, not saved.
///
/// ```
/// use seqmamba_kernels::conv1d::{backward, ConvDims};
/// let dims = ConvDims { batch: 1, len: 2, channels: 1, kernel: 2 };
/// let (mut dx, mut dweight, mut dbias) = ([0.0; 2], [0.0; 2], [0.0]);
/// // With zero weights and bias every pre-activation is 0, where silu' = 1/2.
/// backward(dims, &[1.0, 2.0], &[0.0, 0.0], &[0.0], None, None, &[1.0, 1.0],
///     &mut dx, &mut dweight, &mut dbias).unwrap();
/// assert_eq!(dbias, [1.0]);
/// assert_eq!(dweight, [0.5, 1.5]); // tap 0 saw (0, 1), tap 1 saw (1, 2)
/// ```
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dims: ConvDims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    resets: Option<&[u32]>,
    initial_state: Option<&[f32]>,
    d_out: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "conv1d_backward";
    let conv = Conv::new(OP, dims, x, weight, bias, resets, initial_state)?;
    check_len(OP, "d_out", x.len(), d_out)?;
    check_len(OP, "dx", x.len(), dx)?;
    check_len(OP, "dweight", weight.len(), dweight)?;
    check_len(OP, "dbias", bias.len(), dbias)?;
    if x.is_empty() {
        return Ok(());
    }
    let ConvDims {
        len,
        channels,
        kernel,
        ..
    } = dims;

    // Pass 1: dx holds the gradient of the pre-activation; each job sums its share of the
    // weight (tap-major, like `Conv::taps`) and bias gradients.
    let jobs = conv.position_jobs(dx);
    let partials = run_jobs(jobs, |_, (b, t0, d_pre)| {
        let mut sums = vec![0.0f32; (kernel + 1) * channels];
        let (d_taps, d_bias) = sums.split_at_mut(kernel * channels);
        for (i, d_pre_t) in d_pre.chunks_exact_mut(channels).enumerate() {
            let t = t0 + i;
            conv.preactivation(b, t, d_pre_t);
            let d_out_t = &d_out[(b * len + t) * channels..][..channels];
            for (g, &d) in d_pre_t.iter_mut().zip(d_out_t) {
                *g = d * silu_derivative(*g);
            }
            for (db, &g) in d_bias.iter_mut().zip(d_pre_t.iter()) {
                *db += g;
            }
            for tap in conv.first_tap(b, t)..kernel {
                if let Some(input) = conv.input(b, t as isize + tap as isize + 1 - kernel as isize)
                {
                    let d_tap = &mut d_taps[tap * channels..][..channels];
                    for ((dw, &g), &v) in d_tap.iter_mut().zip(d_pre_t.iter()).zip(input) {
                        *dw += g * v;
                    }
                }
            }
        }
        sums
    });
    let mut total = vec![0.0f32; (kernel + 1) * channels];
    for partial in &partials {
        for (s, &p) in total.iter_mut().zip(partial) {
            *s += p;
        }
    }
    for (tap, d_tap) in total.chunks_exact(channels).take(kernel).enumerate() {
        for (c, &g) in d_tap.iter().enumerate() {
            dweight[c * kernel + tap] += g;
        }
    }
    for (db, &g) in dbias.iter_mut().zip(&total[kernel * channels..]) {
        *db += g;
    }

    // Pass 2, in place: dx[s] = Σ_d w[K-1-d] · d_pre[s+d] over the outputs s+d that saw
    // x[s]. Walking s upwards overwrites d_pre[s] only once no later s needs it; the first
    // K-1 rows after each job are saved first because another job overwrites them.
    let positions = rows_per_job(channels);
    let lookahead: Vec<Vec<f32>> = (0..dims.batch)
        .flat_map(|b| (0..len).step_by(positions).map(move |t0| (b, t0)))
        .map(|(b, t0)| {
            let start = (t0 + positions).min(len);
            let end = (start + kernel - 1).min(len);
            dx[(b * len + start) * channels..(b * len + end) * channels].to_vec()
        })
        .collect();
    let jobs = conv.position_jobs(dx);
    run_jobs(jobs, |job, (b, t0, chunk)| {
        let rows = chunk.len() / channels;
        for i in 0..rows {
            let (head, later) = chunk.split_at_mut((i + 1) * channels);
            let dx_s = &mut head[i * channels..];
            let last_tap = &conv.taps[(kernel - 1) * channels..];
            for (g, &w) in dx_s.iter_mut().zip(last_tap) {
                *g *= w;
            }
            for d in 1..kernel {
                let t = t0 + i + d;
                if t >= len || conv.reset_at(b, t) {
                    break;
                }
                let d_pre_t = if i + d < rows {
                    &later[(d - 1) * channels..][..channels]
                } else {
                    &lookahead[job][(i + d - rows) * channels..][..channels]
                };
                let tap = &conv.taps[(kernel - 1 - d) * channels..][..channels];
                for ((g, &w), &p) in dx_s.iter_mut().zip(tap).zip(d_pre_t) {
                    *g += w * p;
                }
            }
        }
    });
    Ok(())
}

/// The checked inputs of one convolution, shared by the forward and backward.
struct Conv<'a> {
    dims: ConvDims,
    x: &'a [f32],
    /// The weight transposed to `(kernel, channels)`, so a tap's weights are contiguous.
    taps: Vec<f32>,
    bias: &'a [f32],
    resets: Option<&'a [u32]>,
    state: Option<&'a [f32]>,
}

impl<'a> Conv<'a> {
    fn new(
        op: &'static str,
        dims: ConvDims,
        x: &'a [f32],
        weight: &[f32],
        bias: &'a [f32],
        resets: Option<&'a [u32]>,
        state: Option<&'a [f32]>,
    ) -> Result<Self, KernelError> {
        check_args(op, dims, x, weight, bias, resets, state)?;
        let ConvDims {
            channels, kernel, ..
        } = dims;
        let mut taps = vec![0.0; weight.len()];
        for (c, w) in weight.chunks_exact(kernel).enumerate() {
            for (tap, &v) in w.iter().enumerate() {
                taps[tap * channels + c] = v;
            }
        }
        Ok(Self {
            dims,
            x,
            taps,
            bias,
            resets,
            state,
        })
    }

    /// `out` cut into jobs `(row, first position, rows of channels)` of a fixed number of
    /// positions within one batch row.
    fn position_jobs<'o>(&self, out: &'o mut [f32]) -> Vec<(usize, usize, &'o mut [f32])> {
        let ConvDims { len, channels, .. } = self.dims;
        let positions = rows_per_job(channels);
        out.chunks_mut(len * channels)
            .enumerate()
            .flat_map(|(b, row)| {
                row.chunks_mut(positions * channels)
                    .enumerate()
                    .map(move |(j, chunk)| (b, j * positions, chunk))
            })
            .collect()
    }

    fn reset_at(&self, b: usize, t: usize) -> bool {
        self.resets
            .is_some_and(|resets| resets[b * self.dims.len + t] != 0)
    }

    /// The first tap of output `t` whose input belongs to `t`'s sequence: the inputs of
    /// earlier taps lie before a reset in `(t-(K-1), t]`.
    fn first_tap(&self, b: usize, t: usize) -> usize {
        let kernel = self.dims.kernel;
        let window_start = (t + 2).saturating_sub(kernel);
        (window_start..=t)
            .rev()
            .find(|&r| self.reset_at(b, r))
            .map_or(0, |r| r + kernel - 1 - t)
    }

    /// The channels of input position `s` of row `b` (from the state when negative), or
    /// `None` where it is zero (before 0 without a state).
    fn input(&self, b: usize, s: isize) -> Option<&'a [f32]> {
        let ConvDims {
            len,
            channels,
            kernel,
            ..
        } = self.dims;
        if s >= 0 {
            Some(&self.x[(b * len + s as usize) * channels..][..channels])
        } else {
            let slot = (kernel as isize - 1 + s) as usize;
            self.state
                .map(|state| &state[(b * (kernel - 1) + slot) * channels..][..channels])
        }
    }

    /// Writes the pre-activation (bias plus taps) of output `(b, t)` into `acc`.
    fn preactivation(&self, b: usize, t: usize, acc: &mut [f32]) {
        let ConvDims {
            channels, kernel, ..
        } = self.dims;
        if self.bias.is_empty() {
            acc.fill(0.0);
        } else {
            acc.copy_from_slice(self.bias);
        }
        for tap in self.first_tap(b, t)..kernel {
            if let Some(input) = self.input(b, t as isize + tap as isize + 1 - kernel as isize) {
                let w = &self.taps[tap * channels..][..channels];
                for ((a, &w), &v) in acc.iter_mut().zip(w).zip(input) {
                    *a += w * v;
                }
            }
        }
    }
}

/// Checks the sizes every convolution's inputs share.
fn check_args(
    op: &'static str,
    dims: ConvDims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    resets: Option<&[u32]>,
    state: Option<&[f32]>,
) -> Result<(), KernelError> {
    let ConvDims {
        batch,
        len,
        channels,
        kernel,
    } = dims;
    if kernel == 0 {
        return Err(KernelError::Invalid {
            op,
            message: "kernel must have at least one tap".into(),
        });
    }
    check_len(op, "x", element_count(op, &[batch, len, channels])?, x)?;
    check_len(
        op,
        "weight",
        element_count(op, &[channels, kernel])?,
        weight,
    )?;
    if !bias.is_empty() {
        check_len(op, "bias", channels, bias)?;
    }
    if let Some(resets) = resets {
        check_len(op, "resets", element_count(op, &[batch, len])?, resets)?;
    }
    if let Some(state) = state {
        let state_len = element_count(op, &[batch, kernel - 1, channels])?;
        check_len(op, "state", state_len, state)?;
    }
    Ok(())
}

/// [`forward`] of one position with a state (a decode step, `dims.len` = 1), checked.
/// Reads each channel's taps from its weight row as they lie, where the general path makes
/// a tap-major copy of the weight on every call; same sums in the same order (bias, then
/// the taps from the oldest input), so the same bits.
fn decode_step(
    dims: ConvDims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    resets: Option<&[u32]>,
    state: &mut [f32],
    out: &mut [f32],
) {
    let ConvDims {
        channels, kernel, ..
    } = dims;
    let slots = kernel - 1;
    for (b, (out, x)) in out
        .chunks_exact_mut(channels)
        .zip(x.chunks_exact(channels))
        .enumerate()
    {
        let row_state = &state[b * slots * channels..][..slots * channels];
        // A reset at the step's position leaves only the tap on its own input.
        let reset = resets.is_some_and(|resets| resets[b] != 0);
        for (c, ((o, &input), taps)) in out
            .iter_mut()
            .zip(x)
            .zip(weight.chunks_exact(kernel))
            .enumerate()
        {
            let mut acc = if bias.is_empty() { 0.0 } else { bias[c] };
            if !reset {
                for (slot, &w) in taps[..slots].iter().enumerate() {
                    acc += w * row_state[slot * channels + c];
                }
            }
            *o = acc + taps[slots] * input;
        }
        for o in out.iter_mut() {
            *o = silu(*o);
        }
    }
    carry_state(dims, x, resets, state);
}

/// Overwrites `state`, the state `x` continued, with the last K-1 inputs of each row, zero
/// where a later reset cut them off.
fn carry_state(dims: ConvDims, x: &[f32], resets: Option<&[u32]>, state: &mut [f32]) {
    let ConvDims {
        batch,
        len,
        channels,
        kernel,
    } = dims;
    let slots = kernel - 1;
    for b in 0..batch {
        let row_state = &mut state[b * slots * channels..][..slots * channels];
        let last_reset =
            resets.and_then(|resets| resets[b * len..][..len].iter().rposition(|&r| r != 0));
        for slot in 0..slots {
            let position = len as isize - slots as isize + slot as isize;
            let dst = slot * channels..(slot + 1) * channels;
            if last_reset.is_some_and(|r| position < r as isize) {
                row_state[dst].fill(0.0);
            } else if position >= 0 {
                let src = &x[(b * len + position as usize) * channels..][..channels];
                row_state[dst].copy_from_slice(src);
            } else {
                // Still inside the old state: slot `len + slot` moves down to `slot`.
                let src = (len + slot) * channels..(len + slot + 1) * channels;
                row_state.copy_within(src, dst.start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, bits, finite_difference_at, on_threads, to_f64};

    /// Random inputs of one convolution; `bias`, `resets` and `state` optional.
    struct Case {
        dims: ConvDims,
        x: Vec<f32>,
        weight: Vec<f32>,
        bias: Vec<f32>,
        resets: Option<Vec<u32>>,
        state: Option<Vec<f32>>,
    }

    impl Case {
        fn random(rng: &mut Rng, dims: ConvDims, bias: bool, resets: bool, state: bool) -> Self {
            let ConvDims {
                batch,
                len,
                channels,
                kernel,
            } = dims;
            Self {
                dims,
                x: rng.vec_uniform(batch * len * channels, -2.0, 2.0),
                weight: rng.vec_uniform(channels * kernel, -1.0, 1.0),
                bias: if bias {
                    rng.vec_uniform(channels, -0.5, 0.5)
                } else {
                    vec![]
                },
                resets: resets.then(|| {
                    (0..batch * len)
                        .map(|_| (rng.below(5) == 0) as u32)
                        .collect()
                }),
                state: state.then(|| rng.vec_uniform(dims.state_len(), -2.0, 2.0)),
            }
        }

        /// The kernel's output and carried state.
        fn run(&self) -> (Vec<f32>, Option<Vec<f32>>) {
            let mut out = vec![0.0; self.x.len()];
            let mut state = self.state.clone();
            forward(
                self.dims,
                &self.x,
                &self.weight,
                &self.bias,
                self.resets.as_deref(),
                state.as_deref_mut(),
                &mut out,
            )
            .unwrap();
            (out, state)
        }
    }

    fn silu64(v: f64) -> f64 {
        v / (1.0 + (-v).exp())
    }

    /// The definition in f64: output and carried state. An input at `s` reaches output `t`
    /// unless a reset lies in `(s, t]`.
    fn reference(
        dims: ConvDims,
        x: &[f64],
        weight: &[f64],
        bias: &[f64],
        resets: Option<&[u32]>,
        state: Option<&[f64]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let ConvDims {
            batch,
            len,
            channels,
            kernel,
        } = dims;
        let reset_between = |b: usize, s: isize, t: isize| {
            resets.is_some_and(|r| (s + 1..=t).any(|p| p >= 0 && r[b * len + p as usize] != 0))
        };
        let input = |b: usize, s: isize, c: usize| {
            if s >= 0 {
                x[(b * len + s as usize) * channels + c]
            } else {
                state.map_or(0.0, |st| {
                    st[(b * (kernel - 1) + (kernel as isize - 1 + s) as usize) * channels + c]
                })
            }
        };
        let mut out = vec![0.0; x.len()];
        for b in 0..batch {
            for t in 0..len as isize {
                for c in 0..channels {
                    let mut acc = if bias.is_empty() { 0.0 } else { bias[c] };
                    for k in 0..kernel {
                        let s = t - (kernel as isize - 1) + k as isize;
                        if !reset_between(b, s, t) {
                            acc += weight[c * kernel + k] * input(b, s, c);
                        }
                    }
                    out[(b * len + t as usize) * channels + c] = silu64(acc);
                }
            }
        }
        let mut carried = vec![0.0; dims.state_len()];
        for b in 0..batch {
            for slot in 0..kernel - 1 {
                let s = len as isize - (kernel as isize - 1) + slot as isize;
                for c in 0..channels {
                    if !reset_between(b, s, len as isize - 1) {
                        carried[(b * (kernel - 1) + slot) * channels + c] = input(b, s, c);
                    }
                }
            }
        }
        (out, carried)
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = Rng::new(1);
        let dims = ConvDims {
            batch: 3,
            len: 13,
            channels: 7,
            kernel: 4,
        };
        for (bias, resets, state) in [
            (true, true, true),
            (false, false, false),
            (true, false, true),
            (false, true, false),
        ] {
            let case = Case::random(&mut rng, dims, bias, resets, state);
            let (out, carried) = case.run();
            let (expected, expected_state) = reference(
                dims,
                &to_f64(&case.x),
                &to_f64(&case.weight),
                &to_f64(&case.bias),
                case.resets.as_deref(),
                case.state.as_deref().map(to_f64).as_deref(),
            );
            assert_close("out", &out, &expected, 1e-5, 1e-7);
            if let Some(carried) = carried {
                assert_close("state", &carried, &expected_state, 1e-6, 1e-7);
            }
        }
    }

    /// Which entries of x, weight and bias to check by finite differences.
    struct Probe {
        x: Vec<usize>,
        weight: Vec<usize>,
        bias: Vec<usize>,
    }

    impl Probe {
        fn all(case: &Case) -> Self {
            Self {
                x: (0..case.x.len()).collect(),
                weight: (0..case.weight.len()).collect(),
                bias: (0..case.bias.len()).collect(),
            }
        }
    }

    fn gather(values: &[f32], probe: &[usize]) -> Vec<f32> {
        probe.iter().map(|&i| values[i]).collect()
    }

    /// Checks dx, dweight and dbias of a random projection loss `Σ w·out` against central
    /// differences of the f64 reference at the `probe` entries. The parameter gradients
    /// start from random values to check that they are accumulated.
    fn check_backward(case: &Case, probe: &Probe) {
        let dims = case.dims;
        let mut rng = Rng::new(99);
        let projection: Vec<f64> = (0..case.x.len())
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        let d_out: Vec<f32> = projection.iter().map(|&p| p as f32).collect();
        let (x, weight, bias) = (to_f64(&case.x), to_f64(&case.weight), to_f64(&case.bias));
        let state = case.state.as_deref().map(to_f64);
        let resets = case.resets.as_deref();
        let loss = |x: &[f64], weight: &[f64], bias: &[f64]| {
            let (out, _) = reference(dims, x, weight, bias, resets, state.as_deref());
            out.iter().zip(&projection).map(|(o, p)| o * p).sum::<f64>()
        };

        let mut dx = vec![f32::NAN; case.x.len()];
        let dweight0 = rng.vec_uniform(case.weight.len(), -1.0, 1.0);
        let dbias0 = rng.vec_uniform(case.bias.len(), -1.0, 1.0);
        let (mut dweight, mut dbias) = (dweight0.clone(), dbias0.clone());
        backward(
            dims,
            &case.x,
            &case.weight,
            &case.bias,
            resets,
            case.state.as_deref(),
            &d_out,
            &mut dx,
            &mut dweight,
            &mut dbias,
        )
        .unwrap();
        let accumulated = |grad: &[f32], start: &[f32], probe: &[usize]| -> Vec<f32> {
            probe.iter().map(|&i| grad[i] - start[i]).collect()
        };

        let expected = finite_difference_at(|x| loss(x, &weight, &bias), &x, &probe.x, 1e-6);
        assert_close("dx", &gather(&dx, &probe.x), &expected, 1e-4, 1e-6);
        let expected = finite_difference_at(|w| loss(&x, w, &bias), &weight, &probe.weight, 1e-6);
        let actual = accumulated(&dweight, &dweight0, &probe.weight);
        assert_close("dweight", &actual, &expected, 1e-4, 1e-6);
        let expected = finite_difference_at(|b| loss(&x, &weight, b), &bias, &probe.bias, 1e-6);
        assert_close(
            "dbias",
            &accumulated(&dbias, &dbias0, &probe.bias),
            &expected,
            1e-4,
            1e-6,
        );
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        let dims = ConvDims {
            batch: 2,
            len: 11,
            channels: 5,
            kernel: 4,
        };
        for (bias, resets, state) in [
            (true, true, true),
            (false, false, false),
            (true, false, true),
        ] {
            let case = Case::random(&mut rng, dims, bias, resets, state);
            check_backward(&case, &Probe::all(&case));
        }
        let short = ConvDims {
            batch: 2,
            len: 2,
            channels: 3,
            kernel: 4,
        };
        let case = Case::random(&mut rng, short, true, true, true);
        check_backward(&case, &Probe::all(&case));
        let pointwise = ConvDims {
            batch: 1,
            len: 5,
            channels: 2,
            kernel: 1,
        };
        let case = Case::random(&mut rng, pointwise, true, true, false);
        check_backward(&case, &Probe::all(&case));
    }

    #[test]
    fn backward_across_job_boundaries_matches_finite_differences() {
        // 1024 channels make jobs of 32 positions: three jobs per row, and the taps of
        // positions 29..=34 and 61..=66 reach across a job boundary.
        let (len, channels) = (70, 1024);
        let dims = ConvDims {
            batch: 2,
            len,
            channels,
            kernel: 4,
        };
        let case = Case::random(&mut Rng::new(3), dims, true, true, true);
        let positions = [0, 1, 29, 30, 31, 32, 33, 34, 61, 62, 63, 64, 65, 66, 69];
        let x = (0..2)
            .flat_map(|b| {
                positions
                    .iter()
                    .map(move |&t| (b * len + t) * channels + (t * 37 + b) % channels)
            })
            .collect();
        let channels_probed = [0, 1, 500, 1023];
        let weight = channels_probed
            .iter()
            .flat_map(|&c| (0..4).map(move |k| c * 4 + k))
            .collect();
        check_backward(
            &case,
            &Probe {
                x,
                weight,
                bias: channels_probed.to_vec(),
            },
        );
    }

    #[test]
    fn reset_splits_a_row_into_two_rows() {
        let mut rng = Rng::new(4);
        let (len, channels, kernel, reset) = (12, 6, 4, 5);
        let dims = ConvDims {
            batch: 1,
            len,
            channels,
            kernel,
        };
        let mut case = Case::random(&mut rng, dims, true, false, true);
        let mut resets = vec![0; len];
        resets[reset] = 1;
        case.resets = Some(resets);
        let (out, carried) = case.run();

        let head = Case {
            dims: ConvDims { len: reset, ..dims },
            x: case.x[..reset * channels].to_vec(),
            weight: case.weight.clone(),
            bias: case.bias.clone(),
            resets: None,
            state: case.state.clone(),
        };
        let tail = Case {
            dims: ConvDims {
                len: len - reset,
                ..dims
            },
            x: case.x[reset * channels..].to_vec(),
            weight: case.weight.clone(),
            bias: case.bias.clone(),
            resets: None,
            state: Some(vec![0.0; dims.state_len()]),
        };
        let (head_out, _) = head.run();
        let (tail_out, tail_state) = tail.run();
        assert_eq!(out[..reset * channels], head_out[..]);
        assert_eq!(out[reset * channels..], tail_out[..]);
        assert_eq!(carried, tail_state);
    }

    /// Runs `case` span by span over consecutive position ranges starting at 0 and ending
    /// at `len`, carrying the state (zero when the case has none) from span to span; returns
    /// the joined output and the final state.
    fn run_in_spans(case: &Case, ends: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let ConvDims {
            batch,
            len,
            channels,
            ..
        } = case.dims;
        let mut state = case
            .state
            .clone()
            .unwrap_or_else(|| vec![0.0; case.dims.state_len()]);
        let mut joined = vec![f32::NAN; case.x.len()];
        let mut start = 0;
        for &end in ends {
            let span = ConvDims {
                len: end - start,
                ..case.dims
            };
            // The span's positions of every row, as a tensor of its own.
            let gather = |width: usize| -> Vec<std::ops::Range<usize>> {
                (0..batch)
                    .map(|b| (b * len + start) * width..(b * len + end) * width)
                    .collect()
            };
            let x: Vec<f32> = gather(channels)
                .into_iter()
                .flat_map(|r| case.x[r].to_vec())
                .collect();
            let resets: Option<Vec<u32>> = case.resets.as_ref().map(|resets| {
                gather(1)
                    .into_iter()
                    .flat_map(|r| resets[r].to_vec())
                    .collect()
            });
            let mut out = vec![0.0; x.len()];
            forward(
                span,
                &x,
                &case.weight,
                &case.bias,
                resets.as_deref(),
                Some(&mut state),
                &mut out,
            )
            .unwrap();
            for (r, piece) in gather(channels)
                .into_iter()
                .zip(out.chunks(span.len * channels))
            {
                joined[r].copy_from_slice(piece);
            }
            start = end;
        }
        (joined, state)
    }

    #[test]
    fn chunks_and_decode_steps_equal_one_pass() {
        let dims = ConvDims {
            batch: 2,
            len: 10,
            channels: 5,
            kernel: 4,
        };
        let case = Case::random(&mut Rng::new(5), dims, true, true, true);
        let (full, full_state) = case.run();
        let full_state = full_state.unwrap();
        for split in [1, 3, 7] {
            let (chunked, state) = run_in_spans(&case, &[split, dims.len]);
            assert_eq!(bits(&chunked), bits(&full), "split at {split}");
            assert_eq!(
                bits(&state),
                bits(&full_state),
                "state after split at {split}"
            );
        }
        let steps: Vec<usize> = (1..=dims.len).collect();
        let (stepped, state) = run_in_spans(&case, &steps);
        assert_eq!(bits(&stepped), bits(&full), "decode steps");
        assert_eq!(bits(&state), bits(&full_state), "state after decode steps");
    }

    proptest::proptest! {
        #[test]
        fn any_split_equals_one_pass(
            seed in 0u64..1000,
            batch in 1usize..3,
            len in 1usize..16,
            channels in 1usize..6,
            kernel in 1usize..6,
            with_resets: bool,
            with_state: bool,
            split_fractions in proptest::collection::vec(0.0f64..1.0, 0..4),
        ) {
            let dims = ConvDims { batch, len, channels, kernel };
            let case = Case::random(&mut Rng::new(seed), dims, seed % 2 == 0, with_resets, with_state);
            let mut ends: Vec<usize> = split_fractions
                .iter()
                .map(|f| 1 + (f * (len - 1) as f64) as usize)
                .chain([len])
                .collect();
            ends.sort_unstable();
            ends.dedup();
            // Without a state the one pass and the first span both start from zeros.
            let (full, full_state) = case.run();
            let (chunked, state) = run_in_spans(&case, &ends);
            proptest::prop_assert_eq!(bits(&chunked), bits(&full), "ends {:?}", &ends);
            if let Some(full_state) = full_state {
                proptest::prop_assert_eq!(bits(&state), bits(&full_state), "state, ends {:?}", &ends);
            }
        }
    }

    #[test]
    fn backward_has_the_same_bits_on_one_and_two_threads() {
        let dims = ConvDims {
            batch: 3,
            len: 150,
            channels: 512,
            kernel: 4,
        };
        let case = Case::random(&mut Rng::new(6), dims, true, true, true);
        let d_out = Rng::new(7).vec_uniform(case.x.len(), -1.0, 1.0);
        let run = |threads: usize| {
            let mut grads = (
                vec![0.0; case.x.len()],
                vec![0.0; case.weight.len()],
                vec![0.0; case.bias.len()],
            );
            let (dx, dweight, dbias) = (&mut grads.0, &mut grads.1, &mut grads.2);
            on_threads(threads, || {
                backward(
                    dims,
                    &case.x,
                    &case.weight,
                    &case.bias,
                    case.resets.as_deref(),
                    case.state.as_deref(),
                    &d_out,
                    dx,
                    dweight,
                    dbias,
                )
            })
            .unwrap();
            let (out, _) = on_threads(threads, || case.run());
            (grads, out)
        };
        let (one, out_one) = run(1);
        let (two, out_two) = run(2);
        assert_eq!(bits(&out_one), bits(&out_two));
        assert_eq!(bits(&one.0), bits(&two.0));
        assert_eq!(bits(&one.1), bits(&two.1));
        assert_eq!(bits(&one.2), bits(&two.2));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dims = ConvDims {
            batch: 1,
            len: 3,
            channels: 2,
            kernel: 4,
        };
        let (x, weight) = (vec![0.0; 6], vec![0.0; 8]);
        let mut out = vec![0.0; 6];
        let err = forward(dims, &x, &weight[..7], &[], None, None, &mut out).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "weight",
                expected: 8,
                actual: 7,
                ..
            }
        ));
        let err = forward(dims, &x, &weight, &[0.0], None, None, &mut out).unwrap_err();
        assert!(matches!(err, KernelError::Shape { tensor: "bias", .. }));
        let err = forward(dims, &x, &weight, &[], Some(&[0; 2]), None, &mut out).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "resets",
                ..
            }
        ));
        let err = forward(dims, &x, &weight, &[], None, Some(&mut [0.0; 5]), &mut out).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "state",
                ..
            }
        ));
        let no_taps = ConvDims { kernel: 0, ..dims };
        let err = forward(no_taps, &x, &[], &[], None, None, &mut out).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Invalid {
                op: "conv1d_forward",
                ..
            }
        ));
        let (mut dx, mut dweight) = (vec![0.0; 6], vec![0.0; 8]);
        let err = backward(
            dims,
            &x,
            &weight,
            &[],
            None,
            None,
            &x,
            &mut dx,
            &mut dweight,
            &mut [0.0; 2],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                op: "conv1d_backward",
                tensor: "dbias",
                ..
            }
        ));
    }
}
