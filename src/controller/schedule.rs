//! The BackupSchedule reconciler: at each tick, one backup Job per selected target.
//!
//! Observe → plan → apply → record: parse the cron expression and time zone; read the
//! selected targets and the schedule's Jobs from the caches (no API read); [`decide`] what
//! the tick calls for; build each target's run with [`TickPlanner`] and decide them all at
//! once with [`runs::plan_start`] through the cache (one writer per target, concurrency
//! policy, ReadWriteOnce claims); create the Jobs in parallel, each target on its own (a
//! rejected Job is recorded on its target and never stops the others); apply the Job
//! history limits; write the status if it changed; requeue at the next tick.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{BackupSchedule, BackupScheduleStatus, BackupTarget, conditions};
use crate::jobs::{RunKind as JobRunKind, RunRequest, Trigger, build_job};
use crate::schedule::{CronSchedule, TickDecision, decide, requeue_after};

use super::cache::{DEFER_LIMIT, Deferred, RunJob};
use super::events::{self, PlannedEvent, reasons};
use super::runs::{self, StartDecision, StartRequest, StartTrigger, WaitReason};
use super::status::{self, JobState, upsert_condition};
use super::{Context, Error};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "backupschedule";
/// How long a run waiting for a ReadWriteOnce claim waits before looking again.
pub const CLAIM_RETRY: Duration = Duration::from_secs(15);
/// Default of `successfulJobsHistoryLimit` and `failedJobsHistoryLimit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 3;

/// Reasons of the schedule's `Ready` condition.
pub mod ready_reasons {
    /// The schedule is valid and active.
    pub const SCHEDULED: &str = "Scheduled";
    /// `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.targets` is not a valid label selector.
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
}

/// The instant from which ticks count: the later of the creation time and the moment the
/// schedule last became active (its `Ready` condition turning `True`; when it turns `True`
/// in this reconcile, now). Ticks before it never run, so resuming does not fire missed ticks.
pub fn active_since(schedule: &BackupSchedule, will_be_ready: bool, now: Timestamp) -> Timestamp {
    let created = schedule
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let ready = schedule
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY));
    let became_active = match ready {
        Some(c) if c.status == "True" => c.last_transition_time.0,
        Some(_) if will_be_ready => now,
        _ => created,
    };
    became_active.max(created)
}

/// How many of `targets` have a Job of `schedule`'s run at `tick` among `own_jobs` (the
/// schedule's Jobs), found by the run's Job name, which is the same for the same run
/// whoever builds it.
pub fn targets_with_tick_job(
    schedule: &str,
    tick: Timestamp,
    targets: &[Arc<BackupTarget>],
    own_jobs: &[RunJob],
) -> usize {
    let request = RunRequest::scheduled(schedule, tick, None, None);
    let names: HashSet<&str> = own_jobs.iter().map(|job| job.name.as_str()).collect();
    targets
        .iter()
        .filter(|target| names.contains(crate::jobs::job_name(target, &request).as_str()))
        .count()
}

/// Finished Jobs beyond the history limits: per target, the oldest successful ones past
/// `successful_limit` and failed ones past `failed_limit`. A Job whose run its target has
/// not recorded yet is kept (its result would be lost).
pub fn history_to_delete<'a>(
    jobs: &'a [RunJob],
    targets: &[Arc<BackupTarget>],
    successful_limit: usize,
    failed_limit: usize,
) -> Vec<&'a RunJob> {
    let mut by_target: BTreeMap<&str, Vec<&RunJob>> = BTreeMap::new();
    for job in jobs {
        if job.state == JobState::Active || job.deleting {
            continue;
        }
        by_target.entry(job.target.as_str()).or_default().push(job);
    }
    let mut out = Vec::new();
    for (target, jobs) in by_target {
        let known = targets.iter().find(|t| t.name_any() == target);
        for (state, limit) in [
            (JobState::Succeeded, successful_limit),
            (JobState::Failed, failed_limit),
        ] {
            let mut of_state: Vec<&RunJob> =
                jobs.iter().copied().filter(|j| j.state == state).collect();
            of_state.sort_by_key(|j| std::cmp::Reverse(status::job_finish_time(j)));
            out.extend(of_state.into_iter().skip(limit).filter(|job| {
                known.is_none_or(|t| {
                    !super::status::may_be_unrecorded(&t.status.clone().unwrap_or_default(), job)
                })
            }));
        }
    }
    out
}

fn limit(value: Option<i32>) -> usize {
    value.map_or(DEFAULT_HISTORY_LIMIT, |v| usize::try_from(v).unwrap_or(0))
}

