//! Durable file operations: atomic replace-free publication and directory fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::StoreError;

/// fsync a directory so a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::io("fsync directory", dir, source))
}

/// Write `bytes` to `path`, which must not exist yet, so that a reader sees either nothing
/// or the whole file: the temporary file `partial`, fsynced, published without replacing,
/// directory fsynced. Fails with [`StoreError::Exists`] when `path` exists.
pub fn write_new(path: &Path, partial: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_synced(partial, path, bytes)?;
    if let Err(e) = publish_no_replace(partial, path) {
        let _ = std::fs::remove_file(partial);
        return Err(e);
    }
    sync_parent(path)
}

/// Write and fsync `partial` (removed again on failure); errors name `path`.
fn write_synced(partial: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(partial)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(partial);
        StoreError::io("write", path, source)
    })
}

fn sync_parent(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
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
