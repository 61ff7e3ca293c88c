//! Bad input: every case gives an error naming the file and the record, base, packet or
//! line, never a panic; `OnError::Skip` skips and counts bad records.

use std::path::{Path, PathBuf};

use noodles::bgzf;
use proptest::prelude::*;
use seqmamba_modalities::audio::{decode_mono, AudioStream};
use seqmamba_modalities::dataset::{from_fasta_headers, HeaderLabel};
use seqmamba_modalities::dna::{
    alignment::{AlignmentOptions, AlignmentReader},
    fasta::{FastaReader, IndexedFasta},
    fastq::FastqReader,
    read_tokens, tokenizer, TokenRecord,
};
use seqmamba_modalities::error::{Error, OnError};
use seqmamba_modalities::input::Compression;
use seqmamba_modalities::inspect::inspect;

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data-samples")
        .join(rel)
}

/// A fresh scratch folder per test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seqmamba-bad-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error of a result that must fail (without printing a large Ok value).
fn fails<T>(result: Result<T, Error>) -> Error {
    result.err().expect("bad input was accepted")
}

fn read_all(path: &Path, on_error: OnError) -> Result<Vec<TokenRecord>, Error> {
    read_tokens(path, AlignmentOptions::default(), on_error)?.collect()
}

#[test]
fn truncated_gzip_and_bgzf_name_the_file_and_record() {
    let dir = scratch("truncated");
    for (name, source) in [
        ("lambda.fa.gz", "dna/lambda-phage.fa.gz"),
        ("sars.fa.gz", "dna/sars-cov-2.MN908947.fasta.gz"),
        ("reads.fq.gz", "dna/phix.1.fastq.gz"),
    ] {
        let bytes = std::fs::read(sample(source)).unwrap();
        let path = write(&dir, name, &bytes[..bytes.len() / 2]);
        let e = fails(read_all(&path, OnError::Skip));
        assert!(matches!(e, Error::Io { .. }), "{name}: {e:?}");
        let text = e.to_string();
        assert!(text.contains(name) && text.contains("record"), "{text}");
    }
}

#[test]
fn binary_file_given_as_fasta() {
    let dir = scratch("binary");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let e = fails(read_all(&write(&dir, "noise.fa", &noise), OnError::Fail));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(e.to_string().contains("noise.fa: record 0"), "{e}");
    // A plausible header followed by binary: the first bad byte is named by its position.
    let mut bytes = b">chr1 ok\nACGTAC\nGT".to_vec();
    bytes.extend_from_slice(&[0u8, 0xff, 0x13]);
    let e = fails(read_all(&write(&dir, "half.fa", &bytes), OnError::Fail));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: record 0 (chr1), base 9: invalid base 0x00",
            dir.join("half.fa").display()
        )
    );
}

#[test]
fn empty_files_are_errors_for_every_reader() {
    let dir = scratch("empty");
    for name in ["e.fa", "e.fq", "e.sam", "e.wav", "e.flac"] {
        let path = write(&dir, name, b"");
        let e = fails(inspect(&path, AlignmentOptions::default(), OnError::Fail));
        assert!(
            e.to_string().contains(name) && e.to_string().contains("empty"),
            "{e}"
        );
    }
    let fa = write(&dir, "e2.fa", b"");
    assert!(matches!(
        FastaReader::open(&fa, OnError::Fail).unwrap().next(),
        Some(Err(Error::Empty { .. }))
    ));
    let fq = write(&dir, "e2.fq", b"");
    assert!(matches!(
        FastqReader::open(&fq, OnError::Fail).unwrap().next(),
        Some(Err(Error::Empty { .. }))
    ));
    assert!(decode_mono(&fa).is_err());
}

