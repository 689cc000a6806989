//! The BackupRestore controller: observe (the targets it names, its Job, the Job's
//! result), plan (pure functions below, table-tested), apply (create the Job or stop a
//! stuck one), record (status, Events, metrics).
//!
//! A restore runs as one Job, named after the BackupRestore and owned by it: the same
//! restore never gets a second Job (a restarted operator finds it by name), and deleting
//! the BackupRestore deletes the Job, which cancels the restore. The Job's runner chooses
//! the artifact from the sidecars on the claim, checks its SHA-256, inspects the
//! destination and restores; the operator only reads the result. A restore is one of the
//! runs that write to its destination target ([`super::runs`]): it waits while a backup
//! of that target runs, and backups wait while it runs.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{
    BackupRestore, BackupRestoreStatus, BackupTarget, RestoreMode, RestorePhase, RestorePlan,
    RestoredArtifact, restore_conditions as c,
};
use crate::jobs::{RestoreRun, RunRequest, build_job, job_name};
use crate::registry::PluginConfig;
use crate::runner::{RestoreStage, RunResult};

use super::cache::{self, RunJob};
use super::events::{self, PlannedEvent, reasons as event_reasons};
use super::runs::{StartDecision, StartRequest, StartTrigger};
use super::status::{self, FinishedRun, JobState, time, upsert_condition};
use super::{Context, CreateFor, Error};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "backuprestore";

/// How long a restore waits for a BackupTarget it names to appear (applied in the same
/// batch, or created a little later by GitOps) before it fails.
pub const TARGET_GRACE: SignedDuration = SignedDuration::from_secs(120);

/// How often a waiting restore looks again.
const WAIT_REQUEUE: Duration = Duration::from_secs(10);

/// Condition reasons of a BackupRestore (besides the runner's error kinds).
pub mod reasons {
    /// ArtifactResolved=True.
    pub const RESOLVED: &str = "Resolved";
    /// ArtifactVerified=True.
    pub const VERIFIED: &str = "Verified";
    /// DestinationReady=True: it holds no data.
    pub const EMPTY: &str = "Empty";
    /// DestinationReady=True: it holds data that `mode: Replace` replaces.
    pub const WILL_REPLACE: &str = "WillReplace";
    /// Completed=True: restored.
    pub const RESTORED: &str = "Restored";
    /// Completed=True: a dry run made its plan.
    pub const DRY_RUN: &str = "DryRun";
    /// Not checked yet (or not reached because an earlier step failed).
    pub const NOT_CHECKED: &str = "NotChecked";
    /// Completed=Unknown: the Job runs.
    pub const RUNNING: &str = "Running";
    /// A BackupTarget the restore names does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// The destination's plugin cannot restore.
    pub const RESTORE_UNSUPPORTED: &str = "RestoreUnsupported";
    /// The source and destination targets use different plugins.
    pub const PLUGIN_MISMATCH: &str = "PluginMismatch";
    /// The destination target's config is not valid (or its plugin not allowed).
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    /// The Job was deleted before it reported a result.
    pub const JOB_DELETED: &str = "JobDeleted";
    /// The API server refused the Job.
    pub const JOB_REJECTED: &str = "JobRejected";
    /// Completed=Unknown: another run of the destination target is active.
    pub const WAITING_FOR_RUN: &str = "WaitingForRun";
}

/// The BackupTarget a restore restores into: `spec.destination.targetRef`, else the
/// source target. `None` only for a spec the API server's rules refuse.
pub fn destination_name(restore: &BackupRestore) -> Option<&str> {
    let spec = &restore.spec;
    spec.destination
        .as_ref()
        .and_then(|d| d.target_ref.as_ref())
        .or(spec.source.target_ref.as_ref())
        .map(|r| r.name.as_str())
}

