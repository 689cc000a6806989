//! The out-of-tree Rust plugin (`examples/plugins/rust-redis`): built outside the
//! workspace as a plugin author would (a copy of the crate with the workspace's
//! Cargo.lock, so the versions match and nothing is downloaded), then driven through the
//! external plugin protocol by the runner's `ExternalPlugin` against real redis-servers
//! on loopback: probe, backup, inspect, restore into another server, the data compared,
//! and a wrong password ending in `Unauthorized` without the password in the message.
//! Its `backupplugin.yaml` must be accepted, and its schema must be the plugin's own.
//!
//! Building the example takes about a minute cold on two cores and a second warm (its
//! target directory is `$STOWAGE_CACHE/target-example-plugins`, kept between runs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stowage_test_scratch::free_port;

use kube::CustomResourceExt;
use serde_json::json;
use stowage::api::{BackupPlugin, BackupTarget};
use stowage::installed::{Installed, check, resolved_plugin};
use stowage_plugin_external::{ExternalConfig, ExternalPlugin};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, RestoreRequest, RunContext, SecretKeyRef,
    SecretValue,
};

const PASSWORD: &str = "oot-redis-canary-Pw-5c2e";
const EXAMPLE: &str = "examples/plugins/rust-redis";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example's binary, built once per test process from a copy of the crate outside
/// the repository.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_example)
}

fn build_example() -> PathBuf {
    let cache = std::env::var_os("STOWAGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/stowage")))
        .expect("HOME or STOWAGE_CACHE is set");
    let target_dir = cache.join("target-example-plugins");
    let copy = tempfile::tempdir().unwrap();
    let crate_dir = copy.path().join("rust-redis");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    // The manifest as an author's repository would have it: the SDK and the plugin by
    // absolute path instead of relative to this repository.
    let manifest = std::fs::read_to_string(repo().join(EXAMPLE).join("Cargo.toml")).unwrap();
    let plugins = repo().join("plugins");
    let rewritten = manifest.replace(
        "path = \"../../../plugins/",
        &format!("path = \"{}/", plugins.display()),
    );
    assert_ne!(
        manifest, rewritten,
        "the example depends on plugins/ by path"
    );
    std::fs::write(crate_dir.join("Cargo.toml"), rewritten).unwrap();
    std::fs::copy(
        repo().join(EXAMPLE).join("src/main.rs"),
        crate_dir.join("src/main.rs"),
    )
    .unwrap();
    std::fs::copy(repo().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .current_dir(&crate_dir)
        .args(["build", "--quiet", "--manifest-path", "Cargo.toml"])
        .arg("--target-dir")
        .arg(&target_dir)
        // The build is the author's, not this test's: none of the test's cargo settings.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building {EXAMPLE} outside the workspace failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "built {EXAMPLE} outside the workspace in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The copied lock was enough: no other version of any crate was picked.
    let lock = std::fs::read_to_string(crate_dir.join("Cargo.lock")).unwrap();
    let workspace_lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    for package in lock.split("[[package]]").skip(1) {
        let id: String = package.lines().take(3).collect::<Vec<_>>().join("\n");
        if package.contains("source = \"registry+") {
            assert!(
                workspace_lock.contains(&id),
                "the example resolved a crate the workspace does not lock:\n{id}"
            );
        }
    }
    let binary = target_dir.join("debug/stowage-redis-plugin");
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// A redis-server on loopback with `requirepass`, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt install redis-server; tests/install-deps.sh does)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    fn cli(&self, db: u32, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-n", &db.to_string()])
            .arg("--no-auth-warning")
            .env("REDISCLI_AUTH", PASSWORD)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Every key of `db` with its type and value, sorted.
    fn contents(&self, db: u32) -> Vec<String> {
        let mut out: Vec<String> = self
            .cli(db, &["--scan"])
            .lines()
            .filter(|k| !k.is_empty())
            .map(|key| {
                let kind = self.cli(db, &["type", key]);
                let value = match kind.as_str() {
                    "string" => self.cli(db, &["get", key]),
                    "hash" => sorted(self.cli(db, &["hgetall", key])),
                    "list" => self.cli(db, &["lrange", key, "0", "-1"]),
                    "set" => sorted(self.cli(db, &["smembers", key])),
                    "zset" => self.cli(db, &["zrange", key, "0", "-1", "withscores"]),
                    other => panic!("unexpected type {other}"),
                };
                let ttl = self.cli(db, &["ttl", key]) != "-1";
                format!("{key} {kind} ttl={ttl} {value}")
            })
            .collect();
        out.sort();
        out
    }

    fn target(&self, databases: &[u32]) -> ExternalConfig {
        ExternalConfig {
            plugin: "redis.examples.stowage.dev".into(),
            config: json!({
                "host": "127.0.0.1",
                "port": self.port,
                "passwordSecretRef": {"name": "redis", "key": "password"},
                "databases": databases,
            })
            .as_object()
            .unwrap()
            .clone(),
            resolved: Some(resolved()),
        }
    }
}

