//! The BackupTarget reconciler: validate the plugin config, run probes and on-demand
//! backups, and record finished runs in the status.
//!
//! Observe → plan → apply → record: check the spec; observe the target's Jobs and the pods
//! of unrecorded and active runs; record finished runs (and runs whose pod could not start)
//! in the status first; then plan the due runs (`backup-now` through
//! [`runs::plan_start`], probes through [`plan_probe`]), create their Jobs, record what was
//! handled; finally delete the Jobs that are no longer needed (history limits, runs of
//! deleted schedules, stopped runs).

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{ANNOTATION_BACKUP_NOW, ANNOTATION_PROBE_NOW, BackupTarget, BackupTargetStatus};
use crate::installed::{Installed, Unusable};
use crate::jobs::{RunKind as JobRunKind, RunRequest, Trigger, build_job};
use crate::registry::PluginConfig;
use stowage_plugin_external::ExternalConfig;

use super::cache::{self, RunJob};
use super::events::{self, PlannedEvent, reasons};
use super::runs::{self, StartDecision, StartRequest, StartTrigger};
use super::status::{self, ConfigCheck, JobState, TargetObservation, derive_target_status};
use super::watched::{ReadTargetError, TargetMeta, WatchedTarget};
use super::{Context, Error};
use crate::jobs::RunKind;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "backuptarget";

/// How long an on-demand backup waits before looking again at a busy ReadWriteOnce claim.
pub const CLAIM_RETRY: Duration = Duration::from_secs(15);
/// How often a target whose probe waits for a free slot looks again, in case it was not
/// woken (it normally is, as soon as a probe finishes).
pub const PROBE_SLOT_RETRY: Duration = Duration::from_secs(60);
/// How often every target is reconciled again from the cache, in one sweep of the whole
/// store (a safety net, see `scope_controllers`). A reconcile that has nothing due by
/// time waits for a change instead of keeping a timer per target.
pub const RESYNC: Duration = Duration::from_secs(30 * 60);
/// Finished on-demand backup Jobs kept per target (older recorded ones are deleted).
pub const ON_DEMAND_JOBS_KEPT: usize = 3;
/// Finished probe Jobs kept per target.
pub const PROBE_JOBS_KEPT: usize = 1;

/// Check the plugin config: allowed by the operator, and the plugin's `validate`.
pub fn check_config(plugin: &PluginConfig, allowed: Option<&[String]>) -> ConfigCheck {
    let key = plugin.key();
    if let Some(allowed) = allowed
        && !allowed.iter().any(|k| k == key)
    {
        return ConfigCheck::NotAllowed(format!(
            "the operator does not allow the {key} plugin (allowed: {}); ask the cluster administrator or choose another plugin",
            allowed.join(", ")
        ));
    }
    match plugin.validate() {
        Ok(()) => ConfigCheck::Valid,
        Err(errors) => ConfigCheck::Invalid(errors.prefixed(&format!("spec.{key}")).to_string()),
    }
}

/// Whether an external target's BackupPlugin can run its config in `namespace` (the
/// namespace's labels are read only when the plugin restricts namespaces).
pub async fn check_external(
    ctx: &Context,
    external: &ExternalConfig,
    namespace: &str,
) -> Result<Result<Arc<Installed>, Unusable>, Error> {
    let restricted = ctx
        .plugins()
        .get(&external.plugin)
        .is_some_and(|installed| installed.restricts_namespaces());
    let labels = if restricted {
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        Some(
            namespaces
                .get(namespace)
                .await?
                .metadata
                .labels
                .unwrap_or_default(),
        )
    } else {
        None
    };
    Ok(ctx
        .plugins()
        .check_target(external, namespace, labels.as_ref()))
}

/// Parse a Go-style duration (`30m`, `1h30m`, `1.5h`, `90s`) as `spec.probe.interval` holds.
pub fn parse_interval(text: &str) -> Option<SignedDuration> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    (total.is_finite() && total > 0.0).then(|| SignedDuration::from_secs_f64(total))
}

/// Which probe to start now, if any, and which probe-now token that handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    /// Token of the probe Job (deterministic per trigger).
    pub token: String,
    /// The probe-now annotation value this probe handles.
    pub handles_probe_now: Option<String>,
}

/// Decide whether a probe is due: on the probe-now annotation, when the generation changed,
/// once after a run's start failure replaced the last probe's answer, after a backoff when
/// the last probe was stopped because its pod could not start
/// ([`status::stopped_probe_retry_at`]), or when `spec.probe.interval` has passed since the
/// last probe. `status` is the newest the operator knows (what it just recorded, which the
/// cached `target` may not show yet). Returns the plan and when to look again for the
/// interval or the retry.
pub fn plan_probe(
    target: &BackupTarget,
    status: &BackupTargetStatus,
    probe_active: bool,
    now: Timestamp,
) -> (Option<ProbePlan>, Option<Duration>) {
    let generation = target.metadata.generation.unwrap_or(0);
    if let Some(token) = annotation(target, ANNOTATION_PROBE_NOW)
        && status.last_handled_probe_now.as_deref() != Some(token.as_str())
    {
        return (
            Some(ProbePlan {
                token: format!("now-{token}"),
                handles_probe_now: Some(token),
            }),
            None,
        );
    }
    if probed_generation(status) != Some(generation) {
        return (
            Some(ProbePlan {
                token: format!("gen-{generation}"),
                handles_probe_now: None,
            }),
            None,
        );
    }
    // What the last probe found was lost to a start failure that has cleared: probe
    // again (unless a probe runs, whose end answers), once per clearing.
    if !probe_active
        && let Some(reprobing) = status
            .conditions
            .iter()
            .find(|c| c.type_ == crate::api::conditions::REACHABLE)
            .filter(|c| c.reason == status::condition_reasons::REPROBING)
    {
        return (
            Some(ProbePlan {
                token: format!("again-{}", reprobing.last_transition_time.0.as_second()),
                handles_probe_now: None,
            }),
            None,
        );
    }
    if probe_active {
        // The end of the running probe wakes the target: no timer until then.
        return (None, None);
    }
    let Some(last) = status.last_probe_time.as_ref().map(|t| t.0) else {
        return (None, None);
    };
    let interval = target
        .spec
        .probe
        .as_ref()
        .and_then(|p| p.interval.as_deref())
        .and_then(parse_interval)
        .filter(|i| *i >= SignedDuration::from_secs(60));
    // The last probe was stopped because its pod could not start: try again with a
    // backoff, so the target recovers once the cause is fixed (unless the interval's
    // probe comes first).
    if let Some(retry) = status::stopped_probe_retry_at(status)
        && interval.is_none_or(|i| last.checked_add(i).is_ok_and(|due| retry < due))
    {
        if retry <= now {
            return (
                Some(ProbePlan {
                    token: format!("retry-{}", last.as_second()),
                    handles_probe_now: None,
                }),
                None,
            );
        }
        return (None, Some(wait_until(now, retry)));
    }
    let Some(interval) = interval else {
        return (None, None);
    };
    let due = last.checked_add(interval).unwrap_or(last);
    if due <= now {
        let bucket = now.as_second() / interval.as_secs().max(1);
        (
            Some(ProbePlan {
                token: format!("every-{bucket}"),
                handles_probe_now: None,
            }),
            Some(Duration::from_secs(interval.as_secs().unsigned_abs())),
        )
    } else {
        (None, Some(wait_until(now, due)))
    }
}

