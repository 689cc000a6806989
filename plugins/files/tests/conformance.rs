//! The conformance kit's checks that need no claim.

use serde_json::json;
use stowage_plugin_files::FilesPlugin;
use stowage_plugin_sdk::conformance::{check_config_schema, check_validation};

#[test]
fn the_config_schema_documents_every_field_and_takes_credentials_only_from_secrets() {
    check_config_schema::<FilesPlugin>().unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

#[test]
fn validation_accepts_the_examples_and_names_the_field_of_each_mistake() {
    let example: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/examples/files-target.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let example = serde_json::to_value(&example["spec"]["files"]).unwrap();
    let good = [
        example,
        json!({"claimName": "app"}),
        json!({"claimName": "app", "path": "."}),
        json!({"claimName": "app", "path": "uploads/", "include": ["**/*.jpg"]}),
    ];
    let bad = [
        (json!({"claimName": "app", "path": "/data/uploads"}), "path"),
        (json!({"claimName": "app", "path": "../other-app"}), "path"),
        (json!({"claimName": "app", "path": "a/../../b"}), "path"),
        (
            json!({"claimName": "app", "include": ["ok", "[a-"]}),
            "include[1]",
        ),
        (
            json!({"claimName": "app", "exclude": ["../secrets"]}),
            "exclude[0]",
        ),
        (
            json!({"claimName": "app", "exclude": ["/etc/**"]}),
            "exclude[0]",
        ),
    ];
    check_validation::<FilesPlugin>(&good, &bad).unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

#[test]
fn path_defaults_to_the_whole_claim() {
    let config: stowage_plugin_files::FilesConfig =
        serde_json::from_value(json!({"claimName": "app"})).unwrap();
    assert_eq!(config.path, ".");
}