/// Reconcile one BackupSchedule.
pub async fn reconcile(schedule: Arc<BackupSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(CONTROLLER);
    let name = schedule.name_any();
    let namespace = schedule
        .namespace()
        .ok_or_else(|| Error::MissingNamespace {
            kind: "BackupSchedule",
            name: name.clone(),
        })?;
    if !ctx.may_write() {
        // Not (or no longer) the leader: the client would refuse every write anyway.
        tracing::debug!(name, "not holding the leader fence; skipping the reconcile");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let key = super::object_key(schedule.as_ref());
    if schedule.metadata.deletion_timestamp.is_some() {
        // Being deleted (another controller's finalizer holds it): start nothing, and drop
        // its next-run gauge so the "schedule not ready" alert does not fire for it.
        ctx.metrics.schedule_deleted(&namespace, &name);
        tracing::debug!(
            namespace,
            name,
            "schedule is being deleted; its metrics are removed"
        );
        ctx.succeeded(&key);
        return Ok(Action::await_change());
    }
    ctx.cache.wait_synced().await;
    let action = reconcile_inner(&schedule, &ctx, &namespace, &name).await?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Drop what the operator keeps of a deleted schedule: its metric series and any status
/// written that the cache did not show yet, and its error backoff.
pub fn forget(ctx: &Context, namespace: &str, name: &str) {
    ctx.metrics.schedule_deleted(namespace, name);
    ctx.schedule_statuses
        .forget::<BackupSchedule>(namespace, name);
    ctx.forget_failures::<BackupSchedule>(namespace, name);
}

/// Write the status when it differs from `prev` or was held back, and remember it until
/// the cache shows it ([`super::cache::WrittenStatuses`]).
async fn write_status(
    ctx: &Context,
    schedule: &BackupSchedule,
    prev: &BackupScheduleStatus,
    status: &BackupScheduleStatus,
) -> Result<(), Error> {
    if status == prev && !ctx.schedule_statuses.is_held(schedule) {
        return Ok(());
    }
    let (namespace, name) = (
        schedule.namespace().unwrap_or_default(),
        schedule.name_any(),
    );
    let patch = serde_json::json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupSchedule",
        "status": status,
    });
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.schedule_statuses.wrote(schedule, status);
    Ok(())
}

/// The status of a schedule that cannot run (invalid expression, time zone or selector).
fn invalid_status(
    schedule: &BackupSchedule,
    prev: &BackupScheduleStatus,
    reason: &str,
    message: String,
    now: Timestamp,
) -> BackupScheduleStatus {
    let mut status = prev.clone();
    status.observed_generation = schedule.metadata.generation;
    status.next_schedule_time = None;
    let mut conds = Vec::new();
    upsert_condition(
        &mut conds,
        &prev.conditions,
        conditions::READY,
        "False",
        reason,
        message,
        schedule.metadata.generation,
        now,
    );
    status.conditions = conds;
    status
}

#[tracing::instrument(skip(schedule, ctx))]
async fn reconcile_inner(
    schedule: &BackupSchedule,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let prev = ctx
        .schedule_statuses
        .current(schedule, schedule.status.as_ref());
    let spec = &schedule.spec;

    let cron = match CronSchedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(cron) => cron,
        Err(e) => {
            let status = invalid_status(schedule, &prev, e.reason(), e.to_string(), now);
            write_status(ctx, schedule, &prev, &status).await?;
            ctx.metrics.schedule_observed(namespace, name, None);
            tracing::info!(error = %e, "schedule is invalid; waiting for a change");
            return Ok(Action::await_change());
        }
    };
    let selector = match Selector::try_from(spec.targets.clone()) {
        Ok(selector) => selector,
        Err(e) => {
            let message = format!("spec.targets is not a valid label selector: {e}");
            let status = invalid_status(
                schedule,
                &prev,
                ready_reasons::INVALID_SELECTOR,
                message,
                now,
            );
            write_status(ctx, schedule, &prev, &status).await?;
            ctx.metrics.schedule_observed(namespace, name, None);
            return Ok(Action::await_change());
        }
    };

    // Decide the tick (from the clock and the status alone).
    let since = active_since(schedule, !spec.suspend, now);
    let deadline = crate::schedule::starting_deadline(spec.starting_deadline_seconds);
    let last = prev.last_schedule_time.as_ref().map(|t| t.0);
    let decision = decide(&cron, last, since, now, deadline, spec.suspend);

    // With no tick to run, recording progress waits for the Job creations in flight.
    if matches!(
        decision,
        TickDecision::Wait { .. } | TickDecision::Suspended { .. }
    ) && ctx.defer_while_creating(Deferred::Schedule(namespace.to_owned(), name.to_owned()))
    {
        tracing::debug!(name, "waiting for the Job creations in flight");
        return Ok(ctx.requeue(requeue_after(now, decision.next()).min(DEFER_LIMIT)));
    }

    // Observe, from the caches.
    let targets = ctx.cache.targets_selected(schedule, &selector);
    let own_jobs = ctx.cache.jobs_of_schedule(namespace, name);

    let mut status = prev.clone();
    let mut schedule_events = Vec::new();
    let mut requeue = requeue_after(now, decision.next());
    // Jobs this reconcile created, active from now on (the watch shows them shortly).
    let mut started: Vec<(String, Option<String>)> = Vec::new();
    match decision {
        TickDecision::Run { tick, .. } => {
            let outcome = apply_tick(ctx, schedule, &targets, tick).await;
            started = outcome.started;
            if outcome.all_done {
                status.last_schedule_time = Some(status::time(tick));
            } else {
                requeue = requeue.min(CLAIM_RETRY);
            }
        }
        TickDecision::Missed { tick, .. } => {
            // An operator that created the tick's Jobs and stopped before recording the
            // tick (its status waits for the other ticks' creations) left them behind:
            // those runs were started, not missed.
            let started = targets_with_tick_job(name, tick, &targets, &own_jobs);
            if started > 0 {
                status.last_schedule_time = Some(status::time(tick));
                tracing::info!(%tick, started, "the tick's Jobs exist: recorded as run");
            }
            let missed = started == 0 || started < targets.len();
            if missed && prev.last_missed_time.as_ref().map(|t| t.0) != Some(status::time(tick).0) {
                status.last_missed_time = Some(status::time(tick));
                let what = if started == 0 {
                    format!("the tick at {tick} was not run")
                } else {
                    format!(
                        "{} of the {} selected targets were not run at the tick at {tick}",
                        targets.len() - started,
                        targets.len()
                    )
                };
                schedule_events.push(PlannedEvent::warning(
                    reasons::SCHEDULE_MISSED,
                    format!(
                        "{what}: it is more than {}s old (startingDeadlineSeconds)",
                        deadline.as_secs()
                    ),
                ));
                tracing::warn!(%tick, started, "missed a tick beyond the starting deadline");
            }
        }
        TickDecision::Wait { .. } | TickDecision::Suspended { .. } => {}
    }

    // History limits, over this schedule's own Jobs.
    let doomed = history_to_delete(
        &own_jobs,
        &targets,
        limit(spec.successful_jobs_history_limit),
        limit(spec.failed_jobs_history_limit),
    );
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    for job in doomed.iter().map(|j| j.name.as_str()) {
        super::delete_job(&jobs_api, job).await?;
        tracing::debug!(job, "deleted a finished Job beyond the history limit");
    }

    // Record.
    status.observed_generation = schedule.metadata.generation;
    status.selected_targets = Some(u32::try_from(targets.len()).unwrap_or(u32::MAX));
    status.next_schedule_time = decision.next().map(status::time);
    let newest_success = own_jobs
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .filter_map(status::job_finish_time)
        .max();
    if let Some(success) = newest_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|t| t.0 < status::time(success).0)
    {
        status.last_successful_time = Some(status::time(success));
    }
    // The created Jobs count as active at once: their watch events then change nothing,
    // so a tick costs one status write, not one per Job.
    let mut active: Vec<ObjectReference> = own_jobs
        .iter()
        .filter(|j| j.state == JobState::Active && !j.deleting)
        .map(|j| (j.name.clone(), j.uid.clone()))
        .filter(|(name, _)| !started.iter().any(|(s, _)| s == name))
        .chain(started.iter().cloned())
        .map(|(name, uid)| ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            uid,
            ..ObjectReference::default()
        })
        .collect();
    active.sort_by(|a, b| a.name.cmp(&b.name));
    status.active = active;
    let (ready, reason, message) = if spec.suspend {
        ("False", ready_reasons::SUSPENDED, "spec.suspend is true: no run starts; ticks passed while suspended do not run on resume".to_owned())
    } else {
        (
            "True",
            ready_reasons::SCHEDULED,
            format!(
                "{:?} in {} selects {} target(s)",
                spec.schedule,
                cron.time_zone_name(),
                targets.len()
            ),
        )
    };
    let mut conds = Vec::new();
    upsert_condition(
        &mut conds,
        &prev.conditions,
        conditions::READY,
        ready,
        reason,
        message,
        schedule.metadata.generation,
        now,
    );
    status.conditions = conds;
    // When every schedule fires on the same minute, a status write here would go to the
    // API server between the Job creations of the others: the tick's status is held,
    // and written once they are done (a restarted operator finds the Jobs it created and
    // creates none again).
    let hold = !started.is_empty()
        && ctx.job_creates.tick_creations_pending()
        && ctx.defer_while_creating(Deferred::Schedule(namespace.to_owned(), name.to_owned()));
    if hold {
        ctx.schedule_statuses.hold(schedule, &status);
        tracing::debug!(
            name,
            "tick status held until the Job creations in flight end"
        );
        requeue = requeue.min(DEFER_LIMIT);
    } else {
        write_status(ctx, schedule, &prev, &status).await?;
    }
    if !schedule_events.is_empty() {
        events::publish(&ctx.recorder(), &schedule.object_ref(&()), &schedule_events).await;
    }
    ctx.metrics.schedule_observed(
        namespace,
        name,
        if spec.suspend { None } else { decision.next() },
    );
    Ok(ctx.requeue(requeue))
}

