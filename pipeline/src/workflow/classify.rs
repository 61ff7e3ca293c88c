//! Classification: train a classifier head (per fold under k-fold) and write the test (and
//! validation) predictions with their softmax probabilities, optionally averaged with the
//! reverse complement's.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use seqmamba_kernels::Backend;
use seqmamba_modalities::dataset::splits::Split;

use super::WorkflowError;
use super::data::{self, TokenExample, class_batch, class_validation, eval_batch};
use super::run::{Batches, RunContext, csv_field};
use super::schema::{Modality, SplitMethod};
use crate::checkpoint::Checkpoint;
use crate::fsutil::AtomicFile;
use crate::model::{Activations, Batch, Head, Model, Shape};
use crate::predict::{PredictOptions, classify_files, ensure_classifier};

/// Softmax probabilities of every example, in order, batch by batch (centre crops of
/// `len`); with `reverse_complement` averaged with those of the reverse complement.
pub fn predict<B: Backend>(
    model: &Model<B>,
    examples: &[&TokenExample],
    batch: usize,
    len: usize,
    reverse_complement: bool,
) -> Result<Vec<Vec<f64>>, WorkflowError> {
    let mut predictor = Predictor::new(model, batch, reverse_complement);
    let mut probs = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch) {
        probs.extend(predictor.probabilities(chunk, len)?);
    }
    Ok(probs)
}

/// A classifier's probabilities batch by batch, with the activations of each crop length
/// allocated once.
pub struct Predictor<'m, B: Backend> {
    model: &'m Model<B>,
    batch: usize,
    reverse_complement: bool,
    activations: HashMap<usize, Activations<B>>,
}

impl<'m, B: Backend> Predictor<'m, B> {
    /// Batches of up to `batch` rows; with `reverse_complement` (DNA) each example's
    /// probabilities are averaged with its reverse complement's.
    pub fn new(model: &'m Model<B>, batch: usize, reverse_complement: bool) -> Self {
        Self {
            model,
            batch,
            reverse_complement,
            activations: HashMap::new(),
        }
    }

    /// Softmax probabilities of up to `batch` examples, centre crops of `len` positions
    /// (shorter examples are right-padded, which does not change their result).
    pub fn probabilities(
        &mut self,
        examples: &[&TokenExample],
        len: usize,
    ) -> Result<Vec<Vec<f64>>, WorkflowError> {
        assert!(
            examples.len() <= self.batch,
            "more examples than the batch holds"
        );
        let model = self.model;
        let be = &model.backend;
        let shape = Shape {
            batch: self.batch,
            len,
        };
        let acts = match self.activations.entry(len) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => slot.insert(model.activations(shape, false)?),
        };
        let classes = model.logit_width();
        let views: &[bool] = if self.reverse_complement {
            &[false, true]
        } else {
            &[false]
        };
        let mut sums = vec![vec![0.0f64; classes]; examples.len()];
        for &rc in views {
            let host = eval_batch(examples, self.batch, len, rc);
            let b = Batch::new(be, shape, &host.ids, host.lengths.as_deref(), None)?;
            model.forward(&b, acts, None)?;
            let logits = be.download(be.all(&acts.logits))?;
            for (row, sum) in sums.iter_mut().enumerate() {
                let p = softmax(&logits[row * classes..(row + 1) * classes]);
                sum.iter_mut()
                    .zip(p)
                    .for_each(|(s, p)| *s += p / views.len() as f64);
            }
        }
        Ok(sums)
    }
}

/// Softmax in f64.
///
/// ```
/// let p = seqmamba::workflow::classify::softmax(&[0.0, (3.0f32).ln()]);
/// assert!((p[1] - 0.75).abs() < 1e-7);
/// ```
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let top = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - top).exp()).collect();
    let total: f64 = e.iter().sum();
    e.into_iter().map(|x| x / total).collect()
}

