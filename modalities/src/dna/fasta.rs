//! FASTA (plain, gzip, BGZF) as a stream of token records, and random access through a
//! `.fai` index.

use std::{
    io::BufRead,
    ops::Range,
    path::{Path, PathBuf},
};

use noodles::core::{Position, Region};
use noodles::fasta;

use super::{tokenizer, TokenRecord};
use crate::error::{Error, Location, OnError, Result};
use crate::input::{self, io_error, Compression};

/// Streams the records of a FASTA file as tokens, one record in memory at a time.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-fasta-doc.fa");
/// std::fs::write(&path, b">chr1 test\nACGT\nacgn\n>chr2\nTT\n").unwrap();
/// use seqmamba_modalities::{dna::fasta::FastaReader, error::OnError};
/// let records: Vec<_> = FastaReader::open(&path, OnError::Fail).unwrap()
///     .collect::<Result<_, _>>().unwrap();
/// assert_eq!(records[0].name, "chr1");
/// assert_eq!(records[0].tokens.len(), 8);
/// assert_eq!(records[1].tokens.len(), 2);
/// ```
pub struct FastaReader {
    path: PathBuf,
    inner: fasta::io::Reader<Box<dyn BufRead + Send>>,
    compression: Compression,
    on_error: OnError,
    definition: fasta::record::Definition,
    record: u64,
    skipped: u64,
    done: bool,
}

impl FastaReader {
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
            inner: fasta::io::Reader::new(reader),
            compression,
            on_error,
            definition: Default::default(),
            record: 0,
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

    /// Reads the next definition line: the record's index, name and description, or `None`
    /// at the end of the file (an error if the file has no record at all).
    fn read_definition(&mut self) -> Result<Option<(u64, String, String)>> {
        let index = self.record;
        let at = Location::Record {
            record: index,
            name: String::new(),
        };
        let n = self
            .inner
            .read_definition(&mut self.definition)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::InvalidData => Error::Format {
                    path: self.path.clone(),
                    at: at.clone(),
                    message: format!("not a FASTA definition line ({source})"),
                },
                _ => io_error(&self.path, at.clone())(source),
            })?;
        if n == 0 {
            if index == 0 {
                return Err(Error::Empty {
                    path: self.path.clone(),
                    what: "FASTA records",
                });
            }
            return Ok(None);
        }
        self.record += 1;
        let name = String::from_utf8_lossy(self.definition.name()).into_owned();
        let description = self
            .definition
            .description()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        Ok(Some((index, name, description)))
    }

    fn read_record(&mut self) -> Result<Option<TokenRecord>> {
        while let Some((index, name, description)) = self.read_definition()? {
            match self.read_sequence(index, &name)? {
                Ok(tokens) => {
                    return Ok(Some(TokenRecord {
                        name,
                        description,
                        tokens,
                    }))
                }
                Err(_) if self.on_error == OnError::Skip => self.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Tokenises the sequence lines straight from the reader's buffer. The outer result is a
    /// broken stream; the inner one a bad base, after which the record has been read to its end.
    fn read_sequence(&mut self, record: u64, name: &str) -> Result<Result<Vec<u8>>> {
        let mut tokens = Vec::new();
        let mut bad = None;
        let mut sequence = self.inner.sequence_reader();
        loop {
            let at = || Location::Base {
                record,
                name: name.to_string(),
                position: tokens.len() as u64 + 1,
            };
            let chunk = sequence
                .fill_buf()
                .map_err(|e| io_error(&self.path, at())(e))?;
            if chunk.is_empty() {
                break;
            }
            let len = chunk.len();
            if bad.is_none() {
                if let Err((_, byte)) = tokenizer::encode_into(chunk, &mut tokens) {
                    // encode_into kept the tokens before the bad byte: it is the next base.
                    bad = Some((tokens.len() as u64 + 1, byte));
                }
            }
            sequence.consume(len);
        }
        Ok(match bad {
            None => Ok(tokens),
            Some((position, byte)) => Err(Error::InvalidBase {
                path: self.path.clone(),
                at: Location::Base {
                    record,
                    name: name.to_string(),
                    position,
                },
                byte,
            }),
        })
    }
}

impl Iterator for FastaReader {
    type Item = Result<TokenRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.read_record();
        super::step(&mut self.done, next)
    }
}

/// One window of a genome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenomeWindow {
    /// Name of the record (chromosome) it lies in.
    pub record: String,
    /// 0-based start in the record.
    pub start: u64,
    /// `window` tokens.
    pub tokens: Vec<u8>,
}

