//! Turning what libpq and the PostgreSQL tools print on stderr into typed, actionable
//! [`PluginError`]s. Every message here is built from the config and redacted tool output:
//! never from a secret value.

use stowage_plugin_sdk::{PluginError, Redactor, SecretKeyRef};

/// How many of the tool's last stderr lines an unclassified failure shows.
const SHOWN_LINES: usize = 8;
/// The most characters of tool output an error message shows.
const SHOWN_CHARS: usize = 1500;

/// What an error message may say about the connection (no secret).
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `host:port`.
    pub address: String,
    /// The role.
    pub username: String,
    /// The password's Secret reference, if any.
    pub password_ref: Option<SecretKeyRef>,
    /// The database the tool connected to.
    pub database: String,
}

/// The error for a tool that exited unsuccessfully, from its (redacted) stderr.
pub(crate) fn classify_failure(
    tool: &str,
    endpoint: &Endpoint,
    stderr: &str,
    redactor: &Redactor,
    exit: Option<i32>,
) -> PluginError {
    let stderr = redactor.redact(stderr);
    // Every message below names the tool itself (`({tool}: …)`), so the tool's own `tool: `
    // line prefix is dropped from the excerpt rather than shown twice.
    let said = excerpt(&without_tool_prefix(&stderr, tool));
    let lower = stderr.to_lowercase();
    let address = &endpoint.address;
    let user = &endpoint.username;
    if lower.contains("timeout expired") {
        return PluginError::Timeout(format!(
            "connecting to PostgreSQL at {address} timed out; check spec.postgres.host and \
             spec.postgres.port and that the server accepts connections from the backup Job \
             ({tool}: {said})"
        ));
    }
    if lower.contains("password authentication failed")
        || lower.contains("no password supplied")
        || lower.contains("authentication failed for user")
    {
        let fix = match &endpoint.password_ref {
            Some(r) => format!(
                "check that key {:?} of Secret {:?} (spec.postgres.passwordSecretRef) holds \
                 the current password of role {user:?}",
                r.key, r.name
            ),
            None => "the server requires a password: set spec.postgres.passwordSecretRef to \
                     a Secret key holding it"
                .to_owned(),
        };
        return PluginError::Unauthorized(format!(
            "PostgreSQL at {address} rejected the credentials of role {user:?} \
             (spec.postgres.username): {fix} ({tool}: {said})"
        ));
    }
    if lower.contains("pg_hba.conf") {
        return PluginError::Unauthorized(format!(
            "PostgreSQL at {address} does not accept connections of role {user:?} from the \
             backup Job: add a pg_hba.conf entry for it, or change spec.postgres.sslMode if the \
             entry requires TLS ({tool}: {said})"
        ));
    }
    if let Some(db) = quoted_before(&stderr, "database \"", "\" does not exist") {
        return PluginError::NotFound(format!(
            "database {db:?} does not exist on PostgreSQL at {address}; check \
             spec.postgres.database (or the database to restore into) ({tool}: {said})"
        ));
    }
    if let Some(role) = quoted_before(&stderr, "role \"", "\" does not exist") {
        return PluginError::NotFound(format!(
            "role {role:?} does not exist on PostgreSQL at {address}; check \
             spec.postgres.username ({tool}: {said})"
        ));
    }
    if lower.contains("server version mismatch") {
        return PluginError::Unsupported(format!(
            "{tool} is older than the PostgreSQL server at {address}; set spec.postgres.image \
             to a PostgreSQL image at least as new as the server ({tool}: {said})"
        ));
    }
    if lower.contains("could not connect")
        || lower.contains("connection refused")
        || lower.contains("could not translate host name")
        || lower.contains("no route to host")
        || lower.contains("network is unreachable")
        || lower.contains("server closed the connection unexpectedly")
        || (lower.contains("connection to server") && lower.contains("failed"))
    {
        let hint = if lower.contains("ssl") {
            " or spec.postgres.sslMode"
        } else {
            ""
        };
        return PluginError::Unreachable(format!(
            "cannot connect to PostgreSQL at {address}; check spec.postgres.host, \
             spec.postgres.port{hint} and that the server is running and reachable from the \
             backup Job ({tool}: {said})"
        ));
    }
    if lower.contains("permission denied") || lower.contains("must be superuser") {
        return PluginError::Unauthorized(format!(
            "role {user:?} lacks a privilege on PostgreSQL at {address} (database {:?}): grant \
             it, or use a role that has it in spec.postgres.username ({tool}: {said})",
            endpoint.database
        ));
    }
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

/// `stderr` with the `tool: ` prefix the PostgreSQL tools put on their lines removed (e.g.
/// `psql: error: …` becomes `error: …`). Other lines, such as psql's located
/// `psql:<stdin>:12: ERROR: …` or libpq's indented hints, are left as they are.
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

/// The text between `prefix` and `suffix` on the first line that has both.
fn quoted_before<'a>(text: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let start = line.find(prefix)? + prefix.len();
        let rest = &line[start..];
        let end = rest.find(suffix)?;
        Some(&rest[..end])
    })
}

