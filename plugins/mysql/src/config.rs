//! The typed configuration of the mysql plugin (`BackupTarget.spec.mysql`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::{SecretKeyRef, ValidationErrors};

use crate::options::check_dump_option;

/// How to reach a MariaDB or MySQL server and which databases to dump.
///
/// Set exactly one of `database` (one database, restorable under another name),
/// `databases` (several, restored under their own names) or `allDatabases: true` (every
/// database but the system schemas).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.database) ? 1 : 0) + (has(self.databases) && size(self.databases) > 0 ? 1 : 0) + (has(self.allDatabases) && self.allDatabases ? 1 : 0) == 1",
        "message": "set exactly one of spec.mysql.database (one database), spec.mysql.databases (several) or spec.mysql.allDatabases: true (every database)"
    }
]))]
pub struct MysqlConfig {
    /// Host name or IP address of the server (e.g. `app-db.shop.svc`). The plugin always
    /// connects over TCP, also for `localhost`.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the server.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// User to connect as. It needs `SELECT`, `SHOW VIEW`, `TRIGGER`, `EVENT` and
    /// `LOCK TABLES` on what is dumped, and for routines `SELECT` on `mysql.proc`
    /// (MariaDB) or `SHOW_ROUTINE` (MySQL 8.0.20+); to restore, the privileges to create
    /// what the dump holds.
    #[schemars(length(min = 1, max = 128))]
    pub username: String,
    /// The user's password, from a Secret in the target's namespace. It reaches the tools
    /// in their environment (`MYSQL_PWD`), never on a command line. Unset for a user without
    /// a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// The one database to dump. The dump names no database, so it can be restored under
    /// another name (a restore's `destination.into`). Set this, `databases` or
    /// `allDatabases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub database: Option<String>,
    /// Several databases, dumped together in one consistent snapshot with
    /// `--databases`; a restore recreates them under their own names. Set this, `database`
    /// or `allDatabases`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    pub databases: Vec<String>,
    /// Dump every database of the server except the system schemas (`mysql`, `sys`,
    /// `information_schema`, `performance_schema`), listed when the backup starts and
    /// dumped in one consistent snapshot. Users and grants (the `mysql` schema) are not
    /// included. Set this, `database` or `databases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_databases: Option<bool>,
    /// TLS to the server: `Disabled`, `Preferred` (the client's default when unset),
    /// `Required`, `VerifyCa` or `VerifyIdentity`. Certificates are checked against the
    /// image's CA bundle. MariaDB's client has no CA-only check: `VerifyCa` and
    /// `VerifyIdentity` both verify the certificate and the host name there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,
    /// Extra options for `mariadb-dump` / `mysqldump`, one long option per entry with its
    /// value attached, e.g. `["--ignore-table=shop.sessions", "--skip-add-locks"]`.
    /// Options stowage sets itself (connection, user, password, TLS, output, databases,
    /// option files, the consistent snapshot) are rejected, in any spelling the tools
    /// accept (abbreviations, `_` for `-`, `--loose-`/`--skip-` prefixes); short options are
    /// rejected too: write them long.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub extra_dump_options: Vec<String>,
    /// Image providing the client tools: `mariadb:11` (the default) has `mariadb-dump` and
    /// `mariadb`, for MariaDB servers. For a MySQL server choose the image of its version,
    /// e.g. `mysql:8.4`, which has `mysqldump` and `mysql`. The plugin uses
    /// `mariadb-dump`/`mariadb` when the image has them, else `mysqldump`/`mysql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

fn default_port() -> u16 {
    3306
}

/// TLS to the server, as MySQL's `--ssl-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SslMode {
    /// Never use TLS.
    Disabled,
    /// Use TLS when the server offers it.
    Preferred,
    /// Require TLS, without verifying the server's certificate.
    Required,
    /// Require TLS and verify the certificate's CA (MariaDB: and the host name).
    VerifyCa,
    /// Require TLS, verify the CA and that the host name matches the certificate.
    VerifyIdentity,
}

/// Which databases a config dumps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<'a> {
    /// One database, dumped without naming it (restorable under another name).
    One(&'a str),
    /// These databases, dumped with `--databases`.
    Several(&'a [String]),
    /// Every database but the system schemas.
    All,
}

/// The schemas `allDatabases` leaves out, and that a restore never counts as data.
pub const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "sys", "information_schema", "performance_schema"];

