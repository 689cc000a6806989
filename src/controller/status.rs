//! Pure status derivation: what a BackupTarget's status says, given its previous status,
//! its spec checks and the runs that finished since. No I/O here; the reconcilers gather
//! the inputs and write the output.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    ArtifactSummary, BackupRecord, BackupTargetStatus, FailureRecord, RunOutcome, conditions,
};
use crate::jobs::RunKind;
use crate::runner::{Outcome, RunResult};

use super::cache::RunJob;
use super::events::{PlannedEvent, reasons};

/// How many finished backups `status.recentBackups` keeps.
pub const RECENT_BACKUPS_LIMIT: usize = 10;

/// Condition reasons written by the controller (besides the plugin error kinds, such as
/// `Unauthorized`, used for failed probes and backups).
pub mod condition_reasons {
    /// ConfigValid=True.
    pub const VALID: &str = "Valid";
    /// ConfigValid=False: the plugin's semantic validation failed.
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    /// ConfigValid=False: the operator does not allow this plugin.
    pub const PLUGIN_NOT_ALLOWED: &str = "PluginNotAllowed";
    /// Reachable=True.
    pub const PROBE_SUCCEEDED: &str = "ProbeSucceeded";
    /// Reachable=Unknown: no probe has finished yet.
    pub const NOT_PROBED: &str = "NotProbed";
    /// Reachable=Unknown: a run's pod that could not start has started (or gone), and
    /// the last probe's answer was replaced by that failure: the target is probed again.
    pub const REPROBING: &str = "Reprobing";
    /// Reachable=Unknown: the plugin has no probe.
    pub const PROBE_UNSUPPORTED: &str = "ProbeUnsupported";
    /// LastBackupSucceeded=True.
    pub const SUCCEEDED: &str = "Succeeded";
    /// LastBackupSucceeded=Unknown.
    pub const NO_BACKUP_YET: &str = "NoBackupYet";
    /// Ready=True.
    pub const READY: &str = "Ready";
    /// Ready=False: `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// Ready=False: the last probe failed.
    pub const UNREACHABLE: &str = "Unreachable";
    /// Ready=False: the last backup failed.
    pub const LAST_BACKUP_FAILED: &str = "LastBackupFailed";
    /// A failed Job without a readable result.
    pub const JOB_FAILED: &str = "JobFailed";
    /// A Job stopped by its `activeDeadlineSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// A Job that completed without a readable result: never counted as a success.
    pub const NO_RESULT: &str = "NoResult";
    /// A run's pod cannot start: a Secret it needs does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A run's pod cannot start: a key it needs is missing from its Secret.
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    /// A run's pod cannot be scheduled because its claim is not bound.
    pub const CLAIM_NOT_BOUND: &str = "ClaimNotBound";
    /// A run's pod cannot be scheduled.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// A failed run whose container the kernel killed for its memory limit (the tool or
    /// the runner).
    pub const OOM_KILLED: &str = "OOMKilled";
}
use condition_reasons as r;

/// Truncate to whole seconds: Kubernetes serializes times with second precision, so a
/// status compared with the one read back must hold the same values.
pub fn time(ts: Timestamp) -> Time {
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// Whether a Job is still running or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not finished.
    Active,
    /// Condition `Complete` is true.
    Succeeded,
    /// Condition `Failed` is true.
    Failed,
}

/// The state of a Job from its conditions.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is_true = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if is_true("Complete") {
        JobState::Succeeded
    } else if is_true("Failed") {
        JobState::Failed
    } else {
        JobState::Active
    }
}

/// A finished run, read from its Job and the Job's pods.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedRun {
    /// Name of the Job.
    pub job: String,
    /// Backup or probe.
    pub kind: RunKind,
    /// The schedule that started it (label `stowage.dev/schedule`), if any.
    pub schedule: Option<String>,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// The runner's result, when a pod's termination message held one.
    pub result: Option<RunResult>,
    /// When it started.
    pub start_time: Option<Timestamp>,
    /// When it finished.
    pub finish_time: Timestamp,
    /// For a failure: the reason (an error kind such as `Unauthorized`, or `JobFailed`,
    /// `DeadlineExceeded`).
    pub reason: Option<String>,
    /// The result's message, or for a failure without a result, what the Job and pod say.
    pub message: Option<String>,
    /// The target generation the run was started for (its Job's `stowage.dev/generation`).
    /// For the probe [`unrecorded_runs`] keeps, the newest generation of the probes it
    /// stands for.
    pub generation: Option<i64>,
}

/// The newest parseable `RunResult` among the pods' terminated containers, newest pod first.
pub fn run_result_from_pods(pods: &[Pod]) -> Option<RunResult> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    pods.iter().find_map(|pod| {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref()?.message.as_deref())
            .find_map(|message| serde_json::from_str::<RunResult>(message.trim()).ok())
    })
}

/// What the newest pod's containers say when there is no result (OOMKilled, image pull
/// errors...), for a failure message.
fn pod_failure_note(pods: &[Pod]) -> Option<String> {
    let pod = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|cs| {
        let state = cs.state.as_ref()?;
        if let Some(t) = &state.terminated {
            let reason = t.reason.as_deref().unwrap_or("Error");
            Some(format!(
                "container {} terminated: {reason} (exit code {})",
                cs.name, t.exit_code
            ))
        } else if let Some(w) = &state.waiting {
            let reason = w.reason.as_deref()?;
            let message = w
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Some(format!("container {} waiting: {reason}{message}", cs.name))
        } else {
            None
        }
    })
}

/// Whether the newest pod's container ran out of memory: containerd marks a container
/// `OOMKilled` when the kernel killed any of its processes for the memory limit, also when
/// the runner survived the tool it ran.
fn out_of_memory(pods: &[Pod]) -> bool {
    pods.iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .and_then(|p| p.status.as_ref()?.container_statuses.as_ref())
        .is_some_and(|statuses| {
            statuses.iter().any(|cs| {
                cs.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
            })
        })
}

/// The cause and the fix, after what the run said.
fn oom_message(said: Option<String>) -> String {
    let cause = "the container was killed for exceeding its memory limit (OOMKilled); \
                 raise spec.job.resources.limits.memory";
    match said.filter(|m| !m.is_empty()) {
        Some(m) => format!("{m}; {cause}"),
        None => cause.to_owned(),
    }
}

