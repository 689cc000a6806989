//! Secret references, secret values, and how values travel from a Secret to a plugin.
//!
//! A plugin config never holds a secret value: a secret field is a [`SecretKeyRef`] and,
//! by convention enforced by stowage's schema tests, its name ends in `SecretRef`. The
//! controller finds every reference with [`secret_bindings`] and gives the Job one env
//! variable per reference through `secretKeyRef` (it never reads the value itself). The
//! runner calls [`secret_bindings`] on the same config, reads those env variables, and
//! hands the plugin a [`Secrets`] map. A [`Redactor`] built from the values scrubs them
//! from any text leaving the runner.

use std::collections::HashMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prefix of the env variables that carry secret values into a runner.
pub const SECRET_ENV_PREFIX: &str = "STOWAGE_SECRET_";

/// A reference to one key of a Secret in the `BackupTarget`'s namespace.
///
/// The Secret is read by the kubelet when the backup Job starts (through an env
/// `secretKeyRef`), never by the operator, and its value never appears in a status,
/// an event, a log or an artifact's metadata.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the BackupTarget.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data`.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl SecretKeyRef {
    /// A reference to `key` in Secret `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }
}

/// A secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    /// The value itself. Pass it to a library or a child's environment, never to a log,
    /// an argv or an error message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secret values given to a run, keyed by reference.
#[derive(Clone, Debug, Default)]
pub struct Secrets(HashMap<SecretKeyRef, SecretValue>);

impl Secrets {
    /// Add a value.
    pub fn insert(&mut self, reference: SecretKeyRef, value: SecretValue) {
        self.0.insert(reference, value);
    }

    /// The value for a reference, if provided.
    pub fn get(&self, reference: &SecretKeyRef) -> Option<&SecretValue> {
        self.0.get(reference)
    }

    /// Read the value of every binding from the environment through `lookup`
    /// (normally `std::env::var`). Missing variables are skipped: the plugin reports
    /// them, naming the Secret, when it needs them.
    pub fn from_bindings(
        bindings: &[SecretBinding],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut secrets = Secrets::default();
        for binding in bindings {
            if let Some(value) = lookup(&binding.env) {
                secrets.insert(binding.reference.clone(), SecretValue::new(value));
            }
        }
        secrets
    }

    /// Every value held (for checks that no output contains one).
    pub fn values(&self) -> impl Iterator<Item = &SecretValue> {
        self.0.values()
    }

    /// A redactor for every value held.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.0.values().map(|v| v.expose().to_owned()))
    }
}

/// One secret reference found in a plugin config, and the env variable that carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretBinding {
    /// JSON path of the reference inside the config (e.g. `auth.passwordSecretRef`).
    pub path: String,
    /// Name of the env variable (`STOWAGE_SECRET_...`).
    pub env: String,
    /// The reference.
    pub reference: SecretKeyRef,
}

/// Every secret reference in a plugin config (as JSON), with a deterministic env variable
/// name derived from its path. Fields whose name ends in `SecretRef` and that deserialize
/// as a [`SecretKeyRef`] are references; arrays are walked with their indexes.
pub fn secret_bindings(config: &serde_json::Value) -> Vec<SecretBinding> {
    let mut out = Vec::new();
    walk(config, &mut Vec::new(), &mut out);
    out.sort_by(|a, b| a.env.cmp(&b.env));
    out.dedup_by(|a, b| a.env == b.env);
    out
}

fn walk(value: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<SecretBinding>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                if key.ends_with("SecretRef") {
                    if let Ok(reference) = serde_json::from_value::<SecretKeyRef>(child.clone()) {
                        out.push(SecretBinding {
                            path: path.join("."),
                            env: env_name(path),
                            reference,
                        });
                    }
                } else {
                    walk(child, path, out);
                }
                path.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn env_name(path: &[String]) -> String {
    let mut name = String::from(SECRET_ENV_PREFIX);
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            name.push('_');
        }
        name.extend(segment.chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        }));
    }
    name
}

