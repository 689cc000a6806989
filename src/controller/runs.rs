//! Whether a run may start now: the one home of the rules every trigger obeys (any number
//! of schedules, `backup-now`, and later restores).
//!
//! - **One writer per target.** At most one run that writes (a backup) of a target is
//!   active at a time, whatever started it and whatever the claim's access mode. A second
//!   run waits; its trigger looks again until its starting deadline.
//! - **`concurrencyPolicy` per schedule**, with CronJob's meaning for the schedule's own
//!   previous run: `Forbid` skips the tick, `Replace` stops the previous run and starts the
//!   new one, `Allow` lets the new run wait for it (runs of one target never overlap).
//! - **One run per ReadWriteOnce claim.** A run waits while another target's run uses the
//!   same single-node claim, which avoids multi-attach failures.
//!
//! Everything here is pure: the reconcilers observe the Jobs, ask [`plan_start`], and apply
//! the answer.

use crate::api::ConcurrencyPolicy;
use crate::jobs::RunKind;

use super::cache::RunJob;
use super::status::JobState;

/// An active run that writes (a backup or a restore), as seen from its Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveRun {
    /// The Job's name.
    pub job: String,
    /// The BackupTarget's full name (annotation `stowage.dev/target`).
    pub target: String,
    /// The BackupSchedule's full name for a scheduled run.
    pub schedule: Option<String>,
    /// The claim its pod mounts.
    pub claim: Option<String>,
}

/// The active writing runs among `jobs` (backups and restores; Jobs being deleted no
/// longer count: their pods are stopping).
pub fn active_runs(jobs: &[RunJob]) -> Vec<ActiveRun> {
    jobs.iter()
        .filter(|job| job.kind.is_some_and(RunKind::writes))
        .filter(|job| job.state == JobState::Active && !job.deleting)
        .map(|job| ActiveRun {
            job: job.name.clone(),
            target: job.target.clone(),
            schedule: job.schedule.clone(),
            claim: job.claim.clone(),
        })
        .collect()
}

impl ActiveRun {
    /// The run `request` starts, as it will be seen once its Job exists.
    pub fn from_request(request: &StartRequest) -> ActiveRun {
        ActiveRun {
            job: request.job.clone(),
            target: request.target.clone(),
            schedule: match &request.trigger {
                StartTrigger::Schedule { name, .. } => Some(name.clone()),
                StartTrigger::OnDemand => None,
            },
            claim: Some(request.claim.clone()),
        }
    }
}

/// What asks for a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartTrigger {
    /// A tick of a schedule, with its concurrency policy.
    Schedule {
        /// The schedule's name.
        name: String,
        /// Its `concurrencyPolicy`.
        policy: ConcurrencyPolicy,
    },
    /// The `stowage.dev/backup-now` annotation.
    OnDemand,
}

/// One run that a trigger would start, with what the reconciler knows of its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    /// The target's name.
    pub target: String,
    /// The deterministic name of the run's Job.
    pub job: String,
    /// What asks for it.
    pub trigger: StartTrigger,
    /// The target's claim.
    pub claim: String,
    /// Whether that claim can be mounted by one node only (ReadWriteOnce, ReadWriteOncePod,
    /// or no access mode known).
    pub claim_single_node: bool,
    /// `spec.suspend` of the target.
    pub suspended: bool,
    /// Why the target's configuration cannot run, if it cannot.
    pub config_invalid: Option<String>,
    /// Whether the run's Job exists already (created by an earlier reconcile).
    pub job_exists: bool,
}

/// Why a run is not started and will not be for this trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The target is suspended.
    Suspended,
    /// The target's configuration is not valid.
    InvalidConfig(String),
    /// `concurrencyPolicy: Forbid` and the schedule's previous run is still active.
    Forbidden {
        /// The schedule's active Jobs.
        running: Vec<String>,
    },
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Suspended => write!(f, "the target is suspended (spec.suspend)"),
            SkipReason::InvalidConfig(why) => {
                write!(
                    f,
                    "the configuration is not valid (condition ConfigValid): {why}"
                )
            }
            SkipReason::Forbidden { running } => write!(
                f,
                "Job {} of this schedule is still running (concurrencyPolicy: Forbid)",
                running.join(", ")
            ),
        }
    }
}

/// Why a run waits: it may start once the other run is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// Another run of the same target is active (one writer per target).
    TargetBusy {
        /// Its Job.
        job: String,
    },
    /// Another target's run uses the same ReadWriteOnce claim.
    ClaimBusy {
        /// Its Job.
        job: String,
        /// The claim.
        claim: String,
    },
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitReason::TargetBusy { job } => write!(
                f,
                "Job {job} of the same target is running; runs of one target never overlap"
            ),
            WaitReason::ClaimBusy { job, claim } => {
                write!(f, "Job {job} is using ReadWriteOnce claim {claim}")
            }
        }
    }
}

