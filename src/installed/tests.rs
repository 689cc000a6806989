use serde_json::json;

use super::*;
use crate::api::{ArtifactFormat, PluginCapabilities, PluginEnvVar, PluginNeeds};

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["url", "bindPasswordSecretRef"],
        "properties": {
            "url": {"type": "string", "pattern": "^ldaps?://", "description": "Server URL"},
            "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 3600},
            "mode": {"type": "string", "enum": ["full", "schema"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
            "bindPasswordSecretRef": {
                "type": "object",
                "required": ["name", "key"],
                "properties": {"name": {"type": "string"}, "key": {"type": "string"}}
            },
            "tls": {"type": "object", "properties": {
                "caSecretRef": {
                    "type": "object", "required": ["name", "key"],
                    "properties": {"name": {"type": "string"}, "key": {"type": "string"}}
                }
            }},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
    })
}

fn spec(schema: Value) -> BackupPluginSpec {
    BackupPluginSpec {
        image: "registry.example.com/ldap@sha256:0123".into(),
        command: vec!["/plugin/run.sh".into()],
        version: "1.0.0".into(),
        description: "LDAP".into(),
        protocol_version: 1,
        capabilities: PluginCapabilities {
            backup: true,
            restore: true,
            probe: true,
        },
        artifact: ArtifactFormat {
            extension: "ldif".into(),
            content_type: "text/x-ldif".into(),
        },
        config_schema: schema,
        needs: PluginNeeds::default(),
        namespace_selector: None,
    }
}

fn plugin(name: &str, spec: BackupPluginSpec) -> BackupPlugin {
    let mut plugin = BackupPlugin::new(name, spec);
    plugin.metadata.generation = Some(1);
    plugin
}

#[test]
fn a_sound_plugin_is_accepted_with_its_secret_fields() {
    let verdict = check("ldap.example.com", &spec(schema()));
    assert_eq!(verdict.problems, Vec::<String>::new());
    assert_eq!(verdict.warnings, Vec::<String>::new());
    assert_eq!(
        verdict.secret_fields,
        [
            "bindPasswordSecretRef -> STOWAGE_SECRET_BINDPASSWORDSECRETREF",
            "tls.caSecretRef -> STOWAGE_SECRET_TLS_CASECRETREF"
        ]
    );
    let mut tagged = spec(schema());
    tagged.image = "registry.example.com/ldap:1".into();
    let verdict = check("ldap.example.com", &tagged);
    assert!(verdict.accepted());
    assert!(
        verdict.warnings[0].contains("not pinned by digest"),
        "{verdict:?}"
    );
}

