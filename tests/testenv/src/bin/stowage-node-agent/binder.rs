//! Standing in for kube-scheduler: every pending pod with no node is bound to this node
//! (`pods/binding`) when its `nodeSelector` matches the node's labels and it has no
//! scheduling gates; otherwise it gets `PodScheduled=False`, reason `Unschedulable`.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::context::Agent;
use crate::node;

/// Whether `pod` may go to a node with `labels`; `Err` carries the reason it may not.
pub fn fits(pod: &Pod, labels: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err("pod has no spec".into());
    };
    if spec
        .scheduling_gates
        .as_ref()
        .is_some_and(|g| !g.is_empty())
    {
        return Err("pod has scheduling gates".into());
    }
    for (key, value) in spec.node_selector.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Err(format!(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector ({key}={value})."
            ));
        }
    }
    Ok(())
}

/// Watches unscheduled pods and binds them, forever.
pub async fn run(agent: &Agent) {
    let pods: Api<Pod> = Api::all(agent.client.clone());
    let labels = node::labels(&agent.node_name);
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut stream = watcher(pods, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(item) = stream.next().await {
        match item {
            Ok(pod) => consider(agent, &labels, &pod).await,
            Err(e) => tracing::warn!(error = %e, "watching unscheduled pods failed; retrying"),
        }
    }
}

async fn consider(agent: &Agent, labels: &BTreeMap<String, String>, pod: &Pod) {
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    // Gated pods wait (the API server already reports them as SchedulingGated).
    if pod.metadata.deletion_timestamp.is_some() || terminal || gated {
        return;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
    if let Err(reason) = fits(pod, labels) {
        mark_unschedulable(&pods, pod, &reason).await;
        return;
    }
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(agent.node_name.clone()),
            ..Default::default()
        },
    };
    match pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => tracing::info!(%namespace, pod = %name, node = %agent.node_name, "bound pod"),
        // Already bound (a stale event) or gone: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(%namespace, pod = %name, error = %e, "binding pod failed"),
    }
}

async fn mark_unschedulable(pods: &Api<Pod>, pod: &Pod, reason: &str) {
    let already = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.message.as_deref() == Some(reason)
        });
    if already {
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = json!({ "status": { "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": reason, "lastTransitionTime": jiff::Timestamp::now(),
    }]}});
    if let Err(e) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::warn!(pod = %name, error = %e, "marking pod unschedulable failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSchedulingGate, PodSpec};

    #[test]
    fn node_selector_and_gates() {
        let labels = node::labels("n1");
        let mut pod = Pod {
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        assert!(fits(&pod, &labels).is_ok());
        pod.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([(
            "kubernetes.io/os".to_string(),
            "linux".to_string(),
        )]));
        assert!(fits(&pod, &labels).is_ok());
        pod.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        assert!(fits(&pod, &labels).unwrap_err().contains("disk=ssd"));
        pod.spec.as_mut().unwrap().node_selector = None;
        pod.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![PodSchedulingGate { name: "g".into() }]);
        assert!(fits(&pod, &labels).is_err());
    }
}