/// The most probable class (the first of equals).
///
/// ```
/// assert_eq!(seqmamba::workflow::classify::argmax(&[0.25, 0.5, 0.25]), 1);
/// assert_eq!(seqmamba::workflow::classify::argmax(&[0.5, 0.5]), 0);
/// ```
pub fn argmax(p: &[f64]) -> usize {
    (0..p.len())
        .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// Runs a classification workflow.
pub(crate) fn run<B: Backend>(ctx: &mut RunContext<B>) -> Result<(), WorkflowError> {
    let w = ctx.workflow;
    let loaded = ctx.load_data()?;
    let classes = loaded.labels.len();
    if classes < 2 {
        return Err(WorkflowError::Invalid(format!(
            "classification needs at least two labels, the data has {classes}"
        )));
    }
    let labels_json = serde_json::to_string_pretty(&loaded.labels).expect("strings serialise");
    ctx.write("labels.json", labels_json.as_bytes())?;
    let split = &w.data.split;
    let kfold = split.method == SplitMethod::Kfold;
    let folds = if kfold { split.folds } else { 1 };
    let run_folds = if kfold && split.run_folds > 0 {
        split.run_folds.min(folds)
    } else {
        folds
    };
    if kfold {
        ctx.note(format!(
            "{}-fold cross-validation within the given data ({} of {} folds run): every \
             accuracy is on held-out folds of the same source split",
            folds, run_folds, folds
        ));
    }
    let longest = loaded
        .examples
        .iter()
        .map(|e| e.tokens.len())
        .max()
        .unwrap_or(1);
    let len = w.training.seq_len.min(longest);
    let head = Head::Classifier {
        classes,
        pooling: w.model.pooling,
        bidirectional: w.model.bidirectional,
    };
    let vocab = data::vocab_size(w.data.modality);
    let rc_eval = w.evaluation.reverse_complement && w.data.modality == Modality::Dna;
    let mut lines: Vec<String> = kept_predictions(ctx);
    let mut correct = 0usize;
    let mut tested = 0usize;
    for fold in 0..run_folds {
        let in_train = |e: &&TokenExample| {
            if kfold {
                e.fold != fold
            } else {
                e.split == Split::Train
            }
        };
        let train: Vec<&TokenExample> = loaded.examples.iter().filter(in_train).collect();
        let mut evaluated: Vec<(Split, Vec<&TokenExample>)> = vec![(
            Split::Test,
            loaded
                .examples
                .iter()
                .filter(|e| {
                    if kfold {
                        e.fold == fold
                    } else {
                        e.split == Split::Test
                    }
                })
                .collect(),
        )];
        if !kfold {
            evaluated.push((
                Split::Validation,
                loaded
                    .examples
                    .iter()
                    .filter(|e| e.split == Split::Validation)
                    .collect(),
            ));
        }
        let validation: Vec<&TokenExample> = evaluated
            .iter()
            .filter(|(split, _)| *split == Split::Validation)
            .flat_map(|(_, examples)| examples.iter().copied())
            .collect();
        if train.is_empty() || evaluated[0].1.is_empty() {
            return Err(WorkflowError::Invalid(format!(
                "fold {fold} has {} training and {} test examples; both must be non-empty \
                 (check data.split)",
                train.len(),
                evaluated[0].1.len()
            )));
        }
        let init_seed = w.seed.wrapping_add(fold as u64);
        let (mut model, metadata) = ctx.model(head.clone(), vocab, init_seed, &loaded.labels)?;
        let total = w.training.total_steps(train.len());
        let shape = Shape {
            batch: w.training.batch_size,
            len,
        };
        if !ctx.fold_done(fold) {
            let rc = w.training.reverse_complement;
            let stage = if kfold {
                format!("train fold {fold}")
            } else {
                "train".into()
            };
            ctx.stage(&stage, |c| {
                let batches = Batches {
                    train: |step| class_batch(&train, shape.batch, len, w.seed, fold, step, rc),
                    validation: class_validation(&validation, shape.batch, len),
                };
                c.fit(&mut model, &metadata, shape, total, (fold, folds), batches)
            })?;
        } else {
            ctx.steps += total;
            let final_dir = ctx.checkpoint_root(fold, folds).join("final");
            let checkpoint = crate::checkpoint::Checkpoint::load(&final_dir)?;
            model = Model::new(
                ctx.backend.clone(),
                checkpoint.config,
                checkpoint.metadata.head,
                &checkpoint.params,
            )?;
        }
        let stage = if kfold {
            format!("evaluate fold {fold}")
        } else {
            "evaluate".into()
        };
        let new_lines = ctx.stage(&stage, |_| {
            let mut out = Vec::new();
            for (split, examples) in &evaluated {
                let probs = predict(&model, examples, w.evaluation.batch_size, len, rc_eval)?;
                for (e, p) in examples.iter().zip(&probs) {
                    let predicted = argmax(p);
                    let mut line = format!(
                        "{split},{fold},{},{},{},{},{},{}",
                        csv_field(&e.id),
                        e.tokens.len(),
                        e.label,
                        csv_field(&loaded.labels[e.label]),
                        predicted,
                        csv_field(&loaded.labels[predicted])
                    );
                    for x in p {
                        line.push_str(&format!(",{x}"));
                    }
                    out.push((*split, e.label == predicted, line));
                }
            }
            Ok(out)
        })?;
        if !ctx.fold_done(fold) {
            lines.extend(new_lines.iter().map(|l| l.2.clone()));
        }
        for (split, right, _) in &new_lines {
            if *split == Split::Test {
                tested += 1;
                correct += usize::from(*right);
            }
        }
        write_predictions(ctx, &lines, classes)?;
    }
    ctx.metrics
        .insert("accuracy".into(), correct as f64 / tested.max(1) as f64);
    ctx.metrics.insert("test_examples".into(), tested as f64);
    ctx.metrics.insert("classes".into(), classes as f64);
    Ok(())
}

/// The predict task: `model.checkpoint`, a classifier, on every file of `data.sources`
/// (prepared as the checkpoint records, else as the data section and `training.seq_len`
/// say) into `predictions.tsv`, and `predicted_labels.csv` (records per predicted label).
pub(crate) fn run_predict<B: Backend>(ctx: &mut RunContext<B>) -> Result<(), WorkflowError> {
    let w = ctx.workflow;
    let dir = w
        .model
        .checkpoint
        .as_ref()
        .expect("validate requires model.checkpoint");
    let checkpoint = ctx.stage("load model", |_| Ok(Checkpoint::load(dir)?))?;
    ensure_classifier(&checkpoint.metadata.head)?;
    let spec = match checkpoint.metadata.input.clone() {
        Some(spec) if spec.modality != w.data.modality => {
            return Err(WorkflowError::Invalid(format!(
                "{}: a classifier of {:?} data, but data.modality is {:?}",
                dir.display(),
                spec.modality,
                w.data.modality
            )));
        }
        Some(spec) => spec,
        None => {
            ctx.note(format!(
                "{} does not record how its training examples were made: inputs prepared as \
                 the data section and training.seq_len ({}) say",
                dir.display(),
                w.training.seq_len
            ));
            w.input_spec()
        }
    };
    ctx.stage("hash inputs", |c| c.record_inputs(&w.data.sources))?;
    let labels = checkpoint.metadata.labels.clone();
    let model = Model::new(
        ctx.backend.clone(),
        checkpoint.config,
        checkpoint.metadata.head,
        &checkpoint.params,
    )?;
    let options = PredictOptions {
        batch: w.evaluation.batch_size,
        windows: w.evaluation.windows,
        on_error: w.data.on_error.parse().unwrap_or_default(),
    };
    let summary = ctx.stage("classify", |c| {
        let bar = c.progress(w.data.sources.len() as u64, "classify");
        let path = c.dir.join("predictions.tsv");
        let mut file = AtomicFile::create(&path)?;
        let mut current = None;
        let summary = classify_files(
            &model,
            &labels,
            &spec,
            &w.data.sources,
            options,
            &mut file,
            |p| {
                if current.as_deref() != Some(p) {
                    current = Some(p.to_path_buf());
                    bar.set_message(p.display().to_string());
                    bar.inc(1);
                }
            },
        )?;
        file.commit()?;
        bar.finish_and_clear();
        Ok(summary)
    })?;
    ctx.write(
        "predicted_labels.csv",
        summary.label_table(&labels).as_bytes(),
    )?;
    if summary.skipped > 0 {
        ctx.note(format!(
            "{} bad or empty records were skipped",
            summary.skipped
        ));
    }
    ctx.metrics.insert("records".into(), summary.records as f64);
    ctx.metrics.insert("windows".into(), summary.windows as f64);
    ctx.metrics.insert("classes".into(), labels.len() as f64);
    Ok(())
}

/// Prediction rows of folds a resumed run finished before (none for a fresh run).
fn kept_predictions<B: Backend>(ctx: &RunContext<B>) -> Vec<String> {
    let Some(point) = &ctx.resume else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(ctx.dir.join("predictions.csv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter(|row| {
            row.split(',')
                .nth(1)
                .and_then(|f| f.parse::<usize>().ok())
                .is_some_and(|f| f < point.fold)
        })
        .map(String::from)
        .collect()
}

fn write_predictions<B: Backend>(
    ctx: &RunContext<B>,
    lines: &[String],
    classes: usize,
) -> Result<(), WorkflowError> {
    let mut text = String::from("split,fold,id,length,label,label_name,predicted,predicted_name");
    for c in 0..classes {
        text.push_str(&format!(",prob_{c}"));
    }
    text.push('\n');
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    ctx.write("predictions.csv", text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bidirectional, MambaConfig, PoolingKind};
    use seqmamba_kernels::Cpu;

    #[test]
    fn predictions_do_not_depend_on_the_batch_size_and_rc_averaging_is_symmetric() {
        let head = Head::Classifier {
            classes: 3,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Off,
        };
        let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 10), head, 4).unwrap();
        let examples: Vec<TokenExample> = (0..5)
            .map(|i| TokenExample {
                id: format!("e{i}"),
                tokens: (0..(6 + 3 * i)).map(|j| 5 + ((i + j) % 4) as u8).collect(),
                label: i % 3,
                split: Split::Test,
                fold: 0,
            })
            .collect();
        let refs: Vec<&TokenExample> = examples.iter().collect();
        let a = predict(&model, &refs, 2, 12, false).unwrap();
        let b = predict(&model, &refs, 5, 12, false).unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for (x, y) in p.iter().zip(q) {
                assert!((x - y).abs() < 1e-5, "{p:?} vs {q:?}");
            }
        }
        // Averaging with the reverse complement is the same for a sequence and its RC.
        let mut rc = examples[3].clone();
        seqmamba_modalities::dna::tokenizer::reverse_complement(&mut rc.tokens);
        let x = predict(&model, &[&examples[3]], 1, 16, true).unwrap();
        let y = predict(&model, &[&rc], 1, 16, true).unwrap();
        for (p, q) in x[0].iter().zip(&y[0]) {
            assert!((p - q).abs() < 1e-6);
        }
    }
}
