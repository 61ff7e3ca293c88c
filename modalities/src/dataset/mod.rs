//! Labeled datasets: examples from folders, manifests, FASTA headers, FSDD file names and the
//! Genomic Benchmarks CSV; label ids in sorted-name order; splits; parallel decoding.

pub mod load;
pub mod sources;
pub mod splits;

use std::{collections::BTreeSet, path::PathBuf};

pub use self::load::{decode_audio, load_dna_tokens};
pub use self::sources::{
    from_class_folders, from_fasta_headers, from_fsdd, from_genomic_benchmarks_csv, from_manifest,
    HeaderLabel,
};
use self::splits::Split;

/// What an example holds: a file still to decode, or tokens given inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExampleData {
    /// An audio or DNA file.
    Path(PathBuf),
    /// DNA tokens (inline sequences of a manifest, CSV or FASTA record).
    Tokens(Vec<u8>),
}

/// One labeled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// A name unique in the dataset (file path, record name or `file:line`).
    pub id: String,
    /// The data or where to find it.
    pub data: ExampleData,
    /// Index into [`Dataset::labels`].
    pub label: usize,
    /// A split given by the source (manifest column, FSDD convention), if any.
    pub split: Option<Split>,
    /// A group (speaker, patient, genome) for group splits, if any.
    pub group: Option<String>,
}

/// Label names and their ids: ids follow the sorted order of the names (byte order), never
/// file-system or file order, so the same labels always get the same ids.
///
/// ```
/// use seqmamba_modalities::dataset::Labels;
/// let labels = Labels::new(["promoter", "non_promoter", "promoter"]);
/// assert_eq!(labels.names(), ["non_promoter", "promoter"]);
/// assert_eq!(labels.id("promoter"), Some(1));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    /// Labels of the distinct `names`, sorted.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: BTreeSet<String> = names.into_iter().map(Into::into).collect();
        Self {
            names: set.into_iter().collect(),
        }
    }

    /// The id of a label name.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    /// Names by id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Labeled examples and their label names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset {
    pub examples: Vec<Example>,
    pub labels: Labels,
}

impl Dataset {
    /// Builds a dataset from `(id, data, label name, split, group)` rows, giving label ids in
    /// sorted-name order.
    ///
    /// ```
    /// use seqmamba_modalities::dataset::{Dataset, ExampleData};
    /// let d = Dataset::from_rows(vec![
    ///     ("a".into(), ExampleData::Tokens(vec![5]), "yes".into(), None, None),
    ///     ("b".into(), ExampleData::Tokens(vec![6]), "no".into(), None, None),
    /// ]);
    /// assert_eq!(d.examples[0].label, 1);
    /// assert_eq!(d.labels.names(), ["no", "yes"]);
    /// ```
    pub fn from_rows(rows: Vec<Row>) -> Self {
        let labels = Labels::new(rows.iter().map(|r| r.2.clone()));
        let examples = rows
            .into_iter()
            .map(|(id, data, label, split, group)| Example {
                id,
                data,
                label: labels.id(&label).expect("label collected above"),
                split,
                group,
            })
            .collect();
        Self { examples, labels }
    }

    /// Count of examples per label id.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.labels.len()];
        for e in &self.examples {
            counts[e.label] += 1;
        }
        counts
    }

    /// The examples of one split (as the source gave or as set with [`Dataset::set_splits`]).
    pub fn split(&self, split: Split) -> impl Iterator<Item = &Example> {
        self.examples.iter().filter(move |e| e.split == Some(split))
    }

    /// Overwrites the splits, e.g. with one of [`splits`]' functions.
    pub fn set_splits(&mut self, splits: &[Split]) -> crate::error::Result<()> {
        if splits.len() != self.examples.len() {
            return Err(crate::error::Error::Invalid(format!(
                "{} splits for {} examples",
                splits.len(),
                self.examples.len()
            )));
        }
        for (e, &s) in self.examples.iter_mut().zip(splits) {
            e.split = Some(s);
        }
        Ok(())
    }

    /// Groups of the examples (empty string where none), for [`splits::group_split`].
    pub fn groups(&self) -> Vec<&str> {
        self.examples
            .iter()
            .map(|e| e.group.as_deref().unwrap_or(""))
            .collect()
    }
}

/// A source row: id, data, label name, split, group.
pub type Row = (String, ExampleData, String, Option<Split>, Option<String>);

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, label: &str) -> Row {
        (
            id.into(),
            ExampleData::Tokens(vec![]),
            label.into(),
            None,
            None,
        )
    }

    #[test]
    fn label_ids_do_not_depend_on_row_order() {
        let a = Dataset::from_rows(vec![row("1", "zebra"), row("2", "ant"), row("3", "mole")]);
        let b = Dataset::from_rows(vec![row("3", "mole"), row("1", "zebra"), row("2", "ant")]);
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.labels.names(), ["ant", "mole", "zebra"]);
        assert_eq!(
            a.examples.iter().map(|e| e.label).collect::<Vec<_>>(),
            [2, 0, 1]
        );
        assert_eq!(a.labels.id("cat"), None);
    }

    #[test]
    fn splits_are_set_per_example_and_checked_for_length() {
        let mut d = Dataset::from_rows(vec![row("1", "x"), row("2", "y"), row("3", "x")]);
        assert_eq!(d.split(Split::Test).count(), 0);
        d.set_splits(&[Split::Train, Split::Test, Split::Validation])
            .unwrap();
        let test: Vec<&str> = d.split(Split::Test).map(|e| e.id.as_str()).collect();
        assert_eq!(test, ["2"]);
        assert!(d.set_splits(&[Split::Train]).is_err());
        assert_eq!(d.label_counts(), vec![2, 1]);
    }
}
