//! Driving a service's own tool (`pg_dump`, `mariadb-dump`, `redis-cli`...) from a Tool
//! plugin: spawn it with secrets in its environment only (never in argv), stream its stdout
//! into the [`ArtifactSink`] (or an [`ArtifactSource`] into its stdin), keep the last part
//! of its stderr redacted for the error message, classify a failure through the plugin's
//! own rules, enforce a timeout, and kill the child whenever the run is cancelled.
//!
//! ```ignore
//! let redactor = ctx.secrets.redactor();
//! let out = ToolCommand::new("pg_dump")
//!     .args(["--format=custom", "--host", &config.host])
//!     .secret_env("PGPASSWORD", ctx.secret(&config.password_secret_ref)?)
//!     .timeout(Duration::from_secs(3600))
//!     .run_to_sink(sink, &redactor, classify_pg_error)
//!     .await?;
//! ```

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::{ArtifactSink, ArtifactSource, PluginError, Redactor, SECRET_ENV_PREFIX, SecretValue};

/// Bytes of stderr (its end) kept for error messages by default.
pub const DEFAULT_STDERR_LIMIT: usize = 64 * 1024;
/// Bytes of stdout kept by [`ToolCommand::run`] and [`ToolCommand::run_from_source`].
pub const STDOUT_LIMIT: usize = 64 * 1024;

/// How a tool ended when it failed; handed to the plugin's classifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolFailure {
    /// The program's name as given to [`ToolCommand::new`].
    pub program: String,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// The end of its stderr (at most the configured limit), secret values redacted.
    pub stderr: String,
}

impl ToolFailure {
    /// A one-line summary: `pg_dump exited with code 1: <last stderr line(s)>`.
    pub fn summary(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "failed".to_owned(),
        };
        let stderr = self.stderr.trim();
        if stderr.is_empty() {
            format!("{} {how} without an error message", self.program)
        } else {
            format!("{} {how}: {stderr}", self.program)
        }
    }
}

/// The default classifier: every failure is [`PluginError::ToolFailed`] with the summary.
pub fn tool_failed(failure: &ToolFailure) -> PluginError {
    PluginError::ToolFailed(failure.summary())
}

/// What a successful tool run left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolOutput {
    /// Bytes streamed: stdout into the sink, or the source into stdin.
    pub bytes: u64,
    /// Its stdout (first [`STDOUT_LIMIT`] bytes), redacted; empty for `run_to_sink`.
    pub stdout: String,
    /// The end of its stderr, redacted (warnings a plugin may want to log).
    pub stderr: String,
}

/// A tool invocation. Secret values go only into the child's environment.
#[derive(Debug)]
pub struct ToolCommand {
    program: String,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    secret_env: Vec<(String, SecretValue)>,
    timeout: Option<Duration>,
    stderr_limit: usize,
}

