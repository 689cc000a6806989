//! Turning HTTP statuses and client failures into [`PluginError`]s whose messages name
//! the URL (without credentials or query string), what happened and the fix.

use std::error::Error as StdError;

use reqwest::{StatusCode, Url};
use stowage_plugin_sdk::PluginError;

/// A URL as it may be shown to users: scheme, host, port and path, never the userinfo,
/// query string or fragment (which may carry tokens).
pub fn shown_url(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// What a request was for, used to word messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The connectivity test (`probe`).
    Probe,
    /// The download (`backup`).
    Download,
}

impl Operation {
    fn url_field(self) -> &'static str {
        match self {
            Operation::Probe => "spec.http.url and spec.http.probe.path",
            Operation::Download => "spec.http.url",
        }
    }
}

/// The error for a response whose status is not a success. `expected` is the
/// `expectedStatus` the download asked for, if any.
pub fn status_error(
    status: StatusCode,
    url: &str,
    op: Operation,
    expected: Option<u16>,
    probe_method_is_head: bool,
) -> PluginError {
    let code = status.as_u16();
    let head = match status.canonical_reason() {
        Some(reason) => format!("HTTP {code} {reason} from {url}"),
        None => format!("HTTP {code} from {url}"),
    };
    let field = op.url_field();
    match code {
        401 | 403 => PluginError::Unauthorized(format!(
            "{head}: the server rejected the request's credentials; check the Secret \
             referenced by spec.http.auth (auth.bearer.tokenSecretRef or \
             auth.basic.passwordSecretRef) or spec.http.headers[].valueSecretRef, and that this account may read the URL"
        )),
        404 | 410 => PluginError::NotFound(format!("{head}: nothing there; check {field}")),
        _ => {
            let message = match code {
                405 if op == Operation::Probe && probe_method_is_head => {
                    format!(
                        "{head}: the server does not answer HEAD; set spec.http.probe.method: GET"
                    )
                }
                200..=299 => format!(
                    "{head}, but expectedStatus is {}; check spec.http.url, or change spec.http.expectedStatus",
                    expected.unwrap_or(200)
                ),
                300..=399 => format!(
                    "{head}: a redirect that was not followed (more than 10 redirects, or one \
                     without a usable Location); point {field} at the final location"
                ),
                400..=499 => format!(
                    "{head}: the server refused the request; check {field}, method, headers \
                     and body"
                ),
                _ => format!("{head}: the server failed; check its logs, then retry"),
            };
            PluginError::Remote {
                status: Some(code),
                message,
            }
        }
    }
}

/// The error raised by the redirect policy when a redirect would carry credentials to
/// another origin.
#[derive(Debug)]
pub struct CrossOriginRedirect {
    /// Where the redirect pointed, as shown to users.
    pub to: String,
}

impl std::fmt::Display for CrossOriginRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect to another origin ({})", self.to)
    }
}

impl StdError for CrossOriginRedirect {}

/// Walks an error's source chain.
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// The innermost cause's text: from `std::io::Error`, hyper or rustls, without the URL
/// (reqwest's own `Display` includes the full URL, which may carry a query token).
fn root_cause(e: &reqwest::Error) -> String {
    let mut last = None;
    for cause in chain(e).skip(1) {
        last = Some(cause.to_string());
    }
    last.unwrap_or_else(|| "unknown cause".to_owned())
}

/// The TLS failure in an error's chain, if there is one.
fn tls_cause(e: &reqwest::Error) -> Option<String> {
    for cause in chain(e) {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
    }
    let text = root_cause(e).to_ascii_lowercase();
    ["certificate", "tls", "handshake", "ssl"]
        .iter()
        .any(|w| text.contains(w))
        .then(|| root_cause(e))
}

