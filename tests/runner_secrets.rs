//! Secret values never leave a run, even when the service or its tools echo them.
//!
//! The real services of the other tests never print a password or a token, so a missing
//! redaction would go unnoticed there. Here the other side is hostile on purpose:
//!
//! - stand-in `psql`, `pg_dump` and `pg_restore` (shell scripts first on the runner's
//!   `PATH`) print the password they were given on stderr, put it into their version
//!   strings (which become the `serverVersion` and `dumpToolVersion` facts) and fail or
//!   succeed as each case asks;
//! - a loopback HTTP server echoes the bearer token in error bodies, headers that become
//!   facts (`ETag`), and redirect URLs (userinfo, path and query string).
//!
//! Each case runs the `stowage` binary and asserts the value is absent from its stdout,
//! its log (stderr), the termination message and every file under the store root
//! (artifact sidecars included), and that the echo did happen (`<redacted>` is there), so
//! a case cannot pass because the hostile side stayed silent.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// The database password the stand-in tools echo.
const PASSWORD: &str = "pw-Sekr3t-4711";
/// The bearer token the HTTP server echoes.
const TOKEN: &str = "tok-Sekr3t-0815";
/// A token a URL carries only percent-encoded.
const SPECIAL_TOKEN: &str = "tok Sekr3t/\"q\"+=";

