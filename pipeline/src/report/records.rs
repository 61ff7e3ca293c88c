//! Reading the raw files of a run folder (see the run folder contract): the training log,
//! predictions, label names, language-model scores, manifest and generated clips. A file
//! that is absent reads as `None`; a malformed one is an error naming the file and line.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use polars::prelude::{CsvReadOptions, DataFrame};
use serde::Serialize;

use super::ReportError;

/// One optimiser step of `train_log.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainStep {
    pub step: u64,
    pub fold: u32,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub val_loss: Option<f64>,
}

/// One example of `predictions.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub split: String,
    pub fold: u32,
    pub id: String,
    pub length: u64,
    pub label: usize,
    pub predicted: usize,
    /// Softmax probability of each class.
    pub probabilities: Vec<f64>,
}

/// The predictions of a classification run with the name of each class id.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    pub class_names: Vec<String>,
    pub rows: Vec<Prediction>,
}

/// One row of `lm_eval.csv`: the bits per token of the trained model or of a baseline.
///
/// ```
/// let score = seqmamba::report::LmScore {
///     split: "test".into(),
///     model: "markov-2".into(),
///     bits_per_token: 1.93,
///     tokens: 10_000,
/// };
/// assert!(score.is_baseline());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LmScore {
    pub split: String,
    pub model: String,
    pub bits_per_token: f64,
    pub tokens: u64,
}

impl LmScore {
    /// Whether this row is a baseline rather than the trained model (`mamba`).
    ///
    /// ```
    /// let mut score = seqmamba::report::LmScore {
    ///     split: "test".into(), model: "mamba".into(), bits_per_token: 1.9, tokens: 10,
    /// };
    /// assert!(!score.is_baseline());
    /// ```
    pub fn is_baseline(&self) -> bool {
        self.model != "mamba"
    }
}

/// One row of `predicted_labels.csv` (predict runs): how many records a label won and the
/// mean probability the model gave them.
///
/// ```
/// let row = seqmamba::report::PredictedLabel {
///     label: "promoter".into(), records: 120, share: 0.6, mean_probability: 0.83,
/// };
/// assert_eq!(row.records, 120);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PredictedLabel {
    pub label: String,
    pub records: u64,
    pub share: f64,
    pub mean_probability: f64,
}

/// Everything the report reads from one run folder.
#[derive(Clone, Debug, Default)]
pub struct RunRecords {
    pub manifest: Option<serde_json::Value>,
    pub training: Option<Vec<TrainStep>>,
    pub predictions: Option<Predictions>,
    pub lm_eval: Option<Vec<LmScore>>,
    pub predicted_labels: Option<Vec<PredictedLabel>>,
    /// `generated/sample-<i>.wav` in order of `i`.
    pub generated_audio: Vec<(usize, PathBuf)>,
    /// `generated/sample-<i>.fa` in order of `i`.
    pub generated_dna: Vec<(usize, PathBuf)>,
}

impl RunRecords {
    /// Reads every raw file of `run_dir` that exists; errors when there is none at all.
    pub fn load(run_dir: &Path) -> Result<Self, ReportError> {
        let metadata = std::fs::metadata(run_dir).map_err(|source| ReportError::Io {
            path: run_dir.to_path_buf(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(ReportError::NoRecords {
                path: run_dir.to_path_buf(),
            });
        }
        let manifest = read_json(&run_dir.join("manifest.json"))?;
        let labels: Option<Vec<String>> = read_json(&run_dir.join("labels.json"))?;
        let records = Self {
            manifest,
            training: CsvTable::read(&run_dir.join("train_log.csv"))?
                .map(|t| read_training(&t))
                .transpose()?,
            predictions: CsvTable::read(&run_dir.join("predictions.csv"))?
                .map(|t| read_predictions(&t, labels, &run_dir.join("labels.json")))
                .transpose()?,
            lm_eval: CsvTable::read(&run_dir.join("lm_eval.csv"))?
                .map(|t| read_lm_eval(&t))
                .transpose()?,
            predicted_labels: CsvTable::read(&run_dir.join("predicted_labels.csv"))?
                .map(|t| read_predicted_labels(&t))
                .transpose()?,
            generated_audio: generated(run_dir, "wav")?,
            generated_dna: generated(run_dir, "fa")?,
        };
        if records.training.is_none()
            && records.predictions.is_none()
            && records.lm_eval.is_none()
            && records.predicted_labels.is_none()
            && records.generated_audio.is_empty()
            && records.generated_dna.is_empty()
        {
            return Err(ReportError::NoRecords {
                path: run_dir.to_path_buf(),
            });
        }
        Ok(records)
    }

    /// A string field of `manifest.json`, if present.
    pub fn manifest_str(&self, key: &str) -> Option<&str> {
        self.manifest.as_ref()?.get(key)?.as_str()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ReportError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReportError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ReportError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `generated/sample-<i>.<extension>`, sorted by `i`.
fn generated(run_dir: &Path, extension: &str) -> Result<Vec<(usize, PathBuf)>, ReportError> {
    let dir = run_dir.join("generated");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReportError::Io { path: dir, source }),
    };
    let mut samples = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| ReportError::Io {
                path: dir.clone(),
                source,
            })?
            .path();
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("sample-"))
            .and_then(|n| n.strip_suffix(&format!(".{extension}")))
            .and_then(|i| i.parse().ok());
        if let Some(index) = index {
            samples.push((index, path));
        }
    }
    samples.sort();
    Ok(samples)
}

