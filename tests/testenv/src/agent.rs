//! Starting `stowage-node-agent` against the control plane and waiting for its Node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::control_plane::Plane;
use crate::{TestCluster, TestEnvError};

/// The node name the agent registers.
pub const NODE_NAME: &str = "stowage-local";

/// Image whose containers see [`standin_tools_dir`] at `/usr/local/sbin`, the first
/// directory of their default `PATH`: a test writes stand-ins of a service's tools there
/// (e.g. a `pg_dump` that misbehaves on purpose) and names this image in its target.
pub const STANDIN_TOOLS_IMAGE: &str = "stowage-standin-tools";

/// The host directory shown at `/usr/local/sbin` to containers of [`STANDIN_TOOLS_IMAGE`].
pub fn standin_tools_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("standin-tools")
}

/// Finds the agent binary: `$STOWAGE_NODE_AGENT_BIN`, else next to the test executable
/// (`target/<triple>/debug/deps/<test>` -> `target/<triple>/debug/stowage-node-agent`).
fn locate_binary() -> Result<PathBuf, TestEnvError> {
    if let Some(path) = std::env::var_os("STOWAGE_NODE_AGENT_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| TestEnvError::Io {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("stowage-node-agent"))
        .collect::<Vec<_>>();
    candidates.iter().find(|c| c.is_file()).cloned().ok_or_else(|| {
        TestEnvError::Startup(format!(
            "stowage-node-agent not found (looked at {}); build it first with \
             `cargo build -p stowage-testenv --bin stowage-node-agent` or set STOWAGE_NODE_AGENT_BIN",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("stowage-node-agent"))
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
}

/// Starts the agent unless `<state>/node-agent.pid` names a live one; records the pid of
/// one started here in that file.
pub fn ensure_running(plane: &Plane, agent_state: &Path) -> Result<(), TestEnvError> {
    let pid_file = plane.state_dir.join("node-agent.pid");
    if let Ok(text) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = text.trim().parse::<u32>()
        && alive(pid)
    {
        return Ok(());
    }
    let binary = locate_binary()?;
    let logs = plane.state_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|source| TestEnvError::Io {
        path: logs.clone(),
        source,
    })?;
    let log_path = logs.join("node-agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| TestEnvError::Io {
            path: log_path.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| TestEnvError::Io {
        path: log_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(&binary);
    cmd.arg("--state-dir")
        .arg(agent_state)
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .arg("--node-name")
        .arg(NODE_NAME);
    // The operator binary built alongside stands in for the stowage image; the agent's
    // own binary for an image of the same name (used by the fixture's tests).
    cmd.arg("--image-map").arg(format!(
        "stowage-node-agent={}:/usr/local/bin/stowage-node-agent",
        binary.display()
    ));
    if let Some(dir) = binary.parent() {
        let stowage = dir.join("stowage");
        if stowage.is_file() {
            cmd.arg("--image-map").arg(format!(
                "stowage={}:/usr/local/bin/stowage",
                stowage.display()
            ));
        }
    }
    // Containers of the stand-in tools image find the files a test puts into the
    // stand-in tools directory first on their PATH (`/usr/local/sbin` leads the default
    // PATH), ahead of the host's real tools.
    let standin = standin_tools_dir(&plane.state_dir);
    std::fs::create_dir_all(&standin).map_err(|source| TestEnvError::Io {
        path: standin.clone(),
        source,
    })?;
    cmd.arg("--image-map").arg(format!(
        "{STANDIN_TOOLS_IMAGE}={}:/usr/local/sbin",
        standin.display()
    ));
    if let Ok(extra) = std::env::var("STOWAGE_NODE_AGENT_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| TestEnvError::Startup(format!("starting {}: {e}", binary.display())))?;
    let pid = child.id();
    std::fs::write(&pid_file, pid.to_string()).map_err(|source| TestEnvError::Io {
        path: pid_file,
        source,
    })?;
    Ok(())
}

/// Waits until the cluster's Node (the agent's or the real one) reports Ready.
pub fn wait_node_ready(cluster: &TestCluster) -> Result<(), TestEnvError> {
    let start = Instant::now();
    let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        match cluster.kubectl_output(&["get", "node", cluster.node_name(), "-o", jsonpath]) {
            Ok(status) if status.trim() == "True" => return Ok(()),
            Ok(status) => last = format!("Ready={status}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = if cluster.real_node() {
        "kubelet.log"
    } else {
        "node-agent.log"
    };
    Err(TestEnvError::Startup(format!(
        "node {} not Ready ({last}); see {}",
        cluster.node_name(),
        cluster.state_dir().join("logs").join(log).display()
    )))
}
