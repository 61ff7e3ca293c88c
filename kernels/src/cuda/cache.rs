//! Run-time compilation of the embedded `.cu` sources by NVRTC, with an on-disk cache.
//!
//! A compiled module is stored as `<cache>/seqmamba/kernels/<module>-<key>.cubin`, where
//! `<cache>` is `$XDG_CACHE_HOME` or `~/.cache` and the key hashes the source, the
//! options (architecture included) and NVRTC's version, so an edited kernel or a new
//! compiler never loads a stale binary. Files are written to a temporary name and renamed,
//! so concurrent processes never read a half-written one. A cache that cannot be read or
//! written only costs a recompile.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result, sys};

use super::device_error;
use crate::KernelError;

/// The CUBIN of `source` compiled with `options`, from the cache or freshly compiled.
pub(super) fn compiled(
    module: &str,
    source: &str,
    options: &[String],
    nvrtc_version: (i32, i32),
) -> Result<Vec<u8>, KernelError> {
    let key = module_key(source, options, nvrtc_version);
    let path = cache_dir().map(|dir| dir.join(format!("{module}-{key:016x}.cubin")));
    if let Some(cubin) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        return Ok(cubin);
    }
    let cubin = compile(module, source, options)?;
    if let Some(path) = path {
        store(&path, &cubin);
    }
    Ok(cubin)
}

/// The key of a module: its source, the options (architecture included) and NVRTC's
/// version.
fn module_key(source: &str, options: &[String], nvrtc_version: (i32, i32)) -> u64 {
    let mut parts = vec![source.as_bytes()];
    parts.extend(options.iter().map(|option| option.as_bytes()));
    let (major, minor) = (nvrtc_version.0.to_le_bytes(), nvrtc_version.1.to_le_bytes());
    parts.extend([&major[..], &minor[..]]);
    cache_key(&parts)
}

/// FNV-1a over every input that changes what is cached (each part with its length, so
/// parts cannot run into each other); stable across Rust versions, unlike the standard
/// hasher.
pub(crate) fn cache_key(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// `<cache>/seqmamba/kernels`, where compiled modules and chosen GEMM algorithms live.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("seqmamba").join("kernels"))
}

/// Best-effort atomic write: temporary file in the same folder, then rename.
pub(crate) fn store(path: &std::path::Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    if std::fs::write(&temporary, bytes).is_ok() && std::fs::rename(&temporary, path).is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
}

/// Compiles with NVRTC straight to CUBIN (the options name a real `sm_XX` architecture).
fn compile(module: &str, source: &str, options: &[String]) -> Result<Vec<u8>, KernelError> {
    let doing = format!("compiling kernel module {module}");
    let source = CString::new(source).map_err(|e| device_error(&doing, e))?;
    let name = CString::new(format!("{module}.cu")).map_err(|e| device_error(&doing, e))?;
    let program =
        result::create_program(&source, Some(&name)).map_err(|e| device_error(&doing, e))?;
    // SAFETY: `program` is live until destroyed below.
    let outcome = unsafe { result::compile_program(program, options) };
    let output = match outcome {
        Ok(()) => cubin(program).map_err(|e| device_error(&doing, e)),
        Err(e) => {
            // SAFETY: as above.
            let log = unsafe { result::get_program_log(program) }
                .map(|log| log_text(&log))
                .unwrap_or_default();
            Err(KernelError::Device(format!("{doing}: {e}\n{log}")))
        }
    };
    // SAFETY: destroyed once, not used after.
    let _ = unsafe { result::destroy_program(program) };
    output
}

fn cubin(program: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: `program` was compiled; the buffer has the size NVRTC reports.
    unsafe {
        sys::nvrtcGetCUBINSize(program, &mut size).result()?;
        let mut bytes = vec![0u8; size];
        sys::nvrtcGetCUBIN(program, bytes.as_mut_ptr() as *mut c_char).result()?;
        Ok(bytes)
    }
}

fn log_text(log: &[c_char]) -> String {
    let bytes: Vec<u8> = log
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_every_input() {
        let options = vec!["--gpu-architecture=sm_90".to_string()];
        let base = module_key("a", &options, (13, 0));
        assert_ne!(base, module_key("b", &options, (13, 0)));
        assert_ne!(
            base,
            module_key("a", &["--gpu-architecture=sm_80".into()], (13, 0))
        );
        assert_ne!(base, module_key("a", &options, (13, 1)));
        assert_eq!(base, module_key("a", &options, (13, 0)));
        // Concatenation ambiguity: lengths are hashed too.
        assert_ne!(
            module_key("", &["ab".into(), "c".into()], (13, 0)),
            module_key("", &["a".into(), "bc".into()], (13, 0))
        );
    }

    #[test]
    fn store_writes_atomically_into_a_new_folder() {
        let dir = std::env::temp_dir().join(format!("seqmamba-cache-test-{}", std::process::id()));
        let path = dir.join("nested").join("m-1.cubin");
        store(&path, b"abc");
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "temporary file left behind: {leftovers:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
