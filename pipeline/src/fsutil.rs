//! File writes that never leave a half-written file behind.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::ModelError;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// readers see the old file or the new one, never a torn one.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("seqmamba-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// seqmamba::fsutil::write_atomic(&dir.join("a.txt"), b"hello").unwrap();
/// assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"hello");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    file.commit()
}

/// A file written as a stream that appears at its path only when [`AtomicFile::commit`]
/// renames it there; dropped uncommitted (an error on the way), it is removed and whatever
/// was at the path stays.
///
/// ```
/// use std::io::Write;
/// let dir = std::env::temp_dir().join(format!("seqmamba-doc-atomic-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("table.tsv");
/// let mut file = seqmamba::fsutil::AtomicFile::create(&path).unwrap();
/// writeln!(file, "a\tb").unwrap();
/// assert!(!path.exists());
/// file.commit().unwrap();
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\tb\n");
/// ```
pub struct AtomicFile {
    path: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<std::fs::File>>,
}

impl AtomicFile {
    /// Opens a temporary file beside `path` (same folder, so the rename cannot cross
    /// file systems).
    pub fn create(path: &Path) -> Result<Self, ModelError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = std::fs::File::create(&temp).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            temp,
            file: Some(BufWriter::new(file)),
        })
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<(), ModelError> {
        let file = self.file.take().expect("committed once");
        let result = (|| {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.temp, &self.path)
        })();
        result.map_err(|source| ModelError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("open until committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open until committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Committed: the temporary name is gone already; otherwise nothing half-written
        // stays behind.
        let _ = std::fs::remove_file(&self.temp);
    }
}
