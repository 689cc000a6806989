//! One layout from start to end: control plane, objects, operator, then the phases
//! (convergence, idle, restart, then rounds of a tick with the plain client's runs before
//! and after each, and the comparison),
//! each printing its figures as soon as it has them, so a run stopped by a limit still
//! reports what it measured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use stowage::api::{BackupSchedule, BackupTarget};
use stowage::jobs::{RunRequest, build_job};
use stowage_testenv::bench::api_metrics::{self, RequestKind, RequestTotals};
use stowage_testenv::bench::audit;
use stowage_testenv::bench::client_counts::{RequestCounter, counts_since};
use stowage_testenv::bench::procfs::{MemoryUse, cpu_seconds_of, machine_times, memory_of, mib};
use stowage_testenv::bench::stats::{
    compare_ticks, cron_firing_at, mean, minute_boundary_after, percentile, ratio,
};
use stowage_testenv::{BarePlane, PlaneOptions, config_from, repo_root};

use crate::observe::{self, BASELINE_PREFIX, Observer};
use crate::operator::{self, Operator};
use crate::report::{Report, operator_resource, progress, seconds};
use crate::world::{self, Layout};
use crate::{BenchError, Knobs, OperatorUser};

/// Why a layout's measurements end early.
enum Stop {
    /// A limit was reached (a timeout, the memory limit, the operator exiting again and
    /// again): reported
    /// as a figure.
    Limit(String),
    /// The benchmark itself failed.
    Bench(BenchError),
}

impl From<BenchError> for Stop {
    fn from(e: BenchError) -> Self {
        Stop::Bench(e)
    }
}

/// How many times the operator may exit on its own (and be started again) before the
/// run stops.
const MAX_OPERATOR_EXITS: usize = 5;
/// How long a stopping operator gets before SIGKILL.
const OPERATOR_GRACE: Duration = Duration::from_secs(30);
/// The operator's ServiceAccount (from `deploy/rbac/operator.yaml`).
const OPERATOR_NAMESPACE: &str = "stowage-system";
const OPERATOR_ACCOUNT: &str = "stowage";

/// Runs every phase for `namespaces` namespaces on a fresh control plane, then stops it.
pub async fn run(knobs: &Knobs, namespaces: usize) -> Result<(), BenchError> {
    let tag = format!("{namespaces}ns");
    let report = Report::new(&tag);
    progress(format!(
        "{tag}: starting a control plane (etcd + kube-apiserver, no controller manager)"
    ));
    let plane = tokio::task::spawn_blocking(|| {
        BarePlane::start(PlaneOptions {
            controller_manager: false,
            real_node: false,
            audit_job_creates: true,
        })
    })
    .await
    .map_err(|e| BenchError::Operator(format!("starting the control plane: {e}")))??;
    progress(format!(
        "{tag}: control plane in {}",
        plane.state_dir().display()
    ));
    let outcome = measure(knobs, namespaces, &tag, &plane, &report).await;
    progress(format!("{tag}: stopping the control plane"));
    let stopped = tokio::task::spawn_blocking(move || plane.stop())
        .await
        .map_err(|e| BenchError::Operator(format!("stopping the control plane: {e}")));
    outcome?;
    stopped??;
    Ok(())
}