/// Replaces secret values in text with `<redacted>`: each value as is and as a URL
/// carries it percent-encoded (a server may echo a token into a redirect's path, which a
/// plugin shows).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    // Longest first, so a value that contains another is replaced whole.
    values: Vec<String>,
}

/// The percent-encoded spellings of `value` that differ from it: every byte but the
/// unreserved ones encoded (as `encodeURIComponent` does; upper- and lowercase hex), and
/// only what a URL path must encode (as a URL parser normalizes a raw value).
fn percent_encodings(value: &str) -> Vec<String> {
    fn encode(value: &str, keep: impl Fn(u8) -> bool, upper: bool) -> String {
        let mut out = String::with_capacity(value.len() * 3);
        for &byte in value.as_bytes() {
            if keep(byte) {
                out.push(char::from(byte));
            } else if upper {
                out.push_str(&format!("%{byte:02X}"));
            } else {
                out.push_str(&format!("%{byte:02x}"));
            }
        }
        out
    }
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let path_safe = |b: u8| {
        b.is_ascii_graphic() && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}')
    };
    let mut out = vec![
        encode(value, unreserved, true),
        encode(value, unreserved, false),
        encode(value, path_safe, true),
    ];
    out.retain(|encoded| encoded != value);
    out
}

impl Redactor {
    /// A redactor for the given values (empty values are ignored) and their
    /// percent-encoded spellings.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .flat_map(|v| {
                let mut all = percent_encodings(&v);
                all.push(v);
                all
            })
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    /// `text` with every secret value replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "<redacted>");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bindings_are_found_at_any_depth_with_stable_env_names() {
        let config = json!({
            "host": "db",
            "passwordSecretRef": {"name": "db", "key": "password"},
            "auth": {"bearerTokenSecretRef": {"name": "api", "key": "token"}},
            "headers": [{"name": "X-Key", "valueSecretRef": {"name": "api", "key": "header"}}],
            "notASecretRef": "plain"
        });
        let bindings = secret_bindings(&config);
        let envs: Vec<_> = bindings.iter().map(|b| b.env.as_str()).collect();
        assert_eq!(
            envs,
            [
                "STOWAGE_SECRET_AUTH_BEARERTOKENSECRETREF",
                "STOWAGE_SECRET_HEADERS_0_VALUESECRETREF",
                "STOWAGE_SECRET_PASSWORDSECRETREF",
            ]
        );
        assert_eq!(bindings[1].path, "headers.0.valueSecretRef");
        assert_eq!(bindings[2].reference, SecretKeyRef::new("db", "password"));
    }

    #[test]
    fn secrets_come_from_the_bound_env_variables() {
        let config = json!({"passwordSecretRef": {"name": "db", "key": "password"}});
        let bindings = secret_bindings(&config);
        let secrets = Secrets::from_bindings(&bindings, |name| {
            (name == "STOWAGE_SECRET_PASSWORDSECRETREF").then(|| "hunter2".to_owned())
        });
        let value = secrets.get(&SecretKeyRef::new("db", "password")).unwrap();
        assert_eq!(value.expose(), "hunter2");
        assert_eq!(
            format!("{value:?} {value}"),
            "SecretValue(<redacted>) <redacted>"
        );
    }

    #[test]
    fn redactor_replaces_percent_encoded_values_too() {
        let redactor = Redactor::new(["a b/c+\"é".to_owned()]);
        for text in [
            "raw a b/c+\"é end",
            "component a%20b%2Fc%2B%22%C3%A9 end",
            "lower a%20b%2fc%2b%22%c3%a9 end",
            "path a%20b/c+%22%C3%A9 end",
        ] {
            let redacted = redactor.redact(text);
            assert!(redacted.ends_with("<redacted> end"), "{text}: {redacted}");
        }
        // A value without anything to encode has one spelling.
        assert_eq!(Redactor::new(["Tok-3n_x.y~z".to_owned()]).values.len(), 1);
    }

    #[test]
    fn redactor_replaces_longest_values_first() {
        let redactor = Redactor::new(["abc".to_owned(), "abcdef".to_owned(), String::new()]);
        assert_eq!(
            redactor.redact("x abcdef y abc z"),
            "x <redacted> y <redacted> z"
        );
    }
}
