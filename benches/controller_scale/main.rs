//! The controller at scale: `cargo bench --bench controller_scale`.
//!
//! Starts its own control plane (etcd and kube-apiserver, no controller manager, no node
//! agent), creates N BackupTargets and M BackupSchedules, runs the release operator
//! against them and prints what it measured: time to converge, Jobs at start-up, memory,
//! API requests by verb and resource, a restart, ticks of every schedule at once
//! (`STOWAGE_BENCH_TICK_ROUNDS`), and a plain parallel client creating the same Jobs as a
//! baseline, before the first tick and after each: every tick is compared with the runs
//! on both sides, and the medians with each other. The benchmark acts as the node: it
//! marks each Job finished after a short delay. See docs/performance.md.
//!
//! Settings come from `STOWAGE_BENCH_*` environment variables ([`Knobs`]). Figures go to
//! stdout, progress to stderr. Figures are never judged: it exits 0 whatever they are
//! (and 1 only when it could not measure, e.g. the control plane did not start).

mod observe;
mod operator;
mod report;
mod scenario;
mod world;

use std::process::ExitCode;
use std::time::Duration;

use stowage_testenv::bench::{KnobError, knob};

/// The benchmark's settings.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// `STOWAGE_BENCH_TARGETS`: BackupTargets (default 5000).
    pub targets: usize,
    /// `STOWAGE_BENCH_SCHEDULES`: BackupSchedules, each selecting targets/schedules of
    /// them (default 500).
    pub schedules: usize,
    /// `STOWAGE_BENCH_NAMESPACES`: comma-separated layouts, each run on a fresh control
    /// plane one after the other (default `1,50`).
    pub layouts: Vec<usize>,
    /// `STOWAGE_BENCH_PROBE_SECONDS`: how long the simulated node lets a probe Job run
    /// (default 0.2: with the operator's 10 probes at a time, 5,000 new targets are
    /// probed within the phase's timeout).
    pub probe_time: Duration,
    /// `STOWAGE_BENCH_BACKUP_SECONDS`: how long it lets a backup Job run (default 60:
    /// longer than a tick's 5,000 creations take here, so no Job finishes while the
    /// operator's or the baseline's Jobs are being created; with 10 s the node's status
    /// patches of finished Jobs fell in the operator's longer window only).
    pub backup_time: Duration,
    /// `STOWAGE_BENCH_IDLE_SECONDS`: the idle window (default 60).
    pub idle: Duration,
    /// `STOWAGE_BENCH_QUIET_SECONDS`: how long without operator requests (and without
    /// Jobs left to finish) counts as settled (default 10).
    pub quiet: Duration,
    /// `STOWAGE_BENCH_SETTLE_SECONDS`: how long after the steady reading the operator's
    /// memory is read again, once the connections pooled for the tick have been idle
    /// long enough to be closed: hyper closes those idle for 90 s, looking every 90 s
    /// (default 180; 0 skips it).
    pub settle: Duration,
    /// `STOWAGE_BENCH_RESTART_WATCH_SECONDS`: how long Jobs are counted after the
    /// restarted operator is ready (default 30).
    pub restart_watch: Duration,
    /// `STOWAGE_BENCH_TICK_LEAD_SECONDS`: the least time between patching the schedules
    /// and their tick (default 30).
    pub tick_lead: Duration,
    /// `STOWAGE_BENCH_TICK_ROUNDS`: how many times every schedule fires on one minute,
    /// each tick between two runs of the plain client (default 3: on two cores shared
    /// with the control plane one window in several is slow, whoever creates the Jobs, and
    /// the median of three ticks and four baselines is not moved by one of them).
    pub tick_rounds: usize,
    /// `STOWAGE_BENCH_TIMEOUT_SECONDS`: the longest any phase may take (default 900).
    pub timeout: Duration,
    /// `STOWAGE_BENCH_BASELINE_CONCURRENCY`: requests in flight of the baseline client
    /// (default 64).
    pub baseline_concurrency: usize,
    /// `STOWAGE_BENCH_MAX_RSS_GIB`: the run stops when etcd, kube-apiserver and the
    /// operator together hold more than this (default 16).
    pub max_rss_gib: f64,
    /// `STOWAGE_BENCH_OPERATOR_USER`: whom the operator (and the baseline client) act as
    /// (default `serviceaccount`).
    pub operator_user: OperatorUser,
    /// `STOWAGE_BENCH_OPERATOR_COMMAND`: the program started as the operator, with the
    /// release binary's arguments (default: the release `stowage` built with the bench).
    /// For profiling: a script that `exec`s a profiler, or `LD_PRELOAD`s one, around a
    /// build of `stowage`, so the process the bench measures and signals stays the
    /// operator.
    pub operator_command: String,
}

/// Whom the operator and the baseline client authenticate as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorUser {
    /// ServiceAccount `stowage-system/stowage` bound by `deploy/rbac/operator.yaml`, as
    /// installed: its requests go through API Priority and Fairness like any workload's.
    ServiceAccount,
    /// The admin (group `system:masters`): exempt from API Priority and Fairness.
    Admin,
}