async fn measure(
    knobs: &Knobs,
    namespaces: usize,
    tag: &str,
    plane: &BarePlane,
    report: &Report,
) -> Result<(), BenchError> {
    let layout = Layout {
        targets: knobs.targets,
        schedules: knobs.schedules,
        namespaces,
    };
    let etcd = plane.pid("etcd")?;
    let apiserver = plane.pid("kube-apiserver")?;
    // Before the benchmark creates anything, CRDs included.
    let idle = (memory_of(etcd), memory_of(apiserver));
    tokio::task::block_in_place(|| plane.install_crds())?;
    let counter = RequestCounter::default();
    let admin = counter
        .client(plane.admin_config().await?)
        .map_err(|source| BenchError::Api {
            what: "building the admin client".into(),
            source,
        })?;
    let first = api_metrics::scrape(&admin)
        .await
        .map_err(|source| BenchError::Api {
            what: "reading the API server's /metrics".into(),
            source,
        })?;
    let operator_kubeconfig = match knobs.operator_user {
        OperatorUser::ServiceAccount => tokio::task::block_in_place(|| {
            plane.service_account_kubeconfig(
                &repo_root().join("deploy/rbac/operator.yaml"),
                OPERATOR_NAMESPACE,
                OPERATOR_ACCOUNT,
                12,
            )
        })?,
        OperatorUser::Admin => {
            // The Lease's namespace, which the ServiceAccount's manifests create otherwise.
            world::create_namespace(&admin, OPERATOR_NAMESPACE).await?;
            plane.kubeconfig().to_path_buf()
        }
    };

    report.figure("setup", "operator user", knobs.operator_user, "");
    report.figure("setup", "targets", layout.targets, "");
    report.figure("setup", "schedules", layout.schedules, "");
    report.figure("setup", "namespaces", layout.used_namespaces().len(), "");
    report.figure("setup", "claims (one per target)", layout.targets, "");
    report.figure(
        "setup",
        "simulated probe run",
        seconds(knobs.probe_time),
        "s",
    );
    report.figure(
        "setup",
        "simulated backup run",
        seconds(knobs.backup_time),
        "s",
    );
    report.figure(
        "setup",
        "cpus",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        "",
    );
    // A cron expression that does not fire for half a year: nothing runs while converging.
    let parked = cron_firing_at(minute_boundary_after(
        Timestamp::now(),
        Duration::from_secs(180 * 86_400),
    ));
    progress(format!(
        "{tag}: creating {} claims, {} targets, {} schedules ({parked:?}) in {} namespace(s)",
        layout.targets,
        layout.targets,
        layout.schedules,
        layout.used_namespaces().len()
    ));
    let started = Instant::now();
    world::create(&admin, &layout, &parked).await?;
    report.figure(
        "setup",
        "objects created in",
        seconds(started.elapsed()),
        "s",
    );

    let observer = Observer::start(&admin, knobs.probe_time, knobs.backup_time).await;
    let limit = (knobs.max_rss_gib * 1024.0 * 1024.0 * 1024.0) as u64;
    let guard = Guard::start(vec![etcd, apiserver], limit);
    let log = operator::log_path(tag);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    let _ = std::fs::remove_file(&log);
    progress(format!("{tag}: operator log: {}", log.display()));
    let mut session = Session {
        knobs,
        layout,
        report,
        admin,
        counter,
        observer,
        guard,
        operator: None,
        operator_kubeconfig,
        log,
        tag: tag.to_owned(),
        control_plane: [("etcd", etcd), ("kube-apiserver", apiserver)],
        loaded_rss: Vec::new(),
        audit_log: plane.state_dir().join("logs/audit-job-creates.log"),
    };
    let outcome = session.phases().await;
    if let Some(operator) = session.operator.take() {
        operator.stop(OPERATOR_GRACE).await;
    }

    let last = api_metrics::scrape(&session.admin).await.ok();
    let errors = last.map(|l| l.since(&first).server_errors());
    match errors {
        Some(errors) if errors.is_empty() => {
            report.figure("errors", "5xx answers (whole run)", 0, "")
        }
        Some(errors) => {
            for ((kind, code), n) in errors {
                report.figure("errors", &format!("{kind} code {code}"), n, "");
            }
            let log = plane.state_dir().join("logs").join("kube-apiserver.log");
            for line in error_lines(&log, 5) {
                progress(format!("{tag}: kube-apiserver.log: {line}"));
            }
        }
        None => report.figure("errors", "5xx answers (whole run)", "unknown", ""),
    }
    for (name, pid, before) in [
        ("etcd", etcd, idle.0),
        ("kube-apiserver", apiserver, idle.1),
    ] {
        if let Some(before) = before {
            report.figure(
                "control-plane",
                &format!("{name} idle rss"),
                mib(before.rss_bytes),
                "MiB",
            );
        }
        if let Some(now) = memory_of(pid) {
            report.figure(
                "control-plane",
                &format!("{name} peak rss"),
                mib(now.peak_rss_bytes),
                "MiB",
            );
            let loaded = session.loaded_rss.iter().find(|(n, _)| *n == name);
            if let Some((_, loaded)) = loaded.filter(|(_, bytes)| *bytes > 0) {
                report.figure(
                    "control-plane",
                    &format!("{name} peak / rss holding every object, idle"),
                    format!("{:.1}", now.peak_rss_bytes as f64 / *loaded as f64),
                    "x",
                );
            }
        }
    }
    report.figure(
        "control-plane",
        "etcd+apiserver+operator peak rss (sampled 1/s)",
        mib(session.guard.peak_total.load(Ordering::Relaxed)),
        "MiB",
    );
    let (failed, last_failure) = session.observer.node.failures();
    report.figure(
        "node",
        "jobs finished by the simulated node",
        session.observer.node.finished(),
        "",
    );
    report.figure("node", "status writes that failed", failed, "");
    if let Some(failure) = last_failure {
        progress(format!(
            "{tag}: last failure of the simulated node: {failure}"
        ));
    }
    session.guard.stop();
    session.observer.stop();
    match outcome {
        Ok(()) => Ok(()),
        Err(Stop::Limit(reason)) => {
            report.figure("stopped", &reason, "-", "");
            progress(format!("{tag}: stopped early: {reason}"));
            Ok(())
        }
        Err(Stop::Bench(e)) => Err(e),
    }
}

/// The last `n` error lines (klog `E…`) of a log, for a diagnosis on stderr.
fn error_lines(log: &std::path::Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with('E')).collect();
    errors[errors.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(400).collect())
        .collect()
}

