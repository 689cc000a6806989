//! `BackupRestore` end to end, on the real control plane and node with real PostgreSQL:
//! back up through the operator, change the data, restore through the API, and compare
//! every table row by row with the state that was backed up. Also the safety rules
//! (`IntoEmpty` refuses data, `Replace` needs `confirm`, dry runs change nothing, a
//! corrupt artifact is refused before the database is touched), disaster recovery from a
//! claim with the source target deleted, and cancel and restart of a running restore.

#[path = "operator_e2e/support.rs"]
#[allow(dead_code)] // shared with the other e2e suites
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use stowage_testenv::eventually;
use support::{CLAIM, Env, PG_PASSWORD, at, condition};

/// The `(status, reason)` of condition `type_`.
fn cond(object: &Value, type_: &str) -> (String, String) {
    let c = condition(object, type_).unwrap_or_else(|| panic!("no {type_}: {object}"));
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn message(object: &Value, type_: &str) -> String {
    condition(object, type_)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Assert a restore succeeded with every check passed; returns its status.
fn assert_restored(restore: &Value) -> Value {
    let status = restore["status"].clone();
    assert_eq!(status["phase"], "Succeeded", "{status}");
    for type_ in [
        "ArtifactResolved",
        "ArtifactVerified",
        "DestinationReady",
        "Completed",
    ] {
        assert_eq!(cond(restore, type_).0, "True", "{type_}: {status}");
    }
    assert!(status["completionTime"].is_string(), "{status}");
    assert!(status["job"].is_string(), "{status}");
    status
}

/// The sidecars of a target, oldest first, as `(artifact path relative to the claim,
/// sidecar)`.
fn artifacts(env: &Env, target: &str) -> Vec<(String, Value)> {
    let root = env.cluster.claim_dir(env.name(), CLAIM);
    let mut out: Vec<(String, Value)> = env
        .sidecars(target)
        .into_iter()
        .map(|(path, sidecar)| {
            let artifact = path
                .to_string_lossy()
                .trim_end_matches(".meta.json")
                .to_owned();
            let relative = std::path::Path::new(&artifact)
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (relative, sidecar)
        })
        .collect();
    out.sort_by(|a, b| a.1["startTime"].as_str().cmp(&b.1["startTime"].as_str()));
    out
}

#[tokio::test]
async fn latest_as_of_and_previous_restore_the_chosen_state_into_new_databases() {
    let mut env = Env::new("e2e-restore-pick", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let db = env.db.clone();

    let first_state = env.pg.snapshot(&db);
    env.backup_now("app-db", "t1").await;
    env.pg.psql(
        &db,
        "update orders set item = 'changed ' || id where id <= 10;
         insert into orders values (1001, 'new order');
         create table customers (id int primary key, name text);
         insert into customers values (1, 'Ada'), (2, 'Grace');",
    );
    let second_state = env.pg.snapshot(&db);
    assert_ne!(first_state, second_state);
    env.backup_now("app-db", "t2").await;
    // The live database moves on after the last backup.
    env.pg.psql(
        &db,
        "delete from orders where id > 400; drop table customers;",
    );
    let made = artifacts(&env, "app-db");
    assert_eq!(made.len(), 2, "{made:?}");
    let first_start: jiff::Timestamp = made[0].1["startTime"].as_str().unwrap().parse().unwrap();
    let second_start: jiff::Timestamp = made[1].1["startTime"].as_str().unwrap().parse().unwrap();
    let between = first_start + second_start.duration_since(first_start) / 2;

    let cases = [
        ("latest", json!({}), &second_state, &made[1]),
        ("previous", json!({"previous": 1}), &first_state, &made[0]),
        (
            "asof",
            json!({"asOf": between.to_string()}),
            &first_state,
            &made[0],
        ),
    ];
    for (name, choice, _, _) in &cases {
        let mut source = json!({"targetRef": {"name": "app-db"}});
        source
            .as_object_mut()
            .unwrap()
            .extend(choice.as_object().unwrap().clone());
        env.create_restore(
            &format!("r-{name}"),
            json!({"source": source, "destination": {"into": format!("{db}_{name}")}}),
        );
    }
    for (name, _, want, (path, sidecar)) in &cases {
        let restore = env.wait_restore_end(&format!("r-{name}")).await;
        let status = assert_restored(&restore);
        assert_eq!(
            status["artifact"]["path"],
            path.as_str(),
            "{name}: {status}"
        );
        assert_eq!(status["artifact"]["sha256"], sidecar["sha256"], "{name}");
        assert_eq!(
            status["artifact"]["sizeBytes"], sidecar["storedBytes"],
            "{name}"
        );
        assert_eq!(status["artifact"]["claimName"], CLAIM, "{name}");
        assert_eq!(status["source"], "target app-db", "{name}");
        assert_eq!(
            status["destination"],
            format!("app-db into {db}_{name}"),
            "{name}"
        );
        assert!(
            status["bytesRestored"].as_u64().unwrap_or(0) > 0,
            "{name}: {status}"
        );
        assert_eq!(status["plan"]["holdsData"], false, "{name}: {status}");
        assert_eq!(cond(&restore, "DestinationReady").1, "Empty", "{name}");
        let restored = env.pg.snapshot(&format!("{db}_{name}"));
        assert_eq!(
            &restored, *want,
            "{name}: the restored database differs from the backup"
        );
    }

    // What a user sees.
    let table = env.kubectl(&["get", "backuprestores"]);
    for header in ["SOURCE", "ARTIFACT", "DESTINATION", "PHASE", "AGE"] {
        assert!(table.contains(header), "{table}");
    }
    assert!(
        table.contains("Succeeded") && table.contains(&made[1].0),
        "{table}"
    );
    let explain = env
        .cluster
        .kubectl_output(&["explain", "backuprestore.spec.source"])
        .unwrap();
    for field in [
        "targetRef",
        "claimName",
        "asOf",
        "previous",
        "schedule",
        "latest",
    ] {
        assert!(explain.contains(field), "{explain}");
    }
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=r-latest",
    ]);
    assert!(
        events.contains("RestoreStarted") && events.contains("RestoreSucceeded"),
        "{events}"
    );
    // One Job per restore, and none of them left a hold file behind.
    assert_eq!(env.jobs("stowage.dev/kind=restore").await.len(), 3);
    let holds: Vec<_> = env
        .claim_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".restoring-"))
        .collect();
    assert!(holds.is_empty(), "{holds:?}");
}

