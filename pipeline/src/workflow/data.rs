//! From the data section to tokens: labeled examples with their splits (classification) or
//! train/validation/test sequences (language models), and the batches of one step, derived
//! from `(seed, fold, step)` alone so a resumed run sees exactly the batches it would have.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::{Backend, KernelError};
use seqmamba_modalities::OnError;
use seqmamba_modalities::audio::{AUDIO_VOCAB_SIZE, Normalization, Quantizer};
use seqmamba_modalities::dataset::splits::{self, Split};
use seqmamba_modalities::dataset::{self, Dataset, Example, ExampleData, HeaderLabel};
use seqmamba_modalities::dna::alignment::AlignmentOptions;
use seqmamba_modalities::dna::fasta::FastaReader;
use seqmamba_modalities::dna::windows::PositionSplit;
use seqmamba_modalities::dna::{read_tokens, tokenizer};

use super::WorkflowError;
use super::schema::{Data, LabelFrom, Modality, SourceFormat, SplitMethod};
use crate::model::{Batch, IGNORE_INDEX, Shape};

/// One example as tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenExample {
    pub id: String,
    pub tokens: Vec<u8>,
    pub label: usize,
    /// Split of the example; under k-fold the fold it is tested in decides instead.
    pub split: Split,
    pub fold: usize,
}

/// Tokens of every example, the label names, the input files read and what was skipped.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub examples: Vec<TokenExample>,
    pub labels: Vec<String>,
    /// Every file read (for the manifest's checksums), sorted.
    pub inputs: Vec<PathBuf>,
    /// Bad records or files skipped under `on_error = "skip"`, and empty examples dropped.
    pub skipped: u64,
}

/// Vocabulary size of a modality.
pub fn vocab_size(modality: Modality) -> usize {
    match modality {
        Modality::Dna => tokenizer::VOCAB_SIZE,
        Modality::Audio => AUDIO_VOCAB_SIZE,
    }
}

/// The quantiser named in the data section.
pub fn quantizer(data: &Data) -> Quantizer {
    quantizer_named(&data.quantizer)
}

/// The quantiser called `name` (`linear`, else mu-law; the schema checks the name).
///
/// ```
/// use seqmamba_modalities::audio::Quantizer;
/// assert_eq!(seqmamba::workflow::data::quantizer_named("linear"), Quantizer::Linear);
/// ```
pub fn quantizer_named(name: &str) -> Quantizer {
    if name == "linear" {
        Quantizer::Linear
    } else {
        Quantizer::MuLaw
    }
}

/// The amplitude normalisation named in the data section (checked by `validate`).
fn normalization(data: &Data) -> Normalization {
    data.normalization.parse().unwrap_or(Normalization::Peak)
}

/// How SAM/BAM reads are taken: every alignment, restored to the read's own orientation
/// when the data section asks.
fn alignment_options(data: &Data) -> AlignmentOptions {
    AlignmentOptions {
        restore_orientation: data.restore_orientation,
        ..AlignmentOptions::default()
    }
}

fn on_error(data: &Data) -> OnError {
    data.on_error.parse().unwrap_or_default()
}

/// Keeps `max` items spread evenly over `items` (all when `max` is 0 or not smaller).
fn evenly<T>(items: Vec<T>, max: usize) -> Vec<T> {
    let n = items.len();
    if max == 0 || max >= n {
        return items;
    }
    let keep: BTreeSet<usize> = (0..max).map(|i| i * n / max).collect();
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, x)| keep.contains(&i).then_some(x))
        .collect()
}

