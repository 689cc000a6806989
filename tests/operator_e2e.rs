//! The operator end to end on a real control plane: `stowage controller` runs as a local
//! process under its own RBAC (`deploy/rbac/operator.yaml`: ServiceAccount
//! `stowage-system/stowage`, no access to Secrets), with a fake clock file; its Jobs run on
//! the node agent (the runner is the locally built binary, pg_dump the host's, or stand-ins
//! that misbehave on purpose) against a real PostgreSQL on 127.0.0.1, and the artifacts
//! land in the claim's host directory.
//!
//! Each test has its own namespace, claim, Secret, database and operator process. Polls
//! use generous timeouts as hang guards only. On failure, the operator's log, the
//! namespace's objects and events, and the containers' logs are printed.

#[path = "operator_e2e/support.rs"]
#[allow(dead_code)] // shared with the other e2e suites
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use stowage_testenv::eventually;
use support::{
    Env, LEASE_DURATION_SECONDS, LEASE_NAME, PG_PASSWORD, at, condition, condition_summary,
    job_name, reconciles_at,
};

/// A target's last backup finished (any outcome) in a Job other than `not_job`.
fn last_backup_done(not_job: Option<String>) -> impl Fn(&Value) -> Result<(), String> {
    move |t: &Value| {
        let last = &t["status"]["lastBackup"];
        let job = last["job"].as_str();
        if last["outcome"].is_string() && job.is_some() && job != not_job.as_deref() {
            Ok(())
        } else {
            Err(format!(
                "lastBackup = {last}; {}",
                condition_summary(t, "LastBackupSucceeded")
            ))
        }
    }
}

/// Check a succeeded last backup against its artifact and sidecar on the claim; returns
/// the sidecar.
fn assert_backup_matches_claim(env: &Env, target: &Value, name: &str) -> Value {
    let last = &target["status"]["lastBackup"];
    assert_eq!(last["outcome"], "Succeeded", "{last}");
    let succeeded = condition(target, "LastBackupSucceeded").expect("LastBackupSucceeded");
    assert_eq!(succeeded["status"], "True", "{succeeded}");
    let sha = last["sha256"].as_str().expect("lastBackup.sha256");
    let artifact = last["artifact"].as_str().expect("lastBackup.artifact");
    let sidecars = env.sidecars(name);
    let (path, sidecar) = sidecars
        .iter()
        .find(|(_, s)| s["sha256"] == sha)
        .unwrap_or_else(|| panic!("no sidecar with sha256 {sha} among {sidecars:?}"));
    let data = std::path::PathBuf::from(path.to_string_lossy().trim_end_matches(".meta.json"));
    assert!(
        artifact.ends_with(&*data.file_name().unwrap().to_string_lossy()),
        "status artifact {artifact} vs file {}",
        data.display()
    );
    let bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    assert_eq!(
        sidecar["storedBytes"].as_u64(),
        Some(bytes.len() as u64),
        "stored size"
    );
    assert!(!bytes.is_empty());
    assert_eq!(sidecar["plugin"], "postgres");
    assert_eq!(sidecar["target"], name);
    assert_eq!(sidecar["namespace"], env.name());
    sidecar.clone()
}

