//! The contract between stowage and its backup plugins.
//!
//! A plugin is a type implementing [`Plugin`]: it declares its key (the field
//! name under a `BackupTarget`'s `spec`), its typed [`Plugin::Config`] whose JSON
//! schema becomes part of the CRD, and the operations `validate`, `probe`,
//! `backup` and `restore`. Plugins never choose paths, never write files and
//! never compute checksums: `backup` writes bytes into an [`ArtifactSink`] that
//! the framework owns, and `restore` reads from an [`ArtifactSource`].
//!
//! Secret values reach a plugin only through [`RunContext::secret`], keyed by the
//! [`SecretKeyRef`] fields of its config. Every error is a [`PluginError`] whose
//! [`ErrorKind`] maps to a stable condition reason and a process exit code.
//!
//! [`plugin_registry!`] turns a list of plugin types into the externally tagged
//! enum that the `BackupTarget` CRD embeds, with static dispatch to each plugin.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod context;
mod error;
pub mod protocol;
mod registry;
mod secret;
mod stream;
pub mod tool;

use std::collections::BTreeMap;
use std::future::Future;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

pub use context::RunContext;
pub use error::{ErrorKind, FieldError, PluginError, ValidationErrors};
pub use secret::{
    Redactor, SECRET_ENV_PREFIX, SecretBinding, SecretKeyRef, SecretValue, Secrets, secret_bindings,
};
pub use stream::{ArtifactSink, ArtifactSource};

/// Re-exports used by [`plugin_registry!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}

/// What a plugin can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The plugin can produce an artifact.
    pub backup: bool,
    /// The plugin can read an artifact back into a service.
    pub restore: bool,
    /// The plugin can test connectivity and authentication without side effects.
    pub probe: bool,
}

impl Capabilities {
    /// The capability names that are set, in a stable order (`backup`, `restore`, `probe`).
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.backup, "backup"),
            (self.restore, "restore"),
            (self.probe, "probe"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// How a plugin's work is executed inside a backup Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "style")]
pub enum Execution {
    /// The work is done in Rust inside the stowage runner; the Job runs the stowage image.
    Native,
    /// The work drives the service's own tool (e.g. `pg_dump`), whose version must match the
    /// server, so the Job runs the tool's image with the static runner copied in.
    Tool {
        /// Image used when the target does not set `spec.job.image`.
        default_image: &'static str,
    },
}

/// The static description of a plugin, shown by `stowage plugins` and recorded in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    /// Field name under `BackupTarget.spec`, also the folder name under `plugins/`.
    pub key: &'static str,
    /// Human-readable name.
    pub name: &'static str,
    /// Version of the plugin (recorded in status and in each artifact's sidecar).
    pub version: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// What the plugin can do.
    pub capabilities: Capabilities,
    /// File extension of an uncompressed artifact, without a dot (e.g. `dump`, `sql`, `tar`).
    pub artifact_extension: &'static str,
    /// MIME type of an uncompressed artifact.
    pub content_type: &'static str,
    /// How the plugin runs inside a Job.
    pub execution: Execution,
    /// Whether the plugin's Job needs a Kubernetes API token (e.g. to export objects).
    pub needs_kubernetes_api: bool,
}

/// Where a Job mounts the application's claim of a plugin that reads or writes files on
/// it ([`Plugin::app_claim`]); [`RunContext::claim_root`] in a run.
pub const APP_CLAIM_ROOT: &str = "/data";

/// An application's PersistentVolumeClaim that a plugin works on (a SQLite file, a
/// directory tree), mounted at [`APP_CLAIM_ROOT`] in the plugin's Jobs.
///
/// Backups and probes mount it read-only, so the kubelet never changes the ownership of
/// the application's files for the Job's `fsGroup`; restores mount it read-write and run
/// without an `fsGroup` for the same reason. When the claim can be mounted by one node
/// only (`ReadWriteOnce`), the operator places the Job on the node of the pod that uses
/// it; a `ReadWriteOncePod` claim in use cannot be mounted, and the run says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppClaim {
    /// The claim's name, in the target's namespace.
    pub claim_name: String,
}

/// The outcome of a successful probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// Human-readable summary, shown in the `Reachable` condition's message.
    pub message: String,
    /// Plugin-specific facts (e.g. `serverVersion`).
    pub facts: BTreeMap<String, String>,
}

