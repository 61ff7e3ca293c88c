//! SAM and BAM reads (mapped and unmapped) as token records.
//!
//! SAM/BAM store a reverse-strand read as its reverse complement, to match the reference.
//! With [`AlignmentOptions::restore_orientation`] such reads are reverse-complemented back to
//! the orientation in which the sequencer read them.

use std::{
    fs::File,
    io::{self, BufRead, Read},
    path::{Path, PathBuf},
};

use noodles::{bam, bgzf, sam};

use super::{tokenizer, TokenRecord};
use crate::error::{Error, Location, OnError, Result};
use crate::input::{self, io_error};

/// Which reads to keep and how to orient them.
///
/// ```
/// use seqmamba_modalities::dna::alignment::AlignmentOptions;
/// let options = AlignmentOptions { restore_orientation: true, ..Default::default() };
/// assert!(!options.primary_only);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlignmentOptions {
    /// Reverse-complement reads flagged reverse (0x10) back to the read's own orientation.
    pub restore_orientation: bool,
    /// Drop secondary (0x100) and supplementary (0x800) alignments, so each read comes once.
    pub primary_only: bool,
}

enum Inner {
    Sam(sam::io::Reader<Box<dyn BufRead + Send>>, sam::Record),
    // A file through noodles' BGZF reader, a stream through input's gzip decoder.
    Bam(bam::io::Reader<Box<dyn Read + Send>>, bam::Record),
}

/// Streams the reads of a SAM or BAM file as tokens.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-sam-doc.sam");
/// std::fs::write(&path, "@HD\tVN:1.6\n\
///     r1\t4\t*\t0\t0\t*\t*\t0\t0\tACGT\tIIII\n\
///     r2\t16\t*\t0\t0\t*\t*\t0\t0\tAACC\tIIII\n").unwrap();
/// use seqmamba_modalities::dna::{alignment::{AlignmentOptions, AlignmentReader}, tokenizer::encode};
/// use seqmamba_modalities::error::OnError;
/// let options = AlignmentOptions { restore_orientation: true, primary_only: false };
/// let reads: Vec<_> = AlignmentReader::open_sam(&path, options, OnError::Fail).unwrap()
///     .collect::<Result<_, _>>().unwrap();
/// assert_eq!(reads[1].tokens, encode(b"GGTT").unwrap());
/// ```
pub struct AlignmentReader {
    path: PathBuf,
    inner: Inner,
    options: AlignmentOptions,
    on_error: OnError,
    references: usize,
    index: u64,
    skipped: u64,
    done: bool,
}

impl AlignmentReader {
    /// Opens a SAM file (plain or gzip) and reads its header.
    pub fn open_sam(path: &Path, options: AlignmentOptions, on_error: OnError) -> Result<Self> {
        let (stream, _) = input::open(path)?;
        Self::from_sam(path, stream, options, on_error)
    }

    /// Reads the header of a decompressed SAM stream; `path` only names it in errors.
    pub fn from_sam(
        path: &Path,
        stream: Box<dyn BufRead + Send>,
        options: AlignmentOptions,
        on_error: OnError,
    ) -> Result<Self> {
        let mut reader = sam::io::Reader::new(stream);
        let header = reader.read_header().map_err(header_error(path))?;
        Ok(Self::new(
            path,
            Inner::Sam(reader, sam::Record::default()),
            header.reference_sequences().len(),
            options,
            on_error,
        ))
    }

    /// Opens a BAM file and reads its header.
    pub fn open_bam(path: &Path, options: AlignmentOptions, on_error: OnError) -> Result<Self> {
        let file = File::open(path).map_err(io_error(path, Location::File))?;
        Self::from_bam(
            path,
            Box::new(bgzf::io::Reader::new(file)),
            options,
            on_error,
        )
    }

    /// Reads the header of a decompressed BAM stream (it starts `BAM\x01`); `path` only
    /// names it in errors.
    pub fn from_bam(
        path: &Path,
        stream: Box<dyn Read + Send>,
        options: AlignmentOptions,
        on_error: OnError,
    ) -> Result<Self> {
        let mut reader = bam::io::Reader::from(stream);
        let header = reader.read_header().map_err(header_error(path))?;
        Ok(Self::new(
            path,
            Inner::Bam(reader, bam::Record::default()),
            header.reference_sequences().len(),
            options,
            on_error,
        ))
    }

    fn new(
        path: &Path,
        inner: Inner,
        references: usize,
        options: AlignmentOptions,
        on_error: OnError,
    ) -> Self {
        Self {
            path: path.into(),
            inner,
            options,
            on_error,
            references,
            index: 0,
            skipped: 0,
            done: false,
        }
    }

    /// Number of reference sequences (`@SQ` lines) in the header.
    pub fn reference_count(&self) -> usize {
        self.references
    }

