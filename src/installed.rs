//! Installed plugins (`BackupPlugin`s): whether one can be accepted, the registry of the
//! accepted ones that Jobs and checks read, and the check of an external target's config
//! against its plugin's schema. Pure decisions; the operator's watch, the admission
//! webhook and the CLI all use these, so they always agree.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use kube::core::{Selector, SelectorExt};
use serde_json::Value;
use stowage_plugin_external::{ExternalConfig, ResolvedCapabilities, ResolvedPlugin};
use stowage_plugin_sdk::{protocol, secret_bindings};

use crate::api::{BackupPlugin, BackupPluginSpec};
use crate::registry::PluginConfig;

/// Schema keywords a BackupPlugin's config schema may use: the structural subset of
/// OpenAPI v3 that Kubernetes accepts in a CRD.
const KEYWORDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "default",
    "enum",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "example",
];
const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];
/// Property names that hold a secret value when they are plain strings.
const SECRET_LIKE: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "credentials",
];

/// What the acceptance check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Problems that keep the plugin from being accepted, each naming its field.
    pub problems: Vec<String>,
    /// Advice that does not block it.
    pub warnings: Vec<String>,
    /// `<path> -> <env variable>` of every secret reference field.
    pub secret_fields: Vec<String>,
}

impl Verdict {
    /// Whether targets may use the plugin.
    pub fn accepted(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Whether a BackupPlugin named `name` with `spec` can be used, and why not.
pub fn check(name: &str, spec: &BackupPluginSpec) -> Verdict {
    let mut v = Verdict::default();
    if PluginConfig::KEYS.contains(&name) {
        v.problems.push(format!(
            "metadata.name: {name:?} is the key of a built-in plugin; name the plugin with a \
             domain you own, e.g. {name}.example.com"
        ));
    } else if !name.contains('.') {
        v.problems.push(format!(
            "metadata.name: {name:?} has no dot; name the plugin with a domain you own \
             (e.g. {name}.example.com), so it never collides with a built-in plugin"
        ));
    }
    if spec.image.trim().is_empty() {
        v.problems
            .push("spec.image: empty; set the image that holds the plugin's command".into());
    } else if !spec.image.contains("@sha256:") {
        v.warnings.push(format!(
            "spec.image: {:?} is not pinned by digest; pin it (image@sha256:...) so the code \
             that sees your targets' secrets cannot change under the same name",
            spec.image
        ));
    }
    if spec.command.first().is_none_or(|c| c.trim().is_empty()) {
        v.problems.push(
            "spec.command: empty; set the plugin's entrypoint inside the image, e.g. \
             [\"/plugin/run.sh\"]"
                .into(),
        );
    }
    if spec.protocol_version != protocol::VERSION {
        v.problems.push(format!(
            "spec.protocolVersion: {} is not supported; this operator speaks protocol {}",
            spec.protocol_version,
            protocol::VERSION
        ));
    }
    if !spec.capabilities.backup {
        v.problems
            .push("spec.capabilities.backup: a plugin must at least back up".into());
    }
    for var in &spec.needs.env {
        if var.name.starts_with("STOWAGE_") {
            v.problems.push(format!(
                "spec.needs.env: {:?} starts with STOWAGE_, which the protocol owns; rename it",
                var.name
            ));
        }
    }
    if let Some(selector) = &spec.namespace_selector
        && let Err(e) = Selector::try_from(selector.clone())
    {
        v.problems.push(format!(
            "spec.namespaceSelector: not a valid label selector: {e}"
        ));
    }
    let schema = &spec.config_schema;
    v.problems.extend(structural_problems(schema));
    if v.problems.is_empty()
        && let Err(e) = jsonschema::validator_for(&closed(schema))
    {
        v.problems
            .push(format!("spec.configSchema: not a valid JSON schema: {e}"));
    }
    v.secret_fields = secret_fields(schema);
    v
}

/// Where a schema breaks the structural subset, each problem naming the node's path
/// under `spec.configSchema`.
pub fn structural_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        problems.push(
            "spec.configSchema: the root must be `type: object` (the config is an object)"
                .to_owned(),
        );
    }
    walk_schema(schema, "spec.configSchema", &mut problems);
    problems
}

