//! The operator under test: the release `stowage controller` as a child process,
//! logging to a file, with its `/readyz` and `/metrics` on a loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stowage_testenv::bench::api_metrics::samples;
use stowage_testenv::bench::procfs::{MemoryUse, memory_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::BenchError;

/// The identity the operator runs under in its Lease.
const IDENTITY: &str = "stowage-bench";

/// A running operator.
pub struct Operator {
    pid: i32,
    addr: SocketAddr,
    exit: watch::Receiver<Option<String>>,
    waiter: tokio::task::JoinHandle<()>,
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

impl Operator {
    /// Starts `binary controller <arguments>` as the user of `kubeconfig`, appending its
    /// output to `log`. It dies with the benchmark (parent-death signal).
    pub fn spawn(binary: &Path, kubeconfig: &Path, log: &Path) -> Result<Operator, BenchError> {
        let io = |what: String| move |source| BenchError::Io { what, source };
        let port = stowage_testenv::postgres::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("controller")
            .args(arguments(addr))
            .env("KUBECONFIG", kubeconfig)
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
        let mut child = command
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| BenchError::Operator("the operator exited at once".into()))?;
        let (tx, exit) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            let _ = tx.send(Some(status));
        });
        Ok(Operator {
            pid,
            addr,
            exit,
            waiter,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its exit status, once it has exited.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Its memory now.
    pub fn memory(&self) -> Option<MemoryUse> {
        memory_of(self.pid)
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until `/readyz` answers 200 (leader, caches synced); how long that took.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/readyz").await {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.exited() {
                return Err(BenchError::Operator(format!(
                    "the operator exited ({status}) before it was ready"
                )));
            }
            if start.elapsed() > timeout {
                return Err(BenchError::Operator(format!(
                    "the operator was not ready after {}s",
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
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let mut exit = self.exit.clone();
        let stopped = tokio::time::timeout(grace, exit.wait_for(Option::is_some)).await;
        if stopped.is_err() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let _ = self.waiter.await;
        self.exit.borrow().clone().unwrap_or_default()
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