/// `value` percent-encoded as `encodeURIComponent` does (how a server puts a value into a
/// URL).
fn url_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One `stowage run` in a temp dir: its store, termination message and stand-in tools.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    fn termination(&self) -> PathBuf {
        self.dir.path().join("termination-log")
    }

    fn tools(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// `stowage run <operation>` of `plugin` with `config`, the secret bound as the
    /// controller binds it, and a clean environment.
    fn command(&self, operation: &str, secret: &str, config: &serde_json::Value) -> Command {
        let bindings = stowage_plugin_sdk::secret_bindings(config);
        assert_eq!(bindings.len(), 1, "{config}");
        let plugin = if config.get("url").is_some() {
            "http"
        } else {
            "postgres"
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_stowage"));
        command
            .args(["run", operation])
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", self.tools().display()),
            )
            .env("STOWAGE_LOG", "debug")
            .env("STOWAGE_PLUGIN", plugin)
            .env("STOWAGE_PLUGIN_CONFIG", config.to_string())
            .env("STOWAGE_NAMESPACE", "shop")
            .env("STOWAGE_TARGET", "app")
            .env("STOWAGE_RUN_ID", "run-1")
            .env("STOWAGE_COMPRESSION", "none")
            .env("STOWAGE_ARTIFACT_ROOT", self.store())
            .env("STOWAGE_TERMINATION_MESSAGE_PATH", self.termination())
            .env(&bindings[0].env, secret);
        command
    }

    /// Run `command` and check that `secret` (as is or URL-encoded) is nowhere a user
    /// could read it; the result.
    fn run_without_leaking(&self, mut command: Command, secret: &str) -> Checked {
        let output = command.output().unwrap();
        let termination = std::fs::read_to_string(self.termination()).unwrap_or_default();
        let mut places = vec![
            ("stdout".to_owned(), output.stdout.clone()),
            (
                "stderr (the runner's log)".to_owned(),
                output.stderr.clone(),
            ),
            ("termination message".to_owned(), termination.clone().into()),
        ];
        for file in files_under(&self.store()) {
            places.push((file.display().to_string(), std::fs::read(&file).unwrap()));
        }
        for (place, bytes) in &places {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !text.contains(secret) && !text.contains(&url_encoded(secret)),
                "the secret leaked into {place}:\n{text}\n--- stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let result: serde_json::Value = serde_json::from_str(&termination).unwrap_or_else(|e| {
            panic!(
                "no result ({e}): {termination:?}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        Checked { output, result }
    }
}

/// What a run left, once checked for leaks.
struct Checked {
    output: Output,
    result: serde_json::Value,
}

impl Checked {
    fn log(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn assert_failed(&self, kind: &str) -> &str {
        assert_eq!(self.result["outcome"], "failed", "{}", self.result);
        assert_eq!(self.result["errorKind"], kind, "{}", self.result);
        self.result["message"].as_str().unwrap()
    }

    fn assert_ok(&self) {
        assert_eq!(
            self.result["outcome"],
            "ok",
            "{}\n{}",
            self.result,
            self.log()
        );
    }

    fn fact(&self, key: &str) -> &str {
        self.result["facts"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no fact {key}: {}", self.result))
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn sidecars_under(dir: &Path) -> Vec<serde_json::Value> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".meta.json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: stand-in client tools.

/// Writes stand-in `psql`, `pg_dump` and `pg_restore` into the run's tool dir.
///
/// Every tool prints the password on stderr. `--version` names it in the version string
/// (it knows it the way a tool reading `~/.pgpass` would); `psql`'s version query answers
/// with a `server_version` that contains `$PGPASSWORD`. A tool named in `$STANDIN_FAIL`
/// fails with `$STANDIN_ERROR` (plus the password) on stderr; a tool that does not get the
/// password in `PGPASSWORD` fails, so a pass-through that broke would show.
fn write_postgres_tools(run: &Run) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(run.tools()).unwrap();
    let common = format!(
        r#"#!/bin/sh
tool=$(basename "$0")
if [ "$1" = "--version" ]; then
  echo "$tool (PostgreSQL) 17.2 (stand-in built with {PASSWORD})"
  echo "$tool: version banner mentions {PASSWORD}" >&2
  exit 0
fi
if [ "$PGPASSWORD" != "{PASSWORD}" ]; then
  echo "$tool: stand-in got no PGPASSWORD" >&2
  exit 3
fi
echo "$tool: WARNING: connected with password $PGPASSWORD" >&2
if [ "$STANDIN_FAIL" = "$tool" ]; then
  echo "$tool: error: $STANDIN_ERROR (password was \"$PGPASSWORD\")" >&2
  exit 1
fi
"#
    );
    let tools = [
        (
            "psql",
            r#"case "$*" in
  *server_version*) echo "170002|17.2 (stand-in server, password $PGPASSWORD)" ;;
  *) input=$(cat)
     case "$input" in
       *"SELECT EXISTS"*) echo "f" ;;  # the destination database does not exist yet
       *) echo "created"; echo "restored with $PGPASSWORD" ;;
     esac ;;
esac
"#,
        ),
        ("pg_dump", "echo \"-- stand-in dump\"\n"),
        ("pg_restore", "cat >/dev/null\n"),
    ];
    for (name, body) in tools {
        let path = run.tools().join(name);
        std::fs::write(&path, format!("{common}{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn postgres_config() -> serde_json::Value {
    serde_json::json!({
        "host": "127.0.0.1",
        "port": 5432,
        "username": "backup",
        "database": "shop",
        "passwordSecretRef": {"name": "db", "key": "password"},
    })
}

#[test]
fn postgres_tools_that_echo_the_password_leak_it_nowhere() {
    let run = Run::new();
    write_postgres_tools(&run);

    // A probe: the facts come from the tools' version strings, which name the password.
    let probe =
        run.run_without_leaking(run.command("probe", PASSWORD, &postgres_config()), PASSWORD);
    probe.assert_ok();
    assert!(
        probe.fact("serverVersion").contains("<redacted>"),
        "{}",
        probe.result
    );
    assert!(
        probe.fact("dumpToolVersion").contains("<redacted>"),
        "{}",
        probe.result
    );

    // A successful backup: the same facts go into the sidecar; pg_dump's stderr is logged.
    let backup = run.run_without_leaking(
        run.command("backup", PASSWORD, &postgres_config()),
        PASSWORD,
    );
    backup.assert_ok();
    assert!(
        backup.fact("serverVersion").contains("<redacted>"),
        "{}",
        backup.result
    );
    let sidecars = sidecars_under(&run.store());
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    let facts = &sidecars[0]["facts"];
    assert!(
        facts["dumpToolVersion"]
            .as_str()
            .unwrap()
            .contains("<redacted>"),
        "{facts}"
    );
    assert!(
        backup.log().contains("connected with password <redacted>"),
        "the warning is logged, redacted:\n{}",
        backup.log()
    );
    let artifact = backup.result["artifact"].as_str().unwrap().to_owned();

    // Probes and backups whose tool fails with the password in its error text.
    for (operation, tool, error, kind) in [
        (
            "probe",
            "psql",
            "connection to server failed: FATAL:  password authentication failed for user \"backup\"",
            "Unauthorized",
        ),
        (
            "backup",
            "pg_dump",
            "query failed: something odd",
            "ToolFailed",
        ),
        (
            "backup",
            "psql",
            "could not connect to server",
            "Unreachable",
        ),
    ] {
        let mut command = run.command(operation, PASSWORD, &postgres_config());
        command
            .env("STANDIN_FAIL", tool)
            .env("STANDIN_ERROR", error);
        let failed = run.run_without_leaking(command, PASSWORD);
        let message = failed.assert_failed(kind);
        assert!(
            message.contains("<redacted>"),
            "{operation} with {tool} failing: {message}"
        );
        assert!(failed.log().contains("<redacted>"), "{}", failed.log());
    }

    // Restores of that artifact: a tool failing with the password, and one succeeding
    // while printing it.
    for fail in ["pg_restore", "psql", ""] {
        let mut command = run.command("restore", PASSWORD, &postgres_config());
        command
            .env("STOWAGE_RESTORE_ARTIFACT", &artifact)
            .env("STANDIN_FAIL", fail)
            .env("STANDIN_ERROR", "permission denied for schema public");
        let restored = run.run_without_leaking(command, PASSWORD);
        if fail.is_empty() {
            restored.assert_ok();
            assert!(
                restored
                    .log()
                    .contains("connected with password <redacted>"),
                "{}",
                restored.log()
            );
        } else {
            let message = restored.assert_failed("Unauthorized");
            assert!(message.contains("<redacted>"), "{fail}: {message}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: a server that echoes the token.

/// A loopback HTTP/1.1 server that answers by path and echoes the request's bearer token
/// wherever it can; stops when dropped.
struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn echo_server() -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            thread::spawn(move || answer(stream, addr));
        }
    });
    EchoServer { addr, stop }
}

fn answer(stream: TcpStream, addr: SocketAddr) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut token = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(value) = line
            .to_ascii_lowercase()
            .starts_with("authorization: bearer ")
            .then(|| line["authorization: bearer ".len()..].trim().to_owned())
        {
            token = value;
        }
    }
    // As a server puts it into a URL.
    let in_url = url_encoded(&token);
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, headers, body) = match path {
        "/unauthorized" => (
            "401 Unauthorized",
            format!("WWW-Authenticate: Bearer error=\"invalid_token\", token=\"{token}\"\r\n"),
            format!("{{\"error\":\"token {token} is not valid\"}}"),
        ),
        "/broken" => (
            "500 Internal Server Error",
            format!("X-Debug-Token: {token}\r\n"),
            format!("panic while checking {token}"),
        ),
        "/moved" => (
            "302 Found",
            format!(
                "Location: http://user:{in_url}@{addr}/final/{in_url}?access_token={in_url}\r\n"
            ),
            String::new(),
        ),
        "/moved-to-nothing" => (
            "302 Found",
            format!("Location: /missing/{in_url}?access_token={in_url}\r\n"),
            String::new(),
        ),
        "/moved-away" => (
            "302 Found",
            format!(
                "Location: http://localhost:{}/elsewhere/{in_url}?access_token={in_url}\r\n",
                addr.port()
            ),
            String::new(),
        ),
        p if p.starts_with("/final/") => (
            "200 OK",
            format!(
                "ETag: \"{token}\"\r\nLast-Modified: {token}\r\nContent-Type: text/{token}\r\n"
            ),
            // The artifact's bytes are the service's data: the token may be there.
            "exported data\n".to_owned(),
        ),
        _ => (
            "404 Not Found",
            String::new(),
            format!("no {path} for {token}"),
        ),
    };
    let mut stream = stream;
    let head_only = request_line.starts_with("HEAD ");
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body.as_str() }
    );
    let _ = stream.write_all(response.as_bytes());
}

