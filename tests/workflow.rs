//! End-to-end tests of workflows: the demo's run folders, bit-identical reruns, resume after
//! a kill, error messages, and every shipped workflow starting on shrunken settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use seqmamba::checkpoint::Checkpoint;
use seqmamba::model::ParamTable;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn seqmamba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqmamba"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("seqmamba runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "seqmamba failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The error output of a run that must fail.
fn failed(output: Output) -> String {
    assert!(
        !output.status.success(),
        "seqmamba succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A CSV as rows of fields (no quoted fields in the files compared here).
fn rows(path: &Path) -> Vec<Vec<String>> {
    read(path)
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

/// The training log without its wall-clock column (the seventh).
fn log_without_seconds(dir: &Path) -> Vec<Vec<String>> {
    rows(&dir.join("train_log.csv"))
        .into_iter()
        .map(|mut r| {
            r.remove(6);
            r
        })
        .collect()
}

const SMALL: [&str; 14] = [
    "--set",
    "training.steps=6",
    "--set",
    "training.epochs=0",
    "--set",
    "training.seq_len=64",
    "--set",
    "training.checkpoint_every=4",
    "--set",
    "generation.length=40",
    "--set",
    "evaluation.max_tokens=300",
    "--set",
    "model.preset=tiny",
];

/// `seqmamba --quiet run workflows/demo.toml --out DIR`, to extend with options.
fn run_demo(dir: &Path) -> Vec<&str> {
    vec![
        "--quiet",
        "run",
        "workflows/demo.toml",
        "--out",
        dir.to_str().unwrap(),
    ]
}

/// Reports are rendered (and checked) in the demo test only; elsewhere they cost time.
const NO_REPORT: [&str; 2] = ["--set", "outputs.report=false"];

#[test]
fn demo_fills_every_run_folder() {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["--json", "demo", "--out", out.path().to_str().unwrap()];
    args.extend(SMALL);
    let summaries: serde_json::Value = serde_json::from_str(&ok(seqmamba(&args))).unwrap();
    assert_eq!(summaries.as_array().unwrap().len(), 3);

    for name in ["demo-dna", "demo-audio", "demo-promoters"] {
        let dir = out.path().join(name);
        let manifest: serde_json::Value =
            serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
        assert_eq!(manifest["name"], name);
        assert_eq!(manifest["device"], "cpu");
        assert_eq!(manifest["world_size"], 1);
        assert!(manifest["finished"].is_string());
        let inputs = manifest["inputs"].as_array().unwrap();
        assert!(!inputs.is_empty());
        for input in inputs {
            assert_eq!(input["sha256"].as_str().unwrap().len(), 64);
            let path = root().join(input["path"].as_str().unwrap());
            assert_eq!(
                input["bytes"].as_u64().unwrap(),
                std::fs::metadata(path).unwrap().len()
            );
        }
        let stages: Vec<&str> = manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert!(
            stages.contains(&"train") && stages.contains(&"load data"),
            "{stages:?}"
        );
        let resolved = read(&dir.join("workflow.toml"));
        assert!(resolved.contains("steps = 6"), "{resolved}");
        let log = rows(&dir.join("train_log.csv"));
        assert_eq!(
            log[0].join(","),
            "step,fold,loss,grad_norm,lr,tokens,seconds,val_loss"
        );
        assert_eq!(log.len(), 7);
        assert!(
            log[1..]
                .iter()
                .all(|r| r[2].parse::<f64>().unwrap().is_finite())
        );
        assert!(dir.join("checkpoints/final/model.safetensors").exists());
        assert!(dir.join("checkpoints/step-6/trainer.safetensors").exists());
        // The report module reads the raw records back (outputs.report is on by default).
        assert!(dir.join("report.md").exists(), "{name}: no report.md");
        assert!(stages.contains(&"report"), "{stages:?}");
        assert!(
            !dir.join("checkpoints/step-4").exists(),
            "older checkpoints are removed"
        );
    }

    for (name, extension) in [("demo-dna", "fa"), ("demo-audio", "wav")] {
        let dir = out.path().join(name);
        let eval = rows(&dir.join("lm_eval.csv"));
        assert_eq!(eval[0].join(","), "split,model,bits_per_token,tokens");
        let models: Vec<&str> = eval[1..].iter().map(|r| r[1].as_str()).collect();
        assert!(
            models.contains(&"mamba")
                && models.contains(&"markov-0")
                && models.contains(&"deflate")
        );
        for r in &eval[1..] {
            let bits: f64 = r[2].parse().unwrap();
            assert!(bits > 0.0 && bits < 9.0, "{r:?}");
        }
        assert!(dir.join(format!("generated/sample-0.{extension}")).exists());
        assert!(dir.join(format!("generated/sample-1.{extension}")).exists());
    }
    let fasta = read(&out.path().join("demo-dna/generated/sample-0.fa"));
    let bases: String = fasta.lines().skip(1).collect();
    assert!(
        fasta.starts_with(">sample-0") && bases.len() == 40,
        "{fasta}"
    );

    let dir = out.path().join("demo-promoters");
    let labels: Vec<String> = serde_json::from_str(&read(&dir.join("labels.json"))).unwrap();
    assert_eq!(labels, ["0", "1"]);
    let predictions = rows(&dir.join("predictions.csv"));
    assert_eq!(
        predictions[0].join(","),
        "split,fold,id,length,label,label_name,predicted,predicted_name,prob_0,prob_1"
    );
    assert_eq!(predictions.len() - 1, 40, "20% of 200 sequences are tested");
    for r in &predictions[1..] {
        let p: f64 = r[8].parse::<f64>().unwrap() + r[9].parse::<f64>().unwrap();
        assert!(
            (p - 1.0).abs() < 1e-9 && r[0] == "test" && r[3] == "251",
            "{r:?}"
        );
    }

    // The trained DNA model scores a FASTA file: record, position, token id, log-probability.
    let model = out.path().join("demo-dna/checkpoints/final");
    let text = ok(seqmamba(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--fasta",
        "data-samples/dna/phix174.fasta",
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5385);
    let fields: Vec<&str> = lines[9].split('\t').collect();
    assert_eq!(fields[..2], ["NC_001422.1", "10"]);
    assert!(fields[3].parse::<f64>().unwrap() < 0.0);

    // The score task writes the same log-likelihoods; the generate task samples FASTA.
    let model = model.to_str().unwrap();
    let with_model = |task: &str| {
        let dir = out.path().join(task);
        ok(seqmamba(&[
            "--quiet",
            "run",
            "workflows/demo.toml",
            "--out",
            dir.to_str().unwrap(),
            "--set",
            &format!("task={task}"),
            "--set",
            &format!("model.checkpoint='{model}'"),
            "--set",
            "generation.length=30",
            "--set",
            "data.sources=['data-samples/dna/phix174.fasta']",
            "--set",
            "outputs.report=false",
        ]));
        dir
    };
    let scores = read(&with_model("score").join("scores.tsv"));
    let columns = |line: &str| {
        line.split('\t')
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(scores.lines().count(), 5385);
    assert!(
        scores
            .lines()
            .map(columns)
            .eq(lines.iter().map(|l| columns(l)))
    );
    let generated = with_model("generate");
    let sample = read(&generated.join("generated/sample-1.fa"));
    assert_eq!(sample.lines().skip(1).map(str::len).sum::<usize>(), 30);
    let manifest = read(&generated.join("manifest.json"));
    assert!(
        manifest.contains("model.safetensors"),
        "the checkpoint is an input"
    );

    // A classifier fine-tuned from the language model starts from its backbone.
    let tuned = out.path().join("tuned");
    ok(seqmamba(&[
        "--quiet",
        "run",
        "workflows/demo-promoters.toml",
        "--out",
        tuned.to_str().unwrap(),
        "--set",
        &format!("model.checkpoint='{model}'"),
        "--set",
        "training.epochs=0",
        "--set",
        "training.steps=1",
        "--set",
        "training.lr=1e-12",
        "--set",
        "outputs.report=false",
    ]));
    let lm = Checkpoint::load(Path::new(model)).unwrap();
    let classifier = Checkpoint::load(&tuned.join("checkpoints/final")).unwrap();
    let embedding = |c: &Checkpoint| {
        let table = ParamTable::new(&c.config, &c.metadata.head);
        let range = table
            .entry("backbone.embedding.weight")
            .unwrap()
            .range
            .clone();
        c.params[range].to_vec()
    };
    let (a, b) = (embedding(&lm), embedding(&classifier));
    assert!(
        a.iter()
            .zip(&b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1e-3))
    );
    assert_ne!(lm.metadata.head, classifier.metadata.head);
}

fn run_demo_dna(out: &Path, threads: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--quiet",
        "--threads",
        threads,
        "run",
        "workflows/demo.toml",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(SMALL);
    args.extend(NO_REPORT);
    args.extend(extra);
    seqmamba(&args)
}

#[test]
fn runs_are_bit_identical_across_runs_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(run_demo_dna(&a, "1", &[]));
    ok(run_demo_dna(&b, "2", &[]));
    assert_eq!(log_without_seconds(&a), log_without_seconds(&b));
    assert_eq!(read(&a.join("lm_eval.csv")), read(&b.join("lm_eval.csv")));
    assert_eq!(
        read(&a.join("generated/sample-0.fa")),
        read(&b.join("generated/sample-0.fa"))
    );
    let params = |d: &Path| std::fs::read(d.join("checkpoints/final/model.safetensors")).unwrap();
    assert_eq!(params(&a), params(&b));
    // A second run into an existing folder is refused unless forced.
    let again = run_demo_dna(&a, "1", &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

/// Starts `seqmamba` with `args` and kills it once `checkpoint` exists.
fn run_and_kill(args: &[&str], checkpoint: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqmamba"))
        .current_dir(root())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !checkpoint.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let long = [
        "--set",
        "training.steps=40",
        "--set",
        "training.checkpoint_every=10",
    ];
    let mut args = run_demo(&killed);
    args.extend(SMALL);
    args.extend(long);
    args.extend(NO_REPORT);
    run_and_kill(
        &args,
        &killed.join("checkpoints/step-10/trainer.safetensors"),
    );
    assert!(!killed.join("checkpoints/final").exists());

    let resumed = ok(seqmamba(&[
        "--json",
        "run",
        "--resume",
        killed.to_str().unwrap(),
    ]));
    let summary: serde_json::Value = serde_json::from_str(&resumed).unwrap();
    assert!(summary["resumed_from"].as_u64().unwrap() >= 10);
    ok(run_demo_dna(&whole, "2", &long));
    assert_eq!(log_without_seconds(&killed), log_without_seconds(&whole));
    assert_eq!(
        read(&killed.join("lm_eval.csv")),
        read(&whole.join("lm_eval.csv"))
    );
    let params = |d: &Path| std::fs::read(d.join("checkpoints/final/model.safetensors")).unwrap();
    assert_eq!(params(&killed), params(&whole));
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&killed.join("manifest.json"))).unwrap();
    assert_eq!(manifest["resumed_from"][0], summary["resumed_from"]);
}

#[test]
fn a_killed_cross_validation_resumes_inside_its_second_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "--quiet",
            "--threads",
            "1",
            "run",
            "workflows/demo-promoters.toml",
            "--out",
        ]
        .map(String::from)
        .to_vec();
        a.push(out.to_str().unwrap().into());
        for set in [
            "training.epochs=0",
            "training.steps=20",
            "training.seq_len=64",
            "training.checkpoint_every=5",
            "data.split={ method = 'kfold', folds = 4, run_folds = 2 }",
            "outputs.report=false",
        ] {
            a.extend(["--set".into(), set.into()]);
        }
        a
    };
    let killed_args = args(&killed);
    run_and_kill(
        &killed_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &killed.join("checkpoints/fold-1/step-5/trainer.safetensors"),
    );
    ok(seqmamba(&[
        "--quiet",
        "run",
        "--resume",
        killed.to_str().unwrap(),
    ]));
    ok(seqmamba(
        &args(&whole).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(log_without_seconds(&killed), log_without_seconds(&whole));
    let predictions = read(&whole.join("predictions.csv"));
    assert_eq!(read(&killed.join("predictions.csv")), predictions);
    // Two folds of 50 sequences each are predicted, each by the model that did not see them.
    assert_eq!(predictions.lines().count(), 101);
    assert!(predictions.contains("\ntest,1,"));
    let manifest = read(&whole.join("manifest.json"));
    assert!(
        manifest.contains("4-fold cross-validation within the given data"),
        "{manifest}"
    );
}

#[test]
fn skipped_records_are_noted_in_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let fasta = tmp.path().join("one-bad.fa");
    let good = "ACGTTGCA".repeat(40);
    std::fs::write(&fasta, format!(">a\n{good}\n>b\nAC-GT\n>c\n{good}\n")).unwrap();
    let dir = tmp.path().join("run");
    let sources = format!("data.sources=['{}']", fasta.display());
    let mut args = run_demo(&dir);
    args.extend(SMALL);
    args.extend(NO_REPORT);
    args.extend(["--set", &sources, "--set", "data.on_error=skip"]);
    args.extend(["--set", "training.steps=1", "--set", "generation.samples=0"]);
    ok(seqmamba(&args));
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&dir.join("manifest.json"))).unwrap();
    let notes = manifest["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n == "1 bad or empty records were skipped"),
        "{notes:?}"
    );
}

