//! Whole real datasets from `../shared/data` (present on every developer machine and in CI):
//! counts that the data README states must come out of our loaders.

use std::path::{Path, PathBuf};

use seqmamba_modalities::dataset::{self, splits::Split};
use seqmamba_modalities::dna::{alignment::AlignmentOptions, read_tokens, tokenizer};
use seqmamba_modalities::error::OnError;

fn shared(rel: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel);
    assert!(
        path.exists(),
        "{} missing: the shared data sits beside the repository",
        path.display()
    );
    path
}

#[test]
fn fsdd_has_3000_recordings_with_the_usual_split() {
    let d = dataset::from_fsdd(&shared("fsdd/recordings")).unwrap();
    assert_eq!(d.examples.len(), 3000);
    assert_eq!(
        d.labels.names(),
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    );
    assert!(d.label_counts().iter().all(|&c| c == 300));
    assert_eq!(d.split(Split::Test).count(), 300);
    assert_eq!(d.split(Split::Train).count(), 2700);
    let mut speakers: Vec<&str> = d.groups();
    speakers.sort();
    speakers.dedup();
    assert_eq!(speakers.len(), 6);
}

#[test]
fn genomic_benchmarks_test_split_counts() {
    let (d, skipped) = dataset::from_genomic_benchmarks_csv(
        &shared("dna/genomic-benchmarks/human_nontata_promoters.test.csv.gz"),
        OnError::Fail,
    )
    .unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(d.examples.len(), 9034);
    assert_eq!(d.labels.names(), ["0", "1"]);
    assert_eq!(d.label_counts(), vec![4119, 4915]);
    assert!(d
        .examples
        .iter()
        .all(|e| matches!(&e.data, dataset::ExampleData::Tokens(t) if t.len() == 251)));
}

#[test]
fn real_genomes_tokenise_with_the_stated_lengths() {
    for (file, records, bases) in [
        ("dna/genomes/h-pylori-2-strains.fasta.gz", 2, None),
        ("dna/genomes/sars-cov-2.418-genomes.fasta.gz", 418, None),
        ("dna/genomes/mt-human.fa", 1, Some(16_569)),
        ("dna/genomes/c-elegans-slice.fa.gz", 7, None),
    ] {
        let all: Vec<_> = read_tokens(&shared(file), AlignmentOptions::default(), OnError::Fail)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all.len(), records, "{file}");
        if let Some(bases) = bases {
            assert_eq!(all[0].tokens.len(), bases, "{file}");
        }
        assert!(all.iter().all(|r| r
            .tokens
            .iter()
            .all(|&t| (tokenizer::A..=tokenizer::N).contains(&t))));
    }
}
