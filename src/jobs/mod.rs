//! The Kubernetes Job of one run (a backup, a probe or a restore of one `BackupTarget`),
//! built as a pure function of the target, the run request and the operator's defaults.
//!
//! The Job's name is derived from the run ([`job_name`]), so creating it twice yields
//! `AlreadyExists` instead of a second run. The pod runs `stowage run backup|probe`
//! (see [`crate::runner`]) with its inputs in `STOWAGE_*` env variables ([`env`]) and
//! every secret as a `secretKeyRef` env variable: the operator never reads a Secret and
//! no secret value is ever part of the Job.
//!
//! Native plugins run in the runner image. Tool plugins run in the tool's image (e.g.
//! `postgres:17`): an init container copies the static runner from the runner image into
//! an emptyDir (`stowage copy-self /stowage/stowage`), and the main container runs that
//! copy.

mod naming;
mod pod;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

pub use naming::{MAX_JOB_NAME_LEN, job_name, label_value, run_id};
pub use pod::APP_VOLUME;

use crate::api::BackupTarget;
use crate::retention::RetentionPolicy;

/// Labels on every Job (and its pod) that stowage creates.
pub mod labels {
    /// `app.kubernetes.io/managed-by`, always [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "stowage";
    /// The BackupTarget's name, through [`label_value`](super::label_value).
    pub const TARGET: &str = "stowage.dev/target";
    /// The BackupSchedule's name (scheduled runs only), through
    /// [`label_value`](super::label_value).
    pub const SCHEDULE: &str = "stowage.dev/schedule";
    /// The plugin key.
    pub const PLUGIN: &str = "stowage.dev/plugin";
    /// The run id ([`run_id`](super::run_id)).
    pub const RUN: &str = "stowage.dev/run";
    /// `backup`, `probe` or `restore` ([`RunKind`](super::RunKind)).
    pub const KIND: &str = "stowage.dev/kind";
    /// The BackupRestore's name (restores only), through [`label_value`](super::label_value).
    pub const RESTORE: &str = "stowage.dev/restore";
}

/// Annotations on every Job that stowage creates, with the full (unshortened) values.
pub mod annotations {
    /// The BackupTarget's name.
    pub const TARGET: &str = "stowage.dev/target";
    /// The BackupSchedule's name (scheduled runs only).
    pub const SCHEDULE: &str = "stowage.dev/schedule";
    /// The tick the run is for, RFC 3339 in UTC (scheduled runs only).
    pub const SCHEDULED_TIME: &str = "stowage.dev/scheduled-time";
    /// The `stowage.dev/backup-now` or `stowage.dev/probe-now` token (or the
    /// controller's probe token) that triggered the run.
    pub const TOKEN: &str = "stowage.dev/token";
    /// The BackupRestore's name (restores only).
    pub const RESTORE: &str = "stowage.dev/restore";
    /// The target's `metadata.generation` the Job was built from: a probe's result is
    /// recorded as the probe of that generation (`status.probedGeneration`).
    pub const GENERATION: &str = "stowage.dev/generation";
}

