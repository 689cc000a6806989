//! The runner benchmark: `stowage run backup` against the plain shell pipeline that does
//! the same job, side by side in one run, on loopback only.
//!
//! ```sh
//! cargo bench --bench runner
//! ```
//!
//! Two comparisons, each over several pairs alternating the order (A B, B A, ...) so that a
//! drift of the machine (other builds, the page cache) weighs on both sides:
//!
//! - **postgres**: `stowage run backup` of the postgres plugin (zstd) against
//!   `pg_dump -Fc -Z0 | zstd -3 -T0 > file`, on a database whose plain dump is at least
//!   1 GiB, served by a PostgreSQL this benchmark starts on 127.0.0.1;
//! - **http**: `stowage run backup` of the http plugin (zstd) against
//!   `curl -s URL | zstd -3 -T0 > file`, from an HTTP server this benchmark starts on
//!   127.0.0.1, serving that database's plain SQL dump (realistic, compressible text).
//!
//! For each pair and as medians it prints the wall time of each side and their ratio, the
//! peak RSS of the processes that matter (the stowage process itself against zstd; pg_dump
//! and curl for reference), the CPU time of each side, and the artifacts' sizes and
//! difference. It never fails on the figures: performance is measured, not asserted, and
//! the process exits 0 whatever they are (it panics only when a side fails to run).
//!
//! Knobs (environment variables):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `STOWAGE_BENCH_PAIRS` | `5` | timed pairs per comparison |
//! | `STOWAGE_BENCH_WARMUP` | `1` | untimed pairs first (page cache, binaries) |
//! | `STOWAGE_BENCH_DUMP_MIB` | `1100` | size of the plain dump to generate, in MiB |
//! | `STOWAGE_BENCH_ONLY` | both | `postgres` or `http`: run one comparison |
//! | `STOWAGE_BENCH_DATA` | `$TMPDIR/stowage-bench-runner` | where the generated database and its plain dump are kept between runs |
//! | `STOWAGE_BENCH_CLEAN` | unset | `1`: remove that directory at the end |
//! | `STOWAGE_BENCH_STOWAGE` | this build's `stowage` | another `stowage` binary to measure (e.g. a copy of an older build, to compare before and after a change) |
//!
//! The database is generated once (a few minutes) and kept in `STOWAGE_BENCH_DATA`, outside
//! the clone, with its plain dump (the HTTP body); about 3 GB. That directory must be
//! reachable by the unprivileged user PostgreSQL runs as when the benchmark runs as root,
//! hence not under `/root`. Peak RSS comes from `wait4` for the pipeline's processes; for
//! stowage it is its own `VmHWM` sampled every 10 ms (`wait4` would also count the pg_dump
//! it runs).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stowage_testenv::postgres::{PgServer, SECRET_KEY, SECRET_NAME, server_bin_dir};

const MIB: f64 = 1024.0 * 1024.0;
/// The benchmark database's superuser password (loopback only, a throwaway cluster).
const PASSWORD: &str = "stowage-bench";
/// The database the benchmark dumps.
const DATABASE: &str = "bench";
/// Bump when the generated data changes, so a kept cluster is regenerated.
const DATA_VERSION: u32 = 1;
/// Rows inserted per statement while generating.
const BATCH_ROWS: u64 = 500_000;

/// The knobs, from the environment.
struct Knobs {
    pairs: usize,
    warmup: usize,
    dump_bytes: u64,
    data_dir: PathBuf,
    postgres: bool,
    http: bool,
    clean: bool,
    stowage: PathBuf,
}