/// A CSV file read by polars with every column as text, so each value is parsed here and a
/// bad one reported with its line.
struct CsvTable {
    path: PathBuf,
    frame: DataFrame,
}

impl CsvTable {
    fn read(path: &Path) -> Result<Option<Self>, ReportError> {
        if !path.exists() {
            return Ok(None);
        }
        let table = |source| ReportError::Table {
            path: path.to_path_buf(),
            source,
        };
        let frame = CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .and_then(polars::prelude::SerReader::finish)
            .map_err(|source| {
                match std::fs::read_to_string(path)
                    .ok()
                    .as_deref()
                    .and_then(first_ragged_record)
                {
                    Some(ragged) => ReportError::Csv {
                        path: path.to_path_buf(),
                        line: ragged.line,
                        message: format!(
                            "{} fields but the header has {}",
                            ragged.fields, ragged.expected
                        ),
                    },
                    None => table(source),
                }
            })?;
        Ok(Some(Self {
            path: path.to_path_buf(),
            frame,
        }))
    }

    fn has(&self, column: &str) -> bool {
        self.frame.column(column).is_ok()
    }

    fn error(&self, row: usize, message: String) -> ReportError {
        ReportError::Csv {
            path: self.path.clone(),
            line: row + 2,
            message,
        }
    }

    /// The cells of `column`, empty ones as `None`.
    fn cells(&self, column: &str) -> Result<Vec<Option<&str>>, ReportError> {
        let cells = self
            .frame
            .column(column)
            .and_then(|c| c.str())
            .map_err(|_| ReportError::Csv {
                path: self.path.clone(),
                line: 1,
                message: format!("no column {column:?} in the header"),
            })?;
        Ok(cells
            .iter()
            .map(|cell| cell.filter(|s| !s.trim().is_empty()))
            .collect())
    }

    fn optional<T: FromStr>(&self, column: &str) -> Result<Vec<Option<T>>, ReportError> {
        self.cells(column)?
            .into_iter()
            .enumerate()
            .map(|(row, cell)| {
                cell.map(|text| {
                    text.trim().parse().map_err(|_| {
                        self.error(
                            row,
                            format!(
                                "{column}: not a valid {}: {text:?}",
                                std::any::type_name::<T>()
                            ),
                        )
                    })
                })
                .transpose()
            })
            .collect()
    }

    fn required<T: FromStr>(&self, column: &str) -> Result<Vec<T>, ReportError> {
        self.optional(column)?
            .into_iter()
            .enumerate()
            .map(|(row, value)| {
                value.ok_or_else(|| self.error(row, format!("{column}: missing value")))
            })
            .collect()
    }

    fn text(&self, column: &str) -> Result<Vec<String>, ReportError> {
        self.required(column)
    }
}

/// A record whose field count differs from the header's.
#[derive(Debug, PartialEq)]
struct RaggedRecord {
    line: usize,
    fields: usize,
    expected: usize,
}