#[tokio::test]
async fn into_empty_refuses_data_replace_needs_confirm_dry_runs_change_nothing_and_a_corrupt_artifact_is_refused()
 {
    let mut env = Env::new("e2e-restore-safe", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    let db = env.db.clone();
    let backed_up = env.pg.snapshot(&db);
    env.backup_now("app-db", "t1").await;
    env.pg
        .psql(&db, "insert into orders values (2001, 'after the backup');");
    let live = env.pg.snapshot(&db);

    // Default mode into the live database: refused, nothing changed.
    env.create_restore(
        "r-into-live",
        json!({"source": {"targetRef": {"name": "app-db"}}}),
    );
    let refused = env.wait_restore_end("r-into-live").await;
    assert_eq!(
        refused["status"]["phase"], "Failed",
        "{}",
        refused["status"]
    );
    assert_eq!(
        cond(&refused, "Completed"),
        ("False".into(), "DestinationNotEmpty".into())
    );
    assert_eq!(cond(&refused, "DestinationReady").0, "False");
    assert_eq!(cond(&refused, "ArtifactVerified").0, "True");
    let said = message(&refused, "Completed");
    assert!(
        said.contains("spec.destination.into")
            && said.contains("mode: Replace and confirm: app-db"),
        "{said}"
    );
    assert!(!said.contains(PG_PASSWORD));
    assert_eq!(
        env.pg.snapshot(&db),
        live,
        "a refused restore changed the database"
    );

    // Replace without confirm is refused by the API server, at apply.
    let err = env
        .cluster
        .apply(&[json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupRestore",
            "metadata": {"name": "r-unconfirmed", "namespace": env.name()},
            "spec": {"source": {"targetRef": {"name": "app-db"}}, "mode": "Replace"}
        })])
        .expect_err("mode: Replace without confirm must be refused");
    assert!(err.to_string().contains("spec.confirm"), "{err}");
    assert!(env.restore("r-unconfirmed").await.is_none());
    let err = env
        .cluster
        .apply(&[json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupRestore",
            "metadata": {"name": "r-misconfirmed", "namespace": env.name()},
            "spec": {"source": {"targetRef": {"name": "app-db"}}, "mode": "Replace", "confirm": "app"}
        })])
        .expect_err("a confirm naming another target must be refused");
    assert!(err.to_string().contains("spec.confirm"), "{err}");

    // A dry run of the replace: the plan, and nothing changed.
    env.create_restore(
        "r-dry",
        json!({"source": {"targetRef": {"name": "app-db"}}, "mode": "Replace", "confirm": "app-db", "dryRun": true}),
    );
    let dry = env.wait_restore_end("r-dry").await;
    let status = assert_restored(&dry);
    assert_eq!(cond(&dry, "Completed").1, "DryRun");
    assert_eq!(cond(&dry, "DestinationReady").1, "WillReplace");
    assert_eq!(status["plan"]["holdsData"], true, "{status}");
    assert_eq!(status["plan"]["wouldReplace"], true, "{status}");
    let plan = status["plan"]["destination"].as_str().unwrap();
    assert!(
        plan.contains(&format!("\"{db}\"")) && plan.contains("user table"),
        "{plan}"
    );
    assert!(status["artifact"]["sha256"].is_string(), "{status}");
    assert!(status.get("bytesRestored").is_none(), "{status}");
    assert_eq!(env.pg.snapshot(&db), live, "a dry run changed the database");

    // The spec is a record: it cannot change.
    let patched = env.cluster.kubectl_output(&[
        "patch",
        "backuprestore",
        "r-dry",
        "-n",
        env.name(),
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"dryRun":false}}"#,
    ]);
    let err = patched.expect_err("the spec is immutable");
    assert!(err.to_string().contains("cannot change"), "{err}");

    // Replace, confirmed: the live database is the backed-up state again.
    env.create_restore(
        "r-replace",
        json!({"source": {"targetRef": {"name": "app-db"}}, "mode": "Replace", "confirm": "app-db"}),
    );
    let replaced = env.wait_restore_end("r-replace").await;
    assert_restored(&replaced);
    assert_eq!(cond(&replaced, "DestinationReady").1, "WillReplace");
    assert_eq!(
        env.pg.snapshot(&db),
        backed_up,
        "the replaced database differs from the backup"
    );

    // A byte flipped in the artifact: refused before any database is touched.
    let (path, _) = artifacts(&env, "app-db").pop().unwrap();
    let file = env.cluster.claim_dir(env.name(), CLAIM).join(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    env.create_restore(
        "r-corrupt",
        json!({"source": {"targetRef": {"name": "app-db"}}, "destination": {"into": format!("{db}_corrupt")}}),
    );
    let corrupt = env.wait_restore_end("r-corrupt").await;
    assert_eq!(
        corrupt["status"]["phase"], "Failed",
        "{}",
        corrupt["status"]
    );
    assert_eq!(cond(&corrupt, "Completed").1, "ChecksumMismatch");
    assert_eq!(
        cond(&corrupt, "ArtifactVerified"),
        ("False".into(), "ChecksumMismatch".into())
    );
    assert_eq!(cond(&corrupt, "DestinationReady").0, "Unknown");
    assert!(
        env.pg
            .try_psql(&format!("{db}_corrupt"), "select 1")
            .is_err(),
        "the destination database was created although the artifact is corrupt"
    );
}

