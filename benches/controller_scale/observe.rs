//! What the benchmark watches: every Job (when it first appeared, what it is, how many
//! probes are active; each one is handed to the simulated node), and caches of the
//! BackupTargets and BackupSchedules to tell when their statuses say what is measured.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use stowage::api::{BackupSchedule, BackupTarget};
use stowage::controller::watched::{self, WatchedJob};
use stowage::jobs::{annotations, labels};
use stowage_testenv::bench::node::{SimulatedNode, job_finished};

/// Prefix the baseline gives stowage's label and annotation keys, so the operator's
/// watches (which select on `stowage.dev/…` labels) never see its Jobs.
pub const BASELINE_PREFIX: &str = "baseline.";

/// A Job as first seen by the watch.
#[derive(Clone, Debug)]
pub struct SeenJob {
    /// When the watch first delivered it.
    pub at: Timestamp,
    /// `backup`, `probe` (label `stowage.dev/kind`).
    pub kind: Option<String>,
    /// The tick of a scheduled run (annotation `stowage.dev/scheduled-time`).
    pub scheduled: Option<Timestamp>,
    /// Its target (annotation `stowage.dev/target`).
    pub target: Option<String>,
    /// Created by the baseline client.
    pub baseline: bool,
}

/// Namespace and name.
pub type JobKey = (String, String);

/// Every Job the watch has delivered.
#[derive(Debug, Default)]
pub struct JobLedger {
    seen: HashMap<JobKey, SeenJob>,
    active_probes: HashSet<JobKey>,
    max_active_probes: usize,
}

impl JobLedger {
    fn observe(&mut self, job: &Job, now: Timestamp) {
        let key = (
            job.metadata.namespace.clone().unwrap_or_default(),
            job.metadata.name.clone().unwrap_or_default(),
        );
        let label = |k: &str| job.metadata.labels.as_ref()?.get(k).cloned();
        let annotation = |k: &str| job.metadata.annotations.as_ref()?.get(k).cloned();
        let entry = self.seen.entry(key.clone()).or_insert_with(|| SeenJob {
            at: now,
            kind: label(labels::KIND),
            scheduled: annotation(annotations::SCHEDULED_TIME).and_then(|t| t.parse().ok()),
            target: annotation(annotations::TARGET),
            baseline: label(&format!("{BASELINE_PREFIX}{}", labels::KIND)).is_some(),
        });
        if entry.kind.as_deref() == Some("probe") {
            if job_finished(job) || job.metadata.deletion_timestamp.is_some() {
                self.active_probes.remove(&key);
            } else {
                self.active_probes.insert(key);
                self.max_active_probes = self.max_active_probes.max(self.active_probes.len());
            }
        }
    }

    fn forget(&mut self, job: &Job) {
        let key = (
            job.metadata.namespace.clone().unwrap_or_default(),
            job.metadata.name.clone().unwrap_or_default(),
        );
        self.active_probes.remove(&key);
    }

    /// Jobs first seen in `[from, to)`, by kind (`other` for Jobs without the label).
    pub fn created_between(&self, from: Timestamp, to: Timestamp) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for job in self.seen.values().filter(|j| j.at >= from && j.at < to) {
            let kind = job.kind.clone().unwrap_or_else(|| "other".to_owned());
            *out.entry(kind).or_insert(0) += 1;
        }
        out
    }

    /// The most probe Jobs active at once since the last call, and starts counting again.
    pub fn take_max_active_probes(&mut self) -> usize {
        std::mem::replace(&mut self.max_active_probes, self.active_probes.len())
    }

    /// The Jobs of the runs of tick `tick`.
    pub fn of_tick(&self, tick: Timestamp) -> Vec<(JobKey, SeenJob)> {
        self.seen
            .iter()
            .filter(|(_, j)| j.scheduled == Some(tick) && !j.baseline)
            .map(|(k, j)| (k.clone(), j.clone()))
            .collect()
    }

    /// When the Jobs of the baseline run whose names start with `prefix` were first seen.
    pub fn baseline_seen(&self, prefix: &str) -> Vec<Timestamp> {
        self.seen
            .iter()
            .filter(|((_, name), j)| j.baseline && name.starts_with(prefix))
            .map(|(_, j)| j.at)
            .collect()
    }
}

