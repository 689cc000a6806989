//! The pod's runtime state as this agent tracks it, and its translation into a `PodStatus`
//! (phase rules from the kubelet's `getPhase`). Pure: no I/O.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::downward::POD_IP;

/// How a container ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// Exit code (128 + signal for a signalled process).
    pub exit_code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `StartError`, `DeadlineExceeded`...
    pub reason: String,
    /// The termination message.
    pub message: Option<String>,
    /// When it started (None when it never started).
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Timestamp,
    /// The runtime id of this instance.
    pub container_id: Option<String>,
}

/// The state of one container.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Not running: being created, waiting for config, backing off.
    Waiting {
        /// CamelCase reason.
        reason: String,
        /// Details for a human.
        message: Option<String>,
    },
    /// Running since the given time.
    Running {
        /// Start time.
        started_at: Timestamp,
        /// The runtime id of this instance.
        container_id: String,
    },
    /// Ended.
    Terminated(Ended),
}

/// One container's record.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Image from the spec.
    pub image: String,
    /// Current state.
    pub state: State,
    /// The previous instance's end, after a restart.
    pub last: Option<Ended>,
    /// How many times it was restarted.
    pub restart_count: i32,
}

impl ContainerRecord {
    /// A container not started yet.
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            state: State::Waiting {
                reason: reason.to_string(),
                message: None,
            },
            last: None,
            restart_count: 0,
        }
    }

    fn to_status(&self) -> ContainerStatus {
        let (state, ready, started, id) = match &self.state {
            State::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: message.clone(),
                    }),
                    ..Default::default()
                },
                false,
                false,
                None,
            ),
            State::Running {
                started_at,
                container_id,
            } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started_at)),
                    }),
                    ..Default::default()
                },
                true,
                true,
                Some(container_id.clone()),
            ),
            State::Terminated(ended) => (
                ContainerState {
                    terminated: Some(terminated(ended)),
                    ..Default::default()
                },
                false,
                false,
                ended.container_id.clone(),
            ),
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: id,
            ready,
            started: Some(started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: self.last.as_ref().map(|ended| ContainerState {
                terminated: Some(terminated(ended)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn terminated(ended: &Ended) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: ended.exit_code,
        signal: ended.signal,
        reason: Some(ended.reason.clone()),
        message: ended.message.clone(),
        started_at: ended.started_at.map(Time),
        finished_at: Some(Time(ended.finished_at)),
        container_id: ended.container_id.clone(),
    }
}

/// Pod phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not all containers started.
    Pending,
    /// Containers running (or restarting).
    Running,
    /// All containers ended with 0 and will not restart.
    Succeeded,
    /// Ended and will not restart, at least one failure.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Whether the pod is done for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The pod-level outcome that overrides container-derived phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFailure {
    /// CamelCase reason (`DeadlineExceeded`, `FailedMount`, ...).
    pub reason: String,
    /// Human message.
    pub message: String,
}

/// Everything the agent knows about a pod it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PodModel {
    /// `Never`, `OnFailure` or `Always`.
    pub restart_policy: String,
    /// When the agent accepted the pod.
    pub start_time: Timestamp,
    /// Init containers, in order.
    pub init: Vec<ContainerRecord>,
    /// App containers.
    pub main: Vec<ContainerRecord>,
    /// Set when the pod failed as a whole.
    pub failure: Option<PodFailure>,
    /// Set when the pod's volumes are ready (PodReadyToStartContainers).
    pub sandbox_ready: bool,
    /// Condition transition times, kept stable while a condition's status is unchanged.
    pub transitions: Vec<(String, String, Timestamp)>,
}

