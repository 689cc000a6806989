//! The typed configuration of the http plugin (`BackupTarget.spec.http`) and its
//! semantic validation.

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::{SecretKeyRef, ValidationErrors};

/// Default of `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 300;
/// Default of `connectTimeoutSeconds`.
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u32 = 10;
/// Default of `artifactExtension`.
pub const DEFAULT_ARTIFACT_EXTENSION: &str = "bin";

/// Download one URL (an export endpoint, a file served over HTTP) as the artifact.
///
/// The response body is streamed into the artifact as it arrives, so its size is not
/// limited by memory. Only backups and probes are supported: an HTTP export has no
/// generic way back in, so `restore` is not available for this plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.body) || (has(self.method) && self.method == 'POST')",
        "message": "spec.http.body is only sent with method: POST; set method: POST or remove body"
    }
]))]
pub struct HttpConfig {
    /// URL to download, `http://` or `https://` (e.g.
    /// `https://grafana.monitoring.svc:3000/api/dashboards/export`). Credentials do not
    /// belong in the URL: use `auth` or `headers[].valueSecretRef`. The query string is
    /// sent but never shown in status, events or logs.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// HTTP method of the download request: `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "HttpMethod::is_get")]
    pub method: HttpMethod,
    /// Request body sent with `method: POST`, as plain text (set its type with a
    /// `Content-Type` entry in `headers`). Not for secrets: the body is part of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// Extra request headers, sent with the probe and the download.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub headers: Vec<HttpHeader>,
    /// How to authenticate: set exactly one of `bearer` or `basic`. Unset for URLs that
    /// need no credentials (or take them from `headers[].valueSecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    /// How to verify the server's certificate for `https://` URLs. By default it must
    /// chain to a CA the runner image trusts.
    #[serde(default, skip_serializing_if = "TlsOptions::is_default")]
    pub tls: TlsOptions,
    /// Total time allowed for the download in seconds, from connecting until the last byte
    /// of the body is written (default 300, at most 86400). The probe uses at most 60 s.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u32,
    /// Time allowed to open the TCP connection (and finish the TLS handshake) in seconds
    /// (default 10, at most `timeoutSeconds`).
    #[serde(default = "default_connect_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub connect_timeout_seconds: u32,
    /// The status the download must answer with (e.g. `200`). By default any 2xx status
    /// is a success. Redirects are followed (at most 10) before the status is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 299))]
    pub expected_status: Option<u16>,
    /// The connectivity test run by `spec.probe` and the `stowage.dev/probe-now`
    /// annotation. By default it sends `HEAD` to `url` itself.
    #[serde(default, skip_serializing_if = "ProbeOptions::is_default")]
    pub probe: ProbeOptions,
    /// File extension of the artifact, without a dot (e.g. `json`, `tar.gz`). Default
    /// `bin`. Compression adds its own suffix after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z0-9]+(\.[a-z0-9]+)*$")
    )]
    pub artifact_extension: Option<String>,
}

fn default_timeout_seconds() -> u32 {
    DEFAULT_TIMEOUT_SECONDS
}

fn default_connect_timeout_seconds() -> u32 {
    DEFAULT_CONNECT_TIMEOUT_SECONDS
}

/// The HTTP method of the download request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET` the URL (default).
    #[default]
    Get,
    /// `POST` to the URL, with `body` if set (for export endpoints that take parameters).
    Post,
}

impl HttpMethod {
    fn is_get(&self) -> bool {
        *self == HttpMethod::Get
    }

    /// The method as reqwest's type.
    pub fn as_reqwest(self) -> reqwest::Method {
        match self {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
        }
    }
}

