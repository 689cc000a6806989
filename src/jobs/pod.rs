//! The pod template of a run's Job: containers, env, volumes, security context.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use stowage_plugin_sdk::{APP_CLAIM_ROOT, ErrorKind, Execution, secret_bindings};

use super::{
    BuildError, INJECTED_RUNNER_PATH, INSTALL_RUNNER_CONTAINER, JobDefaults, RUN_CONTAINER,
    RUNNER_PATH, RunKind, RunRequest, TERMINATION_MESSAGE_PATH, Trigger, env,
};
use crate::api::{BackupTarget, JobSettings};
use crate::registry::PluginConfig;

const TMP_VOLUME: &str = "tmp";
const ARTIFACTS_VOLUME: &str = "artifacts";
const RUNNER_VOLUME: &str = "stowage-bin";
const RUNNER_DIR: &str = "/stowage";
/// The application's claim of a plugin that works on its files ([`AppClaim`](stowage_plugin_sdk::AppClaim)).
pub const APP_VOLUME: &str = "app-data";

/// Error kinds a retry cannot fix: the Job fails at once instead of using its backoff.
const NON_RETRYABLE: [ErrorKind; 4] = [
    ErrorKind::InvalidConfig,
    ErrorKind::NotFound,
    ErrorKind::Unauthorized,
    ErrorKind::Unsupported,
];

/// Everything the pod template depends on.
pub(super) struct PodInputs<'a> {
    pub target: &'a BackupTarget,
    pub namespace: &'a str,
    pub target_name: &'a str,
    pub request: &'a RunRequest,
    pub run_id: &'a str,
    pub settings: &'a JobSettings,
    pub defaults: &'a JobDefaults,
    pub deadline_seconds: i64,
}

