//! The three operations, independent of how their inputs arrived.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, PluginError, Redactor, RestoreRequest, RunContext,
    Secrets,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::plugin::RunnablePlugin;
use super::progress::{log_sample, spawn_progress};
use super::result::{Outcome, RunKind, RunResult};
use crate::api::Compression;
use crate::artifacts::layout::{SIDECAR_SUFFIX, with_suffix};
use crate::artifacts::reader::{Decoded, check_digest};
use crate::artifacts::{
    ArtifactName, ArtifactStore, Counters, Sidecar, StoreError, TargetDir, sidecar,
};
use crate::retention::{self, RetentionPolicy};

/// Everything a run needs besides the plugin and the secrets.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Namespace of the target.
    pub namespace: String,
    /// Name of the target.
    pub target: String,
    /// The schedule that triggered the run; `None` when on demand.
    pub schedule: Option<String>,
    /// Identifier of the run.
    pub run_id: String,
    /// The tick the run is for; `None` when on demand.
    pub scheduled_time: Option<Timestamp>,
    /// Compression of the artifact.
    pub compression: Compression,
    /// Root of the artifact store.
    pub root: PathBuf,
    /// The schedule's retention, applied after a successful backup.
    pub retention: Option<RetentionPolicy>,
    /// Time zone retention counts periods in.
    pub time_zone: TimeZone,
    /// Report what retention would delete, without deleting.
    pub prune_dry_run: bool,
    /// How often to log progress (zero: never).
    pub progress_interval: Duration,
    /// Give up after this long.
    pub timeout: Option<Duration>,
}

/// A failure: its kind and a message (not yet redacted).
#[derive(Debug)]
pub struct RunError {
    /// The kind.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
}

impl From<PluginError> for RunError {
    fn from(e: PluginError) -> Self {
        RunError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        let kind = match e {
            StoreError::InvalidName(_) => ErrorKind::InvalidConfig,
            _ => ErrorKind::IoError,
        };
        RunError {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<crate::artifacts::InvalidName> for RunError {
    fn from(e: crate::artifacts::InvalidName) -> Self {
        RunError::new(ErrorKind::InvalidConfig, e.to_string())
    }
}

impl RunError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RunError {
            kind,
            message: message.into(),
        }
    }
}

/// A partial file of another run not written to for this long is over, whatever the
/// run's own deadline says (see [`RunSpec::stale_partial_age`]).
pub const MIN_STALE_PARTIAL_AGE: Duration = Duration::from_secs(24 * 3600);

impl RunSpec {
    /// How long another run's partial file must have gone unwritten before this run may
    /// remove it: twice this run's timeout (which the Job's deadline bounds), and at least
    /// [`MIN_STALE_PARTIAL_AGE`], so a live run's file is never removed.
    pub fn stale_partial_age(&self) -> Duration {
        self.timeout
            .map(|t| t.saturating_mul(2))
            .unwrap_or(MIN_STALE_PARTIAL_AGE)
            .max(MIN_STALE_PARTIAL_AGE)
    }

    fn context(&self, secrets: Secrets) -> RunContext {
        RunContext {
            namespace: self.namespace.clone(),
            target: self.target.clone(),
            schedule: self.schedule.clone(),
            run_id: self.run_id.clone(),
            scheduled_time: self.scheduled_time,
            secrets,
        }
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    what: &str,
    fut: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match timeout {
        None => fut.await,
        Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(PluginError::Timeout(format!(
                "the {what} did not finish within {}s; raise the timeout or check the service",
                limit.as_secs()
            )))
        }),
    }
}

fn check_capability(plugin: &impl RunnablePlugin, operation: RunKind) -> Result<(), RunError> {
    let info = plugin.info();
    let capable = match operation {
        RunKind::Backup => info.capabilities.backup,
        RunKind::Probe => info.capabilities.probe,
        RunKind::Restore => info.capabilities.restore,
    };
    if !capable {
        return Err(RunError::new(
            ErrorKind::Unsupported,
            format!("the {} plugin cannot {}", info.key, operation.as_str()),
        ));
    }
    plugin.validate().map_err(|e| {
        RunError::from(PluginError::InvalidConfig(
            e.prefixed(&format!("spec.{}", info.key)),
        ))
    })
}