/// Names of the env variables the runner (`stowage run`, [`crate::runner::RunArgs`])
/// reads its inputs from. Secret values come in the `STOWAGE_SECRET_*` variables named by
/// [`stowage_plugin_sdk::secret_bindings`].
pub mod env {
    /// The plugin key.
    pub const PLUGIN: &str = "STOWAGE_PLUGIN";
    /// The plugin config as JSON (secret references only, never values).
    pub const PLUGIN_CONFIG: &str = "STOWAGE_PLUGIN_CONFIG";
    /// The target's namespace.
    pub const NAMESPACE: &str = "STOWAGE_NAMESPACE";
    /// The target's name.
    pub const TARGET: &str = "STOWAGE_TARGET";
    /// The schedule's name (scheduled runs only).
    pub const SCHEDULE: &str = "STOWAGE_SCHEDULE";
    /// The run id.
    pub const RUN_ID: &str = "STOWAGE_RUN_ID";
    /// The tick, RFC 3339 (scheduled runs only).
    pub const SCHEDULED_TIME: &str = "STOWAGE_SCHEDULED_TIME";
    /// `none`, `gzip` or `zstd`.
    pub const COMPRESSION: &str = "STOWAGE_COMPRESSION";
    /// Where the claim is mounted (backups only).
    pub const ARTIFACT_ROOT: &str = "STOWAGE_ARTIFACT_ROOT";
    /// Where the application's claim is mounted (plugins with an
    /// [`AppClaim`](stowage_plugin_sdk::AppClaim) only).
    pub const CLAIM_ROOT: &str = "STOWAGE_CLAIM_ROOT";
    /// The schedule's retention as JSON (scheduled runs with a retention only).
    pub const RETENTION: &str = "STOWAGE_RETENTION";
    /// The schedule's IANA time zone (scheduled runs with a time zone only).
    pub const TIME_ZONE: &str = "STOWAGE_TIME_ZONE";
    /// Where the runner writes its JSON result.
    pub const TERMINATION_MESSAGE_PATH: &str = "STOWAGE_TERMINATION_MESSAGE_PATH";
    /// Seconds after which the runner gives up with a `Timeout` result, a little less
    /// than the Job's deadline so the failure is reported rather than killed.
    pub const TIMEOUT_SECONDS: &str = "STOWAGE_TIMEOUT_SECONDS";
    /// Restore: the artifact's path relative to the claim.
    pub const RESTORE_ARTIFACT: &str = "STOWAGE_RESTORE_ARTIFACT";
    /// Restore: the BackupTarget whose artifacts to choose from (empty: any, with a path).
    pub const RESTORE_SOURCE_TARGET: &str = "STOWAGE_RESTORE_SOURCE_TARGET";
    /// Restore: choose the newest artifact at or before this time.
    pub const RESTORE_AS_OF: &str = "STOWAGE_RESTORE_AS_OF";
    /// Restore: skip this many of the newest artifacts.
    pub const RESTORE_PREVIOUS: &str = "STOWAGE_RESTORE_PREVIOUS";
    /// Restore: choose among this schedule's artifacts only.
    pub const RESTORE_SCHEDULE: &str = "STOWAGE_RESTORE_SCHEDULE";
    /// Restore: the name inside the destination (e.g. a database).
    pub const RESTORE_INTO: &str = "STOWAGE_RESTORE_INTO";
    /// Restore: `IntoEmpty` or `Replace`.
    pub const RESTORE_MODE: &str = "STOWAGE_RESTORE_MODE";
    /// Restore: `true` for a dry run.
    pub const RESTORE_DRY_RUN: &str = "STOWAGE_RESTORE_DRY_RUN";
    /// Restore: the claim's name, for messages.
    pub const RESTORE_CLAIM: &str = "STOWAGE_RESTORE_CLAIM";
}

/// `activeDeadlineSeconds` of a restore Job when neither the BackupRestore nor the
/// destination target sets one: 6 hours (a restore of a large database takes longer
/// than its backup: indexes are rebuilt).
pub const RESTORE_DEADLINE_SECONDS: i64 = 6 * 3600;

/// Name of the container that runs `stowage run` (its termination message is the result).
pub const RUN_CONTAINER: &str = "run";
/// Name of the init container that copies the runner into a tool plugin's pod.
pub const INSTALL_RUNNER_CONTAINER: &str = "install-runner";
/// Path of the stowage binary in the runner image.
pub const RUNNER_PATH: &str = "/usr/local/bin/stowage";
/// Where the runner is copied to in a tool plugin's pod.
pub const INJECTED_RUNNER_PATH: &str = "/stowage/stowage";
/// The container's termination message file, read back by the controller.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// User, group and fsGroup of every stowage pod unless the defaults say otherwise (the
/// conventional non-root "nonroot" id of distroless images).
pub const NON_ROOT_ID: i64 = 65532;
/// The runner image used when the operator is not told otherwise.
pub const DEFAULT_RUNNER_IMAGE: &str =
    concat!("ghcr.io/stowage-dev/stowage:", env!("CARGO_PKG_VERSION"));

/// What a run does: the one definition of the run kinds, shared by the Job builder (the
/// runner subcommand and the `stowage.dev/kind` label), the runner (`operation` in its
/// result) and the controller (which reads both back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// `stowage run backup`: write an artifact into the target's claim.
    Backup,
    /// `stowage run probe`: test connectivity and credentials, write nothing.
    Probe,
    /// `stowage run restore`: read an artifact back into the service.
    Restore,
}

