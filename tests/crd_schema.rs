//! The generated CRDs: `crds/` is up to date, every property is documented, secrets are
//! only ever references, every plugin is under `spec`, and the CEL rules behave.

use std::path::Path;

use serde_json::{Value, json};
use stowage::crd;
use stowage::registry::PluginConfig;

fn open_api_schema(kind: &str) -> Value {
    let crd = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("CRD exists");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// Calls `visit(path, name, schema)` for every property at any depth.
fn walk_properties(path: &str, schema: &Value, visit: &mut dyn FnMut(&str, &str, &Value)) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let child = format!("{path}.{name}");
            visit(&child, name, prop);
            walk_properties(&child, prop, visit);
        }
    }
    if let Some(items) = schema.get("items") {
        walk_properties(&format!("{path}[]"), items, visit);
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk_properties(&format!("{path}{{}}"), additional, visit);
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for sub in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk_properties(path, sub, visit);
        }
    }
}

#[test]
fn crds_directory_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = Vec::new();
    for crd in crd::all() {
        let name = crd::file_name(&crd);
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = crd::to_yaml(&crd).unwrap();
        assert!(
            on_disk == generated,
            "crds/{name} is out of date: run `cargo run -- crd --output-dir crds` and commit"
        );
        expected_files.push(name);
    }
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    found.sort();
    expected_files.sort();
    assert_eq!(
        found, expected_files,
        "crds/ holds a file the code does not generate"
    );
}

#[test]
fn every_property_has_a_description() {
    let mut missing = Vec::new();
    for kind in ["BackupTarget", "BackupSchedule"] {
        let schema = open_api_schema(kind);
        walk_properties(kind, &schema, &mut |path, _, prop| {
            let described = prop
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // apiVersion, kind and metadata are described by Kubernetes itself.
            let standard = matches!(
                path.rsplit_once('.').map(|(p, n)| (p.contains('.'), n)),
                Some((false, "apiVersion" | "kind" | "metadata"))
            );
            if !described && !standard {
                missing.push(path.to_owned());
            }
        });
    }
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:#?}"
    );
}

fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "credential",
        "privatekey",
        "key",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

