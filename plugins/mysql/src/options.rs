//! `extraDumpOptions` read the way `mariadb-dump` and `mysqldump` read their command line.
//!
//! Both parse options with `my_getopt`, which accepts more spellings than `--name=value`:
//! `_` for `-` inside a name, any unambiguous prefix of a name (`--hos=x` is `--host=x`),
//! and the modifiers `--loose-`, `--skip-`, `--disable-`, `--enable-` and `--maximum-`
//! in front of one (`--skip-ssl`). An option stowage sets itself must be recognised in
//! every one of those spellings, so an entry is rejected when its name, with or without
//! the modifiers, is a reserved name or a prefix of one (even a prefix the tool would find
//! ambiguous: which options exist depends on the image's version). Short options (`-hX`,
//! combined letters) are refused altogether: every option has a long spelling.
//!
//! The entries go after stowage's own options and before `--` and the database names, so
//! an option written without the value it needs takes `--` as its value and the tool
//! fails, instead of silently taking a database name.

use thiserror::Error;

/// What is wrong with one `extraDumpOptions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DumpOptionError {
    /// Not a long option.
    #[error(
        "{0:?} is not a long option: write each option as --name or --name=value (short \
         options such as -x are not accepted; every one has a long spelling)"
    )]
    NotLong(String),
    /// An option stowage sets itself.
    #[error("{entry:?} sets {option}, which stowage sets itself: {instead}")]
    Reserved {
        /// The entry.
        entry: String,
        /// The reserved option it spells, as `--name`.
        option: String,
        /// What to do instead.
        instead: &'static str,
    },
}

const CONNECTION: &str = "set it in spec.mysql (host, port, username, passwordSecretRef, sslMode) \
                          instead";
const OUTPUT: &str = "the dump is streamed into the artifact as SQL; remove it";
const SELECTION: &str = "choose databases with spec.mysql.database, databases or allDatabases \
                         instead";
const OPTION_FILES: &str = "option files are never read (--no-defaults): only spec.mysql decides \
                            where and as whom to connect; remove it";
const SNAPSHOT: &str = "stowage dumps InnoDB tables in one consistent snapshot \
                        (--single-transaction), which this would change; remove it";
const CODE: &str = "it would load client plugins from a path; remove it";

/// The options stowage sets itself (or that would replace the dump by something else),
/// by long name, and what to do instead.
const RESERVED: &[(&str, &str)] = &[
    ("host", CONNECTION),
    ("port", CONNECTION),
    ("user", CONNECTION),
    ("password", CONNECTION),
    ("socket", CONNECTION),
    ("protocol", CONNECTION),
    ("pipe", CONNECTION),
    ("shared-memory-base-name", CONNECTION),
    ("ssl", CONNECTION),
    ("ssl-ca", CONNECTION),
    ("ssl-capath", CONNECTION),
    ("ssl-cert", CONNECTION),
    ("ssl-cipher", CONNECTION),
    ("ssl-key", CONNECTION),
    ("ssl-crl", CONNECTION),
    ("ssl-crlpath", CONNECTION),
    ("ssl-verify-server-cert", CONNECTION),
    ("ssl-mode", CONNECTION),
    ("ssl-fips-mode", CONNECTION),
    ("tls-version", CONNECTION),
    ("tls-ciphersuites", CONNECTION),
    ("get-server-public-key", CONNECTION),
    ("server-public-key-path", CONNECTION),
    ("result-file", OUTPUT),
    ("tab", OUTPUT),
    ("xml", OUTPUT),
    ("help", OUTPUT),
    ("version", OUTPUT),
    (
        "default-character-set",
        "stowage dumps and restores in utf8mb4; remove it",
    ),
    ("databases", SELECTION),
    ("all-databases", SELECTION),
    ("defaults-file", OPTION_FILES),
    ("defaults-extra-file", OPTION_FILES),
    ("defaults-group-suffix", OPTION_FILES),
    ("no-defaults", OPTION_FILES),
    ("print-defaults", OPTION_FILES),
    ("login-path", OPTION_FILES),
    ("single-transaction", SNAPSHOT),
    ("lock-all-tables", SNAPSHOT),
    ("lock-tables", SNAPSHOT),
    ("plugin-dir", CODE),
    ("default-auth", CODE),
];

