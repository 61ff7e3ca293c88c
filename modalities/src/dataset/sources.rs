//! Where labeled examples come from: class folders, manifests (TSV/CSV), FASTA headers, FSDD
//! file names and the Genomic Benchmarks CSV.

use std::{
    fs,
    io::BufRead,
    path::{Path, PathBuf},
};

use super::{splits::Split, Dataset, ExampleData, Row};
use crate::dna::{fasta::FastaReader, tokenizer};
use crate::error::{Error, Location, OnError, Result};
use crate::input::{self, io_error};

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(io_error(dir, Location::File))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_error(dir, Location::File))?;
    // Hidden files (.DS_Store, editor swap files) are never examples.
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

fn non_empty(dataset: Dataset, path: &Path) -> Result<Dataset> {
    if dataset.examples.is_empty() {
        return Err(Error::Empty {
            path: path.into(),
            what: "examples",
        });
    }
    Ok(dataset)
}

/// One folder per class: `root/<label>/<file>`; the label is the folder name.
///
/// ```
/// # let root = std::env::temp_dir().join("seqmamba-folders-doc");
/// # let _ = std::fs::remove_dir_all(&root);
/// for (label, file) in [("dog", "a.wav"), ("cat", "b.wav"), ("cat", "c.wav")] {
///     std::fs::create_dir_all(root.join(label)).unwrap();
///     std::fs::write(root.join(label).join(file), b"").unwrap();
/// }
/// let d = seqmamba_modalities::dataset::from_class_folders(&root).unwrap();
/// assert_eq!(d.labels.names(), ["cat", "dog"]);
/// assert_eq!(d.label_counts(), vec![2, 1]);
/// ```
pub fn from_class_folders(root: &Path) -> Result<Dataset> {
    let mut rows: Vec<Row> = Vec::new();
    for class in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = class
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Format {
                path: class.clone(),
                at: Location::File,
                message: "class folder name is not UTF-8".into(),
            })?
            .to_string();
        for file in sorted_entries(&class)?.into_iter().filter(|p| p.is_file()) {
            rows.push((
                file.display().to_string(),
                ExampleData::Path(file),
                label.clone(),
                None,
                None,
            ));
        }
    }
    non_empty(Dataset::from_rows(rows), root)
}

/// Splits one line of a delimited table; double quotes protect delimiters (`""` is a quote).
fn split_fields(line: &str, delimiter: char) -> std::result::Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, c) if c == delimiter => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field");
    }
    fields.push(field);
    Ok(fields)
}

