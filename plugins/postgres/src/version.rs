//! PostgreSQL versions: parsing what the server and the client tools report, and whether a
//! client tool can dump a server.

use std::cmp::Ordering;
use std::fmt;

/// A PostgreSQL major version: `17` for 10 and later, `9.6` before (when the major version
/// had two parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MajorVersion {
    first: u32,
    second: u32,
}

impl MajorVersion {
    /// The major version of a `server_version_num` setting (e.g. `170002` is 17, `90624`
    /// is 9.6).
    pub fn from_version_num(num: u32) -> MajorVersion {
        let first = num / 10_000;
        if first >= 10 {
            MajorVersion { first, second: 0 }
        } else {
            MajorVersion {
                first,
                second: (num / 100) % 100,
            }
        }
    }

    /// The major version of a dotted version such as `15.18`, `9.6.24`, `17beta1` or
    /// `16devel`; `None` when it does not start with a number.
    pub fn from_dotted(version: &str) -> Option<MajorVersion> {
        let numeric: String = version
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').filter(|p| !p.is_empty());
        let first: u32 = parts.next()?.parse().ok()?;
        if first >= 10 {
            Some(MajorVersion { first, second: 0 })
        } else {
            let second = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            Some(MajorVersion { first, second })
        }
    }
}

impl Ord for MajorVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.first, self.second).cmp(&(other.first, other.second))
    }
}

impl PartialOrd for MajorVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MajorVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first >= 10 {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}.{}", self.first, self.second)
        }
    }
}

/// What a client tool's `--version` printed, e.g.
/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolVersion {
    /// The version text after `(PostgreSQL) `, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub text: String,
    /// Its major version.
    pub major: MajorVersion,
}

impl ToolVersion {
    /// Parse the first line of `<tool> --version`; `None` when it is not a PostgreSQL tool's
    /// version line.
    pub fn parse(output: &str) -> Option<ToolVersion> {
        let line = output.lines().find(|l| !l.trim().is_empty())?.trim();
        let text = match line.find(')') {
            Some(i) => line[i + 1..].trim(),
            None => line.split_whitespace().last()?,
        };
        let major = MajorVersion::from_dotted(text)?;
        Some(ToolVersion {
            text: text.to_owned(),
            major,
        })
    }

    /// The short version (`15.18`), without the distribution suffix.
    pub fn short(&self) -> &str {
        self.text.split_whitespace().next().unwrap_or(&self.text)
    }
}

/// What the server reported: `server_version_num` and `server_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub text: String,
    /// Its major version.
    pub major: MajorVersion,
}

impl ServerVersion {
    /// Parse `psql -At` output of `select server_version_num, server_version` (separated by
    /// `|`).
    pub fn parse(output: &str) -> Option<ServerVersion> {
        let line = output.lines().find(|l| !l.trim().is_empty())?.trim();
        let (num, text) = line.split_once('|')?;
        let num: u32 = num.trim().parse().ok()?;
        Some(ServerVersion {
            text: text.trim().to_owned(),
            major: MajorVersion::from_version_num(num),
        })
    }

    /// The short version (`15.18`), without the distribution suffix.
    pub fn short(&self) -> &str {
        self.text.split_whitespace().next().unwrap_or(&self.text)
    }
}

/// `Err` with a message naming both versions and the fix when `tool` (e.g. `pg_dump`) at
/// `tool_version` cannot dump a server at `server`: PostgreSQL's dump tools refuse servers
/// of a newer major version.
pub fn check_dump_compatible(
    tool: &str,
    tool_version: &ToolVersion,
    server: &ServerVersion,
) -> Result<(), String> {
    if tool_version.major >= server.major {
        return Ok(());
    }
    Err(format!(
        "{tool} {} cannot dump a {} server (PostgreSQL {}); set spec.postgres.image to \
         postgres:{} or newer",
        tool_version.short(),
        server.short(),
        server.major,
        server.major
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_from_version_num() {
        assert_eq!(MajorVersion::from_version_num(170002).to_string(), "17");
        assert_eq!(MajorVersion::from_version_num(100023).to_string(), "10");
        assert_eq!(MajorVersion::from_version_num(90624).to_string(), "9.6");
        assert!(MajorVersion::from_version_num(90624) < MajorVersion::from_version_num(100000));
        assert!(MajorVersion::from_version_num(90500) < MajorVersion::from_version_num(90624));
    }

    #[test]
    fn tool_versions_parse_with_distribution_suffixes() {
        let v =
            ToolVersion::parse("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").unwrap();
        assert_eq!(v.text, "15.18 (Debian 15.18-0+deb12u1)");
        assert_eq!(v.short(), "15.18");
        assert_eq!(v.major.to_string(), "15");
        let old = ToolVersion::parse("pg_dump (PostgreSQL) 9.6.0").unwrap();
        assert_eq!(old.major.to_string(), "9.6");
        let beta = ToolVersion::parse("pg_dumpall (PostgreSQL) 18beta1").unwrap();
        assert_eq!(beta.major.to_string(), "18");
        assert_eq!(ToolVersion::parse("command not found"), None);
        assert_eq!(ToolVersion::parse(""), None);
    }

    #[test]
    fn server_versions_parse_from_psql_output() {
        let v = ServerVersion::parse("170002|17.2 (Debian 17.2-1.pgdg120+1)\n").unwrap();
        assert_eq!(v.short(), "17.2");
        assert_eq!(v.major.to_string(), "17");
        assert_eq!(ServerVersion::parse("garbage"), None);
    }

    #[test]
    fn an_older_dump_tool_is_refused_with_the_fix() {
        let server = ServerVersion::parse("170002|17.2").unwrap();
        let old = ToolVersion::parse("pg_dump (PostgreSQL) 15.18").unwrap();
        let err = check_dump_compatible("pg_dump", &old, &server).unwrap_err();
        assert_eq!(
            err,
            "pg_dump 15.18 cannot dump a 17.2 server (PostgreSQL 17); set spec.postgres.image \
             to postgres:17 or newer"
        );
        let same = ToolVersion::parse("pg_dump (PostgreSQL) 17.0").unwrap();
        assert!(check_dump_compatible("pg_dump", &same, &server).is_ok());
        let newer = ToolVersion::parse("pg_dump (PostgreSQL) 18.1").unwrap();
        assert!(check_dump_compatible("pg_dump", &newer, &server).is_ok());
    }
}
