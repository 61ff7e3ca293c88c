//! Any bytes as FASTA: records or errors naming the input, never a panic.
#![no_main]

use std::{io::Cursor, path::Path};

use libfuzzer_sys::fuzz_target;
use seqmamba_modalities::{dna::fasta::FastaReader, error::OnError, input::Compression};

fuzz_target!(|data: &[u8]| {
    for on_error in [OnError::Fail, OnError::Skip] {
        let reader = FastaReader::from_reader(
            Path::new("fuzz.fa"),
            Box::new(Cursor::new(data.to_vec())),
            Compression::None,
            on_error,
        );
        for record in reader {
            if let Err(e) = record {
                assert!(e.to_string().starts_with("fuzz.fa: "));
            }
        }
    }
});