/// How long from `now` until `at`, at least a second (a requeue of zero spins).
fn wait_until(now: Timestamp, at: Timestamp) -> Duration {
    let wait = now.duration_until(at).max(SignedDuration::from_secs(1));
    Duration::from_secs(wait.as_secs().unsigned_abs())
}

/// The generation whose probe was started. Statuses written before `probedGeneration`
/// existed say it through `observedGeneration` once a probe has finished.
fn probed_generation(status: &BackupTargetStatus) -> Option<i64> {
    status.probed_generation.or_else(|| {
        status
            .last_probe_time
            .as_ref()
            .and(status.observed_generation)
    })
}

fn annotation(target: &BackupTarget, key: &str) -> Option<String> {
    target
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// What a target reconcile reads from the caches (and, for a run to record, its pods).
struct Observed {
    /// The target's Jobs (backups and probes).
    jobs: Vec<RunJob>,
    /// Finished runs not recorded yet, and active runs stuck before their start past
    /// [`status::START_FAILURE_LIMIT`].
    new_runs: Vec<status::FinishedRun>,
    /// Why an active run's pod cannot start (within the limit).
    start_failure: Option<status::StartFailure>,
    /// Active Jobs whose pod could not start past the limit: deleted once recorded.
    stuck_jobs: Vec<String>,
}

async fn observe(
    ctx: &Context,
    prev: &BackupTargetStatus,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<Observed, Error> {
    let jobs = ctx.cache.jobs_of_target(namespace, name);
    let mut runs = Vec::new();
    let mut start_failure = None;
    let mut stuck_jobs = Vec::new();
    for job in &jobs {
        let active = job.state == JobState::Active;
        if (!active && !status::may_be_unrecorded(prev, job)) || job.deleting {
            continue;
        }
        if !active {
            let pods = job_pods(ctx, namespace, &job.name).await?;
            runs.extend(status::finished_run(job, &pods, now));
            continue;
        }
        let pods = ctx.cache.pods_of_job(namespace, &job.name);
        let Some(failure) = cache::newest_start_failure(&job.name, &pods) else {
            continue;
        };
        if let Some(stuck) = status::stuck_run(job, &failure, now) {
            stuck_jobs.push(job.name.clone());
            runs.push(stuck);
        } else {
            start_failure = Some(failure);
        }
    }
    Ok(Observed {
        new_runs: status::unrecorded_runs(prev, runs),
        jobs,
        start_failure,
        stuck_jobs,
    })
}

/// The pods of a finished Job whose run is being recorded, read by name (their
/// termination messages hold the run's result, which the caches do not keep).
pub(super) async fn job_pods(ctx: &Context, namespace: &str, job: &str) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut pods = Vec::new();
    for summary in ctx.cache.pods_of_job(namespace, job) {
        if let Some(pod) = api.get_opt(&summary.name).await? {
            pods.push(pod);
        }
    }
    Ok(pods)
}

fn build(target: &BackupTarget, request: &RunRequest, ctx: &Context) -> Result<Job, Error> {
    build_job(target, request, &ctx.settings.job_defaults).map_err(|e| Error::BuildJob {
        target: target.name_any(),
        message: e.to_string(),
    })
}

/// Reconcile a cached target: parse it ([`WatchedTarget::target`]), then [`reconcile`].
pub async fn reconcile_watched(
    target: Arc<WatchedTarget>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = || {
        format!(
            "{}/{}",
            target.metadata.namespace.as_deref().unwrap_or_default(),
            target.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let parsed = target.target().map_err(|e| match e {
        ReadTargetError::Types(source) => Error::Decode {
            kind: "BackupTarget",
            name: name(),
            source,
        },
        unpack @ ReadTargetError::Unpack(_) => Error::Cache {
            kind: "BackupTarget",
            name: name(),
            message: unpack.to_string(),
        },
    })?;
    reconcile(Arc::new(parsed), ctx).await
}

/// Reconcile one BackupTarget.
pub async fn reconcile(target: Arc<BackupTarget>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(CONTROLLER);
    let name = target.name_any();
    let namespace = target.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "BackupTarget",
        name: name.clone(),
    })?;
    if !ctx.may_write() {
        // Not (or no longer) the leader: the client would refuse every write anyway.
        tracing::debug!(name, "not holding the leader fence; skipping the reconcile");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let key = super::object_key(target.as_ref());
    if target.metadata.deletion_timestamp.is_some() {
        // Being deleted (another controller's finalizer holds it): start nothing, and drop
        // its series so dashboards and alerts do not show a ghost.
        ctx.metrics.target_deleted(&namespace, &name);
        tracing::debug!(
            namespace,
            name,
            "target is being deleted; its metrics are removed"
        );
        ctx.succeeded(&key);
        return Ok(Action::await_change());
    }
    // While a tick's Jobs are being created, recording runs and starting probes waits.
    let this = cache::Deferred::Target(namespace.clone(), name.clone());
    if ctx.defer_while_creating(this) {
        tracing::debug!(name, "waiting for the Job creations in flight");
        return Ok(ctx.requeue(cache::DEFER_LIMIT));
    }
    ctx.cache.wait_synced().await;
    let action = reconcile_inner(&target, &ctx, &namespace, &name).await?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Conditions of the target's status that other writers own (the schedules'
/// `JobsAccepted`): kept out of this reconciler's derivation and patches.
fn foreign_condition(type_: &str) -> bool {
    type_ == crate::api::conditions::JOBS_ACCEPTED
}

/// Drop what the operator keeps of a deleted target: its metric series and any status
/// written that the cache did not show yet, and its error backoff.
pub fn forget(ctx: &Context, namespace: &str, name: &str) {
    ctx.metrics.target_deleted(namespace, name);
    ctx.target_statuses.forget::<BackupTarget>(namespace, name);
    ctx.forget_failures::<BackupTarget>(namespace, name);
}

/// Write the status (only its own fields) when it differs from `prev`, and remember it
/// until the cache shows it.
async fn write_status(
    ctx: &Context,
    target: &BackupTarget,
    prev: &BackupTargetStatus,
    status: &BackupTargetStatus,
) -> Result<(), Error> {
    let (namespace, name) = (target.namespace().unwrap_or_default(), target.name_any());
    let whole = status;
    let own = |s: &BackupTargetStatus| {
        let mut s = s.clone();
        s.conditions.retain(|c| !foreign_condition(&c.type_));
        s
    };
    let status = own(status);
    if status == own(prev) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "status": status,
    });
    // Of the answer (the whole target) only the metadata is read.
    let targets: Api<TargetMeta> = Api::namespaced(ctx.client.clone(), &namespace);
    targets
        .patch_status(
            &name,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.target_statuses.wrote(target, whole);
    tracing::debug!("status written");
    Ok(())
}

/// The status derived from `prev`, keeping the conditions other writers own.
fn derive(
    prev: &BackupTargetStatus,
    observation: &TargetObservation,
) -> status::TargetStatusUpdate {
    let mut update = derive_target_status(prev, observation);
    update.status.conditions.extend(
        prev.conditions
            .iter()
            .filter(|c| foreign_condition(&c.type_))
            .cloned(),
    );
    update
}

/// The on-demand backup a `backup-now` token asks for, and what to do about it.
struct OnDemand {
    token: String,
    decision: StartDecision,
    job: Option<Job>,
}

/// Plan the pending `backup-now`, if any: skipped (suspended, invalid), waiting (the
/// target or its ReadWriteOnce claim is busy), or started (reserved in the cache; the
/// caller creates the Job or releases the reservation).
fn plan_backup_now(
    ctx: &Context,
    target: &BackupTarget,
    namespace: &str,
    config_invalid: Option<String>,
) -> Result<Option<OnDemand>, Error> {
    let prev = target.status.clone().unwrap_or_default();
    let Some(token) = annotation(target, ANNOTATION_BACKUP_NOW)
        .filter(|token| prev.last_handled_backup_now.as_deref() != Some(token.as_str()))
    else {
        return Ok(None);
    };
    let request = RunRequest {
        kind: JobRunKind::Backup,
        trigger: Trigger::BackupNow {
            token: token.clone(),
        },
    };
    let job_name = crate::jobs::job_name(target, &request);
    let claim = target.spec.storage.claim_name.clone();
    let start = StartRequest {
        target: target.name_any(),
        job: job_name.clone(),
        trigger: StartTrigger::OnDemand,
        claim_single_node: ctx.cache.claim_single_node(namespace, &claim),
        claim,
        suspended: target.spec.suspend,
        config_invalid,
        job_exists: false,
    };
    // Build first: a Job that cannot be built must not hold a reservation.
    let job = build(target, &request, ctx)?;
    let decision = ctx
        .cache
        .plan_starts(namespace, vec![start])
        .pop()
        .unwrap_or(StartDecision::Exists);
    let job = matches!(decision, StartDecision::Create { .. }).then_some(job);
    Ok(Some(OnDemand {
        token,
        decision,
        job,
    }))
}

#[tracing::instrument(skip(target, ctx))]
async fn reconcile_inner(
    target: &BackupTarget,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let prev = ctx.target_statuses.current(target, target.status.as_ref());
    let plugin = &target.spec.plugin;
    let info = plugin.info();
    let mut config = check_config(plugin, ctx.settings.allowed_plugins.as_deref());
    // What `kubectl get` shows as the plugin: an external target's BackupPlugin.
    let (mut plugin_name, mut plugin_version, mut probe_supported) = (
        plugin.key().to_owned(),
        info.version.to_owned(),
        info.capabilities.probe,
    );
    if let (ConfigCheck::Valid, PluginConfig::External(external)) = (&config, plugin) {
        plugin_name = external.plugin.clone();
        match check_external(ctx, external, namespace).await? {
            Ok(installed) => {
                plugin_version = installed.resolved.version.clone();
                probe_supported = installed.resolved.capabilities.probe;
            }
            Err(unusable) => config = ConfigCheck::Unusable(unusable),
        }
    }
    let can_run = config == ConfigCheck::Valid && !target.spec.suspend;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);

    // Observe.
    let observed = observe(ctx, &prev, namespace, name, now).await?;
    let observation = |new_runs, handled_backup_now, handled_probe_now| TargetObservation {
        generation: target.metadata.generation,
        plugin: plugin_name.clone(),
        plugin_version: plugin_version.clone(),
        probe_supported,
        config: config.clone(),
        suspended: target.spec.suspend,
        new_runs,
        handled_backup_now,
        handled_probe_now,
        start_failure: observed.start_failure.clone(),
        now,
    };

    // Record finished runs before anything new starts (with nothing to record, the one
    // status write comes at the end, with what was started).
    let recorded = derive(&prev, &observation(observed.new_runs.clone(), None, None));
    let mut written = prev.clone();
    if !observed.new_runs.is_empty() {
        write_status(ctx, target, &prev, &recorded.status).await?;
        written = recorded.status.clone();
    }
    let mut events_now: Vec<PlannedEvent> = recorded.events;
    if let Some(failure) = &observed.start_failure
        && prev
            .conditions
            .iter()
            .find(|c| c.type_ == crate::api::conditions::REACHABLE)
            .is_none_or(|c| c.reason != failure.reason)
    {
        events_now.push(PlannedEvent::warning(
            reasons::RUN_CANNOT_START,
            format!(
                "the pod of Job {} cannot start: {}: {}",
                failure.job, failure.reason, failure.message
            ),
        ));
    }
    for run in observed
        .new_runs
        .iter()
        .filter(|r| r.kind == RunKind::Backup)
    {
        ctx.metrics.backup_finished(
            namespace,
            name,
            plugin.key(),
            run.succeeded,
            run.result.as_ref().map(|r| r.duration_seconds),
        );
        tracing::info!(
            job = run.job,
            succeeded = run.succeeded,
            reason = run.reason.as_deref().unwrap_or_default(),
            "backup finished"
        );
    }
    let mut status_now = recorded.status;
    // Their failure is recorded: stop them, so they free their claim.
    for job in &observed.stuck_jobs {
        tracing::warn!(job, "stopping a run whose pod could not start");
        super::delete_job(&jobs_api, job).await?;
    }

    // Plan and apply the runs that are due.
    // When to look again, if anything is due by time; `None` waits for a change (or the
    // periodic sweep of every target, [`RESYNC`]).
    let mut requeue: Option<Duration> = None;
    let mut due_in = |after: Duration| requeue = Some(requeue.map_or(after, |r| r.min(after)));
    if observed.start_failure.is_some() {
        // Look again when the stuck run reaches its limit.
        due_in(Duration::from_secs(30));
    }
    let config_invalid = config.blocking_message();
    let mut handled_backup_now = None;
    let mut rejected_runs = Vec::new();
    if let Some(on_demand) = plan_backup_now(ctx, target, namespace, config_invalid)? {
        let token = on_demand.token;
        match on_demand.decision {
            StartDecision::Skip(why) => {
                events_now.push(PlannedEvent::warning(
                    reasons::BACKUP_SKIPPED,
                    format!("backup-now {token:?} not run: {why}"),
                ));
                handled_backup_now = Some(token);
            }
            StartDecision::Wait(why) => {
                tracing::info!(token, reason = %why, "on-demand backup waits");
                let reason = match why {
                    runs::WaitReason::ClaimBusy { .. } => reasons::WAITING_FOR_CLAIM,
                    runs::WaitReason::TargetBusy { .. } => reasons::WAITING_FOR_RUN,
                };
                events::publish(
                    &ctx.recorder(),
                    &target.object_ref(&()),
                    &[PlannedEvent::normal(
                        reason,
                        format!("backup-now {token:?} waits: {why}"),
                    )],
                )
                .await;
                due_in(CLAIM_RETRY);
            }
            StartDecision::Exists => handled_backup_now = Some(token),
            StartDecision::Create { .. } => {
                let Some(job) = on_demand.job else {
                    return Err(Error::BuildJob {
                        target: name.to_owned(),
                        message: "no Job was built for a run to create".into(),
                    });
                };
                let job_name = job.name_any();
                let created =
                    super::create_job(ctx, &jobs_api, &job, super::CreateFor::Target).await;
                match created {
                    Ok(_) => {
                        crate::fault::point("backup-now-after-create");
                        tracing::info!(job = job_name, token, "created on-demand backup Job");
                        events_now.push(PlannedEvent::normal(
                            reasons::BACKUP_STARTED,
                            format!("Job {job_name} started for backup-now {token:?}"),
                        ));
                        handled_backup_now = Some(token);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => handled_backup_now = Some(token),
                    Err(kube::Error::Api(s)) if super::is_rejection(s.code) => {
                        // Retrying the same Job cannot help: the run fails, named.
                        tracing::warn!(job = job_name, error = s.message, "on-demand Job rejected");
                        let (reason, message) = super::refusal(&job_name, &s);
                        rejected_runs.push(status::FinishedRun {
                            job: job_name.clone(),
                            kind: RunKind::Backup,
                            schedule: None,
                            succeeded: false,
                            result: None,
                            start_time: Some(now),
                            finish_time: now,
                            reason: Some(reason.to_owned()),
                            message: Some(message),
                            generation: target.metadata.generation,
                        });
                        handled_backup_now = Some(token);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    // Probe, when a slot is free (`--max-concurrent-probes`); otherwise the target
    // waits in line and is woken when a probe finishes.
    let mut handled_probe_now = None;
    let probe_active = observed
        .jobs
        .iter()
        .any(|j| j.kind == Some(RunKind::Probe) && j.state == JobState::Active);
    if probe_supported {
        let (plan, wait) = plan_probe(target, &status_now, probe_active, now);
        if let Some(wait) = wait {
            due_in(wait);
        }
        if let Some(plan) = plan {
            if !can_run {
                handled_probe_now = plan.handles_probe_now;
            } else {
                let request = RunRequest {
                    kind: JobRunKind::Probe,
                    trigger: Trigger::Probe {
                        token: plan.token.clone(),
                    },
                };
                let job = build(target, &request, ctx)?;
                let job_name = job.name_any();
                let slot = ctx.cache.try_start_probe(namespace, name, &job_name);
                if slot == cache::ProbeSlot::Exists {
                    handled_probe_now = plan.handles_probe_now;
                } else if slot == cache::ProbeSlot::Start {
                    let created =
                        super::create_job(ctx, &jobs_api, &job, super::CreateFor::Target).await;
                    match created {
                        Ok(_) => {
                            crate::fault::point("probe-after-create");
                            tracing::info!(job = job_name, token = plan.token, "created probe Job")
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(kube::Error::Api(s)) if super::is_rejection(s.code) => {
                            // The probe of this generation ends here, failed and named
                            // (`Reachable=False`), instead of being retried in a loop.
                            tracing::warn!(
                                job = job_name,
                                error = s.message,
                                "probe Job not started"
                            );
                            let (reason, message) = super::refusal(&job_name, &s);
                            rejected_runs.push(status::FinishedRun {
                                job: job_name.clone(),
                                kind: RunKind::Probe,
                                schedule: None,
                                succeeded: false,
                                result: None,
                                start_time: Some(now),
                                finish_time: now,
                                reason: Some(reason.to_owned()),
                                message: Some(message),
                                generation: target.metadata.generation,
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                    handled_probe_now = plan.handles_probe_now;
                } else {
                    tracing::debug!(
                        job = job_name,
                        "probe waits for a free slot (--max-concurrent-probes)"
                    );
                    due_in(PROBE_SLOT_RETRY);
                }
            }
        }
    }

    // Record what was started.
    let update = derive(
        &status_now,
        &observation(rejected_runs, handled_backup_now, handled_probe_now),
    );
    write_status(ctx, target, &written, &update.status).await?;
    events_now.extend(update.events);
    status_now = update.status;
    ctx.metrics.target_observed(
        namespace,
        name,
        status_now.last_successful_backup_time.as_ref().map(|t| t.0),
        status_now.artifacts.as_ref().map(|a| a.total_bytes),
    );
    // Deleted while this reconcile ran: the watch forgot it before the line above put its
    // series back (the store drops a target before its deletion is handled).
    if ctx.cache.target_exists(namespace, name) == Some(false) {
        forget(ctx, namespace, name);
    }
    if !events_now.is_empty() {
        events::publish(&ctx.recorder(), &target.object_ref(&()), &events_now).await;
    }

    // Jobs no longer needed: stuck runs now recorded, and history beyond the limits.
    let schedule_exists = |schedule: &str| ctx.schedule_exists(namespace, schedule);
    for job in jobs_to_delete(&observed.jobs, &status_now, &schedule_exists) {
        super::delete_job(&jobs_api, &job.name).await?;
    }

    Ok(requeue.map_or_else(Action::await_change, |after| ctx.requeue(after)))
}

/// The target's finished Jobs that are not kept, oldest first: on-demand backups beyond
/// [`ON_DEMAND_JOBS_KEPT`], probes beyond [`PROBE_JOBS_KEPT`], and scheduled backups whose
/// schedule is gone (`schedule_exists` says `Some(false)`). Only recorded runs are
/// deleted. Scheduled backups of a live schedule are left to its history limits.
pub fn jobs_to_delete<'a>(
    jobs: &'a [RunJob],
    status: &BackupTargetStatus,
    schedule_exists: &dyn Fn(&str) -> Option<bool>,
) -> Vec<&'a RunJob> {
    let live = |j: &&RunJob| !j.deleting;
    let finished_recorded =
        |j: &&RunJob| j.state != JobState::Active && !status::may_be_unrecorded(status, j);
    let mut out: Vec<&RunJob> = Vec::new();
    for (kind, keep) in [
        (RunKind::Backup, ON_DEMAND_JOBS_KEPT),
        (RunKind::Probe, PROBE_JOBS_KEPT),
    ] {
        let mut finished: Vec<&RunJob> = jobs
            .iter()
            .filter(|j| j.kind == Some(kind))
            .filter(|j| j.schedule.is_none())
            .filter(live)
            .filter(finished_recorded)
            .collect();
        finished.sort_by_key(|j| std::cmp::Reverse(status::job_finish_time(j)));
        out.extend(finished.into_iter().skip(keep));
    }
    out.extend(
        jobs.iter()
            .filter(live)
            .filter(finished_recorded)
            .filter(|j| {
                j.schedule
                    .as_deref()
                    .is_some_and(|s| schedule_exists(s) == Some(false))
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::fixtures::{self, finish_job, pod_with_message, rwo_claim};
    use http::Method;
    use serde_json::json;

    const JOBS: &str = "/apis/batch/v1/namespaces/shop/jobs";
    const STATUS: &str = "/apis/stowage.dev/v1alpha1/namespaces/shop/backuptargets/app-db/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
    }

    /// The target as the API server returns it after a status apply.
    fn with_status(mut target: BackupTarget, status: &serde_json::Value) -> BackupTarget {
        target.status = Some(serde_json::from_value(status.clone()).unwrap());
        target
    }

    #[tokio::test]
    async fn a_new_target_gets_config_valid_and_a_probe_job() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let target = fixtures::target();
        // Jobs come from the cache: no API read at all.
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx));

        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/kind"], "probe");
        assert_eq!(req.body["metadata"]["ownerReferences"][0]["name"], "app-db");
        req.echo();

        // One status write, with what was started.
        let req = api.expect(Method::PATCH, STATUS).await;
        assert_eq!(
            req.query("fieldManager").as_deref(),
            Some("stowage-controller")
        );
        let status = req.body["status"].clone();
        assert_eq!(status["observedGeneration"], 1);
        // Recorded with the probe's result, not when it starts.
        assert!(status.get("probedGeneration").is_none(), "{status}");
        assert_eq!(status["plugin"], "postgres");
        let valid = condition(&status, "ConfigValid");
        assert_eq!(
            (valid["status"].as_str(), valid["reason"].as_str()),
            (Some("True"), Some("Valid"))
        );
        assert_eq!(condition(&status, "Reachable")["reason"], "NotProbed");
        assert_eq!(condition(&status, "Ready")["status"], "True");
        req.respond(
            200,
            serde_json::to_value(with_status(target, &status)).unwrap(),
        );

        // Nothing is due by time: the target keeps no timer, it waits for a change (its
        // probe Job's) or the periodic sweep of every target.
        let action = reconciled.await.unwrap().unwrap();
        assert_eq!(action, Action::await_change());
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_status_written_but_not_yet_in_the_cache_is_not_written_again() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let mut target = fixtures::target();
        target.metadata.resource_version = Some("10".into());
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx.clone()));
        api.expect(Method::POST, JOBS).await.echo();
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        let mut written = with_status(target.clone(), &status);
        written.metadata.resource_version = Some("11".into());
        req.respond(200, serde_json::to_value(&written).unwrap());
        reconciled.await.unwrap().unwrap();

        // Woken again before the watch delivered the write: the cache still holds
        // version 10. Nothing new to say, so no request (none would be answered).
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reconcile(Arc::new(target.clone()), ctx.clone()),
        )
        .await;
        assert!(
            again.is_ok(),
            "a stale cache made the reconcile write again"
        );
        // The watch caught up: still nothing to write.
        let caught_up = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reconcile(Arc::new(written.clone()), ctx.clone()),
        )
        .await;
        assert!(caught_up.is_ok(), "the caught-up status was written again");
        assert_eq!(
            ctx.target_statuses.len(),
            0,
            "kept after the cache caught up"
        );

        // Someone else then replaced the status (version 12): it is written back.
        let mut changed = written.clone();
        changed.metadata.resource_version = Some("12".into());
        changed.status = Some(Default::default());
        let reconciled = tokio::spawn(reconcile(Arc::new(changed.clone()), ctx.clone()));
        let req = api.expect(Method::PATCH, STATUS).await;
        assert_eq!(req.body["status"]["observedGeneration"], 1);
        req.respond(200, serde_json::to_value(&written).unwrap());
        reconciled.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn probes_beyond_the_limit_wait_for_a_slot_and_start_when_one_frees() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        // The fixture allows 10 probes at once: 10 are running.
        let running: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                json!({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": format!("other-{i}-probe"), "namespace": "shop",
                                 "labels": {"stowage.dev/kind": "probe", "stowage.dev/target": format!("other-{i}")},
                                 "annotations": {"stowage.dev/target": format!("other-{i}")}},
                    "status": {"active": 1}})
            })
            .collect();
        ctx.cache.seed_jobs(&running);
        let target = fixtures::target();
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx.clone()));
        // No probe Job: the status says what the target is, but not that it was probed.
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["observedGeneration"], 1);
        assert!(status.get("probedGeneration").is_none(), "{status}");
        req.respond(
            200,
            serde_json::to_value(with_status(target.clone(), &status)).unwrap(),
        );
        let action = reconciled.await.unwrap().unwrap();
        assert_eq!(action, Action::requeue(PROBE_SLOT_RETRY));
        assert_eq!(ctx.cache.probes_waiting(), 1);

        // One probe finishes: the waiting target gets the slot.
        let mut done = running[0].clone();
        done["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}]});
        ctx.cache.seed_jobs(&[done]);
        assert_eq!(ctx.cache.probes_waiting(), 0);
        let target = with_status(target, &status);
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/kind"], "probe");
        assert_eq!(
            req.body["metadata"]["annotations"]["stowage.dev/generation"],
            "1"
        );
        req.echo();
        // Starting the probe changes nothing in the status: the Job is the record until
        // its result is, so thousands of probes starting cost no status write each.
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_target_being_deleted_starts_nothing_and_loses_its_gauges() {
        let (ctx, api, _clock, registry) = fixtures::context();
        ctx.metrics
            .target_observed("shop", "app-db", Some(fixtures::now()), Some(4096));
        ctx.metrics
            .target_observed("shop", "other-db", Some(fixtures::now()), Some(1));
        let mut target = fixtures::target();
        // New: without the deletion it would list Jobs and start a probe.
        target.metadata.deletion_timestamp = Some(crate::controller::status::time(fixtures::now()));
        // Any API request would go unanswered: the reconcile must return without one.
        let action = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reconcile(Arc::new(target), ctx.clone()),
        )
        .await
        .expect("the reconcile made an API request")
        .unwrap();
        assert_eq!(action, Action::await_change());
        let metrics = crate::controller::metrics::render(&registry).unwrap();
        assert!(!metrics.contains(r#"target="app-db""#), "{metrics}");
        assert!(
            metrics
                .contains(r#"stowage_backup_artifact_bytes{namespace="shop",target="other-db"} 1"#),
            "{metrics}"
        );
        drop(ctx);
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn an_invalid_config_is_reported_with_the_field_path_and_no_job_starts() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let mut target = fixtures::target();
        if let PluginConfig::Postgres(config) = &mut target.spec.plugin {
            config.database = None;
        }
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx));
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        let valid = condition(&status, "ConfigValid");
        assert_eq!(
            (valid["status"].as_str(), valid["reason"].as_str()),
            (Some("False"), Some("InvalidConfig"))
        );
        assert!(
            valid["message"]
                .as_str()
                .unwrap()
                .starts_with("spec.postgres.database: "),
            "{valid}"
        );
        assert_eq!(condition(&status, "Ready")["reason"], "InvalidConfig");
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    /// A target whose generation 1 was already handled: its status is what a reconcile
    /// wrote for it.
    fn observed_target() -> BackupTarget {
        let mut target = fixtures::target();
        let observation = TargetObservation {
            generation: Some(1),
            plugin: "postgres".into(),
            plugin_version: PluginConfig::info_for("postgres").unwrap().version.into(),
            probe_supported: true,
            config: ConfigCheck::Valid,
            suspended: false,
            new_runs: vec![],
            handled_backup_now: None,
            handled_probe_now: None,
            start_failure: None,
            now: fixtures::now() - SignedDuration::from_mins(10),
        };
        let mut status = derive_target_status(&BackupTargetStatus::default(), &observation).status;
        // Its probe was recorded.
        status.probed_generation = Some(1);
        target.status = Some(status);
        target
    }

    #[tokio::test]
    async fn backup_now_creates_exactly_one_job_and_records_the_token() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let mut target = observed_target();
        target
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_BACKUP_NOW.into(), "1700000000".into());
        ctx.cache.seed_claims(&[rwo_claim()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx.clone()));

        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/kind"], "backup");
        let created = req.body.clone();
        req.echo();
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["lastHandledBackupNow"], "1700000000");
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupStarted");
        req.echo();
        reconciled.await.unwrap().unwrap();

        // The next reconcile (the status write and the Job trigger one) sees the token as
        // handled: no second Job, no status write, no API read.
        ctx.cache.seed_jobs(&[created]);
        let again = tokio::spawn(reconcile(Arc::new(with_status(target, &status)), ctx));
        again.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn backup_now_waits_while_another_job_uses_the_rwo_claim() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let mut target = observed_target();
        target
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_BACKUP_NOW.into(), "t1".into());
        let busy = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "other-backup", "namespace": "shop",
                         "labels": {"stowage.dev/kind": "backup", "stowage.dev/target": "other"}},
            "spec": {"template": {"spec": {"containers": [{"name": "run"}],
                "volumes": [{"name": "backups", "persistentVolumeClaim": {"claimName": "backups"}}]}}},
            "status": {"active": 1}});
        ctx.cache.seed_jobs(&[busy]);
        ctx.cache.seed_claims(&[rwo_claim()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "WaitingForClaim");
        assert!(req.body["note"].as_str().unwrap().contains("other-backup"));
        req.echo();
        // Nothing else: no Job, and the token is not recorded (no status write), so the
        // backup runs once the claim is free.
        let action = reconciled.await.unwrap().unwrap();
        assert_eq!(action, Action::requeue(CLAIM_RETRY));
        api.expect_no_more().await;
    }

    fn finished_backup_job() -> serde_json::Value {
        let target = fixtures::target();
        let job = build_job(
            &target,
            &RunRequest::backup_now("t1"),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap();
        finish_job(
            serde_json::to_value(job).unwrap(),
            true,
            "2030-03-01T02:31:00Z",
        )
    }

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn result_json() -> String {
        json!({
            "operation": "backup", "outcome": "ok", "plugin": "postgres", "pluginVersion": "1.0.0",
            "artifact": "shop/app-db/2030-03-01/postgres-20300301T023005Z.dump.zst",
            "rawBytes": 10_000_000, "storedBytes": 2_097_152, "sha256": SHA,
            "startTime": "2030-03-01T02:30:05Z", "endTime": "2030-03-01T02:30:55Z",
            "durationSeconds": 50.0, "pruned": 2
        })
        .to_string()
    }

    #[tokio::test]
    async fn a_finished_job_becomes_last_backup_with_its_sha256_and_is_recorded_once() {
        let (ctx, mut api, _clock, registry) = fixtures::context();
        let target = observed_target();
        let job = finished_backup_job();
        let job_name = job["metadata"]["name"].as_str().unwrap().to_owned();
        let pod = pod_with_message(&job_name, &result_json(), 0);
        ctx.cache.seed_jobs(std::slice::from_ref(&job));
        ctx.cache.seed_pods(std::slice::from_ref(&pod));
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx.clone()));

        // The result is in the pod's termination message, which the cache does not keep:
        // the pod is read by name, once, to record the run.
        api.expect(
            Method::GET,
            &format!("/api/v1/namespaces/shop/pods/{job_name}-x1"),
        )
        .await
        .respond(200, pod);
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        let last = &status["lastBackup"];
        assert_eq!(last["sha256"], SHA);
        assert_eq!(last["outcome"], "Succeeded");
        assert_eq!(last["sizeBytes"], 2_097_152);
        assert_eq!(last["size"], "2.0 MiB");
        assert_eq!(last["job"], job_name.as_str());
        assert_eq!(last["completionTime"], "2030-03-01T02:31:00Z");
        assert_eq!(status["lastSuccessfulBackupTime"], "2030-03-01T02:31:00Z");
        assert_eq!(status["recentBackups"].as_array().unwrap().len(), 1);
        assert_eq!(condition(&status, "LastBackupSucceeded")["status"], "True");
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        let mut reasons = Vec::new();
        for _ in 0..2 {
            let req = api.expect(Method::POST, EVENTS).await;
            reasons.push(req.body["reason"].as_str().unwrap().to_owned());
            req.echo();
        }
        assert_eq!(reasons, ["BackupSucceeded", "ArtifactsPruned"]);
        reconciled.await.unwrap().unwrap();
        let metrics = crate::controller::metrics::render(&registry).unwrap();
        assert!(metrics.contains(r#"stowage_backup_runs_total{namespace="shop",target="app-db",plugin="postgres",result="succeeded"} 1"#), "{metrics}");

        // Reconciling the written status again: the Job is recorded, so its pods are not
        // read, nothing is written and no event repeats.
        let again = tokio::spawn(reconcile(Arc::new(with_status(target, &status)), ctx));
        again.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_recorded_probe_marks_the_generation_it_probed_and_a_newer_one_is_probed_next() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        // Generation 1's probe finished; the spec changed meanwhile (generation 2).
        let mut target = observed_target();
        target.status.as_mut().unwrap().probed_generation = None;
        let probe = build_job(
            &target,
            &RunRequest::probe("gen-1"),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap();
        let probe = finish_job(
            serde_json::to_value(probe).unwrap(),
            true,
            "2030-03-01T02:31:00Z",
        );
        let probe_name = probe["metadata"]["name"].as_str().unwrap().to_owned();
        let result = json!({
            "operation": "probe", "outcome": "ok", "plugin": "postgres",
            "startTime": "2030-03-01T02:30:05Z", "endTime": "2030-03-01T02:30:55Z",
            "durationSeconds": 50.0, "message": "connected to PostgreSQL 17"
        })
        .to_string();
        ctx.cache.seed_jobs(std::slice::from_ref(&probe));
        ctx.cache
            .seed_pods(&[pod_with_message(&probe_name, &result, 0)]);
        target.metadata.generation = Some(2);
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx));
        let req = api
            .expect(
                Method::GET,
                &format!("/api/v1/namespaces/shop/pods/{probe_name}-x1"),
            )
            .await;
        req.respond(200, pod_with_message(&probe_name, &result, 0));

        // The result is recorded with the generation its Job probed (its annotation),
        // not the target's current one.
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["probedGeneration"], 1, "{status}");
        assert_eq!(status["observedGeneration"], 2, "{status}");
        assert_eq!(status["lastProbeTime"], "2030-03-01T02:31:00Z");
        assert_eq!(condition(&status, "Reachable")["status"], "True");
        req.respond(
            200,
            serde_json::to_value(with_status(target.clone(), &status)).unwrap(),
        );
        // So generation 2 is probed next, in the same reconcile.
        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(
            req.body["metadata"]["annotations"]["stowage.dev/generation"],
            "2"
        );
        assert_eq!(
            req.body["metadata"]["annotations"]["stowage.dev/token"],
            "gen-2"
        );
        req.echo();
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn an_oom_killed_job_without_a_result_is_a_failure_named_for_the_memory_limit() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let target = observed_target();
        let mut job = finished_backup_job();
        job = finish_job(job, false, "2030-03-01T02:32:00Z");
        let job_name = job["metadata"]["name"].as_str().unwrap().to_owned();
        let mut pod = pod_with_message(&job_name, "", 137);
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = json!("OOMKilled");
        ctx.cache.seed_jobs(&[job]);
        ctx.cache.seed_pods(&[pod.clone()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        api.expect(
            Method::GET,
            &format!("/api/v1/namespaces/shop/pods/{job_name}-x1"),
        )
        .await
        .respond(200, pod);
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["lastFailure"]["reason"], "OOMKilled");
        let message = status["lastFailure"]["message"].as_str().unwrap();
        assert!(
            message.contains("backoff limit")
                && message.contains("OOMKilled (exit code 137)")
                && message.contains("spec.job.resources.limits.memory"),
            "{message}"
        );
        assert_eq!(condition(&status, "Ready")["reason"], "LastBackupFailed");
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupFailed");
        assert_eq!(req.body["type"], "Warning");
        req.echo();
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    fn with_backup_now(mut target: BackupTarget, token: &str) -> BackupTarget {
        target
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_BACKUP_NOW.into(), token.into());
        target
    }

    #[tokio::test]
    async fn backup_now_waits_while_a_scheduled_run_of_the_same_target_is_active() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let target = with_backup_now(observed_target(), "t2");
        let scheduled = build_job(
            &fixtures::target(),
            &RunRequest::scheduled("nightly", fixtures::now(), None, None),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap();
        let mut scheduled = serde_json::to_value(scheduled).unwrap();
        scheduled["status"] = json!({"active": 1});
        ctx.cache.seed_jobs(&[scheduled]);
        // A ReadWriteMany claim: only the one-writer rule holds the run back.
        ctx.cache.seed_claims(
            &[json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "backups", "namespace": "shop"},
            "spec": {"accessModes": ["ReadWriteMany"]}})],
        );
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "WaitingForRun");
        assert!(req.body["note"].as_str().unwrap().contains("same target"));
        req.echo();
        assert_eq!(
            reconciled.await.unwrap().unwrap(),
            Action::requeue(CLAIM_RETRY)
        );
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_rejected_backup_now_job_is_a_failed_run_naming_the_api_error() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let target = with_backup_now(observed_target(), "t3");
        ctx.cache.seed_claims(&[rwo_claim()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        let message = r#"Job.batch "app-db-b-x" is invalid: spec.template.spec.nodeSelector: Invalid value: "bad key""#;
        api.expect(Method::POST, JOBS).await.respond(
            422,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": message, "reason": "Invalid", "code": 422}),
        );
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["lastHandledBackupNow"], "t3");
        assert_eq!(status["lastFailure"]["reason"], "JobRejected");
        assert!(
            status["lastFailure"]["message"]
                .as_str()
                .unwrap()
                .contains("nodeSelector"),
            "{status}"
        );
        assert_eq!(condition(&status, "Ready")["status"], "False");
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupFailed");
        req.echo();
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    fn active_job_with_stuck_pod(started: &str) -> (serde_json::Value, serde_json::Value) {
        let job = build_job(
            &fixtures::target(),
            &RunRequest::backup_now("t1"),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap();
        let mut job = serde_json::to_value(job).unwrap();
        job["status"] = json!({"active": 1, "startTime": started});
        let name = job["metadata"]["name"].as_str().unwrap().to_owned();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-x"), "namespace": "shop", "creationTimestamp": started,
                         "labels": {"batch.kubernetes.io/job-name": name}},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "run", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": "secret \"app-db-backup\" not found"}}}]}});
        (job, pod)
    }

    #[tokio::test]
    async fn a_pod_that_cannot_start_shows_at_once_and_is_stopped_after_the_limit() {
        let (ctx, mut api, clock, _registry) = fixtures::context();
        let started = fixtures::now() - SignedDuration::from_secs(20);
        let (job, pod) = active_job_with_stuck_pod(&started.to_string());
        let job_name = job["metadata"]["name"].as_str().unwrap().to_owned();
        ctx.cache.seed_jobs(&[job]);
        ctx.cache.seed_pods(&[pod]);
        let reconciled = tokio::spawn(reconcile(Arc::new(observed_target()), ctx.clone()));
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        let reachable = condition(&status, "Reachable");
        assert_eq!(reachable["status"], "False");
        assert_eq!(reachable["reason"], "SecretNotFound");
        assert!(
            reachable["message"]
                .as_str()
                .unwrap()
                .contains(r#"secret "app-db-backup" not found"#),
            "{reachable}"
        );
        assert_eq!(condition(&status, "Ready")["status"], "False");
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "RunCannotStart");
        req.echo();
        let action = reconciled.await.unwrap().unwrap();
        assert!(
            action == Action::requeue(Duration::from_secs(30)),
            "{action:?}"
        );

        // Past the limit: the run is recorded as failed with the pod's reason, then its
        // Job is deleted so it no longer holds the claim.
        clock.set(started + status::START_FAILURE_LIMIT + SignedDuration::from_secs(1));
        let stuck_target = with_status(observed_target(), &status);
        let reconciled = tokio::spawn(reconcile(Arc::new(stuck_target), ctx));
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["lastBackup"]["outcome"], "Failed");
        assert_eq!(status["lastBackup"]["reason"], "SecretNotFound");
        assert_eq!(status["lastBackup"]["job"], job_name.as_str());
        req.respond(
            200,
            serde_json::to_value(with_status(fixtures::target(), &status)).unwrap(),
        );
        let req = api
            .expect(Method::DELETE, &format!("{JOBS}/{job_name}"))
            .await;
        req.respond(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupFailed");
        req.echo();
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[test]
    fn history_is_bounded_and_jobs_of_deleted_schedules_go() {
        let defaults = crate::jobs::JobDefaults::default();
        let target = fixtures::target();
        let finished = |request: RunRequest, at: &str| -> RunJob {
            let job = build_job(&target, &request, &defaults).unwrap();
            let job: Job =
                serde_json::from_value(finish_job(serde_json::to_value(job).unwrap(), true, at))
                    .unwrap();
            RunJob::from_job(&job)
        };
        let mut jobs = Vec::new();
        for i in 0..5 {
            jobs.push(finished(
                RunRequest::backup_now(format!("t{i}")),
                &format!("2030-01-01T00:0{i}:00Z"),
            ));
        }
        let gone = finished(
            RunRequest::scheduled("gone", fixtures::now(), None, None),
            "2030-01-01T01:00:00Z",
        );
        let live = finished(
            RunRequest::scheduled("nightly", fixtures::now(), None, None),
            "2030-01-01T01:00:00Z",
        );
        jobs.push(gone.clone());
        jobs.push(live.clone());
        let mut status = BackupTargetStatus::default();
        for job in &jobs {
            status.recent_backups.push(crate::api::BackupRecord {
                outcome: crate::api::RunOutcome::Succeeded,
                start_time: None,
                completion_time: None,
                artifact: None,
                size_bytes: None,
                size: None,
                sha256: None,
                duration_seconds: None,
                job: Some(job.name.clone()),
                schedule: None,
                reason: None,
                message: None,
            });
        }
        let exists = |s: &str| Some(s == "nightly");
        let names: Vec<String> = jobs_to_delete(&jobs, &status, &exists)
            .into_iter()
            .map(|j| j.name.clone())
            .collect();
        let expected: Vec<String> = [&jobs[1], &jobs[0], &gone]
            .into_iter()
            .map(|j| j.name.clone())
            .collect();
        assert_eq!(names, expected);
        // Before the schedule caches are synced nothing is assumed gone.
        let unknown = |_: &str| None;
        assert_eq!(jobs_to_delete(&jobs, &status, &unknown).len(), 2);
    }

    #[test]
    fn a_disallowed_plugin_is_named_with_the_allowed_ones() {
        let target = fixtures::target();
        let check = check_config(&target.spec.plugin, Some(&["http".to_owned()]));
        match check {
            ConfigCheck::NotAllowed(message) => {
                assert!(
                    message.contains("postgres") && message.contains("allowed: http"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(check_config(&target.spec.plugin, None), ConfigCheck::Valid);
    }

    #[test]
    fn probes_run_on_annotation_generation_change_and_interval() {
        let now = fixtures::now();
        let mut target = observed_target();
        let plan_probe = |target: &BackupTarget, active: bool, now: Timestamp| {
            plan_probe(target, target.status.as_ref().unwrap(), active, now)
        };
        assert_eq!(
            plan_probe(&target, false, now),
            (None, None),
            "nothing due without an interval"
        );
        target.metadata.generation = Some(2);
        assert_eq!(plan_probe(&target, false, now).0.unwrap().token, "gen-2");
        // The status the reconcile just recorded says generation 2 was probed, though
        // the cached target does not show it yet: no second probe.
        let mut recorded = target.status.clone().unwrap();
        recorded.probed_generation = Some(2);
        assert_eq!(
            super::plan_probe(&target, &recorded, false, now),
            (None, None)
        );
        target.metadata.generation = Some(1);
        target
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_PROBE_NOW.into(), "x".into());
        let plan = plan_probe(&target, false, now).0.unwrap();
        assert_eq!(plan.handles_probe_now.as_deref(), Some("x"));
        target.status.as_mut().unwrap().last_handled_probe_now = Some("x".into());
        target.spec.probe = Some(crate::api::ProbeSettings {
            interval: Some("1h".into()),
        });
        target.status.as_mut().unwrap().last_probe_time =
            Some(status::time(now - SignedDuration::from_mins(30)));
        let (plan, wait) = plan_probe(&target, false, now);
        assert_eq!((plan, wait), (None, Some(Duration::from_secs(1800))));
        target.status.as_mut().unwrap().last_probe_time =
            Some(status::time(now - SignedDuration::from_mins(61)));
        assert!(
            plan_probe(&target, false, now)
                .0
                .unwrap()
                .token
                .starts_with("every-")
        );
        assert_eq!(
            plan_probe(&target, true, now),
            (None, None),
            "not while a probe runs, and no timer: the probe's end wakes the target"
        );

        // A cleared start failure replaced the last probe's answer: probe again, once
        // per clearing (the token is the condition's transition time).
        target.spec.probe = None;
        let cleared_at = now - SignedDuration::from_mins(1);
        let conditions = &mut target.status.as_mut().unwrap().conditions;
        conditions.retain(|c| c.type_ != crate::api::conditions::REACHABLE);
        conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: crate::api::conditions::REACHABLE.into(),
            status: "Unknown".into(),
            reason: status::condition_reasons::REPROBING.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: status::time(cleared_at),
        });
        let plan = plan_probe(&target, false, now).0.unwrap();
        assert_eq!(plan.token, format!("again-{}", cleared_at.as_second()));
        assert_eq!(plan_probe(&target, true, now), (None, None), "a probe runs");
    }

    /// A probe stopped because its own pod could not start keeps its answer and is tried
    /// again with a backoff (as long as the target had been failing, 5 minutes to an hour),
    /// not at once: at once retried such a target every 5 minutes for as long as it lasted.
    #[test]
    fn a_probe_stopped_before_its_pod_started_is_retried_with_a_backoff() {
        let now = fixtures::now();
        let mins = SignedDuration::from_mins;
        let stopped_answer = |failing_since: Timestamp| {
            let stopped = status::stuck_run(
                &fixtures::active_probe("t1-p-1", failing_since),
                &status::StartFailure {
                    job: String::new(),
                    reason: "SecretNotFound".into(),
                    message: r#"secret "app-db-backup" not found"#.into(),
                },
                now,
            )
            .unwrap();
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: crate::api::conditions::REACHABLE.into(),
                status: "False".into(),
                reason: stopped.reason.unwrap(),
                message: stopped.message.unwrap(),
                observed_generation: Some(1),
                last_transition_time: status::time(failing_since),
            }
        };
        // (failing before the last probe was recorded, since it was recorded, interval,
        //  expected plan token or wait)
        let retry = |last: Timestamp| Some(format!("retry-{}", last.as_second()));
        #[allow(clippy::type_complexity)]
        let cases: [(
            SignedDuration,
            SignedDuration,
            Option<&str>,
            (Option<String>, Option<u64>),
        ); 7] = [
            (mins(5), mins(1), None, (None, Some(240))),
            (mins(5), mins(5), None, (retry(now - mins(5)), None)),
            (mins(15), mins(10), None, (None, Some(300))),
            (mins(15), mins(15), None, (retry(now - mins(15)), None)),
            (mins(600), mins(59), None, (None, Some(60))),
            (mins(600), mins(60), None, (retry(now - mins(60)), None)),
            // An interval due first probes as the interval says.
            (
                mins(600),
                mins(30),
                Some("20m"),
                (Some("every".into()), Some(1200)),
            ),
        ];
        for (failing, since, interval, want) in cases {
            let last = now - since;
            let mut target = observed_target();
            target.spec.probe = interval.map(|i| crate::api::ProbeSettings {
                interval: Some(i.into()),
            });
            let status = target.status.as_mut().unwrap();
            status.last_probe_time = Some(status::time(last));
            status
                .conditions
                .retain(|c| c.type_ != crate::api::conditions::REACHABLE);
            status.conditions.push(stopped_answer(last - failing));
            let (plan, wait) = plan_probe(&target, target.status.as_ref().unwrap(), false, now);
            let token = plan.map(|p| {
                if p.token.starts_with("every-") {
                    "every".to_owned()
                } else {
                    p.token
                }
            });
            assert_eq!(
                (token, wait.map(|w| w.as_secs())),
                want,
                "failing {failing:?}, recorded {since:?} ago, interval {interval:?}"
            );
            assert_eq!(
                plan_probe(&target, target.status.as_ref().unwrap(), true, now),
                (None, None),
                "not while a probe runs"
            );
        }
    }

    /// A deleted target leaves no error backoff behind: none kept for every target that
    /// ever failed, and one made again under the same name starts afresh.
    #[tokio::test]
    async fn forgetting_a_deleted_target_drops_its_error_backoff() {
        let (ctx, _api, _clock, _registry) = fixtures::context();
        let key = super::super::key_of::<BackupTarget>("shop", "t1");
        ctx.backoff(key.clone());
        assert_eq!(ctx.backoff(key.clone()), super::super::error_backoff(2));
        forget(&ctx, "shop", "t1");
        assert_eq!(
            ctx.backoff(key),
            super::super::error_backoff(1),
            "the count starts again"
        );
    }

    #[test]
    fn probe_intervals_parse_like_go_durations() {
        assert_eq!(parse_interval("30m"), Some(SignedDuration::from_mins(30)));
        assert_eq!(parse_interval("1h30m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_interval("1.5h"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_interval("90s"), Some(SignedDuration::from_secs(90)));
        assert_eq!(parse_interval(""), None);
        assert_eq!(parse_interval("5 minutes"), None);
        assert_eq!(parse_interval("10"), None);
    }
}
