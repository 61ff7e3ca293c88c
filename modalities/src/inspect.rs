//! What a file decodes to: the summary behind `seqmamba inspect FILE`.

use std::{fmt, fs::File, io::Read, path::Path, path::PathBuf};

use crate::audio::AudioStream;
use crate::dna::{alignment::AlignmentOptions, read_tokens, tokenizer, DnaFormat};
use crate::error::{Error, Location, OnError, Result};
use crate::input::{self, Compression};

/// Summary of a DNA file.
#[derive(Clone, Debug, PartialEq)]
pub struct DnaSummary {
    pub path: PathBuf,
    pub format: DnaFormat,
    pub compression: Compression,
    pub records: u64,
    /// Total bases (= tokens without BOS/EOS).
    pub bases: u64,
    pub min_length: u64,
    pub max_length: u64,
    /// Count per token id of [`tokenizer`]'s vocabulary.
    pub token_counts: [u64; tokenizer::VOCAB_SIZE],
    /// Names of the first records (at most 3).
    pub first_names: Vec<String>,
    /// Records skipped as bad under [`OnError::Skip`].
    pub skipped: u64,
}

/// Summary of an audio file.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioSummary {
    pub path: PathBuf,
    pub container: String,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: usize,
    /// Frames (samples per channel) decoded; also the number of 8-bit tokens at this rate.
    pub frames: u64,
    pub duration_seconds: f64,
    /// Largest magnitude of the mono downmix.
    pub peak: f32,
}

/// What `seqmamba inspect FILE` prints.
#[derive(Clone, Debug, PartialEq)]
pub enum Summary {
    Dna(DnaSummary),
    Audio(AudioSummary),
}

/// Whether the first bytes or the name say audio.
fn is_audio(path: &Path, head: &[u8]) -> bool {
    let magic = head.starts_with(b"RIFF")
        || head.starts_with(b"fLaC")
        || head.starts_with(b"OggS")
        || head.starts_with(b"ID3")
        || (head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    magic || matches!(ext.as_deref(), Some("wav" | "flac" | "ogg" | "oga" | "mp3"))
}

/// Decodes the whole file, streaming, and summarises it; `options` applies to SAM/BAM reads.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-inspect-doc.fa");
/// std::fs::write(&path, b">a\nACGT\n>b\nAC\n").unwrap();
/// use seqmamba_modalities::{dna::alignment::AlignmentOptions, error::OnError};
/// use seqmamba_modalities::inspect::{inspect, Summary};
/// let Summary::Dna(s) = inspect(&path, AlignmentOptions::default(), OnError::Fail).unwrap()
/// else { panic!() };
/// assert_eq!((s.records, s.bases, s.max_length), (2, 6, 4));
/// println!("{}", Summary::Dna(s));
/// ```
pub fn inspect(path: &Path, options: AlignmentOptions, on_error: OnError) -> Result<Summary> {
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(input::io_error(path, Location::File))?;
    if n == 0 {
        return Err(Error::Empty {
            path: path.into(),
            what: "data",
        });
    }
    if is_audio(path, &head[..n]) {
        inspect_audio(path).map(Summary::Audio)
    } else {
        inspect_dna(path, options, on_error).map(Summary::Dna)
    }
}

fn inspect_audio(path: &Path) -> Result<AudioSummary> {
    let mut stream = AudioStream::open(path)?;
    let (mut frames, mut peak) = (0u64, 0.0f32);
    while let Some(packet) = stream.next_mono()? {
        frames += packet.len() as u64;
        peak = packet.iter().fold(peak, |m, s| m.max(s.abs()));
    }
    Ok(AudioSummary {
        path: path.into(),
        container: stream.container().to_string(),
        codec: stream.codec().to_string(),
        sample_rate: stream.sample_rate(),
        channels: stream.channels(),
        frames,
        duration_seconds: frames as f64 / stream.sample_rate() as f64,
        peak,
    })
}

fn inspect_dna(path: &Path, options: AlignmentOptions, on_error: OnError) -> Result<DnaSummary> {
    let format = DnaFormat::detect(path)?;
    let (_, compression) = input::open(path)?;
    let mut records = read_tokens(path, options, on_error)?;
    let mut s = DnaSummary {
        path: path.into(),
        format,
        compression,
        records: 0,
        bases: 0,
        min_length: u64::MAX,
        max_length: 0,
        token_counts: [0; tokenizer::VOCAB_SIZE],
        first_names: Vec::new(),
        skipped: 0,
    };
    for record in &mut records {
        let record = match record {
            Ok(r) => r,
            Err(e) if on_error == OnError::Skip && e.is_record_level() => continue,
            Err(e) => return Err(e),
        };
        let len = record.tokens.len() as u64;
        s.records += 1;
        s.bases += len;
        s.min_length = s.min_length.min(len);
        s.max_length = s.max_length.max(len);
        for &t in &record.tokens {
            s.token_counts[t as usize] += 1;
        }
        if s.first_names.len() < 3 {
            s.first_names.push(record.name);
        }
    }
    s.skipped = records.skipped();
    if s.records == 0 {
        s.min_length = 0;
    }
    Ok(s)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Summary::Dna(s) => {
                writeln!(f, "file         {}", s.path.display())?;
                writeln!(
                    f,
                    "format       {:?} ({:?} compression)",
                    s.format, s.compression
                )?;
                writeln!(f, "records      {}", s.records)?;
                writeln!(f, "bases        {}", s.bases)?;
                let mean = if s.records > 0 {
                    s.bases as f64 / s.records as f64
                } else {
                    0.0
                };
                writeln!(
                    f,
                    "length       min {} / mean {mean:.1} / max {}",
                    s.min_length, s.max_length
                )?;
                let names = ["A", "C", "G", "T", "N"];
                let counts: Vec<String> = names
                    .iter()
                    .zip(&s.token_counts[tokenizer::A as usize..])
                    .map(|(n, c)| format!("{n} {c}"))
                    .collect();
                writeln!(
                    f,
                    "tokens       {} (vocabulary of {})",
                    counts.join(", "),
                    tokenizer::VOCAB_SIZE
                )?;
                writeln!(f, "first names  {}", s.first_names.join(", "))?;
                write!(f, "bad records  {} skipped", s.skipped)
            }
            Summary::Audio(s) => {
                writeln!(f, "file         {}", s.path.display())?;
                writeln!(f, "format       {} / codec {}", s.container, s.codec)?;
                writeln!(f, "sample rate  {} Hz", s.sample_rate)?;
                writeln!(f, "channels     {} (downmixed to mono)", s.channels)?;
                writeln!(f, "frames       {} (= 8-bit tokens at this rate)", s.frames)?;
                writeln!(f, "duration     {:.3} s", s.duration_seconds)?;
                write!(f, "peak         {:.4}", s.peak)
            }
        }
    }
}
