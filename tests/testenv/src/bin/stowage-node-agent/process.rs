//! Starting, signalling and reaping one container instance: the agent re-executes itself
//! as `sandbox-exec` in a new process group, with stdout and stderr appended to the
//! container's log file.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::sandbox::{START_ERROR_EXIT, SandboxSpec};

/// Maximum size of a termination message, as in Kubernetes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Log tail used by `FallbackToLogsOnError` (the kubelet's limits).
const FALLBACK_MAX_BYTES: usize = 2048;
const FALLBACK_MAX_LINES: usize = 80;

/// Why a process could not be started at all.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Writing the spec or opening the log failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A started container process.
pub struct Running {
    child: Child,
    pid: i32,
    error_file: PathBuf,
}

/// How a process ended.
#[derive(Debug)]
pub struct Exit {
    /// Exit code, 128 + signal when signalled.
    pub code: i32,
    /// The signal, when signalled.
    pub signal: Option<i32>,
    /// The helper's start error, when the command never ran.
    pub start_error: Option<String>,
}

/// Starts the helper with `spec` (written to `spec_file`, mode 0600), logging to `log`.
pub fn spawn(spec: &SandboxSpec, spec_file: &Path, log: &Path) -> Result<Running, SpawnError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SpawnError::Io { what, path, source }
    };
    let _ = std::fs::remove_file(&spec.error_file);
    let body = serde_json::to_vec(spec).map_err(|e| SpawnError::Io {
        what: "encoding sandbox spec for",
        path: spec_file.to_path_buf(),
        source: e.into(),
    })?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(spec_file)
            .map_err(io("writing sandbox spec", spec_file))?;
        f.write_all(&body)
            .map_err(io("writing sandbox spec", spec_file))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening log", log))?;
    let err = out.try_clone().map_err(io("opening log", log))?;
    // /proc/self/exe still runs this very binary after a rebuild replaced the file.
    let exe = Path::new("/proc/self/exe");
    let child = Command::new(exe)
        .arg("sandbox-exec")
        .arg(spec_file)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("spawning sandbox for", spec_file))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    Ok(Running {
        child,
        pid,
        error_file: spec.error_file.clone(),
    })
}

impl Running {
    /// The process id (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the whole process group (the command and what it forked).
    pub fn signal(&self, signal: Signal) {
        if self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> Exit {
        let status = self.child.wait().await;
        // Whatever the command left running in its group goes with it, as with a
        // container's cgroup.
        self.signal(Signal::SIGKILL);
        let (code, signal) = match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => (code, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (255, None),
            },
            Err(_) => (255, None),
        };
        let start_error = (code == START_ERROR_EXIT)
            .then(|| std::fs::read_to_string(&self.error_file).ok())
            .flatten()
            .filter(|m| !m.is_empty());
        Exit {
            code,
            signal,
            start_error,
        }
    }
}

/// The termination message: the file's last 4096 bytes (the kubelet reads the tail, so a
/// message that grew too long keeps its end); with `FallbackToLogsOnError` and a failure
/// and an empty file, the tail of this instance's log.
pub fn termination_message(
    message_file: &Path,
    fallback_to_logs: bool,
    failed: bool,
    log: &Path,
    log_offset: u64,
) -> Option<String> {
    let mut buf = tail(message_file, 0, MAX_MESSAGE_BYTES);
    if buf.is_empty() && fallback_to_logs && failed {
        buf = log_tail(log, log_offset);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    (!text.is_empty()).then_some(text)
}

/// At most the last `max` bytes of `path` after byte `offset` (empty when unreadable).
fn tail(path: &Path, offset: u64, max: usize) -> Vec<u8> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(max as u64));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max as u64).read_to_end(&mut buf);
    buf
}

fn log_tail(log: &Path, offset: u64) -> Vec<u8> {
    let buf = tail(log, offset, FALLBACK_MAX_BYTES);
    let lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
    let keep = lines.len().saturating_sub(FALLBACK_MAX_LINES + 1);
    lines[keep..].join(&b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_message_and_fallback() {
        let dir = std::env::temp_dir().join(format!("stowage-na-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = dir.join("msg");
        let log = dir.join("log");
        std::fs::write(&log, "old run\nline1\nboom\n").unwrap();
        std::fs::write(&msg, "").unwrap();
        let offset = "old run\n".len() as u64;
        assert_eq!(termination_message(&msg, false, true, &log, offset), None);
        assert_eq!(
            termination_message(&msg, true, true, &log, offset).as_deref(),
            Some("line1\nboom\n")
        );
        assert_eq!(termination_message(&msg, true, false, &log, offset), None);
        std::fs::write(&msg, format!("HEAD{}TAIL", "x".repeat(5000))).unwrap();
        assert_eq!(
            termination_message(&msg, true, true, &log, offset),
            Some(format!("{}TAIL", "x".repeat(4092))),
            "the tail of a long message is kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
