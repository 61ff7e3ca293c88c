//! DNA and audio files into token streams and labeled examples.
//!
//! - [`dna`]: FASTA (plain, gzip, BGZF, indexed), FASTQ, SAM and BAM read as streams of
//!   [`dna::TokenRecord`]s in a fixed 10-token vocabulary ([`dna::tokenizer`]); windows and
//!   position-based splits over genomes ([`dna::windows`]).
//! - [`audio`]: WAV/FLAC/OGG Vorbis/MP3 decoded to mono f32, resampled, normalised, quantised
//!   to 256 tokens (mu-law or linear) and written back as WAV.
//! - [`dataset`]: labeled examples from folders, manifests, FASTA headers, FSDD and Genomic
//!   Benchmarks; stable label ids; random, group and k-fold splits; parallel decoding.
//! - [`inspect`]: what a file decodes to, for `seqmamba inspect FILE`.
//!
//! Errors ([`error::Error`]) name the file and the record, base, line or packet at fault;
//! [`error::OnError`] chooses between failing and skipping bad records.

pub mod audio;
pub mod dataset;
pub mod dna;
pub mod error;
pub mod input;
pub mod inspect;

pub use error::{Error, OnError, Result};
