//! A trained language model continuing prompts (`seqmamba generate`): DNA prompts from
//! bases on the command line or every record of a file, audio prompts from a clip (made
//! into tokens as the training examples were: the checkpoint's [`InputSpec`]) or from
//! silence; samples as FASTA records or WAV files. Samples decode together in batches,
//! the rows of a batch taken from as many prompts as they need, so a file of many short
//! prompts streams through without sitting in memory.

use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use seqmamba_kernels::Backend;
use seqmamba_modalities::dna::tokenizer;

use crate::checkpoint::InputSpec;
use crate::infer::{Sampling, generate};
use crate::model::Model;
use crate::records::read_records;
use crate::workflow::data::quantizer_named;
use crate::workflow::generate::{fasta_record, write_wav_atomic};
use crate::workflow::schema::Modality;
use crate::workflow::{WorkflowError, io_error, output_error};

/// What the model continues.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSource {
    /// DNA bases (`ACGTN`, either case), one prompt named `prompt`.
    Bases(String),
    /// DNA: every record of a FASTA, FASTQ, SAM or BAM file (`-`: standard input); audio:
    /// the clip in an audio file.
    File(PathBuf),
    /// Audio: one token of silence, named `silence`.
    Silence,
}

/// How many samples, how long, and how they are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens generated per sample.
    pub length: usize,
    /// Samples per prompt.
    pub samples: usize,
    pub sampling: Sampling,
    /// Sample `i` (counted over all prompts) draws with seed `seed + i`, whatever the batch.
    pub seed: u64,
    /// Samples decoded together.
    pub batch: usize,
    /// Keep only a prompt's last `prompt_len` tokens (the context right before the
    /// continuation).
    pub prompt_len: Option<usize>,
    /// Write the (kept) prompt before each continuation.
    pub with_prompt: bool,
}

/// Where samples go: DNA as FASTA records into a stream, audio as one WAV file a sample
/// into a folder.
pub enum SampleSink<'a> {
    Fasta(Box<dyn Write + 'a>),
    WavFolder(PathBuf),
}

/// What a generation run made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateSummary {
    pub prompts: u64,
    pub samples: u64,
    /// Tokens generated (prompts not counted).
    pub tokens: u64,
}

/// A prompt's name and tokens.
type Prompt = (String, Vec<u32>);