/// One extra request header: a name and exactly one of `value` or `valueSecretRef`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.value) != has(self.valueSecretRef)",
        "message": "each entry of spec.http.headers needs exactly one of value or valueSecretRef"
    }
]))]
pub struct HttpHeader {
    /// Header name (e.g. `Accept`, `X-Api-Key`).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    )]
    pub name: String,
    /// Header value, in plain text. For anything secret use `valueSecretRef` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// Header value from a Secret in the target's namespace (e.g. an API key). Trailing
    /// newlines of the value are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_secret_ref: Option<SecretKeyRef>,
}

/// Credentials for the request: exactly one of `bearer` or `basic`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.bearer) != has(self.basic)",
        "message": "spec.http.auth needs exactly one of bearer or basic"
    }
]))]
pub struct HttpAuth {
    /// Send `Authorization: Bearer <token>` with the token from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// Send HTTP basic authentication with a username and a password from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
}

/// Bearer token authentication (`Authorization: Bearer <token>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BearerAuth {
    /// The token, from a Secret in the target's namespace. Trailing newlines of the value
    /// are ignored.
    pub token_secret_ref: SecretKeyRef,
}

/// HTTP basic authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name (it cannot contain `:`).
    #[schemars(length(min = 1, max = 256))]
    pub username: String,
    /// The password, from a Secret in the target's namespace.
    pub password_secret_ref: SecretKeyRef,
}

/// How the server's TLS certificate is verified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsOptions {
    /// Accept any certificate, without verifying who the server is. For testing only: it
    /// lets anyone on the network path read the credentials and the data. Prefer
    /// `caSecretRef`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// A PEM bundle of CA certificates to trust in addition to the runner image's, from a
    /// Secret in the target's namespace (e.g. the `ca.crt` key of a cert-manager Secret),
    /// for servers whose certificate comes from a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

impl TlsOptions {
    fn is_default(&self) -> bool {
        *self == TlsOptions::default()
    }
}

/// The connectivity test: one request with the same headers, credentials and TLS settings
/// as the download, whose response body is not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeOptions {
    /// Path of a health endpoint on the server of `url` (e.g. `/api/health`, so
    /// `https://host:3000/api/health`): it starts with a single `/` and has no backslash,
    /// whitespace or scheme, so the probe never goes to another server. By default the
    /// probe requests `url` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^/([^/\\\s][^\\\s]*)?$")
    )]
    pub path: Option<String>,
    /// Method of the probe request: `HEAD` (default) or `GET` (for servers that do not
    /// answer `HEAD`). A 2xx or 3xx status is a success.
    #[serde(default, skip_serializing_if = "ProbeMethod::is_head")]
    pub method: ProbeMethod,
}

impl ProbeOptions {
    fn is_default(&self) -> bool {
        *self == ProbeOptions::default()
    }
}

/// The HTTP method of the probe request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProbeMethod {
    /// `HEAD`: headers only, nothing downloaded (default).
    #[default]
    Head,
    /// `GET`: the response headers are read, the body is not.
    Get,
}

impl ProbeMethod {
    fn is_head(&self) -> bool {
        *self == ProbeMethod::Head
    }

    /// The method as reqwest's type.
    pub fn as_reqwest(self) -> reqwest::Method {
        match self {
            ProbeMethod::Head => reqwest::Method::HEAD,
            ProbeMethod::Get => reqwest::Method::GET,
        }
    }
}

/// Header names whose plain `value` would put a credential in the spec.
const SECRET_LIKE_HEADER_WORDS: &[&str] = &[
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
    "api_key",
];

/// Headers the HTTP client sets itself from the request; setting them by hand breaks it.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// `probe.path` resolved against `base` (the config's `url`): a URL on the same origin
/// (scheme, host and port), or why the path cannot be used. Called by `validate` and
/// again where the probe request is built, so a path that would send the probe (and its
/// credentials) to another server never leaves the plugin.
pub fn probe_url_on(base: &Url, path: &str) -> Result<Url, String> {
    check_probe_path(path)?;
    let url = base.join(path).map_err(|e| {
        format!("cannot be resolved against url ({e}); use a path such as /healthz")
    })?;
    if url.origin() != base.origin() {
        return Err(format!(
            "resolves to {}, which is not on the server of url ({}); use a path on that \
             server (e.g. /healthz)",
            url.origin().ascii_serialization(),
            base.origin().ascii_serialization()
        ));
    }
    Ok(url)
}

