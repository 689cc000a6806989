//! The option tables `extraDumpOptions` are parsed with cover the installed tools: every
//! option the real `pg_dump` and `pg_dumpall` list in `--help` is known, with the same
//! arity. An option missing from a table could not be recognised inside a combined short
//! flag or behind an abbreviation.

use std::process::Command;

use stowage_plugin_postgres::{DumpOptionError, DumpTool, Toolbox, parse_dump_option};

/// One option line of `--help`: the short letter, the long name, whether it takes a value.
#[derive(Debug)]
struct HelpOption {
    short: Option<char>,
    long: String,
    takes_value: bool,
}

fn help_options(program: &str) -> Vec<HelpOption> {
    let path = Toolbox::from_env()
        .find(program)
        .unwrap_or_else(|| panic!("{program} is not on PATH (tests/install-deps.sh installs it)"));
    let out = Command::new(&path)
        .arg("--help")
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(out.status.success(), "{program} --help failed");
    let mut options = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut short = None;
        let mut long = None;
        for token in line.split_whitespace().take_while(|t| t.starts_with('-')) {
            let token = token.trim_end_matches(',');
            if let Some(name) = token.strip_prefix("--") {
                long = Some(match name.split_once('=') {
                    Some((name, _)) => (name.to_owned(), true),
                    None => (name.to_owned(), false),
                });
            } else {
                short = token.chars().nth(1);
            }
        }
        if let Some((long, takes_value)) = long {
            options.push(HelpOption {
                short,
                long,
                takes_value,
            });
        }
    }
    assert!(options.len() > 20, "{program} --help lists too few options");
    options
}

/// Whether `entry` is recognised as one option (allowed or reserved): as the option
/// `long` when given, else as any (a short letter shared by aliases such as `-b`,
/// `--blobs` and `--large-objects` maps to one of them).
fn recognised_as(tool: DumpTool, entry: &str, long: Option<&str>) -> Result<(), String> {
    match (parse_dump_option(tool, entry), long) {
        (Ok(names), Some(long)) if names == [long] => Ok(()),
        (Ok(names), None) if names.len() == 1 => Ok(()),
        (Err(DumpOptionError::Reserved { option, .. }), Some(long))
            if option.contains(&format!("--{long}")) =>
        {
            Ok(())
        }
        (Err(DumpOptionError::Reserved { .. }), None) => Ok(()),
        (other, _) => Err(format!("{entry}: {other:?}")),
    }
}

#[test]
fn every_option_of_the_installed_tools_is_in_the_tables() {
    let mut wrong = Vec::new();
    for tool in [DumpTool::PgDump, DumpTool::PgDumpall] {
        for option in help_options(tool.name()) {
            let long = &option.long;
            // --help and --version (-? and -V) are answered before option parsing.
            if long == "help" || long == "version" {
                continue;
            }
            let entry = if option.takes_value {
                format!("--{long}=x")
            } else {
                format!("--{long}")
            };
            if let Err(e) = recognised_as(tool, &entry, Some(long)) {
                wrong.push(format!("{}: {e}", tool.name()));
            }
            if let Some(letter) = option.short {
                let entry = if option.takes_value {
                    format!("-{letter}x")
                } else {
                    format!("-{letter}")
                };
                if let Err(e) = recognised_as(tool, &entry, None) {
                    wrong.push(format!("{}: {e}", tool.name()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