#[test]
fn unknown_keys_and_bad_overrides_say_what_is_wrong() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    for (set, expected) in [
        ("training.stepz=3", "unknown field `stepz`"),
        ("training.steps", "KEY=VALUE"),
        ("training.steps=many", "invalid type"),
        ("name.inner=1", "is a value, not a section"),
        ("device=gpu", "unknown device \"gpu\""),
        (
            "generation.temperature=-1.0",
            "temperature must be a number ≥ 0",
        ),
        ("generation.top_p=nan", "top_p must lie in (0, 1]"),
    ] {
        let output = seqmamba(&["run", "workflows/demo.toml", "--out", dir, "--set", set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{set}");
        assert!(stderr.contains(expected), "{set}: {stderr}");
    }
    let bad = out.path().join("bad.toml");
    std::fs::write(
        &bad,
        read(&root().join("workflows/demo.toml")) + "\n[outputs]\nformat = 1\n",
    )
    .unwrap();
    let output = seqmamba(&["run", bad.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `format`"));
}

#[test]
fn every_shipped_workflow_parses_and_starts() {
    let shared = root().join("../shared/data");
    let mut names: Vec<PathBuf> = std::fs::read_dir(root().join("workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    // Predict workflows last: they read a classifier trained by another one.
    names.sort_by_key(|p| (read(p).contains("task = \"predict\""), p.clone()));
    assert!(names.len() >= 9, "{names:?}");
    let out = tempfile::tempdir().unwrap();
    for path in names {
        let text = read(&path);
        let stem = path.file_stem().unwrap().to_str().unwrap();
        // The real workflows read ../shared/data; their sources must be there.
        if text.contains("../shared/data") && shared.exists() {
            let value: toml::Table = text.parse().unwrap();
            for source in value["data"]["sources"].as_array().unwrap() {
                let p = root().join(source.as_str().unwrap());
                assert!(p.exists(), "{stem}: {} is missing", p.display());
            }
        }
        let mut args: Vec<String> = [
            "--quiet",
            "run",
            path.to_str().unwrap(),
            "--out",
            out.path().join(stem).to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let mut set = |s: &str| args.extend(["--set".to_string(), s.to_string()]);
        for s in [
            "training.steps=1",
            "training.epochs=0",
            "training.batch_size=2",
            "training.seq_len=64",
            "model.preset=tiny",
            "generation.length=8",
            "evaluation.max_tokens=200",
            "device=cpu",
            "data.max_examples=24",
            "data.max_windows_per_label=4",
            "data.split.run_folds=1",
            "outputs.report=false",
        ] {
            set(s);
        }
        // Genomes and big sequence files are swapped for the small ones in data-samples/.
        match stem {
            "species" | "dna-pretrain" => {
                set("data.sources=['data-samples/dna/lambda-phage.fa.gz', \
                 'data-samples/dna/sars-cov-2.MN908947.fasta']")
            }
            s if !shared.exists() && !s.starts_with("demo") => continue,
            _ => {}
        }
        if stem == "species" {
            set("data.split.block=2000");
            set("data.split.test=0.3");
        }
        // The species classifier just trained here.
        let species_model = out.path().join("species/checkpoints/final");
        if stem == "species-predict" {
            set(&format!(
                "model.checkpoint={:?}",
                species_model.to_str().unwrap()
            ));
        }
        let output = Command::new(env!("CARGO_BIN_EXE_seqmamba"))
            .current_dir(root())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(out.path().join(stem).join("manifest.json").exists());
        if stem == "species-predict" {
            // 1,000 C. elegans reads and 45 phiX reads, a line each but for the one empty
            // phiX record.
            let table = read(&out.path().join(stem).join("predictions.tsv"));
            assert_eq!(table.lines().count(), 1 + 1000 + 44);
        }
    }
}

/// Relative difference of two numbers read from CSV fields.
fn relative_gap(a: &str, b: &str) -> f64 {
    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn validation_loss_is_logged_at_each_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let mut args = run_demo(&dir);
    args.extend(["--set", "data.split.validation=0.1"]);
    args.extend(SMALL);
    ok(seqmamba(&args));
    let log = rows(&dir.join("train_log.csv"));
    assert_eq!(log[0][7], "val_loss");
    // checkpoint_every = 4 over 6 steps: checkpoints after steps 4 and 6.
    for row in &log[1..] {
        let step: u64 = row[0].parse().unwrap();
        if step == 4 || step == 6 {
            let loss: f64 = row[7].parse().unwrap();
            assert!(loss > 0.5 && loss < 4.0, "{row:?}");
        } else {
            assert_eq!(row[7], "", "{row:?}");
        }
    }
    let report = read(&dir.join("report.md"));
    let last_val = &log[6][7].parse::<f64>().unwrap();
    assert!(report.contains(&format!("{last_val:.4}")), "{report}");
}

#[test]
fn demo_on_cuda_matches_the_cpu() {
    if let Err(e) = seqmamba_kernels::cuda::Cuda::new(0) {
        println!("skipping: no CUDA device ({e})");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run_on = |device: &str| {
        let dir = out.path().join(device.replace([':', ','], "-"));
        let mut args = vec!["--quiet", "demo", "--out", dir.to_str().unwrap()];
        args.extend(SMALL);
        args.extend(NO_REPORT);
        let set = format!("device={device}");
        args.extend(["--set", &set]);
        ok(seqmamba(&args));
        dir
    };
    let cpu = run_on("cpu");
    // One GPU, then the data-parallel path (NCCL) with a world of one.
    for (device, recorded) in [("cuda", "cuda:0"), ("cuda:0,", "cuda:0,")] {
        let gpu = run_on(device);
        check_same_results(&cpu, &gpu, recorded);
    }
}

/// The demo's run folders on the GPU (`gpu`) against the CPU's: same data, same
/// initialisation, results equal up to f32 reduction order.
fn check_same_results(cpu: &Path, gpu: &Path, device: &str) {
    for name in ["demo-dna", "demo-audio", "demo-promoters"] {
        let manifest: serde_json::Value =
            serde_json::from_str(&read(&gpu.join(name).join("manifest.json"))).unwrap();
        assert_eq!(manifest["device"], device);
        assert_eq!(manifest["world_size"], 1);
        assert!(
            manifest["device_name"]
                .as_str()
                .unwrap()
                .starts_with("cuda (")
        );
        let (a, b) = (
            log_without_seconds(&cpu.join(name)),
            log_without_seconds(&gpu.join(name)),
        );
        assert_eq!(a.len(), b.len());
        // The first loss comes before any update; AdamW's division by √v can then magnify
        // rounding differences of near-zero gradients a little, step by step.
        for (i, (x, y)) in a[1..].iter().zip(&b[1..]).enumerate() {
            assert_eq!(x[..2], y[..2]);
            let tolerance = if i == 0 { 1e-5 } else { 2e-3 };
            assert!(
                relative_gap(&x[2], &y[2]) < tolerance,
                "{device} {name}: {x:?} vs {y:?}"
            );
        }
    }
    for name in ["demo-dna", "demo-audio"] {
        let (a, b) = (
            rows(&cpu.join(name).join("lm_eval.csv")),
            rows(&gpu.join(name).join("lm_eval.csv")),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a[1..].iter().zip(&b[1..]) {
            assert_eq!(x[..2], y[..2]);
            // Baselines are computed on the host; the model's bits differ by rounding only.
            let tolerance = if x[1] == "mamba" { 2e-3 } else { 0.0 };
            assert!(
                relative_gap(&x[2], &y[2]) <= tolerance,
                "{device} {name}: {x:?} vs {y:?}"
            );
        }
    }
    let (a, b) = (
        rows(&cpu.join("demo-promoters/predictions.csv")),
        rows(&gpu.join("demo-promoters/predictions.csv")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a[1..].iter().zip(&b[1..]) {
        assert_eq!(x[..6], y[..6]);
        let (p, q): (f64, f64) = (x[8].parse().unwrap(), y[8].parse().unwrap());
        assert!((p - q).abs() < 2e-3, "{device}: {x:?} vs {y:?}");
    }
}

#[test]
fn classify_gives_a_trained_classifier_s_test_predictions_on_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec![
        "--quiet",
        "run",
        "workflows/demo-promoters.toml",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "training.epochs=0",
        "--set",
        "training.steps=8",
    ];
    args.extend(NO_REPORT);
    ok(seqmamba(&args));

    // The sample's sequences as FASTA, each named by its CSV line as the run's ids are.
    let csv = root().join("data-samples/dna/human_nontata_promoters.sample.csv.gz");
    let (reader, _) = seqmamba_modalities::input::open(&csv).unwrap();
    let mut fasta = String::new();
    for (index, line) in std::io::BufRead::lines(reader).enumerate().skip(1) {
        let line = line.unwrap();
        let bases = line.split(',').next().unwrap();
        fasta.push_str(&format!(">line{}\n{bases}\n", index + 1));
    }
    let reads = dir.path().join("promoters.fa");
    std::fs::write(&reads, fasta).unwrap();
    let table = dir.path().join("classified.tsv");
    let model = run.join("checkpoints/final");
    let summary = ok(seqmamba(&[
        "--json",
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--batch-size",
        "7",
        "--out",
        table.to_str().unwrap(),
        reads.to_str().unwrap(),
    ]));
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["records"], 200);
    let predicted = summary["predicted"].as_object().unwrap();
    let counted: u64 = predicted.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!((predicted.len(), counted), (2, 200));
    let classified: Vec<Vec<String>> = read(&table)
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect();
    assert_eq!(
        classified[0][..6],
        [
            "file",
            "record",
            "length",
            "predicted",
            "predicted_name",
            "prob_0"
        ]
    );
    assert_eq!(classified.len(), 201);
    assert_eq!(classified[1][1], "line2");
    assert_eq!(classified[200][1], "line201");

    // Every test example: the run's prediction and probabilities (reverse-complement
    // averaged, as the workflow asks), whatever the batch and the padding.
    let predictions = rows(&run.join("predictions.csv"));
    let mut compared = 0;
    for p in predictions.iter().skip(1).filter(|p| p[0] == "test") {
        let line: usize = p[2].rsplit(':').next().unwrap().parse().unwrap();
        let c = &classified[line - 1];
        assert_eq!(c[1], format!("line{line}"));
        assert_eq!(
            (c[2].as_str(), c[3].as_str()),
            (p[3].as_str(), p[6].as_str())
        );
        for (x, y) in c[5..].iter().zip(&p[8..]) {
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((x - y).abs() < 1e-9, "{c:?} vs {p:?}");
        }
        compared += 1;
    }
    assert_eq!(compared, 40);

    // From standard input (`-`): the same lines, the file named `-`.
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqmamba"))
        .args(["classify", "--model", model.to_str().unwrap(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fasta = std::fs::read(&reads).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &fasta));
    let piped = ok(child.wait_with_output().unwrap());
    feeder.join().unwrap().unwrap();
    let piped: Vec<Vec<String>> = piped
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect();
    assert_eq!(piped.len(), classified.len());
    for (p, c) in piped.iter().zip(&classified).skip(1) {
        assert_eq!((p[0].as_str(), &p[1..]), ("-", &c[1..]));
    }

    // The same as a workflow (task = "predict"): a run folder with the same table, the
    // records per predicted label, and a report.
    let workflow = dir.path().join("predict.toml");
    let text = format!(
        "name = \"p\"\ntask = \"predict\"\n[data]\nmodality = \"dna\"\nformat = \"sequences\"\n\
         sources = [{:?}]\n[model]\ncheckpoint = {:?}\n",
        reads.to_str().unwrap(),
        model.to_str().unwrap()
    );
    std::fs::write(&workflow, text).unwrap();
    let predicted = dir.path().join("predicted");
    ok(seqmamba(&[
        "--quiet",
        "run",
        workflow.to_str().unwrap(),
        "--out",
        predicted.to_str().unwrap(),
    ]));
    let from_run: Vec<Vec<String>> = read(&predicted.join("predictions.tsv"))
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect();
    assert_eq!(from_run.len(), classified.len());
    for (r, c) in from_run.iter().zip(&classified).skip(1) {
        assert_eq!(r[1..5], c[1..5]);
        let (x, y): (f64, f64) = (r[5].parse().unwrap(), c[5].parse().unwrap());
        assert!((x - y).abs() < 1e-9, "{r:?} vs {c:?}");
    }
    let counts = rows(&predicted.join("predicted_labels.csv"));
    assert_eq!(counts[0], ["label", "records", "share", "mean_probability"]);
    let total: u64 = counts[1..]
        .iter()
        .map(|r| r[1].parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 200);
    let report = read(&predicted.join("report.md"));
    assert!(report.contains("## Predictions"), "{report}");
    assert!(read(&predicted.join("manifest.json")).contains("promoters.fa"));

    // A bad record fails the whole table: no file appears.
    let bad = dir.path().join("bad.fa");
    std::fs::write(&bad, b">ok\nACGT\n>broken\nAC#GT\n").unwrap();
    let failed_table = dir.path().join("failed.tsv");
    let err = failed(seqmamba(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--out",
        failed_table.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]));
    assert!(err.contains("bad.fa") && err.contains("broken"), "{err}");
    assert!(!failed_table.exists());
    // A checkpoint written before it recorded its input: --seq-len is asked for, and with
    // it (and the reverse-complement averaging it no longer knows of left off) the table
    // still lists every read.
    let older = dir.path().join("older");
    std::fs::create_dir_all(&older).unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), older.join(entry.file_name())).unwrap();
    }
    let mut metadata: serde_json::Value =
        serde_json::from_str(&read(&older.join("seqmamba.json"))).unwrap();
    metadata.as_object_mut().unwrap().remove("input");
    std::fs::write(older.join("seqmamba.json"), metadata.to_string()).unwrap();
    let err = failed(seqmamba(&[
        "classify",
        "--model",
        older.to_str().unwrap(),
        reads.to_str().unwrap(),
    ]));
    assert!(err.contains("--seq-len"), "{err}");
    let by_length = ok(seqmamba(&[
        "classify",
        "--model",
        older.to_str().unwrap(),
        "--seq-len",
        "256",
        reads.to_str().unwrap(),
    ]));
    assert_eq!(by_length.lines().count(), 201);

    // The run folder names its final model; a cross-validated one lists its folds.
    let by_run = ok(seqmamba(&[
        "classify",
        "--model",
        run.to_str().unwrap(),
        reads.to_str().unwrap(),
    ]));
    assert_eq!(by_run.lines().count(), 201);
    let folds = dir.path().join("folds");
    std::fs::create_dir_all(folds.join("checkpoints/fold-0/final")).unwrap();
    std::fs::create_dir_all(folds.join("checkpoints/fold-1/final")).unwrap();
    let err = failed(seqmamba(&[
        "classify",
        "--model",
        folds.to_str().unwrap(),
        reads.to_str().unwrap(),
    ]));
    assert!(err.contains("fold-1/final"), "{err}");
    // A language model is no classifier.
    let lm = dir.path().join("lm");
    ok(seqmamba(&[
        "init",
        "--preset",
        "tiny",
        "--vocab-size",
        "10",
        "--out",
        lm.to_str().unwrap(),
    ]));
    let err = failed(seqmamba(&[
        "classify",
        "--model",
        lm.to_str().unwrap(),
        reads.to_str().unwrap(),
    ]));
    assert!(err.contains("not a classifier"), "{err}");
}
