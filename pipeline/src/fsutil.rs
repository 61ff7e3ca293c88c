//! File writes that never leave a half-written file behind.

use std::io::Write;
use std::path::Path;

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
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(io)
}
