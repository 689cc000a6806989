//! Starting (or reusing) the control plane with `deploy/local/up.sh`, and installing the
//! repository's CRDs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{TestCluster, TestEnvError, repo_root};

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
}

/// Starts a control plane in a fresh temporary dir, or reuses `$STOWAGE_TEST_CLUSTER`.
/// A fresh start is tried up to three times (a randomly picked port can be taken between
/// `up.sh` choosing it and a component binding it); failed attempts' dirs are removed.
pub fn start_or_reuse() -> Result<Plane, TestEnvError> {
    if let Some(dir) = std::env::var_os(REUSE_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        up(&dir)?;
        return plane(dir, false);
    }
    let mut last = None;
    for attempt in 0..3 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "stowage-test-{}-{attempt}-{nanos:x}",
            std::process::id()
        ));
        match up(&dir) {
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
fn up(state_dir: &Path) -> Result<(), TestEnvError> {
    let up = repo_root().join("deploy/local/up.sh");
    let out = Command::new("bash")
        .arg(&up)
        .arg(state_dir)
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

/// Applies every YAML file under `dir` (server-side, so large CRDs fit) and waits until
/// the CRDs are established. An empty or missing directory is fine.
pub fn install_crds(cluster: &TestCluster, dir: &Path) -> Result<(), TestEnvError> {
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
        let applied = cluster.kubectl_output(&[
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
    cluster.kubectl_output(&args)?;
    // Established is not the end: the API server publishes a new CRD's OpenAPI schema a
    // moment later, and until then `kubectl explain` (and strict field validation) cannot
    // find it. Wait until every CRD is explainable.
    for name in &names {
        let resource = name.rsplit('/').next().unwrap_or(name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match cluster.kubectl_output(&["explain", resource]) {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        }
    }
    Ok(())
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
