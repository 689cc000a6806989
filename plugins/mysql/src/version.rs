//! Which family (MariaDB or MySQL) a server or a client tool belongs to, from the version
//! text it reports, and how the client's output of a query is read.

use std::fmt;

/// MariaDB or MySQL: their clients spell TLS options differently, and their dump tools
/// work best against a server of their own family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// MariaDB (its version text says `MariaDB`).
    MariaDb,
    /// MySQL (or a fork that does not say MariaDB, such as Percona Server).
    MySql,
}

impl Family {
    /// The family of a server's `VERSION()` (`10.11.6-MariaDB-0+deb12u1`, `8.4.3`) or a
    /// tool's `--version` line (`mariadb-dump from 11.8.2-MariaDB, client 10.19 ...`,
    /// `mysqldump  Ver 8.4.3 for Linux on x86_64 (MySQL Community Server - GPL)`).
    pub fn of(version: &str) -> Family {
        if version.contains("MariaDB") {
            Family::MariaDb
        } else {
            Family::MySql
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::MariaDb => "MariaDB",
            Family::MySql => "MySQL",
        })
    }
}

/// The version a tool's `--version` printed: its first non-empty line, trimmed.
pub fn tool_version_line(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// One field of the client's `--batch` output with its escapes (`\t`, `\n`, `\\`, `\0`)
/// undone.
pub fn unescape_batch_field(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The rows of the client's `--batch --skip-column-names` output, each as its unescaped
/// fields.
pub fn batch_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(unescape_batch_field).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_come_from_the_version_text() {
        let cases = [
            ("10.11.19-MariaDB-0+deb12u1", Family::MariaDb),
            ("11.8.2-MariaDB-ubu2404", Family::MariaDb),
            ("8.4.3", Family::MySql),
            ("8.0.36-28 Percona Server", Family::MySql),
            (
                "mariadb-dump from 11.8.2-MariaDB, client 10.19 for debian-linux-gnu (x86_64)",
                Family::MariaDb,
            ),
            (
                "mysqldump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)",
                Family::MariaDb,
            ),
            (
                "mysqldump  Ver 8.4.3 for Linux on x86_64 (MySQL Community Server - GPL)",
                Family::MySql,
            ),
        ];
        for (text, family) in cases {
            assert_eq!(Family::of(text), family, "{text}");
        }
    }

    #[test]
    fn tool_versions_are_one_tidy_line() {
        assert_eq!(
            tool_version_line("\nmysqldump  Ver 8.4.3 for Linux\nmore\n").as_deref(),
            Some("mysqldump Ver 8.4.3 for Linux")
        );
        assert_eq!(tool_version_line(" \n"), None);
    }

    #[test]
    fn batch_output_is_split_and_unescaped() {
        let rows = batch_rows("shop\t3\ntab\\there\t0\nback\\\\slash\\nline\t1\n\n");
        assert_eq!(
            rows,
            [
                vec!["shop".to_owned(), "3".to_owned()],
                vec!["tab\there".to_owned(), "0".to_owned()],
                vec!["back\\slash\nline".to_owned(), "1".to_owned()],
            ]
        );
    }
}
