//! Support for the operator's end-to-end tests: the operator as a local process under its
//! own RBAC (a ServiceAccount token, no Secret access), per-test namespaces with a claim,
//! a Secret and a database, and diagnostics printed when a test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::{Value, json};
use stowage_testenv::postgres::{PgServer, SECRET_KEY, SECRET_NAME};
use stowage_testenv::{TestCluster, TestNamespace, eventually};

/// The claim every test's targets write to.
pub const CLAIM: &str = "backups";
/// The correct superuser password of the shared PostgreSQL server.
pub const PG_PASSWORD: &str = "e2e-Correct-Horse-7";
/// Guard timeout for one backup to finish (never a performance assertion).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);
/// `--lease-duration-seconds` of every operator process: a standby takes over about this
/// long after the leader stops renewing.
pub const LEASE_DURATION_SECONDS: u64 = 6;
/// The leader-election Lease's name (the Role of `deploy/rbac/operator.yaml` allows only it).
pub const LEASE_NAME: &str = "stowage-controller";

/// The PostgreSQL server shared by the tests running at the same time (started again
/// when every test holding it has finished, so it never outlives the test process).
pub fn postgres() -> Arc<PgServer> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = guard.upgrade() {
        return server;
    }
    let cluster = TestCluster::shared().expect("the control plane starts");
    // Reachable from the node's pods (on a real node: on the host's end of its link).
    let server = Arc::new(PgServer::start_for(
        PG_PASSWORD,
        cluster.pg_access().as_ref(),
    ));
    *guard = Arc::downgrade(&server);
    server
}

/// A year after the current one: fake times must lie after the objects' (real) creation
/// times, since ticks before a schedule became active never run.
pub fn future_year() -> i16 {
    jiff::Zoned::now().year() + 1
}

/// `Y-MM-DDTHH:MM:SSZ` in [`future_year`].
pub fn at(rest: &str) -> String {
    format!("{}-{rest}", future_year())
}

/// The kubeconfig of ServiceAccount `stowage-system/stowage` bound by `deploy/rbac/`.
fn operator_kubeconfig(cluster: &TestCluster) -> &'static Path {
    static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    KUBECONFIG
        .get_or_init(|| make_operator_kubeconfig(cluster))
        .as_ref()
        .map(PathBuf::as_path)
        .unwrap_or_else(|e| panic!("operator kubeconfig: {e}"))
}

fn make_operator_kubeconfig(cluster: &TestCluster) -> Result<PathBuf, String> {
    let _ = cluster.kubectl_output(&["create", "namespace", "stowage-system"]);
    let rbac = stowage_testenv::repo_root().join("deploy/rbac/operator.yaml");
    cluster
        .kubectl_output(&["apply", "-f", &rbac.to_string_lossy()])
        .map_err(|e| e.to_string())?;
    let token = cluster
        .kubectl_output(&[
            "create",
            "token",
            "stowage",
            "-n",
            "stowage-system",
            "--duration=3h",
        ])
        .map_err(|e| e.to_string())?;
    let admin =
        kube::config::Kubeconfig::read_from(cluster.kubeconfig()).map_err(|e| e.to_string())?;
    let named = admin
        .clusters
        .first()
        .ok_or("the admin kubeconfig has no cluster")?;
    let c = named
        .cluster
        .as_ref()
        .ok_or("the admin kubeconfig cluster is empty")?;
    let server = c.server.clone().ok_or("no server URL")?;
    let ca = c
        .certificate_authority_data
        .clone()
        .ok_or("no certificate-authority-data")?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: stowage\n  user:\n    token: {}\ncontexts:\n- name: stowage\n  context:\n    cluster: local\n    user: stowage\ncurrent-context: stowage\n",
        token.trim()
    );
    let path = cluster.state_dir().join("operator-e2e.kubeconfig");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// One test's world: a namespace, its claim and Secret, a fake clock file and the