/// Continues every prompt of `source` by `options.samples` samples of `options.length`
/// tokens from `model` (a language model of `spec.modality`) into `sink`, in prompt order;
/// `progress` hears the tokens generated so far.
///
/// ```
/// use seqmamba::checkpoint::InputSpec;
/// use seqmamba::continuation::{GenerateOptions, PromptSource, SampleSink, generate_samples};
/// use seqmamba::infer::Sampling;
/// use seqmamba::model::{Head, MambaConfig, Model};
/// use seqmamba::workflow::schema::Modality;
/// use seqmamba_kernels::Cpu;
/// let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 10), Head::LanguageModel, 1)?;
/// let options = GenerateOptions {
///     length: 12, samples: 2, sampling: Sampling::default(), seed: 0, batch: 8,
///     prompt_len: None, with_prompt: false,
/// };
/// let mut fasta = Vec::new();
/// let source = PromptSource::Bases("ACGTACGT".into());
/// let spec = InputSpec::defaults(Modality::Dna, 0);
/// let sink = SampleSink::Fasta(Box::new(&mut fasta));
/// let summary = generate_samples(&model, &spec, &source, options, sink, |_| {})?;
/// assert_eq!((summary.samples, summary.tokens), (2, 24));
/// assert!(String::from_utf8(fasta)?.starts_with(">prompt_sample0 seed=0 prompt_len=8"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn generate_samples<B: Backend>(
    model: &Model<B>,
    spec: &InputSpec,
    source: &PromptSource,
    options: GenerateOptions,
    sink: SampleSink<'_>,
    progress: impl FnMut(u64),
) -> Result<GenerateSummary, WorkflowError> {
    if options.batch == 0 || options.samples == 0 || options.length == 0 {
        return Err(WorkflowError::Invalid(
            "the length, the samples per prompt and the batch size must be at least 1".into(),
        ));
    }
    options.sampling.check().map_err(WorkflowError::Invalid)?;
    if let SampleSink::WavFolder(dir) = &sink {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let mut batches = Batches {
        model,
        spec,
        options,
        rows: Vec::with_capacity(options.batch),
        sink,
        progress,
        summary: GenerateSummary::default(),
    };
    for prompt in read_prompts(spec, source)? {
        let (name, mut tokens) = prompt?;
        if let Some(keep) = options.prompt_len {
            tokens.drain(..tokens.len().saturating_sub(keep));
        }
        if tokens.is_empty() {
            return Err(WorkflowError::Invalid(format!(
                "prompt {name} is empty: a prompt needs at least one token"
            )));
        }
        let prompt = Rc::new((name, tokens));
        let first_seed = options
            .seed
            .wrapping_add(batches.summary.prompts * options.samples as u64);
        for sample in 0..options.samples {
            batches.rows.push(Row {
                prompt: Rc::clone(&prompt),
                sample,
                seed: first_seed.wrapping_add(sample as u64),
            });
            if batches.rows.len() == options.batch {
                batches.run()?;
            }
        }
        batches.summary.prompts += 1;
    }
    batches.run()?;
    if let SampleSink::Fasta(out) = &mut batches.sink {
        out.flush().map_err(output_error)?;
    }
    if batches.summary.prompts == 0 {
        return Err(WorkflowError::Invalid(
            "no prompt: the prompt file holds no records".into(),
        ));
    }
    Ok(batches.summary)
}

/// One sample to make: its prompt (shared by the prompt's samples), number and seed.
struct Row {
    prompt: Rc<Prompt>,
    sample: usize,
    seed: u64,
}

/// [`generate_samples`] on its way: the samples waiting to be decoded together, and where
/// they go.
struct Batches<'a, 's, B: Backend, P> {
    model: &'a Model<B>,
    spec: &'a InputSpec,
    options: GenerateOptions,
    rows: Vec<Row>,
    sink: SampleSink<'s>,
    progress: P,
    summary: GenerateSummary,
}

impl<B: Backend, P: FnMut(u64)> Batches<'_, '_, B, P> {
    /// Decodes the waiting rows together and writes their samples in order.
    fn run(&mut self) -> Result<(), WorkflowError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let prompts: Vec<&[u32]> = self.rows.iter().map(|r| &r.prompt.1[..]).collect();
        let seeds: Vec<u64> = self.rows.iter().map(|r| r.seed).collect();
        let (done, rows) = (self.summary.tokens, self.rows.len());
        let options = self.options;
        let progress = &mut self.progress;
        let samples = generate(
            self.model,
            &prompts,
            &seeds,
            options.length,
            &options.sampling,
            |n| progress(done + (n * rows) as u64),
        )?;
        for (row, tokens) in self.rows.drain(..).zip(samples) {
            write_sample(&mut self.sink, self.spec, &row, &tokens, options)?;
            self.summary.samples += 1;
            self.summary.tokens += tokens.len() as u64;
        }
        Ok(())
    }
}

/// The prompts of `source` as `spec` makes tokens, one at a time.
fn read_prompts<'a>(
    spec: &'a InputSpec,
    source: &'a PromptSource,
) -> Result<Box<dyn Iterator<Item = Result<Prompt, WorkflowError>> + 'a>, WorkflowError> {
    let widen = |tokens: &[u8]| tokens.iter().map(|&t| u32::from(t)).collect::<Vec<u32>>();
    match (source, spec.modality) {
        (PromptSource::Bases(text), Modality::Dna) => {
            let tokens = tokenizer::encode(text.trim().as_bytes()).map_err(|(at, byte)| {
                WorkflowError::Invalid(format!(
                    "the prompt's character {:?} at position {} is not a base (ACGTN)",
                    char::from(byte),
                    at + 1
                ))
            })?;
            Ok(Box::new(std::iter::once(Ok((
                "prompt".into(),
                widen(&tokens),
            )))))
        }
        (PromptSource::File(path), _) => {
            Ok(Box::new(read_records(spec, path)?.map(move |record| {
                let (name, tokens) = record?;
                Ok((name, widen(&tokens)))
            })))
        }
        (PromptSource::Silence, Modality::Audio) => {
            let silence = quantizer_named(&spec.quantizer).encode(0.0);
            Ok(Box::new(std::iter::once(Ok((
                "silence".into(),
                vec![u32::from(silence)],
            )))))
        }
        (PromptSource::Bases(_), Modality::Audio) => Err(WorkflowError::Invalid(
            "a base sequence prompts a DNA model, but the model's input is Audio".into(),
        )),
        (PromptSource::Silence, Modality::Dna) => Err(WorkflowError::Invalid(
            "a DNA model needs a prompt: bases, or a file of records".into(),
        )),
    }
}

