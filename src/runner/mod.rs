//! `stowage run backup|probe|restore`: the program inside each backup Job.
//!
//! Inputs come from flags or, as the controller sets them, env variables (`STOWAGE_...`).
//! The plugin config arrives as JSON without secret values; each secret value arrives in
//! the env variable [`stowage_plugin_sdk::secret_bindings`] names for it. The result is a
//! [`RunResult`], written to the termination message (under 4 KiB) and printed as the last
//! line of stdout; the exit code is 0 or the error kind's code.

mod plugin;
mod progress;
mod result;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use jiff::Timestamp;
use stowage_plugin_sdk::{ErrorKind, Redactor, Secrets, secret_bindings};

pub use plugin::{Identity, RunnablePlugin, Single};
pub use progress::{ProgressReporter, ProgressSample, spawn_progress};
pub use result::{
    Outcome, RestoreProgress, RestoreStage, RunKind, RunResult, TERMINATION_MESSAGE_LIMIT,
    truncate_marked,
};
pub use run::{
    RestoreInputs, RestoreSourceSpec, RunError, RunSpec, backup, probe, resolve_artifact, restore,
};

use crate::api::Compression;
use crate::registry::PluginConfig;
use crate::retention::RetentionPolicy;

/// `stowage run`: one operation of one target, inside a Job.
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Back up the target into the artifact store, then apply the schedule's retention.
    Backup(RunArgs),
    /// Test connectivity and credentials without side effects.
    Probe(RunArgs),
    /// Restore an artifact from the store into the service the plugin config describes.
    Restore(Box<RestoreArgs>),
}

/// Inputs shared by every `stowage run` operation.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Key of the plugin (e.g. `postgres`).
    #[arg(long, env = "STOWAGE_PLUGIN")]
    pub plugin: String,
    /// The plugin's config as JSON (`spec.<plugin>` of the target; never secret values).
    #[arg(long, env = "STOWAGE_PLUGIN_CONFIG", default_value = "{}")]
    pub plugin_config: String,
    /// Namespace of the BackupTarget.
    #[arg(long, env = "STOWAGE_NAMESPACE")]
    pub namespace: String,
    /// Name of the BackupTarget.
    #[arg(long, env = "STOWAGE_TARGET")]
    pub target: String,
    /// Name of the BackupSchedule; empty or unset for an on-demand run.
    #[arg(long, env = "STOWAGE_SCHEDULE")]
    pub schedule: Option<String>,
    /// Identifier of the run.
    #[arg(long, env = "STOWAGE_RUN_ID", default_value = "manual")]
    pub run_id: String,
    /// The schedule tick this run is for (RFC 3339); unset for an on-demand run.
    #[arg(long, env = "STOWAGE_SCHEDULED_TIME")]
    pub scheduled_time: Option<String>,
    /// Compression of the artifact: none, gzip or zstd.
    #[arg(long, env = "STOWAGE_COMPRESSION", default_value = "zstd")]
    pub compression: String,
    /// Root of the artifact store (the mounted PVC).
    #[arg(long, env = "STOWAGE_ARTIFACT_ROOT", default_value = "/backups")]
    pub root: PathBuf,
    /// Where the application's claim is mounted, for plugins that work on files of a
    /// claim (`sqlite`, `files`); unset for the others.
    #[arg(long, env = "STOWAGE_CLAIM_ROOT")]
    pub claim_root: Option<PathBuf>,
    /// The schedule's retention as JSON (e.g. `{"keepLast":3,"keepDaily":7}`).
    #[arg(long, env = "STOWAGE_RETENTION")]
    pub retention: Option<String>,
    /// IANA time zone retention counts hours, days, weeks, months and years in.
    #[arg(long, env = "STOWAGE_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,
    /// Log what retention would delete without deleting it.
    #[arg(long, env = "STOWAGE_PRUNE_DRY_RUN")]
    pub prune_dry_run: bool,
    /// Where to write the JSON result (Kubernetes' termination message).
    #[arg(
        long,
        env = "STOWAGE_TERMINATION_MESSAGE_PATH",
        default_value = "/dev/termination-log"
    )]
    pub termination_message_path: PathBuf,
    /// Seconds between progress log lines on long runs (0: none).
    #[arg(long, env = "STOWAGE_PROGRESS_INTERVAL", default_value_t = 5)]
    pub progress_interval: u64,
    /// Give up after this many seconds (unset: no limit beyond the Job's deadline).
    #[arg(long, env = "STOWAGE_TIMEOUT_SECONDS")]
    pub timeout_seconds: Option<u64>,
}