impl ToolCommand {
    /// A command running `program` (looked up in `PATH`).
    pub fn new(program: impl Into<String>) -> Self {
        ToolCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            secret_env: Vec::new(),
            timeout: None,
            stderr_limit: DEFAULT_STDERR_LIMIT,
        }
    }

    /// Add one argument. Never pass a secret value here: argv is visible to every process
    /// on the node; use [`ToolCommand::secret_env`].
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Add arguments (never secret values).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set a non-secret environment variable of the child.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Set an environment variable of the child to a secret value (e.g. `PGPASSWORD`).
    pub fn secret_env(mut self, name: impl Into<String>, value: &SecretValue) -> Self {
        self.secret_env.push((name.into(), value.clone()));
        self
    }

    /// Kill the tool and fail with [`PluginError::Timeout`] after `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Keep at most `bytes` of the end of stderr (default [`DEFAULT_STDERR_LIMIT`]).
    pub fn stderr_limit(mut self, bytes: usize) -> Self {
        self.stderr_limit = bytes.max(1);
        self
    }

    fn spawn(&self, stdin: Stdio, stdout: Stdio) -> Result<Child, PluginError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The runner's own secret variables are not the tool's business.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with(SECRET_ENV_PREFIX) {
                command.env_remove(name);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        for (name, value) in &self.secret_env {
            command.env(name, value.expose());
        }
        command.spawn().map_err(|e| {
            PluginError::ToolFailed(format!(
                "cannot start {:?}: {e}; the Job's image must contain it (set spec.job.image to \
                 an image that has it)",
                self.program
            ))
        })
    }

    async fn with_timeout<T>(
        &self,
        fut: impl Future<Output = Result<T, PluginError>>,
    ) -> Result<T, PluginError> {
        match self.timeout {
            None => fut.await,
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                // Dropping the future drops the child, which kills it (kill_on_drop).
                Err(_) => Err(PluginError::Timeout(format!(
                    "{} did not finish within {}s and was killed",
                    self.program,
                    limit.as_secs()
                ))),
            },
        }
    }

    fn failure(&self, status: ExitStatus, stderr: &str) -> ToolFailure {
        use std::os::unix::process::ExitStatusExt;
        ToolFailure {
            program: self.program.clone(),
            code: status.code(),
            signal: status.signal(),
            stderr: stderr.to_owned(),
        }
    }

    /// Run the tool, streaming its stdout into `sink`. A non-zero exit goes through
    /// `classify` (see [`tool_failed`]); every text in the result is redacted.
    pub async fn run_to_sink(
        self,
        sink: &mut ArtifactSink<'_>,
        redactor: &Redactor,
        classify: impl Fn(&ToolFailure) -> PluginError,
    ) -> Result<ToolOutput, PluginError> {
        let fut = async {
            let mut child = self.spawn(Stdio::null(), Stdio::piped())?;
            let mut stdout = take(child.stdout.take(), "stdout")?;
            let stderr = take(child.stderr.take(), "stderr")?;
            let copy = async {
                let n = tokio::io::copy(&mut stdout, sink).await?;
                sink.flush().await?;
                Ok::<u64, std::io::Error>(n)
            };
            let (copied, stderr) = tokio::join!(copy, read_tail(stderr, self.stderr_limit));
            let stderr = redactor.redact(&stderr);
            let bytes = match copied {
                Ok(n) => n,
                Err(e) => {
                    // Writing the artifact failed: stop the tool (drop kills it).
                    drop(child);
                    return Err(PluginError::Io(std::io::Error::new(
                        e.kind(),
                        format!("writing the output of {} failed: {e}", self.program),
                    )));
                }
            };
            let status = child.wait().await?;
            if !status.success() {
                return Err(classify(&self.failure(status, &stderr)));
            }
            Ok(ToolOutput {
                bytes,
                stdout: String::new(),
                stderr,
            })
        };
        self.with_timeout(fut).await
    }

    /// Run the tool, feeding `source` into its stdin (a restore).
    pub async fn run_from_source(
        self,
        source: &mut ArtifactSource<'_>,
        redactor: &Redactor,
        classify: impl Fn(&ToolFailure) -> PluginError,
    ) -> Result<ToolOutput, PluginError> {
        let fut = async {
            let mut child = self.spawn(Stdio::piped(), Stdio::piped())?;
            let mut stdin = take(child.stdin.take(), "stdin")?;
            let stdout = take(child.stdout.take(), "stdout")?;
            let stderr = take(child.stderr.take(), "stderr")?;
            let feed = async {
                let n = tokio::io::copy(source, &mut stdin).await;
                // Close stdin so the tool sees the end of the input.
                let _ = stdin.shutdown().await;
                drop(stdin);
                n
            };
            let (fed, stdout, stderr) = tokio::join!(
                feed,
                read_head(stdout, STDOUT_LIMIT),
                read_tail(stderr, self.stderr_limit)
            );
            let stderr = redactor.redact(&stderr);
            let status = child.wait().await?;
            if !status.success() {
                // The tool's own failure explains a broken pipe on its stdin.
                return Err(classify(&self.failure(status, &stderr)));
            }
            let bytes = fed.map_err(|e| {
                PluginError::Io(std::io::Error::new(
                    e.kind(),
                    format!("feeding the artifact to {} failed: {e}", self.program),
                ))
            })?;
            Ok(ToolOutput {
                bytes,
                stdout: redactor.redact(&stdout),
                stderr,
            })
        };
        self.with_timeout(fut).await
    }

    /// Run the tool with no input and capture its stdout (e.g. a probe's version query).
    pub async fn run(
        self,
        redactor: &Redactor,
        classify: impl Fn(&ToolFailure) -> PluginError,
    ) -> Result<ToolOutput, PluginError> {
        let fut = async {
            let mut child = self.spawn(Stdio::null(), Stdio::piped())?;
            let stdout = take(child.stdout.take(), "stdout")?;
            let stderr = take(child.stderr.take(), "stderr")?;
            let (stdout, stderr) = tokio::join!(
                read_head(stdout, STDOUT_LIMIT),
                read_tail(stderr, self.stderr_limit)
            );
            let stderr = redactor.redact(&stderr);
            let status = child.wait().await?;
            if !status.success() {
                return Err(classify(&self.failure(status, &stderr)));
            }
            Ok(ToolOutput {
                bytes: stdout.len() as u64,
                stdout: redactor.redact(&stdout),
                stderr,
            })
        };
        self.with_timeout(fut).await
    }
}

fn take<T>(pipe: Option<T>, name: &str) -> Result<T, PluginError> {
    pipe.ok_or_else(|| PluginError::Internal(format!("the tool's {name} was not captured")))
}

