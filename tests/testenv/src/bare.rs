//! A control plane of its own, without the node agent, for benchmarks: etcd and
//! kube-apiserver (and kube-controller-manager if asked) from `deploy/local/up.sh` in a
//! fresh temporary state dir, never shared and never reused.
//!
//! [`BarePlane::stop`] runs `down.sh` and removes the state dir; if the process ends
//! first (a panic, a signal), the [`crate::reaper`] does the same once it has exited.

use std::path::{Path, PathBuf};

use crate::control_plane::{self, PlaneOptions};
use crate::{TestEnvError, reaper, repo_root};

/// A running control plane started by [`BarePlane::start`].
#[derive(Debug)]
pub struct BarePlane {
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    api_port: u16,
}

impl BarePlane {
    /// Starts a control plane with `options` in a fresh dir under the system temp dir
    /// (`stowage-bench-…`), with a watchdog that stops it when this process exits.
    pub fn start(options: PlaneOptions) -> Result<BarePlane, TestEnvError> {
        let plane = control_plane::start_fresh("stowage-bench", options)?;
        // Before anything else can fail, so a half-started plane is cleaned up too.
        reaper::spawn(&plane.state_dir, &repo_root())?;
        Ok(BarePlane {
            state_dir: plane.state_dir,
            kubeconfig: plane.kubeconfig,
            kubectl: plane.kubectl,
            api_port: plane.api_port,
        })
    }

    /// Installs the repository's CRDs (`crds/`) and waits until they are served.
    pub fn install_crds(&self) -> Result<(), TestEnvError> {
        control_plane::install_crds(&self.kubectl, &self.kubeconfig, &repo_root().join("crds"))
    }

    /// The client configuration of the admin kubeconfig (user in `system:masters`), to
    /// build a client with extra layers.
    pub async fn admin_config(&self) -> Result<kube::Config, TestEnvError> {
        config_from(&self.kubeconfig).await
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state dir (`env`, `logs/`, `pids/`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// Runs `kubectl` (the control plane's version) as admin; its stdout.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<String, TestEnvError> {
        control_plane::kubectl_output(&self.kubectl, &self.kubeconfig, args)
    }

    /// The pid of `component` (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn pid(&self, component: &str) -> Result<i32, TestEnvError> {
        control_plane::component_pid(&self.state_dir, component)
    }

    /// Applies `manifests` (e.g. `deploy/rbac/operator.yaml`, which creates ServiceAccount
    /// `namespace/name`) after creating `namespace`, then writes a kubeconfig that
    /// authenticates as that ServiceAccount with a token valid for `hours`, and returns its
    /// path (in the state dir). Needs no controller manager: the API server issues tokens.
    pub fn service_account_kubeconfig(
        &self,
        manifests: &Path,
        namespace: &str,
        name: &str,
        hours: u32,
    ) -> Result<PathBuf, TestEnvError> {
        if self
            .kubectl_output(&["get", "namespace", namespace])
            .is_err()
        {
            self.kubectl_output(&["create", "namespace", namespace])?;
        }
        self.kubectl_output(&["apply", "-f", &manifests.to_string_lossy()])?;
        let token = self.kubectl_output(&[
            "create",
            "token",
            name,
            "-n",
            namespace,
            &format!("--duration={hours}h"),
        ])?;
        let admin = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| TestEnvError::Client(e.to_string()))?;
        let cluster = admin
            .clusters
            .first()
            .and_then(|named| named.cluster.as_ref())
            .ok_or_else(|| TestEnvError::Client("the admin kubeconfig has no cluster".into()))?;
        let server = cluster
            .server
            .clone()
            .ok_or_else(|| TestEnvError::Client("the admin kubeconfig has no server".into()))?;
        let ca = cluster.certificate_authority_data.clone().ok_or_else(|| {
            TestEnvError::Client("the admin kubeconfig has no certificate-authority-data".into())
        })?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: {name}\n  context:\n    cluster: local\n    user: {name}\ncurrent-context: {name}\n",
            token.trim()
        );
        let path = self
            .state_dir
            .join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, text).map_err(|source| TestEnvError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Stops every component (`down.sh`) and removes the state dir (kept when
    /// `STOWAGE_TEST_KEEP=1`, to read its logs).
    pub fn stop(self) -> Result<(), TestEnvError> {
        let down = repo_root().join("deploy/local/down.sh");
        let out = std::process::Command::new("bash")
            .arg(&down)
            .arg(&self.state_dir)
            .output()
            .map_err(|e| TestEnvError::Command {
                command: format!("bash {}", down.display()),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(TestEnvError::Command {
                command: format!("bash {} {}", down.display(), self.state_dir.display()),
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        if std::env::var("STOWAGE_TEST_KEEP").as_deref() != Ok("1") {
            std::fs::remove_dir_all(&self.state_dir).map_err(|source| TestEnvError::Io {
                path: self.state_dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The client configuration of kubeconfig file `path`.
pub async fn config_from(path: &Path) -> Result<kube::Config, TestEnvError> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| TestEnvError::Client(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| TestEnvError::Client(e.to_string()))
}