impl Knobs {
    fn from_env() -> Knobs {
        let number = |name: &str, default: u64| -> u64 {
            match std::env::var(name) {
                Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                    panic!("{name}={text:?} is not a whole number; unset it for {default}")
                }),
                Err(_) => default,
            }
        };
        let only = std::env::var("STOWAGE_BENCH_ONLY").unwrap_or_default();
        let (postgres, http) = match only.as_str() {
            "" => (true, true),
            "postgres" => (true, false),
            "http" => (false, true),
            other => panic!("STOWAGE_BENCH_ONLY={other:?}: use postgres or http, or unset it"),
        };
        Knobs {
            pairs: number("STOWAGE_BENCH_PAIRS", 5).max(1) as usize,
            warmup: number("STOWAGE_BENCH_WARMUP", 1) as usize,
            dump_bytes: number("STOWAGE_BENCH_DUMP_MIB", 1100) * 1024 * 1024,
            data_dir: std::env::var_os("STOWAGE_BENCH_DATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("stowage-bench-runner")),
            postgres,
            http,
            clean: std::env::var("STOWAGE_BENCH_CLEAN").is_ok_and(|v| v == "1"),
            stowage: std::env::var_os("STOWAGE_BENCH_STOWAGE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stowage"))),
        }
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "runner benchmark: {cores} cores, load average {}, {} pairs after {} warm-up, data in {}",
        load_average(),
        knobs.pairs,
        knobs.warmup,
        knobs.data_dir.display()
    );
    println!("stowage: {}", knobs.stowage.display());
    let server = PgServer::start_in(&knobs.data_dir.join("cluster"), PASSWORD);
    let body = ensure_data(&server, &knobs);
    let scratch = knobs.data_dir.join("runs");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).expect("create the runs directory");
    let tools = server_bin_dir();

    if knobs.postgres {
        let stowage = StowageSide::postgres(&knobs.stowage, &server, &tools);
        let pipeline = Pipeline::PgDump {
            pg_dump: tools.join("pg_dump"),
            port: server.port,
        };
        compare(
            "postgres",
            "pg_dump -Fc -Z0 | zstd -3 -T0",
            &stowage,
            &pipeline,
            &knobs,
            &scratch,
        );
    }
    if knobs.http {
        let http = HttpServer::start(body);
        let url = format!("http://127.0.0.1:{}/export.sql", http.port);
        let stowage = StowageSide::http(&knobs.stowage, &url);
        let pipeline = Pipeline::Curl { url };
        compare(
            "http",
            "curl -s URL | zstd -3 -T0",
            &stowage,
            &pipeline,
            &knobs,
            &scratch,
        );
        http.stop();
    }
    let _ = fs::remove_dir_all(&scratch);
    drop(server);
    if knobs.clean {
        let _ = fs::remove_dir_all(&knobs.data_dir);
        println!("removed {}", knobs.data_dir.display());
    }
    println!("load average at the end {}", load_average());
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

// ---- data -------------------------------------------------------------------------------

/// Make sure the database holds at least `knobs.dump_bytes` of plain dump, and its plain
/// dump file (the HTTP body) is next to it; the body's path.
fn ensure_data(server: &PgServer, knobs: &Knobs) -> PathBuf {
    let body = knobs.data_dir.join("export.sql");
    let marker = knobs.data_dir.join("data.json");
    let wanted = json!({"version": DATA_VERSION, "dumpBytes": knobs.dump_bytes});
    let kept = fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    if kept.as_ref() == Some(&wanted) && body.exists() {
        let size = fs::metadata(&body).map_or(0, |m| m.len());
        println!(
            "data: kept, plain dump {:.0} MiB ({})",
            size as f64 / MIB,
            body.display()
        );
        return body;
    }
    let _ = fs::remove_file(&marker);
    let started = Instant::now();
    println!(
        "data: generating a database whose plain dump is at least {:.0} MiB (once)",
        knobs.dump_bytes as f64 / MIB
    );
    server.psql("postgres", &format!("drop database if exists {DATABASE}"));
    server.psql("postgres", &format!("create database {DATABASE}"));
    server.psql(DATABASE, CREATE_TABLE);
    // Estimate the rows needed from a sample, then fill up; dump; top up if short.
    insert_rows(server, 1, 20_000);
    let sample: f64 = server
        .psql(
            DATABASE,
            "select sum(octet_length(o::text)) from orders o where id <= 20000",
        )
        .trim()
        .parse()
        .expect("the sample's size");
    let per_row = (sample / 20_000.0).max(1.0);
    let mut rows = 20_000u64;
    let mut target_rows = (knobs.dump_bytes as f64 / per_row * 1.02) as u64;
    loop {
        while rows < target_rows {
            let to = (rows + BATCH_ROWS).min(target_rows);
            insert_rows(server, rows + 1, to);
            rows = to;
            print!(
                "\rdata: {rows} rows ({:.0}%)",
                100.0 * rows as f64 / target_rows as f64
            );
            let _ = std::io::stdout().flush();
        }
        println!();
        server.psql(DATABASE, "vacuum analyze orders");
        server.psql(DATABASE, "checkpoint");
        let size = plain_dump(server, &body);
        println!("data: {rows} rows, plain dump {:.0} MiB", size as f64 / MIB);
        if size >= knobs.dump_bytes {
            break;
        }
        let per_row = size as f64 / rows as f64;
        target_rows = rows + ((knobs.dump_bytes - size) as f64 / per_row * 1.02) as u64 + 1;
    }
    fs::write(&marker, wanted.to_string()).expect("write the data marker");
    println!("data: ready in {:.0} s", started.elapsed().as_secs_f64());
    body
}

