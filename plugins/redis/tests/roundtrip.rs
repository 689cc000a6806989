//! The redis plugin against real Redis servers (Debian's `redis-server`) started on
//! loopback by the test: an export restored into a fresh server holds every key, with its
//! type, value and time to live; the destination checks, replacing, truncated exports and
//! the typed failures, without the password in any message.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use stowage_plugin_redis::{RedisConfig, RedisPlugin};
use stowage_plugin_sdk::conformance::{
    BlackHole, FailureCase, check_config_schema, check_failures, check_round_trip, check_validation,
};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, ErrorKind, Plugin, PluginError, RestoreRequest, RunContext,
    SecretKeyRef, SecretValue,
};

const PASSWORD: &str = "redis-canary-Pw-77a1";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server on loopback with `requirepass`, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--requirepass", PASSWORD])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt install redis-server; tests/install-deps.sh does)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            port,
            _dir: dir,
        }
    }

    fn cli(&self, db: u32, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.port.to_string(),
                "-n",
                &db.to_string(),
                "--no-auth-warning",
            ])
            .env("REDISCLI_AUTH", PASSWORD)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn config(&self, databases: &[u32]) -> RedisConfig {
        serde_json::from_value(json!({
            "host": "127.0.0.1", "port": self.port,
            "passwordSecretRef": {"name": "redis", "key": "password"},
            "databases": databases,
        }))
        .unwrap()
    }

    /// Every key of `db` with its type, its value (as `redis-cli` prints it, sorted where
    /// Redis does not keep an order) and whether it has a time to live.
    fn contents(&self, db: u32) -> Vec<String> {
        let keys = self.cli(db, &["--scan"]);
        // The bulk keys are plain strings: one MGET reads them all.
        let mut bulk: Vec<&str> = keys.lines().filter(|k| k.starts_with("bulk:")).collect();
        bulk.sort();
        let mut out: Vec<String> = Vec::new();
        if !bulk.is_empty() {
            let mut args = vec!["mget"];
            args.extend(&bulk);
            let values = self.cli(db, &args);
            out.extend(
                bulk.iter()
                    .zip(values.lines())
                    .map(|(k, v)| format!("{k} string {v}")),
            );
            assert_eq!(values.lines().count(), bulk.len());
        }
        out.extend(
            keys.lines()
                .filter(|k| !k.is_empty() && !k.starts_with("bulk:"))
                .map(|key| {
                    let kind = self.cli(db, &["type", key]);
                    let value = match kind.as_str() {
                        "string" => self.cli(db, &["get", key]),
                        "hash" => sorted(self.cli(db, &["hgetall", key])),
                        "list" => self.cli(db, &["lrange", key, "0", "-1"]),
                        "set" => sorted(self.cli(db, &["smembers", key])),
                        "zset" => self.cli(db, &["zrange", key, "0", "-1", "withscores"]),
                        "stream" => self.cli(db, &["xrange", key, "-", "+"]),
                        other => panic!("unexpected type {other}"),
                    };
                    let ttl: i64 = self.cli(db, &["ttl", key]).parse().unwrap();
                    format!("{key} {kind} ttl={} {value}", ttl > 0)
                }),
        );
        out.sort();
        out
    }
}

fn sorted(text: String) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines.join("\n")
}

fn ctx(password: &str) -> RunContext {
    let mut ctx = RunContext::new("cache", "sessions");
    ctx.secrets.insert(
        SecretKeyRef::new("redis", "password"),
        SecretValue::new(password),
    );
    ctx
}

async fn backup(
    config: &RedisConfig,
    ctx: &RunContext,
) -> Result<(Vec<u8>, RestoreRequest), PluginError> {
    let mut bytes = Vec::new();
    let report = {
        let mut sink = ArtifactSink::new(&mut bytes);
        RedisPlugin::backup(config, ctx, &mut sink).await?
    };
    Ok((
        bytes,
        RestoreRequest {
            facts: report.facts,
            into: None,
            replace: false,
        },
    ))
}

