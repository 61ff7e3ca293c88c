//! Audio: decoding to mono f32, resampling, normalisation, 8-bit quantisation, WAV writing.

pub mod decode;
pub mod mulaw;
pub mod resample;
pub mod wav;

pub use self::decode::{decode_mono, load_mono, AudioStream, DecodedAudio};
pub use self::mulaw::{Normalization, Quantizer};

/// Number of audio tokens (8-bit quantisation), ids `0..AUDIO_VOCAB_SIZE`.
pub const AUDIO_VOCAB_SIZE: usize = 256;