/// Orders: ids, names, e-mail addresses, times, a status, amounts, a JSON document and a
/// free-text note: about as compressible as an application's database (zstd -3: ~2.5x).
const CREATE_TABLE: &str = "create table orders (
    id bigint not null,
    customer text not null,
    email text not null,
    created timestamptz not null,
    status text not null,
    amount numeric(12, 2) not null,
    items jsonb not null,
    note text
)";

fn insert_rows(server: &PgServer, from: u64, to: u64) {
    server.psql(
        DATABASE,
        &format!(
            "insert into orders
             select g,
                    (array['Ada','Grace','Alan','Edsger','Barbara','Donald','Ken','Margaret',
                           'Niklaus','John','Frances','Leslie'])[1 + (g * 7919) % 12]
                      || ' ' || (array['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth',
                           'Thompson','Hamilton','Wirth','Backus','Allen','Lamport'])[1 + (g * 104729) % 12]
                      || ' ' || (g * 2654435761 % 100003),
                    'user' || (g * 48271 % 1000003) || '@mail' || (g % 97) || '.example.com',
                    timestamptz '2024-01-01 00:00:00+00' + g * interval '1.731 seconds',
                    (array['new','paid','shipped','delivered','returned','cancelled'])[1 + (g * 31) % 6],
                    ((g * 69621) % 2000000) / 100.0,
                    jsonb_build_object(
                        'sku', 'SKU-' || lpad(((g * 16807) % 50000)::text, 6, '0'),
                        'qty', 1 + (g * 13) % 9,
                        'warehouse', (array['ams','fra','par','lon','waw'])[1 + g % 5],
                        'tags', jsonb_build_array('t' || (g % 13), 't' || (g % 29))),
                    case when g % 4 = 0 then null
                         else 'ref ' || md5(g::text) || ' ' || substr(md5((g * 3)::text), 1, (g % 24)::int)
                    end
             from generate_series({from}::bigint, {to}::bigint) g"
        ),
    );
}

/// Write the database's plain dump to `path`; its size.
fn plain_dump(server: &PgServer, path: &Path) -> u64 {
    let file = File::create(path).expect("create the plain dump");
    let status = Command::new(server_bin_dir().join("pg_dump"))
        .args(["-Fp", "--no-password"])
        .envs(pg_env(server.port))
        .stdout(file)
        .status()
        .expect("run pg_dump");
    assert!(status.success(), "pg_dump -Fp failed: {status}");
    fs::metadata(path).map_or(0, |m| m.len())
}

fn pg_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".to_owned()),
        ("PGDATABASE", DATABASE.to_owned()),
        ("PGPASSWORD", PASSWORD.to_owned()),
    ]
}

// ---- the HTTP server --------------------------------------------------------------------

/// A loopback HTTP/1.1 server answering `GET /export.sql` with a file (sent with
/// `sendfile`, so the server costs little CPU).
struct HttpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl HttpServer {
    fn start(body: PathBuf) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let body = body.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &body);
                });
            }
        });
        HttpServer { port, stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = self.thread.join();
    }
}

