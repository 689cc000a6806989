//! The fixture's error type.

/// Why the test environment could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    /// Starting the control plane or the node agent failed (the message says which and
    /// where its logs are).
    #[error("test cluster did not start: {0}")]
    Startup(String),
    /// A command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or the spawn error.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The kubeconfig could not be turned into a client.
    #[error("building a client from the test kubeconfig: {0}")]
    Client(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// A condition did not become true in time.
    #[error("timed out after {seconds}s waiting for {what}; last observation: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The guard timeout.
        seconds: u64,
        /// The last thing seen, for the failure message.
        last: String,
    },
}
