//! The downward API: pod fields and container resources as strings, shared by `env`
//! (`fieldRef`, `resourceFieldRef`) and `downwardAPI` volumes.

use k8s_openapi::api::core::v1::{Pod, ResourceFieldSelector};

/// The address every pod gets: processes run on the host's loopback.
pub const POD_IP: &str = "127.0.0.1";

/// What the node offers, used when a container sets no limit (as the kubelet does).
#[derive(Clone, Debug)]
pub struct NodeResources {
    /// Allocatable CPU in cores.
    pub cpu_cores: f64,
    /// Allocatable memory in bytes.
    pub memory_bytes: f64,
}

/// A downward API reference the agent cannot resolve.
#[derive(Debug, thiserror::Error)]
pub enum DownwardError {
    /// The field path is not one the downward API supports.
    #[error(
        "unsupported fieldRef.fieldPath {0:?} (supported: metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], metadata.labels, metadata.annotations, spec.nodeName, spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP, status.podIPs)"
    )]
    UnsupportedField(String),
    /// The resource name is not one the downward API supports.
    #[error("unsupported resourceFieldRef.resource {0:?}")]
    UnsupportedResource(String),
    /// `resourceFieldRef.containerName` names no container of the pod.
    #[error("resourceFieldRef.containerName {0:?} is not a container of this pod")]
    UnknownContainer(String),
    /// A quantity could not be parsed.
    #[error("invalid quantity {0:?} in resourceFieldRef")]
    BadQuantity(String),
}

/// The value of `fieldRef.fieldPath` for `pod`.
pub fn pod_field(pod: &Pod, path: &str) -> Result<String, DownwardError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => POD_IP.to_string(),
        other => {
            if let Some(key) = subscript(other, "metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|m| m.get(key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = subscript(other, "metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|m| m.get(key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(DownwardError::UnsupportedField(other.to_string()));
            }
        }
    };
    Ok(value)
}

/// `prefix['key']` -> `key`.
fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// Labels/annotations as the kubelet writes them in a downwardAPI file: `k="v"` lines, sorted.
fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// The value of a `resourceFieldRef` for container `default_container` (or the one it names).
pub fn container_resource(
    pod: &Pod,
    default_container: Option<&str>,
    selector: &ResourceFieldSelector,
    node: &NodeResources,
) -> Result<String, DownwardError> {
    let name = selector
        .container_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(default_container)
        .unwrap_or_default();
    let spec = pod.spec.as_ref();
    let container = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == name)
        .ok_or_else(|| DownwardError::UnknownContainer(name.to_string()))?;
    let resources = container.resources.as_ref();
    let (kind, field) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| DownwardError::UnsupportedResource(selector.resource.clone()))?;
    let map = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(DownwardError::UnsupportedResource(
                selector.resource.clone(),
            ));
        }
    };
    let divisor = match &selector.divisor {
        Some(q) => parse_quantity(&q.0).ok_or_else(|| DownwardError::BadQuantity(q.0.clone()))?,
        None => 1.0,
    };
    let set = match map.and_then(|m| m.get(field)) {
        Some(q) => {
            Some(parse_quantity(&q.0).ok_or_else(|| DownwardError::BadQuantity(q.0.clone()))?)
        }
        None => None,
    };
    let value = match (kind, field) {
        // An unset limit defaults to the node's allocatable; an unset request to 0
        // (cpu requests default to the limit in the API server when only limits are set).
        ("limits", "cpu") => set.unwrap_or(node.cpu_cores),
        ("limits", "memory") => set.unwrap_or(node.memory_bytes),
        ("requests", "cpu") | ("requests", "memory") => set.unwrap_or(0.0),
        (_, "ephemeral-storage") => set.unwrap_or(0.0),
        _ => {
            return Err(DownwardError::UnsupportedResource(
                selector.resource.clone(),
            ));
        }
    };
    if divisor <= 0.0 {
        return Err(DownwardError::BadQuantity(format!("divisor {divisor}")));
    }
    let scaled = (value / divisor).ceil();
    // CPU is never reported below 1 divisor unit (kubelet: ceil, minimum 1 for cpu).
    let scaled = if field == "cpu" {
        scaled.max(1.0)
    } else {
        scaled
    };
    Ok(format!("{scaled:.0}"))
}

/// Parses a Kubernetes quantity (`500m`, `1Gi`, `2`, `1e3`, `128M`) into a number.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    for (suffix, factor) in [("P", 1e15), ("E", 1e18)] {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([
            ("app".to_string(), "db".to_string()),
            ("tier".to_string(), "x\"y".to_string()),
        ]));
        pod.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    limits: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("250m".into())),
                        ("memory".to_string(), Quantity("64Mi".into())),
                    ])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        pod
    }

    #[test]
    fn pod_fields() {
        let pod = pod();
        assert_eq!(pod_field(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(pod_field(&pod, "metadata.labels['app']").unwrap(), "db");
        assert_eq!(pod_field(&pod, "metadata.labels['missing']").unwrap(), "");
        assert_eq!(
            pod_field(&pod, "metadata.labels").unwrap(),
            "app=\"db\"\ntier=\"x\\\"y\""
        );
        assert_eq!(pod_field(&pod, "spec.nodeName").unwrap(), "n1");
        assert_eq!(
            pod_field(&pod, "spec.serviceAccountName").unwrap(),
            "default"
        );
        assert_eq!(pod_field(&pod, "status.podIP").unwrap(), "127.0.0.1");
        assert!(pod_field(&pod, "spec.bogus").is_err());
    }

    #[test]
    fn resources_with_divisors_and_node_defaults() {
        let pod = pod();
        let node = NodeResources {
            cpu_cores: 2.0,
            memory_bytes: 8.0 * 1024.0 * 1024.0 * 1024.0,
        };
        let sel = |resource: &str, divisor: Option<&str>| ResourceFieldSelector {
            container_name: None,
            divisor: divisor.map(|d| Quantity(d.into())),
            resource: resource.into(),
        };
        let get = |s| container_resource(&pod, Some("c"), &s, &node).unwrap();
        assert_eq!(get(sel("limits.cpu", None)), "1");
        assert_eq!(get(sel("limits.cpu", Some("1m"))), "250");
        assert_eq!(get(sel("limits.memory", Some("1Mi"))), "64");
        assert_eq!(get(sel("limits.memory", None)), "67108864");
        assert_eq!(get(sel("requests.memory", None)), "0");
        assert!(container_resource(&pod, Some("nope"), &sel("limits.cpu", None), &node).is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("2M"), Some(2e6));
        assert_eq!(parse_quantity("abc"), None);
    }
}
