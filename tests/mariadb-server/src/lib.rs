//! A real MariaDB server for tests: `mariadb-install-db` into a temporary directory,
//! `mariadbd` listening on 127.0.0.1 (and, for pods of a real node, on the host's end of
//! the node's link) at a free port, with `root` reachable over TCP with a password only;
//! stopped and removed on drop. Shared by the mysql plugin's tests and the operator's
//! end-to-end tests.
//!
//! The server binaries come from Debian's `mariadb-server` package (`tests/install-deps.sh`
//! installs it). mariadbd refuses to run as root unless told to: when the tests run as
//! root it is started with `--user=root`, so no system user is needed. The event
//! scheduler is off, so events a test creates never change its data.
//!
//! ```no_run
//! use stowage_test_mariadb::{MariaDbServer, seed};
//! let server = MariaDbServer::start("s3cret");
//! seed(&server, "shop");
//! let before = server.snapshot("shop");
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Secret name test configs reference for the root password.
pub const SECRET_NAME: &str = "mariadb-credentials";
/// The key in [`SECRET_NAME`].
pub const SECRET_KEY: &str = "root-password";

/// A running MariaDB server; killed and deleted on drop.
pub struct MariaDbServer {
    /// The TCP port (on 127.0.0.1, and on the extra address when given).
    pub port: u16,
    /// The address [`MariaDbServer::config_json`] gives: 127.0.0.1, or the address pods
    /// reach ([`MariaDbServer::start_on`]).
    pub host: String,
    /// The password of `root` (over TCP, from any address).
    pub password: String,
    dir: PathBuf,
    child: Option<Child>,
}

pub use stowage_test_scratch::free_port;

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn scratch_dir() -> PathBuf {
    stowage_test_scratch::scratch_dir("stowage-mariadb")
}

impl MariaDbServer {
    /// Install and start a server on 127.0.0.1 whose `root` has `password`.
    pub fn start(password: &str) -> MariaDbServer {
        MariaDbServer::start_on(password, "127.0.0.1")
    }

