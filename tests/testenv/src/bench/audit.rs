//! When Jobs came to exist, by the API server's own record: the audit log a plane started
//! with [`crate::PlaneOptions::audit_job_creates`] writes, one JSON line per Job create
//! answered (`stage: ResponseComplete`), with microsecond times.
//!
//! A watch sees a Job late when the API server is busy (it holds events back for a slow
//! watcher, then closes it); the audit line is written when the create is answered, so it
//! measures the creator alone.

use std::collections::HashMap;
use std::path::Path;

use jiff::Timestamp;
use serde::Deserialize;

/// One audit event, the fields read here (see the `audit.k8s.io/v1` `Event` type).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<Status>,
    stage_timestamp: Timestamp,
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: u16,
}

/// `(namespace, name)` of every Job whose create the API server answered with 201, with
/// when it answered, parsed from the lines of an audit log. Lines that are not such an
/// event (other stages, failed creates, a last line cut short) are skipped.
pub fn job_creates(log: &str) -> HashMap<(String, String), Timestamp> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .filter(|e| e.stage == "ResponseComplete" && e.verb == "create")
        .filter(|e| e.response_status.as_ref().is_some_and(|s| s.code == 201))
        .filter_map(|e| {
            let object = e.object_ref?;
            (object.resource == "jobs" && !object.name.is_empty())
                .then_some(((object.namespace, object.name), e.stage_timestamp))
        })
        .collect()
}

/// [`job_creates`] of the file at `path`; empty when it does not exist (yet).
pub fn job_creates_in(path: &Path) -> std::io::Result<HashMap<(String, String), Timestamp>> {
    match std::fs::read_to_string(path) {
        Ok(log) => Ok(job_creates(&log)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as kube-apiserver 1.34 writes it (`--audit-log-format json`).
    const CREATED: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"8d4e","stage":"ResponseComplete","requestURI":"/apis/batch/v1/namespaces/shop/jobs","verb":"create","user":{"username":"system:serviceaccount:stowage-system:stowage"},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"jobs","namespace":"shop","name":"db-backup-29412345","apiGroup":"batch","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestReceivedTimestamp":"2026-12-01T19:00:00.100000Z","stageTimestamp":"2026-12-01T19:00:00.123456Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#;

    #[test]
    fn answered_job_creates_are_read_with_their_time() {
        let conflict = CREATED
            .replace(r#""code":201"#, r#""code":409"#)
            .replace("db-backup-29412345", "taken");
        let other_stage = CREATED
            .replace("ResponseComplete", "RequestReceived")
            .replace("db-backup-29412345", "early");
        let pod = CREATED
            .replace(r#""resource":"jobs""#, r#""resource":"pods""#)
            .replace("db-backup-29412345", "a-pod");
        let cut = &CREATED[..CREATED.len() / 2];
        let log = [CREATED, &conflict, &other_stage, &pod, cut].join("\n");
        let creates = job_creates(&log);
        assert_eq!(creates.len(), 1, "{creates:?}");
        assert_eq!(
            creates[&("shop".to_owned(), "db-backup-29412345".to_owned())],
            "2026-12-01T19:00:00.123456Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn a_missing_log_is_empty() {
        let creates = job_creates_in(Path::new("/nonexistent/audit.log")).unwrap();
        assert!(creates.is_empty());
    }
}