#[test]
fn fastq_length_mismatch_fails_or_is_skipped_and_counted() {
    let dir = scratch("fastq");
    let text = b"@r1\nACGT\n+\nIIII\n@r2 bad\nACGTA\n+\nIII\n@r3\nGG\n+\nII\n";
    let path = write(&dir, "m.fq", text);
    let e = fails(read_all(&path, OnError::Fail));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: record 1 (r2): sequence has 5 bases but quality has 3 scores",
            path.display()
        )
    );
    let mut reader = FastqReader::open(&path, OnError::Skip).unwrap();
    let names: Vec<String> = (&mut reader).map(|r| r.unwrap().name).collect();
    assert_eq!(
        (names, reader.skipped()),
        (vec!["r1".to_string(), "r3".to_string()], 1)
    );
    // A record cut short (no '+' line) ends the stream with an error even when skipping.
    let cut = write(&dir, "cut.fq", b"@r1\nACGT\n+\nIIII\n@r2\nAC");
    let e = fails(read_all(&cut, OnError::Skip));
    assert!(e.to_string().contains("record 1"), "{e}");
}

#[test]
fn fasta_bad_record_is_skipped_under_skip_policy() {
    let dir = scratch("skip");
    let path = write(&dir, "s.fa", b">a\nACGT\n>b\nAC-GT\nAAAA\n>c\nggcc\n");
    let mut reader = FastaReader::open(&path, OnError::Skip).unwrap();
    let names: Vec<String> = (&mut reader).map(|r| r.unwrap().name).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(reader.skipped(), 1);
    assert_eq!(reader.compression(), Compression::None);
    let e = fails(read_all(&path, OnError::Fail));
    assert!(
        e.to_string()
            .ends_with("record 1 (b), base 3: invalid base '-' (0x2d)"),
        "{e}"
    );
}

#[test]
fn fasta_headers_skip_bad_and_unlabeled_records() {
    let dir = scratch("headers");
    let text = b">s1 label=a\nACGT\n>s2 label=b\nAC-T\n>s3\nGGCC\n>s4 label=b\nTTAA\n";
    let path = write(&dir, "h.fa", text);
    let key = HeaderLabel::Key("label=".into());
    let (d, skipped) = from_fasta_headers(&path, &key, OnError::Skip).unwrap();
    let ids: Vec<&str> = d.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!((ids, skipped), (vec!["s1", "s4"], 2));
    assert_eq!(d.labels.names(), ["a", "b"]);
    let e = fails(from_fasta_headers(&path, &key, OnError::Fail));
    assert!(
        e.to_string()
            .ends_with("record 1 (s2), base 3: invalid base '-' (0x2d)"),
        "{e}"
    );
    let path = write(&dir, "unlabeled.fa", b">s1 label=a\nACGT\n>s3\nGGCC\n");
    let e = fails(from_fasta_headers(&path, &key, OnError::Fail));
    assert!(
        e.to_string().contains("record 1 (s3): header has no label"),
        "{e}"
    );
}

/// The SAM file `sam` rewritten as BAM at `dir/name`.
fn bam_from_sam(dir: &Path, name: &str, sam: &Path) -> PathBuf {
    use noodles::sam::alignment::io::Write as _;
    let file = std::io::BufReader::new(std::fs::File::open(sam).unwrap());
    let mut reader = noodles::sam::io::Reader::new(file);
    let header = reader.read_header().unwrap();
    let path = dir.join(name);
    let mut writer = noodles::bam::io::Writer::new(std::fs::File::create(&path).unwrap());
    writer.write_header(&header).unwrap();
    for record in reader.records() {
        writer
            .write_alignment_record(&header, &record.unwrap())
            .unwrap();
    }
    writer.try_finish().unwrap();
    path
}

