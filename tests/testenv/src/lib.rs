//! Test support: a real local control plane (etcd, kube-apiserver, kube-controller-manager
//! from `deploy/local/`) plus `stowage-node-agent` running its pods, shared by all tests of
//! one test binary.
//!
//! ```no_run
//! # async fn example() -> Result<(), stowage_testenv::TestEnvError> {
//! let cluster = stowage_testenv::TestCluster::shared()?;
//! let ns = cluster.ns("backup").await?;
//! let client = cluster.client().await?;
//! # Ok(()) }
//! ```
//!
//! Benchmarks start a [`BarePlane`] of their own instead (no node agent, optionally no
//! kube-controller-manager) and use the helpers of [`bench`].
//!
//! Lifetime: the first call to [`TestCluster::shared`] starts everything; a watchdog process
//! (see [`reaper`]) stops the node agent and the control plane and removes the temporary
//! state directory once the test process has exited, however it exits. With
//! `STOWAGE_TEST_CLUSTER=<state-dir>` an already running control plane is reused and left
//! running (see `deploy/local/node-agent.md`).

mod agent;
mod bare;
pub mod bench;
mod control_plane;
mod error;
mod namespace;
pub mod reaper;
mod wait;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A real PostgreSQL server for tests (the `stowage-test-postgres` crate).
pub use stowage_test_postgres as postgres;

pub use agent::STANDIN_TOOLS_IMAGE;
pub use bare::{BarePlane, config_from};
pub use control_plane::{PlaneOptions, StoppedApiServer};
pub use error::TestEnvError;
pub use namespace::TestNamespace;
pub use wait::eventually;

/// A running control plane with a node agent.
#[derive(Debug)]
pub struct TestCluster {
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    api_port: u16,
    agent_state: PathBuf,
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();

impl TestCluster {
    /// The cluster of this test process, started on first use (blocking: tens of seconds
    /// the first time, or minutes when the control plane binaries must be built).
    pub fn shared() -> Result<&'static TestCluster, TestEnvError> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| TestEnvError::Startup(message.clone()))
    }

    fn start() -> Result<TestCluster, TestEnvError> {
        let plane = control_plane::start_or_reuse()?;
        if plane.owned {
            // Before anything else can fail, so a half-started cluster is cleaned up too.
            reaper::spawn(&plane.state_dir, &repo_root())?;
        }
        let agent_state = plane.state_dir.join("node-agent");
        agent::ensure_running(&plane, &agent_state)?;
        let cluster = TestCluster {
            kubeconfig: plane.kubeconfig,
            kubectl: plane.kubectl,
            api_port: plane.api_port,
            state_dir: plane.state_dir,
            agent_state,
        };
        agent::wait_node_ready(&cluster)?;
        control_plane::install_crds(
            &cluster.kubectl,
            &cluster.kubeconfig,
            &repo_root().join("crds"),
        )?;
        Ok(cluster)
    }

    /// A client for the API server (one per call: clients must not outlive the async
    /// runtime that created them, and each test has its own).
    pub async fn client(&self) -> Result<kube::Client, TestEnvError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| TestEnvError::Client(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| TestEnvError::Client(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| TestEnvError::Client(e.to_string()))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl` (the control plane's version) with `--kubeconfig` set.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs `kubectl` with `args` and returns its stdout; an error carries its stderr.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<String, TestEnvError> {
        control_plane::kubectl_output(&self.kubectl, &self.kubeconfig, args)
    }

    /// Creates a namespace named `<prefix>-<unique>` and waits for its `default`
    /// ServiceAccount (pods cannot be created before it exists).
    pub async fn ns(&self, prefix: &str) -> Result<TestNamespace, TestEnvError> {
        namespace::create(self, prefix).await
    }

    /// The control plane's state directory (`env`, `kubeconfig`, `logs/`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// Stops this cluster's kube-apiserver (SIGTERM, as an upgrade would; SIGKILL after
    /// 10 s, as it otherwise waits up to a minute for open watches to close). Every client sees connection errors until
    /// [`TestCluster::start_api_server`]. Tests sharing the cluster see the outage too:
    /// a test that stops it must not run alongside tests that need the API.
    pub fn stop_api_server(&self) -> Result<StoppedApiServer, TestEnvError> {
        control_plane::stop_api_server(&self.state_dir)
    }

    /// Starts the API server stopped by [`TestCluster::stop_api_server`] again, with the
    /// same flags, ports and certificates, and waits until it is ready (120 s guard);
    /// returns how long that took.
    pub fn start_api_server(
        &self,
        stopped: StoppedApiServer,
    ) -> Result<std::time::Duration, TestEnvError> {
        control_plane::start_api_server(&self.state_dir, &self.kubectl, &self.kubeconfig, stopped)
    }

    /// Stops and starts the API server ([`TestCluster::stop_api_server`],
    /// [`TestCluster::start_api_server`]); returns how long it was unavailable.
    pub fn restart_api_server(&self) -> Result<std::time::Duration, TestEnvError> {
        let stopped = self.stop_api_server()?;
        let stop_took = stopped.stop_took;
        Ok(stop_took + self.start_api_server(stopped)?)
    }

    /// The node agent's state directory.
    pub fn agent_state_dir(&self) -> &Path {
        &self.agent_state
    }

    /// The host directory containers of [`STANDIN_TOOLS_IMAGE`] see first on their `PATH`
    /// (at `/usr/local/sbin`). It is shared by every test of the cluster: put tools there
    /// that behave the same for all of them, varying by their environment only.
    pub fn standin_tools_dir(&self) -> PathBuf {
        agent::standin_tools_dir(&self.state_dir)
    }

    /// The host directory backing PersistentVolumeClaim `claim` in `namespace`.
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.agent_state
            .join("volumes")
            .join("pvc")
            .join(namespace)
            .join(claim)
    }

    /// The log file of a container run by the node agent.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.agent_state
            .join("logs")
            .join(format!("{namespace}_{pod}_{container}.log"))
    }
}

/// The workspace root (where `deploy/` and `crds/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}