/// The error for a request that got no usable response, or whose body broke off.
pub fn transport_error(
    e: &reqwest::Error,
    url: &Url,
    op: Operation,
    timeout_seconds: u32,
    connect_timeout_seconds: u32,
) -> PluginError {
    let shown = shown_url(url);
    let authority = format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    );
    if let Some(redirect) = chain(e).find_map(|c| c.downcast_ref::<CrossOriginRedirect>()) {
        return PluginError::Remote {
            status: None,
            message: format!(
                "{shown} answered with a {redirect}; stowage does not send credentials to \
                 another origin: set spec.http.url to the final location"
            ),
        };
    }
    if e.is_timeout() {
        return if e.is_connect() {
            PluginError::Timeout(format!(
                "connecting to {authority} for {shown} took longer than \
                 spec.http.connectTimeoutSeconds ({connect_timeout_seconds} s); check that the host is \
                 up and reachable from the cluster, or raise spec.http.connectTimeoutSeconds"
            ))
        } else {
            timeout_error(&shown, op, timeout_seconds)
        };
    }
    if let Some(tls) = tls_cause(e) {
        return PluginError::Unreachable(format!(
            "TLS handshake with {authority} failed: {tls}; check that the server speaks HTTPS \
             on that port (otherwise use http://); if its certificate comes from a private \
             CA, put the CA's PEM bundle in a Secret and reference it with spec.http.tls.caSecretRef \
             (spec.http.tls.insecureSkipVerify: true skips verification, for testing only)"
        ));
    }
    if e.is_connect() {
        return PluginError::Unreachable(format!(
            "cannot connect to {authority} for {shown}: {}; check the host and port in spec.http.url, \
             that the server is running, and that network policies let the backup Job reach it",
            root_cause(e)
        ));
    }
    if e.is_body() || e.is_decode() {
        return PluginError::Unreachable(format!(
            "the connection to {authority} broke while reading the response from {shown}: {}; \
             retry, and check the server's logs",
            root_cause(e)
        ));
    }
    PluginError::Unreachable(format!(
        "request to {shown} failed: {}; check spec.http.url and that the server speaks HTTP on that port",
        root_cause(e)
    ))
}

/// The error for a request that ran out of its total time.
pub fn timeout_error(shown: &str, op: Operation, timeout_seconds: u32) -> PluginError {
    match op {
        Operation::Probe => PluginError::Timeout(format!(
            "no response from {shown} within spec.http.timeoutSeconds ({timeout_seconds} s); \
             check that the server is healthy and reachable from the cluster"
        )),
        Operation::Download => PluginError::Timeout(format!(
            "the download of {shown} did not finish within \
             spec.http.timeoutSeconds ({timeout_seconds} s); raise it for large or slow exports, or check \
             the server"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_drop_credentials_query_and_fragment() {
        let url = Url::parse("https://user:pw@h.example:8443/a/b?token=s3cret#frag").unwrap();
        assert_eq!(shown_url(&url), "https://h.example:8443/a/b");
        let url = Url::parse("http://h.example/").unwrap();
        assert_eq!(shown_url(&url), "http://h.example/");
    }

    #[test]
    fn statuses_map_to_kinds_with_the_fix() {
        let url = "https://h.example/x";
        let e = status_error(
            StatusCode::UNAUTHORIZED,
            url,
            Operation::Download,
            None,
            true,
        );
        assert!(matches!(e, PluginError::Unauthorized(_)));
        let text = e.to_string();
        assert!(
            text.starts_with("HTTP 401 Unauthorized from https://h.example/x: "),
            "{text}"
        );
        assert!(
            text.contains("check the Secret referenced by spec.http.auth"),
            "{text}"
        );
        let e = status_error(StatusCode::FORBIDDEN, url, Operation::Download, None, true);
        assert!(matches!(e, PluginError::Unauthorized(_)));
        let e = status_error(StatusCode::GONE, url, Operation::Download, None, true);
        assert!(matches!(e, PluginError::NotFound(_)));
        let e = status_error(
            StatusCode::BAD_GATEWAY,
            url,
            Operation::Download,
            None,
            true,
        );
        assert!(matches!(
            e,
            PluginError::Remote {
                status: Some(502),
                ..
            }
        ));
        let e = status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            url,
            Operation::Probe,
            None,
            true,
        );
        assert!(e.to_string().contains("probe.method: GET"), "{e}");
    }
}