impl PodModel {
    /// Whether all init containers ended with 0.
    pub fn initialized(&self) -> bool {
        self.init
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(e) if e.exit_code == 0))
    }

    /// The phase, as the kubelet derives it.
    pub fn phase(&self) -> Phase {
        if self.failure.is_some() {
            return Phase::Failed;
        }
        if !self.initialized() {
            let init_failed = self
                .init
                .iter()
                .any(|c| matches!(&c.state, State::Terminated(e) if e.exit_code != 0));
            if init_failed && self.restart_policy == "Never" {
                return Phase::Failed;
            }
            return Phase::Pending;
        }
        let (mut running, mut stopped, mut succeeded, mut waiting) = (0, 0, 0, 0);
        for c in &self.main {
            match &c.state {
                State::Running { .. } => running += 1,
                State::Terminated(e) => {
                    stopped += 1;
                    if e.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                State::Waiting { .. } if c.last.is_some() => stopped += 1,
                State::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            Phase::Pending
        } else if running > 0 {
            Phase::Running
        } else if stopped > 0 {
            if self.restart_policy == "Always" {
                Phase::Running
            } else if stopped == succeeded {
                Phase::Succeeded
            } else if self.restart_policy == "Never" {
                Phase::Failed
            } else {
                Phase::Running
            }
        } else {
            Phase::Pending
        }
    }

    /// Computes the conditions, updating transition times whose status changed.
    fn conditions(&mut self, now: Timestamp) -> Vec<PodCondition> {
        let phase = self.phase();
        let all_running = !self.main.is_empty()
            && self
                .main
                .iter()
                .all(|c| matches!(c.state, State::Running { .. }));
        let terminal_reason = phase.is_terminal().then_some("PodCompleted");
        let not_ready_reason = terminal_reason.unwrap_or("ContainersNotReady");
        // The kubelet's messages: Go's `%s` of the names, e.g. `[main sidecar]`.
        let names = |records: &[ContainerRecord], pending: &dyn Fn(&State) -> bool| {
            let names: Vec<&str> = records
                .iter()
                .filter(|r| pending(&r.state))
                .map(|r| r.name.as_str())
                .collect();
            format!("[{}]", names.join(" "))
        };
        let incomplete = names(
            &self.init,
            &|s| !matches!(s, State::Terminated(e) if e.exit_code == 0),
        );
        let unready = names(&self.main, &|s| !matches!(s, State::Running { .. }));
        let not_ready_message = terminal_reason
            .is_none()
            .then(|| format!("containers with unready status: {unready}"));
        let wanted: [(&str, bool, Option<&str>, Option<String>); 4] = [
            (
                "PodReadyToStartContainers",
                self.sandbox_ready && !phase.is_terminal(),
                None,
                None,
            ),
            (
                "Initialized",
                self.initialized(),
                (!self.initialized()).then_some("ContainersNotInitialized"),
                (!self.initialized())
                    .then(|| format!("containers with incomplete status: {incomplete}")),
            ),
            (
                "ContainersReady",
                all_running,
                (!all_running).then_some(not_ready_reason),
                not_ready_message.clone().filter(|_| !all_running),
            ),
            (
                "Ready",
                all_running,
                (!all_running).then_some(not_ready_reason),
                not_ready_message.filter(|_| !all_running),
            ),
        ];
        wanted
            .into_iter()
            .map(|(kind, ok, reason, message)| {
                let status = if ok { "True" } else { "False" };
                let time = match self.transitions.iter_mut().find(|(k, _, _)| k == kind) {
                    Some(entry) if entry.1 == status => entry.2,
                    Some(entry) => {
                        entry.1 = status.to_string();
                        entry.2 = now;
                        now
                    }
                    None => {
                        self.transitions
                            .push((kind.to_string(), status.to_string(), now));
                        now
                    }
                };
                PodCondition {
                    type_: kind.to_string(),
                    status: status.to_string(),
                    reason: reason.map(str::to_string),
                    message,
                    last_transition_time: Some(Time(time)),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The status to write through `pods/status`.
    pub fn status_at(&mut self, now: Timestamp) -> PodStatus {
        let conditions = self.conditions(now);
        let phase = self.phase();
        PodStatus {
            phase: Some(phase.as_str().to_string()),
            reason: self.failure.as_ref().map(|f| f.reason.clone()),
            message: self.failure.as_ref().map(|f| f.message.clone()),
            start_time: Some(Time(self.start_time)),
            host_ip: Some(POD_IP.to_string()),
            host_ips: Some(vec![HostIP {
                ip: POD_IP.to_string(),
            }]),
            pod_ip: Some(POD_IP.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: POD_IP.to_string(),
            }]),
            conditions: Some(conditions),
            init_container_statuses: (!self.init.is_empty())
                .then(|| self.init.iter().map(ContainerRecord::to_status).collect()),
            container_statuses: Some(self.main.iter().map(ContainerRecord::to_status).collect()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: i32) -> State {
        State::Terminated(Ended {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::UNIX_EPOCH,
            container_id: None,
        })
    }

    fn model(policy: &str, init: Vec<State>, main: Vec<State>) -> PodModel {
        let rec = |(i, s): (usize, State)| ContainerRecord {
            state: s,
            ..ContainerRecord::waiting(&format!("c{i}"), "img", "ContainerCreating")
        };
        PodModel {
            restart_policy: policy.into(),
            start_time: Timestamp::UNIX_EPOCH,
            init: init.into_iter().enumerate().map(rec).collect(),
            main: main.into_iter().enumerate().map(rec).collect(),
            failure: None,
            sandbox_ready: true,
            transitions: vec![],
        }
    }

    fn running() -> State {
        State::Running {
            started_at: Timestamp::UNIX_EPOCH,
            container_id: "x".into(),
        }
    }

    fn waiting() -> State {
        State::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(
            model("Never", vec![running()], vec![waiting()]).phase(),
            Phase::Pending
        );
        assert_eq!(
            model("Never", vec![ended(1)], vec![waiting()]).phase(),
            Phase::Failed
        );
        assert_eq!(
            model("OnFailure", vec![ended(1)], vec![waiting()]).phase(),
            Phase::Pending
        );
        assert_eq!(
            model("Never", vec![ended(0)], vec![running(), ended(0)]).phase(),
            Phase::Running
        );
        assert_eq!(
            model("Never", vec![], vec![ended(0), ended(0)]).phase(),
            Phase::Succeeded
        );
        assert_eq!(
            model("Never", vec![], vec![ended(0), ended(2)]).phase(),
            Phase::Failed
        );
        assert_eq!(
            model("OnFailure", vec![], vec![ended(2)]).phase(),
            Phase::Running
        );
        assert_eq!(
            model("Always", vec![], vec![ended(0)]).phase(),
            Phase::Running
        );
        let mut failed = model("Never", vec![], vec![running()]);
        failed.failure = Some(PodFailure {
            reason: "DeadlineExceeded".into(),
            message: "m".into(),
        });
        assert_eq!(failed.phase(), Phase::Failed);
    }

    #[test]
    fn status_carries_states_and_stable_transition_times() {
        let mut m = model("Never", vec![], vec![running()]);
        let t1 = Timestamp::from_second(100).unwrap();
        let t2 = Timestamp::from_second(200).unwrap();
        let s1 = m.status_at(t1);
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&s1).status, "True");
        // Same status later: the transition time does not move.
        let s2 = m.status_at(t2);
        assert_eq!(ready(&s2).last_transition_time, Some(Time(t1)));
        m.main[0].state = ended(0);
        let s3 = m.status_at(t2);
        assert_eq!(s3.phase.as_deref(), Some("Succeeded"));
        assert_eq!(ready(&s3).status, "False");
        assert_eq!(ready(&s3).reason.as_deref(), Some("PodCompleted"));
        assert_eq!(ready(&s3).last_transition_time, Some(Time(t2)));
        let term = s3.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(term.reason.as_deref(), Some("Completed"));
        assert_eq!(s3.pod_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn a_container_waiting_for_its_config_keeps_the_pod_pending_and_unready() {
        let mut m = model("Never", vec![], vec![running(), running()]);
        m.main[1].state = State::Waiting {
            reason: "CreateContainerConfigError".into(),
            message: Some("secret \"x\" not found".into()),
        };
        let status = m.status_at(Timestamp::UNIX_EPOCH);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let conditions = status.conditions.unwrap();
        let find = |kind: &str| conditions.iter().find(|c| c.type_ == kind).unwrap();
        for kind in ["ContainersReady", "Ready"] {
            let c = find(kind);
            assert_eq!(c.status, "False", "{kind}");
            assert_eq!(c.reason.as_deref(), Some("ContainersNotReady"), "{kind}");
            assert_eq!(
                c.message.as_deref(),
                Some("containers with unready status: [c1]"),
                "{kind}"
            );
        }
        assert_eq!(find("Initialized").status, "True");
        assert_eq!(find("PodReadyToStartContainers").status, "True");
        let waiting = status.container_statuses.unwrap()[1]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(
            waiting.reason.as_deref(),
            Some("CreateContainerConfigError")
        );
        assert_eq!(waiting.message.as_deref(), Some("secret \"x\" not found"));
    }
}