/// What to do about one requested run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartDecision {
    /// Create the Job, after deleting `replace` (the schedule's previous runs, for
    /// `concurrencyPolicy: Replace`).
    Create {
        /// Jobs to delete first.
        replace: Vec<String>,
    },
    /// The Job exists: nothing to do.
    Exists,
    /// Do not run it for this trigger.
    Skip(SkipReason),
    /// Look again later (within the starting deadline).
    Wait(WaitReason),
}

/// Decide about one run, given the active writing runs of the namespace.
pub fn plan_start(request: &StartRequest, active: &[ActiveRun]) -> StartDecision {
    if request.job_exists {
        return StartDecision::Exists;
    }
    if request.suspended {
        return StartDecision::Skip(SkipReason::Suspended);
    }
    if let Some(why) = &request.config_invalid {
        return StartDecision::Skip(SkipReason::InvalidConfig(why.clone()));
    }
    // The run itself may be among them: started before, with an unknown outcome.
    let others = active.iter().filter(|run| run.job != request.job);
    let of_target: Vec<&ActiveRun> = others
        .clone()
        .filter(|run| run.target == request.target)
        .collect();
    let mut replace = Vec::new();
    if let StartTrigger::Schedule { name, policy } = &request.trigger {
        let own: Vec<String> = of_target
            .iter()
            .filter(|run| run.schedule.as_deref() == Some(name.as_str()))
            .map(|run| run.job.clone())
            .collect();
        if !own.is_empty() {
            match policy {
                ConcurrencyPolicy::Forbid => {
                    return StartDecision::Skip(SkipReason::Forbidden { running: own });
                }
                ConcurrencyPolicy::Replace => replace = own,
                ConcurrencyPolicy::Allow => {}
            }
        }
    }
    if let Some(busy) = of_target.iter().find(|run| !replace.contains(&run.job)) {
        return StartDecision::Wait(WaitReason::TargetBusy {
            job: busy.job.clone(),
        });
    }
    if request.claim_single_node
        && let Some(holder) = others
            .filter(|run| run.target != request.target)
            .find(|run| run.claim.as_deref() == Some(request.claim.as_str()))
    {
        return StartDecision::Wait(WaitReason::ClaimBusy {
            job: holder.job.clone(),
            claim: request.claim.clone(),
        });
    }
    StartDecision::Create { replace }
}

