//! Telling DNA formats apart, and one entry point that reads any of them as tokens.

use std::path::Path;

use super::{
    alignment::{AlignmentOptions, AlignmentReader},
    fasta::FastaReader,
    fastq::FastqReader,
    TokenRecord,
};
use crate::error::{Error, OnError, Result};
use crate::input;

/// A DNA file format.
///
/// ```
/// use seqmamba_modalities::dna::DnaFormat;
/// use std::path::Path;
/// assert_eq!(DnaFormat::from_extension(Path::new("g.fna.gz")), Some(DnaFormat::Fasta));
/// assert_eq!(DnaFormat::from_extension(Path::new("r.fq")), Some(DnaFormat::Fastq));
/// assert_eq!(DnaFormat::from_extension(Path::new("x.txt")), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnaFormat {
    Fasta,
    Fastq,
    Sam,
    Bam,
}

impl DnaFormat {
    /// The format a file name promises (after a `.gz`/`.bgz` suffix), if any.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".bgz"))
            .unwrap_or(&name);
        match name.rsplit_once('.')?.1 {
            "fa" | "fasta" | "fna" | "fas" | "ffn" | "frn" | "mfa" => Some(DnaFormat::Fasta),
            "fq" | "fastq" => Some(DnaFormat::Fastq),
            "sam" => Some(DnaFormat::Sam),
            "bam" => Some(DnaFormat::Bam),
            _ => None,
        }
    }

    /// The format of the decompressed first bytes of a file, if they show one.
    ///
    /// ```
    /// use seqmamba_modalities::dna::DnaFormat;
    /// assert_eq!(DnaFormat::sniff(b">chr1\n"), Some(DnaFormat::Fasta));
    /// assert_eq!(DnaFormat::sniff(b"@HD\tVN:1.6\n"), Some(DnaFormat::Sam));
    /// assert_eq!(DnaFormat::sniff(b"@read1\nACGT\n"), Some(DnaFormat::Fastq));
    /// assert_eq!(DnaFormat::sniff(b"BAM\x01"), Some(DnaFormat::Bam));
    /// ```
    pub fn sniff(head: &[u8]) -> Option<Self> {
        const SAM_HEADERS: [&[u8]; 5] = [b"@HD\t", b"@SQ\t", b"@RG\t", b"@PG\t", b"@CO\t"];
        match head {
            [b'B', b'A', b'M', 1, ..] => Some(DnaFormat::Bam),
            [b'>', ..] => Some(DnaFormat::Fasta),
            _ if SAM_HEADERS.iter().any(|h| head.starts_with(h)) => Some(DnaFormat::Sam),
            [b'@', ..] => Some(DnaFormat::Fastq),
            _ => None,
        }
    }

    /// The format of `path`: by content when the content shows one, else by name.
    pub fn detect(path: &Path) -> Result<Self> {
        let (mut reader, _) = input::open(path)?;
        let head = input::peek(&mut reader, 16, path)?;
        if head.is_empty() {
            return Err(Error::Empty {
                path: path.into(),
                what: "data",
            });
        }
        DnaFormat::sniff(&head)
            .or_else(|| DnaFormat::from_extension(path))
            .ok_or_else(|| Error::Unsupported {
                path: path.into(),
                what: "not FASTA, FASTQ, SAM or BAM (first bytes match none)".into(),
            })
    }
}

/// Records of any DNA file, as one iterator.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-dna-records-doc.fq");
/// std::fs::write(&path, b"@r1\nAC*T\n+\nIIII\n@r2\nGG\n+\nII\n").unwrap();
/// use seqmamba_modalities::{dna::{read_tokens, alignment::AlignmentOptions}, error::OnError};
/// let mut records = read_tokens(&path, AlignmentOptions::default(), OnError::Skip).unwrap();
/// assert_eq!(records.next().unwrap().unwrap().name, "r2");
/// assert_eq!(records.skipped(), 1);
/// ```
pub enum DnaRecords {
    Fasta(FastaReader),
    Fastq(FastqReader),
    Alignment(AlignmentReader),
}

impl DnaRecords {
    /// How many bad records were skipped under [`OnError::Skip`].
    pub fn skipped(&self) -> u64 {
        match self {
            DnaRecords::Fasta(r) => r.skipped(),
            DnaRecords::Fastq(r) => r.skipped(),
            DnaRecords::Alignment(r) => r.skipped(),
        }
    }
}

impl Iterator for DnaRecords {
    type Item = Result<TokenRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            DnaRecords::Fasta(r) => r.next(),
            DnaRecords::Fastq(r) => r.next(),
            DnaRecords::Alignment(r) => r.next(),
        }
    }
}

/// Streams the records of a FASTA, FASTQ, SAM or BAM file (plain, gzip or BGZF) as tokens.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-read-tokens-doc.fa");
/// std::fs::write(&path, b">a\nACGT\n").unwrap();
/// use seqmamba_modalities::{dna::{read_tokens, alignment::AlignmentOptions}, error::OnError};
/// let mut records = read_tokens(&path, AlignmentOptions::default(), OnError::Fail).unwrap();
/// assert_eq!(records.next().unwrap().unwrap().tokens.len(), 4);
/// assert!(records.next().is_none());
/// ```
pub fn read_tokens(
    path: &Path,
    options: AlignmentOptions,
    on_error: OnError,
) -> Result<DnaRecords> {
    Ok(match DnaFormat::detect(path)? {
        DnaFormat::Fasta => DnaRecords::Fasta(FastaReader::open(path, on_error)?),
        DnaFormat::Fastq => DnaRecords::Fastq(FastqReader::open(path, on_error)?),
        DnaFormat::Sam => {
            DnaRecords::Alignment(AlignmentReader::open_sam(path, options, on_error)?)
        }
        DnaFormat::Bam => {
            DnaRecords::Alignment(AlignmentReader::open_bam(path, options, on_error)?)
        }
    })
}
