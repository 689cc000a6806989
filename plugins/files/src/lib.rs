//! The `files` plugin: a directory tree on an application's claim, archived as a streamed
//! tar and unpacked back into the same directory or another one on the claim.
//!
//! It is a native plugin (the tar format is written by the runner, so the Job needs no
//! tool image) that works on files of the application's PersistentVolumeClaim, mounted by
//! the Job at [`APP_CLAIM_ROOT`](stowage_plugin_sdk::APP_CLAIM_ROOT) (see
//! [`AppClaim`](stowage_plugin_sdk::AppClaim)).
//!
//! - **probe** checks that `path` is a directory inside the claim that the pod can list.
//! - **backup** walks the tree in file-name order without following symbolic links and
//!   streams it as a tar archive into the sink: directories, regular files (mode, owner
//!   ids, modification time), symbolic links as links. FIFOs, sockets and devices are
//!   skipped and counted. A file that changes while it is read is stored with exactly the
//!   size announced in its header (cut, or padded with zeros), so the archive stays valid,
//!   and is counted. An archive that would be empty fails instead of being stored.
//! - **inspect_destination**: the destination directory exists and has entries.
//! - **restore** unpacks into a staging directory on the same filesystem, refusing any
//!   entry that would land outside it, and only after the whole artifact was read puts the
//!   tree in place with renames; with `mode: Replace` the old tree is renamed aside and
//!   deleted once the new one is in place, so a failed restore leaves it untouched.

mod archive;
mod bridge;
mod config;
mod unpack;

pub use archive::{ExactSize, Tally};
pub use config::{Decision, FilesConfig, Selection, relative_dir};
pub use unpack::{Destination, Plan, Refusal, entry_stays_inside, plan};