#[test]
fn sam_and_bam_reads_with_a_bad_base_are_skipped_and_counted() {
    let dir = scratch("alignment");
    // `=` (the reference's base) cannot be told from the read alone.
    let sam = write(
        &dir,
        "eq.sam",
        b"@HD\tVN:1.6\n\
        r1\t4\t*\t0\t0\t*\t*\t0\t0\tACGT\tIIII\n\
        r2\t4\t*\t0\t0\t*\t*\t0\t0\tAC=T\tIIII\n\
        r3\t4\t*\t0\t0\t*\t*\t0\t0\tGGCC\tIIII\n",
    );
    let bam = bam_from_sam(&dir, "eq.bam", &sam);
    for path in [sam, bam] {
        let mut records = read_tokens(&path, AlignmentOptions::default(), OnError::Skip).unwrap();
        let names: Vec<String> = (&mut records).map(|r| r.unwrap().name).collect();
        assert_eq!(
            (names, records.skipped()),
            (vec!["r1".to_string(), "r3".to_string()], 1),
            "{}",
            path.display()
        );
        let e = fails(read_all(&path, OnError::Fail));
        assert!(
            e.to_string()
                .ends_with("record 1 (r2), base 3: invalid base '=' (0x3d)"),
            "{e}"
        );
    }
}

#[test]
fn streamed_windows_skip_a_bad_record() {
    let dir = scratch("windows");
    let path = write(
        &dir,
        "w.fa",
        b">a\nACGTACGT\n>b\nACGT\nAC*T\nACGT\n>c\nGGGG\n",
    );
    let mut windows = FastaReader::open(&path, OnError::Skip)
        .unwrap()
        .windows(4, 4)
        .unwrap();
    let got: Vec<(String, u64)> = (&mut windows)
        .map(|w| w.map(|w| (w.record, w.start)).unwrap())
        .collect();
    let expected = [("a", 0), ("a", 4), ("b", 0), ("c", 0)].map(|(r, s)| (r.to_string(), s));
    assert_eq!(got, expected);
    assert_eq!(windows.skipped(), 1);
    let e = FastaReader::open(&path, OnError::Fail)
        .unwrap()
        .windows(4, 4)
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(
        e.to_string()
            .ends_with("record 1 (b), base 7: invalid base '*' (0x2a)"),
        "{e}"
    );
}

#[test]
fn random_access_without_its_index() {
    let dir = scratch("index");
    let bgzf = std::fs::read(sample("dna/sars-cov-2.MN908947.fasta.gz")).unwrap();
    let fai = std::fs::read(sample("dna/sars-cov-2.MN908947.fasta.gz.fai")).unwrap();
    let path = write(&dir, "g.fa.gz", &bgzf);
    let e = fails(IndexedFasta::open(&path));
    assert!(
        e.to_string().contains("needs the index") && e.to_string().contains("g.fa.gz.fai"),
        "{e}"
    );
    write(&dir, "g.fa.gz.fai", &fai);
    let e = fails(IndexedFasta::open(&path));
    assert!(e.to_string().contains("g.fa.gz.gzi"), "{e}");
    // Plain gzip cannot be read at random.
    let gz = std::fs::read(sample("dna/lambda-phage.fa.gz")).unwrap();
    let path = write(&dir, "l.fa.gz", &gz);
    write(&dir, "l.fa.gz.fai", b"gi\t48502\t75\t70\t71\n");
    assert!(matches!(
        fails(IndexedFasta::open(&path)),
        Error::Unsupported { .. }
    ));
}

#[test]
fn random_access_reads_only_the_window_asked_for() {
    let dir = scratch("window");
    // Binary garbage before and after the good record: reading anything but the window would
    // meet it.
    let garbage: Vec<u8> = [0u8, 0xff, b'!', b'*', 0x7f, 0x80, b'-', 0x01, b'\n'].repeat(3);
    let mut bytes = b">junk\n".to_vec();
    let junk = bytes.len();
    bytes.extend(&garbage);
    bytes.extend(b">good\n");
    let good = bytes.len();
    bytes.extend(b"ACGTACGTAC\nGTTGCAAC\n>tail\n");
    let tail = bytes.len();
    bytes.extend(&garbage);
    let path = write(&dir, "g.fa", &bytes);
    let index =
        format!("junk\t24\t{junk}\t8\t9\ngood\t18\t{good}\t10\t11\ntail\t24\t{tail}\t8\t9\n");
    write(&dir, "g.fa.fai", index.as_bytes());
    assert!(matches!(
        fails(read_all(&path, OnError::Fail)),
        Error::InvalidBase { byte: 0, .. }
    ));
    let mut fasta = IndexedFasta::open(&path).unwrap();
    assert_eq!(
        fasta.fetch("good", 6..14).unwrap(),
        tokenizer::encode(b"GTACGTTG").unwrap()
    );
    assert!(matches!(
        fails(fasta.fetch("tail", 0..4)),
        Error::InvalidBase { byte: 0, .. }
    ));
}

