//! `report.md`: the key tables in Markdown and links to the plots.

use std::fmt::Write;

use super::ReportError;
use super::analysis::{ALL_FOLDS, Classification};
use super::records::{RunRecords, TrainStep};

/// A Markdown table; `|` in cells is escaped.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!("| {} |\n", header.join(" | "));
    out += &format!("|{}\n", "---|".repeat(header.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        out += &format!("| {} |\n", cells.join(" | "));
    }
    out
}

/// Four decimals, or `–` for a missing value.
pub fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.4}"))
}

/// Everything `report.md` shows, computed and written by the caller.
pub struct Contents<'a> {
    pub records: &'a RunRecords,
    pub classification: &'a Classification,
    /// Link to each plot of the pooled confusion matrix, by split.
    pub confusion_plots: &'a [(String, String)],
    pub training_plot: Option<&'a str>,
    /// `(sample index, seconds, sample rate, waveform link, spectrogram link)`.
    pub audio_plots: &'a [(usize, f64, u32, String, String)],
    pub tables: &'a [String],
}

pub fn render(title: &str, c: &Contents) -> Result<String, ReportError> {
    let mut md = format!("# Run report: {title}\n\n");
    manifest(&mut md, c.records);
    if let Some(log) = &c.records.training {
        training(&mut md, log, c.training_plot);
    }
    if let Some(predictions) = &c.records.predictions {
        classification(
            &mut md,
            c.classification,
            &predictions.class_names,
            c.confusion_plots,
        );
    }
    if let Some(scores) = &c.records.lm_eval {
        md += "## Language model\n\nBits per token (per base for DNA, per sample for audio); \
               `above model` is a row's bits minus the model's on the same split.\n\n";
        let rows: Vec<Vec<String>> = scores
            .iter()
            .map(|s| {
                let model = scores
                    .iter()
                    .find(|m| m.split == s.split && !m.is_baseline())
                    .map(|m| s.bits_per_token - m.bits_per_token);
                vec![
                    s.split.clone(),
                    s.model.clone(),
                    number(Some(s.bits_per_token)),
                    s.tokens.to_string(),
                    number(model),
                ]
            })
            .collect();
        md += &table(
            &["split", "model", "bits/token", "tokens", "above model"],
            &rows,
        );
        md += "\n";
    }
    if let Some(rows) = &c.records.predicted_labels {
        md += "## Predictions\n\nRecords of `predictions.tsv` by predicted label, and the mean \
               probability the model gave the label it chose.\n\n";
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.label.clone(),
                    r.records.to_string(),
                    number(Some(r.share)),
                    number(Some(r.mean_probability)),
                ]
            })
            .collect();
        md += &table(&["label", "records", "share", "mean probability"], &rows);
        md += "\n";
    }
    if !c.audio_plots.is_empty() || !c.records.generated_dna.is_empty() {
        md += "## Generated samples\n\n";
        for (index, seconds, rate, waveform, spectrogram) in c.audio_plots {
            let _ = writeln!(
                md,
                "### sample-{index}.wav ({seconds:.2} s at {rate} Hz)\n\n\
                 ![waveform of sample {index}]({waveform})\n\n\
                 ![spectrogram of sample {index}]({spectrogram})\n"
            );
        }
        for (index, path) in &c.records.generated_dna {
            let bases = std::fs::read_to_string(path)
                .map_err(|source| ReportError::Io {
                    path: path.clone(),
                    source,
                })?
                .lines()
                .filter(|l| !l.starts_with('>'))
                .map(|l| l.trim().len())
                .sum::<usize>();
            let _ = writeln!(
                md,
                "- [sample-{index}.fa](generated/sample-{index}.fa): {bases} bases"
            );
        }
        md += "\n";
    }
    md += "## Tables\n\n";
    for name in c.tables {
        let _ = writeln!(
            md,
            "- `{name}`: [CSV](tables/{name}.csv), [Parquet](tables/{name}.parquet)"
        );
    }
    Ok(md)
}

fn manifest(md: &mut String, records: &RunRecords) {
    let Some(manifest) = &records.manifest else {
        return;
    };
    let keys = [
        "task",
        "seed",
        "device",
        "threads",
        "world_size",
        "program_version",
        "git_commit",
        "started",
        "finished",
    ];
    let rows: Vec<Vec<String>> = keys
        .iter()
        .filter_map(|&key| {
            let value = manifest.get(key)?;
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            Some(vec![key.to_string(), shown])
        })
        .collect();
    *md += &table(&["field", "value"], &rows);
    *md += "\n";
    if let Some(stages) = manifest.get("stages").and_then(|s| s.as_array()) {
        let rows: Vec<Vec<String>> = stages
            .iter()
            .map(|s| {
                vec![
                    s.get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    number(s.get("seconds").and_then(|v| v.as_f64())),
                ]
            })
            .collect();
        *md += &table(&["stage", "seconds"], &rows);
        *md += "\n";
    }
}