#[test]
fn each_bad_plugin_is_refused_naming_the_field() {
    type Edit = fn(&mut BackupPluginSpec);
    let cases: Vec<(&str, &str, Edit, &str)> = vec![
        (
            "built-in name",
            "postgres",
            |_| {},
            "metadata.name: \"postgres\" is the key of a built-in plugin",
        ),
        (
            "no dot",
            "ldap",
            |_| {},
            "metadata.name: \"ldap\" has no dot",
        ),
        (
            "empty image",
            "a.b",
            |s| s.image = " ".into(),
            "spec.image: empty",
        ),
        (
            "empty command",
            "a.b",
            |s| s.command.clear(),
            "spec.command: empty",
        ),
        (
            "protocol 2",
            "a.b",
            |s| s.protocol_version = 2,
            "spec.protocolVersion: 2 is not supported",
        ),
        (
            "no backup",
            "a.b",
            |s| s.capabilities.backup = false,
            "spec.capabilities.backup",
        ),
        (
            "STOWAGE_ env",
            "a.b",
            |s| {
                s.needs.env.push(PluginEnvVar {
                    name: "STOWAGE_CONFIG".into(),
                    value: "x".into(),
                })
            },
            "spec.needs.env: \"STOWAGE_CONFIG\"",
        ),
        (
            "root not object",
            "a.b",
            |s| s.config_schema = json!({"type": "string"}),
            "spec.configSchema: the root must be `type: object`",
        ),
        (
            "$ref",
            "a.b",
            |s| s.config_schema["properties"]["url"] = json!({"$ref": "#/definitions/url"}),
            "spec.configSchema.properties.url.$ref: references are not allowed",
        ),
        (
            "no type",
            "a.b",
            |s| s.config_schema["properties"]["url"] = json!({"description": "x"}),
            "spec.configSchema.properties.url: every node needs a `type`",
        ),
        (
            "type list",
            "a.b",
            |s| s.config_schema["properties"]["url"] = json!({"type": ["string", "null"]}),
            "spec.configSchema.properties.url.type: must be one string",
        ),
        (
            "unknown keyword",
            "a.b",
            |s| s.config_schema["properties"]["url"]["oneOf"] = json!([]),
            "spec.configSchema.properties.url.oneOf: not a keyword",
        ),
        (
            "array without items",
            "a.b",
            |s| s.config_schema["properties"]["tags"] = json!({"type": "array"}),
            "spec.configSchema.properties.tags: an array needs `items`",
        ),
        (
            "properties and additionalProperties",
            "a.b",
            |s| s.config_schema["additionalProperties"] = json!(false),
            "`properties` and `additionalProperties` cannot be used together",
        ),
        (
            "required not a property",
            "a.b",
            |s| s.config_schema["required"] = json!(["url", "port"]),
            "spec.configSchema.required: \"port\" is not among the properties",
        ),
        (
            "bad pattern",
            "a.b",
            |s| s.config_schema["properties"]["url"]["pattern"] = json!("(unclosed"),
            "spec.configSchema.properties.url.pattern: not a valid regular expression",
        ),
        (
            "secret ref shape",
            "a.b",
            |s| s.config_schema["properties"]["bindPasswordSecretRef"] = json!({"type": "string"}),
            "spec.configSchema.properties.bindPasswordSecretRef: a ...SecretRef field must be an object",
        ),
        (
            "plain password",
            "a.b",
            |s| s.config_schema["properties"]["bindPassword"] = json!({"type": "string"}),
            "\"bindPassword\" looks like a secret value",
        ),
    ];
    for (case, name, edit, expected) in cases {
        let mut s = spec(schema());
        edit(&mut s);
        let verdict = check(name, &s);
        assert!(!verdict.accepted(), "{case}: accepted");
        assert!(
            verdict.problems.iter().any(|p| p.contains(expected)),
            "{case}: {:?} lacks {expected:?}",
            verdict.problems
        );
    }
}

fn external(config: Value) -> ExternalConfig {
    ExternalConfig {
        plugin: "ldap.example.com".into(),
        config: config.as_object().unwrap().clone(),
        resolved: None,
    }
}

fn good_config() -> Value {
    json!({"url": "ldap://ldap.shop.svc", "bindPasswordSecretRef": {"name": "ldap", "key": "pw"}})
}