fn seed(server: &Server) {
    for (db, prefix) in [(0, "app"), (2, "jobs")] {
        server.cli(db, &["set", &format!("{prefix}:plain"), "hello world"]);
        server.cli(db, &["set", &format!("{prefix}:binary"), "\u{1}\u{2}é€"]);
        server.cli(
            db,
            &["set", &format!("{prefix}:expiring"), "soon", "EX", "3600"],
        );
        server.cli(
            db,
            &[
                "hset",
                &format!("{prefix}:user:1"),
                "name",
                "Ada",
                "email",
                "ada@example.com",
            ],
        );
        server.cli(
            db,
            &["rpush", &format!("{prefix}:queue"), "a", "b", "c", "a"],
        );
        server.cli(db, &["sadd", &format!("{prefix}:tags"), "x", "y", "z"]);
        server.cli(
            db,
            &[
                "zadd",
                &format!("{prefix}:scores"),
                "1",
                "one",
                "2.5",
                "two",
            ],
        );
        server.cli(
            db,
            &[
                "xadd",
                &format!("{prefix}:events"),
                "1-1",
                "kind",
                "created",
            ],
        );
    }
    for i in 0..2500 {
        server.cli_quiet(0, i);
    }
    server.cli(1, &["set", "not:exported", "db1"]);
}

