//! End-to-end tests on the real files in `data-samples/`.

use std::path::{Path, PathBuf};

use seqmamba_modalities::audio::{self, resample::resample, wav, Normalization, Quantizer};
use seqmamba_modalities::dataset::{self, splits, HeaderLabel};
use seqmamba_modalities::dna::{
    alignment::{AlignmentOptions, AlignmentReader},
    fasta::{FastaReader, IndexedFasta},
    read_tokens, tokenizer, windows, DnaFormat, TokenRecord,
};
use seqmamba_modalities::error::OnError;
use seqmamba_modalities::input::Compression;
use seqmamba_modalities::inspect::{inspect, Summary};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data-samples")
        .join(rel)
}

fn all(path: &Path) -> Vec<TokenRecord> {
    read_tokens(path, AlignmentOptions::default(), OnError::Fail)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn fasta_plain_gzip_and_bgzf_give_the_same_tokens() {
    let plain = all(&sample("dna/sars-cov-2.MN908947.fasta"));
    let bgzf = all(&sample("dna/sars-cov-2.MN908947.fasta.gz"));
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].name, "MN908947");
    assert_eq!(plain[0].tokens.len(), 29_903);
    assert_eq!(plain, bgzf);
    // The genome starts ATTAAAGGTT (first line of the file).
    assert_eq!(
        &plain[0].tokens[..10],
        tokenizer::encode(b"ATTAAAGGTT").unwrap()
    );
    let reader =
        FastaReader::open(&sample("dna/sars-cov-2.MN908947.fasta.gz"), OnError::Fail).unwrap();
    assert_eq!(reader.compression(), Compression::Bgzf);
    let lambda = all(&sample("dna/lambda-phage.fa.gz"));
    assert_eq!(lambda[0].tokens.len(), 48_502);
    assert_eq!(lambda[0].name, "gi|9626243|ref|NC_001416.1|");
}

#[test]
fn indexed_fasta_windows_match_the_streamed_genome() {
    let genome = all(&sample("dna/sars-cov-2.MN908947.fasta"))
        .remove(0)
        .tokens;
    for file in [
        "dna/sars-cov-2.MN908947.fasta",
        "dna/sars-cov-2.MN908947.fasta.gz",
    ] {
        let mut fasta = IndexedFasta::open(&sample(file)).unwrap();
        assert_eq!(fasta.sequences(), vec![("MN908947".to_string(), 29_903)]);
        // Windows across line ends and BGZF block ends (blocks hold ~64 KiB, lines 61 bytes).
        for start in [0u64, 59, 60, 12_345, 29_903 - 1_000] {
            let got = fasta.fetch("MN908947", start..start + 1_000).unwrap();
            assert_eq!(
                got,
                genome[start as usize..start as usize + 1_000],
                "{file} @ {start}"
            );
        }
        assert!(fasta.fetch("MN908947", 29_000..30_000).is_err());
        assert!(fasta
            .fetch("chrZ", 0..10)
            .unwrap_err()
            .to_string()
            .contains("chrZ"));
    }
}