fn serve(mut stream: TcpStream, body: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if path != "/export.sql" || !matches!(method, "GET" | "HEAD") {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let mut file = File::open(body)?;
    let length = file.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/sql\r\ncontent-length: {length}\r\n\
         connection: close\r\n\r\n"
    )?;
    if method == "GET" {
        std::io::copy(&mut file, &mut stream)?;
    }
    Ok(())
}

// ---- the two sides ----------------------------------------------------------------------

/// `stowage run backup` with one plugin, as a Job runs it (env only).
struct StowageSide {
    binary: PathBuf,
    env: Vec<(String, String)>,
}

impl StowageSide {
    fn postgres(binary: &Path, server: &PgServer, tools: &Path) -> StowageSide {
        let config = server.config_json(Some(DATABASE));
        let mut side = StowageSide::new(binary, "postgres", &config);
        side.env.push((
            "STOWAGE_POSTGRES_TOOLS_PATH".into(),
            tools.display().to_string(),
        ));
        side
    }

    fn http(binary: &Path, url: &str) -> StowageSide {
        StowageSide::new(
            binary,
            "http",
            &json!({"url": url, "artifactExtension": "sql"}),
        )
    }

    fn new(binary: &Path, plugin: &str, config: &Value) -> StowageSide {
        let mut env = vec![
            ("STOWAGE_PLUGIN".to_owned(), plugin.to_owned()),
            ("STOWAGE_PLUGIN_CONFIG".to_owned(), config.to_string()),
            ("STOWAGE_NAMESPACE".to_owned(), "bench".to_owned()),
            ("STOWAGE_TARGET".to_owned(), plugin.to_owned()),
            ("STOWAGE_COMPRESSION".to_owned(), "zstd".to_owned()),
        ];
        for binding in stowage_plugin_sdk::secret_bindings(config) {
            assert_eq!(
                (
                    binding.reference.name.as_str(),
                    binding.reference.key.as_str()
                ),
                (SECRET_NAME, SECRET_KEY)
            );
            env.push((binding.env, PASSWORD.to_owned()));
        }
        StowageSide {
            binary: binary.to_owned(),
            env,
        }
    }

    fn run(&self, dir: &Path, run_id: &str) -> Measured {
        let root = dir.join("store");
        fs::create_dir_all(&root).expect("create the store root");
        let termination = dir.join("termination-log");
        let started = Instant::now();
        let child = Command::new(&self.binary)
            .args(["run", "backup"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("STOWAGE_RUN_ID", run_id)
            .env("STOWAGE_ARTIFACT_ROOT", &root)
            .env("STOWAGE_TERMINATION_MESSAGE_PATH", &termination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("stowage.log")).expect("create the run's log"))
            .spawn()
            .expect("start stowage");
        let sampler = HwmSampler::start(child.id());
        let ended = wait(child);
        let wall = started.elapsed();
        let own_peak = sampler.stop();
        let result: Value = fs::read(&termination)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        assert!(
            ended.success && result["outcome"] == "ok",
            "stowage run backup failed ({result}); see {}",
            dir.join("stowage.log").display()
        );
        let artifact = root.join(result["artifact"].as_str().expect("the artifact's path"));
        let bytes = fs::metadata(&artifact).map_or(0, |m| m.len());
        assert_eq!(result["storedBytes"].as_u64(), Some(bytes));
        Measured {
            wall,
            cpu: ended.cpu,
            peak_kib: own_peak.max(1),
            tool_peak_kib: 0,
            bytes,
        }
    }
}

/// The plain pipeline.
enum Pipeline {
    /// `pg_dump -Fc -Z0 | zstd -3 -T0 > file`.
    PgDump { pg_dump: PathBuf, port: u16 },
    /// `curl -s URL | zstd -3 -T0 > file`.
    Curl { url: String },
}

impl Pipeline {
    fn run(&self, dir: &Path) -> Measured {
        fs::create_dir_all(dir).expect("create the pipeline's directory");
        let out = dir.join("artifact.zst");
        let started = Instant::now();
        let mut producer = match self {
            Pipeline::PgDump { pg_dump, port } => {
                let mut command = Command::new(pg_dump);
                command
                    .args(["-Fc", "-Z0", "--no-password"])
                    .envs(pg_env(*port));
                command
            }
            Pipeline::Curl { url } => {
                let mut command = Command::new("curl");
                command.args(["-s", url]);
                command
            }
        };
        let mut producer = producer
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the producer (pg_dump or curl)");
        let pipe = producer.stdout.take().expect("the producer's stdout");
        let zstd = Command::new("zstd")
            .args(["-3", "-T0", "-q", "-c"])
            .stdin(pipe)
            .stdout(File::create(&out).expect("create the pipeline's file"))
            .spawn()
            .expect("start zstd (apt-get install zstd)");
        let produced = wait(producer);
        let compressed = wait(zstd);
        let wall = started.elapsed();
        assert!(
            produced.success && compressed.success,
            "the pipeline failed"
        );
        Measured {
            wall,
            cpu: produced.cpu + compressed.cpu,
            peak_kib: compressed.peak_kib,
            tool_peak_kib: produced.peak_kib,
            bytes: fs::metadata(&out).map_or(0, |m| m.len()),
        }
    }
}

/// One side's figures.
#[derive(Clone, Copy)]
struct Measured {
    wall: Duration,
    /// User + system CPU of the side's processes (stowage: with its children).
    cpu: Duration,
    /// stowage itself, or zstd.
    peak_kib: u64,
    /// The producer (pg_dump or curl) of the pipeline.
    tool_peak_kib: u64,
    bytes: u64,
}

/// How a process ended, from `wait4`.
struct Ended {
    success: bool,
    cpu: Duration,
    peak_kib: u64,
}

/// Reap `child` with `wait4`: its exit status, CPU time and peak RSS (`ru_maxrss`, which
/// also covers the children it reaped).
fn wait(child: Child) -> Ended {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 writes into both out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's Child is not waited on
        // and is dropped without waiting); the pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {error}"
        );
    }
    drop(child);
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ended {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        peak_kib: usage.ru_maxrss as u64,
    }
}

