//! End-to-end tests of the `stowage` binary's runner and artifact tools: `stowage run
//! backup` with the `http` plugin against a loopback HTTP server started here, `stowage
//! verify` and `stowage artifacts list`, and a run killed with SIGKILL midway.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};

const TOKEN: &str = "e2e-bearer-t0ken-value";

/// How the test server answers a GET.
#[derive(Clone, Copy)]
enum Body {
    /// `len` pattern bytes at once, after checking the bearer token.
    Fast(usize),
    /// A declared 1 GiB body sent in 64 KiB chunks with pauses, until the client goes.
    Slow,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A tiny HTTP/1.1 server on loopback; stops when dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(body: Body) -> Server {
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
            thread::spawn(move || handle(stream, body));
        }
    });
    Server { addr, stop }
}

fn handle(stream: TcpStream, body: Body) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("authorization:")
            && line.trim_end().ends_with(&format!("Bearer {TOKEN}"))
        {
            authorized = true;
        }
    }
    let mut stream = stream;
    if !authorized {
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let head_only = request_line.starts_with("HEAD ");
    match body {
        Body::Fast(len) => {
            let header =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(header.as_bytes());
            if !head_only {
                let _ = stream.write_all(&pattern(len));
            }
        }
        Body::Slow => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n",
            );
            let chunk = pattern(64 * 1024);
            for _ in 0..16_384 {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

struct Run {
    root: tempfile::TempDir,
    termination: PathBuf,
}

impl Run {
    fn new() -> Run {
        let root = tempfile::tempdir().unwrap();
        let termination = root.path().join("termination-log");
        Run { root, termination }
    }

    fn store(&self) -> PathBuf {
        self.root.path().join("backups")
    }

    fn command(&self, addr: SocketAddr, extra_env: &[(&str, &str)]) -> Command {
        let config = serde_json::json!({
            "url": format!("http://{addr}/export"),
            "auth": {"bearer": {"tokenSecretRef": {"name": "api", "key": "token"}}},
            "artifactExtension": "json",
        });
        // The env variable the controller would bind the token to.
        let bindings = stowage_plugin_sdk::secret_bindings(&config);
        assert_eq!(bindings.len(), 1);
        let mut command = Command::new(env!("CARGO_BIN_EXE_stowage"));
        command
            .args(["run", "backup"])
            .env_clear()
            .env("STOWAGE_PLUGIN", "http")
            .env("STOWAGE_PLUGIN_CONFIG", config.to_string())
            .env("STOWAGE_NAMESPACE", "shop")
            .env("STOWAGE_TARGET", "exporter")
            .env("STOWAGE_SCHEDULE", "nightly")
            .env("STOWAGE_RUN_ID", "run-42")
            .env("STOWAGE_SCHEDULED_TIME", "2026-11-21T02:30:00Z")
            .env("STOWAGE_COMPRESSION", "zstd")
            .env("STOWAGE_ARTIFACT_ROOT", self.store())
            .env("STOWAGE_TERMINATION_MESSAGE_PATH", &self.termination)
            .env(&bindings[0].env, TOKEN);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command
    }

    fn termination_json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.termination).unwrap();
        assert!(text.len() <= 4096);
        serde_json::from_str(&text).unwrap()
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

fn stowage(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn run_backup_with_the_http_plugin_writes_artifact_sidecar_and_result() {
    let server = serve(Body::Fast(2_000_000));
    let run = Run::new();
    let output = run.command(server.addr, &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the token leaked"
    );

    // The result: termination message == last stdout line.
    let result = run.termination_json();
    let last_line: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result, last_line);
    assert_eq!(result["operation"], "backup");
    assert_eq!(result["outcome"], "ok");
    assert_eq!(result["plugin"], "http");
    let relative = result["artifact"].as_str().unwrap();
    assert_eq!(
        relative,
        "shop/exporter/2026-11-21/http-20261121T023000Z-nightly.json.zst"
    );

    // The artifact: its stored bytes hash to the reported sha256, and decompress to the body.
    let path = run.store().join(relative);
    let stored = std::fs::read(&path).unwrap();
    let sha = format!("{:x}", Sha256::digest(&stored));
    assert_eq!(result["sha256"], sha.as_str());
    assert_eq!(result["storedBytes"], stored.len() as u64);
    assert_eq!(result["rawBytes"], 2_000_000);
    assert!(zstd::decode_all(&stored[..]).unwrap() == pattern(2_000_000));

    // The sidecar.
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.meta.json", path.display())).unwrap())
            .unwrap();
    assert_eq!(sidecar["sha256"], sha.as_str());
    assert_eq!(sidecar["plugin"], "http");
    assert_eq!(sidecar["namespace"], "shop");
    assert_eq!(sidecar["target"], "exporter");
    assert_eq!(sidecar["schedule"], "nightly");
    assert_eq!(sidecar["runId"], "run-42");
    assert_eq!(sidecar["compression"], "zstd");
    assert_eq!(sidecar["rawBytes"], 2_000_000);
    assert!(
        !std::fs::read_to_string(format!("{}.meta.json", path.display()))
            .unwrap()
            .contains(TOKEN)
    );

    // verify and list work from the files alone.
    let store = run.store();
    let store = store.to_str().unwrap();
    let verified = stowage(&["verify", store]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let listed = stowage(&["artifacts", "list", store, "-o", "json"]);
    assert!(listed.status.success());
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["sha256"], sha.as_str());
    let table = String::from_utf8(stowage(&["artifacts", "list", store]).stdout).unwrap();
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table.contains("exporter") && table.contains(&sha[..12]),
        "{table}"
    );

    let mut bytes = stored.clone();
    bytes[stored.len() / 2] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let broken = stowage(&["verify", store]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("sha256 mismatch"));
    std::fs::remove_file(&path).unwrap();
    let missing = stowage(&["verify", store]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stdout).contains("missing"));
}

