//! Which node runs the test cluster's pods, and what tests need of it: images, claims,
//! container logs and the address pods reach this host at.
//!
//! The default is a real node (`STOWAGE_UP_NODE=kubelet` of `deploy/local/up.sh`:
//! containerd, runc, the kubelet and kube-scheduler in a network namespace of their own).
//! `STOWAGE_TEST_NODE=agent` runs pods on `stowage-node-agent` instead, as host processes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::TestEnvError;

/// The node name of the real node (`deploy/local/node.sh`).
pub const REAL_NODE_NAME: &str = "stowage-node";

/// What runs the pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// containerd + the kubelet: images are real, so is every security setting.
    Kubelet {
        /// The host's address on the node's link: where pods reach this host's services.
        host_ip: String,
        /// The pods' network, for a service's access rules.
        pod_cidr: String,
    },
    /// `stowage-node-agent`: containers are host processes sharing the host's network.
    Agent {
        /// The agent's state directory (claims, container logs).
        state: PathBuf,
    },
}

/// Reads `STOWAGE_TEST_NODE`: `kubelet` (the default) or `agent`.
pub fn wanted() -> Result<bool, TestEnvError> {
    match std::env::var("STOWAGE_TEST_NODE").as_deref() {
        Err(_) | Ok("") | Ok("kubelet") => Ok(true),
        Ok("agent") => Ok(false),
        Ok(other) => Err(TestEnvError::Startup(format!(
            "STOWAGE_TEST_NODE must be kubelet (a real node, the default) or agent \
             (stowage-node-agent), got '{other}'"
        ))),
    }
}

/// Images imported into a state dir's node by this process: `(state dir, image spec)` →
/// reference.
fn imported() -> &'static Mutex<HashMap<(PathBuf, String), String>> {
    static IMPORTED: OnceLock<Mutex<HashMap<(PathBuf, String), String>>> = OnceLock::new();
    IMPORTED.get_or_init(Default::default)
}

/// Builds (or reuses) the image `spec` of `deploy/local/images.sh` and imports it into the
/// node of `state_dir`; returns its reference.
pub fn import_image(state_dir: &Path, spec: &str) -> Result<String, TestEnvError> {
    let key = (state_dir.to_owned(), spec.to_owned());
    // One import at a time: concurrent tests asking for the same image build it once.
    let mut done = imported().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reference) = done.get(&key) {
        return Ok(reference.clone());
    }
    let script = crate::repo_root().join("deploy/local/images.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("import")
        .arg(state_dir)
        .arg(spec)
        .output()
        .map_err(|e| TestEnvError::Command {
            command: format!("{} import", script.display()),
            message: e.to_string(),
        })?;
    let reference = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || reference.is_empty() {
        return Err(TestEnvError::Command {
            command: format!(
                "bash {} import {} {spec}",
                script.display(),
                state_dir.display()
            ),
            message: format!(
                "image '{spec}' could not be built or imported; build it by hand with that \
                 command to see why:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    done.insert(key, reference.clone());
    Ok(reference)
}

/// The `stowage` binary built with the tests (`target/<triple>/debug/stowage`, next to
/// the test executable's directory), or `$STOWAGE_BIN`.
pub fn stowage_binary() -> Result<PathBuf, TestEnvError> {
    if let Some(path) = std::env::var_os("STOWAGE_BIN").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| TestEnvError::Io {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("stowage"))
        .collect();
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| {
            TestEnvError::Startup(format!(
                "the stowage binary was not found (looked at {}); build it with \
                 `cargo build --bin stowage` or set STOWAGE_BIN",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// `kubectl apply -f -` of `objects` (JSON), server-side.
pub fn apply(
    kubectl: &Path,
    kubeconfig: &Path,
    objects: &[serde_json::Value],
) -> Result<(), TestEnvError> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=testenv",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TestEnvError::Command {
            command: "kubectl apply".into(),
            message: e.to_string(),
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(list.to_string().as_bytes())
        .map_err(|e| TestEnvError::Command {
            command: "kubectl apply".into(),
            message: e.to_string(),
        })?;
    let out = child
        .wait_with_output()
        .map_err(|e| TestEnvError::Command {
            command: "kubectl apply".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TestEnvError::Command {
            command: "kubectl apply".into(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// A `local` PersistentVolume on the real node for claim `namespace/claim`, at `dir`, and
/// the claim bound to it (there is no provisioner on the local node).
pub fn local_volume_and_claim(
    namespace: &str,
    claim: &str,
    access_mode: &str,
    dir: &Path,
) -> [serde_json::Value; 2] {
    let pv = format!("{namespace}-{claim}");
    [
        serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"stowage.dev/test-namespace": namespace}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": [access_mode],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
                "local": {"path": dir},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [REAL_NODE_NAME]}
                ]}]}}
            }
        }),
        serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": [access_mode],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}}
            }
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_bound_to_a_local_volume_on_the_real_node() {
        let [pv, pvc] =
            local_volume_and_claim("shop", "backups", "ReadWriteMany", Path::new("/v/x"));
        assert_eq!(pv["metadata"]["name"], "shop-backups");
        assert_eq!(pv["spec"]["claimRef"]["name"], "backups");
        assert_eq!(pv["spec"]["local"]["path"], "/v/x");
        assert_eq!(pv["spec"]["accessModes"][0], "ReadWriteMany");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
                [0],
            REAL_NODE_NAME
        );
        assert_eq!(pvc["spec"]["volumeName"], "shop-backups");
        assert_eq!(pvc["spec"]["storageClassName"], "");
    }
}
