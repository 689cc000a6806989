//! The restore side: how to put a tree in place (a pure decision), and unpacking a tar
//! stream into a staging directory with the crate's path-traversal checks (blocking).

use std::io::{self, ErrorKind as IoKind};
use std::path::{Component, Path};

use stowage_plugin_sdk::PluginError;
use tar::{Archive, EntryType};

use crate::bridge::ChunkReader;

/// What the restore destination is before a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Nothing there yet.
    Missing,
    /// An empty directory.
    Empty,
    /// A directory with entries.
    NonEmpty,
    /// Something that is not a directory.
    NotADirectory,
}

/// How a restore puts the unpacked tree in place. The tree is always unpacked into a
/// staging directory on the same filesystem first, so a failure leaves nothing
/// half-written under the destination's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Stage beside the destination, then rename the staging directory to it (over an
    /// empty directory, which `rename` replaces).
    RenameIntoPlace,
    /// Stage inside the destination (the claim's root, a mount point that cannot be
    /// renamed), then move each top-level entry into it.
    MoveEntriesIntoRoot,
    /// Stage beside the destination, then rename the old tree aside, the new one in, and
    /// delete the old one.
    Swap,
}

/// Why a restore is refused before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The destination is a file (or another non-directory).
    NotADirectory,
    /// The destination holds data and the restore was not asked to replace it.
    HoldsData,
    /// Replacing the whole claim's root is not possible (it is a mount point).
    ReplaceClaimRoot,
}

/// How to restore into `destination`: whether it is the claim's root, and whether the
/// restore replaces what is there (`mode: Replace`).
pub fn plan(destination: Destination, is_claim_root: bool, replace: bool) -> Result<Plan, Refusal> {
    match (destination, is_claim_root, replace) {
        (Destination::NotADirectory, _, _) => Err(Refusal::NotADirectory),
        (Destination::NonEmpty, _, false) => Err(Refusal::HoldsData),
        (Destination::NonEmpty, true, true) => Err(Refusal::ReplaceClaimRoot),
        (Destination::NonEmpty, false, true) => Ok(Plan::Swap),
        (Destination::Missing | Destination::Empty, true, _) => Ok(Plan::MoveEntriesIntoRoot),
        (Destination::Missing | Destination::Empty, false, _) => Ok(Plan::RenameIntoPlace),
    }
}

/// Whether a tar entry's path stays inside the directory it is unpacked into: relative,
/// without `..`.
pub fn entry_stays_inside(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// What a restore unpacked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Entries of a kind a non-root pod cannot create (devices) or that a stowage archive
    /// never holds, skipped.
    pub skipped: u64,
}

/// Unpack the tar stream of `reader` into `staging` (an existing empty directory): modes
/// and modification times kept, ownership not (the pod is not root), symbolic links as
/// links. An entry that would land outside `staging` (`..`, an absolute path, a path
/// through a symbolic link) is refused, and so is an archive that ends without its end
/// marker (a truncated artifact). Reads `reader` to its end, so an error the artifact
/// stream reports there (a checksum mismatch) fails the restore before anything is
/// put in place.
pub fn unpack(reader: ChunkReader, staging: &Path) -> Result<Unpacked, PluginError> {
    let mut archive = Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut unpacked = Unpacked::default();
    {
        // Directories last, deepest first, as `Archive::unpack` does: a read-only directory
        // gets its mode after what is inside it was written.
        let mut directories = Vec::new();
        for entry in archive.entries().map_err(artifact_error)? {
            let mut entry = entry.map_err(artifact_error)?;
            let path = entry.path().map_err(artifact_error)?.into_owned();
            if !entry_stays_inside(&path) {
                return Err(escapes(&path));
            }
            match entry.header().entry_type() {
                EntryType::Directory => {
                    directories.push(entry);
                    continue;
                }
                EntryType::Regular
                | EntryType::Continuous
                | EntryType::Symlink
                | EntryType::Link => {}
                other => {
                    tracing::warn!(entry = %path.display(), kind = ?other, "skipped: not a file, directory or link");
                    unpacked.skipped += 1;
                    continue;
                }
            }
            if !entry
                .unpack_in(staging)
                .map_err(|e| unpack_error(&path, e))?
            {
                return Err(escapes(&path));
            }
            unpacked.entries += 1;
        }
        directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
        for mut directory in directories {
            let path = directory.path().map_err(artifact_error)?.into_owned();
            if !directory
                .unpack_in(staging)
                .map_err(|e| unpack_error(&path, e))?
            {
                return Err(escapes(&path));
            }
            unpacked.entries += 1;
        }
    }
    let mut reader = archive.into_inner();
    if reader.at_end {
        return Err(PluginError::ToolFailed(
            "the artifact ends before the tar archive's end marker: it is truncated; nothing was restored, choose another artifact".to_owned(),
        ));
    }
    io::copy(&mut reader, &mut io::sink()).map_err(artifact_error)?;
    Ok(unpacked)
}