#[test]
fn a_rejected_token_fails_with_the_kinds_exit_code_and_leaves_no_file() {
    let server = serve(Body::Fast(10));
    let run = Run::new();
    let mut command = run.command(server.addr, &[]);
    // Replace the token with a wrong one.
    let config: serde_json::Value = serde_json::json!({"auth": {"bearer": {"tokenSecretRef": {"name": "api", "key": "token"}}}});
    let env = stowage_plugin_sdk::secret_bindings(&config)[0].env.clone();
    command.env(&env, "wrong-token-value");
    let output = command.output().unwrap();
    let result = run.termination_json();
    assert_eq!(result["outcome"], "failed");
    let kind = result["errorKind"].as_str().unwrap();
    assert_eq!(kind, "Unauthorized", "{result}");
    assert_eq!(output.status.code(), Some(13));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("wrong-token-value"));
    assert!(!result.to_string().contains("wrong-token-value"));
    assert!(
        files_under(&run.store()).is_empty(),
        "{:?}",
        files_under(&run.store())
    );
}

#[test]
fn bad_inputs_still_produce_a_result() {
    let server = serve(Body::Fast(10));
    let run = Run::new();
    let output = run
        .command(
            server.addr,
            &[
                ("STOWAGE_TARGET", "../../etc"),
                ("STOWAGE_RETENTION", "{\"keepLast\":2}"),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(10));
    let result = run.termination_json();
    assert_eq!(result["errorKind"], "InvalidConfig");
    assert!(
        result["message"].as_str().unwrap().contains("target"),
        "{result}"
    );
    assert!(files_under(&run.store()).is_empty());
}

#[test]
fn a_run_killed_midway_leaves_only_a_partial_which_only_its_retry_removes() {
    let slow = serve(Body::Slow);
    let run = Run::new();
    let mut child = run
        .command(
            slow.addr,
            &[
                ("STOWAGE_PROGRESS_INTERVAL", "1"),
                ("STOWAGE_COMPRESSION", "none"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect the log as it comes.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for a progress line, then for the .partial to hold at least 1 MiB on disk
    // (uncompressed, so bytes land as they arrive).
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("progress")) {
        match lines_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => log.push(line),
            Err(e) => panic!("no progress line ({e}); log so far: {log:?}"),
        }
    }
    let progress = log.iter().find(|l| l.contains("progress")).unwrap();
    assert!(
        progress.contains("raw_bytes=") && progress.contains("/s"),
        "{progress}"
    );
    let mut partial = None;
    for _ in 0..1200 {
        let files = files_under(&run.store());
        if let Some(p) = files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".partial"))
            && std::fs::metadata(p)
                .map(|m| m.len() > 1 << 20)
                .unwrap_or(false)
        {
            partial = Some(p.clone());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let partial = partial.expect("the run never wrote its .partial file");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rest: Vec<String> = lines_rx.iter().collect();
    assert!(
        !log.iter().chain(&rest).any(|l| l.contains(TOKEN)),
        "the token leaked"
    );

    let files = files_under(&run.store());
    assert!(!files.is_empty());
    for file in &files {
        assert!(
            file.to_string_lossy().ends_with(".partial"),
            "a file under a final name: {}",
            file.display()
        );
    }
    assert!(
        stowage(&[
            "artifacts",
            "list",
            run.store().to_str().unwrap(),
            "-o",
            "json"
        ])
        .stdout
        .starts_with(b"[]")
    );

    // The next run of another tick succeeds and leaves the killed run's partial file
    // alone: nothing proves that run is over (it could be live on another node).
    drop(slow);
    let fast = serve(Body::Fast(1000));
    let output = run
        .command(
            fast.addr,
            &[
                ("STOWAGE_SCHEDULED_TIME", "2026-11-22T02:30:00Z"),
                ("STOWAGE_RUN_ID", "run-43"),
            ],
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        partial.exists(),
        "another run removed a partial file it cannot know is over"
    );
    // The retried pod of the killed run (same run id) knows: it removes it and succeeds.
    let output = run.command(fast.addr, &[]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !partial.exists(),
        "the stale partial {} is still there",
        partial.display()
    );
    let files = files_under(&run.store());
    assert_eq!(
        files.len(),
        4,
        "two artifacts and their sidecars: {files:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".partial"))
    );
}
