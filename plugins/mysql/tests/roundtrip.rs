//! Backup → restore round trips against a real MariaDB server: a database restored under
//! another name has the same rows, AUTO_INCREMENT counters, views, routines, triggers and
//! events, and they work; several databases come back under their own names; `into` a
//! database with data is refused by the destination check, `mode: Replace` is refused
//! with the way out, and a failed restore drops the database it created.

mod common;

use common::{MariaDbServer, PluginFixture, backup, restore, seed, snapshot_differences};
use serde_json::json;
use stowage_plugin_mysql::MysqlPlugin;
use stowage_plugin_sdk::{ArtifactSource, ErrorKind, Plugin, RestoreRequest};

#[tokio::test]
async fn one_database_comes_back_under_another_name_with_routines_triggers_and_events() {
    let server = MariaDbServer::start("roundtrip-pw-1");
    seed(&server, "shop");
    let before = server.snapshot("shop");
    // What the snapshot must cover, so that the comparison below means something.
    for key in ["rows orders", "rows customers", "rows expensive"] {
        assert!(before[key].lines().count() > 1, "{key}: {before:?}");
    }
    assert!(before["routines"].contains("add_order") && before["routines"].contains("order_total"));
    assert!(
        before["triggers"].contains("orders_audit"),
        "{}",
        before["triggers"]
    );
    assert!(
        before["events"].contains("nightly_cleanup"),
        "{}",
        before["events"]
    );
    assert!(
        before["tables"].contains("orders\tBASE TABLE\t5000"),
        "{}",
        before["tables"]
    );

    let config = server.config(json!({"database": "shop"}));
    let (artifact, report) = backup(&config, &server.ctx()).await.unwrap();
    let text = String::from_utf8_lossy(&artifact);
    assert!(
        !text.contains("USE `shop`"),
        "a one-database dump must not select its database"
    );
    assert!(
        !text.contains("CREATE DATABASE"),
        "a one-database dump must not create its database"
    );
    assert_eq!(report.facts["database"], "shop");
    assert_eq!(report.facts["dumpTool"], "mariadb-dump");
    assert!(
        report.facts["serverVersion"].contains("MariaDB"),
        "{:?}",
        report.facts
    );

    let restored = restore(
        &config,
        &server.ctx(),
        &artifact,
        &report.facts,
        Some("shop_copy"),
    )
    .await
    .unwrap();
    assert!(
        restored
            .message
            .starts_with("created and restored database \"shop_copy\""),
        "{}",
        restored.message
    );
    assert!(
        restored.message.contains("from a dump of \"shop\""),
        "{}",
        restored.message
    );
    let after = server.snapshot("shop_copy");
    let differences = snapshot_differences(&before, &after);
    assert!(
        differences.is_empty(),
        "the restored database differs from the backup:\n{}",
        differences.join("\n")
    );

    // The restored routines and trigger work in the copy, on the copy's own tables.
    server.sql(Some("shop_copy"), "CALL add_order(7, 'after restore')");
    let audit = server.sql(Some("shop_copy"), "SELECT what FROM audit");
    assert_eq!(audit.trim(), "inserted", "the trigger fired in the copy");
    let total = server.sql(Some("shop_copy"), "SELECT order_total(7)");
    let original = server.sql(Some("shop"), "SELECT order_total(7)");
    let bump: f64 = total.trim().parse::<f64>().unwrap() - original.trim().parse::<f64>().unwrap();
    assert!((bump - 1.0).abs() < 1e-9, "{total} vs {original}");
    assert_eq!(
        server
            .sql(Some("shop"), "SELECT COUNT(*) FROM audit")
            .trim(),
        "0"
    );

    // Again into the copy, which now holds data: the destination check says so.
    let request = RestoreRequest {
        facts: report.facts.clone(),
        into: Some("shop_copy".into()),
        replace: false,
    };
    let inspected = MysqlPlugin::inspect_destination(&config, &server.ctx(), &request)
        .await
        .unwrap();
    assert!(inspected.holds_data);
    assert!(
        inspected.description.contains("database \"shop_copy\"")
            && inspected.description.contains("has 4 tables"),
        "{}",
        inspected.description
    );

    // Replace is refused, with the way out, and changes nothing.
    let mut source = ArtifactSource::new(&artifact[..]);
    let err = MysqlPlugin::restore(
        &config,
        &server.ctx(),
        &mut source,
        &RestoreRequest {
            replace: true,
            ..request
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("spec.destination.into"), "{err}");
    assert_eq!(
        server
            .sql(Some("shop_copy"), "SELECT COUNT(*) FROM audit")
            .trim(),
        "1"
    );
}

#[tokio::test]
async fn several_databases_come_back_under_their_own_names_and_refuse_into() {
    let source = MariaDbServer::start("several-pw-2");
    let copy = MariaDbServer::start("several-pw-3");
    seed(&source, "shop");
    source.sql(
        None,
        "CREATE DATABASE billing; \
         CREATE TABLE billing.invoices (id INT PRIMARY KEY, total DECIMAL(8,2)); \
         INSERT INTO billing.invoices VALUES (1, 9.99), (2, 120.00); \
         CREATE DATABASE scratch",
    );
    let before_shop = source.snapshot("shop");
    let before_billing = source.snapshot("billing");

    let config = source.config(json!({"databases": ["shop", "billing"]}));
    let (artifact, report) = backup(&config, &source.ctx()).await.unwrap();
    assert_eq!(report.facts["databases"], "[\"shop\",\"billing\"]");
    assert!(!report.facts.contains_key("allDatabases"));

    // `into` makes no sense for several databases.
    let copy_config = copy.config(json!({"databases": ["shop", "billing"]}));
    let request = RestoreRequest {
        facts: report.facts.clone(),
        into: Some("elsewhere".into()),
        replace: false,
    };
    let err = MysqlPlugin::inspect_destination(&copy_config, &copy.ctx(), &request)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("into"), "{err}");

    let restored = restore(&copy_config, &copy.ctx(), &artifact, &report.facts, None)
        .await
        .unwrap();
    assert!(
        restored.message.contains("\"shop\", \"billing\""),
        "{}",
        restored.message
    );
    for (database, before) in [("shop", &before_shop), ("billing", &before_billing)] {
        let differences = snapshot_differences(before, &copy.snapshot(database));
        assert!(
            differences.is_empty(),
            "{database}:\n{}",
            differences.join("\n")
        );
    }
    assert!(
        !copy.has_database("scratch"),
        "a database that was not selected came along"
    );

    // All databases: every one but the system schemas, listed in the facts.
    let all = source.config(json!({"allDatabases": true}));
    let (_, report) = backup(&all, &source.ctx()).await.unwrap();
    assert_eq!(report.facts["allDatabases"], "true");
    assert_eq!(
        report.facts["databases"],
        "[\"billing\",\"scratch\",\"shop\"]"
    );
    // ... and restoring it where they now hold data is refused by the destination check.
    let request = RestoreRequest {
        facts: report.facts.clone(),
        into: None,
        replace: false,
    };
    let inspected = MysqlPlugin::inspect_destination(&copy_config, &copy.ctx(), &request)
        .await
        .unwrap();
    assert!(inspected.holds_data, "{}", inspected.description);
    assert!(
        inspected.description.contains("\"billing\" (1 table)"),
        "{}",
        inspected.description
    );
}

#[tokio::test]
async fn a_failed_restore_drops_the_database_it_created() {
    let server = MariaDbServer::start("failed-restore-pw");
    let config = server.config(json!({"database": "shop"}));
    let broken =
        b"CREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (1);\nTHIS IS NOT SQL;\n";
    let request = RestoreRequest {
        facts: [("database".to_owned(), "shop".to_owned())].into(),
        into: Some("half_done".into()),
        replace: false,
    };
    let mut source = ArtifactSource::new(&broken[..]);
    let err = MysqlPlugin::restore(&config, &server.ctx(), &mut source, &request)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RemoteError, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("1064") && text.contains("at line 3"),
        "{text}"
    );
    assert!(
        text.contains("\"half_done\" created for the restore was dropped again"),
        "{text}"
    );
    assert!(!server.has_database("half_done"));
}
