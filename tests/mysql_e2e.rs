//! The `mysql` plugin end to end, on the real control plane and node with a real MariaDB
//! server: a target with the MariaDB client image, a backup through the operator, a
//! `BackupRestore` of it into another database compared row by row (routines, triggers and
//! events included), `IntoEmpty` refused on a database holding data, `mode: Replace`
//! refused with the way out, and the password in no container log; a wrong password ends
//! in a `lastFailure` naming the field to fix.

#[path = "operator_e2e/support.rs"]
#[allow(dead_code)] // shared with the other e2e suites
mod support;

use serde_json::{Value, json};
use stowage_test_mariadb::{MariaDbServer, seed, snapshot_differences};
use support::{Env, PG_PASSWORD, at, condition};

const MARIADB_PASSWORD: &str = "e2e-mariadb-Pw-41x";

/// The `(status, reason)` of condition `type_`.
fn cond(object: &Value, type_: &str) -> (String, String) {
    let c = condition(object, type_).unwrap_or_else(|| panic!("no {type_}: {object}"));
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn message(object: &Value, type_: &str) -> String {
    condition(object, type_)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A `mysql` target for `database` of `server`, with the MariaDB client image on a real
/// node.
fn create_target(env: &Env, server: &MariaDbServer, name: &str, database: &str) {
    let mut config = server.config_json(json!({"database": database}));
    config["passwordSecretRef"] = json!({"name": "mariadb-e2e", "key": "password"});
    if let Some(image) = env
        .cluster
        .mariadb_image()
        .expect("the MariaDB client image is built and imported")
    {
        config["image"] = image.into();
    }
    env.apply(json!({
        "apiVersion": "stowage.dev/v1alpha1", "kind": "BackupTarget",
        "metadata": {"name": name},
        "spec": {"mysql": config, "storage": {"claimName": support::CLAIM}}
    }));
}

#[tokio::test]
async fn a_mysql_target_backs_up_through_the_operator_and_restores_into_another_database() {
    let mut env = Env::new("e2e-mysql", PG_PASSWORD).await;
    env.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mariadb-e2e"},
        "stringData": {"password": MARIADB_PASSWORD}
    }));
    let server = MariaDbServer::start_on(MARIADB_PASSWORD, env.cluster.pod_host());
    seed(&server, "shop");
    create_target(&env, &server, "shop-db", "shop");
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();

    let backed_up = server.snapshot("shop");
    let target = env.backup_now("shop-db", "t1").await;
    let artifact = target["status"]["lastBackup"]["artifact"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        artifact.contains("/mysql-") && artifact.ends_with(".sql.zst"),
        "{artifact}"
    );
    let sidecars = env.sidecars("shop-db");
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    let facts = &sidecars[0].1["facts"];
    assert_eq!(facts["database"], "shop", "{facts}");
    assert_eq!(facts["dumpTool"], "mariadb-dump", "{facts}");
    // The backup ran the tools of the client image (on a real node: the one built from
    // the host's MariaDB packages), not the stowage image.
    if let Some(image) = env.cluster.mariadb_image().unwrap() {
        let jobs = env.jobs("stowage.dev/kind=backup").await;
        let images: Vec<String> = jobs
            .iter()
            .flat_map(|j| j.spec.as_ref().and_then(|s| s.template.spec.as_ref()))
            .flat_map(|p| p.containers.iter().filter_map(|c| c.image.clone()))
            .collect();
        assert_eq!(images, [image], "{images:?}");
    }
    // The live database moves on after the backup.
    server.sql(
        Some("shop"),
        "DELETE FROM orders WHERE id > 100; DROP PROCEDURE add_order",
    );

    env.create_restore(
        "r-mysql",
        json!({"source": {"targetRef": {"name": "shop-db"}}, "destination": {"into": "shop_restored"}}),
    );
    let restore = env.wait_restore_end("r-mysql").await;
    let status = &restore["status"];
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["plan"]["holdsData"], false, "{status}");
    assert_eq!(cond(&restore, "DestinationReady").1, "Empty");
    let differences = snapshot_differences(&backed_up, &server.snapshot("shop_restored"));
    assert!(
        differences.is_empty(),
        "the restored database differs from the backup:\n{}",
        differences.join("\n")
    );
    // The restored trigger and procedure work.
    server.sql(
        Some("shop_restored"),
        "CALL add_order(3, 'after the restore')",
    );
    assert_eq!(
        server
            .sql(Some("shop_restored"), "SELECT what FROM audit")
            .trim(),
        "inserted"
    );

    // Into the live database, which holds data: refused, nothing changed.
    let live = server.snapshot("shop");
    env.create_restore(
        "r-mysql-live",
        json!({"source": {"targetRef": {"name": "shop-db"}}}),
    );
    let refused = env.wait_restore_end("r-mysql-live").await;
    assert_eq!(
        refused["status"]["phase"], "Failed",
        "{}",
        refused["status"]
    );
    assert_eq!(
        cond(&refused, "Completed"),
        ("False".into(), "DestinationNotEmpty".into())
    );
    let said = message(&refused, "Completed");
    assert!(
        said.contains("\"shop\"") && said.contains("tables"),
        "{said}"
    );
    assert!(snapshot_differences(&live, &server.snapshot("shop")).is_empty());

    // Replace, confirmed: refused by the plugin with the way out, nothing changed.
    env.create_restore(
        "r-mysql-replace",
        json!({"source": {"targetRef": {"name": "shop-db"}}, "mode": "Replace", "confirm": "shop-db"}),
    );
    let replace = env.wait_restore_end("r-mysql-replace").await;
    assert_eq!(
        replace["status"]["phase"], "Failed",
        "{}",
        replace["status"]
    );
    let said = message(&replace, "Completed");
    assert!(said.contains("spec.destination.into"), "{said}");
    assert!(snapshot_differences(&live, &server.snapshot("shop")).is_empty());

    let logs = env.container_logs();
    assert!(
        !logs.contains(MARIADB_PASSWORD),
        "the password is in a container log"
    );
}

#[tokio::test]
async fn a_wrong_password_ends_in_a_condition_naming_the_field_and_is_never_shown() {
    let mut env = Env::new("e2e-mysql-bad", PG_PASSWORD).await;
    let canary = "e2e-mariadb-wrong-Pw-77";
    env.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mariadb-e2e"},
        "stringData": {"password": canary}
    }));
    let server = MariaDbServer::start_on(MARIADB_PASSWORD, env.cluster.pod_host());
    server.sql(None, "CREATE DATABASE shop");
    create_target(&env, &server, "wrong-password", "shop");
    env.set_time(&at("06-11T10:00:00Z"));
    env.start_operator();
    env.kubectl(&[
        "annotate",
        "backuptarget",
        "wrong-password",
        "stowage.dev/backup-now=t1",
    ]);
    let target = env
        .wait_target("the failed backup is recorded", "wrong-password", |t| {
            if t["status"]["lastFailure"]["reason"].is_string() {
                Ok(())
            } else {
                Err(format!("status = {}", t["status"]))
            }
        })
        .await;
    let failure = &target["status"]["lastFailure"];
    assert_eq!(failure["reason"], "Unauthorized", "{failure}");
    let said = failure["message"].as_str().unwrap_or_default();
    assert!(said.contains("spec.mysql.passwordSecretRef"), "{said}");
    assert!(!target.to_string().contains(canary), "{target}");
    assert!(
        !env.container_logs().contains(canary),
        "the password is in a log"
    );
    assert!(
        env.sidecars("wrong-password").is_empty(),
        "a failed backup left an artifact"
    );
}
