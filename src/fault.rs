//! Fault injection for the fault suites (`tests/runner_faults.rs`,
//! `tests/operator_faults.rs`): named points where a test can stop a process dead.
//!
//! Points: the runner's `backup-after-create`, `backup-before-commit`,
//! `commit-after-sidecar` (between the sidecar and the artifact), `backup-after-commit`;
//! the operator's `schedule-after-create`, `backup-now-after-create` and
//! `probe-after-create` (a Job created, its status not written yet).

/// Stop dead here when this is a debug build (the one tests run) and `STOWAGE_FAULT` holds
/// `name` (comma-separated list): `abort`, so no destructor or cleanup runs, like a
/// SIGKILL. Compiled to nothing in release builds, and free when the variable is unset.
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("STOWAGE_FAULT").is_ok_and(|v| v.split(',').any(|p| p == name)) {
        eprintln!("fault injection: stopping dead at {name}");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
