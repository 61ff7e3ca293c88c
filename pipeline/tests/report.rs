//! End to end: a synthetic run folder (3 classes, 2 folds, a language-model evaluation and a
//! generated clip) rendered into tables, plots and report.md, the values read back.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::{CsvReadOptions, DataFrame, ParquetReader, SerReader};
use seqmamba::report::{compare, render};

const CLASSES: [&str; 3] = ["exon", "intron", "intergenic"];

/// (fold, length, label, predicted). Pooled over both folds the confusion matrix is
/// [[3,1,0],[0,3,1],[1,0,3]]: accuracy 9/12, every class precision = recall = 3/4, and
/// MCC = (9·12 − 48) / (144 − 48) = 0.625. Fold 0 is [[1,1,0],[0,2,0],[1,0,1]]: accuracy
/// 4/6, MCC = (4·6 − 12) / sqrt((36 − 14)(36 − 12)) = 0.52223…; fold 1 has accuracy 5/6.
const EXAMPLES: [(u32, u64, usize, usize); 12] = [
    (0, 100, 0, 0),
    (0, 100, 0, 1),
    (0, 300, 1, 1),
    (0, 300, 1, 1),
    (0, 600, 2, 2),
    (0, 600, 2, 0),
    (1, 100, 0, 0),
    (1, 300, 0, 0),
    (1, 300, 1, 2),
    (1, 600, 1, 1),
    (1, 600, 2, 2),
    (1, 1000, 2, 2),
];

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn synthetic_run(dir: &Path) {
    write(
        &dir.join("manifest.json"),
        r#"{"name": "synthetic", "seed": 7, "device": "cpu", "threads": 2,
            "program_version": "0.1.0", "git_commit": null,
            "started": "2026-11-29T12:00:00Z", "finished": "2026-11-29T12:05:00Z",
            "stages": [{"name": "train", "seconds": 280.5}], "inputs": [], "world_size": 1,
            "task": "classification"}"#,
    );
    let mut log = String::from("step,fold,loss,grad_norm,lr,tokens,seconds,val_loss\n");
    for fold in 0..2 {
        for step in 1..=5 {
            let loss = 1.5 - 0.2 * step as f64 + 0.05 * fold as f64;
            let val = if step % 5 == 0 {
                format!("{:.3}", loss + 0.1)
            } else {
                String::new()
            };
            log += &format!(
                "{step},{fold},{loss:.3},1.0,0.001,{},{}.5,{val}\n",
                64 * step,
                step
            );
        }
    }
    write(&dir.join("train_log.csv"), &log);
    let mut predictions = String::from(
        "split,fold,id,length,label,label_name,predicted,predicted_name,prob_0,prob_1,prob_2\n",
    );
    for (i, &(fold, length, label, predicted)) in EXAMPLES.iter().enumerate() {
        let probs: Vec<&str> = (0..3)
            .map(|k| if k == predicted { "0.6" } else { "0.2" })
            .collect();
        predictions += &format!(
            "test,{fold},seq{i},{length},{label},{},{predicted},{},{}\n",
            CLASSES[label],
            CLASSES[predicted],
            probs.join(",")
        );
    }
    write(&dir.join("predictions.csv"), &predictions);
    write(
        &dir.join("labels.json"),
        r#"["exon", "intron", "intergenic"]"#,
    );
    write_lm_eval(dir);
    write_tone(&dir.join("generated/sample-0.wav"));
}

fn write_lm_eval(dir: &Path) {
    write(
        &dir.join("lm_eval.csv"),
        "split,model,bits_per_token,tokens\n\
         test,mamba,1.8765,10000\n\
         test,markov-0,1.999,10000\n\
         test,markov-2,1.9301,10000\n\
         test,deflate,2.1234,10000\n",
    );
}

/// A quarter second of 440 Hz at 8 kHz, 16-bit.
fn write_tone(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for n in 0..2000 {
        let x = (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 8000.0).sin();
        writer.write_sample((x * 16000.0) as i16).unwrap();
    }
    writer.finalize().unwrap();
}

fn read_csv(path: &Path) -> DataFrame {
    CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .unwrap()
        .finish()
        .unwrap()
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn strings(frame: &DataFrame, column: &str) -> Vec<String> {
    let column = frame
        .column(column)
        .unwrap()
        .cast(&polars::prelude::DataType::String)
        .unwrap();
    column
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap_or("").to_string())
        .collect()
}