/// Samples a process's own peak RSS (`VmHWM`, monotonic) every 10 ms until stopped.
struct HwmSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl HwmSampler {
    fn start(pid: u32) -> HwmSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (stopping, seen) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !stopping.load(Ordering::SeqCst) {
                if let Some(kib) = fs::read_to_string(&path).ok().and_then(|s| vm_hwm(&s)) {
                    seen.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        HwmSampler { stop, peak, thread }
    }

    /// The highest `VmHWM` seen, in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        self.peak.load(Ordering::SeqCst)
    }
}

fn vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

// ---- comparing --------------------------------------------------------------------------

/// Goals of the runner (docs/performance.md).
const GOAL_WALL_RATIO: f64 = 1.05;
const GOAL_PEAK_MIB: f64 = 64.0;
const GOAL_SIZE_PERCENT: f64 = 2.0;

fn compare(
    name: &str,
    plain: &str,
    stowage: &StowageSide,
    pipeline: &Pipeline,
    knobs: &Knobs,
    scratch: &Path,
) {
    println!();
    let producer = match pipeline {
        Pipeline::PgDump { .. } => "pg_dump",
        Pipeline::Curl { .. } => "curl",
    };
    println!("== {name}: stowage run backup (zstd) vs {plain}");
    println!(
        "   A = stowage, B = the pipeline; seconds of wall and CPU (user+system; A counts the \
         tool it runs, B the tool and zstd; cpu_r = A/B), peak RSS in MiB (rss_tool: \
         {producer}), sizes in MB (10^6)"
    );
    println!(
        "{:<6} {:>5} {:>9} {:>9} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "pair",
        "order",
        "stowage_s",
        "plain_s",
        "ratio",
        "cpu_st_s",
        "cpu_pl_s",
        "cpu_r",
        "rss_st",
        "rss_zstd",
        "rss_tool",
        "size_st_MB",
        "size_pl_MB",
        "diff%"
    );
    let mut rows: Vec<(Measured, Measured)> = Vec::new();
    for i in 0..knobs.warmup + knobs.pairs {
        let warm = i < knobs.warmup;
        let dir = scratch.join(format!("{name}-{i}"));
        let stowage_first = i % 2 == 0;
        let run_id = format!("bench-{i}");
        let (a, b) = if stowage_first {
            let a = stowage.run(&dir.join("stowage"), &run_id);
            let b = pipeline.run(&dir.join("plain"));
            (a, b)
        } else {
            let b = pipeline.run(&dir.join("plain"));
            let a = stowage.run(&dir.join("stowage"), &run_id);
            (a, b)
        };
        let _ = fs::remove_dir_all(&dir);
        let label = if warm {
            "warm".to_owned()
        } else {
            (i - knobs.warmup + 1).to_string()
        };
        print_row(&label, if stowage_first { "AB" } else { "BA" }, &a, &b);
        if !warm {
            rows.push((a, b));
        }
    }
    let med = |f: &dyn Fn(&(Measured, Measured)) -> f64| median(rows.iter().map(f).collect());
    let wall_a = med(&|r| r.0.wall.as_secs_f64());
    let wall_b = med(&|r| r.1.wall.as_secs_f64());
    let ratio = med(&|r| r.0.wall.as_secs_f64() / r.1.wall.as_secs_f64());
    let rss_a = med(&|r| r.0.peak_kib as f64 / 1024.0);
    let rss_max = rows.iter().map(|r| r.0.peak_kib).max().unwrap_or(0) as f64 / 1024.0;
    let rss_b = med(&|r| r.1.peak_kib as f64 / 1024.0);
    let diff = med(&|r| size_diff(&r.0, &r.1));
    println!(
        "{:<6} {:>5} {:>9.2} {:>9.2} {:>6.3} {:>8.2} {:>8.2} {:>6.3} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>+6.2}",
        "median",
        "",
        wall_a,
        wall_b,
        ratio,
        med(&|r| r.0.cpu.as_secs_f64()),
        med(&|r| r.1.cpu.as_secs_f64()),
        med(&|r| cpu_ratio(&r.0, &r.1)),
        rss_a,
        rss_b,
        med(&|r| r.1.tool_peak_kib as f64 / 1024.0),
        med(&|r| r.0.bytes as f64 / 1e6),
        med(&|r| r.1.bytes as f64 / 1e6),
        diff
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goals: wall ratio {ratio:.3} <= {GOAL_WALL_RATIO} {}; stowage peak RSS {rss_max:.1} MiB \
         (max) <= {GOAL_PEAK_MIB} MiB {}; artifact size {diff:+.2}% within {GOAL_SIZE_PERCENT}% {}",
        verdict(ratio <= GOAL_WALL_RATIO),
        verdict(rss_max <= GOAL_PEAK_MIB),
        verdict(diff.abs() <= GOAL_SIZE_PERCENT),
    );
}