/// `status.source`: where the artifact is looked for.
fn source_text(restore: &BackupRestore) -> String {
    let source = &restore.spec.source;
    match (&source.target_ref, &source.claim_name) {
        (Some(t), _) => format!("target {}", t.name),
        (None, Some(claim)) => format!("claim {claim}"),
        (None, None) => String::new(),
    }
}

/// `status.destination`: the target, and the name inside it when one is given.
fn destination_text(restore: &BackupRestore) -> String {
    let into = restore
        .spec
        .destination
        .as_ref()
        .and_then(|d| d.into.as_deref());
    match (destination_name(restore), into) {
        (Some(t), Some(into)) => format!("{t} into {into}"),
        (Some(t), None) => t.to_owned(),
        (None, _) => String::new(),
    }
}

/// What a restore needs to start, once every object it names is there and fits.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The destination target.
    pub destination: Arc<BackupTarget>,
    /// The claim holding the artifact.
    pub claim: String,
    /// The target whose artifacts are chosen from (none for a claim source).
    pub source_target: Option<String>,
}

/// Whether a restore can start, from the objects it names.
#[derive(Clone, Debug)]
pub enum Check {
    /// It can.
    Ready(Resolved),
    /// Not yet: a target it names is missing, within [`TARGET_GRACE`].
    Wait {
        /// Condition reason.
        reason: &'static str,
        /// What is missing.
        message: String,
    },
    /// Never: it fails without a Job.
    Fail {
        /// Condition reason.
        reason: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Check what `restore` names. `source`: for a `targetRef` source, the target if it
/// exists; `None` for a claim source. `allowed`: the operator's allowed plugins.
pub fn check(
    restore: &BackupRestore,
    source: Option<Option<&BackupTarget>>,
    destination: Option<&BackupTarget>,
    allowed: Option<&[String]>,
    plugins: &crate::installed::InstalledPlugins,
    now: Timestamp,
) -> Check {
    let namespace = restore.metadata.namespace.as_deref().unwrap_or_default();
    let created = restore
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let within_grace = now.duration_since(created) < TARGET_GRACE;
    let missing = |field: &str, name: &str| {
        let message = format!(
            "BackupTarget {namespace}/{name} ({field}) does not exist{}",
            if within_grace {
                format!(
                    "; waiting up to {}s for it to appear",
                    TARGET_GRACE.as_secs()
                )
            } else {
                "; create it, or create a BackupRestore naming an existing target (for \
                 disaster recovery without the target, use spec.source.claimName and path \
                 with spec.destination.targetRef)"
                    .to_owned()
            }
        );
        if within_grace {
            Check::Wait {
                reason: reasons::TARGET_NOT_FOUND,
                message,
            }
        } else {
            Check::Fail {
                reason: reasons::TARGET_NOT_FOUND,
                message,
            }
        }
    };
    let spec = &restore.spec;
    let source_target = match (&spec.source.target_ref, source) {
        (Some(r), Some(None) | None) => return missing("spec.source.targetRef", &r.name),
        (Some(_), Some(Some(t))) => Some(t),
        (None, _) => None,
    };
    let Some(destination_ref) = destination_name(restore) else {
        return Check::Fail {
            reason: reasons::TARGET_NOT_FOUND,
            message: "name the destination in spec.destination.targetRef".to_owned(),
        };
    };
    let Some(destination) = destination else {
        let field = if spec
            .destination
            .as_ref()
            .is_some_and(|d| d.target_ref.is_some())
        {
            "spec.destination.targetRef"
        } else {
            "spec.source.targetRef"
        };
        return missing(field, destination_ref);
    };
    let info = destination.spec.plugin.info();
    if !info.capabilities.restore {
        let can: Vec<&str> = PluginConfig::infos()
            .into_iter()
            .filter(|i| i.capabilities.restore)
            .map(|i| i.key)
            .collect();
        return Check::Fail {
            reason: reasons::RESTORE_UNSUPPORTED,
            message: format!(
                "BackupTarget {namespace}/{destination_ref} uses the {} plugin, which cannot \
                 restore (plugins that can: {}); restore its artifacts by hand (`stowage \
                 artifacts list` shows them, each is a plain {} file)",
                info.key,
                can.join(", "),
                info.artifact_extension
            ),
        };
    }
    if let Some(source) = source_target {
        let source_plugin = source.spec.plugin.key();
        if source_plugin != info.key {
            return Check::Fail {
                reason: reasons::PLUGIN_MISMATCH,
                message: format!(
                    "source BackupTarget {} uses the {source_plugin} plugin and destination \
                     {destination_ref} uses {}: a restore goes into a target of the plugin \
                     that made the artifact",
                    source.name_any(),
                    info.key
                ),
            };
        }
    }
    if let Some(message) =
        super::target::check_config(&destination.spec.plugin, allowed).blocking_message()
    {
        return Check::Fail {
            reason: reasons::INVALID_CONFIG,
            message: format!("destination BackupTarget {destination_ref}: {message}"),
        };
    }
    // An external destination: its plugin must be installed, accepted and able to
    // restore, and the config must match its schema (the namespace rule is the
    // destination target's own ConfigValid, checked below, and the Job is built only
    // for a config that matches).
    if let crate::registry::PluginConfig::External(external) = &destination.spec.plugin {
        match plugins.check_target(external, &destination.namespace().unwrap_or_default(), None) {
            Ok(installed) if !installed.resolved.capabilities.restore => {
                return Check::Fail {
                    reason: reasons::INVALID_CONFIG,
                    message: format!(
                        "destination BackupTarget {destination_ref}: BackupPlugin {:?} does \
                         not declare the restore capability",
                        external.plugin
                    ),
                };
            }
            Ok(_) => {}
            Err(unusable) => {
                return Check::Fail {
                    reason: reasons::INVALID_CONFIG,
                    message: format!(
                        "destination BackupTarget {destination_ref}: {}",
                        unusable.message()
                    ),
                };
            }
        }
    }
    if let Some(invalid) = destination
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == crate::api::conditions::CONFIG_VALID)
        })
        .filter(|c| c.status == "False")
    {
        return Check::Fail {
            reason: reasons::INVALID_CONFIG,
            message: format!(
                "destination BackupTarget {destination_ref} is not usable ({}): {}",
                invalid.reason, invalid.message
            ),
        };
    }
    let claim = match (source_target, &spec.source.claim_name) {
        (Some(t), _) => t.spec.storage.claim_name.clone(),
        (None, Some(claim)) => claim.clone(),
        (None, None) => destination.spec.storage.claim_name.clone(),
    };
    Check::Ready(Resolved {
        destination: Arc::new(destination.clone()),
        claim,
        source_target: source_target.map(|t| t.name_any()),
    })
}