use std::collections::BTreeMap;
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use stowage_plugin_sdk::{
    AppClaim, ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport,
    Execution, Plugin, PluginError, PluginInfo, ProbeReport, RestoreReport, RestoreRequest,
    RunContext, ValidationErrors,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::archive::Place;
use crate::bridge::{CHUNK, ChunkReader, ChunkWriter, IN_FLIGHT};

/// The files plugin.
pub struct FilesPlugin;

/// Fact: the archived directory, relative to the claim's root (`.`: the whole claim).
pub const FACT_PATH: &str = "path";
/// Fact: regular files archived.
pub const FACT_FILES: &str = "files";
/// Fact: directories archived.
pub const FACT_DIRECTORIES: &str = "directories";
/// Fact: symbolic links archived (as links).
pub const FACT_SYMLINKS: &str = "symlinks";
/// Fact: bytes of the regular files' contents.
pub const FACT_BYTES: &str = "bytes";
/// Fact: FIFOs, sockets and device files skipped (only when there were some).
pub const FACT_SKIPPED_SPECIAL: &str = "skippedSpecialFiles";
/// Fact: the first few skipped special files, comma-separated.
pub const FACT_SKIPPED_SPECIAL_NAMES: &str = "skippedSpecialFileNames";
/// Fact: files that changed or vanished while they were read (only when there were some).
pub const FACT_CHANGED: &str = "changedDuringBackup";
/// Fact: the first few of them, comma-separated.
pub const FACT_CHANGED_NAMES: &str = "changedDuringBackupNames";

impl Plugin for FilesPlugin {
    type Config = FilesConfig;
    const KEY: &'static str = "files";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "Files",
            version: env!("CARGO_PKG_VERSION"),
            description: "A directory tree on an application's claim as a streamed tar archive (links kept as links), restored into the same or another directory",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "tar",
            content_type: "application/x-tar",
            execution: Execution::Native,
            needs_kubernetes_api: false,
        }
    }

    fn app_claim(config: &FilesConfig) -> Option<AppClaim> {
        Some(AppClaim {
            claim_name: config.claim_name.clone(),
        })
    }

    fn validate(config: &FilesConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(config: &FilesConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let dir = Location::of(config, ctx, None)?;
        let entries = blocking(move || {
            dir.source_directory()?;
            let listing = std::fs::read_dir(&dir.path).map_err(|e| dir.io_error(e))?;
            Ok((listing.count(), dir))
        })
        .await?;
        let (count, dir) = entries;
        Ok(ProbeReport {
            message: format!(
                "directory {} on claim {:?} has {count} entries at its top level",
                dir.shown, config.claim_name
            ),
            facts: BTreeMap::from([
                (FACT_PATH.to_owned(), dir.fact_path()),
                ("topLevelEntries".to_owned(), count.to_string()),
            ]),
        })
    }

    async fn backup(
        config: &FilesConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let dir = Location::of(config, ctx, None)?;
        let selection = config.selection().map_err(PluginError::InvalidConfig)?;
        tracing::info!(
            namespace = %ctx.namespace,
            target = %ctx.target,
            path = %dir.shown,
            claim = %config.claim_name,
            "archiving the directory tree"
        );
        let fact_path = dir.fact_path();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let walker = tokio::task::spawn_blocking(move || {
            let resolved = dir.source_directory()?;
            let place = Place {
                claim: &dir.claim,
                shown: &dir.shown,
            };
            let (tally, mut out) =
                archive::write_tree(&resolved, &selection, &place, ChunkWriter::new(tx))?;
            std::io::Write::flush(&mut out).map_err(PluginError::Io)?;
            Ok::<_, PluginError>(tally)
        });
        let mut sink_error = None;
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = sink.write_all(&chunk).await {
                sink_error = Some(e);
                break;
            }
        }
        // The walker's next write fails once nothing receives.
        drop(rx);
        let walked = walker
            .await
            .map_err(|e| PluginError::Internal(format!("the archiving task failed: {e}")))?;
        if let Some(e) = sink_error {
            return Err(PluginError::Io(e));
        }
        let tally = walked?;
        sink.flush().await?;
        tracing::info!(
            files = tally.files,
            directories = tally.directories,
            symlinks = tally.symlinks,
            bytes = tally.bytes,
            skipped_special_files = tally.skipped_special,
            changed_during_backup = tally.changed,
            "directory tree archived"
        );
        Ok(BackupReport {
            facts: facts(&tally, fact_path),
        })
    }

    async fn inspect_destination(
        config: &FilesConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        let dir = Location::of(config, ctx, request.into.as_deref())?;
        let claim = config.claim_name.clone();
        blocking(move || {
            dir.check_inside()?;
            let (holds_data, what) = match dir.destination()? {
                Destination::Missing => (false, "does not exist".to_owned()),
                Destination::Empty => (false, "is an empty directory".to_owned()),
                Destination::NonEmpty => {
                    let count = std::fs::read_dir(&dir.path)
                        .map_err(|e| dir.io_error(e))?
                        .count();
                    (
                        true,
                        format!("is a directory with {count} top-level entries"),
                    )
                }
                Destination::NotADirectory => return Err(dir.not_a_directory()),
            };
            Ok(DestinationReport {
                holds_data,
                description: format!("{} on claim {claim:?} {what}", dir.shown),
            })
        })
        .await
    }

    async fn restore(
        config: &FilesConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        let dir = Location::of(config, ctx, request.into.as_deref())?;
        let replace = request.replace;
        let run = staging_tag(&ctx.run_id);
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(IN_FLIGHT);
        let unpacker = tokio::task::spawn_blocking(move || restore_tree(&dir, replace, &run, rx));
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match source.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Ok(buffer[..n].to_vec())).await.is_err() {
                        // The unpacker stopped (its error says why).
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
        drop(tx);
        let message = unpacker
            .await
            .map_err(|e| PluginError::Internal(format!("the unpacking task failed: {e}")))??;
        Ok(RestoreReport {
            message: format!("{message} on claim {:?}", config.claim_name),
        })
    }
}

/// The facts of a backup.
fn facts(tally: &Tally, path: String) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::from([
        (FACT_PATH.to_owned(), path),
        (FACT_FILES.to_owned(), tally.files.to_string()),
        (FACT_DIRECTORIES.to_owned(), tally.directories.to_string()),
        (FACT_SYMLINKS.to_owned(), tally.symlinks.to_string()),
        (FACT_BYTES.to_owned(), tally.bytes.to_string()),
    ]);
    if tally.skipped_special > 0 {
        facts.insert(
            FACT_SKIPPED_SPECIAL.to_owned(),
            tally.skipped_special.to_string(),
        );
        facts.insert(
            FACT_SKIPPED_SPECIAL_NAMES.to_owned(),
            tally.skipped_special_names.join(", "),
        );
    }
    if tally.changed > 0 {
        facts.insert(FACT_CHANGED.to_owned(), tally.changed.to_string());
        facts.insert(
            FACT_CHANGED_NAMES.to_owned(),
            tally.changed_names.join(", "),
        );
    }
    facts
}