/// operator process. Prints diagnostics and stops the operator when dropped.
pub struct Env {
    /// The cluster.
    pub cluster: &'static TestCluster,
    /// An admin client.
    pub client: kube::Client,
    /// The namespace.
    pub ns: TestNamespace,
    /// The shared PostgreSQL server.
    pub pg: Arc<PgServer>,
    /// This test's database.
    pub db: String,
    dir: tempfile::TempDir,
    operator: Option<Child>,
    operator_identity: Option<String>,
    metrics_port: u16,
    starts: u32,
}

fn free_port() -> u16 {
    stowage_testenv::postgres::free_port()
}

impl Env {
    /// A namespace `prefix-…` with claim `backups` (ReadWriteOnce), the `stowage-runner`
    /// ServiceAccount, the Secret holding `password`, and a database with a table of data.
    pub async fn new(prefix: &str, password: &str) -> Env {
        Env::with_claim_mode(prefix, password, "ReadWriteOnce").await
    }

    /// [`Env::new`] with claim `backups` in access mode `mode` (e.g. `ReadWriteMany`).
    pub async fn with_claim_mode(prefix: &str, password: &str, mode: &str) -> Env {
        let cluster = TestCluster::shared().expect("the control plane starts");
        let client = cluster.client().await.expect("an admin client");
        let ns = cluster.ns(prefix).await.expect("a namespace");
        let pg = postgres();
        let db = ns.name().replace('-', "_");
        pg.psql("postgres", &format!("create database {db}"));
        pg.psql(
            &db,
            "create table orders (id int primary key, item text not null);
             insert into orders select g, 'item ' || g from generate_series(1, 500) g;",
        );
        let env = Env {
            cluster,
            client,
            ns,
            pg,
            db,
            dir: tempfile::tempdir().expect("a temp dir"),
            operator: None,
            operator_identity: None,
            metrics_port: free_port(),
            starts: 0,
        };
        env.cluster
            .create_claim(env.name(), CLAIM, mode)
            .expect("the claim is created");
        env.apply(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "stowage-runner"}, "automountServiceAccountToken": false
        }));
        env.set_password(password);
        env.grant_lease_role();
        env
    }

    /// The leader-election Role and RoleBinding of `deploy/rbac/operator.yaml`, unchanged
    /// but in this namespace, so each test's operator elects itself on its own Lease
    /// (the Role only allows the Lease named `stowage-controller`).
    fn grant_lease_role(&self) {
        let path = stowage_testenv::repo_root().join("deploy/rbac/operator.yaml");
        let text = std::fs::read_to_string(&path).expect("read deploy/rbac/operator.yaml");
        let mut found = 0;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("RBAC YAML parses");
            if value["kind"] == "Role" || value["kind"] == "RoleBinding" {
                found += 1;
                self.apply(value);
            }
        }
        assert_eq!(
            found, 2,
            "deploy/rbac/operator.yaml has the leader-election Role and binding"
        );
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// Create or replace the Secret the targets reference.
    pub fn set_password(&self, password: &str) {
        self.apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET_NAME},
            "stringData": {SECRET_KEY: password}
        }));
    }

    /// `kubectl apply` (server-side) of one object into the namespace.
    pub fn apply(&self, mut object: Value) {
        object["metadata"]["namespace"] = self.name().into();
        self.cluster
            .apply(std::slice::from_ref(&object))
            .unwrap_or_else(|e| panic!("kubectl apply {object}: {e}"));
    }

    /// `kubectl <args> -n <ns>`; its stdout (panics with stderr on failure).
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["-n", self.name()]);
        self.cluster
            .kubectl_output(&all)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `spec.postgres` of a target of this test's database: the server reachable from
    /// pods and, on a real node, the PostgreSQL client image built from the host's tools.
    pub fn pg_config(&self) -> Value {
        let mut config = self.pg.config_json(Some(&self.db));
        if let Some(image) = self
            .cluster
            .postgres_image()
            .expect("the PostgreSQL client image is built and imported")
        {
            config["image"] = image.into();
        }
        config
    }

    /// A BackupTarget `name` for this test's database, labelled `labels`.
    pub fn create_target(&self, name: &str, labels: Value) {
        self.apply(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "postgres": self.pg_config(),
                "storage": {"claimName": CLAIM},
                "compression": "zstd",
                "job": {"backoffLimit": 0}
            }
        }));
    }

    /// A BackupSchedule `name` with `spec` (schedule, timeZone, targets, ...).
    pub fn create_schedule(&self, name: &str, spec: Value) {
        self.apply(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": name},
            "spec": spec
        }));
    }

    fn dynamic(&self, kind: &str, plural: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("stowage.dev", "v1alpha1", kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        Api::namespaced_with(self.client.clone(), self.name(), &resource)
    }

    /// A BackupTarget as JSON (`None` when it does not exist).
    pub async fn target(&self, name: &str) -> Option<Value> {
        let api = self.dynamic("BackupTarget", "backuptargets");
        let obj = api.get_opt(name).await.expect("get the BackupTarget")?;
        Some(serde_json::to_value(obj).expect("JSON"))
    }

    /// A BackupRestore `name` with `spec`.
    pub fn create_restore(&self, name: &str, spec: Value) {
        self.apply(json!({
            "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupRestore",
            "metadata": {"name": name},
            "spec": spec
        }));
    }

    /// A BackupRestore as JSON (`None` when it does not exist).
    pub async fn restore(&self, name: &str) -> Option<Value> {
        let api = self.dynamic("BackupRestore", "backuprestores");
        let obj = api.get_opt(name).await.expect("get the BackupRestore")?;
        Some(serde_json::to_value(obj).expect("JSON"))
    }

    /// Wait until BackupRestore `name` has ended (`status.phase` Succeeded or Failed);
    /// returns it.
    pub async fn wait_restore_end(&self, name: &str) -> Value {
        eventually(
            &format!("BackupRestore {name} ends"),
            RUN_TIMEOUT,
            || async move {
                let restore = self
                    .restore(name)
                    .await
                    .ok_or_else(|| format!("BackupRestore {name} does not exist"))?;
                match restore["status"]["phase"].as_str() {
                    Some("Succeeded" | "Failed") => Ok(restore),
                    _ => Err(format!("status = {}", restore["status"])),
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Annotate target `name` with `stowage.dev/backup-now=<token>` and wait for that
    /// backup to succeed; returns the target.
    pub async fn backup_now(&self, name: &str, token: &str) -> Value {
        let before = self
            .target(name)
            .await
            .map(|t| t["status"]["lastBackup"]["job"].clone())
            .unwrap_or(Value::Null);
        self.kubectl(&[
            "annotate",
            "--overwrite",
            "backuptarget",
            name,
            &format!("stowage.dev/backup-now={token}"),
        ]);
        let target = self
            .wait_target(&format!("backup-now {token} of {name}"), name, |t| {
                // The token is handled when the Job starts; its run is recorded later.
                if t["status"]["lastHandledBackupNow"] == token
                    && t["status"]["lastBackup"]["outcome"].is_string()
                    && t["status"]["lastBackup"]["job"] != before
                {
                    Ok(())
                } else {
                    Err(format!("lastBackup = {}", t["status"]["lastBackup"]))
                }
            })
            .await;
        assert_eq!(
            target["status"]["lastBackup"]["outcome"], "Succeeded",
            "{}",
            target["status"]
        );
        target
    }

    /// A BackupSchedule as JSON.
    pub async fn schedule(&self, name: &str) -> Value {
        let api = self.dynamic("BackupSchedule", "backupschedules");
        let obj = api.get(name).await.expect("get the BackupSchedule");
        serde_json::to_value(obj).expect("JSON")
    }

    /// The Jobs of the namespace matching `selector`.
    pub async fn jobs(&self, selector: &str) -> Vec<Job> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), self.name());
        api.list(&ListParams::default().labels(selector))
            .await
            .expect("list Jobs")
            .items
    }

    /// The pods of Job `job`.
    pub async fn pods_of(&self, job: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.name());
        api.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
            .await
            .expect("list pods")
            .items
    }

    /// Write the operator's "now".
    pub fn set_time(&self, rfc3339: &str) {
        write_time(&self.time_file(), rfc3339);
    }

    fn time_file(&self) -> PathBuf {
        self.dir.path().join("now")
    }

    /// The operator's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("operator.log")
    }

    /// The operator's log so far.
    pub fn operator_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start `stowage controller` for this namespace, as ServiceAccount `stowage`.
    pub fn start_operator(&mut self) {
        self.start_operator_with_env(&[]);
    }

    /// [`Env::start_operator`] with extra environment variables for this start only
    /// (e.g. `STOWAGE_FAULT=schedule-after-create`, see `src/fault.rs`).
    pub fn start_operator_with_env(&mut self, extra: &[(&str, &str)]) {
        assert!(self.operator.is_none(), "the operator is already running");
        self.starts += 1;
        let identity = self.identity();
        let mut label = format!("start #{}", self.starts);
        for (key, value) in extra {
            label.push_str(&format!(" {key}={value}"));
        }
        let child = self.spawn_operator(
            self.metrics_port,
            &label,
            &self.time_file(),
            &self.log_path(),
            &identity,
            extra,
        );
        self.operator = Some(child);
        self.operator_identity = Some(identity);
    }

    /// How the operator exited, if it has (it is then forgotten, so it can be started
    /// again); `None` while it runs or when none was started.
    #[allow(dead_code)] // used by tests/operator_faults.rs only
    pub fn operator_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self
            .operator
            .as_mut()?
            .try_wait()
            .expect("wait for the operator")?;
        self.operator = None;
        Some(status)
    }

    /// Wait until the operator exits on its own (a fault point); `None` if it is still
    /// running after `timeout` (it is left running).
    #[allow(dead_code)] // used by tests/operator_faults.rs only
    pub async fn wait_operator_exit(
        &mut self,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.operator_exit() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start another replica of the operator (same namespace and Lease, its own identity
    /// and metrics port), logging to the same file; the caller owns the process.
    pub fn start_replica(&mut self) -> (Child, u16) {
        self.starts += 1;
        let port = free_port();
        let identity = self.identity();
        let child = self.spawn_operator(
            port,
            &format!("replica start #{}", self.starts),
            &self.time_file(),
            &self.log_path(),
            &identity,
            &[],
        );
        (child, port)
    }

    /// Start another replica with its own clock file (set to `now`) and its own log, so a
    /// test can tell the replicas' actions apart.
    pub fn start_replica_apart(&mut self, now: &str) -> Replica {
        self.starts += 1;
        let port = free_port();
        let identity = self.identity();
        let time_file = self.dir.path().join(format!("now-{}", self.starts));
        let log = self.dir.path().join(format!("replica-{}.log", self.starts));
        write_time(&time_file, now);
        let child = self.spawn_operator(
            port,
            &format!("replica start #{}", self.starts),
            &time_file,
            &log,
            &identity,
            &[],
        );
        Replica {
            child,
            port,
            identity,
            time_file,
            log,
        }
    }

    fn identity(&self) -> String {
        format!("e2e-{}-{}", self.name(), self.starts)
    }

    /// The Lease identity of the running operator (`None` before the first start).
    pub fn operator_identity(&self) -> Option<String> {
        self.operator_identity.clone()
    }

    /// Send `signal` (`STOP`, `CONT`, ...) to the running operator.
    pub fn signal_operator(&self, signal: &str) {
        let child = self.operator.as_ref().expect("the operator runs");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Wait (at most `timeout`) for the operator to exit on its own; its exit status
    /// (panics when it does not exit).
    pub async fn expect_operator_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.operator.take().expect("the operator runs");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the operator did not exit within {timeout:?}");
                }
                Err(e) => panic!("cannot wait for the operator: {e}"),
            }
        }
    }

    /// `spec.holderIdentity` of the leader-election Lease (`None` when missing or free).
    pub fn lease_holder(&self) -> Option<String> {
        let out = self
            .cluster
            .kubectl_output(&[
                "get",
                "lease",
                LEASE_NAME,
                "-n",
                self.name(),
                "--ignore-not-found",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        Some(out.trim().to_owned()).filter(|h| !h.is_empty())
    }

    fn spawn_operator(
        &self,
        metrics_port: u16,
        label: &str,
        time_file: &Path,
        log_path: &Path,
        identity: &str,
        extra: &[(&str, &str)],
    ) -> Child {
        let kubeconfig = operator_kubeconfig(self.cluster);
        let runner_image = self
            .cluster
            .stowage_image()
            .expect("the stowage image is built and imported");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the operator log");
        writeln!(&log, "===== operator {label} =====").expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stowage"));
        cmd.arg("controller")
            .args(["--namespaces", self.name()])
            .args(["--bind-address", &format!("127.0.0.1:{metrics_port}")])
            .arg("--fake-time-file")
            .arg(time_file)
            .args(["--runner-image", &runner_image])
            .args(["--leader-election", "true"])
            .args(["--lease-namespace", self.name()])
            .args([
                "--lease-duration-seconds",
                &LEASE_DURATION_SECONDS.to_string(),
            ])
            .args(["--identity", identity])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,stowage=debug")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let child = cmd.spawn().expect("start stowage controller");
        // Stop it if this test process dies without running destructors.
        let _ = Command::new("sh")
            .arg("-c")
            .arg("while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -9 \"$2\" 2>/dev/null")
            .args([
                "e2e-watchdog",
                &std::process::id().to_string(),
                &child.id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        child
    }

    /// SIGKILL the operator (a crash).
    pub fn kill_operator(&mut self) {
        self.operator_identity = None;
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the operator and wait for it to exit.
    pub fn stop_operator(&mut self) {
        self.operator_identity = None;
        if let Some(mut child) = self.operator.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..120 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running operator's metrics in the text format (empty when it does not answer).
    pub fn metrics(&self) -> String {
        metrics_at(self.metrics_port)
    }

    /// `stowage_reconcile_total{controller}` of the running operator (0 when not up yet).
    pub async fn reconciles(&self, controller: &str) -> u64 {
        reconciles_at(self.metrics_port, controller)
    }
}

/// The metrics of the operator serving them on `port`, in the text format (empty when it
/// does not answer).
pub fn metrics_at(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    Command::new("curl")
        .args(["-sf", "--max-time", "5", &url])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// `stowage_reconcile_total{controller}` of the operator serving metrics on `port` (0 when
/// it does not answer).
pub fn reconciles_at(port: u16, controller: &str) -> u64 {
    let text = metrics_at(port);
    let prefix = format!("stowage_reconcile_total{{controller=\"{controller}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

impl Env {
    /// Wait until the running operator has reconciled `controller` objects `more` more
    /// times than `since` (while the clock is faked, every target is reconciled again every 2 s).
    pub async fn wait_reconciles(&self, controller: &str, since: u64, more: u64) -> u64 {
        let this = &self;
        eventually(
            &format!("{more} more {controller} reconciles"),
            Duration::from_secs(120),
            || async move {
                let n = this.reconciles(controller).await;
                if n >= since + more {
                    Ok(n)
                } else {
                    Err(format!("stowage_reconcile_total = {n}"))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until BackupTarget `name`'s JSON satisfies `ok` (which explains what it saw).
    pub async fn wait_target(
        &self,
        what: &str,
        name: &str,
        ok: impl Fn(&Value) -> Result<(), String>,
    ) -> Value {
        let ok = &ok;
        eventually(what, RUN_TIMEOUT, || async move {
            let target = self
                .target(name)
                .await
                .ok_or_else(|| format!("BackupTarget {name} does not exist"))?;
            ok(&target)?;
            Ok(target)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until BackupSchedule `name`'s JSON satisfies `ok`; returns it.
    pub async fn wait_schedule(
        &self,
        what: &str,
        name: &str,
        ok: impl Fn(&Value) -> Result<(), String>,
    ) -> Value {
        let ok = &ok;
        eventually(what, Duration::from_secs(120), || async move {
            let schedule = self.schedule(name).await;
            ok(&schedule)?;
            Ok(schedule)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until at least `n` Jobs match `selector`; returns them.
    pub async fn wait_jobs(&self, selector: &str, n: usize) -> Vec<Job> {
        eventually(
            &format!("{n} Job(s) with {selector}"),
            RUN_TIMEOUT,
            || async move {
                let jobs = self.jobs(selector).await;
                if jobs.len() >= n {
                    Ok(jobs)
                } else {
                    Err(format!("{} Job(s)", jobs.len()))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The directory of target `target`'s artifacts on the claim.
    pub fn target_dir(&self, target: &str) -> PathBuf {
        self.cluster
            .claim_dir(self.name(), CLAIM)
            .join(self.name())
            .join(target)
    }

    /// `stowage verify` over target `target`'s artifacts: `Ok(output)` when it finds no
    /// problem, `Err(output)` otherwise.
    pub fn verify(&self, target: &str) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
            .arg("verify")
            .arg(self.target_dir(target))
            .output()
            .expect("run stowage verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// The artifacts (`*.meta.json` sidecars, parsed) of target `target` on the claim.
    pub fn sidecars(&self, target: &str) -> Vec<(PathBuf, Value)> {
        let root = self.target_dir(target);
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().ends_with(".meta.json") {
                    let text = std::fs::read_to_string(&path).expect("read a sidecar");
                    out.push((path, serde_json::from_str(&text).expect("a JSON sidecar")));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every file under this namespace's directory on the claim.
    pub fn claim_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.cluster.claim_dir(self.name(), CLAIM)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// The logs of every container of this namespace's pods (what `kubectl logs` shows),
    /// each after a `----- <pod>/<container>` line.
    pub fn container_logs(&self) -> String {
        self.cluster.container_logs(self.name())
    }

    /// The host directory whose files containers of [`Env::standin_tools_image`] see
    /// first on their `PATH`.
    pub fn standin_tools_dir(&self) -> PathBuf {
        self.cluster.standin_tools_dir()
    }

    /// The image with the files of [`Env::standin_tools_dir`] (write them first).
    pub fn standin_tools_image(&self) -> String {
        self.cluster
            .standin_tools_image()
            .expect("the stand-in tools image is built and imported")
    }

    /// Everything useful when a test fails.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let log = self.operator_log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        out.push_str(&format!(
            "----- operator log ({}), last 80 lines:\n",
            self.log_path().display()
        ));
        for line in tail.into_iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
        let mut replica_logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".log") && *p != self.log_path())
            .collect();
        replica_logs.sort();
        for path in replica_logs {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            out.push_str(&format!("----- {}, last 80 lines:\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        for args in [
            &["get", "backuptargets,backupschedules", "-o", "yaml"][..],
            &["get", "jobs,pods", "-o", "yaml"][..],
            &["get", "events", "--sort-by=.lastTimestamp"][..],
        ] {
            let mut all = args.to_vec();
            all.extend(["-n", self.name()]);
            out.push_str(&format!("----- kubectl {}\n", all.join(" ")));
            match self.cluster.kubectl_output(&all) {
                Ok(text) => out.push_str(&text),
                Err(e) => out.push_str(&e.to_string()),
            }
        }
        out.push_str("----- container logs\n");
        out.push_str(&self.container_logs());
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== diagnostics of namespace {} =====\n{}",
                self.name(),
                self.diagnostics()
            );
        }
        self.kill_operator();
    }
}

/// Write an RFC 3339 "now" into a clock file, atomically.
fn write_time(path: &Path, rfc3339: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, rfc3339).expect("write the fake time");
    std::fs::rename(&tmp, path).expect("move the fake time in place");
}

/// A replica started by [`Env::start_replica_apart`]: its own clock file and log; killed
/// when dropped.
pub struct Replica {
    child: Child,
    /// Its metrics port.
    pub port: u16,
    /// Its Lease identity.
    pub identity: String,
    time_file: PathBuf,
    log: PathBuf,
}

impl Replica {
    /// Write this replica's "now".
    pub fn set_time(&self, rfc3339: &str) {
        write_time(&self.time_file, rfc3339);
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The condition `type_` of an object's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// `(status, reason)` of condition `type_`, for messages.
pub fn condition_summary(object: &Value, type_: &str) -> String {
    match condition(object, type_) {
        Some(c) => format!("{type_}={} ({})", c["status"], c["reason"]),
        None => format!("no {type_} condition"),
    }
}

/// The name of a Job.
pub fn job_name(job: &Job) -> String {
    job.metadata.name.clone().unwrap_or_default()
}
