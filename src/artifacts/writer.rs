//! The atomic streaming writer: plugin bytes → compression → SHA-256 → `<final>.partial`
//! → fsync → rename → directory fsync.
//!
//! Memory is bounded whatever the artifact size: the plugin writes into a 64 KiB pipe, at
//! most [`CHANNEL_CHUNKS`] chunks of 64 KiB wait for the encoder thread, and every write
//! waits when those are full (backpressure).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::mpsc;

use super::StoreError;
use super::fsio;
use super::layout::{ArtifactName, PARTIAL_SUFFIX, SIDECAR_SUFFIX, TargetDir, with_suffix};
use super::sidecar::Sidecar;
use crate::api::Compression;

/// Size of one chunk moved from the plugin to the encoder.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Chunks that may wait for the encoder.
pub const CHANNEL_CHUNKS: usize = 8;
/// zstd level used (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

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

    /// Record `n` more raw bytes (used by restores to count bytes fed to the plugin).
    pub fn add_raw(&self, n: u64) {
        self.raw.fetch_add(n, Ordering::Relaxed);
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

    /// Remove every `.partial` file a killed run left in a target's directory (and its date
    /// directories). Returns the removed paths.
    pub fn remove_stale_partials(&self, dir: &TargetDir) -> Result<Vec<PathBuf>, StoreError> {
        let base = self.target_path(dir);
        let mut removed = Vec::new();
        let mut dirs = vec![base.clone()];
        while let Some(current) = dirs.pop() {
            let entries = match std::fs::read_dir(&current) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("list", &current, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("list", &current, e))?;
                let path = entry.path();
                let kind = entry
                    .file_type()
                    .map_err(|e| StoreError::io("stat", &path, e))?;
                // Date directories sit directly under the target directory.
                if kind.is_dir() && current == base {
                    dirs.push(path);
                } else if kind.is_file()
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(PARTIAL_SUFFIX))
                {
                    std::fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
                    tracing::info!(path = %path.display(), "removed a partial file left by an interrupted run");
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }

    /// Reserve a new artifact: create its directory and its `.partial` file under a name
    /// no other artifact has (adding `-1`, `-2`... when one with the same second exists).
    pub fn create(&self, name: &ArtifactName) -> Result<PendingArtifact, StoreError> {
        for n in 0..1000 {
            let relative = name.relative_path(n);
            let final_path = self.root.join(&relative);
            let partial_path = with_suffix(&final_path, PARTIAL_SUFFIX);
            if final_path.exists() || with_suffix(&final_path, SIDECAR_SUFFIX).exists() {
                continue;
            }
            let parent = final_path.parent().ok_or_else(|| {
                StoreError::io("create", &final_path, io::ErrorKind::InvalidInput.into())
            })?;
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::io("create directory", parent, e))?;
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial_path)
            {
                Ok(file) => {
                    // Make the new date directory (and its parents) durable.
                    for dir in parent.ancestors().take(3) {
                        fsio::sync_dir(dir)?;
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
    /// compressed, hashed and fsynced. Both must be driven concurrently.
    pub fn start(
        &mut self,
    ) -> Result<
        (
            DuplexStream,
            impl Future<Output = Result<Encoded, StoreError>> + Send + 'static,
        ),
        StoreError,
    > {
        let file = self
            .file
            .try_clone()
            .map_err(|e| StoreError::io("open", &self.partial_path, e))?;
        let (writer, reader) = tokio::io::duplex(CHUNK_SIZE);
        let counters = self.counters.clone();
        let compression = self.compression;
        let path = self.partial_path.clone();
        let pipeline = async move {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
            let encoder_counters = counters.clone();
            let encoder = tokio::task::spawn_blocking(move || {
                encode(rx, file, compression, &encoder_counters)
            });
            let pumped = pump(reader, tx, &counters).await;
            let encoded = encoder
                .await
                .map_err(|e| StoreError::io("encode", &path, io::Error::other(e.to_string())))?;
            let encoded = encoded.map_err(|e| StoreError::io("write", &path, e))?;
            pumped.map_err(|e| StoreError::io("read plugin output for", &path, e))?;
            Ok(encoded)
        };
        Ok((writer, pipeline))
    }

    /// Publish the artifact under its final name (never replacing a file), then write its
    /// sidecar the same atomic way. On failure nothing is left under a final name.
    pub fn commit(self, sidecar: Sidecar) -> Result<WrittenArtifact, StoreError> {
        drop(self.file);
        fsio::publish_no_replace(&self.partial_path, &self.final_path)?;
        let parent = self.final_path.parent().unwrap_or(Path::new("."));
        fsio::sync_dir(parent)?;
        let sidecar_path = with_suffix(&self.final_path, SIDECAR_SUFFIX);
        if let Err(e) = sidecar.write(&sidecar_path) {
            let _ = std::fs::remove_file(&self.final_path);
            return Err(e);
        }
        Ok(WrittenArtifact {
            relative: self.relative,
            path: self.final_path,
            sidecar,
        })
    }

    /// Give up: remove the `.partial` file.
    pub fn abort(self) {
        drop(self.file);
        if let Err(e) = std::fs::remove_file(&self.partial_path) {
            tracing::warn!(path = %self.partial_path.display(), error = %e, "cannot remove the partial file; the next run removes it");
        }
    }
}

async fn pump(
    mut reader: DuplexStream,
    tx: mpsc::Sender<Vec<u8>>,
    counters: &Counters,
) -> io::Result<()> {
    loop {
        let mut chunk = vec![0u8; CHUNK_SIZE];
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        chunk.truncate(n);
        counters.raw.fetch_add(n as u64, Ordering::Relaxed);
        if tx.send(chunk).await.is_err() {
            // The encoder stopped (its error is reported); stop reading so the plugin's
            // next write fails instead of filling memory.
            return Ok(());
        }
    }
}

/// A file writer that hashes and counts what it writes.
struct HashingFile<'a> {
    inner: BufWriter<File>,
    hasher: Sha256,
    counters: &'a Counters,
}

impl Write for HashingFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.counters.stored.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get().min(8) as u32)
        .unwrap_or(1)
}

fn encode(
    mut rx: mpsc::Receiver<Vec<u8>>,
    file: File,
    compression: Compression,
    counters: &Counters,
) -> io::Result<Encoded> {
    let sink = HashingFile {
        inner: BufWriter::with_capacity(CHUNK_SIZE, file),
        hasher: Sha256::new(),
        counters,
    };
    let mut raw_bytes = 0u64;
    let sink = match compression {
        Compression::None => {
            let mut w = sink;
            while let Some(chunk) = rx.blocking_recv() {
                raw_bytes += chunk.len() as u64;
                w.write_all(&chunk)?;
            }
            w
        }
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
            while let Some(chunk) = rx.blocking_recv() {
                raw_bytes += chunk.len() as u64;
                w.write_all(&chunk)?;
            }
            w.finish()?
        }
        Compression::Zstd => {
            let mut w = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
            let workers = zstd_workers();
            if workers > 1 {
                w.multithread(workers)?;
            }
            w.include_checksum(true)?;
            while let Some(chunk) = rx.blocking_recv() {
                raw_bytes += chunk.len() as u64;
                w.write_all(&chunk)?;
            }
            w.finish()?
        }
    };
    let HashingFile {
        mut inner, hasher, ..
    } = sink;
    inner.flush()?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let stored_bytes = file.metadata()?.len();
    Ok(Encoded {
        raw_bytes,
        stored_bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
