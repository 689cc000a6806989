//! Kubernetes Events the controller publishes. Each is planned by a pure function when a
//! status transition is derived and published once that status is written, so a repeated
//! reconcile does not repeat it.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// Event reasons (stable; documented in `docs/operations.md`).
pub mod reasons {
    /// A backup Job was created.
    pub const BACKUP_STARTED: &str = "BackupStarted";
    /// A backup finished and its artifact is stored.
    pub const BACKUP_SUCCEEDED: &str = "BackupSucceeded";
    /// A backup failed.
    pub const BACKUP_FAILED: &str = "BackupFailed";
    /// A probe failed.
    pub const PROBE_FAILED: &str = "ProbeFailed";
    /// Retention deleted artifacts after a backup.
    pub const ARTIFACTS_PRUNED: &str = "ArtifactsPruned";
    /// A schedule's tick was older than its starting deadline and did not run.
    pub const SCHEDULE_MISSED: &str = "ScheduleMissed";
    /// A run waits for another Job that uses the same ReadWriteOnce claim.
    pub const WAITING_FOR_CLAIM: &str = "WaitingForClaim";
    /// A run was not started (concurrency policy, suspended or invalid target).
    pub const BACKUP_SKIPPED: &str = "BackupSkipped";
    /// A run waits for another run of the same target (one writer per target).
    pub const WAITING_FOR_RUN: &str = "WaitingForRun";
    /// The API server refused a run's Job (invalid field, quota, admission webhook).
    pub const JOB_REJECTED: &str = "JobRejected";
    /// A run's pod cannot start (missing Secret, image pull failure, unschedulable).
    pub const RUN_CANNOT_START: &str = "RunCannotStart";
    /// A restore Job was created.
    pub const RESTORE_STARTED: &str = "RestoreStarted";
    /// A restore (or its dry run) succeeded.
    pub const RESTORE_SUCCEEDED: &str = "RestoreSucceeded";
    /// A restore failed or was refused.
    pub const RESTORE_FAILED: &str = "RestoreFailed";
    /// A restore waits for another run of its destination target.
    pub const RESTORE_WAITING: &str = "RestoreWaiting";
}

/// An event to publish: type, reason and note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning or not.
    pub warning: bool,
    /// One of [`reasons`].
    pub reason: &'static str,
    /// Human-readable note (never a secret: it comes from redacted run results).
    pub note: String,
}

impl PlannedEvent {
    /// A Normal event.
    pub fn normal(reason: &'static str, note: String) -> Self {
        PlannedEvent {
            warning: false,
            reason,
            note,
        }
    }

    /// A Warning event.
    pub fn warning(reason: &'static str, note: String) -> Self {
        PlannedEvent {
            warning: true,
            reason,
            note,
        }
    }

    fn action(&self) -> &'static str {
        match self.reason {
            reasons::BACKUP_STARTED
            | reasons::BACKUP_SKIPPED
            | reasons::WAITING_FOR_CLAIM
            | reasons::WAITING_FOR_RUN
            | reasons::JOB_REJECTED
            | reasons::RUN_CANNOT_START => "StartBackup",
            reasons::BACKUP_SUCCEEDED | reasons::BACKUP_FAILED => "RecordBackup",
            reasons::PROBE_FAILED => "RecordProbe",
            reasons::RESTORE_STARTED | reasons::RESTORE_WAITING => "StartRestore",
            reasons::RESTORE_SUCCEEDED | reasons::RESTORE_FAILED => "RecordRestore",
            reasons::ARTIFACTS_PRUNED => "ApplyRetention",
            _ => "Schedule",
        }
    }
}

/// Kubernetes limits an event note to 1 KiB.
const NOTE_LIMIT: usize = 1024;

fn bounded(note: &str) -> String {
    if note.len() <= NOTE_LIMIT {
        return note.to_owned();
    }
    let mut end = NOTE_LIMIT - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

/// Most batches of events being published at once by [`publish_later`].
pub const EVENT_CONCURRENCY: usize = 2;

/// Publish `events` behind the API writes that matter: in a background task, once no Job
/// creation is pending, one batch (in order) per slot, at most [`EVENT_CONCURRENCY`]
/// batches at once over the operator.
/// With `ctx.events_inline` (unit tests, which need a fixed order) they are published
/// before this returns.
pub async fn publish_later(ctx: &super::Context, events: Vec<(ObjectReference, PlannedEvent)>) {
    if events.is_empty() {
        return;
    }
    if ctx.events_inline {
        for (object, event) in &events {
            publish(&ctx.recorder(), object, std::slice::from_ref(event)).await;
        }
        return;
    }
    let recorder = ctx.recorder();
    let slots = ctx.event_slots.clone();
    let creates = ctx.job_creates.clone();
    tokio::spawn(async move {
        let Ok(_slot) = slots.acquire_owned().await else {
            return;
        };
        creates.idle().await;
        for (object, event) in &events {
            publish(&recorder, object, std::slice::from_ref(event)).await;
        }
    });
}

/// Publish `events` about `object` now, in order; a failure is logged, never returned.
pub async fn publish(recorder: &Recorder, object: &ObjectReference, events: &[PlannedEvent]) {
    for planned in events {
        let event = Event {
            type_: if planned.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: planned.reason.to_owned(),
            note: Some(bounded(&planned.note)),
            action: planned.action().to_owned(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, object).await {
            tracing::warn!(
                reason = planned.reason,
                object = object.name.as_deref().unwrap_or_default(),
                namespace = object.namespace.as_deref().unwrap_or_default(),
                %error,
                "cannot publish event"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let note = "é".repeat(2000);
        let cut = bounded(&note);
        assert!(cut.len() <= NOTE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short"), "short");
    }
}
