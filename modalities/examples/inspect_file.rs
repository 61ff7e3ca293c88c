//! Prints what files decode to, as `seqmamba inspect FILE` will.
//!
//! `cargo run --example inspect_file -- FILE...`

use seqmamba_modalities::{dna::alignment::AlignmentOptions, error::OnError, inspect::inspect};

fn main() {
    for arg in std::env::args().skip(1) {
        match inspect(arg.as_ref(), AlignmentOptions::default(), OnError::Skip) {
            Ok(summary) => println!("{summary}\n"),
            Err(e) => println!("error: {e}\n"),
        }
    }
}
