//! The BackupSchedule reconciler: at each tick, one backup Job per selected target.
//!
//! Observe → plan → apply → record: parse the cron expression and time zone; observe the
//! selected targets and the namespace's backup Jobs; [`decide`] what the tick calls for and
//! [`plan_tick`] each target's run with [`runs::plan_start`] (one writer per target,
//! concurrency policy, ReadWriteOnce claims); apply each target's step on its own (a
//! rejected Job is recorded on its target and never stops the others); apply the Job
//! history limits; write the status if it changed; requeue at the next tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{BackupSchedule, BackupScheduleStatus, BackupTarget, conditions};
use crate::jobs::{RunKind as JobRunKind, RunRequest, Trigger, build_job};
use crate::schedule::{CronSchedule, TickDecision, decide, requeue_after};

use super::events::{self, PlannedEvent, reasons};
use super::runs::{self, StartDecision, StartRequest, StartTrigger, WaitReason};
use super::status::{self, JobState, job_state, upsert_condition};
use super::{Context, Error, LABEL_TARGET};

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

/// Finished Jobs beyond the history limits: per target, the oldest successful ones past
/// `successful_limit` and failed ones past `failed_limit`. A Job whose run its target has
/// not recorded yet is kept (its result would be lost).
pub fn history_to_delete<'a>(
    jobs: &'a [Job],
    targets: &[BackupTarget],
    successful_limit: usize,
    failed_limit: usize,
) -> Vec<&'a Job> {
    let mut by_target: BTreeMap<String, Vec<&Job>> = BTreeMap::new();
    for job in jobs {
        if job_state(job) == JobState::Active || job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let target = job.labels().get(LABEL_TARGET).cloned().unwrap_or_default();
        by_target.entry(target).or_default().push(job);
    }
    let mut out = Vec::new();
    for (target, jobs) in by_target {
        let known = targets
            .iter()
            .find(|t| crate::jobs::label_value(&t.name_any()) == target);
        for (state, limit) in [
            (JobState::Succeeded, successful_limit),
            (JobState::Failed, failed_limit),
        ] {
            let mut of_state: Vec<&Job> = jobs
                .iter()
                .copied()
                .filter(|j| job_state(j) == state)
                .collect();
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
    let action = reconcile_inner(&schedule, &ctx, &namespace, &name).await?;
    ctx.succeeded(&key);
    Ok(action)
}

async fn write_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    prev: &BackupScheduleStatus,
    status: &BackupScheduleStatus,
) -> Result<(), Error> {
    if status == prev {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupSchedule",
        "status": status,
    });
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(
        name,
        &PatchParams::apply(super::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The status of a schedule that cannot run (invalid expression, time zone or selector).
fn invalid_status(
    schedule: &BackupSchedule,
    reason: &str,
    message: String,
    now: Timestamp,
) -> BackupScheduleStatus {
    let prev = schedule.status.clone().unwrap_or_default();
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

/// What a schedule reconcile reads from the cluster.
struct Observed {
    /// The selected targets, by name.
    targets: Vec<BackupTarget>,
    /// Every stowage backup Job of the namespace (the runs of other schedules and
    /// on-demand runs decide whether a target is busy).
    jobs: Vec<Job>,
}

#[tracing::instrument(skip(schedule, ctx))]
async fn reconcile_inner(
    schedule: &BackupSchedule,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let prev = schedule.status.clone().unwrap_or_default();
    let spec = &schedule.spec;

    let cron = match CronSchedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(cron) => cron,
        Err(e) => {
            let status = invalid_status(schedule, e.reason(), e.to_string(), now);
            write_status(ctx, namespace, name, &prev, &status).await?;
            ctx.metrics.schedule_observed(namespace, name, None);
            tracing::info!(error = %e, "schedule is invalid; waiting for a change");
            return Ok(Action::await_change());
        }
    };
    let selector = match Selector::try_from(spec.targets.clone()) {
        Ok(selector) => selector,
        Err(e) => {
            let message = format!("spec.targets is not a valid label selector: {e}");
            let status = invalid_status(schedule, ready_reasons::INVALID_SELECTOR, message, now);
            write_status(ctx, namespace, name, &prev, &status).await?;
            ctx.metrics.schedule_observed(namespace, name, None);
            return Ok(Action::await_change());
        }
    };

    // Decide the tick (from the clock and the status alone).
    let since = active_since(schedule, !spec.suspend, now);
    let deadline = crate::schedule::starting_deadline(spec.starting_deadline_seconds);
    let last = prev.last_schedule_time.as_ref().map(|t| t.0);
    let decision = decide(&cron, last, since, now, deadline, spec.suspend);

    // Observe. When runs may start, the namespace's runs are read under its start lock,
    // held until the Jobs are created.
    let start_lock = match decision {
        TickDecision::Run { .. } => Some(ctx.start_lock(namespace).await),
        _ => None,
    };
    let targets_api: Api<BackupTarget> = Api::namespaced(ctx.client.clone(), namespace);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let mut targets = targets_api
        .list(&ListParams::default().labels_from(&selector))
        .await?
        .items;
    targets.sort_by_key(|t| t.name_any());
    let jobs = super::list_writing_jobs(ctx, namespace).await?;
    let observed = Observed { targets, jobs };
    let own_jobs: Vec<Job> = observed
        .jobs
        .iter()
        .filter(|j| {
            j.annotations().get(crate::jobs::annotations::SCHEDULE) == Some(&name.to_owned())
        })
        .cloned()
        .collect();

    let mut status = prev.clone();
    let mut schedule_events = Vec::new();
    let mut requeue = requeue_after(now, decision.next());
    match decision {
        TickDecision::Run { tick, .. } => {
            let claims = observe_claims(ctx, namespace, &observed.targets).await?;
            let planner = TickPlanner::new(
                schedule,
                &observed.jobs,
                &claims,
                tick,
                &ctx.settings.job_defaults,
            );
            let outcome = apply_tick(ctx, schedule, &observed.targets, planner, tick).await;
            drop(start_lock);
            if outcome.all_done {
                status.last_schedule_time = Some(status::time(tick));
            } else {
                requeue = requeue.min(CLAIM_RETRY);
            }
        }
        TickDecision::Missed { tick, .. } => {
            if prev.last_missed_time.as_ref().map(|t| t.0) != Some(status::time(tick).0) {
                status.last_missed_time = Some(status::time(tick));
                schedule_events.push(PlannedEvent::warning(
                    reasons::SCHEDULE_MISSED,
                    format!(
                        "the tick at {tick} was not run: it is more than {}s old (startingDeadlineSeconds)",
                        deadline.as_secs()
                    ),
                ));
                tracing::warn!(%tick, "missed a tick beyond the starting deadline");
            }
        }
        TickDecision::Wait { .. } | TickDecision::Suspended { .. } => {}
    }

    // History limits, over this schedule's own Jobs.
    let doomed = history_to_delete(
        &own_jobs,
        &observed.targets,
        limit(spec.successful_jobs_history_limit),
        limit(spec.failed_jobs_history_limit),
    );
    let doomed_names: Vec<String> = doomed.iter().map(|j| j.name_any()).collect();
    for job in doomed_names.iter() {
        super::delete_job(&jobs_api, job).await?;
        tracing::debug!(job, "deleted a finished Job beyond the history limit");
    }

    // Record.
    let targets = &observed.targets;
    status.observed_generation = schedule.metadata.generation;
    status.selected_targets = Some(u32::try_from(targets.len()).unwrap_or(u32::MAX));
    status.next_schedule_time = decision.next().map(status::time);
    let newest_success = own_jobs
        .iter()
        .filter(|j| job_state(j) == JobState::Succeeded)
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
    let mut active: Vec<ObjectReference> = own_jobs
        .iter()
        .filter(|j| job_state(j) == JobState::Active && j.metadata.deletion_timestamp.is_none())
        .map(|j| ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: j.metadata.name.clone(),
            namespace: Some(namespace.to_owned()),
            uid: j.metadata.uid.clone(),
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
    write_status(ctx, namespace, name, &prev, &status).await?;
    if !schedule_events.is_empty() {
        events::publish(&ctx.recorder, &schedule.object_ref(&()), &schedule_events).await;
    }
    ctx.metrics.schedule_observed(
        namespace,
        name,
        if spec.suspend { None } else { decision.next() },
    );
    Ok(ctx.requeue(requeue))
}

/// Whether each selected target's claim is single-node (one GET per distinct claim; a
/// claim that does not exist yet counts as single-node, the safe side).
async fn observe_claims(
    ctx: &Context,
    namespace: &str,
    targets: &[BackupTarget],
) -> Result<BTreeMap<String, bool>, Error> {
    let mut claims = BTreeMap::new();
    for target in targets {
        let claim = &target.spec.storage.claim_name;
        if !claims.contains_key(claim) {
            let single = super::claim_single_node(ctx, namespace, claim).await?;
            claims.insert(claim.clone(), single);
        }
    }
    Ok(claims)
}

/// What the tick does for one target.
#[derive(Debug)]
pub struct TargetStep {
    /// The target's name.
    pub target: String,
    /// The name of the run's Job.
    pub job_name: String,
    /// The target's claim.
    pub claim: String,
    /// The Job the run would use (built from the spec), or why it cannot be built.
    pub job: Result<Job, String>,
    /// What to do.
    pub decision: StartDecision,
}

/// Plans a tick one target at a time: each step is decided with [`runs::plan_start`]
/// against the namespace's active runs, including the runs this tick has started so far
/// (a shared ReadWriteOnce claim). Pure; the reconciler tells it which Jobs it actually
/// created, so a refused Job never makes the next target wait.
pub struct TickPlanner<'a> {
    schedule: &'a BackupSchedule,
    jobs: &'a [Job],
    claims: &'a BTreeMap<String, bool>,
    tick: Timestamp,
    defaults: &'a crate::jobs::JobDefaults,
    active: Vec<runs::ActiveRun>,
}

impl<'a> TickPlanner<'a> {
    /// A planner over the namespace's backup Jobs and the claims' access modes.
    pub fn new(
        schedule: &'a BackupSchedule,
        jobs: &'a [Job],
        claims: &'a BTreeMap<String, bool>,
        tick: Timestamp,
        defaults: &'a crate::jobs::JobDefaults,
    ) -> Self {
        TickPlanner {
            schedule,
            jobs,
            claims,
            tick,
            defaults,
            active: runs::active_runs(jobs),
        }
    }

    /// What the tick does for `target`.
    pub fn step(&self, target: &BackupTarget) -> TargetStep {
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
        let job_name = crate::jobs::job_name(target, &request);
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
        let claim = target.spec.storage.claim_name.clone();
        let start = StartRequest {
            target: target.name_any(),
            job: job_name.clone(),
            trigger: StartTrigger::Schedule {
                name: schedule_name,
                policy: spec.concurrency_policy,
            },
            claim_single_node: self.claims.get(&claim).copied().unwrap_or(true),
            claim,
            suspended: target.spec.suspend,
            config_invalid,
            job_exists: self.jobs.iter().any(|j| j.name_any() == job_name),
        };
        TargetStep {
            target: target.name_any(),
            decision: runs::plan_start(&start, &self.active),
            claim: start.claim,
            job_name,
            job,
        }
    }

    /// Record that `step`'s Job was created (and the Jobs it replaced deleted).
    pub fn started(&mut self, step: &TargetStep) {
        if let StartDecision::Create { replace } = &step.decision {
            self.active.retain(|run| !replace.contains(&run.job));
        }
        self.active.push(runs::ActiveRun {
            job: step.job_name.clone(),
            target: step.target.clone(),
            schedule: Some(self.schedule.name_any()),
            claim: Some(step.claim.clone()),
        });
    }
}

/// The plan of a whole tick if every Job is created.
#[cfg(test)]
fn plan_tick(
    schedule: &BackupSchedule,
    targets: &[BackupTarget],
    jobs: &[Job],
    claims: &BTreeMap<String, bool>,
    tick: Timestamp,
    defaults: &crate::jobs::JobDefaults,
) -> Vec<TargetStep> {
    let mut planner = TickPlanner::new(schedule, jobs, claims, tick, defaults);
    targets
        .iter()
        .map(|target| {
            let step = planner.step(target);
            if matches!(step.decision, StartDecision::Create { .. }) {
                planner.started(&step);
            }
            step
        })
        .collect()
}

/// How applying a tick went.
struct TickOutcome {
    /// Every target is done for this tick (started, skipped, already started, or
    /// rejected); `false` when some wait or hit a transient API error.
    all_done: bool,
}

/// Apply a tick's plan: each target on its own, so one target's failure never stops the
/// others.
async fn apply_tick(
    ctx: &Context,
    schedule: &BackupSchedule,
    targets: &[BackupTarget],
    mut planner: TickPlanner<'_>,
    tick: Timestamp,
) -> TickOutcome {
    let schedule_name = schedule.name_any();
    let namespace = schedule.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut all_done = true;
    for target in targets {
        let step = planner.step(target);
        let target_ref = target.object_ref(&());
        let target_name = step.target.as_str();
        let prefix = format!("schedule {schedule_name}, tick {tick}");
        match step.decision {
            StartDecision::Exists => {}
            StartDecision::Skip(why) => {
                tracing::info!(target = target_name, reason = %why, "tick skipped for a target");
                events::publish(
                    &ctx.recorder,
                    &target_ref,
                    &[PlannedEvent::warning(
                        reasons::BACKUP_SKIPPED,
                        format!("{prefix}: {why}"),
                    )],
                )
                .await;
            }
            StartDecision::Wait(why) => {
                all_done = false;
                tracing::info!(target = target_name, reason = %why, "run waits");
                let reason = match why {
                    WaitReason::ClaimBusy { .. } => reasons::WAITING_FOR_CLAIM,
                    WaitReason::TargetBusy { .. } => reasons::WAITING_FOR_RUN,
                };
                events::publish(
                    &ctx.recorder,
                    &target_ref,
                    &[PlannedEvent::normal(
                        reason,
                        format!("{prefix}: waiting: {why}"),
                    )],
                )
                .await;
            }
            StartDecision::Create { ref replace } => {
                let job = match &step.job {
                    Ok(job) => job,
                    Err(message) => {
                        record_rejection(ctx, target, &prefix, message).await;
                        continue;
                    }
                };
                let job_name = job.name_any();
                let mut replaced_all = true;
                for old in replace {
                    if let Err(e) = super::delete_job(&jobs_api, old).await {
                        tracing::warn!(target = target_name, job = old, error = %e, "cannot stop the running Job (concurrencyPolicy Replace); retrying");
                        replaced_all = false;
                    } else {
                        tracing::info!(
                            target = target_name,
                            job = old,
                            "stopped the running Job (concurrencyPolicy Replace)"
                        );
                    }
                }
                if !replaced_all {
                    all_done = false;
                    continue;
                }
                match jobs_api.create(&Default::default(), job).await {
                    Ok(_) => {
                        crate::fault::point("schedule-after-create");
                        planner.started(&step);
                        tracing::info!(target = target_name, job = job_name, %tick, "created scheduled backup Job");
                        events::publish(
                            &ctx.recorder,
                            &target_ref,
                            &[PlannedEvent::normal(
                                reasons::BACKUP_STARTED,
                                format!("Job {job_name} started by schedule {schedule_name} for tick {tick}"),
                            )],
                        )
                        .await;
                        record_acceptance(ctx, target).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => planner.started(&step),
                    Err(kube::Error::Api(s)) if super::is_rejection(s.code) => {
                        record_rejection(
                            ctx,
                            target,
                            &prefix,
                            &format!("the API server rejected Job {job_name}: {}", s.message),
                        )
                        .await;
                    }
                    Err(e) => {
                        all_done = false;
                        tracing::warn!(target = target_name, job = job_name, error = %e, "cannot create the Job; retrying");
                    }
                }
            }
        }
    }
    TickOutcome { all_done }
}

/// Field manager of the `JobsAccepted` condition that schedules write on targets (the
/// target reconciler owns, and never sends, the rest of the target's status).
pub const SCHEDULES_FIELD_MANAGER: &str = "stowage-controller-schedules";

/// Tell the target, with an event and its `JobsAccepted` condition, that its Job was
/// refused. Best effort: a failure to record is logged, never stops the tick.
async fn record_rejection(ctx: &Context, target: &BackupTarget, prefix: &str, message: &str) {
    tracing::warn!(
        target = target.name_any(),
        error = message,
        "run not started: Job rejected"
    );
    events::publish(
        &ctx.recorder,
        &target.object_ref(&()),
        &[PlannedEvent::warning(
            reasons::JOB_REJECTED,
            format!("{prefix}: {message}; fix spec.job of the target"),
        )],
    )
    .await;
    set_jobs_accepted(
        ctx,
        target,
        "False",
        reasons::JOB_REJECTED,
        format!("{prefix}: {message}"),
    )
    .await;
}

async fn record_acceptance(ctx: &Context, target: &BackupTarget) {
    let accepted = target.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == conditions::JOBS_ACCEPTED)
    });
    if accepted.is_some_and(|c| c.status == "True") {
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
    use crate::controller::fixtures::{self, list, rwo_claim};
    use http::Method;
    use serde_json::json;

    const TARGETS: &str = "/apis/stowage.dev/v1alpha1/namespaces/shop/backuptargets";
    const JOBS: &str = "/apis/batch/v1/namespaces/shop/jobs";
    const STATUS: &str =
        "/apis/stowage.dev/v1alpha1/namespaces/shop/backupschedules/nightly/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
    const TARGET_STATUS: &str =
        "/apis/stowage.dev/v1alpha1/namespaces/shop/backuptargets/app-db/status";

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
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));

        let req = api.expect(Method::GET, TARGETS).await;
        assert_eq!(req.query("labelSelector").as_deref(), Some("tier=db"));
        req.respond(
            200,
            list(
                "BackupTargetList",
                vec![serde_json::to_value(fixtures::target()).unwrap()],
            ),
        );
        let req = api.expect(Method::GET, JOBS).await;
        assert_eq!(
            req.query("labelSelector").as_deref(),
            Some("stowage.dev/kind in (backup,restore)")
        );
        req.respond(200, list("JobList", vec![]));
        api.expect(
            Method::GET,
            "/api/v1/namespaces/shop/persistentvolumeclaims/backups",
        )
        .await
        .respond(200, rwo_claim());
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
        let req = api.expect(Method::PATCH, TARGET_STATUS).await;
        assert_eq!(
            req.query("fieldManager").as_deref(),
            Some(SCHEDULES_FIELD_MANAGER)
        );
        let conds = req.body["status"]["conditions"].clone();
        assert_eq!(conds.as_array().unwrap().len(), 1, "{conds}");
        assert_eq!(conds[0]["type"], "JobsAccepted");
        assert_eq!(conds[0]["status"], "True");
        req.respond(200, serde_json::to_value(fixtures::target()).unwrap());
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = respond_schedule(req, &schedule);
        assert_eq!(status["lastScheduleTime"], "2030-03-01T02:30:00Z");
        assert_eq!(status["nextScheduleTime"], "2030-03-02T02:30:00Z");
        assert_eq!(status["selectedTargets"], 1);
        assert_eq!(status["conditions"][0]["reason"], "Scheduled");

        let action = reconciled.await.unwrap().unwrap();
        let until_next = Duration::from_secs(24 * 3600 - 10).min(crate::schedule::REQUEUE_CAP);
        assert_eq!(action, Action::requeue(until_next));
        let metrics = crate::controller::metrics::render(&registry).unwrap();
        assert!(metrics.contains(r#"stowage_schedule_next_run_timestamp_seconds{namespace="shop",schedule="nightly"} 1898649000.0"#), "{metrics}");
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
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx.clone()));
        api.expect(Method::GET, TARGETS).await.respond(
            200,
            list(
                "BackupTargetList",
                vec![serde_json::to_value(fixtures::target()).unwrap()],
            ),
        );
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
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
        api.expect(Method::GET, TARGETS)
            .await
            .respond(200, list("BackupTargetList", vec![]));
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
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
        api.expect(Method::GET, TARGETS)
            .await
            .respond(200, list("BackupTargetList", vec![]));
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
        reconciled.await.unwrap().unwrap();
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
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));
        api.expect(Method::GET, TARGETS).await.respond(
            200,
            list(
                "BackupTargetList",
                vec![named_target("a-db"), named_target("b-db")],
            ),
        );
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
        api.expect(
            Method::GET,
            "/api/v1/namespaces/shop/persistentvolumeclaims/backups",
        )
        .await
        .respond(200, rwo_claim());
        // a-db: the API server refuses its Job.
        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/target"], "a-db");
        req.respond(
            422,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                   "message": "Job.batch \"a-db-b-1\" is invalid: spec.template.spec.nodeSelector: Invalid value"}),
        );
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
        // b-db still starts.
        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/target"], "b-db");
        req.echo();
        api.expect(Method::POST, EVENTS).await.echo();
        api.expect(
            Method::PATCH,
            "/apis/stowage.dev/v1alpha1/namespaces/shop/backuptargets/b-db/status",
        )
        .await
        .respond(200, named_target("b-db"));
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
        let reconciled = tokio::spawn(reconcile(Arc::new(schedule.clone()), ctx));
        api.expect(Method::GET, TARGETS).await.respond(
            200,
            list(
                "BackupTargetList",
                vec![serde_json::to_value(fixtures::target()).unwrap()],
            ),
        );
        let hourly = crate::jobs::build_job(
            &fixtures::target(),
            &RunRequest::scheduled("hourly", fixtures::now(), None, None),
            &crate::jobs::JobDefaults::default(),
        )
        .unwrap();
        let mut hourly = serde_json::to_value(hourly).unwrap();
        hourly["status"] = json!({"active": 1});
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![hourly]));
        api.expect(
            Method::GET,
            "/api/v1/namespaces/shop/persistentvolumeclaims/backups",
        )
        .await
        .respond(200, rwo_claim());
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
        let decisions = |single_node: bool| -> Vec<StartDecision> {
            let claims = BTreeMap::from([("backups".to_owned(), single_node)]);
            plan_tick(&schedule("UTC"), &targets, &[], &claims, tick, &defaults)
                .into_iter()
                .map(|step| step.decision)
                .collect()
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
        let job = |name: &str, ok: bool, at: &str| -> Job {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"stowage.dev/target": "app-db", "stowage.dev/kind": "backup"}},
                "status": {"conditions": [{"type": if ok { "Complete" } else { "Failed" }, "status": "True", "lastTransitionTime": at}]}}))
            .unwrap()
        };
        let jobs = vec![
            job("s1", true, "2030-01-01T00:01:00Z"),
            job("s2", true, "2030-01-02T00:01:00Z"),
            job("s3", true, "2030-01-03T00:01:00Z"),
            job("f1", false, "2030-01-04T00:01:00Z"),
        ];
        let mut target = fixtures::target();
        let names = |v: Vec<&Job>| v.into_iter().map(|j| j.name_any()).collect::<Vec<_>>();
        // Not recorded by the target yet: nothing is deleted.
        target.status = Some(Default::default());
        assert!(history_to_delete(&jobs, std::slice::from_ref(&target), 1, 0).is_empty());
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
            names(history_to_delete(
                &jobs,
                std::slice::from_ref(&target),
                1,
                0
            )),
            ["s2", "s1", "f1"]
        );
        assert!(history_to_delete(&jobs, std::slice::from_ref(&target), 3, 3).is_empty());
    }
}
