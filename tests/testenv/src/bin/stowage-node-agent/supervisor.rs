//! Pods assigned to this node: one worker per pod, deletion handed to it, and what to do
//! with pods found after a restart of the agent.
//!
//! A pod not known to this process and not terminal is run when it never started
//! (`status.startTime` unset); when it had started under an earlier agent process (whose
//! processes were killed at shutdown or by the start-up sweep) it is marked `Failed`,
//! reason `NodeAgentRestarted`, so its controller replaces it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

use crate::container::process_start_ticks;
use crate::context::Agent;
use crate::layout::Layout;
use crate::pod_worker::{self, WorkerHandle};

struct Entry {
    worker: Option<WorkerHandle>,
    finalizing: bool,
}

impl Entry {
    fn done(&self) -> bool {
        self.worker
            .as_ref()
            .is_none_or(|w| w.done.load(Ordering::SeqCst))
    }
}

/// Watches this node's pods and runs them, forever.
pub async fn run(agent: Arc<Agent>) {
    let pods: Api<Pod> = Api::all(agent.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node_name));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let mut entries: HashMap<String, Entry> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(uid(&pod));
                on_pod(&agent, &mut entries, pod).await;
            }
            Ok(watcher::Event::InitDone) => {
                // Pods that vanished while the watch was down.
                let gone: Vec<String> = entries
                    .keys()
                    .filter(|u| !listed.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    on_gone(&agent, &mut entries, &uid);
                }
            }
            Ok(watcher::Event::Apply(pod)) => on_pod(&agent, &mut entries, pod).await,
            Ok(watcher::Event::Delete(pod)) => on_gone(&agent, &mut entries, &uid(&pod)),
            Err(e) => tracing::warn!(error = %e, "watching this node's pods failed; retrying"),
        }
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

async fn on_pod(agent: &Arc<Agent>, entries: &mut HashMap<String, Entry>, pod: Pod) {
    let uid = uid(&pod);
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let grace = Duration::from_secs(
        pod.metadata
            .deletion_grace_period_seconds
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or(30),
    );
    if let Some(entry) = entries.get_mut(&uid) {
        if !deleting {
            return;
        }
        if !entry.done() {
            if let Some(w) = &entry.worker
                && w.deleting.borrow().is_none()
            {
                w.deleting.send_replace(Some(grace));
            }
        } else if !entry.finalizing && pod.metadata.deletion_grace_period_seconds != Some(0) {
            entry.finalizing = true;
            spawn_finalize(agent, &pod);
        }
        return;
    }
    let terminal = matches!(phase(&pod), Some("Succeeded" | "Failed"));
    let started_before = pod.status.as_ref().is_some_and(|s| s.start_time.is_some());
    let mut entry = Entry {
        worker: None,
        finalizing: false,
    };
    if deleting {
        // Nothing of it runs here: only the last delete is left.
        if pod.metadata.deletion_grace_period_seconds != Some(0) {
            entry.finalizing = true;
            spawn_finalize(agent, &pod);
        }
    } else if terminal {
        // Finished earlier; kept until deleted.
    } else if started_before {
        mark_orphaned(agent, &pod).await;
    } else {
        entry.worker = Some(pod_worker::spawn(agent.clone(), pod));
    }
    entries.insert(uid, entry);
}

fn on_gone(agent: &Agent, entries: &mut HashMap<String, Entry>, uid: &str) {
    let Some(entry) = entries.remove(uid) else {
        return;
    };
    match entry.worker {
        Some(w) if !w.done.load(Ordering::SeqCst) => {
            // Force-deleted: stop now; the worker removes its directory when done.
            w.deleting.send_replace(Some(Duration::ZERO));
        }
        _ => {
            let dir = agent.layout.pod(uid);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "removing pod directory failed");
            }
        }
    }
}

fn spawn_finalize(agent: &Arc<Agent>, pod: &Pod) {
    let agent = agent.clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = uid(pod);
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
        pod_worker::finalize_deletion(&agent, &pods, &name, &uid).await;
    });
}

/// Fails a pod that was running under an earlier agent process.
async fn mark_orphaned(agent: &Agent, pod: &Pod) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::warn!(%namespace, pod = %name, "pod was started by an earlier agent process; marking it Failed");
    let now = Timestamp::now();
    let unknown = |statuses: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses
            .into_iter()
            .flatten()
            .map(|s| {
                let done = s.state.as_ref().is_some_and(|st| st.terminated.is_some());
                let mut s = s.clone();
                if !done {
                    s.ready = false;
                    s.started = Some(false);
                    s.state = Some(serde_json::from_value(json!({ "terminated": {
                        "exitCode": 137, "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the node agent restarted",
                        "finishedAt": now,
                    }})).unwrap_or_default());
                }
                s
            })
            .collect::<Vec<_>>()
    };
    let status = pod.status.clone().unwrap_or_default();
    let patch = json!({ "status": {
        "phase": "Failed",
        "reason": "NodeAgentRestarted",
        "message": "the node agent restarted while this pod ran; its processes were stopped",
        "containerStatuses": unknown(status.container_statuses.as_ref()),
        "initContainerStatuses": unknown(status.init_container_statuses.as_ref()),
    }});
    let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
    if let Err(e) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::warn!(%namespace, pod = %name, error = %e, "marking orphaned pod Failed failed");
    }
}

/// Kills the process groups recorded under `layout` that still run (same pid, same start
/// time): leftovers of an earlier agent process, or everything at shutdown.
pub fn kill_recorded_processes(layout: &Layout) -> usize {
    let mut killed = 0;
    let Ok(pods) = std::fs::read_dir(layout.pods()) else {
        return 0;
    };
    for pod in pods.flatten() {
        let Ok(containers) = std::fs::read_dir(pod.path().join("containers")) else {
            continue;
        };
        for c in containers.flatten() {
            let pid_file = c.path().join("pid");
            if kill_recorded(&pid_file) {
                killed += 1;
            }
        }
    }
    killed
}

fn kill_recorded(pid_file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let mut parts = text.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(ticks))) = (
        parts.next().map(str::parse::<i32>),
        parts.next().map(str::parse::<u64>),
    ) else {
        return false;
    };
    let alive = pid > 0 && process_start_ticks(pid) == Some(ticks);
    if alive {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(pid_file);
    alive
}