/// The run of `restore`'s Job, for [`build_job`].
pub fn restore_run(restore: &BackupRestore, resolved: &Resolved) -> Option<RestoreRun> {
    let spec = &restore.spec;
    Some(RestoreRun {
        name: restore.metadata.name.clone()?,
        uid: restore.metadata.uid.clone()?,
        owner: restore.controller_owner_ref(&())?,
        claim: resolved.claim.clone(),
        source_target: resolved.source_target.clone(),
        path: spec.source.path.clone(),
        as_of: spec.source.as_of.as_ref().map(|t| t.0),
        previous: spec.source.previous,
        schedule: spec.source.schedule.clone(),
        into: spec.destination.as_ref().and_then(|d| d.into.clone()),
        replace: spec.mode == RestoreMode::Replace,
        dry_run: spec.dry_run,
        deadline_seconds: spec.active_deadline_seconds,
    })
}

/// The status fields every phase sets.
fn base(prev: &BackupRestoreStatus, restore: &BackupRestore) -> BackupRestoreStatus {
    BackupRestoreStatus {
        observed_generation: restore.metadata.generation,
        source: Some(source_text(restore)),
        destination: Some(destination_text(restore)),
        ..prev.clone()
    }
}

#[allow(clippy::too_many_arguments)] // the fields of a Condition, named at each call
fn set(
    status: &mut BackupRestoreStatus,
    prev: &BackupRestoreStatus,
    generation: Option<i64>,
    now: Timestamp,
    type_: &str,
    state: &str,
    reason: &str,
    message: String,
) {
    let previous = prev.conditions.clone();
    upsert_condition(
        &mut status.conditions,
        &previous,
        type_,
        state,
        reason,
        message,
        generation,
        now,
    );
}

