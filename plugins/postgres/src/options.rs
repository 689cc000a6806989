//! `extraDumpOptions` read the way `pg_dump` and `pg_dumpall` read their command line.
//!
//! Both tools parse their arguments with `getopt_long`, which accepts more spellings than
//! `--file=X`: a short option's value may be attached (`-fX`), short options without a
//! value may be combined and end with one that takes a value (`-xvfX` is `-x -v -f X`),
//! and a long option may be abbreviated to any prefix that is unambiguous in that
//! tool's option table (`--fil=X` is `--file=X` in PostgreSQL 16). An option stowage
//! sets itself must be recognised in every one of those spellings, so each entry is
//! parsed here with the tool's own option table.
//!
//! An abbreviation is rejected when it is a prefix of a reserved option, even when the
//! tool at hand would find it ambiguous: which options exist depends on the PostgreSQL
//! version of the image, and an older tool may resolve the same prefix to the reserved
//! one. A long option missing from these tables (one of a newer PostgreSQL) is passed
//! through: every reserved option is listed, so it cannot abbreviate one.

use thiserror::Error;

/// The tool that reads the options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpTool {
    /// `pg_dump`: one database.
    PgDump,
    /// `pg_dumpall`: every database, roles and tablespaces.
    PgDumpall,
}

impl DumpTool {
    /// The program name.
    pub fn name(self) -> &'static str {
        match self {
            DumpTool::PgDump => "pg_dump",
            DumpTool::PgDumpall => "pg_dumpall",
        }
    }

    fn options(self) -> &'static [ToolOption] {
        match self {
            DumpTool::PgDump => PG_DUMP_OPTIONS,
            DumpTool::PgDumpall => PG_DUMPALL_OPTIONS,
        }
    }
}

/// Whether an option takes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// A flag (`no_argument`).
    None,
    /// A value, attached or in the next argument (`required_argument`).
    Required,
}

/// One entry of a tool's `getopt_long` option table.
#[derive(Clone, Copy, Debug)]
struct ToolOption {
    /// The long name, without `--`.
    long: &'static str,
    /// The short letter, if the option has one.
    short: Option<char>,
    value: Value,
    /// For an option stowage sets itself: what to do instead.
    reserved: Option<&'static str>,
}

const fn flag(long: &'static str, short: Option<char>) -> ToolOption {
    ToolOption {
        long,
        short,
        value: Value::None,
        reserved: None,
    }
}

const fn valued(long: &'static str, short: Option<char>) -> ToolOption {
    ToolOption {
        long,
        short,
        value: Value::Required,
        reserved: None,
    }
}

const fn reserved(
    long: &'static str,
    short: Option<char>,
    value: Value,
    instead: &'static str,
) -> ToolOption {
    ToolOption {
        long,
        short,
        value,
        reserved: Some(instead),
    }
}

const USE_FILE: &str = "the dump is streamed into the artifact; remove it";
const USE_PASSWORD: &str = "the tool must never prompt (--no-password is always passed); for a \
                            password set spec.postgres.passwordSecretRef instead";

// The reserved options both tools share: output file, connection, role and password.
const FILE: ToolOption = reserved("file", Some('f'), Value::Required, USE_FILE);
const HOST: ToolOption = reserved(
    "host",
    Some('h'),
    Value::Required,
    "set spec.postgres.host instead",
);
const PORT: ToolOption = reserved(
    "port",
    Some('p'),
    Value::Required,
    "set spec.postgres.port instead",
);
const USERNAME: ToolOption = reserved(
    "username",
    Some('U'),
    Value::Required,
    "set spec.postgres.username instead",
);
const PASSWORD: ToolOption = reserved("password", Some('W'), Value::None, USE_PASSWORD);
const NO_PASSWORD: ToolOption = reserved("no-password", Some('w'), Value::None, USE_PASSWORD);

