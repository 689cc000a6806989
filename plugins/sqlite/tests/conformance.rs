//! The conformance kit's checks that need no service.

use serde_json::json;
use stowage_plugin_sdk::conformance::{check_config_schema, check_validation};
use stowage_plugin_sqlite::SqlitePlugin;

#[test]
fn the_config_schema_documents_every_field_and_takes_credentials_only_from_secrets() {
    check_config_schema::<SqlitePlugin>().unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

#[test]
fn validation_accepts_the_examples_and_names_the_field_of_each_mistake() {
    let example: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/examples/sqlite-target.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let example = serde_json::to_value(&example["spec"]["sqlite"]).unwrap();
    let good = [
        example,
        json!({"claimName": "app", "path": "config/home-assistant_v2.db"}),
    ];
    let bad = [
        (
            json!({"claimName": "app", "path": "/data/db.sqlite3"}),
            "path",
        ),
        (json!({"claimName": "app", "path": "../db.sqlite3"}), "path"),
        (json!({"claimName": "app", "path": "data/"}), "path"),
        (json!({"claimName": "app", "path": "."}), "path"),
    ];
    check_validation::<SqlitePlugin>(&good, &bad).unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
