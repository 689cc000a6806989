//! `stowage verify`, `stowage artifacts list` and `stowage artifacts prune`: tools that
//! work on a store's files alone, without a cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::catalog;
use super::{ArtifactStore, TargetDir};
use crate::cli::{OutputFormat, print_table};
use crate::retention::{self, RetentionPolicy};

/// Arguments of `stowage verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A store root, any directory below it, or one artifact.
    #[arg(default_value = "/backups")]
    pub path: PathBuf,
    /// Print only problems.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl VerifyArgs {
    /// Re-hash every artifact against its sidecar; exit 1 when anything is wrong.
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        let path = self.path.clone();
        let report = tokio::task::spawn_blocking(move || catalog::verify(&path))
            .await
            .context("verify task failed")??;
        if !self.quiet {
            for ok in &report.ok {
                println!("ok       {}", ok.display());
            }
        }
        for problem in &report.problems {
            println!("PROBLEM  {problem}");
            println!("         fix: {}", problem.fix());
        }
        eprintln!(
            "{} artifacts verified, {} problems",
            report.ok.len(),
            report.problems.len()
        );
        Ok(if report.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Subcommands of `stowage artifacts`.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// List backups from their sidecars (no cluster needed).
    List(ListArgs),
    /// Apply a retention policy to one target's artifacts of one schedule.
    Prune(PruneArgs),
    /// Finish or undo what killed runs left: publish an artifact whose commit was
    /// interrupted (when its file matches its sidecar), remove sidecars whose artifact is
    /// gone, and remove partial files nobody has written to for `--stale-after`.
    Repair(RepairArgs),
}

/// Arguments of `stowage artifacts repair`.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// A store root or any directory below it.
    #[arg(default_value = "/backups")]
    pub path: PathBuf,
    /// A partial file not written to for this many seconds belongs to a run that is over
    /// (keep it above the longest Job deadline, so a live run's file is never removed).
    #[arg(long, default_value_t = 24 * 3600)]
    pub stale_after_seconds: u64,
}

impl RepairArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let mut dirs = Vec::new();
        collect_dirs(&self.path, &mut dirs)
            .with_context(|| format!("cannot list {}", self.path.display()))?;
        let recovery = super::writer::recover_dirs(
            &dirs,
            None,
            std::time::Duration::from_secs(self.stale_after_seconds),
        )?;
        for path in &recovery.completed {
            println!("published  {}", path.display());
        }
        for path in &recovery.removed {
            println!("removed    {}", path.display());
        }
        for path in &recovery.kept_live {
            println!(
                "kept       {} (written to recently: a run may be live)",
                path.display()
            );
        }
        eprintln!(
            "{} commits completed, {} files removed, {} recent partial files kept",
            recovery.completed.len(),
            recovery.removed.len(),
            recovery.kept_live.len()
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn collect_dirs(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    out.push(dir.to_owned());
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

impl ArtifactsCommand {
    /// Run the subcommand.
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            ArtifactsCommand::List(args) => args.execute(),
            ArtifactsCommand::Prune(args) => args.execute(),
            ArtifactsCommand::Repair(args) => args.execute(),
        }
    }
}

/// Arguments of `stowage artifacts list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// A store root, any directory below it, or one artifact.
    #[arg(default_value = "/backups")]
    pub path: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedJson<'a> {
    path: String,
    #[serde(flatten)]
    sidecar: &'a super::Sidecar,
}

impl ListArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let found = catalog::scan(&self.path)?;
        match self.output {
            OutputFormat::Json => {
                let items: Vec<ListedJson<'_>> = found
                    .artifacts
                    .iter()
                    .map(|l| ListedJson {
                        path: l.path.display().to_string(),
                        sidecar: &l.sidecar,
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            }
            OutputFormat::Table => {
                let rows: Vec<[String; 7]> = found
                    .artifacts
                    .iter()
                    .map(|l| {
                        let s = &l.sidecar;
                        [
                            s.namespace.clone(),
                            s.target.clone(),
                            s.schedule.clone().unwrap_or_else(|| "-".into()),
                            s.time().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                            human_bytes(s.stored_bytes),
                            s.sha256.chars().take(12).collect(),
                            l.path.display().to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NAMESPACE",
                        "TARGET",
                        "SCHEDULE",
                        "TIME",
                        "SIZE",
                        "SHA256",
                        "PATH",
                    ],
                    &rows,
                );
            }
        }
        for problem in &found.problems {
            eprintln!("warning: {problem}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `stowage artifacts prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// The store root.
    #[arg(long, default_value = "/backups")]
    pub root: PathBuf,
    /// Namespace of the target.
    #[arg(long)]
    pub namespace: String,
    /// Name of the target.
    #[arg(long)]
    pub target: String,
    /// The schedule whose artifacts the policy applies to.
    #[arg(long)]
    pub schedule: String,
    /// The policy as JSON, e.g. `{"keepLast":3,"keepDaily":7}`.
    #[arg(long, value_parser = parse_policy)]
    pub policy: RetentionPolicy,
    /// IANA time zone the periods are counted in.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// Print what would be deleted without deleting.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parse a [`RetentionPolicy`] from JSON (command-line value parser).
pub fn parse_policy(text: &str) -> Result<RetentionPolicy, String> {
    serde_json::from_str(text).map_err(|e| {
        format!(
            "invalid retention policy: {e}; expected JSON like {{\"keepLast\":3,\"keepDaily\":7}}"
        )
    })
}

impl PruneArgs {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let tz = crate::schedule::time_zone_database()
            .get(&self.time_zone)
            .with_context(|| {
                format!(
                    "unknown time zone {:?}; use an IANA name such as Europe/Paris",
                    self.time_zone
                )
            })?;
        let dir = TargetDir::new(&self.namespace, &self.target)?;
        let store = ArtifactStore::new(&self.root);
        let outcome = retention::apply(
            &store,
            &dir,
            &self.schedule,
            &self.policy,
            &tz,
            self.dry_run,
        )?;
        let verb = if self.dry_run {
            "would prune"
        } else {
            "pruned"
        };
        for kept in &outcome.kept {
            println!(
                "keep         {} ({})",
                kept.id.display(),
                kept.reasons.join(", ")
            );
        }
        for pruned in &outcome.pruned {
            println!("{verb:<12} {} ({})", pruned.id.display(), pruned.reason);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Bytes in binary units (`12.3 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
