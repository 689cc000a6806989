//! The context of one run, handed to every plugin operation.

use std::path::PathBuf;

use jiff::Timestamp;

use crate::{PluginError, SecretKeyRef, SecretValue, Secrets};

/// Who and what a run is for, and the secret values it may use.
#[derive(Clone, Debug)]
pub struct RunContext {
    /// Namespace of the `BackupTarget`.
    pub namespace: String,
    /// Name of the `BackupTarget`.
    pub target: String,
    /// Name of the `BackupSchedule` that triggered the run; `None` for an on-demand run.
    pub schedule: Option<String>,
    /// Unique identifier of the run (also the `stowage.dev/run` label of its Job).
    pub run_id: String,
    /// The schedule tick this run is for; `None` for an on-demand run.
    pub scheduled_time: Option<Timestamp>,
    /// Secret values provided to the run, keyed by reference.
    pub secrets: Secrets,
    /// Where the application's claim is mounted, for plugins that read or write files on
    /// it ([`Plugin::app_claim`](crate::Plugin::app_claim)): [`APP_CLAIM_ROOT`](crate::APP_CLAIM_ROOT)
    /// inside a Job, a temporary directory in tests. `None` for other plugins.
    pub claim_root: Option<PathBuf>,
}

impl RunContext {
    /// A context with no schedule, no secrets and the given identity; convenient in tests.
    pub fn new(namespace: impl Into<String>, target: impl Into<String>) -> Self {
        RunContext {
            namespace: namespace.into(),
            target: target.into(),
            schedule: None,
            run_id: "manual".into(),
            scheduled_time: None,
            secrets: Secrets::default(),
            claim_root: None,
        }
    }

    /// The directory the application's claim is mounted at; an `InvalidConfig`-free
    /// [`PluginError::Internal`] when the run has none (a plugin whose
    /// [`Plugin::app_claim`](crate::Plugin::app_claim) returned `None`).
    pub fn claim_root(&self) -> Result<&std::path::Path, PluginError> {
        self.claim_root.as_deref().ok_or_else(|| {
            PluginError::Internal(
                "the application's claim is not mounted in this run (STOWAGE_CLAIM_ROOT is unset)"
                    .to_owned(),
            )
        })
    }

    /// The value of a secret the config references.
    ///
    /// Fails with [`PluginError::InvalidConfig`]-free, actionable message naming the Secret
    /// and key (never a value) when the run was not given it.
    pub fn secret(&self, reference: &SecretKeyRef) -> Result<&SecretValue, PluginError> {
        self.secrets.get(reference).ok_or_else(|| {
            PluginError::NotFound(format!(
                "secret value for key {:?} of Secret {:?} was not provided to this run; \
                 check that the Secret exists in namespace {:?} and has that key",
                reference.key, reference.name, self.namespace
            ))
        })
    }
}