/// Pending or running: the checks are not made yet; `Completed` says why it waits.
pub fn waiting_status(
    prev: &BackupRestoreStatus,
    restore: &BackupRestore,
    phase: RestorePhase,
    reason: &str,
    message: String,
    now: Timestamp,
) -> BackupRestoreStatus {
    let mut status = base(prev, restore);
    status.phase = Some(phase);
    let generation = restore.metadata.generation;
    for type_ in [
        c::ARTIFACT_RESOLVED,
        c::ARTIFACT_VERIFIED,
        c::DESTINATION_READY,
    ] {
        if !status.conditions.iter().any(|k| k.type_ == type_) {
            set(
                &mut status,
                prev,
                generation,
                now,
                type_,
                "Unknown",
                reasons::NOT_CHECKED,
                "checked by the restore Job".to_owned(),
            );
        }
    }
    set(
        &mut status,
        prev,
        generation,
        now,
        c::COMPLETED,
        "Unknown",
        reason,
        message,
    );
    status
}

/// Failed before any Job ran (refused, a target missing past the grace, a rejected Job).
pub fn refused_status(
    prev: &BackupRestoreStatus,
    restore: &BackupRestore,
    reason: &str,
    message: String,
    now: Timestamp,
) -> BackupRestoreStatus {
    let mut status = waiting_status(
        prev,
        restore,
        RestorePhase::Failed,
        reason,
        message.clone(),
        now,
    );
    set(
        &mut status,
        prev,
        restore.metadata.generation,
        now,
        c::COMPLETED,
        "False",
        reason,
        message,
    );
    status.completion_time = Some(time(now));
    status
}