fn print_row(label: &str, order: &str, a: &Measured, b: &Measured) {
    println!(
        "{:<6} {:>5} {:>9.2} {:>9.2} {:>6.3} {:>8.2} {:>8.2} {:>6.3} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>+6.2}",
        label,
        order,
        a.wall.as_secs_f64(),
        b.wall.as_secs_f64(),
        a.wall.as_secs_f64() / b.wall.as_secs_f64(),
        a.cpu.as_secs_f64(),
        b.cpu.as_secs_f64(),
        cpu_ratio(a, b),
        a.peak_kib as f64 / 1024.0,
        b.peak_kib as f64 / 1024.0,
        b.tool_peak_kib as f64 / 1024.0,
        a.bytes as f64 / 1e6,
        b.bytes as f64 / 1e6,
        size_diff(a, b)
    );
}

/// stowage's CPU time (with the tool it ran) over the pipeline's (tool and zstd).
fn cpu_ratio(a: &Measured, b: &Measured) -> f64 {
    a.cpu.as_secs_f64() / b.cpu.as_secs_f64().max(1e-9)
}

/// How much bigger stowage's artifact is than the pipeline's, in percent.
fn size_diff(a: &Measured, b: &Measured) -> f64 {
    (a.bytes as f64 - b.bytes as f64) / (b.bytes as f64).max(1.0) * 100.0
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
