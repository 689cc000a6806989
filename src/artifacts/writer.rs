//! The atomic writer: `<final>.<run>.partial` created exclusively, the stream pipeline
//! ([`super::pipeline`]) into it, then the commit: sidecar, rename, directory fsync.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::StoreError;
use super::fsio;
use super::layout::{
    ArtifactName, PARTIAL_SUFFIX, SIDECAR_SUFFIX, TargetDir, parse_partial, partial_name, run_part,
    with_suffix,
};
use super::pipeline::{self, ArtifactWriter};
use super::sidecar::Sidecar;
use crate::api::Compression;

/// Byte counters of a write in progress, shared with the progress reporter.
#[derive(Debug, Default)]
pub struct Counters {
    raw: AtomicU64,
    stored: AtomicU64,
}

impl Counters {
    /// Bytes received from the plugin so far.
    pub fn raw(&self) -> u64 {
        self.raw.load(Ordering::Relaxed)
    }

    /// Bytes written to the file so far (after compression).
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Record `n` more raw bytes (received from the plugin, or fed to it by a restore).
    pub fn add_raw(&self, n: u64) {
        self.raw.fetch_add(n, Ordering::Relaxed);
    }

    /// Record `n` more bytes written to the file.
    pub(super) fn add_stored(&self, n: u64) {
        self.stored.fetch_add(n, Ordering::Relaxed);
    }
}

/// An artifact store rooted at a directory (a PVC mounted at `/backups` in a Job).
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// A store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ArtifactStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute directory of a target.
    pub fn target_path(&self, dir: &TargetDir) -> PathBuf {
        self.root.join(dir.relative())
    }

    /// Make a target's directory ready for run `run_id`, before it creates its artifact:
    /// finish or undo commits that a killed run interrupted, and remove the partial files
    /// of runs that are provably over: this run's own (a retried pod of the same run), and
    /// any not written to for `stale_after` (longer than any run may last). A partial file
    /// of another run that may still be live is never touched.
    pub fn recover(
        &self,
        dir: &TargetDir,
        run_id: &str,
        stale_after: Duration,
    ) -> Result<Recovery, StoreError> {
        recover_dirs(
            &subdirectories(&self.target_path(dir))?,
            Some(run_id),
            stale_after,
        )
    }

    /// Reserve a new artifact for run `run_id`: create its directory and its partial file
    /// (`<final>.<run>.partial`) under a final name that no artifact, sidecar or other
    /// run's partial file has (adding `-1`, `-2`... when one exists). Every directory from
    /// the new one up to the store's root is fsynced.
    pub fn create(&self, name: &ArtifactName, run_id: &str) -> Result<PendingArtifact, StoreError> {
        for n in 0..1000 {
            let relative = name.relative_path(n);
            let final_path = self.root.join(&relative);
            let partial_path = partial_name(&final_path, run_id);
            if final_path.exists() || with_suffix(&final_path, SIDECAR_SUFFIX).exists() {
                continue;
            }
            let parent = final_path.parent().ok_or_else(|| {
                StoreError::io("create", &final_path, io::ErrorKind::InvalidInput.into())
            })?;
            fsio::create_shared_dirs(&self.root, parent)?;
            if other_partial_exists(parent, &final_path, &partial_path)? {
                continue;
            }
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial_path)
            {
                Ok(file) => {
                    // Make the new entries durable, from the date directory to the root.
                    for dir in parent.ancestors() {
                        fsio::sync_dir(dir)?;
                        if dir == self.root {
                            break;
                        }
                    }
                    return Ok(PendingArtifact {
                        relative,
                        final_path,
                        partial_path,
                        file,
                        compression: name.compression,
                        counters: Arc::new(Counters::default()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create", &partial_path, e)),
            }
        }
        Err(StoreError::Exists(self.root.join(name.relative_path(0))))
    }
}

/// [`ArtifactStore::recover`] over the given directories (each holding artifacts,
/// sidecars and partial files): `own_run`'s partial files count as over. Also the engine
/// of `stowage artifacts repair`, which passes no run.
pub fn recover_dirs(
    dirs: &[PathBuf],
    own_run: Option<&str>,
    stale_after: Duration,
) -> Result<Recovery, StoreError> {
    let mut recovery = Recovery::default();
    let own = own_run.map(run_part);
    let now = SystemTime::now();
    let is_over = |path: &Path, run: Option<&str>| -> bool {
        if run.is_some() && run == own.as_deref() {
            return true;
        }
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= stale_after)
    };
    for date_dir in dirs {
        let date_dir = date_dir.as_path();
        let files = files_in(date_dir)?;
        // Interrupted commits first: a sidecar whose artifact is not there yet.
        for sidecar_path in files.iter().filter(|f| is_sidecar(f)) {
            let Some(artifact) = super::catalog::artifact_of_sidecar(sidecar_path) else {
                continue;
            };
            if artifact.exists() {
                continue;
            }
            let sidecar = match Sidecar::read(sidecar_path) {
                Ok(sidecar) => sidecar,
                Err(e) => {
                    tracing::warn!(error = %e, "leaves an unreadable sidecar alone; `stowage verify` reports it");
                    continue;
                }
            };
            match settle_sidecar(date_dir, sidecar_path, &artifact, &sidecar, &is_over)? {
                Settled::Completed => recovery.completed.push(artifact),
                Settled::Removed => recovery.removed.push(sidecar_path.clone()),
                Settled::Left | Settled::PublishedByItsRun => {}
            }
        }
        for path in files.iter().filter(|f| is_partial(f)) {
            if !path.exists() {
                continue; // Published above.
            }
            let run = parse_partial(path).map(|(_, run)| run);
            if is_over(path, run.as_deref()) {
                remove(path)?;
                tracing::info!(path = %path.display(), "removed a partial file left by a run that is over");
                recovery.removed.push(path.clone());
            } else {
                tracing::info!(path = %path.display(), run = run.as_deref().unwrap_or("?"), "leaves the partial file of another run alone: it may still be writing");
                recovery.kept_live.push(path.clone());
            }
        }
    }
    Ok(recovery)
}

/// What recovery did with a sidecar whose artifact was not there.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// The run's partial file matched the sidecar and was published.
    Completed,
    /// The sidecar (and the partial file, if any) were removed.
    Removed,
    /// Left alone: the run may still be live.
    Left,
    /// The run was live after all and published the artifact itself meanwhile (after
    /// the directory was listed); nothing to do.
    PublishedByItsRun,
}