impl PodInputs<'_> {
    /// The pod template, labelled with `labels`.
    pub(super) fn template(
        &self,
        labels: BTreeMap<String, String>,
    ) -> Result<PodTemplateSpec, BuildError> {
        let plugin = &self.target.spec.plugin;
        let mut config = plugin
            .config_json()
            .map_err(|source| BuildError::Serialize {
                what: format!("spec.{}", plugin.key()),
                target: format!("{}/{}", self.namespace, self.target_name),
                source,
            })?;
        let info = plugin.info();
        // An external target runs what its BackupPlugin says; the runner reads that from
        // the config it is given (`resolved`), so the Job is self-contained.
        let resolved = match plugin {
            PluginConfig::External(external) => {
                let installed = self
                    .defaults
                    .installed_plugins
                    .get(&external.plugin)
                    .ok_or_else(|| BuildError::PluginUnavailable {
                        target: format!("{}/{}", self.namespace, self.target_name),
                        plugin: external.plugin.clone(),
                    })?;
                // Again here, whatever started the run (a tick right after an edit that
                // slipped past admission, a schema changed since the target's check).
                let problems = installed.config_problems(&external.config);
                if !problems.is_empty() {
                    return Err(BuildError::ConfigMismatch {
                        target: format!("{}/{}", self.namespace, self.target_name),
                        plugin: external.plugin.clone(),
                        problems: problems.join("; "),
                    });
                }
                config["resolved"] =
                    serde_json::to_value(&installed.resolved).map_err(|source| {
                        BuildError::Serialize {
                            what: "spec.external".to_owned(),
                            target: format!("{}/{}", self.namespace, self.target_name),
                            source,
                        }
                    })?;
                Some(installed.resolved.clone())
            }
            _ => None,
        };
        let external = resolved.as_ref();
        // An external plugin's image is the one its BackupPlugin names (chosen by a
        // cluster admin), not one a target may override.
        let job_image = match external {
            Some(resolved) => Some(resolved.image.clone()),
            None => self.settings.image.clone().filter(|i| !i.trim().is_empty()),
        };
        let needs_kubernetes_api =
            external.map_or(info.needs_kubernetes_api, |r| r.needs_kubernetes_api);

        let mut volumes = vec![empty_dir(TMP_VOLUME)];
        let mut mounts = vec![mount(TMP_VOLUME, "/tmp", false)];
        // Backups write the target's claim; a restore reads the artifact's claim (and
        // writes a hold file next to the artifact, so it is mounted read-write).
        let claim = match &self.request.trigger {
            Trigger::Restore(run) => Some(run.claim.clone()),
            _ if self.request.kind == RunKind::Backup => {
                Some(self.target.spec.storage.claim_name.clone())
            }
            _ => None,
        };
        if let Some(claim_name) = claim {
            volumes.push(Volume {
                name: ARTIFACTS_VOLUME.to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name,
                    read_only: Some(false),
                }),
                ..Volume::default()
            });
            mounts.push(mount(ARTIFACTS_VOLUME, &self.defaults.artifact_root, false));
        }
        if let Some(app) = plugin.app_claim() {
            // Read-only at the volume, not only the mount: the kubelet then leaves the
            // ownership of the application's files alone (no fsGroup change). Only a
            // restore writes there.
            let read_only = !self.writes_app_claim();
            volumes.push(Volume {
                name: APP_VOLUME.to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: app.claim_name,
                    read_only: Some(read_only),
                }),
                ..Volume::default()
            });
            mounts.push(mount(APP_VOLUME, APP_CLAIM_ROOT, read_only));
        }
        let subcommand = self.request.kind.as_str().to_owned();
        let resources = self
            .settings
            .resources
            .clone()
            .or_else(|| self.defaults.resources.clone());

        let mut init_containers = Vec::new();
        let run_container = match info.execution {
            Execution::Native => Container {
                image: Some(job_image.unwrap_or_else(|| self.defaults.runner_image.clone())),
                image_pull_policy: self.defaults.image_pull_policy.clone(),
                command: Some(vec![RUNNER_PATH.to_owned(), "run".to_owned(), subcommand]),
                ..Container::default()
            },
            Execution::Tool { default_image } => {
                let config_image = config
                    .get("image")
                    .and_then(serde_json::Value::as_str)
                    .filter(|i| !i.trim().is_empty())
                    .map(str::to_owned);
                volumes.push(empty_dir(RUNNER_VOLUME));
                init_containers.push(Container {
                    name: INSTALL_RUNNER_CONTAINER.to_owned(),
                    image: Some(self.defaults.runner_image.clone()),
                    image_pull_policy: self.defaults.image_pull_policy.clone(),
                    command: Some(vec![
                        RUNNER_PATH.to_owned(),
                        "copy-self".to_owned(),
                        INJECTED_RUNNER_PATH.to_owned(),
                    ]),
                    volume_mounts: Some(vec![mount(RUNNER_VOLUME, RUNNER_DIR, false)]),
                    resources: resources.clone(),
                    security_context: Some(container_security_context()),
                    termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_owned()),
                    termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
                    ..Container::default()
                });
                mounts.push(mount(RUNNER_VOLUME, RUNNER_DIR, true));
                Container {
                    image: Some(
                        job_image
                            .or(config_image)
                            .unwrap_or_else(|| default_image.to_owned()),
                    ),
                    command: Some(vec![
                        INJECTED_RUNNER_PATH.to_owned(),
                        "run".to_owned(),
                        subcommand,
                    ]),
                    ..Container::default()
                }
            }
        };
        let run_container = Container {
            name: RUN_CONTAINER.to_owned(),
            env: Some(self.env(&config)?),
            volume_mounts: Some(mounts),
            resources,
            security_context: Some(container_security_context()),
            termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_owned()),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..run_container
        };

        Ok(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".to_owned()),
                automount_service_account_token: Some(needs_kubernetes_api),
                // The operator's runner ServiceAccount only matters to plugins that call
                // the API; others keep the namespace's `default` account, so a namespace
                // without `stowage-runner` still runs them.
                service_account_name: self.settings.service_account_name.clone().or_else(|| {
                    needs_kubernetes_api
                        .then(|| self.defaults.service_account_name.clone())
                        .flatten()
                }),
                enable_service_links: Some(false),
                node_selector: (!self.settings.node_selector.is_empty())
                    .then(|| self.settings.node_selector.clone()),
                tolerations: (!self.settings.tolerations.is_empty())
                    .then(|| self.settings.tolerations.clone()),
                security_context: Some(self.pod_security_context()),
                init_containers: (!init_containers.is_empty()).then_some(init_containers),
                containers: vec![run_container],
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
        })
    }

    /// The runner's inputs, then one `secretKeyRef` variable per secret reference.
    fn env(&self, config: &serde_json::Value) -> Result<Vec<EnvVar>, BuildError> {
        let spec = &self.target.spec;
        let mut vars = vec![
            plain(env::PLUGIN, spec.plugin.key()),
            plain(env::PLUGIN_CONFIG, &config.to_string()),
            plain(env::NAMESPACE, self.namespace),
            plain(env::TARGET, self.target_name),
            plain(env::RUN_ID, self.run_id),
            plain(env::COMPRESSION, spec.compression.as_str()),
            plain(env::TERMINATION_MESSAGE_PATH, TERMINATION_MESSAGE_PATH),
            plain(
                env::TIMEOUT_SECONDS,
                &runner_timeout(self.deadline_seconds).to_string(),
            ),
            // Tools look for their dotfiles in $HOME; the root filesystem is read-only.
            plain("HOME", "/tmp"),
        ];
        if spec.plugin.app_claim().is_some() {
            vars.push(plain(env::CLAIM_ROOT, APP_CLAIM_ROOT));
        }
        if self.request.kind.writes() {
            vars.push(plain(env::ARTIFACT_ROOT, &self.defaults.artifact_root));
        }
        if let Trigger::Restore(run) = &self.request.trigger {
            vars.push(plain(env::RESTORE_CLAIM, &run.claim));
            vars.push(plain(
                env::RESTORE_SOURCE_TARGET,
                run.source_target.as_deref().unwrap_or_default(),
            ));
            let optional = [
                (env::RESTORE_ARTIFACT, run.path.clone()),
                (env::RESTORE_AS_OF, run.as_of.map(|t| t.to_string())),
                (env::RESTORE_PREVIOUS, run.previous.map(|n| n.to_string())),
                (env::RESTORE_SCHEDULE, run.schedule.clone()),
                (env::RESTORE_INTO, run.into.clone()),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    vars.push(plain(name, &value));
                }
            }
            vars.push(plain(
                env::RESTORE_MODE,
                if run.replace { "Replace" } else { "IntoEmpty" },
            ));
            if run.dry_run {
                vars.push(plain(env::RESTORE_DRY_RUN, "true"));
            }
        }
        if let Trigger::Schedule {
            name,
            tick,
            retention,
            time_zone,
        } = &self.request.trigger
        {
            vars.push(plain(env::SCHEDULE, name));
            vars.push(plain(env::SCHEDULED_TIME, &tick.to_string()));
            if let Some(retention) = retention {
                let json =
                    serde_json::to_string(retention).map_err(|source| BuildError::Serialize {
                        what: format!("the retention of BackupSchedule {name}"),
                        target: format!("{}/{}", self.namespace, self.target_name),
                        source,
                    })?;
                vars.push(plain(env::RETENTION, &json));
            }
            if let Some(time_zone) = time_zone {
                vars.push(plain(env::TIME_ZONE, time_zone));
            }
        }
        for binding in secret_bindings(config) {
            vars.push(EnvVar {
                name: binding.env,
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: binding.reference.name,
                        key: binding.reference.key,
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
        Ok(vars)
    }

    /// Whether the run writes the application's claim (a restore of a plugin with an
    /// [`AppClaim`](stowage_plugin_sdk::AppClaim)).
    fn writes_app_claim(&self) -> bool {
        self.request.kind == RunKind::Restore && self.target.spec.plugin.app_claim().is_some()
    }

    fn pod_security_context(&self) -> PodSecurityContext {
        let run_as = self.settings.run_as.clone().unwrap_or_default();
        let mut supplemental_groups = run_as.supplemental_groups;
        // A pod that writes an application's claim has no fsGroup: the kubelet would
        // change the group of every file of the application. It keeps the fsGroup as a
        // supplemental group, to write the artifacts claim whose group it already is.
        let fs_group = if self.writes_app_claim() {
            supplemental_groups.push(self.defaults.fs_group);
            None
        } else {
            Some(self.defaults.fs_group)
        };
        supplemental_groups.sort_unstable();
        supplemental_groups.dedup();
        PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(run_as.user.unwrap_or(self.defaults.run_as_user)),
            run_as_group: Some(run_as.group.unwrap_or(self.defaults.run_as_group)),
            supplemental_groups: (!supplemental_groups.is_empty()).then_some(supplemental_groups),
            // Only chown the claim when its root does not match yet: a recursive chown
            // of a volume full of artifacts on every run would be slow.
            fs_group_change_policy: fs_group.map(|_| "OnRootMismatch".to_owned()),
            fs_group,
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }
    }
}

/// Fail the Job at once on error kinds a retry cannot fix; do not count pods evicted
/// or preempted (`DisruptionTarget`) against the backoff limit.
pub(super) fn failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".to_owned(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(RUN_CONTAINER.to_owned()),
                    operator: "In".to_owned(),
                    values: NON_RETRYABLE.iter().map(|k| k.exit_code()).collect(),
                }),
                on_pod_conditions: None,
            },
            PodFailurePolicyRule {
                action: "Ignore".to_owned(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".to_owned(),
                    status: "True".to_owned(),
                }]),
            },
        ],
    }
}

/// The runner's own timeout: a little under the Job's deadline (by a tenth, at most a
/// minute), so a slow run ends with a `Timeout` result instead of being killed.
fn runner_timeout(deadline_seconds: i64) -> i64 {
    let margin = (deadline_seconds / 10).min(60);
    (deadline_seconds - margin).max(1)
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}
