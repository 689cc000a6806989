//! The conformance kit's memory check, alone in its test binary (the peak it reads is the
//! whole process's): copying an 80 MiB database keeps the plugin's memory flat (the copy
//! goes through a scratch file and is streamed from it).

use rusqlite::Connection;
use stowage_plugin_sdk::RunContext;
use stowage_plugin_sdk::conformance::check_flat_memory;
use stowage_plugin_sqlite::{SqliteConfig, SqlitePlugin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_database_streams_with_flat_memory() {
    let claim = tempfile::tempdir().unwrap();
    {
        let db = Connection::open(claim.path().join("big.db")).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=wal;
             CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 80000)
             INSERT INTO blobs SELECT i, randomblob(1024) FROM n;",
        )
        .unwrap();
    }
    let mut ctx = RunContext::new("apps", "big");
    ctx.claim_root = Some(claim.path().to_owned());
    let config = SqliteConfig {
        claim_name: "data".into(),
        path: "big.db".into(),
    };
    let used = check_flat_memory::<SqlitePlugin>(&config, &ctx, 64 << 20, 24 << 20)
        .await
        .unwrap_or_else(|p| panic!("{}", p.join("\n")));
    println!(
        "copied {} MiB with the peak growing by {} MiB",
        used.artifact_bytes >> 20,
        used.peak_growth_bytes >> 20
    );
}