/// Writes one sample: a FASTA record `<prompt>_sample<j>` with the seed and the sampling
/// settings in its description, or the WAV file `<prompt>-sample<j>.wav`.
fn write_sample(
    sink: &mut SampleSink<'_>,
    spec: &InputSpec,
    Row {
        prompt,
        sample,
        seed,
    }: &Row,
    tokens: &[u32],
    options: GenerateOptions,
) -> Result<(), WorkflowError> {
    let (name, prompt) = &**prompt;
    let lead: &[u32] = if options.with_prompt { prompt } else { &[] };
    let all: Vec<u8> = lead.iter().chain(tokens).map(|&t| t as u8).collect();
    match sink {
        SampleSink::Fasta(out) => {
            let s = options.sampling;
            let header = format!(
                "{name}_sample{sample} seed={seed} prompt_len={} temperature={} top_k={} \
                 top_p={}{}",
                prompt.len(),
                s.temperature,
                s.top_k,
                s.top_p,
                if options.with_prompt {
                    " with_prompt"
                } else {
                    ""
                }
            );
            out.write_all(fasta_record(&header, &all).as_bytes())
                .map_err(output_error)
        }
        SampleSink::WavFolder(dir) => write_wav_atomic(
            &dir.join(format!("{name}-sample{sample}.wav")),
            &all,
            quantizer_named(&spec.quantizer),
            spec.sample_rate,
        ),
    }
}

#[cfg(test)]
mod tests {
    use seqmamba_kernels::Cpu;
    use seqmamba_modalities::audio::decode::decode_mono;

    use super::*;
    use crate::model::{Head, MambaConfig};

    fn model(vocab: usize) -> Model<Cpu> {
        Model::initialised(Cpu, MambaConfig::new(32, 2, vocab), Head::LanguageModel, 3).unwrap()
    }

