//! The `external` plugin: a target backed up by an installed `BackupPlugin`, whose
//! command the runner drives through the external plugin protocol
//! ([`stowage_plugin_sdk::protocol`], `docs/plugin-protocol.md`).
//!
//! The plugin's process only produces or consumes bytes and a small report; everything
//! else stays with the runner as for built-in plugins: compression, SHA-256, sidecar,
//! atomic commit, retention, timeouts, redaction and the termination message. So an
//! external plugin inherits every integrity guarantee, and a plugin that misbehaves
//! (writes nothing, exits 0 without a report, writes a malformed one, floods stderr)
//! ends in a failed run with a reason, never in a success.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::protocol::{self, Operation, REPORT_LIMIT, Report, env};
use stowage_plugin_sdk::tool::{ToolCommand, ToolFailure};
use stowage_plugin_sdk::{
    ArtifactSink, ArtifactSource, BackupReport, Capabilities, DestinationReport, ErrorKind,
    Execution, Plugin, PluginError, PluginInfo, ProbeReport, Redactor, RestoreReport,
    RestoreRequest, RunContext, SecretValue, ValidationErrors, secret_bindings,
};

/// The runner side of an external plugin.
pub struct ExternalPlugin;

/// The key of external targets: `spec.external`.
pub const KEY: &str = "external";

/// How much of the end of a plugin's stderr is kept; the last lines of it explain a
/// failure that has no report.
pub const STDERR_KEPT: usize = 16 * 1024;
/// At most this much of stderr goes into a run's message.
pub const STDERR_IN_MESSAGE: usize = 1024;

/// `spec.external` of a BackupTarget: which installed plugin, and its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalConfig {
    /// Name of the installed BackupPlugin that backs this target up (`kubectl get
    /// backupplugins` lists them), e.g. `ldap.examples.stowage.dev`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub plugin: String,
    /// The plugin's configuration. It is checked against the JSON schema of the
    /// BackupPlugin when the target is applied, and again by the operator before any
    /// run; `stowage plugins schema <plugin>` prints that schema. Secret values are never
    /// written here: a field named `...SecretRef` holds `{name, key}` of a Secret in the
    /// target's namespace.
    #[serde(default)]
    #[schemars(schema_with = "free_object")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Set by the operator in a run's Job from the BackupPlugin, never by users (the API
    /// server drops it from a target: it is not part of the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub resolved: Option<ResolvedPlugin>,
}

fn free_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "The plugin's configuration, checked against the JSON schema of its BackupPlugin."
    })
}

/// What a run needs to know about the BackupPlugin it runs, copied from it when the
/// operator builds the Job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedPlugin {
    /// The BackupPlugin's name.
    pub name: String,
    /// Its version (recorded in status and in each artifact's sidecar).
    pub version: String,
    /// Its image.
    pub image: String,
    /// The command inside the image; the operation is appended.
    pub command: Vec<String>,
    /// What it can do.
    pub capabilities: ResolvedCapabilities,
    /// File extension of an uncompressed artifact, without a dot.
    pub extension: String,
    /// MIME type of an uncompressed artifact.
    pub content_type: String,
    /// Extra environment variables the plugin declared (never secret values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Whether the Job gets a Kubernetes API token.
    #[serde(default)]
    pub needs_kubernetes_api: bool,
}

/// The operations an external plugin implements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedCapabilities {
    /// It writes artifacts.
    pub backup: bool,
    /// It restores them (and inspects the destination first).
    pub restore: bool,
    /// It tests connectivity.
    pub probe: bool,
}

impl From<ResolvedCapabilities> for Capabilities {
    fn from(c: ResolvedCapabilities) -> Capabilities {
        Capabilities {
            backup: c.backup,
            restore: c.restore,
            probe: c.probe,
        }
    }
}

impl ExternalConfig {
    /// The resolved plugin, or the error a run without one ends with.
    pub fn resolved(&self) -> Result<&ResolvedPlugin, PluginError> {
        self.resolved.as_ref().ok_or_else(|| {
            PluginError::Internal(format!(
                "this run was started without the definition of BackupPlugin {:?}; the \
                 operator adds it to every Job it creates",
                self.plugin
            ))
        })
    }
}

impl Plugin for ExternalPlugin {
    type Config = ExternalConfig;
    const KEY: &'static str = KEY;

    fn info() -> PluginInfo {
        PluginInfo {
            key: KEY,
            name: "External plugin",
            version: env!("CARGO_PKG_VERSION"),
            description: "A plugin installed on its own as a BackupPlugin (an image with a \
                          command speaking the stowage plugin protocol), with its config \
                          checked against the schema it declares",
            capabilities: Capabilities {
                backup: true,
                restore: true,
                probe: true,
            },
            artifact_extension: "bin",
            content_type: "application/octet-stream",
            execution: Execution::Tool { default_image: "" },
            needs_kubernetes_api: false,
        }
    }

