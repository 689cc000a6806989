//! The artifact store: where backups are written, how, and how they are found again.
//!
//! Layout (see `docs/artifacts.md`):
//! `<root>/<namespace>/<target>/<YYYY-MM-DD>/<plugin>-<YYYYMMDDTHHMMSSZ>[-<schedule>].<ext>[.gz|.zst]`
//! plus `<artifact>.meta.json`, the [`Sidecar`], written before the artifact takes its name. Artifacts are written through
//! [`ArtifactStore::create`] → [`PendingArtifact::start`] → [`PendingArtifact::commit`], so
//! a reader never sees a partial file under a final name. [`catalog`] lists and verifies
//! them from sidecars alone.

pub mod catalog;
mod cli;
mod fsio;
pub mod layout;
pub mod pipeline;
pub mod reader;
pub mod select;
pub mod sidecar;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};

pub use cli::{ArtifactsCommand, ListArgs, PruneArgs, RepairArgs, VerifyArgs, human_bytes};
pub use layout::{ArtifactName, InvalidName, TargetDir};
pub use pipeline::ArtifactWriter;
pub use sidecar::Sidecar;
pub use writer::{
    ArtifactStore, CommitStep, Counters, Encoded, PendingArtifact, Recovery, WrittenArtifact,
};

/// An error of the artifact store. Messages name the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (e.g. `create`, `fsync directory`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A sidecar cannot be parsed.
    #[error("{}: invalid sidecar: {message}", path.display())]
    BadSidecar {
        /// The sidecar.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The final name is taken; stowage never overwrites an artifact.
    #[error("{} already exists; stowage never overwrites an artifact", .0.display())]
    Exists(PathBuf),
    /// A name from the cluster cannot be a path component.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
}

impl StoreError {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
