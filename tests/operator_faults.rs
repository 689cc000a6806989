//! The operator's fault suite on the real control plane (its own test binary, so its own
//! cluster): the operator is SIGKILLed at random points across many scheduled ticks, and
//! the API server is restarted in the middle of a run. Whatever happens, every tick gets
//! exactly one Job per target, and every run is recorded exactly once in the target's
//! status and once on the claim.
//!
//! Bounded and repeatable: the kill points come from a seeded PRNG whose seed is printed
//! (`STOWAGE_FAULT_SEED=<seed>` repeats a run), `STOWAGE_FAULT_TICKS` sets the number of
//! ticks (default [`DEFAULT_TICKS`]), and every wait has a guard timeout. Each test prints
//! its counts. See docs/operations.md, "Fault suite".

#[path = "operator_e2e/support.rs"]
#[allow(dead_code)] // shared with tests/operator_e2e.rs, which uses the rest
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use stowage_testenv::eventually;
use stowage_testenv::postgres::PgServer;
use support::{Env, PG_PASSWORD, RUN_TIMEOUT, at, condition, job_name};

/// Ticks of `ticks_survive_operator_kills` unless `STOWAGE_FAULT_TICKS` says otherwise.
const DEFAULT_TICKS: u64 = 12;
/// The schedule every test uses: a tick a minute, so the fake clock moves a minute a tick.
const SCHEDULE: &str = "every-minute";
/// Where Jobs carry their tick (RFC 3339, UTC).
const SCHEDULED_TIME: &str = "stowage.dev/scheduled-time";
/// Where Jobs carry their target's full name.
const TARGET_ANNOTATION: &str = "stowage.dev/target";

/// The API server restart takes the cluster away from every test of this binary: the
/// restart test holds this exclusively, the others shared.
static API_SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// SplitMix64: a small, well-mixed PRNG, so a seed replays the same faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What happens to the operator at one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Nothing: the operator runs the tick undisturbed.
    None,
    /// The operator runs with `STOWAGE_FAULT=schedule-after-create`: it aborts right after
    /// creating the tick's first Job, before any status is written.
    AfterCreate,
    /// SIGKILL this long after the clock reaches the tick: before the Job, while it runs,
    /// or after it finished but perhaps before its status is recorded.
    Kill(Duration),
}

/// Longest delay of a [`Fault::Kill`]: past a run's end, so every window is hit.
const MAX_KILL_DELAY_MS: u64 = 12_000;

/// One tick's fault: 1 in 5 none, 2 in 5 after-create, 2 in 5 a kill at a random delay.
fn pick_fault(rng: &mut Rng) -> Fault {
    match rng.below(5) {
        0 => Fault::None,
        1 | 2 => Fault::AfterCreate,
        _ => Fault::Kill(Duration::from_millis(rng.below(MAX_KILL_DELAY_MS + 1))),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {value:?}")),
    )
}

fn plus(t: Timestamp, seconds: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(seconds))
        .expect("a time in range")
}

fn schedule_spec(suspend: bool) -> Value {
    // Deadline: a tick must survive the operator's restart (and its Lease's expiry).
    // History limits at their maximum: no Job is deleted while the test counts them.
    json!({"schedule": "* * * * *", "startingDeadlineSeconds": 300,
           "successfulJobsHistoryLimit": 100, "failedJobsHistoryLimit": 100,
           "suspend": suspend,
           "targets": {"matchLabels": {"tier": "db"}}})
}

/// Create the schedule suspended, then resume it, so ticks count from the (fake) now: the
/// fake clock is a year past the schedule's real creation, and a tick less than
/// `startingDeadlineSeconds` before it would otherwise run at once.
async fn create_schedule(env: &Env, first: Timestamp) {
    env.create_schedule(SCHEDULE, schedule_spec(true));
    env.wait_schedule("the schedule suspended", SCHEDULE, |s| {
        match condition(s, "Ready") {
            Some(c) if c["reason"] == "Suspended" => Ok(()),
            _ => Err(format!("status = {}", s["status"])),
        }
    })
    .await;
    env.create_schedule(SCHEDULE, schedule_spec(false));
    wait_scheduled(env, first).await;
}

