//! What the runner needs from a plugin, so it runs the registry's `PluginConfig` in the
//! binary and any single [`Plugin`] in tests.

use std::future::Future;

use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, DestinationReport, Plugin, PluginError, PluginInfo,
    ProbeReport, RestoreReport, RestoreRequest, RunContext, ValidationErrors,
};

use crate::registry::PluginConfig;

/// A plugin together with its config, ready to run.
pub trait RunnablePlugin: Send + Sync {
    /// The plugin's static description.
    fn info(&self) -> PluginInfo;
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
