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
use tokio::process::{Child, ChildStdin, Command};

use crate::{ArtifactSink, ArtifactSource, PluginError, Redactor, SECRET_ENV_PREFIX, SecretValue};

/// Bytes of stderr (its end) kept for error messages by default.
pub const DEFAULT_STDERR_LIMIT: usize = 64 * 1024;
/// Bytes of stdout kept by [`ToolCommand::run`] and [`ToolCommand::run_from_source`].
pub const STDOUT_LIMIT: usize = 64 * 1024;
/// Capacity asked for the pipe of a tool's stdout in [`ToolCommand::run_to_sink`] (Linux's
/// default is 64 KiB; unprivileged processes may raise it up to
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default). The tool then blocks less often on a
/// full pipe, and the runner wakes up less often to read it.
pub const STDOUT_PIPE_CAPACITY: usize = 1024 * 1024;
/// Bytes read from a tool's stdout at once in [`ToolCommand::run_to_sink`].
const STDOUT_READ_SIZE: usize = 256 * 1024;
/// First pause before starting a program again that was refused with `ETXTBSY`; each
/// further pause doubles.
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(10);
/// How long a start refused with `ETXTBSY` is tried again before it counts as a failure.
const BUSY_WAIT_LIMIT: Duration = Duration::from_secs(2);

/// Start `command`, trying again for up to [`BUSY_WAIT_LIMIT`] while the kernel refuses
/// because the program's file is still open for writing (`ETXTBSY`). That state ends on
/// its own when the writer is a process forked by another thread just as the file was
/// written: the child holds it until its own exec, a moment later. Any other error, or
/// the same one after the limit, is returned as it is.
pub async fn spawn_when_not_busy(command: &mut Command) -> std::io::Result<Child> {
    let mut pause = BUSY_FIRST_PAUSE;
    let mut waited = Duration::ZERO;
    loop {
        match command.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && waited < BUSY_WAIT_LIMIT =>
            {
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(BUSY_WAIT_LIMIT / 4);
            }
            result => return result,
        }
    }
}

/// Where a tool plugin finds its service's tools (`pg_dump`, `mariadb-dump`, ...): a
/// `PATH`-style list of directories, also given to each tool as its `PATH`. Each tool
/// plugin wraps one in its own `Toolbox` with its override variable and its error advice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPath(OsString);

impl SearchPath {
    /// The directories in `override_var` if set (e.g. `STOWAGE_POSTGRES_TOOLS_PATH`),
    /// else the runner's `PATH`, else the usual system directories.
    pub fn from_env(override_var: &str) -> SearchPath {
        let path = std::env::var_os(override_var)
            .filter(|p| !p.is_empty())
            .or_else(|| std::env::var_os("PATH").filter(|p| !p.is_empty()))
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        SearchPath(path)
    }

    /// The given `PATH`-style list of directories.
    pub fn new(path: impl Into<OsString>) -> SearchPath {
        SearchPath(path.into())
    }

