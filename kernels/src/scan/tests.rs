//! The CPU scan against a plain f64 loop and central finite differences of it.

use super::cpu::{backward, forward, GradBuffers, InputBuffers};
use super::{reference, ScanDims, ScanInputs};
use crate::rng::Rng;
use crate::testing::{assert_close, bits, finite_difference, to_f64};
use crate::KernelError;

impl InputBuffers<f32> {
    fn widen(&self) -> InputBuffers<f64> {
        InputBuffers {
            u: to_f64(&self.u),
            delta: to_f64(&self.delta),
            a_log: to_f64(&self.a_log),
            b: to_f64(&self.b),
            c: to_f64(&self.c),
            d_skip: to_f64(&self.d_skip),
            delta_bias: to_f64(&self.delta_bias),
            z: self.z.as_deref().map(to_f64),
        }
    }
}

/// A random scan problem.
struct Case {
    dims: ScanDims,
    tensors: InputBuffers<f32>,
    resets: Option<Vec<u32>>,
    initial: Option<Vec<f32>>,
}

#[derive(Clone, Copy)]
struct Options {
    gate: bool,
    resets: bool,
    initial: bool,
}

const ALL: Options = Options {
    gate: true,
    resets: true,
    initial: true,
};
const PLAIN: Options = Options {
    gate: false,
    resets: false,
    initial: false,
};

impl Case {
    fn random(seed: u64, dims: ScanDims, options: Options) -> Self {
        let mut rng = Rng::new(seed);
        let ScanDims {
            batch,
            len,
            channels,
            state,
            ..
        } = dims;
        let activations = batch * len * channels;
        let per_position = batch * len * state;
        // Mostly ordinary Δ, with a few positions past the softplus pass-through at 20 and a
        // few where Δ is nearly 0.
        let delta = (0..activations)
            .map(|_| match rng.below(40) {
                0 => rng.uniform_in(20.5, 23.0) as f32,
                1 => rng.uniform_in(-30.0, -20.0) as f32,
                _ => rng.uniform_in(-3.0, 1.5) as f32,
            })
            .collect();
        let tensors = InputBuffers {
            u: rng.vec_uniform(activations, -1.0, 1.0),
            delta,
            a_log: rng.vec_uniform(channels * state, -0.5, 2.0),
            b: rng.vec_uniform(per_position, -1.0, 1.0),
            c: rng.vec_uniform(per_position, -1.0, 1.0),
            d_skip: rng.vec_uniform(channels, -1.0, 1.0),
            delta_bias: rng.vec_uniform(channels, -1.0, 0.5),
            z: options
                .gate
                .then(|| rng.vec_uniform(activations, -3.0, 3.0)),
        };
        let resets = options.resets.then(|| {
            (0..batch * len)
                .map(|i| u32::from(i % len == 3 || rng.below(5) == 0))
                .collect()
        });
        let initial = options
            .initial
            .then(|| rng.vec_uniform(dims.state_len(), -1.0, 1.0));
        Self {
            dims,
            tensors,
            resets,
            initial,
        }
    }

    fn resets(&self) -> Option<&[u32]> {
        self.resets.as_deref()
    }

    /// `(out, final state, checkpoints)` of the CPU forward.
    fn forward(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let dims = self.dims;
        let mut out = vec![0.0; dims.batch * dims.len * dims.channels];
        let mut state = self
            .initial
            .clone()
            .unwrap_or_else(|| vec![0.0; dims.state_len()]);
        let mut checkpoints = vec![0.0; dims.checkpoint_len()];
        forward(
            dims,
            &self.tensors.views(),
            self.resets(),
            Some(&mut state),
            Some(&mut checkpoints),
            &mut out,
        )
        .unwrap();
        (out, state, checkpoints)
    }

    /// The CPU backward of the loss `Σ out · d_out`, into zeroed accumulators.
    fn backward(&self, d_out: &[f32]) -> GradBuffers {
        let (_, _, checkpoints) = self.forward();
        let mut grads = GradBuffers::zeros(self.dims, self.tensors.z.is_some());
        backward(
            self.dims,
            &self.tensors.views(),
            self.resets(),
            &checkpoints,
            d_out,
            grads.views(),
        )
        .unwrap();
        grads
    }
}