/// The running watches.
pub struct Observer {
    /// BackupTargets.
    pub targets: Store<BackupTarget>,
    /// BackupSchedules.
    pub schedules: Store<BackupSchedule>,
    /// Jobs.
    pub jobs: Arc<Mutex<JobLedger>>,
    /// The simulated node finishing every Job.
    pub node: Arc<SimulatedNode>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observer {
    /// Starts the watches through `client` and waits for their first lists; probe Jobs
    /// are finished `probe_time` after they appear, other Jobs (backups, the baseline's)
    /// `backup_time` after.
    pub async fn start(
        client: &kube::Client,
        probe_time: Duration,
        backup_time: Duration,
    ) -> Observer {
        let run_time = move |job: &Job| {
            let is_probe = job.metadata.labels.as_ref().is_some_and(|l| {
                [
                    labels::KIND.to_owned(),
                    format!("{BASELINE_PREFIX}{}", labels::KIND),
                ]
                .iter()
                .any(|k| l.get(k).is_some_and(|v| v == "probe"))
            });
            if is_probe { probe_time } else { backup_time }
        };
        let node = SimulatedNode::new(client.clone(), run_time, 32);
        let jobs = Arc::new(Mutex::new(JobLedger::default()));
        let mut tasks = Vec::new();

        let (targets, writer) = reflector::store();
        let stream = watcher(
            Api::<BackupTarget>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer);
        tasks.push(tokio::spawn(stream.for_each(|_| async {})));
        let (schedules, writer) = reflector::store();
        let stream = watcher(
            Api::<BackupSchedule>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer);
        tasks.push(tokio::spawn(stream.for_each(|_| async {})));

        let (ledger, finisher) = (jobs.clone(), node.clone());
        // Decoded as the operator decodes them (metadata and status): a full Job per event
        // made this watch fall behind in a tick of thousands, and the API server closes
        // a watch that falls behind, delaying every other watcher's events meanwhile.
        let stream = watcher(
            Api::<WatchedJob>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        tasks.push(tokio::spawn(stream.for_each(move |event| {
            let now = Timestamp::now();
            match event.map(|e| watched::unwrap_event(e, |j| j.0)) {
                Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                    ledger
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .observe(&job, now);
                    finisher.observe(&job);
                }
                Ok(watcher::Event::Delete(job)) => {
                    ledger
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .forget(&job);
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => {}
            }
            async {}
        })));
        let _ = targets.wait_until_ready().await;
        let _ = schedules.wait_until_ready().await;
        Observer {
            targets,
            schedules,
            jobs,
            node,
            tasks,
        }
    }

    /// Stops the watches.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }

    /// The ledger of Jobs.
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, JobLedger> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How far the statuses are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Targets whose status describes their generation.
    pub targets_current: usize,
    /// Targets with a recorded probe.
    pub targets_probed: usize,
    /// Schedules whose status describes their generation.
    pub schedules_current: usize,
}

/// Counts the targets and schedules whose statuses are current and probed.
pub fn progress(targets: &[Arc<BackupTarget>], schedules: &[Arc<BackupSchedule>]) -> Progress {
    let current = |generation: Option<i64>, observed: Option<i64>| {
        generation.is_some() && observed == generation
    };
    Progress {
        targets_current: targets
            .iter()
            .filter(|t| {
                current(
                    t.metadata.generation,
                    t.status.as_ref().and_then(|s| s.observed_generation),
                )
            })
            .count(),
        targets_probed: targets
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.last_probe_time.is_some())
            })
            .count(),
        schedules_current: schedules
            .iter()
            .filter(|s| {
                current(
                    s.metadata.generation,
                    s.status.as_ref().and_then(|st| st.observed_generation),
                )
            })
            .count(),
    }
}

/// Schedules whose status describes their generation and names `tick` as the next run.
pub fn ready_for_tick(schedules: &[Arc<BackupSchedule>], tick: Timestamp) -> usize {
    schedules
        .iter()
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.observed_generation == s.metadata.generation
                    && st.next_schedule_time.as_ref().map(|t| t.0) == Some(tick)
            })
        })
        .count()
}

/// How many of `jobs` (namespace, name, target) their target's status records.
pub fn recorded(targets: &Store<BackupTarget>, jobs: &[(JobKey, SeenJob)]) -> usize {
    jobs.iter()
        .filter(|((namespace, name), seen)| {
            let Some(target) = seen.target.as_deref() else {
                return false;
            };
            let key = reflector::ObjectRef::new(target).within(namespace);
            targets.get(&key).is_some_and(|t| {
                t.status.as_ref().is_some_and(|s| {
                    s.recent_backups
                        .iter()
                        .chain(s.last_backup.iter())
                        .any(|b| b.job.as_deref() == Some(name.as_str()))
                })
            })
        })
        .count()
}