/// The last logged step of each fold.
pub fn last_steps(log: &[TrainStep]) -> Vec<&TrainStep> {
    let mut folds: Vec<u32> = log.iter().map(|s| s.fold).collect();
    folds.sort_unstable();
    folds.dedup();
    folds
        .iter()
        .filter_map(|&f| log.iter().filter(|s| s.fold == f).max_by_key(|s| s.step))
        .collect()
}

fn training(md: &mut String, log: &[TrainStep], plot: Option<&str>) {
    *md += "## Training\n\n";
    let rows: Vec<Vec<String>> = last_steps(log)
        .into_iter()
        .map(|last| {
            let steps = log.iter().filter(|s| s.fold == last.fold).count();
            let last_val = log
                .iter()
                .filter(|s| s.fold == last.fold && s.val_loss.is_some())
                .max_by_key(|s| s.step)
                .and_then(|s| s.val_loss);
            vec![
                last.fold.to_string(),
                steps.to_string(),
                last.step.to_string(),
                number(Some(last.loss)),
                number(last_val),
                last.tokens.to_string(),
                number(Some(last.seconds)),
            ]
        })
        .collect();
    *md += &table(
        &[
            "fold",
            "steps",
            "last step",
            "final loss",
            "last val loss",
            "tokens",
            "seconds",
        ],
        &rows,
    );
    if let Some(plot) = plot {
        let _ = write!(md, "\n![Training loss against step]({plot})\n");
    }
    *md += "\n";
}

fn classification(
    md: &mut String,
    classification: &Classification,
    names: &[String],
    plots: &[(String, String)],
) {
    *md += "## Classification\n\n`all`: predictions of every fold pooled; `mean`: mean over folds.\n\n";
    let rows: Vec<Vec<String>> = classification
        .metrics
        .iter()
        .map(|m| {
            vec![
                m.split.clone(),
                m.fold.clone(),
                m.examples.to_string(),
                number(Some(m.accuracy)),
                number(Some(m.macro_f1)),
                number(Some(m.mcc)),
                number(m.auroc),
            ]
        })
        .collect();
    *md += &table(
        &[
            "split", "fold", "examples", "accuracy", "macro-F1", "MCC", "AUROC",
        ],
        &rows,
    );
    *md += "\n";
    let pooled = classification
        .groups
        .iter()
        .filter(|g| g.metrics.fold == ALL_FOLDS);
    for g in pooled {
        let split = &g.metrics.split;
        let _ = write!(md, "### {split}: per class (all folds)\n\n");
        let rows: Vec<Vec<String>> = (0..g.confusion.classes())
            .map(|k| {
                let s = g.confusion.class_scores(k);
                vec![
                    names[k].clone(),
                    number(Some(s.precision)),
                    number(Some(s.recall)),
                    number(Some(s.f1)),
                    s.support.to_string(),
                ]
            })
            .collect();
        *md += &table(&["class", "precision", "recall", "F1", "support"], &rows);
        let _ = write!(
            md,
            "\n### {split}: confusion matrix (rows: label, columns: predicted)\n\n"
        );
        let mut header = vec!["label \\ predicted"];
        header.extend(names.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = (0..g.confusion.classes())
            .map(|l| {
                std::iter::once(names[l].clone())
                    .chain((0..g.confusion.classes()).map(|p| g.confusion.count(l, p).to_string()))
                    .collect()
            })
            .collect();
        *md += &table(&header, &rows);
        if let Some((_, link)) = plots.iter().find(|(s, _)| s == split) {
            let _ = write!(md, "\n![Confusion matrix, {split}]({link})\n");
        }
        let _ = write!(md, "\n### {split}: accuracy by sequence length\n\n");
        let rows: Vec<Vec<String>> = g
            .by_length
            .iter()
            .map(|b| {
                vec![
                    format!("{}–{}", b.low, b.high),
                    b.examples.to_string(),
                    number(Some(b.accuracy)),
                ]
            })
            .collect();
        *md += &table(&["length", "examples", "accuracy"], &rows);
        *md += "\n";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_escapes_pipes_and_numbers_round() {
        let t = table(&["a", "b"], &[vec!["x|y".into(), number(Some(0.123456))]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| x\\|y | 0.1235 |\n");
        assert_eq!(number(None), "–");
    }
}