fn sorted(text: String) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines.join("\n")
}

fn manifest() -> BackupPlugin {
    let text = std::fs::read_to_string(repo().join(EXAMPLE).join("backupplugin.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("backupplugin.yaml is a BackupPlugin")
}

/// The manifest's plugin with the built binary as its command (what the image holds).
fn resolved() -> stowage_plugin_external::ResolvedPlugin {
    let mut resolved = resolved_plugin(&manifest());
    resolved.command = vec![binary().to_string_lossy().into_owned()];
    resolved
}

fn ctx(password: &str) -> RunContext {
    let mut ctx = RunContext::new("shop", "sessions");
    ctx.secrets.insert(
        SecretKeyRef::new("redis", "password"),
        SecretValue::new(password),
    );
    ctx
}

#[tokio::test]
async fn the_out_of_tree_binary_round_trips_redis_through_the_protocol() {
    let source = Redis::start();
    let destination = Redis::start();
    source.cli(0, &["set", "greeting", "hello ü"]);
    source.cli(0, &["hset", "user:1", "name", "ada", "lang", "rust"]);
    source.cli(0, &["rpush", "queue", "a", "b", "c"]);
    source.cli(0, &["set", "session", "s1", "EX", "3600"]);
    source.cli(2, &["sadd", "tags", "x", "y"]);
    source.cli(2, &["zadd", "scores", "1", "one", "2", "two"]);
    let ctx = ctx(PASSWORD);
    let from = source.target(&[0, 2]);
    let to = destination.target(&[0, 2]);

    let probe = ExternalPlugin::probe(&from, &ctx).await.unwrap();
    assert!(
        probe.message.contains("db0: 4 keys, db2: 2 keys"),
        "{}",
        probe.message
    );
    assert!(probe.facts.contains_key("serverVersion"), "{probe:?}");

    let mut artifact = Vec::new();
    let report = {
        let mut sink = ArtifactSink::new(&mut artifact);
        ExternalPlugin::backup(&from, &ctx, &mut sink)
            .await
            .unwrap()
    };
    assert!(artifact.starts_with(stowage_plugin_redis::MAGIC));
    assert_eq!(report.facts["keys"], "6", "{report:?}");
    assert_eq!(report.facts["databases"], "0,2", "{report:?}");

    let request = RestoreRequest {
        facts: report.facts.clone(),
        into: None,
        replace: false,
    };
    let before = ExternalPlugin::inspect_destination(&to, &ctx, &request)
        .await
        .unwrap();
    assert!(!before.holds_data, "{before:?}");
    let restored = {
        let mut input = ArtifactSource::new(&artifact[..]);
        ExternalPlugin::restore(&to, &ctx, &mut input, &request)
            .await
            .unwrap()
    };
    assert!(
        restored.message.contains("restored 6 keys"),
        "{}",
        restored.message
    );
    let after = ExternalPlugin::inspect_destination(&to, &ctx, &request)
        .await
        .unwrap();
    assert!(after.holds_data, "{after:?}");

    for db in [0, 2] {
        let original = source.contents(db);
        assert!(!original.is_empty());
        assert_eq!(destination.contents(db), original, "db{db}");
    }
    assert!(destination.contents(1).is_empty());
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_without_the_password_in_the_message() {
    let server = Redis::start();
    let wrong = "oot-wrong-Pw-0b7d";
    let error = ExternalPlugin::probe(&server.target(&[0]), &ctx(wrong))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthorized, "{error}");
    assert_eq!(error.kind().exit_code(), 13);
    let message = error.to_string();
    // The field as this target names it, not as the compiled-in plugin does.
    assert!(
        message.contains("spec.external.config.passwordSecretRef"),
        "{message}"
    );
    assert!(!message.contains(wrong), "the password leaked: {message}");
    assert!(!message.contains(PASSWORD), "{message}");

    // And straight from the process: exit code 13, the password in neither its report
    // nor its stderr.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(binary())
        .arg("probe")
        .env_clear()
        .env("STOWAGE_PROTOCOL", "1")
        .env("STOWAGE_OPERATION", "probe")
        .env(
            "STOWAGE_CONFIG",
            serde_json::Value::Object(server.target(&[0]).config).to_string(),
        )
        .env("STOWAGE_REPORT", &report)
        .env("STOWAGE_SECRET_PASSWORDSECRETREF", wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(13));
    let report = std::fs::read_to_string(&report).unwrap();
    assert!(report.contains("\"Unauthorized\""), "{report}");
    for text in [report, String::from_utf8_lossy(&out.stderr).into_owned()] {
        assert!(!text.contains(wrong), "the password leaked: {text}");
    }
}

#[test]
fn its_manifest_is_accepted_and_its_schema_is_the_plugins_own() {
    let plugin = manifest();
    let name = plugin.metadata.name.clone().unwrap();
    let verdict = check(&name, &plugin.spec);
    assert!(verdict.accepted(), "{:?}", verdict.problems);
    assert!(
        verdict
            .secret_fields
            .contains(&"passwordSecretRef -> STOWAGE_SECRET_PASSWORDSECRETREF".to_owned()),
        "{:?}",
        verdict.secret_fields
    );
    // The config schema is spec.redis of the BackupTarget CRD: the same Rust type's
    // schema in its structural form, so the two cannot drift apart.
    let crd = serde_json::to_value(BackupTarget::crd()).unwrap();
    let builtin = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["redis"];
    assert_eq!(&plugin.spec.config_schema, builtin);

    let installed = Installed::new(&plugin, &verdict).unwrap();
    let good = json!({"host": "redis.cache.svc", "databases": [0, 3],
                      "passwordSecretRef": {"name": "redis", "key": "password"}});
    assert_eq!(
        installed.config_problems(good.as_object().unwrap()),
        Vec::<String>::new()
    );
    let bad = json!({"host": "redis", "prot": 6380});
    let problems = installed.config_problems(bad.as_object().unwrap());
    assert!(
        problems.iter().any(|p| p.contains("prot")),
        "a misspelt field is refused: {problems:?}"
    );
}

#[test]
fn stowage_plugin_check_passes_the_out_of_tree_binary() {
    let source = Redis::start();
    let destination = Redis::start();
    source.cli(0, &["set", "greeting", "hello"]);
    let dir = tempfile::tempdir().unwrap();
    let config = |redis: &Redis| serde_json::Value::Object(redis.target(&[0]).config).to_string();
    std::fs::write(dir.path().join("config.json"), config(&source)).unwrap();
    std::fs::write(dir.path().join("restore.json"), config(&destination)).unwrap();
    std::fs::write(dir.path().join("password"), PASSWORD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stowage"))
        .current_dir(dir.path())
        .args(["plugin", "check", "--manifest"])
        .arg(repo().join(EXAMPLE).join("backupplugin.yaml"))
        .arg("--command")
        .arg(binary())
        .args([
            "--config",
            "config.json",
            "--restore-config",
            "restore.json",
        ])
        .args(["--secret", "redis/password=@password"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("10 checks: 10 passed"), "{stdout}");
    // The example's image is a tag, not a digest: a warning, not a failure.
    assert!(stdout.contains("warning: spec.image"), "{stdout}");
    assert!(
        stdout.contains(
            "wrong-secret       probe with canary secret values failed with Unauthorized"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD));
    assert_eq!(destination.contents(0), source.contents(0));
}
