//! `stowage plugin check`: a conformance run of an external plugin for its author, with
//! no cluster. It runs the plugin's command on this machine exactly as the runner would
//! in a Job (the protocol's environment and nothing else) and reports each check as
//! passed, failed or skipped, with the reason.
//!
//! The secret canary looks at the plugin's raw output, before the runner's redaction:
//! in a real run the runner hides a secret the plugin prints, but the plugin should not
//! print it in the first place (its stderr may reach other places, such as a debugging
//! session or a log collector reading the pod's output).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use stowage_plugin_external::{ExternalConfig, ExternalPlugin, Invocation, ResolvedPlugin};
use stowage_plugin_sdk::protocol::Operation;
use stowage_plugin_sdk::{
    ArtifactSink, ErrorKind, Plugin, PluginError, RestoreRequest, RunContext, SecretKeyRef,
    SecretValue, secret_bindings,
};

use crate::api::BackupPlugin;
use crate::installed::{Installed, check, resolved_plugin};

/// Arguments of `stowage plugin check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The plugin's BackupPlugin manifest (YAML), as you will install it: the check
    /// reads its name, command, capabilities and config schema from it.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// What to run instead of the image's command: a local path, or a program and its
    /// arguments separated by spaces (e.g. `"sh ./plugin.sh"`; no shell quoting). The
    /// operation is appended, as the runner does. Default: the manifest's spec.command.
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,
    /// A target's config for the plugin (what a BackupTarget holds under
    /// spec.external.config), as a JSON file: the service the checks probe and back up.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The value of a secret the configs name in a `...SecretRef` field, as
    /// `<secret>/<key>=<value>`, or `<secret>/<key>=@<file>` to read it from a file (keeps
    /// it out of your shell history). Repeat for each secret.
    #[arg(long = "secret", value_name = "SECRET/KEY=VALUE")]
    pub secrets: Vec<String>,
    /// The config (JSON file) of an empty destination: with it, the backup is restored
    /// there, and the destination is inspected before (must be empty) and after (must
    /// hold data). Without it, the restore checks are skipped.
    #[arg(long, value_name = "FILE")]
    pub restore_config: Option<PathBuf>,
    /// How long one operation of the plugin may run before it is killed and its check
    /// fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout_seconds: u64,
}

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The plugin does what the protocol asks.
    Pass,
    /// It does not; the details say what to fix.
    Fail,
    /// The check could not run (a capability not declared, an input not given, an
    /// earlier check that failed).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One check's outcome: a stable name (`manifest`, `config`, `restore-config`, `probe`,
/// `backup`, `secret-canary`, `wrong-secret`, `unknown-operation`, `inspect`,
/// `round-trip`), its status, a one-line summary and notes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The check's name.
    pub name: &'static str,
    /// How it ended.
    pub status: Status,
    /// Why, in one line.
    pub summary: String,
    /// Problems, warnings and other notes, one per entry.
    pub notes: Vec<String>,
}

impl Outcome {
    fn new(name: &'static str, status: Status, summary: impl Into<String>) -> Outcome {
        Outcome {
            name,
            status,
            summary: summary.into(),
            notes: Vec::new(),
        }
    }

    fn notes(mut self, notes: impl IntoIterator<Item = String>) -> Outcome {
        self.notes.extend(notes);
        self
    }
}

/// Run every check, print each outcome, and exit 0 when none failed, 1 otherwise.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let inputs = Inputs::load(&args)?;
    let outcomes = checks(&inputs).await;
    let redactor = inputs.ctx.secrets.redactor();
    let mut out = render(&outcomes);
    out = redactor.redact(&out);
    print!("{out}");
    let failed = outcomes.iter().any(|o| o.status == Status::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The outcomes as the command prints them: one aligned line per check, its notes
/// indented below, and a count.
pub fn render(outcomes: &[Outcome]) -> String {
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for o in outcomes {
        let _ = writeln!(
            out,
            "{}  {:<width$}  {}",
            o.status.label(),
            o.name,
            o.summary
        );
        for note in &o.notes {
            let _ = writeln!(out, "      {:<width$}  - {note}", "");
        }
    }
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    let _ = writeln!(
        out,
        "{} checks: {} passed, {} failed, {} skipped",
        outcomes.len(),
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip)
    );
    out
}