/// `pg_dump`'s options (PostgreSQL 17, `src/bin/pg_dump/pg_dump.c`, with `--restrict-key`
/// of the 17.6, 16.10 and 15.14 minor releases).
const PG_DUMP_OPTIONS: &[ToolOption] = &[
    // Reserved: set by stowage from the other fields.
    reserved(
        "dbname",
        Some('d'),
        Value::Required,
        "set spec.postgres.database instead",
    ),
    reserved(
        "format",
        Some('F'),
        Value::Required,
        "set spec.postgres.format instead",
    ),
    reserved(
        "jobs",
        Some('j'),
        Value::Required,
        "parallel dumps need the directory format, which cannot be streamed into an \
             artifact; remove it",
    ),
    FILE,
    HOST,
    PORT,
    USERNAME,
    PASSWORD,
    NO_PASSWORD,
    // Options with a short letter.
    flag("data-only", Some('a')),
    flag("blobs", Some('b')),
    flag("large-objects", Some('b')),
    flag("no-blobs", Some('B')),
    flag("no-large-objects", Some('B')),
    flag("clean", Some('c')),
    flag("create", Some('C')),
    valued("extension", Some('e')),
    valued("encoding", Some('E')),
    valued("schema", Some('n')),
    valued("exclude-schema", Some('N')),
    flag("no-owner", Some('O')),
    flag("no-reconnect", Some('R')),
    flag("schema-only", Some('s')),
    valued("superuser", Some('S')),
    valued("table", Some('t')),
    valued("exclude-table", Some('T')),
    flag("verbose", Some('v')),
    flag("no-privileges", Some('x')),
    flag("no-acl", Some('x')),
    valued("compress", Some('Z')),
    flag("help", None),
    flag("version", None),
    // Long options only.
    flag("attribute-inserts", None),
    flag("binary-upgrade", None),
    flag("column-inserts", None),
    flag("disable-dollar-quoting", None),
    flag("disable-triggers", None),
    flag("enable-row-security", None),
    valued("exclude-extension", None),
    valued("exclude-table-and-children", None),
    valued("exclude-table-data", None),
    valued("exclude-table-data-and-children", None),
    valued("extra-float-digits", None),
    valued("filter", None),
    flag("if-exists", None),
    valued("include-foreign-data", None),
    flag("inserts", None),
    flag("load-via-partition-root", None),
    valued("lock-wait-timeout", None),
    flag("no-comments", None),
    flag("no-publications", None),
    flag("no-security-labels", None),
    flag("no-subscriptions", None),
    flag("no-sync", None),
    flag("no-table-access-method", None),
    flag("no-tablespaces", None),
    flag("no-toast-compression", None),
    flag("no-unlogged-table-data", None),
    flag("on-conflict-do-nothing", None),
    flag("quote-all-identifiers", None),
    valued("restrict-key", None),
    valued("role", None),
    valued("rows-per-insert", None),
    valued("section", None),
    flag("serializable-deferrable", None),
    valued("snapshot", None),
    flag("strict-names", None),
    valued("sync-method", None),
    valued("table-and-children", None),
    flag("use-set-session-authorization", None),
];

/// `pg_dumpall`'s options (PostgreSQL 17, `src/bin/pg_dump/pg_dumpall.c`, with
/// `--restrict-key` and PostgreSQL 18's `-F/--format`). Its `-t` takes no value, unlike
/// `pg_dump`'s.
const PG_DUMPALL_OPTIONS: &[ToolOption] = &[
    reserved(
        "dbname",
        Some('d'),
        Value::Required,
        "the connection comes from spec.postgres.host, port and username; remove it",
    ),
    reserved(
        "database",
        Some('l'),
        Value::Required,
        "pg_dumpall always connects to the postgres database; remove it",
    ),
    reserved(
        "format",
        Some('F'),
        Value::Required,
        "an all-databases backup is plain SQL; remove it",
    ),
    FILE,
    HOST,
    PORT,
    USERNAME,
    PASSWORD,
    NO_PASSWORD,
    flag("data-only", Some('a')),
    flag("clean", Some('c')),
    valued("encoding", Some('E')),
    flag("globals-only", Some('g')),
    flag("no-owner", Some('O')),
    flag("roles-only", Some('r')),
    flag("schema-only", Some('s')),
    valued("superuser", Some('S')),
    flag("tablespaces-only", Some('t')),
    flag("verbose", Some('v')),
    flag("no-privileges", Some('x')),
    flag("no-acl", Some('x')),
    flag("help", None),
    flag("version", None),
    flag("attribute-inserts", None),
    flag("binary-upgrade", None),
    flag("column-inserts", None),
    flag("disable-dollar-quoting", None),
    flag("disable-triggers", None),
    valued("exclude-database", None),
    valued("extra-float-digits", None),
    valued("filter", None),
    flag("if-exists", None),
    flag("inserts", None),
    flag("load-via-partition-root", None),
    valued("lock-wait-timeout", None),
    flag("no-comments", None),
    flag("no-publications", None),
    flag("no-role-passwords", None),
    flag("no-security-labels", None),
    flag("no-subscriptions", None),
    flag("no-sync", None),
    flag("no-table-access-method", None),
    flag("no-tablespaces", None),
    flag("no-toast-compression", None),
    flag("no-unlogged-table-data", None),
    flag("on-conflict-do-nothing", None),
    flag("quote-all-identifiers", None),
    valued("restrict-key", None),
    valued("role", None),
    valued("rows-per-insert", None),
    flag("use-set-session-authorization", None),
];

