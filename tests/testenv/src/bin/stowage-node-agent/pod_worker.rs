//! The life of one pod on this node: volumes, init containers in order, app containers in
//! parallel with restarts per `restartPolicy`, `activeDeadlineSeconds`, graceful stop on
//! deletion, final status, and the last delete (grace 0) once the processes are gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Preconditions};
use tokio::sync::watch;

use crate::container::{self, Instance, KillOrder};
use crate::context::Agent;
use crate::env::{self, EnvInputs};
use crate::lookup::ClusterLookup;
use crate::reporter::{self, StatusHandle};
use crate::status::{ContainerRecord, Ended, PodFailure, PodModel, State};
use crate::volumes::{self, Prepared};

/// Restart back-off: first delay, doubled per restart up to the cap.
const BACKOFF_START: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Pause between attempts to set up volumes or env references.
const SETUP_RETRY: Duration = Duration::from_secs(2);

/// The supervisor's side of a worker.
pub struct WorkerHandle {
    /// Send `Some(grace)` when the pod is being deleted.
    pub deleting: watch::Sender<Option<Duration>>,
    /// Set when the worker has finished.
    pub done: Arc<AtomicBool>,
}

/// Starts the worker of `pod`.
pub fn spawn(agent: Arc<Agent>, pod: Pod) -> WorkerHandle {
    let (deleting, rx) = watch::channel(None);
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    tokio::spawn(async move {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        run(agent, pod, rx).await;
        flag.store(true, Ordering::SeqCst);
        tracing::debug!(%namespace, pod = %name, "pod worker finished");
    });
    WorkerHandle { deleting, done }
}

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Init(usize),
    Main(usize),
}

/// What a worker shares with its container tasks.
struct Worker {
    agent: Arc<Agent>,
    pod: Pod,
    status: Arc<StatusHandle>,
    restart_policy: String,
    /// Stops every container of the pod.
    kill: watch::Sender<KillOrder>,
    /// `terminationGracePeriodSeconds`.
    grace: Duration,
}

async fn run(agent: Arc<Agent>, pod: Pod, mut deleting: watch::Receiver<Option<Duration>>) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = pod.spec.clone() else { return };
    let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let image = |c: &Container| c.image.clone().unwrap_or_default();
    let start_time = Timestamp::now();
    let model = PodModel {
        restart_policy: restart_policy.clone(),
        start_time,
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRecord::waiting(&c.name, &image(c), "PodInitializing"))
            .collect(),
        main: spec
            .containers
            .iter()
            .map(|c| {
                let reason = if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                };
                ContainerRecord::waiting(&c.name, &image(c), reason)
            })
            .collect(),
        failure: None,
        sandbox_ready: false,
        transitions: Vec::new(),
    };
    let (status, reporter_task) = reporter::start(pods.clone(), name.clone(), model);
    status.update(|_| ());
    tracing::info!(%namespace, pod = %name, %uid, "starting pod");

    let grace = Duration::from_secs(
        spec.termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(30),
    );
    let deadline = spec
        .active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let (kill_tx, kill_rx) = watch::channel(KillOrder::None);
    let worker = Arc::new(Worker {
        agent: agent.clone(),
        pod: pod.clone(),
        status: status.clone(),
        restart_policy,
        kill: kill_tx,
        grace,
    });
    let mut deleted = None::<Duration>;
    {
        let lifecycle = lifecycle(worker.clone(), kill_rx);
        tokio::pin!(lifecycle);
        let deadline_sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline_sleep);
        let (mut deadline_fired, mut watching) = (false, true);
        loop {
            tokio::select! {
                () = &mut lifecycle => break,
                () = &mut deadline_sleep, if !deadline_fired => {
                    deadline_fired = true;
                    tracing::info!(%namespace, pod = %name, "activeDeadlineSeconds exceeded; stopping the pod");
                    status.update(|m| {
                        m.failure.get_or_insert(PodFailure {
                            reason: "DeadlineExceeded".into(),
                            message: "Pod was active on the node longer than the specified deadline".into(),
                        });
                    });
                    worker.kill.send_replace(KillOrder::Stop { grace });
                }
                changed = deleting.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    if let Some(pod_grace) = *deleting.borrow_and_update() {
                        tracing::info!(%namespace, pod = %name, grace_seconds = pod_grace.as_secs(), "pod deleted; stopping its processes");
                        deleted = Some(pod_grace);
                        worker.kill.send_replace(KillOrder::Stop { grace: pod_grace });
                    }
                }
            }
        }
    }
    if deleted.is_some() && !status.phase().is_terminal() {
        status.update(|m| {
            m.failure.get_or_insert(PodFailure {
                reason: "Terminated".into(),
                message: "the pod was deleted and its containers were stopped".into(),
            });
        });
    }
    let phase = status.phase();
    tracing::info!(%namespace, pod = %name, phase = ?phase, "pod finished");
    drop(worker);
    drop(status);
    let _ = reporter_task.await;

    // A deletion that arrived while the pod was finishing still needs the last delete.
    if deleted.is_none() && deleting.borrow().is_some() {
        deleted = *deleting.borrow();
    }
    if deleted.is_some() {
        finalize_deletion(&agent, &pods, &name, &uid).await;
    }
}

