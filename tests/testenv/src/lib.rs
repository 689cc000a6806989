//! Test support: a real local control plane (etcd, kube-apiserver, kube-controller-manager
//! from `deploy/local/`) and a node running its pods, shared by all tests of one test
//! binary. The node is a real one (containerd, runc, the kubelet, kube-scheduler; see
//! [`node`]) unless `STOWAGE_TEST_NODE=agent` asks for `stowage-node-agent`.
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
pub mod node;
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
pub use node::NodeKind;
pub use wait::eventually;

/// A running control plane with a node.
#[derive(Debug)]
pub struct TestCluster {
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    api_port: u16,
    node: NodeKind,
}

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();

impl TestCluster {
    /// The cluster of this test process, started on first use (blocking: tens of seconds
    /// the first time, or minutes when the control plane binaries must be built).
    /// The node is the one `STOWAGE_TEST_NODE` names (a real node by default).
    pub fn shared() -> Result<&'static TestCluster, TestEnvError> {
        Self::shared_on(node::wanted()?)
    }

    /// [`TestCluster::shared`] with `stowage-node-agent` as the node, whatever
    /// `STOWAGE_TEST_NODE` says: for the agent's own tests. A test binary uses one of the
    /// two; the first call decides.
    pub fn shared_with_agent() -> Result<&'static TestCluster, TestEnvError> {
        Self::shared_on(false)
    }

    fn shared_on(real_node: bool) -> Result<&'static TestCluster, TestEnvError> {
        SHARED
            .get_or_init(|| Self::start(real_node).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| TestEnvError::Startup(message.clone()))
    }

    fn start(real_node: bool) -> Result<TestCluster, TestEnvError> {
        let plane = control_plane::start_or_reuse(PlaneOptions {
            real_node,
            ..PlaneOptions::default()
        })?;
        if plane.owned {
            // Before anything else can fail, so a half-started cluster is cleaned up too.
            reaper::spawn(&plane.state_dir, &repo_root())?;
        }
        let node = if real_node {
            let get = |key: &str| {
                plane
                    .env
                    .get(key)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .ok_or_else(|| {
                        TestEnvError::Startup(format!(
                            "{key} missing from {}/env: the control plane there was started \
                             without a real node; stop it (deploy/local/down.sh) or set \
                             STOWAGE_TEST_NODE=agent",
                            plane.state_dir.display()
                        ))
                    })
            };
            NodeKind::Kubelet {
                host_ip: get("STOWAGE_NODE_HOST_IP")?,
                pod_cidr: get("STOWAGE_NODE_POD_CIDR")?,
            }
        } else {
            let state = plane.state_dir.join("node-agent");
            agent::ensure_running(&plane, &state)?;
            NodeKind::Agent { state }
        };
        let standin = agent::standin_tools_dir(&plane.state_dir);
        std::fs::create_dir_all(&standin).map_err(|source| TestEnvError::Io {
            path: standin.clone(),
            source,
        })?;
        let cluster = TestCluster {
            kubeconfig: plane.kubeconfig,
            kubectl: plane.kubectl,
            api_port: plane.api_port,
            state_dir: plane.state_dir,
            node,
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

    /// The API server's port (on 127.0.0.1 with the node agent, on
    /// [`TestCluster::pod_host`] with a real node).
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// `kubectl apply --server-side` of `objects` (JSON; each names its namespace when it
    /// has one).
    pub fn apply(&self, objects: &[serde_json::Value]) -> Result<(), TestEnvError> {
        node::apply(&self.kubectl, &self.kubeconfig, objects)
    }

    /// What runs this cluster's pods.
    pub fn node(&self) -> &NodeKind {
        &self.node
    }

    /// Whether pods run on a real node (containerd and the kubelet).
    pub fn real_node(&self) -> bool {
        matches!(self.node, NodeKind::Kubelet { .. })
    }

    /// The node's name.
    pub fn node_name(&self) -> &'static str {
        match self.node {
            NodeKind::Kubelet { .. } => node::REAL_NODE_NAME,
            NodeKind::Agent { .. } => agent::NODE_NAME,
        }
    }

    /// The address at which pods reach a service of this host (127.0.0.1 with the node
    /// agent; the host's end of the node's link with a real node, where such a service
    /// must listen too).
    pub fn pod_host(&self) -> &str {
        match &self.node {
            NodeKind::Kubelet { host_ip, .. } => host_ip,
            NodeKind::Agent { .. } => "127.0.0.1",
        }
    }

    /// How pods reach a PostgreSQL server of this host ([`postgres::PgServer::start_for`]);
    /// `None` with the node agent, whose pods are host processes.
    pub fn pg_access(&self) -> Option<postgres::PodAccess> {
        match &self.node {
            NodeKind::Kubelet { host_ip, pod_cidr } => Some(postgres::PodAccess {
                host: host_ip.clone(),
                pod_cidr: pod_cidr.clone(),
            }),
            NodeKind::Agent { .. } => None,
        }
    }

    /// The image of the stowage binary built with the tests: imported into the real node
    /// (`deploy/local/images.sh`), or a name the node agent maps to that binary.
    pub fn stowage_image(&self) -> Result<String, TestEnvError> {
        match self.node {
            NodeKind::Kubelet { .. } => node::import_image(
                &self.state_dir,
                &format!("stowage={}", node::stowage_binary()?.display()),
            ),
            NodeKind::Agent { .. } => Ok("stowage:e2e".to_owned()),
        }
    }

    /// A PostgreSQL client image whose `pg_dump` matches the tests' servers (the host's
    /// Debian packages); `None` with the node agent, which runs the host's tools whatever
    /// the image.
    pub fn postgres_image(&self) -> Result<Option<String>, TestEnvError> {
        match self.node {
            NodeKind::Kubelet { .. } => {
                node::import_image(&self.state_dir, "postgres-client").map(Some)
            }
            NodeKind::Agent { .. } => Ok(None),
        }
    }

    /// A MariaDB client image (`mariadb-dump`, `mariadb`) matching the tests' MariaDB
    /// servers (the host's Debian packages); `None` with the node agent, which runs the
    /// host's tools whatever the image.
    pub fn mariadb_image(&self) -> Result<Option<String>, TestEnvError> {
        match self.node {
            NodeKind::Kubelet { .. } => {
                node::import_image(&self.state_dir, "mariadb-client").map(Some)
            }
            NodeKind::Agent { .. } => Ok(None),
        }
    }

    /// The image of the example external plugin `examples/plugins/ldap` (its script, jq
    /// and the ldap tools); `None` with the node agent, which runs the script from the
    /// repository on the host whatever the image.
    pub fn ldap_plugin_image(&self) -> Result<Option<String>, TestEnvError> {
        match self.node {
            NodeKind::Kubelet { .. } => {
                node::import_image(&self.state_dir, "ldap-plugin").map(Some)
            }
            NodeKind::Agent { .. } => Ok(None),
        }
    }

    /// An image whose containers find the files of [`TestCluster::standin_tools_dir`]
    /// first on their `PATH` (with a busybox shell on a real node). On a real node the
    /// image is built from the directory's current files: write them first.
    pub fn standin_tools_image(&self) -> Result<String, TestEnvError> {
        match self.node {
            NodeKind::Kubelet { .. } => node::import_image(
                &self.state_dir,
                &format!("standin-tools={}", self.standin_tools_dir().display()),
            ),
            NodeKind::Agent { .. } => Ok(format!("{STANDIN_TOOLS_IMAGE}:17")),
        }
    }

    /// Creates PersistentVolumeClaim `claim` in `namespace` with `access_mode`; on a real
    /// node, bound to a `local` PersistentVolume at [`TestCluster::claim_dir`] (there is no
    /// provisioner). Returns that directory.
    pub fn create_claim(
        &self,
        namespace: &str,
        claim: &str,
        access_mode: &str,
    ) -> Result<PathBuf, TestEnvError> {
        let dir = self.claim_dir(namespace, claim);
        let objects = match self.node {
            NodeKind::Kubelet { .. } => {
                std::fs::create_dir_all(&dir).map_err(|source| TestEnvError::Io {
                    path: dir.clone(),
                    source,
                })?;
                node::local_volume_and_claim(namespace, claim, access_mode, &dir).to_vec()
            }
            NodeKind::Agent { .. } => vec![serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": "1Gi"}}}
            })],
        };
        self.apply(&objects)?;
        if self.real_node() {
            // Bound before anything uses it: the scheduler refuses a pod whose claim is
            // not bound yet (the node agent never looked).
            let start = std::time::Instant::now();
            loop {
                let phase = self.kubectl_output(&[
                    "get",
                    "pvc",
                    claim,
                    "-n",
                    namespace,
                    "-o",
                    "jsonpath={.status.phase}",
                ])?;
                if phase.trim() == "Bound" {
                    break;
                }
                if start.elapsed() > std::time::Duration::from_secs(60) {
                    return Err(TestEnvError::Timeout {
                        seconds: 60,
                        what: format!("claim {namespace}/{claim} to be bound"),
                        last: format!("phase {phase:?}"),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        Ok(dir)
    }

    /// What `kubectl logs` shows of every container (init containers first) of every pod
    /// of `namespace`, each after a `----- <pod>/<container>` line.
    pub fn container_logs(&self, namespace: &str) -> String {
        let mut out = String::new();
        let pods = self
            .kubectl_output(&["get", "pods", "-n", namespace, "-o", "json"])
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let items = pods
            .as_ref()
            .and_then(|p| p["items"].as_array())
            .cloned()
            .unwrap_or_default();
        for pod in items {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            for list in ["initContainers", "containers"] {
                for container in pod["spec"][list].as_array().into_iter().flatten() {
                    let c = container["name"].as_str().unwrap_or_default();
                    out.push_str(&format!("----- {name}/{c}\n"));
                    let text = match &self.node {
                        NodeKind::Kubelet { .. } => self
                            .kubectl_output(&["logs", "-n", namespace, name, "-c", c])
                            .unwrap_or_else(|e| e.to_string()),
                        NodeKind::Agent { .. } => {
                            std::fs::read_to_string(self.container_log(namespace, name, c))
                                .unwrap_or_default()
                        }
                    };
                    out.push_str(&text);
                }
            }
        }
        out
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

    /// The node agent's state directory (with a real node: where it would be, unused).
    pub fn agent_state_dir(&self) -> PathBuf {
        match &self.node {
            NodeKind::Agent { state } => state.clone(),
            NodeKind::Kubelet { .. } => self.state_dir.join("node-agent"),
        }
    }

    /// The host directory containers of [`STANDIN_TOOLS_IMAGE`] see first on their `PATH`
    /// (at `/usr/local/sbin`). It is shared by every test of the cluster: put tools there
    /// that behave the same for all of them, varying by their environment only.
    pub fn standin_tools_dir(&self) -> PathBuf {
        agent::standin_tools_dir(&self.state_dir)
    }

    /// The host directory backing PersistentVolumeClaim `claim` in `namespace` (made by
    /// [`TestCluster::create_claim`] on a real node).
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        match &self.node {
            NodeKind::Kubelet { .. } => self
                .state_dir
                .join("volumes")
                .join(format!("{namespace}-{claim}")),
            NodeKind::Agent { state } => state
                .join("volumes")
                .join("pvc")
                .join(namespace)
                .join(claim),
        }
    }

    /// The log file of a container run by the node agent.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.agent_state_dir()
            .join("logs")
            .join(format!("{namespace}_{pod}_{container}.log"))
    }
}

/// The workspace root (where `deploy/` and `crds/` are): the nearest directory holding
/// `deploy/local/up.sh` above the package whose tests or benchmarks run (cargo sets
/// `CARGO_MANIFEST_DIR` for them) or else above the working directory.
///
/// Not this crate's compile-time directory alone: with a cargo target dir shared between
/// clones (`tests/run.sh` keeps it in `$HOME`), this crate stays compiled with the path of
/// the clone that built it first, which may be gone.
pub fn repo_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_dir().ok(),
    ];
    starts
        .into_iter()
        .flatten()
        .find_map(|start| {
            start
                .ancestors()
                .find(|dir| dir.join("deploy/local/up.sh").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or(compiled)
}
