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

#[test]
fn generate_continues_dna_and_audio_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let dna = dir.path().join("dna");
    init_model(&dna, 10);
    let dna = dna.to_str().unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["generate", "--model", dna, "--device", "cpu", "--prompt"]
            .iter()
            .chain(&["ACGTAC", "--length", "80", "--samples", "3", "--seed", "7"])
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |extra: &[&str]| {
        let args = args(extra);
        stdout(&seqmamba(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
    };
    let text = run(&[]);
    let records: Vec<&str> = text.split('>').skip(1).collect();
    assert_eq!(records.len(), 3, "{text}");
    for (i, record) in records.iter().enumerate() {
        let (header, bases) = record.split_once('\n').unwrap();
        assert!(
            header.starts_with(&format!("prompt_sample{i} seed={} prompt_len=6", 7 + i)),
            "{header}"
        );
        let bases = bases.replace('\n', "");
        assert_eq!(bases.len(), 80);
        assert!(bases.bytes().all(|b| b"ACGTN".contains(&b)), "{bases}");
    }
    assert_ne!(
        records[0].split_once('\n').unwrap().1,
        records[1].split_once('\n').unwrap().1
    );
    // One sample a step gives the same samples; --out gets the same text.
    assert_eq!(run(&["--batch-size", "1"]), text);
    let fasta = dir.path().join("samples.fa");
    let summary = run(&["--out", fasta.to_str().unwrap(), "--json"]);
    assert_eq!(std::fs::read_to_string(&fasta).unwrap(), text);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        (summary["samples"].as_u64(), summary["tokens"].as_u64()),
        (Some(3), Some(240))
    );

    let bad = seqmamba(
        &args(&["--prompt-file", "x.fa"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("cannot be used with"),
        "{err}"
    );
    let audio = dir.path().join("audio");
    init_model(&audio, 256);
    let audio = audio.to_str().unwrap();
    let no_folder = seqmamba(&[
        "generate", "--model", audio, "--device", "cpu", "--length", "5",
    ]);
    let err = String::from_utf8_lossy(&no_folder.stderr);
    assert!(
        !no_folder.status.success() && err.contains("--out"),
        "{err}"
    );
    let clips = dir.path().join("clips");
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples/audio/0_jackson_0.flac");
    stdout(&seqmamba(&[
        "generate",
        "--model",
        audio,
        "--device",
        "cpu",
        "--prompt-file",
        clip.to_str().unwrap(),
        "--prompt-len",
        "400",
        "--with-prompt",
        "--length",
        "100",
        "--samples",
        "2",
        "--out",
        clips.to_str().unwrap(),
    ]));
    for sample in 0..2 {
        let wav =
            hound::WavReader::open(clips.join(format!("0_jackson_0-sample{sample}.wav"))).unwrap();
        assert_eq!((wav.spec().sample_rate, wav.len()), (8000, 500));
    }
}

#[test]
fn score_per_record_sums_each_record_s_token_lines() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("dna");
    init_model(&model, 10);
    let model = model.to_str().unwrap();
    let fasta = dir.path().join("reads.fa");
    std::fs::write(&fasta, b">a first\nACGTACGTTT\n>b\nG\n>c\nTTGACCAN\nGGA\n").unwrap();
    let fasta = fasta.to_str().unwrap();
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--model", model, "--device", "cpu"];
        args.extend(extra);
        stdout(&seqmamba(&args))
    };
    let mut sums = std::collections::BTreeMap::<String, (usize, f64)>::new();
    for line in score(&[fasta]).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let entry = sums.entry(fields[0].to_string()).or_default();
        entry.0 += 1;
        entry.1 += fields[3].parse::<f64>().unwrap();
    }
    let table = dir.path().join("records.tsv");
    let json = score(&[
        "--per-record",
        "--json",
        "--out",
        table.to_str().unwrap(),
        fasta,
    ]);
    let text = std::fs::read_to_string(&table).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("file\trecord\ttokens\tlogprob\tbits_per_token")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    for (row, (name, tokens)) in rows.iter().zip([("a", 9), ("b", 0), ("c", 10)]) {
        assert_eq!(row[..3], [fasta, name, &tokens.to_string()]);
        let logprob: f64 = row[3].parse().unwrap();
        if tokens == 0 {
            assert_eq!((logprob, row[4]), (0.0, "NA"));
            continue;
        }
        let (count, sum) = sums[name];
        assert_eq!(count, tokens);
        assert!(
            (logprob - sum).abs() < 1e-4 * sum.abs(),
            "{name}: {logprob} vs {sum}"
        );
        let bits: f64 = row[4].parse().unwrap();
        assert!((bits + logprob / std::f64::consts::LN_2 / tokens as f64).abs() < 1e-9);
    }
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (summary["records"].as_u64(), summary["tokens"].as_u64()),
        (Some(3), Some(19))
    );
    // Passes of 4 positions: records run one by one, their state carried across passes.
    let short = score(&["--per-record", "--chunk-len", "4", fasta]);
    for (a, b) in short.lines().zip(text.lines()).skip(1) {
        let logprob = |line: &str| line.split('\t').nth(3).unwrap().parse::<f64>().unwrap();
        assert!(
            (logprob(a) - logprob(b)).abs() <= 1e-4 * logprob(b).abs(),
            "{a} vs {b}"
        );
    }

    // Standard input reads the same records.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seqmamba"))
        .args([
            "score",
            "--model",
            model,
            "--device",
            "cpu",
            "--per-record",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(fasta).unwrap())
        .unwrap();
    let piped = stdout(&child.wait_with_output().unwrap());
    assert_eq!(piped, text.replace(fasta, "-"));

    // An audio model scores a clip as its training clips were made: 8 kHz mu-law.
    let audio = dir.path().join("audio");
    init_model(&audio, 256);
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples/audio/0_jackson_0.flac");
    let text = stdout(&seqmamba(&[
        "score",
        "--model",
        audio.to_str().unwrap(),
        "--device",
        "cpu",
        "--per-record",
        clip.to_str().unwrap(),
    ]));
    let row: Vec<&str> = text.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(row[1..3], ["0_jackson_0", "5147"]);
    // An untrained model is near uniform over 256 tokens: about 8 bits a token.
    let bits: f64 = row[4].parse().unwrap();
    assert!((bits - 8.0).abs() < 0.5, "{bits}");
}

#[test]
fn a_reader_that_stops_early_is_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    init_model(dir.path(), 10);
    let phix = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples/dna/phix174.fasta");
    // 5,385 lines, more than a pipe holds: the writer meets the closed pipe.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seqmamba"))
        .args(["--quiet", "score", "--device", "cpu", "--model"])
        .args([dir.path(), &phix])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    use std::io::Read as _;
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(first.starts_with(b"NC_001422.1\t1\t"));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && err.is_empty(), "{err}");
}