fn reference_of(case: &Case) -> reference::Forward {
    let wide = case.tensors.widen();
    let initial = case.initial.as_deref().map(to_f64);
    reference::forward(case.dims, &wide.views(), case.resets(), initial.as_deref())
}

fn dims(batch: usize, len: usize, channels: usize, state: usize, chunk: usize) -> ScanDims {
    ScanDims {
        batch,
        len,
        channels,
        state,
        chunk,
    }
}

#[test]
fn forward_matches_the_f64_reference() {
    let shapes = [
        (dims(2, 23, 5, 4, 8), PLAIN),
        (dims(2, 23, 5, 4, 8), ALL),
        (
            dims(1, 30, 19, 16, 64),
            Options {
                gate: true,
                resets: false,
                initial: false,
            },
        ),
        (
            dims(3, 17, 32, 3, 5),
            Options {
                gate: false,
                resets: true,
                initial: true,
            },
        ),
        (dims(2, 40, 37, 16, 16), ALL),
        // Several tasks per row, the last one with a partial tile.
        (dims(2, 20, 150, 4, 8), ALL),
    ];
    for (seed, (dims, options)) in shapes.into_iter().enumerate() {
        let case = Case::random(seed as u64, dims, options);
        let (out, state, checkpoints) = case.forward();
        let expected = reference_of(&case);
        assert_close("out", &out, &expected.out, 1e-5, 1e-7);
        assert_close("state", &state, &expected.final_state, 1e-5, 1e-7);
        assert_close(
            "checkpoints",
            &checkpoints,
            &expected.checkpoints,
            1e-5,
            1e-7,
        );
    }
}

#[test]
fn forward_without_state_or_checkpoints_starts_from_zero() {
    let dims = dims(2, 9, 20, 4, 4);
    let case = Case::random(11, dims, PLAIN);
    let mut out = vec![0.0; 2 * 9 * 20];
    forward(dims, &case.tensors.views(), None, None, None, &mut out).unwrap();
    assert_close("out", &out, &reference_of(&case).out, 1e-5, 1e-7);
}

#[test]
fn chunked_calls_carrying_state_equal_one_pass() {
    let full = dims(2, 29, 21, 16, 8);
    let case = Case::random(5, full, ALL);
    let (out, state, _) = case.forward();
    for split in [1, 8, 13, 28] {
        let mut carried = case.initial.clone().unwrap();
        let mut pieces = vec![0.0; out.len()];
        for range in [0..split, split..full.len] {
            let part = dims(2, range.len(), 21, 16, 8);
            let piece = slice_positions(&case, range.clone());
            let mut piece_out = vec![0.0; 2 * range.len() * 21];
            forward(
                part,
                &piece.tensors.views(),
                piece.resets(),
                Some(&mut carried),
                None,
                &mut piece_out,
            )
            .unwrap();
            for b in 0..2 {
                let rows = piece_out[b * range.len() * 21..(b + 1) * range.len() * 21].iter();
                let at = (b * full.len + range.start) * 21;
                pieces[at..at + range.len() * 21]
                    .iter_mut()
                    .zip(rows)
                    .for_each(|(o, &v)| *o = v);
            }
        }
        assert_eq!(pieces, out, "split at {split}");
        assert_eq!(carried, state, "split at {split}");
    }
}