/// What the checks run on, read from the command line.
struct Inputs {
    plugin: BackupPlugin,
    resolved: ResolvedPlugin,
    config: serde_json::Map<String, serde_json::Value>,
    restore_config: Option<serde_json::Map<String, serde_json::Value>>,
    ctx: RunContext,
    timeout: Duration,
}

impl Inputs {
    fn load(args: &CheckArgs) -> anyhow::Result<Inputs> {
        let text = std::fs::read_to_string(&args.manifest)
            .with_context(|| format!("--manifest: cannot read {}", args.manifest.display()))?;
        let plugin: BackupPlugin = serde_yaml_ng::from_str(&text).with_context(|| {
            format!(
                "--manifest: {} is not a BackupPlugin manifest (apiVersion stowage.dev/v1alpha1, \
                 kind BackupPlugin)",
                args.manifest.display()
            )
        })?;
        let mut resolved = resolved_plugin(&plugin);
        if let Some(command) = &args.command {
            let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                bail!("--command is empty; give the plugin's path, e.g. --command ./plugin.sh");
            }
            resolved.command = argv;
        }
        let config = read_config("--config", &args.config)?;
        let restore_config = args
            .restore_config
            .as_deref()
            .map(|p| read_config("--restore-config", p))
            .transpose()?;
        let mut ctx = RunContext::new("default", "plugin-check");
        ctx.run_id = "plugin-check".into();
        for flag in &args.secrets {
            let (reference, value) = parse_secret(flag)?;
            ctx.secrets.insert(reference, value);
        }
        Ok(Inputs {
            plugin,
            resolved,
            config,
            restore_config,
            ctx,
            timeout: Duration::from_secs(args.timeout_seconds.max(1)),
        })
    }

    fn target(&self, config: &serde_json::Map<String, serde_json::Value>) -> ExternalConfig {
        ExternalConfig {
            plugin: self.resolved.name.clone(),
            config: config.clone(),
            resolved: Some(self.resolved.clone()),
        }
    }
}

fn read_config(
    flag: &str,
    path: &Path,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => bail!(
            "{flag}: {} must hold a JSON object (the target's spec.external.config)",
            path.display()
        ),
        Err(e) => bail!("{flag}: {} is not JSON: {e}", path.display()),
    }
}

/// `<secret>/<key>=<value>` or `<secret>/<key>=@<file>`; the error never repeats the value.
fn parse_secret(flag: &str) -> anyhow::Result<(SecretKeyRef, SecretValue)> {
    let shape = "--secret: write <secret>/<key>=<value> (or <secret>/<key>=@<file>), e.g. \
                 --secret redis/password=@./password.txt";
    let Some((reference, value)) = flag.split_once('=') else {
        bail!("{shape}");
    };
    let Some((name, key)) = reference.split_once('/') else {
        bail!("{shape} (no / in {reference:?})");
    };
    if name.is_empty() || key.is_empty() {
        bail!("{shape} (empty secret name or key in {reference:?})");
    }
    let value = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--secret {reference}: cannot read {path}"))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => value.to_owned(),
    };
    Ok((SecretKeyRef::new(name, key), SecretValue::new(value)))
}