    fn artifact_extension(config: &ExternalConfig) -> String {
        config
            .resolved
            .as_ref()
            .map(|r| r.extension.clone())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| Self::info().artifact_extension.to_owned())
    }

    fn validate(config: &ExternalConfig) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if config.plugin.trim().is_empty() {
            errors.push(
                "plugin",
                "name the BackupPlugin to use (kubectl get backupplugins)",
            );
        }
        if let Some(resolved) = &config.resolved
            && resolved.command.first().is_none_or(|c| c.trim().is_empty())
        {
            errors.push(
                "plugin",
                format!("BackupPlugin {:?} has no command", resolved.name),
            );
        }
        errors.into_result()
    }

    async fn probe(config: &ExternalConfig, ctx: &RunContext) -> Result<ProbeReport, PluginError> {
        let call = Call::new(config, ctx, Operation::Probe, None)?;
        let report = call.run_for_report(&ctx.secrets.redactor()).await?;
        Ok(ProbeReport {
            message: report
                .message
                .unwrap_or_else(|| format!("plugin {} answered", call.resolved.name)),
            facts: report.facts,
        })
    }

    async fn backup(
        config: &ExternalConfig,
        ctx: &RunContext,
        sink: &mut ArtifactSink<'_>,
    ) -> Result<BackupReport, PluginError> {
        let call = Call::new(config, ctx, Operation::Backup, None)?;
        let redactor = ctx.secrets.redactor();
        let outcome = call
            .command()?
            .run_to_sink(sink, &redactor, |failure| call.failure(failure, &redactor))
            .await;
        let written = outcome.as_ref().map(|o| o.bytes).unwrap_or_default();
        let report = call.report_after(outcome.map(|_| ()), &redactor)?;
        if written == 0 {
            return Err(PluginError::ToolFailed(format!(
                "plugin {} exited 0 but wrote no artifact on its stdout; a backup must write \
                 the artifact's bytes there (protocol {})",
                call.resolved.name,
                protocol::VERSION
            )));
        }
        Ok(BackupReport {
            facts: report.facts,
        })
    }

    async fn inspect_destination(
        config: &ExternalConfig,
        ctx: &RunContext,
        request: &RestoreRequest,
    ) -> Result<DestinationReport, PluginError> {
        let call = Call::new(config, ctx, Operation::Inspect, Some(request))?;
        let report = call.run_for_report(&ctx.secrets.redactor()).await?;
        match (report.holds_data, report.description) {
            (Some(holds_data), Some(description)) => Ok(DestinationReport {
                holds_data,
                description,
            }),
            _ => Err(call.protocol_error(
                "its inspect report lacks \"holdsData\" (true or false) or \"description\"",
            )),
        }
    }

    async fn restore(
        config: &ExternalConfig,
        ctx: &RunContext,
        source: &mut ArtifactSource<'_>,
        request: &RestoreRequest,
    ) -> Result<RestoreReport, PluginError> {
        let call = Call::new(config, ctx, Operation::Restore, Some(request))?;
        let redactor = ctx.secrets.redactor();
        let outcome = call
            .command()?
            .run_from_source(source, &redactor, |failure| {
                call.failure(failure, &redactor)
            })
            .await;
        let report = call.report_after(outcome.map(|_| ()), &redactor)?;
        Ok(RestoreReport {
            message: report
                .message
                .unwrap_or_else(|| format!("plugin {} restored the artifact", call.resolved.name)),
        })
    }
}

/// How the runner starts a plugin's process for one operation: the program, its
/// arguments (the operation last) and its whole environment. The runner starts it with
/// nothing else of its own environment; `stowage plugin check` starts it the same way to
/// look at what the plugin prints before any redaction.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The program: the first element of the BackupPlugin's `spec.command`.
    pub program: String,
    /// The rest of `spec.command`, then the operation.
    pub args: Vec<String>,
    /// The non-secret variables: `PATH`, `HOME`, `TMPDIR`, `LANG`, those the plugin
    /// declares, and the protocol's `STOWAGE_*` variables.
    pub env: Vec<(String, String)>,
    /// `STOWAGE_SECRET_<PATH>` of each `...SecretRef` field of the config, with its value
    /// (whose `Debug` never shows it).
    pub secret_env: Vec<(String, SecretValue)>,
}