/// Removes the pod object (grace 0) and its directory once its processes are gone.
pub async fn finalize_deletion(agent: &Agent, pods: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(pod = name, error = %e, "final delete of pod failed"),
    }
    let dir = agent.layout.pod(uid);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(pod = name, dir = %dir.display(), error = %e, "removing pod directory failed");
    }
}

async fn lifecycle(worker: Arc<Worker>, mut kill: watch::Receiver<KillOrder>) {
    let Some(spec) = worker.pod.spec.as_ref() else {
        return;
    };
    let namespace = worker.pod.metadata.namespace.clone().unwrap_or_default();
    let lookup = ClusterLookup::new(worker.agent.client.clone(), &namespace);
    let started = Instant::now();

    let volumes = loop {
        match volumes::prepare(&worker.agent, &worker.pod, &lookup).await {
            Ok(v) => break v,
            Err(e) => {
                let message = e.to_string();
                if !setup_wait(
                    &worker,
                    &mut kill,
                    started,
                    SetupProblem::Mount,
                    &message,
                    None,
                )
                .await
                {
                    return;
                }
            }
        }
    };
    worker.status.update(|m| m.sandbox_ready = true);
    let volumes = Arc::new(volumes);

    for (index, c) in spec.init_containers.iter().flatten().enumerate() {
        let ok = container_loop(
            &worker,
            Slot::Init(index),
            c,
            &volumes,
            &lookup,
            kill.clone(),
            started,
        )
        .await;
        if !ok {
            return;
        }
    }
    worker.status.update(|m| {
        for r in &mut m.main {
            if matches!(&r.state, State::Waiting { reason, .. } if reason == "PodInitializing") {
                r.state = State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                };
            }
        }
    });
    let runs = spec.containers.iter().enumerate().map(|(index, c)| {
        let worker = worker.clone();
        let volumes = volumes.clone();
        let kill = kill.clone();
        let namespace = namespace.clone();
        async move {
            let lookup = ClusterLookup::new(worker.agent.client.clone(), &namespace);
            container_loop(
                &worker,
                Slot::Main(index),
                c,
                &volumes,
                &lookup,
                kill,
                started,
            )
            .await
        }
    });
    futures::future::join_all(runs).await;
}

/// A reason a pod or container cannot start yet.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SetupProblem {
    /// The pod's volumes cannot be set up (`FailedMount`): the pod fails once
    /// `--setup-timeout` has passed, so a Job's backoff sees the error.
    Mount,
    /// A container cannot be configured (`CreateContainerConfigError`: a missing Secret,
    /// ConfigMap or key, a `runAsNonRoot` violation): retried for as long as the pod
    /// exists, as the kubelet does, so the object can still appear.
    ContainerConfig,
}

impl SetupProblem {
    /// The pod-level failure reason, once the agent gives up.
    fn reason(self) -> &'static str {
        match self {
            SetupProblem::Mount => "FailedMount",
            SetupProblem::ContainerConfig => "CreateContainerConfigError",
        }
    }

    /// The container's waiting reason while the problem lasts.
    fn waiting_reason(self) -> &'static str {
        match self {
            SetupProblem::Mount => "ContainerCreating",
            SetupProblem::ContainerConfig => "CreateContainerConfigError",
        }
    }

    /// Whether the pod fails now, `elapsed` after it was accepted.
    fn gives_up(self, elapsed: Duration, setup_timeout: Duration) -> bool {
        match self {
            SetupProblem::Mount => elapsed >= setup_timeout,
            SetupProblem::ContainerConfig => false,
        }
    }
}

/// Waits before retrying pod setup; records why in the containers' waiting state. Returns
/// false when a stop was ordered or (after failing the pod) when the problem is one the
/// agent gives up on and the setup timeout passed.
async fn setup_wait(
    worker: &Worker,
    kill: &mut watch::Receiver<KillOrder>,
    started: Instant,
    problem: SetupProblem,
    message: &str,
    only: Option<Slot>,
) -> bool {
    let (namespace, pod) = names(&worker.pod);
    let reason = problem.reason();
    if problem.gives_up(started.elapsed(), worker.agent.setup_timeout) {
        tracing::warn!(%namespace, %pod, %reason, %message, "pod setup did not succeed in time; failing the pod");
        worker.status.update(|m| {
            m.failure = Some(PodFailure {
                reason: reason.into(),
                message: message.into(),
            });
        });
        // The pod failed as a whole: whatever already runs stops too.
        worker.kill.send_replace(KillOrder::Stop {
            grace: worker.grace,
        });
        return false;
    }
    tracing::info!(%namespace, %pod, %reason, %message, "pod setup not possible yet; retrying");
    let waiting_reason = problem.waiting_reason();
    worker.status.update(|m| {
        let records = match only {
            Some(Slot::Init(i)) => m.init.get_mut(i).into_iter().collect::<Vec<_>>(),
            Some(Slot::Main(i)) => m.main.get_mut(i).into_iter().collect(),
            None => m.init.iter_mut().chain(m.main.iter_mut()).collect(),
        };
        for r in records {
            r.state = State::Waiting {
                reason: waiting_reason.into(),
                message: Some(message.into()),
            };
        }
    });
    tokio::select! {
        () = tokio::time::sleep(SETUP_RETRY) => true,
        _ = container::wait_for_kill(kill) => false,
    }
}

