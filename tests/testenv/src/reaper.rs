//! Cleanup that survives however the test process ends: a small detached shell process
//! waits for the test process to exit, then stops the node agent it started (SIGTERM, so
//! the agent kills its containers; SIGKILL after 15 s), runs `deploy/local/down.sh` and
//! removes the temporary state dir (kept when `STOWAGE_TEST_KEEP=1`).
//!
//! The Rust test harness never runs destructors of statics and may exit through
//! `std::process::exit` or a signal, so cleanup in-process cannot be relied on.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::TestEnvError;

const SCRIPT: &str = r#"
test_pid="$1"; state="$2"; repo="$3"; keep="$4"
while kill -0 "$test_pid" 2>/dev/null; do sleep 1; done
agent_pid="$(cat "$state/node-agent.pid" 2>/dev/null)"
if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
  kill -TERM "$agent_pid" 2>/dev/null
  i=0
  while kill -0 "$agent_pid" 2>/dev/null && [ "$i" -lt 150 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$agent_pid" 2>/dev/null
fi
bash "$repo/deploy/local/down.sh" "$state" >>"$state/logs/reaper.log" 2>&1
if [ "$keep" != 1 ]; then rm -rf "$state"; fi
"#;

/// Starts the watchdog for the current process; it stops the agent named by
/// `<state_dir>/node-agent.pid` (written by the fixture when it starts one).
pub fn spawn(state_dir: &Path, repo: &Path) -> Result<(), TestEnvError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg("stowage-test-reaper")
        .arg(std::process::id().to_string())
        .arg(state_dir)
        .arg(repo)
        .arg(std::env::var("STOWAGE_TEST_KEEP").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own session: a Ctrl-C aimed at the test run must not kill the cleanup.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
        .map_err(|e| TestEnvError::Startup(format!("starting the cleanup watchdog: {e}")))?;
    Ok(())
}
