//! Typed errors that name the file and the place in it, and the skip-or-fail policy.

use std::{fmt, io, path::PathBuf, str::FromStr};

/// Where in a file an error happened.
///
/// ```
/// use seqmamba_modalities::error::Location;
/// let at = Location::Base { record: 2, name: "chr1".into(), position: 17 };
/// assert_eq!(at.to_string(), "record 2 (chr1), base 17");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole (opening, header, empty file).
    File,
    /// A record by its 0-based index in the file, and its name where known.
    Record { record: u64, name: String },
    /// A base by its 1-based position inside a record.
    Base {
        record: u64,
        name: String,
        position: u64,
    },
    /// A 1-based line of a text table (manifest, CSV).
    Line(u64),
    /// An audio packet by its 0-based index.
    Packet(u64),
    /// A byte offset from the start of the file.
    Byte(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File => write!(f, "file"),
            Location::Record { record, name } if name.is_empty() => write!(f, "record {record}"),
            Location::Record { record, name } => write!(f, "record {record} ({name})"),
            Location::Base {
                record,
                name,
                position,
            } => write!(f, "record {record} ({name}), base {position}"),
            Location::Line(line) => write!(f, "line {line}"),
            Location::Packet(packet) => write!(f, "packet {packet}"),
            Location::Byte(offset) => write!(f, "byte {offset}"),
        }
    }
}

/// Every failure of this crate; each names the file and the place in it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading failed (missing file, truncated gzip/BGZF, broken BAM block ...).
    #[error("{}: {at}: {source}", path.display())]
    Io {
        path: PathBuf,
        at: Location,
        #[source]
        source: io::Error,
    },
    /// The bytes are not what the format allows.
    #[error("{}: {at}: {message}", path.display())]
    Format {
        path: PathBuf,
        at: Location,
        message: String,
    },
    /// A byte that is no base, no soft-masked base and no IUPAC code.
    #[error("{}: {at}: invalid base {}", path.display(), show_byte(*byte))]
    InvalidBase {
        path: PathBuf,
        at: Location,
        byte: u8,
    },
    /// A FASTQ record whose sequence and quality lengths differ.
    #[error("{}: {at}: sequence has {bases} bases but quality has {qualities} scores", path.display())]
    LengthMismatch {
        path: PathBuf,
        at: Location,
        bases: usize,
        qualities: usize,
    },
    /// The file holds no records or no audio.
    #[error("{}: empty file: no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
    /// A format or codec this crate does not decode.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// Arguments that cannot work (window longer than the genome, split fractions > 1 ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}' (0x{byte:02x})", byte as char)
    } else {
        format!("0x{byte:02x}")
    }
}

impl Error {
    /// Whether the error concerns one record only, after which the stream can go on (a bad
    /// base, a length mismatch), as opposed to a broken stream.
    ///
    /// ```
    /// use seqmamba_modalities::error::{Error, Location};
    /// let e = Error::InvalidBase { path: "a.fa".into(), at: Location::File, byte: b'!' };
    /// assert!(e.is_record_level());
    /// ```
    pub fn is_record_level(&self) -> bool {
        matches!(
            self,
            Error::InvalidBase { .. } | Error::LengthMismatch { .. }
        )
    }
}

/// Crate result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What a long batch run does with a bad record: stop with its error, or skip it and count it.
///
/// ```
/// use seqmamba_modalities::error::OnError;
/// assert_eq!("skip".parse::<OnError>().unwrap(), OnError::Skip);
/// assert_eq!(OnError::default(), OnError::Fail);
/// assert!("ignore".parse::<OnError>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Return the first error (the default).
    #[default]
    Fail,
    /// Skip bad records (or bad files in a dataset) and count them.
    Skip,
}

impl FromStr for OnError {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fail" => Ok(OnError::Fail),
            "skip" => Ok(OnError::Skip),
            other => Err(Error::Invalid(format!(
                "--on-error must be skip or fail, not {other:?}"
            ))),
        }
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::Fail => "fail",
            OnError::Skip => "skip",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_file_and_place() {
        let e = Error::InvalidBase {
            path: "g.fa".into(),
            at: Location::Base {
                record: 0,
                name: "chr1".into(),
                position: 5,
            },
            byte: b'!',
        };
        assert_eq!(
            e.to_string(),
            "g.fa: record 0 (chr1), base 5: invalid base '!' (0x21)"
        );
        let e = Error::Empty {
            path: "x.fq".into(),
            what: "records",
        };
        assert_eq!(e.to_string(), "x.fq: empty file: no records");
    }
}
