//! The records of one input file made into tokens as a checkpoint's [`InputSpec`] says:
//! every DNA record of a FASTA, FASTQ, SAM or BAM file (plain, gzip or BGZF; `-` for
//! standard input), or the clip in an audio file resampled, normalised and quantised as the
//! training clips were.

use std::path::Path;

use seqmamba_modalities::OnError;
use seqmamba_modalities::audio::decode::load_mono;
use seqmamba_modalities::dna::alignment::AlignmentOptions;
use seqmamba_modalities::dna::read_tokens;

use crate::checkpoint::InputSpec;
use crate::workflow::WorkflowError;
use crate::workflow::data::quantizer_named;
use crate::workflow::schema::Modality;

/// A record's name (audio: the file's stem) and tokens.
pub type TokenRecord = (String, Vec<u8>);

/// The records of `path`, one at a time; a bad record fails naming the file and record.
///
/// ```
/// use seqmamba::checkpoint::InputSpec;
/// use seqmamba::records::read_records;
/// use seqmamba::workflow::schema::Modality;
/// let spec = InputSpec::defaults(Modality::Dna, 0);
/// let path = "../data-samples/dna/phix174.fasta".as_ref();
/// let (name, tokens) = read_records(&spec, path)?.next().unwrap()?;
/// assert_eq!((name.as_str(), tokens.len()), ("NC_001422.1", 5386));
/// # Ok::<(), seqmamba::workflow::WorkflowError>(())
/// ```
pub fn read_records<'a>(
    spec: &InputSpec,
    path: &'a Path,
) -> Result<Box<dyn Iterator<Item = Result<TokenRecord, WorkflowError>> + 'a>, WorkflowError> {
    match spec.modality {
        Modality::Dna => {
            let alignment = AlignmentOptions {
                restore_orientation: spec.restore_orientation,
                ..AlignmentOptions::default()
            };
            let records = read_tokens(path, alignment, OnError::Fail)?;
            Ok(Box::new(records.map(|record| {
                let record = record?;
                Ok((record.name, record.tokens))
            })))
        }
        Modality::Audio => {
            if path == Path::new("-") {
                return Err(WorkflowError::Invalid(
                    "audio is read from files (each one a clip), not from standard input".into(),
                ));
            }
            let samples = load_mono(path, spec.sample_rate, spec.normalization.parse()?)?;
            let tokens = quantizer_named(&spec.quantizer).encode_all(&samples);
            let stem = path
                .file_stem()
                .map_or_else(|| "clip".into(), |s| s.to_string_lossy().into_owned());
            Ok(Box::new(std::iter::once(Ok((stem, tokens)))))
        }
    }
}