/// What a tick asks for one target: the run, and the Job that would carry it.
#[derive(Debug)]
pub struct TargetStep {
    /// The run to decide about with [`runs::plan_start`].
    pub start: StartRequest,
    /// The Job the run would use (built from the spec), or why it cannot be built.
    pub job: Result<Job, String>,
}

/// Builds a tick's run for each target (pure); the decisions are taken for the whole
/// tick at once by [`super::cache::Cache::plan_starts`].
pub struct TickPlanner<'a> {
    schedule: &'a BackupSchedule,
    tick: Timestamp,
    defaults: &'a crate::jobs::JobDefaults,
}

impl<'a> TickPlanner<'a> {
    /// A planner for `tick` of `schedule`.
    pub fn new(
        schedule: &'a BackupSchedule,
        tick: Timestamp,
        defaults: &'a crate::jobs::JobDefaults,
    ) -> Self {
        TickPlanner {
            schedule,
            tick,
            defaults,
        }
    }

    /// The run the tick asks for `target`, whose claim is single-node or not.
    pub fn step(&self, target: &BackupTarget, claim_single_node: bool) -> TargetStep {
        let spec = &self.schedule.spec;
        let schedule_name = self.schedule.name_any();
        let request = RunRequest {
            kind: JobRunKind::Backup,
            trigger: Trigger::Schedule {
                name: schedule_name.clone(),
                tick: self.tick,
                retention: spec.retention.clone(),
                time_zone: spec.time_zone.clone(),
            },
        };
        let job = build_job(target, &request, self.defaults).map_err(|e| e.to_string());
        let config_invalid = target
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == conditions::CONFIG_VALID)
            })
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone());
        TargetStep {
            start: StartRequest {
                target: target.name_any(),
                job: crate::jobs::job_name(target, &request),
                trigger: StartTrigger::Schedule {
                    name: schedule_name,
                    policy: spec.concurrency_policy,
                },
                claim_single_node,
                claim: target.spec.storage.claim_name.clone(),
                suspended: target.spec.suspend,
                config_invalid,
                job_exists: false,
            },
            job,
        }
    }
}

