//! pg_dumpall of a whole server, restored into a second, fresh server.

mod common;

use common::{PgServer, PluginFixture, seed};
use stowage_plugin_postgres::PostgresPlugin;
use stowage_plugin_sdk::{ArtifactSink, ArtifactSource, ErrorKind, Plugin, RestoreRequest};

#[tokio::test]
async fn every_database_and_role_moves_to_a_fresh_server() {
    let source = PgServer::start("source-superuser-pw");
    seed(&source, "shop");
    seed(&source, "crm");
    source.psql(
        "postgres",
        "create role app_reader login password 'reader-pw'; \
         grant connect on database shop to app_reader",
    );
    source.psql(
        "shop",
        "grant select on all tables in schema public to app_reader",
    );

    let config = source.config(None);
    let mut artifact = Vec::new();
    let mut sink = ArtifactSink::new(&mut artifact);
    let report = match PostgresPlugin::backup(&config, &source.ctx(), &mut sink).await {
        Ok(report) => report,
        Err(e) => panic!("backup failed ({}): {e}", e.kind()),
    };
    drop(sink);
    assert_eq!(report.facts["allDatabases"], "true");
    assert_eq!(report.facts["format"], "plain");
    assert!(!report.facts.contains_key("database"));
    let text = String::from_utf8(artifact.clone()).expect("pg_dumpall writes SQL");
    assert!(text.contains("CREATE ROLE app_reader;"));

    // A different superuser password on the destination: the restore keeps it (the
    // destination's Secret stays valid) while creating the dump's other roles.
    let destination = PgServer::start("destination-superuser-pw");
    let dest_config = destination.config(None);

    let into = RestoreRequest {
        facts: report.facts.clone(),
        into: Some("elsewhere".into()),
        replace: false,
    };
    let err = PostgresPlugin::restore(
        &dest_config,
        &destination.ctx(),
        &mut ArtifactSource::new(&artifact[..]),
        &into,
    )
    .await
    .expect_err("an all-databases dump cannot be restored into one database");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);

    let request = RestoreRequest {
        facts: report.facts,
        into: None,
        replace: false,
    };
    let mut input = ArtifactSource::new(&artifact[..]);
    if let Err(e) =
        PostgresPlugin::restore(&dest_config, &destination.ctx(), &mut input, &request).await
    {
        panic!("restore failed ({}): {e}", e.kind());
    }

    for database in ["shop", "crm"] {
        let before = source.snapshot(database);
        let after = destination.snapshot(database);
        assert_eq!(before["table items"].lines().count(), 4002);
        assert_eq!(
            before, after,
            "database {database} differs after the restore"
        );
    }
    assert_eq!(
        destination.psql(
            "postgres",
            "select rolname from pg_roles where rolname = 'app_reader'"
        ),
        "app_reader\n"
    );
    assert_eq!(
        destination.psql(
            "shop",
            "select has_table_privilege('app_reader', 'public.items', 'select')"
        ),
        "t\n"
    );
    // The destination's superuser still logs in with the destination's password.
    assert!(destination.try_psql("postgres", "select 1").is_ok());
}
