//! Any bytes as audio (WAV, FLAC, OGG, MP3 by content): finite mono samples or errors naming
//! the input, never a panic. Seed the corpus with data-samples/audio/*.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use seqmamba_modalities::audio::AudioStream;

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.audio");
    let mut stream = match AudioStream::from_bytes(name, data.to_vec()) {
        Ok(stream) => stream,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.audio: "));
            return;
        }
    };
    loop {
        match stream.next_mono() {
            Ok(Some(packet)) => assert!(packet.iter().all(|s| s.is_finite())),
            Ok(None) => break,
            Err(e) => {
                assert!(e.to_string().starts_with("fuzz.audio: "));
                break;
            }
        }
    }
});
