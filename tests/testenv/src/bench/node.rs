//! A simulated node for a control plane without kube-controller-manager: no pod ever
//! runs; each Job it is shown is marked finished through its status subresource after a
//! delay, the way the Job controller would mark a Job whose one pod succeeded.
//!
//! Without a pod there is no termination message, so stowage records such a run as
//! failed with reason `NoResult`: the benchmark measures the controller, not the runs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

/// The status patch of a Job that ran one pod from `start` to `end` and succeeded: what
/// the API server's Job status validation requires of a finished Job (a start time, a
/// completion time not before it, no active pods, and `SuccessCriteriaMet` alongside
/// `Complete`). Times are truncated to whole seconds, as the API serializes them.
pub fn finished_status(start: Timestamp, end: Timestamp) -> Value {
    let seconds = |t: Timestamp| Timestamp::from_second(t.as_second()).unwrap_or(t);
    let start = seconds(start);
    let end = seconds(end.max(start));
    let condition = |type_: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": end.to_string(),
            "lastTransitionTime": end.to_string(),
        })
    };
    json!({
        "status": {
            "startTime": start.to_string(),
            "completionTime": end.to_string(),
            "active": 0,
            "succeeded": 1,
            "conditions": [
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ],
        }
    })
}

/// Whether a Job has finished (`Complete` or `Failed` is true).
pub fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// How long a Job "runs" before the node marks it finished.
pub type RunTime = Box<dyn Fn(&Job) -> Duration + Send + Sync>;

/// Marks the Jobs it is shown as finished, some time (its [`RunTime`]) after it first
/// saw them.
pub struct SimulatedNode {
    client: kube::Client,
    run_time: RunTime,
    in_flight: Arc<tokio::sync::Semaphore>,
    seen: Mutex<HashSet<(String, String)>>,
    started: AtomicU64,
    settled: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SimulatedNode {
    /// A node that finishes each Job through `client` `run_time(job)` after it first
    /// saw it, with at most `max_in_flight` status writes at a time.
    pub fn new(
        client: kube::Client,
        run_time: impl Fn(&Job) -> Duration + Send + Sync + 'static,
        max_in_flight: usize,
    ) -> Arc<Self> {
        Arc::new(SimulatedNode {
            client,
            run_time: Box::new(run_time),
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            seen: Mutex::new(HashSet::new()),
            started: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// Shows it a Job (from a watch): an active Job not seen before is finished after its
    /// run time. Must be called within a tokio runtime.
    pub fn observe(self: &Arc<Self>, job: &Job) {
        if job_finished(job) || job.metadata.deletion_timestamp.is_some() {
            return;
        }
        let (Some(namespace), Some(name)) =
            (job.metadata.namespace.clone(), job.metadata.name.clone())
        else {
            return;
        };
        let new = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.clone(), name.clone()));
        if !new {
            return;
        }
        let start = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let run_time = (self.run_time)(job);
        self.started.fetch_add(1, Ordering::Relaxed);
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(run_time).await;
            let Ok(_permit) = node.in_flight.clone().acquire_owned().await else {
                return;
            };
            let api: Api<Job> = Api::namespaced(node.client.clone(), &namespace);
            let patch = finished_status(start, Timestamp::now());
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    node.finished.fetch_add(1, Ordering::Relaxed);
                }
                // Deleted meanwhile: nothing to finish.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    node.failed.fetch_add(1, Ordering::Relaxed);
                    *node.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("finishing Job {namespace}/{name}: {e}"));
                }
            }
            node.settled.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// How many Jobs it is still running (seen, their status not written yet).
    pub fn running(&self) -> u64 {
        self.started
            .load(Ordering::Relaxed)
            .saturating_sub(self.settled.load(Ordering::Relaxed))
    }

    /// How many Jobs it has marked finished.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// How many status writes failed, and the last failure.
    pub fn failures(&self) -> (u64, Option<String>) {
        (
            self.failed.load(Ordering::Relaxed),
            self.last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finished_status_is_whole_seconds_and_never_ends_before_it_starts() {
        let start: Timestamp = "2026-11-30T12:00:01.9Z".parse().unwrap();
        let end: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let status = &finished_status(start, end)["status"];
        assert_eq!(status["startTime"], "2026-11-30T12:00:01Z");
        assert_eq!(status["completionTime"], "2026-11-30T12:00:01Z");
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
        let mut job = finished_status(start, end);
        job["apiVersion"] = "batch/v1".into();
        job["kind"] = "Job".into();
        let job: Job = serde_json::from_value(job).unwrap();
        assert!(job_finished(&job));
        assert!(!job_finished(&Job::default()));
    }
}
