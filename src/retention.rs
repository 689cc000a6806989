//! GFS retention over the artifacts one schedule made for one target.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many artifacts a schedule keeps per target, grandfather-father-son style with
/// restic's semantics: each rule keeps the newest artifact of each of its most recent
/// periods, an artifact kept by any rule is kept, the newest successful artifact is never
/// deleted, and on-demand artifacts are never deleted by a schedule. All zero keeps
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N artifacts.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_last: u32,
    /// Keep the newest artifact of each of the last N hours that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_hourly: u32,
    /// Keep the newest artifact of each of the last N days that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_daily: u32,
    /// Keep the newest artifact of each of the last N ISO weeks that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_weekly: u32,
    /// Keep the newest artifact of each of the last N months that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_monthly: u32,
    /// Keep the newest artifact of each of the last N years that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_yearly: u32,
}
