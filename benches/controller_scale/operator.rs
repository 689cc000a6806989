//! The operator under test: the release `stowage controller` as a child process,
//! logging to a file, with its `/readyz` and `/metrics` on a loopback port. Like a
//! Deployment's pod, it is started again when it exits on its own (after
//! [`RESTART_DELAY`], the kubelet's first back-off); the exits are counted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stowage_testenv::bench::api_metrics::samples;
use stowage_testenv::bench::procfs::{MemoryUse, memory_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BenchError;
use crate::report::progress;

/// The identity the operator runs under in its Lease.
const IDENTITY: &str = "stowage-bench";
/// How long after exiting on its own the operator is started again (the kubelet's first
/// CrashLoopBackOff delay).
pub const RESTART_DELAY: Duration = Duration::from_secs(10);

/// A running (and supervised) operator.
pub struct Operator {
    addr: SocketAddr,
    pid: Arc<AtomicI32>,
    exits: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
    supervisor: tokio::task::JoinHandle<String>,
}

/// The operator's command-line arguments after `controller`, serving on `addr`.
pub fn arguments(addr: SocketAddr) -> Vec<String> {
    vec![
        "--bind-address".to_owned(),
        addr.to_string(),
        "--identity".to_owned(),
        IDENTITY.to_owned(),
    ]
}

/// How to start the process.
#[derive(Clone)]
struct Launch {
    binary: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
}

impl Launch {
    /// Starts `binary controller <arguments>` as the user of `kubeconfig`, appending its
    /// output to `log`. It dies with the benchmark (parent-death signal).
    fn start(&self) -> Result<tokio::process::Child, BenchError> {
        let io = |what: String| move |source| BenchError::Io { what, source };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", self.log.display())))?;
        let err = file
            .try_clone()
            .map_err(io(format!("opening {}", self.log.display())))?;
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .arg("controller")
            .args(arguments(self.addr))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        command
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))
    }
}

fn pid_of(child: &tokio::process::Child) -> i32 {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0)
}

/// Waits for the child; starts it again after [`RESTART_DELAY`] unless it is being
/// stopped. Returns the last exit status.
async fn supervise(
    mut child: tokio::process::Child,
    launch: Launch,
    pid: Arc<AtomicI32>,
    exits: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
) -> String {
    loop {
        let status = match child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        if stopping.load(Ordering::SeqCst) {
            return status;
        }
        exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(status.clone());
        progress(format!(
            "the operator exited on its own ({status}); starting it again in {}s, as the kubelet would",
            RESTART_DELAY.as_secs()
        ));
        let until = Instant::now() + RESTART_DELAY;
        while Instant::now() < until {
            if stopping.load(Ordering::SeqCst) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match launch.start() {
            Ok(next) => {
                pid.store(pid_of(&next), Ordering::SeqCst);
                child = next;
            }
            Err(e) => {
                exits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("could not be started again: {e}"));
                return status;
            }
        }
    }
}

impl Operator {
    /// Starts the operator (see [`Launch::start`]) under supervision.
    pub fn spawn(binary: &Path, kubeconfig: &Path, log: &Path) -> Result<Operator, BenchError> {
        let port = stowage_testenv::postgres::free_port();
        let launch = Launch {
            binary: binary.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            log: log.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let child = launch.start()?;
        let pid = Arc::new(AtomicI32::new(pid_of(&child)));
        let exits = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let addr = launch.addr;
        let supervisor = tokio::spawn(supervise(
            child,
            launch,
            pid.clone(),
            exits.clone(),
            stopping.clone(),
        ));
        Ok(Operator {
            addr,
            pid,
            exits,
            stopping,
            supervisor,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The statuses of the times it exited on its own (and was started again).
    pub fn exits(&self) -> Vec<String> {
        self.exits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The memory of its current process.
    pub fn memory(&self) -> Option<MemoryUse> {
        memory_of(self.pid())
    }

    /// The pid of its current process.
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Waits until `/readyz` answers 200 as the leader (a standby answers 200 too, with
    /// another text); how long that took.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = http_get(self.addr, "/readyz").await
                && body.starts_with("leader")
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(BenchError::Operator(format!(
                    "the operator was not the ready leader after {}s; see its log",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reconciles and reconcile errors so far, per controller (its `/metrics`).
    pub async fn reconciles(&self) -> Vec<(String, u64, u64)> {
        let Ok((200, text)) = http_get(self.addr, "/metrics").await else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for (metric, errors) in [
            ("stowage_reconcile_total", false),
            ("stowage_reconcile_errors_total", true),
        ] {
            for sample in samples(&text, metric) {
                let controller = sample.labels.get("controller").cloned().unwrap_or_default();
                let n = sample.value.round() as u64;
                match out.iter_mut().find(|(c, _, _)| *c == controller) {
                    Some(row) if errors => row.2 += n,
                    Some(row) => row.1 += n,
                    None if errors => out.push((controller, 0, n)),
                    None => out.push((controller, n, 0)),
                }
            }
        }
        out.sort();
        out
    }

    /// Stops it with SIGTERM (SIGKILL after `grace`); its exit status.
    pub async fn stop(self, grace: Duration) -> String {
        self.stopping.store(true, Ordering::SeqCst);
        let pid = Pid::from_raw(self.pid());
        let _ = kill(pid, Signal::SIGTERM);
        let mut supervisor = self.supervisor;
        match tokio::time::timeout(grace, &mut supervisor).await {
            Ok(status) => status.unwrap_or_default(),
            Err(_) => {
                let _ = kill(pid, Signal::SIGKILL);
                supervisor.await.unwrap_or_default()
            }
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5s"))??;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Where the operator's log goes: next to the benchmark's other scratch files in the
/// target dir, one file per layout (both operator runs of a layout append to it).
pub fn log_path(layout: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("controller_scale")
        .join(format!("operator-{layout}.log"))
}
