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
use crate::artifacts::select::{self, Hold, Selection};
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
    /// Where the application's claim is mounted (plugins with an
    /// [`AppClaim`](stowage_plugin_sdk::AppClaim)); `None` for the others.
    pub claim_root: Option<PathBuf>,
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
            claim_root: self.claim_root.clone(),
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
    let identity = plugin.identity();
    let capable = match operation {
        RunKind::Backup => identity.capabilities.backup,
        RunKind::Probe => identity.capabilities.probe,
        RunKind::Restore => identity.capabilities.restore,
    };
    if !capable {
        return Err(RunError::new(
            ErrorKind::Unsupported,
            format!("the {} plugin cannot {}", identity.name, operation.as_str()),
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
    let identity = plugin.identity();
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
    result.plugin = Some(identity.name);
    result.plugin_version = Some(identity.version);
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
    let identity = plugin.identity();
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
        plugin: identity.name.clone(),
        plugin_version: identity.version.clone(),
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
        content_type: identity.content_type.clone(),
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

/// Where a restore's artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreSourceSpec {
    /// One artifact by path (relative to the store root). With `source_target`, it must
    /// be one of that target's artifacts (of the run's namespace).
    Path {
        /// The path.
        path: PathBuf,
        /// The target it must belong to; `None` for any (disaster recovery).
        source_target: Option<String>,
    },
    /// Chosen among one target's artifacts (of the run's namespace).
    Choose {
        /// The target.
        target: String,
        /// How.
        selection: Selection,
    },
}

/// Everything a restore needs besides the run's inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreInputs {
    /// The artifact.
    pub source: RestoreSourceSpec,
    /// A name inside the destination to restore into (e.g. a database).
    pub into: Option<String>,
    /// Replace data the destination holds (`mode: Replace`); otherwise such a
    /// destination is refused.
    pub replace: bool,
    /// Only resolve, verify and inspect.
    pub dry_run: bool,
    /// The claim mounted at the store root, named in messages.
    pub claim: Option<String>,
}

impl RestoreInputs {
    /// A restore of one artifact by path, into an empty destination.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        RestoreInputs {
            source: RestoreSourceSpec::Path {
                path: path.into(),
                source_target: None,
            },
            into: None,
            replace: false,
            dry_run: false,
            claim: None,
        }
    }
}

/// Run a restore: resolve the artifact, check it against its sidecar, look at the
/// destination, then (unless a dry run) feed it to the plugin. The result says how far
/// it got ([`super::RestoreProgress`]).
pub async fn restore(
    plugin: &impl RunnablePlugin,
    spec: &RunSpec,
    secrets: Secrets,
    inputs: &RestoreInputs,
) -> RunResult {
    let start = Timestamp::now();
    let mut progress = super::RestoreProgress {
        dry_run: inputs.dry_run,
        ..Default::default()
    };
    let mut chosen: Option<(String, Sidecar)> = None;
    let outcome = restore_inner(
        plugin,
        spec,
        secrets,
        inputs,
        start,
        &mut progress,
        &mut chosen,
    )
    .await;
    let mut result = finish(RunKind::Restore, start, plugin, outcome);
    if let Some((relative, sidecar)) = chosen {
        result.artifact.get_or_insert(relative);
        result.sha256.get_or_insert(sidecar.sha256);
        result.stored_bytes.get_or_insert(sidecar.stored_bytes);
    }
    result.restore = Some(progress);
    result
}

fn where_searched(inputs: &RestoreInputs, root: &Path, dir: &Path) -> String {
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    match &inputs.claim {
        Some(claim) => format!("{}/ on claim {claim}", relative.display()),
        None => format!("{}", dir.display()),
    }
}

