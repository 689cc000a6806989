//! Probes and failures against a real PostgreSQL server: each failure has the right kind,
//! a message that names the field to fix, and never a secret.

mod common;

use common::{
    PgServer, PluginFixture, SECRET_KEY, SECRET_NAME, ctx_with_password, fake_old_dump_tools,
    free_port,
};
use stowage_plugin_postgres::{PostgresPlugin, Toolbox};
use stowage_plugin_sdk::{ArtifactSink, ErrorKind, Plugin};

#[tokio::test]
async fn probe_reports_the_server_and_tool_versions() {
    let server = PgServer::start("probe-pw-Zq81");
    server.psql("postgres", "create database shop");
    let report = match PostgresPlugin::probe(&server.config(Some("shop")), &server.ctx()).await {
        Ok(report) => report,
        Err(e) => panic!("probe failed ({}): {e}", e.kind()),
    };
    let version = server.psql("postgres", "show server_version");
    assert_eq!(report.facts["serverVersion"], version.trim());
    let dump = std::process::Command::new("pg_dump")
        .arg("--version")
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains(&report.facts["dumpToolVersion"]),
        "{dump} vs {:?}",
        report.facts
    );
    assert!(
        report
            .message
            .contains(&format!("127.0.0.1:{}", server.port)),
        "{}",
        report.message
    );
    assert!(!format!("{report:?}").contains("probe-pw-Zq81"));

    let all = PostgresPlugin::probe(&server.config(None), &server.ctx())
        .await
        .unwrap();
    assert!(all.message.contains("pg_dumpall"), "{}", all.message);
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_and_never_shown() {
    let server = PgServer::start("the-right-password");
    server.psql("postgres", "create database shop");
    let canary = "canary-7Hq2-wrong-password";
    let ctx = ctx_with_password(canary);
    let config = server.config(Some("shop"));

    let probe = PostgresPlugin::probe(&config, &ctx)
        .await
        .expect_err("wrong password");
    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let backup = PostgresPlugin::backup(&config, &ctx, &mut sink)
        .await
        .expect_err("wrong password");
    assert_eq!(sink.bytes_written(), 0);
    for err in [probe, backup] {
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        let text = err.to_string();
        assert!(text.contains("spec.postgres.passwordSecretRef"), "{text}");
        assert!(
            text.contains(SECRET_NAME) && text.contains(SECRET_KEY),
            "{text}"
        );
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(!text.contains(canary), "{text}");
        assert!(!format!("{err:?}").contains(canary));
    }

    // And with the right password nothing in the report carries it either.
    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let report = PostgresPlugin::backup(&config, &server.ctx(), &mut sink)
        .await
        .unwrap();
    assert!(!format!("{report:?}").contains("the-right-password"));
}

#[tokio::test]
async fn a_refused_port_is_unreachable() {
    let server = PgServer::start("unused-pw");
    let mut config = server.config(Some("shop"));
    config.port = free_port();
    let err = PostgresPlugin::probe(&config, &server.ctx())
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{}", config.port)),
        "{text}"
    );
    assert!(text.contains("spec.postgres.port"), "{text}");

    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let err = PostgresPlugin::backup(&config, &server.ctx(), &mut sink)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

#[tokio::test]
async fn a_missing_database_is_not_found() {
    let server = PgServer::start("missing-db-pw");
    let config = server.config(Some("no_such_db"));
    let err = PostgresPlugin::probe(&config, &server.ctx())
        .await
        .expect_err("no database");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string()
            .starts_with("database \"no_such_db\" does not exist"),
        "{err}"
    );
    assert!(err.to_string().contains("spec.postgres.database"), "{err}");

    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let err = PostgresPlugin::backup(&config, &server.ctx(), &mut sink)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn an_older_pg_dump_than_the_server_is_refused_with_the_fix() {
    let server = PgServer::start("old-tool-pw");
    server.psql("postgres", "create database shop");
    let fake = fake_old_dump_tools();
    let mut search_path = fake.path().as_os_str().to_owned();
    search_path.push(":");
    search_path.push(std::env::var_os("PATH").unwrap_or_default());
    let tools = Toolbox::with_search_path(search_path);
    let config = server.config(Some("shop"));
    let major = server.psql(
        "postgres",
        "select current_setting('server_version_num')::int / 10000",
    );
    let major = major.trim();

    let err = PostgresPlugin::probe_with(&config, &server.ctx(), &tools)
        .await
        .expect_err("pg_dump 9.6 cannot dump this server");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("pg_dump 9.6.0 cannot dump a"), "{text}");
    assert!(
        text.ends_with(&format!(
            "set spec.postgres.image to postgres:{major} or newer"
        )),
        "{text}"
    );

    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let err = PostgresPlugin::backup_with(&server.config(None), &server.ctx(), &mut sink, &tools)
        .await
        .expect_err("pg_dumpall 9.6 cannot dump this server");
    assert!(
        err.to_string()
            .starts_with("pg_dumpall 9.6.0 cannot dump a"),
        "{err}"
    );
    assert_eq!(sink.bytes_written(), 0);
}

#[tokio::test]
async fn an_image_without_pg_dump_says_which_image_to_use() {
    let server = PgServer::start("no-tool-pw");
    let empty = tempfile::tempdir().unwrap();
    let tools = Toolbox::with_search_path(empty.path());
    let err = PostgresPlugin::probe_with(&server.config(Some("postgres")), &server.ctx(), &tools)
        .await
        .expect_err("no pg_dump");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("pg_dump not found in the image"), "{text}");
    assert!(text.contains("set spec.postgres.image"), "{text}");
}

/// The conformance kit's service-backed checks against a real PostgreSQL: each documented
/// failure typed, naming its field, without the (canary) password; and a round trip into
/// another database compared table by table.
#[tokio::test]
async fn the_conformance_kit_passes_against_a_real_server() {
    use stowage_plugin_sdk::RestoreRequest;
    use stowage_plugin_sdk::conformance::{FailureCase, check_failures, check_round_trip};
    let server = PgServer::start("kit-Right-pw-91");
    common::seed(&server, "shop");
    let mut refused = server.config(Some("shop"));
    refused.port = free_port();
    let case = |name, config, password: &str, kind, mentions| FailureCase::<PostgresPlugin> {
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
            "spec.postgres.port",
        ),
        case(
            "wrong password",
            server.config(Some("shop")),
            "Canary-wrong-pw-5d2",
            ErrorKind::Unauthorized,
            "spec.postgres.passwordSecretRef",
        ),
        case(
            "missing database",
            server.config(Some("nope")),
            "kit-Right-pw-91",
            ErrorKind::NotFound,
            "spec.postgres.database",
        ),
    ];
    check_failures(&cases)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));

    let config = server.config(Some("shop"));
    let request = RestoreRequest {
        into: Some("shop_copy".into()),
        ..RestoreRequest::default()
    };
    let want = server.snapshot("shop");
    check_round_trip::<PostgresPlugin, _, _>(&config, &config, &server.ctx(), &request, || async {
        let got = server.snapshot("shop_copy");
        (got == want).then_some(()).ok_or_else(|| {
            format!(
                "{} tables backed up, {} restored differently",
                want.len(),
                got.len()
            )
        })
    })
    .await
    .unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
