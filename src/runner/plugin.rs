//! What the runner needs from a plugin, so it runs the registry's `PluginConfig` in the
//! binary and any single [`Plugin`] in tests.

use std::future::Future;

use stowage_plugin_external::ExternalConfig;
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport, Plugin,
    PluginError, PluginInfo, ProbeReport, RestoreReport, RestoreRequest, RunContext,
    ValidationErrors,
};

use crate::registry::PluginConfig;

/// Who made an artifact, as results and sidecars record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The plugin's key (`postgres`), or an external plugin's BackupPlugin name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// MIME type of an uncompressed artifact.
    pub content_type: String,
    /// What it can do.
    pub capabilities: Capabilities,
}

impl From<PluginInfo> for Identity {
    fn from(info: PluginInfo) -> Identity {
        Identity {
            name: info.key.to_owned(),
            version: info.version.to_owned(),
            content_type: info.content_type.to_owned(),
            capabilities: info.capabilities,
        }
    }
}

/// A plugin together with its config, ready to run.
pub trait RunnablePlugin: Send + Sync {
    /// The plugin's static description.
    fn info(&self) -> PluginInfo;
    /// Name, version, content type and capabilities as recorded in results and
    /// sidecars: the static description of a built-in plugin, the BackupPlugin's for an
    /// external one.
    fn identity(&self) -> Identity {
        self.info().into()
    }
    /// Extension of the uncompressed artifact for this config, without a leading dot.
    fn artifact_extension(&self) -> String;
    /// Semantic validation of the config.
    fn validate(&self) -> Result<(), ValidationErrors>;
    /// Connectivity test.
    fn probe(
        &self,
        ctx: &RunContext,
    ) -> impl Future<Output = Result<ProbeReport, PluginError>> + Send;
    /// Produce the artifact into `sink`.
    fn backup(
        &self,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> impl Future<Output = Result<BackupReport, PluginError>> + Send;
    /// Look at the restore destination.
    fn inspect_destination(
        &self,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> impl Future<Output = Result<DestinationReport, PluginError>> + Send;
    /// Restore from `source`.
    fn restore(
        &self,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> impl Future<Output = Result<RestoreReport, PluginError>> + Send;
}

impl RunnablePlugin for PluginConfig {
    fn info(&self) -> PluginInfo {
        PluginConfig::info(self)
    }
    fn identity(&self) -> Identity {
        match self {
            PluginConfig::External(ExternalConfig {
                resolved: Some(resolved),
                ..
            }) => Identity {
                name: resolved.name.clone(),
                version: resolved.version.clone(),
                content_type: resolved.content_type.clone(),
                capabilities: resolved.capabilities.into(),
            },
            _ => PluginConfig::info(self).into(),
        }
    }
    fn artifact_extension(&self) -> String {
        PluginConfig::artifact_extension(self)
    }
    fn validate(&self) -> Result<(), ValidationErrors> {
        PluginConfig::validate(self)
    }
    async fn probe(&self, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        PluginConfig::probe(self, ctx).await
    }
    async fn backup(
        &self,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        PluginConfig::backup(self, ctx, sink).await
    }
    async fn inspect_destination(
        &self,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        PluginConfig::inspect_destination(self, ctx, request).await
    }
    async fn restore(
        &self,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        PluginConfig::restore(self, ctx, source, request).await
    }
}

/// One plugin type with its config.
pub struct Single<P: Plugin>(pub P::Config);

impl<P: Plugin> RunnablePlugin for Single<P> {
    fn info(&self) -> PluginInfo {
        P::info()
    }
    fn artifact_extension(&self) -> String {
        P::artifact_extension(&self.0)
    }
    fn validate(&self) -> Result<(), ValidationErrors> {
        P::validate(&self.0)
    }
    fn probe(
        &self,
        ctx: &RunContext,
    ) -> impl Future<Output = Result<ProbeReport, PluginError>> + Send {
        P::probe(&self.0, ctx)
    }
    fn backup(
        &self,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> impl Future<Output = Result<BackupReport, PluginError>> + Send {
        P::backup(&self.0, ctx, sink)
    }
    fn inspect_destination(
        &self,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> impl Future<Output = Result<DestinationReport, PluginError>> + Send {
        P::inspect_destination(&self.0, ctx, request)
    }
    fn restore(
        &self,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> impl Future<Output = Result<RestoreReport, PluginError>> + Send {
        P::restore(&self.0, ctx, source, request)
    }
}