fn floats(frame: &DataFrame, column: &str) -> Vec<Option<f64>> {
    let column = frame
        .column(column)
        .unwrap()
        .cast(&polars::prelude::DataType::Float64)
        .unwrap();
    column.f64().unwrap().iter().collect()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// Whether `path` is a PNG that decodes to a non-blank image.
fn assert_png(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()));
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert!(
        info.width >= 300 && info.height >= 300,
        "{}",
        path.display()
    );
    let coloured = pixels.iter().filter(|&&b| b < 200).count();
    assert!(coloured > 1000, "{} is nearly blank", path.display());
}

#[test]
fn report_of_a_synthetic_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    synthetic_run(&run);
    let summary = render(&run).unwrap();

    assert_eq!(summary.name.as_deref(), Some("synthetic"));
    assert_eq!(summary.classification.len(), 1);
    let pooled = &summary.classification[0];
    assert_eq!(
        (pooled.split.as_str(), pooled.fold.as_str(), pooled.examples),
        ("test", "all", 12)
    );
    assert!(close(Some(pooled.accuracy), 0.75));
    assert!(close(Some(pooled.macro_f1), 0.75));
    assert!(close(Some(pooled.mcc), 0.625));
    assert_eq!(pooled.auroc, None, "AUROC is for two classes only");
    // Last losses 1.5 − 1.0 and 1.55 − 1.0.
    assert!(close(summary.final_loss, 0.525));
    assert_eq!(summary.language_model.len(), 4);

    let tables = run.join("tables");
    for metrics in [
        read_csv(&tables.join("metrics.csv")),
        read_parquet(&tables.join("metrics.parquet")),
    ] {
        assert_eq!(strings(&metrics, "fold"), ["0", "1", "all", "mean"]);
        let accuracy = floats(&metrics, "accuracy");
        for (got, want) in accuracy.iter().zip([4.0 / 6.0, 5.0 / 6.0, 0.75, 0.75]) {
            assert!(close(*got, want), "{accuracy:?}");
        }
        let mcc = floats(&metrics, "mcc");
        assert!(close(mcc[0], 12.0 / 528f64.sqrt()), "{mcc:?}");
        assert!(close(mcc[2], 0.625), "{mcc:?}");
        assert!(floats(&metrics, "auroc").iter().all(Option::is_none));
    }

    let confusion = read_parquet(&tables.join("confusion.parquet"));
    let (folds, labels, predicted) = (
        strings(&confusion, "fold"),
        strings(&confusion, "label_name"),
        strings(&confusion, "predicted_name"),
    );
    assert!(
        folds
            .iter()
            .all(|f| ["0", "1", "all"].contains(&f.as_str())),
        "{folds:?}"
    );
    assert_eq!(confusion.height(), 3 * 9);
    let counts = floats(&confusion, "count");
    let pooled_counts: Vec<f64> = (0..confusion.height())
        .filter(|&i| folds[i] == "all")
        .map(|i| counts[i].unwrap())
        .collect();
    assert_eq!(pooled_counts, [3.0, 1.0, 0.0, 0.0, 3.0, 1.0, 1.0, 0.0, 3.0]);
    let i = (0..confusion.height())
        .find(|&i| folds[i] == "all" && labels[i] == "intergenic" && predicted[i] == "exon")
        .unwrap();
    assert_eq!(counts[i], Some(1.0));

    let per_class = read_csv(&tables.join("per_class.csv"));
    let folds = strings(&per_class, "fold");
    let precision = floats(&per_class, "precision");
    let recall = floats(&per_class, "recall");
    for i in (0..per_class.height()).filter(|&i| folds[i] == "all") {
        assert!(close(precision[i], 0.75) && close(recall[i], 0.75));
    }
    // Fold 0, class exon: predicted twice, right once; labelled twice.
    assert!(close(precision[0], 0.5) && close(recall[0], 0.5));

    let by_length = read_csv(&tables.join("by_length.csv"));
    let folds = strings(&by_length, "fold");
    let rows: Vec<(String, Option<f64>, Option<f64>)> = (0..by_length.height())
        .filter(|&i| folds[i] == "all")
        .map(|i| {
            (
                strings(&by_length, "length_low")[i].clone(),
                floats(&by_length, "examples")[i],
                floats(&by_length, "accuracy")[i],
            )
        })
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("64", Some(3.0)));
    assert!(close(rows[0].2, 2.0 / 3.0));
    assert_eq!((rows[1].0.as_str(), rows[1].1), ("256", Some(4.0)));
    assert!(close(rows[1].2, 0.75));
    assert_eq!((rows[2].0.as_str(), rows[2].1), ("512", Some(5.0)));
    assert!(close(rows[2].2, 0.8));

    let predictions = read_parquet(&tables.join("predictions.parquet"));
    assert_eq!(predictions.height(), 12);
    assert_eq!(strings(&predictions, "predicted_name")[5], "exon");
    assert_eq!(strings(&predictions, "correct")[..2], ["true", "false"]);
    assert!(close(floats(&predictions, "prob_1")[1], 0.6));

    let training = read_parquet(&tables.join("training.parquet"));
    assert_eq!(training.height(), 10);
    assert_eq!(
        floats(&training, "val_loss")
            .iter()
            .filter(|v| v.is_some())
            .count(),
        2
    );

    let lm = read_csv(&tables.join("lm_eval.csv"));
    assert_eq!(
        strings(&lm, "model"),
        ["mamba", "markov-0", "markov-2", "deflate"]
    );
    assert!(close(floats(&lm, "bits_above_model")[3], 2.1234 - 1.8765));

    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [
        "# Run report: synthetic",
        "| test | all | 12 | 0.7500 | 0.7500 | 0.6250 | – |",
        // Fold 0 F1 per class: 2/4, 4/5, 2/3 → macro 0.6556.
        "| test | 0 | 6 | 0.6667 | 0.6556 | 0.5222 | – |",
        "| intergenic | 1 | 0 | 3 |",
        "| 512–1023 | 5 | 0.8000 |",
        "| test | deflate | 2.1234 | 10000 | 0.2469 |",
        "| seed | 7 |",
        "![Training loss against step](plots/training.png)",
        "(plots/confusion-test.png)",
        "(plots/sample-0-waveform.png)",
        "(plots/sample-0-spectrogram.png)",
        "sample-0.wav (0.25 s at 8000 Hz)",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
    for plot in [
        "training",
        "confusion-test",
        "sample-0-waveform",
        "sample-0-spectrogram",
    ] {
        assert_png(&run.join(format!("plots/{plot}.png")));
    }
    for file in &summary.files {
        assert!(
            run.join(file).is_file(),
            "{} listed but not written",
            file.display()
        );
    }
    assert_eq!(summary.files.len(), 7 * 2 + 4 + 1);
}