#[test]
fn decode_steps_equal_one_pass() {
    let no_gate = Options { gate: false, ..ALL };
    // 16 states take the step path (a channel's states in one vector), 4 the forward's
    // tiles; 150 channels make several tasks per row, the last tile partial.
    for (seed, (batch, channels, state, options)) in [
        (1, 18, 16, ALL),
        (2, 150, 16, ALL),
        (2, 18, 16, no_gate),
        (2, 18, 4, ALL),
    ]
    .into_iter()
    .enumerate()
    {
        let full = dims(batch, 12, channels, state, 64);
        let case = Case::random(6 + seed as u64, full, options);
        let (out, final_state, _) = case.forward();
        let mut carried = case.initial.clone().unwrap();
        for t in 0..full.len {
            let step = slice_positions(&case, t..t + 1);
            let mut y = vec![0.0; batch * channels];
            forward(
                dims(batch, 1, channels, state, 1),
                &step.tensors.views(),
                step.resets(),
                Some(&mut carried),
                None,
                &mut y,
            )
            .unwrap();
            for (b, y) in y.chunks(channels).enumerate() {
                let at = (b * full.len + t) * channels;
                assert!(
                    bits(y) == bits(&out[at..at + channels]),
                    "{full:?}: row {b}, position {t}"
                );
            }
        }
        assert!(bits(&carried) == bits(&final_state), "{full:?}: state");
    }
}