/// The outcome of a successful backup, beyond the bytes written to the sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    /// Plugin-specific facts recorded in the artifact's sidecar (e.g. `serverVersion`).
    pub facts: BTreeMap<String, String>,
}

/// What to restore into, beyond the destination config itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreRequest {
    /// Facts the plugin recorded in the artifact's sidecar at backup time.
    pub facts: BTreeMap<String, String>,
    /// A name inside the destination to restore into (for database plugins: a database),
    /// overriding the one in the destination config.
    pub into: Option<String>,
    /// Restore over data the destination already holds (`mode: Replace` of a
    /// `BackupRestore`). When false the runner has already checked, with
    /// [`Plugin::inspect_destination`], that the destination holds no data; a plugin
    /// restores into an empty destination then. When true the plugin replaces what is
    /// there, and must leave the existing data in place if the restore fails.
    pub replace: bool,
}

/// What a destination holds, as the plugin sees it, before a restore (see
/// [`Plugin::inspect_destination`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationReport {
    /// Whether restoring there would overwrite data (postgres: the database exists and
    /// has user tables). A restore with `mode: IntoEmpty` is refused when true.
    pub holds_data: bool,
    /// One line for humans naming the destination and what is in it (e.g. `database
    /// "shop" on db.shop.svc:5432 exists with 12 user tables`); never a secret value.
    pub description: String,
}

/// The outcome of a successful restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// Human-readable summary.
    pub message: String,
}

/// A backup plugin.
///
/// Implementations are zero-sized marker types; all operations are associated functions
/// over the plugin's [`Config`](Plugin::Config), so the registry can dispatch statically.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's typed configuration. Its JSON schema (from the doc comments of its
    /// fields) is embedded in the `BackupTarget` CRD under `spec.<KEY>`. Secret values are
    /// never part of it: secret fields are [`SecretKeyRef`]s named `...SecretRef`.
    type Config: Serialize
        + DeserializeOwned
        + JsonSchema
        + Clone
        + std::fmt::Debug
        + PartialEq
        + Send
        + Sync
        + 'static;

    /// Field name under `BackupTarget.spec` (and folder name under `plugins/`).
    const KEY: &'static str;

    /// Static description of the plugin.
    fn info() -> PluginInfo;

    /// File extension of an uncompressed artifact for this config, without a dot. Defaults
    /// to [`PluginInfo::artifact_extension`]; plugins whose output type depends on the
    /// config (a dump format, a download) override it.
    fn artifact_extension(_config: &Self::Config) -> String {
        Self::info().artifact_extension.to_owned()
    }

    /// The application's claim this config works on, if the plugin reads or writes files
    /// on a claim (see [`AppClaim`]). The default: none.
    fn app_claim(_config: &Self::Config) -> Option<AppClaim> {
        None
    }

    /// Semantic checks the schema cannot express. Field paths are relative to the config.
    fn validate(_config: &Self::Config) -> Result<(), ValidationErrors> {
        Ok(())
    }

    /// A non-destructive connectivity and authentication test.
    fn probe(
        config: &Self::Config,
        ctx: &RunContext,
    ) -> impl Future<Output = Result<ProbeReport, PluginError>> + Send;

    /// Produce the artifact by writing it into `sink`.
    fn backup(
        config: &Self::Config,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> impl Future<Output = Result<BackupReport, PluginError>> + Send;

    /// Look at the restore destination without changing it: whether it holds data a
    /// restore would overwrite, and what it is. Runs before every restore and dry run.
    /// Plugins that restore must implement it; the default says the plugin cannot tell,
    /// so the runner refuses to restore with it.
    fn inspect_destination(
        _config: &Self::Config,
        _ctx: &RunContext,
        _request: &RestoreRequest,
    ) -> impl Future<Output = Result<DestinationReport, PluginError>> + Send {
        async {
            Err(PluginError::Unsupported(format!(
                "the {} plugin cannot tell whether a restore destination holds data",
                Self::KEY
            )))
        }
    }

    /// Read an artifact from `source` back into the service described by `config`.
    fn restore(
        _config: &Self::Config,
        _ctx: &RunContext,
        _source: &mut ArtifactSource<'_>,
        _request: &RestoreRequest,
    ) -> impl Future<Output = Result<RestoreReport, PluginError>> + Send {
        async {
            Err(PluginError::Unsupported(format!(
                "the {} plugin cannot restore",
                Self::KEY
            )))
        }
    }
}