#[test]
fn secret_like_fields_are_secret_references() {
    let mut offenders = Vec::new();
    let schema = open_api_schema("BackupTarget");
    let spec = &schema["properties"]["spec"];
    for key in PluginConfig::KEYS {
        let plugin = &spec["properties"][key];
        walk_properties(&format!("spec.{key}"), plugin, &mut |path, name, prop| {
            if name.ends_with("SecretRef") {
                let props = prop.get("properties").and_then(Value::as_object);
                let keys: Vec<&str> = props
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if keys != ["key", "name"] {
                    offenders.push(format!(
                        "{path}: a *SecretRef must be {{name, key}}, has {keys:?}"
                    ));
                }
                return;
            }
            // Inside a SecretKeyRef, `key` and `name` are fine.
            if path.contains("SecretRef.") {
                return;
            }
            if looks_secret(name) && prop.get("type") != Some(&json!("object")) {
                offenders.push(format!(
                    "{path}: looks like a secret but is a plain {}; make it a SecretKeyRef named {name}SecretRef",
                    prop.get("type").and_then(Value::as_str).unwrap_or("value")
                ));
            }
        });
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn every_plugin_is_a_documented_one_of_branch_under_spec() {
    let schema = open_api_schema("BackupTarget");
    let spec = &schema["properties"]["spec"];
    let branches: Vec<&str> = spec["oneOf"]
        .as_array()
        .expect("spec has oneOf")
        .iter()
        .map(|b| b["required"][0].as_str().unwrap())
        .collect();
    assert_eq!(branches, PluginConfig::KEYS);
    for key in PluginConfig::KEYS {
        let plugin = &spec["properties"][key];
        assert_eq!(
            plugin["type"], "object",
            "spec.{key} is missing or not an object"
        );
        assert!(
            plugin["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        let standalone = PluginConfig::config_schema(key).unwrap().to_value();
        let required = |v: &Value| v.get("required").cloned().unwrap_or(json!([]));
        assert_eq!(
            required(plugin),
            required(&standalone),
            "spec.{key}.required"
        );
    }
}

#[test]
fn printer_columns_and_names_are_as_documented() {
    let columns = |kind: &str| -> Vec<String> {
        let crd = crd::all()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        assert_eq!(crd.spec.names.categories, Some(vec!["stowage".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        version
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.to_uppercase())
            .collect()
    };
    assert_eq!(
        columns("BackupTarget"),
        ["PLUGIN", "READY", "LAST BACKUP", "SIZE", "AGE"]
    );
    assert_eq!(
        columns("BackupSchedule"),
        [
            "SCHEDULE", "TIMEZONE", "TARGETS", "SUSPEND", "LAST RUN", "NEXT RUN", "AGE"
        ]
    );
}

#[test]
fn conditions_are_list_maps_keyed_by_type() {
    for kind in ["BackupTarget", "BackupSchedule"] {
        let schema = open_api_schema(kind);
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            json!(["type"]),
            "{kind}"
        );
    }
}

mod cel {
    use super::*;
    use kube::core::cel::Validator;

    fn check(kind: &str, object: Value) -> Result<(), String> {
        Validator::new()
            .validate(&open_api_schema(kind), &object, None)
            .map_err(|e| e.to_string())
    }

    fn target(postgres: Value, extra: Value) -> Value {
        let mut spec = json!({"postgres": postgres, "storage": {"claimName": "backups"}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
               "metadata": {"name": "db"}, "spec": spec})
    }

    #[test]
    fn postgres_needs_exactly_one_of_database_and_all_databases() {
        let ok = json!({"host": "db", "username": "u", "database": "shop"});
        check("BackupTarget", target(ok, json!({}))).unwrap();
        let all = json!({"host": "db", "username": "u", "allDatabases": true});
        check("BackupTarget", target(all, json!({}))).unwrap();
        let neither = json!({"host": "db", "username": "u"});
        let err = check("BackupTarget", target(neither, json!({}))).unwrap_err();
        assert!(
            err.contains("set exactly one of spec.postgres.database"),
            "{err}"
        );
        let both = json!({"host": "db", "username": "u", "database": "x", "allDatabases": true});
        assert!(check("BackupTarget", target(both, json!({}))).is_err());
    }

    #[test]
    fn mysql_needs_exactly_one_of_database_databases_and_all_databases() {
        let mysql = |selection: Value| {
            let mut config = json!({"host": "db", "username": "u"});
            config
                .as_object_mut()
                .unwrap()
                .extend(selection.as_object().unwrap().clone());
            json!({"apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
                   "metadata": {"name": "db"},
                   "spec": {"mysql": config, "storage": {"claimName": "backups"}}})
        };
        // (selection, accepted)
        let cases = [
            (json!({"database": "shop"}), true),
            (json!({"databases": ["a", "b"]}), true),
            (json!({"allDatabases": true}), true),
            (json!({}), false),
            (json!({"databases": []}), false),
            (json!({"allDatabases": false}), false),
            (json!({"database": "a", "databases": ["b"]}), false),
            (json!({"database": "a", "allDatabases": true}), false),
            (json!({"databases": ["a"], "allDatabases": true}), false),
        ];
        for (selection, accepted) in cases {
            match check("BackupTarget", mysql(selection.clone())) {
                Ok(()) => assert!(accepted, "{selection} was accepted"),
                Err(err) => {
                    assert!(!accepted, "{selection}: {err}");
                    assert!(
                        err.contains("set exactly one of spec.mysql.database"),
                        "{selection}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn pg_dumpall_only_writes_plain_sql() {
        let pg = json!({"host": "db", "username": "u", "allDatabases": true, "format": "custom"});
        let err = check("BackupTarget", target(pg, json!({}))).unwrap_err();
        assert!(err.contains("only writes the plain format"), "{err}");
    }

    #[test]
    fn probe_interval_has_a_floor() {
        let pg = json!({"host": "db", "username": "u", "database": "shop"});
        check(
            "BackupTarget",
            target(pg.clone(), json!({"probe": {"interval": "1h"}})),
        )
        .unwrap();
        let err = check(
            "BackupTarget",
            target(pg, json!({"probe": {"interval": "10s"}})),
        )
        .unwrap_err();
        assert!(err.contains("at least 1m"), "{err}");
    }

    fn postgres() -> Value {
        json!({"host": "db", "username": "u", "database": "shop"})
    }

    /// The errors of a BackupTarget with `extra` merged into its spec, one string per
    /// rejected case, for the cases where `expect` (accept or reject) does not hold.
    fn wrong_verdicts(cases: &[(Value, bool)], names: &str) -> Vec<String> {
        let mut wrong = Vec::new();
        for (extra, valid) in cases {
            match (
                check("BackupTarget", target(postgres(), extra.clone())),
                valid,
            ) {
                (Ok(()), true) => {}
                (Err(e), false) if e.contains(names) => {}
                (result, _) => wrong.push(format!("{extra}: {result:?}")),
            }
        }
        wrong
    }

    #[test]
    fn claim_name_is_a_dns_subdomain() {
        let claim = |name: &str| json!({"storage": {"claimName": name}});
        let mut cases = Vec::new();
        for good in ["backups", "backups-2", "nfs.backups", "0", "a-b.c-d"] {
            cases.push((claim(good), true));
        }
        for bad in [
            "Backups", "bad_name", "-backups", "backups-", "a..b", ".a", "a.", "a/b", "a b",
        ] {
            cases.push((claim(bad), false));
        }
        let wrong = wrong_verdicts(
            &cases,
            "spec.storage.claimName must be the name of a PersistentVolumeClaim",
        );
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn service_account_name_is_a_dns_subdomain() {
        let account = |name: &str| json!({"job": {"serviceAccountName": name}});
        let mut cases = Vec::new();
        for good in ["default", "stowage-runner", "runner.v2"] {
            cases.push((account(good), true));
        }
        for bad in [
            "Runner",
            "runner_1",
            "runner-",
            "a/b",
            "system:serviceaccount:x:y",
        ] {
            cases.push((account(bad), false));
        }
        let wrong = wrong_verdicts(
            &cases,
            "spec.job.serviceAccountName must be the name of a ServiceAccount",
        );
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn node_selector_keys_are_label_keys() {
        let key = |k: &str| json!({"job": {"nodeSelector": {k: "x"}}});
        let mut cases = Vec::new();
        let longest_name = "n".repeat(63);
        let longest_prefix = format!("{}/arch", "p".repeat(253));
        for good in [
            "disktype",
            "kubernetes.io/arch",
            "node-role.kubernetes.io/backup",
            "topology.kubernetes.io/zone",
            "Disk_Type.v2",
            "example.com/Disk-Type_2",
            &longest_name,
            &longest_prefix,
        ] {
            cases.push((key(good), true));
        }
        let long_name = "n".repeat(64);
        let long_prefix = format!("{}/arch", "p".repeat(254));
        for bad in [
            "",
            "/arch",
            "kubernetes.io/",
            "Kubernetes.IO/arch",
            "a/b/c",
            "arch-",
            "_arch",
            "disk type",
            "example_com/arch",
            &long_name,
            &long_prefix,
        ] {
            cases.push((key(bad), false));
        }
        let wrong = wrong_verdicts(&cases, "spec.job.nodeSelector keys must be label keys");
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn node_selector_values_are_label_values() {
        let value = |v: &str| json!({"job": {"nodeSelector": {"disktype": v}}});
        let mut cases = Vec::new();
        let longest = "v".repeat(63);
        for good in ["", "ssd", "SSD_2.fast-1", "0", &longest] {
            cases.push((value(good), true));
        }
        let long = "v".repeat(64);
        for bad in ["fast ssd", "-ssd", "ssd.", "a/b", "ssd\n", &long] {
            cases.push((value(bad), false));
        }
        let wrong = wrong_verdicts(&cases, "spec.job.nodeSelector values must be label values");
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn starting_deadline_has_a_floor_of_ten_seconds() {
        // Below ~10 s a tick that is handled a few seconds late (a busy controller, a
        // leader handover) would be recorded as missed; see MIN_STARTING_DEADLINE.
        let schema = open_api_schema("BackupSchedule");
        let deadline = &schema["properties"]["spec"]["properties"]["startingDeadlineSeconds"];
        assert_eq!(deadline["minimum"].as_f64(), Some(10.0), "{deadline}");
    }

    #[test]
    fn schedule_time_zone_belongs_in_its_own_field() {
        let schedule = |cron: &str| {
            json!({"apiVersion": "stowage.dev/v1alpha1", "kind": "BackupSchedule",
                   "metadata": {"name": "nightly"},
                   "spec": {"schedule": cron, "targets": {}}})
        };
        check("BackupSchedule", schedule("30 2 * * *")).unwrap();
        let err = check("BackupSchedule", schedule("TZ=Europe/Paris 30 2 * * *")).unwrap_err();
        assert!(err.contains("spec.timeZone"), "{err}");
    }
}