impl RunKind {
    /// `backup`, `probe` or `restore`: the runner subcommand and the `stowage.dev/kind`
    /// label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Probe => "probe",
            RunKind::Restore => "restore",
        }
    }

    /// The kind a `stowage.dev/kind` label value names.
    pub fn from_label(value: &str) -> Option<RunKind> {
        match value.to_ascii_lowercase().as_str() {
            "backup" => Some(RunKind::Backup),
            "probe" => Some(RunKind::Probe),
            "restore" => Some(RunKind::Restore),
            _ => None,
        }
    }

    /// Whether runs of this kind write to the target's claim or service (at most one such
    /// run of a target at a time).
    pub fn writes(self) -> bool {
        matches!(self, RunKind::Backup | RunKind::Restore)
    }
}

/// The kind of run a stowage Job performs, from its `stowage.dev/kind` label.
pub fn job_kind(job: &Job) -> Option<RunKind> {
    RunKind::from_label(job.metadata.labels.as_ref()?.get(labels::KIND)?)
}

/// Why a run happens; it identifies the run (see [`run_id`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// A BackupSchedule tick.
    Schedule {
        /// The BackupSchedule's name.
        name: String,
        /// The tick (its scheduled instant).
        tick: Timestamp,
        /// The schedule's retention, applied by the runner after the backup.
        retention: Option<RetentionPolicy>,
        /// The schedule's `spec.timeZone`, in which retention counts days and weeks.
        time_zone: Option<String>,
    },
    /// The `stowage.dev/backup-now` annotation, with its value.
    BackupNow {
        /// The annotation's value.
        token: String,
    },
    /// A probe: the `stowage.dev/probe-now` annotation's value, or a token the controller
    /// derives (e.g. from the generation or the probe interval).
    Probe {
        /// The token.
        token: String,
    },
    /// A `BackupRestore`.
    Restore(Box<RestoreRun>),
}

/// What the Job of one `BackupRestore` does; the target of the [`build_job`] call is the
/// destination.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreRun {
    /// The BackupRestore's name.
    pub name: String,
    /// The BackupRestore's uid (part of the run id: one Job per BackupRestore).
    pub uid: String,
    /// The Job's owner: the BackupRestore, so deleting it deletes (cancels) the Job.
    pub owner: OwnerReference,
    /// The claim holding the artifact, mounted where backups mount theirs.
    pub claim: String,
    /// The target whose artifacts to choose from; `None`: any (a path on a claim).
    pub source_target: Option<String>,
    /// The artifact's path relative to the claim.
    pub path: Option<String>,
    /// The newest artifact at or before this time.
    pub as_of: Option<Timestamp>,
    /// Skip this many of the newest.
    pub previous: Option<u32>,
    /// Only this schedule's artifacts.
    pub schedule: Option<String>,
    /// The name inside the destination (e.g. a database).
    pub into: Option<String>,
    /// `mode: Replace`.
    pub replace: bool,
    /// Only plan.
    pub dry_run: bool,
    /// `spec.activeDeadlineSeconds` of the BackupRestore.
    pub deadline_seconds: Option<i64>,
}

/// One run to start: what it does and why.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest {
    /// Backup or probe.
    pub kind: RunKind,
    /// Why it runs.
    pub trigger: Trigger,
}

impl RunRequest {
    /// A backup for a BackupSchedule tick.
    pub fn scheduled(
        schedule: impl Into<String>,
        tick: Timestamp,
        retention: Option<RetentionPolicy>,
        time_zone: Option<String>,
    ) -> Self {
        RunRequest {
            kind: RunKind::Backup,
            trigger: Trigger::Schedule {
                name: schedule.into(),
                tick,
                retention,
                time_zone,
            },
        }
    }

    /// An on-demand backup for a `stowage.dev/backup-now` token.
    pub fn backup_now(token: impl Into<String>) -> Self {
        RunRequest {
            kind: RunKind::Backup,
            trigger: Trigger::BackupNow {
                token: token.into(),
            },
        }
    }

    /// A probe for a token.
    pub fn probe(token: impl Into<String>) -> Self {
        RunRequest {
            kind: RunKind::Probe,
            trigger: Trigger::Probe {
                token: token.into(),
            },
        }
    }

    /// The restore of a BackupRestore.
    pub fn restore(run: RestoreRun) -> Self {
        RunRequest {
            kind: RunKind::Restore,
            trigger: Trigger::Restore(Box::new(run)),
        }
    }
}