/// The modifiers `my_getopt` accepts in front of an option's name.
const MODIFIERS: [&str; 5] = ["loose-", "skip-", "disable-", "enable-", "maximum-"];

/// Check one `extraDumpOptions` entry: a long option that is none of the reserved ones in
/// any spelling.
pub fn check_dump_option(entry: &str) -> Result<(), DumpOptionError> {
    let Some(body) = entry.strip_prefix("--") else {
        return Err(DumpOptionError::NotLong(entry.to_owned()));
    };
    let name = body.split_once('=').map_or(body, |(name, _)| name);
    if name.is_empty() || name.starts_with('-') {
        return Err(DumpOptionError::NotLong(entry.to_owned()));
    }
    let mut name = name.replace('_', "-").to_ascii_lowercase();
    loop {
        if let Some((reserved, instead)) = RESERVED
            .iter()
            .find(|(reserved, _)| reserved.starts_with(name.as_str()))
        {
            return Err(DumpOptionError::Reserved {
                entry: entry.to_owned(),
                option: format!("--{reserved}"),
                instead,
            });
        }
        match MODIFIERS.iter().find_map(|m| name.strip_prefix(m)) {
            Some(rest) if !rest.is_empty() => name = rest.to_owned(),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_options_are_rejected_however_spelled() {
        // (entry, the reserved option named in the message)
        let cases = [
            ("--host=evil", "--host"),
            ("--hos=evil", "--host"),
            ("--HOST=evil", "--host"),
            ("--user=root", "--user"),
            ("--us=root", "--user"),
            ("--password=x", "--password"),
            ("--pass", "--password"),
            ("--p=3307", "--port"),
            ("--socket=/run/x", "--socket"),
            ("--protocol=socket", "--protocol"),
            ("--skip-ssl", "--ssl"),
            ("--loose-skip-ssl", "--ssl"),
            ("--ssl_mode=DISABLED", "--ssl-mode"),
            ("--result-file=/tmp/x", "--result-file"),
            ("--result_file=/tmp/x", "--result-file"),
            ("--r=/tmp/x", "--result-file"),
            ("--tab=/tmp", "--tab"),
            ("--xml", "--xml"),
            ("--help", "--help"),
            ("--version", "--version"),
            ("--databases", "--databases"),
            ("--all-databases", "--all-databases"),
            ("--defaults-extra-file=/x", "--defaults-extra-file"),
            ("--no-defaults", "--no-defaults"),
            ("--skip-single-transaction", "--single-transaction"),
            ("--single", "--single-transaction"),
            ("--lock-all-tables", "--lock-all-tables"),
            ("--enable-lock-tables", "--lock-tables"),
            ("--plugin-dir=/tmp", "--plugin-dir"),
            ("--default-character-set=latin1", "--default-character-set"),
            ("--maximum-port=1", "--port"),
        ];
        let mut wrong = Vec::new();
        for (entry, option) in cases {
            match check_dump_option(entry) {
                Err(DumpOptionError::Reserved { option: o, .. }) if o == option => {}
                other => wrong.push(format!("{entry}: {other:?}")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        let text = check_dump_option("--host=evil").unwrap_err().to_string();
        assert!(text.contains("spec.mysql"), "{text}");
    }

    #[test]
    fn other_long_options_pass() {
        for entry in [
            "--ignore-table=shop.sessions",
            "--skip-add-locks",
            "--skip-triggers",
            "--no-data",
            "--where=id > 10",
            "--extended-insert",
            "--set-gtid-purged=OFF",
            "--column-statistics=0",
            "--skip-comments",
            "--max-allowed-packet=512M",
            "--quick",
            "--opt",
            "--some-future-option",
        ] {
            assert_eq!(check_dump_option(entry), Ok(()), "{entry}");
        }
    }

    #[test]
    fn only_long_options_are_accepted() {
        for entry in [
            "-hevil", "-uroot", "-x", "shop", "", "--", "---x", "--=x", "-",
        ] {
            assert!(
                matches!(check_dump_option(entry), Err(DumpOptionError::NotLong(_))),
                "{entry:?}"
            );
        }
    }
}