/// Unpack into a staging directory, then put the tree in place as [`plan`] says
/// (blocking). Returns the report's message.
fn restore_tree(
    dir: &Location,
    replace: bool,
    run: &str,
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> Result<String, PluginError> {
    dir.check_inside()?;
    let destination = dir.destination()?;
    let plan = plan(destination, dir.is_claim_root(), replace).map_err(|refusal| match refusal {
        Refusal::NotADirectory => dir.not_a_directory(),
        Refusal::HoldsData => PluginError::Unsupported(format!(
            "{} on claim {:?} holds data; restore with mode: Replace, or into another directory (spec.destination.into)",
            dir.shown, dir.claim
        )),
        Refusal::ReplaceClaimRoot => PluginError::Unsupported(format!(
            "the claim {:?}'s root directory cannot be replaced as a whole (it is the volume's mount point); restore into a subdirectory with spec.destination.into, or empty the claim first",
            dir.claim
        )),
    })?;
    let staging_parent = match plan {
        Plan::MoveEntriesIntoRoot => dir.path.clone(),
        Plan::RenameIntoPlace | Plan::Swap => {
            let parent = dir.path.parent().unwrap_or(&dir.root).to_path_buf();
            std::fs::create_dir_all(&parent).map_err(|e| dir.io_error(e))?;
            parent
        }
    };
    let staging = Scratch::create(&staging_parent, &format!(".stowage-restore-{run}"))
        .map_err(|e| dir.io_error(e))?;
    tracing::info!(destination = %dir.shown, staging = %staging.path.display(), plan = ?plan, "unpacking the artifact");
    let unpacked = unpack::unpack(ChunkReader::new(rx), &staging.path)?;
    match plan {
        Plan::RenameIntoPlace => {
            std::fs::rename(&staging.path, &dir.path).map_err(|e| dir.io_error(e))?;
            staging.keep();
        }
        Plan::MoveEntriesIntoRoot => {
            for entry in std::fs::read_dir(&staging.path).map_err(|e| dir.io_error(e))? {
                let entry = entry.map_err(|e| dir.io_error(e))?;
                std::fs::rename(entry.path(), dir.path.join(entry.file_name()))
                    .map_err(|e| dir.io_error(e))?;
            }
            std::fs::remove_dir(&staging.path).map_err(|e| dir.io_error(e))?;
            staging.keep();
        }
        Plan::Swap => {
            // The new tree gets the old directory's own mode (the archive holds what is
            // inside `path`, not `path` itself).
            if let Ok(old) = std::fs::metadata(&dir.path) {
                let _ = std::fs::set_permissions(&staging.path, old.permissions());
            }
            let aside = staging_parent.join(format!(".stowage-replaced-{run}"));
            std::fs::rename(&dir.path, &aside).map_err(|e| dir.io_error(e))?;
            if let Err(e) = std::fs::rename(&staging.path, &dir.path) {
                let _ = std::fs::rename(&aside, &dir.path);
                return Err(dir.io_error(e));
            }
            staging.keep();
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                tracing::warn!(old = %aside.display(), error = %e, "the replaced tree could not be deleted; remove it by hand");
            }
        }
    }
    let mut message = format!("restored {} entries into {}", unpacked.entries, dir.shown);
    if unpacked.skipped > 0 {
        message.push_str(&format!(
            " ({} entries that are not files, directories or links skipped)",
            unpacked.skipped
        ));
    }
    Ok(message)
}

/// A directory of a run's own (a staging tree), removed with what it holds when dropped
/// unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn create(parent: &Path, name: &str) -> std::io::Result<Scratch> {
        let path = parent.join(name);
        if path.exists() {
            // A leftover of an earlier attempt of the same run.
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir(&path)?;
        Ok(Scratch { path, keep: false })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = make_writable(&self.path);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Give the owner write permission on every directory below `path`, so a half-unpacked
/// tree with read-only directories can be removed.
fn make_writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry?;
        if entry.file_type().is_dir() {
            let mode = entry.metadata()?.permissions().mode();
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode | 0o700))?;
        }
    }
    Ok(())
}

/// The run's id as a safe file-name part.
fn staging_tag(run_id: &str) -> String {
    let pid = std::process::id();
    let tag: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("{tag}-{pid}")
}

/// The directory of a run: `path` (or a restore's `into`) under the claim's mount.
#[derive(Clone, Debug)]
struct Location {
    /// The claim's mount in the pod.
    root: PathBuf,
    /// The directory relative to the claim's root (empty: the root).
    relative: PathBuf,
    /// The directory in the pod.
    path: PathBuf,
    /// The directory as shown in messages.
    shown: String,
    /// The claim's name.
    claim: String,
    /// The field it comes from, as a user finds it (`spec.files.path`, or the restore's
    /// `spec.destination.into`).
    field: &'static str,
    /// The field relative to the plugin config, for `InvalidConfig`.
    config_field: &'static str,
}