fn published_by_its_run(artifact: &Path, sidecar: &Sidecar) -> Settled {
    tracing::info!(artifact = %artifact.display(), run_id = sidecar.run_id, "its run published the artifact meanwhile: it was live, not interrupted");
    Settled::PublishedByItsRun
}

/// Finish or undo the interrupted commit of the sidecar at `sidecar_path` (in `date_dir`),
/// whose artifact `artifact` was not there when the directory was listed. `is_over` says
/// whether a partial file's run is over. The run may have been live and published the
/// artifact since (a sidecar without its artifact is also the instant between a live
/// run's two commit steps): then its sidecar is left alone, and that is no error.
pub(super) fn settle_sidecar(
    date_dir: &Path,
    sidecar_path: &Path,
    artifact: &Path,
    sidecar: &Sidecar,
    is_over: &dyn Fn(&Path, Option<&str>) -> bool,
) -> Result<Settled, StoreError> {
    let partial = partial_name(artifact, &sidecar.run_id);
    match super::catalog::hash_file(&partial) {
        Ok((size, sha)) if size == sidecar.stored_bytes && sha == sidecar.sha256 => {
            match fsio::publish_no_replace(&partial, artifact) {
                Ok(()) => {}
                Err(StoreError::Exists(_)) if holds(artifact, sidecar) => {
                    return Ok(published_by_its_run(artifact, sidecar));
                }
                Err(e) => return Err(e),
            }
            fsio::sync_dir(date_dir)?;
            tracing::warn!(artifact = %artifact.display(), run_id = sidecar.run_id, "completed a commit that an interrupted run left half done");
            Ok(Settled::Completed)
        }
        Ok(_) if !is_over(&partial, Some(&run_part(&sidecar.run_id))) => Ok(Settled::Left),
        Ok(_) => {
            remove(&partial)?;
            remove(sidecar_path)?;
            fsio::sync_dir(date_dir)?;
            tracing::warn!(sidecar = %sidecar_path.display(), "removed the sidecar and partial file of an interrupted run whose file does not match its sidecar");
            Ok(Settled::Removed)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if holds(artifact, sidecar) {
                return Ok(published_by_its_run(artifact, sidecar));
            }
            // No file to publish: the artifact was pruned (artifact first,
            // sidecar second) or deleted; the sidecar describes nothing.
            remove(sidecar_path)?;
            fsio::sync_dir(date_dir)?;
            tracing::warn!(sidecar = %sidecar_path.display(), "removed a sidecar whose artifact is gone");
            Ok(Settled::Removed)
        }
        Err(e) => Err(StoreError::io("read", &partial, e)),
    }
}

/// What [`ArtifactStore::recover`] did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Artifacts whose interrupted commit was completed (their file matched the sidecar).
    pub completed: Vec<PathBuf>,
    /// Partial files and orphan sidecars removed.
    pub removed: Vec<PathBuf>,
    /// Partial files of other runs left alone because they may still be written.
    pub kept_live: Vec<PathBuf>,
}

/// Whether the file at `path` holds exactly the bytes `sidecar` describes.
fn holds(path: &Path, sidecar: &Sidecar) -> bool {
    super::catalog::hash_file(path)
        .is_ok_and(|(size, sha)| size == sidecar.stored_bytes && sha == sidecar.sha256)
}

fn is_sidecar(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(SIDECAR_SUFFIX))
}