/// The status of a restore whose Job finished (or was stopped), from its result.
pub fn finished_status(
    prev: &BackupRestoreStatus,
    restore: &BackupRestore,
    run: &FinishedRun,
    now: Timestamp,
) -> BackupRestoreStatus {
    let mut status = base(prev, restore);
    let generation = restore.metadata.generation;
    let result: Option<&RunResult> = run.result.as_ref();
    let progress = result.and_then(|r| r.restore.as_ref());
    let failure_reason = run
        .reason
        .clone()
        .unwrap_or_else(|| status::condition_reasons::JOB_FAILED.to_owned());
    let failure_message = run.message.clone().unwrap_or_default();
    status.phase = Some(if run.succeeded {
        RestorePhase::Succeeded
    } else {
        RestorePhase::Failed
    });
    status.completion_time = Some(time(run.finish_time));
    if let Some(result) = result
        && let Some(path) = &result.artifact
    {
        status.artifact = Some(RestoredArtifact {
            path: path.clone(),
            claim_name: prev.artifact.as_ref().and_then(|a| a.claim_name.clone()),
            sha256: result.sha256.clone(),
            size_bytes: result.stored_bytes,
            created_at: progress.and_then(|p| p.created_at).map(time),
            schedule: progress.and_then(|p| p.schedule.clone()),
            plugin: progress.and_then(|p| p.artifact_plugin.clone()),
        });
    }
    if let Some(p) = progress
        && let (Some(destination), Some(holds_data)) = (&p.destination, p.holds_data)
    {
        status.plan = Some(RestorePlan {
            destination: destination.clone(),
            holds_data,
            would_replace: p.replaces,
        });
    }
    let dry_run = progress.is_some_and(|p| p.dry_run) || restore.spec.dry_run;
    if run.succeeded && !dry_run {
        status.bytes_restored = result.and_then(|r| r.raw_bytes);
    }
    // How far it got: a step before the failing one passed, the failing one failed, the
    // later ones were not reached. Without a result, nothing is known.
    let reached = progress.map(|p| p.stage);
    let failed_at = (!run.succeeded).then_some(reached).flatten();
    let step = |stage: RestoreStage| -> &'static str {
        match (reached, failed_at) {
            (None, _) => "Unknown",
            (Some(_), Some(f)) if f == stage => "False",
            (Some(r), _) if r > stage => "True",
            _ => "Unknown",
        }
    };
    let artifact_path = status
        .artifact
        .as_ref()
        .map(|a| a.path.clone())
        .unwrap_or_default();
    let not_reached = |state: &str| {
        if state == "Unknown" {
            (
                reasons::NOT_CHECKED.to_owned(),
                if reached.is_none() {
                    "the restore Job ended without a result".to_owned()
                } else {
                    "not reached: an earlier step failed".to_owned()
                },
            )
        } else {
            (failure_reason.clone(), failure_message.clone())
        }
    };
    let resolved = step(RestoreStage::Resolve);
    let (reason, message) = if resolved == "True" {
        (
            reasons::RESOLVED.to_owned(),
            format!("chose {artifact_path}"),
        )
    } else {
        not_reached(resolved)
    };
    set(
        &mut status,
        prev,
        generation,
        now,
        c::ARTIFACT_RESOLVED,
        resolved,
        &reason,
        message,
    );
    let mut verified = step(RestoreStage::Verify);
    if !run.succeeded && failure_reason == stowage_plugin_sdk::ErrorKind::ChecksumMismatch.reason()
    {
        // Changed while it was restored: checked again as it was read.
        verified = "False";
    }
    let (reason, message) = if verified == "True" {
        (
            reasons::VERIFIED.to_owned(),
            format!(
                "{} bytes with sha256 {} match the artifact's sidecar",
                result.and_then(|r| r.stored_bytes).unwrap_or_default(),
                result.and_then(|r| r.sha256.clone()).unwrap_or_default()
            ),
        )
    } else {
        not_reached(verified)
    };
    set(
        &mut status,
        prev,
        generation,
        now,
        c::ARTIFACT_VERIFIED,
        verified,
        &reason,
        message,
    );
    let mut ready = step(RestoreStage::Destination);
    let description = progress
        .and_then(|p| p.destination.clone())
        .unwrap_or_default();
    let refused_in_dry_run =
        dry_run && progress.is_some_and(|p| p.holds_data == Some(true) && !p.replaces);
    let (reason, message) = if refused_in_dry_run {
        ready = "False";
        (
            stowage_plugin_sdk::ErrorKind::DestinationNotEmpty
                .reason()
                .to_owned(),
            format!(
                "{description}; a restore with mode: IntoEmpty would be refused: restore into \
                 another name (spec.destination.into), or use mode: Replace with confirm"
            ),
        )
    } else if ready == "True" {
        let replaces = progress.is_some_and(|p| p.replaces);
        (
            if replaces {
                reasons::WILL_REPLACE
            } else {
                reasons::EMPTY
            }
            .to_owned(),
            description,
        )
    } else {
        not_reached(ready)
    };
    set(
        &mut status,
        prev,
        generation,
        now,
        c::DESTINATION_READY,
        ready,
        &reason,
        message,
    );
    let (state, reason, message) = if run.succeeded {
        (
            "True",
            if dry_run {
                reasons::DRY_RUN
            } else {
                reasons::RESTORED
            }
            .to_owned(),
            result.and_then(|r| r.message.clone()).unwrap_or_default(),
        )
    } else {
        ("False", failure_reason, failure_message)
    };
    set(
        &mut status,
        prev,
        generation,
        now,
        c::COMPLETED,
        state,
        &reason,
        message,
    );
    status
}