impl Location {
    fn of(config: &FilesConfig, ctx: &RunContext, into: Option<&str>) -> Result<Self, PluginError> {
        let (field, config_field, text) = match into {
            Some(into) => ("spec.destination.into", "into", into),
            None => ("spec.files.path", "path", config.path.as_str()),
        };
        let relative = relative_dir(text).map_err(|message| {
            PluginError::InvalidConfig(ValidationErrors::single(config_field, message))
        })?;
        let root = ctx.claim_root()?.to_path_buf();
        let shown = if relative.as_os_str().is_empty() {
            "the claim's root directory".to_owned()
        } else {
            format!("directory {:?}", relative.display().to_string())
        };
        Ok(Location {
            path: root.join(&relative),
            root,
            relative,
            shown,
            claim: config.claim_name.clone(),
            field,
            config_field,
        })
    }

    fn is_claim_root(&self) -> bool {
        self.relative.as_os_str().is_empty()
    }

    /// `path` for the facts: relative to the claim's root, `.` for the root.
    fn fact_path(&self) -> String {
        if self.is_claim_root() {
            ".".to_owned()
        } else {
            self.relative.display().to_string()
        }
    }

    /// Refuse a directory that resolves outside the claim through a symbolic link on the
    /// claim (an absolute link, or one with `..`).
    fn check_inside(&self) -> Result<(), PluginError> {
        let root = self.root.canonicalize().map_err(|e| {
            PluginError::Internal(format!(
                "the claim's mount {} cannot be resolved: {e}",
                self.root.display()
            ))
        })?;
        let mut existing = self.path.as_path();
        let resolved = loop {
            match existing.canonicalize() {
                Ok(resolved) => break resolved,
                Err(e) if e.kind() == IoKind::NotFound => match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return Ok(()),
                },
                Err(e) => return Err(self.io_error(e)),
            }
        };
        if resolved.starts_with(&root) {
            Ok(())
        } else {
            Err(PluginError::InvalidConfig(ValidationErrors::single(
                self.config_field,
                format!(
                    "{} on claim {:?} leads outside the claim through a symbolic link (to {}); give the directory the link points to, relative to the claim's root",
                    self.shown,
                    self.claim,
                    resolved.display()
                ),
            )))
        }
    }

    /// Check a backup's or probe's directory: inside the claim, existing, a directory.
    /// Returns it resolved (a `path` that is a link to a directory on the claim is walked
    /// as that directory).
    fn source_directory(&self) -> Result<PathBuf, PluginError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.is_dir() => {
                self.check_inside()?;
                self.path.canonicalize().map_err(|e| self.io_error(e))
            }
            Ok(_) => Err(self.not_a_directory()),
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// What a restore's destination is now.
    fn destination(&self) -> Result<Destination, PluginError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_dir() => {
                let mut listing = std::fs::read_dir(&self.path).map_err(|e| self.io_error(e))?;
                Ok(if listing.next().is_some() {
                    Destination::NonEmpty
                } else {
                    Destination::Empty
                })
            }
            Ok(_) => Ok(Destination::NotADirectory),
            Err(e) if e.kind() == IoKind::NotFound => Ok(Destination::Missing),
            Err(e) => Err(self.io_error(e)),
        }
    }

    fn not_a_directory(&self) -> PluginError {
        PluginError::InvalidConfig(ValidationErrors::single(
            self.config_field,
            format!(
                "{} on claim {:?} is a file, not a directory; give its directory and select the file with spec.files.include",
                self.shown, self.claim
            ),
        ))
    }

    fn io_error(&self, e: std::io::Error) -> PluginError {
        match e.kind() {
            IoKind::NotFound => PluginError::NotFound(format!(
                "{}: no {} on claim {:?} (mounted at the claim's root); check the path the application uses, relative to its volume's mount",
                self.field, self.shown, self.claim
            )),
            IoKind::PermissionDenied => PluginError::Unauthorized(format!(
                "{}: {} on claim {:?} cannot be read or written by the backup pod's user ({e}); set spec.job.runAs to the application's user and group",
                self.field, self.shown, self.claim
            )),
            IoKind::NotADirectory => self.not_a_directory(),
            _ => PluginError::Io(std::io::Error::new(
                e.kind(),
                format!("{} on claim {:?}: {e}", self.shown, self.claim),
            )),
        }
    }
}

/// Run filesystem work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PluginError::Internal(format!("the filesystem task failed: {e}")))?
}