/// Samples the memory of the control plane and the operator each second and stops the
/// run when their sum passes the limit.
struct Guard {
    exceeded: Arc<Mutex<Option<String>>>,
    operator_pid: Arc<AtomicI32>,
    peak_total: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Guard {
    fn start(pids: Vec<i32>, limit: u64) -> Guard {
        let exceeded = Arc::new(Mutex::new(None));
        let operator_pid = Arc::new(AtomicI32::new(0));
        let peak_total = Arc::new(AtomicU64::new(0));
        let (flag, operator, peak) = (exceeded.clone(), operator_pid.clone(), peak_total.clone());
        let task = tokio::spawn(async move {
            loop {
                let mut all = pids.clone();
                all.push(operator.load(Ordering::Relaxed));
                let total: u64 = all
                    .iter()
                    .filter(|pid| **pid > 0)
                    .filter_map(|pid| memory_of(*pid))
                    .map(|m| m.rss_bytes)
                    .sum();
                peak.fetch_max(total, Ordering::Relaxed);
                if total > limit {
                    let mut slot = flag.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.is_none() {
                        *slot = Some(format!(
                            "etcd, kube-apiserver and the operator held {} MiB, over STOWAGE_BENCH_MAX_RSS_GIB",
                            mib(total)
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Guard {
            exceeded,
            operator_pid,
            peak_total,
            task,
        }
    }

    fn watch_operator(&self, operator: &Operator) {
        self.operator_pid.store(operator.pid(), Ordering::Relaxed);
    }

    /// A limit that was reached, if any.
    fn check(&self, operator: Option<&Operator>) -> Result<(), Stop> {
        if let Some(reason) = self
            .exceeded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(Stop::Limit(reason));
        }
        let exits = operator.map(Operator::exits).unwrap_or_default();
        if exits.len() > MAX_OPERATOR_EXITS {
            return Err(Stop::Limit(format!(
                "the operator exited {} times (last: {})",
                exits.len(),
                exits.last().map_or("", String::as_str)
            )));
        }
        Ok(())
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// Polls `check` every 200 ms until it returns `Ok`, watching the guard; `Err(text)`
/// says how far it is (printed every 10 s).
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    guard: &Guard,
    operator: Option<&Operator>,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, Stop> {
    let start = Instant::now();
    let mut said = Instant::now();
    loop {
        let seen = match check() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        guard.check(operator)?;
        if start.elapsed() >= timeout {
            return Err(Stop::Limit(format!(
                "{what}: not reached after {}s ({seen})",
                timeout.as_secs()
            )));
        }
        if said.elapsed() >= Duration::from_secs(10) {
            progress(format!("waiting for {what}: {seen}"));
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When the operator went quiet, and how far the probes were.
struct Quiet {
    /// Its last request.
    last_request: Duration,
    /// Targets with a recorded probe when it went quiet.
    probed: usize,
    /// When every target had one, if that happened.
    probed_all_at: Option<Duration>,
}

/// The request counts of both sides at one instant.
struct Snapshot {
    server: RequestTotals,
    bench: BTreeMap<RequestKind, u64>,
    /// Garbage collections the API server's Go runtime has completed
    /// (`go_gc_duration_seconds_count`), if its metrics have it.
    gc_cycles: Option<f64>,
}

/// One run of the plain client, by number: run `k` goes before tick `k`, and the last one
/// after the last tick. Comparing each tick with the runs on both sides cancels what
/// drifts over a layout: the objects in etcd and the API server's heap grow by 5,000 Jobs
/// with each tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Baseline(usize);

impl Baseline {
    /// The report section of its figures.
    fn section(self) -> String {
        format!("baseline:{}", self.0)
    }

    /// The start of its Jobs' names (the rest is the target's number).
    fn job_prefix(self) -> String {
        format!("baseline-{}-", self.0)
    }
}

/// What the operator's tick measured.
struct TickRun {
    /// The last of its Jobs seen by the bench's watch, after the tick.
    last_seen: Duration,
    /// The last of its creates answered (audit log), after the tick; `None` when the log
    /// lacks some.
    last_created: Option<Duration>,
}

/// What one run of the plain client measured, from its start.
struct BaselineRun {
    /// Its last Job seen by the bench's watch.
    last_seen: Duration,
    /// Its last create answered (audit log); `None` when the log lacks some.
    last_created: Option<Duration>,
    /// Jobs it created.
    created: usize,
}

/// A ratio with two decimals, `-` when it could not be computed.
fn shown(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_owned(), |r| format!("{r:.2}"))
}

/// The time from now until `at`; zero once it has passed.
fn time_until(at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()
}

struct Session<'a> {
    knobs: &'a Knobs,
    layout: Layout,
    report: &'a Report,
    admin: kube::Client,
    counter: RequestCounter,
    observer: Observer,
    guard: Guard,
    operator: Option<Operator>,
    operator_kubeconfig: std::path::PathBuf,
    log: std::path::PathBuf,
    tag: String,
    /// etcd's and kube-apiserver's pids, for their CPU time.
    control_plane: [(&'static str, i32); 2],
    /// Their RSS at the end of the idle window, holding every object of the run.
    loaded_rss: Vec<(&'static str, u64)>,
    /// The API server's audit log of Job creates ([`stowage_testenv::bench::audit`]).
    audit_log: std::path::PathBuf,
}

/// CPU seconds used so far by each process that shares the machine, by name.
type CpuTimes = Vec<(&'static str, Option<f64>)>;

impl Session<'_> {
    async fn phases(&mut self) -> Result<(), Stop> {
        self.convergence().await?;
        self.idle().await?;
        self.restart().await?;
        let mut baselines = vec![self.baseline(Baseline(1)).await?];
        let mut ticks = Vec::new();
        for round in 1..=self.knobs.tick_rounds {
            self.clear_baseline(round, &baselines[round - 1]).await?;
            ticks.push(self.tick(round).await?);
            baselines.push(self.baseline(Baseline(round + 1)).await?);
            self.comparison(round, &ticks[round - 1], &baselines[round - 1..=round]);
        }
        self.summary(&ticks, &baselines);
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot, Stop> {
        let text = api_metrics::scrape_text(&self.admin)
            .await
            .map_err(|source| BenchError::Api {
                what: "reading the API server's /metrics".into(),
                source,
            })?;
        let gc_cycles = api_metrics::samples(&text, "go_gc_duration_seconds_count")
            .first()
            .map(|sample| sample.value);
        Ok(Snapshot {
            server: RequestTotals::parse(&text),
            bench: self.counter.snapshot(),
            gc_cycles,
        })
    }

    /// The API server's garbage collections between two snapshots: on a heap of 1-2 GiB
    /// each costs seconds of CPU, so they are one reason its CPU in a window varies.
    fn gc_figure(&self, section: &str, window: &str, before: &Snapshot, after: &Snapshot) {
        let cycles = match (before.gc_cycles, after.gc_cycles) {
            (Some(before), Some(after)) => format!("{}", (after - before).round()),
            _ => "-".to_owned(),
        };
        self.figure(
            section,
            &format!("gc cycles kube-apiserver ({window})"),
            cycles,
            "",
        );
    }

    /// The requests of a window, as a table; the operator's status writes in it.
    fn requests(&self, window: &str, before: &Snapshot, after: &Snapshot) -> u64 {
        self.report.requests(
            window,
            &after.server.since(&before.server),
            &counts_since(&after.bench, &before.bench),
        )
    }

    fn start_operator(&mut self) -> Result<(), Stop> {
        let operator = Operator::spawn(
            std::path::Path::new(&self.knobs.operator_command),
            &self.operator_kubeconfig,
            &self.log,
        )?;
        self.guard.watch_operator(&operator);
        self.operator = Some(operator);
        Ok(())
    }

    fn operator(&self) -> Result<&Operator, Stop> {
        self.operator
            .as_ref()
            .ok_or_else(|| Stop::Limit("the operator is not running".into()))
    }

    fn figure(&self, section: &str, name: &str, value: impl std::fmt::Display, unit: &str) {
        self.report.figure(section, name, value, unit);
    }

    /// How many times the operator has exited on its own so far (0 is the healthy case).
    fn print_exits(&self, section: &str) {
        if let Ok(operator) = self.operator() {
            let exits = operator.exits();
            self.figure(
                section,
                &format!(
                    "operator exits so far (restarted after {}s)",
                    operator::RESTART_DELAY.as_secs()
                ),
                exits.len(),
                "",
            );
        }
    }

    async fn print_reconciles(&self, section: &str) {
        if let Ok(operator) = self.operator() {
            for (controller, reconciles, errors) in operator.reconciles().await {
                self.figure(
                    section,
                    &format!("reconciles {controller} (this process)"),
                    reconciles,
                    "",
                );
                self.figure(
                    section,
                    &format!("reconcile errors {controller} (this process)"),
                    errors,
                    "",
                );
            }
        }
    }

    /// From the operator's start until every status describes its generation, every
    /// probe is recorded and the operator has stopped sending requests.
    async fn convergence(&mut self) -> Result<(), Stop> {
        let (n, m) = (self.layout.targets, self.layout.schedules);
        let before = self.snapshot().await?;
        self.observer.ledger().take_max_active_probes();
        let started_at = Timestamp::now();
        let start = Instant::now();
        progress(format!("{}: starting the operator", self.tag));
        self.start_operator()?;
        // Who spent the CPU while statuses were written: on 2 cores the API server's
        // share bounds how fast the operator can write.
        let cpu_at_start = self.cpu_times();
        let ready = self
            .operator()?
            .wait_ready(self.knobs.timeout)
            .await
            .map_err(Stop::Bench)?;
        self.figure("convergence", "operator ready", seconds(ready), "s");
        let (targets, schedules) = (&self.observer.targets, &self.observer.schedules);
        let status_at = wait_for(
            "every status describing its generation",
            self.knobs.timeout,
            &self.guard,
            self.operator.as_ref(),
            || {
                let p = observe::progress(&targets.state(), &schedules.state());
                if p.targets_current == n && p.schedules_current == m {
                    Ok(start.elapsed())
                } else {
                    Err(format!(
                        "{}/{n} targets, {}/{m} schedules",
                        p.targets_current, p.schedules_current
                    ))
                }
            },
        )
        .await?;
        self.figure(
            "convergence",
            "every status for its generation",
            seconds(status_at),
            "s",
        );
        self.cpu_figures("convergence", "start .. every status", &cpu_at_start);
        // Probes are not waited for one by one: a target whose probe Job was never
        // created would hold the run forever. The operator going quiet ends convergence.
        let quiet = self.wait_quiet(start).await?;
        match quiet.probed_all_at {
            Some(at) => self.figure("convergence", "every probe recorded", seconds(at), "s"),
            None => self.figure(
                "convergence",
                "probes recorded when quiet",
                format!("{}/{n}", quiet.probed),
                "",
            ),
        }
        self.figure(
            "convergence",
            &format!("last request (then quiet {}s)", self.knobs.quiet.as_secs()),
            seconds(quiet.last_request),
            "s",
        );
        let after = self.snapshot().await?;
        let created = self
            .observer
            .ledger()
            .created_between(started_at, Timestamp::now());
        let max_active = self.observer.ledger().take_max_active_probes();
        for kind in ["probe", "backup", "other"] {
            self.figure(
                "startup",
                &format!("{kind} jobs created"),
                created.get(kind).copied().unwrap_or(0),
                "",
            );
        }
        self.figure("startup", "most probe jobs active at once", max_active, "");
        self.print_exits("convergence");
        if let Some(memory) = self.operator()?.memory() {
            self.figure(
                "operator",
                "peak rss after convergence",
                mib(memory.peak_rss_bytes),
                "MiB",
            );
        }
        self.print_reconciles("convergence").await;
        self.requests("convergence", &before, &after);
        Ok(())
    }

    /// Waits until the operator has sent no request for [`Knobs::quiet`] (leases and
    /// watches aside) while the simulated node had no Job left to finish, following the
    /// targets' probes meanwhile; times are from `start`.
    async fn wait_quiet(&self, start: Instant) -> Result<Quiet, Stop> {
        let n = self.layout.targets;
        let mut last: Option<u64> = None;
        let mut changed = Instant::now();
        let begun = Instant::now();
        let mut said = Instant::now();
        let mut probed_all_at = None;
        loop {
            let probed = observe::progress(&self.observer.targets.state(), &[]).targets_probed;
            if probed == n && probed_all_at.is_none() {
                probed_all_at = Some(start.elapsed());
            }
            let snapshot = self.snapshot().await?;
            let activity: u64 = snapshot
                .server
                .by_kind()
                .into_iter()
                .filter(|(kind, _)| operator_resource(kind) && kind.verb != "WATCH")
                .map(|(kind, n)| n.saturating_sub(snapshot.bench.get(&kind).copied().unwrap_or(0)))
                .sum();
            // Settled only when no Job is left to finish: an API server slowed down by
            // a LIST storm can complete no request for seconds while work is pending.
            let running = self.observer.node.running();
            if last != Some(activity) || running > 0 {
                last = Some(activity);
                changed = Instant::now();
            } else if changed.elapsed() >= self.knobs.quiet {
                return Ok(Quiet {
                    last_request: changed.duration_since(start),
                    probed,
                    probed_all_at,
                });
            }
            self.guard.check(self.operator.as_ref())?;
            if begun.elapsed() >= self.knobs.timeout {
                return Err(Stop::Limit(format!(
                    "the operator still sent requests after {}s ({probed}/{n} targets probed)",
                    self.knobs.timeout.as_secs()
                )));
            }
            if said.elapsed() >= Duration::from_secs(10) {
                progress(format!(
                    "waiting for the operator to go quiet: {probed}/{n} targets probed"
                ));
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Sleeps `duration`, watching the guard.
    async fn pause(&self, duration: Duration) -> Result<(), Stop> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.guard.check(self.operator.as_ref())?;
            tokio::time::sleep(Duration::from_millis(500).min(until - Instant::now())).await;
        }
        Ok(())
    }

    /// A minute with nothing to do.
    async fn idle(&mut self) -> Result<(), Stop> {
        progress(format!(
            "{}: idle for {}s",
            self.tag,
            self.knobs.idle.as_secs()
        ));
        let from = Timestamp::now();
        let before = self.snapshot().await?;
        self.pause(self.knobs.idle).await?;
        let after = self.snapshot().await?;
        let created: usize = self
            .observer
            .ledger()
            .created_between(from, Timestamp::now())
            .values()
            .sum();
        let writes = self.requests("idle", &before, &after);
        let per_minute = writes as f64 * 60.0 / self.knobs.idle.as_secs_f64();
        self.figure(
            "idle",
            "status writes per minute",
            format!("{per_minute:.1}"),
            "",
        );
        self.figure("idle", "jobs created", created, "");
        // What etcd and the API server hold for these objects when nobody asks anything:
        // the reference their peaks are compared with, next to their size when empty.
        for (name, pid) in self.control_plane {
            if let Some(memory) = memory_of(pid) {
                self.loaded_rss.push((name, memory.rss_bytes));
                self.figure(
                    "control-plane",
                    &format!("{name} rss holding every object, idle"),
                    mib(memory.rss_bytes),
                    "MiB",
                );
            }
        }
        if let Some(memory) = self.operator()?.memory() {
            self.figure(
                "operator",
                "rss after the idle window",
                mib(memory.rss_bytes),
                "MiB",
            );
        }
        Ok(())
    }

    /// SIGTERM, start again, count the Jobs the new one creates.
    async fn restart(&mut self) -> Result<(), Stop> {
        progress(format!("{}: restarting the operator", self.tag));
        let before = self.snapshot().await?;
        let stopped_at = Timestamp::now();
        self.print_exits("idle");
        if let Some(operator) = self.operator.take() {
            let status = operator.stop(OPERATOR_GRACE).await;
            progress(format!("{}: the first operator exited: {status}", self.tag));
        }
        let start = Instant::now();
        self.start_operator()?;
        let ready = self
            .operator()?
            .wait_ready(self.knobs.timeout)
            .await
            .map_err(Stop::Bench)?;
        self.figure("restart", "ready again after", seconds(ready), "s");
        self.pause(self.knobs.restart_watch).await?;
        let created: usize = self
            .observer
            .ledger()
            .created_between(stopped_at, Timestamp::now())
            .values()
            .sum();
        self.figure(
            "restart",
            &format!(
                "jobs created (stop .. ready + {}s)",
                self.knobs.restart_watch.as_secs()
            ),
            created,
            "",
        );
        self.figure("restart", "window", seconds(start.elapsed()), "s");
        let after = self.snapshot().await?;
        self.requests("restart", &before, &after);
        Ok(())
    }

    /// Tick `round` (from 1): every schedule fires on the same minute. Returns the time
    /// from the tick to the last of its Jobs seen by the bench's watch, and to the last
    /// created by the API server's audit log (`None` when the log misses some of them);
    /// then waits until every run is recorded. The operator's memory is read after the
    /// first tick only.
    async fn tick(&mut self, round: usize) -> Result<TickRun, Stop> {
        let n = self.layout.targets;
        let m = self.layout.schedules;
        let section = format!("tick:{round}");
        let section = section.as_str();
        let tick = minute_boundary_after(Timestamp::now(), self.knobs.tick_lead);
        let cron = cron_firing_at(tick);
        progress(format!(
            "{}: moving every schedule to {cron:?} (UTC), the tick at {tick}",
            self.tag
        ));
        let before = self.snapshot().await?;
        let start = Instant::now();
        world::reschedule(&self.admin, &self.layout, &cron).await?;
        self.figure(
            section,
            "schedules patched in",
            seconds(start.elapsed()),
            "s",
        );
        let until_tick = time_until(tick);
        let schedules = &self.observer.schedules;
        let ready = wait_for(
            "every schedule naming the tick",
            until_tick,
            &self.guard,
            self.operator.as_ref(),
            || {
                let ready = observe::ready_for_tick(&schedules.state(), tick);
                if ready == m {
                    Ok((ready, start.elapsed()))
                } else {
                    Err(format!("{ready}/{m} schedules"))
                }
            },
        )
        .await;
        match ready {
            Ok((_, after)) => self.figure(
                section,
                "every schedule naming the tick after",
                seconds(after),
                "s",
            ),
            Err(Stop::Limit(_)) => {
                let ready = observe::ready_for_tick(&schedules.state(), tick);
                self.figure(
                    section,
                    "schedules naming the tick at the tick",
                    format!("{ready}/{m}"),
                    "",
                );
            }
            Err(stop) => return Err(stop),
        }
        // The schedules have recorded the new time: from the tick until every Job is seen,
        // what the operator sends is the tick's. The windows start at the tick itself, not
        // when the schedules were ready (up to a minute and a half earlier, idle): until
        // 2026-12-02 the CPU figures of the tick counted that wait too. The /metrics
        // scrape is done a second before the tick, as the baseline's is before its start.
        self.pause(time_until(tick - SignedDuration::from_secs(1)))
            .await?;
        let at_tick = self.snapshot().await?;
        self.pause(time_until(tick)).await?;
        progress(format!("{}: waiting for {n} Jobs of the tick", self.tag));
        let cpu_at_tick = self.cpu_times();
        let ledger = self.observer.jobs.clone();
        let seen = wait_for(
            "a Job for every target",
            self.knobs.timeout,
            &self.guard,
            self.operator.as_ref(),
            || {
                let jobs = ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .of_tick(tick);
                if jobs.len() >= n {
                    Ok(jobs)
                } else {
                    Err(format!("{}/{n} Jobs", jobs.len()))
                }
            },
        )
        .await;
        let jobs = match seen {
            Ok(jobs) => jobs,
            Err(stop) => {
                let jobs = self.observer.ledger().of_tick(tick);
                self.tick_figures(section, tick, &jobs);
                return Err(stop);
            }
        };
        let last = self.tick_figures(section, tick, &jobs);
        // What competed with the creations for the API server.
        let every_job_seen = self.snapshot().await?;
        self.cpu_figures(section, "tick .. every Job seen", &cpu_at_tick);
        self.gc_figure(section, "tick .. every Job seen", &at_tick, &every_job_seen);
        self.requests(
            &format!("until every Job of tick {round} seen"),
            &at_tick,
            &every_job_seen,
        );
        let targets = &self.observer.targets;
        let recorded_after = wait_for(
            "every tick run recorded in its target's status",
            self.knobs.timeout,
            &self.guard,
            self.operator.as_ref(),
            || {
                let done = observe::recorded(targets, &jobs);
                if done == jobs.len() {
                    Ok(Timestamp::now().duration_since(tick))
                } else {
                    Err(format!("{done}/{} recorded", jobs.len()))
                }
            },
        )
        .await?;
        self.figure(
            section,
            "every run recorded after the tick",
            format!("{:.2}", recorded_after.as_secs_f64()),
            "s",
        );
        // Read after the timed windows above: parsing the log takes the bench's time.
        let keys: Vec<observe::JobKey> = jobs.iter().map(|(key, _)| key.clone()).collect();
        let created = self
            .created_figures(section, "after tick", tick, &keys)
            .await;
        self.print_exits(section);
        // Settled (events published, history trimmed) before the memory is read and the
        // baseline runs on an API server that serves nobody else.
        let settling = Instant::now();
        progress(format!(
            "{}: waiting for the operator to go quiet",
            self.tag
        ));
        self.wait_quiet(settling).await?;
        self.figure(
            section,
            "quiet again after the last run recorded",
            seconds(settling.elapsed()),
            "s",
        );
        self.pause(self.knobs.quiet).await?;
        if round == 1 {
            self.read_memory_after_tick().await?;
        }
        self.print_reconciles(section).await;
        let after = self.snapshot().await?;
        self.requests(section, &before, &after);
        Ok(TickRun {
            last_seen: last,
            last_created: created,
        })
    }

    /// The operator's memory once the first tick is recorded and it is quiet, and again
    /// `settle` later.
    async fn read_memory_after_tick(&self) -> Result<(), Stop> {
        if let Some(memory) = self.operator()?.memory() {
            self.figure(
                "operator",
                "steady rss (tick recorded, quiet)",
                mib(memory.rss_bytes),
                "MiB",
            );
            self.rss_parts("steady", &memory);
            self.figure(
                "operator",
                "peak rss of the restarted operator",
                mib(memory.peak_rss_bytes),
                "MiB",
            );
        }
        if !self.knobs.settle.is_zero() {
            // Connections opened for the tick's burst stay pooled while idle: hyper closes
            // those idle for 90 s, looking every 90 s, so within 180 s.
            progress(format!(
                "{}: {}s more without anything to do",
                self.tag,
                self.knobs.settle.as_secs()
            ));
            self.pause(self.knobs.settle).await?;
            if let Some(memory) = self.operator()?.memory() {
                let name = format!("rss {}s later", self.knobs.settle.as_secs());
                self.figure("operator", &name, mib(memory.rss_bytes), "MiB");
                self.rss_parts("later", &memory);
            }
        }
        Ok(())
    }

    /// When the API server answered the create of each Job of `jobs`, by its audit log,
    /// as latencies from `from`: p50 and max printed, the max returned. `None` when the
    /// log does not hold every one of them within `AUDIT_WAIT` (the API server writes
    /// each line shortly after the create, from a queue).
    async fn created_figures(
        &self,
        section: &str,
        after: &str,
        from: Timestamp,
        jobs: &[observe::JobKey],
    ) -> Option<Duration> {
        const AUDIT_WAIT: Duration = Duration::from_secs(30);
        let waited = Instant::now();
        let (latencies, missing) = loop {
            let creates = match audit::job_creates_in(&self.audit_log) {
                Ok(creates) => creates,
                Err(e) => {
                    progress(format!(
                        "{}: reading {}: {e}",
                        self.tag,
                        self.audit_log.display()
                    ));
                    return None;
                }
            };
            let latencies: Vec<Duration> = jobs
                .iter()
                .filter_map(|key| creates.get(key))
                .map(|at| Duration::try_from(at.duration_since(from)).unwrap_or_default())
                .collect();
            let missing = jobs.len() - latencies.len();
            if missing == 0 || waited.elapsed() > AUDIT_WAIT {
                break (latencies, missing);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let show = |name: &str, d: Option<Duration>| {
            self.figure(section, name, d.map_or("-".to_owned(), seconds), "s");
        };
        show(
            &format!("job created {after} p50 (audit)"),
            percentile(&latencies, 50.0),
        );
        show(
            &format!("job created {after} max (audit)"),
            percentile(&latencies, 100.0),
        );
        if missing > 0 {
            self.figure(section, "jobs missing from the audit log", missing, "");
            return None;
        }
        percentile(&latencies, 100.0)
    }

    /// The anonymous (heap, stacks) and file-backed (the executable's code) parts of
    /// the operator's RSS.
    fn rss_parts(&self, when: &str, memory: &MemoryUse) {
        self.figure(
            "operator",
            &format!("{when}: anonymous / file-backed rss"),
            format!("{} / {}", mib(memory.anon_bytes), mib(memory.file_bytes)),
            "MiB",
        );
    }

    /// CPU seconds used so far by the operator, etcd, kube-apiserver and the bench, and the
    /// machine's idle and stolen seconds.
    fn cpu_times(&self) -> CpuTimes {
        let mut times: CpuTimes = self
            .control_plane
            .iter()
            .map(|(name, pid)| (*name, cpu_seconds_of(*pid)))
            .collect();
        let operator = self.operator.as_ref().map(|o| o.pid());
        times.push(("operator", operator.and_then(cpu_seconds_of)));
        times.push(("bench", cpu_seconds_of(std::process::id() as i32)));
        // Whether the two CPUs were saturated, and how much of them the hypervisor took.
        let machine = machine_times();
        times.push(("idle, machine", machine.map(|m| m.idle)));
        times.push(("stolen by the hypervisor", machine.map(|m| m.steal)));
        times
    }

    /// Prints the CPU each process used between `before` and now, over `window`.
    fn cpu_figures(&self, section: &str, window: &str, before: &CpuTimes) {
        for ((name, then), (_, now)) in before.iter().zip(self.cpu_times()) {
            let used = match (then, now) {
                (Some(then), Some(now)) => format!("{:.1}", now - then),
                _ => "-".to_owned(),
            };
            self.figure(section, &format!("cpu {name} ({window})"), used, "s");
        }
    }

    /// Prints the tick's latencies; returns the time to the last Job.
    fn tick_figures(
        &self,
        section: &str,
        tick: Timestamp,
        jobs: &[(observe::JobKey, observe::SeenJob)],
    ) -> Duration {
        let latencies: Vec<Duration> = jobs
            .iter()
            .map(|(_, job)| Duration::try_from(job.at.duration_since(tick)).unwrap_or_default())
            .collect();
        self.figure(section, "jobs created", latencies.len(), "");
        let show = |name: &str, d: Option<Duration>| {
            self.figure(section, name, d.map_or("-".to_owned(), seconds), "s");
        };
        show("job after tick p50", percentile(&latencies, 50.0));
        show("job after tick p99", percentile(&latencies, 99.0));
        show(
            "job after tick max (last job)",
            percentile(&latencies, 100.0),
        );
        percentile(&latencies, 100.0).unwrap_or_default()
    }

    /// The tick's Jobs created by a plain client, `baseline_concurrency` requests in
    /// flight, on an API server serving nobody else.
    async fn baseline(&mut self, run: Baseline) -> Result<BaselineRun, Stop> {
        let section = run.section();
        let section = section.as_str();
        let n = self.layout.targets;
        let jobs = self.baseline_jobs(run)?;
        let concurrency = self.knobs.baseline_concurrency;
        progress(format!(
            "{}: {section}: creating {} Jobs with {concurrency} in flight",
            self.tag,
            jobs.len()
        ));
        let config = config_from(&self.operator_kubeconfig)
            .await
            .map_err(BenchError::from)?;
        let client = self
            .counter
            .client(config)
            .map_err(|source| BenchError::Api {
                what: "building the baseline client".into(),
                source,
            })?;
        let at_start = self.snapshot().await?;
        let cpu_at_start = self.cpu_times();
        let started_at = Timestamp::now();
        let start = Instant::now();
        // With each Job's key: those created are looked up in the audit log.
        let results: Vec<(observe::JobKey, Result<(), kube::Error>)> = futures::stream::iter(jobs)
            .map(|job| {
                let client = client.clone();
                async move {
                    let namespace = job.metadata.namespace.clone().unwrap_or_default();
                    let name = job.metadata.name.clone().unwrap_or_default();
                    let created = Api::<Job>::namespaced(client, &namespace)
                        .create(&PostParams::default(), &job)
                        .await
                        .map(|_| ());
                    ((namespace, name), created)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let responses = start.elapsed();
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        if let Some((_, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
            progress(format!("{}: {section}: a create failed: {e}", self.tag));
        }
        let created = results.len() - failed;
        let keys: Vec<observe::JobKey> = results
            .into_iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(key, _)| key)
            .collect();
        let ledger = self.observer.jobs.clone();
        let prefix = run.job_prefix();
        let prefix = prefix.as_str();
        let seen = wait_for(
            "every baseline Job seen",
            self.knobs.timeout,
            &self.guard,
            self.operator.as_ref(),
            || {
                let seen = ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .baseline_seen(prefix);
                if seen.len() >= created {
                    Ok(seen)
                } else {
                    Err(format!("{}/{created}", seen.len()))
                }
            },
        )
        .await?;
        let every_job_seen = self.snapshot().await?;
        self.cpu_figures(section, "start .. every Job seen", &cpu_at_start);
        self.gc_figure(
            section,
            "start .. every Job seen",
            &at_start,
            &every_job_seen,
        );
        let latencies: Vec<Duration> = seen
            .iter()
            .map(|at| Duration::try_from(at.duration_since(started_at)).unwrap_or_default())
            .collect();
        let last = percentile(&latencies, 100.0).unwrap_or_default();
        self.figure(
            section,
            "client",
            format!("{concurrency} in flight"),
            &format!("(as the operator: {})", self.knobs.operator_user),
        );
        self.figure(
            section,
            "jobs created",
            created,
            &format!("(of {n}, {failed} failed)"),
        );
        self.figure(section, "last response after", seconds(responses), "s");
        self.figure(
            section,
            "job after start p50",
            percentile(&latencies, 50.0).map_or("-".to_owned(), seconds),
            "s",
        );
        self.figure(
            section,
            "job after start max (last job)",
            seconds(last),
            "s",
        );
        let last_created = self
            .created_figures(section, "after start", started_at, &keys)
            .await;
        Ok(BaselineRun {
            last_seen: last,
            last_created,
            created,
        })
    }

    /// Before tick `round`: waits until the simulated node has finished the Jobs of `run`
    /// (a backup's time after their creation), deletes them, and waits for a quiet moment,
    /// so that none of their writes lands in the tick and each tick meets a cluster with
    /// only the operator's own Jobs (5,000 more per tick).
    async fn clear_baseline(&self, round: usize, run: &BaselineRun) -> Result<(), Stop> {
        progress(format!(
            "{}: before tick {round}: waiting for the node to finish the baseline's {} Jobs",
            self.tag, run.created
        ));
        let node = self.observer.node.clone();
        let target = node.finished() + run.created as u64;
        let timeout = self.knobs.backup_time + self.knobs.timeout;
        wait_for(
            "the baseline's Jobs finished",
            timeout,
            &self.guard,
            self.operator.as_ref(),
            || {
                let finished = node.finished();
                if finished >= target {
                    Ok(())
                } else {
                    Err(format!("{} to go", target - finished))
                }
            },
        )
        .await?;
        // Every baseline Job carries the prefixed kind label, and no other Job does.
        let selector = format!("{BASELINE_PREFIX}{}", stowage::jobs::labels::KIND);
        for namespace in self.layout.used_namespaces() {
            Api::<Job>::namespaced(self.admin.clone(), &namespace)
                .delete_collection(
                    &DeleteParams::background(),
                    &ListParams::default().labels(&selector),
                )
                .await
                .map_err(|source| BenchError::Api {
                    what: format!("deleting the baseline's Jobs in {namespace}"),
                    source,
                })?;
        }
        self.pause(self.knobs.quiet).await
    }

    /// Tick `round` against the plain client's runs on either side of it (`around` holds
    /// the two).
    fn comparison(&self, round: usize, tick: &TickRun, around: &[BaselineRun]) {
        let section = format!("comparison:{round}");
        let section = section.as_str();
        let [before, after] = around else {
            return;
        };
        let created = mean(before.last_created, after.last_created);
        self.figure(
            section,
            "baseline mean, last job created (audit)",
            created.map_or("-".to_owned(), seconds),
            "s",
        );
        self.figure(
            section,
            &format!("tick / baseline {round} (last job created, audit)"),
            shown(ratio(tick.last_created, before.last_created)),
            "x",
        );
        self.figure(
            section,
            &format!("tick / baseline {} (last job created, audit)", round + 1),
            shown(ratio(tick.last_created, after.last_created)),
            "x",
        );
        self.figure(
            section,
            "tick / baseline mean (last job created, audit)",
            shown(ratio(tick.last_created, created)),
            "x",
        );
        self.figure(
            section,
            "tick / baseline mean (last job seen)",
            shown(ratio(
                Some(tick.last_seen),
                mean(Some(before.last_seen), Some(after.last_seen)),
            )),
            "x",
        );
    }

    /// Every tick against the plain client's runs: the figures to read when a single
    /// window can be slow on a shared machine, whichever side it falls on.
    fn summary(&self, ticks: &[TickRun], baselines: &[BaselineRun]) {
        const SECTION: &str = "comparison";
        let listed = |times: &[Option<Duration>]| {
            times
                .iter()
                .map(|t| t.map_or("-".to_owned(), seconds))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (what, ticks, baselines) in [
            (
                "last job created, audit",
                ticks.iter().map(|t| t.last_created).collect::<Vec<_>>(),
                baselines.iter().map(|b| b.last_created).collect::<Vec<_>>(),
            ),
            (
                "last job seen",
                ticks.iter().map(|t| Some(t.last_seen)).collect(),
                baselines.iter().map(|b| Some(b.last_seen)).collect(),
            ),
        ] {
            let compared = compare_ticks(&ticks, &baselines);
            self.figure(SECTION, &format!("ticks ({what})"), listed(&ticks), "s");
            self.figure(
                SECTION,
                &format!("baselines ({what})"),
                listed(&baselines),
                "s",
            );
            self.figure(
                SECTION,
                &format!("median tick / median baseline ({what})"),
                shown(compared.ratio_of_medians),
                &format!(
                    "x ({} / {})",
                    compared.median_tick.map_or("-".to_owned(), seconds),
                    compared.median_baseline.map_or("-".to_owned(), seconds),
                ),
            );
            self.figure(
                SECTION,
                &format!("each tick / mean of its baselines ({what})"),
                compared
                    .per_tick
                    .iter()
                    .map(|r| shown(*r))
                    .collect::<Vec<_>>()
                    .join(" / "),
                "x",
            );
            self.figure(
                SECTION,
                &format!("median of those ratios ({what})"),
                shown(compared.median_of_ratios),
                "x",
            );
        }
        if ticks.len() > 1
            && let Ok(operator) = self.operator()
            && let Some(memory) = operator.memory()
        {
            self.figure(
                "operator",
                &format!(
                    "peak rss of the restarted operator, after {} ticks",
                    ticks.len()
                ),
                mib(memory.peak_rss_bytes),
                "MiB",
            );
        }
    }

    /// The Jobs the tick creates (or created), built again by the operator's own Job
    /// builder with its defaults, under the names of `run`, with stowage's label and
    /// annotation keys prefixed so the operator never sees them.
    fn baseline_jobs(&self, run: Baseline) -> Result<Vec<Job>, Stop> {
        let flags = OperatorFlags::try_parse_from(
            std::iter::once("stowage".to_owned())
                .chain(operator::arguments(self.operator()?.addr())),
        )
        .map_err(|e| BenchError::Operator(format!("the operator's flags: {e}")))?;
        let defaults = stowage::controller::job_defaults(&flags.args);
        // Any minute serves: a tick's time has the same length in every Job.
        let tick = minute_boundary_after(Timestamp::now(), Duration::ZERO);
        let mut out = Vec::new();
        for t in 0..self.layout.targets {
            let namespace = self.layout.namespace_of_target(t);
            let group = self.layout.group_of(t);
            let target: Option<Arc<BackupTarget>> = self
                .observer
                .targets
                .get(&ObjectRef::new(&world::target_name(t)).within(&namespace));
            let schedule: Option<Arc<BackupSchedule>> = self
                .observer
                .schedules
                .get(&ObjectRef::new(&world::schedule_name(group)).within(&namespace));
            let (Some(target), Some(schedule)) = (target, schedule) else {
                continue;
            };
            let request = RunRequest::scheduled(
                world::schedule_name(group),
                tick,
                schedule.spec.retention.clone(),
                schedule.spec.time_zone.clone(),
            );
            let job = build_job(&target, &request, &defaults)
                .map_err(|e| BenchError::Operator(format!("building a baseline Job: {e}")))?;
            out.push(as_baseline(job, format!("{}{t:05}", run.job_prefix())));
        }
        Ok(out)
    }
}

/// The operator's flags, parsed the way `stowage controller` parses them.
#[derive(clap::Parser)]
struct OperatorFlags {
    #[command(flatten)]
    args: stowage::controller::ControllerArgs,
}

/// `job` named `name`, with each `stowage.dev/…` label and annotation key (on the Job
/// and its pod template) prefixed by [`BASELINE_PREFIX`].
fn as_baseline(mut job: Job, name: String) -> Job {
    fn rename(map: &mut Option<BTreeMap<String, String>>) {
        if let Some(map) = map {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| {
                    if k.starts_with("stowage.dev/") {
                        (format!("{BASELINE_PREFIX}{k}"), v)
                    } else {
                        (k, v)
                    }
                })
                .collect();
        }
    }
    job.metadata.name = Some(name);
    rename(&mut job.metadata.labels);
    rename(&mut job.metadata.annotations);
    if let Some(template) = job
        .spec
        .as_mut()
        .and_then(|spec| spec.template.metadata.as_mut())
    {
        rename(&mut template.labels);
        rename(&mut template.annotations);
    }
    job
}
