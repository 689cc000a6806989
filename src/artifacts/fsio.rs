//! Durable file operations: atomic replace-free publication and directory fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::StoreError;
use super::layout::{PARTIAL_SUFFIX, with_suffix};

/// fsync a directory so a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::io("fsync directory", dir, source))
}

/// Write `bytes` to `path` so that a reader sees either nothing or the whole file:
/// write `<path>.partial`, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let partial = with_suffix(path, PARTIAL_SUFFIX);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(StoreError::io("write", path, source));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Write `bytes` to `path`, which must not exist yet, so that a reader sees either nothing
/// or the whole file: a temporary file, fsynced, published without replacing, directory
/// fsynced. Fails with [`StoreError::Exists`] when `path` exists.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let partial = with_suffix(path, PARTIAL_SUFFIX);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(StoreError::io("write", path, source));
    }
    if let Err(e) = publish_no_replace(&partial, path) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Move `from` to `to` without ever replacing an existing `to`.
///
/// Uses a hard link (which fails when `to` exists) and then removes `from`; on filesystems
/// without hard links it falls back to checking and renaming.
pub fn publish_no_replace(from: &Path, to: &Path) -> Result<(), StoreError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => std::fs::remove_file(from).map_err(|e| StoreError::io("remove", from, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(StoreError::Exists(to.to_owned()))
        }
        Err(_) => {
            if to.exists() {
                return Err(StoreError::Exists(to.to_owned()));
            }
            std::fs::rename(from, to).map_err(|e| StoreError::io("rename", from, e))
        }
    }
}