/// Wait for the schedule's Ready condition and the expected next tick.
async fn wait_scheduled(env: &Env, name: &str, next: &str) {
    eventually(
        &format!("schedule {name} Ready with nextScheduleTime {next}"),
        Duration::from_secs(120),
        || async move {
            let s = env.schedule(name).await;
            let ready = condition(&s, "Ready").map(|c| c["status"] == "True");
            if ready == Some(true) && s["status"]["nextScheduleTime"] == next {
                Ok(())
            } else {
                Err(format!("status = {}", s["status"]))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

fn selector_of(schedule: &str) -> String {
    format!("stowage.dev/schedule={schedule}")
}

#[tokio::test]
async fn a_schedule_fires_in_its_time_zone_and_records_the_artifact() {
    let mut env = Env::new("e2e-fires", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    // 02:29:00 in Paris (summer time, UTC+2): one minute before the tick.
    env.set_time(&at("06-11T00:29:00Z"));
    env.start_operator();
    env.create_schedule(
        "nightly",
        json!({"schedule": "30 2 * * *", "timeZone": "Europe/Paris",
               "targets": {"matchLabels": {"tier": "db"}}}),
    );
    let tick = at("06-11T00:30:00Z");
    wait_scheduled(&env, "nightly", &tick).await;
    assert!(env.jobs(&selector_of("nightly")).await.is_empty());

    env.set_time(&at("06-11T00:30:05Z"));
    let jobs = env.wait_jobs(&selector_of("nightly"), 1).await;
    assert_eq!(jobs.len(), 1);
    let target = env
        .wait_target(
            "the scheduled backup finishes",
            "app-db",
            last_backup_done(None),
        )
        .await;
    assert_backup_matches_claim(&env, &target, "app-db");
    let last = &target["status"]["lastBackup"];
    assert_eq!(last["job"], job_name(&jobs[0]));
    assert_eq!(last["schedule"], "nightly");
    // A tool plugin: the runner was copied in by the init container, then ran pg_dump.
    let pods = env.pods_of(&job_name(&jobs[0])).await;
    assert_eq!(pods.len(), 1);
    let status = pods[0].status.as_ref().expect("pod status");
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let init = status
        .init_container_statuses
        .as_ref()
        .and_then(|s| s.iter().find(|c| c.name == "install-runner"))
        .expect("the install-runner init container ran");
    let exit = init.state.as_ref().and_then(|s| s.terminated.as_ref());
    assert_eq!(exit.map(|t| t.exit_code), Some(0), "{init:?}");
    let sidecar = &env.sidecars("app-db")[0].1;
    assert_eq!(sidecar["schedule"], "nightly");
    assert_eq!(sidecar["scheduledTime"], tick);

    let schedule = env.schedule("nightly").await;
    assert_eq!(schedule["status"]["lastScheduleTime"], tick);
    assert_eq!(
        schedule["status"]["nextScheduleTime"],
        at("06-12T00:30:00Z")
    );
    let jobs = env.jobs(&selector_of("nightly")).await;
    assert_eq!(jobs.len(), 1, "one Job for one tick");
}

#[tokio::test]
async fn a_failed_backup_reports_the_plugin_error_without_the_password() {
    let wrong = "Wr0ng-e2e-Secret-9f3c1d";
    let mut env = Env::new("e2e-fail", wrong).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    env.kubectl(&[
        "annotate",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=fail-1",
    ]);
    let target = env
        .wait_target(
            "the failed backup is recorded",
            "app-db",
            |t| match condition(t, "LastBackupSucceeded") {
                Some(c) if c["status"] == "False" => Ok(()),
                _ => Err(format!(
                    "{}; lastBackup = {}",
                    condition_summary(t, "LastBackupSucceeded"),
                    t["status"]["lastBackup"]
                )),
            },
        )
        .await;
    let cond = condition(&target, "LastBackupSucceeded").unwrap();
    assert_eq!(cond["reason"], "Unauthorized", "{cond}");
    let message = cond["message"].as_str().unwrap_or_default();
    eprintln!("LastBackupSucceeded: {cond}");
    assert!(message.contains("passwordSecretRef"), "{message}");
    assert_eq!(target["status"]["lastBackup"]["outcome"], "Failed");
    assert_eq!(target["status"]["lastFailure"]["reason"], "Unauthorized");
    assert_eq!(target["status"]["lastHandledBackupNow"], "fail-1");
    assert!(
        env.sidecars("app-db").is_empty(),
        "no artifact from a failed run"
    );

    // Give the event recorder a moment to be visible, then search everything.
    eventually("a BackupFailed event", Duration::from_secs(60), || async {
        let events = env.kubectl(&["get", "events", "-o", "json"]);
        if events.contains("BackupFailed") {
            Ok(())
        } else {
            Err("no BackupFailed event yet".to_owned())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let status = target["status"].to_string();
    assert!(
        !status.contains(wrong),
        "the password leaked into the status"
    );
    let events = env.kubectl(&["get", "events", "-o", "json"]);
    assert!(!events.contains(wrong), "the password leaked into events");
    let events_v1 = env.kubectl(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(
        !events_v1.contains(wrong),
        "the password leaked into events"
    );
    let jobs_pods = env.kubectl(&["get", "jobs,pods", "-o", "json"]);
    assert!(
        !jobs_pods.contains(wrong),
        "the password appears in a Job or pod (termination message?)"
    );
    let log = env.operator_log();
    assert!(
        log.contains("backup finished"),
        "the operator logged the run"
    );
    assert!(
        !log.contains(wrong),
        "the password leaked into the operator log"
    );
    // Text logs into a file (or `kubectl logs`) carry no terminal colour codes.
    assert!(
        !log.contains('\x1b'),
        "ANSI escape codes in the operator's text log"
    );
}

/// Stand-in `psql` and `pg_dump` that echo `$PGPASSWORD`: on stderr always, in the
/// server's version string (the `serverVersion` fact), and in `pg_dump`'s error when the
/// database is `fails`. Shared by every test of the cluster, so they vary by environment
/// only.
fn write_echoing_postgres_tools(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let tools = [
        (
            "psql",
            r#"#!/bin/sh
echo "psql: WARNING: connected with password $PGPASSWORD" >&2
echo "170002|17.2 (stand-in server, password $PGPASSWORD)"
"#,
        ),
        (
            "pg_dump",
            r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 17.2"; exit 0; fi
echo "pg_dump: WARNING: connected with password $PGPASSWORD" >&2
if [ "$PGDATABASE" = "fails" ]; then
  echo "pg_dump: error: query failed: ERROR:  permission denied for table orders (password \"$PGPASSWORD\")" >&2
  exit 1
fi
echo "-- stand-in dump"
"#,
        ),
    ];
    for (name, text) in tools {
        // Written aside and renamed: a container starting now sees the old or the new file.
        let path = dir.join(name);
        let staged = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&staged, text).expect("write a stand-in tool");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        std::fs::rename(&staged, &path).expect("install the stand-in tool");
    }
}

#[tokio::test]
async fn tools_that_echo_the_password_leak_it_into_no_status_event_log_or_sidecar() {
    let password = "Echo-e2e-Secret-5b7e21";
    let mut env = Env::new("e2e-echo", password).await;
    write_echoing_postgres_tools(&env.standin_tools_dir());
    let standin_image = env.standin_tools_image();
    for (name, database) in [("echo-ok", "shop"), ("echo-fail", "fails")] {
        env.apply(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
            "metadata": {"name": name},
            "spec": {
                "postgres": {
                    "host": "127.0.0.1",
                    "port": 5432,
                    "username": "backup",
                    "database": database,
                    "passwordSecretRef": {
                        "name": stowage_testenv::postgres::SECRET_NAME,
                        "key": stowage_testenv::postgres::SECRET_KEY,
                    },
                    "image": standin_image,
                },
                "storage": {"claimName": support::CLAIM},
                "compression": "none",
                "job": {"backoffLimit": 0}
            }
        }));
    }
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    for name in ["echo-ok", "echo-fail"] {
        env.kubectl(&[
            "annotate",
            "backuptarget",
            name,
            "stowage.dev/backup-now=echo-1",
        ]);
    }
    let finished = |t: &Value| match (
        condition(t, "LastBackupSucceeded"),
        t["status"]["lastHandledBackupNow"].as_str(),
    ) {
        (Some(c), Some("echo-1")) if c["status"] == "True" || c["status"] == "False" => Ok(()),
        _ => Err(condition_summary(t, "LastBackupSucceeded")),
    };
    let ok = env
        .wait_target("the echoing backup", "echo-ok", finished)
        .await;
    let failed = env
        .wait_target("the failing backup", "echo-fail", finished)
        .await;
    assert_eq!(
        condition(&ok, "LastBackupSucceeded").unwrap()["status"],
        "True",
        "{ok}"
    );
    let cond = condition(&failed, "LastBackupSucceeded").unwrap();
    assert_eq!(cond["reason"], "Unauthorized", "{cond}");
    let message = cond["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("(password \"<redacted>\")"),
        "the tool's error is shown, redacted: {message}"
    );
    eventually("a BackupFailed event", Duration::from_secs(60), || async {
        let events = env.kubectl(&["get", "events", "-o", "json"]);
        if events.contains("BackupFailed") {
            Ok(())
        } else {
            Err("no BackupFailed event yet".to_owned())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The echo really happened: the sidecar's facts and the runner's log show it redacted.
    let sidecars = env.sidecars("echo-ok");
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    let server_version = sidecars[0].1["facts"]["serverVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(
        server_version.contains("password <redacted>"),
        "{}",
        sidecars[0].1
    );
    let container_logs = env.container_logs();
    assert!(
        container_logs.contains("connected with password <redacted>"),
        "{container_logs}"
    );

    let mut places = vec![
        (
            "the targets",
            env.kubectl(&["get", "backuptargets", "-o", "json"]),
        ),
        ("events", env.kubectl(&["get", "events", "-o", "json"])),
        (
            "events.k8s.io",
            env.kubectl(&["get", "events.events.k8s.io", "-o", "json"]),
        ),
        (
            "Jobs and pods (termination messages)",
            env.kubectl(&["get", "jobs,pods", "-o", "json"]),
        ),
        ("container logs", container_logs),
        ("the operator's log", env.operator_log()),
    ];
    let files = env.claim_files();
    assert!(files.len() >= 2, "artifact and sidecar: {files:?}");
    for file in &files {
        let bytes = std::fs::read(file).expect("read a file of the claim");
        places.push((
            "a file of the claim",
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for (place, text) in places {
        assert!(
            !text.contains(password),
            "the password leaked into {place}:\n{text}"
        );
    }
}

#[tokio::test]
async fn backup_now_runs_once_per_token() {
    let mut env = Env::new("e2e-now", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let backups = "stowage.dev/kind=backup";

    env.kubectl(&[
        "annotate",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=t1",
    ]);
    let target = env
        .wait_target("backup-now t1 finishes", "app-db", last_backup_done(None))
        .await;
    assert_eq!(target["status"]["lastHandledBackupNow"], "t1");
    assert_backup_matches_claim(&env, &target, "app-db");
    let first_job = target["status"]["lastBackup"]["job"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(env.jobs(backups).await.len(), 1);

    // The same token again (with another change, so the target is reconciled): nothing.
    env.kubectl(&[
        "annotate",
        "--overwrite",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=t1",
        "e2e/poke=1",
    ]);
    let since = env.reconciles("backuptarget").await;
    env.wait_reconciles("backuptarget", since, 3).await;
    assert_eq!(env.jobs(backups).await.len(), 1, "the same token ran again");
    assert_eq!(env.sidecars("app-db").len(), 1);

    // A new token runs again.
    env.kubectl(&[
        "annotate",
        "--overwrite",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=t2",
    ]);
    let target = env
        .wait_target(
            "backup-now t2 finishes",
            "app-db",
            last_backup_done(Some(first_job.clone())),
        )
        .await;
    assert_eq!(target["status"]["lastHandledBackupNow"], "t2");
    assert_backup_matches_claim(&env, &target, "app-db");
    assert_eq!(env.jobs(backups).await.len(), 2);
    assert_eq!(env.sidecars("app-db").len(), 2);
    let recent = target["status"]["recentBackups"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{recent:?}");
}

#[tokio::test]
async fn deleting_a_target_collects_its_jobs_and_keeps_its_artifacts() {
    let mut env = Env::new("e2e-gc", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    env.kubectl(&[
        "annotate",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=gc",
    ]);
    let target = env
        .wait_target("the backup finishes", "app-db", last_backup_done(None))
        .await;
    let sidecar = assert_backup_matches_claim(&env, &target, "app-db");
    let jobs = env.jobs("stowage.dev/target=app-db").await;
    assert!(!jobs.is_empty());
    let mut pods = 0;
    for job in &jobs {
        pods += env.pods_of(&job_name(job)).await.len();
    }
    assert!(pods > 0, "the Jobs have pods");

    env.kubectl(&["delete", "backuptarget", "app-db", "--wait=true"]);
    let env_ref = &env;
    eventually(
        "the target's Jobs and pods are garbage-collected",
        Duration::from_secs(180),
        || async move {
            let jobs = env_ref.jobs("stowage.dev/target=app-db").await;
            let mut pods = 0;
            for job in &jobs {
                pods += env_ref.pods_of(&job_name(job)).await.len();
            }
            let all_pods = env_ref.kubectl(&["get", "pods", "-o", "name"]);
            if jobs.is_empty() && all_pods.trim().is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} Job(s), {pods} pod(s); pods: {all_pods}",
                    jobs.len()
                ))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = env.sidecars("app-db");
    assert_eq!(after.len(), 1, "the artifact stays on the claim");
    assert_eq!(after[0].1, sidecar);
    let data = after[0]
        .0
        .to_string_lossy()
        .trim_end_matches(".meta.json")
        .to_owned();
    let bytes = std::fs::read(&data).expect("the artifact is still there");
    assert_eq!(sidecar["storedBytes"].as_u64(), Some(bytes.len() as u64));
}

/// The target's series of `stowage_backup_last_success_timestamp_seconds`.
fn last_success_series(metrics: &str, target: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("stowage_backup_last_success_timestamp_seconds{"))
        .filter(|l| l.contains(&format!("target=\"{target}\"")))
        .count()
}

#[tokio::test]
async fn a_deleted_target_leaves_no_metric_series() {
    let mut env = Env::new("e2e-series", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    env.backup_now("app-db", "series").await;
    let env_ref = &env;
    eventually(
        "the target's last success is a metric",
        Duration::from_secs(60),
        || async move {
            match last_success_series(&env_ref.metrics(), "app-db") {
                1 => Ok(()),
                n => Err(format!("{n} series")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Without Jobs, nothing but the target's own deletion tells the operator it is gone
    // (a Job's garbage collection would wake it too).
    env.kubectl(&[
        "delete",
        "jobs",
        "-l",
        "stowage.dev/target=app-db",
        "--wait=true",
    ]);
    env.kubectl(&["delete", "backuptarget", "app-db", "--wait=true"]);
    eventually(
        "the deleted target's series is removed",
        Duration::from_secs(60),
        || async move {
            let metrics = env_ref.metrics();
            match (metrics.is_empty(), last_success_series(&metrics, "app-db")) {
                (false, 0) => Ok(()),
                (true, _) => Err("the operator serves no metrics".to_owned()),
                (false, n) => Err(format!("{n} series")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_crash_during_a_run_leaves_exactly_one_job_for_the_tick() {
    let mut env = Env::new("e2e-crash", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T00:29:00Z"));
    env.start_operator();
    env.create_schedule(
        "nightly",
        json!({"schedule": "30 2 * * *", "timeZone": "Europe/Paris",
               "targets": {"matchLabels": {"tier": "db"}}}),
    );
    let tick = at("06-11T00:30:00Z");
    wait_scheduled(&env, "nightly", &tick).await;
    env.set_time(&at("06-11T00:30:03Z"));
    let jobs = env.wait_jobs(&selector_of("nightly"), 1).await;
    env.kill_operator();
    let running = jobs[0]
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .is_none();
    eprintln!("operator killed; the Job was still running: {running}");

    env.set_time(&at("06-11T00:30:20Z"));
    env.start_operator();
    let target = env
        .wait_target(
            "the run is recorded after the restart",
            "app-db",
            last_backup_done(None),
        )
        .await;
    assert_backup_matches_claim(&env, &target, "app-db");
    assert_eq!(target["status"]["lastBackup"]["job"], job_name(&jobs[0]));
    env.wait_schedule("the tick is recorded", "nightly", |s| {
        if s["status"]["lastScheduleTime"] == tick {
            Ok(())
        } else {
            Err(format!("status = {}", s["status"]))
        }
    })
    .await;
    let since = env.reconciles("backupschedule").await;
    env.wait_reconciles("backupschedule", since, 2).await;
    let after = env.jobs(&selector_of("nightly")).await;
    assert_eq!(
        after.iter().map(job_name).collect::<Vec<_>>(),
        vec![job_name(&jobs[0])],
        "exactly one Job for the tick"
    );
    assert_eq!(env.sidecars("app-db").len(), 1);
}

#[tokio::test]
async fn missed_ticks_run_once_within_the_deadline_and_are_reported_beyond_it() {
    let mut env = Env::new("e2e-missed", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T00:00:00Z"));
    env.start_operator();
    env.create_schedule(
        "nightly",
        json!({"schedule": "30 2 * * *", "timeZone": "Europe/Paris",
               "startingDeadlineSeconds": 600,
               "targets": {"matchLabels": {"tier": "db"}}}),
    );
    let tick = at("06-11T00:30:00Z");
    wait_scheduled(&env, "nightly", &tick).await;
    env.stop_operator();

    // Down across the tick; back 5 minutes later, within the 10-minute deadline.
    env.set_time(&at("06-11T00:35:00Z"));
    env.start_operator();
    let jobs = env.wait_jobs(&selector_of("nightly"), 1).await;
    let target = env
        .wait_target("the late run finishes", "app-db", last_backup_done(None))
        .await;
    assert_backup_matches_claim(&env, &target, "app-db");
    env.wait_schedule("the tick is recorded", "nightly", |s| {
        if s["status"]["lastScheduleTime"] == tick {
            Ok(())
        } else {
            Err(format!("status = {}", s["status"]))
        }
    })
    .await;

    // Another restart reconciles again and creates nothing.
    env.stop_operator();
    env.start_operator();
    env.wait_reconciles("backupschedule", 0, 3).await;
    let after = env.jobs(&selector_of("nightly")).await;
    assert_eq!(
        after.iter().map(job_name).collect::<Vec<_>>(),
        vec![job_name(&jobs[0])],
        "the missed tick ran exactly once"
    );

    // Down across the next tick and back two hours after it: beyond the deadline.
    env.stop_operator();
    let missed = at("06-12T00:30:00Z");
    env.set_time(&at("06-12T02:30:00Z"));
    env.start_operator();
    let schedule = env
        .wait_schedule("lastMissedTime is the missed tick", "nightly", |s| {
            if s["status"]["lastMissedTime"] == missed {
                Ok(())
            } else {
                Err(format!("status = {}", s["status"]))
            }
        })
        .await;
    let env_ref = &env;
    assert_eq!(schedule["status"]["lastScheduleTime"], tick);
    eventually(
        "a ScheduleMissed event",
        Duration::from_secs(60),
        || async {
            let events = env_ref.kubectl(&["get", "events", "-o", "json"]);
            let events: Value = serde_json::from_str(&events).map_err(|e| e.to_string())?;
            let found = events["items"].as_array().into_iter().flatten().any(|e| {
                e["reason"] == "ScheduleMissed"
                    && e["involvedObject"]["name"] == "nightly"
                    && e["type"] == "Warning"
            });
            if found {
                Ok(())
            } else {
                Err("none yet".to_owned())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let since = env.reconciles("backupschedule").await;
    env.wait_reconciles("backupschedule", since, 2).await;
    assert_eq!(
        env.jobs(&selector_of("nightly")).await.len(),
        1,
        "no Job for a tick beyond the starting deadline"
    );
}

/// `[start, end]` of a finished pod's `run` container.
fn run_interval(pod: &k8s_openapi::api::core::v1::Pod) -> (jiff::Timestamp, jiff::Timestamp) {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .expect("container statuses");
    let terminated = statuses
        .iter()
        .find(|s| s.name == "run")
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("the run container terminated");
    (
        terminated.started_at.as_ref().expect("startedAt").0,
        terminated.finished_at.as_ref().expect("finishedAt").0,
    )
}

#[tokio::test]
async fn two_targets_on_one_read_write_once_claim_never_run_at_once() {
    let mut env = Env::new("e2e-rwo", PG_PASSWORD).await;
    env.create_target("alpha", json!({"tier": "db"}));
    env.create_target("beta", json!({"tier": "db"}));
    env.set_time(&at("06-11T00:29:00Z"));
    env.start_operator();
    env.create_schedule(
        "nightly",
        json!({"schedule": "30 2 * * *", "timeZone": "Europe/Paris",
               "targets": {"matchLabels": {"tier": "db"}}}),
    );
    let tick = at("06-11T00:30:00Z");
    wait_scheduled(&env, "nightly", &tick).await;
    env.set_time(&at("06-11T00:30:05Z"));
    for name in ["alpha", "beta"] {
        let target = env
            .wait_target(
                &format!("{name}'s backup finishes"),
                name,
                last_backup_done(None),
            )
            .await;
        assert_backup_matches_claim(&env, &target, name);
    }
    let jobs = env.jobs(&selector_of("nightly")).await;
    assert_eq!(jobs.len(), 2, "one Job per target");
    let mut intervals = Vec::new();
    for job in &jobs {
        let pods = env.pods_of(&job_name(job)).await;
        assert_eq!(pods.len(), 1, "one pod for {}", job_name(job));
        intervals.push((job_name(job), run_interval(&pods[0])));
    }
    intervals.sort_by_key(|(_, (start, _))| *start);
    let (first, (_, first_end)) = &intervals[0];
    let (second, (second_start, _)) = &intervals[1];
    assert!(
        first_end <= second_start,
        "{first} ran until {first_end}, {second} started at {second_start}"
    );
    // The second Job was only created once the first had finished, and its target was
    // told why it waited.
    let (first_job, second_job) = {
        let find = |name: &str| jobs.iter().find(|j| job_name(j) == name).unwrap();
        (find(first), find(second))
    };
    let first_done = first_job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .expect("the first Job completed")
        .0;
    let second_created = second_job
        .metadata
        .creation_timestamp
        .as_ref()
        .expect("creationTimestamp")
        .0;
    assert!(
        first_done <= second_created,
        "{second} was created at {second_created}, before {first} completed at {first_done}"
    );
    let waiting_target = second_job.metadata.labels.as_ref().unwrap()["stowage.dev/target"].clone();
    let events: Value =
        serde_json::from_str(&env.kubectl(&["get", "events", "-o", "json"])).unwrap();
    let waited = events["items"].as_array().into_iter().flatten().any(|e| {
        e["reason"] == "WaitingForClaim" && e["involvedObject"]["name"] == *waiting_target
    });
    assert!(waited, "no WaitingForClaim event for {waiting_target}");
    // The runners' own, sub-second times agree.
    let mut sidecars: Vec<Value> = ["alpha", "beta"]
        .iter()
        .map(|n| env.sidecars(n).remove(0).1)
        .collect();
    sidecars.sort_by_key(|s| s["startTime"].as_str().unwrap_or_default().to_owned());
    let end: jiff::Timestamp = sidecars[0]["endTime"].as_str().unwrap().parse().unwrap();
    let start: jiff::Timestamp = sidecars[1]["startTime"].as_str().unwrap().parse().unwrap();
    assert!(end < start, "artifact writes overlap: {sidecars:?}");
    let schedule = env.schedule("nightly").await;
    assert_eq!(schedule["status"]["lastScheduleTime"], tick);
}

/// The start and end of every pod of `jobs`, sorted by start.
async fn run_intervals(
    env: &Env,
    jobs: &[k8s_openapi::api::batch::v1::Job],
) -> Vec<(String, (jiff::Timestamp, jiff::Timestamp))> {
    let mut intervals = Vec::new();
    for job in jobs {
        let pods = env.pods_of(&job_name(job)).await;
        assert_eq!(
            pods.len(),
            1,
            "Job {} needed {} pods: a run failed and was retried",
            job_name(job),
            pods.len()
        );
        let phase = pods[0].status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Succeeded"), "Job {}", job_name(job));
        intervals.push((job_name(job), run_interval(&pods[0])));
    }
    intervals.sort_by_key(|(_, (start, _))| *start);
    intervals
}

/// The reported race, as a user set it up: two schedules firing every minute and
/// `backup-now`, all on one target whose claim is ReadWriteMany, for several ticks
/// (`STOWAGE_E2E_TICKS`, default 3). The runs take turns (one writer per target), none
/// fails or retries, every artifact has its own name and verifies, and every record in the
/// status matches a file on the claim.
#[tokio::test]
async fn two_schedules_and_backup_now_on_a_shared_claim_take_turns_and_all_verify() {
    let ticks: u32 = std::env::var("STOWAGE_E2E_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut env = Env::with_claim_mode("e2e-turns", PG_PASSWORD, "ReadWriteMany").await;
    // Enough data that a dump takes a moment: overlapping runs would collide.
    env.pg.psql(
        &env.db,
        "insert into orders select g, repeat(md5(g::text), 16) from generate_series(501, 60000) g;",
    );
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T00:29:30Z"));
    env.start_operator();
    for name in ["every-a", "every-b"] {
        env.create_schedule(
            name,
            // The smallest deadline: the tick before the first one (00:29) is missed, not run.
            json!({"schedule": "* * * * *", "targets": {"matchLabels": {"tier": "db"}},
                   "startingDeadlineSeconds": 10, "retention": {"keepLast": 100}}),
        );
    }
    for i in 0..ticks {
        let tick = at(&format!("06-11T00:{:02}:00Z", 30 + i));
        for name in ["every-a", "every-b"] {
            wait_scheduled(&env, name, &tick).await;
        }
        env.set_time(&at(&format!("06-11T00:{:02}:05Z", 30 + i)));
        let token = format!("turn-{i}");
        env.kubectl(&[
            "annotate",
            "backuptarget",
            "app-db",
            &format!("stowage.dev/backup-now={token}"),
            "--overwrite",
        ]);
        let expected = 3 * (i as usize + 1);
        let tick_ref = &tick;
        let env_ref = &env;
        eventually(
            &format!("tick {tick}: both schedules and backup-now {token} done"),
            support::RUN_TIMEOUT,
            || async move {
                for name in ["every-a", "every-b"] {
                    let s = env_ref.schedule(name).await;
                    if s["status"]["lastScheduleTime"] != *tick_ref {
                        return Err(format!("{name}: {}", s["status"]));
                    }
                }
                let active: Vec<String> = env_ref
                    .jobs("stowage.dev/kind=backup")
                    .await
                    .iter()
                    .filter(|j| {
                        j.status
                            .as_ref()
                            .and_then(|s| s.completion_time.as_ref())
                            .is_none()
                    })
                    .map(job_name)
                    .collect();
                let sidecars = env_ref.sidecars("app-db").len();
                if active.is_empty() && sidecars >= expected {
                    Ok(())
                } else {
                    Err(format!("{sidecars} artifacts, active Jobs {active:?}"))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let sidecars = env.sidecars("app-db");
    assert_eq!(
        sidecars.len(),
        3 * ticks as usize,
        "one artifact per run: {sidecars:?}"
    );
    let verified = env
        .verify("app-db")
        .unwrap_or_else(|e| panic!("stowage verify: {e}"));
    println!("{verified}");
    // Both schedules' runs of one tick have their own names.
    for i in 0..ticks {
        let stamp = format!("0611T00{:02}00Z", 30 + i);
        for schedule in ["every-a", "every-b"] {
            assert!(
                sidecars.iter().any(|(p, _)| p
                    .to_string_lossy()
                    .ends_with(&format!("{stamp}-{schedule}.dump.zst.meta.json"))),
                "no artifact of {schedule} at {stamp}: {sidecars:?}"
            );
        }
    }
    // None of the Jobs still kept needed a retry or overlapped another.
    let jobs = env.jobs("stowage.dev/kind=backup").await;
    let intervals = run_intervals(&env, &jobs).await;
    for pair in intervals.windows(2) {
        let (a, (_, a_end)) = &pair[0];
        let (b, (b_start, _)) = &pair[1];
        assert!(
            a_end <= b_start,
            "{a} ran until {a_end}, {b} started at {b_start}"
        );
    }
    // Never two writes at once over all runs (history limits deleted older Jobs; the
    // runners' own times are in the sidecars).
    let mut writes: Vec<(jiff::Timestamp, jiff::Timestamp, String)> = sidecars
        .iter()
        .map(|(path, s)| {
            let time = |k: &str| -> jiff::Timestamp { s[k].as_str().unwrap().parse().unwrap() };
            (
                time("startTime"),
                time("endTime"),
                path.display().to_string(),
            )
        })
        .collect();
    writes.sort();
    for pair in writes.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} was written until {}, {} started at {}",
            pair[0].2,
            pair[0].1,
            pair[1].2,
            pair[1].0
        );
    }
    // Every record in the status is a file on the claim with that checksum.
    let target = env.target("app-db").await.expect("the target");
    let records = target["status"]["recentBackups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record["outcome"], "Succeeded", "{record}");
        let artifact = record["artifact"].as_str().expect("artifact");
        let (path, sidecar) = sidecars
            .iter()
            .find(|(p, _)| {
                p.to_string_lossy()
                    .ends_with(&format!("{artifact}.meta.json"))
            })
            .unwrap_or_else(|| panic!("no file for {artifact}"));
        assert_eq!(sidecar["sha256"], record["sha256"], "{}", path.display());
    }
    println!(
        "turns: {} ticks, {} runs ({} Jobs still kept, each with one pod), {} artifacts verified, 0 overlapping writes, 0 retries",
        ticks,
        writes.len(),
        intervals.len(),
        sidecars.len()
    );
}

/// A tick never stalls: a Job the API server refuses (here: the namespace's Job quota is
/// full) is named on its target, and the other target of the tick still runs.
#[tokio::test]
async fn a_refused_job_is_named_on_its_target_and_the_tick_goes_on() {
    let mut env = Env::new("e2e-refused", PG_PASSWORD).await;
    env.create_target("a-db", json!({"tier": "db"}));
    env.create_target("b-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T00:29:00Z"));
    env.start_operator();
    for name in ["a-db", "b-db"] {
        env.wait_target(&format!("{name} is probed"), name, |t| {
            match condition(t, "Reachable").map(|c| c["status"].clone()) {
                Some(s) if s == "True" => Ok(()),
                _ => Err(condition_summary(t, "Reachable")),
            }
        })
        .await;
    }
    // Room for exactly one more Job.
    let existing = env.jobs("app.kubernetes.io/managed-by=stowage").await.len();
    env.apply(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "jobs"},
        "spec": {"hard": {"count/jobs.batch": (existing + 1).to_string()}}
    }));
    eventually("the quota is counted", Duration::from_secs(60), || async {
        let out = env.kubectl(&[
            "get",
            "resourcequota",
            "jobs",
            "-o",
            "jsonpath={.status.used}",
        ]);
        if out.contains("count/jobs.batch") {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    env.create_schedule(
        "nightly",
        json!({"schedule": "30 2 * * *", "timeZone": "Europe/Paris",
               "targets": {"matchLabels": {"tier": "db"}}}),
    );
    let tick = at("06-11T00:30:00Z");
    wait_scheduled(&env, "nightly", &tick).await;
    env.set_time(&at("06-11T00:30:05Z"));
    let a = env
        .wait_target("a-db's backup finishes", "a-db", last_backup_done(None))
        .await;
    assert_backup_matches_claim(&env, &a, "a-db");
    let b = env
        .wait_target(
            "b-db is told its Job was refused",
            "b-db",
            |t| match condition(t, "JobsAccepted") {
                Some(c) if c["status"] == "False" => Ok(()),
                _ => Err(condition_summary(t, "JobsAccepted")),
            },
        )
        .await;
    let refused = condition(&b, "JobsAccepted").unwrap();
    assert_eq!(refused["reason"], "JobRejected");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("exceeded quota"), "{message}");
    // The tick is recorded (the schedule's status is written once the tick's Job
    // creations have been quiet for a moment): the refused Job did not stall it.
    env.wait_schedule("the tick is recorded, not stalled", "nightly", |s| {
        if s["status"]["lastScheduleTime"] == tick {
            Ok(())
        } else {
            Err(format!(
                "lastScheduleTime = {}",
                s["status"]["lastScheduleTime"]
            ))
        }
    })
    .await;
    let events: Value =
        serde_json::from_str(&env.kubectl(&["get", "events", "-o", "json"])).unwrap();
    assert!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "JobRejected" && e["involvedObject"]["name"] == "b-db"),
        "no JobRejected event on b-db"
    );
}

/// A run whose pod cannot start because its Secret is missing shows on the target within
/// a minute, in the kubelet's words, instead of a target that stays Ready while the pod
/// waits for its deadline; once the Secret exists, the run starts and the target recovers.
/// (The operator runs on the real clock here: no fake time is set.)
#[tokio::test]
async fn a_missing_secret_shows_within_a_minute_and_clears_when_it_appears() {
    let mut env = Env::new("e2e-nosecret", PG_PASSWORD).await;
    let mut config = env.pg_config();
    config["passwordSecretRef"] = json!({"name": "app-db-backup", "key": "password"});
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "app-db"},
        "spec": {"postgres": config, "storage": {"claimName": support::CLAIM}}
    }));
    env.start_operator();
    let started = std::time::Instant::now();
    let target = env
        .wait_target(
            "Reachable=False SecretNotFound",
            "app-db",
            |t| match condition(t, "Reachable") {
                Some(c) if c["reason"] == "SecretNotFound" => Ok(()),
                _ => Err(condition_summary(t, "Reachable")),
            },
        )
        .await;
    let waited = started.elapsed();
    let reachable = condition(&target, "Reachable").unwrap();
    assert_eq!(reachable["status"], "False");
    let message = reachable["message"].as_str().unwrap();
    assert!(
        message.contains(r#"secret "app-db-backup" not found"#),
        "{message}"
    );
    assert_eq!(condition(&target, "Ready").unwrap()["status"], "False");
    assert!(
        waited < Duration::from_secs(60),
        "the missing Secret took {waited:?} to show"
    );
    println!("missing Secret shown on the target after {waited:?}");
    // Events are published right after the status write.
    eventually(
        "a RunCannotStart event",
        Duration::from_secs(30),
        || async {
            let events: Value =
                serde_json::from_str(&env.kubectl(&["get", "events", "-o", "json"])).unwrap();
            if events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["reason"] == "RunCannotStart")
            {
                Ok(())
            } else {
                Err("no RunCannotStart event yet".to_owned())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The Secret appears: the waiting probe starts and succeeds.
    env.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "app-db-backup"},
        "stringData": {"password": PG_PASSWORD}
    }));
    env.wait_target(
        "Reachable=True once the Secret exists",
        "app-db",
        |t| match condition(t, "Reachable") {
            Some(c) if c["status"] == "True" => Ok(()),
            _ => Err(condition_summary(t, "Reachable")),
        },
    )
    .await;
}

/// A probe whose own pod cannot start (its Secret is missing) is stopped after
/// `START_FAILURE_LIMIT` and recorded as the probe's answer. That answer stays, and the probe
/// is tried again only after a backoff, not at once in a loop; once the Secret exists, the
/// retry succeeds and the target recovers by itself. (The fake clock lies a year ahead of
/// the Jobs' real start times, so the operator finds the probe's pod stuck for longer than
/// the limit as soon as it sees it waiting.)
#[tokio::test]
async fn a_probe_whose_pod_cannot_start_keeps_its_answer_and_is_retried_after_a_backoff() {
    let mut env = Env::new("e2e-probe-retry", PG_PASSWORD).await;
    let mut config = env.pg_config();
    config["passwordSecretRef"] = json!({"name": "app-db-probe", "key": "password"});
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "app-db"},
        "spec": {"postgres": config, "storage": {"claimName": support::CLAIM}}
    }));
    env.set_time(&at("03-01T00:00:00Z"));
    env.start_operator();
    let target = env
        .wait_target(
            "the stopped probe recorded as Reachable=False SecretNotFound",
            "app-db",
            |t| match condition(t, "Reachable") {
                Some(c)
                    if c["reason"] == "SecretNotFound"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.ends_with("the Job was stopped"))
                        && t["status"]["lastProbeTime"].is_string() =>
                {
                    Ok(())
                }
                _ => Err(condition_summary(t, "Reachable")),
            },
        )
        .await;
    let recorded = condition(&target, "Reachable").unwrap().clone();
    assert_eq!(target["status"]["lastProbeTime"], at("03-01T00:00:00Z"));

    // Reconciles go on (every 2 s under the fake clock); the answer stays and no probe
    // starts before the backoff has passed.
    let since = env.reconciles("backuptarget").await;
    env.wait_reconciles("backuptarget", since, 4).await;
    let target = env.target("app-db").await.unwrap();
    assert_eq!(condition(&target, "Reachable").unwrap(), &recorded);
    let probes_created = |env: &Env| env.operator_log().matches("created probe Job").count();
    assert_eq!(probes_created(&env), 1, "no probe before the backoff");

    // The Secret appears and the backoff (5 minutes after a probe that failed at once)
    // passes: exactly one retry, and it succeeds. (Its answer is not read back from the
    // status here: the fake clock lies ahead of the Job's real finish time, which then
    // looks older than `lastProbeTime`; recording a finished probe is the unit tests'.)
    env.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "app-db-probe"},
        "stringData": {"password": PG_PASSWORD}
    }));
    env.set_time(&at("03-01T00:05:00Z"));
    let stopped_message = recorded["message"].as_str().unwrap().to_owned();
    let env_ref = &env;
    let stopped_message = &stopped_message;
    eventually(
        "a retry probe Job that completes",
        Duration::from_secs(120),
        || async move {
            let jobs = env_ref.jobs("stowage.dev/kind=probe").await;
            let retry = jobs
                .iter()
                .find(|j| !stopped_message.contains(&job_name(j)))
                .ok_or("no retry Job yet")?;
            match retry.status.as_ref().and_then(|s| s.succeeded) {
                Some(n) if n > 0 => Ok(()),
                _ => Err(format!("{}: status {:?}", job_name(retry), retry.status)),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let since = env.reconciles("backuptarget").await;
    env.wait_reconciles("backuptarget", since, 3).await;
    assert_eq!(probes_created(&env), 2, "exactly one retry");
}

/// A process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn leaderships(env: &Env) -> usize {
    env.operator_log().matches("became the leader").count()
}

#[tokio::test]
async fn of_two_replicas_one_acts_and_the_other_takes_over_when_it_dies() {
    let mut env = Env::new("e2e-ha", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let env_ref = &env;
    eventually(
        "the first replica leads",
        Duration::from_secs(60),
        || async move {
            match leaderships(env_ref) {
                1 => Ok(()),
                n => Err(format!("{n} leaderships logged")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics()));

    let (standby, standby_port) = env.start_replica();
    let _standby = KillOnDrop(standby);
    eventually(
        "the standby serves /healthz",
        Duration::from_secs(60),
        || async move {
            let ok = std::process::Command::new("curl")
                .args(["-sf", "--max-time", "5"])
                .arg(format!("http://127.0.0.1:{standby_port}/healthz"))
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                Ok(())
            } else {
                Err("no answer".to_owned())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics()));

    env.kubectl(&[
        "annotate",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=t1",
    ]);
    let target = env
        .wait_target("backup-now t1 finishes", "app-db", last_backup_done(None))
        .await;
    let first_job = target["status"]["lastBackup"]["job"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        env.reconciles("backuptarget").await > 0,
        "the leader reconciled nothing"
    );
    assert_eq!(
        reconciles_at(standby_port, "backuptarget"),
        0,
        "the standby reconciled while the leader was alive"
    );
    assert_eq!(leaderships(&env), 1, "{}", env.operator_log());

    // The leader crashes; the standby takes the Lease once it expires and acts.
    env.kill_operator();
    env.kubectl(&[
        "annotate",
        "--overwrite",
        "backuptarget",
        "app-db",
        "stowage.dev/backup-now=t2",
    ]);
    let target = env
        .wait_target(
            "backup-now t2 finishes under the new leader",
            "app-db",
            last_backup_done(Some(first_job)),
        )
        .await;
    assert_eq!(target["status"]["lastHandledBackupNow"], "t2");
    assert!(
        reconciles_at(standby_port, "backuptarget") > 0,
        "the standby never acted"
    );
    assert_eq!(leaderships(&env), 2, "{}", env.operator_log());
    assert_eq!(env.jobs("stowage.dev/kind=backup").await.len(), 2);
    assert_backup_matches_claim(&env, &target, "app-db");
}

/// Wait until the operator serving on `port` answers `/healthz`.
async fn wait_healthz(env: &Env, port: u16) {
    eventually(
        "the replica serves /healthz",
        Duration::from_secs(60),
        || async move {
            let ok = std::process::Command::new("curl")
                .args(["-sf", "--max-time", "5"])
                .arg(format!("http://127.0.0.1:{port}/healthz"))
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                Ok(())
            } else {
                Err("no answer".to_owned())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics()));
}

/// Wait until the leader-election Lease is held by `identity`.
async fn wait_lease_holder(env: &Env, identity: &str) {
    eventually(
        &format!("Lease {LEASE_NAME} held by {identity}"),
        Duration::from_secs(60),
        || async move {
            match env.lease_holder() {
                Some(h) if h == identity => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics()));
}

/// Events published by `instance` (their `reportingInstance`) at or after `since`.
fn events_by_since(env: &Env, instance: &str, since: jiff::Timestamp) -> Vec<String> {
    let events: Value =
        serde_json::from_str(&env.kubectl(&["get", "events.events.k8s.io", "-o", "json"]))
            .expect("events JSON");
    let time = |v: &Value| v.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reportingInstance"] == instance)
        .filter(|e| {
            [&e["eventTime"], &e["series"]["lastObservedTime"]]
                .into_iter()
                .filter_map(time)
                .any(|t| t >= since)
        })
        .map(|e| format!("{} {}: {}", e["reason"], e["regarding"]["name"], e["note"]))
        .collect()
}

/// A leader that stops renewing its Lease (SIGSTOP here; a stalled VM or a network
/// partition alike) is replaced by the standby. When it runs again it has work it would do
/// at once (its clock moved past a schedule's tick while it was stopped, and a requeue is
/// due), but it must write nothing: its fence expired while it was stopped, so it refuses
/// writes, logs why and exits non-zero.
#[tokio::test]
async fn a_paused_leader_writes_nothing_after_the_standby_took_over() {
    let mut env = Env::new("e2e-fence", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    // Work for the new leader, apart from the schedule's target (a run the schedule waits
    // to see recorded would hold its tick back).
    env.create_target("other-db", json!({"tier": "web"}));
    env.set_time(&at("06-11T00:29:00Z"));
    env.start_operator();
    let old = env.operator_identity().expect("the operator's identity");
    wait_lease_holder(&env, &old).await;
    env.create_schedule(
        "nightly",
        json!({"schedule": "30 2 * * *", "timeZone": "Europe/Paris",
               "targets": {"matchLabels": {"tier": "db"}}}),
    );
    let tick = at("06-11T00:30:00Z");
    wait_scheduled(&env, "nightly", &tick).await;

    // The standby's clock stays before the tick: the only replica that would create the
    // tick's Job is the old leader.
    let standby = env.start_replica_apart(&at("06-11T00:29:00Z"));
    wait_healthz(&env, standby.port).await;
    assert_eq!(env.lease_holder().as_deref(), Some(old.as_str()));

    env.signal_operator("STOP");
    env.set_time(&at("06-11T00:30:05Z"));
    wait_lease_holder(&env, &standby.identity).await;

    // The new leader acts.
    env.kubectl(&[
        "annotate",
        "backuptarget",
        "other-db",
        "stowage.dev/backup-now=fence",
    ]);
    let target = env
        .wait_target(
            "backup-now finishes under the new leader",
            "other-db",
            last_backup_done(None),
        )
        .await;
    assert_eq!(target["status"]["lastHandledBackupNow"], "fence");
    assert!(
        reconciles_at(standby.port, "backuptarget") > 0,
        "the standby never acted"
    );

    // The old leader runs again, with a due requeue and a clock past the tick.
    let before = env.operator_log().len();
    let resumed = jiff::Timestamp::now();
    env.signal_operator("CONT");
    let status = env
        .expect_operator_exit(Duration::from_secs(LEASE_DURATION_SECONDS * 5))
        .await;
    let after = env.operator_log()[before..].to_owned();
    eprintln!("----- the old leader's log after it resumed ({status}):\n{after}");

    let jobs = env.jobs(&selector_of("nightly")).await;
    assert!(
        jobs.is_empty(),
        "the old leader created {:?} after it resumed:\n{after}",
        jobs.iter().map(job_name).collect::<Vec<_>>()
    );
    for write in [
        "created scheduled backup Job",
        "created on-demand backup Job",
        "created probe Job",
        "status written",
    ] {
        assert!(
            !after.contains(write),
            "the old leader logged {write:?} after it resumed:\n{after}"
        );
    }
    let events = events_by_since(&env, &old, resumed);
    assert!(
        events.is_empty(),
        "the old leader published events after it resumed: {events:?}"
    );
    assert!(
        !status.success(),
        "it exits non-zero so that it restarts as a standby: {status}\n{after}"
    );
    let expired = after
        .lines()
        .find(|l| l.contains("leader fence expired"))
        .unwrap_or_else(|| panic!("no fence expiry logged after the resume:\n{after}"));
    assert!(expired.contains("ERROR"), "{expired}");
    assert!(expired.contains(LEASE_NAME), "{expired}");
    assert!(expired.contains("since_last_renewal_seconds"), "{expired}");
    assert_eq!(
        env.lease_holder().as_deref(),
        Some(standby.identity.as_str()),
        "the Lease stays with the new leader"
    );

    // The tick runs once, under the new leader, when its clock gets there.
    standby.set_time(&at("06-11T00:30:05Z"));
    let jobs = env.wait_jobs(&selector_of("nightly"), 1).await;
    assert_eq!(jobs.len(), 1, "one Job for the tick");
    assert!(
        standby.log().contains("created scheduled backup Job"),
        "the new leader created it"
    );
}
