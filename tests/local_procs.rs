//! `deploy/local/procs.sh`: how up.sh, node.sh and down.sh tell whether a process they
//! started is alive, run in bash against real processes.

use std::path::Path;
use std::process::Command;

use stowage_testenv::repo_root;

/// Runs `script` in bash with procs.sh sourced, `STATE` set to a fresh dir and `PIDS` to
/// its `pids/`; returns stdout, failing the test on a non-zero exit. `STATE` reaches the
/// script through the environment only, so no process's command line names it unless it
/// is passed as an argument.
fn run(script: &str, state: &Path) -> String {
    let procs = repo_root().join("deploy/local/procs.sh");
    let full = format!(
        "set -euo pipefail\nsource {}\nmkdir -p \"$PIDS\"\n{script}",
        procs.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(full)
        .env("STATE", state)
        .env("PIDS", state.join("pids"))
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "script failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn state_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A process still between fork and exec shows the starting shell's command line. Its
/// child here blocks in that state (opening a FIFO for writing, before the exec) until a
/// reader opens the FIFO 0.3 s later, the way a loaded machine delays a kubelet's exec.
/// One look at that moment said "exited"; it must say alive once the exec is done.
#[test]
fn a_process_still_starting_is_alive_not_exited() {
    let state = state_dir();
    let out = run(
        r#"
mkfifo "$STATE/fifo"
touch "$STATE/data"
tail -f "$STATE/data" >>"$STATE/fifo" 2>/dev/null &
printf '%s\n' "$!" >"$PIDS/tail.pid"
( sleep 0.3; exec 4<"$STATE/fifo"; sleep 5 ) >/dev/null 2>&1 &
reader=$!
if pid="$(pid_alive tail)"; then echo "alive $pid"; else echo "exited: $(how_ended tail)"; fi
kill "$(cat "$PIDS/tail.pid")" "$reader" 2>/dev/null || true
"#,
        state.path(),
    );
    assert!(out.starts_with("alive "), "{out}");
}

/// A process that exited is not alive, at once (it is not waited on for the settle
/// time), and the message says how it ended.
#[test]
fn an_exited_process_is_reported_with_its_exit_status() {
    let state = state_dir();
    let out = run(
        r#"
bash -c 'exit 3' "$STATE/x" &
printf '%s\n' "$!" >"$PIDS/three.pid"
sleep 0.5
start=$SECONDS
if pid_alive three >/dev/null; then echo alive; else echo "exited: $(how_ended three)"; fi
echo "took $((SECONDS - start))"
"#,
        state.path(),
    );
    assert!(
        out.contains("exited: pid ") && out.contains("exited with status 3"),
        "{out}"
    );
    assert!(out.contains("took 0"), "{out}");
}

#[test]
fn a_killed_process_is_reported_with_its_signal() {
    let state = state_dir();
    let out = run(
        r#"
tail -f /dev/null "$STATE/x" 2>/dev/null &
printf '%s\n' "$!" >"$PIDS/tail.pid"
pid_alive tail >/dev/null && echo "alive first"
kill -KILL "$(cat "$PIDS/tail.pid")"
sleep 0.3
if pid_alive tail >/dev/null; then echo "alive after"; else echo "exited: $(how_ended tail)"; fi
"#,
        state.path(),
    );
    assert!(out.contains("alive first"), "{out}");
    assert!(out.contains("killed by signal KILL"), "{out}");
}

/// The guard against pid reuse: a live process whose command line does not name the
/// state dir (here, this test's own shell) is not ours, after the settle time.
#[test]
fn a_live_process_of_another_run_is_not_ours() {
    let state = state_dir();
    let out = run(
        r#"
printf '%s\n' "$$" >"$PIDS/other.pid"
if pid_alive other >/dev/null; then echo alive; else echo "not ours: $(how_ended other)"; fi
"#,
        state.path(),
    );
    assert!(
        out.contains("not ours: pid ") && out.contains("now runs something else"),
        "{out}"
    );
}

/// A pid file with no process behind it, or with no number, is not alive.
#[test]
fn a_missing_process_or_a_bad_pid_file_is_not_alive() {
    let state = state_dir();
    let out = run(
        r#"
printf 'not-a-pid\n' >"$PIDS/bad.pid"
pid_alive bad >/dev/null && echo "bad alive" || echo "bad not alive"
pid_alive none >/dev/null && echo "none alive" || echo "none not alive: $(how_ended none)"
"#,
        state.path(),
    );
    assert!(out.contains("bad not alive"), "{out}");
    assert!(out.contains("none not alive: it has no pid file"), "{out}");
}