    /// [`MariaDbServer::start`], listening on `host` too (the host's address on a real
    /// node's link, so that pods reach it), which [`MariaDbServer::config_json`] then names.
    pub fn start_on(password: &str, host: &str) -> MariaDbServer {
        let dir = scratch_dir();
        let data = dir.join("data");
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if is_root() {
            install.arg("--user=root");
        }
        // mariadb-install-db bootstraps a temporary server; on a loaded machine (the whole
        // suite in parallel) that bootstrap occasionally fails. A second try, on a clean
        // data directory, tells a flake from a real problem.
        let mut out = install
            .output()
            .expect("run mariadb-install-db (tests/install-deps.sh installs mariadb-server)");
        for _ in 0..2 {
            if out.status.success() {
                break;
            }
            let _ = std::fs::remove_dir_all(&data);
            std::thread::sleep(std::time::Duration::from_secs(1));
            out = install.output().expect("run mariadb-install-db again");
        }
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let listen = if host == "127.0.0.1" {
            host.to_owned()
        } else {
            format!("127.0.0.1,{host}")
        };
        let mut server = MariaDbServer {
            port: 0,
            host: host.to_owned(),
            password: password.to_owned(),
            dir,
            child: None,
        };
        // Its own directory for temporary tables: under the shared /tmp, another test's
        // clean-up once removed one while the server used it ("Error on delete of
        // '/tmp/#sql-temptable-…'").
        let tmp = server.dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("create the server's tmpdir");
        // The free port may be taken between the check and the bind: try a few.
        for _ in 0..5 {
            let port = free_port();
            let log = server.dir.join(format!("mariadbd-{port}.log"));
            let mut cmd = Command::new("mariadbd");
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", server.socket().display()))
                .arg(format!(
                    "--pid-file={}",
                    server.dir.join("mariadbd.pid").display()
                ))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .arg(format!("--bind-address={listen}"))
                .args([
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--event-scheduler=OFF",
                    "--innodb-buffer-pool-size=16M",
                    "--innodb-log-file-size=16M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--max-connections=40",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_general_ci",
                ]);
            if is_root() {
                cmd.arg("--user=root");
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mariadbd");
            server.port = port;
            server.child = Some(child);
            if server.wait_ready() {
                server.secure_root();
                return server;
            }
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!(
                "mariadbd did not start on port {port}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("mariadbd did not start; see the logs above");
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mariadbd.sock")
    }

    /// Wait until the socket accepts `root` or the process exits.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            let ready = Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["--user=root", "-e", "select 1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Give `root` the password, reachable over TCP from anywhere with it, and remove the
    /// password-less accounts `mariadb-install-db` creates for loopback addresses.
    fn secure_root(&self) {
        let pw = self.password.replace('\\', "\\\\").replace('\'', "\\'");
        let sql = format!(
            "DELETE FROM mysql.global_priv WHERE Host NOT IN ('localhost') OR User = '';\n\
             FLUSH PRIVILEGES;\n\
             ALTER USER root@localhost IDENTIFIED BY '{pw}';\n\
             CREATE USER root@'%' IDENTIFIED BY '{pw}';\n\
             GRANT ALL PRIVILEGES ON *.* TO root@'%' WITH GRANT OPTION;\n"
        );
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "-e", &sql])
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "securing root failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's error log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join(format!("mariadbd-{}.log", self.port))).unwrap_or_default()
    }

    /// The JSON of a `spec.mysql` for this server as `root`, with the password from
    /// [`SECRET_NAME`]/[`SECRET_KEY`], and `selection` merged in (e.g.
    /// `{"database": "shop"}`).
    pub fn config_json(&self, selection: serde_json::Value) -> serde_json::Value {
        let mut value = serde_json::json!({
            "host": self.host,
            "port": self.port,
            "username": "root",
            "passwordSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY},
        });
        if let (Some(map), Some(extra)) = (value.as_object_mut(), selection.as_object()) {
            map.extend(extra.clone());
        }
        value
    }

    /// Run SQL (in `database`, if given) as `root` over TCP, in batch mode without column
    /// names; its stdout. Panics on failure.
    pub fn sql(&self, database: Option<&str>, sql: &str) -> String {
        match self.try_sql(database, sql) {
            Ok(out) => out,
            Err(e) => panic!("mariadb on {database:?} failed: {e}\nSQL: {sql}"),
        }
    }

    /// Run SQL as `root` over TCP; stdout or stderr.
    pub fn try_sql(&self, database: Option<&str>, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .args(["--protocol=TCP", "--host=127.0.0.1", "--user=root"])
            .arg(format!("--port={}", self.port))
            .args([
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
            ])
            .env("MYSQL_PWD", &self.password);
        if let Some(db) = database {
            cmd.arg(format!("--database={db}"));
        }
        let out = cmd
            .args(["-e", sql])
            .output()
            .map_err(|e| format!("run mariadb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Whether `database` exists.
    pub fn has_database(&self, database: &str) -> bool {
        let names = self.sql(None, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA");
        names.lines().any(|l| l == database)
    }

    /// What a faithful restore of `database` reproduces: every row of every table and
    /// view (ordered), each table's next AUTO_INCREMENT value, and the definitions of its
    /// views, routines, triggers and events (with the database's own name taken out, so
    /// that a copy under another name compares equal).
    pub fn snapshot(&self, database: &str) -> BTreeMap<String, String> {
        let mut snapshot = BTreeMap::new();
        let lit = database.replace('\'', "''");
        let tables = self.sql(
            None,
            &format!(
                "SELECT TABLE_NAME, TABLE_TYPE, AUTO_INCREMENT FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = '{lit}' ORDER BY 1"
            ),
        );
        for line in tables.lines() {
            let name = line.split('\t').next().unwrap_or_default();
            snapshot.insert(
                format!("rows {name}"),
                self.sql(
                    Some(database),
                    &format!("SELECT * FROM `{name}` ORDER BY 1"),
                ),
            );
        }
        snapshot.insert("tables".into(), tables);
        let queries = [
            (
                "views",
                format!(
                    "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS \
                     WHERE TABLE_SCHEMA = '{lit}' ORDER BY 1"
                ),
            ),
            (
                "routines",
                format!(
                    "SELECT ROUTINE_NAME, ROUTINE_TYPE, DTD_IDENTIFIER, ROUTINE_DEFINITION, \
                     IS_DETERMINISTIC, SQL_DATA_ACCESS FROM information_schema.ROUTINES \
                     WHERE ROUTINE_SCHEMA = '{lit}' ORDER BY 1"
                ),
            ),
            (
                "triggers",
                format!(
                    "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, \
                     ACTION_TIMING, ACTION_STATEMENT FROM information_schema.TRIGGERS \
                     WHERE TRIGGER_SCHEMA = '{lit}' ORDER BY 1"
                ),
            ),
            (
                "events",
                format!(
                    "SELECT EVENT_NAME, EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, \
                     INTERVAL_FIELD, STATUS FROM information_schema.EVENTS \
                     WHERE EVENT_SCHEMA = '{lit}' ORDER BY 1"
                ),
            ),
        ];
        let own_name = format!("`{}`.", database.replace('`', "``"));
        for (key, query) in queries {
            snapshot.insert(key.into(), self.sql(None, &query).replace(&own_name, ""));
        }
        snapshot
    }
}

/// The keys of two [`MariaDbServer::snapshot`]s that differ, each with the start of both
/// values: a short failure message where `assert_eq!` would print megabytes.
pub fn snapshot_differences(
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
) -> Vec<String> {
    stowage_test_scratch::differences(want, got, String::clone)
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Create `database` with tables of many types (integers, decimals, utf8mb4 text with
/// emoji, binary blobs, dates, JSON, NULLs), a few thousand rows, an AUTO_INCREMENT
/// counter past its rows, indexes, a foreign key, a view, a procedure, a function, a
/// trigger and an event (disabled, so it never runs).
pub fn seed(server: &MariaDbServer, database: &str) {
    server.sql(
        None,
        &format!("CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"),
    );
    server.sql(
        Some(database),
        r#"
        SET SESSION max_recursive_iterations = 100000;
        CREATE TABLE customers (
            id INT AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(200) NOT NULL,
            email VARCHAR(200) UNIQUE
        ) ENGINE=InnoDB;
        CREATE TABLE orders (
            id INT AUTO_INCREMENT PRIMARY KEY,
            customer_id INT NOT NULL,
            item VARCHAR(255) NOT NULL,
            price DECIMAL(10, 2),
            created DATETIME(6) NOT NULL,
            attrs JSON,
            blob_data BLOB,
            note TEXT,
            KEY orders_item (item),
            CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
        ) ENGINE=InnoDB;
        CREATE TABLE audit (
            id INT AUTO_INCREMENT PRIMARY KEY,
            order_id INT,
            what VARCHAR(50)
        ) ENGINE=InnoDB;
        INSERT INTO customers (name, email)
        WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 300)
        SELECT CONCAT('Customer ', n, ' — ünïcødé ✓ 日本語 🐘'), CONCAT('c', n, '@example.com')
        FROM seq;
        INSERT INTO orders (customer_id, item, price, created, attrs, blob_data, note)
        WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 3000)
        SELECT 1 + n % 300, CONCAT('item ', n, ' ', MD5(n)), n * 1.25,
               TIMESTAMP('2024-01-01 00:00:00') + INTERVAL n * 2233 SECOND + INTERVAL n MICROSECOND,
               JSON_OBJECT('n', n, 'tags', JSON_ARRAY('a', 'b', n % 7), 'note', 'line\nbreak "quoted" \\ tab\t'),
               UNHEX(CONCAT(MD5(n), MD5(n * 7), '00FF00')),
               IF(n % 10 = 0, NULL, REPEAT('x', n % 50))
        FROM seq;
        INSERT INTO orders (customer_id, item, price, created, attrs, blob_data, note)
        VALUES (1, 'nulls', NULL, '1999-12-31 23:59:59.999999', NULL, NULL, NULL),
               (2, 'quote '' and backslash \\ and newline\n', 0, NOW(6), '[]', X'00FF00', '');
        DELETE FROM orders WHERE id = 3002;
        ALTER TABLE orders AUTO_INCREMENT = 5000;
        CREATE VIEW expensive AS SELECT id, item FROM orders WHERE price > 3000;
        CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
            INSERT INTO audit (order_id, what) VALUES (NEW.id, 'inserted');
        CREATE FUNCTION order_total(c INT) RETURNS DECIMAL(12, 2) READS SQL DATA
            RETURN (SELECT COALESCE(SUM(price), 0) FROM orders WHERE customer_id = c);
        CREATE PROCEDURE add_order(IN c INT, IN what VARCHAR(255))
        MODIFIES SQL DATA
            INSERT INTO orders (customer_id, item, price, created) VALUES (c, what, 1.00, NOW(6));
        CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00'
            DISABLE DO DELETE FROM audit WHERE what = 'obsolete';
        "#,
    );
}