#[test]
fn gzip_fastq_reads_every_read() {
    let reads = all(&sample("dna/phix.1.fastq.gz"));
    assert_eq!(reads.len(), 45);
    // Read 2 is soft-masked (lowercase) and starts with n: same tokens as uppercase.
    assert_eq!(
        &reads[1].tokens[..8],
        tokenizer::encode(b"NGACGAAT").unwrap()
    );
    // The upstream test file holds one empty read (named "empty"), which is valid FASTQ.
    let empty: Vec<_> = reads
        .iter()
        .filter(|r| r.tokens.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(empty, ["empty"]);
    assert_eq!(
        DnaFormat::detect(&sample("dna/phix.1.fastq.gz")).unwrap(),
        DnaFormat::Fastq
    );
}

#[test]
fn bam_and_sam_reads_with_restored_orientation() {
    let range = all(&sample("dna/range.bam"));
    assert_eq!(range.len(), 112);
    assert!(range.iter().all(|r| r.tokens.len() == 100));
    let big = AlignmentReader::open_bam(
        &sample("dna/1000g-mpileup.1.bam"),
        AlignmentOptions::default(),
        OnError::Fail,
    )
    .unwrap();
    assert_eq!(big.reference_count(), 86);
    assert_eq!(big.count(), 569);

    // A SAM stores reverse-strand reads reverse-complemented; restoring must give back the
    // FASTQ read exactly.
    let fastq: std::collections::HashMap<String, Vec<u8>> = all(&sample("dna/phix.1.fastq.gz"))
        .into_iter()
        // Aligners drop the mate suffix "/1" from read names.
        .map(|r| (r.name.trim_end_matches("/1").to_string(), r.tokens))
        .collect();
    let restore = AlignmentOptions {
        restore_orientation: true,
        primary_only: true,
    };
    let sam =
        AlignmentReader::open_sam(&sample("dna/phix.se.sam"), restore, OnError::Fail).unwrap();
    let mut matched = 0;
    for read in sam {
        let read = read.unwrap();
        if let Some(original) = fastq.get(&read.name) {
            assert_eq!(&read.tokens, original, "read {}", read.name);
            matched += 1;
        }
    }
    assert_eq!(matched, 45, "every SAM read is a FASTQ read");

    // BAM: reverse-strand (0x10) reads come back reverse-complemented, the others as stored.
    let path = sample("dna/range.bam");
    let restore = AlignmentOptions {
        restore_orientation: true,
        primary_only: false,
    };
    let restored: Vec<TokenRecord> = read_tokens(&path, restore, OnError::Fail)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut bam = noodles::bam::io::Reader::new(std::fs::File::open(&path).unwrap());
    bam.read_header().unwrap();
    let reverse: Vec<bool> = bam
        .records()
        .map(|r| r.unwrap().flags().is_reverse_complemented())
        .collect();
    assert_eq!(reverse.iter().filter(|&&r| r).count(), 56);
    assert_eq!((restored.len(), reverse.len()), (range.len(), range.len()));
    for ((stored, read), reverse) in range.iter().zip(&restored).zip(reverse) {
        let mut expected = stored.tokens.clone();
        if reverse {
            tokenizer::reverse_complement(&mut expected);
        }
        assert_eq!(read.tokens, expected, "read {}", read.name);
    }
}

#[test]
fn streamed_windows_equal_windows_of_the_whole_genome() {
    for (file, window, stride) in [
        ("dna/sars-cov-2.MN908947.fasta", 1_000, 700),
        ("dna/sars-cov-2.MN908947.fasta.gz", 61, 61),
        ("dna/lambda-phage.fa.gz", 4_096, 5_000),
    ] {
        let genome = all(&sample(file)).remove(0);
        let expected: Vec<_> = windows::fixed(genome.tokens.len() as u64, window, stride)
            .unwrap()
            .map(|r| {
                (
                    r.start,
                    genome.tokens[r.start as usize..r.end as usize].to_vec(),
                )
            })
            .collect();
        let streamed: Vec<_> = FastaReader::open(&sample(file), OnError::Fail)
            .unwrap()
            .windows(window as usize, stride as usize)
            .unwrap()
            .map(|w| {
                let w = w.unwrap();
                assert_eq!(w.record, genome.name);
                (w.start, w.tokens)
            })
            .collect();
        assert_eq!(streamed.len(), expected.len(), "{file}");
        assert!(streamed == expected, "{file}: windows differ");
    }
}

#[test]
fn genome_windows_split_by_position() {
    let genome = all(&sample("dna/sars-cov-2.MN908947.fasta"))
        .remove(0)
        .tokens;
    let plan = windows::PositionSplit {
        block: 2_000,
        validation: 0.1,
        test: 0.2,
        seed: 11,
    };
    let w = plan.windows(0, genome.len() as u64, 1_000, 500).unwrap();
    let test: Vec<_> = w
        .iter()
        .filter(|(_, s)| *s == splits::Split::Test)
        .collect();
    let train: Vec<_> = w
        .iter()
        .filter(|(_, s)| *s == splits::Split::Train)
        .collect();
    assert!(!test.is_empty() && !train.is_empty());
    for (t, _) in &test {
        for (r, _) in &train {
            assert!(t.end <= r.start || r.end <= t.start, "{t:?} overlaps {r:?}");
        }
    }
    let random = windows::random(genome.len() as u64, 1_000, 10, 5).unwrap();
    assert!(random.iter().all(|r| r.end as usize <= genome.len()));
}

#[test]
fn every_audio_format_decodes_to_the_same_clip() {
    let reference = audio::decode_mono(&sample("audio/fsdd/0_jackson_0.wav")).unwrap();
    assert_eq!(reference.sample_rate, 8000);
    assert_eq!(reference.channels, 1);
    assert_eq!(reference.samples.len(), 5148);
    // Lossless encodings give the samples back exactly (up to their precision), lossy ones
    // come close in RMS.
    let cases: [(&str, f32); 8] = [
        ("audio/0_jackson_0.flac", 1e-6),
        ("audio/0_jackson_0.f32.wav", 1e-6),
        ("audio/0_jackson_0.s24.wav", 1e-6),
        // Measured: mu-law and A-law 0.0019, IMA ADPCM 0.0063 (signal rms 0.137).
        ("audio/0_jackson_0.mulaw.wav", 0.004),
        ("audio/0_jackson_0.alaw.wav", 0.004),
        ("audio/0_jackson_0.ima-adpcm.wav", 0.012),
        ("audio/0_jackson_0.ogg", 0.05),
        ("audio/0_jackson_0.mp3", 0.08),
    ];
    let energy = (reference.samples.iter().map(|x| x * x).sum::<f32>() / 5148.0).sqrt();
    for (file, tolerance) in cases {
        let clip = audio::decode_mono(&sample(file)).unwrap();
        assert_eq!(clip.sample_rate, 8000, "{file}");
        let n = clip.samples.len().min(5148);
        assert!(
            n + 1200 >= 5148,
            "{file}: only {} samples",
            clip.samples.len()
        );
        if file.ends_with(".mp3") || file.ends_with(".ogg") {
            // Lossy codecs: compare the loudness, not the waveform (encoder delay shifts it).
            let e = (clip.samples.iter().map(|x| x * x).sum::<f32>() / clip.samples.len() as f32)
                .sqrt();
            assert!(
                (e - energy).abs() < tolerance,
                "{file}: rms {e} vs {energy}"
            );
        } else {
            let rms = (clip.samples[..n]
                .iter()
                .zip(&reference.samples)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / n as f32)
                .sqrt();
            assert!(rms < tolerance, "{file}: rms error {rms}");
        }
    }
    // Stereo 44.1 kHz (made by sox): the two equal channels downmix to the clip. Our 8 → 44.1
    // kHz resampling matches sox's to 2% of the signal rms (a shift by one sample gives 6%);
    // back to 8 kHz loses only what lies near 4 kHz, above the anti-aliasing cutoff.
    let stereo = audio::decode_mono(&sample("audio/0_jackson_0.stereo44k.wav")).unwrap();
    assert_eq!((stereo.sample_rate, stereo.channels), (44_100, 2));
    let rms = |a: &[f32], b: &[f32]| {
        (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32).sqrt()
    };
    let up = resample(&reference.samples, 8_000, 44_100).unwrap();
    assert_eq!(up.len(), 28_379); // ceil(5148 · 44100 / 8000); sox rounds to 28,378
    let err = rms(&up[500..27_000], &stereo.samples[500..27_000]);
    assert!(
        err < 0.05 * energy,
        "upsampled rms error {err}, signal rms {energy}"
    );
    let back = resample(&stereo.samples, 44_100, 8_000).unwrap();
    assert_eq!(back.len(), 5148);
    let err = rms(&back[100..5000], &reference.samples[100..5000]);
    assert!(
        err < 0.2 * energy,
        "round-trip rms error {err}, signal rms {energy}"
    );
}

#[test]
fn mulaw_tokens_round_trip_through_a_wav_file() {
    let samples = audio::load_mono(
        &sample("audio/fsdd/1_theo_5.wav"),
        8000,
        Normalization::Peak,
    )
    .unwrap();
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((peak - 1.0).abs() < 1e-6);
    let tokens = Quantizer::MuLaw.encode_all(&samples);
    let dir = std::env::temp_dir().join(format!("seqmamba-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tokens.wav");
    wav::write_tokens_wav(&out, &tokens, Quantizer::MuLaw, 8000).unwrap();
    let heard = audio::decode_mono(&out).unwrap();
    assert_eq!(heard.samples.len(), samples.len());
    for (x, y) in samples.iter().zip(&heard.samples) {
        // mu-law bound plus 16-bit PCM rounding.
        let bound = (1.0 + 255.0 * x.abs()) * 8.72e-5 + 1.0 / 32767.0;
        assert!((x - y).abs() <= bound, "{x} → {y}");
    }
    // Decoding the tokens again from the WAV gives the same tokens.
    assert_eq!(Quantizer::MuLaw.encode_all(&heard.samples), tokens);
}

#[test]
fn linear_tokens_round_trip_through_a_wav_file() {
    let samples = audio::load_mono(
        &sample("audio/fsdd/1_theo_5.wav"),
        8000,
        Normalization::Peak,
    )
    .unwrap();
    let tokens = Quantizer::Linear.encode_all(&samples);
    let dir = std::env::temp_dir().join(format!("seqmamba-e2e-linear-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tokens.wav");
    wav::write_tokens_wav(&out, &tokens, Quantizer::Linear, 8000).unwrap();
    let heard = audio::decode_mono(&out).unwrap();
    assert_eq!(heard.samples.len(), samples.len());
    let mut worst = 0.0f32;
    for (x, y) in samples.iter().zip(&heard.samples) {
        // Half a linear step (1/255) plus 16-bit PCM rounding and scaling.
        let bound = 1.0 / 255.0 + 2.0 / 32767.0;
        assert!((x - y).abs() <= bound, "{x} → {y}");
        worst = worst.max((x - y).abs());
    }
    // The bound is not loose: some sample comes close to half a step.
    assert!(worst > 0.9 / 255.0, "worst error {worst}");
    assert_eq!(Quantizer::Linear.encode_all(&heard.samples), tokens);
}

#[test]
fn datasets_from_every_source_kind() {
    let fsdd = dataset::from_fsdd(&sample("audio/fsdd")).unwrap();
    assert_eq!(fsdd.examples.len(), 8);
    assert_eq!(
        fsdd.labels.names(),
        ["0", "1", "2", "3", "4", "5", "7", "9"]
    );
    // index < 5 is test: 0_jackson_0, 3_yweweler_3, 9_theo_1.
    assert_eq!(fsdd.split(splits::Split::Test).count(), 3);
    let held_out = splits::group_split(&fsdd.groups(), &["theo"]).unwrap();
    assert_eq!(
        held_out
            .iter()
            .filter(|&&s| s == splits::Split::Test)
            .count(),
        2
    );
    let (clips, skipped) =
        dataset::decode_audio(&fsdd.examples, 16_000, Normalization::Peak, OnError::Fail).unwrap();
    assert_eq!(skipped, 0);
    assert!(clips
        .iter()
        .all(|c| c.as_ref().is_some_and(|c| c.len() > 3000)));

    let (gb, skipped) = dataset::from_genomic_benchmarks_csv(
        &sample("dna/human_nontata_promoters.sample.csv.gz"),
        OnError::Fail,
    )
    .unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(gb.examples.len(), 200);
    assert_eq!(gb.label_counts(), vec![92, 108]);
    assert!(gb
        .examples
        .iter()
        .all(|e| matches!(&e.data, dataset::ExampleData::Tokens(t) if t.len() == 251)));
    let folds = splits::k_fold(gb.examples.len(), 5, 0).unwrap();
    assert_eq!(
        splits::fold_split(&folds, 4)
            .iter()
            .filter(|&&s| s == splits::Split::Test)
            .count(),
        40
    );

    let (lambda, skipped) = dataset::from_fasta_headers(
        &sample("dna/lambda-phage.fa.gz"),
        &HeaderLabel::Field {
            separator: '|',
            index: 3,
        },
        OnError::Fail,
    )
    .unwrap();
    assert_eq!(
        (lambda.labels.names(), skipped),
        (&["NC_001416.1".to_string()][..], 0)
    );

    let dir = std::env::temp_dir().join(format!("seqmamba-manifest-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("m.csv");
    let wav = sample("audio/fsdd/2_george_12.wav");
    std::fs::write(
        &manifest,
        format!(
            "path,label,split,group\n{},two,train,george\n",
            wav.display()
        ),
    )
    .unwrap();
    let (m, _) = dataset::from_manifest(&manifest, OnError::Fail).unwrap();
    assert_eq!(m.examples[0].split, Some(splits::Split::Train));
    assert_eq!(m.examples[0].data, dataset::ExampleData::Path(wav));
}

#[test]
fn inspect_summarises_dna_and_audio() {
    let Summary::Dna(bam) = inspect(
        &sample("dna/range.bam"),
        AlignmentOptions::default(),
        OnError::Fail,
    )
    .unwrap() else {
        panic!("BAM taken for audio")
    };
    assert_eq!(
        (bam.format, bam.records, bam.bases),
        (DnaFormat::Bam, 112, 11_200)
    );
    assert_eq!(bam.token_counts.iter().sum::<u64>(), 11_200);
    let text = Summary::Dna(bam).to_string();
    assert!(text.contains("records      112"), "{text}");

    let Summary::Audio(flac) = inspect(
        &sample("audio/0_jackson_0.flac"),
        AlignmentOptions::default(),
        OnError::Fail,
    )
    .unwrap() else {
        panic!("FLAC taken for DNA")
    };
    assert_eq!(
        (flac.sample_rate, flac.channels, flac.frames),
        (8000, 1, 5148)
    );
    assert!((flac.duration_seconds - 0.6435).abs() < 1e-3);
    assert!(Summary::Audio(flac).to_string().contains("8000 Hz"));
}
