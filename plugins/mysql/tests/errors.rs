//! Probes and failures against a real MariaDB server: each documented mistake (wrong
//! password, refused port, unknown database, missing tools) has the right kind, a message
//! that names the field to fix, and never the password; no failed backup writes an
//! artifact that looks complete.

mod common;

use common::{
    MariaDbServer, PluginFixture, SECRET_KEY, SECRET_NAME, backup, ctx_with_password, free_port,
};
use serde_json::json;
use stowage_plugin_mysql::{MysqlPlugin, Toolbox};
use stowage_plugin_sdk::{ArtifactSink, ErrorKind, Plugin, RestoreRequest};

#[tokio::test]
async fn probe_reports_the_server_and_tool_versions() {
    let server = MariaDbServer::start("probe-pw-Zq81");
    server.sql(None, "CREATE DATABASE shop; CREATE DATABASE billing");
    let report = match MysqlPlugin::probe(
        &server.config(json!({"database": "shop"})),
        &server.ctx(),
    )
    .await
    {
        Ok(report) => report,
        Err(e) => panic!("probe failed ({}): {e}", e.kind()),
    };
    let version = server.sql(None, "SELECT VERSION()");
    assert_eq!(report.facts["serverVersion"], version.trim());
    assert!(
        report.facts["dumpToolVersion"].starts_with("mariadb-dump"),
        "{:?}",
        report.facts
    );
    for says in [
        format!("connected to MariaDB {}", version.trim()),
        format!("127.0.0.1:{}", server.port),
        "\"shop\"".to_owned(),
    ] {
        assert!(
            report.message.contains(&says),
            "{says} in {}",
            report.message
        );
    }
    assert!(!format!("{report:?}").contains("probe-pw-Zq81"));

    let all = MysqlPlugin::probe(&server.config(json!({"allDatabases": true})), &server.ctx())
        .await
        .unwrap();
    assert!(
        all.message
            .contains("2 database(s) besides the system schemas"),
        "{}",
        all.message
    );
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_and_never_shown() {
    let server = MariaDbServer::start("the-right-password");
    server.sql(None, "CREATE DATABASE shop");
    let canary = "canary-7Hq2-wrong-password";
    let ctx = ctx_with_password(canary);
    let config = server.config(json!({"database": "shop"}));

    let probe = MysqlPlugin::probe(&config, &ctx)
        .await
        .expect_err("wrong password");
    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let backup = MysqlPlugin::backup(&config, &ctx, &mut sink)
        .await
        .expect_err("wrong password");
    assert_eq!(sink.bytes_written(), 0, "a failed backup wrote an artifact");
    let inspect = MysqlPlugin::inspect_destination(&config, &ctx, &RestoreRequest::default())
        .await
        .expect_err("wrong password");
    for err in [probe, backup, inspect] {
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        let text = err.to_string();
        assert!(text.contains("spec.mysql.passwordSecretRef"), "{text}");
        assert!(
            text.contains(SECRET_NAME) && text.contains(SECRET_KEY),
            "{text}"
        );
        assert!(text.contains("Access denied for user 'root'"), "{text}");
        assert!(!text.contains(canary), "{text}");
        assert!(!format!("{err:?}").contains(canary));
    }

    // And with the right password nothing in the report carries it either.
    let (artifact, report) = backup_ok(&server, &config).await;
    assert!(!format!("{report:?}").contains("the-right-password"));
    assert!(!String::from_utf8_lossy(&artifact).contains("the-right-password"));
}

async fn backup_ok(
    server: &MariaDbServer,
    config: &stowage_plugin_mysql::MysqlConfig,
) -> (Vec<u8>, stowage_plugin_sdk::BackupReport) {
    backup(config, &server.ctx()).await.unwrap()
}

#[tokio::test]
async fn a_password_the_server_echoes_back_is_redacted() {
    // The user name is the password: MariaDB quotes the user in "Access denied for user
    // '<user>'", so the error path would echo the secret without redaction.
    let server = MariaDbServer::start("unused-root-pw");
    let canary = "echo-canary-Pw-9x";
    let mut config = server.config(json!({"database": "shop"}));
    config.username = canary.to_owned();
    let ctx = ctx_with_password(canary);
    let err = MysqlPlugin::probe(&config, &ctx)
        .await
        .expect_err("no such user");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(canary), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[tokio::test]
async fn a_refused_port_is_unreachable() {
    let mut config: stowage_plugin_mysql::MysqlConfig = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": free_port(), "username": "root", "database": "shop",
        "passwordSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY}
    }))
    .unwrap();
    let ctx = ctx_with_password("whatever");
    let err = MysqlPlugin::probe(&config, &ctx)
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", config.port)),
        "{text}"
    );
    assert!(text.contains("spec.mysql.port"), "{text}");

    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let err = MysqlPlugin::backup(&config, &ctx, &mut sink)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert_eq!(sink.bytes_written(), 0);

    config.host = "nowhere.invalid".into();
    let err = MysqlPlugin::probe(&config, &ctx).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(err.to_string().contains("spec.mysql.host"), "{err}");
}