/// How applying a tick went.
struct TickOutcome {
    /// Every target is done for this tick (started, skipped, already started, or
    /// rejected); `false` when some wait or hit a transient API error.
    all_done: bool,
    /// The Jobs created, with their uids.
    started: Vec<(String, Option<String>)>,
}

/// What happened to one target's run in a tick.
enum StepOutcome {
    /// Its Job was created now (name, uid).
    Created(String, Option<String>),
    /// Its Job exists already (an earlier attempt of this tick).
    Exists,
    /// Not run for this tick.
    Skipped(runs::SkipReason),
    /// Waits for another run.
    Waiting(WaitReason),
    /// The API server refused the Job, it cannot be built, or it cannot be placed
    /// (the application's claim): retrying cannot help. The condition reason and the
    /// message, which says what to fix.
    Rejected(&'static str, String),
    /// A transient failure: the tick tries again.
    Failed,
}

/// Apply a tick: decide every target's run at once, create the Jobs in parallel (one
/// target's failure never stops the others), then tell each target what happened.
async fn apply_tick(
    ctx: &Context,
    schedule: &BackupSchedule,
    targets: &[Arc<BackupTarget>],
    tick: Timestamp,
) -> TickOutcome {
    let namespace = schedule.namespace().unwrap_or_default();
    let planner = TickPlanner::new(schedule, tick, &ctx.settings.job_defaults);
    let steps: Vec<TargetStep> = targets
        .iter()
        .map(|t| {
            let single = ctx
                .cache
                .claim_single_node(&namespace, &t.spec.storage.claim_name);
            planner.step(t, single)
        })
        .collect();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut outcomes: Vec<Option<StepOutcome>> = steps.iter().map(|_| None).collect();
    let mut todo: Vec<usize> = (0..steps.len()).collect();
    // Rounds: a run that waits for a run of this tick whose Job was then refused is
    // decided again at once, so a refused Job never makes the next target wait.
    while !todo.is_empty() {
        let decisions = ctx.cache.plan_starts(
            &namespace,
            todo.iter().map(|&i| steps[i].start.clone()).collect(),
        );
        let results: Vec<(usize, StepOutcome)> =
            futures::stream::iter(todo.into_iter().zip(decisions))
                .map(|(i, decision)| {
                    let step = &steps[i];
                    let jobs_api = &jobs_api;
                    let namespace = namespace.as_str();
                    async move {
                        (
                            i,
                            apply_step(ctx, jobs_api, namespace, step, decision).await,
                        )
                    }
                })
                .buffered(super::JOB_CREATE_CONCURRENCY)
                .collect()
                .await;
        let refused = results
            .iter()
            .any(|(_, o)| matches!(o, StepOutcome::Rejected(..)));
        todo = results
            .iter()
            .filter(|(_, o)| matches!(o, StepOutcome::Waiting(_)))
            .map(|(i, _)| *i)
            .collect();
        for (i, outcome) in results {
            outcomes[i] = Some(outcome);
        }
        if !refused {
            break;
        }
    }

    let schedule_name = schedule.name_any();
    let prefix = format!("schedule {schedule_name}, tick {tick}");
    let mut all_done = true;
    let mut started = Vec::new();
    let mut tick_events = Vec::new();
    for (target, outcome) in targets.iter().zip(outcomes.into_iter().flatten()) {
        let target_name = target.name_any();
        let event = match outcome {
            StepOutcome::Exists => None,
            StepOutcome::Created(job, uid) => {
                record_acceptance(ctx, target).await;
                let event = PlannedEvent::normal(
                    reasons::BACKUP_STARTED,
                    format!("Job {job} started by schedule {schedule_name} for tick {tick}"),
                );
                started.push((job, uid));
                Some(event)
            }
            StepOutcome::Skipped(why) => {
                tracing::info!(target = target_name, reason = %why, "tick skipped for a target");
                Some(PlannedEvent::warning(
                    reasons::BACKUP_SKIPPED,
                    format!("{prefix}: {why}"),
                ))
            }
            StepOutcome::Waiting(why) => {
                all_done = false;
                tracing::info!(target = target_name, reason = %why, "run waits");
                let reason = match why {
                    WaitReason::ClaimBusy { .. } => reasons::WAITING_FOR_CLAIM,
                    WaitReason::TargetBusy { .. } => reasons::WAITING_FOR_RUN,
                };
                Some(PlannedEvent::normal(
                    reason,
                    format!("{prefix}: waiting: {why}"),
                ))
            }
            StepOutcome::Rejected(reason, message) => {
                record_rejection(ctx, target, reason, &prefix, &message).await;
                None
            }
            StepOutcome::Failed => {
                all_done = false;
                None
            }
        };
        if let Some(event) = event {
            tick_events.push((target.object_ref(&()), event));
        }
    }
    // After the Jobs, and behind them: a tick of thousands of targets creates its Jobs
    // first, its events trickle out after.
    events::publish_later(ctx, tick_events).await;
    TickOutcome { all_done, started }
}

/// Carry out one target's decision: stop the runs it replaces, create its Job.
async fn apply_step(
    ctx: &Context,
    jobs_api: &Api<Job>,
    namespace: &str,
    step: &TargetStep,
    decision: StartDecision,
) -> StepOutcome {
    let target = step.start.target.as_str();
    let replace = match decision {
        StartDecision::Exists => return StepOutcome::Exists,
        StartDecision::Skip(why) => return StepOutcome::Skipped(why),
        StartDecision::Wait(why) => return StepOutcome::Waiting(why),
        StartDecision::Create { replace } => replace,
    };
    let job = match &step.job {
        Ok(job) => job,
        Err(message) => {
            ctx.cache.release(namespace, &step.start.job);
            return StepOutcome::Rejected(
                reasons::JOB_REJECTED,
                format!("{message}; fix spec.job of the target"),
            );
        }
    };
    for old in &replace {
        if let Err(e) = super::delete_job(jobs_api, old).await {
            tracing::warn!(target, job = old, error = %e, "cannot stop the running Job (concurrencyPolicy Replace); retrying");
            ctx.cache.release(namespace, &step.start.job);
            return StepOutcome::Failed;
        }
        tracing::info!(
            target,
            job = old,
            "stopped the running Job (concurrencyPolicy Replace)"
        );
    }
    let job_name = step.start.job.clone();
    match super::create_job(ctx, jobs_api, job, super::CreateFor::Tick).await {
        Ok(created) => {
            crate::fault::point("schedule-after-create");
            tracing::info!(target, job = job_name, "created scheduled backup Job");
            StepOutcome::Created(job_name, created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => StepOutcome::Exists,
        Err(kube::Error::Api(s)) if super::is_rejection(s.code) => {
            let (reason, message) = super::refusal(&job_name, &s);
            StepOutcome::Rejected(reason, message)
        }
        Err(e) => {
            tracing::warn!(target, job = job_name, error = %e, "cannot create the Job; retrying");
            StepOutcome::Failed
        }
    }
}

/// Field manager of the `JobsAccepted` condition that schedules write on targets (the
/// target reconciler owns, and never sends, the rest of the target's status).
pub const SCHEDULES_FIELD_MANAGER: &str = "stowage-controller-schedules";

/// Tell the target, with an event and its `JobsAccepted` condition, that its Job was
/// refused. Best effort: a failure to record is logged, never stops the tick.
async fn record_rejection(
    ctx: &Context,
    target: &BackupTarget,
    reason: &'static str,
    prefix: &str,
    message: &str,
) {
    tracing::warn!(
        target = target.name_any(),
        error = message,
        "run not started: Job rejected"
    );
    events::publish(
        &ctx.recorder(),
        &target.object_ref(&()),
        &[PlannedEvent::warning(
            reason,
            format!("{prefix}: {message}"),
        )],
    )
    .await;
    set_jobs_accepted(ctx, target, "False", reason, format!("{prefix}: {message}")).await;
}

async fn record_acceptance(ctx: &Context, target: &BackupTarget) {
    let accepted = target.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == conditions::JOBS_ACCEPTED)
    });
    // Written only to clear a refusal: the condition is absent until a Job is refused,
    // so a tick of thousands of targets costs no status write.
    if accepted.is_none_or(|c| c.status == "True") {
        return;
    }
    set_jobs_accepted(
        ctx,
        target,
        "True",
        "Accepted",
        "the API server accepted the latest scheduled Job".to_owned(),
    )
    .await;
}