/// The finished run a Job represents, or `None` while it runs (or when it is no stowage
/// run). Never fails: a missing or unreadable result becomes a failure derived from the
/// Job's conditions. `pods` are the Job's pods, read when the run is recorded.
pub fn finished_run(job: &RunJob, pods: &[Pod], now: Timestamp) -> Option<FinishedRun> {
    let state = job.state;
    if state == JobState::Active {
        return None;
    }
    let kind = job.kind?;
    let name = job.name.clone();
    let schedule = job.schedule.clone();
    let job_start = job.start_time;
    let job_end = job.finish_time;
    let result = run_result_from_pods(pods).filter(|res| res.operation == kind);
    // The Job's own finish time first: it is known without the pods, so whether a run is
    // recorded can be decided from the Job alone.
    let finish_time = job_end
        .or_else(|| result.as_ref().map(|res| res.end_time))
        .unwrap_or(now);
    let start_time = result.as_ref().map(|res| res.start_time).or(job_start);
    let (succeeded, reason, message) = match (&result, state) {
        (Some(res), JobState::Succeeded) | (Some(res), JobState::Failed)
            if res.outcome == Outcome::Failed =>
        {
            (
                false,
                Some(
                    res.error_kind
                        .map(|k| k.reason().to_owned())
                        .unwrap_or_else(|| r::JOB_FAILED.to_owned()),
                ),
                res.message.clone(),
            )
        }
        (Some(res), JobState::Succeeded) => (true, None, res.message.clone()),
        (None, JobState::Succeeded) => {
            // The runner always writes a result; without one nobody knows what the run
            // did, so it is not a success.
            let mut message = format!(
                "Job {name} completed with no readable result in its pod's termination message; \
                 the artifact, if any, is unverified"
            );
            if let Some(note) = pod_failure_note(pods) {
                message.push_str("; ");
                message.push_str(&note);
            }
            (false, Some(r::NO_RESULT.to_owned()), Some(message))
        }
        (_, _) => {
            // Failed Job without a (failed) result: the Job's condition says why.
            let reason = match job.failed_reason.as_deref() {
                Some("DeadlineExceeded") => r::DEADLINE_EXCEEDED,
                _ => r::JOB_FAILED,
            };
            let mut parts: Vec<String> = Vec::new();
            if let Some(m) = job.failed_message.clone().filter(|m| !m.is_empty()) {
                parts.push(m);
            }
            if let Some(note) = pod_failure_note(pods) {
                parts.push(note);
            }
            if parts.is_empty() {
                parts.push(format!("Job {name} failed without a result"));
            }
            (false, Some(reason.to_owned()), Some(parts.join("; ")))
        }
    };
    // Out of memory is the cause to act on, whatever else the run reported; only a Job
    // stopped by its deadline keeps that reason (the pod note still says OOMKilled).
    let (reason, message) =
        if !succeeded && reason.as_deref() != Some(r::DEADLINE_EXCEEDED) && out_of_memory(pods) {
            (Some(r::OOM_KILLED.to_owned()), Some(oom_message(message)))
        } else {
            (reason, message)
        };
    Some(FinishedRun {
        job: name,
        kind,
        schedule,
        succeeded,
        result,
        start_time,
        finish_time,
        reason,
        message,
        generation: job.generation,
    })
}

/// Why a run's pod cannot start, in the pod's own words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    /// The Job.
    pub job: String,
    /// A condition reason: `SecretNotFound`, `SecretKeyNotFound`, `ClaimNotBound`,
    /// `Unschedulable`, or the container's waiting reason (`ImagePullBackOff`...).
    pub reason: String,
    /// The kubelet's or scheduler's message (names only, never a secret value).
    pub message: String,
}

/// Container waiting reasons that mean the container cannot start as things are.
const START_FAILURE_REASONS: [&str; 7] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RunContainerError",
];

/// How long a run's pod may fail to start before the run is recorded as failed and its
/// Job deleted (so it does not hold a ReadWriteOnce claim until its deadline). Enough for
/// a Secret applied a little after the target, or a slow first image pull to retry.
pub const START_FAILURE_LIMIT: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// Why the newest of a Job's pods cannot start, if it cannot (`job` left empty).
pub fn start_failure(pods: &[Pod]) -> Option<StartFailure> {
    let pod = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    let status = pod.status.as_ref()?;
    let failure = |reason: &str, message: &str| StartFailure {
        job: String::new(),
        reason: reason.to_owned(),
        message: message.to_owned(),
    };
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in containers {
        let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if !START_FAILURE_REASONS.contains(&reason) {
            continue;
        }
        let message = waiting.message.as_deref().unwrap_or_default();
        let reason = if reason == "CreateContainerConfigError" && message.starts_with("secret ") {
            r::SECRET_NOT_FOUND
        } else if reason == "CreateContainerConfigError" && message.contains(" in Secret ") {
            r::SECRET_KEY_NOT_FOUND
        } else {
            reason
        };
        return Some(failure(reason, message));
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    let message = unschedulable.message.as_deref().unwrap_or_default();
    let reason = if message.contains("unbound") && message.contains("PersistentVolumeClaim") {
        r::CLAIM_NOT_BOUND
    } else {
        r::UNSCHEDULABLE
    };
    Some(failure(reason, message))
}

/// How a run stopped by [`stuck_run`] ends its message: what tells the recorded answer of
/// such a probe from a live start failure, which goes away with its pod.
const STOPPED: &str = "; the Job was stopped";

/// The longest wait before a probe stopped because its pod could not start is tried again.
pub const STOPPED_PROBE_RETRY_MAX: jiff::SignedDuration = jiff::SignedDuration::from_secs(3600);

/// Whether a `Reachable` condition is the recorded answer of a probe whose pod could not
/// start for [`START_FAILURE_LIMIT`] (so it stays until the next probe), rather than a live
/// start failure that goes away with its pod.
pub fn is_stopped_probe_answer(reachable: &Condition) -> bool {
    is_start_failure(reachable) && reachable.message.ends_with(STOPPED)
}

/// Whether a `Reachable` condition says a run's pod cannot start right now: it goes away
/// with that pod, rather than waiting for the next probe.
fn is_live_start_failure(reachable: &Condition) -> bool {
    is_start_failure(reachable) && !reachable.message.ends_with(STOPPED)
}

/// `False` with a start failure reason: live, or the answer of a stopped probe.
fn is_start_failure(reachable: &Condition) -> bool {
    reachable.status == "False" && is_start_failure_reason(&reachable.reason)
}

/// When to probe again after the last probe was stopped because its pod could not start
/// (a missing Secret, say), so the target recovers once the cause is fixed: as long after
/// that probe as the target had been failing then, at least [`START_FAILURE_LIMIT`] and at
/// most [`STOPPED_PROBE_RETRY_MAX`]. Retries come after 5, 15, 35 minutes, then hourly,
/// each holding a probe slot only while it runs. `None` when the last answer is not such.
pub fn stopped_probe_retry_at(status: &BackupTargetStatus) -> Option<Timestamp> {
    let reachable = find(&status.conditions, crate::api::conditions::REACHABLE)
        .filter(|c| is_stopped_probe_answer(c))?;
    let last = status.last_probe_time.as_ref()?.0;
    let failing = reachable.last_transition_time.0.duration_until(last);
    let wait = failing.clamp(START_FAILURE_LIMIT, STOPPED_PROBE_RETRY_MAX);
    last.checked_add(wait).ok()
}

/// An active Job whose pod has not been able to start for [`START_FAILURE_LIMIT`], as a
/// failed run with the pod's reason (`failure`, from its newest pod); `None` while it may
/// still start.
pub fn stuck_run(job: &RunJob, failure: &StartFailure, now: Timestamp) -> Option<FinishedRun> {
    if job.state != JobState::Active {
        return None;
    }
    let kind = job.kind?;
    let started = job.start_time.or(job.created)?;
    if now.duration_since(started) < START_FAILURE_LIMIT {
        return None;
    }
    let name = job.name.clone();
    Some(FinishedRun {
        job: name.clone(),
        kind,
        schedule: job.schedule.clone(),
        succeeded: false,
        result: None,
        start_time: Some(started),
        finish_time: now,
        reason: Some(failure.reason.clone()),
        message: Some(format!(
            "the pod of Job {name} could not start for {}s: {}{STOPPED}",
            START_FAILURE_LIMIT.as_secs(),
            failure.message
        )),
        generation: job.generation,
    })
}

/// When a Job finished (its `Complete` or `Failed` condition), if it has.
pub fn job_finish_time(job: &RunJob) -> Option<Timestamp> {
    job.finish_time
}

/// The completion time of the oldest record when `recentBackups` is full: a backup that
/// finished before it was recorded and rotated out, or is too old to be recorded now.
fn oldest_recorded_when_full(status: &BackupTargetStatus) -> Option<Timestamp> {
    if status.recent_backups.len() < RECENT_BACKUPS_LIMIT {
        return None;
    }
    status
        .recent_backups
        .iter()
        .filter_map(|b| b.completion_time.as_ref().map(|t| t.0))
        .min()
}

/// Whether `status` records the backup run of Job `job`.
pub fn backup_recorded(status: &BackupTargetStatus, job: &str) -> bool {
    status
        .recent_backups
        .iter()
        .any(|b| b.job.as_deref() == Some(job))
        || status.last_backup.as_ref().and_then(|b| b.job.as_deref()) == Some(job)
}

/// Whether a finished Job may hold a run the status has not recorded (cheap, without
/// pods). A backup that finished before the oldest entry of a full `recentBackups` counts
/// as recorded, so history limits can delete it.
pub fn may_be_unrecorded(status: &BackupTargetStatus, job: &RunJob) -> bool {
    let name = job.name.as_str();
    match job.kind {
        Some(RunKind::Backup) => {
            if backup_recorded(status, name) {
                return false;
            }
            match (oldest_recorded_when_full(status), job_finish_time(job)) {
                (Some(oldest), Some(done)) => time(done).0 >= oldest,
                _ => true,
            }
        }
        Some(RunKind::Probe) => match (status.last_probe_time.as_ref(), job_finish_time(job)) {
            (Some(last), Some(done)) => time(done).0 > last.0,
            _ => true,
        },
        // Restores are not recorded in a target's status.
        Some(RunKind::Restore) | None => false,
    }
}

/// The runs among `runs` that `status` has not recorded yet: backups whose Job is not in
/// `recentBackups` (and not older than all of a full list), and the newest probe that
/// finished after `lastProbeTime`, carrying the newest generation those probes probed.
pub fn unrecorded_runs(status: &BackupTargetStatus, runs: Vec<FinishedRun>) -> Vec<FinishedRun> {
    let recorded = |job: &str| backup_recorded(status, job);
    let oldest_kept = oldest_recorded_when_full(status);
    let last_probe = status.last_probe_time.as_ref().map(|t| t.0);
    let mut newest_probe: Option<FinishedRun> = None;
    let mut out = Vec::new();
    for run in runs {
        match run.kind {
            RunKind::Backup => {
                let too_old = oldest_kept.is_some_and(|oldest| time(run.finish_time).0 < oldest);
                if !recorded(&run.job) && !too_old {
                    out.push(run);
                }
            }
            RunKind::Probe => {
                if last_probe.is_some_and(|last| time(run.finish_time).0 <= last) {
                    continue;
                }
                let generation = run
                    .generation
                    .max(newest_probe.as_ref().and_then(|p| p.generation));
                if newest_probe
                    .as_ref()
                    .is_none_or(|p| p.finish_time < run.finish_time)
                {
                    newest_probe = Some(run);
                }
                if let Some(newest) = newest_probe.as_mut() {
                    newest.generation = generation;
                }
            }
            // Restores are not recorded in a target's status.
            RunKind::Restore => {}
        }
    }
    out.sort_by_key(|run| run.finish_time);
    out.extend(newest_probe);
    out
}

/// Whether the spec passed the controller's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigCheck {
    /// The plugin is allowed and its validation passed.
    Valid,
    /// The plugin's validation failed; the message lists the fields (`spec.<key>.<field>`).
    Invalid(String),
    /// The operator does not allow the plugin.
    NotAllowed(String),
    /// An external target's BackupPlugin cannot run it: not installed, not accepted, not
    /// allowed in the namespace, or the config breaks its schema
    /// ([`crate::installed::Unusable`]).
    Unusable(crate::installed::Unusable),
}