/// The positions `range` of every batch row of `case` (parameters unchanged).
fn slice_positions(case: &Case, range: std::ops::Range<usize>) -> Case {
    let dims = case.dims;
    let cut = |x: &[f32], width: usize| -> Vec<f32> {
        (0..dims.batch)
            .flat_map(|b| {
                let at = b * dims.len * width;
                x[at + range.start * width..at + range.end * width]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let t = &case.tensors;
    Case {
        dims: ScanDims {
            len: range.len(),
            ..dims
        },
        tensors: InputBuffers {
            u: cut(&t.u, dims.channels),
            delta: cut(&t.delta, dims.channels),
            a_log: t.a_log.clone(),
            b: cut(&t.b, dims.state),
            c: cut(&t.c, dims.state),
            d_skip: t.d_skip.clone(),
            delta_bias: t.delta_bias.clone(),
            z: t.z.as_deref().map(|z| cut(z, dims.channels)),
        },
        resets: case.resets.as_ref().map(|r| {
            (0..dims.batch)
                .flat_map(|b| r[b * dims.len + range.start..b * dims.len + range.end].iter())
                .copied()
                .collect()
        }),
        initial: None,
    }
}

/// Which input a finite difference perturbs.
#[derive(Clone, Copy, Debug)]
enum Input {
    U,
    Delta,
    ALog,
    B,
    C,
    DSkip,
    DeltaBias,
    Z,
}

impl Input {
    fn replace<'a>(self, inputs: &mut ScanInputs<&'a [f64]>, x: &'a [f64]) {
        match self {
            Self::U => inputs.u = x,
            Self::Delta => inputs.delta = x,
            Self::ALog => inputs.a_log = x,
            Self::B => inputs.b = x,
            Self::C => inputs.c = x,
            Self::DSkip => inputs.d_skip = x,
            Self::DeltaBias => inputs.delta_bias = x,
            Self::Z => inputs.z = Some(x),
        }
    }
}

fn check_gradients(case: &Case) {
    let dims = case.dims;
    let d_out = Rng::new(99).vec_uniform(dims.batch * dims.len * dims.channels, -1.0, 1.0);
    let grads = case.backward(&d_out);
    let wide = case.tensors.widen();
    let initial = case.initial.as_deref().map(to_f64);
    let projection = to_f64(&d_out);
    let loss = |inputs: &ScanInputs<&[f64]>| -> f64 {
        let out = reference::forward(dims, inputs, case.resets(), initial.as_deref()).out;
        out.iter().zip(&projection).map(|(o, p)| o * p).sum()
    };
    let mut checks = vec![
        (Input::U, &grads.du, &wide.u),
        (Input::Delta, &grads.ddelta, &wide.delta),
        (Input::ALog, &grads.da_log, &wide.a_log),
        (Input::B, &grads.db, &wide.b),
        (Input::C, &grads.dc, &wide.c),
        (Input::DSkip, &grads.dd_skip, &wide.d_skip),
        (Input::DeltaBias, &grads.ddelta_bias, &wide.delta_bias),
    ];
    if let (Some(dz), Some(z)) = (&grads.dz, &wide.z) {
        checks.push((Input::Z, dz, z));
    }
    for (input, analytic, at) in checks {
        let numeric = finite_difference(
            |x| {
                let mut inputs = wide.views();
                input.replace(&mut inputs, x);
                loss(&inputs)
            },
            at,
            1e-5,
        );
        assert_close(
            &format!("{input:?} {dims:?}"),
            analytic,
            &numeric,
            1e-4,
            1e-7,
        );
    }
}

#[test]
fn backward_matches_finite_differences_with_resets_gate_and_state() {
    // L not a multiple of the chunk, chunk smaller than L, a partial tile of channels.
    check_gradients(&Case::random(21, dims(2, 11, 19, 4, 4), ALL));
}

#[test]
fn backward_matches_finite_differences_in_one_chunk_without_gate() {
    check_gradients(&Case::random(22, dims(2, 9, 5, 3, 64), PLAIN));
}

#[test]
fn backward_matches_finite_differences_with_full_tiles_of_sixteen_states() {
    let options = Options {
        gate: true,
        resets: false,
        initial: true,
    };
    check_gradients(&Case::random(23, dims(1, 7, 16, 16, 3), options));
}

#[test]
fn backward_matches_finite_differences_across_several_tasks_per_row() {
    // 259 channels: a task of 16 full tiles and one of a 3-channel tile.
    check_gradients(&Case::random(24, dims(2, 5, 259, 2, 2), ALL));
}

/// The output the backward makes again is the forward's, bit for bit: with and without
/// gate, resets and initial state, across tasks and chunks.
#[test]
fn backward_remakes_the_forward_output_bit_for_bit() {
    for (seed, (dims, options)) in [
        (dims(2, 23, 5, 4, 8), ALL),
        (dims(1, 30, 19, 16, 64), PLAIN),
        (dims(2, 40, 300, 16, 16), ALL),
    ]
    .into_iter()
    .enumerate()
    {
        let case = Case::random(40 + seed as u64, dims, options);
        let (out, _, checkpoints) = case.forward();
        let mut grads = GradBuffers::zeros(dims, options.gate);
        grads.out = Some(vec![f32::NAN; out.len()]);
        let d_out = vec![1.0; out.len()];
        backward(
            dims,
            &case.tensors.views(),
            case.resets(),
            &checkpoints,
            &d_out,
            grads.views(),
        )
        .unwrap();
        assert_eq!(bits(grads.out.as_ref().unwrap()), bits(&out), "{dims:?}");
    }
}

#[test]
fn parameter_gradients_accumulate_and_activation_gradients_are_overwritten() {
    let case = Case::random(31, dims(2, 10, 17, 4, 4), ALL);
    let d_out = Rng::new(1).vec_uniform(2 * 10 * 17, -1.0, 1.0);
    let once = case.backward(&d_out);
    let (_, _, checkpoints) = case.forward();
    let mut twice = once.clone();
    backward(
        case.dims,
        &case.tensors.views(),
        case.resets(),
        &checkpoints,
        &d_out,
        twice.views(),
    )
    .unwrap();
    let doubled = |x: &[f32]| x.iter().map(|v| 2.0 * v).collect::<Vec<_>>();
    assert_eq!(twice.da_log, doubled(&once.da_log));
    assert_eq!(twice.dd_skip, doubled(&once.dd_skip));
    assert_eq!(twice.ddelta_bias, doubled(&once.ddelta_bias));
    assert_eq!(
        (&twice.du, &twice.ddelta, &twice.db, &twice.dc, &twice.dz),
        (&once.du, &once.ddelta, &once.db, &once.dc, &once.dz)
    );
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    // Two tasks per batch row (270 channels), the second with a partial tile; the
    // forward's tasks are one per row (wide) on 1 and 3 threads, two per row on 2.
    let case = Case::random(41, dims(3, 150, 270, 16, 16), ALL);
    let d_out = Rng::new(2).vec_uniform(3 * 150 * 270, -1.0, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| (case.forward(), case.backward(&d_out)))
    };
    let single = run(1);
    for threads in [2, 3] {
        let multi = run(threads);
        assert!(
            bits(&multi.0 .0) == bits(&single.0 .0),
            "out, {threads} threads"
        );
        assert!(bits(&multi.0 .2) == bits(&single.0 .2), "checkpoints");
        let (m, s) = (&multi.1, &single.1);
        for (name, a, b) in [
            ("du", &m.du, &s.du),
            ("ddelta", &m.ddelta, &s.ddelta),
            ("da_log", &m.da_log, &s.da_log),
            ("db", &m.db, &s.db),
            ("dc", &m.dc, &s.dc),
            ("dd_skip", &m.dd_skip, &s.dd_skip),
            ("ddelta_bias", &m.ddelta_bias, &s.ddelta_bias),
        ] {
            assert!(bits(a) == bits(b), "{name}, {threads} threads");
        }
        assert!(bits(m.dz.as_ref().unwrap()) == bits(s.dz.as_ref().unwrap()));
    }
}

#[test]
fn wide_decode_steps_are_bit_identical_for_any_thread_count() {
    // A 130M-size layer's step (1536 channels): above the size that splits a step's tasks
    // into one share per thread.
    let channels = 1536;
    let case = Case::random(42, dims(1, 1, channels, 16, 1), ALL);
    let step = |threads: usize| {
        let mut state = case.initial.clone().unwrap();
        let mut y = vec![0.0; channels];
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                forward(
                    case.dims,
                    &case.tensors.views(),
                    case.resets(),
                    Some(&mut state),
                    None,
                    &mut y,
                )
            })
            .unwrap();
        (y, state)
    };
    let single = step(1);
    for threads in [2, 3, 4] {
        let multi = step(threads);
        assert!(bits(&multi.0) == bits(&single.0), "out, {threads} threads");
        assert!(
            bits(&multi.1) == bits(&single.1),
            "state, {threads} threads"
        );
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let dims = dims(2, 6, 5, 4, 4);
    let case = Case::random(51, dims, ALL);
    let mut out = vec![0.0; 2 * 6 * 5];
    let shape_error = |result: Result<(), KernelError>, tensor: &str| match result {
        Err(KernelError::Shape { tensor: t, .. }) => assert_eq!(t, tensor),
        other => panic!("expected a shape error on {tensor}, got {other:?}"),
    };

    let mut short = case.tensors.clone();
    short.b.pop();
    shape_error(
        forward(dims, &short.views(), None, None, None, &mut out),
        "b",
    );
    shape_error(
        forward(
            dims,
            &case.tensors.views(),
            Some(&[0; 3]),
            None,
            None,
            &mut out,
        ),
        "resets",
    );
    shape_error(
        forward(
            dims,
            &case.tensors.views(),
            None,
            Some(&mut [0.0; 7]),
            None,
            &mut out,
        ),
        "state",
    );
    shape_error(
        forward(
            dims,
            &case.tensors.views(),
            None,
            None,
            Some(&mut [0.0; 7]),
            &mut out,
        ),
        "checkpoints",
    );
    shape_error(
        forward(dims, &case.tensors.views(), None, None, None, &mut out[1..]),
        "out",
    );
    let zero_chunk = ScanDims { chunk: 0, ..dims };
    assert!(matches!(
        forward(
            zero_chunk,
            &case.tensors.views(),
            None,
            None,
            None,
            &mut out
        ),
        Err(KernelError::Invalid { .. })
    ));

    let (_, _, checkpoints) = case.forward();
    let d_out = vec![0.0; out.len()];
    let mut grads = GradBuffers::zeros(dims, true);
    shape_error(
        backward(
            dims,
            &case.tensors.views(),
            None,
            &checkpoints[1..],
            &d_out,
            grads.views(),
        ),
        "checkpoints",
    );
    grads.db.pop();
    shape_error(
        backward(
            dims,
            &case.tensors.views(),
            None,
            &checkpoints,
            &d_out,
            grads.views(),
        ),
        "db",
    );
    let mut ungated = GradBuffers::zeros(dims, false);
    assert!(matches!(
        backward(
            dims,
            &case.tensors.views(),
            None,
            &checkpoints,
            &d_out,
            ungated.views()
        ),
        Err(KernelError::Invalid { .. })
    ));
}
