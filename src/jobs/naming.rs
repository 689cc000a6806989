//! Deterministic names and label values of a run's Job.

use sha2::{Digest, Sha256};

use super::{RunKind, RunRequest, Trigger};
use crate::api::BackupTarget;

/// Hex digits of the run hash in [`run_id`] and [`job_name`] (40 bits: collisions among
/// the runs of one target are out of reach).
const HASH_HEX_LEN: usize = 10;

/// The longest Job name: the Job controller copies it into the pod's `job-name` label,
/// whose values are at most 63 characters.
pub const MAX_JOB_NAME_LEN: usize = 63;

/// The longest label value Kubernetes accepts.
const MAX_LABEL_VALUE_LEN: usize = 63;

/// The identifier of one run: a hash of the target (namespace, name, uid), the kind and
/// the trigger (schedule name and tick, or the annotation token). The same run always
/// gets the same id. It is the `stowage.dev/run` label of the Job and `STOWAGE_RUN_ID`
/// of the runner.
pub fn run_id(target: &BackupTarget, request: &RunRequest) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so no two different inputs hash the same bytes.
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(b"stowage.dev/run/v1");
    field(
        target
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    field(
        target
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    field(
        target
            .metadata
            .uid
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    field(request.kind.as_str().as_bytes());
    match &request.trigger {
        Trigger::Schedule { name, tick, .. } => {
            field(b"schedule");
            field(name.as_bytes());
            field(&tick.as_second().to_be_bytes());
            field(&tick.subsec_nanosecond().to_be_bytes());
        }
        Trigger::BackupNow { token } => {
            field(b"backup-now");
            field(token.as_bytes());
        }
        Trigger::Probe { token } => {
            field(b"probe");
            field(token.as_bytes());
        }
        Trigger::Restore(run) => {
            field(b"restore");
            field(run.name.as_bytes());
            field(run.uid.as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(HASH_HEX_LEN);
    for byte in digest.iter().take(HASH_HEX_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The name of the run's Job: `<target>-<b|p>-<run id>` (`<restore>-r-<run id>` for a
/// restore), the name shortened to
/// fit 63 characters and reduced to `[a-z0-9-]`. The same run always gets the same name, so
/// a retried reconcile or a restarted operator gets `AlreadyExists` instead of creating a
/// second Job.
pub fn job_name(target: &BackupTarget, request: &RunRequest) -> String {
    let letter = match request.kind {
        RunKind::Backup => 'b',
        RunKind::Probe => 'p',
        RunKind::Restore => 'r',
    };
    let suffix = format!("-{letter}-{}", run_id(target, request));
    // A restore's Job is named after its BackupRestore, where users look for it.
    let name = match &request.trigger {
        Trigger::Restore(run) => run.name.as_str(),
        _ => target.metadata.name.as_deref().unwrap_or_default(),
    };
    let prefix = dns_label_prefix(name, MAX_JOB_NAME_LEN - suffix.len());
    format!("{prefix}{suffix}")
}

/// `name` as a label value: unchanged when it is a valid one (at most 63 characters), else
/// its first 52 characters and a hash of the whole name. Selectors over the labels of
/// stowage's Jobs (`stowage.dev/target`, `stowage.dev/schedule`) must use this function.
pub fn label_value(name: &str) -> String {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let edges_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if name.len() <= MAX_LABEL_VALUE_LEN
        && valid_chars
        && edges_ok(name.chars().next())
        && edges_ok(name.chars().last())
    {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest
        .iter()
        .take(HASH_HEX_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_LABEL_VALUE_LEN - HASH_HEX_LEN - 1;
    let prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The longest prefix of `name` made of DNS label characters, at most `max` long, that
/// starts and ends with an alphanumeric character; `stowage` when nothing is left.
fn dns_label_prefix(name: &str, max: usize) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "stowage".to_owned()
    } else {
        trimmed.to_owned()
    }
}