    fn options(batch: usize) -> GenerateOptions {
        GenerateOptions {
            length: 9,
            samples: 3,
            sampling: Sampling::default(),
            seed: 40,
            batch,
            prompt_len: None,
            with_prompt: false,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("seqmamba-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fasta(model: &Model<Cpu>, source: &PromptSource, options: GenerateOptions) -> String {
        let spec = InputSpec::defaults(Modality::Dna, 0);
        let mut out = Vec::new();
        let sink = SampleSink::Fasta(Box::new(&mut out));
        generate_samples(model, &spec, source, options, sink, |_| {}).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// (header, sequence) of each FASTA record.
    fn records(text: &str) -> Vec<(String, String)> {
        text.split('>')
            .skip(1)
            .map(|r| {
                let (header, bases) = r.split_once('\n').unwrap();
                (header.to_string(), bases.replace('\n', ""))
            })
            .collect()
    }

    #[test]
    fn samples_follow_their_seeds_whatever_the_batch() {
        let model = model(tokenizer::VOCAB_SIZE);
        let dir = temp_dir("continuation-batches");
        let path = dir.join("prompts.fa");
        std::fs::write(&path, b">a\nACGTTG\n>b\nGG\n>c\nTTTACA\n").unwrap();
        let source = PromptSource::File(path);
        let one = fasta(&model, &source, options(1));
        for batch in [2, 4, 9, 64] {
            assert_eq!(fasta(&model, &source, options(batch)), one, "batch {batch}");
        }
        let got = records(&one);
        let names: Vec<&str> = got
            .iter()
            .map(|(h, _)| h.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "a_sample0",
                "a_sample1",
                "a_sample2",
                "b_sample0",
                "b_sample1",
                "b_sample2"
            ]
            .into_iter()
            .chain(["c_sample0", "c_sample1", "c_sample2"])
            .collect::<Vec<_>>()
        );
        // Sample 4 (b's second) draws with seed 40 + 4 from b's tokens.
        assert!(
            got[4]
                .0
                .starts_with("b_sample1 seed=44 prompt_len=2 temperature=1")
        );
        let b: Vec<u32> = tokenizer::encode(b"GG")
            .unwrap()
            .iter()
            .map(|&t| t.into())
            .collect();
        let alone = generate(&model, &[&b], &[44], 9, &Sampling::default(), |_| {}).unwrap();
        let bases: Vec<u8> = alone[0].iter().map(|&t| t as u8).collect();
        assert_eq!(records(&fasta_record("x", &bases))[0].1, got[4].1);
        assert_eq!(got[4].1.len(), 9);
    }

    #[test]
    fn prompts_are_cut_to_their_last_tokens_and_written_on_request() {
        let model = model(tokenizer::VOCAB_SIZE);
        let long = PromptSource::Bases("GGGGGACGT".into());
        let short = PromptSource::Bases("acgt".into());
        let cut = GenerateOptions {
            prompt_len: Some(4),
            with_prompt: true,
            ..options(8)
        };
        let from_long = records(&fasta(&model, &long, cut));
        let from_short = records(&fasta(
            &model,
            &short,
            GenerateOptions {
                prompt_len: None,
                ..cut
            },
        ));
        assert_eq!(from_long, from_short);
        assert!(from_long.iter().all(|(h, s)| s.starts_with("ACGT")
            && s.len() == 4 + 9
            && h.ends_with("prompt_len=4 temperature=1 top_k=0 top_p=1 with_prompt")));
    }

    #[test]
    fn audio_samples_are_wav_files_at_the_training_rate() {
        let model = model(crate::workflow::data::vocab_size(Modality::Audio));
        let dir = temp_dir("continuation-audio");
        let spec = InputSpec {
            sample_rate: 4000,
            ..InputSpec::defaults(Modality::Audio, 0)
        };
        let with_prompt = GenerateOptions {
            samples: 2,
            with_prompt: true,
            ..options(8)
        };
        let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data-samples/audio/0_jackson_0.flac");
        let source = PromptSource::File(clip);
        let sink = SampleSink::WavFolder(dir.clone());
        let summary = generate_samples(&model, &spec, &source, with_prompt, sink, |_| {}).unwrap();
        assert_eq!(
            (summary.prompts, summary.samples, summary.tokens),
            (1, 2, 18)
        );
        // The flac is 5,148 samples at 8 kHz: 2,574 at 4 kHz, then 9 generated.
        for sample in 0..2 {
            let wav = decode_mono(&dir.join(format!("0_jackson_0-sample{sample}.wav"))).unwrap();
            assert_eq!((wav.sample_rate, wav.samples.len()), (4000, 2574 + 9));
        }
        let sink = SampleSink::WavFolder(dir.clone());
        let silence = generate_samples(
            &model,
            &spec,
            &PromptSource::Silence,
            options(8),
            sink,
            |_| {},
        );
        assert_eq!(silence.unwrap().samples, 3);
        let wav = decode_mono(&dir.join("silence-sample2.wav")).unwrap();
        assert_eq!(wav.samples.len(), 9);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temporary files left: {names:?}");
    }

    #[test]
    fn bad_prompts_are_refused_clearly() {
        let dna = model(tokenizer::VOCAB_SIZE);
        let spec = InputSpec::defaults(Modality::Dna, 0);
        let error = |model: &Model<Cpu>, spec: &InputSpec, source: PromptSource| {
            let sink = SampleSink::Fasta(Box::new(std::io::sink()));
            generate_samples(model, spec, &source, options(4), sink, |_| {})
                .unwrap_err()
                .to_string()
        };
        let text = error(&dna, &spec, PromptSource::Bases("ACGXT".into()));
        assert!(text.contains("'X' at position 4"), "{text}");
        assert!(error(&dna, &spec, PromptSource::Silence).contains("needs a prompt"));
        let dir = temp_dir("continuation-bad");
        let empty = dir.join("empty-record.fa");
        std::fs::write(&empty, b">full\nACGT\n>hollow\n\n").unwrap();
        let text = error(&dna, &spec, PromptSource::File(empty));
        assert!(text.contains("prompt hollow is empty"), "{text}");
        let missing = dir.join("missing.fa");
        let text = error(&dna, &spec, PromptSource::File(missing));
        assert!(text.contains("missing.fa"), "{text}");
        let audio = model(crate::workflow::data::vocab_size(Modality::Audio));
        let audio_spec = InputSpec::defaults(Modality::Audio, 0);
        let text = error(&audio, &audio_spec, PromptSource::Bases("ACGT".into()));
        assert!(text.contains("input is Audio"), "{text}");
        let wav = dir.join("truncated.wav");
        std::fs::write(&wav, b"RIFF\x24\x00\x00\x00WAVEfmt ").unwrap();
        let sink = SampleSink::WavFolder(dir.join("out"));
        let outcome = generate_samples(
            &audio,
            &audio_spec,
            &PromptSource::File(wav),
            options(4),
            sink,
            |_| {},
        );
        assert!(outcome.unwrap_err().to_string().contains("truncated.wav"));
        let zero = GenerateOptions {
            length: 0,
            ..options(4)
        };
        let negative = GenerateOptions {
            sampling: Sampling {
                temperature: -1.0,
                ..Sampling::default()
            },
            ..options(4)
        };
        for (bad, expected) in [(zero, "at least 1"), (negative, "temperature")] {
            let sink = SampleSink::Fasta(Box::new(std::io::sink()));
            let source = PromptSource::Bases("A".into());
            let outcome = generate_samples(&dna, &spec, &source, bad, sink, |_| {});
            assert!(outcome.unwrap_err().to_string().contains(expected));
        }
    }
}