fn finish(
    operation: RunKind,
    start: Timestamp,
    plugin: &impl RunnablePlugin,
    outcome: Result<RunResult, RunError>,
) -> RunResult {
    let end = Timestamp::now();
    let info = plugin.info();
    let mut result = match outcome {
        Ok(mut result) => {
            result.end_time = end;
            result.duration_seconds = end.duration_since(start).as_secs_f64();
            result
        }
        Err(e) => {
            tracing::error!(operation = operation.as_str(), kind = %e.kind, "run failed");
            let mut result = RunResult::new(operation, Outcome::Failed, start, end);
            result.error_kind = Some(e.kind);
            result.message = Some(e.message);
            result
        }
    };
    result.plugin = Some(info.key.to_owned());
    result.plugin_version = Some(info.version.to_owned());
    result
}

/// Run a probe.
pub async fn probe(plugin: &impl RunnablePlugin, spec: &RunSpec, secrets: Secrets) -> RunResult {
    let start = Timestamp::now();
    let outcome = async {
        TargetDir::new(&spec.namespace, &spec.target)?;
        check_capability(plugin, RunKind::Probe)?;
        let ctx = spec.context(secrets);
        let report = with_timeout(spec.timeout, "probe", plugin.probe(&ctx)).await?;
        let mut result = RunResult::new(RunKind::Probe, Outcome::Ok, start, start);
        result.message = Some(report.message);
        result.facts = report.facts;
        Ok(result)
    }
    .await;
    finish(RunKind::Probe, start, plugin, outcome)
}

/// Run a backup: stream the plugin's bytes into a new artifact, publish it with its
/// sidecar, then apply the schedule's retention.
pub async fn backup(plugin: &impl RunnablePlugin, spec: &RunSpec, secrets: Secrets) -> RunResult {
    let start = Timestamp::now();
    let outcome = backup_inner(plugin, spec, secrets, start).await;
    finish(RunKind::Backup, start, plugin, outcome)
}

async fn backup_inner(
    plugin: &impl RunnablePlugin,
    spec: &RunSpec,
    secrets: Secrets,
    start: Timestamp,
) -> Result<RunResult, RunError> {
    let dir = TargetDir::new(&spec.namespace, &spec.target)?;
    check_capability(plugin, RunKind::Backup)?;
    let info = plugin.info();
    let store = ArtifactStore::new(&spec.root);
    let recovery = store.recover(&dir, &spec.run_id, spec.stale_partial_age())?;
    if !recovery.completed.is_empty() || !recovery.removed.is_empty() {
        tracing::info!(
            completed = recovery.completed.len(),
            removed = recovery.removed.len(),
            kept_live = recovery.kept_live.len(),
            "repaired what interrupted runs left in the target's directory"
        );
    }
    let name = ArtifactName::new(
        dir.clone(),
        info.key,
        &plugin.artifact_extension(),
        spec.compression,
        spec.scheduled_time.unwrap_or(start),
    )?
    .for_schedule(spec.schedule.as_deref());
    let mut pending = store.create(&name, &spec.run_id)?;
    crate::fault::point("backup-after-create");
    tracing::info!(
        namespace = %spec.namespace,
        target = %spec.target,
        schedule = spec.schedule.as_deref().unwrap_or(""),
        run_id = %spec.run_id,
        plugin = info.key,
        artifact = %pending.relative().display(),
        compression = spec.compression.as_str(),
        "backup started"
    );
    let redactor = secrets.redactor();
    let ctx = spec.context(secrets);
    let (writer, pipeline) = pending.start()?;
    let _progress = spawn_progress(pending.counters(), spec.progress_interval, |s| {
        log_sample("backup", s)
    });
    let produce = async {
        let mut sink = ArtifactSink::new(writer);
        let report = with_timeout(spec.timeout, "backup", plugin.backup(&ctx, &mut sink)).await;
        let closed = sink.shutdown().await;
        (report, closed)
    };
    let ((report, closed), encoded) = tokio::join!(produce, pipeline);
    crate::fault::point("backup-before-commit");
    let report = match (report, encoded) {
        (_, Err(store_error)) => {
            pending.abort();
            return Err(store_error.into());
        }
        (Err(plugin_error), _) => {
            pending.abort();
            return Err(plugin_error.into());
        }
        (Ok(report), Ok(encoded)) => {
            if let Err(e) = closed {
                pending.abort();
                return Err(RunError::new(
                    ErrorKind::IoError,
                    format!("cannot finish the artifact stream: {e}"),
                ));
            }
            (report, encoded)
        }
    };
    let (report, encoded) = report;
    // The facts go into the sidecar, which outlives the run: redact them here, not only in
    // the result (a fact may hold what the service said, such as a header or a version
    // string that echoes a credential).
    let facts = redact_facts(&redactor, report.facts);
    let end = Timestamp::now();
    let sidecar = Sidecar {
        format_version: sidecar::FORMAT_VERSION,
        plugin: info.key.to_owned(),
        plugin_version: info.version.to_owned(),
        stowage_version: env!("CARGO_PKG_VERSION").to_owned(),
        namespace: spec.namespace.clone(),
        target: spec.target.clone(),
        schedule: spec.schedule.clone(),
        run_id: spec.run_id.clone(),
        scheduled_time: spec.scheduled_time,
        start_time: start,
        end_time: end,
        raw_bytes: encoded.raw_bytes,
        stored_bytes: encoded.stored_bytes,
        sha256: encoded.sha256.clone(),
        compression: spec.compression,
        content_type: info.content_type.to_owned(),
        facts: facts.clone(),
    };
    let written = pending.commit(sidecar)?;
    crate::fault::point("backup-after-commit");
    tracing::info!(
        artifact = %written.relative.display(),
        raw_bytes = encoded.raw_bytes,
        stored_bytes = encoded.stored_bytes,
        sha256 = %encoded.sha256,
        "backup written"
    );
    let mut result = RunResult::new(RunKind::Backup, Outcome::Ok, start, end);
    result.artifact = Some(written.relative.display().to_string());
    result.raw_bytes = Some(encoded.raw_bytes);
    result.stored_bytes = Some(encoded.stored_bytes);
    result.sha256 = Some(encoded.sha256);
    result.facts = facts;
    if let (Some(schedule), Some(policy)) = (&spec.schedule, &spec.retention) {
        match retention::apply(
            &store,
            &dir,
            schedule,
            policy,
            &spec.time_zone,
            spec.prune_dry_run,
        ) {
            Ok(outcome) => {
                tracing::info!(
                    schedule = %schedule,
                    kept = outcome.kept.len(),
                    pruned = outcome.pruned.len(),
                    pruned_bytes = outcome.pruned_bytes,
                    dry_run = outcome.dry_run,
                    "retention applied"
                );
                for p in &outcome.pruned {
                    tracing::info!(artifact = %p.id.display(), dry_run = outcome.dry_run, reason = %p.reason, "pruned");
                }
                let (pruned, pruned_bytes) = if outcome.dry_run {
                    (0, 0)
                } else {
                    (
                        u32::try_from(outcome.pruned.len()).unwrap_or(u32::MAX),
                        outcome.pruned_bytes,
                    )
                };
                result.pruned = Some(pruned);
                result.pruned_bytes = Some(pruned_bytes);
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention failed; the backup itself succeeded");
                result.prune_error = Some(e.to_string());
            }
        }
    }
    Ok(result)
}

