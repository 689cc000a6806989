//! Durable file operations: atomic replace-free publication and directory fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::StoreError;

/// The mode bits every store directory has: group-writable and set-group-ID, so that the
/// pods of every target (each may run as its own user, `spec.job.runAs`, all with the
/// store's group through `fsGroup`) can add their directories and artifacts next to each
/// other's.
pub const SHARED_DIR_BITS: u32 = 0o2070;

/// The mode a store directory should have, given its mode now: `None` when it already
/// has [`SHARED_DIR_BITS`].
pub fn shared_dir_mode(mode: u32) -> Option<u32> {
    let permissions = mode & 0o7777;
    let wanted = permissions | SHARED_DIR_BITS;
    (wanted != permissions).then_some(wanted)
}

/// Create `dir` and its missing parents below `root` as shared store directories
/// ([`SHARED_DIR_BITS`]), and repair those this user owns that lack the bits (made by an
/// earlier version, or by a different umask). A directory that another user owns and
/// that lacks them is left alone: creating inside it then fails with the path named.
pub fn create_shared_dirs(root: &Path, dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // The root is the claim's mount (or a directory given on the command line): create
    // it when missing, and leave its mode to whoever owns it.
    std::fs::create_dir_all(root).map_err(|e| StoreError::io("create directory", root, e))?;
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let mut current = root.to_path_buf();
    let me = effective_uid();
    for component in relative.components() {
        current.push(component);
        match std::fs::DirBuilder::new().mode(0o2775).create(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("create directory", &current, e)),
        }
        let meta = std::fs::metadata(&current)
            .map_err(|e| StoreError::io("create directory", &current, e))?;
        if meta.uid() != me {
            continue;
        }
        if let Some(mode) = shared_dir_mode(meta.mode()) {
            std::fs::set_permissions(&current, std::fs::Permissions::from_mode(mode))
                .map_err(|e| StoreError::io("make group-writable", &current, e))?;
        }
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

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

#[cfg(test)]
mod shared_dir_tests {
    use super::*;

    #[test]
    fn shared_modes() {
        let cases = [
            (0o40755, Some(0o2775)),
            (0o40700, Some(0o2770)),
            (0o42775, None),
            (0o42770, None),
            (0o40775, Some(0o2775)),
            (0o42755, Some(0o2775)),
        ];
        for (mode, want) in cases {
            assert_eq!(shared_dir_mode(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn missing_directories_are_created_shared_and_own_ones_repaired() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("shop")).unwrap();
        std::fs::set_permissions(
            root.path().join("shop"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let dir = root.path().join("shop/app/2026-12-01");
        create_shared_dirs(root.path(), &dir).unwrap();
        for d in ["shop", "shop/app", "shop/app/2026-12-01"] {
            let mode = std::fs::metadata(root.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o2775, "{d}: {mode:o}");
        }
        // The root itself is the claim's: left as it is; a missing one is created.
        let missing = root.path().join("not-yet/store");
        create_shared_dirs(&missing, &missing.join("shop")).unwrap();
        assert!(missing.join("shop").is_dir());
        let mode = std::fs::metadata(root.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o2000, 0, "{mode:o}");
    }
}
