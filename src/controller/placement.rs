//! Where the Job of a plugin that works on an application's claim may run (`sqlite`):
//! next to the pod that uses the claim when the claim can be mounted by one node only.
//!
//! Kubernetes does not place a second pod of a `ReadWriteOnce` claim on the node where
//! the claim is attached: a Job scheduled elsewhere waits forever for the volume
//! ("Multi-Attach error"). So before the Job is created the operator looks at the pods
//! that mount the claim ([`decide`], pure) and pins the Job to their node with a
//! required node affinity on `metadata.name` ([`pin_to_node`]). A `ReadWriteOncePod` claim
//! in use cannot be mounted by anyone else, and a claim that does not exist cannot be
//! mounted at all: both end the run at once with [`REASON`] and a message that says what
//! to do, rather than leaving a pod pending.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, Pod,
};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::cache::Cache;
use crate::jobs::labels;

/// The `reason` of a run that could not start because of the application's claim (and
/// of the API error [`place`] returns for it).
pub const REASON: &str = "ClaimUnavailable";

/// How a claim can be mounted, from its access modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimAccess {
    /// `ReadWriteMany` or `ReadOnlyMany` only: any node, any number of pods.
    ManyNodes,
    /// `ReadWriteOnce` (or no modes known yet, the safe side): the pods of one node.
    OneNode,
    /// `ReadWriteOncePod`: one pod.
    OnePod,
}

impl ClaimAccess {
    /// The access of `pvc`, from `spec.accessModes`.
    pub fn of(pvc: &PersistentVolumeClaim) -> ClaimAccess {
        let modes = pvc
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if modes.iter().any(|m| m == "ReadWriteOncePod") {
            ClaimAccess::OnePod
        } else if modes.is_empty() || modes.iter().any(|m| m == "ReadWriteOnce") {
            ClaimAccess::OneNode
        } else {
            ClaimAccess::ManyNodes
        }
    }
}

/// A pod, other than stowage's own, that mounts the claim and has not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimUser {
    /// The pod's name.
    pub pod: String,
    /// The node it was scheduled to; `None` while pending.
    pub node: Option<String>,
}

/// Where the Job may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts it (the claim is not attached, or any node may mount it).
    Anywhere,
    /// On this node, where `pod` has the claim attached.
    OnNode {
        /// The node's name.
        node: String,
        /// The pod that uses the claim there (for logs).
        pod: String,
    },
}

/// Why the Job cannot run; the text is the run's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unplaceable {
    /// The claim does not exist.
    #[error(
        "claim {claim:?} ({field}) does not exist in namespace {namespace:?}: create it, or set {field} to the claim the application uses"
    )]
    NotFound {
        /// The claim's name.
        claim: String,
        /// The config field that names it (`spec.sqlite.claimName`).
        field: String,
        /// The namespace.
        namespace: String,
    },
    /// A `ReadWriteOncePod` claim that a pod uses.
    #[error(
        "claim {claim:?} ({field}) is ReadWriteOncePod and pod {pod:?} uses it, so no other pod can mount it: stop the application during the run (scale it to 0), or give it a ReadWriteOnce claim"
    )]
    InUseByOnePod {
        /// The claim's name.
        claim: String,
        /// The config field that names it.
        field: String,
        /// The pod that holds it.
        pod: String,
    },
}

/// Where a Job that mounts `claim` may run, given how the claim can be mounted (`None`:
/// the claim does not exist) and the pods that use it.
pub fn decide(
    namespace: &str,
    claim: &str,
    field: &str,
    access: Option<ClaimAccess>,
    users: &[ClaimUser],
) -> Result<Placement, Unplaceable> {
    let Some(access) = access else {
        return Err(Unplaceable::NotFound {
            claim: claim.to_owned(),
            field: field.to_owned(),
            namespace: namespace.to_owned(),
        });
    };
    match access {
        ClaimAccess::ManyNodes => Ok(Placement::Anywhere),
        ClaimAccess::OnePod => match users.first() {
            None => Ok(Placement::Anywhere),
            Some(user) => Err(Unplaceable::InUseByOnePod {
                claim: claim.to_owned(),
                field: field.to_owned(),
                pod: user.pod.clone(),
            }),
        },
        // The first scheduled user by name: normally all of them are on one node.
        ClaimAccess::OneNode => Ok(users
            .iter()
            .filter_map(|u| u.node.as_ref().map(|node| (node, &u.pod)))
            .min()
            .map_or(Placement::Anywhere, |(node, pod)| Placement::OnNode {
                node: node.clone(),
                pod: pod.clone(),
            })),
    }
}

/// The pods of `pods` that mount `claim` and may hold it: not finished, not stowage's.
pub fn claim_users(pods: &[Pod], claim: &str) -> Vec<ClaimUser> {
    pods.iter()
        .filter(|pod| {
            pod.labels().get(labels::MANAGED_BY).map(String::as_str)
                != Some(labels::MANAGED_BY_VALUE)
        })
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(|pod| {
            pod.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|volumes| {
                    volumes.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim)
                    })
                })
        })
        .map(|pod| ClaimUser {
            pod: pod.name_any(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        })
        .collect()
}

/// Require `job`'s pod to run on `node`.
pub fn pin_to_node(job: &mut Job, node: &str) {
    let Some(spec) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    spec.affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".to_owned(),
                operator: "In".to_owned(),
                values: Some(vec![node.to_owned()]),
            }]),
        }],
    });
}

/// The application's claim `job` mounts, if any.
pub fn app_claim_of(job: &Job) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == crate::jobs::APP_VOLUME)?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone())
}

