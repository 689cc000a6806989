//! The runner's crash fault suite: `stowage run backup` (the debug binary, the `http`
//! plugin against a loopback server started here) is killed again and again over one
//! target's store directory, and the store must never show a final-named file that is not
//! a complete artifact with its sidecar.
//!
//! Each kill is either a SIGKILL after a random delay within a run's duration (the server
//! often streams slowly, so many land mid-stream), or a stop at one of the runner's
//! fault-injection points (`STOWAGE_FAULT`, compiled only into debug builds: the process
//! aborts there, no destructor runs), cycling through all four, among them the instant
//! between the sidecar and the artifact. Runs are scheduled (two schedules) or on demand;
//! the next run is sometimes the killed run's retry (same run id, as a Job's next pod),
//! sometimes a new run.
//!
//! After every kill the store is checked at once (see [`check_store`]), and `stowage
//! verify` may report nothing but interrupted commits. At the end one more run succeeds,
//! `stowage artifacts repair --stale-after-seconds 0` removes the partial files of killed
//! runs that no later run could prove over, and `stowage verify` finds every artifact
//! whole: each decompresses to exactly the bytes the server sent.
//!
//! `STOWAGE_FAULT_KILLS` (default 50) sets the number of kills, `STOWAGE_FAULT_SEED` the
//! seed (printed), which fixes the plan: runs, retries, kill kinds and delays. Where a
//! random kill lands within a run still depends on the machine's speed (a run that ends
//! before its kill changes what follows). Run with
//! `cargo test --test runner_faults -- --nocapture` to see the counts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const TOKEN: &str = "faults-bearer-t0ken-value";
const DEFAULT_KILLS: usize = 50;
const DEFAULT_SEED: u64 = 42;
/// Size of the body the server sends (a JSON-lines export: compressible, not trivially).
const BODY_LEN: usize = 2 * 1024 * 1024 + 4321;
/// A slow response sends this much, then pauses [`SLOW_PAUSE`].
const SLOW_CHUNK: usize = 64 * 1024;
const SLOW_PAUSE: Duration = Duration::from_millis(12);
/// The fault points of `stowage run backup`, in the order a run reaches them.
const FAULT_POINTS: [&str; 4] = [
    "backup-after-create",
    "backup-before-commit",
    "commit-after-sidecar",
    "backup-after-commit",
];
const SCHEDULES: [&str; 2] = ["nightly", "hourly"];
/// The first schedule tick; each new scheduled run takes the next hour.
const FIRST_TICK: i64 = 1_795_228_200; // 2026-11-21T02:30:00Z

/// splitmix64: tiny, deterministic, good enough to plan runs and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A run id as the controller makes them (10 hex digits).
    fn run_id(&mut self) -> String {
        format!("{:010x}", self.next() & 0xff_ffff_ffff)
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid number")),
        Err(_) => default,
    }
}

/// The export the server sends: JSON lines, compressible like real data, never trivially.
fn body() -> Vec<u8> {
    let mut rng = Rng(7);
    let mut out = Vec::with_capacity(BODY_LEN + 128);
    let mut id = 0u64;
    while out.len() < BODY_LEN {
        let value = rng.next();
        writeln!(
            out,
            r#"{{"id":{id},"sku":"SKU-{:05}","price":{}.{:02},"stock":{},"tags":["{}"]}}"#,
            value % 40_000,
            (value >> 16) % 500,
            (value >> 32) % 100,
            (value >> 40) % 1000,
            ["red", "green", "blue", "bulk", "sale"][(value >> 50) as usize % 5],
        )
        .unwrap();
        id += 1;
    }
    out.truncate(BODY_LEN);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A loopback HTTP/1.1 server sending [`body`], at once or slowly; stops when dropped.
struct Server {
    addr: SocketAddr,
    slow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl Server {
    fn start(body: Arc<Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let slow = Arc::new(AtomicBool::new(false));
        let (stopped, slow_mode) = (stop.clone(), slow.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (body, slow) = (body.clone(), slow_mode.load(Ordering::SeqCst));
                thread::spawn(move || answer(stream, &body, slow));
            }
        });
        Server { addr, slow, stop }
    }

    fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::SeqCst);
    }
}