/// Whether a restore has ended; nothing changes it afterwards.
pub fn is_final(status: &BackupRestoreStatus) -> bool {
    matches!(
        status.phase,
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    )
}

/// The Events of a status transition.
pub fn transition_events(
    prev: &BackupRestoreStatus,
    status: &BackupRestoreStatus,
) -> Vec<PlannedEvent> {
    let completed = |s: &BackupRestoreStatus| {
        s.conditions
            .iter()
            .find(|k| k.type_ == c::COMPLETED)
            .map(|k| (k.reason.clone(), k.message.clone()))
            .unwrap_or_default()
    };
    let (reason, message) = completed(status);
    match (prev.phase, status.phase) {
        (p, Some(RestorePhase::Succeeded)) if p != Some(RestorePhase::Succeeded) => {
            vec![PlannedEvent::normal(
                event_reasons::RESTORE_SUCCEEDED,
                format!("{reason}: {message}"),
            )]
        }
        (p, Some(RestorePhase::Failed)) if p != Some(RestorePhase::Failed) => {
            vec![PlannedEvent::warning(
                event_reasons::RESTORE_FAILED,
                format!("{reason}: {message}"),
            )]
        }
        (p, Some(RestorePhase::Running)) if p != Some(RestorePhase::Running) => {
            vec![PlannedEvent::normal(
                event_reasons::RESTORE_STARTED,
                format!(
                    "Job {} started; destination: {}",
                    status.job.as_deref().unwrap_or_default(),
                    status.destination.as_deref().unwrap_or_default()
                ),
            )]
        }
        (_, Some(RestorePhase::Pending))
            if completed(prev) != (reason.clone(), message.clone()) =>
        {
            vec![PlannedEvent::normal(
                event_reasons::RESTORE_WAITING,
                message,
            )]
        }
        _ => Vec::new(),
    }
}

/// Reconcile one BackupRestore.
pub async fn reconcile(restore: Arc<BackupRestore>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(CONTROLLER);
    let name = restore.name_any();
    let namespace = restore.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "BackupRestore",
        name: name.clone(),
    })?;
    if !ctx.may_write() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if restore.metadata.deletion_timestamp.is_some() {
        // The garbage collector deletes its Job (the owner reference): that cancels it.
        return Ok(Action::await_change());
    }
    ctx.cache.wait_synced().await;
    let key = super::object_key(restore.as_ref());
    let action = reconcile_inner(&restore, &ctx, &namespace, &name).await?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Drop what the operator keeps of a deleted restore: any status written that the cache
/// did not show yet, and its error backoff.
pub fn forget(ctx: &Context, namespace: &str, name: &str) {
    ctx.restore_statuses
        .forget::<BackupRestore>(namespace, name);
    ctx.forget_failures::<BackupRestore>(namespace, name);
}

/// What one reconcile decided: the new status and when to look again.
struct Decided {
    status: BackupRestoreStatus,
    action: Action,
}

