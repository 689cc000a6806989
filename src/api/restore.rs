//! `BackupRestore`: one restore of one artifact into one BackupTarget's service, kept as a
//! record of what was done.

// `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition_list_schema;

/// A restore: which artifact, into which target, how. The spec cannot change once the
/// BackupRestore exists, so the object stays a true record of what was restored; to
/// restore again, create another one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "stowage.dev",
    version = "v1alpha1",
    kind = "BackupRestore",
    plural = "backuprestores",
    singular = "backuprestore",
    shortname = "br",
    category = "stowage",
    namespaced,
    status = "BackupRestoreStatus",
    doc = "One restore of a backup artifact into a BackupTarget's service (or a dry run of it), with the artifact it chose, the checks it made and how it ended.",
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".status.source",
        description = "Where the artifact was looked for: a BackupTarget, or a claim"
    ),
    printcolumn(
        name = "Artifact",
        type_ = "string",
        json_path = ".status.artifact.path",
        description = "The artifact restored, relative to its claim"
    ),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".status.destination",
        description = "The BackupTarget restored into, and the name inside it"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded or Failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Completed\")].reason",
        priority = 1,
        description = "Why the restore is where it is"
    ),
    printcolumn(
        name = "Dry Run",
        type_ = "boolean",
        json_path = ".spec.dryRun",
        priority = 1,
        description = "Whether only the plan was made"
    ),
    printcolumn(
        name = "Restored",
        type_ = "integer",
        json_path = ".status.bytesRestored",
        priority = 1,
        description = "Bytes of the artifact fed to the service (uncompressed)"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::cel::Rule::new("self == oldSelf")
    .message("the spec of a BackupRestore cannot change: it records what was restored; create a new BackupRestore instead"))]
#[x_kube(validation = kube::core::cel::Rule::new("has(self.source.targetRef) || (has(self.destination) && has(self.destination.targetRef))")
    .message("a restore from spec.source.claimName needs spec.destination.targetRef: the BackupTarget whose service receives the data (it must use the plugin that made the artifact)")
    .field_path(".destination"))]
#[x_kube(validation = kube::core::cel::Rule::new("self.mode != 'Replace' || (has(self.confirm) && self.confirm == ((has(self.destination) && has(self.destination.targetRef)) ? self.destination.targetRef.name : (has(self.source.targetRef) ? self.source.targetRef.name : '')))")
    .message("mode: Replace overwrites the data the destination holds: set spec.confirm to the destination BackupTarget's name (spec.destination.targetRef.name, else spec.source.targetRef.name) to confirm")
    .field_path(".confirm"))]
pub struct BackupRestoreSpec {
    /// Which artifact to restore: one of a BackupTarget's artifacts (`targetRef`, with
    /// `latest`, `path`, `asOf` or `previous`), or a file on a claim (`claimName` and
    /// `path`) when the BackupTarget that made it is gone.
    pub source: RestoreSource,
    /// Where to restore to. Unset: into the source BackupTarget's own service, under the
    /// name its config gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<RestoreDestination>,
    /// `IntoEmpty` (default): refuse when the destination already holds data (for
    /// postgres: the database exists and has user tables). `Replace`: replace what is
    /// there; needs `confirm`. What "holds data" means is the plugin's call.
    #[serde(default)]
    pub mode: RestoreMode,
    /// With `mode: Replace`, the name of the destination BackupTarget, typed again to
    /// confirm that its data may be replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub confirm: Option<String>,
    /// Only plan: choose the artifact, check its SHA-256 against its sidecar, look at the
    /// destination, and write the plan to `status.plan`; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Seconds the restore Job may run before it is stopped and the restore fails.
    /// Unset: the destination target's `spec.job.activeDeadlineSeconds`, else the
    /// operator's default for restores (6 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub active_deadline_seconds: Option<i64>,
}

/// A BackupTarget in the restore's namespace, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// Name of the BackupTarget.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Choose the newest successful artifact (the default when no other choice is set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Latest {}

/// Which artifact to restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::cel::Rule::new("has(self.targetRef) != has(self.claimName)")
    .message("spec.source needs exactly one of targetRef (one of that BackupTarget's artifacts) and claimName (with path: a file on that claim, for disaster recovery)"))]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.claimName) || has(self.path)")
    .message("spec.source.claimName needs spec.source.path: the artifact's path relative to the claim (`stowage artifacts list` on the claim shows them)")
    .field_path(".path"))]
#[x_kube(validation = kube::core::cel::Rule::new("(has(self.latest) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.asOf) ? 1 : 0) + (has(self.previous) ? 1 : 0) <= 1")
    .message("spec.source takes at most one of latest, path, asOf and previous"))]
#[x_kube(validation = kube::core::cel::Rule::new("!has(self.schedule) || !has(self.path)")
    .message("spec.source.schedule narrows latest, asOf and previous to one schedule's artifacts; a path already names one artifact, so drop one of them")
    .field_path(".schedule"))]
