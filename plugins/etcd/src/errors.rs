//! etcd client errors as typed plugin errors, with the member named and the fix.

use std::error::Error as _;

use etcd_client::Error;
use stowage_plugin_sdk::{PluginError, RunContext, ValidationErrors};

use crate::EtcdConfig;

/// The error and every error it wraps, as one line (tonic's transport error says only
/// "transport error" at the top).
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// `error` from talking to `endpoint`, typed, redacted, with what to do.
pub fn classify(
    error: &Error,
    endpoint: &str,
    config: &EtcdConfig,
    ctx: &RunContext,
) -> PluginError {
    let redactor = ctx.secrets.redactor();
    let said = redactor.redact(&chain(error));
    let lower = said.to_ascii_lowercase();
    let tls_problem = ["certificate", "tls", "handshake", "alert", "unknownissuer"]
        .iter()
        .any(|w| lower.contains(w));
    let tls_error = || {
        PluginError::Unreachable(format!(
            "cannot establish TLS with etcd at {endpoint}: {said}; check spec.etcd.tls (the CA \
             in caSecretRef must have signed the member's certificate, and members with \
             --client-cert-auth need certSecretRef and keySecretRef)"
        ))
    };
    match error {
        Error::InvalidUri(_) | Error::InvalidArgs(_) => PluginError::InvalidConfig(
            ValidationErrors::single("spec.etcd.endpoints", format!("{endpoint}: {said}")),
        ),
        Error::GRpcStatus(_) if tls_problem => tls_error(),
        Error::GRpcStatus(status)
            if status.code() == tonic::Code::Cancelled
                || (status.code() == tonic::Code::Unknown
                    && status.message() == "transport error") =>
        {
            PluginError::Unreachable(format!(
                "the connection to etcd at {endpoint} failed: {said}; if the member requires \
                 client certificates (--client-cert-auth), set spec.etcd.tls.certSecretRef and \
                 keySecretRef"
            ))
        }
        Error::GRpcStatus(status) => {
            let code = status.code();
            let message = redactor.redact(status.message());
            match code {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    PluginError::Unauthorized(format!(
                        "etcd at {endpoint} refused {}: {message}; snapshots need a user with \
                         the root role",
                        user(config)
                    ))
                }
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    if message.contains("authentication failed")
                        || message.contains("user name")
                        || message.contains("invalid auth token") =>
                {
                    PluginError::Unauthorized(format!(
                        "etcd at {endpoint} refused {}: {message}; check spec.etcd.username and \
                         the password in spec.etcd.passwordSecretRef",
                        user(config)
                    ))
                }
                tonic::Code::Unavailable => PluginError::Unreachable(format!(
                    "etcd at {endpoint} is not available: {message}; check the member behind \
                     spec.etcd.endpoints (list every member so another can answer)"
                )),
                tonic::Code::DeadlineExceeded => PluginError::Timeout(format!(
                    "etcd at {endpoint} did not answer in time: {message}; check the member, or \
                     raise spec.etcd.connectTimeoutSeconds"
                )),
                _ => PluginError::Remote {
                    status: None,
                    message: format!("etcd at {endpoint} answered {code:?}: {message}"),
                },
            }
        }
        _ if tls_problem => tls_error(),
        _ if lower.contains("timed out") || lower.contains("timeout") => {
            PluginError::Timeout(format!(
                "etcd at {endpoint} did not answer within {}s: {said}; check spec.etcd.endpoints \
                 and that the member is healthy, or raise spec.etcd.connectTimeoutSeconds",
                config.connect_timeout_seconds
            ))
        }
        _ => PluginError::Unreachable(format!(
            "cannot reach etcd at {endpoint}: {said}; check the address and port in \
             spec.etcd.endpoints and that the member listens there"
        )),
    }
}

fn user(config: &EtcdConfig) -> String {
    match &config.username {
        Some(u) => format!("user {u:?}"),
        None => "an anonymous client (authentication is on: set username and passwordSecretRef)"
            .to_owned(),
    }
}
