//! Building the HTTP client (timeouts, TLS trust, redirect policy) and the requests
//! (headers and credentials from Secrets) for one run.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect::{Attempt, Policy};
use reqwest::{Certificate, Client, ClientBuilder, Method, RequestBuilder, Url};
use stowage_plugin_sdk::{PluginError, RunContext, SecretKeyRef, ValidationErrors};

use crate::config::HttpConfig;
use crate::errors::{CrossOriginRedirect, shown_url};

/// Redirects followed at most, as browsers and curl do.
const MAX_REDIRECTS: usize = 10;

/// A client and the credentials of one run, ready to send requests.
pub struct Session {
    client: Client,
    headers: HeaderMap,
    basic: Option<(String, String)>,
}

impl Session {
    /// Resolves the config's secrets from `ctx` and builds the client. `total` bounds each
    /// request from connecting until its body has been read.
    pub fn new(
        config: &HttpConfig,
        ctx: &RunContext,
        url: &Url,
        total: Duration,
    ) -> Result<Session, PluginError> {
        let headers = headers(config, ctx)?;
        let basic = match config.auth.as_ref().and_then(|a| a.basic.as_ref()) {
            Some(basic) => Some((
                basic.username.clone(),
                ctx.secret(&basic.password_secret_ref)?.expose().to_owned(),
            )),
            None => None,
        };
        let client = client(config, ctx, url, total)?;
        Ok(Session {
            client,
            headers,
            basic,
        })
    }

    /// A request with the configured headers and credentials.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self
            .client
            .request(method, url)
            .headers(self.headers.clone());
        match &self.basic {
            Some((username, password)) => request.basic_auth(username, Some(password)),
            None => request,
        }
    }
}

/// A header value from a Secret: trailing newlines (common in Secrets created from files)
/// are dropped, and the value is marked sensitive so the client never logs it.
fn secret_header_value(
    ctx: &RunContext,
    reference: &SecretKeyRef,
    field: &str,
    prefix: &str,
) -> Result<HeaderValue, PluginError> {
    let secret = ctx.secret(reference)?;
    let value = secret.expose().trim_end_matches(['\r', '\n']);
    let mut header = HeaderValue::from_str(&format!("{prefix}{value}")).map_err(|_| {
        PluginError::InvalidConfig(ValidationErrors::single(
            field,
            format!(
                "key {:?} of Secret {:?} does not hold a valid HTTP header value (it contains \
                 control characters or non-ASCII text); fix the Secret",
                reference.key, reference.name
            ),
        ))
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn headers(config: &HttpConfig, ctx: &RunContext) -> Result<HeaderMap, PluginError> {
    let mut map = HeaderMap::new();
    for (i, header) in config.headers.iter().enumerate() {
        let invalid = |field: String, message: &str| {
            PluginError::InvalidConfig(ValidationErrors::single(field, message))
        };
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
            invalid(
                format!("headers[{i}].name"),
                "is not a valid HTTP header name",
            )
        })?;
        let value = match (&header.value, &header.value_secret_ref) {
            (Some(value), None) => HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    format!("headers[{i}].value"),
                    "must be visible ASCII text without control characters",
                )
            })?,
            (None, Some(reference)) => {
                secret_header_value(ctx, reference, &format!("headers[{i}].valueSecretRef"), "")?
            }
            _ => {
                return Err(invalid(
                    format!("headers[{i}].value"),
                    "set exactly one of value or valueSecretRef",
                ));
            }
        };
        map.append(name, value);
    }
    if let Some(bearer) = config.auth.as_ref().and_then(|a| a.bearer.as_ref()) {
        let value = secret_header_value(
            ctx,
            &bearer.token_secret_ref,
            "auth.bearer.tokenSecretRef",
            "Bearer ",
        )?;
        map.insert(AUTHORIZATION, value);
    }
    Ok(map)
}

/// Whether a request carries anything from a Secret.
fn carries_credentials(config: &HttpConfig) -> bool {
    config.auth.is_some() || config.headers.iter().any(|h| h.value_secret_ref.is_some())
}

/// Follows up to [`MAX_REDIRECTS`] redirects; when the request carries credentials, a
/// redirect to another origin (scheme, host or port) is refused instead of followed, so
/// a token is never sent somewhere the user did not name.
fn redirect_policy(guard_origin: bool) -> Policy {
    Policy::custom(move |attempt: Attempt| {
        let previous = attempt.previous();
        if previous.len() > MAX_REDIRECTS {
            let error = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(error);
        }
        let leaves_origin = previous
            .first()
            .is_some_and(|first| first.origin() != attempt.url().origin());
        if guard_origin && leaves_origin {
            let to = shown_url(attempt.url());
            return attempt.error(CrossOriginRedirect { to });
        }
        attempt.follow()
    })
}

fn builder(config: &HttpConfig, total: Duration) -> ClientBuilder {
    Client::builder()
        .user_agent(concat!("stowage-http/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(config.connect_timeout_seconds.into()))
        .timeout(total)
        .redirect(redirect_policy(carries_credentials(config)))
}

fn client(
    config: &HttpConfig,
    ctx: &RunContext,
    url: &Url,
    total: Duration,
) -> Result<Client, PluginError> {
    // reqwest is built without a default crypto provider; every stowage crate uses ring.
    // Installing fails harmlessly when a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut tls = builder(config, total);
    if config.tls.insecure_skip_verify {
        tls = tls.tls_danger_accept_invalid_certs(true);
    } else if let Some(reference) = &config.tls.ca_secret_ref {
        let bad_bundle = |detail: &str| {
            PluginError::InvalidConfig(ValidationErrors::single(
                "tls.caSecretRef",
                format!(
                    "key {:?} of Secret {:?} {detail}; it must hold one or more PEM \
                     certificates (-----BEGIN CERTIFICATE-----)",
                    reference.key, reference.name
                ),
            ))
        };
        let pem = ctx.secret(reference)?;
        let certs = Certificate::from_pem_bundle(pem.expose().as_bytes())
            .map_err(|_| bad_bundle("is not a PEM certificate bundle"))?;
        if certs.is_empty() {
            return Err(bad_bundle("holds no certificate"));
        }
        return tls
            .tls_certs_merge(certs)
            .build()
            .map_err(|_| bad_bundle("holds a certificate that cannot be used as a CA"));
    }
    match tls.build() {
        Ok(client) => Ok(client),
        // The system trust store is loaded when the client is built; a minimal runner image
        // may have none. Plain http:// needs no trust store, so go on without one (an
        // https:// redirect then fails verification with a message naming caSecretRef).
        Err(_) if url.scheme() == "http" && !config.tls.insecure_skip_verify => {
            builder(config, total)
                .tls_certs_only([])
                .build()
                .map_err(|e| client_setup_error(&e))
        }
        Err(e) => Err(client_setup_error(&e)),
    }
}

fn client_setup_error(e: &reqwest::Error) -> PluginError {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    PluginError::Unreachable(format!(
        "cannot set up TLS for the request: {cause}; if the runner image has no CA \
         certificates, reference the server's CA bundle with tls.caSecretRef"
    ))
}
