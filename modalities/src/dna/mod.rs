//! DNA: FASTA, FASTQ, SAM and BAM into token streams; the vocabulary; genome windows.
//!
//! Every reader is a streaming iterator of [`TokenRecord`]s: it holds one record at a time,
//! never the whole file.

pub mod alignment;
pub mod fasta;
pub mod fastq;
pub mod format;
pub mod tokenizer;
pub mod windows;

pub use self::format::{read_stream_tokens, read_tokens, DnaFormat, DnaRecords};

/// One record of a sequence file as tokens of the [`tokenizer`] vocabulary.
///
/// ```
/// use seqmamba_modalities::dna::{tokenizer, TokenRecord};
/// let r = TokenRecord {
///     name: "read1".into(),
///     description: String::new(),
///     tokens: tokenizer::encode(b"ACGT").unwrap(),
/// };
/// assert_eq!(r.tokens.len(), 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The record's name (FASTA/FASTQ definition up to the first space, SAM QNAME).
    pub name: String,
    /// The rest of a FASTA/FASTQ definition line after the name (empty for SAM/BAM).
    pub description: String,
    /// The bases as tokens, without BOS/EOS.
    pub tokens: Vec<u8>,
}

/// One step of a record iterator: ends it at the end of the file or after an error that
/// breaks the stream; after a record-level error (bad base, length mismatch) it goes on.
fn step<T>(
    done: &mut bool,
    next: crate::error::Result<Option<T>>,
) -> Option<crate::error::Result<T>> {
    match next {
        Ok(Some(item)) => Some(Ok(item)),
        Ok(None) => {
            *done = true;
            None
        }
        Err(e) => {
            *done = !e.is_record_level();
            Some(Err(e))
        }
    }
}
