//! Writing samples and audio tokens as 16-bit PCM WAV, so generated audio can be heard.

use std::path::Path;

use super::Quantizer;
use crate::error::{Error, Location, Result};

/// Writes mono samples in [-1, 1] (clipped) as 16-bit PCM WAV at `rate` Hz.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-wav-doc.wav");
/// seqmamba_modalities::audio::wav::write_wav(&path, &[0.0, 0.5, -0.5], 8000).unwrap();
/// let clip = seqmamba_modalities::audio::decode_mono(&path).unwrap();
/// assert_eq!(clip.sample_rate, 8000);
/// assert_eq!(clip.samples.len(), 3);
/// ```
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let wrap = |e: hound::Error| match e {
        hound::Error::IoError(source) => Error::Io {
            path: path.into(),
            at: Location::File,
            source,
        },
        other => Error::Format {
            path: path.into(),
            at: Location::File,
            message: other.to_string(),
        },
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wrap)?;
    for &s in samples {
        let v = (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16;
        writer.write_sample(v).map_err(wrap)?;
    }
    writer.finalize().map_err(wrap)
}

/// Decodes audio tokens with `quantizer` and writes them as a WAV file.
///
/// ```
/// use seqmamba_modalities::audio::{wav::write_tokens_wav, Quantizer};
/// # let path = std::env::temp_dir().join("seqmamba-tokens-doc.wav");
/// write_tokens_wav(&path, &[128, 200, 50], Quantizer::MuLaw, 16_000).unwrap();
/// ```
pub fn write_tokens_wav(path: &Path, tokens: &[u8], quantizer: Quantizer, rate: u32) -> Result<()> {
    write_wav(path, &quantizer.decode_all(tokens), rate)
}
