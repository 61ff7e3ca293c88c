//! A trained classifier applied to new files (`seqmamba classify`): every DNA record
//! (FASTA, FASTQ, SAM, BAM) or audio file made into tokens as the training examples were
//! (the checkpoint's [`InputSpec`]), classified in batches as they stream in, one line
//! each in input order. Millions of reads never sit in memory at once: a batch of windows
//! and the records they belong to do.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use seqmamba_kernels::Backend;
use seqmamba_modalities::OnError;
use seqmamba_modalities::audio::decode::load_mono;
use seqmamba_modalities::dataset::splits::Split;
use seqmamba_modalities::dna::alignment::AlignmentOptions;
use seqmamba_modalities::dna::read_tokens;

use crate::checkpoint::InputSpec;
use crate::model::{Head, Model};
use crate::workflow::classify::{Predictor, argmax};
use crate::workflow::data::{TokenExample, quantizer_named};
use crate::workflow::run::csv_field;
use crate::workflow::schema::Modality;
use crate::workflow::{WorkflowError, output_error};

/// How `seqmamba classify` reads and batches its inputs.
#[derive(Clone, Copy, Debug)]
pub struct PredictOptions {
    /// Windows a forward pass.
    pub batch: usize,
    /// Records longer than the model's `seq_len` classified over all their windows (the
    /// probabilities averaged) instead of their centre crop alone.
    pub windows: bool,
    /// Bad records and undecodable audio files: fail, or skip and count them.
    pub on_error: OnError,
}

/// What a prediction run went through.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PredictSummary {
    /// Records (audio: files) classified.
    pub records: u64,
    /// Windows run through the model (one a record unless `windows`).
    pub windows: u64,
    /// Bad records or files skipped, and empty records.
    pub skipped: u64,
    /// Per label: the records predicted as it and the sum of their predicted probability.
    pub predicted: Vec<(u64, f64)>,
}

impl PredictSummary {
    /// `label,records,share,mean_probability`: how many records each label won and how
    /// sure the model was of them on average (`predicted_labels.csv` of a predict run).
    ///
    /// ```
    /// let summary = seqmamba::predict::PredictSummary {
    ///     records: 4, windows: 4, skipped: 0, predicted: vec![(3, 2.4), (1, 0.5)],
    /// };
    /// let csv = summary.label_table(&["a".into(), "b".into()]);
    /// assert_eq!(csv, "label,records,share,mean_probability\na,3,0.75,0.7999999999999999\nb,1,0.25,0.5\n");
    /// ```
    pub fn label_table(&self, labels: &[String]) -> String {
        let mut text = String::from("label,records,share,mean_probability\n");
        for (label, &(records, sum)) in labels.iter().zip(&self.predicted) {
            let share = records as f64 / self.records.max(1) as f64;
            let mean = if records > 0 {
                sum / records as f64
            } else {
                0.0
            };
            text.push_str(&format!("{},{records},{share},{mean}\n", csv_field(label)));
        }
        text
    }
}

/// The header line of [`classify_files`]' output: `file, record, length, predicted,
/// predicted_name`, then `prob_<label>` for every label, tab-separated.
///
/// ```
/// let header = seqmamba::predict::header(&["tata".into(), "no tata".into()]);
/// assert_eq!(header, "file\trecord\tlength\tpredicted\tpredicted_name\tprob_tata\tprob_no_tata");
/// ```
pub fn header(labels: &[String]) -> String {
    let mut line = String::from("file\trecord\tlength\tpredicted\tpredicted_name");
    for label in labels {
        line.push_str("\tprob_");
        line.push_str(&tsv_field(label).replace(' ', "_"));
    }
    line
}

/// An error unless `head` is a classifier's.
///
/// ```
/// use seqmamba::model::Head;
/// assert!(seqmamba::predict::ensure_classifier(&Head::LanguageModel).is_err());
/// ```
pub fn ensure_classifier(head: &Head) -> Result<(), WorkflowError> {
    match head {
        Head::Classifier { .. } => Ok(()),
        _ => Err(not_usable(
            "a language model, not a classifier (train one with a workflow of task = \"classify\")"
                .into(),
        )),
    }
}

/// What makes a model or the options unfit for classifying files.
fn not_usable(message: String) -> WorkflowError {
    WorkflowError::Model(crate::ModelError::Input(message))
}

