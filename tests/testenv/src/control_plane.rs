//! Starting (or reusing) the control plane with `deploy/local/up.sh`, installing the
//! repository's CRDs, and restarting its API server (for fault tests).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{TestEnvError, repo_root};

/// Environment variable naming a control plane state dir to reuse.
pub const REUSE_VAR: &str = "STOWAGE_TEST_CLUSTER";

/// A running control plane.
pub struct Plane {
    /// Its state dir.
    pub state_dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// kubectl matching the server.
    pub kubectl: PathBuf,
    /// API server port.
    pub api_port: u16,
    /// Started by this process (and so stopped by its reaper).
    pub owned: bool,
    /// Every variable of the state dir's `env` file.
    pub env: HashMap<String, String>,
}

/// Which components `up.sh` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneOptions {
    /// Start kube-controller-manager (Job controller, garbage collector, ServiceAccount
    /// controller...). Without it Jobs get no pods and finish only when a client sets their
    /// status, and namespaces get no `default` ServiceAccount.
    pub controller_manager: bool,
    /// Start a real node (containerd, kubelet, kube-scheduler: `STOWAGE_UP_NODE=kubelet`).
    pub real_node: bool,
    /// Have the API server write an audit line for every Job create
    /// (`logs/audit-job-creates.log`, `STOWAGE_UP_AUDIT_JOB_CREATES=1`): when each Job came
    /// to exist, to the microsecond, whoever created it.
    pub audit_job_creates: bool,
}

impl Default for PlaneOptions {
    /// The control plane with kube-controller-manager and no node.
    fn default() -> Self {
        PlaneOptions {
            controller_manager: true,
            real_node: false,
            audit_job_creates: false,
        }
    }
}

/// Starts a control plane in a fresh temporary dir, or reuses `$STOWAGE_TEST_CLUSTER`.
pub fn start_or_reuse(options: PlaneOptions) -> Result<Plane, TestEnvError> {
    if let Some(dir) = std::env::var_os(REUSE_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        up(&dir, options)?;
        return plane(dir, false);
    }
    start_fresh("stowage-test", options)
}

/// Starts a control plane with `options` in a fresh temporary dir named `<prefix>-…`.
/// A fresh start is tried up to three times (a randomly picked port can be taken between
/// `up.sh` choosing it and a component binding it); failed attempts' dirs are removed.
pub fn start_fresh(prefix: &str, options: PlaneOptions) -> Result<Plane, TestEnvError> {
    let mut last = None;
    for attempt in 0..3 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{attempt}-{nanos:x}",
            std::process::id()
        ));
        match up(&dir, options) {
            Ok(()) => return plane(dir, true),
            Err(e) => {
                if std::env::var("STOWAGE_TEST_KEEP").as_deref() != Ok("1") {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| TestEnvError::Startup("up.sh was never run".into())))
}

/// Runs `deploy/local/up.sh <dir>` (builds the binaries when needed; a no-op on a
/// running state dir).
fn up(state_dir: &Path, options: PlaneOptions) -> Result<(), TestEnvError> {
    let up = repo_root().join("deploy/local/up.sh");
    let out = Command::new("bash")
        .arg(&up)
        .arg(state_dir)
        .env(
            "STOWAGE_UP_CONTROLLER_MANAGER",
            if options.controller_manager { "1" } else { "0" },
        )
        .env(
            "STOWAGE_UP_NODE",
            if options.real_node { "kubelet" } else { "none" },
        )
        .env(
            "STOWAGE_UP_AUDIT_JOB_CREATES",
            if options.audit_job_creates { "1" } else { "0" },
        )
        .output()
        .map_err(|e| TestEnvError::Startup(format!("running {}: {e}", up.display())))?;
    if !out.status.success() {
        return Err(TestEnvError::Startup(format!(
            "{} {} failed ({}):\n{}",
            up.display(),
            state_dir.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        )));
    }
    Ok(())
}