impl std::str::FromStr for OperatorUser {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "serviceaccount" => Ok(OperatorUser::ServiceAccount),
            "admin" => Ok(OperatorUser::Admin),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for OperatorUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OperatorUser::ServiceAccount => "serviceaccount",
            OperatorUser::Admin => "admin",
        })
    }
}

impl Knobs {
    fn from_env() -> Result<Knobs, KnobError> {
        let count = |n: &usize| *n >= 1;
        let seconds = |s: &u64| *s >= 1;
        let targets = knob("STOWAGE_BENCH_TARGETS", 5000, "a count, at least 1", count)?;
        let schedules = knob(
            "STOWAGE_BENCH_SCHEDULES",
            500usize.min(targets),
            "a count between 1 and STOWAGE_BENCH_TARGETS",
            |n: &usize| (1..=targets).contains(n),
        )?;
        let layouts_text: String = knob(
            "STOWAGE_BENCH_NAMESPACES",
            "1,50".to_owned(),
            "comma-separated namespace counts, each at least 1, e.g. 1 or 1,50",
            |text: &String| parse_layouts(text).is_some(),
        )?;
        let run_seconds = |s: &f64| (0.0..=3600.0).contains(s);
        let probe_seconds: f64 = knob(
            "STOWAGE_BENCH_PROBE_SECONDS",
            0.2,
            "seconds, between 0 and 3600",
            run_seconds,
        )?;
        let backup_seconds: f64 = knob(
            "STOWAGE_BENCH_BACKUP_SECONDS",
            60.0,
            "seconds, between 0 and 3600",
            run_seconds,
        )?;
        Ok(Knobs {
            targets,
            schedules,
            layouts: parse_layouts(&layouts_text).unwrap_or_else(|| vec![1]),
            probe_time: Duration::from_secs_f64(probe_seconds),
            backup_time: Duration::from_secs_f64(backup_seconds),
            idle: Duration::from_secs(knob(
                "STOWAGE_BENCH_IDLE_SECONDS",
                60,
                "seconds, at least 1",
                seconds,
            )?),
            quiet: Duration::from_secs(knob(
                "STOWAGE_BENCH_QUIET_SECONDS",
                10,
                "seconds, at least 1",
                seconds,
            )?),
            settle: Duration::from_secs(knob(
                "STOWAGE_BENCH_SETTLE_SECONDS",
                180,
                "seconds, 0 or more",
                |_: &u64| true,
            )?),
            restart_watch: Duration::from_secs(knob(
                "STOWAGE_BENCH_RESTART_WATCH_SECONDS",
                30,
                "seconds, at least 1",
                seconds,
            )?),
            tick_lead: Duration::from_secs(knob(
                "STOWAGE_BENCH_TICK_LEAD_SECONDS",
                30,
                "seconds, at least 1",
                seconds,
            )?),
            tick_rounds: knob("STOWAGE_BENCH_TICK_ROUNDS", 3, "a count, at least 1", count)?,
            timeout: Duration::from_secs(knob(
                "STOWAGE_BENCH_TIMEOUT_SECONDS",
                900,
                "seconds, at least 1",
                seconds,
            )?),
            baseline_concurrency: knob(
                "STOWAGE_BENCH_BASELINE_CONCURRENCY",
                64,
                "a count, at least 1",
                count,
            )?,
            max_rss_gib: knob(
                "STOWAGE_BENCH_MAX_RSS_GIB",
                16.0,
                "GiB, more than 0",
                |g: &f64| *g > 0.0,
            )?,
            operator_user: knob(
                "STOWAGE_BENCH_OPERATOR_USER",
                OperatorUser::ServiceAccount,
                "serviceaccount (stowage-system/stowage with deploy/rbac/operator.yaml) or admin",
                |_| true,
            )?,
            operator_command: knob(
                "STOWAGE_BENCH_OPERATOR_COMMAND",
                env!("CARGO_BIN_EXE_stowage").to_owned(),
                "the path of an executable file",
                |path: &String| std::path::Path::new(path).is_file(),
            )?,
        })
    }
}

/// `1,50` -> `[1, 50]`; `None` when any part is not a count of at least 1.
fn parse_layouts(text: &str) -> Option<Vec<usize>> {
    let layouts: Option<Vec<usize>> = text
        .split(',')
        .map(|part| part.trim().parse::<usize>().ok().filter(|n| *n >= 1))
        .collect();
    layouts.filter(|l| !l.is_empty())
}

/// Why the benchmark could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The control plane or a kubeconfig could not be set up.
    #[error("test environment: {0}")]
    Env(#[from] stowage_testenv::TestEnvError),
    /// An API request of the benchmark's own failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// A manifest did not convert to its type.
    #[error("building an object: {0}")]
    Json(#[from] serde_json::Error),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The operator could not be started or did not become ready.
    #[error("{0}")]
    Operator(String),
}

fn main() -> ExitCode {
    let knobs = match Knobs::from_env() {
        Ok(knobs) => knobs,
        Err(e) => {
            eprintln!("controller_scale: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("controller_scale: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut code = ExitCode::SUCCESS;
    for &namespaces in &knobs.layouts {
        if let Err(e) = runtime.block_on(scenario::run(&knobs, namespaces)) {
            report::progress(format!(
                "the {namespaces}-namespace layout could not be measured: {e}"
            ));
            code = ExitCode::FAILURE;
        }
    }
    code
}