fn answer(stream: TcpStream, body: &[u8], slow: bool) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("authorization:")
            && line.trim_end().ends_with(&format!(" Bearer {TOKEN}"))
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
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(header.as_bytes()).is_err() {
        return;
    }
    if slow {
        for chunk in body.chunks(SLOW_CHUNK) {
            if stream.write_all(chunk).is_err() {
                return; // The run was killed.
            }
            thread::sleep(SLOW_PAUSE);
        }
    } else {
        let _ = stream.write_all(body);
    }
}

/// How one attempt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// SIGKILL this long after the start.
    After(Duration),
    /// Stop dead at this fault point (`STOWAGE_FAULT`).
    At(&'static str),
    /// No kill: the run must succeed.
    Never,
}

/// One attempt of one run, as a Job's pod would start it.
#[derive(Clone, Debug)]
struct Attempt {
    run_id: String,
    schedule: Option<&'static str>,
    tick: Option<String>,
    slow: bool,
}

impl Attempt {
    fn describe(&self) -> String {
        match (self.schedule, &self.tick) {
            (Some(schedule), Some(tick)) => format!("run {} of {schedule} at {tick}", self.run_id),
            _ => format!("on-demand run {}", self.run_id),
        }
    }
}

/// The test's scratch space: the store, the termination message, the last run's log.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn store(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("run.log")
    }

    fn termination(&self) -> PathBuf {
        self.dir.path().join("termination-log")
    }

    fn command(&self, server: &Server, attempt: &Attempt, fault: Option<&str>) -> Command {
        let config = serde_json::json!({
            "url": format!("http://{}/export", server.addr),
            "auth": {"bearer": {"tokenSecretRef": {"name": "api", "key": "token"}}},
            "artifactExtension": "json",
        });
        let bindings = stowage_plugin_sdk::secret_bindings(&config);
        assert_eq!(bindings.len(), 1);
        let mut command = Command::new(env!("CARGO_BIN_EXE_stowage"));
        command
            .args(["run", "backup"])
            .current_dir(self.dir.path())
            .env_clear()
            .env("STOWAGE_PLUGIN", "http")
            .env("STOWAGE_PLUGIN_CONFIG", config.to_string())
            .env("STOWAGE_NAMESPACE", "shop")
            .env("STOWAGE_TARGET", "exporter")
            .env("STOWAGE_RUN_ID", &attempt.run_id)
            .env("STOWAGE_COMPRESSION", "zstd")
            .env("STOWAGE_ARTIFACT_ROOT", self.store())
            .env("STOWAGE_TERMINATION_MESSAGE_PATH", self.termination())
            .env("STOWAGE_PROGRESS_INTERVAL", "0")
            .env(&bindings[0].env, TOKEN)
            .stdout(Stdio::null())
            .stderr(File::create(self.log()).unwrap());
        if let (Some(schedule), Some(tick)) = (attempt.schedule, &attempt.tick) {
            command
                .env("STOWAGE_SCHEDULE", schedule)
                .env("STOWAGE_SCHEDULED_TIME", tick);
        }
        if let Some(point) = fault {
            command.env("STOWAGE_FAULT", point);
        }
        command
    }

    /// Start `attempt` and end it as `kill` says; how it ended and how long it ran.
    fn run(&self, server: &Server, attempt: &Attempt, kill: Kill) -> (ExitStatus, Duration) {
        server.set_slow(attempt.slow);
        let fault = match kill {
            Kill::At(point) => Some(point),
            _ => None,
        };
        let started = Instant::now();
        let mut child = self.command(server, attempt, fault).spawn().unwrap();
        if let Kill::After(delay) = kill {
            thread::sleep(delay);
            // SIGKILL; harmless when the run is already over (it is not reaped yet).
            child.kill().unwrap();
        }
        let status = child.wait().unwrap();
        (status, started.elapsed())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

fn stowage(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
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

fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap()
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Identity of every file: inode and change time (a file removed and created again differs).
type Stamps = BTreeMap<PathBuf, (u64, i64, i64)>;

fn stamps(root: &Path) -> Stamps {
    files_under(root)
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(&path).ok()?;
            Some((path, (meta.ino(), meta.ctime(), meta.ctime_nsec())))
        })
        .collect()
}