/// Place `job`, which mounts the application's `claim` ([`app_claim_of`]), before it is
/// created: read the pods of the namespace (from the API server's cache,
/// `resourceVersion=0`), [`decide`], and pin the Job to its node. A Job that cannot run
/// is refused as the API server would refuse it (422, reason [`REASON`]), so every
/// caller records the run as failed with the message.
pub async fn place(
    client: &Client,
    cache: &Cache,
    job: &mut Job,
    claim: &str,
) -> Result<(), kube::Error> {
    let namespace = job.namespace().unwrap_or_default();
    let plugin = job
        .labels()
        .get(labels::PLUGIN)
        .cloned()
        .unwrap_or_default();
    let field = format!("spec.{plugin}.claimName");
    let access = cache.claim_access(&namespace, claim);
    let users = match access {
        None | Some(ClaimAccess::ManyNodes) => Vec::new(),
        Some(_) => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let list = pods.list(&ListParams::default().match_any()).await?;
            claim_users(&list.items, claim)
        }
    };
    match decide(&namespace, claim, &field, access, &users) {
        Ok(Placement::Anywhere) => Ok(()),
        Ok(Placement::OnNode { node, pod }) => {
            tracing::info!(
                job = job.name_any(),
                claim,
                node,
                pod,
                "the Job follows the pod that has the claim attached"
            );
            pin_to_node(job, &node);
            Ok(())
        }
        Err(why) => Err(kube::Error::Api(
            kube::core::Status::failure(&why.to_string(), REASON)
                .with_code(422)
                .boxed(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(pod: &str, node: Option<&str>) -> ClaimUser {
        ClaimUser {
            pod: pod.into(),
            node: node.map(Into::into),
        }
    }

    #[test]
    fn decisions() {
        use ClaimAccess::*;
        let on = |node: &str, pod: &str| -> Result<Placement, &'static str> {
            Ok(Placement::OnNode {
                node: node.into(),
                pod: pod.into(),
            })
        };
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Option<ClaimAccess>,
            Vec<ClaimUser>,
            Result<Placement, &str>,
        )> = vec![
            ("no claim", None, vec![], Err("does not exist")),
            (
                "many nodes, used",
                Some(ManyNodes),
                vec![user("app", Some("n1"))],
                Ok(Placement::Anywhere),
            ),
            (
                "one node, unused",
                Some(OneNode),
                vec![],
                Ok(Placement::Anywhere),
            ),
            (
                "one node, pending user",
                Some(OneNode),
                vec![user("app", None)],
                Ok(Placement::Anywhere),
            ),
            (
                "one node, used",
                Some(OneNode),
                vec![user("app", Some("n2"))],
                on("n2", "app"),
            ),
            (
                "one node, users on two nodes: the first by node name",
                Some(OneNode),
                vec![
                    user("b", Some("n3")),
                    user("a", None),
                    user("c", Some("n1")),
                ],
                on("n1", "c"),
            ),
            (
                "one pod, unused",
                Some(OnePod),
                vec![],
                Ok(Placement::Anywhere),
            ),
            (
                "one pod, used",
                Some(OnePod),
                vec![user("app-0", Some("n1"))],
                Err("ReadWriteOncePod and pod \"app-0\""),
            ),
        ];
        for (name, access, users, want) in cases {
            let got = decide("shop", "data", "spec.sqlite.claimName", access, &users);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(got), Err(want)) => {
                    let text = got.to_string();
                    assert!(text.contains(want), "{name}: {text}");
                    assert!(text.contains("spec.sqlite.claimName"), "{name}: {text}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn access_from_modes() {
        let pvc = |modes: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(serde_json::json!({"spec": {"accessModes": modes}})).unwrap()
        };
        assert_eq!(
            ClaimAccess::of(&pvc(serde_json::json!([]))),
            ClaimAccess::OneNode
        );
        assert_eq!(
            ClaimAccess::of(&pvc(serde_json::json!(["ReadWriteOnce"]))),
            ClaimAccess::OneNode
        );
        assert_eq!(
            ClaimAccess::of(&pvc(serde_json::json!([
                "ReadWriteOnce",
                "ReadWriteOncePod"
            ]))),
            ClaimAccess::OnePod
        );
        assert_eq!(
            ClaimAccess::of(&pvc(serde_json::json!(["ReadWriteMany"]))),
            ClaimAccess::ManyNodes
        );
        assert_eq!(
            ClaimAccess::of(&pvc(serde_json::json!(["ReadOnlyMany"]))),
            ClaimAccess::ManyNodes
        );
    }

    #[test]
    fn users_are_unfinished_foreign_pods_mounting_the_claim() {
        let pod = |name: &str, claim: &str, phase: &str, stowage: bool| -> Pod {
            let mut labels = serde_json::Map::new();
            if stowage {
                labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
            }
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": "n1", "containers": [],
                         "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let pods = [
            pod("app", "data", "Running", false),
            pod("other", "logs", "Running", false),
            pod("done", "data", "Succeeded", false),
            pod("failed", "data", "Failed", false),
            pod("backup", "data", "Running", true),
            pod("starting", "data", "Pending", false),
        ];
        let names: Vec<String> = claim_users(&pods, "data")
            .into_iter()
            .map(|u| u.pod)
            .collect();
        assert_eq!(names, ["app", "starting"]);
    }

    #[test]
    fn pinning_sets_a_required_node_affinity_on_the_name() {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "spec": {"template": {"spec": {"containers": []}}}
        }))
        .unwrap();
        pin_to_node(&mut job, "n7");
        let spec = serde_json::to_value(&job).unwrap();
        assert_eq!(
            spec["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"],
            serde_json::json!([{"key": "metadata.name", "operator": "In", "values": ["n7"]}])
        );
    }
}
