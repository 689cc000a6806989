//! The conformance kit's checks that need no service.

use serde_json::json;
use stowage_plugin_etcd::EtcdPlugin;
use stowage_plugin_sdk::conformance::{check_config_schema, check_validation};

#[test]
fn the_config_schema_documents_every_field_and_takes_credentials_only_from_secrets() {
    check_config_schema::<EtcdPlugin>().unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

#[test]
fn validation_accepts_the_examples_and_names_the_field_of_each_mistake() {
    let example: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/examples/etcd-target.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let example = serde_json::to_value(&example["spec"]["etcd"]).unwrap();
    let good = [example, json!({"endpoints": ["http://127.0.0.1:2379"]})];
    let bad = [
        (
            json!({"endpoints": ["http://a:2379", "https://b:2379"]}),
            "endpoints",
        ),
        (json!({"endpoints": ["http://a:2379"], "tls": {}}), "tls"),
        (
            json!({"endpoints": ["https://a:2379"], "username": "root"}),
            "passwordSecretRef",
        ),
        (
            json!({"endpoints": ["http://root:pw@a:2379"]}),
            "endpoints[0]",
        ),
    ];
    check_validation::<EtcdPlugin>(&good, &bad).unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