async fn checks(inputs: &Inputs) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let name = inputs.plugin.metadata.name.clone().unwrap_or_default();
    let verdict = check(&name, &inputs.plugin.spec);
    let warnings = verdict.warnings.iter().map(|w| format!("warning: {w}"));
    outcomes.push(if verdict.accepted() {
        Outcome::new(
            "manifest",
            Status::Pass,
            format!(
                "BackupPlugin {name:?} version {} is accepted",
                inputs.plugin.spec.version
            ),
        )
        .notes(warnings)
        .notes(
            verdict
                .secret_fields
                .iter()
                .map(|f| format!("secret field: {f}")),
        )
    } else {
        Outcome::new(
            "manifest",
            Status::Fail,
            format!(
                "BackupPlugin {name:?} would be refused ({} problems)",
                verdict.problems.len()
            ),
        )
        .notes(verdict.problems.iter().cloned())
        .notes(warnings)
    });
    let installed = Installed::new(&inputs.plugin, &verdict);
    outcomes.push(config_check(
        "config",
        "--config",
        installed.as_ref(),
        &inputs.config,
        &inputs.ctx,
    ));
    if let Some(restore) = &inputs.restore_config {
        outcomes.push(config_check(
            "restore-config",
            "--restore-config",
            installed.as_ref(),
            restore,
            &inputs.ctx,
        ));
    }
    if outcomes.iter().any(|o| o.status == Status::Fail) {
        outcomes.push(Outcome::new(
            "plugin",
            Status::Skip,
            "the plugin was not run: fix the problems above first",
        ));
        return outcomes;
    }
    let source = inputs.target(&inputs.config);
    let capabilities = inputs.resolved.capabilities;

    outcomes.push(if capabilities.probe {
        match within(inputs.timeout, ExternalPlugin::probe(&source, &inputs.ctx)).await {
            Ok(report) => Outcome::new("probe", Status::Pass, report.message)
                .notes(report.facts.iter().map(|(k, v)| format!("fact {k}: {v}"))),
            Err(e) => Outcome::new("probe", Status::Fail, e.to_string()),
        }
    } else {
        Outcome::new("probe", Status::Skip, "spec.capabilities.probe is false")
    });

    let mut artifact = Vec::new();
    let backup = {
        let mut sink = ArtifactSink::new(&mut artifact);
        within(
            inputs.timeout,
            ExternalPlugin::backup(&source, &inputs.ctx, &mut sink),
        )
        .await
    };
    let facts = match &backup {
        Ok(report) => report.facts.clone(),
        Err(_) => Default::default(),
    };
    outcomes.push(match backup {
        Ok(report) => Outcome::new(
            "backup",
            Status::Pass,
            format!(
                "wrote a {}-byte artifact and a valid report",
                artifact.len()
            ),
        )
        .notes(report.facts.iter().map(|(k, v)| format!("fact {k}: {v}"))),
        Err(e) => Outcome::new("backup", Status::Fail, e.to_string()),
    });

    outcomes.extend(canary_checks(inputs, &source).await);
    outcomes.push(unknown_operation(inputs, &source).await);
    outcomes.extend(restore_checks(inputs, &source, &artifact, facts).await);
    outcomes
}

/// The config against the schema, and a value for each secret it names.
fn config_check(
    name: &'static str,
    flag: &str,
    installed: Option<&Installed>,
    config: &serde_json::Map<String, serde_json::Value>,
    ctx: &RunContext,
) -> Outcome {
    let Some(installed) = installed else {
        return Outcome::new(
            name,
            Status::Skip,
            "the manifest is refused, so its schema cannot be checked against",
        );
    };
    let mut problems = installed.config_problems(config);
    for binding in secret_bindings(&serde_json::Value::Object(config.clone())) {
        if ctx.secrets.get(&binding.reference).is_none() {
            problems.push(format!(
                "{} names key {:?} of Secret {:?}: give its value with --secret {}/{}=<value>",
                binding.path,
                binding.reference.key,
                binding.reference.name,
                binding.reference.name,
                binding.reference.key
            ));
        }
    }
    if problems.is_empty() {
        Outcome::new(
            name,
            Status::Pass,
            format!("{flag} matches the manifest's spec.configSchema"),
        )
    } else {
        Outcome::new(
            name,
            Status::Fail,
            format!(
                "{flag} does not fit the plugin ({} problems)",
                problems.len()
            ),
        )
        .notes(problems)
    }
}