/// The checks of `probe.path` that need no base URL.
fn check_probe_path(path: &str) -> Result<(), String> {
    if Url::parse(path).is_ok() || path.contains("://") {
        return Err(
            "must be a path on the server of url (e.g. /healthz), not a URL; the probe \
             never goes to another server"
                .to_owned(),
        );
    }
    if path.contains('\\') {
        return Err(
            "must not contain a backslash: URL parsers read it as '/', so /\\host/x would name \
             another server; use '/' or percent-encode it (%5C)"
                .to_owned(),
        );
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "must not contain whitespace or control characters: URL parsers drop tabs and \
             newlines, so /<tab>/host would name another server; percent-encode them (%20)"
                .to_owned(),
        );
    }
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(
            "must be a path starting with a single '/' (e.g. /healthz); it is resolved \
             against the origin of url"
                .to_owned(),
        );
    }
    Ok(())
}

impl HttpConfig {
    /// A config that downloads `url` with every other field at its default.
    pub fn for_url(url: impl Into<String>) -> Self {
        HttpConfig {
            url: url.into(),
            method: HttpMethod::Get,
            body: None,
            headers: Vec::new(),
            auth: None,
            tls: TlsOptions::default(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            connect_timeout_seconds: DEFAULT_CONNECT_TIMEOUT_SECONDS,
            expected_status: None,
            probe: ProbeOptions::default(),
            artifact_extension: None,
        }
    }

    /// The artifact's file extension in effect (`artifactExtension`, default `bin`).
    pub fn effective_artifact_extension(&self) -> &str {
        self.artifact_extension
            .as_deref()
            .unwrap_or(DEFAULT_ARTIFACT_EXTENSION)
    }

    /// Semantic checks the schema cannot express; field paths relative to `spec.http`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.validate_url(&mut errors);
        if self.body.is_some() && self.method != HttpMethod::Post {
            errors.push(
                "body",
                "a body is only sent with method: POST; set method: POST or remove body",
            );
        }
        self.validate_headers(&mut errors);
        self.validate_auth(&mut errors);
        if self.tls.insecure_skip_verify && self.tls.ca_secret_ref.is_some() {
            errors.push(
                "tls.insecureSkipVerify",
                "insecureSkipVerify: true ignores tls.caSecretRef; remove one of them \
                 (keep caSecretRef to verify the server)",
            );
        }
        if !(1..=86400).contains(&self.timeout_seconds) {
            errors.push("timeoutSeconds", "must be between 1 and 86400 seconds");
        }
        if self.connect_timeout_seconds == 0 {
            errors.push("connectTimeoutSeconds", "must be at least 1 second");
        } else if self.connect_timeout_seconds > self.timeout_seconds {
            errors.push(
                "connectTimeoutSeconds",
                format!(
                    "must not exceed timeoutSeconds ({}); lower it or raise timeoutSeconds",
                    self.timeout_seconds
                ),
            );
        }
        if let Some(status) = self.expected_status
            && !(200..=299).contains(&status)
        {
            errors.push(
                "expectedStatus",
                "must be a success status between 200 and 299 (redirects are followed first)",
            );
        }
        if let Some(path) = &self.probe.path {
            let checked = match Url::parse(&self.url) {
                Ok(url) => probe_url_on(&url, path).map(drop),
                // The url's own error is reported above; check what can be checked alone.
                Err(_) => check_probe_path(path),
            };
            if let Err(message) = checked {
                errors.push("probe.path", message);
            }
        }
        if let Some(ext) = &self.artifact_extension {
            let valid = !ext.is_empty()
                && ext.len() <= 32
                && ext.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                });
            if !valid {
                errors.push(
                    "artifactExtension",
                    "must be lowercase letters and digits, optionally in dot-separated parts, \
                     without a leading dot (e.g. json or tar.gz)",
                );
            }
        }
        errors.into_result()
    }

    fn validate_url(&self, errors: &mut ValidationErrors) {
        let url = match Url::parse(&self.url) {
            Ok(url) => url,
            Err(e) => {
                errors.push(
                    "url",
                    format!("is not a valid URL ({e}); write it as https://host[:port]/path"),
                );
                return;
            }
        };
        if !matches!(url.scheme(), "http" | "https") {
            errors.push(
                "url",
                format!(
                    "scheme {:?} is not supported; use http:// or https://",
                    url.scheme()
                ),
            );
        }
        if url.host_str().is_none_or(str::is_empty) {
            errors.push("url", "has no host; write it as https://host[:port]/path");
        }
        if !url.username().is_empty() || url.password().is_some() {
            errors.push(
                "url",
                "must not contain credentials (user:password@); use auth.basic with \
                 passwordSecretRef, or auth.bearer",
            );
        }
    }

    fn validate_headers(&self, errors: &mut ValidationErrors) {
        for (i, header) in self.headers.iter().enumerate() {
            let name = match HeaderName::from_bytes(header.name.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(
                        format!("headers[{i}].name"),
                        format!(
                            "{:?} is not a valid HTTP header name; use letters, digits and \
                             '-' (e.g. X-Api-Key)",
                            header.name
                        ),
                    );
                    None
                }
            };
            if let Some(name) = &name {
                let lower = name.as_str();
                if RESERVED_HEADERS.contains(&lower) {
                    errors.push(
                        format!("headers[{i}].name"),
                        format!(
                            "{} is set by the HTTP client itself; remove this header",
                            header.name
                        ),
                    );
                }
                if lower == "authorization" && self.auth.is_some() {
                    errors.push(
                        format!("headers[{i}].name"),
                        "auth already sets the Authorization header; remove this header or auth",
                    );
                }
            }
            match (&header.value, &header.value_secret_ref) {
                (Some(_), Some(_)) => errors.push(
                    format!("headers[{i}].value"),
                    "set exactly one of value or valueSecretRef, not both",
                ),
                (None, None) => errors.push(
                    format!("headers[{i}].value"),
                    "set exactly one of value (plain text) or valueSecretRef (from a Secret)",
                ),
                (Some(value), None) => {
                    if HeaderValue::from_str(value).is_err() {
                        errors.push(
                            format!("headers[{i}].value"),
                            "must be visible ASCII text without control characters or newlines",
                        );
                    }
                    let lower = header.name.to_ascii_lowercase();
                    if SECRET_LIKE_HEADER_WORDS.iter().any(|w| lower.contains(w)) {
                        errors.push(
                            format!("headers[{i}].value"),
                            format!(
                                "{} looks like a credential: store it in a Secret and use \
                                 valueSecretRef instead of a plain value",
                                header.name
                            ),
                        );
                    }
                }
                (None, Some(_)) => {}
            }
        }
    }

    fn validate_auth(&self, errors: &mut ValidationErrors) {
        let Some(auth) = &self.auth else { return };
        match (&auth.bearer, &auth.basic) {
            (Some(_), Some(_)) => errors.push(
                "auth",
                "set exactly one of auth.bearer or auth.basic, not both",
            ),
            (None, None) => errors.push(
                "auth",
                "set one of auth.bearer or auth.basic, or remove auth",
            ),
            (None, Some(basic)) => {
                if basic.username.is_empty() {
                    errors.push("auth.basic.username", "must not be empty");
                } else if basic.username.contains(':') {
                    errors.push(
                        "auth.basic.username",
                        "must not contain ':' (HTTP basic authentication cannot carry it)",
                    );
                } else if basic.username.chars().any(char::is_control) {
                    errors.push("auth.basic.username", "must not contain control characters");
                }
            }
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> HttpConfig {
        HttpConfig::for_url("https://export.example.svc:8443/api/export?format=json")
    }

    fn fields(result: Result<(), ValidationErrors>) -> Vec<(String, String)> {
        result
            .err()
            .map(|e| e.0.into_iter().map(|f| (f.field, f.message)).collect())
            .unwrap_or_default()
    }

    fn only_field(result: Result<(), ValidationErrors>) -> (String, String) {
        let errors = fields(result);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:?}");
        errors.into_iter().next().unwrap()
    }

    fn secret(name: &str) -> SecretKeyRef {
        SecretKeyRef::new(name, "value")
    }

    #[test]
    fn a_minimal_config_is_valid_and_round_trips_without_defaults() {
        let parsed: HttpConfig =
            serde_json::from_value(json!({"url": "https://h.example/x"})).unwrap();
        assert_eq!(parsed, HttpConfig::for_url("https://h.example/x"));
        parsed.validate().unwrap();
        assert_eq!(parsed.effective_artifact_extension(), "bin");
        let back = serde_json::to_value(&parsed).unwrap();
        assert_eq!(
            back,
            json!({"url": "https://h.example/x", "timeoutSeconds": 300, "connectTimeoutSeconds": 10})
        );
        assert_eq!(serde_json::from_value::<HttpConfig>(back).unwrap(), parsed);
    }

    #[test]
    fn a_full_config_round_trips() {
        let value = json!({
            "url": "https://h.example/x",
            "method": "POST",
            "body": "{\"all\":true}",
            "headers": [
                {"name": "Accept", "value": "application/json"},
                {"name": "X-Api-Key", "valueSecretRef": {"name": "api", "key": "key"}}
            ],
            "auth": {"basic": {"username": "backup", "passwordSecretRef": {"name": "api", "key": "pw"}}},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
            "timeoutSeconds": 60,
            "connectTimeoutSeconds": 5,
            "expectedStatus": 200,
            "probe": {"path": "/healthz", "method": "GET"},
            "artifactExtension": "json"
        });
        let parsed: HttpConfig = serde_json::from_value(value.clone()).unwrap();
        parsed.validate().unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), value);
    }

    #[test]
    fn unknown_fields_and_methods_are_rejected() {
        let unknown =
            serde_json::from_value::<HttpConfig>(json!({"url": "https://h/", "verb": "GET"}));
        assert!(unknown.unwrap_err().to_string().contains("verb"));
        let method =
            serde_json::from_value::<HttpConfig>(json!({"url": "https://h/", "method": "DELETE"}));
        assert!(method.is_err());
    }

    #[test]
    fn url_must_parse_be_http_and_carry_no_credentials() {
        let mut c = config();
        c.url = "not a url".into();
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "url");
        assert!(message.contains("https://host"), "{message}");

        c.url = "ftp://files.example/dump".into();
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "url");
        assert!(message.contains("http:// or https://"), "{message}");

        c.url = "https://backup:hunter2@h.example/x".into();
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "url");
        assert!(message.contains("auth.basic"), "{message}");
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn body_requires_post() {
        let mut c = config();
        c.body = Some("{}".into());
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "body");
        assert!(message.contains("method: POST"), "{message}");
        c.method = HttpMethod::Post;
        c.validate().unwrap();
    }

    #[test]
    fn header_names_must_be_valid_and_not_reserved() {
        let mut c = config();
        c.headers = vec![
            HttpHeader {
                name: "Accept".into(),
                value: Some("*/*".into()),
                value_secret_ref: None,
            },
            HttpHeader {
                name: "Bad Name".into(),
                value: Some("x".into()),
                value_secret_ref: None,
            },
            HttpHeader {
                name: "Host".into(),
                value: Some("x".into()),
                value_secret_ref: None,
            },
        ];
        let errors = fields(c.validate());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "headers[1].name");
        assert!(errors[0].1.contains("not a valid HTTP header name"));
        assert_eq!(errors[1].0, "headers[2].name");
        assert!(errors[1].1.contains("remove this header"));
    }

    #[test]
    fn each_header_needs_exactly_one_value_source() {
        let mut c = config();
        c.headers = vec![
            HttpHeader {
                name: "X-A".into(),
                value: None,
                value_secret_ref: None,
            },
            HttpHeader {
                name: "X-B".into(),
                value: Some("b".into()),
                value_secret_ref: Some(secret("b")),
            },
            HttpHeader {
                name: "X-C".into(),
                value: None,
                value_secret_ref: Some(secret("c")),
            },
        ];
        let errors = fields(c.validate());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "headers[0].value");
        assert!(errors[0].1.contains("exactly one of value"));
        assert_eq!(errors[1].0, "headers[1].value");
        assert!(errors[1].1.contains("not both"));
    }

    #[test]
    fn plain_header_values_must_be_valid_and_not_credentials() {
        let mut c = config();
        c.headers = vec![
            HttpHeader {
                name: "X-Note".into(),
                value: Some("a\nb".into()),
                value_secret_ref: None,
            },
            HttpHeader {
                name: "X-Api-Key".into(),
                value: Some("abc".into()),
                value_secret_ref: None,
            },
        ];
        let errors = fields(c.validate());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "headers[0].value");
        assert!(errors[0].1.contains("newlines"));
        assert_eq!(errors[1].0, "headers[1].value");
        assert!(errors[1].1.contains("valueSecretRef"));
    }

    #[test]
    fn an_authorization_header_conflicts_with_auth() {
        let mut c = config();
        c.auth = Some(HttpAuth {
            bearer: Some(BearerAuth {
                token_secret_ref: secret("t"),
            }),
            basic: None,
        });
        c.headers = vec![HttpHeader {
            name: "Authorization".into(),
            value: None,
            value_secret_ref: Some(secret("a")),
        }];
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "headers[0].name");
        assert!(message.contains("remove this header or auth"), "{message}");
    }

    #[test]
    fn auth_needs_exactly_one_method_and_a_valid_username() {
        let bearer = Some(BearerAuth {
            token_secret_ref: secret("t"),
        });
        let basic = |username: &str| {
            Some(BasicAuth {
                username: username.into(),
                password_secret_ref: secret("p"),
            })
        };
        let mut c = config();
        c.auth = Some(HttpAuth {
            bearer: bearer.clone(),
            basic: basic("u"),
        });
        assert_eq!(only_field(c.validate()).0, "auth");
        c.auth = Some(HttpAuth::default());
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "auth");
        assert!(message.contains("bearer or auth.basic"), "{message}");
        c.auth = Some(HttpAuth {
            bearer: None,
            basic: basic("a:b"),
        });
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "auth.basic.username");
        assert!(message.contains("':'"), "{message}");
        c.auth = Some(HttpAuth {
            bearer: None,
            basic: basic("backup"),
        });
        c.validate().unwrap();
        c.auth = Some(HttpAuth {
            bearer,
            basic: None,
        });
        c.validate().unwrap();
    }

    #[test]
    fn tls_options_exclude_each_other() {
        let mut c = config();
        c.tls = TlsOptions {
            insecure_skip_verify: true,
            ca_secret_ref: Some(secret("ca")),
        };
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "tls.insecureSkipVerify");
        assert!(message.contains("caSecretRef"), "{message}");
    }

    #[test]
    fn timeouts_are_in_range_and_ordered() {
        let mut c = config();
        c.timeout_seconds = 0;
        c.connect_timeout_seconds = 0;
        let errors = fields(c.validate());
        let names: Vec<_> = errors.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["timeoutSeconds", "connectTimeoutSeconds"]);
        c.timeout_seconds = 86401;
        c.connect_timeout_seconds = 10;
        assert_eq!(only_field(c.validate()).0, "timeoutSeconds");
        c.timeout_seconds = 5;
        let (field, message) = only_field(c.validate());
        assert_eq!(field, "connectTimeoutSeconds");
        assert!(message.contains("timeoutSeconds (5)"), "{message}");
    }

    #[test]
    fn expected_status_must_be_a_success() {
        let mut c = config();
        c.expected_status = Some(404);
        assert_eq!(only_field(c.validate()).0, "expectedStatus");
        c.expected_status = Some(204);
        c.validate().unwrap();
    }

    #[test]
    fn probe_path_stays_on_the_origin_of_url() {
        // (path, what the message says)
        let bad = [
            ("health", "single '/'"),
            ("http://evil.example/", "not a URL"),
            ("https://export.example.svc:8443/healthz", "not a URL"),
            ("//evil.example/x", "single '/'"),
            // URL parsers read a backslash as a slash in http(s) URLs: `/\host` is `//host`.
            ("/\\evil.example/x", "backslash"),
            ("/\\/evil.example/x", "backslash"),
            ("\\\\evil.example/x", "backslash"),
            ("/api\\health", "backslash"),
            // Tabs and newlines are dropped by URL parsers, so `/<tab>/host` is `//host`.
            ("/\t/evil.example/x", "whitespace"),
            ("/\n/evil.example/x", "whitespace"),
            ("/a b", "whitespace"),
        ];
        let mut c = config();
        let mut wrong = Vec::new();
        for (path, says) in bad {
            c.probe.path = Some(path.into());
            match fields(c.validate()).as_slice() {
                [(field, message)] if field == "probe.path" && message.contains(says) => {}
                other => wrong.push(format!("{path:?}: {other:?}")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        for good in [
            "/api/health?full=1",
            "/healthz",
            "/",
            "/../healthz",
            "/%2F%2Fevil.example",
            "/a@evil.example",
            "/:8080/x",
        ] {
            c.probe.path = Some(good.into());
            assert_eq!(c.validate(), Ok(()), "{good:?}");
            let base = Url::parse(&c.url).unwrap();
            let url = probe_url_on(&base, good).unwrap();
            assert_eq!(url.origin(), base.origin(), "{good}");
        }
    }

    #[test]
    fn artifact_extension_is_a_plain_suffix() {
        let mut c = config();
        for bad in [".json", "JSON", "tar..gz", "a/b", ""] {
            c.artifact_extension = Some(bad.into());
            let (field, message) = only_field(c.validate());
            assert_eq!(field, "artifactExtension", "{bad}");
            assert!(message.contains("tar.gz"), "{message}");
        }
        c.artifact_extension = Some("tar.gz".into());
        c.validate().unwrap();
        assert_eq!(c.effective_artifact_extension(), "tar.gz");
    }

    #[test]
    fn every_schema_property_is_documented() {
        fn walk(
            path: &str,
            schema: &serde_json::Value,
            defs: &serde_json::Value,
            out: &mut Vec<String>,
        ) {
            if let Some(reference) = schema.get("$ref").and_then(|r| r.as_str()) {
                let name = reference.trim_start_matches("#/$defs/");
                walk(path, &defs[name], defs, out);
            }
            for key in ["anyOf", "oneOf", "allOf"] {
                for sub in schema
                    .get(key)
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    walk(path, sub, defs, out);
                }
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, defs, out);
            }
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let child = format!("{path}.{name}");
                    if prop.get("description").is_none() {
                        out.push(child.clone());
                    }
                    walk(&child, prop, defs, out);
                }
            }
        }
        let schema = schemars::schema_for!(HttpConfig).to_value();
        let mut missing = Vec::new();
        walk("http", &schema, &schema["$defs"], &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:?}");
        assert_eq!(schema["required"], json!(["url"]));
    }
}
