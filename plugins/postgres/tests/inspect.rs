//! `inspect_destination` against a real PostgreSQL server: whether a restore would
//! overwrite data, for one database and for a whole server, and its failures.

mod common;

use std::collections::BTreeMap;

use common::{PgServer, PluginFixture, ctx_with_password, free_port, seed};
use stowage_plugin_postgres::PostgresPlugin;
use stowage_plugin_sdk::{DestinationReport, ErrorKind, Plugin, PluginError, RestoreRequest};

/// The facts of a one-database custom-format backup of `database`.
fn one_database_facts(database: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("database".to_owned(), database.to_owned()),
        ("format".to_owned(), "custom".to_owned()),
    ])
}

/// The facts of a pg_dumpall backup.
fn all_databases_facts() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("allDatabases".to_owned(), "true".to_owned()),
        ("format".to_owned(), "plain".to_owned()),
    ])
}

async fn inspect(
    server: &PgServer,
    config_database: Option<&str>,
    facts: BTreeMap<String, String>,
    into: Option<&str>,
) -> Result<DestinationReport, PluginError> {
    let request = RestoreRequest {
        facts,
        into: into.map(str::to_owned),
        replace: false,
    };
    PostgresPlugin::inspect_destination(&server.config(config_database), &server.ctx(), &request)
        .await
}

#[tokio::test]
async fn one_database_holds_data_only_when_it_has_user_tables() {
    let server = PgServer::start("inspect-one-pw");
    let address = format!("127.0.0.1:{}", server.port);
    seed(&server, "shop");

    // Missing: restoring creates it.
    let report = inspect(
        &server,
        Some("shop"),
        one_database_facts("shop"),
        Some("shop_restored"),
    )
    .await
    .unwrap();
    assert!(!report.holds_data);
    assert_eq!(
        report.description,
        format!(
            "database \"shop_restored\" does not exist on PostgreSQL at {address}; it will be \
             created"
        )
    );

    // A name that would break SQL built by string formatting is passed safely.
    let odd = "we'ird \"db\"; name";
    let report = inspect(&server, Some("shop"), one_database_facts("shop"), Some(odd))
        .await
        .unwrap();
    assert!(!report.holds_data, "{report:?}");
    assert!(report.description.contains("does not exist"), "{report:?}");
    server.psql("postgres", "create database \"we'ird \"\"db\"\"; name\"");
    let report = inspect(&server, Some("shop"), one_database_facts("shop"), Some(odd))
        .await
        .unwrap();
    assert!(!report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!("database {odd:?} on PostgreSQL at {address} exists and has no user tables")
    );

    // Existing without tables: views, sequences and temporary tables are no user data.
    server.psql("postgres", "create database empty");
    server.psql(
        "empty",
        "create sequence s; create view v as select 1 as one; \
         create temporary table scratch (id int)",
    );
    let report = inspect(&server, Some("empty"), one_database_facts("shop"), None)
        .await
        .unwrap();
    assert!(!report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!("database \"empty\" on PostgreSQL at {address} exists and has no user tables")
    );

    // With tables, in any schema; `into` wins over the config's database.
    let report = inspect(
        &server,
        Some("empty"),
        one_database_facts("shop"),
        Some("shop"),
    )
    .await
    .unwrap();
    assert!(report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!("database \"shop\" on PostgreSQL at {address} has 3 user tables")
    );
    server.psql(
        "empty",
        "create schema other; create table other.t (id int)",
    );
    let report = inspect(&server, Some("empty"), one_database_facts("shop"), None)
        .await
        .unwrap();
    assert!(report.holds_data, "{report:?}");
    assert!(
        report.description.ends_with("has 1 user table"),
        "{report:?}"
    );

    // Nothing named: the same error as a restore's.
    let err = inspect(&server, None, one_database_facts("shop"), None)
        .await
        .expect_err("no database to inspect");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string()
            .contains("name the database to restore into"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_holds_data_when_it_has_databases_or_postgres_has_tables() {
    let server = PgServer::start("inspect-all-pw");
    let address = format!("127.0.0.1:{}", server.port);

    let report = inspect(&server, None, all_databases_facts(), None)
        .await
        .unwrap();
    assert!(!report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!(
            "PostgreSQL at {address} holds no databases besides postgres, template0 and \
             template1, and its postgres database has no user tables"
        )
    );

    // Without facts the destination config decides: an all-databases config.
    let report = inspect(&server, None, BTreeMap::new(), None).await.unwrap();
    assert!(!report.holds_data, "{report:?}");

    server.psql("postgres", "create table leftovers (id int)");
    let report = inspect(&server, None, all_databases_facts(), None)
        .await
        .unwrap();
    assert!(report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!("the postgres database on PostgreSQL at {address} has 1 user table")
    );

    server.psql("postgres", "create database d1");
    let report = inspect(&server, None, all_databases_facts(), None)
        .await
        .unwrap();
    assert!(report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!(
            "PostgreSQL at {address} holds 1 database besides postgres, template0 and \
             template1 (\"d1\"), and its postgres database has 1 user table"
        )
    );
    server.psql("postgres", "drop table leftovers");

    for n in 2..=7 {
        server.psql("postgres", &format!("create database d{n}"));
    }
    let report = inspect(&server, None, all_databases_facts(), None)
        .await
        .unwrap();
    assert!(report.holds_data, "{report:?}");
    assert_eq!(
        report.description,
        format!(
            "PostgreSQL at {address} holds 7 databases besides postgres, template0 and \
             template1 (\"d1\", \"d2\", \"d3\", \"d4\", \"d5\" and 2 more)"
        )
    );

    // An all-databases artifact is never restored into one database.
    let err = inspect(&server, None, all_databases_facts(), Some("d1"))
        .await
        .expect_err("into with a pg_dumpall artifact");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
}

#[tokio::test]
async fn inspection_failures_are_classified_and_never_show_the_password() {
    let server = PgServer::start("inspect-right-pw");
    server.psql("postgres", "create database shop");
    let canary = "canary-inspect-Wq93";
    for (facts, database) in [
        (one_database_facts("shop"), Some("shop")),
        (all_databases_facts(), None),
    ] {
        let request = RestoreRequest {
            facts,
            into: None,
            replace: false,
        };
        let err = PostgresPlugin::inspect_destination(
            &server.config(database),
            &ctx_with_password(canary),
            &request,
        )
        .await
        .expect_err("wrong password");
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        assert!(
            err.to_string().contains("password authentication failed"),
            "{err}"
        );
        assert!(!err.to_string().contains(canary), "{err}");
        assert!(!format!("{err:?}").contains(canary), "{err:?}");

        let mut config = server.config(database);
        config.port = free_port();
        let err = PostgresPlugin::inspect_destination(&config, &server.ctx(), &request)
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
        assert!(!err.to_string().contains(&server.password), "{err}");
    }
}