/// Decide `requests` in order, each against `active` plus the runs the earlier ones
/// start (a tick of many targets sharing a ReadWriteOnce claim starts one of them).
/// `active` ends with every run started.
pub fn plan_starts(requests: &[StartRequest], active: &mut Vec<ActiveRun>) -> Vec<StartDecision> {
    requests
        .iter()
        .map(|request| {
            let decision = plan_start(request, active);
            if let StartDecision::Create { replace } = &decision {
                active.retain(|run| !replace.contains(&run.job));
                active.push(ActiveRun::from_request(request));
            }
            decision
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: &str, target: &str, schedule: Option<&str>, claim: &str) -> ActiveRun {
        ActiveRun {
            job: job.into(),
            target: target.into(),
            schedule: schedule.map(str::to_owned),
            claim: Some(claim.into()),
        }
    }

    fn scheduled(policy: ConcurrencyPolicy) -> StartRequest {
        StartRequest {
            target: "app-db".into(),
            job: "app-db-b-new".into(),
            trigger: StartTrigger::Schedule {
                name: "nightly".into(),
                policy,
            },
            claim: "backups".into(),
            claim_single_node: false,
            suspended: false,
            config_invalid: None,
            job_exists: false,
        }
    }

    fn create(replace: &[&str]) -> StartDecision {
        StartDecision::Create {
            replace: replace.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn target_busy(job: &str) -> StartDecision {
        StartDecision::Wait(WaitReason::TargetBusy { job: job.into() })
    }

    #[test]
    fn every_rule_case_by_case() {
        use ConcurrencyPolicy::{Allow, Forbid, Replace};
        let own = run("app-db-b-old", "app-db", Some("nightly"), "backups");
        let other_schedule = run("app-db-b-hourly", "app-db", Some("hourly"), "backups");
        let on_demand = run("app-db-b-now", "app-db", None, "backups");
        let other_target_same_claim = run("web-b-1", "web", Some("nightly"), "backups");
        let rwo = |mut r: StartRequest| {
            r.claim_single_node = true;
            r
        };
        let cases: Vec<(&str, StartRequest, Vec<ActiveRun>, StartDecision)> = vec![
            ("idle target starts", scheduled(Forbid), vec![], create(&[])),
            (
                "Forbid skips while the schedule's own run is active",
                scheduled(Forbid),
                vec![own.clone()],
                StartDecision::Skip(SkipReason::Forbidden {
                    running: vec!["app-db-b-old".into()],
                }),
            ),
            (
                "Replace stops the schedule's own run and starts",
                scheduled(Replace),
                vec![own.clone()],
                create(&["app-db-b-old"]),
            ),
            (
                "Allow waits for the schedule's own run instead of overlapping",
                scheduled(Allow),
                vec![own.clone()],
                target_busy("app-db-b-old"),
            ),
            (
                "another schedule's run of the target: wait, whatever the policy",
                scheduled(Forbid),
                vec![other_schedule.clone()],
                target_busy("app-db-b-hourly"),
            ),
            (
                "Replace never stops another schedule's run",
                scheduled(Replace),
                vec![other_schedule.clone()],
                target_busy("app-db-b-hourly"),
            ),
            (
                "Replace of its own run still waits for another trigger's run",
                scheduled(Replace),
                vec![own.clone(), on_demand.clone()],
                target_busy("app-db-b-now"),
            ),
            (
                "an on-demand run waits for a scheduled one",
                StartRequest {
                    trigger: StartTrigger::OnDemand,
                    ..scheduled(Forbid)
                },
                vec![own.clone()],
                target_busy("app-db-b-old"),
            ),
            (
                "a ReadWriteMany claim shared with another target does not wait",
                scheduled(Forbid),
                vec![other_target_same_claim.clone()],
                create(&[]),
            ),
            (
                "a ReadWriteOnce claim busy with another target waits",
                rwo(scheduled(Forbid)),
                vec![other_target_same_claim.clone()],
                StartDecision::Wait(WaitReason::ClaimBusy {
                    job: "web-b-1".into(),
                    claim: "backups".into(),
                }),
            ),
            (
                "a ReadWriteOnce claim of another claim name is free",
                rwo(scheduled(Forbid)),
                vec![run("web-b-1", "web", None, "elsewhere")],
                create(&[]),
            ),
            (
                "an existing Job is never created twice",
                StartRequest {
                    job_exists: true,
                    ..scheduled(Forbid)
                },
                vec![own.clone()],
                StartDecision::Exists,
            ),
            (
                "a suspended target is skipped",
                StartRequest {
                    suspended: true,
                    ..scheduled(Forbid)
                },
                vec![],
                StartDecision::Skip(SkipReason::Suspended),
            ),
            (
                "an invalid configuration is skipped",
                StartRequest {
                    config_invalid: Some("spec.postgres.port".into()),
                    ..scheduled(Forbid)
                },
                vec![],
                StartDecision::Skip(SkipReason::InvalidConfig("spec.postgres.port".into())),
            ),
        ];
        for (case, request, active, expected) in cases {
            assert_eq!(plan_start(&request, &active), expected, "{case}");
        }
    }

    #[test]
    fn active_runs_come_from_active_backup_and_restore_jobs_only() {
        let job = |name: &str, kind: &str, finished: bool, deleting: bool| -> RunJob {
            let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name,
                    "labels": {"stowage.dev/kind": kind, "stowage.dev/target": "app-db"},
                    "annotations": {"stowage.dev/target": "app-db", "stowage.dev/schedule": "nightly"},
                    "deletionTimestamp": if deleting { serde_json::json!("2030-01-01T00:00:00Z") } else { serde_json::Value::Null },
                },
                "spec": {"template": {"spec": {
                    "containers": [{"name": "run"}],
                    "volumes": [{"name": "backups", "persistentVolumeClaim": {"claimName": "backups"}}]
                }}},
                "status": if finished {
                    serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]})
                } else {
                    serde_json::json!({"active": 1})
                }
            }))
            .unwrap();
            RunJob::from_job(&job)
        };
        let jobs = [
            job("running", "backup", false, false),
            job("done", "backup", true, false),
            job("probe", "probe", false, false),
            job("stopping", "backup", false, true),
            job("restoring", "restore", false, false),
        ];
        let active = active_runs(&jobs);
        assert_eq!(
            active,
            vec![
                run("running", "app-db", Some("nightly"), "backups"),
                run("restoring", "app-db", Some("nightly"), "backups"),
            ]
        );
        // A restore of the target keeps its backups waiting, and the other way round.
        let restoring = &active[1..];
        assert_eq!(
            plan_start(&scheduled(ConcurrencyPolicy::Allow), restoring),
            target_busy("restoring")
        );
        let restore = StartRequest {
            job: "r1-r-1".into(),
            trigger: StartTrigger::OnDemand,
            ..scheduled(ConcurrencyPolicy::Forbid)
        };
        assert_eq!(plan_start(&restore, &active[..1]), target_busy("running"));
    }
}
