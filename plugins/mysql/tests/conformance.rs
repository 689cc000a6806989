//! The conformance kit's checks that need no service.

use serde_json::json;
use stowage_plugin_mysql::MysqlPlugin;
use stowage_plugin_sdk::conformance::{check_config_schema, check_validation};

#[test]
fn the_config_schema_documents_every_field_and_takes_credentials_only_from_secrets() {
    check_config_schema::<MysqlPlugin>().unwrap_or_else(|p| panic!("{}", p.join("\n")));
}

#[test]
fn documented_examples_pass_and_documented_mistakes_name_their_field() {
    let base = |extra: serde_json::Value| {
        let mut config = json!({"host": "app-db.shop.svc", "username": "backup",
            "passwordSecretRef": {"name": "app-db", "key": "password"}});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        config
    };
    check_validation::<MysqlPlugin>(
        &[
            base(json!({"database": "shop"})),
            base(json!({"databases": ["shop", "billing"], "port": 3307, "sslMode": "Required"})),
            base(json!({"allDatabases": true, "image": "mysql:8.4",
                "extraDumpOptions": ["--set-gtid-purged=OFF"]})),
        ],
        &[
            (base(json!({})), "database"),
            (
                base(json!({"database": "a", "databases": ["b"]})),
                "databases",
            ),
            (
                base(json!({"databases": ["a"], "allDatabases": true})),
                "allDatabases",
            ),
            (base(json!({"databases": ["a", "a"]})), "databases[1]"),
            (base(json!({"database": "shop.old"})), "database"),
            (base(json!({"database": "shop", "host": "db host"})), "host"),
            (
                base(json!({"database": "shop", "extraDumpOptions": ["--result-file=/tmp/x"]})),
                "extraDumpOptions[0]",
            ),
            (
                base(json!({"database": "shop", "extraDumpOptions": ["-hother"]})),
                "extraDumpOptions[0]",
            ),
        ],
    )
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
