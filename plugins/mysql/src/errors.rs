//! Turning what the MariaDB and MySQL client tools print on stderr into typed, actionable
//! [`PluginError`]s. Both families report a server or client error number (`ERROR 1045
//! (28000): ...` from the client, `Got error: 1045: ...` from the dump tools), which is
//! what the classification reads; the message quotes the redacted stderr. Every message
//! here is built from the config and redacted tool output: never from a secret value.

use stowage_plugin_sdk::{PluginError, Redactor, SecretKeyRef};

/// How many of the tool's last stderr lines a message shows.
const SHOWN_LINES: usize = 8;
/// The most characters of tool output a message shows.
const SHOWN_CHARS: usize = 1500;

/// What an error message may say about the connection (no secret).
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `host:port`.
    pub address: String,
    /// The user.
    pub username: String,
    /// The password's Secret reference, if any.
    pub password_ref: Option<SecretKeyRef>,
}

/// The client or server error number in a tool's stderr: `ERROR 1045 (28000): ...`
/// (`mariadb`, `mysql`) or `Got error: 1045: ...` (`mariadb-dump`, `mysqldump`).
pub(crate) fn error_code(stderr: &str) -> Option<u32> {
    stderr.lines().find_map(|line| {
        let rest = line
            .find("ERROR ")
            .map(|i| &line[i + "ERROR ".len()..])
            .or_else(|| {
                line.find("Got error: ")
                    .map(|i| &line[i + "Got error: ".len()..])
            })?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The error for a tool that exited unsuccessfully, from its stderr.
pub(crate) fn classify_failure(
    tool: &str,
    endpoint: &Endpoint,
    stderr: &str,
    redactor: &Redactor,
    exit: Option<i32>,
) -> PluginError {
    let stderr = redactor.redact(stderr);
    let said = excerpt(&without_tool_prefix(&stderr, tool));
    let lower = stderr.to_lowercase();
    let address = &endpoint.address;
    let user = &endpoint.username;
    let timed_out = lower.contains("(110")
        || lower.contains("timed out")
        || lower.contains("system error: 110");
    match error_code(&stderr) {
        Some(1045) => {
            let fix = match &endpoint.password_ref {
                Some(r) => format!(
                    "check that key {:?} of Secret {:?} (spec.mysql.passwordSecretRef) holds the \
                     current password of user {user:?}, and that the user may connect from the \
                     backup Job's address",
                    r.key, r.name
                ),
                None => "the server requires a password: set spec.mysql.passwordSecretRef to a \
                         Secret key holding it"
                    .to_owned(),
            };
            PluginError::Unauthorized(format!(
                "the server at {address} rejected the credentials of user {user:?} \
                 (spec.mysql.username): {fix} ({tool}: {said})"
            ))
        }
        Some(1130) => PluginError::Unauthorized(format!(
            "the server at {address} does not let user {user:?} connect from the backup Job's \
             address: create the user for that host (e.g. '{user}'@'%') or change \
             spec.mysql.username ({tool}: {said})"
        )),
        Some(1049) => {
            let db = quoted_after(&stderr, "Unknown database '").unwrap_or("?");
            PluginError::NotFound(format!(
                "database {db:?} does not exist on the server at {address}; check \
                 spec.mysql.database (or spec.mysql.databases, or the database to restore \
                 into) ({tool}: {said})"
            ))
        }
        Some(1044 | 1142 | 1143 | 1227 | 1370 | 1410 | 1419 | 1449 | 1545) => {
            PluginError::Unauthorized(format!(
                "user {user:?} lacks a privilege on the server at {address}: grant it (see \
                 spec.mysql.username for what backups and restores need), or use a user that \
                 has it ({tool}: {said})"
            ))
        }
        Some(2026) => PluginError::Unreachable(format!(
            "TLS to the server at {address} failed; check spec.mysql.sslMode against what the \
             server offers ({tool}: {said})"
        )),
        Some(2059 | 2061) => PluginError::Unsupported(format!(
            "the client in the image cannot authenticate user {user:?} with the server at \
             {address} (its authentication plugin is missing, or needs TLS); set \
             spec.mysql.image to an image of the server's own kind and version (e.g. \
             mysql:8.4 for MySQL 8.4) or spec.mysql.sslMode ({tool}: {said})"
        )),
        Some(2002 | 2003 | 2013) if timed_out => PluginError::Timeout(format!(
            "connecting to the server at {address} timed out; check spec.mysql.host and \
             spec.mysql.port and that the server accepts connections from the backup Job \
             ({tool}: {said})"
        )),
        Some(2002 | 2003 | 2005 | 2006 | 2013) => PluginError::Unreachable(format!(
            "cannot connect to the server at {address}; check spec.mysql.host, spec.mysql.port \
             and that the server is running and reachable from the backup Job ({tool}: {said})"
        )),
        Some(1040 | 1203) => PluginError::Remote {
            status: None,
            message: format!(
                "the server at {address} has too many connections; try again later or raise \
                 its max_connections ({tool}: {said})"
            ),
        },
        Some(_) | None if lower.contains("column_statistics") => PluginError::Unsupported(format!(
            "{tool} is MySQL's and the server at {address} is not (it has no \
                 COLUMN_STATISTICS table): set spec.mysql.image to a MariaDB image such as \
                 mariadb:11, or add --column-statistics=0 to spec.mysql.extraDumpOptions \
                 ({tool}: {said})"
        )),
        Some(code) => PluginError::Remote {
            status: None,
            message: format!("{tool} failed with server error {code}: {said}"),
        },
        None => {
            let code = exit.map_or_else(
                || "was killed by a signal".to_owned(),
                |c| format!("exited with code {c}"),
            );
            PluginError::ToolFailed(if said.is_empty() {
                format!("{tool} {code} without an error message")
            } else {
                format!("{tool} {code}: {said}")
            })
        }
    }
}

/// `stderr` with the tool's own `tool: ` line prefix removed (every message names it).
fn without_tool_prefix(stderr: &str, tool: &str) -> String {
    stderr
        .lines()
        .map(|line| {
            line.strip_prefix(tool)
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(line)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text between `prefix` and the next `'` on the first line that has both.
fn quoted_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let start = line.find(prefix)? + prefix.len();
        let rest = &line[start..];
        Some(&rest[..rest.find('\'')?])
    })
}

/// The last meaningful lines of a tool's output, on one line, bounded.
pub(crate) fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(SHOWN_LINES);
    let joined = lines[start..].join(" | ");
    if joined.chars().count() > SHOWN_CHARS {
        let skip = joined.chars().count() - SHOWN_CHARS;
        format!("...{}", joined.chars().skip(skip).collect::<String>())
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_plugin_sdk::ErrorKind;

    fn endpoint() -> Endpoint {
        Endpoint {
            address: "db.shop.svc:3306".into(),
            username: "backup".into(),
            password_ref: Some(SecretKeyRef::new("db-creds", "password")),
        }
    }

    fn classify(tool: &str, stderr: &str) -> PluginError {
        classify_failure(
            tool,
            &endpoint(),
            stderr,
            &Redactor::new(["hunter2".to_owned()]),
            Some(2),
        )
    }

    #[test]
    fn error_numbers_are_read_from_both_tools() {
        let cases = [
            (
                "ERROR 1045 (28000): Access denied for user 'root'@'127.0.0.1'",
                Some(1045),
            ),
            (
                "mariadb-dump: Got error: 1049: \"Unknown database 'nodb'\" when selecting the database",
                Some(1049),
            ),
            (
                "mysqldump: Got error: 2005: Unknown MySQL server host 'x' (-2) when trying to connect",
                Some(2005),
            ),
            (
                "warning: something\nERROR 2002 (HY000): Can't connect",
                Some(2002),
            ),
            ("mariadb: unknown option '--x'", None),
        ];
        for (stderr, code) in cases {
            assert_eq!(error_code(stderr), code, "{stderr}");
        }
    }

    #[test]
    fn client_messages_map_to_kinds_and_fields() {
        // (tool, stderr, kind, what the message must say)
        let cases = [
            (
                "mariadb",
                "ERROR 1045 (28000): Access denied for user 'backup'@'10.0.0.7' (using password: YES)",
                ErrorKind::Unauthorized,
                "spec.mysql.passwordSecretRef",
            ),
            (
                "mariadb-dump",
                "mariadb-dump: Got error: 1045: \"Access denied for user 'backup'@'10.0.0.7' (using password: YES)\" when trying to connect",
                ErrorKind::Unauthorized,
                "key \"password\" of Secret \"db-creds\"",
            ),
            (
                "mariadb",
                "ERROR 1130 (HY000): Host '10.0.0.7' is not allowed to connect to this MariaDB server",
                ErrorKind::Unauthorized,
                "'backup'@'%'",
            ),
            (
                "mariadb-dump",
                "mariadb-dump: Got error: 1049: \"Unknown database 'nodb'\" when selecting the database",
                ErrorKind::NotFound,
                "database \"nodb\" does not exist",
            ),
            (
                "mysqldump",
                "mysqldump: Got error: 1044: Access denied for user 'u1'@'%' to database 'mysql' when selecting the database",
                ErrorKind::Unauthorized,
                "lacks a privilege",
            ),
            (
                "mariadb",
                "ERROR 2002 (HY000): Can't connect to server on '127.0.0.1' (115)",
                ErrorKind::Unreachable,
                "spec.mysql.port",
            ),
            (
                "mysql",
                "ERROR 2003 (HY000): Can't connect to MySQL server on 'db:3306' (111)",
                ErrorKind::Unreachable,
                "spec.mysql.host",
            ),
            (
                "mariadb",
                "ERROR 2005 (HY000): Unknown server host 'nowhere.invalid' (-2)",
                ErrorKind::Unreachable,
                "spec.mysql.host",
            ),
            (
                "mariadb",
                "ERROR 2002 (HY000): Can't connect to server on '10.1.2.3' (110)",
                ErrorKind::Timeout,
                "timed out",
            ),
            (
                "mysql",
                "ERROR 2013 (HY000): Lost connection to MySQL server at 'reading initial communication packet', system error: 110",
                ErrorKind::Timeout,
                "timed out",
            ),
            (
                "mariadb",
                "ERROR 2026 (HY000): TLS/SSL error: SSL is required, but the server does not support it",
                ErrorKind::Unreachable,
                "spec.mysql.sslMode",
            ),
            (
                "mariadb",
                "ERROR 2059 (HY000): Plugin caching_sha2_password could not be loaded",
                ErrorKind::Unsupported,
                "spec.mysql.image",
            ),
            (
                "mysqldump",
                "mysqldump: Couldn't execute 'SELECT COLUMN_NAME, JSON_EXTRACT(HISTOGRAM, '$.\"number-of-buckets-specified\"') FROM information_schema.COLUMN_STATISTICS': Unknown table 'column_statistics' in information_schema (1109)",
                ErrorKind::Unsupported,
                "--column-statistics=0",
            ),
            (
                "mariadb",
                "ERROR 1064 (42000) at line 12: You have an error in your SQL syntax",
                ErrorKind::RemoteError,
                "server error 1064",
            ),
            (
                "mariadb",
                "mariadb: unknown option '--frobnicate'",
                ErrorKind::ToolFailed,
                "mariadb exited with code 2: unknown option",
            ),
        ];
        let mut wrong = Vec::new();
        for (tool, stderr, kind, says) in cases {
            let err = classify(tool, stderr);
            let text = err.to_string();
            if err.kind() != kind || !text.contains(says) {
                wrong.push(format!("{stderr}\n  -> {} {text}", err.kind()));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn secrets_are_never_in_a_message() {
        let err = classify(
            "mariadb",
            "ERROR 1045 (28000): Access denied for user 'hunter2'@'x' (using password: YES)",
        );
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let err = classify_failure(
            "mariadb",
            &Endpoint {
                password_ref: None,
                ..endpoint()
            },
            "ERROR 1045 (28000): Access denied for user 'backup'@'x' (using password: NO)",
            &Redactor::default(),
            Some(1),
        );
        assert!(err.to_string().contains("set spec.mysql.passwordSecretRef"));
    }

    #[test]
    fn the_tool_is_named_once_and_long_output_is_cut() {
        let text = classify("mariadb-dump", "mariadb-dump: Got error: 2002: \"x\"").to_string();
        assert!(!text.contains("mariadb-dump: mariadb-dump"), "{text}");
        let stderr: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let text = classify("mariadb", &stderr).to_string();
        assert!(
            text.starts_with("mariadb exited with code 2: line 12 | line 13"),
            "{text}"
        );
    }
}