/// The last meaningful stderr lines, on one line, bounded.
pub(crate) fn excerpt(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
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
            address: "db.shop.svc:5432".into(),
            username: "backup".into(),
            password_ref: Some(SecretKeyRef::new("db-creds", "password")),
            database: "shop".into(),
        }
    }

    fn classify(stderr: &str) -> PluginError {
        classify_failure(
            "pg_dump",
            &endpoint(),
            stderr,
            &Redactor::new(["hunter2".to_owned()]),
            Some(1),
        )
    }

    #[test]
    fn bad_passwords_name_the_secret_never_the_value() {
        let err = classify(
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  \
             password authentication failed for user \"backup\" hunter2\n",
        );
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
        let text = err.to_string();
        assert!(text.contains("spec.postgres.passwordSecretRef"), "{text}");
        assert!(
            text.contains("\"db-creds\"") && text.contains("\"password\""),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn libpq_messages_map_to_kinds() {
        let cases = [
            (
                "psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
                ErrorKind::Unreachable,
            ),
            (
                "pg_dump: error: could not translate host name \"nowhere\" to address: Name or service not known",
                ErrorKind::Unreachable,
            ),
            (
                "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  database \"nope\" does not exist",
                ErrorKind::NotFound,
            ),
            (
                "psql: error: connection to server at \"10.0.0.1\", port 5432 failed: timeout expired",
                ErrorKind::Timeout,
            ),
            (
                "pg_dump: error: connection to server at \"h\", port 5432 failed: fe_sendauth: no password supplied",
                ErrorKind::Unauthorized,
            ),
            (
                "pg_dump: error: query failed: ERROR:  permission denied for table secrets",
                ErrorKind::Unauthorized,
            ),
            (
                "pg_dump: error: aborting because of server version mismatch",
                ErrorKind::Unsupported,
            ),
            (
                "pg_restore: error: could not read input file: end of file",
                ErrorKind::ToolFailed,
            ),
        ];
        for (stderr, kind) in cases {
            assert_eq!(classify(stderr).kind(), kind, "{stderr}");
        }
        let text = classify(cases[2].0).to_string();
        assert!(
            text.starts_with("database \"nope\" does not exist"),
            "{text}"
        );
    }

    #[test]
    fn the_tool_is_named_once_in_the_message() {
        let refused = "psql: error: connection to server at \"127.0.0.1\", port 1 failed: \
                       Connection refused\n\tIs the server running on that host and accepting \
                       TCP/IP connections?\n";
        let err = classify_failure(
            "psql",
            &endpoint(),
            refused,
            &Redactor::new(Vec::<String>::new()),
            Some(2),
        );
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        let text = err.to_string();
        assert!(!text.contains("psql: psql:"), "{text}");
        assert!(
            text.contains("(psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused | Is the server running"),
            "{text}"
        );

        // The unclassified form names the tool once too; psql's located lines (a file and
        // line number after the tool's name) keep their location.
        let err = classify_failure(
            "psql",
            &endpoint(),
            "psql:<stdin>:12: ERROR:  syntax error at or near \"CREAT\"\npsql: warning: done\n",
            &Redactor::new(Vec::<String>::new()),
            Some(3),
        );
        assert_eq!(err.kind(), ErrorKind::ToolFailed);
        assert_eq!(
            err.to_string(),
            "psql exited with code 3: psql:<stdin>:12: ERROR:  syntax error at or near \"CREAT\" | warning: done"
        );

        // Another tool's prefix (a wrapper's, say) is not the tool's own: it stays.
        let text = classify("psql: error: could not read input file: end of file").to_string();
        assert!(
            text.ends_with(
                "pg_dump exited with code 1: psql: error: could not read input file: end of file"
            ),
            "{text}"
        );
    }

    #[test]
    fn unclassified_failures_show_the_last_lines() {
        let stderr: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let text = classify(&stderr).to_string();
        assert!(
            text.starts_with("pg_dump exited with code 1: line 12 | line 13"),
            "{text}"
        );
        assert!(text.ends_with("line 19"), "{text}");
    }
}