impl Server {
    fn cli_quiet(&self, db: u32, i: u32) {
        if i.is_multiple_of(500) {
            // Many keys at once: SCAN takes several rounds.
            let mut args = vec!["mset".to_owned()];
            for j in i..i + 500 {
                args.push(format!("bulk:{j}"));
                args.push(format!("value {j}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.cli(db, &args);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_restored_into_a_fresh_server_holds_every_key_with_its_type_value_and_ttl() {
    let source = Server::start();
    seed(&source);
    let (artifact, request) = backup(&source.config(&[0, 2]), &ctx(PASSWORD))
        .await
        .unwrap();
    assert_eq!(request.facts["databases"], "0,2");
    assert_eq!(request.facts["keys"], "2516");

    let destination = Server::start();
    let config = destination.config(&[]);
    let inspected = RedisPlugin::inspect_destination(&config, &ctx(PASSWORD), &request)
        .await
        .unwrap();
    assert!(!inspected.holds_data, "{}", inspected.description);
    let report = RedisPlugin::restore(
        &config,
        &ctx(PASSWORD),
        &mut ArtifactSource::new(&artifact[..]),
        &request,
    )
    .await
    .unwrap();
    assert!(
        report.message.contains("restored 2516 keys"),
        "{}",
        report.message
    );
    for db in [0, 2] {
        let (want, got) = (source.contents(db), destination.contents(db));
        assert_eq!(got.len(), want.len(), "db{db}: key counts differ");
        let differ: Vec<_> = want
            .iter()
            .zip(&got)
            .filter(|(w, g)| w != g)
            .take(5)
            .collect();
        assert!(
            differ.is_empty(),
            "db{db} differs after the restore (backed up, restored): {differ:?}"
        );
    }
    assert_eq!(destination.cli(1, &["dbsize"]), "0", "db1 was not exported");

    // Now it holds data: the plan says so, a restore without replace fails on the first
    // existing key, and one with replace overwrites.
    destination.cli(0, &["set", "app:plain", "changed"]);
    let inspected = RedisPlugin::inspect_destination(&config, &ctx(PASSWORD), &request)
        .await
        .unwrap();
    assert!(
        inspected.holds_data && inspected.description.contains("db0 has"),
        "{}",
        inspected.description
    );
    let err = RedisPlugin::restore(
        &config,
        &ctx(PASSWORD),
        &mut ArtifactSource::new(&artifact[..]),
        &request,
    )
    .await
    .expect_err("keys exist");
    assert!(err.to_string().contains("BUSYKEY"), "{err}");
    let replace = RestoreRequest {
        replace: true,
        ..request.clone()
    };
    RedisPlugin::restore(
        &config,
        &ctx(PASSWORD),
        &mut ArtifactSource::new(&artifact[..]),
        &replace,
    )
    .await
    .unwrap();
    assert_eq!(destination.cli(0, &["get", "app:plain"]), "hello world");

    // A truncated export is refused, saying so.
    let cut = &artifact[..artifact.len() - 5];
    let err = RedisPlugin::restore(
        &config,
        &ctx(PASSWORD),
        &mut ArtifactSource::new(cut),
        &replace,
    )
    .await
    .expect_err("truncated");
    assert!(err.to_string().contains("ends early"), "{err}");
    // `into` has no meaning for Redis.
    let into = RestoreRequest {
        into: Some("x".into()),
        ..request
    };
    let err = RedisPlugin::inspect_destination(&config, &ctx(PASSWORD), &into)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_typed_and_never_show_the_password() {
    let server = Server::start();
    let wrong = "wrong-Pw-not-this";
    let refused: RedisConfig =
        serde_json::from_value(json!({"host": "127.0.0.1", "port": free_port(),
        "passwordSecretRef": {"name": "redis", "key": "password"}}))
        .unwrap();
    let cases: Vec<(&str, RedisConfig, &str, ErrorKind)> = vec![
        (
            "a wrong password",
            server.config(&[]),
            wrong,
            ErrorKind::Unauthorized,
        ),
        ("a refused port", refused, PASSWORD, ErrorKind::Unreachable),
        (
            "a database the server lacks",
            server.config(&[99]),
            PASSWORD,
            ErrorKind::NotFound,
        ),
    ];
    for (name, config, password, kind) in cases {
        let probe = RedisPlugin::probe(&config, &ctx(password))
            .await
            .expect_err(name);
        let backup = backup(&config, &ctx(password)).await.expect_err(name);
        for err in [probe, backup] {
            let text = err.to_string();
            assert_eq!(err.kind(), kind, "{name}: {text}");
            assert!(
                !text.contains(PASSWORD) && !text.contains(wrong),
                "{name}: {text}"
            );
        }
    }
    let ok = RedisPlugin::probe(&server.config(&[0]), &ctx(PASSWORD))
        .await
        .unwrap();
    assert!(
        ok.message.contains("connected to Redis 7."),
        "{}",
        ok.message
    );
}

/// The conformance kit's service-backed checks, against real servers: each documented
/// failure typed, named and without the password (a canary wrong password included),
/// and a round trip into a fresh server compared database by database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes_against_real_servers() {
    let source = Server::start();
    let destination = Server::start();
    seed(&source);
    let silent = BlackHole::start();
    let config = |port: u16, databases: &[u32]| -> RedisConfig {
        serde_json::from_value(json!({"host": "127.0.0.1", "port": port,
            "databases": databases, "connectTimeoutSeconds": 1,
            "passwordSecretRef": {"name": "redis", "key": "password"}}))
        .unwrap()
    };
    let case = |name, config, password: &str, kind, mentions| FailureCase::<RedisPlugin> {
        name,
        config,
        ctx: ctx(password),
        kind,
        mentions,
    };
    let cases = [
        case(
            "refused port",
            config(free_port(), &[]),
            PASSWORD,
            ErrorKind::Unreachable,
            "spec.redis.host",
        ),
        case(
            "wrong password",
            config(source.port, &[]),
            "Canary-wrong-Pw-1e9",
            ErrorKind::Unauthorized,
            "spec.redis.passwordSecretRef",
        ),
        case(
            "missing database",
            config(source.port, &[99]),
            PASSWORD,
            ErrorKind::NotFound,
            "spec.redis.databases",
        ),
        case(
            "server that never answers",
            config(silent.port(), &[]),
            PASSWORD,
            ErrorKind::Timeout,
            "spec.redis.connectTimeoutSeconds",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));

    let (from, into) = (source.config(&[0, 2]), destination.config(&[0, 2]));
    check_round_trip::<RedisPlugin, _, _>(
        &from,
        &into,
        &ctx(PASSWORD),
        &RestoreRequest::default(),
        || async {
            for db in [0, 2] {
                let (want, got) = (source.contents(db), destination.contents(db));
                if want != got {
                    return Err(format!(
                        "database {db}: {} keys backed up, {} restored",
                        want.len(),
                        got.len()
                    ));
                }
            }
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

#[test]
fn conformance() {
    check_config_schema::<RedisPlugin>().unwrap_or_else(|p| panic!("{}", p.join("\n")));
    check_validation::<RedisPlugin>(
        &[json!({"host": "redis.cache.svc"}), json!({"host": "10.0.0.5", "port": 6380,
            "username": "backup", "passwordSecretRef": {"name": "r", "key": "p"}, "databases": [0, 3]})],
        &[
            (json!({"host": "redis.cache.svc", "username": "backup"}), "passwordSecretRef"),
            (json!({"host": "redis.cache.svc", "databases": [1, 1]}), "databases[1]"),
            (json!({"host": "redis://redis.cache.svc"}), "host"),
        ],
    )
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
