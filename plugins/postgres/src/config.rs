//! The typed configuration of the postgres plugin (`BackupTarget.spec.postgres`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::{SecretKeyRef, ValidationErrors};

use crate::options::{DumpTool, parse_dump_option};

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
    /// Extra options passed to `pg_dump` / `pg_dumpall`, one option per entry with its
    /// value attached, e.g. `["--exclude-table=audit_*", "--no-comments", "-Z5"]`. Options
    /// that stowage sets itself (output file, format, connection, role, password, jobs) are
    /// rejected however they are spelled: combined short flags (`-xf/tmp/x`), attached
    /// values (`-Uroot`) and abbreviated long options (`--fil=x`) included.
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

impl PostgresConfig {
    /// Whether this config dumps every database.
    pub fn dumps_all_databases(&self) -> bool {
        self.all_databases.unwrap_or(false)
    }

    /// The tool that dumps: `pg_dumpall` for all databases, else `pg_dump`.
    pub fn dump_tool(&self) -> DumpTool {
        if self.dumps_all_databases() {
            DumpTool::PgDumpall
        } else {
            DumpTool::PgDump
        }
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
        let tool = self.dump_tool();
        for (i, option) in self.extra_dump_options.iter().enumerate() {
            if let Err(e) = parse_dump_option(tool, option) {
                errors.push(format!("extraDumpOptions[{i}]"), e.to_string());
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

    /// `extraDumpOptions: [entry]` for a one-database (`pg_dump`) or an all-databases
    /// (`pg_dumpall`) config: `Ok` or the one error's (field, message).
    fn check_dump_option(all_databases: bool, entry: &str) -> Result<(), (String, String)> {
        let mut c = config();
        if all_databases {
            c.database = None;
            c.all_databases = Some(true);
        }
        c.extra_dump_options = vec!["--no-comments".into(), entry.into()];
        c.validate().map_err(|e| {
            assert_eq!(e.0.len(), 1, "{entry:?}: {e}");
            (e.0[0].field.clone(), e.0[0].message.clone())
        })
    }

    #[test]
    fn reserved_dump_options_are_rejected_however_spelled() {
        // (pg_dumpall?, entry, the option named in the message, the fix it points to)
        let cases = [
            (false, "-f/tmp/x", "-f (--file)", "artifact"),
            (false, "-xf/tmp/x", "-f (--file)", "artifact"),
            (false, "-vf", "-f (--file)", "artifact"),
            (false, "-Ovxf/tmp/x", "-f (--file)", "artifact"),
            (false, "--file=/tmp/x", "--file", "artifact"),
            (false, "--fil=/x", "--file", "artifact"),
            (false, "--fi=/x", "--file", "artifact"),
            (false, "--form=p", "--format", "spec.postgres.format"),
            (false, "-Fp", "-F (--format)", "spec.postgres.format"),
            (false, "-sFp", "-F (--format)", "spec.postgres.format"),
            (false, "-hevil", "-h (--host)", "spec.postgres.host"),
            (false, "--ho=evil", "--host", "spec.postgres.host"),
            (false, "-Uroot", "-U (--username)", "spec.postgres.username"),
            (false, "--user=root", "--username", "spec.postgres.username"),
            (false, "-p5433", "-p (--port)", "spec.postgres.port"),
            (false, "--por=5433", "--port", "spec.postgres.port"),
            (false, "-dother", "-d (--dbname)", "spec.postgres.database"),
            (false, "--db=other", "--dbname", "spec.postgres.database"),
            (false, "-W", "-W (--password)", "passwordSecretRef"),
            (false, "-vW", "-W (--password)", "passwordSecretRef"),
            (false, "--pass", "--password", "passwordSecretRef"),
            (false, "-w", "-w (--no-password)", "passwordSecretRef"),
            (false, "--no-pa", "--no-password", "passwordSecretRef"),
            (false, "-j4", "-j (--jobs)", "directory"),
            (false, "--jo=4", "--jobs", "directory"),
            // pg_dumpall reads its own options: -l names the database it connects to.
            (true, "-lother", "-l (--database)", "remove it"),
            (true, "--datab=other", "--database", "remove it"),
            (true, "-gf/tmp/x", "-f (--file)", "artifact"),
            // pg_dumpall's -t takes no value, so the f that follows is an option.
            (true, "-tf/tmp/x", "-f (--file)", "artifact"),
        ];
        let mut wrong = Vec::new();
        for (all, entry, option, fix) in cases {
            match check_dump_option(all, entry) {
                Ok(()) => wrong.push(format!("{entry}: accepted")),
                Err((field, message)) => {
                    let says = [entry, option, fix].iter().all(|s| message.contains(s));
                    if field != "extraDumpOptions[1]" || !says {
                        wrong.push(format!("{entry}: {field}: {message}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn unreserved_dump_options_pass_however_spelled() {
        let cases = [
            (false, "--no-comments"),
            (false, "--exclude-table=audit_*"),
            (false, "--exclude-table-data=log"),
            // pg_dump's -t takes a value, so "f" and "-f" here are table names.
            (false, "-tf"),
            (false, "-t-f"),
            (false, "--table=-f"),
            (false, "-xO"),
            (false, "-vZ5"),
            (false, "--compress=zstd:3"),
            // --filter is an option of its own (PostgreSQL 17), not --file.
            (false, "--filter=/etc/stowage/filter"),
            (false, "--no-ow"),
            (false, "--use-set-session-authorization"),
            (false, "--lock-wait-timeout=30s"),
            // An option this list does not know (a newer pg_dump's) cannot be a reserved one.
            (false, "--some-future-option"),
            (true, "--no-role-passwords"),
            (true, "-g"),
            (true, "--exclude-database=tmp*"),
        ];
        for (all, entry) in cases {
            assert_eq!(check_dump_option(all, entry), Ok(()), "{entry}");
        }
    }

    #[test]
    fn each_dump_option_entry_is_one_complete_option() {
        // (entry, what the message says)
        let cases = [
            ("schema", "starting with '-'"),
            ("", "starting with '-'"),
            // `--` ends the options and `-` is an operand: both make pg_dump read what
            // follows as the database to dump.
            ("--", "database"),
            ("-", "database"),
            // A value in the next entry would be read as this option's value.
            ("-t", "-tVALUE"),
            ("--table", "--table=VALUE"),
            ("--no-comments=yes", "takes no value"),
            // An abbreviation of several unreserved options fails in pg_dump itself.
            ("--ver", "ambiguous"),
        ];
        let mut wrong = Vec::new();
        for (entry, says) in cases {
            match check_dump_option(false, entry) {
                Ok(()) => wrong.push(format!("{entry:?}: accepted")),
                Err((field, message)) => {
                    if field != "extraDumpOptions[1]" || !message.contains(says) {
                        wrong.push(format!("{entry:?}: {field}: {message}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
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