pub struct RestoreSource {
    /// The BackupTarget whose artifacts to choose from. Only artifacts that target made
    /// are considered (read from the sidecars on its claim), never another target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// For disaster recovery, when the BackupTarget that made the artifact is gone: the
    /// PersistentVolumeClaim (in this namespace) holding the artifact named by `path`.
    /// The plugin and its facts are read from the artifact's sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Restore the newest successful artifact (the default when none of `path`, `asOf`
    /// and `previous` is set), optionally of `schedule` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Latest>,
    /// One artifact by its path relative to the claim's root, as `status.lastBackup.artifact`
    /// of a BackupTarget shows it (e.g.
    /// `shop/app-db/2026-11-21/postgres-20261121T023000Z.dump.zst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), transform = relative_path_rule)]
    pub path: Option<String>,
    /// The newest artifact made at or before this time (RFC 3339, e.g.
    /// `2026-11-30T02:00:00Z`): the state as it was then. Artifacts are dated by their
    /// schedule tick, or by their start for on-demand backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Time>,
    /// Skip the N newest artifacts and restore the next one (`previous: 1` is the one
    /// before the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub previous: Option<u32>,
    /// Consider only the artifacts this BackupSchedule made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub schedule: Option<String>,
}

/// Where to restore to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreDestination {
    /// The BackupTarget whose service receives the data (its config says where and how to
    /// connect; its Secrets are used). Unset: the source target. It must use the plugin
    /// that made the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// For database plugins, the database to restore into instead of the one the
    /// destination's config names, e.g. a new database next to the live one
    /// (`shop_restored`). It is created when it does not exist. For plugins that work on
    /// an application's claim (`sqlite`, `files`), a path relative to the claim's root
    /// instead of the config's `path`, e.g. `restored/db.sqlite3` or `uploads-restored`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub into: Option<String>,
}

/// What to do when the destination already holds data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestoreMode {
    /// Refuse to restore into a destination that holds data (the default).
    #[default]
    IntoEmpty,
    /// Replace the destination's data; needs `spec.confirm`. The plugin keeps the old
    /// data until the restored copy is complete.
    Replace,
}

/// Where a restore is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestorePhase {
    /// Accepted, waiting for its destination to be free of other runs, or for the
    /// BackupTargets it names to appear.
    Pending,
    /// Its Job is running.
    Running,
    /// The artifact was restored (or, for a dry run, the plan was made).
    Succeeded,
    /// It failed; the `Completed` condition says why. Nothing is retried: create a new
    /// BackupRestore.
    Failed,
}

/// The artifact a restore chose.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoredArtifact {
    /// Path relative to the claim's root.
    pub path: String,
    /// The claim it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// SHA-256 of the stored file, as its sidecar records it (and as the restore checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Stored (compressed) size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// When the backup that made it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// The BackupSchedule that made it; unset for an on-demand backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The plugin that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// What the restore found at its destination, before changing anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    /// The destination and what it holds, in the plugin's words (e.g. `database "shop"
    /// on db.shop.svc:5432 has 12 user tables`).
    pub destination: String,
    /// Whether the destination holds data.
    pub holds_data: bool,
    /// Whether the restore replaces that data (`mode: Replace` and data present). With
    /// `IntoEmpty` and data present the restore is refused instead.
    pub would_replace: bool,
}

/// The observed state of a BackupRestore, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRestoreStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Running`, then `Succeeded` or `Failed`; every restore ends in one of the
    /// last two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// Where the artifact is looked for, for `kubectl get` (`target app-db` or `claim
    /// backups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The destination, for `kubectl get` (`app-db-staging`, or `app-db into shop_restored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The artifact chosen and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<RestoredArtifact>,
    /// What the destination held before the restore, and what the restore does about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RestorePlan>,
    /// The Job that runs the restore (deleting the BackupRestore deletes it, which
    /// cancels the restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the restore Job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the restore ended, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Bytes of the (uncompressed) artifact fed to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_restored: Option<u64>,
    /// Conditions `ArtifactResolved`, `ArtifactVerified`, `DestinationReady` and
    /// `Completed`, each with a reason (the error kind on failure) and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "condition_list_schema")]
    pub conditions: Vec<Condition>,
}

/// Condition types of a BackupRestore.
pub mod restore_conditions {
    /// The artifact was found (reason `Resolved`), or why not (`NotFound`...).
    pub const ARTIFACT_RESOLVED: &str = "ArtifactResolved";
    /// The artifact's size and SHA-256 match its sidecar (`Verified`), or not
    /// (`ChecksumMismatch`).
    pub const ARTIFACT_VERIFIED: &str = "ArtifactVerified";
    /// The destination can receive the artifact (`Empty`, `WillReplace`), or why not
    /// (`DestinationNotEmpty`, `Unreachable`, `Unauthorized`...).
    pub const DESTINATION_READY: &str = "DestinationReady";
    /// The restore ended: `True` with reason `Restored` or `DryRun`, `False` with the
    /// failure's reason; `Unknown` while it is pending or running.
    pub const COMPLETED: &str = "Completed";
}

/// A schema transform: a CEL rule that a path has no `.` or `..` segment, so it stays
/// inside the claim.
fn relative_path_rule(schema: &mut schemars::Schema) {
    schema.insert("pattern".into(), serde_json::Value::String("^[^/]".into()));
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "!self.matches('(^|/)[.][.]?(/|$)') && !self.contains('//')",
            "message": "spec.source.path must be relative to the claim's root, without '.', '..' or empty segments (e.g. shop/app-db/2026-11-21/postgres-20261121T023000Z.dump.zst)",
        }]),
    );
}
