//! End-to-end tests of `stowage run backup|restore` with the postgres plugin against real
//! PostgreSQL servers started here (loopback only).
//!
//! Each run executes the real `stowage` binary with exactly the argv and environment the
//! Job builder ([`stowage::jobs::build_job`]) gives the `run` container for a
//! `BackupTarget` with `spec.postgres`: the plain variables as the Job has them (the
//! artifact root is the test's directory through `JobDefaults::artifact_root`), and each
//! `secretKeyRef` variable resolved from a test "Secret" map, as the kubelet would. Only
//! the termination message path is moved off `/dev/termination-log`, and the environment
//! is otherwise empty but for `PATH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stowage::api::BackupTarget;
use stowage::jobs::{self, JobDefaults, RunRequest, build_job};
use stowage_testenv::postgres::{PgServer, SECRET_KEY, SECRET_NAME, free_port, seed};

const NAMESPACE: &str = "shop";
const MIB: u64 = 1024 * 1024;

/// Secret values by (Secret name, key), as the kubelet resolves `secretKeyRef`s.
type SecretStore = BTreeMap<(String, String), String>;

fn secret_store(password: &str) -> SecretStore {
    BTreeMap::from([(
        (SECRET_NAME.to_owned(), SECRET_KEY.to_owned()),
        password.to_owned(),
    )])
}

/// A BackupTarget `name` in [`NAMESPACE`] as the API server would return it.
fn target(name: &str, postgres: Value, compression: &str) -> BackupTarget {
    serde_json::from_value(json!({
        "apiVersion": "stowage.dev/v1alpha1",
        "kind": "BackupTarget",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": "0b7c1c36-49d4-4bde-9f5e-5d8f6f1d2a10",
        },
        "spec": {
            "postgres": postgres,
            "storage": {"claimName": "backups"},
            "compression": compression,
        },
    }))
    .expect("a valid BackupTarget")
}

