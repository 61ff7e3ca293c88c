//! Decoding throughput on real data, for docs/benchmarks.md.
//!
//! `cargo run --release -p seqmamba-modalities --example throughput [-- SHARED_DATA [SCRATCH]]`
//!
//! - FASTA → tokens, MB/s on one core, plain and gzip (real genomes concatenated and repeated
//!   to ~200 MB);
//! - BAM → tokens, reads/s on one core (the real 1000 Genomes BAM repeated to ~1M reads);
//! - audio decode + resample 8 → 16 kHz + mu-law, seconds of audio per second, on one core
//!   and on all cores (rayon), over the 3,000 FSDD recordings.
//!
//! Each figure is the best of three runs (the machine is shared with other work).

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use flate2::{write::GzEncoder, Compression as GzLevel};
use noodles::{bam, sam};
use rayon::prelude::*;
use seqmamba_modalities::{
    audio::{decode_mono, resample::resample, Quantizer},
    dna::{
        alignment::{AlignmentOptions, AlignmentReader},
        fasta::FastaReader,
    },
    error::OnError,
};

const FASTA_BYTES: u64 = 200 << 20;
const BAM_COPIES: usize = 1800;
const RUNS: usize = 3;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs `f` `RUNS` times and keeps the fastest run (the machine is shared: the best run is
/// the one least disturbed). `f` returns a count; the result is (count, seconds).
fn best_of<T: Copy>(mut f: impl FnMut() -> T) -> (T, f64) {
    let mut best = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let value = f();
        let secs = start.elapsed().as_secs_f64();
        best = match best {
            Some((v, b)) if b <= secs => Some((v, b)),
            _ => Some((value, secs)),
        };
    }
    best.expect("RUNS > 0")
}

/// Tokenises every record of a FASTA file; returns (bases, seconds) of the best run.
fn time_fasta(path: &Path) -> (u64, f64) {
    best_of(|| {
        let mut bases = 0u64;
        for record in FastaReader::open(path, OnError::Fail).unwrap() {
            bases += record.unwrap().tokens.len() as u64;
        }
        bases
    })
}

fn build_fasta(shared: &Path, plain: &Path) {
    let genomes = [
        "dna/genomes/e-coli-536.NC_008253.fna.gz",
        "dna/genomes/s-aureus-NCTC8325.fasta.gz",
        "dna/genomes/h-pylori-2-strains.fasta.gz",
        "dna/genomes/c-elegans-slice.fa.gz",
    ];
    let mut text = Vec::new();
    for g in genomes {
        let file = File::open(shared.join(g)).unwrap();
        flate2::read::MultiGzDecoder::new(file)
            .read_to_end(&mut text)
            .unwrap();
    }
    let mut out = BufWriter::new(File::create(plain).unwrap());
    let mut written = 0u64;
    while written < FASTA_BYTES {
        out.write_all(&text).unwrap();
        written += text.len() as u64;
    }
    out.flush().unwrap();
}

fn build_bam(shared: &Path, path: &Path) -> u64 {
    let mut reader =
        bam::io::Reader::new(File::open(shared.join("dna/reads/1000g-mpileup.1.bam")).unwrap());
    let header: sam::Header = reader.read_header().unwrap();
    let records: Vec<bam::Record> = reader.records().collect::<Result<_, _>>().unwrap();
    let mut writer = bam::io::Writer::new(File::create(path).unwrap());
    writer.write_header(&header).unwrap();
    for _ in 0..BAM_COPIES {
        for r in &records {
            writer.write_record(&header, r).unwrap();
        }
    }
    writer.try_finish().unwrap();
    (records.len() * BAM_COPIES) as u64
}

