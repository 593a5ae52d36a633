//! Reading the files operators point us at, without letting one of them stall or flood the
//! process: only regular files are read, up to a size limit. The file is opened non-blocking and
//! checked after opening, so a FIFO or a device named `*.yaml` (or a symlink to `/dev/zero`) is
//! refused at once instead of blocking a thread forever or filling memory.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The content of the regular file at `path`, refused when it is not one or holds more than
/// `limit` bytes.
pub fn read_bytes(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_big = |size: u64| {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{size} bytes, more than the limit of {limit}"),
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never past the limit.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_bytes`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_bytes(path, limit)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Makes a FIFO at `path`, for tests of what must never block on one.
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_big_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.yaml");
        mkfifo(&fifo);
        let err = read_text(&fifo, 1024).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            read_text(&zero, 1024).unwrap_err().to_string(),
            "not a regular file"
        );
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, "x".repeat(2000)).unwrap();
        let err = read_text(&big, 1024).unwrap_err();
        assert!(
            err.to_string().contains("more than the limit of 1024"),
            "{err}"
        );
        std::fs::write(&big, "x".repeat(1024)).unwrap();
        assert_eq!(read_text(&big, 1024).unwrap().len(), 1024);
    }
}