impl Invocation {
    /// The invocation of `operation` (an [`Operation`] name; anything else only to check
    /// that a plugin refuses it) for `config`, whose plugin writes its report to `report`.
    /// Fails when the config has no resolved plugin or command, or names a secret `ctx`
    /// does not hold.
    pub fn new(
        config: &ExternalConfig,
        ctx: &RunContext,
        operation: &str,
        request: Option<&RestoreRequest>,
        report: &Path,
    ) -> Result<Invocation, PluginError> {
        let resolved = config.resolved()?;
        let (program, args) = resolved.command.split_first().ok_or_else(|| {
            PluginError::InvalidConfig(ValidationErrors::single(
                "plugin",
                format!("BackupPlugin {:?} has no command", resolved.name),
            ))
        })?;
        let json = serde_json::Value::Object(config.config.clone());
        let path = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            (
                "HOME".into(),
                std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
            ),
            (
                "TMPDIR".into(),
                std::env::temp_dir().to_string_lossy().into_owned(),
            ),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        env.extend(resolved.env.iter().map(|(n, v)| (n.clone(), v.clone())));
        env.extend([
            (env::PROTOCOL.into(), protocol::VERSION.to_string()),
            (env::OPERATION.into(), operation.to_owned()),
            (env::CONFIG.into(), json.to_string()),
            (env::REPORT.into(), report.to_string_lossy().into_owned()),
            (env::NAMESPACE.into(), ctx.namespace.clone()),
            (env::TARGET.into(), ctx.target.clone()),
            (env::RUN_ID.into(), ctx.run_id.clone()),
        ]);
        if let Some(schedule) = &ctx.schedule {
            env.push((env::SCHEDULE.into(), schedule.clone()));
        }
        if let Some(tick) = ctx.scheduled_time {
            env.push((env::SCHEDULED_TIME.into(), tick.to_string()));
        }
        if let Some(request) = request {
            let mode = if request.replace {
                "Replace"
            } else {
                "IntoEmpty"
            };
            env.push((env::RESTORE_MODE.into(), mode.into()));
            env.push((
                env::FACTS.into(),
                serde_json::to_string(&request.facts).unwrap_or_else(|_| "{}".into()),
            ));
            if let Some(into) = &request.into {
                env.push((env::RESTORE_INTO.into(), into.clone()));
            }
        }
        let mut secret_env = Vec::new();
        for binding in secret_bindings(&json) {
            let value = ctx.secret(&binding.reference)?;
            secret_env.push((binding.env, value.clone()));
        }
        let mut args: Vec<String> = args.to_vec();
        args.push(operation.to_owned());
        Ok(Invocation {
            program: program.clone(),
            args,
            env,
            secret_env,
        })
    }
}

/// One invocation of a plugin's command.
struct Call<'a> {
    config: &'a ExternalConfig,
    resolved: &'a ResolvedPlugin,
    ctx: &'a RunContext,
    operation: Operation,
    request: Option<&'a RestoreRequest>,
    /// Holds the report file; removed when the call ends.
    dir: tempfile::TempDir,
}