/// Why one `extraDumpOptions` entry is refused. Each message quotes the entry and says
/// what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DumpOptionError {
    /// The entry sets an option stowage sets itself.
    #[error("{entry:?} {how} {option}, which stowage sets itself: {instead}")]
    Reserved {
        /// The entry as written.
        entry: String,
        /// How the entry sets it (`sets`, `includes`, `can be read as`).
        how: &'static str,
        /// The option, as `-f (--file)` or `--file`.
        option: String,
        /// What to do instead.
        instead: &'static str,
    },
    /// The entry is not an option (`schema`, the empty string).
    #[error(
        "{entry:?} is not an option: each entry must be one option starting with '-' \
             with its value attached (e.g. --no-comments, --exclude-table=audit_*)"
    )]
    NotAnOption {
        /// The entry as written.
        entry: String,
    },
    /// `--`: the entries after it are read as the database to dump.
    #[error(
        "\"--\" ends {tool}'s options, so the entries after it would be read as the \
             database to dump; remove it"
    )]
    EndOfOptions {
        /// The tool.
        tool: &'static str,
    },
    /// `-`: an operand, read as the database to dump.
    #[error("\"-\" is not an option: {tool} would read it as the database to dump; remove it")]
    Operand {
        /// The tool.
        tool: &'static str,
    },
    /// An option that takes a value has none in this entry: the tool would take the next
    /// entry as its value.
    #[error("{entry:?} needs its value in the same entry, as {example}")]
    MissingValue {
        /// The entry as written.
        entry: String,
        /// The same option with a placeholder value (`--table=NAME` or `-tNAME`).
        example: String,
    },
    /// `--flag=value` for an option that takes no value.
    #[error("--{option} takes no value; write {entry_without_value}")]
    UnexpectedValue {
        /// The option's full long name.
        option: &'static str,
        /// The entry without `=value`.
        entry_without_value: String,
    },
    /// An abbreviation of several options.
    #[error("{entry:?} is ambiguous: it abbreviates {candidates}; write the option in full")]
    Ambiguous {
        /// The entry as written.
        entry: String,
        /// The options it abbreviates.
        candidates: String,
    },
}

/// The long names of the options `entry` sets, as `tool` reads it (`-vZ5` gives
/// `["verbose", "compress"]`), or why stowage refuses the entry. Options the table does
/// not know are left out.
pub fn parse_dump_option(
    tool: DumpTool,
    entry: &str,
) -> Result<Vec<&'static str>, DumpOptionError> {
    match entry {
        "--" => Err(DumpOptionError::EndOfOptions { tool: tool.name() }),
        "-" => Err(DumpOptionError::Operand { tool: tool.name() }),
        _ if entry.starts_with("--") => parse_long(tool, entry).map(|o| o.into_iter().collect()),
        _ if entry.starts_with('-') => parse_short(tool, entry),
        _ => Err(DumpOptionError::NotAnOption {
            entry: entry.to_owned(),
        }),
    }
}

