//! The Node object: registration with capacity and a Ready condition, then heartbeats
//! (a Lease in `kube-node-lease` every 10 s, node status every 30 s), so the node
//! lifecycle controller keeps the node Ready and never taints it.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::context::Agent;
use crate::downward::POD_IP;

const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_RENEW: Duration = Duration::from_secs(10);
const STATUS_EVERY: u32 = 3;

/// The labels the kubelet puts on its Node (also what `nodeSelector` is matched against).
pub fn labels(node_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node_name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("stowage.dev/node-agent".to_string(), "true".to_string()),
    ])
}

/// Creates the Node (or refreshes an existing one) and writes its status.
pub async fn register(agent: &Agent) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let node = match nodes.get_opt(&agent.node_name).await? {
        Some(node) => {
            let patch = json!({ "metadata": { "labels": labels(&agent.node_name) } });
            nodes
                .patch(
                    &agent.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            node
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(agent.node_name.clone()),
                    labels: Some(labels(&agent.node_name)),
                    ..Default::default()
                },
                ..Default::default()
            };
            nodes.create(&PostParams::default(), &node).await?
        }
    };
    write_status(agent, &nodes).await?;
    Ok(node)
}

async fn write_status(agent: &Agent, nodes: &Api<Node>) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let resources = json!({
        "cpu": format!("{}", agent.node.cpu_cores),
        "memory": format!("{}", agent.node.memory_bytes as u64),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let status = json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "stowage-node-agent is posting ready status"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": POD_IP },
                { "type": "Hostname", "address": agent.node_name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 0 } },
            "nodeInfo": {
                "machineID": "stowage-local", "systemUUID": "stowage-local", "bootID": "stowage-local",
                "kernelVersion": kernel_version(), "osImage": "stowage-node-agent (host processes)",
                "containerRuntimeVersion": "stowage://0.1.0", "kubeletVersion": "v1.34.0",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }
    });
    // Strategic merge keeps condition transition times the server already has only
    // when unchanged; a full write every heartbeat is what the kubelet does as well.
    nodes
        .patch_status(
            &agent.node_name,
            &PatchParams::default(),
            &Patch::Strategic(&status),
        )
        .await?;
    Ok(())
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Renews the Lease and the status forever.
pub async fn heartbeat(agent: &Agent, node: &Node) {
    let leases: Api<Lease> = Api::namespaced(agent.client.clone(), LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let mut tick: u32 = 0;
    loop {
        if let Err(e) = renew_lease(agent, &leases, node).await {
            tracing::warn!(node = %agent.node_name, error = %e, "renewing node lease failed");
        }
        tick = tick.wrapping_add(1);
        if tick.is_multiple_of(STATUS_EVERY)
            && let Err(e) = write_status(agent, &nodes).await
        {
            tracing::warn!(node = %agent.node_name, error = %e, "writing node status failed");
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

async fn renew_lease(agent: &Agent, leases: &Api<Lease>, node: &Node) -> Result<(), kube::Error> {
    let now = MicroTime(Timestamp::now());
    if leases.get_opt(&agent.node_name).await?.is_some() {
        let patch = json!({ "spec": { "renewTime": now, "holderIdentity": agent.node_name } });
        leases
            .patch(
                &agent.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        return Ok(());
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(agent.node_name.clone()),
            owner_references: node.metadata.uid.clone().map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: agent.node_name.clone(),
                    uid,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(agent.node_name.clone()),
            lease_duration_seconds: Some(40),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}