/// `facts` with every secret value in their values replaced by `<redacted>`.
fn redact_facts(redactor: &Redactor, facts: BTreeMap<String, String>) -> BTreeMap<String, String> {
    facts
        .into_iter()
        .map(|(key, value)| (key, redactor.redact(&value)))
        .collect()
}

/// Resolve an artifact path given relative to the store root (or absolute inside it).
pub fn resolve_artifact(root: &Path, artifact: &Path) -> Result<PathBuf, RunError> {
    let relative = artifact.strip_prefix(root).unwrap_or(artifact);
    let clean = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !clean || relative.as_os_str().is_empty() {
        return Err(RunError::new(
            ErrorKind::InvalidConfig,
            format!(
                "artifact path {} must be relative to the store root {} without '..' \
                 (e.g. shop/app-db/2026-11-21/postgres-20261121T023000Z.dump.zst)",
                artifact.display(),
                root.display()
            ),
        ));
    }
    Ok(root.join(relative))
}

/// Run a restore from an artifact (path relative to the store root).
pub async fn restore(
    plugin: &impl RunnablePlugin,
    spec: &RunSpec,
    secrets: Secrets,
    artifact: &Path,
    into: Option<String>,
) -> RunResult {
    let start = Timestamp::now();
    let outcome = restore_inner(plugin, spec, secrets, artifact, into, start).await;
    finish(RunKind::Restore, start, plugin, outcome)
}

