//! What every part of the agent shares.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Client;

use crate::downward::NodeResources;
use crate::image_map::ImageMap;
use crate::layout::Layout;

/// The agent's configuration and API client.
pub struct Agent {
    /// API client (the agent's own kubeconfig).
    pub client: Client,
    /// The Node this agent registers and runs pods for.
    pub node_name: String,
    /// State directory layout.
    pub layout: Layout,
    /// Allocatable resources.
    pub node: NodeResources,
    /// `KUBERNETES_SERVICE_*` variables given to every container.
    pub service_env: BTreeMap<String, String>,
    /// Host binaries standing in for image files.
    pub image_map: ImageMap,
    /// How long a pod may wait for its volumes before it fails.
    pub setup_timeout: Duration,
}
