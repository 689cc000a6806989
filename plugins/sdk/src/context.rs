//! The context of one run, handed to every plugin operation.

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
        }
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