/// Inputs of `stowage run restore`. `--namespace`/`--target` and the plugin config name
/// the destination; the artifact is `--artifact`, or chosen among `--source-target`'s
/// artifacts (by default the destination's own).
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Inputs shared with backup and probe.
    #[command(flatten)]
    pub run: RunArgs,
    /// The artifact to restore, relative to the store root; unset: chosen among the
    /// source target's artifacts.
    #[arg(long, env = "STOWAGE_RESTORE_ARTIFACT")]
    pub artifact: Option<PathBuf>,
    /// The BackupTarget (in `--namespace`) whose artifacts to choose from, and that an
    /// `--artifact` must belong to; default `--target`. Empty with `--artifact`: any
    /// artifact (disaster recovery from a claim).
    #[arg(long, env = "STOWAGE_RESTORE_SOURCE_TARGET")]
    pub source_target: Option<String>,
    /// Choose the newest artifact made at or before this time (RFC 3339).
    #[arg(long, env = "STOWAGE_RESTORE_AS_OF")]
    pub as_of: Option<String>,
    /// Skip this many of the newest artifacts.
    #[arg(long, env = "STOWAGE_RESTORE_PREVIOUS")]
    pub previous: Option<u32>,
    /// Choose only among the artifacts of this BackupSchedule.
    #[arg(long, env = "STOWAGE_RESTORE_SCHEDULE")]
    pub from_schedule: Option<String>,
    /// A name inside the destination to restore into (e.g. a database), overriding the config.
    #[arg(long, env = "STOWAGE_RESTORE_INTO")]
    pub into: Option<String>,
    /// `IntoEmpty` (refuse a destination that holds data) or `Replace`.
    #[arg(long, env = "STOWAGE_RESTORE_MODE", default_value = "IntoEmpty")]
    pub mode: String,
    /// Only resolve, verify and inspect the destination; change nothing.
    #[arg(long, env = "STOWAGE_RESTORE_DRY_RUN")]
    pub dry_run: bool,
    /// Name of the claim mounted at the store root, for messages.
    #[arg(long, env = "STOWAGE_RESTORE_CLAIM")]
    pub claim: Option<String>,
}

impl RestoreArgs {
    /// The restore's inputs beyond the run's.
    pub fn inputs(&self) -> Result<RestoreInputs, RunError> {
        let invalid = |m: String| RunError::new(ErrorKind::InvalidConfig, m);
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        let as_of = match nonempty(&self.as_of) {
            None => None,
            Some(text) => Some(text.parse::<Timestamp>().map_err(|e| {
                invalid(format!(
                    "STOWAGE_RESTORE_AS_OF {text:?} is not an RFC 3339 time (e.g. 2026-11-30T02:00:00Z): {e}"
                ))
            })?),
        };
        let replace = match self.mode.as_str() {
            "IntoEmpty" | "" => false,
            "Replace" => true,
            other => {
                return Err(invalid(format!(
                    "STOWAGE_RESTORE_MODE {other:?} is not a restore mode; use IntoEmpty or Replace"
                )));
            }
        };
        let source_target = match (&self.source_target, &self.artifact) {
            // Set but empty with an artifact: any target's artifact.
            (Some(t), Some(_)) if t.trim().is_empty() => None,
            (Some(t), _) if !t.trim().is_empty() => Some(t.clone()),
            _ => Some(self.run.target.clone()),
        };
        let source = match (self.artifact.clone(), source_target) {
            (Some(path), source_target) => RestoreSourceSpec::Path {
                path,
                source_target,
            },
            (None, Some(target)) => RestoreSourceSpec::Choose {
                target,
                selection: crate::artifacts::select::Selection {
                    schedule: nonempty(&self.from_schedule),
                    as_of,
                    previous: self.previous,
                },
            },
            (None, None) => {
                return Err(invalid(
                    "name the artifact (STOWAGE_RESTORE_ARTIFACT) or the target to choose it from (STOWAGE_RESTORE_SOURCE_TARGET)".into(),
                ));
            }
        };
        Ok(RestoreInputs {
            source,
            into: nonempty(&self.into),
            replace,
            dry_run: self.dry_run,
            claim: nonempty(&self.claim),
        })
    }
}

/// Parse a compression name.
pub fn parse_compression(name: &str) -> Result<Compression, String> {
    match name {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "unknown compression {other:?}; use none, gzip or zstd"
        )),
    }
}

