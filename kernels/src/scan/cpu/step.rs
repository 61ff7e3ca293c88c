//! The scan's decode step (one position, with a state) when a channel's states fill one
//! vector: `state` = [`LANES`], Mamba's default of 16.
//!
//! The forward keeps a tile's states with one channel per lane, so a call of one position
//! moves every state between the `(batch, channels, state)` tensor and the lanes one value
//! at a time, and makes `A = −exp(a_log)` that way too: paid once for a sequence, but on
//! every call of a decode step. Here a channel's states are one vector, as they lie in the
//! state tensor and in `a_log`: one load and one store each, and one 16-lane `exp` for `A`
//! and one `exp2` for the decay. `y` sums over the states in the forward's order with its
//! roundings, a channel per lane again (one transpose of the tile's new states), so a step
//! gives the forward's bits.

use super::{decay_rate, for_each_task, is_reset, Scatter, Shape};
use crate::lanes::{run_vectorised, Lanes, Vectorised, LANES};
use crate::scan::ScanInputs;

/// Whether [`forward`] serves a forward of `shape` (with a state and no checkpoints).
pub(super) fn handles(shape: &Shape) -> bool {
    shape.len == 1 && shape.state == LANES
}

/// The forward of a shape [`handles`] accepts, its sizes checked: `state` is the initial
/// state on entry and the final one on return.
pub(super) fn forward(
    shape: Shape,
    inputs: &ScanInputs<&[f32]>,
    resets: Option<&[u32]>,
    state: &mut [f32],
    out: &mut [f32],
) {
    let job = StepJob {
        shape,
        inputs: *inputs,
        resets,
        state: Scatter::new(state),
        out: Scatter::new(out),
    };
    for_each_task(&shape, |task| run_vectorised(StepTask { job: &job, task }));
}

struct StepJob<'a> {
    shape: Shape,
    inputs: ScanInputs<&'a [f32]>,
    resets: Option<&'a [u32]>,
    /// Each task reads and writes its own channels' rows.
    state: Scatter<'a>,
    out: Scatter<'a>,
}

struct StepTask<'a> {
    job: &'a StepJob<'a>,
    task: usize,
}

impl Vectorised for StepTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { job, task } = self;
        let (shape, inputs) = (&job.shape, &job.inputs);
        // The per-channel values of a tile come a channel per lane, as in the forward; each
        // channel's states are then one vector of their own.
        for tile in shape.task_tiles(task) {
            let columns = shape.columns(tile, 0);
            let params = tile.first..tile.first + tile.width;
            let dt = (Lanes::load(&inputs.delta[columns.clone()])
                + Lanes::load(&inputs.delta_bias[params.clone()]))
            .softplus();
            let u = Lanes::load(&inputs.u[columns.clone()]);
            let (dt_u, skip) = (dt * u, Lanes::load(&inputs.d_skip[params]) * u);
            let row = shape.state_row(tile, 0);
            let (b, c) = (
                Lanes::load(&inputs.b[row.clone()]),
                Lanes::load(&inputs.c[row]),
            );
            let reset = is_reset(job.resets, shape, tile, 0);
            // The tile's new states, a channel per vector (the padding channels' zero).
            let mut states = [Lanes::ZERO; LANES];
            let first_row = shape.state_block(tile).start;
            for (lane, h) in states.iter_mut().enumerate().take(tile.width) {
                let channel = tile.first + lane;
                let rate = decay_rate(Lanes::load(&inputs.a_log[channel * LANES..][..LANES]));
                let at = first_row + lane * LANES;
                if !reset {
                    // SAFETY: this channel's row of the state tensor, no other task's.
                    unsafe { job.state.read(at, &mut h.0) };
                }
                *h = (rate * dt.0[lane]).exp2().mul_add(*h, b * dt_u.0[lane]);
                // SAFETY: as above.
                unsafe { job.state.write_lanes(at, *h, LANES) };
            }
            // y = D·u + Σ_n h[n]·C[n] over the states in order, a channel per lane as the
            // forward sums it: a vector of each state index across the tile's channels.
            let mut y = skip;
            for (h, &c) in Lanes::transpose(&states).iter().zip(&c.0) {
                y = h.mul_add(Lanes::splat(c), y);
            }
            if let Some(z) = inputs.z {
                let z = Lanes::load(&z[columns.clone()]);
                y = y * (z * z.sigmoid());
            }
            // SAFETY: the tile's own channels.
            unsafe { job.out.write_lanes(columns.start, y, tile.width) };
        }
    }
}