#[tokio::test]
async fn a_missing_database_is_not_found_naming_the_field() {
    let server = MariaDbServer::start("missing-db-pw");
    server.sql(None, "CREATE DATABASE present");
    let cases = [
        (
            json!({"database": "no_such_db"}),
            "database \"no_such_db\" does not exist; check spec.mysql.database",
        ),
        (
            json!({"databases": ["present", "gone_a", "gone_b"]}),
            "databases \"gone_a\", \"gone_b\" do not exist; check spec.mysql.databases",
        ),
    ];
    for (selection, says) in cases {
        let config = server.config(selection);
        let err = MysqlPlugin::probe(&config, &server.ctx())
            .await
            .expect_err("no database");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().starts_with(says), "{err}");
        let mut artifact = Vec::new();
        let mut sink = ArtifactSink::new(&mut artifact);
        let err = MysqlPlugin::backup(&config, &server.ctx(), &mut sink)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert_eq!(
            sink.bytes_written(),
            0,
            "a header-only artifact was written"
        );
    }
}

#[tokio::test]
async fn an_image_without_the_tools_says_which_image_to_use() {
    let server = MariaDbServer::start("no-tool-pw");
    let empty = tempfile::tempdir().unwrap();
    let tools = Toolbox::with_search_path(empty.path());
    let err = MysqlPlugin::probe_with(
        &server.config(json!({"database": "mysql"})),
        &server.ctx(),
        &tools,
    )
    .await
    .expect_err("no tools");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("neither mariadb-dump nor mysqldump is in the image"),
        "{text}"
    );
    assert!(text.contains("spec.mysql.image"), "{text}");
}

/// The conformance kit's service-backed checks against a real MariaDB: each documented
/// failure typed, naming its field, without the (canary) password; and a round trip into
/// another database compared table by table, routines, triggers and events included.
#[tokio::test]
async fn the_conformance_kit_passes_against_a_real_server() {
    use stowage_plugin_sdk::conformance::{FailureCase, check_failures, check_round_trip};
    let server = MariaDbServer::start("kit-Right-pw-91");
    common::seed(&server, "shop");
    let refused: stowage_plugin_mysql::MysqlConfig = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": free_port(), "username": "root", "database": "shop",
        "passwordSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY},
    }))
    .unwrap();
    let case = |name, config, password: &str, kind, mentions| FailureCase::<MysqlPlugin> {
        name,
        config,
        ctx: ctx_with_password(password),
        kind,
        mentions,
    };
    let cases = [
        case(
            "refused port",
            refused,
            "kit-Right-pw-91",
            ErrorKind::Unreachable,
            "spec.mysql.port",
        ),
        case(
            "wrong password",
            server.config(json!({"database": "shop"})),
            "Canary-wrong-pw-5d2",
            ErrorKind::Unauthorized,
            "spec.mysql.passwordSecretRef",
        ),
        case(
            "missing database",
            server.config(json!({"database": "nope"})),
            "kit-Right-pw-91",
            ErrorKind::NotFound,
            "spec.mysql.database",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));

    let config = server.config(json!({"database": "shop"}));
    let request = RestoreRequest {
        into: Some("shop_copy".into()),
        ..RestoreRequest::default()
    };
    let want = server.snapshot("shop");
    check_round_trip::<MysqlPlugin, _, _>(&config, &config, &server.ctx(), &request, || async {
        let differences =
            stowage_test_mariadb::snapshot_differences(&want, &server.snapshot("shop_copy"));
        differences
            .is_empty()
            .then_some(())
            .ok_or_else(|| differences.join("; "))
    })
    .await
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