/// The artifact `inputs` name, with its sidecar: by path, or chosen among a target's.
fn resolve(spec: &RunSpec, inputs: &RestoreInputs) -> Result<(PathBuf, Sidecar), RunError> {
    match &inputs.source {
        RestoreSourceSpec::Path {
            path: artifact,
            source_target,
        } => {
            let path = resolve_artifact(&spec.root, artifact)?;
            let sidecar_path = with_suffix(&path, SIDECAR_SUFFIX);
            let on_claim = inputs
                .claim
                .as_deref()
                .map(|c| format!(" on claim {c}"))
                .unwrap_or_default();
            let sidecar = Sidecar::read(&sidecar_path).map_err(|e| match e {
                StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    RunError::new(
                        ErrorKind::NotFound,
                        format!(
                            "no artifact {}{on_claim}: its sidecar {} does not exist (the \
                             artifact does not exist or is incomplete); `stowage artifacts \
                             list` on the claim shows the artifacts there",
                            artifact.display(),
                            sidecar_path.display(),
                        ),
                    )
                }
                other => other.into(),
            })?;
            if !path.exists() {
                return Err(RunError::new(
                    ErrorKind::NotFound,
                    format!(
                        "artifact {}{on_claim} has a sidecar but no file: it was deleted or \
                         never published",
                        artifact.display()
                    ),
                ));
            }
            if let Some(target) = source_target
                && (sidecar.namespace != spec.namespace || &sidecar.target != target)
            {
                return Err(RunError::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "artifact {} was made for BackupTarget {}/{}, not {}/{target}; a \
                         restore from a target only takes that target's artifacts (name the \
                         claim instead of the target to restore any artifact)",
                        artifact.display(),
                        sidecar.namespace,
                        sidecar.target,
                        spec.namespace
                    ),
                ));
            }
            Ok((path, sidecar))
        }
        RestoreSourceSpec::Choose { target, selection } => {
            let dir = TargetDir::new(&spec.namespace, target)?;
            let base = ArtifactStore::new(&spec.root).target_path(&dir);
            let searched = where_searched(inputs, &spec.root, &base);
            let found = if base.exists() {
                crate::artifacts::catalog::scan(&base)?
            } else {
                Default::default()
            };
            let mine: Vec<_> = found
                .artifacts
                .into_iter()
                .filter(|l| l.sidecar.namespace == spec.namespace && &l.sidecar.target == target)
                .collect();
            let problems = if found.problems.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} file(s) there were skipped: `stowage artifacts verify` lists them)",
                    found.problems.len()
                )
            };
            match select::choose(&mine, selection) {
                Ok(listed) => Ok((listed.path.clone(), listed.sidecar.clone())),
                Err(select::NoArtifact::None) => Err(RunError::new(
                    ErrorKind::NotFound,
                    format!(
                        "BackupTarget {}/{target} has no artifact{} in {searched}{problems}; \
                         back it up first (annotate it with stowage.dev/backup-now), or name \
                         another target or an artifact's path",
                        spec.namespace,
                        selection
                            .schedule
                            .as_deref()
                            .map(|s| format!(" made by schedule {s}"))
                            .unwrap_or_default(),
                    ),
                )),
                Err(select::NoArtifact::NoneFits {
                    considered,
                    oldest,
                    newest,
                }) => Err(RunError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no artifact of BackupTarget {}/{target} fits ({}): {considered} \
                         artifact(s) in {searched}, made from {oldest} to {newest}{problems}",
                        spec.namespace,
                        selection.describe(),
                    ),
                )),
            }
        }
    }
}