    /// How many records were skipped under [`OnError::Skip`] (filtered reads are not counted).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn read_record(&mut self) -> Result<Option<TokenRecord>> {
        loop {
            let index = self.index;
            let at = || Location::Record {
                record: index,
                name: String::new(),
            };
            let wrap = |source: io::Error| match source.kind() {
                io::ErrorKind::InvalidData => Error::Format {
                    path: self.path.clone(),
                    at: at(),
                    message: format!("malformed alignment record ({source})"),
                },
                _ => io_error(&self.path, at())(source),
            };
            let (n, flags, name, tokens) = match &mut self.inner {
                Inner::Sam(reader, record) => {
                    let n = reader.read_record(record).map_err(wrap)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    let flags = record.flags().map_err(|source| Error::Format {
                        path: self.path.clone(),
                        at: at(),
                        message: format!("invalid FLAG ({source})"),
                    })?;
                    let name = record.name().map(|n| n.to_string()).unwrap_or_default();
                    (
                        n,
                        flags,
                        name,
                        tokenizer::encode(record.sequence().as_ref()),
                    )
                }
                Inner::Bam(reader, record) => {
                    let n = reader.read_record(record).map_err(wrap)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    let name = record.name().map(|n| n.to_string()).unwrap_or_default();
                    let sequence = record.sequence();
                    (
                        n,
                        record.flags(),
                        name,
                        decode_packed(sequence.as_bytes(), sequence.len()),
                    )
                }
            };
            debug_assert!(n > 0);
            self.index += 1;
            if self.options.primary_only && (flags.is_secondary() || flags.is_supplementary()) {
                continue;
            }
            match tokens {
                Ok(mut tokens) => {
                    if self.options.restore_orientation && flags.is_reverse_complemented() {
                        tokenizer::reverse_complement(&mut tokens);
                    }
                    return Ok(Some(TokenRecord {
                        name,
                        description: String::new(),
                        tokens,
                    }));
                }
                Err(_) if self.on_error == OnError::Skip => self.skipped += 1,
                Err((i, byte)) => {
                    return Err(Error::InvalidBase {
                        path: self.path.clone(),
                        at: Location::Base {
                            record: index,
                            name,
                            position: i as u64 + 1,
                        },
                        byte,
                    })
                }
            }
        }
    }
}

fn header_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Format {
        path: path.into(),
        at: Location::File,
        message: format!("broken SAM/BAM header ({source})"),
    }
}

/// Marks `=` (a base equal to the reference, which a read on its own cannot tell).
const EQUAL: u8 = 0xff;

/// Token of each BAM 4-bit base code (in code order `=ACMGRSVTWYHKDBN`): A C G T as
/// themselves, the IUPAC codes and N as N.
const CODE_TOKENS: [u8; 16] = {
    use tokenizer::{A, C, G, N, T};
    [EQUAL, A, C, N, G, N, N, N, T, N, N, N, N, N, N, N]
};

/// Tokens of `len` BAM 4-bit packed bases (high nibble first); on a `=` code, its index.
fn decode_packed(packed: &[u8], len: usize) -> std::result::Result<Vec<u8>, (usize, u8)> {
    let mut tokens = vec![0u8; packed.len() * 2];
    for (pair, &byte) in tokens.chunks_exact_mut(2).zip(packed) {
        pair[0] = CODE_TOKENS[(byte >> 4) as usize];
        pair[1] = CODE_TOKENS[(byte & 0x0f) as usize];
    }
    tokens.truncate(len);
    match tokens.iter().position(|&t| t == EQUAL) {
        Some(i) => Err((i, b'=')),
        None => Ok(tokens),
    }
}

impl Iterator for AlignmentReader {
    type Item = Result<TokenRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.read_record();
        super::step(&mut self.done, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dna::tokenizer::encode;

    #[test]
    fn code_table_agrees_with_the_tokenizer() {
        const BAM_CODES: &[u8; 16] = b"=ACMGRSVTWYHKDBN";
        for (code, &letter) in BAM_CODES.iter().enumerate() {
            let expected = tokenizer::token(letter).unwrap_or(EQUAL);
            assert_eq!(
                CODE_TOKENS[code], expected,
                "code {code} ({})",
                letter as char
            );
        }
    }

    #[test]
    fn packed_bases_decode_high_nibble_first() {
        // A=1 C=2 G=4 T=8 N=15: "ACGTN" packed into three bytes, last low nibble padding.
        let packed = [0x12, 0x48, 0xf0];
        assert_eq!(
            decode_packed(&packed, 5).unwrap(),
            encode(b"ACGTN").unwrap()
        );
        assert_eq!(decode_packed(&[0x10], 2), Err((1, b'=')));
    }
}
