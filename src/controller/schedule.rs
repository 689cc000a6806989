//! The BackupSchedule reconciler: at each tick, one backup Job per selected target.
//!
//! Steps: parse the cron expression and time zone → select targets → list this schedule's
//! Jobs → [`decide`] what the tick calls for → create Jobs (concurrency policy,
//! ReadWriteOnce claim queueing) → apply the Job history limits → write the status if it
//! changed → requeue at the next tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{
    BackupSchedule, BackupScheduleStatus, BackupTarget, ConcurrencyPolicy, conditions,
};
use crate::jobs::{RunKind as JobRunKind, RunRequest, Trigger, build_job};
use crate::schedule::{
    CronSchedule, DEFAULT_STARTING_DEADLINE, TickDecision, decide, requeue_after,
};

use super::events::{self, PlannedEvent, reasons};
use super::status::{self, JobState, job_state, upsert_condition};
use super::{Context, Error, LABEL_SCHEDULE, LABEL_TARGET};

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

fn job_time(job: &Job) -> Option<Timestamp> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
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
            of_state.sort_by_key(|j| std::cmp::Reverse(job_time(j)));
            out.extend(of_state.into_iter().skip(limit).filter(|job| {
                known.is_none_or(|t| {
                    !super::target::may_be_unrecorded(&t.status.clone().unwrap_or_default(), job)
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

    let targets_api: Api<BackupTarget> = Api::namespaced(ctx.client.clone(), namespace);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let mut targets = targets_api
        .list(&ListParams::default().labels_from(&selector))
        .await?
        .items;
    targets.sort_by_key(|t| t.name_any());
    let jobs = jobs_api
        .list(&ListParams::default().labels(&format!(
            "{LABEL_SCHEDULE}={}",
            crate::jobs::label_value(name)
        )))
        .await?
        .items;

    let since = active_since(schedule, !spec.suspend, now);
    let deadline = spec
        .starting_deadline_seconds
        .map_or(DEFAULT_STARTING_DEADLINE, SignedDuration::from_secs);
    let last = prev.last_schedule_time.as_ref().map(|t| t.0);
    let decision = decide(&cron, last, since, now, deadline, spec.suspend);

    let mut status = prev.clone();
    let mut schedule_events = Vec::new();
    let mut requeue = requeue_after(now, decision.next());
    match decision {
        TickDecision::Run { tick, .. } => {
            let all_started = run_tick(ctx, schedule, &targets, &jobs, tick).await?;
            if all_started {
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

    // History limits.
    let doomed = history_to_delete(
        &jobs,
        &targets,
        limit(spec.successful_jobs_history_limit),
        limit(spec.failed_jobs_history_limit),
    );
    let doomed_names: Vec<String> = doomed.iter().map(|j| j.name_any()).collect();
    for job in doomed_names.iter() {
        delete_job(&jobs_api, job).await?;
        tracing::debug!(job, "deleted a finished Job beyond the history limit");
    }

    // Status.
    status.observed_generation = schedule.metadata.generation;
    status.selected_targets = Some(u32::try_from(targets.len()).unwrap_or(u32::MAX));
    status.next_schedule_time = decision.next().map(status::time);
    let newest_success = jobs
        .iter()
        .filter(|j| job_state(j) == JobState::Succeeded)
        .filter_map(job_time)
        .max();
    if let Some(success) = newest_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|t| t.0 < status::time(success).0)
    {
        status.last_successful_time = Some(status::time(success));
    }
    let mut active: Vec<ObjectReference> = jobs
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

async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Start the runs of `tick`: one Job per target. Returns whether every target is done for
/// this tick (created, already there, or skipped); `false` when some wait for a claim.
async fn run_tick(
    ctx: &Context,
    schedule: &BackupSchedule,
    targets: &[BackupTarget],
    jobs: &[Job],
    tick: Timestamp,
) -> Result<bool, Error> {
    let spec = &schedule.spec;
    let schedule_name = schedule.name_any();
    let namespace = schedule.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut all_started = true;
    for target in targets {
        let target_name = target.name_any();
        let target_ref = target.object_ref(&());
        let skip = |why: String| {
            PlannedEvent::warning(
                reasons::BACKUP_SKIPPED,
                format!("schedule {schedule_name}, tick {tick}: {why}"),
            )
        };
        if target.spec.suspend {
            events::publish(
                &ctx.recorder,
                &target_ref,
                &[skip("the target is suspended".into())],
            )
            .await;
            continue;
        }
        let config_invalid = target
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == conditions::CONFIG_VALID)
            })
            .is_some_and(|c| c.status == "False");
        if config_invalid {
            events::publish(
                &ctx.recorder,
                &target_ref,
                &[skip(
                    "the target's configuration is not valid (condition ConfigValid)".into(),
                )],
            )
            .await;
            continue;
        }
        let request = RunRequest {
            kind: JobRunKind::Backup,
            trigger: Trigger::Schedule {
                name: schedule_name.clone(),
                tick,
                retention: spec.retention.clone(),
                time_zone: spec.time_zone.clone(),
            },
        };
        let job = build_job(target, &request, &ctx.settings.job_defaults).map_err(|e| {
            Error::BuildJob {
                target: target_name.clone(),
                message: e.to_string(),
            }
        })?;
        let job_name = job.name_any();
        if jobs.iter().any(|j| j.name_any() == job_name) {
            continue; // Created by an earlier reconcile of this tick.
        }
        let running: Vec<&Job> = jobs
            .iter()
            .filter(|j| {
                j.labels().get(LABEL_TARGET) == Some(&crate::jobs::label_value(&target_name))
            })
            .filter(|j| job_state(j) == JobState::Active && j.metadata.deletion_timestamp.is_none())
            .collect();
        let mut replaced: Vec<String> = vec![job_name.clone()];
        if !running.is_empty() {
            match spec.concurrency_policy {
                ConcurrencyPolicy::Forbid => {
                    let names: Vec<String> = running.iter().map(|j| j.name_any()).collect();
                    tracing::info!(target = target_name, running = ?names, "tick skipped: concurrencyPolicy Forbid");
                    events::publish(
                        &ctx.recorder,
                        &target_ref,
                        &[skip(format!(
                            "Job {} is still running (concurrencyPolicy: Forbid)",
                            names.join(", ")
                        ))],
                    )
                    .await;
                    continue;
                }
                ConcurrencyPolicy::Replace => {
                    for old in running {
                        let old_name = old.name_any();
                        delete_job(&jobs_api, &old_name).await?;
                        tracing::info!(
                            target = target_name,
                            job = old_name,
                            "stopped the running Job (concurrencyPolicy Replace)"
                        );
                        replaced.push(old_name);
                    }
                }
                ConcurrencyPolicy::Allow => {}
            }
        }
        if let Some(holder) =
            super::claim_holder(ctx, &namespace, &target.spec.storage.claim_name, &replaced).await?
        {
            all_started = false;
            tracing::info!(
                target = target_name,
                job = job_name,
                holder,
                "run waits for the ReadWriteOnce claim"
            );
            events::publish(
                &ctx.recorder,
                &target_ref,
                &[PlannedEvent::normal(
                    reasons::WAITING_FOR_CLAIM,
                    format!(
                        "schedule {schedule_name}, tick {tick}: waiting for Job {holder}, which uses ReadWriteOnce claim {}",
                        target.spec.storage.claim_name
                    ),
                )],
            )
            .await;
            continue;
        }
        match jobs_api.create(&Default::default(), &job).await {
            Ok(_) => {
                tracing::info!(target = target_name, job = job_name, %tick, "created scheduled backup Job");
                events::publish(
                    &ctx.recorder,
                    &target_ref,
                    &[PlannedEvent::normal(
                        reasons::BACKUP_STARTED,
                        format!(
                            "Job {job_name} started by schedule {schedule_name} for tick {tick}"
                        ),
                    )],
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(all_started)
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
            Some("stowage.dev/schedule=nightly")
        );
        req.respond(200, list("JobList", vec![]));
        api.expect(
            Method::GET,
            "/api/v1/namespaces/shop/persistentvolumeclaims/backups",
        )
        .await
        .respond(200, rwo_claim());
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
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
