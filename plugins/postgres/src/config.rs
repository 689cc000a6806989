//! The typed configuration of the postgres plugin (`BackupTarget.spec.postgres`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::{SecretKeyRef, ValidationErrors};

/// How to reach a PostgreSQL server and what to dump.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.database) != (has(self.allDatabases) && self.allDatabases)",
        "message": "set exactly one of spec.postgres.database (one database) or spec.postgres.allDatabases: true (every database, with pg_dumpall)"
    },
    {
        "rule": "!(has(self.allDatabases) && self.allDatabases) || !has(self.format) || self.format == 'plain'",
        "message": "spec.postgres.allDatabases uses pg_dumpall, which only writes the plain format: remove spec.postgres.format or set it to plain"
    }
]))]
pub struct PostgresConfig {
    /// Host name or IP address of the server (e.g. `app-db.shop.svc`).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the server.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// The database to dump with `pg_dump`. Set this or `allDatabases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub database: Option<String>,
    /// Dump every database, roles and tablespaces with `pg_dumpall` (plain SQL format).
    /// Set this or `database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_databases: Option<bool>,
    /// Role to connect as. It needs read access to everything dumped (for `allDatabases`,
    /// a superuser).
    #[schemars(length(min = 1, max = 63))]
    pub username: String,
    /// The role's password, from a Secret in the target's namespace. Unset for servers that
    /// trust the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// TLS mode, as libpq's `sslmode`: `disable`, `allow`, `prefer` (default), `require`,
    /// `verify-ca` or `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,
    /// Dump format for a single database: `custom` (default; compressed by stowage,
    /// restorable selectively with `pg_restore`), `plain` (SQL text) or `tar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DumpFormat>,
    /// Extra options passed to `pg_dump` / `pg_dumpall`, e.g. `["--exclude-table=audit_*",
    /// "--no-comments"]`. Options that stowage sets itself (connection, output file,
    /// format, password) are rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub extra_dump_options: Vec<String>,
    /// Image providing `pg_dump`, e.g. `postgres:17` (the default). Its major version must
    /// be at least the server's; the probe checks this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

fn default_port() -> u16 {
    5432
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try without TLS first, then with TLS.
    Allow,
    /// Try TLS first, then without (libpq's default).
    Prefer,
    /// Require TLS, without verifying the server certificate.
    Require,
    /// Require TLS and verify the server certificate's CA.
    VerifyCa,
    /// Require TLS, verify the CA and that the host name matches the certificate.
    VerifyFull,
}

impl SslMode {
    /// The value libpq expects.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `pg_dump`'s output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// pg_dump's custom archive format, restored with `pg_restore`.
    Custom,
    /// Plain SQL, restored with `psql`.
    Plain,
    /// tar archive, restored with `pg_restore`.
    Tar,
}

/// Options stowage sets itself; passing them in `extraDumpOptions` would break the run or
/// leak a secret into the process list.
const RESERVED_OPTIONS: &[&str] = &[
    "-f",
    "--file",
    "-F",
    "--format",
    "-h",
    "--host",
    "-p",
    "--port",
    "-U",
    "--username",
    "-d",
    "--dbname",
    "-W",
    "--password",
    "-w",
    "--no-password",
    "-j",
    "--jobs",
];

impl PostgresConfig {
    /// Whether this config dumps every database.
    pub fn dumps_all_databases(&self) -> bool {
        self.all_databases.unwrap_or(false)
    }

    /// The dump format in effect.
    pub fn effective_format(&self) -> DumpFormat {
        match (self.format, self.dumps_all_databases()) {
            (_, true) => DumpFormat::Plain,
            (Some(format), false) => format,
            (None, false) => DumpFormat::Custom,
        }
    }

    /// Semantic checks the schema cannot express; field paths relative to `spec.postgres`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        match (&self.database, self.dumps_all_databases()) {
            (None, false) => errors.push(
                "database",
                "set the database to dump, or allDatabases: true to dump every database",
            ),
            (Some(_), true) => errors.push(
                "allDatabases",
                "database and allDatabases: true exclude each other; remove one",
            ),
            _ => {}
        }
        if self.dumps_all_databases() && matches!(self.format, Some(f) if f != DumpFormat::Plain) {
            errors.push(
                "format",
                "allDatabases uses pg_dumpall, which only writes plain SQL; remove format or set it to plain",
            );
        }
        if self.host.trim() != self.host || self.host.contains(char::is_whitespace) {
            errors.push("host", "must not contain whitespace");
        }
        for (i, option) in self.extra_dump_options.iter().enumerate() {
            let name = option.split('=').next().unwrap_or(option);
            let reserved = RESERVED_OPTIONS.iter().any(|r| {
                name == *r || (r.len() == 2 && !r.starts_with("--") && name.starts_with(r))
            });
            if reserved {
                errors.push(
                    format!("extraDumpOptions[{i}]"),
                    format!(
                        "{name} is set by stowage from the other fields (host, port, username, \
                         database, format, passwordSecretRef); remove it"
                    ),
                );
            } else if !option.starts_with('-') {
                errors.push(
                    format!("extraDumpOptions[{i}]"),
                    "each entry must be one option starting with '-' (e.g. --no-comments)",
                );
            }
        }
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PostgresConfig {
        serde_json::from_value(serde_json::json!({
            "host": "db", "database": "shop", "username": "backup",
            "passwordSecretRef": {"name": "db", "key": "password"}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_sensible() {
        let c = config();
        assert_eq!(c.port, 5432);
        assert_eq!(c.effective_format(), DumpFormat::Custom);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn database_or_all_databases_is_required() {
        let mut c = config();
        c.database = None;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("database: set the database"), "{err}");
        c.all_databases = Some(true);
        assert!(c.validate().is_ok());
        assert_eq!(c.effective_format(), DumpFormat::Plain);
        c.database = Some("shop".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("allDatabases")
        );
    }

    #[test]
    fn all_databases_rejects_non_plain_formats() {
        let mut c = config();
        c.database = None;
        c.all_databases = Some(true);
        c.format = Some(DumpFormat::Custom);
        let err = c.validate().unwrap_err();
        assert_eq!(err.0[0].field, "format");
    }

    #[test]
    fn reserved_dump_options_are_rejected_by_index() {
        let mut c = config();
        c.extra_dump_options = vec![
            "--no-comments".into(),
            "--file=/tmp/x".into(),
            "-Uroot".into(),
            "schema".into(),
        ];
        let err = c.validate().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "extraDumpOptions[1]",
                "extraDumpOptions[2]",
                "extraDumpOptions[3]"
            ]
        );
    }

    #[test]
    fn unknown_fields_and_inline_passwords_are_rejected() {
        let err = serde_json::from_value::<PostgresConfig>(serde_json::json!({
            "host": "db", "database": "shop", "username": "u", "password": "hunter2"
        }))
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `password`"),
            "{err}"
        );
    }
}