/// Probe (or back up, without a probe) with every secret replaced by a canary: the
/// canary must appear nowhere in the plugin's raw output, and the run must fail with an
/// error kind, `Unauthorized` at best.
async fn canary_checks(inputs: &Inputs, source: &ExternalConfig) -> Vec<Outcome> {
    let bindings = secret_bindings(&serde_json::Value::Object(source.config.clone()));
    if bindings.is_empty() {
        let why = "--config names no ...SecretRef field";
        return vec![
            Outcome::new("secret-canary", Status::Skip, why),
            Outcome::new("wrong-secret", Status::Skip, why),
        ];
    }
    let mut ctx = inputs.ctx.clone();
    let mut canaries = Vec::new();
    for (i, binding) in bindings.iter().enumerate() {
        let value = canary(i);
        ctx.secrets
            .insert(binding.reference.clone(), SecretValue::new(value.clone()));
        canaries.push((binding, value));
    }
    let mut operations = Vec::new();
    if inputs.resolved.capabilities.probe {
        operations.push(Operation::Probe);
    }
    operations.push(Operation::Backup);

    let mut leaks = Vec::new();
    let mut errors = Vec::new();
    let mut first: Option<Raw> = None;
    for operation in operations {
        let raw = match raw_run(source, &ctx, operation.as_str(), inputs.timeout).await {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(format!("{}: {e}", operation.as_str()));
                continue;
            }
        };
        let mut places = vec![("stderr", &raw.stderr), ("report", &raw.report)];
        if operation == Operation::Probe {
            places.push(("stdout", &raw.stdout));
        }
        for (binding, value) in &canaries {
            for (place, bytes) in &places {
                if contains(bytes, value.as_bytes()) {
                    leaks.push(format!(
                        "{} ({}) appeared in the {place} of {}",
                        binding.path,
                        binding.env,
                        operation.as_str()
                    ));
                }
            }
        }
        if first.is_none() {
            first = Some(raw);
        }
    }
    let leak = if !errors.is_empty() {
        Outcome::new(
            "secret-canary",
            Status::Fail,
            "the plugin could not be run with canary secrets",
        )
        .notes(errors)
    } else if leaks.is_empty() {
        Outcome::new(
            "secret-canary",
            Status::Pass,
            format!(
                "no canary secret value in the plugin's raw stdout, stderr or report ({} secret fields)",
                canaries.len()
            ),
        )
    } else {
        Outcome::new(
            "secret-canary",
            Status::Fail,
            "the plugin prints secret values: never write a secret to stdout, stderr or the \
             report (the runner redacts them in a run, but your plugin must not rely on it)",
        )
        .notes(leaks)
    };
    let wrong = match first {
        None => Outcome::new("wrong-secret", Status::Skip, "the plugin could not be run"),
        Some(raw) => wrong_secret(&raw),
    };
    vec![leak, wrong]
}

/// Whether a run with wrong secrets failed with an error kind.
fn wrong_secret(raw: &Raw) -> Outcome {
    let op = raw.operation.as_str();
    match (raw.code, raw.code.and_then(ErrorKind::from_exit_code)) {
        (Some(0), _) => Outcome::new(
            "wrong-secret",
            Status::Fail,
            format!(
                "{op} succeeded with canary secret values; it must fail when the credentials \
                 are wrong (does it use its ...SecretRef values?)"
            ),
        ),
        (Some(code), Some(ErrorKind::Unauthorized)) => Outcome::new(
            "wrong-secret",
            Status::Pass,
            format!("{op} with canary secret values failed with Unauthorized (exit {code})"),
        ),
        (Some(code), Some(kind)) => Outcome::new(
            "wrong-secret",
            Status::Pass,
            format!("{op} with canary secret values failed with {kind} (exit {code})"),
        )
        .notes([format!(
            "Unauthorized (exit {}) is expected when the service refuses credentials; \
             {kind} is fine if the service cannot tell",
            ErrorKind::Unauthorized.exit_code()
        )]),
        (Some(code), None) => Outcome::new(
            "wrong-secret",
            Status::Fail,
            format!(
                "{op} with canary secret values exited with {code}, which is no error kind; \
                 exit with {} (Unauthorized) when the service refuses the credentials",
                ErrorKind::Unauthorized.exit_code()
            ),
        ),
        (None, _) => Outcome::new(
            "wrong-secret",
            Status::Fail,
            format!("{op} with canary secret values was killed by a signal"),
        ),
    }
}