/// What a sidecar says about its artifact.
struct SidecarFacts {
    run_id: String,
    stored_bytes: u64,
    raw_bytes: u64,
    sha256: String,
}

fn read_sidecar(path: &Path) -> SidecarFacts {
    let text = std::fs::read(path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("{} is not a whole sidecar: {e}", path.display()));
    SidecarFacts {
        run_id: json["runId"].as_str().unwrap().to_owned(),
        stored_bytes: json["storedBytes"].as_u64().unwrap(),
        raw_bytes: json["rawBytes"].as_u64().unwrap(),
        sha256: json["sha256"].as_str().unwrap().to_owned(),
    }
}

fn hash_file(path: &Path) -> (u64, String) {
    let mut file = File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    (size, format!("{:x}", hasher.finalize()))
}

/// Size and SHA-256 of what the zstd file at `path` decompresses to.
fn decompressed_digest(path: &Path) -> (u64, String) {
    let mut decoder = zstd::stream::read::Decoder::new(File::open(path).unwrap()).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = decoder
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{} does not decompress: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    (size, format!("{:x}", hasher.finalize()))
}

/// The store as [`check_store`] found it.
#[derive(Debug, Default)]
struct StoreState {
    /// Final-named artifacts (each with its sidecar, whole).
    artifacts: BTreeSet<PathBuf>,
    /// Interrupted commits: a sidecar, no artifact, and the run's partial file holding
    /// exactly the bytes the sidecar describes. Final name → partial file.
    interrupted: BTreeMap<PathBuf, PathBuf>,
    /// Partial files of artifacts (`<final>.<run>.partial`), with their run.
    partials: BTreeMap<PathBuf, String>,
    /// Temporary files of sidecars (`<final>.meta.json.<run>.partial`): a run killed
    /// while writing its sidecar.
    sidecar_temps: BTreeSet<PathBuf>,
    /// Sidecars, with the run that wrote them.
    sidecars: BTreeMap<PathBuf, String>,
}

/// Artifacts already proven whole: path → (size, mtime, inode) when they were.
type Proven = BTreeMap<PathBuf, (u64, i64, u64)>;

/// The invariant that must hold after every kill, checked file by file:
///
/// - a final-named artifact has its sidecar, and its size and SHA-256 are the sidecar's,
///   and it decompresses to exactly the server's body (so no final name ever holds a
///   partial file);
/// - a sidecar without its artifact is an interrupted commit: the run's partial file is
///   there and holds exactly the bytes the sidecar describes (the next run publishes it);
/// - anything else is a partial file: `<final>.<run>.partial` of an artifact, or the
///   `.partial` temporary file of a sidecar. Nothing else is in the store.
fn check_store(root: &Path, body: &(u64, String), proven: &mut Proven) -> StoreState {
    let mut state = StoreState::default();
    let files = files_under(root);
    for path in &files {
        let name = name_of(path);
        if let Some(stem) = name.strip_suffix(".partial") {
            let (final_name, run) = stem
                .rsplit_once('.')
                .unwrap_or_else(|| panic!("a partial file without a run: {}", path.display()));
            assert!(
                run.len() == 10 && run.bytes().all(|b| b.is_ascii_hexdigit()),
                "a partial file of an unknown run: {}",
                path.display()
            );
            if final_name.ends_with(".meta.json") {
                // The temporary file of a sidecar (`<sidecar>.<run>.partial`).
                state.sidecar_temps.insert(path.clone());
                continue;
            }
            assert!(
                final_name.ends_with(".json.zst"),
                "a partial file of no artifact: {}",
                path.display()
            );
            state.partials.insert(path.clone(), run.to_owned());
        } else if name.ends_with(".meta.json") {
            let facts = read_sidecar(path);
            state.sidecars.insert(path.clone(), facts.run_id.clone());
            let artifact = path.with_file_name(name.strip_suffix(".meta.json").unwrap());
            if artifact.exists() {
                continue; // Checked with the artifact.
            }
            let partial = with_suffix(&artifact, &format!(".{}.partial", facts.run_id));
            assert!(
                partial.exists(),
                "a sidecar without its artifact nor the run's partial file: {}",
                path.display()
            );
            let (size, sha) = hash_file(&partial);
            assert_eq!(
                (size, &sha),
                (facts.stored_bytes, &facts.sha256),
                "{}: an interrupted commit whose partial file is not what the sidecar describes",
                path.display()
            );
            state.interrupted.insert(artifact, partial);
        } else {
            assert!(
                name.ends_with(".json.zst"),
                "an unexpected file in the store: {}",
                path.display()
            );
            let sidecar = with_suffix(path, ".meta.json");
            assert!(
                sidecar.exists(),
                "a final-named artifact without its sidecar: {}",
                path.display()
            );
            let meta = std::fs::metadata(path).unwrap();
            let stamp = (meta.len(), meta.mtime(), meta.ino());
            if proven.get(path) != Some(&stamp) {
                let facts = read_sidecar(&sidecar);
                let (size, sha) = hash_file(path);
                assert_eq!(
                    (size, &sha),
                    (facts.stored_bytes, &facts.sha256),
                    "{}: a final-named artifact whose bytes are not its sidecar's",
                    path.display()
                );
                assert_eq!(
                    &decompressed_digest(path),
                    body,
                    "{}: not the server's body",
                    path.display()
                );
                assert_eq!(facts.raw_bytes, body.0, "{}", sidecar.display());
                proven.insert(path.clone(), stamp);
            }
            state.artifacts.insert(path.clone());
        }
    }
    proven.retain(|path, _| state.artifacts.contains(path));
    state
}

