//! Decoding WAV (PCM integer and float, mu-law, A-law, ADPCM), FLAC, OGG Vorbis and MP3 with
//! symphonia, downmixed to mono f32 in [-1, 1].

use std::{fs::File, path::Path, path::PathBuf};

use symphonia::core::{
    codecs::audio::{AudioDecoder, AudioDecoderOptions},
    errors::Error as SymError,
    formats::{probe::Hint, FormatOptions, FormatReader, TrackType},
    io::{MediaSource, MediaSourceStream},
    meta::MetadataOptions,
};

use super::{mulaw::Normalization, resample::resample};
use crate::error::{Error, Location, Result};
use crate::input::io_error;

/// A decoder over one audio file that yields mono packets, holding one packet at a time.
///
/// ```
/// use seqmamba_modalities::audio::AudioStream;
/// let mut stream = AudioStream::open("../data-samples/audio/0_jackson_0.flac".as_ref()).unwrap();
/// assert_eq!((stream.container(), stream.codec()), ("flac", "flac"));
/// let mut frames = 0;
/// while let Some(packet) = stream.next_mono().unwrap() {
///     frames += packet.len();
/// }
/// assert_eq!((frames, stream.sample_rate()), (5148, 8000));
/// ```
pub struct AudioStream {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    sample_rate: u32,
    channels: usize,
    declared_frames: Option<u64>,
    codec: String,
    container: String,
    packet: u64,
    frames: u64,
    interleaved: Vec<f32>,
    /// Set by the first error: the decoder's state can no longer be trusted after it.
    failed: bool,
}