async fn restore_inner(
    plugin: &impl RunnablePlugin,
    spec: &RunSpec,
    secrets: Secrets,
    artifact: &Path,
    into: Option<String>,
    start: Timestamp,
) -> Result<RunResult, RunError> {
    TargetDir::new(&spec.namespace, &spec.target)?;
    check_capability(plugin, RunKind::Restore)?;
    let path = resolve_artifact(&spec.root, artifact)?;
    let sidecar_path = with_suffix(&path, SIDECAR_SUFFIX);
    let sidecar = Sidecar::read(&sidecar_path).map_err(|e| match e {
        StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            RunError::new(
                ErrorKind::NotFound,
                format!(
                    "no sidecar {}: the artifact does not exist or is incomplete",
                    sidecar_path.display()
                ),
            )
        }
        other => other.into(),
    })?;
    let info = plugin.info();
    if sidecar.plugin != info.key {
        return Err(RunError::new(
            ErrorKind::InvalidConfig,
            format!(
                "{} was made by the {} plugin, not {}",
                path.display(),
                sidecar.plugin,
                info.key
            ),
        ));
    }
    let decoded = Decoded::open(&path, sidecar.compression).map_err(|e| {
        RunError::new(
            ErrorKind::NotFound,
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    let counters = std::sync::Arc::new(Counters::default());
    let _progress = spawn_progress(counters.clone(), spec.progress_interval, |s| {
        log_sample("restore", s)
    });
    // The plugin sees the end of its input only after the whole file was read and its
    // size and SHA-256 matched the sidecar: a read error, a corrupt stream or a digest
    // mismatch reaches it as an error instead, so a tool that commits at the end of its
    // input (`psql --single-transaction`) is stopped before it commits.
    let (tx, rx) =
        mpsc::channel::<std::io::Result<Vec<u8>>>(crate::artifacts::reader::CHANNEL_CHUNKS);
    let checked_path = path.clone();
    let expected = (sidecar.stored_bytes, sidecar.sha256.clone());
    // Returns the digest check's failure when the plugin stopped reading early (it never
    // saw the error then, but the run must still fail on a corrupt artifact).
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::io::Read;
        let mut decoded = decoded;
        let mut plugin_reads = true;
        loop {
            let mut chunk = vec![0u8; crate::artifacts::reader::CHUNK_SIZE];
            let n = match decoded.read(&mut chunk) {
                Ok(n) => n,
                Err(e) => {
                    let message = format!("cannot read {}: {e}", checked_path.display());
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), &*message)));
                    return Err(message);
                }
            };
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            if plugin_reads && tx.blocking_send(Ok(chunk)).is_err() {
                // The plugin stopped reading; still hash the rest of the file.
                plugin_reads = false;
            }
        }
        let checked = decoded
            .finish()
            .map_err(|e| format!("cannot read {}: {e}", checked_path.display()))
            .and_then(|digest| {
                check_digest(&checked_path, expected.0, &expected.1, digest)
                    .map_err(|e| e.to_string())
            });
        if let Err(message) = &checked {
            let _ = tx.blocking_send(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                message.as_str(),
            )));
        }
        // Dropping `tx` ends the input cleanly.
        checked
    });
    let ctx = spec.context(secrets);
    let request = RestoreRequest {
        facts: sidecar.facts.clone(),
        into,
    };
    let mut source = ArtifactSource::new(ChunkReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        counters: counters.clone(),
    });
    let report = with_timeout(
        spec.timeout,
        "restore",
        plugin.restore(&ctx, &mut source, &request),
    )
    .await;
    drop(source);
    let checked = reader
        .await
        .map_err(|e| RunError::new(ErrorKind::Internal, format!("artifact reader failed: {e}")))?;
    let report = report?;
    checked.map_err(|message| RunError::new(ErrorKind::IoError, message))?;
    let mut result = RunResult::new(RunKind::Restore, Outcome::Ok, start, start);
    result.artifact = Some(
        path.strip_prefix(&spec.root)
            .unwrap_or(&path)
            .display()
            .to_string(),
    );
    result.raw_bytes = Some(counters.raw());
    result.stored_bytes = Some(sidecar.stored_bytes);
    result.sha256 = Some(sidecar.sha256);
    result.message = Some(report.message);
    Ok(result)
}

/// The decoded artifact as an async reader over the reader thread's chunks; an error
/// from that thread is returned by `read` instead of an end of input.
struct ChunkReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    counters: std::sync::Arc<Counters>,
}

impl tokio::io::AsyncRead for ChunkReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while self.pos == self.chunk.len() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                // The sender is dropped only after the digest matched.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => {
                    self.counters.add_raw(chunk.len() as u64);
                    self.chunk = chunk;
                    self.pos = 0;
                }
            }
        }
        let n = buf.remaining().min(self.chunk.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.chunk[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}