#[test]
fn a_config_is_checked_against_the_schema_with_field_paths() {
    let plugins = InstalledPlugins::default();
    let (verdict, changed) = plugins.set(&plugin("ldap.example.com", spec(schema())));
    assert!(verdict.accepted() && changed);
    let installed = plugins
        .check_target(&external(good_config()), "shop", None)
        .unwrap();
    assert_eq!(installed.resolved.extension, "ldif");
    assert_eq!(installed.resolved.command, ["/plugin/run.sh"]);

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"url": "ldap://x"}),
            "spec.external.config: \"bindPasswordSecretRef\" is a required property",
        ),
        (
            json!({"url": "http://x", "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "spec.external.config.url: \"http://x\" does not match \"^ldaps?://\"",
        ),
        (
            json!({"url": "ldap://x", "timeoutSeconds": 0, "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "spec.external.config.timeoutSeconds: 0 is less than the minimum of 1",
        ),
        (
            json!({"url": "ldap://x", "mode": "half", "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "spec.external.config.mode:",
        ),
        (
            json!({"url": "ldap://x", "tags": ["ok", "far-too-long"], "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "spec.external.config.tags[1]:",
        ),
        (
            json!({"url": "ldap://x", "bindPasswordSecretRef": {"name": "a"}}),
            "spec.external.config.bindPasswordSecretRef: \"key\" is a required property",
        ),
        (
            json!({"url": "ldap://x", "timeoutSecond": 5, "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "'timeoutSecond' was unexpected); did you mean \"timeoutSeconds\" for \"timeoutSecond\"?; known fields: bindPasswordSecretRef, extra, mode, tags, timeoutSeconds, tls, url",
        ),
        (
            json!({"URL": "ldap://x", "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "did you mean \"url\" for \"URL\"?",
        ),
        (
            json!({"url": "ldap://x", "tls": {"caSecretRf": {}}, "bindPasswordSecretRef": {"name": "a", "key": "b"}}),
            "spec.external.config.tls: Additional properties are not allowed ('caSecretRf' was unexpected); did you mean \"caSecretRef\" for \"caSecretRf\"?; known fields: caSecretRef",
        ),
    ];
    for (config, expected) in cases {
        match plugins.check_target(&external(config.clone()), "shop", None) {
            Err(Unusable::InvalidConfig(message)) => {
                assert!(
                    message.contains(expected),
                    "{config}: {message} lacks {expected:?}"
                )
            }
            other => panic!("{config}: {other:?}"),
        }
    }
    // Fields under x-kubernetes-preserve-unknown-fields stay open.
    let mut open = good_config();
    open["extra"] = json!({"anything": [1, 2]});
    assert!(plugins.check_target(&external(open), "shop", None).is_ok());
}

#[test]
fn missing_refused_and_namespace_restricted_plugins_are_reported() {
    let plugins = InstalledPlugins::default();
    let err = plugins
        .check_target(&external(good_config()), "shop", None)
        .unwrap_err();
    assert_eq!(err.reason(), "PluginNotInstalled");
    assert!(
        err.message()
            .contains("no BackupPlugin \"ldap.example.com\" is installed"),
        "{err:?}"
    );

    let mut bad = spec(schema());
    bad.image.clear();
    plugins.set(&plugin("ldap.example.com", bad));
    let err = plugins
        .check_target(&external(good_config()), "shop", None)
        .unwrap_err();
    assert_eq!(err.reason(), "PluginNotAccepted");
    assert!(err.message().contains("spec.image: empty"), "{err:?}");

    let mut restricted = spec(schema());
    restricted.namespace_selector =
        Some(serde_json::from_value(json!({"matchLabels": {"team": "ops"}})).unwrap());
    let (_, changed) = plugins.set(&plugin("ldap.example.com", restricted.clone()));
    assert!(changed);
    let (_, changed) = plugins.set(&plugin("ldap.example.com", restricted));
    assert!(!changed, "the same plugin again changes nothing");
    let ops = BTreeMap::from([("team".to_owned(), "ops".to_owned())]);
    let dev = BTreeMap::from([("team".to_owned(), "dev".to_owned())]);
    assert!(
        plugins
            .check_target(&external(good_config()), "ops", Some(&ops))
            .is_ok()
    );
    let err = plugins
        .check_target(&external(good_config()), "dev", Some(&dev))
        .unwrap_err();
    assert_eq!(err.reason(), "PluginNotAllowed");
    // Without labels (the webhook, a restore) only the plugin and the schema are checked:
    // a bad config is still refused there.
    assert!(
        plugins
            .check_target(&external(good_config()), "dev", None)
            .is_ok()
    );
    assert_eq!(
        plugins
            .check_target(&external(json!({"url": 5})), "dev", None)
            .unwrap_err()
            .reason(),
        "InvalidConfig"
    );
    assert!(plugins.remove("ldap.example.com"));
    assert_eq!(
        plugins
            .check_target(&external(good_config()), "ops", Some(&ops))
            .unwrap_err()
            .reason(),
        "PluginNotInstalled"
    );
}

#[test]
fn json_pointers_become_field_paths() {
    assert_eq!(field_path(""), "spec.external.config");
    assert_eq!(field_path("/a/b/0/c~1d"), "spec.external.config.a.b[0].c/d");
}

#[test]
fn openapi_nullable_and_boolean_exclusive_bounds_mean_what_they_say() {
    let mut s = spec(json!({"type": "object", "properties": {
        "port": {"type": "integer", "minimum": 0, "exclusiveMinimum": true, "maximum": 10, "exclusiveMaximum": false},
        "note": {"type": "string", "nullable": true}
    }}));
    s.image = "r/x@sha256:00".into();
    let plugins = InstalledPlugins::default();
    let (verdict, _) = plugins.set(&plugin("ldap.example.com", s));
    assert!(verdict.accepted(), "{verdict:?}");
    let check = |config: Value| plugins.check_target(&external(config), "shop", None);
    assert!(check(json!({"port": 1, "note": null})).is_ok());
    assert!(check(json!({"port": 10})).is_ok());
    let err = check(json!({"port": 0})).unwrap_err();
    assert!(
        err.message().contains("spec.external.config.port"),
        "{err:?}"
    );
    assert!(check(json!({"port": 11})).is_err());
}