fn walk_schema(node: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{at}: a schema must be an object"));
        return;
    };
    for key in map.keys() {
        if key.starts_with("x-kubernetes-") {
            continue;
        }
        if key == "$ref" || key == "$defs" || key == "definitions" {
            problems.push(format!(
                "{at}.{key}: references are not allowed; write the schema inline"
            ));
        } else if !KEYWORDS.contains(&key.as_str()) {
            problems.push(format!(
                "{at}.{key}: not a keyword of the structural schema subset (allowed: {})",
                KEYWORDS.join(", ")
            ));
        }
    }
    let preserve = map
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let int_or_string = map
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    let ty = map.get("type").and_then(Value::as_str);
    match ty {
        Some(t) if TYPES.contains(&t) => {}
        Some(t) => problems.push(format!(
            "{at}.type: {t:?} is not one of {}",
            TYPES.join(", ")
        )),
        None if map.get("type").is_some() => {
            problems.push(format!("{at}.type: must be one string, not a list"));
        }
        None if preserve || int_or_string => {}
        None => problems.push(format!(
            "{at}: every node needs a `type` (one of {})",
            TYPES.join(", ")
        )),
    }
    if let Some(pattern) = map.get("pattern") {
        match pattern.as_str() {
            Some(p) if regex_is_valid(p) => {}
            _ => problems.push(format!("{at}.pattern: not a valid regular expression")),
        }
    }
    let properties = map.get("properties").and_then(Value::as_object);
    if let Some(properties) = properties {
        if ty.is_some_and(|t| t != "object") {
            problems.push(format!("{at}.properties: only an object has properties"));
        }
        if map.contains_key("additionalProperties") {
            problems.push(format!(
                "{at}: `properties` and `additionalProperties` cannot be used together in a \
                 structural schema; unknown fields are refused without it"
            ));
        }
        for (name, child) in properties {
            let path = format!("{at}.properties.{name}");
            walk_schema(child, &path, problems);
            secret_shape(name, child, &path, problems);
        }
    } else if map.get("properties").is_some() {
        problems.push(format!("{at}.properties: must be an object of schemas"));
    }
    if let Some(required) = map.get("required") {
        match required.as_array() {
            Some(names) => {
                for name in names {
                    match name.as_str() {
                        Some(n) if properties.is_some_and(|p| p.contains_key(n)) => {}
                        Some(n) => problems
                            .push(format!("{at}.required: {n:?} is not among the properties")),
                        None => problems.push(format!("{at}.required: must list names")),
                    }
                }
            }
            None => problems.push(format!("{at}.required: must be a list of names")),
        }
    }
    match (ty, map.get("items")) {
        (Some("array"), Some(items)) => walk_schema(items, &format!("{at}.items"), problems),
        (Some("array"), None) => {
            problems.push(format!(
                "{at}: an array needs `items` (the schema of its elements)"
            ));
        }
        (_, Some(_)) => problems.push(format!("{at}.items: only an array has items")),
        _ => {}
    }
    if let Some(additional) = map.get("additionalProperties")
        && additional.is_object()
    {
        walk_schema(additional, &format!("{at}.additionalProperties"), problems);
    }
}

/// A `...SecretRef` property must be `{name, key}`; a secret-like plain string is refused.
fn secret_shape(name: &str, node: &Value, at: &str, problems: &mut Vec<String>) {
    if name.ends_with("SecretRef") {
        let string_prop = |p: &str| node["properties"][p]["type"].as_str() == Some("string");
        let required = |p: &str| {
            node["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|n| n == p))
        };
        if node["type"] != "object"
            || !string_prop("name")
            || !string_prop("key")
            || !required("name")
            || !required("key")
        {
            problems.push(format!(
                "{at}: a ...SecretRef field must be an object with required string properties \
                 `name` (the Secret) and `key` (its key)"
            ));
        }
        return;
    }
    let lower = name.to_ascii_lowercase();
    if node["type"] == "string" && SECRET_LIKE.iter().any(|s| lower.ends_with(s)) {
        problems.push(format!(
            "{at}: {name:?} looks like a secret value in the config, where anyone who can \
             read the target sees it; make it `{name}SecretRef` ({{name, key}} of a Secret)"
        ));
    }
}

fn regex_is_valid(pattern: &str) -> bool {
    jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": pattern})).is_ok()
}

/// `<config path> -> <env variable>` of every `...SecretRef` property of the schema.
pub fn secret_fields(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_secret_fields(schema, &mut Vec::new(), &mut out);
    out
}

fn collect_secret_fields(node: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, child) in properties {
        path.push(name.clone());
        if name.ends_with("SecretRef") {
            // The env name as the runner derives it from a config holding this field.
            let mut sample = serde_json::json!({"name": "s", "key": "k"});
            for segment in path.iter().rev() {
                sample = serde_json::json!({ segment.clone(): sample });
            }
            if let Some(binding) = secret_bindings(&sample).first() {
                out.push(format!("{} -> {}", path.join("."), binding.env));
            }
        } else {
            collect_secret_fields(child, path, out);
        }
        path.pop();
    }
}