async fn wait_scheduled(env: &Env, next: Timestamp) {
    let next = next.to_string();
    env.wait_schedule(
        &format!("schedule Ready with nextScheduleTime {next}"),
        SCHEDULE,
        |s| {
            let ready = condition(s, "Ready").is_some_and(|c| c["status"] == "True");
            if ready && s["status"]["nextScheduleTime"] == next {
                Ok(())
            } else {
                Err(format!("status = {}", s["status"]))
            }
        },
    )
    .await;
}

/// A Job as the suite counts it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SeenJob {
    target: String,
    tick: String,
    name: String,
}

fn seen_job(job: &Job) -> Option<(String, SeenJob)> {
    let annotations = job.metadata.annotations.as_ref()?;
    Some((
        job.metadata.uid.clone()?,
        SeenJob {
            target: annotations.get(TARGET_ANNOTATION)?.clone(),
            tick: annotations.get(SCHEDULED_TIME)?.clone(),
            name: job_name(job),
        },
    ))
}

/// Every scheduled Job ever created in the namespace, by uid: a watch from the start, so a
/// Job deleted later still counts.
type JobLog = Arc<Mutex<BTreeMap<String, SeenJob>>>;

fn watch_jobs(env: &Env) -> JobLog {
    let log: JobLog = Arc::default();
    let api: Api<Job> = Api::namespaced(env.client.clone(), env.name());
    let sink = log.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            if let Ok(job) = event
                && let Some((uid, seen)) = seen_job(&job)
            {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(uid, seen);
            }
        }
    });
    log
}

/// The tick's Jobs of `target` (names).
async fn tick_jobs(env: &Env, target: &str, tick: &str) -> Vec<String> {
    env.jobs(&format!("stowage.dev/schedule={SCHEDULE}"))
        .await
        .iter()
        .filter_map(seen_job)
        .filter(|(_, s)| s.target == target && s.tick == tick)
        .map(|(_, s)| s.name)
        .collect()
}

/// How many entries of the target's `recentBackups` name Job `job`.
fn records_of(target: &Value, job: &str) -> usize {
    target["status"]["recentBackups"]
        .as_array()
        .map_or(0, |runs| runs.iter().filter(|r| r["job"] == job).count())
}

/// Where a run was when the operator died, from what the API shows right after the kill.
fn window(jobs: &[Job], target: &Value, tick: &str) -> &'static str {
    let ours: Vec<&Job> = jobs
        .iter()
        .filter(|j| seen_job(j).is_some_and(|(_, s)| s.tick == tick))
        .collect();
    let Some(job) = ours.first() else {
        return "before the Job";
    };
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        });
    if !finished {
        "while the Job runs"
    } else if records_of(target, &job_name(job)) == 0 {
        "after the Job, before its record"
    } else {
        "after the record"
    }
}