/// The `stowage` invocation of a Job's `run` container.
struct Invocation {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// What the Job built for `target` would run, with the claim mounted at `root`.
fn job_invocation(
    target: &BackupTarget,
    request: RunRequest,
    root: &Path,
    secrets: &SecretStore,
) -> Invocation {
    let defaults = JobDefaults {
        artifact_root: root.display().to_string(),
        ..JobDefaults::default()
    };
    let job = build_job(target, &request, &defaults).expect("the Job builds");
    let job = serde_json::to_value(job).expect("a Job serializes");
    let containers = job["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("the Job has containers");
    let run = containers
        .iter()
        .find(|c| c["name"] == jobs::RUN_CONTAINER)
        .expect("the Job has a run container");
    let command: Vec<String> = run["command"]
        .as_array()
        .expect("the run container has a command")
        .iter()
        .map(|a| a.as_str().expect("string argv").to_owned())
        .collect();
    // The image's runner (or the injected one) is this build's binary.
    let args = command[1..].to_vec();
    let mut env = Vec::new();
    for var in run["env"].as_array().expect("the run container has env") {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = match (&var["value"], &var["valueFrom"]["secretKeyRef"]) {
            (Value::String(value), _) => value.clone(),
            (_, Value::Object(reference)) => {
                let key = (
                    reference["name"].as_str().expect("secret name").to_owned(),
                    reference["key"].as_str().expect("secret key").to_owned(),
                );
                secrets
                    .get(&key)
                    .unwrap_or_else(|| panic!("the test has no Secret value for {key:?}"))
                    .clone()
            }
            _ => panic!("unexpected env var in the Job: {var}"),
        };
        env.push((name, value));
    }
    Invocation { args, env }
}

/// A `stowage run restore` of `artifact` with the env of a backup Job of `target`.
fn restore_invocation(
    target: &BackupTarget,
    root: &Path,
    secrets: &SecretStore,
    artifact: &str,
    into: Option<&str>,
) -> Invocation {
    let mut invocation = job_invocation(target, RunRequest::backup_now("restore"), root, secrets);
    assert_eq!(invocation.args, ["run", "backup"]);
    invocation.args = vec!["run".into(), "restore".into()];
    invocation
        .env
        .push(("STOWAGE_RESTORE_ARTIFACT".into(), artifact.into()));
    if let Some(into) = into {
        invocation
            .env
            .push(("STOWAGE_RESTORE_INTO".into(), into.into()));
    }
    invocation
}

fn command(invocation: &Invocation, termination: &Path, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stowage"));
    cmd.args(&invocation.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(invocation.env.iter().map(|(k, v)| (k, v)))
        .env(jobs::env::TERMINATION_MESSAGE_PATH, termination)
        .env("STOWAGE_PROGRESS_INTERVAL", "1")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// A finished run: exit code, output and the result from the termination message.
struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
    termination: String,
    result: Value,
}

impl Finished {
    fn from_output(output: Output, termination: &Path) -> Finished {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let termination = std::fs::read_to_string(termination).unwrap_or_default();
        let result = serde_json::from_str(&termination).unwrap_or_else(|e| {
            panic!("the termination message is not JSON ({e}): {termination:?}\nstderr:\n{stderr}")
        });
        assert_eq!(
            stdout.lines().last(),
            Some(termination.as_str()),
            "the last stdout line is the result"
        );
        Finished {
            code: output.status.code().unwrap_or(-1),
            stdout,
            stderr,
            termination,
            result,
        }
    }

    fn expect_ok(self, what: &str) -> Finished {
        assert_eq!(
            (self.code, self.result["outcome"].as_str()),
            (0, Some("ok")),
            "{what} failed: {}\nstderr:\n{}",
            self.result,
            self.stderr
        );
        self
    }

    fn expect_failure(self, code: i32, kind: &str) -> Finished {
        assert_eq!(
            (self.code, self.result["errorKind"].as_str()),
            (code, Some(kind)),
            "unexpected result: {}\nstderr:\n{}",
            self.result,
            self.stderr
        );
        assert_eq!(self.result["outcome"], "failed");
        self
    }

    fn message(&self) -> &str {
        self.result["message"].as_str().unwrap_or_default()
    }

    /// Every text the run produced.
    fn texts(&self) -> [&str; 3] {
        [&self.stdout, &self.stderr, &self.termination]
    }
}

fn run(invocation: &Invocation, scratch: &Path, extra_env: &[(&str, &str)]) -> Finished {
    let termination = scratch.join("termination-log");
    let _ = std::fs::remove_file(&termination);
    let output = command(invocation, &termination, extra_env)
        .output()
        .expect("run stowage");
    Finished::from_output(output, &termination)
}

fn sha256_of(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open the artifact");
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("hash the artifact");
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Panics when `needle` occurs in any of `texts` or in any file under `root`.
fn assert_nowhere(needle: &str, texts: &[&str], root: &Path) {
    for (i, text) in texts.iter().enumerate() {
        assert!(!text.contains(needle), "the secret leaked into text #{i}");
    }
    for file in walk(root) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let found = bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes());
        assert!(!found, "the secret leaked into {}", file.display());
    }
}

fn stowage_verify(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg("verify")
        .arg(path)
        .output()
        .expect("run stowage verify")
}

/// Checks a successful backup's artifact (named `...<suffix>`, e.g. `.dump.zst`), sidecar
/// and result; returns the artifact's path relative to the root.
fn check_artifact(root: &Path, target: &str, suffix: &str, finished: &Finished) -> String {
    let result = &finished.result;
    let artifact = result["artifact"]
        .as_str()
        .expect("the result names the artifact")
        .to_owned();
    // <ns>/<target>/<YYYY-MM-DD>/postgres-<YYYYMMDDTHHMMSSZ>.dump[.zst]
    let parts: Vec<&str> = artifact.split('/').collect();
    assert_eq!(parts.len(), 4, "{artifact}");
    assert_eq!(parts[..2], [NAMESPACE, target], "{artifact}");
    let date = parts[2];
    let file = parts[3];
    let stamp = file
        .strip_prefix("postgres-")
        .and_then(|rest| rest.split('.').next())
        .unwrap_or_else(|| panic!("unexpected artifact name {file}"));
    assert_eq!(stamp.len(), "20261121T023000Z".len(), "{file}");
    assert_eq!(
        date.replace('-', ""),
        stamp[..8],
        "the date folder is the stamp's date"
    );
    assert!(file.ends_with(suffix), "{file} should end with {suffix}");

    let path = root.join(&artifact);
    let sidecar_path = root.join(format!("{artifact}.meta.json"));
    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(&sidecar_path).expect("the sidecar exists next to the artifact"),
    )
    .expect("the sidecar is JSON");
    let sha = sha256_of(&path);
    assert_eq!(result["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(sidecar["sha256"].as_str(), Some(sha.as_str()));
    let size = std::fs::metadata(&path).expect("artifact metadata").len();
    assert_eq!(result["storedBytes"].as_u64(), Some(size));
    assert_eq!(sidecar["storedBytes"].as_u64(), Some(size));
    assert_eq!(sidecar["rawBytes"], result["rawBytes"]);
    assert_eq!(sidecar["plugin"], "postgres");
    assert_eq!(sidecar["namespace"], NAMESPACE);
    assert_eq!(sidecar["target"], target);
    assert!(
        sidecar["facts"]["serverVersion"].is_string(),
        "facts: {}",
        sidecar["facts"]
    );
    artifact
}

#[test]
fn one_database_round_trips_and_failures_are_typed_without_leaking_the_password() {
    let password = "real-Pw-4b1d9e-do-not-leak";
    let server = PgServer::start(password);
    seed(&server, "shop");
    server.psql(
        "shop",
        "create table notes (id int primary key, body text); \
         insert into notes select g, repeat('note ' || g, g % 5) from generate_series(1, 500) g",
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path().join("backups");
    std::fs::create_dir(&root).expect("create the store root");
    let secrets = secret_store(password);
    let app_db = target("app-db", server.config_json(Some("shop")), "zstd");

    // Backup, exactly as the Job would run it.
    let backup = job_invocation(&app_db, RunRequest::backup_now("t-1"), &root, &secrets);
    assert_eq!(backup.args, ["run", "backup"]);
    let finished = run(&backup, scratch.path(), &[]).expect_ok("backup");
    let artifact = check_artifact(&root, "app-db", ".dump.zst", &finished);
    assert!(finished.result["rawBytes"].as_u64().unwrap_or(0) > 100_000);
    let verify = stowage_verify(&root);
    assert!(
        verify.status.success(),
        "stowage verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(artifact.rsplit('/').next().unwrap()));

    // Restore into a fresh database and compare every table.
    let restore = restore_invocation(&app_db, &root, &secrets, &artifact, Some("restored"));
    let restored = run(&restore, scratch.path(), &[]).expect_ok("restore");
    assert_eq!(
        restored.result["artifact"].as_str(),
        Some(artifact.as_str())
    );
    let before = server.snapshot("shop");
    assert_eq!(before["table items"].lines().count(), 4002);
    assert_eq!(before["table notes"].lines().count(), 500);
    assert_eq!(
        before,
        server.snapshot("restored"),
        "the restored database differs"
    );
    assert_nowhere(password, &finished.texts(), &root);
    assert_nowhere(password, &restored.texts(), &root);

    // Connection settings inherited from the image must not redirect or re-authenticate
    // the dump: the config alone decides.
    let inherited = [
        ("PGPASSWORD", "inherited-wrong-password"),
        ("PGPASSFILE", "/nonexistent/pgpass"),
        ("PGSERVICE", "stowage-no-such-service"),
        ("PGHOSTADDR", "127.0.0.2"),
    ];
    run(&backup, scratch.path(), &inherited).expect_ok("backup with inherited PG* variables");
    let no_password = {
        let mut config = server.config_json(Some("shop"));
        config
            .as_object_mut()
            .expect("object")
            .remove("passwordSecretRef");
        target("trusting", config, "zstd")
    };
    let inherited_password = [("PGPASSWORD", password)];
    let unauthorized = run(
        &job_invocation(&no_password, RunRequest::backup_now("t-2"), &root, &secrets),
        scratch.path(),
        &inherited_password,
    );
    // The runner's PGPASSWORD (the right one!) is not used for a config without one.
    unauthorized.expect_failure(13, "Unauthorized");

    // A wrong password: Unauthorized, naming the Secret, never the value.
    let canary = "canary-Wr0ngPw-5e7a1c";
    let wrong = run(
        &job_invocation(
            &app_db,
            RunRequest::backup_now("t-3"),
            &root,
            &secret_store(canary),
        ),
        scratch.path(),
        &[],
    )
    .expect_failure(13, "Unauthorized");
    let message = wrong.message();
    assert!(
        message.contains("password authentication failed") || message.contains("password"),
        "{message}"
    );
    assert!(
        message.contains(SECRET_NAME) && message.contains(SECRET_KEY),
        "the message names the Secret to fix: {message}"
    );
    assert_nowhere(canary, &wrong.texts(), &root);
    assert_nowhere(canary, &wrong.texts(), scratch.path());

    // Nothing listens: Unreachable.
    let mut refused = server.config_json(Some("shop"));
    refused["port"] = free_port().into();
    let unreachable = run(
        &job_invocation(
            &target("refused", refused, "zstd"),
            RunRequest::backup_now("t-4"),
            &root,
            &secrets,
        ),
        scratch.path(),
        &[],
    )
    .expect_failure(12, "Unreachable");
    assert!(
        unreachable.message().contains("127.0.0.1"),
        "{}",
        unreachable.message()
    );

    // A database that does not exist: NotFound.
    let missing = run(
        &job_invocation(
            &target("missing", server.config_json(Some("no_such_db")), "zstd"),
            RunRequest::backup_now("t-5"),
            &root,
            &secrets,
        ),
        scratch.path(),
        &[],
    )
    .expect_failure(11, "NotFound");
    assert!(
        missing.message().contains("no_such_db"),
        "{}",
        missing.message()
    );

    // Failed runs leave nothing behind: two artifacts (+ sidecars) of the two good runs.
    let files = walk(&root);
    assert_eq!(files.len(), 4, "{files:#?}");
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".partial"))
    );
}

#[test]
fn a_corrupt_artifact_is_not_restored_even_partly() {
    let password = "corrupt-test-pw";
    let server = PgServer::start(password);
    seed(&server, "shop");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path().join("backups");
    std::fs::create_dir(&root).expect("create the store root");
    let secrets = secret_store(password);
    // A plain SQL dump, uncompressed: psql --single-transaction commits at end of input.
    let mut config = server.config_json(Some("shop"));
    config["format"] = "plain".into();
    let app_db = target("app-db", config, "none");
    let finished = run(
        &job_invocation(&app_db, RunRequest::backup_now("c-1"), &root, &secrets),
        scratch.path(),
        &[],
    )
    .expect_ok("backup");
    let artifact = check_artifact(&root, "app-db", ".sql", &finished);

    // Flip one byte inside a comment near the end: still valid SQL, but not the backup.
    let path = root.join(&artifact);
    let mut bytes = std::fs::read(&path).expect("read the artifact");
    let at = bytes
        .windows(b"PostgreSQL database dump complete".len())
        .rposition(|w| w == b"PostgreSQL database dump complete")
        .expect("the dump ends with its completion comment");
    bytes[at] = b'p';
    std::fs::write(&path, &bytes).expect("write the corrupted artifact");
    assert!(!stowage_verify(&root).status.success(), "verify sees it");

    let restore = restore_invocation(&app_db, &root, &secrets, &artifact, Some("restored"));
    let failed = run(&restore, scratch.path(), &[]).expect_failure(20, "ChecksumMismatch");
    assert!(
        failed.message().contains("does not match its sidecar"),
        "{}",
        failed.message()
    );
    assert_eq!(failed.result["restore"]["stage"], "verify");
    // The artifact is re-hashed before the server is contacted: not even the destination
    // database was created.
    assert!(
        server.try_psql("restored", "select 1").is_err(),
        "a corrupt artifact reached the server"
    );
}

#[test]
fn all_databases_move_to_a_fresh_server() {
    let source = PgServer::start("all-db-source-pw");
    seed(&source, "shop");
    seed(&source, "crm");
    source.psql(
        "crm",
        "create table contacts (id int primary key, email text); \
         insert into contacts select g, 'c' || g || '@example.test' from generate_series(1, 300) g",
    );
    let destination = PgServer::start("all-db-destination-pw");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path().join("backups");
    std::fs::create_dir(&root).expect("create the store root");

    let cluster = target("cluster", source.config_json(None), "gzip");
    let finished = run(
        &job_invocation(
            &cluster,
            RunRequest::backup_now("a-1"),
            &root,
            &secret_store(&source.password),
        ),
        scratch.path(),
        &[],
    )
    .expect_ok("all-databases backup");
    let artifact = check_artifact(&root, "cluster", ".sql.gz", &finished);
    assert!(stowage_verify(&root).status.success());

    // The destination's own target (its address and password), restoring the artifact.
    let dest_target = target("cluster", destination.config_json(None), "gzip");
    let restore = restore_invocation(
        &dest_target,
        &root,
        &secret_store(&destination.password),
        &artifact,
        None,
    );
    let restored = run(&restore, scratch.path(), &[]).expect_ok("all-databases restore");
    for database in ["shop", "crm"] {
        let before = source.snapshot(database);
        assert!(before["table items"].lines().count() == 4002);
        assert_eq!(
            before,
            destination.snapshot(database),
            "database {database} differs after the restore"
        );
    }
    assert_nowhere(&source.password, &finished.texts(), &root);
    assert_nowhere(&destination.password, &restored.texts(), &root);
}

/// Peak resident memory (VmHWM) of a process, in bytes, while it runs.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn partials(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".partial"))
        .collect()
}

/// Waits for `child`, sampling its peak RSS meanwhile; its output and the peak.
fn wait_sampling_rss(mut child: Child) -> (Output, u64) {
    let pid = child.id();
    let mut peak = 0;
    // stdout and stderr are drained by threads so the runner never blocks on them.
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(stdout));
    let err = drain(Box::new(stderr));
    let status = loop {
        if let Some(rss) = peak_rss(pid) {
            peak = peak.max(rss);
        }
        match child.try_wait().expect("wait for the runner") {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    let output = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    (output, peak)
}

#[test]
fn a_large_dump_survives_a_killed_run_with_flat_memory() {
    let password = "large-dump-pw";
    let server = PgServer::start(password);
    server.psql("postgres", "create database big");
    // ~2.5 M rows of 128 hex characters: about 330 MB of COPY text (generated once).
    server.psql(
        "big",
        "create unlogged table big (id bigint, payload text); \
         insert into big select g, repeat(md5(g::text), 3) || md5(random()::text) \
         from generate_series(1, 2500000) g",
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path().join("backups");
    std::fs::create_dir(&root).expect("create the store root");
    let secrets = secret_store(password);
    // pg_dump's own compression off: the artifact's raw bytes are the table's text.
    let mut config = server.config_json(Some("big"));
    config["extraDumpOptions"] = json!(["--compress=0"]);

    // 1. Uncompressed, killed with SIGKILL once a good part is written.
    let uncompressed = target("big-db", config.clone(), "none");
    let termination = scratch.path().join("killed-termination-log");
    let mut child = command(
        &job_invocation(
            &uncompressed,
            RunRequest::backup_now("k-1"),
            &root,
            &secrets,
        ),
        &termination,
        &[],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the runner");
    let mut partial_size = 0;
    while partial_size < 64 * MIB {
        if let Some(status) = child.try_wait().expect("poll the runner") {
            panic!("the backup ended ({status}) before it could be killed; grow the table");
        }
        partial_size = partials(&root)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL the runner");
    let status = child.wait().expect("reap the runner");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let left = walk(&root);
    assert!(!left.is_empty(), "the killed run left its .partial");
    assert!(
        left.iter()
            .all(|f| f.to_string_lossy().ends_with(".partial")),
        "a killed run must not leave a file under a final name: {left:#?}"
    );
    println!(
        "killed the runner with {} MiB in {}",
        partial_size / MIB,
        left[0].display()
    );

    // 2. The retried pod of the same run (zstd this time) removes its own .partial and
    // succeeds; memory stays flat.
    let compressed = target("big-db", config, "zstd");
    let termination = scratch.path().join("termination-log");
    let child = command(
        &job_invocation(&compressed, RunRequest::backup_now("k-1"), &root, &secrets),
        &termination,
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the runner");
    let (output, peak) = wait_sampling_rss(child);
    let finished = Finished::from_output(output, &termination).expect_ok("large backup");
    let artifact = check_artifact(&root, "big-db", ".dump.zst", &finished);
    assert!(partials(&root).is_empty(), "the stale .partial was removed");
    assert_eq!(walk(&root).len(), 2, "one artifact and its sidecar");
    let raw = finished.result["rawBytes"].as_u64().expect("rawBytes");
    let stored = finished.result["storedBytes"]
        .as_u64()
        .expect("storedBytes");
    println!(
        "large dump: raw {raw} bytes ({} MiB), stored {stored} bytes ({} MiB, zstd), runner \
         peak RSS {peak} bytes ({} MiB)",
        raw / MIB,
        stored / MIB,
        peak / MIB
    );
    assert!(raw >= 300 * MIB, "the dump is large enough: {raw}");
    assert!(stored < raw, "zstd compressed it");
    assert!(peak > 0, "the runner's RSS was sampled");
    assert!(
        peak < 200 * MIB,
        "the runner's peak RSS ({} MiB) grows with the artifact",
        peak / MIB
    );
    let verify = stowage_verify(&root.join(&artifact));
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