async fn restore_inner(
    plugin: &impl RunnablePlugin,
    spec: &RunSpec,
    secrets: Secrets,
    inputs: &RestoreInputs,
    start: Timestamp,
    progress: &mut super::RestoreProgress,
    chosen: &mut Option<(String, Sidecar)>,
) -> Result<RunResult, RunError> {
    use super::RestoreStage;
    TargetDir::new(&spec.namespace, &spec.target)?;
    check_capability(plugin, RunKind::Restore)?;
    let identity = plugin.identity();

    progress.stage = RestoreStage::Resolve;
    let (path, sidecar) = resolve(spec, inputs)?;
    let relative = path
        .strip_prefix(&spec.root)
        .unwrap_or(&path)
        .display()
        .to_string();
    progress.created_at = Some(sidecar.end_time);
    progress.schedule = sidecar.schedule.clone();
    progress.artifact_plugin = Some(sidecar.plugin.clone());
    *chosen = Some((relative.clone(), sidecar.clone()));
    tracing::info!(
        artifact = %relative,
        made_by = %format!("{}/{}", sidecar.namespace, sidecar.target),
        schedule = sidecar.schedule.as_deref().unwrap_or(""),
        stored_bytes = sidecar.stored_bytes,
        "artifact chosen"
    );
    if sidecar.plugin != identity.name {
        return Err(RunError::new(
            ErrorKind::InvalidConfig,
            format!(
                "artifact {relative} was made by the {} plugin; BackupTarget {}/{} uses {}: \
                 restore into a target of the {} plugin",
                sidecar.plugin, spec.namespace, spec.target, identity.name, sidecar.plugin
            ),
        ));
    }
    // Retention of a backup running meanwhile must not delete what is read.
    let _hold = Hold::take(&path, &spec.run_id);

    progress.stage = RestoreStage::Verify;
    let hashed = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || crate::artifacts::catalog::hash_file(&path))
            .await
            .map_err(|e| RunError::new(ErrorKind::Internal, format!("hashing failed: {e}")))?
            .map_err(|e| {
                RunError::new(ErrorKind::IoError, format!("cannot read {relative}: {e}"))
            })?
    };
    if hashed != (sidecar.stored_bytes, sidecar.sha256.clone()) {
        return Err(RunError::new(
            ErrorKind::ChecksumMismatch,
            format!(
                "artifact {relative} does not match its sidecar ({} bytes, sha256 {} on disk; \
                 {} bytes, sha256 {} recorded): it is corrupt or was changed, and nothing was \
                 restored; choose another artifact",
                hashed.0, hashed.1, sidecar.stored_bytes, sidecar.sha256
            ),
        ));
    }
    tracing::info!(artifact = %relative, sha256 = %sidecar.sha256, "artifact verified against its sidecar");

    progress.stage = RestoreStage::Destination;
    let ctx = spec.context(secrets);
    let request = RestoreRequest {
        facts: sidecar.facts.clone(),
        into: inputs.into.clone(),
        replace: inputs.replace,
    };
    let destination = with_timeout(
        spec.timeout,
        "look at the destination",
        plugin.inspect_destination(&ctx, &request),
    )
    .await?;
    progress.destination = Some(destination.description.clone());
    progress.holds_data = Some(destination.holds_data);
    progress.replaces = destination.holds_data && inputs.replace;
    tracing::info!(
        destination = %destination.description,
        holds_data = destination.holds_data,
        replace = inputs.replace,
        dry_run = inputs.dry_run,
        "destination inspected"
    );
    let refused = destination.holds_data && !inputs.replace;
    if inputs.dry_run {
        progress.stage = RestoreStage::Done;
        let mut result = RunResult::new(RunKind::Restore, Outcome::Ok, start, start);
        result.message = Some(format!(
            "dry run: would restore {relative} ({} bytes, sha256 verified); destination: {}{}",
            sidecar.stored_bytes,
            destination.description,
            if refused {
                "; refused as it is: the destination holds data (restore into another name \
                 with spec.destination.into, or set mode: Replace and confirm)"
            } else if progress.replaces {
                "; its data would be replaced"
            } else {
                ""
            }
        ));
        result.artifact = Some(relative);
        result.stored_bytes = Some(sidecar.stored_bytes);
        result.sha256 = Some(sidecar.sha256);
        return Ok(result);
    }
    if refused {
        return Err(RunError::new(
            ErrorKind::DestinationNotEmpty,
            format!(
                "{}; nothing was restored. Restore into another name (spec.destination.into, \
                 e.g. a new database), or replace the data with mode: Replace and confirm: \
                 {}",
                destination.description, spec.target
            ),
        ));
    }

    progress.stage = RestoreStage::Restore;
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
    // Verified above, and checked again while read: the plugin sees the end of its input
    // only after the whole file was read and its size and SHA-256 matched the sidecar, so
    // a file changed since the check reaches it as an error and a tool that commits at
    // the end of its input (`psql --single-transaction`) is stopped before it commits.
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
    let mut source = ArtifactSource::new(ChunkReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        counters: counters.clone(),
    });
    tracing::info!(artifact = %relative, destination = %destination.description, "restore started");
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
    // A digest failure first: it explains a plugin error it caused.
    checked.map_err(|message| RunError::new(ErrorKind::ChecksumMismatch, message))?;
    let report = report?;
    progress.stage = RestoreStage::Done;
    let mut result = RunResult::new(RunKind::Restore, Outcome::Ok, start, start);
    result.artifact = Some(relative);
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
