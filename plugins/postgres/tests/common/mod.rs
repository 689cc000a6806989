//! The plugin's test helpers on top of the shared PostgreSQL fixture
//! (`stowage-test-postgres`): configs and run contexts for a server.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use stowage_plugin_postgres::PostgresConfig;
use stowage_plugin_sdk::{RunContext, SecretKeyRef, SecretValue};
use tempfile::TempDir;

pub use stowage_test_postgres::{PgServer, SECRET_KEY, SECRET_NAME, free_port, seed};

/// The plugin's view of a test server.
pub trait PluginFixture {
    /// A config for one database (or every database when `None`) of this server, as
    /// `postgres`, with the password from [`SECRET_NAME`]/[`SECRET_KEY`].
    fn config(&self, database: Option<&str>) -> PostgresConfig;
    /// A run context holding this server's password.
    fn ctx(&self) -> RunContext;
}

impl PluginFixture for PgServer {
    fn config(&self, database: Option<&str>) -> PostgresConfig {
        serde_json::from_value(self.config_json(database)).expect("a valid postgres config")
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

/// A directory with a fake `pg_dump` and `pg_dumpall` that print an old version.
pub fn fake_old_dump_tools() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("stowage-fake-pg-")
        .tempdir()
        .expect("create a temporary directory");
    for tool in ["pg_dump", "pg_dumpall"] {
        let path = dir.path().join(tool);
        fs::write(
            &path,
            format!("#!/bin/sh\necho '{tool} (PostgreSQL) 9.6.0'\n"),
        )
        .expect("write a fake tool");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod a fake tool");
    }
    dir
}