impl AudioStream {
    /// Opens and probes `path`, picking its default audio track.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_error(path, Location::File))?;
        Self::from_source(path, Box::new(file))
    }

    /// Decodes audio held in memory; `name` only names it in errors (and its extension hints
    /// at the format).
    ///
    /// ```
    /// use seqmamba_modalities::audio::AudioStream;
    /// let e = AudioStream::from_bytes("noise.wav".as_ref(), vec![1, 2, 3]).err().unwrap();
    /// assert!(e.to_string().starts_with("noise.wav"));
    /// ```
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_source(name, Box::new(std::io::Cursor::new(bytes)))
    }

    fn from_source(path: &Path, source: Box<dyn MediaSource>) -> Result<Self> {
        let stream = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let format = guarded(path, Location::File, || {
            symphonia::default::get_probe().probe(
                &hint,
                stream,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
        })?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| Error::Unsupported {
                path: path.into(),
                what: "no audio track".into(),
            })?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| Error::Unsupported {
                path: path.into(),
                what: "track without audio codec parameters".into(),
            })?
            .clone();
        let track_id = track.id;
        let declared_frames = track.num_frames;
        let decoder = guarded(path, Location::File, || {
            symphonia::default::get_codecs()
                .make_audio_decoder(&params, &AudioDecoderOptions::default())
        })?;
        let sample_rate = params
            .sample_rate
            .filter(|&r| r > 0)
            .ok_or_else(|| Error::Format {
                path: path.into(),
                at: Location::File,
                message: "header gives no sample rate".into(),
            })?;
        let channels = params.channels.as_ref().map(|c| c.count()).unwrap_or(0);
        let codec = decoder.codec_info().short_name.to_string();
        let container = format.format_info().short_name.to_string();
        Ok(Self {
            path: path.into(),
            format,
            decoder,
            track_id,
            sample_rate,
            channels,
            declared_frames,
            codec,
            container,
            packet: 0,
            frames: 0,
            interleaved: Vec::new(),
            failed: false,
        })
    }

    /// The file's sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Channels in the file (before downmixing); 0 where the header does not say.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Codec short name (`pcm_s16le`, `flac`, `vorbis`, `mp3`, ...).
    pub fn codec(&self) -> &str {
        &self.codec
    }

    /// Container short name (`wave`, `flac`, `ogg`, `mp3`, ...).
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The next packet downmixed to mono (the mean of the channels), or `None` at the end.
    /// A NaN or infinite sample (possible in float WAV) is an error naming its frame.
    ///
    /// A stream that ends before the frame count its header declares is an error: a WAV whose
    /// header lies about its data length must not pass as a shorter clip. The first error ends
    /// the stream: later calls report that decoding stopped.
    pub fn next_mono(&mut self) -> Result<Option<Vec<f32>>> {
        if self.failed {
            return Err(Error::Format {
                path: self.path.clone(),
                at: Location::Packet(self.packet),
                message: "decoding stopped at an earlier error".into(),
            });
        }
        let next = self.decode_next();
        self.failed = next.is_err();
        next
    }

    fn decode_next(&mut self) -> Result<Option<Vec<f32>>> {
        loop {
            let at = Location::Packet(self.packet);
            let format = &mut self.format;
            let packet = match guarded(&self.path, at.clone(), || match format.next_packet() {
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Ok(None)
                }
                other => other,
            })? {
                Some(packet) => packet,
                None => return self.finish().map(|_| None),
            };
            self.packet += 1;
            if packet.track_id != self.track_id {
                continue;
            }
            let decoder = &mut self.decoder;
            let buffer = guarded(&self.path, at.clone(), || decoder.decode(&packet))?;
            let channels = buffer.num_planes().max(1);
            let frames = buffer.frames();
            if frames == 0 {
                continue;
            }
            self.interleaved.clear();
            buffer.copy_to_vec_interleaved(&mut self.interleaved);
            self.frames += frames as u64;
            let mono = if channels == 1 {
                self.interleaved.clone()
            } else {
                let scale = 1.0 / channels as f32;
                self.interleaved
                    .chunks_exact(channels)
                    .map(|frame| frame.iter().sum::<f32>() * scale)
                    .collect()
            };
            // Float WAV can hold NaN and infinity; no model input may.
            if let Some(i) = mono.iter().position(|s| !s.is_finite()) {
                return Err(Error::Format {
                    path: self.path.clone(),
                    at,
                    message: format!(
                        "sample {} is {}",
                        self.frames - frames as u64 + i as u64,
                        mono[i]
                    ),
                });
            }
            return Ok(Some(mono));
        }
    }

    fn finish(&self) -> Result<()> {
        if self.frames == 0 {
            return Err(Error::Empty {
                path: self.path.clone(),
                what: "audio frames",
            });
        }
        // A RIFF/AIFF header's data length fixes the frame count exactly; for compressed
        // streams it is an estimate (encoder delay and padding), so allow a margin there.
        let exact = matches!(self.container.as_str(), "wave" | "aiff");
        match self.declared_frames {
            Some(declared)
                if self.frames < declared
                    && (exact || self.frames + (declared / 10).max(2304) < declared) =>
            {
                Err(Error::Format {
                    path: self.path.clone(),
                    at: Location::Packet(self.packet),
                    message: format!(
                        "header declares {declared} frames but the stream ends after {}",
                        self.frames
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Runs one symphonia call, turning its errors into ours and a panic inside it (a decoder bug
/// on malformed input, such as an arithmetic overflow on a corrupt header) into a format error
/// naming the file, so that bad input never takes the program down.
fn guarded<T>(
    path: &Path,
    at: Location,
    call: impl FnOnce() -> std::result::Result<T, SymError>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(|e| sym_error(path, at, e)),
        Err(panic) => {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            Err(Error::Format {
                path: path.into(),
                at,
                message: format!("malformed data made the decoder fail ({cause})"),
            })
        }
    }
}

fn sym_error(path: &Path, at: Location, e: SymError) -> Error {
    match e {
        SymError::IoError(source) => Error::Io {
            path: path.into(),
            at,
            source,
        },
        SymError::Unsupported(what) => Error::Unsupported {
            path: path.into(),
            what: what.to_string(),
        },
        other => Error::Format {
            path: path.into(),
            at,
            message: other.to_string(),
        },
    }
}

/// A whole clip decoded to mono.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedAudio {
    /// Mono samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Their sample rate in Hz.
    pub sample_rate: u32,
    /// Channels in the file before downmixing.
    pub channels: usize,
}

/// Decodes a whole file to mono at its own sample rate.
///
/// ```
/// let path = "../data-samples/audio/0_jackson_0.stereo44k.wav";
/// let clip = seqmamba_modalities::audio::decode_mono(path.as_ref()).unwrap();
/// assert_eq!((clip.samples.len(), clip.sample_rate, clip.channels), (28_378, 44_100, 2));
/// ```
pub fn decode_mono(path: &Path) -> Result<DecodedAudio> {
    let mut stream = AudioStream::open(path)?;
    let mut samples = Vec::new();
    while let Some(packet) = stream.next_mono()? {
        samples.extend_from_slice(&packet);
    }
    Ok(DecodedAudio {
        samples,
        sample_rate: stream.sample_rate(),
        channels: stream.channels(),
    })
}

/// Decodes a file to mono, resamples it to `rate` Hz and normalises it: what a model eats.
///
/// ```
/// use seqmamba_modalities::audio::{load_mono, Normalization};
/// let path = "../data-samples/audio/0_jackson_0.mp3";
/// let samples = load_mono(path.as_ref(), 16_000, Normalization::Peak).unwrap();
/// assert_eq!(samples.len(), 2 * 5148);
/// let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
/// assert!((peak - 1.0).abs() < 1e-6);
/// ```
pub fn load_mono(path: &Path, rate: u32, normalization: Normalization) -> Result<Vec<f32>> {
    let clip = decode_mono(path)?;
    let mut samples = resample(&clip.samples, clip.sample_rate, rate)?;
    normalization.apply(&mut samples);
    Ok(samples)
}