/// A field without the tabs and line breaks that would break the row.
pub(crate) fn tsv_field(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

/// Window starts of a record of `len` tokens cut into windows of `window`: consecutive
/// windows, the last one ending at the record's end (so overlapping the one before it
/// where `len` is not a multiple); a single window where the record fits.
///
/// ```
/// assert_eq!(seqmamba::predict::window_starts(10, 4), vec![0, 4, 6]);
/// assert_eq!(seqmamba::predict::window_starts(3, 4), vec![0]);
/// ```
pub fn window_starts(len: usize, window: usize) -> Vec<usize> {
    if len <= window {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..len - window).step_by(window).collect();
    starts.push(len - window);
    starts
}

/// A record waiting for the probabilities of its windows.
struct Pending {
    file: usize,
    id: String,
    length: usize,
    windows_left: usize,
    sums: Vec<f64>,
    windows: usize,
}

/// Streams records into batches of windows, runs them and writes finished records in order.
struct Classifier<'a, 'm, B: Backend, W: Write> {
    predictor: Predictor<'m, B>,
    /// Each file's name as its lines give it.
    file_names: Vec<String>,
    labels: &'a [String],
    seq_len: usize,
    options: PredictOptions,
    /// Records in input order from the oldest one not yet written.
    pending: VecDeque<Pending>,
    /// Index (into the stream of all records) of `pending[0]`.
    first_pending: usize,
    /// Windows of the next batch: their record's index and tokens.
    queue: Vec<(usize, TokenExample)>,
    out: W,
    summary: PredictSummary,
}

impl<B: Backend, W: Write> Classifier<'_, '_, B, W> {
    fn add(&mut self, file: usize, id: String, tokens: Vec<u8>) -> Result<(), WorkflowError> {
        if tokens.is_empty() {
            self.summary.skipped += 1;
            return Ok(());
        }
        let record = self.first_pending + self.pending.len();
        let length = tokens.len();
        // A record goes whole unless cut into windows: the predictor takes its centre crop,
        // as evaluation does.
        let windows: Vec<Vec<u8>> = if self.options.windows && length > self.seq_len {
            window_starts(length, self.seq_len)
                .into_iter()
                .map(|start| tokens[start..start + self.seq_len].to_vec())
                .collect()
        } else {
            vec![tokens]
        };
        self.pending.push_back(Pending {
            file,
            id,
            length,
            windows_left: windows.len(),
            sums: vec![0.0; self.labels.len()],
            windows: windows.len(),
        });
        for tokens in windows {
            let window = TokenExample {
                id: String::new(),
                tokens,
                label: 0,
                split: Split::Test,
                fold: 0,
            };
            self.queue.push((record, window));
            if self.queue.len() == self.options.batch {
                self.run_batch()?;
            }
        }
        Ok(())
    }

    /// Runs the queued windows (crops as long as the longest, in powers of two up to
    /// `seq_len`: a few activation shapes serve every read length) and writes the records
    /// they finish.
    fn run_batch(&mut self) -> Result<(), WorkflowError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let longest = self.queue.iter().map(|(_, w)| w.tokens.len()).max();
        let len = longest.unwrap_or(1).next_power_of_two().min(self.seq_len);
        let windows: Vec<&TokenExample> = self.queue.iter().map(|(_, w)| w).collect();
        let probs = self.predictor.probabilities(&windows, len)?;
        for ((record, _), p) in self.queue.iter().zip(probs) {
            let pending = &mut self.pending[record - self.first_pending];
            pending.sums.iter_mut().zip(p).for_each(|(s, p)| *s += p);
            pending.windows_left -= 1;
        }
        self.summary.windows += self.queue.len() as u64;
        self.queue.clear();
        while self.pending.front().is_some_and(|p| p.windows_left == 0) {
            let done = self.pending.pop_front().expect("checked above");
            self.first_pending += 1;
            self.write(done)?;
        }
        Ok(())
    }

    fn write(&mut self, record: Pending) -> Result<(), WorkflowError> {
        let probs: Vec<f64> = record
            .sums
            .iter()
            .map(|s| s / record.windows as f64)
            .collect();
        let predicted = argmax(&probs);
        let tally = &mut self.summary.predicted[predicted];
        tally.0 += 1;
        tally.1 += probs[predicted];
        let mut line = format!(
            "{}\t{}\t{}\t{predicted}\t{}",
            self.file_names[record.file],
            tsv_field(&record.id),
            record.length,
            tsv_field(&self.labels[predicted]),
        );
        for p in &probs {
            let _ = write!(line, "\t{p}"); // into a String: cannot fail
        }
        writeln!(self.out, "{line}").map_err(output_error)?;
        self.summary.records += 1;
        Ok(())
    }
}