fn http_config(addr: SocketAddr, path: &str) -> serde_json::Value {
    serde_json::json!({
        "url": format!("http://{addr}{path}"),
        "auth": {"bearer": {"tokenSecretRef": {"name": "api", "key": "token"}}},
        "probe": {"path": path},
    })
}

#[test]
fn an_http_server_that_echoes_the_token_leaks_it_nowhere() {
    let server = echo_server();
    for token in [TOKEN, SPECIAL_TOKEN] {
        http_runs_do_not_leak(&server, token);
    }
}

fn http_runs_do_not_leak(server: &EchoServer, token: &str) {
    // Followed redirects whose URL carries the token (userinfo, path, query), to a
    // response whose headers (which become facts) carry it too.
    let run = Run::new();
    let backup = run.run_without_leaking(
        run.command("backup", token, &http_config(server.addr, "/moved")),
        token,
    );
    backup.assert_ok();
    for fact in ["finalUrl", "etag", "lastModified", "contentType"] {
        assert!(
            backup.fact(fact).contains("<redacted>"),
            "{fact}: {}",
            backup.result
        );
    }
    let sidecars = sidecars_under(&run.store());
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    assert!(
        sidecars[0]["facts"]["etag"]
            .as_str()
            .unwrap()
            .contains("<redacted>"),
        "{}",
        sidecars[0]
    );

    let run = Run::new();
    let probe = run.run_without_leaking(
        run.command("probe", token, &http_config(server.addr, "/moved")),
        token,
    );
    probe.assert_ok();
    assert!(
        probe.fact("probeUrl").contains("<redacted>"),
        "{}",
        probe.result
    );

    // Failures whose status, body, headers or redirect target carry the token.
    for (operation, path, kind, redacted_in_message) in [
        ("backup", "/unauthorized", "Unauthorized", false),
        ("probe", "/unauthorized", "Unauthorized", false),
        ("backup", "/broken", "RemoteError", false),
        ("backup", "/moved-to-nothing", "NotFound", true),
        ("probe", "/moved-to-nothing", "NotFound", true),
        ("backup", "/moved-away", "RemoteError", true),
    ] {
        let run = Run::new();
        let failed = run.run_without_leaking(
            run.command(operation, token, &http_config(server.addr, path)),
            token,
        );
        let message = failed.assert_failed(kind);
        assert_eq!(
            message.contains("<redacted>"),
            redacted_in_message,
            "{operation} {path}: {message}"
        );
        assert!(files_under(&run.store()).is_empty(), "{operation} {path}");
    }
}