/// Finds the first record with more or fewer fields than the header, counting commas
/// outside double quotes; polars' own error does not say where it is.
fn first_ragged_record(text: &str) -> Option<RaggedRecord> {
    let (mut line, mut record_line, mut fields, mut quoted) = (1, 1, 1, false);
    let mut expected = None;
    let mut empty = true;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields += 1,
            '\n' => {
                line += 1;
                if quoted {
                    continue;
                }
                if !empty {
                    match expected {
                        None => expected = Some(fields),
                        Some(e) if e != fields => {
                            return Some(RaggedRecord {
                                line: record_line,
                                fields,
                                expected: e,
                            });
                        }
                        Some(_) => {}
                    }
                }
                (record_line, fields, empty) = (line, 1, true);
                continue;
            }
            '\r' => continue,
            _ => {}
        }
        empty = false;
    }
    match expected {
        Some(e) if !empty && e != fields => Some(RaggedRecord {
            line: record_line,
            fields,
            expected: e,
        }),
        _ => None,
    }
}

fn read_training(table: &CsvTable) -> Result<Vec<TrainStep>, ReportError> {
    let step = table.required("step")?;
    let fold = table.required("fold")?;
    let loss = table.required("loss")?;
    let grad_norm = table.required("grad_norm")?;
    let lr = table.required("lr")?;
    let tokens = table.required("tokens")?;
    let seconds = table.required("seconds")?;
    let val_loss = if table.has("val_loss") {
        table.optional("val_loss")?
    } else {
        vec![None; step.len()]
    };
    Ok((0..step.len())
        .map(|i| TrainStep {
            step: step[i],
            fold: fold[i],
            loss: loss[i],
            grad_norm: grad_norm[i],
            lr: lr[i],
            tokens: tokens[i],
            seconds: seconds[i],
            val_loss: val_loss[i],
        })
        .collect())
}

fn read_predictions(
    table: &CsvTable,
    labels: Option<Vec<String>>,
    labels_path: &Path,
) -> Result<Predictions, ReportError> {
    let classes = (0..)
        .take_while(|k| table.has(&format!("prob_{k}")))
        .count();
    if classes < 2 {
        return Err(ReportError::Csv {
            path: table.path.clone(),
            line: 1,
            message: "needs columns prob_0 and prob_1 at least".into(),
        });
    }
    let split = table.text("split")?;
    let fold = table.required("fold")?;
    let id = table.text("id")?;
    let length = table.required("length")?;
    let label: Vec<usize> = table.required("label")?;
    let predicted: Vec<usize> = table.required("predicted")?;
    let probabilities = (0..classes)
        .map(|k| table.required::<f64>(&format!("prob_{k}")))
        .collect::<Result<Vec<_>, _>>()?;
    for row in 0..split.len() {
        for (column, id) in [("label", label[row]), ("predicted", predicted[row])] {
            if id >= classes {
                return Err(table.error(
                    row,
                    format!("{column}: class id {id} but only {classes} prob_ columns"),
                ));
            }
        }
    }
    let class_names = match labels {
        Some(names) if names.len() != classes => {
            return Err(ReportError::Invalid {
                path: labels_path.to_path_buf(),
                message: format!(
                    "{} label names but predictions.csv has {classes} classes",
                    names.len()
                ),
            });
        }
        Some(names) => names,
        None => names_from_predictions(table, &label, classes)?,
    };
    let rows = (0..split.len())
        .map(|row| Prediction {
            split: split[row].clone(),
            fold: fold[row],
            id: id[row].clone(),
            length: length[row],
            label: label[row],
            predicted: predicted[row],
            probabilities: probabilities.iter().map(|p| p[row]).collect(),
        })
        .collect();
    Ok(Predictions { class_names, rows })
}

/// Without labels.json, the `label_name` column names the classes (ids never seen as a
/// label are named by their number).
fn names_from_predictions(
    table: &CsvTable,
    label: &[usize],
    classes: usize,
) -> Result<Vec<String>, ReportError> {
    let mut names: Vec<String> = (0..classes).map(|k| k.to_string()).collect();
    if table.has("label_name") {
        for (row, name) in table.text("label_name")?.into_iter().enumerate() {
            names[label[row]] = name;
        }
    }
    Ok(names)
}

fn read_lm_eval(table: &CsvTable) -> Result<Vec<LmScore>, ReportError> {
    let split = table.text("split")?;
    let model = table.text("model")?;
    let bits = table.required("bits_per_token")?;
    let tokens = table.required("tokens")?;
    Ok((0..split.len())
        .map(|i| LmScore {
            split: split[i].clone(),
            model: model[i].clone(),
            bits_per_token: bits[i],
            tokens: tokens[i],
        })
        .collect())
}

