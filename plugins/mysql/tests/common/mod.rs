//! The plugin's test helpers on top of the shared MariaDB fixture (`stowage-test-mariadb`):
//! configs, run contexts, and backups and restores into memory.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;

use stowage_plugin_mysql::{MysqlConfig, MysqlPlugin};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Plugin, PluginError, RestoreReport, RestoreRequest,
    RunContext, SecretKeyRef, SecretValue,
};

pub use stowage_test_mariadb::{
    MariaDbServer, SECRET_KEY, SECRET_NAME, free_port, seed, snapshot_differences,
};

/// The plugin's view of a test server.
pub trait PluginFixture {
    /// A config for this server as `root` with `selection` (e.g. `{"database": "shop"}`).
    fn config(&self, selection: serde_json::Value) -> MysqlConfig;
    /// A run context holding this server's password.
    fn ctx(&self) -> RunContext;
}

impl PluginFixture for MariaDbServer {
    fn config(&self, selection: serde_json::Value) -> MysqlConfig {
        serde_json::from_value(self.config_json(selection)).expect("a valid mysql config")
    }

    fn ctx(&self) -> RunContext {
        ctx_with_password(&self.password)
    }
}

/// A run context whose only secret is `password` under [`SECRET_NAME`]/[`SECRET_KEY`].
pub fn ctx_with_password(password: &str) -> RunContext {
    let mut ctx = RunContext::new("shop", "app-db");
    ctx.secrets.insert(
        SecretKeyRef::new(SECRET_NAME, SECRET_KEY),
        SecretValue::new(password),
    );
    ctx
}

/// Back up with `config` into memory: the artifact and the report.
pub async fn backup(
    config: &MysqlConfig,
    ctx: &RunContext,
) -> Result<(Vec<u8>, BackupReport), PluginError> {
    let mut artifact = Vec::new();
    let report = {
        let mut sink = ArtifactSink::new(&mut artifact);
        MysqlPlugin::backup(config, ctx, &mut sink).await?
    };
    Ok((artifact, report))
}

/// Restore `artifact` (made with `facts`) with `config` into `into`: first the destination
/// check the runner does (an `IntoEmpty` restore is refused when it holds data), then the
/// restore.
pub async fn restore(
    config: &MysqlConfig,
    ctx: &RunContext,
    artifact: &[u8],
    facts: &BTreeMap<String, String>,
    into: Option<&str>,
) -> Result<RestoreReport, PluginError> {
    let request = RestoreRequest {
        facts: facts.clone(),
        into: into.map(str::to_owned),
        replace: false,
    };
    let report = MysqlPlugin::inspect_destination(config, ctx, &request).await?;
    assert!(!report.holds_data, "{}", report.description);
    let mut source = ArtifactSource::new(artifact);
    MysqlPlugin::restore(config, ctx, &mut source, &request).await
}
