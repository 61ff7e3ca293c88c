//! End-to-end tests of the `seqmamba` program.

use std::path::Path;
use std::process::{Command, Output};

fn seqmamba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqmamba"))
        .args(args)
        .output()
        .expect("seqmamba runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "seqmamba failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn init_model(dir: &Path, vocab: usize) {
    let out = dir.to_str().unwrap();
    let vocab = vocab.to_string();
    stdout(&seqmamba(&[
        "init",
        "--preset",
        "tiny",
        "--vocab-size",
        &vocab,
        "--seed",
        "5",
        "--out",
        out,
    ]));
}

#[test]
fn score_prints_one_log_probability_per_predicted_position() {
    let dir = tempfile::tempdir().unwrap();
    init_model(dir.path(), 8);
    let text = stdout(&seqmamba(&[
        "score",
        "--model",
        dir.path().to_str().unwrap(),
        "--token-ids",
        "3,1,4,1,5",
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let mut total_prob = 0.0;
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[0], (i + 1).to_string());
        assert_eq!(fields[1], ["1", "4", "1", "5"][i]);
        let logprob: f64 = fields[2].parse().unwrap();
        assert!(logprob < 0.0 && logprob > -10.0, "{line}");
        total_prob += logprob.exp();
    }
    // An untrained model is close to uniform over the 8 tokens.
    assert!((total_prob / 4.0 - 1.0 / 8.0).abs() < 0.05, "{total_prob}");

    // Chunked scoring carries the state: the same numbers.
    let chunked = stdout(&seqmamba(&[
        "score",
        "--model",
        dir.path().to_str().unwrap(),
        "--token-ids",
        "3,1,4,1,5",
        "--chunk-len",
        "2",
    ]));
    for (a, b) in text.lines().zip(chunked.lines()) {
        let x: f64 = a.rsplit('\t').next().unwrap().parse().unwrap();
        let y: f64 = b.rsplit('\t').next().unwrap().parse().unwrap();
        assert!((x - y).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn score_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    init_model(dir.path(), 8);
    let model = dir.path().to_str().unwrap();
    let out = seqmamba(&["score", "--model", model, "--token-ids", "1,9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token id 9 at position 1"), "{err}");

    let missing = dir.path().join("nope");
    let out = seqmamba(&[
        "score",
        "--model",
        missing.to_str().unwrap(),
        "--token-ids",
        "1,2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("config.json"), "{err}");
}

#[test]
fn inspect_summarises_real_files_and_names_bad_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bam = root.join("data-samples/dna/range.bam");
    let text = stdout(&seqmamba(&["inspect", bam.to_str().unwrap()]));
    assert!(text.contains("records      112"), "{text}");
    assert!(text.contains("bases        11200"), "{text}");

    let flac = root.join("data-samples/audio/0_jackson_0.flac");
    let text = stdout(&seqmamba(&["inspect", flac.to_str().unwrap()]));
    assert!(text.contains("sample rate  8000 Hz"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.fa");
    std::fs::write(&bad, b"\x00\x01binary\xff").unwrap();
    let out = seqmamba(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.fa"), "{err}");

    // A cause is named once, not again after the message that already holds it.
    let missing = dir.path().join("missing.fa");
    let out = seqmamba(&["inspect", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.fa"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    // One bad record among good ones: an error naming it, or skipped and counted.
    let one_bad = dir.path().join("one-bad.fa");
    std::fs::write(&one_bad, b">a\nACGT\n>b\nAC-GT\n>c\nGGCCAA\n").unwrap();
    let out = seqmamba(&["inspect", one_bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("record 1 (b), base 3"), "{err}");
    let text = stdout(&seqmamba(&[
        "inspect",
        one_bad.to_str().unwrap(),
        "--on-error",
        "skip",
    ]));
    assert!(text.contains("records      2"), "{text}");
    assert!(text.contains("bases        10"), "{text}");
    assert!(text.contains("bad records  1 skipped"), "{text}");
}

#[test]
fn inspect_restores_the_orientation_of_sam_reads_on_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples/dna");
    let tokens_line = |args: &[&str]| {
        let text = stdout(&seqmamba(args));
        text.lines()
            .find(|l| l.starts_with("tokens"))
            .unwrap_or_else(|| panic!("no tokens line: {text}"))
            .to_string()
    };
    let fastq = root.join("phix.1.fastq.gz");
    let sam = root.join("phix.se.sam");
    let reads = tokens_line(&["inspect", fastq.to_str().unwrap()]);
    // The SAM stores reverse-strand reads reverse-complemented (A and T counts swapped for
    // them); restored, it holds the FASTQ's bases exactly.
    let restored = tokens_line(&["inspect", "--restore-orientation", sam.to_str().unwrap()]);
    assert_eq!(restored, reads);
    assert_ne!(tokens_line(&["inspect", sam.to_str().unwrap()]), reads);
}