/// A manifest: a TSV (`.tsv`, `.tsv.gz`) or CSV (otherwise) table with a header row naming
/// its columns: `path` (relative to the manifest's folder) or `sequence`/`seq` (inline DNA),
/// `label`, and optionally `split` (train/validation/test) and `group`. A bad row (bad base,
/// unknown split, missing field) is an error naming the line, or skipped and counted under
/// [`OnError::Skip`]. Returns the dataset and the number of skipped rows.
///
/// ```
/// # let dir = std::env::temp_dir().join("seqmamba-manifest-doc");
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("m.tsv");
/// std::fs::write(&path, "sequence\tlabel\tsplit\tgroup\nACGT\tyes\ttrain\tg1\nGGNN\tno\ttest\tg2\n").unwrap();
/// use seqmamba_modalities::{dataset::from_manifest, error::OnError};
/// let (d, skipped) = from_manifest(&path, OnError::Fail).unwrap();
/// assert_eq!((d.examples.len(), skipped), (2, 0));
/// assert_eq!(d.examples[1].group.as_deref(), Some("g2"));
/// ```
pub fn from_manifest(path: &Path, on_error: OnError) -> Result<(Dataset, u64)> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let delimiter = if name.ends_with(".tsv") || name.ends_with(".tsv.gz") {
        '\t'
    } else {
        ','
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let (reader, _) = input::open(path)?;
    let mut lines = reader.lines().enumerate();
    let format_error = |line: usize, message: String| Error::Format {
        path: path.into(),
        at: Location::Line(line as u64 + 1),
        message,
    };
    let header = match lines.next() {
        None => {
            return Err(Error::Empty {
                path: path.into(),
                what: "header row",
            })
        }
        Some((_, line)) => line.map_err(io_error(path, Location::Line(1)))?,
    };
    let columns = split_fields(header.trim_end_matches('\r'), delimiter)
        .map_err(|m| format_error(0, m.into()))?;
    let column = |names: &[&str]| {
        columns
            .iter()
            .position(|c| names.contains(&c.trim().to_ascii_lowercase().as_str()))
    };
    let path_col = column(&["path", "file"]);
    let seq_col = column(&["sequence", "seq"]);
    let label_col = column(&["label", "class"])
        .ok_or_else(|| format_error(0, format!("no label column in header {columns:?}")))?;
    if path_col.is_none() && seq_col.is_none() {
        return Err(format_error(
            0,
            format!("header {columns:?} has neither a path nor a sequence column"),
        ));
    }
    let (split_col, group_col) = (column(&["split"]), column(&["group"]));
    let parse = |i: usize, line: &str| -> Result<Row> {
        let fields = split_fields(line, delimiter).map_err(|m| format_error(i, m.into()))?;
        let field = |c: usize| {
            fields.get(c).map(String::as_str).ok_or_else(|| {
                format_error(
                    i,
                    format!("{} fields, column {} missing", fields.len(), c + 1),
                )
            })
        };
        let (id, data) = match (path_col, seq_col) {
            (Some(c), _) => {
                let file = base.join(field(c)?);
                (file.display().to_string(), ExampleData::Path(file))
            }
            (None, Some(c)) => {
                let tokens =
                    tokenizer::encode(field(c)?.trim().as_bytes()).map_err(|(pos, byte)| {
                        Error::InvalidBase {
                            path: path.into(),
                            at: Location::Base {
                                record: i as u64,
                                name: format!("line {}", i + 1),
                                position: pos as u64 + 1,
                            },
                            byte,
                        }
                    })?;
                (
                    format!("{}:{}", path.display(), i + 1),
                    ExampleData::Tokens(tokens),
                )
            }
            (None, None) => unreachable!("checked after the header"),
        };
        let split = match split_col {
            Some(c) if !field(c)?.trim().is_empty() => Some(
                field(c)?
                    .parse::<Split>()
                    .map_err(|e| format_error(i, e.to_string()))?,
            ),
            _ => None,
        };
        let group = group_col
            .map(field)
            .transpose()?
            .map(|g| g.trim().to_string());
        Ok((id, data, field(label_col)?.trim().to_string(), split, group))
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut skipped = 0;
    for (i, line) in lines {
        // A read error is the file's, not the row's: never skipped.
        let line = line.map_err(io_error(path, Location::Line(i as u64 + 1)))?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        match parse(i, line) {
            Ok(row) => rows.push(row),
            Err(_) if on_error == OnError::Skip => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((non_empty(Dataset::from_rows(rows), path)?, skipped))
}

/// The Genomic Benchmarks CSV (`seq,label`, plain or gzip): a manifest with inline sequences.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-gb-doc.csv");
/// std::fs::write(&path, "seq,label\nACGTAC,1\nTTTTGG,0\n").unwrap();
/// use seqmamba_modalities::{dataset::from_genomic_benchmarks_csv, error::OnError};
/// let (d, _) = from_genomic_benchmarks_csv(&path, OnError::Fail).unwrap();
/// assert_eq!(d.labels.names(), ["0", "1"]);
/// assert_eq!(d.examples[0].label, 1);
/// ```
pub fn from_genomic_benchmarks_csv(path: &Path, on_error: OnError) -> Result<(Dataset, u64)> {
    from_manifest(path, on_error)
}

/// Where a FASTA header keeps the label.
///
/// ```
/// use seqmamba_modalities::dataset::HeaderLabel;
/// let key = HeaderLabel::Key("label=".into());
/// assert_eq!(key.extract("seq1", "len=5 label=virus"), Some("virus".to_string()));
/// let field = HeaderLabel::Field { separator: '|', index: 1 };
/// assert_eq!(field.extract("seq1|human|x", ""), Some("human".to_string()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderLabel {
    /// The text after this key up to the next space, `|` or `;` (e.g. `label=`).
    Key(String),
    /// Field `index` (0-based) of the whole header line split at `separator`.
    Field { separator: char, index: usize },
}

impl HeaderLabel {
    /// The label in a header with record `name` and `description`, if present.
    pub fn extract(&self, name: &str, description: &str) -> Option<String> {
        let line = if description.is_empty() {
            name.to_string()
        } else {
            format!("{name} {description}")
        };
        let label = match self {
            HeaderLabel::Key(key) => {
                let start = line.find(key.as_str())? + key.len();
                line[start..]
                    .split([' ', '\t', '|', ';'])
                    .next()
                    .unwrap_or("")
                    .to_string()
            }
            HeaderLabel::Field { separator, index } => {
                line.split(*separator).nth(*index)?.trim().to_string()
            }
        };
        (!label.is_empty()).then_some(label)
    }
}

/// Every record of a FASTA file as an example, labeled from its header. A record without a
/// label, or with bad bases, is an error (skipped and counted under [`OnError::Skip`]).
/// Returns the dataset and the number of skipped records.
///
/// ```
/// # let path = std::env::temp_dir().join("seqmamba-headers-doc.fa");
/// std::fs::write(&path, ">s1 label=a\nACGT\n>s2 label=b\nGG\n").unwrap();
/// use seqmamba_modalities::{dataset::{from_fasta_headers, HeaderLabel}, error::OnError};
/// let (d, skipped) = from_fasta_headers(&path, &HeaderLabel::Key("label=".into()), OnError::Fail).unwrap();
/// assert_eq!((d.examples.len(), skipped), (2, 0));
/// ```
pub fn from_fasta_headers(
    path: &Path,
    pattern: &HeaderLabel,
    on_error: OnError,
) -> Result<(Dataset, u64)> {
    let mut reader = FastaReader::open(path, on_error)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut unlabeled = 0;
    for (index, record) in (&mut reader).enumerate() {
        let record = record?;
        match pattern.extract(&record.name, &record.description) {
            Some(label) => rows.push((
                record.name,
                ExampleData::Tokens(record.tokens),
                label,
                None,
                None,
            )),
            None if on_error == OnError::Skip => unlabeled += 1,
            None => {
                return Err(Error::Format {
                    path: path.into(),
                    at: Location::Record {
                        record: index as u64,
                        name: record.name,
                    },
                    message: format!("header has no label matching {pattern:?}"),
                })
            }
        }
    }
    let skipped = unlabeled + reader.skipped();
    Ok((non_empty(Dataset::from_rows(rows), path)?, skipped))
}

/// The Free Spoken Digit Dataset folder: files `{digit}_{speaker}_{index}.wav`; the label is
/// the digit, the group the speaker, and the split the usual one (index 0–4 test, the rest
/// train). Other `.wav` names are an error naming the file.
///
/// ```
/// let d = seqmamba_modalities::dataset::from_fsdd("../data-samples/audio/fsdd".as_ref()).unwrap();
/// assert_eq!(d.labels.names(), ["0", "1", "2", "3", "4", "5", "7", "9"]);
/// assert_eq!(d.examples[1].group.as_deref(), Some("theo"));
/// ```
pub fn from_fsdd(dir: &Path) -> Result<Dataset> {
    let mut rows: Vec<Row> = Vec::new();
    for file in sorted_entries(dir)? {
        let Some(stem) = file
            .extension()
            .filter(|e| e.eq_ignore_ascii_case("wav"))
            .and_then(|_| file.file_stem())
            .and_then(|s| s.to_str())
        else {
            continue;
        };
        let parts: Vec<&str> = stem.split('_').collect();
        let parsed = match parts.as_slice() {
            [digit, speaker, index]
                if digit.len() == 1
                    && digit.as_bytes()[0].is_ascii_digit()
                    && !speaker.is_empty() =>
            {
                index
                    .parse::<u32>()
                    .ok()
                    .map(|i| (digit.to_string(), speaker.to_string(), i))
            }
            _ => None,
        };
        let (digit, speaker, index) = parsed.ok_or_else(|| Error::Format {
            path: file.clone(),
            at: Location::File,
            message: "file name is not {digit}_{speaker}_{index}.wav".into(),
        })?;
        let split = if index < 5 { Split::Test } else { Split::Train };
        rows.push((
            file.display().to_string(),
            ExampleData::Path(file),
            digit,
            Some(split),
            Some(speaker),
        ));
    }
    non_empty(Dataset::from_rows(rows), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_honour_quotes() {
        assert_eq!(split_fields("a,\"b,c\",d", ',').unwrap(), ["a", "b,c", "d"]);
        assert_eq!(
            split_fields("\"say \"\"hi\"\"\",x", ',').unwrap(),
            ["say \"hi\"", "x"]
        );
        assert_eq!(split_fields("a\tb", '\t').unwrap(), ["a", "b"]);
        assert!(split_fields("\"open,x", ',').is_err());
    }

    #[test]
    fn manifest_errors_name_the_line() {
        let dir = std::env::temp_dir().join("seqmamba-manifest-errors");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.csv");
        fs::write(&path, "seq,label,split\nACGT,1,train\nAC!T,0,test\n").unwrap();
        let e = from_manifest(&path, OnError::Fail).unwrap_err().to_string();
        assert!(
            e.contains("bad.csv") && e.contains("line 3") && e.contains("base 3"),
            "{e}"
        );
        let (d, skipped) = from_manifest(&path, OnError::Skip).unwrap();
        assert_eq!((d.examples.len(), skipped), (1, 1));
        fs::write(&path, "seq,label,split\nACGT,1,later\n").unwrap();
        let e = from_manifest(&path, OnError::Fail).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("later"), "{e}");
        fs::write(&path, "name,label\nx,1\n").unwrap();
        assert!(from_manifest(&path, OnError::Fail)
            .unwrap_err()
            .to_string()
            .contains("neither a path"));
    }
}