/// Loads the data section into token examples with splits (`seed` draws random splits and
/// folds). Language-model sources without labels get the label 0 (`"sequence"`).
pub fn load(data: &Data, seed: u64, seq_len: usize) -> Result<Loaded, WorkflowError> {
    let mut loaded = if data.format == SourceFormat::Genomes {
        load_genomes(data, seed, seq_len)?
    } else {
        let (mut dataset, mut skipped) = load_dataset(data)?;
        dataset.examples = evenly(dataset.examples, data.max_examples);
        let mut inputs: Vec<PathBuf> = data
            .sources
            .iter()
            .filter(|p| p.is_file())
            .cloned()
            .collect();
        inputs.extend(dataset.examples.iter().filter_map(|e| match &e.data {
            ExampleData::Path(p) => Some(p.clone()),
            ExampleData::Tokens(_) => None,
        }));
        let tokens = match data.modality {
            Modality::Dna => {
                let (t, s) = dataset::load_dna_tokens(
                    &dataset.examples,
                    alignment_options(data),
                    on_error(data),
                )?;
                skipped += s;
                t
            }
            Modality::Audio => {
                let (clips, s) = dataset::decode_audio(
                    &dataset.examples,
                    data.sample_rate,
                    normalization(data),
                    on_error(data),
                )?;
                skipped += s;
                let q = quantizer(data);
                clips
                    .into_iter()
                    .map(|c| c.map(|c| q.encode_all(&c)))
                    .collect()
            }
        };
        let splits = assign_splits(data, &dataset.examples, seed)?;
        let mut examples = Vec::new();
        for ((example, tokens), (split, fold)) in dataset.examples.iter().zip(tokens).zip(splits) {
            match tokens {
                Some(tokens) if !tokens.is_empty() => examples.push(TokenExample {
                    id: example.id.clone(),
                    tokens,
                    label: example.label,
                    split,
                    fold,
                }),
                _ => skipped += 1,
            }
        }
        Loaded {
            examples,
            labels: dataset.labels.names().to_vec(),
            inputs,
            skipped,
        }
    };
    loaded.inputs.sort();
    loaded.inputs.dedup();
    if loaded.examples.is_empty() {
        return Err(WorkflowError::Invalid(format!(
            "no examples in {}",
            sources_text(&data.sources)
        )));
    }
    Ok(loaded)
}