fn is_partial(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(PARTIAL_SUFFIX))
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a partial file of another run is headed for `final_path`.
fn other_partial_exists(dir: &Path, final_path: &Path, mine: &Path) -> Result<bool, StoreError> {
    for path in files_in(dir)? {
        if path != mine && parse_partial(&path).is_some_and(|(target, _)| target == final_path) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The durable steps of [`PendingArtifact::commit`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// The sidecar is under its final name; the artifact is still the partial file.
    SidecarWritten,
    /// The artifact is under its final name.
    Published,
    /// The directory entry is fsynced.
    Synced,
}

/// An artifact being written: its `.partial` file exists, its final name does not.
#[derive(Debug)]
pub struct PendingArtifact {
    relative: PathBuf,
    final_path: PathBuf,
    partial_path: PathBuf,
    file: File,
    compression: Compression,
    counters: Arc<Counters>,
}

/// The bytes of a finished (but not yet published) artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes received from the plugin.
    pub raw_bytes: u64,
    /// Bytes in the file.
    pub stored_bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// A published artifact.
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenArtifact {
    /// Path relative to the store's root.
    pub relative: PathBuf,
    /// Absolute path.
    pub path: PathBuf,
    /// Its sidecar.
    pub sidecar: Sidecar,
}

impl PendingArtifact {
    /// Path relative to the store's root that the artifact will have.
    pub fn relative(&self) -> &Path {
        &self.relative
    }

    /// The `.partial` path being written.
    pub fn partial_path(&self) -> &Path {
        &self.partial_path
    }

    /// The live byte counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Start the pipeline. Returns the writer the plugin's sink wraps, and the pipeline's
    /// future, which ends once the writer has been shut down or dropped and every byte is
    /// compressed, hashed and fsynced. Both must be driven concurrently: the writer's
    /// writes wait while the pipeline is not (backpressure, see [`pipeline`]).
    pub fn start(
        &mut self,
    ) -> Result<
        (
            ArtifactWriter,
            impl Future<Output = Result<Encoded, StoreError>> + Send + 'static,
        ),
        StoreError,
    > {
        let file = self
            .file
            .try_clone()
            .map_err(|e| StoreError::io("open", &self.partial_path, e))?;
        let (writer, input) = pipeline::channel(self.counters.clone());
        let counters = self.counters.clone();
        let compression = self.compression;
        let path = self.partial_path.clone();
        let pipeline = async move {
            let encoded = tokio::task::spawn_blocking(move || {
                pipeline::encode(input, file, compression, &counters)
            })
            .await
            .map_err(|e| StoreError::io("encode", &path, io::Error::other(e.to_string())))?;
            encoded.map_err(|e| StoreError::io("write", &path, e))
        };
        Ok((writer, pipeline))
    }

    /// Publish the artifact: write its sidecar under its final name first, then move the
    /// fsynced file to its final name (never replacing anything), then fsync the directory.
    /// So a final-named artifact always has its sidecar; a crash between the two steps
    /// leaves a sidecar and this run's partial file, which [`ArtifactStore::recover`]
    /// (the target's next run, or `stowage artifacts repair`) completes or removes.
    pub fn commit(self, sidecar: Sidecar) -> Result<WrittenArtifact, StoreError> {
        self.commit_observed(sidecar, &mut |_| {})
    }

    /// [`PendingArtifact::commit`], calling `observe` after each durable step (tests check
    /// the invariants there, and the fault suite stops the process there).
    pub fn commit_observed(
        self,
        sidecar: Sidecar,
        observe: &mut dyn FnMut(CommitStep),
    ) -> Result<WrittenArtifact, StoreError> {
        drop(self.file);
        let sidecar_path = with_suffix(&self.final_path, SIDECAR_SUFFIX);
        sidecar.write_new(&sidecar_path)?;
        observe(CommitStep::SidecarWritten);
        crate::fault::point("commit-after-sidecar");
        if let Err(e) = fsio::publish_no_replace(&self.partial_path, &self.final_path) {
            // The name was reserved for this run, so if it is taken now it is by this
            // run's own bytes: another run's recovery saw the sidecar and the whole
            // partial file, and completed the commit first. The sidecar is that
            // artifact's; removing it would leave an artifact without its sidecar.
            let completed_by_another_run =
                matches!(e, StoreError::Exists(_)) && holds(&self.final_path, &sidecar);
            if !completed_by_another_run {
                let _ = std::fs::remove_file(&sidecar_path);
                return Err(e);
            }
            tracing::info!(artifact = %self.final_path.display(), "another run's recovery published this artifact first");
        }
        observe(CommitStep::Published);
        let parent = self.final_path.parent().unwrap_or(Path::new("."));
        fsio::sync_dir(parent)?;
        observe(CommitStep::Synced);
        Ok(WrittenArtifact {
            relative: self.relative,
            path: self.final_path,
            sidecar,
        })
    }

    /// Give up: remove the partial file.
    pub fn abort(self) {
        drop(self.file);
        if let Err(e) = std::fs::remove_file(&self.partial_path) {
            tracing::warn!(path = %self.partial_path.display(), error = %e, "cannot remove the partial file; the next run removes it");
        }
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