/// What a run needs of `plugin` (its name, command, capabilities, artifact format and
/// declared environment), as the operator copies it into a Job; `stowage plugin check`
/// runs a plugin from it without a cluster.
pub fn resolved_plugin(plugin: &BackupPlugin) -> ResolvedPlugin {
    let spec = &plugin.spec;
    ResolvedPlugin {
        name: plugin.metadata.name.clone().unwrap_or_default(),
        version: spec.version.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        capabilities: ResolvedCapabilities {
            backup: spec.capabilities.backup,
            restore: spec.capabilities.restore,
            probe: spec.capabilities.probe,
        },
        extension: spec.artifact.extension.clone(),
        content_type: spec.artifact.content_type.clone(),
        env: spec
            .needs
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect(),
        needs_kubernetes_api: spec.needs.kubernetes_api,
    }
}

/// An accepted plugin, ready for checks and Jobs.
pub struct Installed {
    /// What a Job needs to run it.
    pub resolved: ResolvedPlugin,
    /// The compiled schema of its config.
    validator: jsonschema::Validator,
    /// The schema itself, to name the known fields when a config has an unknown one.
    schema: Value,
    /// The namespaces allowed to use it; `None` for all.
    selector: Option<Selector>,
    /// The `metadata.generation` this entry was built from.
    pub generation: Option<i64>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed")
            .field("resolved", &self.resolved)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Installed {
    /// The entry for an accepted plugin; `None` when `verdict` refused it.
    pub fn new(plugin: &BackupPlugin, verdict: &Verdict) -> Option<Installed> {
        if !verdict.accepted() {
            return None;
        }
        let spec = &plugin.spec;
        let validator = jsonschema::validator_for(&closed(&spec.config_schema)).ok()?;
        let selector = match &spec.namespace_selector {
            Some(s) => Some(Selector::try_from(s.clone()).ok()?),
            None => None,
        };
        Some(Installed {
            resolved: resolved_plugin(plugin),
            validator,
            schema: spec.config_schema.clone(),
            selector,
            generation: plugin.metadata.generation,
        })
    }

    /// Whether a namespace with `labels` may use the plugin.
    pub fn allows(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// Whether the plugin restricts namespaces (so a check needs the namespace's labels).
    pub fn restricts_namespaces(&self) -> bool {
        self.selector.is_some()
    }

    /// Every place where `config` breaks the plugin's schema, as
    /// `spec.external.config.<path>: <what is wrong>`, in document order.
    pub fn config_problems(&self, config: &serde_json::Map<String, Value>) -> Vec<String> {
        let instance = Value::Object(config.clone());
        let mut problems: Vec<String> = self
            .validator
            .iter_errors(&instance)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                let mut problem = format!("{}: {e}", field_path(&pointer));
                if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                    e.kind()
                {
                    problem.push_str(&unknown_field_hint(&self.schema, &pointer, unexpected));
                }
                problem
            })
            .collect();
        problems.dedup();
        problems
    }
}

