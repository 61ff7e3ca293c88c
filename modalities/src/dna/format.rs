//! Telling DNA formats apart, and one entry point that reads any of them as tokens.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::{
    alignment::{AlignmentOptions, AlignmentReader},
    fasta::FastaReader,
    fastq::FastqReader,
    TokenRecord,
};
use crate::error::{Error, Location, OnError, Result};
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
        let file = File::open(path).map_err(input::io_error(path, Location::File))?;
        let (stream, _) = input::decompressed(path, Box::new(file))?;
        Ok(first_bytes(path, stream)?.0)
    }
}

/// The format of a decompressed stream from its first bytes (else by `name`'s extension),
/// and the stream, buffered, its first bytes read again.
fn first_bytes(
    name: &Path,
    stream: Box<dyn Read + Send>,
) -> Result<(DnaFormat, Box<dyn BufRead + Send>)> {
    let (head, stream) =
        input::head_and_rest(stream, 16).map_err(input::io_error(name, Location::Byte(0)))?;
    if head.is_empty() {
        return Err(Error::Empty {
            path: name.into(),
            what: "data",
        });
    }
    let format = DnaFormat::sniff(&head)
        .or_else(|| DnaFormat::from_extension(name))
        .ok_or_else(|| Error::Unsupported {
            path: name.into(),
            what: "not FASTA, FASTQ, SAM or BAM (first bytes match none)".into(),
        })?;
    Ok((
        format,
        Box::new(BufReader::with_capacity(input::BUFFER, stream)),
    ))
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

/// Streams the records of a FASTA, FASTQ, SAM or BAM file (plain, gzip or BGZF) as tokens;
/// the path `-` reads standard input ([`read_stream_tokens`]).
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
    if path == Path::new("-") {
        let stdin = Box::new(std::io::stdin());
        return read_stream_tokens(Path::new("<stdin>"), stdin, options, on_error);
    }
    let file = File::open(path).map_err(input::io_error(path, Location::File))?;
    read_stream_tokens(path, Box::new(file), options, on_error)
}

/// [`read_tokens`] for a stream read once, such as standard input: its format told by its
/// content (a SAM stream needs its header), else by `name`, which names it in errors.
///
/// ```
/// use seqmamba_modalities::{dna::{read_stream_tokens, alignment::AlignmentOptions}, error::OnError};
/// let bytes: &'static [u8] = b"@r1\nACGT\n+\nIIII\n";
/// let name = std::path::Path::new("<stdin>");
/// let mut records =
///     read_stream_tokens(name, Box::new(bytes), AlignmentOptions::default(), OnError::Fail).unwrap();
/// assert_eq!(records.next().unwrap().unwrap().name, "r1");
/// ```
pub fn read_stream_tokens(
    name: &Path,
    raw: Box<dyn Read + Send>,
    options: AlignmentOptions,
    on_error: OnError,
) -> Result<DnaRecords> {
    let (stream, compression) = input::decompressed(name, raw)?;
    let (format, stream) = first_bytes(name, stream)?;
    Ok(match format {
        DnaFormat::Fasta => DnaRecords::Fasta(FastaReader::from_reader(
            name,
            stream,
            compression,
            on_error,
        )),
        DnaFormat::Fastq => DnaRecords::Fastq(FastqReader::from_reader(
            name,
            stream,
            compression,
            on_error,
        )),
        DnaFormat::Sam => {
            DnaRecords::Alignment(AlignmentReader::from_sam(name, stream, options, on_error)?)
        }
        DnaFormat::Bam => DnaRecords::Alignment(AlignmentReader::from_bam(
            name,
            Box::new(stream),
            options,
            on_error,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that hands over one byte a read.
    struct Trickle(std::fs::File);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    fn names_and_tokens(records: DnaRecords) -> Vec<(String, Vec<u8>)> {
        records
            .map(|r| r.map(|r| (r.name, r.tokens)))
            .collect::<Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_stream_reads_as_its_file_in_every_format_and_compression() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples/dna");
        let options = AlignmentOptions::default();
        for name in [
            "phix174.fasta",
            "lambda-phage.fa.gz",
            "sars-cov-2.MN908947.fasta.gz",
            "phix.1.fastq.gz",
            "phix.se.sam",
            "range.bam",
        ] {
            let path = samples.join(name);
            let from_file = names_and_tokens(read_tokens(&path, options, OnError::Fail).unwrap());
            assert!(!from_file.is_empty(), "{name}");
            let pipe = Trickle(std::fs::File::open(&path).unwrap());
            let stream = read_stream_tokens(&path, Box::new(pipe), options, OnError::Fail);
            assert_eq!(names_and_tokens(stream.unwrap()), from_file, "{name}");
        }
    }

    #[test]
    fn an_empty_or_unknown_stream_is_named_in_its_error() {
        let name = Path::new("<stdin>");
        let options = AlignmentOptions::default();
        let empty: &'static [u8] = b"";
        let err = read_stream_tokens(name, Box::new(empty), options, OnError::Fail);
        assert!(matches!(err, Err(Error::Empty { .. })));
        let text: &'static [u8] = b"hello, world\n";
        let err = read_stream_tokens(name, Box::new(text), options, OnError::Fail);
        assert!(err
            .err()
            .unwrap()
            .to_string()
            .starts_with("<stdin>: unsupported"));
    }
}