impl ConfigCheck {
    /// Why nothing may run, if anything keeps it from running.
    pub fn blocking_message(&self) -> Option<String> {
        match self {
            ConfigCheck::Valid => None,
            ConfigCheck::Invalid(m) | ConfigCheck::NotAllowed(m) => Some(m.clone()),
            ConfigCheck::Unusable(u) => Some(u.message().to_owned()),
        }
    }
}

/// Everything, besides the previous status, that a BackupTarget's status derives from.
#[derive(Clone, Debug)]
pub struct TargetObservation {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The plugin key.
    pub plugin: String,
    /// The plugin's version.
    pub plugin_version: String,
    /// The plugin's probe capability.
    pub probe_supported: bool,
    /// The spec checks.
    pub config: ConfigCheck,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Finished runs not yet recorded (see [`unrecorded_runs`]).
    pub new_runs: Vec<FinishedRun>,
    /// The backup-now token handled by this reconcile, if any.
    pub handled_backup_now: Option<String>,
    /// The probe-now token handled by this reconcile, if any.
    pub handled_probe_now: Option<String>,
    /// Why an active run's pod cannot start, if one cannot.
    pub start_failure: Option<StartFailure>,
    /// Now.
    pub now: Timestamp,
}

/// Human units for a size (`12.3 MiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn backup_record(run: &FinishedRun) -> BackupRecord {
    let res = run.result.as_ref();
    let size_bytes = res.and_then(|r| r.stored_bytes);
    BackupRecord {
        outcome: if run.succeeded {
            RunOutcome::Succeeded
        } else {
            RunOutcome::Failed
        },
        start_time: run.start_time.map(time),
        completion_time: Some(time(run.finish_time)),
        artifact: res
            .and_then(|r| r.artifact.clone())
            .filter(|_| run.succeeded),
        size_bytes: size_bytes.filter(|_| run.succeeded),
        size: size_bytes.filter(|_| run.succeeded).map(human_size),
        sha256: res.and_then(|r| r.sha256.clone()).filter(|_| run.succeeded),
        duration_seconds: res.map(|r| r.duration_seconds).or_else(|| {
            run.start_time
                .map(|s| (run.finish_time.as_millisecond() - s.as_millisecond()) as f64 / 1000.0)
        }),
        job: Some(run.job.clone()),
        schedule: run.schedule.clone(),
        reason: run.reason.clone().filter(|_| !run.succeeded),
        message: run.message.clone().filter(|_| !run.succeeded),
    }
}

/// Set a condition, keeping its `lastTransitionTime` when its status did not change.
#[allow(clippy::too_many_arguments)] // the fields of a Condition, named at each call
pub fn upsert_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    });
}