/// The operator-wide settings of the Jobs it creates, filled from its flags; a target's
/// `spec.job` overrides some of them.
#[derive(Clone, Debug)]
pub struct JobDefaults {
    /// The stowage image (runs native plugins, and provides the runner to tool images).
    pub runner_image: String,
    /// `imagePullPolicy` of the runner image (unset: Kubernetes' default).
    pub image_pull_policy: Option<String>,
    /// `activeDeadlineSeconds` when `spec.job.activeDeadlineSeconds` is unset (3600).
    pub active_deadline_seconds: i64,
    /// `backoffLimit` when `spec.job.backoffLimit` is unset (2).
    pub backoff_limit: i32,
    /// `ttlSecondsAfterFinished` (unset by default: the history limits delete Jobs).
    pub ttl_seconds_after_finished: Option<i32>,
    /// ServiceAccount when `spec.job.serviceAccountName` is unset, for plugins that use the
    /// Kubernetes API (other plugins run as the namespace's `default` account).
    pub service_account_name: Option<String>,
    /// Container resources when `spec.job.resources` is unset.
    pub resources: Option<ResourceRequirements>,
    /// Where the target's claim is mounted (`/backups`).
    pub artifact_root: String,
    /// `runAsUser` of every pod (65532).
    pub run_as_user: i64,
    /// `runAsGroup` of every pod (65532).
    pub run_as_group: i64,
    /// `fsGroup` of every pod, so the claim is writable (65532).
    pub fs_group: i64,
    /// The accepted BackupPlugins (kept up to date by the operator's watch): an external
    /// target's Job runs its plugin's image and command.
    pub installed_plugins: crate::installed::InstalledPlugins,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            runner_image: DEFAULT_RUNNER_IMAGE.to_owned(),
            image_pull_policy: None,
            active_deadline_seconds: 3600,
            backoff_limit: 2,
            ttl_seconds_after_finished: None,
            service_account_name: None,
            resources: None,
            artifact_root: "/backups".to_owned(),
            run_as_user: NON_ROOT_ID,
            run_as_group: NON_ROOT_ID,
            fs_group: NON_ROOT_ID,
            installed_plugins: Default::default(),
        }
    }
}

/// Why a Job cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The target lacks metadata that the API server always sets.
    #[error("BackupTarget has no {field}: build Jobs only from targets read from the API server")]
    MissingMetadata {
        /// `metadata.name`, `metadata.namespace` or `metadata.uid`.
        field: &'static str,
    },
    /// The trigger does not fit the kind (e.g. a probe for a schedule tick).
    #[error("a {kind} run cannot be triggered by {trigger}: use RunRequest::{fix}")]
    TriggerMismatch {
        /// The run kind.
        kind: &'static str,
        /// The trigger.
        trigger: &'static str,
        /// The constructor that builds a consistent request.
        fix: &'static str,
    },
    /// An external target's BackupPlugin is not installed or not accepted.
    #[error(
        "BackupTarget {target} uses BackupPlugin {plugin:?}, which is not installed or not accepted (kubectl get backupplugins)"
    )]
    PluginUnavailable {
        /// `namespace/name` of the target.
        target: String,
        /// The plugin's name.
        plugin: String,
    },
    /// An external target's config does not match its BackupPlugin's schema.
    #[error(
        "the config of BackupTarget {target} does not match the schema of BackupPlugin {plugin:?}: {problems}"
    )]
    ConfigMismatch {
        /// `namespace/name` of the target.
        target: String,
        /// The plugin's name.
        plugin: String,
        /// Each problem, `spec.external.config.<path>: ...`.
        problems: String,
    },
    /// The plugin config or the retention cannot be serialized to JSON.
    #[error("cannot serialize {what} of BackupTarget {target} to JSON: {source}")]
    Serialize {
        /// `spec.<plugin>` or the retention.
        what: String,
        /// `namespace/name` of the target.
        target: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
}

