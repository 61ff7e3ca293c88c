//! A plain short-time Fourier transform with a Hann window, for spectrogram plots.

use std::f64::consts::PI;

/// The periodic Hann window of `len` points (sums overlap-add to a constant at hop len/2).
///
/// ```
/// let w = seqmamba::report::spectrum::hann(4);
/// assert!(w[0].abs() < 1e-12 && (w[2] - 1.0).abs() < 1e-12);
/// ```
pub fn hann(len: usize) -> Vec<f64> {
    (0..len)
        .map(|n| 0.5 - 0.5 * (2.0 * PI * n as f64 / len as f64).cos())
        .collect()
}

/// In-place radix-2 FFT of `(re, im)`; the length must be a power of two.
fn fft(re: &mut [f64], im: &mut [f64]) {
    let n = re.len();
    debug_assert!(n.is_power_of_two() && im.len() == n);
    // Bit-reversal permutation.
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut size = 2;
    while size <= n {
        let angle = -2.0 * PI / size as f64;
        for start in (0..n).step_by(size) {
            for k in 0..size / 2 {
                let (w_im, w_re) = (angle * k as f64).sin_cos();
                let (a, b) = (start + k, start + k + size / 2);
                let t_re = re[b] * w_re - im[b] * w_im;
                let t_im = re[b] * w_im + im[b] * w_re;
                re[b] = re[a] - t_re;
                im[b] = im[a] - t_im;
                re[a] += t_re;
                im[a] += t_im;
            }
        }
        size *= 2;
    }
}

/// Power spectrogram in decibels: `frames[t][f]` for frames of `window` samples (a power of
/// two) every `hop` samples, Hann-windowed, bins `0..=window/2`. A clip shorter than one
/// window is zero-padded to one frame.
///
/// ```
/// use seqmamba::report::spectrum::spectrogram_db;
/// // A tone at bin 4 of a 32-point window.
/// let tone: Vec<f64> = (0..128).map(|n| (2.0 * std::f64::consts::PI * 4.0 * n as f64 / 32.0).sin()).collect();
/// let frames = spectrogram_db(&tone, 32, 16);
/// let peak = (0..frames[0].len()).max_by(|&a, &b| frames[0][a].total_cmp(&frames[0][b])).unwrap();
/// assert_eq!(peak, 4);
/// ```
pub fn spectrogram_db(samples: &[f64], window: usize, hop: usize) -> Vec<Vec<f64>> {
    assert!(
        window.is_power_of_two() && hop > 0,
        "window a power of two, hop > 0"
    );
    let taper = hann(window);
    let frames = if samples.len() <= window {
        1
    } else {
        1 + (samples.len() - window).div_ceil(hop)
    };
    (0..frames)
        .map(|t| {
            let mut re: Vec<f64> = (0..window)
                .map(|n| samples.get(t * hop + n).copied().unwrap_or(0.0) * taper[n])
                .collect();
            let mut im = vec![0.0; window];
            fft(&mut re, &mut im);
            (0..=window / 2)
                .map(|f| 10.0 * (re[f] * re[f] + im[f] * im[f] + 1e-12).log10())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmamba_kernels::rng::Rng;

    #[test]
    fn fft_matches_direct_dft() {
        let mut rng = Rng::new(3);
        for n in [1usize, 2, 8, 64] {
            let x_re: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            let x_im: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            let (mut re, mut im) = (x_re.clone(), x_im.clone());
            fft(&mut re, &mut im);
            for k in 0..n {
                let (mut sum_re, mut sum_im) = (0.0, 0.0);
                for t in 0..n {
                    let (s, c) = (-2.0 * PI * (k * t) as f64 / n as f64).sin_cos();
                    sum_re += x_re[t] * c - x_im[t] * s;
                    sum_im += x_re[t] * s + x_im[t] * c;
                }
                assert!((re[k] - sum_re).abs() < 1e-9, "n {n} bin {k}");
                assert!((im[k] - sum_im).abs() < 1e-9, "n {n} bin {k}");
            }
        }
    }

    #[test]
    fn hann_overlap_adds_to_one_at_half_hop() {
        let w = hann(16);
        for n in 0..8 {
            assert!((w[n] + w[n + 8] - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn spectrogram_frames_and_silence() {
        let frames = spectrogram_db(&vec![0.0; 100], 32, 16);
        // 1 + ceil((100 − 32) / 16) frames, 17 bins each, silence at the −120 dB floor.
        assert_eq!(frames.len(), 6);
        assert!(frames
            .iter()
            .all(|f| f.len() == 17 && f.iter().all(|&d| (d + 120.0).abs() < 1e-9)));
        assert_eq!(spectrogram_db(&[1.0; 5], 32, 16).len(), 1);
    }
}