    /// The directories, `PATH`-style.
    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        &self.0
    }

    /// The executable `program` in one of the directories, if any.
    pub fn find(&self, program: &str) -> Option<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        std::env::split_paths(&self.0)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(program))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }
}

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
    env_remove: Vec<String>,
    secret_env: Vec<(String, SecretValue)>,
    clear_env: bool,
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
            env_remove: Vec::new(),
            secret_env: Vec::new(),
            clear_env: false,
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

    /// Do not pass the runner's variable `name` on to the child (e.g. a `PGPASSWORD` the
    /// image sets, which would otherwise be used instead of the configured secret).
    /// Variables set with [`ToolCommand::env`] or [`ToolCommand::secret_env`] are still
    /// set, whatever the order of the calls.
    pub fn env_remove(mut self, name: impl Into<String>) -> Self {
        self.env_remove.push(name.into());
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

    /// Start the tool with an empty environment: only the variables given with
    /// [`ToolCommand::env`] and [`ToolCommand::secret_env`] (an external plugin sees no
    /// variable of the runner's).
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Keep at most `bytes` of the end of stderr (default [`DEFAULT_STDERR_LIMIT`]).
    pub fn stderr_limit(mut self, bytes: usize) -> Self {
        self.stderr_limit = bytes.max(1);
        self
    }

    async fn spawn(&self, stdin: Stdio, stdout: Stdio) -> Result<Child, PluginError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.clear_env {
            command.env_clear();
        }
        // The runner's own secret variables are not the tool's business.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with(SECRET_ENV_PREFIX) {
                command.env_remove(name);
            }
        }
        for name in &self.env_remove {
            command.env_remove(name);
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        for (name, value) in &self.secret_env {
            command.env(name, value.expose());
        }
        spawn_when_not_busy(&mut command).await.map_err(|e| {
            let advice = if e.kind() == std::io::ErrorKind::ExecutableFileBusy {
                format!(
                    "another process still held it open for writing after about {}s; \
                     whatever writes it must close it before it is run",
                    BUSY_WAIT_LIMIT.as_secs()
                )
            } else {
                "the Job's image must contain it (set spec.job.image to an image that has it)"
                    .to_owned()
            };
            PluginError::ToolFailed(format!("cannot start {:?}: {e}; {advice}", self.program))
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
    ///
    /// When writing into the sink fails, the tool is killed at once and the write's error
    /// is returned as [`PluginError::Io`] (the tool would otherwise block on its full
    /// stdout pipe until the timeout).
    pub async fn run_to_sink(
        self,
        sink: &mut ArtifactSink<'_>,
        redactor: &Redactor,
        classify: impl Fn(&ToolFailure) -> PluginError,
    ) -> Result<ToolOutput, PluginError> {
        let fut = async {
            let mut child = self.spawn(Stdio::null(), Stdio::piped()).await?;
            let mut stdout = take(child.stdout.take(), "stdout")?;
            enlarge_pipe(&stdout, STDOUT_PIPE_CAPACITY);
            let stderr = take(child.stderr.take(), "stderr")?;
            let tail = read_tail(stderr, self.stderr_limit);
            tokio::pin!(tail);
            let mut stderr_text = None;
            let copied = {
                let copy = async {
                    let n = copy_large(&mut stdout, sink).await?;
                    sink.flush().await?;
                    Ok::<u64, std::io::Error>(n)
                };
                tokio::pin!(copy);
                // Read stderr while copying (the tool must not block on a full stderr
                // pipe), but stop waiting for it as soon as the copy ends.
                loop {
                    tokio::select! {
                        copied = &mut copy => break copied,
                        text = &mut tail, if stderr_text.is_none() => stderr_text = Some(text),
                    }
                }
            };
            let bytes = match copied {
                Ok(n) => n,
                Err(e) => {
                    // Writing the artifact failed: stop the tool now, before it blocks on
                    // its stdout or a grandchild keeps stderr open.
                    let _ = child.start_kill();
                    drop(stdout);
                    let _ = child.wait().await;
                    return Err(PluginError::Io(std::io::Error::new(
                        e.kind(),
                        format!("writing the output of {} failed: {e}", self.program),
                    )));
                }
            };
            let stderr = match stderr_text {
                Some(text) => text,
                None => tail.await,
            };
            let stderr = redactor.redact(&stderr);
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
    ///
    /// The tool sees the end of its input only when the whole source was read. When
    /// reading the source fails (a corrupt or truncated artifact), or the run times out,
    /// the tool is killed *before* its stdin is closed, so a tool that commits on end of
    /// input (`psql --single-transaction`) never commits a partial restore; the source's
    /// error is returned as [`PluginError::Io`].
    pub async fn run_from_source(
        self,
        source: &mut ArtifactSource<'_>,
        redactor: &Redactor,
        classify: impl Fn(&ToolFailure) -> PluginError,
    ) -> Result<ToolOutput, PluginError> {
        let fut = async {
            let mut child = self.spawn(Stdio::piped(), Stdio::piped()).await?;
            let stdin = take(child.stdin.take(), "stdin")?;
            let stdout = take(child.stdout.take(), "stdout")?;
            let stderr = take(child.stderr.take(), "stderr")?;
            // From here on, dropping `running` (a timeout) kills the child before its
            // stdin closes.
            let mut running = Feeding {
                child,
                stdin: Some(stdin),
            };
            let (fed, stdout, stderr) = tokio::join!(
                running.feed(source),
                read_head(stdout, STDOUT_LIMIT),
                read_tail(stderr, self.stderr_limit)
            );
            let stderr = redactor.redact(&stderr);
            let status = running.child.wait().await?;
            let bytes = match fed {
                Fed::All(n) => n,
                Fed::SourceFailed(e) => {
                    let how = match self.failure(status, "") {
                        ToolFailure {
                            signal: Some(signal),
                            ..
                        } => format!(
                            "{} was killed by signal {signal} before the end of its input, so \
                             it did not commit a partial restore",
                            self.program
                        ),
                        ToolFailure {
                            code: Some(code), ..
                        } => format!("{} had already exited with code {code}", self.program),
                        _ => format!("{} was stopped", self.program),
                    };
                    return Err(PluginError::Io(std::io::Error::new(
                        e.kind(),
                        format!("reading the artifact failed: {e}; {how}"),
                    )));
                }
                Fed::ToolStopped(n, e) => {
                    if !status.success() {
                        // The tool's own failure explains a broken pipe on its stdin.
                        return Err(classify(&self.failure(status, &stderr)));
                    }
                    // It exited successfully without reading all of its input.
                    return Err(PluginError::Io(std::io::Error::new(
                        e.kind(),
                        format!(
                            "feeding the artifact to {} failed after {n} bytes: {e}",
                            self.program
                        ),
                    )));
                }
            };
            if !status.success() {
                return Err(classify(&self.failure(status, &stderr)));
            }
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
            let mut child = self.spawn(Stdio::null(), Stdio::piped()).await?;
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

/// A restore tool and its stdin. Dropping it kills the tool first, then closes stdin, so
/// the tool never mistakes an interrupted feed for the end of its input.
struct Feeding {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// How feeding a tool's stdin ended.
enum Fed {
    /// The whole source went in and stdin was closed.
    All(u64),
    /// Reading the source failed; the tool was killed before stdin was closed.
    SourceFailed(std::io::Error),
    /// Writing into the tool failed (it stopped reading) after these bytes.
    ToolStopped(u64, std::io::Error),
}

impl Feeding {
    async fn feed(&mut self, source: &mut ArtifactSource<'_>) -> Fed {
        let Some(stdin) = self.stdin.as_mut() else {
            return Fed::All(0);
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match source.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // Kill and reap the tool before its stdin closes: it must not see a
                    // clean end of input.
                    let _ = self.child.start_kill();
                    let _ = self.child.wait().await;
                    self.stdin = None;
                    return Fed::SourceFailed(e);
                }
            };
            if let Err(e) = stdin.write_all(&buf[..n]).await {
                self.stdin = None;
                return Fed::ToolStopped(total, e);
            }
            total += n as u64;
        }
        // The end of the input: close stdin so the tool sees it.
        let result = stdin.shutdown().await;
        self.stdin = None;
        match result {
            Ok(()) => Fed::All(total),
            Err(e) => Fed::ToolStopped(total, e),
        }
    }
}

impl Drop for Feeding {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            // Interrupted while feeding (timeout, cancellation): SIGKILL is pending before
            // the fields (stdin) are dropped.
            let _ = self.child.start_kill();
        }
    }
}

/// Ask for a pipe of `capacity` bytes (Linux; elsewhere, or when refused, the pipe keeps
/// its size: only a matter of speed).
fn enlarge_pipe(pipe: &impl std::os::fd::AsFd, capacity: usize) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::fcntl::{FcntlArg, fcntl};
        let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
        // Refused above pipe-max-size or the user's pipe quota: the pipe keeps its size.
        let _ = fcntl(pipe.as_fd(), FcntlArg::F_SETPIPE_SZ(capacity));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (pipe, capacity);
}

/// Copy `reader` into `sink` to its end with reads of up to [`STDOUT_READ_SIZE`]
/// (`tokio::io::copy` reads 8 KiB at a time: a syscall and a sink write per 8 KiB).
async fn copy_large(
    reader: &mut (impl AsyncRead + Unpin),
    sink: &mut ArtifactSink<'_>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; STDOUT_READ_SIZE];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        sink.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

fn take<T>(pipe: Option<T>, name: &str) -> Result<T, PluginError> {
    pipe.ok_or_else(|| PluginError::Internal(format!("the tool's {name} was not captured")))
}

/// Read a stream to its end, keeping only its last `limit` bytes (as lossy UTF-8).
///
/// When the beginning was cut, the first kept line is dropped too (it may start inside a
/// secret value, which redaction would then not recognize) and the text starts with `…`.
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
    if !cut {
        return String::from_utf8_lossy(&kept).into_owned();
    }
    // Without a line break the whole tail is one cut line: nothing is safe to keep.
    let first_full_line = kept
        .iter()
        .position(|&b| b == b'\n')
        .map_or(kept.len(), |i| i + 1);
    format!("…{}", String::from_utf8_lossy(&kept[first_full_line..]))
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

    /// A program whose file is still open for writing somewhere (a test that just wrote
    /// it while another thread forked) cannot be executed (`ETXTBSY`); the start is tried
    /// again until the writer lets go.
    #[tokio::test]
    async fn a_program_still_open_for_writing_starts_once_the_writer_closes_it() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool.sh");
        let mut writer = std::fs::File::create(&path).unwrap();
        writer.write_all(b"#!/bin/sh\necho started\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(writer);
        });
        let out = ToolCommand::new(path.to_string_lossy())
            .run(&redactor(), tool_failed)
            .await
            .unwrap();
        closer.join().unwrap();
        assert_eq!(out.stdout.trim(), "started");
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
        assert!(
            text.starts_with("sh exited with code 3: …FATAL: password authentication failed"),
            "{text}"
        );
        assert!(text.contains("(<redacted>)"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn every_text_a_tool_prints_comes_back_redacted() {
        // The tool echoes the secret on stdout and stderr, then succeeds or fails; every
        // way of running it must hand the plugin only redacted text.
        let script = "cat >/dev/null; echo \"out $TOKEN\"; echo \"err $TOKEN\" >&2; exit $FAIL";
        for fail in ["0", "4"] {
            let tool = || {
                ToolCommand::new("sh")
                    .args(["-c", script])
                    .secret_env("TOKEN", &secret())
                    .env("FAIL", fail)
            };
            let run = tool().run(&redactor(), tool_failed).await;
            let mut source = ArtifactSource::new(&b"input"[..]);
            let fed = tool()
                .run_from_source(&mut source, &redactor(), tool_failed)
                .await;
            let mut artifact = Vec::new();
            let mut sink = ArtifactSink::new(&mut artifact);
            // stdout goes into the artifact (the service's data), not into any text.
            let sunk = tool()
                .run_to_sink(&mut sink, &redactor(), tool_failed)
                .await
                .map(|o| ToolOutput {
                    stdout: "out <redacted>".into(),
                    ..o
                });
            for (how, result) in [
                ("run", run),
                ("run_from_source", fed),
                ("run_to_sink", sunk),
            ] {
                let text = match result {
                    Ok(output) => {
                        assert_eq!(fail, "0", "{how}");
                        format!("{} | {}", output.stdout.trim(), output.stderr.trim())
                    }
                    Err(e) => {
                        assert_eq!(fail, "4", "{how}: {e}");
                        e.to_string()
                    }
                };
                assert!(!text.contains("hunter2"), "{how}, exit {fail}: {text}");
                assert!(
                    text.contains("err <redacted>"),
                    "{how}, exit {fail}: {text}"
                );
                if fail == "0" {
                    assert_eq!(text, "out <redacted> | err <redacted>", "{how}");
                }
            }
        }
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

    /// A sink whose writes fail once `limit` bytes went through (a full disk).
    struct FailingSink {
        written: usize,
        limit: usize,
    }

    impl tokio::io::AsyncWrite for FailingSink {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.written >= self.limit {
                return std::task::Poll::Ready(Err(std::io::Error::other("no space left (test)")));
            }
            let n = buf.len().min(self.limit - self.written);
            self.written += n;
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failing_sink_stops_the_tool_with_an_io_error_instead_of_hanging() {
        let mut failing = FailingSink {
            written: 0,
            limit: 1024 * 1024,
        };
        let mut sink = ArtifactSink::new(&mut failing);
        // `yes` never ends by itself: only stopping it ends the run before the timeout.
        let err = ToolCommand::new("yes")
            .timeout(Duration::from_secs(60))
            .run_to_sink(&mut sink, &redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::IoError, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("writing the output of yes failed") && text.contains("no space left"),
            "{text}"
        );
        drop(sink);
        assert_eq!(failing.written, 1024 * 1024);
    }

    /// A source that yields `good` bytes, then fails (a corrupt artifact), or never ends.
    struct BrokenSource {
        good: usize,
        then: Then,
    }

    enum Then {
        Fail,
        Stall,
    }

    impl AsyncRead for BrokenSource {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.good == 0 {
                return match self.then {
                    Then::Fail => std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "corrupt zstd frame (test)",
                    ))),
                    Then::Stall => std::task::Poll::Pending,
                };
            }
            let n = buf.remaining().min(self.good).min(8192);
            buf.put_slice(&vec![b'a'; n]);
            self.good -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A restore tool that commits (writes `marker`) once its stdin ends cleanly.
    fn committing_tool(marker: &std::path::Path) -> ToolCommand {
        ToolCommand::new("sh")
            .args(["-c", "cat >/dev/null; echo committed > \"$MARKER\"; exit 0"])
            .env("MARKER", marker.to_string_lossy())
    }

    fn marker_path(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "stowage-sdk-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[tokio::test]
    async fn a_failing_source_kills_the_tool_before_it_sees_the_end_of_its_input() {
        let marker = marker_path("source-fails");
        let mut broken = BrokenSource {
            good: 256 * 1024,
            then: Then::Fail,
        };
        let mut source = ArtifactSource::new(&mut broken);
        let err = committing_tool(&marker)
            .timeout(Duration::from_secs(60))
            .run_from_source(&mut source, &redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::IoError, "{err}");
        let text = err.to_string();
        assert!(text.contains("corrupt zstd frame"), "{text}");
        assert!(text.contains("killed by signal 9"), "{text}");
        // Give a wrongly surviving tool time to commit before looking.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!marker.exists(), "the tool committed a truncated input");
    }

    #[tokio::test]
    async fn a_restore_timeout_kills_the_tool_before_closing_its_input() {
        let marker = marker_path("source-stalls");
        let mut stalled = BrokenSource {
            good: 64 * 1024,
            then: Then::Stall,
        };
        let mut source = ArtifactSource::new(&mut stalled);
        let err = committing_tool(&marker)
            .timeout(Duration::from_millis(500))
            .run_from_source(&mut source, &redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!marker.exists(), "the tool committed a truncated input");
    }

    #[tokio::test]
    async fn env_remove_drops_inherited_variables_but_not_explicit_ones() {
        assert!(
            std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
            "cargo test sets CARGO_MANIFEST_DIR"
        );
        let out = ToolCommand::new("sh")
            .args([
                "-c",
                "echo \"${CARGO_MANIFEST_DIR-unset} ${STOWAGE_T-unset} ${STOWAGE_U-unset}\"",
            ])
            .env_remove("CARGO_MANIFEST_DIR")
            .env_remove("STOWAGE_T")
            .env("STOWAGE_T", "explicit")
            .env("STOWAGE_U", "set")
            .env_remove("STOWAGE_U")
            .run(&redactor(), tool_failed)
            .await
            .unwrap();
        assert_eq!(out.stdout.trim(), "unset explicit set");
    }

    #[tokio::test]
    async fn a_secret_cut_by_the_stderr_limit_is_dropped_with_its_line() {
        // The kept tail (1000 bytes) starts inside the secret: "r2-secret\n" + 990 bytes.
        let script = "head -c 5000 /dev/zero | tr '\\0' x >&2; printf '%s\\n' \"$TOKEN\" >&2; \
                      head -c 989 /dev/zero | tr '\\0' y >&2; echo >&2; exit 1";
        let err = ToolCommand::new("sh")
            .args(["-c", script])
            .secret_env("TOKEN", &secret())
            .stderr_limit(1000)
            .run(&redactor(), |failure| {
                let ys = "y".repeat(989);
                assert_eq!(failure.stderr, format!("…{ys}\n"));
                tool_failed(failure)
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("2-secret") && !text.contains("xx"), "{text}");
    }

    #[tokio::test]
    async fn a_tail_without_any_line_break_is_dropped_whole() {
        let err = ToolCommand::new("sh")
            .args(["-c", "head -c 5000 /dev/zero | tr '\\0' x >&2; exit 2"])
            .stderr_limit(100)
            .run(&redactor(), tool_failed)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "sh exited with code 2: …");
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