/// `; did you mean "baseDn"? known fields: ...` for fields the object at `pointer` does
/// not have: the one that differs only in case (or by one character), and the list.
fn unknown_field_hint(schema: &Value, pointer: &str, unexpected: &[String]) -> String {
    let mut node = schema;
    for segment in pointer.split('/').skip(1) {
        node = if segment.parse::<usize>().is_ok() {
            &node["items"]
        } else {
            &node["properties"][segment]
        };
    }
    let Some(known) = node["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect::<Vec<_>>())
    else {
        return String::new();
    };
    let mut hint = String::new();
    for field in unexpected {
        if let Some(close) = known.iter().find(|k| close_to(k, field)) {
            hint.push_str(&format!("; did you mean {close:?} for {field:?}?"));
        }
    }
    hint.push_str(&format!("; known fields: {}", known.join(", ")));
    hint
}

/// Whether `a` and `b` differ only in case, or by one character.
fn close_to(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    if a == b {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    match a.len().abs_diff(b.len()) {
        0 => a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1,
        1 => {
            let (short, long) = if a.len() < b.len() {
                (&a, &b)
            } else {
                (&b, &a)
            };
            (0..long.len()).any(|skip| {
                long.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, c)| c)
                    .eq(short.iter())
            })
        }
        _ => false,
    }
}

/// The schema with every object that lists its `properties` closed to other fields
/// (`additionalProperties: false`), unless it keeps unknown fields on purpose
/// (`x-kubernetes-preserve-unknown-fields`): a structural schema cannot say so itself,
/// and a misspelt field (`s3url` for `s3Url`) must be refused, not ignored.
pub fn closed(schema: &Value) -> Value {
    let mut out = schema.clone();
    close(&mut out);
    out
}

fn close(node: &mut Value) {
    let Some(map) = node.as_object_mut() else {
        return;
    };
    // OpenAPI v3 spellings that JSON Schema says otherwise: `nullable: true` is a
    // second type, `exclusiveMinimum: true` makes `minimum` exclusive.
    if map.remove("nullable") == Some(Value::Bool(true))
        && let Some(Value::String(ty)) = map.get("type").cloned()
    {
        map.insert("type".into(), serde_json::json!([ty, "null"]));
    }
    for (exclusive, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match map.get(exclusive) {
            Some(Value::Bool(true)) => {
                if let Some(value) = map.remove(bound) {
                    map.insert(exclusive.into(), value);
                } else {
                    map.remove(exclusive);
                }
            }
            Some(Value::Bool(false)) => {
                map.remove(exclusive);
            }
            _ => {}
        }
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if let Some(properties) = map.get_mut("properties").and_then(Value::as_object_mut) {
        for child in properties.values_mut() {
            close(child);
        }
        if !preserve && !map.contains_key("additionalProperties") {
            map.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    if let Some(items) = map.get_mut("items") {
        close(items);
    }
    if let Some(additional) = map.get_mut("additionalProperties") {
        close(additional);
    }
}

/// `spec.external.config.a.b[0]` for the JSON pointer `/a/b/0`.
pub fn field_path(pointer: &str) -> String {
    let mut out = String::from(protocol::CONFIG_FIELD);
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            out.push('.');
            out.push_str(&segment);
        }
    }
    out
}

/// Why an external target cannot run, with its condition reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// No BackupPlugin of that name exists.
    NotInstalled(String),
    /// It exists but was not accepted.
    NotAccepted(String),
    /// Its namespace selector leaves this namespace out.
    NotAllowed(String),
    /// The config breaks the plugin's schema.
    InvalidConfig(String),
}

impl Unusable {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Unusable::NotInstalled(_) => "PluginNotInstalled",
            Unusable::NotAccepted(_) => "PluginNotAccepted",
            Unusable::NotAllowed(_) => "PluginNotAllowed",
            Unusable::InvalidConfig(_) => "InvalidConfig",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Unusable::NotInstalled(m)
            | Unusable::NotAccepted(m)
            | Unusable::NotAllowed(m)
            | Unusable::InvalidConfig(m) => m,
        }
    }
}

/// The BackupPlugins the operator sees: accepted ones with their compiled schemas, and
/// the problems of the others. Shared by the watch that fills it, the target checks and
/// Job building.
#[derive(Clone, Default)]
pub struct InstalledPlugins {
    inner: Arc<RwLock<HashMap<String, Entry>>>,
}