/// Classifies every record of `files` with `model` (a classifier over `labels`) and writes
/// [`header`] and one line per record to `out`, in input order; `progress` hears of each
/// record read.
pub fn classify_files<B: Backend>(
    model: &Model<B>,
    labels: &[String],
    spec: &InputSpec,
    files: &[PathBuf],
    options: PredictOptions,
    out: impl Write,
    mut progress: impl FnMut(&Path),
) -> Result<PredictSummary, WorkflowError> {
    ensure_classifier(&model.head)?;
    if model.logit_width() != labels.len() || labels.len() < 2 {
        return Err(not_usable(format!(
            "the model classifies into {} classes and has {} label names: a classifier \
             trained by `seqmamba run` (task = \"classify\") is needed",
            model.logit_width(),
            labels.len()
        )));
    }
    if options.batch == 0 || spec.seq_len == 0 {
        return Err(not_usable(
            "the batch size and the sequence length must be at least 1".into(),
        ));
    }
    let reverse_complement = spec.reverse_complement && spec.modality == Modality::Dna;
    let mut classifier = Classifier {
        predictor: Predictor::new(model, options.batch, reverse_complement),
        file_names: files
            .iter()
            .map(|f| tsv_field(&f.display().to_string()))
            .collect(),
        labels,
        seq_len: spec.seq_len,
        options,
        pending: VecDeque::new(),
        first_pending: 0,
        queue: Vec::new(),
        out,
        summary: PredictSummary {
            predicted: vec![(0, 0.0); labels.len()],
            ..PredictSummary::default()
        },
    };
    writeln!(classifier.out, "{}", header(labels)).map_err(output_error)?;
    let alignment = AlignmentOptions {
        restore_orientation: spec.restore_orientation,
        ..AlignmentOptions::default()
    };
    let audio = match spec.modality {
        Modality::Dna => None,
        Modality::Audio => Some((
            spec.normalization.parse()?,
            quantizer_named(&spec.quantizer),
        )),
    };
    for (file, path) in files.iter().enumerate() {
        match audio {
            None => {
                let mut records = read_tokens(path, alignment, options.on_error)?;
                for record in records.by_ref() {
                    let record = record?;
                    progress(path);
                    classifier.add(file, record.name, record.tokens)?;
                }
                classifier.summary.skipped += records.skipped();
            }
            Some(_) if path == Path::new("-") => {
                return Err(not_usable(
                    "audio is read from files (each one a clip), not from standard input".into(),
                ));
            }
            Some((normalization, quantizer)) => {
                match load_mono(path, spec.sample_rate, normalization) {
                    Ok(samples) => {
                        progress(path);
                        let id = path.file_name().map_or_else(
                            || path.display().to_string(),
                            |n| n.to_string_lossy().into_owned(),
                        );
                        classifier.add(file, id, quantizer.encode_all(&samples))?;
                    }
                    Err(_) if options.on_error == OnError::Skip => classifier.summary.skipped += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    classifier.run_batch()?;
    classifier.out.flush().map_err(output_error)?;
    Ok(classifier.summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bidirectional, MambaConfig, PoolingKind};
    use seqmamba_kernels::Cpu;
    use seqmamba_modalities::dna::tokenizer;

    fn classifier() -> Model<Cpu> {
        let head = Head::Classifier {
            classes: 3,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Off,
        };
        Model::initialised(Cpu, MambaConfig::new(32, 2, 10), head, 7).unwrap()
    }

    /// Rows of the output after its header: (record, length, probabilities).
    fn rows(text: &str) -> Vec<(String, usize, Vec<f64>)> {
        text.lines()
            .skip(1)
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let probs = fields[5..].iter().map(|p| p.parse().unwrap()).collect();
                (fields[1].to_string(), fields[2].parse().unwrap(), probs)
            })
            .collect()
    }

    #[test]
    fn windows_average_their_probabilities_and_records_keep_their_order() {
        let model = classifier();
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let spec = InputSpec::defaults(Modality::Dna, 8);
        let records: [(&str, &[u8]); 4] = [
            ("long", b"ACGTTGCAAGGCTTACGATC"),
            ("empty", b""),
            ("short", b"GATTACA"),
            ("exact", b"CCGGAATT"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let fasta = dir.path().join("reads.fa");
        let text: String = records
            .iter()
            .map(|(name, bases)| format!(">{name}\n{}\n", String::from_utf8_lossy(bases)))
            .collect();
        std::fs::write(&fasta, text).unwrap();
        let files = [fasta];
        let mut out = Vec::new();
        let options = PredictOptions {
            batch: 2,
            windows: true,
            on_error: OnError::Fail,
        };
        let summary =
            classify_files(&model, &labels, &spec, &files, options, &mut out, |_| {}).unwrap();
        // long: windows at 0, 8 and 12; the empty record is skipped.
        assert_eq!(
            (summary.records, summary.windows, summary.skipped),
            (3, 5, 1)
        );
        assert_eq!(summary.predicted.iter().map(|p| p.0).sum::<u64>(), 3);
        let got = rows(&String::from_utf8(out).unwrap());
        let names: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["long", "short", "exact"]);
        assert_eq!(got[0].1, 20);

        // Each window alone, one at a time, averaged here.
        let mut predictor = Predictor::new(&model, 1, false);
        for ((_, bases), row) in records.iter().filter(|r| !r.1.is_empty()).zip(&got) {
            let all = tokenizer::encode(bases).unwrap();
            let starts = window_starts(all.len(), 8);
            let mut mean = vec![0.0; 3];
            for &start in &starts {
                let window = TokenExample {
                    id: String::new(),
                    tokens: all[start..(start + 8).min(all.len())].to_vec(),
                    label: 0,
                    split: Split::Test,
                    fold: 0,
                };
                let p = predictor.probabilities(&[&window], 8).unwrap();
                for (m, x) in mean.iter_mut().zip(&p[0]) {
                    *m += x / starts.len() as f64;
                }
            }
            for (x, y) in row.2.iter().zip(&mean) {
                assert!((x - y).abs() < 1e-6, "{}: {:?} vs {mean:?}", row.0, row.2);
            }
        }
    }

    #[test]
    fn a_language_model_or_a_bad_file_is_refused() {
        let model = classifier();
        let spec = InputSpec::defaults(Modality::Dna, 8);
        let options = PredictOptions {
            batch: 4,
            windows: false,
            on_error: OnError::Fail,
        };
        let two = ["a".to_string(), "b".to_string()];
        let err = classify_files(&model, &two, &spec, &[], options, Vec::new(), |_| {});
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("3 classes and has 2 label names")
        );

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.fa");
        std::fs::write(&bad, b">r1\nACGT\n>r2\nAC!GT\n").unwrap();
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let files = [bad];
        let err = classify_files(&model, &labels, &spec, &files, options, Vec::new(), |_| {});
        let message = err.unwrap_err().to_string();
        assert!(
            message.contains("bad.fa") && message.contains("r2"),
            "{message}"
        );
        let skip = PredictOptions {
            on_error: OnError::Skip,
            ..options
        };
        let mut out = Vec::new();
        let summary = classify_files(&model, &labels, &spec, &files, skip, &mut out, |_| {});
        assert_eq!(summary.unwrap().skipped, 1);
        assert_eq!(rows(&String::from_utf8(out).unwrap()).len(), 1);
    }

    #[test]
    fn audio_files_are_resampled_as_the_training_clips_were() {
        let head = Head::Classifier {
            classes: 2,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Off,
        };
        let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 256), head, 3).unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples/audio");
        let files = [
            samples.join("0_jackson_0.flac"),
            samples.join("0_jackson_0.stereo44k.wav"),
        ];
        let labels = ["zero".to_string(), "one".to_string()];
        let spec = InputSpec::defaults(Modality::Audio, 4096);
        let options = PredictOptions {
            batch: 2,
            windows: false,
            on_error: OnError::Fail,
        };
        let mut out = Vec::new();
        let summary =
            classify_files(&model, &labels, &spec, &files, options, &mut out, |_| {}).unwrap();
        assert_eq!((summary.records, summary.windows), (2, 2));
        let got = rows(&String::from_utf8(out).unwrap());
        // 0.643 s at 8 kHz either way (the 44.1 kHz stereo copy resampled and downmixed).
        assert_eq!(got[0].0, "0_jackson_0.flac");
        assert_eq!(got[0].1, 5148);
        assert!(got[1].1.abs_diff(5148) <= 1, "{}", got[1].1);
        // The flac's row: its mu-law tokens' centre 4096 alone.
        let clip = load_mono(&files[0], 8000, "peak".parse().unwrap()).unwrap();
        let tokens = quantizer_named("mulaw").encode_all(&clip);
        let centre = TokenExample {
            id: String::new(),
            tokens: tokens[526..526 + 4096].to_vec(),
            label: 0,
            split: Split::Test,
            fold: 0,
        };
        let alone = Predictor::new(&model, 1, false)
            .probabilities(&[&centre], 4096)
            .unwrap();
        for (x, y) in got[0].2.iter().zip(&alone[0]) {
            assert!((x - y).abs() < 1e-9, "{got:?} vs {alone:?}");
        }

        let broken = tempfile::tempdir().unwrap();
        let bad = broken.path().join("noise.wav");
        std::fs::write(&bad, b"RIFF\x10\x00\x00\x00WAVEfmt ").unwrap();
        let files = [bad, files[0].clone()];
        let err = classify_files(&model, &labels, &spec, &files, options, Vec::new(), |_| {});
        assert!(err.unwrap_err().to_string().contains("noise.wav"));
        let skip = PredictOptions {
            on_error: OnError::Skip,
            ..options
        };
        let summary = classify_files(&model, &labels, &spec, &files, skip, Vec::new(), |_| {});
        assert_eq!(summary.unwrap().skipped, 1);
    }
}