fn plane(state_dir: PathBuf, owned: bool) -> Result<Plane, TestEnvError> {
    let state_dir = state_dir
        .canonicalize()
        .map_err(|source| TestEnvError::Io {
            path: state_dir.clone(),
            source,
        })?;
    let env = read_env(&state_dir.join("env"))?;
    let get = |key: &str| {
        env.get(key).cloned().ok_or_else(|| {
            TestEnvError::Startup(format!("{key} missing from {}/env", state_dir.display()))
        })
    };
    let api_port = get("STOWAGE_APISERVER_PORT")?
        .parse()
        .map_err(|_| TestEnvError::Startup("STOWAGE_APISERVER_PORT is not a port".into()))?;
    Ok(Plane {
        kubeconfig: PathBuf::from(get("KUBECONFIG")?),
        kubectl: PathBuf::from(get("KUBECTL")?),
        api_port,
        state_dir,
        owned,
        env,
    })
}

/// Parses the `export KEY=value` lines up.sh writes (values are `printf %q` quoted).
fn read_env(path: &Path) -> Result<HashMap<String, String>, TestEnvError> {
    let text = std::fs::read_to_string(path).map_err(|source| TestEnvError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), unquote(v)))
        .collect())
}

/// Undoes bash `%q` quoting for the plain paths and numbers up.sh writes.
fn unquote(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_string();
    }
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `kubectl --kubeconfig <kubeconfig> <args>` and returns its stdout; an error
/// carries its stderr.
pub fn kubectl_output(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> Result<String, TestEnvError> {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| TestEnvError::Command {
            command: format!("kubectl {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TestEnvError::Command {
            command: format!("kubectl {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies every YAML file under `dir` (server-side, so large CRDs fit) and waits until
/// the CRDs are established. An empty or missing directory is fine.
pub fn install_crds(kubectl: &Path, kubeconfig: &Path, dir: &Path) -> Result<(), TestEnvError> {
    let run = |args: &[&str]| kubectl_output(kubectl, kubeconfig, args);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(_) => return Ok(()),
    };
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    let mut names = Vec::new();
    for file in &files {
        let file = file.to_string_lossy();
        let applied = run(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "stowage-testenv",
            "-f",
            &file,
            "-o",
            "name",
        ])?;
        names.extend(
            applied
                .lines()
                .filter(|l| l.starts_with("customresourcedefinition"))
                .map(str::to_string),
        );
    }
    if names.is_empty() {
        return Ok(());
    }
    let mut args = vec![
        "wait",
        "--for",
        "condition=Established",
        "--timeout",
        "120s",
    ];
    args.extend(names.iter().map(String::as_str));
    run(&args)?;
    // Established is not the end: the API server publishes a new CRD's OpenAPI schema a
    // moment later, and until then `kubectl explain` (and strict field validation) cannot
    // find it. Wait until every CRD is explainable.
    for name in &names {
        let resource = name.rsplit('/').next().unwrap_or(name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match run(&["explain", resource]) {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        }
    }
    Ok(())
}

/// The API server process stopped by [`stop_api_server`]: its command line and
/// environment, to start it again exactly as `up.sh` did.
#[derive(Debug)]
pub struct StoppedApiServer {
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// How long it took to exit.
    pub stop_took: Duration,
}

/// The pid of the state dir's `component` (`etcd`, `kube-apiserver`, ...), checked like
/// `down.sh` does (its command line names the state dir, so a reused pid is never taken
/// for it).
pub fn component_pid(state_dir: &Path, component: &str) -> Result<i32, TestEnvError> {
    let file = state_dir.join("pids").join(format!("{component}.pid"));
    let text = std::fs::read_to_string(&file).map_err(|source| TestEnvError::Io {
        path: file.clone(),
        source,
    })?;
    let pid: i32 = text.trim().parse().map_err(|_| {
        TestEnvError::Startup(format!("{} does not hold a pid: {text:?}", file.display()))
    })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = format!("{}/", state_dir.display());
    if !String::from_utf8_lossy(&cmdline).contains(&needle) {
        return Err(TestEnvError::Startup(format!(
            "{component} (pid {pid} from {}) is not running for {}",
            file.display(),
            state_dir.display()
        )));
    }
    Ok(pid)
}

fn apiserver_pid(state_dir: &Path) -> Result<i32, TestEnvError> {
    component_pid(state_dir, "kube-apiserver")
}

/// Whether process `pid` has exited (gone, or a zombie waiting for its parent).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `pid (comm) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// How long a stopping kube-apiserver gets before SIGKILL: it stops listening at once,
/// then waits up to a minute for open connections (watches) to close.
const API_SERVER_STOP_GRACE: Duration = Duration::from_secs(10);

/// Stops the state dir's kube-apiserver (SIGTERM, SIGKILL after [`API_SERVER_STOP_GRACE`]),
/// remembering how it was started.
pub fn stop_api_server(state_dir: &Path) -> Result<StoppedApiServer, TestEnvError> {
    let pid = apiserver_pid(state_dir)?;
    let split = |bytes: Vec<u8>| -> Vec<OsString> {
        bytes
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| OsString::from_vec(part.to_vec()))
            .collect()
    };
    let read = |what: &str| {
        let path = PathBuf::from(format!("/proc/{pid}/{what}"));
        std::fs::read(&path).map_err(|source| TestEnvError::Io { path, source })
    };
    let argv = split(read("cmdline")?);
    let env = split(read("environ")?)
        .into_iter()
        .filter_map(|kv| {
            let bytes = kv.into_vec();
            let at = bytes.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(bytes[..at].to_vec()),
                OsString::from_vec(bytes[at + 1..].to_vec()),
            ))
        })
        .collect();
    if argv.is_empty() {
        return Err(TestEnvError::Startup(format!(
            "kube-apiserver (pid {pid}) has an empty command line"
        )));
    }
    let start = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let mut killed = false;
    while !exited(pid) {
        if start.elapsed() > API_SERVER_STOP_GRACE && !killed {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            killed = true;
        }
        if start.elapsed() > API_SERVER_STOP_GRACE + Duration::from_secs(15) {
            return Err(TestEnvError::Startup(format!(
                "kube-apiserver (pid {pid}) survived SIGTERM and SIGKILL"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(StoppedApiServer {
        argv,
        env,
        stop_took: start.elapsed(),
    })
}

/// Starts the API server `stopped` again (same flags, ports, certificates and
/// environment, detached like `up.sh` starts it, logging to `logs/kube-apiserver.log`),
/// records its pid for `down.sh`, and waits until `/readyz` answers (120 s guard).
/// Returns how long it took to be ready.
pub fn start_api_server(
    state_dir: &Path,
    kubectl: &Path,
    kubeconfig: &Path,
    stopped: StoppedApiServer,
) -> Result<Duration, TestEnvError> {
    let log = state_dir.join("logs").join("kube-apiserver.log");
    let start = Instant::now();
    // Through a shell that exits at once: the server is re-parented like up.sh's, and no
    // zombie of it stays behind in this test process.
    let out = Command::new("sh")
        .arg("-c")
        .arg("log=\"$1\"; shift; setsid \"$@\" >>\"$log\" 2>&1 </dev/null & echo $!")
        .arg("restart-apiserver")
        .arg(&log)
        .args(&stopped.argv)
        .env_clear()
        .envs(stopped.env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| TestEnvError::Command {
            command: "sh -c setsid kube-apiserver".into(),
            message: e.to_string(),
        })?;
    let pid_text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let pid: i32 = pid_text.parse().map_err(|_| {
        TestEnvError::Startup(format!(
            "restarting kube-apiserver printed no pid: {pid_text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    let pid_file = state_dir.join("pids").join("kube-apiserver.pid");
    std::fs::write(&pid_file, format!("{pid}\n")).map_err(|source| TestEnvError::Io {
        path: pid_file,
        source,
    })?;
    let env_file = state_dir.join("env");
    if let Ok(text) = std::fs::read_to_string(&env_file) {
        let updated: String = text
            .lines()
            .map(|line| {
                if line.starts_with("export STOWAGE_APISERVER_PID=") {
                    format!("export STOWAGE_APISERVER_PID={pid}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        let _ = std::fs::write(&env_file, updated);
    }
    loop {
        let ready = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--request-timeout", "5s", "get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ready {
            return Ok(start.elapsed());
        }
        let log_tail = || tail(&std::fs::read_to_string(&log).unwrap_or_default(), 25);
        if exited(pid) {
            return Err(TestEnvError::Startup(format!(
                "the restarted kube-apiserver exited; last lines of {}:\n{}",
                log.display(),
                log_tail()
            )));
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(TestEnvError::Startup(format!(
                "the restarted kube-apiserver was not ready after 120s; last lines of {}:\n{}",
                log.display(),
                log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::unquote;

    #[test]
    fn unquotes_printf_q() {
        assert_eq!(unquote("/tmp/a\\ b"), "/tmp/a b");
        assert_eq!(unquote("'x y'"), "x y");
        assert_eq!(unquote("12345"), "12345");
    }
}
