//! FASTQ (plain, gzip) as a stream of token records; qualities are checked, not kept.

use std::{
    io::{self, BufRead},
    path::{Path, PathBuf},
};

use noodles::fastq;

use super::{tokenizer, TokenRecord};
use crate::error::{Error, Location, OnError, Result};
use crate::input::{self, io_error, Compression};

/// Streams the records of a FASTQ file as tokens.
///
/// A record whose sequence and quality lengths differ, or with a byte that is no base, is an
/// error naming the record (skipped and counted under [`OnError::Skip`]); a malformed or
/// truncated file ends the stream with an error.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-fastq-doc.fq");
/// std::fs::write(&path, b"@r1\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n").unwrap();
/// use seqmamba_modalities::{dna::fastq::FastqReader, error::OnError};
/// let records: Vec<_> = FastqReader::open(&path, OnError::Fail).unwrap()
///     .collect::<Result<_, _>>().unwrap();
/// assert_eq!(records.len(), 2);
/// assert_eq!(records[1].name, "r2");
/// ```
pub struct FastqReader {
    path: PathBuf,
    inner: fastq::io::Reader<Box<dyn BufRead + Send>>,
    compression: Compression,
    on_error: OnError,
    record: fastq::Record,
    index: u64,
    skipped: u64,
    done: bool,
}

impl FastqReader {
    /// Opens `path` (plain, gzip or BGZF, told by content).
    pub fn open(path: &Path, on_error: OnError) -> Result<Self> {
        let (reader, compression) = input::open(path)?;
        Ok(Self::from_reader(path, reader, compression, on_error))
    }

    /// Wraps an already decompressed stream; `path` only names it in errors.
    pub fn from_reader(
        path: &Path,
        reader: Box<dyn BufRead + Send>,
        compression: Compression,
        on_error: OnError,
    ) -> Self {
        Self {
            path: path.into(),
            inner: fastq::io::Reader::new(reader),
            compression,
            on_error,
            record: fastq::Record::default(),
            index: 0,
            skipped: 0,
            done: false,
        }
    }

    /// The compression the file was found to have.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// How many records were skipped under [`OnError::Skip`].
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn read_record(&mut self) -> Result<Option<TokenRecord>> {
        loop {
            let index = self.index;
            let n = self.inner.read_record(&mut self.record).map_err(|source| {
                let at = Location::Record {
                    record: index,
                    name: String::from_utf8_lossy(self.record.name()).into_owned(),
                };
                match source.kind() {
                    io::ErrorKind::InvalidData => Error::Format {
                        path: self.path.clone(),
                        at,
                        message: format!("malformed FASTQ record ({source})"),
                    },
                    _ => io_error(&self.path, at)(source),
                }
            })?;
            if n == 0 {
                if index == 0 {
                    return Err(Error::Empty {
                        path: self.path.clone(),
                        what: "FASTQ records",
                    });
                }
                return Ok(None);
            }
            self.index += 1;
            match self.tokens(index) {
                Ok(record) => return Ok(Some(record)),
                Err(_) if self.on_error == OnError::Skip => self.skipped += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn tokens(&self, index: u64) -> Result<TokenRecord> {
        let name = String::from_utf8_lossy(self.record.name()).into_owned();
        let (bases, qualities) = (self.record.sequence(), self.record.quality_scores());
        if bases.len() != qualities.len() {
            return Err(Error::LengthMismatch {
                path: self.path.clone(),
                at: Location::Record {
                    record: index,
                    name,
                },
                bases: bases.len(),
                qualities: qualities.len(),
            });
        }
        match tokenizer::encode(bases) {
            Ok(tokens) => Ok(TokenRecord {
                name,
                description: String::from_utf8_lossy(self.record.description()).into_owned(),
                tokens,
            }),
            Err((i, byte)) => Err(Error::InvalidBase {
                path: self.path.clone(),
                at: Location::Base {
                    record: index,
                    name,
                    position: i as u64 + 1,
                },
                byte,
            }),
        }
    }
}

impl Iterator for FastqReader {
    type Item = Result<TokenRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.read_record();
        super::step(&mut self.done, next)
    }
}