impl RunArgs {
    /// Turn the raw inputs into a [`RunSpec`] and the plugin's config JSON.
    pub fn spec(&self) -> Result<(RunSpec, serde_json::Value), RunError> {
        let invalid = |m: String| RunError::new(ErrorKind::InvalidConfig, m);
        let config: serde_json::Value = serde_json::from_str(&self.plugin_config)
            .map_err(|e| invalid(format!("STOWAGE_PLUGIN_CONFIG is not valid JSON: {e}")))?;
        let scheduled_time = match self.scheduled_time.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(text.parse::<Timestamp>().map_err(|e| {
                invalid(format!(
                    "STOWAGE_SCHEDULED_TIME {text:?} is not an RFC 3339 time: {e}"
                ))
            })?),
        };
        let retention = match self.retention.as_deref().filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(text) => Some(serde_json::from_str::<RetentionPolicy>(text).map_err(|e| {
                invalid(format!(
                    "STOWAGE_RETENTION is not a valid retention policy: {e}"
                ))
            })?),
        };
        // The compiled-in tz database: the image need not ship /usr/share/zoneinfo.
        let time_zone = crate::schedule::time_zone_database()
            .get(&self.time_zone)
            .map_err(|e| {
                invalid(format!(
                    "STOWAGE_TIME_ZONE {:?} is not a known IANA time zone: {e}",
                    self.time_zone
                ))
            })?;
        let spec = RunSpec {
            namespace: self.namespace.clone(),
            target: self.target.clone(),
            schedule: self.schedule.clone().filter(|s| !s.is_empty()),
            run_id: self.run_id.clone(),
            scheduled_time,
            compression: parse_compression(&self.compression).map_err(invalid)?,
            root: self.root.clone(),
            claim_root: self.claim_root.clone(),
            retention,
            time_zone,
            prune_dry_run: self.prune_dry_run,
            progress_interval: Duration::from_secs(self.progress_interval),
            timeout: self.timeout_seconds.map(Duration::from_secs),
        };
        Ok((spec, config))
    }
}

/// Redact every text of a result.
pub fn redact_result(result: &mut RunResult, redactor: &Redactor) {
    for text in [&mut result.message, &mut result.prune_error]
        .into_iter()
        .flatten()
    {
        *text = redactor.redact(text);
    }
    for value in result.facts.values_mut() {
        *value = redactor.redact(value);
    }
    if let Some(text) = result.restore.as_mut().and_then(|r| r.destination.as_mut()) {
        *text = redactor.redact(text);
    }
}

/// Write the result to the termination message path and stdout; the exit code.
pub fn publish(result: &RunResult, termination_message_path: &std::path::Path) -> ExitCode {
    let json = result.to_bounded_json(TERMINATION_MESSAGE_LIMIT);
    if let Err(e) = std::fs::write(termination_message_path, &json) {
        tracing::warn!(
            path = %termination_message_path.display(),
            error = %e,
            "cannot write the termination message; the result is only on stdout"
        );
    }
    println!("{json}");
    ExitCode::from(result.exit_code())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STOWAGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("STOWAGE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

impl RunCommand {
    /// Run the operation; always produces a [`RunResult`] (even for bad inputs).
    pub async fn execute(self) -> anyhow::Result<ExitCode> {
        init_logging();
        let (operation, args, restore_args) = match self {
            RunCommand::Backup(args) => (RunKind::Backup, args, None),
            RunCommand::Probe(args) => (RunKind::Probe, args, None),
            RunCommand::Restore(r) => (RunKind::Restore, r.run.clone(), Some(r)),
        };
        let start = Timestamp::now();
        let prepared = args.spec().map(|(spec, config)| {
            let bindings = secret_bindings(&config);
            let secrets = Secrets::from_bindings(&bindings, |name| std::env::var(name).ok());
            let plugin =
                PluginConfig::from_key_and_config(&args.plugin, config).map_err(RunError::from);
            (spec, secrets, plugin)
        });
        let (mut result, redactor) = match prepared {
            Err(e) => (
                failed_early(operation, start, e, &args.plugin),
                Redactor::default(),
            ),
            Ok((_, secrets, Err(e))) => {
                let redactor = secrets.redactor();
                (failed_early(operation, start, e, &args.plugin), redactor)
            }
            Ok((spec, secrets, Ok(plugin))) => {
                let redactor = secrets.redactor();
                let result = match (operation, restore_args) {
                    (RunKind::Restore, Some(r)) => match r.inputs() {
                        Ok(inputs) => restore(&plugin, &spec, secrets, &inputs).await,
                        Err(e) => failed_early(operation, start, e, &args.plugin),
                    },
                    (RunKind::Probe, _) => probe(&plugin, &spec, secrets).await,
                    _ => backup(&plugin, &spec, secrets).await,
                };
                (result, redactor)
            }
        };
        redact_result(&mut result, &redactor);
        if let (Some(message), Outcome::Failed) = (&result.message, result.outcome) {
            tracing::error!(kind = ?result.error_kind, "{message}");
        }
        Ok(publish(&result, &args.termination_message_path))
    }
}

fn failed_early(operation: RunKind, start: Timestamp, e: RunError, plugin: &str) -> RunResult {
    let mut result = RunResult::new(operation, Outcome::Failed, start, Timestamp::now());
    result.error_kind = Some(e.kind);
    result.message = Some(e.message);
    result.plugin = Some(plugin.to_owned()).filter(|p| !p.is_empty());
    result
}

#[cfg(test)]
mod tests;
