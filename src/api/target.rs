//! `BackupTarget`: what to back up, with which plugin, and where the artifacts go.

// `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Compression, JobSettings, ProbeSettings, StorageSpec, condition_list_schema};
use crate::registry::PluginConfig;

/// The desired state of a BackupTarget: exactly one plugin section (its key is the plugin's
/// name, e.g. `postgres` or `http`), where artifacts go, and how Jobs run.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.dev",
    version = "v1alpha1",
    kind = "BackupTarget",
    plural = "backuptargets",
    singular = "backuptarget",
    shortname = "bt",
    category = "stowage",
    namespaced,
    status = "BackupTargetStatus",
    doc = "Something to back up (a database, an application export, a volume) with one plugin's typed configuration, and where its artifacts go.",
    printcolumn(
        name = "Plugin",
        type_ = "string",
        json_path = ".status.plugin",
        description = "The plugin that backs this target up"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the target is usable and its last backup succeeded"
    ),
    printcolumn(
        name = "Last Backup",
        type_ = "date",
        json_path = ".status.lastBackup.completionTime",
        description = "When the most recent backup finished"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.lastBackup.size",
        description = "Stored size of the most recent artifact"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Why the target is (not) ready"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulBackupTime",
        priority = 1,
        description = "When the most recent successful backup finished"
    ),
    printcolumn(
        name = "Artifacts",
        type_ = "integer",
        json_path = ".status.artifacts.count",
        priority = 1,
        description = "Artifacts known for this target"
    ),
    printcolumn(
        name = "Claim",
        type_ = "string",
        json_path = ".spec.storage.claimName",
        priority = 1,
        description = "PersistentVolumeClaim holding the artifacts"
    )
)]
// No `deny_unknown_fields`: serde does not support it with `flatten`; the API server
// rejects unknown fields through the schema instead.
#[serde(rename_all = "camelCase")]
pub struct BackupTargetSpec {
    /// The plugin section: exactly one key naming the plugin, holding its configuration.
    #[serde(flatten)]
    pub plugin: PluginConfig,
    /// Where the artifacts are written.
    pub storage: StorageSpec,
    /// On-the-fly compression of artifacts: `none`, `gzip` or `zstd` (default).
    #[serde(default)]
    pub compression: Compression,
    /// Settings of the backup and probe Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSettings>,
    /// Periodic connectivity test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSettings>,
    /// When true, no scheduled, on-demand or probe Job is started for this target; Jobs
    /// already running finish.
    #[serde(default)]
    pub suspend: bool,
}

/// Whether a finished run succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunOutcome {
    /// The artifact and its sidecar were written and verified.
    Succeeded,
    /// The run failed; see `reason` and `message`.
    Failed,
}

/// One finished backup run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// Whether the run succeeded.
    pub outcome: RunOutcome,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Path of the artifact relative to the claim's root (e.g.
    /// `shop/app-db/2026-11-21/postgres-20261121T023000Z.dump.zst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// Stored (compressed) size of the artifact in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Stored size in human units (e.g. `12.3 MiB`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// SHA-256 of the stored artifact, hex; the same value is in the artifact's sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Wall-clock duration of the run in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Name of the Job that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Name of the BackupSchedule that triggered it; unset for an on-demand run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// For a failed run: the error kind (e.g. `Unauthorized`, `Unreachable`, `Timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a failed run: what went wrong, as the plugin reported it (never a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The most recent failed run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// When the failure was recorded.
    pub time: Time,
    /// The error kind (e.g. `Unauthorized`, `Unreachable`, `Timeout`, `JobFailed`).
    pub reason: String,
    /// What went wrong, as the plugin reported it (never a secret value).
    pub message: String,
    /// Name of the Job that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Totals over the artifacts the operator knows for a target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSummary {
    /// Number of artifacts.
    pub count: u32,
    /// Sum of their stored sizes in bytes.
    pub total_bytes: u64,
}

/// The observed state of a BackupTarget, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The plugin selected by the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Version of that plugin in the running operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// Conditions `ConfigValid`, `Reachable`, `Ready` and `LastBackupSucceeded`, each with a
    /// reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "condition_list_schema")]
    pub conditions: Vec<Condition>,
    /// The most recent finished backup, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// When the most recent successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_time: Option<Time>,
    /// The most recent failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
    /// The most recent finished backups, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent_backups: Vec<BackupRecord>,
    /// Totals over the target's artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactSummary>,
    /// The last `stowage.dev/backup-now` annotation value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_backup_now: Option<String>,
    /// The last `stowage.dev/probe-now` annotation value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_probe_now: Option<String>,
    /// The newest `metadata.generation` whose connectivity probe has finished and been
    /// recorded here. While it is older than `observedGeneration`, that generation's probe
    /// runs or waits for a free slot (the operator runs at most `--max-concurrent-probes`
    /// probe Jobs at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probed_generation: Option<i64>,
    /// When the last probe finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
}