#[tracing::instrument(skip(restore, ctx))]
async fn reconcile_inner(
    restore: &BackupRestore,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let prev = ctx
        .restore_statuses
        .current(restore, restore.status.as_ref());
    if is_final(&prev) {
        return Ok(Action::await_change());
    }
    let decided = decide(restore, ctx, namespace, &prev, now).await?;
    let status = decided.status;
    if status != prev {
        let patch = serde_json::json!({
            "apiVersion": "stowage.dev/v1alpha1",
            "kind": "BackupRestore",
            "status": status,
        });
        let api: Api<BackupRestore> = Api::namespaced(ctx.client.clone(), namespace);
        api.patch_status(
            name,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        ctx.restore_statuses.wrote(restore, &status);
        let events = transition_events(&prev, &status);
        if !events.is_empty() {
            events::publish(&ctx.recorder(), &restore.object_ref(&()), &events).await;
        }
        if is_final(&status) {
            let completed = status
                .conditions
                .iter()
                .find(|k| k.type_ == c::COMPLETED)
                .map(|k| k.reason.clone())
                .unwrap_or_default();
            let plugin = destination_name(restore)
                .and_then(|d| ctx.cache.target(namespace, d))
                .map(|t| t.spec.plugin.key().to_owned())
                .unwrap_or_default();
            let result = match status.phase {
                Some(RestorePhase::Succeeded) if restore.spec.dry_run => "dry-run",
                Some(RestorePhase::Succeeded) => "succeeded",
                _ => "failed",
            };
            let duration = match (&status.start_time, &status.completion_time) {
                (Some(s), Some(e)) if !restore.spec.dry_run => {
                    Some(e.0.duration_since(s.0).as_secs_f64())
                }
                _ => None,
            };
            ctx.metrics
                .restore_finished(namespace, &plugin, result, &completed, duration);
            tracing::info!(
                namespace,
                name,
                phase = ?status.phase,
                reason = %completed,
                "restore finished"
            );
        }
    }
    Ok(decided.action)
}

async fn decide(
    restore: &BackupRestore,
    ctx: &Context,
    namespace: &str,
    prev: &BackupRestoreStatus,
    now: Timestamp,
) -> Result<Decided, Error> {
    let wait = |reason: &str, message: String| Decided {
        status: waiting_status(prev, restore, RestorePhase::Pending, reason, message, now),
        action: ctx.requeue(WAIT_REQUEUE),
    };
    let fail = |reason: &str, message: String| Decided {
        status: refused_status(prev, restore, reason, message, now),
        action: Action::await_change(),
    };
    // A Job already started is followed by its name, whatever became of the targets.
    if let Some(job) = prev.job.clone() {
        return follow(restore, ctx, namespace, prev, &job, now).await;
    }
    let source = restore
        .spec
        .source
        .target_ref
        .as_ref()
        .map(|r| ctx.cache.target(namespace, &r.name));
    let destination = destination_name(restore).and_then(|d| ctx.cache.target(namespace, d));
    let resolved = match check(
        restore,
        source.as_ref().map(|s| s.as_deref()),
        destination.as_deref(),
        ctx.settings.allowed_plugins.as_deref(),
        ctx.plugins(),
        now,
    ) {
        Check::Ready(resolved) => resolved,
        Check::Wait { reason, message } => return Ok(wait(reason, message)),
        Check::Fail { reason, message } => return Ok(fail(reason, message)),
    };
    let Some(run) = restore_run(restore, &resolved) else {
        return Ok(fail(
            reasons::JOB_REJECTED,
            "the BackupRestore has no name or uid: create it through the API server".into(),
        ));
    };
    let request = RunRequest::restore(run);
    let job_name = job_name(&resolved.destination, &request);
    if ctx.cache.job_exists(namespace, &job_name) {
        // Started by an earlier reconcile whose status write did not land.
        return follow(restore, ctx, namespace, prev, &job_name, now).await;
    }
    let job =
        build_job(&resolved.destination, &request, &ctx.settings.job_defaults).map_err(|e| {
            Error::BuildJob {
                target: resolved.destination.name_any(),
                message: e.to_string(),
            }
        })?;
    let destination_target = resolved.destination.name_any();
    let start = StartRequest {
        target: destination_target.clone(),
        job: job_name.clone(),
        trigger: StartTrigger::OnDemand,
        claim_single_node: ctx.cache.claim_single_node(namespace, &resolved.claim),
        claim: resolved.claim.clone(),
        suspended: false,
        config_invalid: None,
        job_exists: false,
    };
    match ctx
        .cache
        .plan_starts(namespace, vec![start])
        .pop()
        .unwrap_or(StartDecision::Exists)
    {
        StartDecision::Create { .. } => {}
        StartDecision::Exists => {
            return follow(restore, ctx, namespace, prev, &job_name, now).await;
        }
        StartDecision::Wait(why) => {
            return Ok(wait(
                reasons::WAITING_FOR_RUN,
                format!("waiting to restore into BackupTarget {destination_target}: {why}"),
            ));
        }
        StartDecision::Skip(why) => return Ok(wait(reasons::WAITING_FOR_RUN, why.to_string())),
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    match super::create_job(ctx, &api, &job, CreateFor::Target).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(kube::Error::Api(s)) if super::is_rejection(s.code) => {
            return Ok(fail(
                reasons::JOB_REJECTED,
                format!(
                    "the API server refused the restore Job {job_name}: {} (check the \
                     destination target's spec.job and the namespace's quotas)",
                    s.message
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(job = %job_name, destination = %destination_target, "restore Job created");
    let mut status = waiting_status(
        prev,
        restore,
        RestorePhase::Running,
        reasons::RUNNING,
        format!("Job {job_name} is restoring"),
        now,
    );
    status.job = Some(job_name);
    status.start_time = Some(time(now));
    Ok(Decided {
        status,
        action: Action::requeue(Duration::from_secs(60)),
    })
}

/// Follow the restore's Job: running, finished, stuck before its start, or gone.
async fn follow(
    restore: &BackupRestore,
    ctx: &Context,
    namespace: &str,
    prev: &BackupRestoreStatus,
    job_name: &str,
    now: Timestamp,
) -> Result<Decided, Error> {
    let running = |note: Option<String>| {
        let mut status = waiting_status(
            prev,
            restore,
            RestorePhase::Running,
            reasons::RUNNING,
            note.unwrap_or_else(|| format!("Job {job_name} is restoring")),
            now,
        );
        status.job = Some(job_name.to_owned());
        status.start_time = prev.start_time.clone().or_else(|| Some(time(now)));
        status
    };
    let job: Option<RunJob> = ctx.cache.job(namespace, job_name);
    let Some(job) = job else {
        if ctx.cache.job_exists(namespace, job_name) {
            return Ok(Decided {
                status: running(None),
                action: Action::requeue(Duration::from_secs(60)),
            });
        }
        let mut status = refused_status(
            prev,
            restore,
            reasons::JOB_DELETED,
            format!(
                "Job {job_name} was deleted before it reported a result; the destination may \
                 hold a partial restore (plugins restore in one transaction where they can): \
                 check it, then create a new BackupRestore"
            ),
            now,
        );
        status.job = Some(job_name.to_owned());
        return Ok(Decided {
            status,
            action: Action::await_change(),
        });
    };
    if job.state != JobState::Active {
        let pods = super::target::job_pods(ctx, namespace, &job.name).await?;
        let Some(run) = status::finished_run(&job, &pods, now) else {
            return Ok(Decided {
                status: running(None),
                action: ctx.requeue(WAIT_REQUEUE),
            });
        };
        let mut status = finished_status(prev, restore, &run, now);
        status.job = Some(job_name.to_owned());
        if let Some(artifact) = status.artifact.as_mut() {
            artifact.claim_name = job.claim.clone();
        }
        status.start_time = prev.start_time.clone().or_else(|| job.created.map(time));
        return Ok(Decided {
            status,
            action: Action::await_change(),
        });
    }
    let pods = ctx.cache.pods_of_job(namespace, &job.name);
    let note = match cache::newest_start_failure(&job.name, &pods) {
        None => None,
        Some(failure) => match status::stuck_run(&job, &failure, now) {
            Some(stuck) => {
                let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
                super::delete_job(&api, &job.name).await?;
                let mut status = finished_status(prev, restore, &stuck, now);
                status.job = Some(job_name.to_owned());
                return Ok(Decided {
                    status,
                    action: Action::await_change(),
                });
            }
            None => Some(format!(
                "the pod of Job {} cannot start yet ({}): {}",
                job.name, failure.reason, failure.message
            )),
        },
    };
    Ok(Decided {
        status: running(note),
        action: Action::requeue(Duration::from_secs(60)),
    })
}

#[cfg(test)]
mod tests;