/// `stowage verify` on the store: every problem it reports must be one of the
/// interrupted commits [`check_store`] found, and it must count the same artifacts.
fn check_verify(root: &Path, state: &StoreState) {
    let output = stowage(&["verify", "-q", root.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PROBLEM  "))
        .collect();
    for problem in &problems {
        assert!(
            problem.contains(": interrupted commit: its sidecar exists"),
            "verify reports more than an interrupted commit: {problem}\n{stdout}"
        );
        assert!(
            state
                .interrupted
                .keys()
                .any(|final_path| problem.starts_with(&format!("{}: ", final_path.display()))),
            "verify reports an interrupted commit the store does not show: {problem}"
        );
    }
    assert_eq!(problems.len(), state.interrupted.len(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{} artifacts verified, {} problems",
            state.artifacts.len(),
            state.interrupted.len()
        )),
        "{stderr}"
    );
    let expected = if state.interrupted.is_empty() { 0 } else { 1 };
    assert_eq!(output.status.code(), Some(expected), "{stdout}{stderr}");
}

/// What one attempt left in the store, from the files it created (absent before it, or
/// created anew).
#[derive(Debug)]
struct Left {
    /// A partial file of the attempt's run.
    partial: bool,
    /// A sidecar of the attempt's run.
    sidecar: bool,
    /// Interrupted commits that were not there before.
    interrupted: Vec<PathBuf>,
    /// The temporary file of a sidecar.
    sidecar_temp: bool,
}

impl Left {
    fn find(
        run_id: &str,
        before: &StoreState,
        after: &StoreState,
        stamps_before: &Stamps,
        root: &Path,
    ) -> Left {
        let stamps_after = stamps(root);
        let made = |path: &PathBuf| stamps_after.get(path) != stamps_before.get(path);
        Left {
            partial: after
                .partials
                .iter()
                .any(|(path, run)| run == run_id && made(path)),
            sidecar: after
                .sidecars
                .iter()
                .any(|(path, run)| run == run_id && made(path)),
            interrupted: after
                .interrupted
                .keys()
                .filter(|k| !before.interrupted.contains_key(*k))
                .cloned()
                .collect(),
            sidecar_temp: after.sidecar_temps.iter().any(made),
        }
    }

    /// The attempt's artifact is or will be published (its sidecar was written).
    fn committed(&self) -> bool {
        self.sidecar
    }

    /// The attempt was past its recovery: it created its partial file, or more.
    fn past_recovery(&self) -> bool {
        self.partial || self.sidecar || self.sidecar_temp
    }
}

/// The counts printed at the end.
#[derive(Debug, Default)]
struct Counts {
    kills: usize,
    /// Random SIGKILLs by what the killed attempt had done: nothing yet (starting or
    /// recovering), writing its partial file, committing (writing its sidecar, or it was
    /// written but the artifact not yet published), everything.
    random_before_create: usize,
    random_mid_stream: usize,
    random_committing: usize,
    random_after_commit: usize,
    /// Random kills that came after the run had finished (not counted as kills).
    finished_first: usize,
    at_point: BTreeMap<&'static str, usize>,
    /// Interrupted commits completed by the attempt right after the one that left them.
    completed_by_next: usize,
    /// ... by a later one (the next was killed before its recovery).
    completed_later: usize,
    retries: usize,
}

impl Counts {
    fn random_kills(&self) -> usize {
        self.random_before_create
            + self.random_mid_stream
            + self.random_committing
            + self.random_after_commit
    }

    fn record_random_kill(&mut self, left: &Left) {
        self.kills += 1;
        let bucket = if !left.interrupted.is_empty() || (left.sidecar_temp && !left.sidecar) {
            &mut self.random_committing
        } else if left.sidecar {
            &mut self.random_after_commit
        } else if left.partial {
            &mut self.random_mid_stream
        } else {
            &mut self.random_before_create
        };
        *bucket += 1;
    }

    fn line(
        &self,
        seed: u64,
        leftovers: usize,
        artifacts: usize,
        attempts: usize,
        took: Duration,
    ) -> String {
        let points: Vec<String> = FAULT_POINTS
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    self.at_point.get(p).copied().unwrap_or(0),
                    label(p)
                )
            })
            .collect();
        format!(
            "runner faults: {} kills (seed {seed}): {} SIGKILLs at random times \
             ({} before create, {} mid-stream, {} during commit, {} after commit), {}; \
             {} retries of a killed run; {} interrupted commits completed by the next run, {} by a later one; \
             {leftovers} partial files of never-retried runs removed by repair; \
             verify: {artifacts} artifacts ok, 0 problems ({attempts} attempts in {:.0}s, {} finished before their kill)",
            self.kills,
            self.random_kills(),
            self.random_before_create,
            self.random_mid_stream,
            self.random_committing,
            self.random_after_commit,
            points.join(", "),
            self.retries,
            self.completed_by_next,
            self.completed_later,
            took.as_secs_f64(),
            self.finished_first,
        )
    }
}