#[tokio::test]
async fn a_target_without_artifacts_a_plugin_that_cannot_restore_disaster_recovery_cancel_and_restart()
 {
    let mut env = Env::new("e2e-restore-dr", PG_PASSWORD).await;
    env.create_target("app-db", json!({"tier": "db"}));
    env.create_target("empty-db", json!({"tier": "db"}));
    env.create_target("dr-dest", json!({"tier": "db"}));
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "grafana"},
        "spec": {"http": {"url": "http://127.0.0.1:9/export"}, "storage": {"claimName": CLAIM}}
    }));
    // Real time: this test waits on a pod that cannot start, which the operator measures
    // against the pod's (real) creation time.
    env.set_time(&jiff::Timestamp::now().to_string());
    env.start_operator();
    let db = env.db.clone();

    // No artifact: the message names the claim and the path searched.
    env.create_restore(
        "r-none",
        json!({"source": {"targetRef": {"name": "empty-db"}}, "destination": {"into": format!("{db}_none")}}),
    );
    let none = env.wait_restore_end("r-none").await;
    assert_eq!(
        cond(&none, "Completed"),
        ("False".into(), "NotFound".into())
    );
    assert_eq!(cond(&none, "ArtifactResolved").0, "False");
    let said = message(&none, "Completed");
    assert!(
        said.contains(&format!("{}/empty-db/ on claim {CLAIM}", env.name())),
        "{said}"
    );

    // A plugin that cannot restore: refused at once, without a Job.
    env.create_restore(
        "r-http",
        json!({"source": {"targetRef": {"name": "grafana"}}}),
    );
    let http = env.wait_restore_end("r-http").await;
    assert_eq!(
        cond(&http, "Completed"),
        ("False".into(), "RestoreUnsupported".into())
    );
    assert!(http["status"].get("job").is_none(), "{}", http["status"]);
    assert!(env.jobs("stowage.dev/restore=r-http").await.is_empty());

    // Disaster recovery: the source target is gone, the artifact and its sidecar remain.
    let backed_up = env.pg.snapshot(&db);
    let target = env.backup_now("app-db", "t1").await;
    let path = target["status"]["lastBackup"]["artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    env.kubectl(&["delete", "backuptarget", "app-db", "--wait=true"]);
    env.create_restore(
        "r-dr",
        json!({
            "source": {"claimName": CLAIM, "path": path},
            "destination": {"targetRef": {"name": "dr-dest"}, "into": format!("{db}_dr")}
        }),
    );
    let dr = env.wait_restore_end("r-dr").await;
    let status = assert_restored(&dr);
    assert_eq!(status["source"], format!("claim {CLAIM}"));
    assert_eq!(status["artifact"]["path"], path.as_str());
    assert_eq!(env.pg.snapshot(&format!("{db}_dr")), backed_up);

    // A restore whose pod cannot start (an image never built here) stays Running; a
    // restarted operator finds its Job instead of making a second one; deleting the
    // BackupRestore deletes the Job (cancel).
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "stuck"},
        "spec": {
            "postgres": env.pg_config(),
            "storage": {"claimName": CLAIM},
            "job": {"image": "stowage.invalid/never-built:1"}
        }
    }));
    env.create_restore(
        "r-cancel",
        json!({
            "source": {"claimName": CLAIM, "path": path},
            "destination": {"targetRef": {"name": "stuck"}, "into": format!("{db}_cancel")}
        }),
    );
    let selector = "stowage.dev/restore=r-cancel";
    let jobs = env.wait_jobs(selector, 1).await;
    let job = support::job_name(&jobs[0]);
    eventually("r-cancel is Running", Duration::from_secs(60), || async {
        let r = env.restore("r-cancel").await.ok_or("gone")?;
        if r["status"]["phase"] == "Running" {
            Ok(())
        } else {
            Err(format!("{}", r["status"]))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    env.kill_operator();
    env.start_operator();
    let since = env.reconciles("backuprestore").await;
    env.wait_reconciles("backuprestore", since, 2).await;
    let jobs = env.jobs(selector).await;
    assert_eq!(jobs.len(), 1, "a restarted operator started a second Job");
    assert_eq!(support::job_name(&jobs[0]), job);
    let r = env.restore("r-cancel").await.unwrap();
    assert_eq!(r["status"]["phase"], "Running", "{}", r["status"]);
    assert_eq!(r["status"]["job"], job.as_str());
    env.kubectl(&["delete", "backuprestore", "r-cancel"]);
    eventually(
        "the cancelled restore's Job is deleted",
        Duration::from_secs(120),
        || async {
            let left = env.jobs(selector).await.len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} Job(s) left"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        env.pg
            .try_psql(&format!("{db}_cancel"), "select 1")
            .is_err(),
        "a cancelled restore that never started created its database"
    );
}

/// A redis-server reachable from pods (on the node link's host end), stopped when dropped.
struct RedisServer {
    child: std::process::Child,
    host: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REDIS_PASSWORD: &str = "e2e-redis-Pw-3c9";

impl RedisServer {
    fn start(host: &str) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = stowage_testenv::postgres::free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", host, "--save", ""])
            .args(["--appendonly", "no", "--requirepass", REDIS_PASSWORD])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (tests/install-deps.sh installs it)");
        let server = RedisServer {
            child,
            host: host.to_owned(),
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((host, port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "--no-auth-warning",
            ])
            .env("REDISCLI_AUTH", REDIS_PASSWORD)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn target(&self, env: &Env, name: &str) {
        env.apply(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
            "metadata": {"name": name},
            "spec": {
                "redis": {"host": self.host, "port": self.port,
                          "passwordSecretRef": {"name": "redis-e2e", "key": "password"}},
                "storage": {"claimName": CLAIM}
            }
        }));
    }
}

#[tokio::test]
async fn a_native_plugin_backs_up_and_restores_through_the_operator_redis_into_another_server() {
    let mut env = Env::new("e2e-restore-redis", PG_PASSWORD).await;
    env.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis-e2e"},
        "stringData": {"password": REDIS_PASSWORD}
    }));
    let source = RedisServer::start(env.cluster.pod_host());
    let copy = RedisServer::start(env.cluster.pod_host());
    source.cli(&["mset", "order:1", "paid", "order:2", "open"]);
    source.cli(&["hset", "user:1", "name", "Ada", "plan", "pro"]);
    source.cli(&["rpush", "queue", "job-1", "job-2"]);
    source.cli(&["set", "session", "abc", "EX", "3600"]);
    source.target(&env, "cache");
    copy.target(&env, "cache-copy");
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    env.backup_now("cache", "t1").await;
    // After the backup the source moves on; the copy gets the state that was backed up.
    source.cli(&["set", "order:1", "refunded"]);

    env.create_restore(
        "r-redis",
        json!({"source": {"targetRef": {"name": "cache"}}, "destination": {"targetRef": {"name": "cache-copy"}}}),
    );
    let restore = env.wait_restore_end("r-redis").await;
    let status = assert_restored(&restore);
    assert_eq!(status["plan"]["holdsData"], false, "{status}");
    assert_eq!(copy.cli(&["get", "order:1"]), "paid");
    assert_eq!(copy.cli(&["get", "order:2"]), "open");
    assert_eq!(copy.cli(&["hget", "user:1", "plan"]), "pro");
    assert_eq!(copy.cli(&["lrange", "queue", "0", "-1"]), "job-1\njob-2");
    let ttl: i64 = copy.cli(&["ttl", "session"]).parse().unwrap();
    assert!(ttl > 3000, "the time to live came back: {ttl}");
    assert_eq!(copy.cli(&["dbsize"]), "5");

    // Again into the now-full copy: refused, nothing changed.
    copy.cli(&["set", "order:2", "changed on the copy"]);
    env.create_restore(
        "r-redis-again",
        json!({"source": {"targetRef": {"name": "cache"}}, "destination": {"targetRef": {"name": "cache-copy"}}}),
    );
    let again = env.wait_restore_end("r-redis-again").await;
    assert_eq!(cond(&again, "Completed").1, "DestinationNotEmpty");
    assert_eq!(copy.cli(&["get", "order:2"]), "changed on the copy");
    let logs = env.container_logs();
    assert!(
        !logs.contains(REDIS_PASSWORD),
        "the password is in a container log"
    );
}