impl MysqlConfig {
    /// Which databases this config dumps; `None` when it names none or several kinds
    /// (what [`MysqlConfig::validate`] rejects).
    pub fn selection(&self) -> Option<Selection<'_>> {
        let all = self.all_databases.unwrap_or(false);
        match (&self.database, self.databases.is_empty(), all) {
            (Some(database), true, false) => Some(Selection::One(database)),
            (None, false, false) => Some(Selection::Several(&self.databases)),
            (None, true, true) => Some(Selection::All),
            _ => None,
        }
    }

    /// Semantic checks the schema cannot express; field paths relative to `spec.mysql`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let all = self.all_databases.unwrap_or(false);
        let chosen = usize::from(self.database.is_some())
            + usize::from(!self.databases.is_empty())
            + usize::from(all);
        if chosen == 0 {
            errors.push(
                "database",
                "set the database to dump, databases: [...] for several, or allDatabases: true \
                 for every database",
            );
        } else if chosen > 1 {
            let field = if all { "allDatabases" } else { "databases" };
            errors.push(
                field,
                "database, databases and allDatabases: true exclude each other; keep one",
            );
        }
        if let Some(database) = &self.database
            && let Err(e) = check_database_name(database)
        {
            errors.push("database", e);
        }
        for (i, database) in self.databases.iter().enumerate() {
            if let Err(e) = check_database_name(database) {
                errors.push(format!("databases[{i}]"), e);
            } else if self.databases[..i].contains(database) {
                errors.push(
                    format!("databases[{i}]"),
                    format!("database {database:?} is listed twice; remove one"),
                );
            }
        }
        if self.host.trim() != self.host || self.host.contains(char::is_whitespace) {
            errors.push("host", "must not contain whitespace");
        } else if self.host.starts_with('-') {
            errors.push(
                "host",
                "must be a host name or an IP address, not an option",
            );
        }
        if self.username.starts_with('-') || self.username.contains('\0') {
            errors.push("username", "must be a user name, not an option");
        }
        for (i, option) in self.extra_dump_options.iter().enumerate() {
            if let Err(e) = check_dump_option(option) {
                errors.push(format!("extraDumpOptions[{i}]"), e.to_string());
            }
        }
        errors.into_result()
    }
}

/// Whether `name` is a database name the plugin can pass to the tools safely: 1 to 64
/// characters, no `/`, `\`, `.` or control characters (MariaDB and MySQL map a database to
/// a directory), no trailing space (the servers refuse it), and not starting with `-` (the
/// tools would read it as an option).
pub fn check_database_name(name: &str) -> Result<(), String> {
    let length = name.chars().count();
    if length == 0 || length > 64 {
        return Err(format!(
            "database name {name:?} must be 1 to 64 characters long"
        ));
    }
    if name.ends_with(' ') {
        return Err(format!(
            "database name {name:?} ends with a space, which MariaDB and MySQL refuse"
        ));
    }
    if name.starts_with('-') {
        return Err(format!(
            "database name {name:?} starts with '-', which the dump tool would read as an option"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '.') || c.is_control())
    {
        return Err(format!(
            "database name {name:?} contains {c:?}; MariaDB and MySQL database names cannot \
             hold '/', '\\', '.' or control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> MysqlConfig {
        let mut base = json!({
            "host": "db", "username": "backup",
            "passwordSecretRef": {"name": "db", "key": "password"}
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn defaults_are_sensible() {
        let c = config(json!({"database": "shop"}));
        assert_eq!(c.port, 3306);
        assert_eq!(c.selection(), Some(Selection::One("shop")));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn exactly_one_selection_is_required() {
        // (selection, Ok or the field named)
        let cases: [(serde_json::Value, Result<(), &str>); 7] = [
            (json!({"database": "shop"}), Ok(())),
            (json!({"databases": ["a", "b"]}), Ok(())),
            (json!({"allDatabases": true}), Ok(())),
            (json!({}), Err("database")),
            (json!({"allDatabases": false}), Err("database")),
            (
                json!({"database": "a", "databases": ["b"]}),
                Err("databases"),
            ),
            (
                json!({"databases": ["b"], "allDatabases": true}),
                Err("allDatabases"),
            ),
        ];
        for (selection, want) in cases {
            let c = config(selection.clone());
            let got = c.validate().map_err(|e| {
                assert_eq!(e.0.len(), 1, "{selection}: {e}");
                e.0[0].field.clone()
            });
            assert_eq!(got, want.map_err(str::to_owned), "{selection}");
            assert_eq!(c.selection().is_some(), want.is_ok(), "{selection}");
        }
    }

    #[test]
    fn database_names_are_checked_by_index() {
        let cases = [
            ("shop", None),
            ("my-app_2024 ünï", None),
            ("", Some("1 to 64")),
            ("a/b", Some("'/'")),
            ("a.b", Some("'.'")),
            ("trailing ", Some("ends with a space")),
            ("-x", Some("option")),
            ("tab\there", Some("control")),
        ];
        for (name, says) in cases {
            let got = check_database_name(name);
            match says {
                None => assert_eq!(got, Ok(()), "{name:?}"),
                Some(s) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(s)),
                    "{name:?}: {got:?}"
                ),
            }
        }
        let long = "x".repeat(65);
        assert!(check_database_name(&long).is_err());
        let c = config(json!({"databases": ["a", "b/c", "a"]}));
        let fields: Vec<_> = c
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["databases[1]", "databases[2]"]);
    }

    #[test]
    fn hosts_users_and_dump_options_are_checked() {
        let c = config(json!({"database": "shop", "host": "-evil"}));
        assert_eq!(c.validate().unwrap_err().0[0].field, "host");
        let c = config(json!({"database": "shop", "username": "--user=x"}));
        assert_eq!(c.validate().unwrap_err().0[0].field, "username");
        let c = config(json!({"database": "shop",
            "extraDumpOptions": ["--skip-add-locks", "--host=evil"]}));
        let err = c.validate().unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].field, "extraDumpOptions[1]");
    }

    #[test]
    fn unknown_fields_and_inline_passwords_are_rejected() {
        let err = serde_json::from_value::<MysqlConfig>(json!({
            "host": "db", "database": "shop", "username": "u", "password": "hunter2"
        }))
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `password`"),
            "{err}"
        );
    }
}