#[test]
fn missing_sections_are_skipped_and_runs_compare() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    synthetic_run(&full);
    let lm_only = dir.path().join("lm-only");
    write_lm_eval(&lm_only);
    let summary = render(&lm_only).unwrap();
    assert!(summary.classification.is_empty() && summary.final_loss.is_none());
    let md = std::fs::read_to_string(lm_only.join("report.md")).unwrap();
    assert!(
        md.contains("## Language model")
            && !md.contains("## Classification")
            && !md.contains("## Training")
    );
    assert!(!lm_only.join("tables/metrics.csv").exists());
    assert!(lm_only.join("tables/lm_eval.parquet").exists());

    let out = dir.path().join("comparison");
    let runs: Vec<PathBuf> = vec![full.clone(), lm_only.clone()];
    let summaries = compare(&runs, &out).unwrap();
    assert_eq!(summaries.len(), 2);
    for table in [
        read_csv(&out.join("comparison.csv")),
        read_parquet(&out.join("comparison.parquet")),
    ] {
        assert_eq!(table.height(), 2);
        assert!(close(floats(&table, "accuracy")[0], 0.75));
        assert_eq!(floats(&table, "accuracy")[1], None);
        assert!(close(floats(&table, "bits_per_token")[1], 1.8765));
        assert_eq!(strings(&table, "best_baseline"), ["markov-2", "markov-2"]);
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| synthetic | test | 12 | 0.7500 | 0.7500 | 0.6250 | – | 1.8765 | markov-2 1.9301 | 0.5250 |"), "{md}");
}

#[test]
fn malformed_predictions_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_run(dir.path());
    let path = dir.path().join("predictions.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 4 {
                l.replace("0.6", "0.6x")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, broken.join("\n")).unwrap();
    let error = render(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("predictions.csv:5:") && error.contains("prob_"),
        "{error}"
    );
    assert!(!dir.path().join("report.md").exists());
}

#[test]
fn cli_renders_and_compares() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    synthetic_run(&a);
    synthetic_run(&b);
    let seqmamba = env!("CARGO_BIN_EXE_seqmamba");
    let status = std::process::Command::new(seqmamba)
        .arg("report")
        .args([&a, &b])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "several runs without --out must fail"
    );
    let out = dir.path().join("cmp");
    let status = std::process::Command::new(seqmamba)
        .arg("report")
        .args([&a, &b])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(a.join("report.md").is_file() && b.join("plots/training.png").is_file());
    assert_eq!(read_csv(&out.join("comparison.csv")).height(), 2);
}