impl FastaReader {
    /// Streams windows of `window` bases every `stride` bases over every record, holding only
    /// about one window in memory (never a whole chromosome). Windows do not cross records; a
    /// record's tail shorter than a window is dropped, as in [`super::windows::fixed`].
    ///
    /// ```
    /// # let path = std::env::temp_dir().join("seqmamba-windows-doc.fa");
    /// std::fs::write(&path, b">a\nACGTA\nCGT\n>b\nTTT\n").unwrap();
    /// use seqmamba_modalities::{dna::{fasta::FastaReader, tokenizer::encode}, error::OnError};
    /// let windows: Vec<_> = FastaReader::open(&path, OnError::Fail).unwrap()
    ///     .windows(3, 2).unwrap().collect::<Result<_, _>>().unwrap();
    /// let starts: Vec<_> = windows.iter().map(|w| (w.record.as_str(), w.start)).collect();
    /// assert_eq!(starts, [("a", 0), ("a", 2), ("a", 4), ("b", 0)]);
    /// assert_eq!(windows[1].tokens, encode(b"GTA").unwrap());
    /// ```
    pub fn windows(self, window: usize, stride: usize) -> Result<FastaWindows> {
        if window == 0 || stride == 0 {
            return Err(Error::Invalid(format!(
                "window ({window}) and stride ({stride}) must be positive"
            )));
        }
        Ok(FastaWindows {
            reader: self,
            window,
            stride,
            record: None,
            buffer: Vec::new(),
            buffer_start: 0,
            next_start: 0,
        })
    }
}

/// Streaming windows over a FASTA file; see [`FastaReader::windows`].
pub struct FastaWindows {
    reader: FastaReader,
    window: usize,
    stride: usize,
    /// Index and name of the record being read, `None` between records.
    record: Option<(u64, String)>,
    /// Tokens from base `buffer_start` of the record on.
    buffer: Vec<u8>,
    buffer_start: u64,
    next_start: u64,
}

impl FastaWindows {
    /// How many records were skipped under [`OnError::Skip`].
    pub fn skipped(&self) -> u64 {
        self.reader.skipped
    }

    /// Reads the next definition line; `false` at the end of the file.
    fn start_record(&mut self) -> Result<bool> {
        let Some((index, name, _)) = self.reader.read_definition()? else {
            return Ok(false);
        };
        self.record = Some((index, name));
        self.buffer.clear();
        self.buffer_start = 0;
        self.next_start = 0;
        Ok(true)
    }

    /// Appends the next line of bases; `false` at the end of the record.
    fn fill(&mut self) -> Result<bool> {
        let (index, name) = self.record.clone().expect("inside a record");
        let r = &mut self.reader;
        let mut sequence = r.inner.sequence_reader();
        let position = self.buffer_start + self.buffer.len() as u64 + 1;
        let at = || Location::Base {
            record: index,
            name: name.clone(),
            position,
        };
        let chunk = sequence
            .fill_buf()
            .map_err(|e| io_error(&r.path, at())(e))?;
        if chunk.is_empty() {
            return Ok(false);
        }
        let len = chunk.len();
        let result = tokenizer::encode_into(chunk, &mut self.buffer);
        sequence.consume(len);
        match result {
            Ok(()) => Ok(true),
            Err((_, byte)) => {
                // Read the rest of the record so the stream stays at the next one.
                loop {
                    let chunk = sequence
                        .fill_buf()
                        .map_err(|e| io_error(&r.path, at())(e))?;
                    if chunk.is_empty() {
                        break;
                    }
                    let len = chunk.len();
                    sequence.consume(len);
                }
                self.record = None;
                Err(Error::InvalidBase {
                    path: r.path.clone(),
                    at: Location::Base {
                        record: index,
                        name,
                        position: self.buffer_start + self.buffer.len() as u64 + 1,
                    },
                    byte,
                })
            }
        }
    }

