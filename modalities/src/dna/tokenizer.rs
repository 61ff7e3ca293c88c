//! The fixed DNA vocabulary and the byte → token table.
//!
//! | id | token | meaning |
//! |---:|---|---|
//! | 0 | `PAD` | padding to a batch length |
//! | 1 | `BOS` | start of a sequence |
//! | 2 | `EOS` | end of a sequence |
//! | 3 | `SEP` | separator between joined sequences |
//! | 4 | `MASK` | masked position (masked-LM training) |
//! | 5 | `A` | adenine (`A`, `a`) |
//! | 6 | `C` | cytosine (`C`, `c`) |
//! | 7 | `G` | guanine (`G`, `g`) |
//! | 8 | `T` | thymine (`T`, `t`; also `U`, `u`) |
//! | 9 | `N` | any base: `N` and the IUPAC codes `R Y S W K M B D H V` in either case |
//!
//! Lowercase (soft-masked) bases map to the same tokens as uppercase ones. Every other byte is
//! an error naming the file, record and position. The vocabulary has [`VOCAB_SIZE`] = 10
//! tokens and never changes: checkpoints depend on it.

/// Padding.
pub const PAD: u8 = 0;
/// Beginning of sequence.
pub const BOS: u8 = 1;
/// End of sequence.
pub const EOS: u8 = 2;
/// Separator.
pub const SEP: u8 = 3;
/// Mask.
pub const MASK: u8 = 4;
/// Adenine.
pub const A: u8 = 5;
/// Cytosine.
pub const C: u8 = 6;
/// Guanine.
pub const G: u8 = 7;
/// Thymine (and uracil).
pub const T: u8 = 8;
/// Any base.
pub const N: u8 = 9;
/// Number of tokens.
pub const VOCAB_SIZE: usize = 10;

/// Marks bytes outside the alphabet in [`TABLE`].
const INVALID: u8 = 0xff;

/// Byte → token, [`INVALID`] for bytes that are no base.
static TABLE: [u8; 256] = build_table();

const fn build_table() -> [u8; 256] {
    let mut table = [INVALID; 256];
    let pairs: [(u8, u8); 15] = [
        (b'A', A),
        (b'C', C),
        (b'G', G),
        (b'T', T),
        (b'U', T),
        (b'N', N),
        (b'R', N),
        (b'Y', N),
        (b'S', N),
        (b'W', N),
        (b'K', N),
        (b'M', N),
        (b'B', N),
        (b'D', N),
        (b'H', N),
    ];
    let mut i = 0;
    while i < pairs.len() {
        let (byte, token) = pairs[i];
        table[byte as usize] = token;
        table[byte.to_ascii_lowercase() as usize] = token;
        i += 1;
    }
    table[b'V' as usize] = N;
    table[b'v' as usize] = N;
    table
}

/// The token of one byte, `None` when the byte is no base.
///
/// ```
/// use seqmamba_modalities::dna::tokenizer::{token, A, N};
/// assert_eq!(token(b'a'), Some(A));
/// assert_eq!(token(b'R'), Some(N));
/// assert_eq!(token(b'!'), None);
/// ```
pub fn token(byte: u8) -> Option<u8> {
    match TABLE[byte as usize] {
        INVALID => None,
        t => Some(t),
    }
}

/// Appends the tokens of `bases` to `out`; on a byte that is no base returns its index in
/// `bases` and the byte, leaving `out` with the tokens before it.
///
/// ```
/// use seqmamba_modalities::dna::tokenizer::{encode_into, A, C, G, T, N};
/// let mut out = Vec::new();
/// encode_into(b"ACgtn", &mut out).unwrap();
/// assert_eq!(out, [A, C, G, T, N]);
/// assert_eq!(encode_into(b"AC-G", &mut out), Err((2, b'-')));
/// ```
pub fn encode_into(bases: &[u8], out: &mut Vec<u8>) -> Result<(), (usize, u8)> {
    let start = out.len();
    out.reserve(bases.len());
    // Map everything first (a tight loop the compiler unrolls), then look for the marker:
    // errors are rare, so the check stays off the hot path.
    out.extend(bases.iter().map(|&b| TABLE[b as usize]));
    let mut bad = 0u8;
    for &t in &out[start..] {
        bad |= t & 0x80;
    }
    if bad == 0 {
        return Ok(());
    }
    let i = out[start..].iter().position(|&t| t == INVALID).unwrap_or(0);
    out.truncate(start + i);
    Err((i, bases[i]))
}

