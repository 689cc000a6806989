//! The run's result: a compact JSON document written to the pod's termination message
//! (which Kubernetes caps at 4096 bytes) and printed as the last line of stdout. The
//! controller deserializes it from the pod's status.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::ErrorKind;

/// Kubernetes' limit on a container's termination message, in bytes.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

pub use crate::jobs::RunKind;

/// Whether the run succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did (for a backup: the artifact and its sidecar are published).
    Ok,
    /// It did not; see `errorKind` and `message`.
    Failed,
}

/// The result of one `stowage run`, as the controller reads it from the termination message.
/// Every text field has passed through the run's `Redactor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Which operation ran.
    pub operation: RunKind,
    /// Whether it succeeded.
    pub outcome: Outcome,
    /// Key of the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Version of the plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// Backup: the artifact's path relative to the store root; restore: the artifact read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// Bytes the plugin produced (backup) or consumed (restore), before compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<u64>,
    /// Bytes of the stored (compressed) artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// SHA-256 of the stored artifact, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When the run started.
    pub start_time: Timestamp,
    /// When the run ended.
    pub end_time: Timestamp,
    /// `endTime - startTime` in seconds.
    pub duration_seconds: f64,
    /// Artifacts deleted by the schedule's retention after this backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<u32>,
    /// Stored bytes of the artifacts retention deleted (the sum of their sidecars'
    /// `storedBytes`), set with `pruned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_bytes: Option<u64>,
    /// Why retention failed, when it did (the backup itself still succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_error: Option<String>,
    /// The error's kind (a stable condition reason such as `Unreachable`), when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// What went wrong (failed) or the probe's/restore's summary (ok). May be truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Plugin facts (probe: e.g. `serverVersion`; backup: the sidecar's facts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    /// Restore only: how far it got and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreProgress>,
}

/// The steps of a restore, in order; a failed restore names the one that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreStage {
    /// Choosing the artifact and reading its sidecar.
    #[default]
    Resolve,
    /// Re-hashing the artifact against its sidecar.
    Verify,
    /// Looking at the destination (the plugin's `inspect_destination`).
    Destination,
    /// Feeding the artifact to the service.
    Restore,
    /// Finished (restored, or planned for a dry run).
    Done,
}

/// What a restore found on its way, reported whether it succeeded or not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    /// The step reached (the failing one when the restore failed).
    pub stage: RestoreStage,
    /// Only planned: nothing was changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// When the chosen artifact's backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// The schedule that made the chosen artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The plugin that made the chosen artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_plugin: Option<String>,
    /// The destination in the plugin's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Whether the destination held data before the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds_data: Option<bool>,
    /// Whether that data is (or, in a dry run, would be) replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaces: bool,
}

impl RunResult {
    /// A result with only the operation, outcome and times set.
    pub fn new(
        operation: RunKind,
        outcome: Outcome,
        start_time: Timestamp,
        end_time: Timestamp,
    ) -> Self {
        let duration_seconds = end_time.duration_since(start_time).as_secs_f64();
        RunResult {
            operation,
            outcome,
            plugin: None,
            plugin_version: None,
            artifact: None,
            raw_bytes: None,
            stored_bytes: None,
            sha256: None,
            start_time,
            end_time,
            duration_seconds,
            pruned: None,
            pruned_bytes: None,
            prune_error: None,
            error_kind: None,
            message: None,
            facts: BTreeMap::new(),
            restore: None,
        }
    }

    /// The process exit code: 0, or the error kind's code.
    pub fn exit_code(&self) -> u8 {
        match (self.outcome, self.error_kind) {
            (Outcome::Ok, _) => 0,
            (Outcome::Failed, Some(kind)) => u8::try_from(kind.exit_code()).unwrap_or(1),
            (Outcome::Failed, None) => ErrorKind::Internal.exit_code() as u8,
        }
    }

