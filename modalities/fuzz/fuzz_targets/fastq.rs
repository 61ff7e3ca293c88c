//! Any bytes as FASTQ: records or errors naming the input, never a panic.
#![no_main]

use std::{io::Cursor, path::Path};

use libfuzzer_sys::fuzz_target;
use seqmamba_modalities::{dna::fastq::FastqReader, error::OnError, input::Compression};

fuzz_target!(|data: &[u8]| {
    let reader = FastqReader::from_reader(
        Path::new("fuzz.fq"),
        Box::new(Cursor::new(data.to_vec())),
        Compression::None,
        OnError::Skip,
    );
    for record in reader {
        if let Err(e) = record {
            assert!(e.to_string().starts_with("fuzz.fq: "));
        }
    }
});