fn sources_text(sources: &[PathBuf]) -> String {
    sources
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn only_source(data: &Data) -> Result<&Path, WorkflowError> {
    match data.sources.as_slice() {
        [one] => Ok(one),
        _ => Err(WorkflowError::Invalid(format!(
            "data.format = {:?} reads exactly one source, got {}",
            data.format,
            data.sources.len()
        ))),
    }
}

fn load_dataset(data: &Data) -> Result<(Dataset, u64), WorkflowError> {
    let on_error = on_error(data);
    Ok(match data.format {
        SourceFormat::Fsdd => (dataset::from_fsdd(only_source(data)?)?, 0),
        SourceFormat::GenomicBenchmarks => {
            dataset::from_genomic_benchmarks_csv(only_source(data)?, on_error)?
        }
        SourceFormat::Folders => (dataset::from_class_folders(only_source(data)?)?, 0),
        SourceFormat::Manifest => dataset::from_manifest(only_source(data)?, on_error)?,
        SourceFormat::FastaHeaders => {
            if data.header_key.is_empty() {
                return Err(WorkflowError::Invalid(
                    "data.format = \"fasta_headers\" needs data.header_key (e.g. \"species=\")"
                        .into(),
                ));
            }
            let key = HeaderLabel::Key(data.header_key.clone());
            dataset::from_fasta_headers(only_source(data)?, &key, on_error)?
        }
        SourceFormat::Sequences => sequences(data)?,
        SourceFormat::Genomes => unreachable!("genomes are windowed in load_genomes"),
    })
}

/// Every record of every DNA source (or every audio file) as one unlabeled example, and how
/// many bad records were skipped.
fn sequences(data: &Data) -> Result<(Dataset, u64), WorkflowError> {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for path in &data.sources {
        match data.modality {
            Modality::Audio => rows.push((
                path.display().to_string(),
                ExampleData::Path(path.clone()),
                "sequence".to_string(),
                None,
                None,
            )),
            Modality::Dna => {
                let mut records = read_tokens(path, alignment_options(data), on_error(data))?;
                for record in &mut records {
                    let record = record?;
                    rows.push((
                        format!("{}:{}", path.display(), record.name),
                        ExampleData::Tokens(record.tokens),
                        "sequence".to_string(),
                        None,
                        None,
                    ));
                }
                skipped += records.skipped();
            }
        }
    }
    Ok((Dataset::from_rows(rows), skipped))
}

/// `(split, fold)` of every example by the split method.
fn assign_splits(
    data: &Data,
    examples: &[Example],
    seed: u64,
) -> Result<Vec<(Split, usize)>, WorkflowError> {
    let s = &data.split;
    let n = examples.len();
    let plain = |v: Vec<Split>| v.into_iter().map(|x| (x, 0)).collect();
    Ok(match s.method {
        SplitMethod::Given => examples
            .iter()
            .map(|e| {
                e.split.map(|x| (x, 0)).ok_or_else(|| {
                    WorkflowError::Invalid(format!(
                        "example {} has no split from its source; set data.split.method = \
                         \"random\", \"group\" or \"kfold\"",
                        e.id
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        SplitMethod::Random => plain(splits::random_split(n, s.validation, s.test, seed)?),
        SplitMethod::Group => {
            let groups: Vec<&str> = examples
                .iter()
                .map(|e| e.group.as_deref().unwrap_or(""))
                .collect();
            let test: Vec<&str> = s.test_groups.iter().map(String::as_str).collect();
            plain(splits::group_split(&groups, &test)?)
        }
        SplitMethod::Kfold => splits::k_fold(n, s.folds, seed)?
            .into_iter()
            .map(|f| (Split::Test, f))
            .collect(),
        // The whole sequence is the example; the runner cuts its tail off.
        SplitMethod::Tail => vec![(Split::Train, 0); n],
        SplitMethod::Position => {
            return Err(WorkflowError::Invalid(
                "data.split.method = \"position\" needs data.format = \"genomes\"".into(),
            ));
        }
    })
}

/// Genome windows with position splits; labels by file or by record.
fn load_genomes(data: &Data, seed: u64, seq_len: usize) -> Result<Loaded, WorkflowError> {
    if data.modality != Modality::Dna {
        return Err(WorkflowError::Invalid(
            "data.format = \"genomes\" needs data.modality = \"dna\"".into(),
        ));
    }
    let window = if data.window > 0 {
        data.window
    } else {
        seq_len
    } as u64;
    let stride = if data.stride > 0 {
        data.stride as u64
    } else {
        window
    };
    let plan = PositionSplit {
        block: data.split.block.max(window),
        validation: data.split.validation,
        test: data.split.test,
        seed,
    };
    // (label name, id, tokens, split) before label ids are known.
    let mut rows: Vec<(String, String, Vec<u8>, Split)> = Vec::new();
    let mut skipped = 0;
    let mut sequence_index = 0u64;
    for path in &data.sources {
        let stem = file_stem(path);
        let mut reader = FastaReader::open(path, on_error(data))?;
        for record in &mut reader {
            let record = record?;
            let label = match data.label_from {
                LabelFrom::File => stem.clone(),
                LabelFrom::Record => record.name.clone(),
            };
            let len = record.tokens.len() as u64;
            if len < window {
                skipped += 1;
                continue;
            }
            for (range, split) in plan.windows(sequence_index, len, window, stride)? {
                rows.push((
                    label.clone(),
                    format!("{}:{}:{}-{}", stem, record.name, range.start, range.end),
                    record.tokens[range.start as usize..range.end as usize].to_vec(),
                    split,
                ));
            }
            sequence_index += 1;
        }
        skipped += reader.skipped();
    }
    let labels: Vec<String> = rows
        .iter()
        .map(|r| r.0.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut examples = Vec::new();
    for (label_id, label) in labels.iter().enumerate() {
        for split in [Split::Train, Split::Validation, Split::Test] {
            let group: Vec<_> = rows
                .iter()
                .filter(|r| &r.0 == label && r.3 == split)
                .collect();
            for r in evenly(group, data.max_windows_per_label) {
                examples.push(TokenExample {
                    id: r.1.clone(),
                    tokens: r.2.clone(),
                    label: label_id,
                    split,
                    fold: 0,
                });
            }
        }
    }
    Ok(Loaded {
        examples,
        labels,
        inputs: data.sources.clone(),
        skipped,
    })
}

fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or(&name).to_string()
}

/// Language-model sequences by split.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub train: Vec<Vec<u8>>,
    pub validation: Vec<Vec<u8>>,
    pub test: Vec<Vec<u8>>,
    /// Names of the test sequences (prompts, score records).
    pub test_ids: Vec<String>,
}

impl Corpus {
    /// Sequences by their split; with the tail method, every sequence's last `test`
    /// fraction is test and the `validation` fraction before it validation.
    pub fn new(loaded: &Loaded, method: SplitMethod, validation: f64, test: f64) -> Self {
        let mut corpus = Corpus::default();
        for e in &loaded.examples {
            if method == SplitMethod::Tail {
                let n = e.tokens.len();
                let test_start = n - (n as f64 * test).round() as usize;
                let val_start = test_start - (n as f64 * validation).round() as usize;
                corpus.train.push(e.tokens[..val_start].to_vec());
                corpus
                    .validation
                    .push(e.tokens[val_start..test_start].to_vec());
                corpus.test.push(e.tokens[test_start..].to_vec());
                corpus.test_ids.push(e.id.clone());
            } else {
                match e.split {
                    Split::Train => corpus.train.push(e.tokens.clone()),
                    Split::Validation => corpus.validation.push(e.tokens.clone()),
                    Split::Test => {
                        corpus.test.push(e.tokens.clone());
                        corpus.test_ids.push(e.id.clone());
                    }
                }
            }
        }
        let long = |v: &mut Vec<Vec<u8>>| v.retain(|s| s.len() >= 2);
        long(&mut corpus.train);
        long(&mut corpus.validation);
        corpus
    }
}

/// One step's batch on the host: ids, optional row lengths, targets and how many targets
/// count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBatch {
    pub ids: Vec<u32>,
    pub lengths: Option<Vec<u32>>,
    pub targets: Vec<u32>,
    pub count: usize,
    /// Real (unpadded) positions.
    pub tokens: usize,
}

impl HostBatch {
    /// The batch and its targets on `backend`, for a model's forward and loss.
    pub fn upload<B: Backend>(
        &self,
        backend: &B,
        shape: Shape,
    ) -> Result<(Batch<B>, B::Ids), KernelError> {
        let batch = Batch::new(backend, shape, &self.ids, self.lengths.as_deref(), None)?;
        Ok((batch, backend.upload_ids(&self.targets)?))
    }
}

/// The random stream of one step: a function of `(seed, fold, step)` only.
pub fn step_rng(seed: u64, fold: usize, step: u64) -> Rng {
    Rng::new(seed).fork(1 + fold as u64).fork(step)
}

/// A language-model batch for `step`: each row a window of `len + 1` tokens at a random
/// place (sequences drawn in proportion to their length), targets the next tokens with
/// [`IGNORE_INDEX`] past a row's end; DNA rows reverse-complemented with probability ½
/// when `reverse_complement`.
pub fn lm_batch(
    train: &[Vec<u8>],
    batch: usize,
    len: usize,
    rng: &mut Rng,
    reverse_complement: bool,
) -> HostBatch {
    let total: u64 = train.iter().map(|s| s.len() as u64).sum();
    let mut ids = vec![u32::from(tokenizer::PAD); batch * len];
    let mut targets = vec![IGNORE_INDEX; batch * len];
    let mut count = 0;
    let mut tokens = 0;
    for row in 0..batch {
        let mut pick = rng.below(total);
        let seq = train
            .iter()
            .find(|s| {
                let hit = pick < s.len() as u64;
                if !hit {
                    pick -= s.len() as u64;
                }
                hit
            })
            .expect("pick is below the total length");
        let take = seq.len().min(len + 1);
        let start = rng.below((seq.len() - take + 1) as u64) as usize;
        let mut window = seq[start..start + take].to_vec();
        if reverse_complement && rng.uniform() < 0.5 {
            tokenizer::reverse_complement(&mut window);
        }
        for (i, &t) in window[..take - 1].iter().enumerate() {
            ids[row * len + i] = u32::from(t);
            targets[row * len + i] = u32::from(window[i + 1]);
        }
        count += take - 1;
        tokens += take - 1;
    }
    HostBatch {
        ids,
        lengths: None,
        targets,
        count,
        tokens,
    }
}

/// Batches the training log's `val_loss` is measured on, at most this many.
pub const VALIDATION_BATCHES: usize = 8;

/// Fixed language-model batches from the validation sequences (the same at every
/// evaluation, so the curve compares like with like); none without validation data.
pub fn lm_validation(
    validation: &[Vec<u8>],
    batch: usize,
    len: usize,
    seed: u64,
) -> Vec<HostBatch> {
    if validation.iter().all(|s| s.len() < 2) {
        return Vec::new();
    }
    // Stream 0 of the seed: training steps use 1 + fold, epoch orders 1000 + fold.
    let mut rng = Rng::new(seed).fork(0);
    (0..VALIDATION_BATCHES)
        .map(|_| lm_batch(validation, batch, len, &mut rng, false))
        .collect()
}

/// Classification batches of the validation examples (centre crops, in order).
pub fn class_validation(examples: &[&TokenExample], batch: usize, len: usize) -> Vec<HostBatch> {
    examples
        .chunks(batch)
        .take(VALIDATION_BATCHES)
        .map(|chunk| eval_batch(chunk, batch, len, false))
        .collect()
}

/// Row `r` of a classification batch: `tokens` cropped to `len` (at `offset`), right-padded.
fn put_row(ids: &mut [u32], len: usize, row: usize, tokens: &[u8]) -> usize {
    let n = tokens.len().min(len);
    for (i, &t) in tokens[..n].iter().enumerate() {
        ids[row * len + i] = u32::from(t);
    }
    n
}

/// The examples of epoch `epoch` in their seeded order.
pub fn epoch_order(n: usize, seed: u64, fold: usize, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed).fork(1000 + fold as u64).fork(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// A classification batch for `step`: examples in seeded epoch order (each epoch a new
/// permutation), random crops of `len`, optional reverse-complement augmentation.
pub fn class_batch(
    train: &[&TokenExample],
    batch: usize,
    len: usize,
    seed: u64,
    fold: usize,
    step: u64,
    reverse_complement: bool,
) -> HostBatch {
    let n = train.len();
    let mut rng = step_rng(seed, fold, step);
    let mut ids = vec![u32::from(tokenizer::PAD); batch * len];
    let mut lengths = Vec::with_capacity(batch);
    let mut targets = Vec::with_capacity(batch);
    let mut order: Option<(u64, Vec<usize>)> = None;
    for row in 0..batch {
        let global = step * batch as u64 + row as u64;
        let epoch = global / n as u64;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, epoch_order(n, seed, fold, epoch)));
        }
        let example = train[order.as_ref().expect("set").1[(global % n as u64) as usize]];
        let take = example.tokens.len().min(len);
        let start = rng.below((example.tokens.len() - take + 1) as u64) as usize;
        let mut crop = example.tokens[start..start + take].to_vec();
        if reverse_complement && rng.uniform() < 0.5 {
            tokenizer::reverse_complement(&mut crop);
        }
        lengths.push(put_row(&mut ids, len, row, &crop) as u32);
        targets.push(example.label as u32);
    }
    let tokens = lengths.iter().map(|&l| l as usize).sum();
    HostBatch {
        ids,
        lengths: Some(lengths),
        targets,
        count: batch,
        tokens,
    }
}

/// An evaluation batch: `examples` (at most `batch`) centre-cropped to `len`, optionally
/// reverse-complemented; unused rows hold one padding token and an ignored target.
pub fn eval_batch(
    examples: &[&TokenExample],
    batch: usize,
    len: usize,
    reverse_complement: bool,
) -> HostBatch {
    let mut ids = vec![u32::from(tokenizer::PAD); batch * len];
    let mut lengths = vec![1u32; batch];
    for (row, example) in examples.iter().enumerate() {
        let take = example.tokens.len().min(len);
        let start = (example.tokens.len() - take) / 2;
        let mut crop = example.tokens[start..start + take].to_vec();
        if reverse_complement {
            tokenizer::reverse_complement(&mut crop);
        }
        lengths[row] = put_row(&mut ids, len, row, &crop) as u32;
    }
    let tokens = lengths.iter().map(|&l| l as usize).sum();
    HostBatch {
        ids,
        lengths: Some(lengths),
        targets: (0..batch)
            .map(|row| examples.get(row).map_or(IGNORE_INDEX, |e| e.label as u32))
            .collect(),
        count: examples.len(),
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Workflow;

    /// The data section of a language-model workflow whose `[data]` table is `table`.
    fn data_section(table: &str) -> Data {
        let text = format!(
            "name = \"t\"\ntask = \"pretrain\"\n[evaluation]\nmarkov_orders = [0]\n\
             [data]\n{table}"
        );
        Workflow::parse(&text, Path::new("t.toml"), &[])
            .unwrap()
            .data
    }

    fn data_sample(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data-samples")
            .join(rel)
    }

    #[test]
    fn sequences_count_the_bad_records_they_skip() {
        let dir = tempfile::tempdir().unwrap();
        let fasta = dir.path().join("s.fa");
        std::fs::write(&fasta, ">a\nACGTACGT\n>b\nAC-GT\n>c\nGGCCAA\n").unwrap();
        let section = |on_error: &str| {
            data_section(&format!(
                "modality = \"dna\"\nformat = \"sequences\"\nsources = ['{}']\n\
                 on_error = \"{on_error}\"\nsplit = {{ method = \"tail\" }}\n",
                fasta.display()
            ))
        };
        let loaded = load(&section("skip"), 0, 64).unwrap();
        let names: Vec<&str> = loaded
            .examples
            .iter()
            .map(|e| e.id.rsplit(':').next().unwrap())
            .collect();
        assert_eq!((names, loaded.skipped), (vec!["a", "c"], 1));
        let e = load(&section("fail"), 0, 64).unwrap_err().to_string();
        assert!(e.contains("record 1 (b), base 3"), "{e}");
    }

    #[test]
    fn sam_reads_are_restored_to_their_own_orientation_on_request() {
        let sorted_tokens = |file: &str, restore: bool| {
            let data = data_section(&format!(
                "modality = \"dna\"\nformat = \"sequences\"\nsources = ['{}']\n\
                 restore_orientation = {restore}\nsplit = {{ method = \"tail\" }}\n",
                data_sample(file).display()
            ));
            let mut tokens: Vec<Vec<u8>> = load(&data, 0, 64)
                .unwrap()
                .examples
                .into_iter()
                .map(|e| e.tokens)
                .collect();
            tokens.sort();
            tokens
        };
        // The SAM aligns the FASTQ's reads, storing the reverse-strand ones reverse-complemented.
        let reads = sorted_tokens("dna/phix.1.fastq.gz", false);
        assert_eq!(sorted_tokens("dna/phix.se.sam", true), reads);
        assert_ne!(sorted_tokens("dna/phix.se.sam", false), reads);
    }

    #[test]
    fn audio_normalization_is_chosen_in_the_data_section() {
        // The smallest and largest linear token of every clip.
        let extremes = |normalization: &str| -> Vec<(u8, u8)> {
            let data = data_section(&format!(
                "modality = \"audio\"\nformat = \"fsdd\"\nsources = ['{}']\n\
                 quantizer = \"linear\"\nnormalization = \"{normalization}\"\n",
                data_sample("audio/fsdd").display()
            ));
            load(&data, 0, 64)
                .unwrap()
                .examples
                .iter()
                .map(|e| {
                    let lo = *e.tokens.iter().min().unwrap();
                    (lo, *e.tokens.iter().max().unwrap())
                })
                .collect()
        };
        let min_max = extremes("min-max");
        assert_eq!(min_max.len(), 8);
        assert!(min_max.iter().all(|&x| x == (0, 255)), "{min_max:?}");
        // Peak normalisation reaches one end of the range, not always both.
        let peak = extremes("peak");
        assert!(
            peak.iter().all(|&(lo, hi)| lo == 0 || hi == 255),
            "{peak:?}"
        );
        assert!(peak.iter().any(|&x| x != (0, 255)), "{peak:?}");
        // The recordings as they are stay inside it.
        let none = extremes("none");
        assert!(none.iter().all(|&(lo, hi)| lo > 0 && hi < 255), "{none:?}");
    }

    fn example(label: usize, tokens: Vec<u8>) -> TokenExample {
        TokenExample {
            id: format!("e{label}"),
            tokens,
            label,
            split: Split::Train,
            fold: 0,
        }
    }

    #[test]
    fn lm_batches_depend_only_on_the_step_and_shift_targets() {
        let train = vec![
            (0..50u8).map(|i| 5 + i % 4).collect::<Vec<_>>(),
            vec![5, 6, 7],
        ];
        let a = lm_batch(&train, 3, 8, &mut step_rng(1, 0, 4), false);
        let b = lm_batch(&train, 3, 8, &mut step_rng(1, 0, 4), false);
        let c = lm_batch(&train, 3, 8, &mut step_rng(1, 0, 5), false);
        assert_eq!(a, b);
        assert_ne!(a.ids, c.ids);
        for row in 0..3 {
            for i in 0..7 {
                let (id, next, target) = (
                    a.ids[row * 8 + i],
                    a.ids[row * 8 + i + 1],
                    a.targets[row * 8 + i],
                );
                if target != IGNORE_INDEX && a.targets[row * 8 + i + 1] != IGNORE_INDEX {
                    assert_eq!(target, next, "row {row} position {i} after {id}");
                }
            }
        }
        assert_eq!(
            a.count,
            a.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
        );
    }

    #[test]
    fn class_batches_visit_every_example_once_per_epoch() {
        let examples: Vec<TokenExample> = (0..10).map(|i| example(i, vec![5; 3 + i])).collect();
        let refs: Vec<&TokenExample> = examples.iter().collect();
        let mut seen = Vec::new();
        for step in 0..5 {
            let b = class_batch(&refs, 2, 6, 9, 0, step, false);
            for (row, &label) in b.targets.iter().enumerate() {
                assert_eq!(
                    b.lengths.as_ref().unwrap()[row] as usize,
                    (3 + label as usize).min(6)
                );
                seen.push(label);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<u32>>());
        assert_eq!(
            class_batch(&refs, 2, 6, 9, 0, 3, true),
            class_batch(&refs, 2, 6, 9, 0, 3, true)
        );
    }

    #[test]
    fn tail_split_holds_out_the_end_of_every_sequence() {
        let loaded = Loaded {
            examples: vec![example(0, (0..100).map(|i| i as u8).collect())],
            ..Default::default()
        };
        let c = Corpus::new(&loaded, SplitMethod::Tail, 0.1, 0.2);
        assert_eq!(c.train[0], (0..70).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(c.validation[0].len(), 10);
        assert_eq!(c.test[0][0], 80);
    }

    #[test]
    fn eval_batches_centre_crop_and_pad() {
        let e = example(1, (0..10).collect());
        let b = eval_batch(&[&e], 2, 4, false);
        assert_eq!(&b.ids[..4], &[3, 4, 5, 6]);
        assert_eq!(b.lengths, Some(vec![4, 1]));
        assert_eq!(b.count, 1);
    }
}
