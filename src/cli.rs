//! The `stowage` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::registry::PluginConfig;

pub mod installed_plugins;
pub mod plugin_check;

/// stowage backs up what runs in a Kubernetes cluster through typed plugins.
#[derive(Debug, Parser)]
#[command(name = "stowage", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd(CrdArgs),
    /// List the plugins this build ships (and, with --cluster, the BackupPlugins installed
    /// in the cluster), or print one plugin's config schema.
    Plugins(PluginsArgs),
    /// Tools for plugin authors: `stowage plugin check` runs an external plugin through
    /// the protocol's checks on this machine, with no cluster.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Run the operator: reconcile BackupTargets and BackupSchedules.
    Controller(crate::controller::ControllerArgs),
    /// Inside a backup Job: run one backup, probe or restore of one target.
    #[command(subcommand)]
    Run(crate::runner::RunCommand),
    /// Re-hash artifacts against their sidecars (no cluster needed).
    Verify(crate::artifacts::VerifyArgs),
    /// List or prune artifacts from their sidecars (no cluster needed).
    #[command(subcommand)]
    Artifacts(crate::artifacts::ArtifactsCommand),
    /// Copy this binary to a path (used by the init container that puts the runner into a
    /// tool image such as `postgres:17`).
    CopySelf(crate::copy_self::CopySelfArgs),
}

/// Arguments of `stowage crd`.
#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// Arguments of `stowage plugins`.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Print as JSON instead of a table.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Also list the BackupPlugins installed in the cluster (of KUBECONFIG or
    /// ~/.kube/config, or the pod's), each with its version and whether it is accepted,
    /// and why not. With JSON output, prints `{"builtIn": [...], "installed": [...]}`.
    #[arg(long)]
    pub cluster: bool,
    /// A plugin subcommand.
    #[command(subcommand)]
    pub command: Option<PluginsCommand>,
}

/// Subcommands of `stowage plugins`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Print the JSON schema of one plugin's configuration: a built-in plugin's
    /// (`spec.<key>` of a BackupTarget), or an installed BackupPlugin's `spec.configSchema`
    /// (`spec.external.config`), read from the cluster.
    Schema {
        /// A built-in plugin's key (`redis`), or the name of an installed BackupPlugin,
        /// which always has a dot (`ldap.example.com`), as `stowage plugins --cluster`
        /// lists them.
        key: String,
    },
}

/// Subcommands of `stowage plugin`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check an external plugin before you install it: its manifest is accepted, the
    /// config fits its schema, probe and backup work, it never prints a secret (a canary
    /// value replaces each), it fails with an error kind on wrong credentials and on an
    /// unknown operation, and (with --restore-config) a restore round-trips. Prints each
    /// check as PASS, FAIL or SKIP with its reason; exits 1 when one fails.
    Check(plugin_check::CheckArgs),
}

/// Output formats of listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table.
    Table,
    /// JSON.
    Json,
}

/// The async runtime a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeFlavor {
    /// One thread, which also waits for I/O: `stowage run`. Its async work is glue around
    /// the threads that compress (every byte of an artifact passes through it), and with no
    /// other worker to hand a woken task to, each pipe or socket read costs one wake-up
    /// instead of two or three.
    CurrentThread,
    /// One worker per core: the operator and the other commands.
    MultiThread,
}

impl Cli {
    /// The runtime the selected subcommand runs on.
    pub fn runtime_flavor(&self) -> RuntimeFlavor {
        match self.command {
            Command::Run(_) => RuntimeFlavor::CurrentThread,
            _ => RuntimeFlavor::MultiThread,
        }
    }

