//! Sample-rate conversion with rubato's windowed-sinc resampler.

use std::cell::RefCell;

use rubato::{
    audioadapter_buffers::direct::InterleavedSlice, Async, FixedAsync, Indexing, Resampler,
    SincInterpolationParameters, WindowFunction,
};

use crate::error::{Error, Result};

/// Input frames per resampler call: large enough to amortise the call, small for the cache.
const CHUNK: usize = 1024;
/// Length of the windowed-sinc filter in input frames.
const SINC_LEN: usize = 128;

/// A resampler and the (from, to) rates it was built for.
type Cached = Option<((u32, u32), Async<f32>)>;

thread_local! {
    static LAST: RefCell<Cached> = const { RefCell::new(None) };
}

/// Resamples mono `samples` from `from` Hz to `to` Hz (a copy when the rates agree).
///
/// The output has `ceil(len · to / from)` samples, aligned with the input to within half an
/// output sample (the filter's delay is removed).
///
/// ```
/// use seqmamba_modalities::audio::resample::resample;
/// let x: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.05).sin()).collect();
/// let y = resample(&x, 8000, 16000).unwrap();
/// assert_eq!(y.len(), 16000);
/// ```
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::Invalid(format!(
            "sample rates must be positive: {from} → {to}"
        )));
    }
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Invalid(format!("resampling {from} → {to} Hz: {what}: {e}"))
    };
    let ratio = to as f64 / from as f64;
    // Building the sinc table costs about as much as resampling a one-second clip, so each
    // thread keeps its last resampler and reuses it for clips of the same rates.
    let cached = LAST.with(|last| match last.borrow_mut().take() {
        Some((rates, mut resampler)) if rates == (from, to) => {
            resampler.reset();
            Some(resampler)
        }
        _ => None,
    });
    let mut resampler = match cached {
        Some(resampler) => resampler,
        None => {
            let params =
                SincInterpolationParameters::new(SINC_LEN, WindowFunction::BlackmanHarris2);
            Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, 1, FixedAsync::Input)
                .map_err(|e| fail("construction", &e))?
        }
    };
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| fail("input", &e))?;
    // rubato 5.1's process_all trims `floor(SINC_LEN/2 · ratio)` frames, one output frame
    // more than the filter's delay (measured with impulses at several ratios); so we drive
    // the resampler ourselves and trim the true delay, rounded.
    let delay = (SINC_LEN as f64 / 2.0 * ratio - 1.0).round().max(0.0) as usize;
    let wanted = (samples.len() as f64 * ratio).ceil() as usize;
    let mut chunk = vec![0.0f32; resampler.output_frames_max()];
    let mut out = Vec::with_capacity(wanted + delay + chunk.len());
    let mut consumed = 0;
    while out.len() < wanted + delay {
        let left = samples.len() - consumed;
        let mut indexing = Indexing::new().input_offset(consumed);
        if left < resampler.input_frames_next() {
            indexing = indexing.partial_len(left);
        }
        let chunk_len = chunk.len();
        let mut output =
            InterleavedSlice::new_mut(&mut chunk, 1, chunk_len).map_err(|e| fail("output", &e))?;
        let (used, produced) = resampler
            .process_into_buffer(&input, &mut output, Some(&indexing))
            .map_err(|e| fail("processing", &e))?;
        consumed += used.min(left);
        out.extend_from_slice(&chunk[..produced]);
    }
    out.drain(..delay);
    out.truncate(wanted);
    LAST.with(|last| *last.borrow_mut() = Some(((from, to), resampler)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (std::f32::consts::TAU * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn upsampled_sine_matches_the_sine_at_the_new_rate() {
        let x = sine(440.0, 8000, 8000);
        let y = resample(&x, 8000, 16000).unwrap();
        assert_eq!(y.len(), 16000);
        let expected = sine(440.0, 16000, 16000);
        // Away from the edges (filter warm-up) a well-kept sinc resampler is accurate to ~1e-3;
        // a shift by one output sample would give 0.17.
        let err = y[1000..15000]
            .iter()
            .zip(&expected[1000..15000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 5e-3, "max error {err}");
    }

    #[test]
    fn a_bump_stays_in_place_at_any_ratio() {
        for (from, to) in [
            (8000, 16000),
            (16000, 8000),
            (8000, 44100),
            (44100, 8000),
            (22050, 16000),
        ] {
            let centre = 2000.0f64;
            let sigma = 3.0 * (from as f64 / to as f64).max(1.0);
            let x: Vec<f32> = (0..4000)
                .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp() as f32)
                .collect();
            let y = resample(&x, from, to).unwrap();
            let (moment, mass) = y.iter().enumerate().fold((0.0, 0.0), |(m, s), (i, &v)| {
                (m + i as f64 * v as f64, s + v as f64)
            });
            let shift = moment / mass - centre * to as f64 / from as f64;
            assert!(
                shift.abs() <= 0.5,
                "{from} → {to}: bump moved by {shift} samples"
            );
        }
    }

    #[test]
    fn a_reused_resampler_gives_the_same_output() {
        let x = sine(300.0, 8000, 3000);
        let first = resample(&x, 8000, 16000).unwrap();
        let _other_rate = resample(&x, 8000, 22050).unwrap();
        let again = resample(&x, 8000, 16000).unwrap();
        let third = resample(&x, 8000, 16000).unwrap();
        assert_eq!(first, again);
        assert_eq!(first, third);
    }

    #[test]
    fn equal_rates_copy_and_zero_rate_fails() {
        assert_eq!(resample(&[0.5, -0.5], 8000, 8000).unwrap(), vec![0.5, -0.5]);
        assert!(resample(&[0.5], 0, 8000).is_err());
    }
}