fn bgzf_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut writer = bgzf::io::Writer::new(std::fs::File::create(&path).unwrap());
    std::io::Write::write_all(&mut writer, bytes).unwrap();
    writer.finish().unwrap();
    path
}

#[test]
fn bam_with_broken_header() {
    let dir = scratch("bam");
    // Header text length far beyond the data.
    let mut bytes = b"BAM\x01".to_vec();
    bytes.extend_from_slice(&100_000i32.to_le_bytes());
    bytes.extend_from_slice(b"@HD\tVN:1.6\n");
    let path = bgzf_file(&dir, "long.bam", &bytes);
    let e = AlignmentReader::open_bam(&path, AlignmentOptions::default(), OnError::Fail)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("long.bam: file: broken SAM/BAM header"),
        "{e}"
    );
    // Wrong magic number.
    let path = bgzf_file(&dir, "magic.bam", b"BAM\x02\0\0\0\0\0\0\0\0");
    let e = AlignmentReader::open_bam(&path, AlignmentOptions::default(), OnError::Fail)
        .err()
        .unwrap();
    assert!(e.to_string().contains("magic.bam"), "{e}");
    // A real BAM cut in the middle of its records.
    let real = std::fs::read(sample("dna/1000g-mpileup.1.bam")).unwrap();
    let path = write(&dir, "cut.bam", &real[..real.len() * 2 / 3]);
    let e = fails(read_all(&path, OnError::Skip));
    assert!(e.to_string().contains("cut.bam: record"), "{e}");
}

#[test]
fn wav_with_a_lying_header() {
    let dir = scratch("wav");
    let real = std::fs::read(sample("audio/fsdd/0_jackson_0.wav")).unwrap();
    // The header says 10,296 data bytes; only half are there.
    let path = write(&dir, "short.wav", &real[..real.len() / 2]);
    let e = fails(decode_mono(&path));
    assert!(
        e.to_string().contains("short.wav: packet")
            && e.to_string().contains("declares 5148 frames"),
        "{e}"
    );
    // The whole file, but a data chunk size claiming ten times the data (and more than the
    // RIFF length).
    let mut long = real.clone();
    long[40..44].copy_from_slice(&(10 * 10_296u32).to_le_bytes());
    let path = write(&dir, "long.wav", &long);
    let e = fails(decode_mono(&path));
    // symphonia checks the chunk against the RIFF length before any packet is read.
    assert!(
        e.to_string()
            .contains("long.wav: file: malformed stream: riff: chunk length"),
        "{e}"
    );
}