fn read_predicted_labels(table: &CsvTable) -> Result<Vec<PredictedLabel>, ReportError> {
    let label = table.text("label")?;
    let records = table.required("records")?;
    let share = table.required("share")?;
    let mean = table.required("mean_probability")?;
    Ok((0..label.len())
        .map(|i| PredictedLabel {
            label: label[i].clone(),
            records: records[i],
            share: share[i],
            mean_probability: mean[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_training_log_with_optional_val_loss() {
        let dir = run_with(&[(
            "train_log.csv",
            "step,fold,loss,grad_norm,lr,tokens,seconds,val_loss\n\
             1,0,2.5,1.0,0.001,64,0.1,\n\
             2,0,2.0,0.9,0.001,128,0.2,2.2\n",
        )]);
        let records = RunRecords::load(dir.path()).unwrap();
        let log = records.training.unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].val_loss, None);
        assert_eq!(log[1].val_loss, Some(2.2));
        assert_eq!((log[1].step, log[1].tokens, log[1].loss), (2, 128, 2.0));
        assert!(records.predictions.is_none() && records.lm_eval.is_none());
    }

    #[test]
    fn bad_value_names_file_and_line() {
        let dir = run_with(&[(
            "lm_eval.csv",
            "split,model,bits_per_token,tokens\ntest,mamba,1.9,100\ntest,deflate,abc,100\n",
        )]);
        let error = RunRecords::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("lm_eval.csv:3:"), "{error}");
        assert!(error.contains("bits_per_token"), "{error}");
    }

    #[test]
    fn ragged_rows_are_errors_naming_the_file() {
        let header = "split,model,bits_per_token,tokens\n";
        for body in ["test,mamba,1.9\n", "test,mamba,1.9,100,7\n"] {
            let dir = run_with(&[(
                "lm_eval.csv",
                &format!("{header}test,deflate,2.1,100\n{body}"),
            )]);
            let error = RunRecords::load(dir.path()).unwrap_err().to_string();
            assert!(error.contains("lm_eval.csv:3:"), "{error}");
        }
    }

    #[test]
    fn ragged_record_search_respects_quotes() {
        assert_eq!(first_ragged_record("a,b\n1,2\n\"x,\ny\",3\n"), None);
        assert_eq!(
            first_ragged_record("a,b\r\n1,2\r\n\"x,y\",3,4\r\n"),
            Some(RaggedRecord {
                line: 3,
                fields: 3,
                expected: 2
            })
        );
        assert_eq!(
            first_ragged_record("a,b\n\"1\n2\",3\n4"),
            Some(RaggedRecord {
                line: 4,
                fields: 1,
                expected: 2
            })
        );
    }

    #[test]
    fn missing_column_and_out_of_range_class_are_errors() {
        let dir = run_with(&[("lm_eval.csv", "split,model,tokens\ntest,mamba,100\n")]);
        let error = RunRecords::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("lm_eval.csv:1:") && error.contains("bits_per_token"),
            "{error}"
        );

        let header =
            "split,fold,id,length,label,label_name,predicted,predicted_name,prob_0,prob_1\n";
        let dir = run_with(&[(
            "predictions.csv",
            &format!("{header}test,0,a,10,0,x,0,x,0.9,0.1\ntest,0,b,10,2,z,0,x,0.9,0.1\n"),
        )]);
        let error = RunRecords::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("predictions.csv:3:") && error.contains("label"),
            "{error}"
        );
    }

    #[test]
    fn label_names_come_from_labels_json_or_the_label_name_column() {
        let header =
            "split,fold,id,length,label,label_name,predicted,predicted_name,prob_0,prob_1\n";
        let body = format!("{header}test,0,a,10,1,pos,0,neg,0.6,0.4\n");
        let dir = run_with(&[("predictions.csv", &body)]);
        let names = RunRecords::load(dir.path())
            .unwrap()
            .predictions
            .unwrap()
            .class_names;
        assert_eq!(names, ["0", "pos"]);

        let dir = run_with(&[
            ("predictions.csv", &body),
            ("labels.json", r#"["neg","pos"]"#),
        ]);
        let names = RunRecords::load(dir.path())
            .unwrap()
            .predictions
            .unwrap()
            .class_names;
        assert_eq!(names, ["neg", "pos"]);

        let dir = run_with(&[
            ("predictions.csv", &body),
            ("labels.json", r#"["a","b","c"]"#),
        ]);
        let error = RunRecords::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("labels.json") && error.contains("3 label names"),
            "{error}"
        );
    }

    #[test]
    fn empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            RunRecords::load(dir.path()),
            Err(ReportError::NoRecords { .. })
        ));
    }
}