fn label(point: &str) -> &'static str {
    match point {
        "backup-after-create" => "after create",
        "backup-before-commit" => "before commit",
        "commit-after-sidecar" => "between sidecar and artifact",
        _ => "after commit",
    }
}

/// What a run stopped at `point` must have left; whether it will make an artifact.
fn check_fault_kill(
    point: &str,
    status: ExitStatus,
    log: &str,
    left: &Left,
    attempt: &Attempt,
) -> bool {
    assert_eq!(
        status.signal(),
        Some(6),
        "{} with STOWAGE_FAULT={point} ended with {status}, not at the point: {log}",
        attempt.describe()
    );
    assert!(
        log.contains(&format!("fault injection: stopping dead at {point}")),
        "{log}"
    );
    match point {
        "backup-after-create" | "backup-before-commit" => {
            assert!(left.partial && !left.sidecar, "{point}: {left:?}");
            false
        }
        "commit-after-sidecar" => {
            assert!(
                left.sidecar && left.interrupted.len() == 1,
                "{point}: {left:?}"
            );
            true
        }
        _ => {
            assert!(
                left.sidecar && left.interrupted.is_empty(),
                "{point}: {left:?}"
            );
            true
        }
    }
}

/// The next attempt: the last killed run's retry (a Job's next pod: same run id, same
/// tick), or a new run, scheduled by one of two schedules or on demand; ended by a
/// SIGKILL within its duration or at the next fault point in turn.
fn plan(
    rng: &mut Rng,
    killed: Option<Attempt>,
    next_tick: &mut dyn FnMut() -> String,
    next_point: &mut usize,
    durations: (Duration, Duration),
) -> (Attempt, Kill, bool) {
    let (attempt, retry) = match killed {
        Some(last) if rng.percent(35) => {
            let slow = rng.percent(60);
            (Attempt { slow, ..last }, true)
        }
        _ => {
            let schedule = match rng.below(3) {
                0 => None,
                n => Some(SCHEDULES[n as usize - 1]),
            };
            let attempt = Attempt {
                run_id: rng.run_id(),
                schedule,
                tick: schedule.map(|_| next_tick()),
                slow: rng.percent(60),
            };
            (attempt, false)
        }
    };
    let kill = if rng.percent(40) {
        let runtime = if attempt.slow {
            durations.1
        } else {
            durations.0
        };
        let millis = u64::try_from(runtime.as_millis()).unwrap().max(1);
        Kill::After(Duration::from_millis(rng.below(millis)))
    } else {
        let point = FAULT_POINTS[*next_point % FAULT_POINTS.len()];
        *next_point += 1;
        Kill::At(point)
    };
    (attempt, kill, retry)
}