fn parse_long(tool: DumpTool, entry: &str) -> Result<Option<&'static str>, DumpOptionError> {
    let body = &entry[2..];
    let (name, value) = match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    };
    let options = tool.options();
    let option = match options.iter().find(|o| o.long == name) {
        // An exact name wins over the abbreviations it is also a prefix of.
        Some(exact) => {
            if let Some(instead) = exact.reserved {
                return Err(DumpOptionError::Reserved {
                    entry: entry.to_owned(),
                    how: "sets",
                    option: format!("--{}", exact.long),
                    instead,
                });
            }
            exact
        }
        None => {
            let candidates: Vec<&ToolOption> = options
                .iter()
                .filter(|o| o.long.starts_with(name))
                .collect();
            if let Some(reserved) = candidates.iter().find(|o| o.reserved.is_some()) {
                return Err(DumpOptionError::Reserved {
                    entry: entry.to_owned(),
                    how: "can be read as",
                    option: format!(
                        "--{} ({} accepts abbreviations of long options)",
                        reserved.long,
                        tool.name()
                    ),
                    instead: reserved.reserved.unwrap_or_default(),
                });
            }
            // Options sharing a name's target (`--no-acl`, `--no-privileges`) are still
            // distinct names; getopt_long only accepts a prefix of exactly one.
            match candidates.as_slice() {
                [] => return Ok(None),
                [only] => *only,
                several => {
                    return Err(DumpOptionError::Ambiguous {
                        entry: entry.to_owned(),
                        candidates: several
                            .iter()
                            .map(|o| format!("--{}", o.long))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
    };
    match (option.value, value) {
        (Value::Required, None) => Err(DumpOptionError::MissingValue {
            entry: entry.to_owned(),
            example: format!("--{}=VALUE", option.long),
        }),
        (Value::None, Some(_)) => Err(DumpOptionError::UnexpectedValue {
            option: option.long,
            entry_without_value: format!("--{name}"),
        }),
        _ => Ok(Some(option.long)),
    }
}

fn parse_short(tool: DumpTool, entry: &str) -> Result<Vec<&'static str>, DumpOptionError> {
    let options = tool.options();
    let mut found = Vec::new();
    for (at, letter) in entry[1..].char_indices() {
        // A letter the table does not know (a newer tool's) is read as a flag, so that the
        // letters after it are still checked.
        let Some(option) = options.iter().find(|o| o.short == Some(letter)) else {
            continue;
        };
        if let Some(instead) = option.reserved {
            return Err(DumpOptionError::Reserved {
                entry: entry.to_owned(),
                how: if at == 0 { "sets" } else { "includes" },
                option: format!("-{letter} (--{})", option.long),
                instead,
            });
        }
        found.push(option.long);
        if option.value == Value::Required {
            // The rest of the entry is the value: nothing after it is an option.
            let rest = &entry[1 + at + letter.len_utf8()..];
            if rest.is_empty() {
                return Err(DumpOptionError::MissingValue {
                    entry: entry.to_owned(),
                    example: format!("{entry}VALUE or --{}=VALUE", option.long),
                });
            }
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_options_are_split_the_way_getopt_does() {
        use DumpTool::{PgDump, PgDumpall};
        let cases: &[(DumpTool, &str, &[&str])] = &[
            (PgDump, "-v", &["verbose"]),
            (PgDump, "-vZ5", &["verbose", "compress"]),
            (PgDump, "-Z5v", &["compress"]),
            (
                PgDump,
                "-xOs",
                &["no-privileges", "no-owner", "schema-only"],
            ),
            (PgDump, "-tf", &["table"]),
            (PgDump, "-Q", &[]),
            (PgDumpall, "-tg", &["tablespaces-only", "globals-only"]),
            (PgDump, "--comp=9", &["compress"]),
            (PgDump, "--exclude-table-data=x", &["exclude-table-data"]),
            (PgDump, "--newer-option", &[]),
        ];
        for (tool, entry, expected) in cases {
            assert_eq!(
                parse_dump_option(*tool, entry).as_deref(),
                Ok(*expected),
                "{tool:?} {entry}"
            );
        }
    }

    #[test]
    fn option_tables_are_consistent() {
        for tool in [DumpTool::PgDump, DumpTool::PgDumpall] {
            let options = tool.options();
            for (i, a) in options.iter().enumerate() {
                for b in &options[i + 1..] {
                    assert_ne!(a.long, b.long, "{tool:?} lists --{} twice", a.long);
                    if a.short.is_some() && a.short == b.short {
                        // Aliases of one option (--no-acl, --no-privileges) agree.
                        assert_eq!((a.value, a.reserved), (b.value, b.reserved), "{tool:?}");
                    }
                }
            }
            for long in [
                "file",
                "host",
                "port",
                "username",
                "password",
                "no-password",
                "dbname",
                "format",
            ] {
                let option = options.iter().find(|o| o.long == long).unwrap();
                assert!(option.reserved.is_some(), "{tool:?} --{long}");
            }
        }
    }
}