#[derive(Clone)]
enum Entry {
    Accepted(Arc<Installed>),
    Refused(Vec<String>),
}

impl std::fmt::Debug for InstalledPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.read().keys().cloned().collect();
        f.debug_struct("InstalledPlugins")
            .field("names", &names)
            .finish()
    }
}

impl InstalledPlugins {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `plugin` as checked; returns the verdict. Whether it changed what targets
    /// see is returned too, so only then are its targets woken.
    pub fn set(&self, plugin: &BackupPlugin) -> (Verdict, bool) {
        let name = plugin.metadata.name.clone().unwrap_or_default();
        let verdict = check(&name, &plugin.spec);
        let entry = match Installed::new(plugin, &verdict) {
            Some(installed) => Entry::Accepted(Arc::new(installed)),
            None => Entry::Refused(verdict.problems.clone()),
        };
        let mut map = self.write();
        let changed = match (map.get(&name), &entry) {
            (Some(Entry::Accepted(old)), Entry::Accepted(new)) => {
                old.generation != new.generation || old.resolved != new.resolved
            }
            (Some(Entry::Refused(old)), Entry::Refused(new)) => old != new,
            _ => true,
        };
        map.insert(name, entry);
        (verdict, changed)
    }

    /// Forgets a deleted plugin.
    pub fn remove(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    /// The accepted plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Installed>> {
        match self.read().get(name) {
            Some(Entry::Accepted(installed)) => Some(installed.clone()),
            _ => None,
        }
    }

    /// Names of the plugins known, accepted or not.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether an external target's config can run in a namespace with `labels`. With
    /// `None` the namespace rule is not checked, only the plugin and the schema (the
    /// admission webhook and a restore's check, which do not read namespaces; the
    /// target's own check passes the labels whenever the plugin has a selector, see
    /// [`Installed::restricts_namespaces`]).
    pub fn check_target(
        &self,
        config: &ExternalConfig,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Arc<Installed>, Unusable> {
        let name = &config.plugin;
        let installed = match self.read().get(name) {
            Some(Entry::Accepted(installed)) => installed.clone(),
            Some(Entry::Refused(problems)) => {
                return Err(Unusable::NotAccepted(format!(
                    "BackupPlugin {name:?} is installed but not accepted: {}; see kubectl \
                     describe backupplugin {name}",
                    problems.join("; ")
                )));
            }
            None => {
                let known = self.names();
                return Err(Unusable::NotInstalled(format!(
                    "no BackupPlugin {name:?} is installed (spec.external.plugin){}; install \
                     it or fix the name",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!("; installed: {}", known.join(", "))
                    }
                )));
            }
        };
        if let Some(labels) = labels
            && !installed.allows(labels)
        {
            return Err(Unusable::NotAllowed(format!(
                "BackupPlugin {name:?} does not allow namespace {namespace:?} (its \
                 spec.namespaceSelector leaves it out); ask a cluster administrator"
            )));
        }
        let problems = installed.config_problems(&config.config);
        if !problems.is_empty() {
            return Err(Unusable::InvalidConfig(format!(
                "the config does not match the schema of BackupPlugin {name:?}: {}",
                problems.join("; ")
            )));
        }
        Ok(installed)
    }
}

/// A BackupPlugin `name` with `image` and config `schema` (backup only, `ldif`
/// artifacts, generation 1), for the tests of the modules that read plugins.
#[cfg(test)]
pub(crate) fn fixture(name: &str, image: &str, schema: Value) -> BackupPlugin {
    use crate::api::{ArtifactFormat, PluginCapabilities, PluginNeeds};
    let mut plugin = BackupPlugin::new(
        name,
        BackupPluginSpec {
            image: image.into(),
            command: vec!["/run".into()],
            version: "1".into(),
            description: String::new(),
            protocol_version: 1,
            capabilities: PluginCapabilities {
                backup: true,
                ..Default::default()
            },
            artifact: ArtifactFormat {
                extension: "ldif".into(),
                content_type: "text/x-ldif".into(),
            },
            config_schema: schema,
            needs: PluginNeeds::default(),
            namespace_selector: None,
        },
    );
    plugin.metadata.generation = Some(1);
    plugin
}

#[cfg(test)]
mod tests;