/// Whether a `Reachable` reason is one a pod that could not start gives (the scheduler's,
/// the kubelet's, or the operator's name for a missing Secret or key).
fn is_start_failure_reason(reason: &str) -> bool {
    [
        r::SECRET_NOT_FOUND,
        r::SECRET_KEY_NOT_FOUND,
        r::CLAIM_NOT_BOUND,
        r::UNSCHEDULABLE,
    ]
    .contains(&reason)
        || START_FAILURE_REASONS.contains(&reason)
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The new status and the events that its changes call for.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetStatusUpdate {
    /// The status to write (equal to the previous one when nothing changed).
    pub status: BackupTargetStatus,
    /// Events to publish once the status is written.
    pub events: Vec<PlannedEvent>,
}

/// Derive a BackupTarget's status.
///
/// `Ready` is `True` iff `ConfigValid` is `True`, `spec.suspend` is false, `Reachable` is
/// not `False`, and the most recent backup (if any) succeeded. Otherwise its reason is the
/// first that applies of: `InvalidConfig`/`PluginNotAllowed`, `Suspended`, `Unreachable`,
/// `LastBackupFailed`.
pub fn derive_target_status(
    prev: &BackupTargetStatus,
    obs: &TargetObservation,
) -> TargetStatusUpdate {
    let mut status = prev.clone();
    let mut events = Vec::new();
    status.observed_generation = obs.generation;
    status.plugin = Some(obs.plugin.clone());
    status.plugin_version = Some(obs.plugin_version.clone());
    if let Some(token) = &obs.handled_backup_now {
        status.last_handled_backup_now = Some(token.clone());
    }
    if let Some(token) = &obs.handled_probe_now {
        status.last_handled_probe_now = Some(token.clone());
    }

    let mut probe_run: Option<&FinishedRun> = None;
    for run in &obs.new_runs {
        match run.kind {
            RunKind::Restore => {}
            RunKind::Probe => probe_run = Some(run),
            RunKind::Backup => {
                let record = backup_record(run);
                if run.succeeded {
                    let newer = status
                        .last_successful_backup_time
                        .as_ref()
                        .is_none_or(|t| t.0 <= time(run.finish_time).0);
                    if newer {
                        status.last_successful_backup_time = Some(time(run.finish_time));
                    }
                    let summary = status
                        .artifacts
                        .get_or_insert_with(ArtifactSummary::default);
                    if let Some(bytes) = record.size_bytes {
                        summary.count = summary.count.saturating_add(1);
                        summary.total_bytes = summary.total_bytes.saturating_add(bytes);
                    }
                    let pruned = run.result.as_ref().and_then(|r| r.pruned).unwrap_or(0);
                    let pruned_bytes = run
                        .result
                        .as_ref()
                        .and_then(|r| r.pruned_bytes)
                        .unwrap_or(0);
                    if pruned > 0 {
                        summary.count = summary.count.saturating_sub(pruned);
                        summary.total_bytes = summary.total_bytes.saturating_sub(pruned_bytes);
                        if summary.count == 0 {
                            summary.total_bytes = 0;
                        }
                    }
                    events.push(PlannedEvent::normal(
                        reasons::BACKUP_SUCCEEDED,
                        format!(
                            "Job {} wrote {}{}",
                            run.job,
                            record.artifact.as_deref().unwrap_or("an artifact"),
                            record
                                .size
                                .as_deref()
                                .map(|s| format!(" ({s})"))
                                .unwrap_or_default()
                        ),
                    ));
                    if pruned > 0 {
                        events.push(PlannedEvent::normal(
                            reasons::ARTIFACTS_PRUNED,
                            format!(
                                "retention of schedule {} deleted {pruned} artifact(s) after Job {}",
                                run.schedule.as_deref().unwrap_or("-"),
                                run.job
                            ),
                        ));
                    }
                } else {
                    let reason = run
                        .reason
                        .clone()
                        .unwrap_or_else(|| r::JOB_FAILED.to_owned());
                    let message = run.message.clone().unwrap_or_default();
                    let newer = status
                        .last_failure
                        .as_ref()
                        .is_none_or(|f| f.time.0 <= time(run.finish_time).0);
                    if newer {
                        status.last_failure = Some(FailureRecord {
                            time: time(run.finish_time),
                            reason: reason.clone(),
                            message: message.clone(),
                            job: Some(run.job.clone()),
                        });
                    }
                    events.push(PlannedEvent::warning(
                        reasons::BACKUP_FAILED,
                        format!("Job {} failed: {reason}: {message}", run.job),
                    ));
                }
                status.recent_backups.push(record);
            }
        }
    }
    status
        .recent_backups
        .sort_by_key(|b| std::cmp::Reverse(b.completion_time.as_ref().map(|t| t.0)));
    status.recent_backups.truncate(RECENT_BACKUPS_LIMIT);
    status.last_backup = status
        .recent_backups
        .first()
        .cloned()
        .or(status.last_backup);

    let generation = obs.generation;
    let now = obs.now;
    let previous = prev.conditions.as_slice();
    let mut conds: Vec<Condition> = Vec::new();

    // ConfigValid.
    let (config_status, config_reason, config_message) = match &obs.config {
        ConfigCheck::Valid => (
            "True",
            r::VALID,
            format!("the {} configuration is valid", obs.plugin),
        ),
        ConfigCheck::Invalid(m) => ("False", r::INVALID_CONFIG, m.clone()),
        ConfigCheck::NotAllowed(m) => ("False", r::PLUGIN_NOT_ALLOWED, m.clone()),
        ConfigCheck::Unusable(u) => ("False", u.reason(), u.message().to_owned()),
    };
    upsert_condition(
        &mut conds,
        previous,
        conditions::CONFIG_VALID,
        config_status,
        config_reason,
        config_message.clone(),
        generation,
        now,
    );

    // Reachable: the newest probe result, else what was there.
    if let Some(probe) = probe_run {
        status.last_probe_time = Some(time(probe.finish_time));
        // Until now the probe's Job was the record that it runs; a restarted operator
        // finds it by name and starts no second one.
        if probe.generation.is_some() {
            status.probed_generation = probe.generation.max(status.probed_generation);
        }
        if probe.succeeded {
            let message = probe
                .message
                .clone()
                .unwrap_or_else(|| "the probe succeeded".to_owned());
            upsert_condition(
                &mut conds,
                previous,
                conditions::REACHABLE,
                "True",
                r::PROBE_SUCCEEDED,
                message,
                generation,
                now,
            );
        } else {
            let reason = probe
                .reason
                .clone()
                .unwrap_or_else(|| r::JOB_FAILED.to_owned());
            let message = probe.message.clone().unwrap_or_default();
            events.push(PlannedEvent::warning(
                reasons::PROBE_FAILED,
                format!("probe Job {} failed: {reason}: {message}", probe.job),
            ));
            upsert_condition(
                &mut conds,
                previous,
                conditions::REACHABLE,
                "False",
                &reason,
                message,
                generation,
                now,
            );
        }
    } else if let Some(failure) = &obs.start_failure {
        upsert_condition(
            &mut conds,
            previous,
            conditions::REACHABLE,
            "False",
            &failure.reason,
            format!(
                "the pod of Job {} cannot start: {}",
                failure.job, failure.message
            ),
            generation,
            now,
        );
    } else if let Some(c) =
        find(previous, conditions::REACHABLE).filter(|c| !is_live_start_failure(c))
    {
        conds.push(c.clone());
    } else if obs.probe_supported
        && status.last_probe_time.is_some()
        && let Some(cleared) = find(previous, conditions::REACHABLE)
    {
        // The start failure took the place of what the last probe found, which is not
        // kept: the probe runs again ([`crate::controller::target::plan_probe`]) instead
        // of claiming that no probe ever finished.
        upsert_condition(
            &mut conds,
            previous,
            conditions::REACHABLE,
            "Unknown",
            r::REPROBING,
            format!(
                "a run's pod could not start ({}) and no longer fails; probing again",
                cleared.reason
            ),
            generation,
            now,
        );
    } else if obs.probe_supported {
        upsert_condition(
            &mut conds,
            previous,
            conditions::REACHABLE,
            "Unknown",
            r::NOT_PROBED,
            "no probe has finished yet".to_owned(),
            generation,
            now,
        );
    } else {
        upsert_condition(
            &mut conds,
            previous,
            conditions::REACHABLE,
            "Unknown",
            r::PROBE_UNSUPPORTED,
            format!("the {} plugin has no connectivity probe", obs.plugin),
            generation,
            now,
        );
    }

    // LastBackupSucceeded.
    match &status.last_backup {
        None => upsert_condition(
            &mut conds,
            previous,
            conditions::LAST_BACKUP_SUCCEEDED,
            "Unknown",
            r::NO_BACKUP_YET,
            "no backup has finished yet".to_owned(),
            generation,
            now,
        ),
        Some(b) if b.outcome == RunOutcome::Succeeded => upsert_condition(
            &mut conds,
            previous,
            conditions::LAST_BACKUP_SUCCEEDED,
            "True",
            r::SUCCEEDED,
            format!(
                "Job {} wrote {}",
                b.job.as_deref().unwrap_or("-"),
                b.artifact.as_deref().unwrap_or("an artifact")
            ),
            generation,
            now,
        ),
        Some(b) => upsert_condition(
            &mut conds,
            previous,
            conditions::LAST_BACKUP_SUCCEEDED,
            "False",
            b.reason.as_deref().unwrap_or(r::JOB_FAILED),
            b.message.clone().unwrap_or_default(),
            generation,
            now,
        ),
    }

    // Ready.
    let reachable_false = find(&conds, conditions::REACHABLE).is_some_and(|c| c.status == "False");
    let last_failed = status
        .last_backup
        .as_ref()
        .is_some_and(|b| b.outcome == RunOutcome::Failed);
    let (ready, reason, message) = if config_status != "True" {
        ("False", config_reason, config_message)
    } else if obs.suspended {
        (
            "False",
            r::SUSPENDED,
            "spec.suspend is true: no Job starts".to_owned(),
        )
    } else if reachable_false {
        let m = find(&conds, conditions::REACHABLE)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ("False", r::UNREACHABLE, m)
    } else if last_failed {
        let m = status
            .last_backup
            .as_ref()
            .and_then(|b| b.message.clone())
            .unwrap_or_default();
        ("False", r::LAST_BACKUP_FAILED, m)
    } else {
        (
            "True",
            r::READY,
            "the target is ready to be backed up".to_owned(),
        )
    };
    upsert_condition(
        &mut conds,
        previous,
        conditions::READY,
        ready,
        reason,
        message,
        generation,
        now,
    );

    status.conditions = conds;
    TargetStatusUpdate { status, events }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn job(name: &str, kind: &str, state: Option<(&str, &str)>, schedule: Option<&str>) -> RunJob {
        let mut labels = json!({"stowage.dev/kind": kind});
        if let Some(s) = schedule {
            labels["stowage.dev/schedule"] = json!(s);
        }
        let status = match state {
            None => json!({"active": 1, "startTime": "2030-01-01T00:00:00Z"}),
            Some((type_, at)) => json!({"startTime": "2030-01-01T00:00:00Z", "conditions": [
                {"type": type_, "status": "True", "lastTransitionTime": at,
                 "reason": if type_ == "Failed" { "DeadlineExceeded" } else { "Completed" },
                 "message": "Job was active longer than specified deadline"}]}),
        };
        let job: Job = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "status": status}),
        )
        .unwrap();
        RunJob::from_job(&job)
    }

    /// What the cache computes from a pod that cannot start.
    fn failure_of(pods: &[Pod]) -> StartFailure {
        start_failure(pods).expect("the pod cannot start")
    }

    fn result(outcome: &str, extra: serde_json::Value) -> RunResult {
        let mut v = json!({"operation": "backup", "outcome": outcome,
            "startTime": "2030-01-01T00:00:01Z", "endTime": "2030-01-01T00:00:41Z", "durationSeconds": 40.0});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn pod(message: Option<&str>) -> Pod {
        let terminated = match message {
            Some(m) => json!({"exitCode": 0, "message": m}),
            None => json!({"exitCode": 137, "reason": "OOMKilled"}),
        };
        serde_json::from_value(json!({"metadata": {"name": "p", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "status": {"containerStatuses": [{"name": "run", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": terminated}}]}}))
        .unwrap()
    }

    fn run(
        name: &str,
        kind: RunKind,
        succeeded: bool,
        at: &str,
        res: Option<RunResult>,
    ) -> FinishedRun {
        FinishedRun {
            job: name.into(),
            kind,
            schedule: None,
            succeeded,
            result: res,
            start_time: None,
            finish_time: ts(at),
            reason: (!succeeded).then(|| "Unauthorized".to_owned()),
            message: Some(
                if succeeded {
                    "ok: PostgreSQL 17"
                } else {
                    "password authentication failed"
                }
                .into(),
            ),
            generation: Some(1),
        }
    }

    fn observe(runs: Vec<FinishedRun>) -> TargetObservation {
        TargetObservation {
            generation: Some(1),
            plugin: "postgres".into(),
            plugin_version: "1.0.0".into(),
            probe_supported: true,
            config: ConfigCheck::Valid,
            suspended: false,
            new_runs: runs,
            handled_backup_now: None,
            handled_probe_now: None,
            start_failure: None,
            now: ts("2030-01-01T01:00:00Z"),
        }
    }

    fn cond<'a>(s: &'a BackupTargetStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn an_active_job_is_not_a_finished_run() {
        assert_eq!(
            finished_run(
                &job("j", "backup", None, None),
                &[],
                ts("2030-01-01T00:00:00Z")
            ),
            None
        );
        assert_eq!(job("j", "backup", None, None).state, JobState::Active);
    }

    #[test]
    fn a_run_result_in_the_termination_message_is_read() {
        let res = result("ok", json!({"sha256": "ab", "storedBytes": 5}));
        let message = serde_json::to_string(&res).unwrap();
        let j = job(
            "j",
            "backup",
            Some(("Complete", "2030-01-01T00:00:42Z")),
            Some("nightly"),
        );
        let run = finished_run(&j, &[pod(Some(&message))], ts("2031-01-01T00:00:00Z")).unwrap();
        assert!(run.succeeded);
        assert_eq!(run.result, Some(res));
        assert_eq!(run.schedule.as_deref(), Some("nightly"));
        assert_eq!(run.finish_time, ts("2030-01-01T00:00:42Z"));
        assert_eq!(run.start_time, Some(ts("2030-01-01T00:00:01Z")));
    }

    #[test]
    fn a_run_whose_container_ran_out_of_memory_says_so_whatever_the_result() {
        // The kernel killed the tool (or the runner) for the container's memory limit:
        // containerd marks the container OOMKilled even when the runner survived to
        // write a failed result ("pg_dump was killed by a signal").
        let failed = result(
            "failed",
            json!({"errorKind": "ToolFailed", "message": "pg_dump was killed by a signal without an error message"}),
        );
        let oom = |message: Option<&str>, exit: i32| {
            let mut p = pod(message);
            let t = p
                .status
                .as_mut()
                .unwrap()
                .container_statuses
                .as_mut()
                .unwrap()[0]
                .state
                .as_mut()
                .unwrap()
                .terminated
                .as_mut()
                .unwrap();
            t.reason = Some("OOMKilled".into());
            t.exit_code = exit;
            p
        };
        let mut failed_job = job(
            "j",
            "backup",
            Some(("Failed", "2030-01-01T00:00:42Z")),
            None,
        );
        failed_job.failed_reason = Some("BackoffLimitExceeded".into());
        failed_job.failed_message = Some("Job has reached the specified backoff limit".into());
        let table = [
            (
                "the tool was killed, the runner reported it",
                oom(Some(&serde_json::to_string(&failed).unwrap()), 1),
            ),
            ("the runner itself was killed", oom(None, 137)),
        ];
        for (case, pod) in table {
            let run = finished_run(&failed_job, &[pod], ts("2031-01-01T00:00:00Z")).unwrap();
            assert!(!run.succeeded, "{case}");
            assert_eq!(run.reason.as_deref(), Some("OOMKilled"), "{case}: {run:?}");
            let message = run.message.unwrap_or_default();
            assert!(
                message.contains("memory limit") && message.contains("spec.job.resources"),
                "{case}: the message names the cause and the fix: {message}"
            );
        }
        // A result that says the run succeeded stays a success (the OOM hit something
        // that did not matter to the run).
        let ok = result("ok", json!({}));
        let done = job(
            "j",
            "backup",
            Some(("Complete", "2030-01-01T00:00:42Z")),
            None,
        );
        let run = finished_run(
            &done,
            &[oom(Some(&serde_json::to_string(&ok).unwrap()), 0)],
            ts("2031-01-01T00:00:00Z"),
        )
        .unwrap();
        assert!(run.succeeded);
    }

    #[test]
    fn a_failed_result_gives_its_error_kind_as_reason() {
        let res = result(
            "failed",
            json!({"errorKind": "Unauthorized", "message": "password authentication failed for user backup"}),
        );
        let j = job(
            "j",
            "backup",
            Some(("Failed", "2030-01-01T00:00:42Z")),
            None,
        );
        let run = finished_run(
            &j,
            &[pod(Some(&serde_json::to_string(&res).unwrap()))],
            ts("2031-01-01T00:00:00Z"),
        )
        .unwrap();
        assert!(!run.succeeded);
        assert_eq!(run.reason.as_deref(), Some("Unauthorized"));
        assert_eq!(
            run.message.as_deref(),
            Some("password authentication failed for user backup")
        );
    }

    #[test]
    fn without_a_result_the_job_condition_and_pod_say_why() {
        let j = job(
            "j",
            "backup",
            Some(("Failed", "2030-01-01T00:00:42Z")),
            None,
        );
        for pods in [vec![pod(None)], vec![pod(Some("not json {"))], vec![]] {
            let run = finished_run(&j, &pods, ts("2031-01-01T00:00:00Z")).unwrap();
            assert!(!run.succeeded);
            assert_eq!(run.reason.as_deref(), Some("DeadlineExceeded"));
            assert!(
                run.message.as_deref().unwrap().contains("deadline"),
                "{run:?}"
            );
        }
        let run = finished_run(&j, &[pod(None)], ts("2031-01-01T00:00:00Z")).unwrap();
        assert!(run.message.unwrap().contains("OOMKilled (exit code 137)"));
    }

    #[test]
    fn a_completed_job_without_a_readable_result_is_a_failed_run() {
        let j = job(
            "j",
            "backup",
            Some(("Complete", "2030-01-01T00:00:42Z")),
            None,
        );
        for pods in [vec![], vec![pod(Some("not json {"))], vec![pod(Some(""))]] {
            let run = finished_run(&j, &pods, ts("2031-01-01T00:00:00Z")).unwrap();
            assert!(!run.succeeded, "{pods:?}");
            assert_eq!(run.reason.as_deref(), Some("NoResult"));
            assert!(
                run.message
                    .as_deref()
                    .unwrap()
                    .contains("no readable result"),
                "{run:?}"
            );
        }
    }

    fn waiting_pod(reason: &str, message: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "run", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}}))
        .unwrap()
    }

    #[test]
    fn a_pod_that_cannot_start_says_why_with_its_own_reason() {
        let unschedulable = |message: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "creationTimestamp": "2030-01-01T00:00:00Z"},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": message}]}}))
            .unwrap()
        };
        let cases = [
            (
                waiting_pod(
                    "CreateContainerConfigError",
                    r#"secret "app-db-backup" not found"#,
                ),
                Some(("SecretNotFound", r#"secret "app-db-backup" not found"#)),
            ),
            (
                waiting_pod(
                    "CreateContainerConfigError",
                    "couldn't find key password in Secret shop/app-db-backup",
                ),
                Some((
                    "SecretKeyNotFound",
                    "couldn't find key password in Secret shop/app-db-backup",
                )),
            ),
            (
                waiting_pod("ImagePullBackOff", "Back-off pulling image \"postgres:99\""),
                Some(("ImagePullBackOff", "Back-off pulling image \"postgres:99\"")),
            ),
            (
                waiting_pod("ErrImagePull", "not found"),
                Some(("ErrImagePull", "not found")),
            ),
            (
                unschedulable(
                    "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
                ),
                Some((
                    "ClaimNotBound",
                    "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
                )),
            ),
            (
                unschedulable(
                    "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
                ),
                Some((
                    "Unschedulable",
                    "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
                )),
            ),
            (waiting_pod("ContainerCreating", ""), None),
            (pod(Some("{}")), None),
        ];
        for (pod, expected) in cases {
            let got = start_failure(std::slice::from_ref(&pod));
            assert_eq!(
                got.as_ref()
                    .map(|f| (f.reason.as_str(), f.message.as_str())),
                expected,
                "{pod:?}"
            );
        }
    }

    #[test]
    fn a_run_stuck_before_its_start_becomes_a_failure_after_the_limit() {
        let j = job("j", "backup", None, None); // started 2030-01-01T00:00:00Z
        let pods = [waiting_pod(
            "CreateContainerConfigError",
            r#"secret "s" not found"#,
        )];
        let early =
            ts("2030-01-01T00:00:00Z") + START_FAILURE_LIMIT - jiff::SignedDuration::from_secs(1);
        assert_eq!(stuck_run(&j, &failure_of(&pods), early), None);
        let late = ts("2030-01-01T00:00:00Z") + START_FAILURE_LIMIT;
        let run = stuck_run(&j, &failure_of(&pods), late).unwrap();
        assert!(!run.succeeded);
        assert_eq!(run.reason.as_deref(), Some("SecretNotFound"));
        assert!(
            run.message
                .as_deref()
                .unwrap()
                .contains(r#"secret "s" not found"#)
        );
        assert_eq!(start_failure(&[pod(Some("{}"))]), None, "a pod that ran");
    }

    #[test]
    fn a_start_failure_makes_reachable_and_ready_false_until_it_is_gone() {
        let mut obs = observe(vec![]);
        obs.start_failure = Some(StartFailure {
            job: "app-db-b-1".into(),
            reason: "SecretNotFound".into(),
            message: r#"secret "app-db-backup" not found"#.into(),
        });
        let stuck = derive_target_status(&BackupTargetStatus::default(), &obs).status;
        let reachable = cond(&stuck, conditions::REACHABLE);
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(
            reachable
                .message
                .contains(r#"secret "app-db-backup" not found"#)
        );
        assert!(reachable.message.contains("app-db-b-1"));
        assert_eq!(cond(&stuck, conditions::READY).status, "False");
        // The Secret appeared and the pod started: the stale reason does not linger.
        let resolved = derive_target_status(&stuck, &observe(vec![])).status;
        let reachable = cond(&resolved, conditions::REACHABLE);
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("Unknown", "NotProbed"),
            "no probe had finished"
        );
        assert_eq!(cond(&resolved, conditions::READY).status, "True");

        // A probe had finished before a backup's pod got stuck: its answer was replaced
        // by the failure, so the target is probed again rather than called never probed.
        let probed = derive_target_status(
            &BackupTargetStatus::default(),
            &observe(vec![run(
                "p1",
                RunKind::Probe,
                true,
                "2030-01-01T00:10:00Z",
                None,
            )]),
        )
        .status;
        assert_eq!(cond(&probed, conditions::REACHABLE).status, "True");
        let stuck = derive_target_status(&probed, &obs).status;
        assert_eq!(cond(&stuck, conditions::REACHABLE).status, "False");
        let resolved = derive_target_status(&stuck, &observe(vec![])).status;
        let reachable = cond(&resolved, conditions::REACHABLE);
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("Unknown", "Reprobing"),
            "{reachable:?}"
        );
        assert!(
            reachable.message.contains("SecretNotFound"),
            "{reachable:?}"
        );
        assert_eq!(cond(&resolved, conditions::READY).status, "True");
    }

    /// A probe whose own pod could not start is recorded as the probe's answer: that answer
    /// stays (it is what the last probe found) instead of counting as a cleared start
    /// failure that calls for a probe at once, which retried such a target every 5 minutes.
    #[test]
    fn a_probe_stopped_because_its_pod_could_not_start_keeps_its_answer() {
        let failure = StartFailure {
            job: "app-db-p-1".into(),
            reason: "SecretNotFound".into(),
            message: r#"secret "app-db-backup" not found"#.into(),
        };
        let started = ts("2030-01-01T00:50:00Z");
        let mut waiting = observe(vec![]);
        waiting.now = started;
        waiting.start_failure = Some(failure.clone());
        let waiting = derive_target_status(&BackupTargetStatus::default(), &waiting).status;
        let probe_job = crate::controller::fixtures::active_probe("app-db-p-1", started);
        let stopped_at = started + START_FAILURE_LIMIT;
        let stopped = stuck_run(&probe_job, &failure, stopped_at).unwrap();
        let mut recording = observe(vec![stopped]);
        recording.now = stopped_at;
        let recorded = derive_target_status(&waiting, &recording).status;
        assert_eq!(recorded.last_probe_time, Some(time(stopped_at)));
        let reachable = cond(&recorded, conditions::REACHABLE);
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", "SecretNotFound")
        );
        // The next reconcile, with the probe's Job gone: the answer stays.
        let mut later = observe(vec![]);
        later.now = stopped_at + jiff::SignedDuration::from_secs(10);
        let after = derive_target_status(&recorded, &later).status;
        let kept = cond(&after, conditions::REACHABLE);
        assert_eq!(
            kept, reachable,
            "the recorded probe answer is kept as it was"
        );
        assert!(is_stopped_probe_answer(kept), "{kept:?}");
        assert!(
            !is_stopped_probe_answer(cond(&waiting, conditions::REACHABLE)),
            "a live start failure is not a recorded answer"
        );
    }

    #[test]
    fn jobs_older_than_the_recorded_window_count_as_recorded() {
        let mut status = BackupTargetStatus::default();
        for i in 0..RECENT_BACKUPS_LIMIT {
            status.recent_backups.push(BackupRecord {
                outcome: RunOutcome::Succeeded,
                start_time: None,
                completion_time: Some(time(ts(&format!("2030-01-02T00:{i:02}:00Z")))),
                artifact: None,
                size_bytes: None,
                size: None,
                sha256: None,
                duration_seconds: None,
                job: Some(format!("j{i}")),
                schedule: None,
                reason: None,
                message: None,
            });
        }
        let old = job(
            "old",
            "backup",
            Some(("Complete", "2030-01-01T00:00:00Z")),
            None,
        );
        let new = job(
            "new",
            "backup",
            Some(("Complete", "2030-01-03T00:00:00Z")),
            None,
        );
        let recorded = job(
            "j3",
            "backup",
            Some(("Complete", "2030-01-02T00:03:00Z")),
            None,
        );
        assert!(
            !may_be_unrecorded(&status, &old),
            "rotated out: never recorded again"
        );
        assert!(may_be_unrecorded(&status, &new));
        assert!(!may_be_unrecorded(&status, &recorded));
        status.recent_backups.truncate(3);
        assert!(
            may_be_unrecorded(&status, &old),
            "the window is not full yet"
        );
    }

    #[test]
    fn a_probe_result_is_not_taken_for_a_backup() {
        let mut res = result("ok", json!({}));
        res.operation = RunKind::Probe;
        let j = job(
            "j",
            "backup",
            Some(("Complete", "2030-01-01T00:00:42Z")),
            None,
        );
        let run = finished_run(
            &j,
            &[pod(Some(&serde_json::to_string(&res).unwrap()))],
            ts("2031-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(run.result, None);
        // A backup Job whose only result is a probe's did not report a backup.
        assert!(!run.succeeded);
        assert_eq!(run.reason.as_deref(), Some("NoResult"));
    }

    #[test]
    fn a_new_target_is_ready_with_unknown_reachability_and_no_backup() {
        let update = derive_target_status(&BackupTargetStatus::default(), &observe(vec![]));
        let s = &update.status;
        assert_eq!(cond(s, "ConfigValid").reason, "Valid");
        assert_eq!(
            (
                cond(s, "Reachable").status.as_str(),
                cond(s, "Reachable").reason.as_str()
            ),
            ("Unknown", "NotProbed")
        );
        assert_eq!(cond(s, "LastBackupSucceeded").reason, "NoBackupYet");
        assert_eq!(
            (
                cond(s, "Ready").status.as_str(),
                cond(s, "Ready").reason.as_str()
            ),
            ("True", "Ready")
        );
        assert!(update.events.is_empty());
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn ready_reasons_follow_their_precedence() {
        let base = derive_target_status(&BackupTargetStatus::default(), &observe(vec![])).status;
        let ready = |obs: TargetObservation, prev: &BackupTargetStatus| {
            let s = derive_target_status(prev, &obs).status;
            let c = cond(&s, "Ready").clone();
            (c.status, c.reason)
        };
        let mut o = observe(vec![]);
        o.config = ConfigCheck::Invalid("spec.postgres.database: set it".into());
        o.suspended = true;
        assert_eq!(ready(o, &base), ("False".into(), "InvalidConfig".into()));
        let mut o = observe(vec![]);
        o.config = ConfigCheck::NotAllowed("no".into());
        assert_eq!(ready(o, &base), ("False".into(), "PluginNotAllowed".into()));
        let mut o = observe(vec![run(
            "p",
            RunKind::Probe,
            false,
            "2030-01-01T00:10:00Z",
            None,
        )]);
        o.suspended = true;
        assert_eq!(ready(o, &base), ("False".into(), "Suspended".into()));
        let o = observe(vec![
            run("p", RunKind::Probe, false, "2030-01-01T00:10:00Z", None),
            run("b", RunKind::Backup, false, "2030-01-01T00:20:00Z", None),
        ]);
        assert_eq!(ready(o, &base), ("False".into(), "Unreachable".into()));
        let o = observe(vec![run(
            "b",
            RunKind::Backup,
            false,
            "2030-01-01T00:20:00Z",
            None,
        )]);
        assert_eq!(ready(o, &base), ("False".into(), "LastBackupFailed".into()));
    }

    #[test]
    fn a_failed_probe_makes_reachable_false_with_the_plugin_reason_and_one_event() {
        let update = derive_target_status(
            &BackupTargetStatus::default(),
            &observe(vec![run(
                "p",
                RunKind::Probe,
                false,
                "2030-01-01T00:10:00Z",
                None,
            )]),
        );
        let c = cond(&update.status, "Reachable");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Unauthorized")
        );
        assert_eq!(c.message, "password authentication failed");
        assert_eq!(
            update.status.last_probe_time,
            Some(time(ts("2030-01-01T00:10:00Z")))
        );
        assert_eq!(
            update.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["ProbeFailed"]
        );
        let ok = derive_target_status(
            &update.status,
            &observe(vec![run(
                "p2",
                RunKind::Probe,
                true,
                "2030-01-01T00:20:00Z",
                None,
            )]),
        );
        let c = cond(&ok.status, "Reachable");
        assert_eq!(
            (c.status.as_str(), c.message.as_str()),
            ("True", "ok: PostgreSQL 17")
        );
        assert!(ok.events.is_empty());
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let first = derive_target_status(&BackupTargetStatus::default(), &observe(vec![])).status;
        let mut later = observe(vec![]);
        later.now = ts("2030-06-01T00:00:00Z");
        let second = derive_target_status(&first, &later).status;
        assert_eq!(first, second, "nothing changed, so nothing to write");
        later.suspended = true;
        let third = derive_target_status(&second, &later).status;
        assert_eq!(
            cond(&third, "Ready").last_transition_time,
            time(ts("2030-06-01T00:00:00Z"))
        );
        assert_eq!(
            cond(&third, "ConfigValid").last_transition_time,
            cond(&first, "ConfigValid").last_transition_time
        );
    }

    #[test]
    fn recent_backups_are_bounded_newest_first_and_artifacts_are_totalled() {
        let mut status = BackupTargetStatus::default();
        for i in 0..12u32 {
            let res = result(
                "ok",
                json!({"storedBytes": 100, "sha256": format!("{i:064x}"), "artifact": format!("a{i}")}),
            );
            let at = format!("2030-01-01T00:{:02}:00Z", i);
            status = derive_target_status(
                &status,
                &observe(vec![run(
                    &format!("b{i}"),
                    RunKind::Backup,
                    true,
                    &at,
                    Some(res),
                )]),
            )
            .status;
        }
        assert_eq!(status.recent_backups.len(), RECENT_BACKUPS_LIMIT);
        assert_eq!(status.recent_backups[0].job.as_deref(), Some("b11"));
        assert_eq!(status.recent_backups[9].job.as_deref(), Some("b2"));
        assert_eq!(
            status.last_backup.as_ref().unwrap().sha256.as_deref(),
            Some(format!("{:064x}", 11).as_str())
        );
        assert_eq!(
            status.artifacts,
            Some(ArtifactSummary {
                count: 12,
                total_bytes: 1200
            })
        );
        // A run older than every kept one is not recorded again; a recorded one neither.
        let old = run("b0", RunKind::Backup, true, "2030-01-01T00:00:00Z", None);
        let kept = run("b11", RunKind::Backup, true, "2030-01-01T00:11:00Z", None);
        let new = run("b12", RunKind::Backup, true, "2030-01-01T00:12:00Z", None);
        let left = unrecorded_runs(&status, vec![old, kept, new]);
        assert_eq!(
            left.iter().map(|r| r.job.as_str()).collect::<Vec<_>>(),
            ["b12"]
        );
    }

    #[test]
    fn pruning_lowers_the_count_and_a_failure_is_recorded() {
        let res = result("ok", json!({"storedBytes": 100, "pruned": 1}));
        let s = derive_target_status(
            &BackupTargetStatus::default(),
            &observe(vec![
                run(
                    "b1",
                    RunKind::Backup,
                    true,
                    "2030-01-01T00:01:00Z",
                    Some(result("ok", json!({"storedBytes": 100}))),
                ),
                run(
                    "b2",
                    RunKind::Backup,
                    true,
                    "2030-01-01T00:02:00Z",
                    Some(res),
                ),
            ]),
        );
        assert_eq!(s.status.artifacts.as_ref().unwrap().count, 1);
        assert!(s.events.iter().any(|e| e.reason == "ArtifactsPruned"));
        let f = derive_target_status(
            &s.status,
            &observe(vec![run(
                "b3",
                RunKind::Backup,
                false,
                "2030-01-01T00:03:00Z",
                None,
            )]),
        );
        let failure = f.status.last_failure.as_ref().unwrap();
        assert_eq!(
            (failure.reason.as_str(), failure.job.as_deref()),
            ("Unauthorized", Some("b3"))
        );
        assert_eq!(
            f.status.last_successful_backup_time,
            Some(time(ts("2030-01-01T00:02:00Z")))
        );
        assert_eq!(
            cond(&f.status, "LastBackupSucceeded").reason,
            "Unauthorized"
        );
        assert_eq!(
            f.events
                .iter()
                .map(|e| (e.reason, e.warning))
                .collect::<Vec<_>>(),
            [("BackupFailed", true)]
        );
    }

    #[test]
    fn pruning_lowers_the_count_and_the_total_bytes() {
        let mut status = BackupTargetStatus::default();
        for (i, bytes) in [100u64, 200, 300].into_iter().enumerate() {
            let res = result("ok", json!({"storedBytes": bytes}));
            let at = format!("2030-01-01T00:0{i}:00Z");
            status = derive_target_status(
                &status,
                &observe(vec![run(
                    &format!("b{i}"),
                    RunKind::Backup,
                    true,
                    &at,
                    Some(res),
                )]),
            )
            .status;
        }
        assert_eq!(
            status.artifacts,
            Some(ArtifactSummary {
                count: 3,
                total_bytes: 600
            })
        );
        // A fourth backup of 400 bytes whose retention deleted the 100- and 200-byte ones.
        let res = result(
            "ok",
            json!({"storedBytes": 400, "pruned": 2, "prunedBytes": 300}),
        );
        let s = derive_target_status(
            &status,
            &observe(vec![run(
                "b3",
                RunKind::Backup,
                true,
                "2030-01-01T00:03:00Z",
                Some(res),
            )]),
        );
        assert_eq!(
            s.status.artifacts,
            Some(ArtifactSummary {
                count: 2,
                total_bytes: 700
            })
        );
        // More pruned bytes than observed (e.g. artifacts written before the status
        // existed) saturate at zero instead of wrapping.
        let res = result(
            "ok",
            json!({"storedBytes": 10, "pruned": 1, "prunedBytes": 10_000}),
        );
        let s = derive_target_status(
            &s.status,
            &observe(vec![run(
                "b4",
                RunKind::Backup,
                true,
                "2030-01-01T00:04:00Z",
                Some(res),
            )]),
        );
        assert_eq!(
            s.status.artifacts,
            Some(ArtifactSummary {
                count: 2,
                total_bytes: 0
            })
        );
    }

    #[test]
    fn only_the_newest_unrecorded_probe_counts() {
        let status = BackupTargetStatus {
            last_probe_time: Some(time(ts("2030-01-01T00:05:00Z"))),
            ..BackupTargetStatus::default()
        };
        let runs = vec![
            run("p0", RunKind::Probe, true, "2030-01-01T00:05:00Z", None),
            run("p1", RunKind::Probe, true, "2030-01-01T00:06:00Z", None),
            run("p2", RunKind::Probe, false, "2030-01-01T00:07:00Z", None),
        ];
        let left = unrecorded_runs(&status, runs);
        assert_eq!(
            left.iter().map(|r| r.job.as_str()).collect::<Vec<_>>(),
            ["p2"]
        );
    }

    #[test]
    fn a_recorded_probe_marks_the_newest_generation_its_unrecorded_probes_probed() {
        let with_generation = |name: &str, at: &str, generation| FinishedRun {
            generation,
            ..run(name, RunKind::Probe, true, at, None)
        };
        // (generations of the probes that finished at 00:06, 00:07, 00:08; the
        // probedGeneration before) -> the probedGeneration recorded.
        let cases = [
            ([Some(2), Some(3), Some(1)], Some(1), Some(3)),
            ([Some(1), Some(1), Some(2)], None, Some(2)),
            ([None, None, None], Some(4), Some(4)),
            ([Some(1), None, Some(1)], Some(5), Some(5)),
        ];
        for (generations, before, expected) in cases {
            let status = BackupTargetStatus {
                probed_generation: before,
                ..BackupTargetStatus::default()
            };
            let runs = ["00:06", "00:07", "00:08"]
                .iter()
                .zip(generations)
                .map(|(at, g)| with_generation(at, &format!("2030-01-01T{at}:00Z"), g))
                .collect();
            let obs = TargetObservation {
                generation: Some(5),
                ..observe(unrecorded_runs(&status, runs))
            };
            let derived = derive_target_status(&status, &obs).status;
            assert_eq!(
                derived.probed_generation, expected,
                "{generations:?} over {before:?}"
            );
        }
    }

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(2 * 1024 * 1024), "2.0 MiB");
        assert_eq!(human_size(1536), "1.5 KiB");
    }
}
