//! The scan written out plainly in f64, one (batch, channel) at a time, every state kept:
//! the oracle the fast scans are tested against. Its backward is itself checked against
//! finite differences of its forward.

use super::{ScanDims, ScanInputs};

/// Outputs of [`forward`].
pub(crate) struct Forward {
    pub out: Vec<f64>,
    pub final_state: Vec<f64>,
    pub checkpoints: Vec<f64>,
}

/// Gradients from [`backward`], all overwritten (none accumulated).
pub(crate) struct Grads {
    pub du: Vec<f64>,
    pub ddelta: Vec<f64>,
    pub da_log: Vec<f64>,
    pub db: Vec<f64>,
    pub dc: Vec<f64>,
    pub dd_skip: Vec<f64>,
    pub ddelta_bias: Vec<f64>,
    pub dz: Option<Vec<f64>>,
}

fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Per (batch, channel): the state before each step (after any reset) and after it.
struct Trace {
    before: Vec<f64>,
    after: Vec<f64>,
}

fn trace(
    dims: ScanDims,
    x: &ScanInputs<&[f64]>,
    resets: Option<&[u32]>,
    initial: Option<&[f64]>,
    b: usize,
    d: usize,
    checkpoints: &mut [f64],
) -> (Trace, Vec<f64>) {
    let (len, channels, states) = (dims.len, dims.channels, dims.state);
    let mut h: Vec<f64> = match initial {
        Some(h0) => h0[(b * channels + d) * states..][..states].to_vec(),
        None => vec![0.0; states],
    };
    let mut before = vec![0.0; len * states];
    let mut after = vec![0.0; len * states];
    for t in 0..len {
        if t % dims.chunk == 0 {
            let at = ((b * dims.chunks() + t / dims.chunk) * channels + d) * states;
            checkpoints[at..at + states].copy_from_slice(&h);
        }
        let row = b * len + t;
        if resets.is_some_and(|r| r[row] != 0) {
            h.fill(0.0);
        }
        let i = row * channels + d;
        let dt = softplus(x.delta[i] + x.delta_bias[d]);
        before[t * states..][..states].copy_from_slice(&h);
        for (n, h) in h.iter_mut().enumerate() {
            let a = -x.a_log[d * states + n].exp();
            *h = (dt * a).exp() * *h + dt * x.b[row * states + n] * x.u[i];
        }
        after[t * states..][..states].copy_from_slice(&h);
    }
    (Trace { before, after }, h)
}

/// The scan's forward, as `scan::cpu::forward` defines it.
pub(crate) fn forward(
    dims: ScanDims,
    x: &ScanInputs<&[f64]>,
    resets: Option<&[u32]>,
    initial: Option<&[f64]>,
) -> Forward {
    let (len, channels, states) = (dims.len, dims.channels, dims.state);
    let mut out = vec![0.0; dims.batch * len * channels];
    let mut final_state = vec![0.0; dims.state_len()];
    let mut checkpoints = vec![0.0; dims.checkpoint_len()];
    for b in 0..dims.batch {
        for d in 0..channels {
            let (trace, h) = trace(dims, x, resets, initial, b, d, &mut checkpoints);
            final_state[(b * channels + d) * states..][..states].copy_from_slice(&h);
            for t in 0..len {
                let row = b * len + t;
                let i = row * channels + d;
                let mut y = x.d_skip[d] * x.u[i];
                for n in 0..states {
                    y += trace.after[t * states + n] * x.c[row * states + n];
                }
                out[i] = match x.z {
                    Some(z) => y * z[i] * sigmoid(z[i]),
                    None => y,
                };
            }
        }
    }
    Forward {
        out,
        final_state,
        checkpoints,
    }
}