fn audio_seconds(path: &Path) -> (f64, usize) {
    let clip = decode_mono(path).unwrap();
    let seconds = clip.samples.len() as f64 / clip.sample_rate as f64;
    let resampled = resample(&clip.samples, clip.sample_rate, 16_000).unwrap();
    let tokens = Quantizer::MuLaw.encode_all(&resampled);
    (seconds, tokens.len())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shared = PathBuf::from(args.first().map(String::as_str).unwrap_or("../shared/data"));
    let scratch = PathBuf::from(args.get(1).cloned().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("seqmamba-bench")
            .display()
            .to_string()
    }));
    std::fs::create_dir_all(&scratch).unwrap();
    println!(
        "one core = a single thread; {} threads for the parallel row",
        rayon::current_num_threads()
    );

    // FASTA plain.
    let plain = scratch.join("genomes.fa");
    if !plain.exists() {
        build_fasta(&shared, &plain);
    }
    let size = std::fs::metadata(&plain).unwrap().len();
    let (bases, secs) = time_fasta(&plain);
    println!(
        "FASTA plain → tokens: {:.0} MB file, {} bases in {secs:.2} s = {:.0} MB/s ({:.0} Mbases/s)",
        mb(size),
        bases,
        mb(size) / secs,
        bases as f64 / 1e6 / secs
    );

    // FASTA gzip (level 6, as gzip's default).
    let gz = scratch.join("genomes.fa.gz");
    if !gz.exists() {
        let mut enc = GzEncoder::new(
            BufWriter::new(File::create(&gz).unwrap()),
            GzLevel::default(),
        );
        std::io::copy(&mut File::open(&plain).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap().flush().unwrap();
    }
    let gz_size = std::fs::metadata(&gz).unwrap().len();
    let (_, secs) = time_fasta(&gz);
    println!(
        "FASTA gzip → tokens: {:.0} MB compressed ({:.0} MB plain) in {secs:.2} s = {:.0} MB/s of FASTA ({:.0} MB/s compressed)",
        mb(gz_size),
        mb(size),
        mb(size) / secs,
        mb(gz_size) / secs
    );

    // BAM.
    let bam_path = scratch.join("reads.bam");
    let reads = build_bam(&shared, &bam_path);
    let bam_size = std::fs::metadata(&bam_path).unwrap().len();
    let options = AlignmentOptions {
        restore_orientation: true,
        primary_only: false,
    };
    let ((count, bases), secs) = best_of(|| {
        let (mut count, mut bases) = (0u64, 0u64);
        for record in AlignmentReader::open_bam(&bam_path, options, OnError::Fail).unwrap() {
            bases += record.unwrap().tokens.len() as u64;
            count += 1;
        }
        (count, bases)
    });
    assert_eq!(count, reads);
    println!(
        "BAM → tokens: {:.0} MB BAM, {count} reads, {bases} bases in {secs:.2} s = {:.2} M reads/s ({:.0} Mbases/s)",
        mb(bam_size),
        count as f64 / 1e6 / secs,
        bases as f64 / 1e6 / secs
    );

    // Audio.
    let mut wavs: Vec<PathBuf> = std::fs::read_dir(shared.join("fsdd/recordings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wavs.sort();
    let ((seconds, tokens), secs) = best_of(|| {
        wavs.iter()
            .map(|p| audio_seconds(p))
            .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    println!(
        "audio decode + resample 8→16 kHz + mu-law, one core: {} files, {seconds:.0} s of audio ({tokens} tokens) in {secs:.2} s = {:.0} s of audio/s",
        wavs.len(),
        seconds / secs
    );
    let (seconds, secs) = best_of(|| wavs.par_iter().map(|p| audio_seconds(p).0).sum::<f64>());
    println!(
        "audio decode + resample + mu-law, {} threads: {seconds:.0} s of audio in {secs:.2} s = {:.0} s of audio/s",
        rayon::current_num_threads(),
        seconds / secs
    );
    let (seconds, secs) = best_of(|| {
        wavs.iter()
            .map(|p| {
                let clip = decode_mono(p).unwrap();
                std::hint::black_box(Quantizer::MuLaw.encode_all(&clip.samples));
                clip.samples.len() as f64 / clip.sample_rate as f64
            })
            .sum::<f64>()
    });
    println!(
        "audio decode + mu-law at 8 kHz (no resampling), one core: {:.0} s of audio/s",
        seconds / secs
    );
}