fn escapes(path: &Path) -> PluginError {
    PluginError::ToolFailed(format!(
        "the artifact's entry {:?} would be written outside the destination directory; \
         refused, nothing was restored (this is not an archive the files plugin made, or it \
         was altered)",
        path.display().to_string()
    ))
}

fn artifact_error(e: io::Error) -> PluginError {
    match e.kind() {
        IoKind::InvalidData => PluginError::Io(e),
        _ => PluginError::ToolFailed(format!(
            "the artifact is not a readable tar archive ({e}); nothing was restored"
        )),
    }
}

fn unpack_error(path: &Path, e: io::Error) -> PluginError {
    let shown = path.display().to_string();
    match e.kind() {
        IoKind::PermissionDenied => PluginError::Unauthorized(format!(
            "cannot write {shown:?} on the claim ({e}); set spec.job.runAs to the application's user and group"
        )),
        IoKind::Other | IoKind::InvalidInput | IoKind::InvalidData | IoKind::UnexpectedEof => {
            PluginError::ToolFailed(format!(
                "cannot unpack the artifact's entry {shown:?}: {e}; nothing was restored"
            ))
        }
        _ => PluginError::Io(io::Error::new(
            e.kind(),
            format!("unpacking {shown:?} on the claim: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        use Destination::*;
        // (destination, claim root, replace, want)
        let cases: [(Destination, bool, bool, Result<Plan, Refusal>); 12] = [
            (Missing, false, false, Ok(Plan::RenameIntoPlace)),
            (Missing, false, true, Ok(Plan::RenameIntoPlace)),
            (Empty, false, false, Ok(Plan::RenameIntoPlace)),
            (Empty, true, false, Ok(Plan::MoveEntriesIntoRoot)),
            (Missing, true, false, Ok(Plan::MoveEntriesIntoRoot)),
            (Empty, true, true, Ok(Plan::MoveEntriesIntoRoot)),
            (NonEmpty, false, false, Err(Refusal::HoldsData)),
            (NonEmpty, false, true, Ok(Plan::Swap)),
            (NonEmpty, true, true, Err(Refusal::ReplaceClaimRoot)),
            (NonEmpty, true, false, Err(Refusal::HoldsData)),
            (NotADirectory, false, true, Err(Refusal::NotADirectory)),
            (NotADirectory, false, false, Err(Refusal::NotADirectory)),
        ];
        for (destination, root, replace, want) in cases {
            assert_eq!(
                plan(destination, root, replace),
                want,
                "{destination:?} root={root} replace={replace}"
            );
        }
    }

    #[test]
    fn entry_paths() {
        let cases = [
            ("a/b.txt", true),
            ("./a", true),
            ("../etc/passwd", false),
            ("a/../../x", false),
            ("/etc/passwd", false),
        ];
        for (path, inside) in cases {
            assert_eq!(entry_stays_inside(Path::new(path)), inside, "{path}");
        }
    }
}