/// Tokens of `bases`, or the index and byte of the first byte that is no base.
///
/// ```
/// use seqmamba_modalities::dna::tokenizer::{encode, A, T};
/// assert_eq!(encode(b"AT").unwrap(), vec![A, T]);
/// ```
pub fn encode(bases: &[u8]) -> Result<Vec<u8>, (usize, u8)> {
    let mut out = Vec::with_capacity(bases.len());
    encode_into(bases, &mut out)?;
    Ok(out)
}

/// The letter of a token (`A C G T N`), or `None` for special tokens and ids out of range.
///
/// ```
/// use seqmamba_modalities::dna::tokenizer::{decode_base, G, PAD};
/// assert_eq!(decode_base(G), Some(b'G'));
/// assert_eq!(decode_base(PAD), None);
/// ```
pub fn decode_base(token: u8) -> Option<u8> {
    match token {
        A => Some(b'A'),
        C => Some(b'C'),
        G => Some(b'G'),
        T => Some(b'T'),
        N => Some(b'N'),
        _ => None,
    }
}

/// The complement of a token; special tokens and `N` map to themselves.
///
/// ```
/// use seqmamba_modalities::dna::tokenizer::{complement, A, T, N, BOS};
/// assert_eq!(complement(A), T);
/// assert_eq!(complement(N), N);
/// assert_eq!(complement(BOS), BOS);
/// ```
pub fn complement(token: u8) -> u8 {
    match token {
        A => T,
        T => A,
        C => G,
        G => C,
        other => other,
    }
}

/// Reverse-complements a token stream in place.
///
/// ```
/// use seqmamba_modalities::dna::tokenizer::{encode, reverse_complement};
/// let mut tokens = encode(b"AACGN").unwrap();
/// reverse_complement(&mut tokens);
/// assert_eq!(tokens, encode(b"NCGTT").unwrap());
/// ```
pub fn reverse_complement(tokens: &mut [u8]) {
    tokens.reverse();
    for t in tokens.iter_mut() {
        *t = complement(*t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_byte_is_a_base_or_an_error() {
        let valid: Vec<u8> = b"ACGTUNRYSWKMBDHVacgtunryswkmbdhv".to_vec();
        for byte in 0..=255u8 {
            assert_eq!(token(byte).is_some(), valid.contains(&byte), "byte {byte}");
        }
        assert_eq!(encode(b"ACGTU").unwrap(), [A, C, G, T, T]);
        assert_eq!(encode(b"acgtu").unwrap(), [A, C, G, T, T]);
        assert!(encode(b"RYSWKMBDHVN").unwrap().iter().all(|&t| t == N));
    }

    #[test]
    fn reports_first_invalid_byte() {
        let mut out = vec![PAD];
        assert_eq!(encode_into(b"ACG\nT", &mut out), Err((3, b'\n')));
        assert_eq!(out, [PAD, A, C, G]);
        assert_eq!(encode(b"*"), Err((0, b'*')));
    }

    proptest! {
        #[test]
        fn reverse_complement_is_an_involution(bases in "[ACGTN]{0,64}") {
            let tokens = encode(bases.as_bytes()).unwrap();
            let mut twice = tokens.clone();
            reverse_complement(&mut twice);
            reverse_complement(&mut twice);
            prop_assert_eq!(&twice, &tokens);
            let letters: Vec<u8> = tokens.iter().map(|&t| decode_base(t).unwrap()).collect();
            prop_assert_eq!(letters, bases.as_bytes());
        }
    }
}
