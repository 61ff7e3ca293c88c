//! Opening files: plain, gzip or BGZF, told apart by their first bytes, never by name alone.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::Path,
};

use flate2::bufread::MultiGzDecoder;

use crate::error::{Error, Location, Result};

pub(crate) const BUFFER: usize = 1 << 17;

/// How a file's bytes are compressed.
///
/// ```
/// use seqmamba_modalities::input::Compression;
/// assert_eq!(Compression::sniff(b">chr1\nACGT"), Compression::None);
/// assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// Blocked gzip (gzip members with a `BC` extra field), as BAM and indexed FASTA use.
    Bgzf,
}

impl Compression {
    /// Tells the compression from the first bytes of a file.
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, 8, flags, ..]
                if flags & 4 != 0 && head.len() >= 16 && &head[12..14] == b"BC" =>
            {
                Compression::Bgzf
            }
            [0x1f, 0x8b, ..] => Compression::Gzip,
            _ => Compression::None,
        }
    }
}

/// Opens a file for streaming, decompressing gzip and BGZF (both read as concatenated gzip
/// members), and returns the detected compression.
///
/// ```
/// # let dir = std::env::temp_dir().join("seqmamba-input-doc");
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let path = dir.join("a.fa");
/// std::fs::write(&path, b">a\nACGT\n").unwrap();
/// let (mut reader, compression) = seqmamba_modalities::input::open(&path).unwrap();
/// let mut text = String::new();
/// reader.read_to_string(&mut text).unwrap();
/// assert_eq!(text, ">a\nACGT\n");
/// assert_eq!(compression, seqmamba_modalities::input::Compression::None);
/// ```
pub fn open(path: &Path) -> Result<(Box<dyn BufRead + Send>, Compression)> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.into(),
        at: Location::File,
        source,
    })?;
    open_stream(path, Box::new(file))
}

/// [`open`] for a stream such as standard input (read once, never reopened); `name` only
/// names it in errors.
///
/// ```
/// use std::io::Read;
/// let bytes: &'static [u8] = b">a\nACGT\n";
/// let name = std::path::Path::new("<stdin>");
/// let (mut reader, _) = seqmamba_modalities::input::open_stream(name, Box::new(bytes)).unwrap();
/// let mut text = String::new();
/// reader.read_to_string(&mut text).unwrap();
/// assert_eq!(text, ">a\nACGT\n");
/// ```
pub fn open_stream(
    name: &Path,
    raw: Box<dyn Read + Send>,
) -> Result<(Box<dyn BufRead + Send>, Compression)> {
    let (stream, compression) = decompressed(name, raw)?;
    Ok((
        Box::new(BufReader::with_capacity(BUFFER, stream)),
        compression,
    ))
}

/// `raw` decompressed (unbuffered: the caller puts one buffer on top), and its compression.
pub(crate) fn decompressed(
    name: &Path,
    raw: Box<dyn Read + Send>,
) -> Result<(Box<dyn Read + Send>, Compression)> {
    // A BGZF header is 18 bytes; a pipe may deliver fewer at a time, so read them whole.
    let (head, raw) = head_and_rest(raw, 18).map_err(io_error(name, Location::Byte(0)))?;
    let compression = Compression::sniff(&head);
    let stream: Box<dyn Read + Send> = match compression {
        Compression::None => raw,
        Compression::Gzip | Compression::Bgzf => {
            Box::new(MultiGzDecoder::new(BufReader::with_capacity(BUFFER, raw)))
        }
    };
    Ok((stream, compression))
}

/// The first `n` bytes of `reader` (fewer only at its end), and a reader that yields them
/// again followed by the rest. (Under a buffer, so the chain is crossed once a refill.)
pub(crate) fn head_and_rest(
    mut reader: Box<dyn Read + Send>,
    n: usize,
) -> io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = Vec::with_capacity(n);
    (&mut reader).take(n as u64).read_to_end(&mut head)?;
    let again = io::Cursor::new(head.clone());
    Ok((head, Box::new(again.chain(reader))))
}

/// Wraps an `io::Error` met at `at` in `path`.
pub(crate) fn io_error(path: &Path, at: Location) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        at,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_bgzf_apart_from_gzip() {
        // A real BGZF header: gzip magic, FEXTRA flag, XLEN 6, subfield 'B' 'C'.
        let bgzf = [
            0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, b'B', b'C', 2, 0, 0x1b, 0,
        ];
        assert_eq!(Compression::sniff(&bgzf), Compression::Bgzf);
        assert_eq!(Compression::sniff(&bgzf[..4]), Compression::Gzip);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }
}