    /// Compact JSON of at most `limit` bytes: facts are dropped (largest first) until they
    /// take at most a quarter of it, then long messages are cut (marked with `…`), then the
    /// remaining facts dropped; the JSON is always valid.
    pub fn to_bounded_json(&self, limit: usize) -> String {
        let mut result = self.clone();
        let size = |r: &RunResult| {
            serde_json::to_string(r)
                .map(|j| j.len())
                .unwrap_or(usize::MAX)
        };
        let facts_size = |r: &RunResult| {
            serde_json::to_string(&r.facts)
                .map(|j| j.len())
                .unwrap_or(0)
        };
        let drop_largest_fact = |r: &mut RunResult| {
            let largest = r
                .facts
                .iter()
                .max_by_key(|(k, v)| k.len() + v.len())
                .map(|(k, _)| k.clone());
            largest.is_some_and(|key| r.facts.remove(&key).is_some())
        };
        // No text longer than the whole limit can fit: cut those first, cheaply.
        for text in [&mut result.message, &mut result.prune_error]
            .into_iter()
            .flatten()
        {
            truncate_marked(text, limit);
        }
        if let Some(text) = result.restore.as_mut().and_then(|r| r.destination.as_mut()) {
            truncate_marked(text, limit / 8);
        }
        while size(&result) > limit && facts_size(&result) > limit / 4 {
            drop_largest_fact(&mut result);
        }
        for _ in 0..64 {
            let total = size(&result);
            if total <= limit {
                break;
            }
            let over = total - limit;
            let longest = [&mut result.message, &mut result.prune_error]
                .into_iter()
                .flatten()
                .filter(|m| !m.is_empty())
                .max_by_key(|m| m.len());
            let Some(text) = longest else { break };
            // Cut in proportion to the escaped size, so escapes do not make us overshoot.
            let escaped = serde_json::to_string(text.as_str())
                .map(|j| j.len())
                .unwrap_or(text.len());
            let keep = escaped.saturating_sub(over + 8);
            let raw = (text.len() as u128 * keep as u128 / escaped.max(1) as u128) as usize;
            truncate_marked(text, raw.min(text.len().saturating_sub(1)));
        }
        while size(&result) > limit && drop_largest_fact(&mut result) {}
        match serde_json::to_string(&result) {
            Ok(json) if json.len() <= limit => json,
            // Nothing left to cut (limit absurdly small): the smallest valid document.
            _ => serde_json::json!({
                "operation": self.operation,
                "outcome": self.outcome,
                "errorKind": self.error_kind,
            })
            .to_string(),
        }
    }
}

/// Cut `text` to at most `max` bytes on a character boundary, ending with `…` when cut.
pub fn truncate_marked(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let marker = "…";
    let mut end = max.saturating_sub(marker.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(marker);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(message: String) -> RunResult {
        let start: Timestamp = "2026-11-21T02:30:00Z".parse().unwrap();
        let mut result = RunResult::new(
            RunKind::Backup,
            Outcome::Failed,
            start,
            start + jiff::SignedDuration::from_secs(90),
        );
        result.error_kind = Some(ErrorKind::ToolFailed);
        result.message = Some(message);
        result.plugin = Some("postgres".into());
        result
    }

    #[test]
    fn a_huge_error_message_is_cut_to_fit_and_stays_valid_json() {
        for message in [
            "x".repeat(1_000_000),
            "é€😀".repeat(100_000),
            "\u{1}\"\\\n".repeat(50_000),
        ] {
            let mut result = failed(message.clone());
            result.facts = (0..200)
                .map(|i| (format!("fact{i}"), "v".repeat(100)))
                .collect();
            let json = result.to_bounded_json(TERMINATION_MESSAGE_LIMIT);
            assert!(
                json.len() <= TERMINATION_MESSAGE_LIMIT,
                "{} bytes",
                json.len()
            );
            let back: RunResult = serde_json::from_str(&json).unwrap();
            assert_eq!(back.error_kind, Some(ErrorKind::ToolFailed));
            assert_eq!(back.operation, RunKind::Backup);
            let cut = back.message.unwrap();
            assert!(cut.ends_with('…'));
            assert!(message.starts_with(cut.trim_end_matches('…')));
            let escaped = serde_json::to_string(&cut).unwrap().len();
            assert!(
                escaped > 2000,
                "the message was cut more than needed: {escaped}"
            );
        }
    }

    #[test]
    fn a_small_result_is_unchanged() {
        let result = failed("connection refused".into());
        let json = result.to_bounded_json(TERMINATION_MESSAGE_LIMIT);
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, result);
        assert_eq!(back.duration_seconds, 90.0);
        assert_eq!(result.exit_code(), 18);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["outcome"], "failed");
        assert_eq!(value["errorKind"], "ToolFailed");
        assert!(
            value.get("sha256").is_none(),
            "unset fields are omitted: {json}"
        );
    }

    #[test]
    fn an_absurd_limit_still_gives_valid_json() {
        let json = failed("x".repeat(10_000)).to_bounded_json(10);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["errorKind"], "ToolFailed");
    }
}