impl<'a> Call<'a> {
    fn new(
        config: &'a ExternalConfig,
        ctx: &'a RunContext,
        operation: Operation,
        request: Option<&'a RestoreRequest>,
    ) -> Result<Self, PluginError> {
        let resolved = config.resolved()?;
        let dir = tempfile::Builder::new()
            .prefix("stowage-plugin-")
            .tempdir()
            .map_err(|e| {
                PluginError::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot create the plugin's report directory: {e}"),
                ))
            })?;
        Ok(Call {
            config,
            resolved,
            ctx,
            operation,
            request,
            dir,
        })
    }

    fn report_path(&self) -> PathBuf {
        self.dir.path().join("report.json")
    }

    /// The plugin's process, with the protocol's environment and nothing else.
    fn command(&self) -> Result<ToolCommand, PluginError> {
        let invocation = Invocation::new(
            self.config,
            self.ctx,
            self.operation.as_str(),
            self.request,
            &self.report_path(),
        )?;
        let mut command = ToolCommand::new(invocation.program)
            .args(invocation.args)
            .env_clear()
            .stderr_limit(STDERR_KEPT);
        for (name, value) in invocation.env {
            command = command.env(name, value);
        }
        for (name, value) in &invocation.secret_env {
            command = command.secret_env(name.clone(), value);
        }
        Ok(command)
    }

    /// The report file: `None` when the plugin wrote none.
    fn read_report(&self) -> Result<Option<Report>, String> {
        read_report(&self.report_path())
    }

    /// The error of a process that exited non-zero or was killed: the kind from its exit
    /// code (or its report), the message from its report (or the end of its stderr).
    fn failure(&self, failure: &ToolFailure, redactor: &Redactor) -> PluginError {
        let report = self.read_report().ok().flatten();
        let reported = report.and_then(|r| r.error);
        let kind = failure
            .code
            .and_then(ErrorKind::from_exit_code)
            .or_else(|| {
                reported
                    .as_ref()
                    .and_then(|e| e.kind.as_deref())
                    .and_then(ErrorKind::from_reason)
            })
            .unwrap_or(ErrorKind::ToolFailed);
        let how = match (failure.code, failure.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "failed".to_owned(),
        };
        let message = match reported {
            Some(error) if !error.message.trim().is_empty() => redactor.redact(&error.message),
            _ => {
                let stderr = stderr_excerpt(&failure.stderr);
                if stderr.is_empty() {
                    format!(
                        "plugin {} {how} without a report or an error message",
                        self.resolved.name
                    )
                } else {
                    format!("plugin {} {how}: {stderr}", self.resolved.name)
                }
            }
        };
        PluginError::from_kind(kind, message)
    }

    /// Runs the command with no input (probe, inspect) and returns its report.
    async fn run_for_report(&self, redactor: &Redactor) -> Result<Report, PluginError> {
        let outcome = self
            .command()?
            .run(redactor, |failure| self.failure(failure, redactor))
            .await;
        self.report_after(outcome.map(|_| ()), redactor)
    }

    /// The report of a process that ran: required after a success.
    fn report_after(
        &self,
        outcome: Result<(), PluginError>,
        redactor: &Redactor,
    ) -> Result<Report, PluginError> {
        outcome?;
        let mut report = match self.read_report() {
            Ok(Some(report)) => report,
            Ok(None) => {
                return Err(self.protocol_error(&format!(
                    "it exited 0 without writing its report to ${}",
                    env::REPORT
                )));
            }
            Err(problem) => return Err(self.protocol_error(&problem)),
        };
        if let Some(error) = &report.error {
            return Err(self.protocol_error(&format!(
                "it exited 0 but reported an error: {}",
                redactor.redact(&error.message)
            )));
        }
        report.message = report.message.map(|m| redactor.redact(&m));
        report.description = report.description.map(|m| redactor.redact(&m));
        report.facts = std::mem::take(&mut report.facts)
            .into_iter()
            .map(|(key, value)| (redactor.redact(&key), redactor.redact(&value)))
            .collect();
        Ok(report)
    }

    fn protocol_error(&self, problem: &str) -> PluginError {
        PluginError::ToolFailed(format!(
            "plugin {} broke the plugin protocol (version {}) in {}: {problem}",
            self.resolved.name,
            protocol::VERSION,
            self.operation.as_str()
        ))
    }
}

/// Reads and parses a report; `Ok(None)` when there is none, `Err` with the problem when
/// it is too large or not a report.
pub fn read_report(path: &Path) -> Result<Option<Report>, String> {
    use std::io::Read;
    // Not followed: a link (to /dev/zero, a FIFO) must not block or flood the runner.
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("its report cannot be read: {e}")),
    };
    if !metadata.file_type().is_file() {
        return Err("its report is not a regular file".to_owned());
    }
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(REPORT_LIMIT + 1).read_to_end(&mut text))
        .map_err(|e| format!("its report cannot be read: {e}"))?;
    if text.len() as u64 > REPORT_LIMIT {
        return Err(format!(
            "its report is larger than {REPORT_LIMIT} bytes, the most allowed"
        ));
    }
    serde_json::from_slice::<Report>(&text)
        .map(Some)
        .map_err(|e| format!("its report is not a valid report (a JSON object): {e}"))
}

/// The last lines of a process's stderr, at most [`STDERR_IN_MESSAGE`] bytes, on one line.
fn stderr_excerpt(stderr: &str) -> String {
    let text = stderr.trim();
    let mut start = text.len().saturating_sub(STDERR_IN_MESSAGE);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = text[start..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if start > 0 {
        format!("…{tail}")
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_keeps_the_end_on_one_line() {
        assert_eq!(stderr_excerpt("  a\nb  \n"), "a b");
        let long = format!("{}end", "x ".repeat(2000));
        let excerpt = stderr_excerpt(&long);
        assert!(
            excerpt.starts_with('…') && excerpt.ends_with("end"),
            "{excerpt}"
        );
        assert!(excerpt.len() <= STDERR_IN_MESSAGE + 4);
    }

    #[test]
    fn a_config_without_a_plugin_name_is_refused() {
        let config = ExternalConfig {
            plugin: " ".into(),
            config: Default::default(),
            resolved: None,
        };
        let errors = ExternalPlugin::validate(&config).unwrap_err();
        assert!(errors.to_string().contains("plugin"), "{errors}");
    }

    #[test]
    fn the_resolved_definition_is_not_part_of_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(ExternalConfig)).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        assert!(properties.contains_key("plugin") && properties.contains_key("config"));
        assert!(!properties.contains_key("resolved"), "{schema}");
        assert_eq!(
            schema["properties"]["config"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }
}