/// The user of the application that owns the SQLite database in the claim plugin test.
const APP_UID: u32 = 1000;

/// Rows of the `notes` table of a SQLite file.
fn sqlite_rows(path: &std::path::Path) -> Vec<(i64, String)> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut stmt = db
        .prepare("SELECT id, body FROM notes ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn a_claim_plugin_follows_the_application_pod_backs_up_a_live_sqlite_file_and_restores_it_beside()
 {
    let mut env = Env::new("e2e-sqlite", PG_PASSWORD).await;
    if !env.cluster.real_node() {
        eprintln!("skipped: needs the real node (read-only claim mounts, runAs)");
        return;
    }
    // The application's claim: a WAL-mode database owned by the application's user,
    // readable by nobody else, kept open by a writer (the host side of the local volume).
    let app_dir = env
        .cluster
        .create_claim(env.name(), "app-data", "ReadWriteOnce")
        .expect("the application's claim");
    let db_path = app_dir.join("app.db");
    let writer = rusqlite::Connection::open(&db_path).unwrap();
    writer
        .query_row("PRAGMA journal_mode=wal", [], |_| Ok(()))
        .unwrap();
    writer
        .execute_batch(
            "PRAGMA wal_autocheckpoint=0;
             CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        )
        .unwrap();
    for i in 1..=300 {
        writer
            .execute(
                "INSERT INTO notes (body) VALUES (?1)",
                [format!("note {i}")],
            )
            .unwrap();
    }
    let chown = |path: &std::path::Path, mode: u32| {
        std::os::unix::fs::chown(path, Some(APP_UID), Some(APP_UID)).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    chown(&app_dir, 0o700);
    for name in ["app.db", "app.db-wal", "app.db-shm"] {
        chown(&app_dir.join(name), 0o600);
    }
    let backed_up = sqlite_rows(&db_path);
    assert_eq!(backed_up.len(), 300);
    assert!(
        std::fs::metadata(app_dir.join("app.db-wal")).unwrap().len() > 0,
        "the rows are still in the WAL, not yet in the main file"
    );

    // Without the application's user, the file cannot be read: a clear failure.
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "notes"},
        "spec": {
            "sqlite": {"claimName": "app-data", "path": "app.db"},
            "storage": {"claimName": CLAIM},
            "job": {"backoffLimit": 0},
        }
    }));
    // A target whose claim does not exist: its probe is refused before any pod.
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": "no-claim"},
        "spec": {
            "sqlite": {"claimName": "no-such-claim", "path": "app.db"},
            "storage": {"claimName": CLAIM},
        }
    }));
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    // Another target of the namespace backs up first, as the operator's default user: the
    // namespace's directory on the artifacts claim is then that user's, and the sqlite
    // pods, running as the application's user, must still be able to write beside it.
    env.create_target("app-db", json!({}));
    env.backup_now("app-db", "first").await;
    let refused = env
        .wait_target(
            "the probe of no-claim is refused",
            "no-claim",
            |t| match condition(t, "Reachable").map(|c| c["reason"].clone()) {
                Some(reason) if reason == "ClaimUnavailable" => Ok(()),
                other => Err(format!("Reachable reason {other:?}")),
            },
        )
        .await;
    let text = message(&refused, "Reachable");
    assert!(
        text.contains("no-such-claim") && text.contains("spec.sqlite.claimName"),
        "{text}"
    );
    assert!(env.jobs("stowage.dev/target=no-claim").await.is_empty());

    let unreadable = env
        .wait_target("the probe of notes fails", "notes", |t| {
            match condition(t, "Reachable").map(|c| c["status"].clone()) {
                Some(status) if status == "False" => Ok(()),
                other => Err(format!("Reachable {other:?}")),
            }
        })
        .await;
    assert_eq!(
        cond(&unreadable, "Reachable").1,
        "Unauthorized",
        "{}",
        unreadable["status"]
    );
    assert!(
        message(&unreadable, "Reachable").contains("spec.job.runAs"),
        "{}",
        unreadable["status"]
    );

    // The probe mounted the claim read-only at the volume: the kubelet applied no
    // fsGroup to the application's files (it would have made them group-readable, and
    // the probe would have read them).
    let owner = |path: &std::path::Path| {
        let meta = std::fs::metadata(path).unwrap();
        (
            std::os::unix::fs::MetadataExt::gid(&meta),
            std::os::unix::fs::MetadataExt::mode(&meta) & 0o7777,
        )
    };
    assert_eq!(owner(&app_dir), (APP_UID, 0o700));
    assert_eq!(owner(&db_path), (APP_UID, 0o600));

    // The application's pod, which has the claim attached on its node.
    let image = env.standin_tools_image();
    env.apply(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"},
        "spec": {
            "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID, "runAsNonRoot": true},
            "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}]
        }
    }));
    let node = stowage_testenv::eventually(
        "the application's pod runs",
        Duration::from_secs(120),
        || async {
            let out = env.kubectl(&[
                "get",
                "pod",
                "app",
                "-o",
                "jsonpath={.status.phase} {.spec.nodeName}",
            ]);
            match out.split_once(' ') {
                Some(("Running", node)) if !node.is_empty() => Ok(node.to_owned()),
                _ => Err(out),
            }
        },
    )
    .await
    .expect("the application's pod runs");

    // As the application's user: the backup follows the application's pod.
    env.kubectl(&[
        "patch",
        "backuptarget",
        "notes",
        "--type=merge",
        "-p",
        &json!({"spec": {"job": {"runAs": {"user": APP_UID, "group": APP_UID}}}}).to_string(),
    ]);
    let target = env.backup_now("notes", "t1").await;
    let job = target["status"]["lastBackup"]["job"]
        .as_str()
        .unwrap()
        .to_owned();
    let pods = env.pods_of(&job).await;
    let pod = serde_json::to_value(&pods[0]).unwrap();
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0]["values"],
        json!([node]),
        "{}",
        pod["spec"]
    );
    assert_eq!(pod["spec"]["nodeName"], json!(node));
    assert_eq!(owner(&db_path), (APP_UID, 0o600));

    // The artifact is the database with every committed row (the WAL's included).
    let (artifact, sidecar) = artifacts(&env, "notes").pop().expect("an artifact");
    assert_eq!(sidecar["facts"]["journalMode"], "wal", "{sidecar}");
    let root = env.cluster.claim_dir(env.name(), CLAIM);
    let bytes = std::fs::read(root.join(&artifact)).unwrap();
    let plain = zstd::decode_all(&bytes[..]).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("copy.db");
    std::fs::write(&copy, plain).unwrap();
    assert_eq!(sqlite_rows(&copy), backed_up);

    // The application moves on; the restore writes the backed-up state beside it.
    writer
        .execute("DELETE FROM notes WHERE id > 10", [])
        .unwrap();
    env.create_restore(
        "r-notes",
        json!({"source": {"targetRef": {"name": "notes"}}, "destination": {"into": "restored/app.db"}}),
    );
    let restore = env.wait_restore_end("r-notes").await;
    assert_restored(&restore);
    assert_eq!(sqlite_rows(&app_dir.join("restored/app.db")), backed_up);
    assert_eq!(
        sqlite_rows(&db_path).len(),
        10,
        "the live database is untouched"
    );
    let meta = std::fs::metadata(app_dir.join("restored/app.db")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        APP_UID,
        "written as the application's user"
    );

    // Into the live file without Replace: refused, nothing changed.
    env.create_restore(
        "r-notes-live",
        json!({"source": {"targetRef": {"name": "notes"}}}),
    );
    let again = env.wait_restore_end("r-notes-live").await;
    assert_eq!(
        cond(&again, "Completed").1,
        "DestinationNotEmpty",
        "{}",
        again["status"]
    );
    assert_eq!(sqlite_rows(&db_path).len(), 10);

    // The application stops: no connection, no -shm file, and the claim is mounted
    // read-only, so SQLite cannot create one. The file alone is the database then.
    drop(writer);
    assert!(!app_dir.join("app.db-shm").exists());
    env.backup_now("notes", "t2").await;
    let (artifact, _) = artifacts(&env, "notes").pop().expect("a second artifact");
    let plain = zstd::decode_all(&std::fs::read(root.join(&artifact)).unwrap()[..]).unwrap();
    let copy = scratch.path().join("stopped.db");
    std::fs::write(&copy, plain).unwrap();
    assert_eq!(sqlite_rows(&copy), sqlite_rows(&db_path));
    assert_eq!(sqlite_rows(&copy).len(), 10);
}