#[test]
fn killed_runs_never_leave_a_partial_file_under_a_final_name() {
    let kills: usize = env_or("STOWAGE_FAULT_KILLS", DEFAULT_KILLS);
    let seed: u64 = env_or("STOWAGE_FAULT_SEED", DEFAULT_SEED);
    println!("runner faults: {kills} kills, seed {seed} (STOWAGE_FAULT_KILLS, STOWAGE_FAULT_SEED)");
    let mut rng = Rng(seed);
    let body = Arc::new(body());
    let body_digest = (body.len() as u64, sha256_hex(&body));
    let server = Server::start(body.clone());
    let scratch = Scratch {
        dir: tempfile::tempdir().unwrap(),
    };
    let store = scratch.store();
    let mut proven = Proven::new();
    let mut counts = Counts::default();
    let mut tick = FIRST_TICK;
    let mut next_tick = move || {
        tick += 3600;
        jiff::Timestamp::from_second(tick).unwrap().to_string()
    };

    // Two runs that are not killed: the store holds artifacts from the start, and their
    // durations (body at once, body slowly) bound the random delays.
    let durations = [false, true].map(|slow| {
        let attempt = Attempt {
            run_id: rng.run_id(),
            schedule: Some(SCHEDULES[0]),
            tick: Some(next_tick()),
            slow,
        };
        let (status, took) = scratch.run(&server, &attempt, Kill::Never);
        assert!(status.success(), "{status}: {}", scratch.log_text());
        took
    });
    let mut expected_artifacts = 2;
    let mut state = check_store(&store, &body_digest, &mut proven);
    assert_eq!(state.artifacts.len(), 2);
    check_verify(&store, &state);

    // Killed runs never retried since: no later run can know they are over.
    let mut never_retried: BTreeSet<String> = BTreeSet::new();
    let mut killed: Option<Attempt> = None;
    // Interrupted commits not completed yet, with the attempt that left them.
    let mut interrupted_at: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut next_point = 0usize;
    let started = Instant::now();
    let mut attempts = 0usize;
    while counts.kills < kills {
        attempts += 1;
        assert!(
            attempts <= 2 * kills + 10,
            "{attempts} attempts for {} kills: the runs finish before their random kills",
            counts.kills
        );
        let (attempt, kill, retry) = plan(
            &mut rng,
            killed.take(),
            &mut next_tick,
            &mut next_point,
            (durations[0], durations[1]),
        );
        if retry {
            counts.retries += 1;
            never_retried.remove(&attempt.run_id);
        }
        let before = state;
        let stamps_before = stamps(&store);
        let (status, _) = scratch.run(&server, &attempt, kill);
        let log = scratch.log_text();
        // The invariant, at once.
        state = check_store(&store, &body_digest, &mut proven);
        check_verify(&store, &state);

        let left = Left::find(&attempt.run_id, &before, &state, &stamps_before, &store);
        match kill {
            Kill::At(point) => {
                counts.kills += 1;
                *counts.at_point.entry(point).or_default() += 1;
                if check_fault_kill(point, status, &log, &left, &attempt) {
                    expected_artifacts += 1;
                }
            }
            Kill::After(_) if status.success() => {
                assert!(
                    left.sidecar && left.interrupted.is_empty(),
                    "{left:?}: {log}"
                );
                counts.finished_first += 1;
                expected_artifacts += 1;
            }
            Kill::After(_) => {
                assert_eq!(status.signal(), Some(9), "{status}: {log}");
                counts.record_random_kill(&left);
                if left.committed() {
                    expected_artifacts += 1;
                }
            }
            Kill::Never => unreachable!("every attempt in the loop is killed"),
        }

        // The interrupted commits of earlier attempts are completed by the next one as
        // soon as it is past its recovery (every fault point is; a random kill may come
        // before, then a later attempt completes them).
        interrupted_at.retain(|final_path, at| {
            if !state.artifacts.contains(final_path) {
                return true;
            }
            if *at + 1 == attempts {
                counts.completed_by_next += 1;
            } else {
                counts.completed_later += 1;
            }
            false
        });
        if matches!(kill, Kill::At(_)) || left.past_recovery() {
            assert!(
                before
                    .interrupted
                    .keys()
                    .all(|k| state.artifacts.contains(k)),
                "{} got past its recovery and left interrupted commits: {:?}",
                attempt.describe(),
                state.interrupted
            );
        }
        for final_path in &left.interrupted {
            interrupted_at.insert(final_path.clone(), attempts);
        }
        if !status.success() {
            never_retried.insert(attempt.run_id.clone());
            killed = Some(attempt);
        }
    }
    let loop_time = started.elapsed();

    // One more run, which succeeds: a new run (the next tick's). It completes every
    // interrupted commit left, but removes no partial file of another run: nothing
    // proves those runs over.
    let last = Attempt {
        run_id: rng.run_id(),
        schedule: Some(SCHEDULES[1]),
        tick: Some(next_tick()),
        slow: false,
    };
    let (status, _) = scratch.run(&server, &last, Kill::Never);
    assert!(status.success(), "{status}: {}", scratch.log_text());
    expected_artifacts += 1;
    state = check_store(&store, &body_digest, &mut proven);
    check_verify(&store, &state);
    assert!(state.interrupted.is_empty(), "{:?}", state.interrupted);
    for at in interrupted_at.values() {
        if *at == attempts {
            counts.completed_by_next += 1;
        } else {
            counts.completed_later += 1;
        }
    }

    // What is left are the partial files of killed runs that were never retried (a
    // retry, same run id, removes its run's own): for all a run knows they belong to runs
    // still writing on another node, so only their age can prove them over (24 hours).
    // (Also the temporary file of a sidecar, if a kill came while it was written.) This
    // test knows all those processes are dead: repair with no grace period removes them.
    for (path, run) in &state.partials {
        assert!(
            never_retried.contains(run),
            "{} is left although its run {run} was retried",
            path.display()
        );
    }
    let repair = stowage(&[
        "artifacts",
        "repair",
        "--stale-after-seconds",
        "0",
        store.to_str().unwrap(),
    ]);
    assert!(repair.status.success(), "{repair:?}");
    let repair_stderr = String::from_utf8_lossy(&repair.stderr);
    let leftovers = state.partials.len() + state.sidecar_temps.len();
    assert!(
        repair_stderr.contains(&format!("0 commits completed, {leftovers} files removed")),
        "{repair_stderr}"
    );
    let remaining: Vec<PathBuf> = files_under(&store)
        .into_iter()
        .filter(|p| name_of(p).ends_with(".partial"))
        .collect();
    assert!(
        remaining.is_empty(),
        "partial files after repair: {remaining:?}"
    );

    // verify finds every artifact whole, and each decompresses to the server's body.
    let verified = stowage(&["verify", store.to_str().unwrap()]);
    let verify_stderr = String::from_utf8_lossy(&verified.stderr);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}{verify_stderr}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(
        verify_stderr.contains(&format!(
            "{expected_artifacts} artifacts verified, 0 problems"
        )),
        "{verify_stderr}"
    );
    let finals = check_store(&store, &body_digest, &mut Proven::new());
    assert_eq!(finals.artifacts.len(), expected_artifacts);
    assert!(finals.partials.is_empty() && finals.sidecar_temps.is_empty());
    for artifact in &finals.artifacts {
        assert_eq!(
            &decompressed_digest(artifact),
            &body_digest,
            "{}",
            artifact.display()
        );
    }

    println!(
        "{}",
        counts.line(seed, leftovers, finals.artifacts.len(), attempts, loop_time)
    );
    if counts.kills >= 3 * FAULT_POINTS.len() {
        for point in FAULT_POINTS {
            assert!(
                counts.at_point.get(point).copied().unwrap_or(0) >= 2,
                "{point} was not hit twice: {:?}",
                counts.at_point
            );
        }
    }
}
