//! The BackupTarget reconciler: validate the plugin config, run probes and on-demand
//! backups, and record finished runs in the status.
//!
//! Steps: check the spec → read the target's Jobs (and the pods of finished, unrecorded
//! ones) → create the Jobs that are due → derive the status (pure, [`super::status`]) →
//! write it only if it changed → publish the events of the recorded transitions.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{ANNOTATION_BACKUP_NOW, ANNOTATION_PROBE_NOW, BackupTarget, BackupTargetStatus};
use crate::jobs::{RunKind as JobRunKind, RunRequest, Trigger, build_job};
use crate::registry::PluginConfig;

use super::events::{self, PlannedEvent, reasons};
use super::status::{
    self, ConfigCheck, JobState, RunKind, TargetObservation, derive_target_status, job_kind,
    job_state,
};
use super::{Context, Error, LABEL_JOB_NAME, LABEL_SCHEDULE, LABEL_TARGET};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "backuptarget";

/// How long an on-demand backup waits before looking again at a busy ReadWriteOnce claim.
pub const CLAIM_RETRY: Duration = Duration::from_secs(15);
/// Periodic resync when nothing else is due.
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
/// or when `spec.probe.interval` has passed since the last probe. Returns the plan and
/// when to look again for the interval.
pub fn plan_probe(
    target: &BackupTarget,
    probe_active: bool,
    now: Timestamp,
) -> (Option<ProbePlan>, Option<Duration>) {
    let status = target.status.clone().unwrap_or_default();
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
    if status.observed_generation != Some(generation) {
        return (
            Some(ProbePlan {
                token: format!("gen-{generation}"),
                handles_probe_now: None,
            }),
            None,
        );
    }
    let interval = target
        .spec
        .probe
        .as_ref()
        .and_then(|p| p.interval.as_deref())
        .and_then(parse_interval)
        .filter(|i| *i >= SignedDuration::from_secs(60));
    let Some(interval) = interval else {
        return (None, None);
    };
    let Some(last) = status.last_probe_time.as_ref().map(|t| t.0) else {
        return (None, None);
    };
    let due = last.checked_add(interval).unwrap_or(last);
    if due <= now && !probe_active {
        let bucket = now.as_second() / interval.as_secs().max(1);
        (
            Some(ProbePlan {
                token: format!("every-{bucket}"),
                handles_probe_now: None,
            }),
            Some(Duration::from_secs(interval.as_secs().unsigned_abs())),
        )
    } else {
        let wait = now.duration_until(due).max(SignedDuration::from_secs(1));
        (
            None,
            Some(Duration::from_secs(wait.as_secs().unsigned_abs())),
        )
    }
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

fn job_finish_time(job: &Job) -> Option<Timestamp> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Whether a finished Job may hold a run the status has not recorded (cheap, without pods).
pub fn may_be_unrecorded(status: &BackupTargetStatus, job: &Job) -> bool {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    match job_kind(job) {
        Some(RunKind::Backup) => {
            !status
                .recent_backups
                .iter()
                .any(|b| b.job.as_deref() == Some(name))
                && status.last_backup.as_ref().and_then(|b| b.job.as_deref()) != Some(name)
        }
        Some(RunKind::Probe) => match (status.last_probe_time.as_ref(), job_finish_time(job)) {
            (Some(last), Some(done)) => status::time(done).0 > last.0,
            _ => true,
        },
        None => false,
    }
}

async fn create_job(jobs: &Api<Job>, job: &Job) -> Result<bool, Error> {
    match jobs.create(&PostParams::default(), job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn build(target: &BackupTarget, request: &RunRequest, ctx: &Context) -> Result<Job, Error> {
    build_job(target, request, &ctx.settings.job_defaults).map_err(|e| Error::BuildJob {
        target: target.name_any(),
        message: e.to_string(),
    })
}

/// Reconcile one BackupTarget.
pub async fn reconcile(target: Arc<BackupTarget>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled(CONTROLLER);
    let name = target.name_any();
    let namespace = target.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "BackupTarget",
        name: name.clone(),
    })?;
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
    let action = reconcile_inner(&target, &ctx, &namespace, &name).await?;
    ctx.succeeded(&key);
    Ok(action)
}

#[tracing::instrument(skip(target, ctx))]
async fn reconcile_inner(
    target: &BackupTarget,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let prev = target.status.clone().unwrap_or_default();
    let plugin = &target.spec.plugin;
    let info = plugin.info();
    let config = check_config(plugin, ctx.settings.allowed_plugins.as_deref());
    let can_run = config == ConfigCheck::Valid && !target.spec.suspend;

    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let jobs = jobs_api
        .list(&ListParams::default().labels(&format!(
            "{LABEL_TARGET}={}",
            crate::jobs::label_value(name)
        )))
        .await?
        .items;

    // Finished runs the status has not recorded: read their pods' results.
    let mut finished = Vec::new();
    for job in jobs.iter().filter(|j| job_state(j) != JobState::Active) {
        if !may_be_unrecorded(&prev, job) {
            continue;
        }
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let pods = pods_api
            .list(&ListParams::default().labels(&format!("{LABEL_JOB_NAME}={job_name}")))
            .await?
            .items;
        if let Some(run) = status::finished_run(job, &pods, now) {
            finished.push(run);
        }
    }
    let new_runs = status::unrecorded_runs(&prev, finished);

    let mut events_now: Vec<PlannedEvent> = Vec::new();
    let mut requeue = RESYNC;
    let mut handled_backup_now = None;
    let mut handled_probe_now = None;

    // On-demand backup.
    if let Some(token) = annotation(target, ANNOTATION_BACKUP_NOW)
        && prev.last_handled_backup_now.as_deref() != Some(token.as_str())
    {
        if !can_run {
            let why = if target.spec.suspend {
                "spec.suspend is true".to_owned()
            } else {
                "the configuration is not valid (see condition ConfigValid)".to_owned()
            };
            events_now.push(PlannedEvent::warning(
                reasons::BACKUP_SKIPPED,
                format!("backup-now {token:?} not run: {why}"),
            ));
            handled_backup_now = Some(token);
        } else {
            let request = RunRequest {
                kind: JobRunKind::Backup,
                trigger: Trigger::BackupNow {
                    token: token.clone(),
                },
            };
            let job = build(target, &request, ctx)?;
            let job_name = job.metadata.name.clone().unwrap_or_default();
            match super::claim_holder(
                ctx,
                namespace,
                &target.spec.storage.claim_name,
                std::slice::from_ref(&job_name),
            )
            .await?
            {
                Some(holder) => {
                    tracing::info!(
                        job = job_name,
                        holder,
                        claim = target.spec.storage.claim_name,
                        "on-demand backup waits for the ReadWriteOnce claim"
                    );
                    events::publish(
                        &ctx.recorder,
                        &target.object_ref(&()),
                        &[PlannedEvent::normal(
                            reasons::WAITING_FOR_CLAIM,
                            format!(
                                "backup-now {token:?} waits: Job {holder} is using ReadWriteOnce claim {}",
                                target.spec.storage.claim_name
                            ),
                        )],
                    )
                    .await;
                    requeue = requeue.min(CLAIM_RETRY);
                }
                None => {
                    if create_job(&jobs_api, &job).await? {
                        tracing::info!(job = job_name, token, "created on-demand backup Job");
                        events_now.push(PlannedEvent::normal(
                            reasons::BACKUP_STARTED,
                            format!("Job {job_name} started for backup-now {token:?}"),
                        ));
                    }
                    handled_backup_now = Some(token);
                }
            }
        }
    }

    // Probe.
    let probe_active = jobs
        .iter()
        .any(|j| job_kind(j) == Some(RunKind::Probe) && job_state(j) == JobState::Active);
    if info.capabilities.probe {
        let (plan, wait) = plan_probe(target, probe_active, now);
        if let Some(wait) = wait {
            requeue = requeue.min(wait);
        }
        if let Some(plan) = plan {
            if can_run {
                let request = RunRequest {
                    kind: JobRunKind::Probe,
                    trigger: Trigger::Probe {
                        token: plan.token.clone(),
                    },
                };
                let job = build(target, &request, ctx)?;
                if create_job(&jobs_api, &job).await? {
                    tracing::info!(
                        job = job.metadata.name.as_deref().unwrap_or_default(),
                        token = plan.token,
                        "created probe Job"
                    );
                }
            }
            handled_probe_now = plan.handles_probe_now;
        }
    }

    // Status.
    let observation = TargetObservation {
        generation: target.metadata.generation,
        plugin: plugin.key().to_owned(),
        plugin_version: info.version.to_owned(),
        probe_supported: info.capabilities.probe,
        config,
        suspended: target.spec.suspend,
        new_runs: new_runs.clone(),
        handled_backup_now,
        handled_probe_now,
        now,
    };
    let update = derive_target_status(&prev, &observation);
    if update.status != prev {
        let patch = serde_json::json!({
            "apiVersion": "stowage.dev/v1alpha1",
            "kind": "BackupTarget",
            "status": update.status,
        });
        let targets: Api<BackupTarget> = Api::namespaced(ctx.client.clone(), namespace);
        targets
            .patch_status(
                name,
                &PatchParams::apply(super::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        tracing::debug!("status written");
    }
    for run in new_runs.iter().filter(|r| r.kind == RunKind::Backup) {
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
    ctx.metrics.target_observed(
        namespace,
        name,
        update
            .status
            .last_successful_backup_time
            .as_ref()
            .map(|t| t.0),
        update.status.artifacts.as_ref().map(|a| a.total_bytes),
    );
    events_now.extend(update.events);
    if !events_now.is_empty() {
        events::publish(&ctx.recorder, &target.object_ref(&()), &events_now).await;
    }

    // Cleanup of recorded on-demand and probe Jobs beyond their limits.
    cleanup_jobs(&jobs_api, &jobs, &update.status).await?;

    Ok(ctx.requeue(requeue))
}

/// Finished, recorded Jobs of a target that are not kept: on-demand backups beyond
/// [`ON_DEMAND_JOBS_KEPT`] and probes beyond [`PROBE_JOBS_KEPT`], oldest first. Scheduled
/// backups are left to their schedule's history limits.
pub fn jobs_to_delete<'a>(jobs: &'a [Job], status: &BackupTargetStatus) -> Vec<&'a Job> {
    let mut out = Vec::new();
    for (kind, keep) in [
        (RunKind::Backup, ON_DEMAND_JOBS_KEPT),
        (RunKind::Probe, PROBE_JOBS_KEPT),
    ] {
        let mut finished: Vec<&Job> = jobs
            .iter()
            .filter(|j| job_kind(j) == Some(kind))
            .filter(|j| !j.labels().contains_key(LABEL_SCHEDULE))
            .filter(|j| job_state(j) != JobState::Active)
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter(|j| !may_be_unrecorded(status, j))
            .collect();
        finished.sort_by_key(|j| std::cmp::Reverse(job_finish_time(j)));
        out.extend(finished.into_iter().skip(keep));
    }
    out
}

async fn cleanup_jobs(
    api: &Api<Job>,
    jobs: &[Job],
    status: &BackupTargetStatus,
) -> Result<(), Error> {
    for job in jobs_to_delete(jobs, status) {
        let name = job.name_any();
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => tracing::debug!(job = name, "deleted a finished Job beyond the kept history"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::fixtures::{self, finish_job, list, pod_with_message, rwo_claim};
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
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx));

        let req = api.expect(Method::GET, JOBS).await;
        assert_eq!(
            req.query("labelSelector").as_deref(),
            Some("stowage.dev/target=app-db")
        );
        req.respond(200, list("JobList", vec![]));

        let req = api.expect(Method::POST, JOBS).await;
        assert_eq!(req.body["metadata"]["labels"]["stowage.dev/kind"], "probe");
        assert_eq!(req.body["metadata"]["ownerReferences"][0]["name"], "app-db");
        req.echo();

        let req = api.expect(Method::PATCH, STATUS).await;
        assert_eq!(
            req.query("fieldManager").as_deref(),
            Some("stowage-controller")
        );
        let status = req.body["status"].clone();
        assert_eq!(status["observedGeneration"], 1);
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

        let action = reconciled.await.unwrap().unwrap();
        assert!(
            format!("{action:?}").contains("requeue_after"),
            "{action:?}"
        );
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
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
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
            now: fixtures::now() - SignedDuration::from_mins(10),
        };
        target.status =
            Some(derive_target_status(&BackupTargetStatus::default(), &observation).status);
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
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx.clone()));

        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
        api.expect(
            Method::GET,
            "/api/v1/namespaces/shop/persistentvolumeclaims/backups",
        )
        .await
        .respond(200, rwo_claim());
        let req = api.expect(Method::GET, JOBS).await;
        assert_eq!(
            req.query("labelSelector").as_deref(),
            Some("stowage.dev/kind=backup")
        );
        req.respond(200, list("JobList", vec![]));
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
        // handled: no second Job, no status write.
        let again = tokio::spawn(reconcile(Arc::new(with_status(target, &status)), ctx));
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![created]));
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
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![]));
        api.expect(
            Method::GET,
            "/api/v1/namespaces/shop/persistentvolumeclaims/backups",
        )
        .await
        .respond(200, rwo_claim());
        let busy = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "other-backup", "namespace": "shop", "labels": {"stowage.dev/kind": "backup"}},
            "spec": {"template": {"spec": {"containers": [{"name": "run"}],
                "volumes": [{"name": "backups", "persistentVolumeClaim": {"claimName": "backups"}}]}}},
            "status": {"active": 1}});
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![busy]));
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
        let reconciled = tokio::spawn(reconcile(Arc::new(target.clone()), ctx.clone()));

        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![job.clone()]));
        let req = api
            .expect(Method::GET, "/api/v1/namespaces/shop/pods")
            .await;
        assert_eq!(
            req.query("labelSelector"),
            Some(format!("batch.kubernetes.io/job-name={job_name}"))
        );
        req.respond(
            200,
            list(
                "PodList",
                vec![pod_with_message(&job_name, &result_json(), 0)],
            ),
        );
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
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![job]));
        again.await.unwrap().unwrap();
        api.expect_no_more().await;
    }

    #[tokio::test]
    async fn an_oom_killed_job_without_a_result_is_a_failure_from_the_job_conditions() {
        let (ctx, mut api, _clock, _registry) = fixtures::context();
        let target = observed_target();
        let mut job = finished_backup_job();
        job = finish_job(job, false, "2030-03-01T02:32:00Z");
        let job_name = job["metadata"]["name"].as_str().unwrap().to_owned();
        let mut pod = pod_with_message(&job_name, "", 137);
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = json!("OOMKilled");
        let reconciled = tokio::spawn(reconcile(Arc::new(target), ctx));
        api.expect(Method::GET, JOBS)
            .await
            .respond(200, list("JobList", vec![job]));
        api.expect(Method::GET, "/api/v1/namespaces/shop/pods")
            .await
            .respond(200, list("PodList", vec![pod]));
        let req = api.expect(Method::PATCH, STATUS).await;
        let status = req.body["status"].clone();
        assert_eq!(status["lastFailure"]["reason"], "JobFailed");
        let message = status["lastFailure"]["message"].as_str().unwrap();
        assert!(
            message.contains("backoff limit") && message.contains("OOMKilled (exit code 137)"),
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
        assert_eq!(
            plan_probe(&target, false, now),
            (None, None),
            "nothing due without an interval"
        );
        target.metadata.generation = Some(2);
        assert_eq!(plan_probe(&target, false, now).0.unwrap().token, "gen-2");
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
        assert!(
            plan_probe(&target, true, now).0.is_none(),
            "not while a probe runs"
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
