//! The plugin conformance kit (feature `conformance`, for plugins' tests): the checks
//! every plugin passes, whatever service it backs up.
//!
//! So far it checks what needs no service:
//! - [`check_config_schema`]: the config's JSON schema documents every field (its
//!   descriptions are what `kubectl explain` shows), closes every object to unknown fields,
//!   and takes credentials only as `...SecretRef` references to a Secret key, never as
//!   values in the spec;
//! - [`check_validation`]: `validate` accepts the documented examples and rejects each
//!   documented mistake with an error naming the field at fault.
//!
//! Each returns every problem found, so one run lists them all:
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     stowage_plugin_sdk::conformance::check_config_schema::<MyPlugin>().unwrap();
//! }
//! ```

use serde_json::{Map, Value};

use crate::Plugin;

/// Words that name a credential in a field name (compared case-insensitively): such a
/// field must be a `...SecretRef`.
pub const CREDENTIAL_WORDS: [&str; 6] = [
    "password",
    "passwd",
    "token",
    "secret",
    "credential",
    "privatekey",
];

/// Check `P::Config`'s JSON schema: every property has a description, every object
/// rejects unknown fields (`additionalProperties: false`), and every field whose name
/// speaks of a credential is a `...SecretRef` holding a Secret's `name` and `key`.
pub fn check_config_schema<P: Plugin>() -> Result<(), Vec<String>> {
    let schema = serde_json::to_value(schemars::schema_for!(P::Config))
        .map_err(|e| vec![format!("the schema does not serialize: {e}")])?;
    let mut problems = Vec::new();
    if schema
        .get("description")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        problems.push(format!(
            "spec.{}: the config type has no doc comment (the description of spec.{} in \
             kubectl explain)",
            P::KEY,
            P::KEY
        ));
    }
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    walk(
        &schema,
        &format!("spec.{}", P::KEY),
        &defs,
        &mut problems,
        0,
    );
    problems.sort();
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Check `P::validate`: each of `good` (configs as JSON) deserializes and validates; each
/// of `bad` (a config and the field path, relative to the config, its error must name)
/// deserializes and is rejected naming that field.
pub fn check_validation<P: Plugin>(
    good: &[Value],
    bad: &[(Value, &str)],
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let parse = |json: &Value, problems: &mut Vec<String>| -> Option<P::Config> {
        match serde_json::from_value::<P::Config>(json.clone()) {
            Ok(config) => Some(config),
            Err(e) => {
                problems.push(format!("{json}: does not deserialize: {e}"));
                None
            }
        }
    };
    for json in good {
        if let Some(config) = parse(json, &mut problems)
            && let Err(errors) = P::validate(&config)
        {
            problems.push(format!(
                "{json}: a documented example is rejected: {errors}"
            ));
        }
    }
    for (json, field) in bad {
        let Some(config) = parse(json, &mut problems) else {
            continue;
        };
        match P::validate(&config) {
            Ok(()) => problems.push(format!("{json}: accepted, but {field} is wrong")),
            Err(errors) => {
                if !errors.0.iter().any(|e| e.field == *field) {
                    problems.push(format!("{json}: rejected without naming {field}: {errors}"));
                }
                if let Some(e) = errors.0.iter().find(|e| e.message.trim().len() < 10) {
                    problems.push(format!(
                        "{json}: the message for {} says too little to act on: {:?}",
                        e.field, e.message
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> Option<(&'a Value, String)> {
    let reference = schema.get("$ref")?.as_str()?;
    let name = reference.strip_prefix("#/$defs/")?;
    Some((defs.get(name)?, name.to_owned()))
}

/// The schemas a property may take: itself, or the branches of an `anyOf`/`oneOf`
/// (an `Option` is `anyOf: [T, null]`), each with its `$ref` followed.
fn branches<'a>(
    schema: &'a Value,
    defs: &'a Map<String, Value>,
) -> Vec<(&'a Value, Option<String>)> {
    let mut out = Vec::new();
    let alternatives: Vec<&Value> = ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| schema.get(*k)?.as_array())
        .flatten()
        .collect();
    let candidates = if alternatives.is_empty() {
        vec![schema]
    } else {
        alternatives
    };
    for candidate in candidates {
        match resolve(candidate, defs) {
            Some((target, name)) => out.push((target, Some(name))),
            None => out.push((candidate, None)),
        }
    }
    out
}

fn is_secret_ref(schema: &Value) -> bool {
    let props = schema.get("properties").and_then(Value::as_object);
    props.is_some_and(|p| p.contains_key("name") && p.contains_key("key") && p.len() == 2)
}

fn walk(
    schema: &Value,
    path: &str,
    defs: &Map<String, Value>,
    problems: &mut Vec<String>,
    depth: usize,
) {
    if depth > 16 {
        return;
    }
    for (target, _) in branches(schema, defs) {
        if let Some(items) = target.get("items") {
            walk(items, &format!("{path}[]"), defs, problems, depth + 1);
        }
        let Some(properties) = target.get("properties").and_then(Value::as_object) else {
            continue;
        };
        if target.get("additionalProperties") != Some(&Value::Bool(false)) && !is_secret_ref(target)
        {
            problems.push(format!(
                "{path}: accepts unknown fields; add #[serde(deny_unknown_fields)] so a typo \
                 is rejected at apply instead of ignored"
            ));
        }
        for (name, property) in properties {
            let field = format!("{path}.{name}");
            let described = property
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.trim().len() >= 10);
            if !described {
                problems.push(format!(
                    "{field}: no description (a doc comment of at least a sentence), so \
                     kubectl explain shows nothing"
                ));
            }
            let lower = name.to_ascii_lowercase();
            let credential = CREDENTIAL_WORDS.iter().any(|w| lower.contains(w));
            if credential {
                let refs_a_secret = name.ends_with("SecretRef")
                    && branches(property, defs)
                        .iter()
                        .any(|(t, _)| is_secret_ref(t));
                if !refs_a_secret {
                    problems.push(format!(
                        "{field}: names a credential but is not a ...SecretRef to a Secret's \
                         name and key; a value in the spec would be readable by everyone who \
                         can read the BackupTarget"
                    ));
                }
                continue;
            }
            walk(property, &field, defs, problems, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ArtifactSink, BackupReport, Capabilities, Execution, PluginError, PluginInfo, ProbeReport,
        RunContext, SecretKeyRef, ValidationErrors,
    };
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// A config that breaks every rule once.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    struct Sloppy {
        host: String,
        /// The password, in the spec.
        password: String,
        /// A token from a Secret.
        token_secret_ref: SecretKeyRef,
    }

    /// A config that follows them.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Tidy {
        /// Host name of the server.
        host: String,
        /// The password, from a Secret.
        password_secret_ref: Option<SecretKeyRef>,
    }

    macro_rules! plugin {
        ($name:ident, $config:ty) => {
            struct $name;
            impl Plugin for $name {
                type Config = $config;
                const KEY: &'static str = "test";
                fn info() -> PluginInfo {
                    PluginInfo {
                        key: "test",
                        name: "test",
                        version: "1",
                        description: "test",
                        capabilities: Capabilities {
                            backup: true,
                            restore: false,
                            probe: true,
                        },
                        artifact_extension: "bin",
                        content_type: "application/octet-stream",
                        execution: Execution::Native,
                        needs_kubernetes_api: false,
                    }
                }
                fn validate(config: &$config) -> Result<(), ValidationErrors> {
                    if config.host.is_empty() {
                        return Err(ValidationErrors::single("host", "must not be empty"));
                    }
                    Ok(())
                }
                async fn probe(_: &$config, _: &RunContext) -> Result<ProbeReport, PluginError> {
                    unimplemented!()
                }
                async fn backup(
                    _: &$config,
                    _: &RunContext,
                    _: &mut ArtifactSink<'_>,
                ) -> Result<BackupReport, PluginError> {
                    unimplemented!()
                }
            }
        };
    }
    plugin!(SloppyPlugin, Sloppy);
    plugin!(TidyPlugin, Tidy);

    #[test]
    fn each_broken_rule_is_named() {
        let problems = check_config_schema::<SloppyPlugin>().unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "spec.test: accepts unknown fields",
            "spec.test.host: no description",
            "spec.test.password: names a credential but is not a ...SecretRef",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("tokenSecretRef"), "{text}");
    }

    #[test]
    fn a_tidy_config_passes_and_validation_cases_are_checked() {
        check_config_schema::<TidyPlugin>().unwrap();
        let good = [serde_json::json!({"host": "db"})];
        let bad = [(serde_json::json!({"host": ""}), "host")];
        check_validation::<TidyPlugin>(&good, &bad).unwrap();
        let wrong_field = [(serde_json::json!({"host": ""}), "port")];
        assert!(check_validation::<TidyPlugin>(&good, &wrong_field).is_err());
        let rejected_example = [serde_json::json!({"host": ""})];
        assert!(check_validation::<TidyPlugin>(&rejected_example, &[]).is_err());
    }
}