/// An operation the protocol does not have must fail.
async fn unknown_operation(inputs: &Inputs, source: &ExternalConfig) -> Outcome {
    const NAME: &str = "stowage-check-unknown-operation";
    match raw_run(source, &inputs.ctx, NAME, inputs.timeout).await {
        Err(e) => Outcome::new("unknown-operation", Status::Fail, e),
        Ok(raw) => match raw.code {
            Some(0) => Outcome::new(
                "unknown-operation",
                Status::Fail,
                format!(
                    "operation {NAME:?} exited 0; exit with {} (Unsupported) for an operation \
                     you do not know, so a newer runner's request is never taken for done",
                    ErrorKind::Unsupported.exit_code()
                ),
            ),
            Some(code) => Outcome::new(
                "unknown-operation",
                Status::Pass,
                format!("operation {NAME:?} was refused (exit {code})"),
            ),
            None => Outcome::new(
                "unknown-operation",
                Status::Pass,
                format!("operation {NAME:?} was refused (killed by a signal)"),
            ),
        },
    }
}

/// Inspect the destination, then restore the backup into it with the conformance kit.
async fn restore_checks(
    inputs: &Inputs,
    source: &ExternalConfig,
    artifact: &[u8],
    facts: std::collections::BTreeMap<String, String>,
) -> Vec<Outcome> {
    let Some(restore) = &inputs.restore_config else {
        let why = "no --restore-config given";
        return vec![
            Outcome::new("inspect", Status::Skip, why),
            Outcome::new("round-trip", Status::Skip, why),
        ];
    };
    if !inputs.resolved.capabilities.restore {
        let why = "spec.capabilities.restore is false";
        return vec![
            Outcome::new("inspect", Status::Skip, why),
            Outcome::new("round-trip", Status::Skip, why),
        ];
    }
    let destination = inputs.target(restore);
    let request = RestoreRequest {
        facts,
        into: None,
        replace: false,
    };
    let inspect = match within(
        inputs.timeout,
        ExternalPlugin::inspect_destination(&destination, &inputs.ctx, &request),
    )
    .await
    {
        Ok(report) => Outcome::new(
            "inspect",
            Status::Pass,
            format!(
                "reported holdsData: {} and a description",
                report.holds_data
            ),
        )
        .notes([report.description]),
        Err(e) => Outcome::new("inspect", Status::Fail, e.to_string()),
    };
    if inspect.status == Status::Fail || artifact.is_empty() {
        return vec![
            inspect,
            Outcome::new(
                "round-trip",
                Status::Skip,
                "needs a backup and an inspect that work",
            ),
        ];
    }
    let round_trip = within(inputs.timeout * 4, async {
        Ok(
            stowage_plugin_sdk::conformance::check_round_trip::<ExternalPlugin, _, _>(
                source,
                &destination,
                &inputs.ctx,
                &request,
                || async { Ok(()) },
            )
            .await,
        )
    })
    .await;
    let round_trip = match round_trip {
        Ok(Ok(())) => Outcome::new(
            "round-trip",
            Status::Pass,
            "backed up and restored: the destination was empty before and holds data after",
        )
        .notes([
            "the restored data itself is not compared here; compare it in your plugin's own tests"
                .to_owned(),
        ]),
        Ok(Err(problems)) => Outcome::new(
            "round-trip",
            Status::Fail,
            format!("{} problems", problems.len()),
        )
        .notes(problems),
        Err(e) => Outcome::new("round-trip", Status::Fail, e.to_string()),
    };
    vec![inspect, round_trip]
}

async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        // Dropping the future kills the plugin's process (the runner starts it with
        // kill_on_drop).
        Err(_) => Err(PluginError::Timeout(format!(
            "the plugin did not finish within {}s (--timeout-seconds)",
            limit.as_secs()
        ))),
    }
}

