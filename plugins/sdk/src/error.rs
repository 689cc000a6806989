//! The plugin error type, its kinds, and field-level validation errors.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem with one field of a plugin config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field relative to the plugin config, in `kubectl explain` form
    /// (e.g. `database`, `headers[0].name`). The controller prefixes `spec.<plugin>.`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A non-empty list of field errors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Errors with a single entry.
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationErrors(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// Add an error.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `Ok(())` when empty, otherwise `Err(self)`.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The same errors with every field path prefixed by `prefix.`.
    pub fn prefixed(self, prefix: &str) -> Self {
        ValidationErrors(
            self.0
                .into_iter()
                .map(|e| FieldError {
                    field: format!("{prefix}.{}", e.field),
                    message: e.message,
                })
                .collect(),
        )
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// The kind of a [`PluginError`]: a stable condition reason and a process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The config is invalid in a way the schema could not express.
    InvalidConfig,
    /// Something named in the config does not exist (database, URL path, secret key).
    NotFound,
    /// The service cannot be reached (DNS, refused connection, no route).
    Unreachable,
    /// The service rejected the credentials.
    Unauthorized,
    /// The service answered with an error.
    RemoteError,
    /// The operation did not finish in time.
    Timeout,
    /// Reading or writing local data failed (disk full, permissions).
    IoError,
    /// The plugin does not support the operation or the server's version.
    Unsupported,
    /// The service's tool (e.g. `pg_dump`) failed for a reason not classified above.
    ToolFailed,
    /// A bug or an unexpected state in stowage itself.
    Internal,
    /// An artifact's bytes do not match the size and SHA-256 its sidecar recorded: it is
    /// corrupt or was changed, and is not restored.
    ChecksumMismatch,
    /// A restore destination already holds data and the restore was not asked to
    /// replace it (`mode: IntoEmpty`).
    DestinationNotEmpty,
}

impl ErrorKind {
    /// Every kind, in exit-code order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::InvalidConfig,
        ErrorKind::NotFound,
        ErrorKind::Unreachable,
        ErrorKind::Unauthorized,
        ErrorKind::RemoteError,
        ErrorKind::Timeout,
        ErrorKind::IoError,
        ErrorKind::Unsupported,
        ErrorKind::ToolFailed,
        ErrorKind::Internal,
        ErrorKind::ChecksumMismatch,
        ErrorKind::DestinationNotEmpty,
    ];

    /// The condition reason (CamelCase, stable; part of the API).
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "InvalidConfig",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Unreachable => "Unreachable",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::RemoteError => "RemoteError",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::IoError => "IoError",
            ErrorKind::Unsupported => "Unsupported",
            ErrorKind::ToolFailed => "ToolFailed",
            ErrorKind::Internal => "Internal",
            ErrorKind::ChecksumMismatch => "ChecksumMismatch",
            ErrorKind::DestinationNotEmpty => "DestinationNotEmpty",
        }
    }

    /// The runner's exit code for this kind (stable; 10 to 21, so shells' 1/2 and
    /// signals' 128+n stay distinguishable).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::InvalidConfig => 10,
            ErrorKind::NotFound => 11,
            ErrorKind::Unreachable => 12,
            ErrorKind::Unauthorized => 13,
            ErrorKind::RemoteError => 14,
            ErrorKind::Timeout => 15,
            ErrorKind::IoError => 16,
            ErrorKind::Unsupported => 17,
            ErrorKind::ToolFailed => 18,
            ErrorKind::Internal => 19,
            ErrorKind::ChecksumMismatch => 20,
            ErrorKind::DestinationNotEmpty => 21,
        }
    }

    /// The kind a runner exit code stands for, if any.
    pub fn from_exit_code(code: i32) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.exit_code() == code)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// An error from a plugin operation. Messages are for humans, name the thing at fault
/// and, where possible, the fix; they never contain secret values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The config is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(ValidationErrors),
    /// Something named in the config does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The service cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The service rejected the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The service answered with an error.
    #[error("{message}")]
    Remote {
        /// The protocol status (e.g. an HTTP status code), if the protocol has one.
        status: Option<u16>,
        /// What the service said.
        message: String,
    },
    /// The operation did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// Local I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The operation or the server's version is not supported.
    #[error("{0}")]
    Unsupported(String),
    /// The service's tool failed.
    #[error("{0}")]
    ToolFailed(String),
    /// A bug or unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PluginError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PluginError::InvalidConfig(_) => ErrorKind::InvalidConfig,
            PluginError::NotFound(_) => ErrorKind::NotFound,
            PluginError::Unreachable(_) => ErrorKind::Unreachable,
            PluginError::Unauthorized(_) => ErrorKind::Unauthorized,
            PluginError::Remote { .. } => ErrorKind::RemoteError,
            PluginError::Timeout(_) => ErrorKind::Timeout,
            PluginError::Io(_) => ErrorKind::IoError,
            PluginError::Unsupported(_) => ErrorKind::Unsupported,
            PluginError::ToolFailed(_) => ErrorKind::ToolFailed,
            PluginError::Internal(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert!(
                seen.insert(kind.exit_code()),
                "duplicate exit code for {kind}"
            );
            assert_eq!(ErrorKind::from_exit_code(kind.exit_code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_exit_code(1), None);
    }

    #[test]
    fn kind_serializes_as_its_reason() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.reason().into()));
        }
    }

    #[test]
    fn validation_errors_name_every_field() {
        let mut errors = ValidationErrors::default();
        errors.push("port", "must be 1-65535");
        errors.push("database", "must not be empty");
        let text = errors.prefixed("spec.postgres").to_string();
        assert_eq!(
            text,
            "spec.postgres.port: must be 1-65535; spec.postgres.database: must not be empty"
        );
    }
}