/// Gradients of `Σ out · d_out` by reverse-mode differentiation of [`forward`].
pub(crate) fn backward(
    dims: ScanDims,
    x: &ScanInputs<&[f64]>,
    resets: Option<&[u32]>,
    initial: Option<&[f64]>,
    d_out: &[f64],
) -> Grads {
    let (len, channels, states) = (dims.len, dims.channels, dims.state);
    let activations = dims.batch * len * channels;
    let mut g = Grads {
        du: vec![0.0; activations],
        ddelta: vec![0.0; activations],
        da_log: vec![0.0; channels * states],
        db: vec![0.0; dims.batch * len * states],
        dc: vec![0.0; dims.batch * len * states],
        dd_skip: vec![0.0; channels],
        ddelta_bias: vec![0.0; channels],
        dz: x.z.map(|_| vec![0.0; activations]),
    };
    let mut checkpoints = vec![0.0; dims.checkpoint_len()];
    for b in 0..dims.batch {
        for d in 0..channels {
            let (trace, _) = trace(dims, x, resets, initial, b, d, &mut checkpoints);
            let mut dh = vec![0.0; states];
            let mut da = vec![0.0; states];
            for t in (0..len).rev() {
                let row = b * len + t;
                let i = row * channels + d;
                let u = x.u[i];
                let mut y = x.d_skip[d] * u;
                for n in 0..states {
                    y += trace.after[t * states + n] * x.c[row * states + n];
                }
                let grad_y = match (x.z, g.dz.as_mut()) {
                    (Some(z), Some(dz)) => {
                        let s = sigmoid(z[i]);
                        dz[i] = d_out[i] * y * s * (1.0 + z[i] * (1.0 - s));
                        d_out[i] * z[i] * s
                    }
                    _ => d_out[i],
                };
                g.dd_skip[d] += grad_y * u;
                let v = x.delta[i] + x.delta_bias[d];
                let dt = softplus(v);
                let mut ddt = 0.0;
                let mut du = grad_y * x.d_skip[d];
                for n in 0..states {
                    let a = -x.a_log[d * states + n].exp();
                    let decay = (dt * a).exp();
                    let bn = x.b[row * states + n];
                    let h_before = trace.before[t * states + n];
                    dh[n] += grad_y * x.c[row * states + n];
                    g.dc[row * states + n] += grad_y * trace.after[t * states + n];
                    ddt += dh[n] * (a * decay * h_before + bn * u);
                    du += dh[n] * dt * bn;
                    g.db[row * states + n] += dh[n] * dt * u;
                    da[n] += dh[n] * dt * decay * h_before * a;
                    dh[n] = if resets.is_some_and(|r| r[row] != 0) {
                        0.0
                    } else {
                        dh[n] * decay
                    };
                }
                let dv = if v > 20.0 { ddt } else { ddt * sigmoid(v) };
                g.du[i] = du;
                g.ddelta[i] = dv;
                g.ddelta_bias[d] += dv;
            }
            for (total, part) in g.da_log[d * states..][..states].iter_mut().zip(&da) {
                *total += part;
            }
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, finite_difference, to_f64};

    /// Finite differences of `Σ out · w` through [`forward`] w.r.t. every input tensor.
    #[test]
    fn backward_matches_finite_differences() {
        let dims = ScanDims {
            batch: 2,
            len: 7,
            channels: 3,
            state: 4,
            chunk: 3,
        };
        let mut rng = Rng::new(11);
        let act = dims.batch * dims.len * dims.channels;
        let rows = dims.batch * dims.len * dims.state;
        let normal =
            |rng: &mut Rng, n: usize| -> Vec<f64> { (0..n).map(|_| rng.normal()).collect() };
        let u = normal(&mut rng, act);
        // One position above the softplus pass-through threshold.
        let mut delta = to_f64(&rng.vec_uniform(act, -2.0, 1.0));
        delta[4] = 20.7;
        let a_log = to_f64(&rng.vec_uniform(dims.channels * dims.state, -1.0, 1.5));
        let b = normal(&mut rng, rows);
        let c = normal(&mut rng, rows);
        let d_skip = normal(&mut rng, dims.channels);
        let delta_bias = to_f64(&rng.vec_uniform(dims.channels, -0.5, 0.5));
        let z = normal(&mut rng, act);
        let h0 = normal(&mut rng, dims.state_len());
        let w = normal(&mut rng, act);
        let mut resets = vec![0u32; dims.batch * dims.len];
        resets[4] = 1;
        resets[dims.len + 2] = 1;

        let tensors = [&u, &delta, &a_log, &b, &c, &d_skip, &delta_bias, &z];
        let loss = |which: usize, values: &[f64]| -> f64 {
            let mut t: Vec<&[f64]> = tensors.iter().map(|v| v.as_slice()).collect();
            t[which] = values;
            let x = ScanInputs {
                u: t[0],
                delta: t[1],
                a_log: t[2],
                b: t[3],
                c: t[4],
                d_skip: t[5],
                delta_bias: t[6],
                z: Some(t[7]),
            };
            let f = forward(dims, &x, Some(&resets), Some(&h0));
            f.out.iter().zip(&w).map(|(o, w)| o * w).sum()
        };
        let x = ScanInputs {
            u: &u[..],
            delta: &delta[..],
            a_log: &a_log[..],
            b: &b[..],
            c: &c[..],
            d_skip: &d_skip[..],
            delta_bias: &delta_bias[..],
            z: Some(&z[..]),
        };
        let g = backward(dims, &x, Some(&resets), Some(&h0), &w);
        let analytic = [
            ("du", &g.du),
            ("ddelta", &g.ddelta),
            ("da_log", &g.da_log),
            ("db", &g.db),
            ("dc", &g.dc),
            ("dd_skip", &g.dd_skip),
            ("ddelta_bias", &g.ddelta_bias),
            ("dz", g.dz.as_ref().unwrap()),
        ];
        for (which, (name, grad)) in analytic.into_iter().enumerate() {
            let numeric = finite_difference(|v| loss(which, v), tensors[which], 1e-6);
            let grad32: Vec<f32> = grad.iter().map(|&v| v as f32).collect();
            assert_close(name, &grad32, &numeric, 1e-6, 1e-8);
        }
    }
}
