//! `BackupSchedule`: when to back up which targets, and how many artifacts to keep.

// `printcolumn(...)` entries repeat `type_ = ...` by design; clippy reads them as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{RetentionPolicy, condition_list_schema};
use crate::schedule::MIN_STARTING_DEADLINE_SECONDS;

/// What to do when a tick comes while the previous run for the same target is still going.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ConcurrencyPolicy {
    /// Skip the new run (the default).
    #[default]
    Forbid,
    /// Run both.
    Allow,
    /// Stop the running one and start the new one.
    Replace,
}

/// The desired state of a BackupSchedule.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "stowage.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    plural = "backupschedules",
    singular = "backupschedule",
    shortname = "bs",
    category = "stowage",
    namespaced,
    status = "BackupScheduleStatus",
    doc = "When to back up a set of BackupTargets (cron in a time zone, a label selector) and how many of the artifacts it makes to keep.",
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "Cron expression"
    ),
    printcolumn(
        name = "Timezone",
        type_ = "string",
        json_path = ".spec.timeZone",
        description = "IANA time zone of the cron expression"
    ),
    printcolumn(
        name = "Targets",
        type_ = "integer",
        json_path = ".status.selectedTargets",
        description = "BackupTargets the selector matches"
    ),
    printcolumn(
        name = "Suspend",
        type_ = "boolean",
        json_path = ".spec.suspend",
        description = "Whether new runs are suspended"
    ),
    printcolumn(
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "When the schedule last started runs"
    ),
    printcolumn(
        name = "Next Run",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        description = "When the schedule next starts runs"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = 1,
        description = "Whether the schedule is valid and active"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime",
        priority = 1,
        description = "When a run of this schedule last succeeded"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = kube::core::cel::Rule::new("!self.schedule.startsWith('TZ=') && !self.schedule.startsWith('CRON_TZ=')")
    .message("set the time zone in spec.timeZone, not as a TZ= prefix of spec.schedule")
    .field_path(".schedule"))]
pub struct BackupScheduleSpec {
    /// When to run, as a 5-field cron expression (`minute hour day-of-month month
    /// day-of-week`, e.g. `30 2 * * *`) or a macro: `@yearly`, `@annually`, `@monthly`,
    /// `@weekly`, `@daily`, `@midnight`, `@hourly`.
    #[schemars(length(min = 1, max = 128))]
    #[schemars(regex(
        pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$"
    ))]
    pub schedule: String,
    /// IANA time zone the cron expression is read in (e.g. `Europe/Paris`); default `UTC`.
    /// The time zone database is compiled into stowage, so no zoneinfo is needed in the image.
    /// Daylight-saving changes follow cron semantics: a skipped local time does not run, a
    /// repeated one runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")
    )]
    pub time_zone: Option<String>,
    /// Which BackupTargets in this namespace the schedule runs. An empty selector (`{}`)
    /// selects every target in the namespace.
    pub targets: LabelSelector,
    /// How many of the artifacts this schedule made for each target to keep. Unset or all
    /// zero: keep everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// What to do when a tick comes while the previous run for a target is still going:
    /// `Forbid` (default, skip), `Allow` (run both) or `Replace` (stop the old one).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// If the operator was down at a tick, run it late only if it is still within this many
    /// seconds of the tick; otherwise record it as missed. Unset: 3600. At least 10: a
    /// tick is routinely handled a few seconds after it, and a shorter deadline would
    /// record such ticks as missed (a smaller value stored before this limit counts as 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_STARTING_DEADLINE_SECONDS, max = 2_592_000))]
    pub starting_deadline_seconds: Option<i64>,
    /// When true, no new runs start; resuming does not run the ticks missed meanwhile.
    #[serde(default)]
    pub suspend: bool,
    /// Finished successful Jobs to keep per target (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: Option<i32>,
    /// Finished failed Jobs to keep per target (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: Option<i32>,
}

/// The observed state of a BackupSchedule, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Condition `Ready` (the cron expression and time zone are valid and the schedule is
    /// active), with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "condition_list_schema")]
    pub conditions: Vec<Condition>,
    /// How many BackupTargets the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_targets: Option<u32>,
    /// The most recent tick for which runs were started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The next tick, in UTC (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// When a run started by this schedule last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The Jobs of this schedule that are running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ObjectReference>,
    /// The most recent tick that was not run because the operator was down for longer than
    /// `startingDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_missed_time: Option<Time>,
}