#[test]
fn float_wav_with_nan_or_infinity() {
    let dir = scratch("nan");
    let mut wav = std::fs::read(sample("audio/0_jackson_0.f32.wav")).unwrap();
    let data = wav.windows(4).position(|w| w == b"data").unwrap() + 8;
    // Frame 10 becomes NaN (found by the audio fuzz target), frame 20 infinity.
    wav[data + 40..data + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = write(&dir, "nan.wav", &wav);
    let e = fails(decode_mono(&path));
    assert!(
        e.to_string()
            .contains("nan.wav: packet 0: sample 10 is NaN"),
        "{e}"
    );
    wav[data + 40..data + 44].copy_from_slice(&0.5f32.to_le_bytes());
    wav[data + 80..data + 84].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let path = write(&dir, "inf.wav", &wav);
    let e = fails(decode_mono(&path));
    assert!(e.to_string().contains("sample 20 is inf"), "{e}");
}

#[test]
fn unsupported_codec_and_unknown_format() {
    let dir = scratch("codec");
    let mut wav = std::fs::read(sample("audio/fsdd/0_jackson_0.wav")).unwrap();
    // Format tag 0x0050: MPEG-1 audio inside RIFF, which the WAV reader does not take.
    wav[20] = 0x50;
    wav[21] = 0x00;
    let path = write(&dir, "mpeg.wav", &wav);
    let e = fails(decode_mono(&path));
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: unsupported", path.display())),
        "{e}"
    );
    let path = write(&dir, "notes.txt", b"hello, not a sequence\n");
    let e = fails(inspect(&path, AlignmentOptions::default(), OnError::Fail));
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}

#[test]
fn corrupt_wav_header_that_overflows_the_decoder_is_an_error() {
    let dir = scratch("overflow");
    let mut wav = std::fs::read(sample("audio/fsdd/1_theo_5.wav")).unwrap();
    // 65535 channels of 16 bits: symphonia multiplies them into a u16 block align, which
    // overflows (a panic in debug builds) before it rejects the channel count.
    wav[22] = 0xff;
    wav[23] = 0xff;
    let path = write(&dir, "channels.wav", &wav);
    let e = fails(decode_mono(&path));
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fasta_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for on_error in [OnError::Fail, OnError::Skip] {
            let reader = FastaReader::from_reader(Path::new("fuzz.fa"), Box::new(std::io::Cursor::new(bytes.clone())), Compression::None, on_error);
            for r in reader.take(1000) {
                if let Err(e) = r {
                    prop_assert!(e.to_string().starts_with("fuzz.fa: "));
                }
            }
        }
    }

    #[test]
    fn fasta_like_text_never_panics(text in "(>[a-z ]{0,5}\n)?([ACGTNacgtn\\-\n>@+]{0,40}\n?){0,6}") {
        let reader = FastaReader::from_reader(Path::new("fuzz.fa"), Box::new(std::io::Cursor::new(text.into_bytes())), Compression::None, OnError::Skip);
        for r in reader.take(1000) {
            if let Err(e) = r {
                prop_assert!(e.to_string().starts_with("fuzz.fa: "));
            }
        }
    }

    #[test]
    fn fastq_never_panics(text in "(@[a-z0-9]{0,4}\n[ACGTN]{0,8}\n\\+?\n[!-~]{0,8}\n?){0,5}") {
        let reader = FastqReader::from_reader(Path::new("fuzz.fq"), Box::new(std::io::Cursor::new(text.into_bytes())), Compression::None, OnError::Skip);
        for r in reader.take(1000) {
            if let Err(e) = r {
                prop_assert!(e.to_string().starts_with("fuzz.fq: "));
            }
        }
    }

    #[test]
    fn corrupted_audio_never_panics(
        index in 0usize..5,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let files = [
            "fsdd/1_theo_5.wav",
            "0_jackson_0.flac",
            "0_jackson_0.ogg",
            "0_jackson_0.mp3",
            "0_jackson_0.f32.wav",
        ];
        let mut bytes = std::fs::read(sample(&format!("audio/{}", files[index]))).unwrap();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let name = format!("fuzz-{}", files[index].rsplit('/').next().unwrap());
        match AudioStream::from_bytes(Path::new(&name), bytes) {
            Err(e) => prop_assert!(e.to_string().starts_with(&name)),
            Ok(mut stream) => loop {
                match stream.next_mono() {
                    Ok(Some(packet)) => prop_assert!(packet.iter().all(|s| s.is_finite())),
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(e.to_string().starts_with(&name));
                        break;
                    }
                }
            },
        }
    }
}