fn names(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Runs a container until it needs no restart. Returns true when it ended with 0
/// (what an init container needs to let the pod go on).
async fn container_loop(
    worker: &Worker,
    slot: Slot,
    c: &Container,
    volumes: &HashMap<String, Prepared>,
    lookup: &ClusterLookup,
    mut kill: watch::Receiver<KillOrder>,
    started: Instant,
) -> bool {
    let (namespace, pod) = names(&worker.pod);
    let mut backoff = BACKOFF_START;
    loop {
        if *kill.borrow() != KillOrder::None {
            return false;
        }
        let Some(env) = resolve_env(worker, slot, c, lookup, &mut kill, started).await else {
            return false;
        };
        let restart = worker
            .status
            .read(|m| record(m, slot).map_or(0, |r| r.restart_count));
        let instance = Instance {
            agent: &worker.agent,
            pod: &worker.pod,
            container: c,
            volumes,
            env: &env,
            restart,
        };
        let planned = match container::plan(&instance) {
            Ok(p) => p,
            Err(e) => {
                if setup_wait(
                    worker,
                    &mut kill,
                    started,
                    SetupProblem::ContainerConfig,
                    &e.to_string(),
                    Some(slot),
                )
                .await
                {
                    continue;
                }
                return false;
            }
        };
        let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let status = &worker.status;
        let ended = container::run(planned, fallback, &mut kill, |at, id| {
            tracing::info!(%namespace, %pod, container = %c.name, "container started");
            status.update(|m| {
                if let Some(r) = record_mut(m, slot) {
                    r.state = State::Running {
                        started_at: at,
                        container_id: id.to_string(),
                    };
                }
            });
        })
        .await;
        let code = ended.exit_code;
        tracing::info!(%namespace, %pod, container = %c.name, exit_code = code, reason = %ended.reason, "container ended");
        let restart = match worker.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        let stopping = *kill.borrow() != KillOrder::None;
        if !restart || stopping {
            worker.status.update(|m| set_terminated(m, slot, ended));
            return code == 0;
        }
        if matches!(slot, Slot::Init(_)) && code == 0 {
            worker.status.update(|m| set_terminated(m, slot, ended));
            return true;
        }
        let message = format!(
            "back-off {}s restarting failed container={} pod={pod}",
            backoff.as_secs(),
            c.name
        );
        worker.status.update(|m| {
            if let Some(r) = record_mut(m, slot) {
                r.last = Some(ended);
                r.restart_count += 1;
                r.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(message),
                };
            }
        });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = container::wait_for_kill(&mut kill) => return false,
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

async fn resolve_env(
    worker: &Worker,
    slot: Slot,
    c: &Container,
    lookup: &ClusterLookup,
    kill: &mut watch::Receiver<KillOrder>,
    started: Instant,
) -> Option<BTreeMap<String, String>> {
    loop {
        let inputs = EnvInputs {
            pod: &worker.pod,
            container: c,
            service_env: &worker.agent.service_env,
            node: &worker.agent.node,
        };
        match env::container_env(&inputs, lookup).await {
            Ok(env) => return Some(env),
            Err(e) => {
                if !setup_wait(
                    worker,
                    kill,
                    started,
                    SetupProblem::ContainerConfig,
                    &e.to_string(),
                    Some(slot),
                )
                .await
                {
                    return None;
                }
            }
        }
    }
}

fn record(m: &PodModel, slot: Slot) -> Option<&ContainerRecord> {
    match slot {
        Slot::Init(i) => m.init.get(i),
        Slot::Main(i) => m.main.get(i),
    }
}

fn record_mut(m: &mut PodModel, slot: Slot) -> Option<&mut ContainerRecord> {
    match slot {
        Slot::Init(i) => m.init.get_mut(i),
        Slot::Main(i) => m.main.get_mut(i),
    }
}

fn set_terminated(m: &mut PodModel, slot: Slot, ended: Ended) {
    if let Some(r) = record_mut(m, slot) {
        r.state = State::Terminated(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::SetupProblem;
    use std::time::Duration;

    #[test]
    fn only_volume_problems_fail_the_pod_after_the_setup_timeout() {
        let timeout = Duration::from_secs(60);
        let cases = [
            (SetupProblem::Mount, 59, false),
            (SetupProblem::Mount, 60, true),
            (SetupProblem::ContainerConfig, 59, false),
            (SetupProblem::ContainerConfig, 3600, false),
        ];
        for (problem, elapsed, want) in cases {
            assert_eq!(
                problem.gives_up(Duration::from_secs(elapsed), timeout),
                want,
                "{problem:?} after {elapsed}s"
            );
        }
    }
}
