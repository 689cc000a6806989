//! The `stowage.dev/v1alpha1` API: `BackupTarget`, `BackupSchedule` and `BackupRestore`.
//!
//! Every field's doc comment is the description that `kubectl explain` shows, so they
//! are written for users, not for Rust readers.

mod common;
mod plugin;
mod restore;
mod schedule;
mod target;

pub use common::{Compression, JobSettings, ProbeSettings, StorageSpec, condition_list_schema};
pub use plugin::{
    ACCEPTED, ArtifactFormat, BackupPlugin, BackupPluginSpec, BackupPluginStatus,
    PluginCapabilities, PluginEnvVar, PluginNeeds,
};
pub use restore::{
    BackupRestore, BackupRestoreSpec, BackupRestoreStatus, Latest, RestoreDestination, RestoreMode,
    RestorePhase, RestorePlan, RestoreSource, RestoredArtifact, TargetRef, restore_conditions,
};
pub use schedule::{BackupSchedule, BackupScheduleSpec, BackupScheduleStatus, ConcurrencyPolicy};
pub use target::{
    ArtifactSummary, BackupRecord, BackupTarget, BackupTargetSpec, BackupTargetStatus,
    FailureRecord, RunOutcome,
};

pub use crate::retention::RetentionPolicy;

/// The API group of every stowage resource.
pub const GROUP: &str = "stowage.dev";
/// The API version served and stored.
pub const VERSION: &str = "v1alpha1";

/// Annotation on a `BackupTarget` that requests one on-demand backup; each distinct value
/// (a token, e.g. `$(date +%s)`) is handled once and recorded in
/// `status.lastHandledBackupNow`.
pub const ANNOTATION_BACKUP_NOW: &str = "stowage.dev/backup-now";
/// Annotation on a `BackupTarget` that requests one connectivity probe; each distinct value
/// is handled once and recorded in `status.lastHandledProbeNow`.
pub const ANNOTATION_PROBE_NOW: &str = "stowage.dev/probe-now";

/// Condition types used on `BackupTarget` status.
pub mod conditions {
    /// The plugin config passed the plugin's semantic validation.
    pub const CONFIG_VALID: &str = "ConfigValid";
    /// The last probe reached and authenticated to the service.
    pub const REACHABLE: &str = "Reachable";
    /// The target is usable: config valid, not suspended, and the last backup (if any) succeeded.
    pub const READY: &str = "Ready";
    /// The most recent finished backup succeeded.
    pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
    /// The API server accepted the Job of the target's latest scheduled run; `False` names
    /// the API error (an invalid `spec.job` field, a full quota, an admission webhook).
    /// Written by the schedules, so it appears once a schedule has started a run.
    pub const JOBS_ACCEPTED: &str = "JobsAccepted";
}