#[tokio::test]
async fn ticks_survive_operator_kills() {
    let _shared = API_SERVER.read().await;
    let ticks = env_u64("STOWAGE_FAULT_TICKS").unwrap_or(DEFAULT_TICKS);
    assert!(
        (1..=100).contains(&ticks),
        "STOWAGE_FAULT_TICKS must be 1..=100 (the Job history limit), got {ticks}"
    );
    let seed = env_u64("STOWAGE_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "operator faults: {ticks} ticks, seed {seed} (repeat with STOWAGE_FAULT_SEED={seed} STOWAGE_FAULT_TICKS={ticks})"
    );
    let mut rng = Rng(seed);
    let targets = ["app-db", "app-db-2"];

    // ReadWriteMany: both targets' runs of a tick go at once (no wait for the claim).
    let mut env = Env::with_claim_mode("faults-ticks", PG_PASSWORD, "ReadWriteMany").await;
    for target in targets {
        env.create_target(target, json!({"tier": "db"}));
    }
    let base: Timestamp = at("03-01T00:00:30Z").parse().expect("a time");
    env.set_time(&base.to_string());
    env.start_operator();
    let created = watch_jobs(&env);
    let first = plus(base, 30);
    create_schedule(&env, first).await;

    let (mut after_create, mut kills) = (0u32, 0u32);
    let mut windows: BTreeMap<&str, u32> = BTreeMap::new();
    let mut recorded: BTreeSet<(String, String)> = BTreeSet::new();
    let started = Instant::now();
    for k in 0..ticks {
        let tick = plus(first, 60 * k as i64);
        let tick_text = tick.to_string();
        let fault = pick_fault(&mut rng);
        let tick_start = Instant::now();
        match fault {
            Fault::None => env.set_time(&plus(tick, 1).to_string()),
            Fault::AfterCreate => {
                // An idle restart (the previous tick is recorded) to arm the fault point.
                env.kill_operator();
                env.start_operator_with_env(&[("STOWAGE_FAULT", "schedule-after-create")]);
                env.set_time(&plus(tick, 1).to_string());
                let status = env.wait_operator_exit(Duration::from_secs(120)).await;
                assert!(
                    status.is_some(),
                    "tick {tick_text}: the operator with STOWAGE_FAULT=schedule-after-create did not stop"
                );
                after_create += 1;
            }
            Fault::Kill(delay) => {
                env.set_time(&plus(tick, 1).to_string());
                tokio::time::sleep(delay).await;
                env.kill_operator();
                kills += 1;
            }
        }
        if fault != Fault::None {
            let jobs = env.jobs(&format!("stowage.dev/schedule={SCHEDULE}")).await;
            let target = env.target(targets[0]).await.expect("the target");
            let at_kill = window(&jobs, &target, &tick_text);
            *windows.entry(at_kill).or_default() += 1;
            eprintln!("tick {k} ({tick_text}): {fault:?}, the operator died {at_kill}");
            // Down for a while: the clock moves on, within the starting deadline.
            env.set_time(&plus(tick, 20).to_string());
            env.start_operator();
        } else {
            eprintln!("tick {k} ({tick_text}): no fault");
        }

        for target in targets {
            let job = eventually(
                &format!("the Job of {target} for tick {tick_text}"),
                RUN_TIMEOUT,
                || async {
                    match tick_jobs(&env, target, &tick_text).await.as_slice() {
                        [] => Err("no Job yet".to_owned()),
                        [one] => Ok(one.clone()),
                        many => panic!(
                            "tick {tick_text}: {} Jobs for {target}: {many:?}",
                            many.len()
                        ),
                    }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let status =
                env.wait_target(&format!("the run of Job {job} recorded"), target, |t| {
                    match records_of(t, &job) {
                        0 => Err(format!("lastBackup = {}", t["status"]["lastBackup"])),
                        _ => Ok(()),
                    }
                })
                .await;
            let record = status["status"]["recentBackups"]
                .as_array()
                .and_then(|runs| runs.iter().find(|r| r["job"] == job.as_str()))
                .expect("the record");
            assert_eq!(record["outcome"], "Succeeded", "{record}");
            assert_eq!(
                records_of(&status, &job),
                1,
                "the run of {job} recorded more than once: {}",
                status["status"]["recentBackups"]
            );
            // No run in the window of recent ones is there twice.
            let names: Vec<&str> = status["status"]["recentBackups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["job"].as_str())
                .collect();
            let distinct: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                names.len(),
                "a run recorded twice: {names:?}"
            );
            recorded.insert((target.to_owned(), job));
        }
        env.wait_schedule(&format!("lastScheduleTime {tick_text}"), SCHEDULE, |s| {
            if s["status"]["lastScheduleTime"] == tick_text {
                Ok(())
            } else {
                Err(format!("status = {}", s["status"]))
            }
        })
        .await;
        if let Some(status) = env.operator_exit() {
            panic!("tick {tick_text}: the operator exited on its own ({status})");
        }
        eprintln!(
            "tick {k}: recorded for every target after {:.1}s",
            tick_start.elapsed().as_secs_f64()
        );
    }

    // A last look after a few more reconciles: nothing late shows up.
    env.set_time(&plus(first, 60 * ticks as i64 - 30).to_string());
    let since = env.reconciles("backupschedule").await;
    env.wait_reconciles("backupschedule", since, 2).await;
    for job in env.jobs(&format!("stowage.dev/schedule={SCHEDULE}")).await {
        if let Some((uid, seen)) = seen_job(&job) {
            created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, seen);
        }
    }

    let created = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut per_tick: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for seen in created.values() {
        per_tick
            .entry((seen.target.clone(), seen.tick.clone()))
            .or_default()
            .push(seen.name.clone());
    }
    let duplicates: usize = per_tick.values().map(|v| v.len() - 1).sum();
    let expected: BTreeSet<(String, String)> = targets
        .iter()
        .flat_map(|t| {
            (0..ticks).map(move |k| (t.to_string(), plus(first, 60 * k as i64).to_string()))
        })
        .collect();
    let got: BTreeSet<(String, String)> = per_tick.keys().cloned().collect();
    assert_eq!(got, expected, "Jobs for exactly the ticks that passed");
    assert_eq!(duplicates, 0, "more than one Job for a tick: {per_tick:?}");
    assert_eq!(recorded.len(), expected.len(), "every run recorded");

    for target in targets {
        let sidecars = env.sidecars(target);
        let mut per_tick: BTreeMap<Timestamp, usize> = BTreeMap::new();
        for (path, sidecar) in &sidecars {
            let tick: Timestamp = sidecar["scheduledTime"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{}: no scheduledTime", path.display()));
            *per_tick.entry(tick).or_default() += 1;
        }
        let ticks_seen: Vec<Timestamp> = per_tick.keys().copied().collect();
        let want: Vec<Timestamp> = (0..ticks).map(|k| plus(first, 60 * k as i64)).collect();
        assert_eq!(ticks_seen, want, "{target}: one artifact per tick");
        assert!(
            per_tick.values().all(|n| *n == 1),
            "{target}: a tick with more than one artifact: {per_tick:?}"
        );
        if let Err(out) = env.verify(target) {
            panic!("stowage verify {target}:\n{out}");
        }
    }

    eprintln!(
        "operator faults: {ticks} ticks x {} targets (seed {seed}): {} kills ({after_create} after-create, {kills} random), {} Jobs, {} runs recorded, {duplicates} duplicates, verify ok ({:.0}s)",
        targets.len(),
        after_create + kills,
        created.len(),
        recorded.len(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("operator faults: kill windows {windows:?}");
}

/// A transaction holding an `ACCESS EXCLUSIVE` lock on a table: `pg_dump` waits for it,
/// so a run lasts until [`TableLock::release`].
struct TableLock {
    psql: Child,
}

impl TableLock {
    fn take(pg: &PgServer, db: &str, table: &str) -> TableLock {
        let mut psql = Command::new("psql")
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U"])
            .args(["postgres", "-p", &pg.port.to_string(), "-d", db])
            .env("PGPASSWORD", &pg.password)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start psql");
        let stdin = psql.stdin.as_mut().expect("psql stdin");
        writeln!(
            stdin,
            "begin;\nlock table {table} in access exclusive mode;"
        )
        .expect("psql");
        stdin.flush().expect("psql");
        let lock = TableLock { psql };
        let query = format!(
            "select count(*) from pg_locks l join pg_class c on c.oid = l.relation \
             where c.relname = '{table}' and l.mode = 'AccessExclusiveLock' and l.granted"
        );
        let start = Instant::now();
        while pg.psql(db, &query).trim() != "1" {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the lock on {table} was not taken"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lock
    }

    fn release(mut self) {
        if let Some(mut stdin) = self.psql.stdin.take() {
            let _ = writeln!(stdin, "commit;");
        }
        let _ = self.psql.wait();
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

#[tokio::test]
async fn an_api_server_restart_mid_run_records_the_run_once() {
    let _exclusive = API_SERVER.write().await;
    let mut env = Env::new("faults-apiserver", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    let base: Timestamp = at("04-01T00:00:30Z").parse().expect("a time");
    env.set_time(&base.to_string());
    env.start_operator();
    let tick = plus(base, 30);
    let tick_text = tick.to_string();
    create_schedule(&env, tick).await;

    // The run's pg_dump waits on this lock until it is released, mid-outage.
    let lock = TableLock::take(&env.pg, &env.db, "orders");
    env.set_time(&plus(tick, 1).to_string());
    let jobs = env
        .wait_jobs(&format!("stowage.dev/schedule={SCHEDULE}"), 1)
        .await;
    let job = job_name(&jobs[0]);
    let (pg, db) = (&env.pg, &env.db);
    eventually("pg_dump waits for the lock", RUN_TIMEOUT, || async move {
        let waiting = pg.psql(
            db,
            "select count(*) from pg_stat_activity where application_name = 'pg_dump' \
             and wait_event_type = 'Lock'",
        );
        if waiting.trim() == "1" {
            Ok(())
        } else {
            Err(format!("{} pg_dump session(s) waiting", waiting.trim()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The outage: the API server goes down while the run is in progress, the run
    // finishes while it is down, and it comes back.
    let stopped = env.cluster.stop_api_server().expect("stop the API server");
    let stop_took = stopped.stop_took;
    lock.release();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_took = env
        .cluster
        .start_api_server(stopped)
        .expect("start the API server again");
    eprintln!(
        "API server down for {:.1}s (stop {:.1}s, start until ready {:.1}s)",
        (stop_took + Duration::from_secs(2) + start_took).as_secs_f64(),
        stop_took.as_secs_f64(),
        start_took.as_secs_f64()
    );

    // The run gets recorded; if the operator exits meanwhile, say so and start it again
    // (as its Deployment would).
    let mut exits = Vec::new();
    let start = Instant::now();
    let target = loop {
        if let Some(status) = env.operator_exit() {
            let log = env.operator_log();
            let last: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "the operator exited ({status}) during the API server outage: it could not renew its \
                 Lease, so it stopped before another replica could take over (as designed; its \
                 Deployment restarts it); last log lines:\n{}",
                last.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            exits.push(status);
            env.start_operator();
        }
        let target = env.target("app-db").await.expect("the target");
        if records_of(&target, &job) > 0 {
            break target;
        }
        assert!(
            start.elapsed() < RUN_TIMEOUT,
            "the run of {job} was not recorded after the API server restart; lastBackup = {}",
            target["status"]["lastBackup"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    env.wait_schedule(&format!("lastScheduleTime {tick_text}"), SCHEDULE, |s| {
        if s["status"]["lastScheduleTime"] == tick_text {
            Ok(())
        } else {
            Err(format!("status = {}", s["status"]))
        }
    })
    .await;
    let since = env.reconciles("backupschedule").await;
    env.wait_reconciles("backupschedule", since, 2).await;

    let all = env.jobs(&format!("stowage.dev/schedule={SCHEDULE}")).await;
    assert_eq!(
        all.iter().map(job_name).collect::<Vec<_>>(),
        vec![job.clone()],
        "one Job for the tick"
    );
    let target = env.target("app-db").await.unwrap_or(target);
    let recent = target["status"]["recentBackups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(recent.len(), 1, "one run recorded: {recent:?}");
    assert_eq!(recent[0]["job"], job.as_str());
    assert_eq!(recent[0]["outcome"], "Succeeded", "{}", recent[0]);
    assert_eq!(target["status"]["lastBackup"]["job"], job.as_str());
    let sidecars = env.sidecars("app-db");
    assert_eq!(sidecars.len(), 1, "one artifact: {sidecars:?}");
    assert_eq!(sidecars[0].1["scheduledTime"], tick_text);
    if let Err(out) = env.verify("app-db") {
        panic!("stowage verify app-db:\n{out}");
    }
    eprintln!(
        "operator faults: API server restarted mid-run: 1 Job, 1 run recorded, 1 artifact, verify ok; operator exits: {}",
        exits.len()
    );
}

/// A probe's Job is its only record until its result is: an operator that dies right
/// after creating it (before any status write) and starts again finds the Job, starts
/// no second probe, and records the result as the probe of the target's generation.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_after_starting_a_probe_starts_no_second_one() {
    let _shared = API_SERVER.read().await;
    let mut env = Env::new("faults-probe", PG_PASSWORD).await;
    let probes: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    {
        let api: Api<Job> = Api::namespaced(env.client.clone(), env.name());
        let probes = probes.clone();
        let config = watcher::Config::default().labels("stowage.dev/kind=probe");
        tokio::spawn(async move {
            let mut events = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                if let Ok(job) = event {
                    let uid = job.metadata.uid.clone().unwrap_or_default();
                    probes.lock().unwrap_or_else(|e| e.into_inner()).insert(uid);
                }
            }
        });
    }
    env.start_operator_with_env(&[("STOWAGE_FAULT", "probe-after-create")]);
    env.create_target("app-db", json!({"tier": "db"}));
    let exit = env.wait_operator_exit(Duration::from_secs(120)).await;
    assert!(
        exit.is_some(),
        "the operator with STOWAGE_FAULT=probe-after-create did not stop"
    );
    let jobs = env.jobs("stowage.dev/kind=probe").await;
    assert_eq!(jobs.len(), 1, "one probe Job when the operator died");
    let target = env.target("app-db").await.expect("the target");
    assert!(
        target["status"]["probedGeneration"].is_null(),
        "nothing recorded the probe before the operator died: {}",
        target["status"]
    );

    env.start_operator();
    let target = env
        .wait_target("the probe recorded", "app-db", |t| {
            let status = &t["status"];
            if status["probedGeneration"] == 1 && !status["lastProbeTime"].is_null() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        })
        .await;
    assert_eq!(
        condition(&target, "Reachable").map(|c| c["status"].clone()),
        Some(json!("True")),
        "{}",
        target["status"]
    );
    // Long enough for a second probe Job to show, had the restart started one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let created = probes.lock().unwrap_or_else(|e| e.into_inner()).len();
    let jobs = env.jobs("stowage.dev/kind=probe").await;
    eprintln!("probe Jobs created: {created}, present: {}", jobs.len());
    assert_eq!((created, jobs.len()), (1, 1), "a second probe was started");
    assert_eq!(
        jobs[0].metadata.annotations.as_ref().unwrap()["stowage.dev/generation"],
        "1"
    );
}

#[test]
fn faults_replay_from_their_seed_and_cover_every_kind() {
    let draw = |seed| {
        let mut rng = Rng(seed);
        (0..200).map(|_| pick_fault(&mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let faults = draw(7);
    assert!(faults.contains(&Fault::None));
    assert!(faults.contains(&Fault::AfterCreate));
    let delays: Vec<Duration> = faults
        .iter()
        .filter_map(|f| match f {
            Fault::Kill(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert!(delays.iter().any(|d| *d < Duration::from_secs(2)));
    assert!(delays.iter().any(|d| *d > Duration::from_secs(6)));
    assert!(
        delays
            .iter()
            .all(|d| *d <= Duration::from_millis(MAX_KILL_DELAY_MS))
    );
}