/// The Job of one run of `target`, ready to be created (see the [module docs](self)).
pub fn build_job(
    target: &BackupTarget,
    request: &RunRequest,
    defaults: &JobDefaults,
) -> Result<Job, BuildError> {
    let missing = |field| BuildError::MissingMetadata { field };
    let namespace = target
        .metadata
        .namespace
        .clone()
        .ok_or(missing("metadata.namespace"))?;
    let target_name = target
        .metadata
        .name
        .clone()
        .ok_or(missing("metadata.name"))?;
    if target.metadata.uid.as_deref().is_none_or(str::is_empty) {
        return Err(missing("metadata.uid"));
    }
    // Deleting the target deletes its Jobs; foreground deletion waits for them. (With
    // the OwnerReferencesPermissionEnforcement admission plugin, blockOwnerDeletion needs
    // `update` on `backuptargets/finalizers` in the operator's RBAC.) A restore's Job
    // belongs to its BackupRestore instead: deleting that cancels the restore.
    let owner = match &request.trigger {
        Trigger::Restore(run) => Some(run.owner.clone()),
        _ => target.controller_owner_ref(&()),
    }
    .map(|owner| OwnerReference {
        block_owner_deletion: Some(true),
        ..owner
    })
    .ok_or(missing("metadata.uid"))?;
    check_trigger(request)?;

    let plugin_key = target.spec.plugin.key();
    let run = run_id(target, request);
    let name = job_name(target, request);

    let mut labels = BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::TARGET.to_owned(), label_value(&target_name)),
        (labels::PLUGIN.to_owned(), plugin_key.to_owned()),
        (labels::RUN.to_owned(), run.clone()),
        (labels::KIND.to_owned(), request.kind.as_str().to_owned()),
    ]);
    let mut annotations = BTreeMap::from([(annotations::TARGET.to_owned(), target_name.clone())]);
    if let Some(generation) = target.metadata.generation {
        annotations.insert(annotations::GENERATION.to_owned(), generation.to_string());
    }
    match &request.trigger {
        Trigger::Schedule { name, tick, .. } => {
            labels.insert(labels::SCHEDULE.to_owned(), label_value(name));
            annotations.insert(annotations::SCHEDULE.to_owned(), name.clone());
            annotations.insert(annotations::SCHEDULED_TIME.to_owned(), tick.to_string());
        }
        Trigger::BackupNow { token } | Trigger::Probe { token } => {
            annotations.insert(annotations::TOKEN.to_owned(), token.clone());
        }
        Trigger::Restore(run) => {
            labels.insert(labels::RESTORE.to_owned(), label_value(&run.name));
            annotations.insert(annotations::RESTORE.to_owned(), run.name.clone());
        }
    }

    let settings = target.spec.job.clone().unwrap_or_default();
    let (deadline, backoff_limit) = match &request.trigger {
        // A restore is not retried: a human asked for it once, and reads its outcome.
        Trigger::Restore(run) => (
            run.deadline_seconds
                .or(settings.active_deadline_seconds)
                .unwrap_or(RESTORE_DEADLINE_SECONDS),
            0,
        ),
        _ => (
            settings
                .active_deadline_seconds
                .unwrap_or(defaults.active_deadline_seconds),
            settings.backoff_limit.unwrap_or(defaults.backoff_limit),
        ),
    };
    let pod = pod::PodInputs {
        target,
        namespace: &namespace,
        target_name: &target_name,
        request,
        run_id: &run,
        settings: &settings,
        defaults,
        deadline_seconds: deadline,
    }
    .template(labels.clone())?;
    let mut pod = pod;
    // The full target name (the label may be shortened): the operator maps a pod event to
    // its target with it.
    pod.metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(annotations::TARGET.to_owned(), target_name.clone());

    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(backoff_limit),
            active_deadline_seconds: Some(deadline),
            ttl_seconds_after_finished: defaults.ttl_seconds_after_finished,
            pod_failure_policy: Some(pod::failure_policy()),
            template: pod,
            ..JobSpec::default()
        }),
        status: None,
    })
}

fn check_trigger(request: &RunRequest) -> Result<(), BuildError> {
    let (trigger, fix) = match (&request.kind, &request.trigger) {
        (RunKind::Backup, Trigger::Schedule { .. } | Trigger::BackupNow { .. })
        | (RunKind::Probe, Trigger::Probe { .. })
        | (RunKind::Restore, Trigger::Restore(_)) => return Ok(()),
        (RunKind::Backup | RunKind::Probe, Trigger::Restore(_)) => {
            ("a BackupRestore", "restore for restores")
        }
        (RunKind::Backup, Trigger::Probe { .. }) => ("a probe token", "probe"),
        (RunKind::Probe, Trigger::Schedule { .. }) => ("a schedule tick", "scheduled"),
        (RunKind::Probe, Trigger::BackupNow { .. }) => ("a backup-now token", "backup_now"),
        (RunKind::Restore, _) => ("a backup or probe trigger", "restore"),
    };
    Err(BuildError::TriggerMismatch {
        kind: request.kind.as_str(),
        trigger,
        fix,
    })
}

#[cfg(test)]
mod tests;