    fn next_window(&mut self) -> Result<Option<GenomeWindow>> {
        loop {
            if self.record.is_none() && !self.start_record()? {
                return Ok(None);
            }
            let offset = (self.next_start - self.buffer_start) as usize;
            if self.buffer.len() >= offset + self.window {
                let tokens = self.buffer[offset..offset + self.window].to_vec();
                let start = self.next_start;
                self.next_start += self.stride as u64;
                let record = self.record.as_ref().expect("inside a record").1.clone();
                return Ok(Some(GenomeWindow {
                    record,
                    start,
                    tokens,
                }));
            }
            // Drop what no later window needs (only once it is half the buffer, so each base
            // is moved O(1) times), then read on.
            let drop = offset.min(self.buffer.len());
            if drop > 0 && 2 * drop >= self.buffer.len() {
                self.buffer.drain(..drop);
                self.buffer_start += drop as u64;
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => self.record = None,
                Err(_) if self.reader.on_error == OnError::Skip => self.reader.skipped += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Iterator for FastaWindows {
    type Item = Result<GenomeWindow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.done {
            return None;
        }
        let next = self.next_window();
        super::step(&mut self.reader.done, next)
    }
}

/// Random access to any window of a FASTA file with a `.fai` index (plain, or BGZF with a
/// `.gzi` index beside it), without reading the rest of the file.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-indexed-doc.fa");
/// std::fs::write(&path, b">chr1\nACGTA\nCGTAC\nG\n").unwrap();
/// use seqmamba_modalities::dna::{fasta::IndexedFasta, tokenizer::encode};
/// IndexedFasta::write_index(&path).unwrap();
/// let mut fasta = IndexedFasta::open(&path).unwrap();
/// assert_eq!(fasta.sequences(), vec![("chr1".to_string(), 11)]);
/// assert_eq!(fasta.fetch("chr1", 3..8).unwrap(), encode(b"TACGT").unwrap());
/// ```
pub struct IndexedFasta {
    path: PathBuf,
    reader: fasta::io::IndexedReader<fasta::io::BufReader<std::fs::File>>,
}

impl IndexedFasta {
    /// Opens `path` with its index `path.fai` (and `path.gzi` when it is BGZF-compressed).
    pub fn open(path: &Path) -> Result<Self> {
        let missing = |index: PathBuf, how: &str| Error::Format {
            path: path.into(),
            at: Location::File,
            message: format!("random access needs the index {} ({how})", index.display()),
        };
        let fai = path.with_added_extension("fai");
        if !fai.exists() {
            return Err(missing(fai, "IndexedFasta::write_index or samtools faidx"));
        }
        let (_, compression) = input::open(path)?;
        let is_gz = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("gz" | "bgz")
        );
        match compression {
            Compression::Gzip => {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "random access into plain gzip (recompress with bgzip)".into(),
                })
            }
            Compression::Bgzf if !is_gz => {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "BGZF FASTA without a .gz or .bgz name".into(),
                })
            }
            Compression::Bgzf => {
                let gzi = path.with_added_extension("gzi");
                if !gzi.exists() {
                    return Err(missing(gzi, "bgzip -r or samtools faidx"));
                }
            }
            Compression::None => {}
        }
        let reader = fasta::io::indexed_reader::Builder::default()
            .build_from_path(path)
            .map_err(io_error(path, Location::File))?;
        Ok(Self {
            path: path.into(),
            reader,
        })
    }

    /// Builds `path.fai` for an uncompressed FASTA file.
    pub fn write_index(path: &Path) -> Result<()> {
        let index = fasta::fs::index(path).map_err(io_error(path, Location::File))?;
        let fai = path.with_added_extension("fai");
        fasta::fai::fs::write(&fai, &index).map_err(io_error(&fai, Location::File))
    }

    /// Names and lengths of the sequences, in file order.
    pub fn sequences(&self) -> Vec<(String, u64)> {
        self.reader
            .index()
            .as_ref()
            .iter()
            .map(|r| (String::from_utf8_lossy(r.name()).into_owned(), r.length()))
            .collect()
    }

    /// Tokens of bases `range` (0-based, end exclusive) of sequence `name`.
    pub fn fetch(&mut self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let at = Location::Record {
            record: 0,
            name: format!("{name}:{}-{}", range.start, range.end),
        };
        let length = self
            .sequences()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, len)| len)
            .ok_or_else(|| Error::Format {
                path: self.path.clone(),
                at: at.clone(),
                message: format!("no sequence named {name} in the index"),
            })?;
        if range.start >= range.end || range.end > length {
            return Err(Error::Invalid(format!(
                "{}: window {}..{} outside {name} of length {length}",
                self.path.display(),
                range.start,
                range.end
            )));
        }
        let start = Position::try_from(range.start as usize + 1).expect("start + 1 > 0");
        let end = Position::try_from(range.end as usize).expect("end > start >= 0");
        let record = self
            .reader
            .query(&Region::new(name, start..=end))
            .map_err(io_error(&self.path, at.clone()))?;
        tokenizer::encode(record.sequence().as_ref()).map_err(|(i, byte)| Error::InvalidBase {
            path: self.path.clone(),
            at: Location::Base {
                record: 0,
                name: name.to_string(),
                position: range.start + i as u64 + 1,
            },
            byte,
        })
    }
}