async fn set_jobs_accepted(
    ctx: &Context,
    target: &BackupTarget,
    state: &str,
    reason: &str,
    message: String,
) {
    let prev = target
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conds = Vec::new();
    upsert_condition(
        &mut conds,
        &prev,
        conditions::JOBS_ACCEPTED,
        state,
        reason,
        message,
        target.metadata.generation,
        ctx.clock.now(),
    );
    if prev.iter().any(|c| Some(c) == conds.first()) {
        return;
    }
    let patch = serde_json::json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "status": {"conditions": conds},
    });
    let api: Api<BackupTarget> =
        Api::namespaced(ctx.client.clone(), &target.namespace().unwrap_or_default());
    if let Err(e) = api
        .patch_status(
            &target.name_any(),
            &PatchParams::apply(SCHEDULES_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(target = target.name_any(), error = %e, "cannot record JobsAccepted on the target");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{self, rwo_claim};
    use http::Method;
    use serde_json::json;

    const JOBS: &str = "/apis/batch/v1/namespaces/shop/jobs";
    const STATUS: &str =
        "/apis/stowage.dev/v1alpha1/namespaces/shop/backupschedules/nightly/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn schedule(time_zone: &str) -> BackupSchedule {
        serde_json::from_value(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly", "namespace": "shop", "uid": "uid-nightly", "generation": 1,
                         "creationTimestamp": "2030-02-01T00:00:00Z"},
            "spec": {"schedule": "30 2 * * *", "timeZone": time_zone, "targets": {"matchLabels": {"tier": "db"}}}
        }))
        .unwrap()
    }

    fn respond_schedule(req: fixtures::Received, schedule: &BackupSchedule) -> serde_json::Value {
        let status = req.body["status"].clone();
        let mut full = serde_json::to_value(schedule).unwrap();
        full["status"] = status.clone();
        req.respond(200, full);
        status
    }

    #[tokio::test]
    async fn a_due_tick_creates_one_job_per_target_and_records_the_tick() {
        let (ctx, mut api, _clock, registry) = fixtures::context();
        let schedule = schedule("UTC");
        // Everything is read from the caches: the only requests are writes.
        let mut unselected: BackupTarget = serde_json::from_value(named_target("web-db")).unwrap();
        unselected.metadata.labels = Some([("tier".to_owned(), "web".to_owned())].into());
        ctx.cache.seed_targets(&[fixtures::target(), unselected]);
        ctx.cache.seed_claims(&[rwo_claim()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));

        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(
            req.body["metadata"]["labels"]["stowage.dev/schedule"],
            "nightly"
        );
        assert_eq!(
            req.body["metadata"]["labels"]["stowage.dev/target"],
            "app-db"
        );
        req.echo();
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupStarted");
        req.echo();
        // No status write on the target: JobsAccepted is written only to clear a refusal.
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = respond_schedule(req, &schedule);
        assert_eq!(status["lastScheduleTime"], "2030-03-01T02:30:00Z");
        assert_eq!(status["nextScheduleTime"], "2030-03-02T02:30:00Z");
        assert_eq!(status["selectedTargets"], 1);
        assert_eq!(status["conditions"][0]["reason"], "Scheduled");
        // The created Job is active at once: its watch event will not need a second write.
        assert_eq!(status["active"].as_array().unwrap().len(), 1, "{status}");
        assert_eq!(status["active"][0]["kind"], "Job");

        let action = reconciled.await.unwrap().unwrap();
        let until_next = Duration::from_secs(24 * 3600 - 10).min(crate::schedule::REQUEUE_CAP);
        assert_eq!(action, Action::requeue(until_next));
        let metrics = crate::controller::metrics::render(&registry).unwrap();
        assert!(metrics.contains(r#"stowage_schedule_next_run_timestamp_seconds{namespace="shop",schedule="nightly"} 1898649000.0"#), "{metrics}");
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_tick_holds_its_status_while_other_ticks_create_their_jobs() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let schedule = schedule("UTC");
        ctx.cache.seed_targets(&[fixtures::target()]);
        ctx.cache.seed_claims(&[rwo_claim()]);
        // Another schedule's tick is still creating its Jobs.
        let other_tick = ctx.job_creates.pending(crate::controller::CreateFor::Tick);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        api.expect(Method::POST, JOBS).await.echo();
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupStarted");
        req.echo();
        // No status write yet: it would queue between the other tick's creations.
        let action = tokio::time::timeout(Duration::from_secs(5), reconciled)
            .await
            .expect("the reconcile wrote the status during the other tick's creations")
            .unwrap()
            .unwrap();
        assert_eq!(action, Action::requeue(DEFER_LIMIT));
        assert!(ctx.schedule_statuses.is_held(&schedule));
        let held = ctx.schedule_statuses.current(&schedule, None);
        assert_eq!(
            held.last_schedule_time.map(|t| t.0.to_string()),
            Some("2030-03-01T02:30:00Z".to_owned())
        );

        // The creations end; once the tick is quiet the waiting reconcile runs again and
        // writes the held status: the tick is not decided again, no second Job.
        drop(other_tick);
        tokio::time::sleep(crate::controller::TICK_QUIET).await;
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert_eq!(status["lastScheduleTime"], "2030-03-01T02:30:00Z");
        assert_eq!(status["active"].as_array().unwrap().len(), 1, "{status}");
        reconciled.await.unwrap().unwrap();
        assert!(!ctx.schedule_statuses.is_held(&schedule));
        drop(ctx);
        api.expect_no_more().await;
    }

    fn next_run_gauge(ctx: &Context) -> Option<f64> {
        ctx.metrics
            .next_run
            .get(&crate::controller::metrics::ScheduleLabels {
                namespace: "shop".into(),
                schedule: "nightly".into(),
            })
            .map(|g| g.get())
    }

    #[tokio::test]
    async fn suspending_a_schedule_removes_its_next_run_gauge() {
        let (ctx, mut api, _clock, registry) = fixtures::context();
        ctx.metrics
            .schedule_observed("shop", "nightly", Some(fixtures::now()));
        assert!(next_run_gauge(&ctx).is_some());
        let mut schedule = schedule("UTC");
        schedule.spec.suspend = true;
        ctx.cache.seed_targets(&[fixtures::target()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert_eq!(status["conditions"][0]["reason"], "Suspended");
        reconciled.await.unwrap().unwrap();
        assert_eq!(next_run_gauge(&ctx), None);
        let metrics = crate::controller::metrics::render(&registry).unwrap();
        assert!(
            !metrics.contains("stowage_schedule_next_run_timestamp_seconds{"),
            "{metrics}"
        );
        drop(ctx);
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_schedule_being_deleted_starts_nothing_and_loses_its_gauge() {
        let (ctx, api, _clock, _registry) = fixtures::context();
        ctx.metrics
            .schedule_observed("shop", "nightly", Some(fixtures::now()));
        let mut schedule = schedule("UTC");
        // A due tick: without the deletion it would list targets and start Jobs.
        schedule.metadata.deletion_timestamp = Some(status::time(fixtures::now()));
        // Any API request would go unanswered: the reconcile must return without one.
        let action = tokio::time::timeout(
            Duration::from_secs(5),
            reconcile(Arc::new(schedule), ctx.clone()),
        )
        .await
        .expect("the reconcile made an API request")
        .unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(next_run_gauge(&ctx), None);
        drop(ctx);
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_tick_beyond_the_starting_deadline_is_reported_missed_once() {
        let (ctx, mut api, clock, _registry) = fixtures::context();
        clock.set("2030-03-01T05:00:00Z".parse().unwrap());
        let schedule = schedule("UTC");
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert_eq!(status["lastMissedTime"], "2030-03-01T02:30:00Z");
        assert!(status.get("lastScheduleTime").is_none());
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "ScheduleMissed");
        assert_eq!(req.body["type"], "Warning");
        req.echo();
        reconciled.await.unwrap().unwrap();

        let mut again = schedule.clone();
        again.status = Some(serde_json::from_value(status).unwrap());
        let reconciled = tokio::spawn(reconcile(Arc::new(again), ctx));
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    /// The Job of `schedule`'s run of `target` at `tick`, built with the default settings.
    fn scheduled_job(target: &BackupTarget, schedule: &str, tick: &str) -> Job {
        build_job(
            target,
            &RunRequest::scheduled(schedule, tick.parse().unwrap(), None, None),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap()
    }

    /// The tick's Job of `target`, as the API server would show it while it runs.
    fn tick_job(target: &BackupTarget, tick: &str) -> serde_json::Value {
        let mut job = serde_json::to_value(scheduled_job(target, "nightly", tick)).unwrap();
        let uid = format!("uid-{}", job["metadata"]["name"].as_str().unwrap());
        job["metadata"]["uid"] = json!(uid);
        job["status"] = json!({"active": 1});
        job
    }

    #[tokio::test]
    async fn a_tick_whose_jobs_exist_is_recorded_as_run_even_past_its_deadline() {
        // An operator created the tick's Job and stopped before writing the status (it is
        // held while other ticks create their Jobs); its successor comes back after the
        // starting deadline.
        let (ctx, mut api, clock, _registry) = fixtures::context();
        clock.set("2030-03-01T05:00:00Z".parse().unwrap());
        let schedule = schedule("UTC");
        ctx.cache.seed_targets(&[fixtures::target()]);
        ctx.cache
            .seed_jobs(&[tick_job(&fixtures::target(), "2030-03-01T02:30:00Z")]);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert_eq!(
            status["lastScheduleTime"], "2030-03-01T02:30:00Z",
            "{status}"
        );
        assert!(status.get("lastMissedTime").is_none(), "{status}");
        assert_eq!(status["active"].as_array().unwrap().len(), 1, "{status}");
        reconciled.await.unwrap().unwrap();
        // No ScheduleMissed event, no second Job.
        drop(ctx);
        api.expect_no_more().await;
    }

    #[test]
    fn only_the_ticks_own_jobs_count_as_its_runs() {
        let target =
            |name: &str| -> BackupTarget { serde_json::from_value(named_target(name)).unwrap() };
        let tick = "2030-03-01T02:30:00Z";
        let job_of = |target: &BackupTarget, schedule: &str, at: &str| {
            RunJob::from_job(&scheduled_job(target, schedule, at))
        };
        let (a, b) = (target("a-db"), target("b-db"));
        let targets = [Arc::new(a.clone()), Arc::new(b.clone())];
        let cases: [(&str, Vec<RunJob>, usize); 5] = [
            ("no Jobs", vec![], 0),
            ("one target's", vec![job_of(&a, "nightly", tick)], 1),
            (
                "both targets'",
                vec![job_of(&a, "nightly", tick), job_of(&b, "nightly", tick)],
                2,
            ),
            (
                "an earlier tick's",
                vec![job_of(&a, "nightly", "2030-02-28T02:30:00Z")],
                0,
            ),
            ("another schedule's", vec![job_of(&a, "hourly", tick)], 0),
        ];
        for (case, jobs, want) in cases {
            let got = targets_with_tick_job("nightly", tick.parse().unwrap(), &targets, &jobs);
            assert_eq!(got, want, "{case}");
        }
    }

    #[tokio::test]
    async fn a_tick_whose_jobs_exist_for_some_targets_reports_the_others_missed() {
        let (ctx, mut api, clock, _registry) = fixtures::context();
        clock.set("2030-03-01T05:00:00Z".parse().unwrap());
        let schedule = schedule("UTC");
        let targets: Vec<BackupTarget> = ["a-db", "b-db"]
            .map(|n| serde_json::from_value(named_target(n)).unwrap())
            .into();
        ctx.cache.seed_targets(&targets);
        ctx.cache
            .seed_jobs(&[tick_job(&targets[0], "2030-03-01T02:30:00Z")]);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert_eq!(
            status["lastScheduleTime"], "2030-03-01T02:30:00Z",
            "{status}"
        );
        assert_eq!(status["lastMissedTime"], "2030-03-01T02:30:00Z", "{status}");
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "ScheduleMissed");
        let note = req.body["note"].as_str().unwrap_or_default().to_owned();
        assert!(note.contains("1 of the 2 selected targets"), "{note}");
        req.echo();
        reconciled.await.unwrap().unwrap();
        drop(ctx);
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn an_unknown_time_zone_makes_ready_false_and_waits_for_a_change() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let schedule = schedule("Mars/Olympus");
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        let ready = &status["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("UnknownTimeZone"))
        );
        assert!(ready["message"].as_str().unwrap().contains("Mars/Olympus"));
        assert_eq!(reconciled.await.unwrap().unwrap(), Action::await_change());
        api.expect_no_more().await;
    }

    fn named_target(name: &str) -> serde_json::Value {
        let mut target = serde_json::to_value(fixtures::target()).unwrap();
        target["metadata"]["name"] = json!(name);
        target["metadata"]["uid"] = json!(format!("uid-{name}"));
        target
    }

    #[tokio::test]
    async fn a_rejected_job_does_not_stop_the_other_targets_of_the_tick() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let schedule = schedule("UTC");
        let targets = ["a-db", "b-db"].map(|n| serde_json::from_value(named_target(n)).unwrap());
        ctx.cache.seed_targets(&targets);
        ctx.cache.seed_claims(&[rwo_claim()]);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));
        // a-db: the API server refuses its Job.
        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/target"], "a-db");
        req.respond(
            422,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                   "message": "Job.batch \"a-db-b-1\" is invalid: spec.template.spec.nodeSelector: Invalid value"}),
        );
        // b-db shares the ReadWriteOnce claim and waited for a-db's run: it still starts.
        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/target"], "b-db");
        req.echo();
        // Then each target is told.
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "JobRejected");
        assert_eq!(req.body["type"], "Warning");
        assert!(req.body["note"].as_str().unwrap().contains("nodeSelector"));
        req.echo();
        let req = api
            .expect(
                Method::PATCH,
                "/apis/stowage.dev/v1alpha1/namespaces/shop/backuptargets/a-db/status",
            )
            .await;
        let cond = req.body["status"]["conditions"][0].clone();
        assert_eq!(
            (
                cond["type"].as_str(),
                cond["status"].as_str(),
                cond["reason"].as_str()
            ),
            (Some("JobsAccepted"), Some("False"), Some("JobRejected"))
        );
        assert!(cond["message"].as_str().unwrap().contains("nodeSelector"));
        req.respond(200, named_target("a-db"));
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "BackupStarted");
        req.echo();
        // The tick is done: a rejected Job is not retried in a loop.
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert_eq!(status["lastScheduleTime"], "2030-03-01T02:30:00Z");
        reconciled.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_target_busy_with_another_schedules_run_waits_and_the_tick_is_retried() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let schedule = schedule("UTC");
        ctx.cache.seed_targets(&[fixtures::target()]);
        ctx.cache.seed_claims(&[rwo_claim()]);
        let hourly = crate::jobs::build_job(
            &fixtures::target(),
            &RunRequest::scheduled("hourly", fixtures::now(), None, None),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap();
        let mut hourly = serde_json::to_value(hourly).unwrap();
        hourly["status"] = json!({"active": 1});
        ctx.cache.seed_jobs(&[hourly]);
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));
        let req = api.expect(Method::POST, EVENTS).await;
        assert_eq!(req.body["reason"], "WaitingForRun");
        req.echo();
        let status = respond_schedule(api.expect(Method::PATCH, STATUS).await, &schedule);
        assert!(status.get("lastScheduleTime").is_none(), "{status}");
        assert_eq!(
            reconciled.await.unwrap().unwrap(),
            Action::requeue(CLAIM_RETRY)
        );
        api.expect_no_more().await;
    }

    #[test]
    fn a_tick_counts_the_runs_it_starts_itself() {
        let target =
            |name: &str| -> BackupTarget { serde_json::from_value(named_target(name)).unwrap() };
        let targets = [target("a-db"), target("b-db")];
        let defaults = crate::jobs::JobDefaults::default();
        let tick = fixtures::now();
        let schedule = schedule("UTC");
        let decisions = |single_node: bool| -> Vec<StartDecision> {
            // A fresh cache each time: the runs of one call are reserved in its cache.
            let cache = crate::controller::cache::Cache::new(10);
            let planner = TickPlanner::new(&schedule, tick, &defaults);
            let requests = targets
                .iter()
                .map(|t| planner.step(t, single_node).start)
                .collect();
            cache.plan_starts("shop", requests)
        };
        // A ReadWriteOnce claim shared by both: the second waits for the first.
        let rwo = decisions(true);
        assert_eq!(rwo[0], StartDecision::Create { replace: vec![] });
        assert!(
            matches!(&rwo[1], StartDecision::Wait(WaitReason::ClaimBusy { .. })),
            "{rwo:?}"
        );
        // ReadWriteMany: different targets run side by side.
        assert_eq!(
            decisions(false),
            vec![
                StartDecision::Create { replace: vec![] },
                StartDecision::Create { replace: vec![] }
            ]
        );
    }

    #[test]
    fn resuming_counts_ticks_from_the_resume() {
        let now: Timestamp = "2030-03-01T02:30:10Z".parse().unwrap();
        let mut s = schedule("UTC");
        assert_eq!(
            active_since(&s, true, now),
            "2030-02-01T00:00:00Z".parse().unwrap()
        );
        s.status = Some(BackupScheduleStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "Suspended".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: status::time("2030-02-10T00:00:00Z".parse().unwrap()),
            }],
            ..BackupScheduleStatus::default()
        });
        assert_eq!(active_since(&s, true, now), now, "resumed now");
        assert_eq!(
            active_since(&s, false, now),
            "2030-02-01T00:00:00Z".parse().unwrap()
        );
    }

    #[test]
    fn history_limits_keep_the_newest_and_unrecorded_jobs() {
        let job = |name: &str, ok: bool, at: &str| -> RunJob {
            let job: Job = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"stowage.dev/target": "app-db", "stowage.dev/kind": "backup"}},
                "status": {"conditions": [{"type": if ok { "Complete" } else { "Failed" }, "status": "True", "lastTransitionTime": at}]}}))
            .unwrap();
            RunJob::from_job(&job)
        };
        let jobs = vec![
            job("s1", true, "2030-01-01T00:01:00Z"),
            job("s2", true, "2030-01-02T00:01:00Z"),
            job("s3", true, "2030-01-03T00:01:00Z"),
            job("f1", false, "2030-01-04T00:01:00Z"),
        ];
        let mut target = fixtures::target();
        let names = |v: Vec<&RunJob>| v.into_iter().map(|j| j.name.clone()).collect::<Vec<_>>();
        // Not recorded by the target yet: nothing is deleted.
        target.status = Some(Default::default());
        assert!(history_to_delete(&jobs, &[Arc::new(target.clone())], 1, 0).is_empty());
        let recorded = |name: &str| crate::api::BackupRecord {
            outcome: crate::api::RunOutcome::Succeeded,
            start_time: None,
            completion_time: None,
            artifact: None,
            size_bytes: None,
            size: None,
            sha256: None,
            duration_seconds: None,
            job: Some(name.into()),
            schedule: None,
            reason: None,
            message: None,
        };
        target.status.as_mut().unwrap().recent_backups =
            ["s1", "s2", "s3", "f1"].map(recorded).to_vec();
        assert_eq!(
            names(history_to_delete(&jobs, &[Arc::new(target.clone())], 1, 0)),
            ["s2", "s1", "f1"]
        );
        assert!(history_to_delete(&jobs, &[Arc::new(target.clone())], 3, 3).is_empty());
    }
}