/// Read a stream to its end, keeping only its last `limit` bytes (as lossy UTF-8).
async fn read_tail(mut reader: impl AsyncRead + Unpin, limit: usize) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut cut = false;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * limit {
                    kept.drain(..kept.len() - limit);
                    cut = true;
                }
            }
        }
    }
    if kept.len() > limit {
        kept.drain(..kept.len() - limit);
        cut = true;
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    if cut { format!("…{text}") } else { text }
}

/// Read a stream to its end, keeping only its first `limit` bytes (as lossy UTF-8).
async fn read_head(mut reader: impl AsyncRead + Unpin, limit: usize) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn secret() -> SecretValue {
        SecretValue::new("hunter2-secret")
    }

    fn redactor() -> Redactor {
        Redactor::new(["hunter2-secret".to_owned()])
    }

    #[tokio::test]
    async fn stdout_streams_into_the_sink_and_secrets_reach_only_the_env() {
        let mut out = Vec::new();
        let mut sink = ArtifactSink::new(&mut out);
        let result = ToolCommand::new("sh")
            .args([
                "-c",
                "test \"$TOKEN\" = hunter2-secret && head -c 300000 /dev/zero && printf end",
            ])
            .secret_env("TOKEN", &secret())
            .run_to_sink(&mut sink, &redactor(), tool_failed)
            .await
            .unwrap();
        assert_eq!(result.bytes, 300_003);
        drop(sink);
        assert_eq!(out.len(), 300_003);
        assert!(out.ends_with(b"end"));
    }

    #[tokio::test]
    async fn a_failure_is_classified_with_the_redacted_end_of_stderr() {
        let mut out = Vec::new();
        let mut sink = ArtifactSink::new(&mut out);
        let script = "head -c 200000 /dev/zero | tr '\\0' x >&2; echo >&2; \
                      echo \"FATAL: password authentication failed ($TOKEN)\" >&2; exit 3";
        let err = ToolCommand::new("sh")
            .args(["-c", script])
            .secret_env("TOKEN", &secret())
            .stderr_limit(1000)
            .run_to_sink(&mut sink, &redactor(), |failure| {
                assert_eq!(failure.code, Some(3));
                assert!(
                    failure.stderr.len() <= 1000 + "…".len(),
                    "{}",
                    failure.stderr.len()
                );
                if failure.stderr.contains("authentication failed") {
                    PluginError::Unauthorized(failure.summary())
                } else {
                    tool_failed(failure)
                }
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
        let text = err.to_string();
        assert!(text.starts_with("sh exited with code 3: …x"), "{text}");
        assert!(text.contains("(<redacted>)"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_tool() {
        let mut out = Vec::new();
        let mut sink = ArtifactSink::new(&mut out);
        let err = ToolCommand::new("sh")
            .args(["-c", "echo $$; exec sleep 600"])
            .timeout(Duration::from_millis(500))
            .run_to_sink(&mut sink, &redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        drop(sink);
        let pid: u32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
        // The child was killed: it is gone, or a zombie waiting to be reaped.
        for _ in 0..100 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return,
                Ok(stat) if stat.split(' ').nth(2) == Some("Z") => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("process {pid} still runs after the timeout");
    }

    #[tokio::test]
    async fn a_restore_feeds_the_source_into_stdin() {
        let data = vec![b'a'; 1_000_000];
        let mut source = ArtifactSource::new(&data[..]);
        let out = ToolCommand::new("wc")
            .arg("-c")
            .run_from_source(&mut source, &redactor(), tool_failed)
            .await
            .unwrap();
        assert_eq!(out.bytes, 1_000_000);
        assert_eq!(out.stdout.trim(), "1000000");

        // A tool that stops reading and fails reports its own failure, not a broken pipe.
        let mut source = ArtifactSource::new(&data[..]);
        let err = ToolCommand::new("sh")
            .args([
                "-c",
                "head -c 10 >/dev/null; echo 'ERROR: relation exists' >&2; exit 1",
            ])
            .run_from_source(&mut source, &redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ToolFailed);
        assert!(err.to_string().contains("relation exists"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_program_names_it_and_the_fix() {
        let err = ToolCommand::new("no-such-tool-stowage")
            .run(&redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ToolFailed);
        let text = err.to_string();
        assert!(
            text.contains("no-such-tool-stowage") && text.contains("spec.job.image"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn run_captures_stdout_for_probes() {
        let out = ToolCommand::new("sh")
            .args(["-c", "echo 'PostgreSQL 17.2'; echo warn >&2"])
            .run(&redactor(), tool_failed)
            .await
            .unwrap();
        assert_eq!(out.stdout.trim(), "PostgreSQL 17.2");
        assert_eq!(out.stderr.trim(), "warn");
    }
}
