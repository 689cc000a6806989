//! The `postgres` plugin: PostgreSQL backups with `pg_dump` / `pg_dumpall`, restores with
//! `pg_restore` / `psql`.
//!
//! It is a tool plugin: its Job runs a PostgreSQL image (so the dump tool's version
//! matches the server's) with the static stowage runner copied in.

mod config;

pub use config::{DumpFormat, PostgresConfig, SslMode};

use stowage_plugin_sdk::{
    ArtifactSink, BackupReport, Capabilities, Execution, Plugin, PluginError, PluginInfo,
    ProbeReport, RunContext, ValidationErrors,
};

/// The PostgreSQL plugin.
pub struct PostgresPlugin;

/// Image used when neither `spec.postgres.image` nor `spec.job.image` is set.
pub const DEFAULT_IMAGE: &str = "postgres:17";

impl Plugin for PostgresPlugin {
    type Config = PostgresConfig;
    const KEY: &'static str = "postgres";

    fn info() -> PluginInfo {
        PluginInfo {
            key: Self::KEY,
            name: "PostgreSQL",
            version: env!("CARGO_PKG_VERSION"),
            description: "PostgreSQL databases with pg_dump/pg_dumpall, restored with pg_restore/psql",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "dump",
            content_type: "application/vnd.postgresql.dump",
            execution: Execution::Tool {
                default_image: DEFAULT_IMAGE,
            },
            needs_kubernetes_api: false,
        }
    }

    fn validate(config: &PostgresConfig) -> Result<(), ValidationErrors> {
        config.validate()
    }

    async fn probe(
        _config: &PostgresConfig,
        _ctx: &RunContext,
    ) -> Result<ProbeReport, PluginError> {
        Err(PluginError::Unsupported(
            "the postgres probe is not implemented yet".into(),
        ))
    }

    async fn backup(
        _config: &PostgresConfig,
        _ctx: &RunContext,
        _sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        Err(PluginError::Unsupported(
            "the postgres backup is not implemented yet".into(),
        ))
    }
}