    /// Run the selected subcommand.
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Crd(args) => crd(args),
            Command::Plugins(args) => plugins(args).await,
            Command::Plugin(PluginCommand::Check(args)) => plugin_check::run(args).await,
            Command::Controller(args) => crate::controller::run(args).await,
            Command::Run(command) => command.execute().await,
            Command::Verify(args) => args.execute().await,
            Command::Artifacts(command) => command.execute().await,
            Command::CopySelf(args) => {
                args.execute()?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn crd(args: CrdArgs) -> anyhow::Result<ExitCode> {
    match args.output_dir {
        None => {
            std::io::stdout().write_all(crate::crd::all_yaml()?.as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for crd in crate::crd::all() {
                let path = dir.join(crate::crd::file_name(&crd));
                std::fs::write(&path, crate::crd::to_yaml(&crd)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(PluginsCommand::Schema { key }) if key.contains('.') => {
            let client = installed_plugins::client().await?;
            match installed_plugins::get(client, &key).await? {
                Some(plugin) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&plugin.spec.config_schema)?
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "error: no BackupPlugin {key:?} is installed in the cluster; \
                         `stowage plugins --cluster` lists the installed ones"
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
        Some(PluginsCommand::Schema { key }) => match PluginConfig::config_schema(&key) {
            Some(schema) => {
                println!("{}", serde_json::to_string_pretty(&schema)?);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "error: unknown plugin {key:?}; known plugins: {} (an installed \
                     BackupPlugin's name has a dot, e.g. ldap.example.com)",
                    PluginConfig::KEYS.join(", ")
                );
                Ok(ExitCode::from(2))
            }
        },
        None => {
            let infos = PluginConfig::infos();
            let installed = if args.cluster {
                let client = installed_plugins::client().await?;
                let plugins = installed_plugins::list(client).await?;
                Some(
                    plugins
                        .iter()
                        .map(installed_plugins::row)
                        .collect::<Vec<_>>(),
                )
            } else {
                None
            };
            match (args.output, installed) {
                (OutputFormat::Json, None) => {
                    println!("{}", serde_json::to_string_pretty(&infos)?)
                }
                (OutputFormat::Json, Some(installed)) => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"builtIn": infos, "installed": installed})
                    )?
                ),
                (OutputFormat::Table, installed) => {
                    let rows: Vec<[String; 4]> = infos
                        .iter()
                        .map(|i| {
                            [
                                i.key.to_owned(),
                                i.version.to_owned(),
                                i.capabilities.names().join(","),
                                i.description.to_owned(),
                            ]
                        })
                        .collect();
                    print_table(&["KEY", "VERSION", "CAPABILITIES", "DESCRIPTION"], &rows);
                    if let Some(installed) = installed {
                        println!();
                        if installed.is_empty() {
                            println!("No BackupPlugin is installed in the cluster.");
                        } else {
                            let rows: Vec<[String; 5]> = installed
                                .into_iter()
                                .map(|r| {
                                    [
                                        r.name,
                                        r.version,
                                        r.capabilities,
                                        if r.accepted { "True" } else { "False" }.to_owned(),
                                        r.reason,
                                    ]
                                })
                                .collect();
                            print_table(
                                &["INSTALLED", "VERSION", "CAPABILITIES", "ACCEPTED", "REASON"],
                                &rows,
                            );
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Print rows as an aligned table (the last column is not padded).
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_runner_runs_on_one_thread() {
        let cases: &[(&[&str], RuntimeFlavor)] = &[
            (
                &[
                    "run",
                    "backup",
                    "--plugin=http",
                    "--namespace=a",
                    "--target=b",
                ],
                RuntimeFlavor::CurrentThread,
            ),
            (
                &[
                    "run",
                    "probe",
                    "--plugin=http",
                    "--namespace=a",
                    "--target=b",
                ],
                RuntimeFlavor::CurrentThread,
            ),
            (&["verify", "/backups"], RuntimeFlavor::MultiThread),
            (&["crd"], RuntimeFlavor::MultiThread),
            (&["plugins"], RuntimeFlavor::MultiThread),
            (&["plugins", "--cluster"], RuntimeFlavor::MultiThread),
            (
                &[
                    "plugin",
                    "check",
                    "--manifest=m.yaml",
                    "--config=c.json",
                    "--secret=s/k=v",
                ],
                RuntimeFlavor::MultiThread,
            ),
        ];
        for (args, flavor) in cases {
            let cli = Cli::try_parse_from(std::iter::once("stowage").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.runtime_flavor(), *flavor, "{args:?}");
        }
    }
}