/// A distinctive value no plugin prints by chance.
fn canary(index: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(index);
    hasher.write_u32(std::process::id());
    format!("stowage-canary-{:016x}-{index}", hasher.finish())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What one plugin process printed, unredacted, and how it ended.
struct Raw {
    operation: String,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    report: Vec<u8>,
}

/// Run one operation of the plugin as the runner would, keeping everything it prints.
/// Its stdin is empty.
async fn raw_run(
    source: &ExternalConfig,
    ctx: &RunContext,
    operation: &str,
    limit: Duration,
) -> Result<Raw, String> {
    let dir = tempfile::Builder::new()
        .prefix("stowage-plugin-check-")
        .tempdir()
        .map_err(|e| format!("cannot create a report directory: {e}"))?;
    let report = dir.path().join("report.json");
    let invocation = Invocation::new(source, ctx, operation, None, &report)
        .map_err(|e| ctx.secrets.redactor().redact(&e.to_string()))?;
    let mut command = tokio::process::Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .env_clear()
        .envs(invocation.env.iter().map(|(n, v)| (n, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in &invocation.secret_env {
        command.env(name, value.expose());
    }
    let run = async {
        let child = stowage_plugin_sdk::tool::spawn_when_not_busy(&mut command).await?;
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(limit, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
            return Err(format!(
                "cannot start {:?}: {e}; another process still held it open for writing; \
                 close it before checking the plugin",
                invocation.program
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot start {:?}: {e}", invocation.program)),
        Err(_) => {
            return Err(format!(
                "{operation} did not finish within {}s (--timeout-seconds)",
                limit.as_secs()
            ));
        }
    };
    let report = std::fs::read(&report).unwrap_or_default();
    Ok(Raw {
        operation: operation.to_owned(),
        code: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_flag_names_secret_and_key_and_may_read_a_file() {
        let (reference, value) = parse_secret("redis/password=a=b").unwrap();
        assert_eq!(reference, SecretKeyRef::new("redis", "password"));
        assert_eq!(value.expose(), "a=b");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let (_, value) = parse_secret(&format!("redis/password=@{}", file.display())).unwrap();
        assert_eq!(value.expose(), "from-file");

        for bad in ["redis-password=x", "nopair", "/key=hidden-value", "name/=v"] {
            let error = format!("{:#}", parse_secret(bad).unwrap_err());
            assert!(error.contains("--secret"), "{bad}: {error}");
            assert!(!error.contains("hidden-value"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_run_with_wrong_secrets_must_fail_with_an_error_kind() {
        let raw = |code| Raw {
            operation: "probe".into(),
            code,
            stdout: Vec::new(),
            stderr: Vec::new(),
            report: Vec::new(),
        };
        let cases = [
            (Some(13), Status::Pass, "Unauthorized"),
            (Some(12), Status::Pass, "Unreachable"),
            (Some(0), Status::Fail, "succeeded"),
            (Some(1), Status::Fail, "no error kind"),
            (None, Status::Fail, "signal"),
        ];
        for (code, status, says) in cases {
            let outcome = wrong_secret(&raw(code));
            assert_eq!(outcome.status, status, "{code:?}: {outcome:?}");
            assert!(outcome.summary.contains(says), "{code:?}: {outcome:?}");
        }
    }

    #[test]
    fn canaries_differ_and_are_found_in_bytes() {
        let (a, b) = (canary(0), canary(1));
        assert_ne!(a, b);
        assert!(contains(format!("x {a} y").as_bytes(), a.as_bytes()));
        assert!(!contains(b"nothing", a.as_bytes()));
        assert!(!contains(b"nothing", b""));
    }

    #[test]
    fn the_summary_counts_each_status() {
        let text = render(&[
            Outcome::new("probe", Status::Pass, "ok"),
            Outcome::new("secret-canary", Status::Fail, "leak").notes(["in stderr".into()]),
            Outcome::new("inspect", Status::Skip, "no --restore-config"),
        ]);
        assert!(text.contains("FAIL  secret-canary  leak"), "{text}");
        assert!(text.contains("- in stderr"), "{text}");
        assert!(
            text.ends_with("3 checks: 1 passed, 1 failed, 1 skipped\n"),
            "{text}"
        );
    }
}
