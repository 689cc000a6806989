//! A real OpenLDAP server for tests: `slapd` with its own `slapd.conf` (mdb backend,
//! one suffix, a root DN with a salted-hash password) in a temporary directory,
//! listening on 127.0.0.1 (and, for pods of a real node, on the host's end of the node's
//! link) at a free port; killed and removed on drop. Used by the protocol tests of the
//! example LDAP plugin (`examples/plugins/ldap`).
//!
//! The server comes from Debian's `slapd` package and the tools from `ldap-utils`
//! (`tests/install-deps.sh` installs both, with slapd's own configuration and service
//! skipped: the tests' servers never use `/etc/ldap/slapd.d` nor port 389, so a system
//! slapd, running or not, does not matter). A new server holds an empty suffix (not even
//! its base entry): a restore destination as it is; [`seed`] fills it.
//!
//! ```no_run
//! use stowage_test_ldap::{LdapServer, seed};
//! let server = LdapServer::start("s3cret");
//! seed(&server, 50);
//! let before = server.snapshot(&server.suffix);
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Secret name test configs reference for the bind password.
pub const SECRET_NAME: &str = "ldap-credentials";
/// The key in [`SECRET_NAME`].
pub const SECRET_KEY: &str = "password";
/// The suffix (naming context) every test server serves.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The root DN of every test server (bound with the server's password).
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";

/// A running slapd; killed and deleted on drop.
pub struct LdapServer {
    /// The TCP port (on 127.0.0.1, and on the extra address when given).
    pub port: u16,
    /// The address [`LdapServer::url`] names: 127.0.0.1, or the address pods reach
    /// ([`LdapServer::start_on`]).
    pub host: String,
    /// The password of [`ROOT_DN`].
    pub password: String,
    /// The suffix the server serves ([`SUFFIX`]).
    pub suffix: String,
    dir: PathBuf,
    child: Option<Child>,
}

use stowage_test_scratch::write_private;
pub use stowage_test_scratch::{free_port, scratch_dir};

impl LdapServer {
    /// Start a server on 127.0.0.1 whose [`ROOT_DN`] has `password`.
    pub fn start(password: &str) -> LdapServer {
        LdapServer::start_on(password, "127.0.0.1")
    }

    /// [`LdapServer::start`], listening on `host` too (the host's address on a real
    /// node's link, so that pods reach it), which [`LdapServer::url`] then names.
    pub fn start_on(password: &str, host: &str) -> LdapServer {
        let dir = scratch_dir("stowage-ldap");
        let data = dir.join("data");
        fs::create_dir(&data).expect("create the data directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .expect("make the server's directory private");
        // The root password as a salted hash (slappasswd reads it from a file, never
        // from argv), so that any password, quotes and spaces included, fits slapd.conf.
        let pwfile = dir.join("rootpw");
        write_private(&pwfile, password.as_bytes());
        let out = Command::new("slappasswd")
            .args(["-h", "{SSHA}", "-n", "-T"])
            .arg(&pwfile)
            .output()
            .expect("run slappasswd (tests/install-deps.sh installs slapd)");
        assert!(
            out.status.success(),
            "slappasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {pid}\n\
             argsfile {args}\n\
             database mdb\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {hash}\n\
             directory {data}\n\
             maxsize 67108864\n\
             index objectClass eq\n",
            pid = dir.join("slapd.pid").display(),
            args = dir.join("slapd.args").display(),
            data = data.display(),
        );
        fs::write(dir.join("slapd.conf"), conf).expect("write slapd.conf");
        let mut server = LdapServer {
            port: 0,
            host: host.to_owned(),
            password: password.to_owned(),
            suffix: SUFFIX.to_owned(),
            dir,
            child: None,
        };
        // The free port may be taken between the check and the bind: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut listen = format!("ldap://127.0.0.1:{port}/");
            if host != "127.0.0.1" {
                listen.push_str(&format!(" ldap://{host}:{port}/"));
            }
            let log = server.dir.join(format!("slapd-{port}.log"));
            let log_file = fs::File::create(&log).expect("create the slapd log");
            // -d: stay in the foreground (the child is slapd itself, killed on drop) and
            // log to stderr; "stats" logs each connection and operation.
            let child = Command::new("/usr/sbin/slapd")
                .arg("-f")
                .arg(server.dir.join("slapd.conf"))
                .args(["-h", &listen, "-d", "stats"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("start /usr/sbin/slapd (tests/install-deps.sh installs slapd)");
            server.port = port;
            server.child = Some(child);
            if server.wait_ready() {
                return server;
            }
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            eprintln!(
                "slapd did not start on port {port}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("slapd did not start; see the logs above");
    }

    /// Wait until the root DN can bind, or the process exits.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            let ready = self
                .tool("ldapwhoami", &[])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `ldap://host:port` of this server.
    pub fn url(&self) -> String {
        format!("ldap://{}:{}", self.host, self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join(format!("slapd-{}.log", self.port))).unwrap_or_default()
    }

    /// The JSON of a target's `spec.external.config` for the example LDAP plugin: this
    /// server, the whole suffix, bound as [`ROOT_DN`] with the password from
    /// [`SECRET_NAME`]/[`SECRET_KEY`]; `extra` merged in (e.g. `{"timeoutSeconds": 5}`).
    pub fn config_json(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut value = serde_json::json!({
            "url": self.url(),
            "baseDn": self.suffix,
            "bindDn": ROOT_DN,
            "bindPasswordSecretRef": {"name": SECRET_NAME, "key": SECRET_KEY},
        });
        if let (Some(map), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
            map.extend(extra.clone());
        }
        value
    }

    /// An ldap-utils command against this server over TCP, bound as [`ROOT_DN`] (the
    /// password from a 0600 file), with `args` after the connection options.
    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let pwfile = self.dir.join("rootpw");
        let mut cmd = Command::new(tool);
        cmd.env("LDAPNOINIT", "1")
            .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", self.port)])
            .args(["-D", ROOT_DN, "-y"])
            .arg(&pwfile)
            .args(args);
        cmd
    }

    /// Add the entries of `ldif` (ldapadd); stdout or stderr.
    pub fn try_add(&self, ldif: &str) -> Result<String, String> {
        self.try_tool("ldapadd", &[], ldif)
    }

    /// Add the entries of `ldif`; panics on failure.
    pub fn add(&self, ldif: &str) {
        if let Err(e) = self.try_add(ldif) {
            panic!(
                "ldapadd failed: {e}\nLDIF:\n{ldif}\nslapd log:\n{}",
                self.log()
            )
        }
    }

    /// Run an ldap-utils `tool` with `args` and `stdin`; stdout or stderr.
    pub fn try_tool(&self, tool: &str, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut child = self
            .tool(tool, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run {tool}: {e}"))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .map_err(|e| format!("write to {tool}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for {tool}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{tool} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// What a faithful restore of the subtree at `base` reproduces: each entry's DN (as
    /// ldapsearch prints it, base64 when not plain ASCII) with its user attributes as
    /// LDIF lines, sorted; binary values are base64, so bytes compare exactly. Empty when
    /// `base` does not exist.
    pub fn snapshot(&self, base: &str) -> BTreeMap<String, Vec<String>> {
        let ldif = match self.try_tool(
            "ldapsearch",
            &[
                "-LLL",
                "-o",
                "ldif-wrap=no",
                "-a",
                "never",
                "-b",
                base,
                "-s",
                "sub",
                "(objectClass=*)",
                "*",
            ],
            "",
        ) {
            Ok(ldif) => ldif,
            Err(e) if e.contains("No such object (32)") => String::new(),
            Err(e) => panic!("snapshot of {base}: {e}"),
        };
        parse_ldif(&ldif)
    }

    /// Stop the server now (a server that went away); the directory stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Unwrapped LDIF (`-o ldif-wrap=no`) as a map from each entry's `dn:` line to its
/// other lines, sorted (so the order of entries and of values does not matter).
pub fn parse_ldif(ldif: &str) -> BTreeMap<String, Vec<String>> {
    let mut entries = BTreeMap::new();
    for record in ldif.split("\n\n") {
        let mut lines = record
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(dn) = lines.next() else { continue };
        let mut attributes: Vec<String> = lines.map(str::to_owned).collect();
        attributes.sort();
        entries.insert(dn.to_owned(), attributes);
    }
    entries
}

/// The entries of two [`LdapServer::snapshot`]s that differ, each with both values: a
/// short failure message where `assert_eq!` would print the whole tree.
pub fn snapshot_differences(
    want: &BTreeMap<String, Vec<String>>,
    got: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    stowage_test_scratch::differences(want, got, |v| v.join(" | "))
}

impl Drop for LdapServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Fill the suffix of `server`: the base entry, `ou=people` with `people`
/// inetOrgPersons (multi-valued `cn` and `mail`, UTF-8 names, a binary `jpegPhoto` of all
/// 256 byte values, a `userPassword`), one person whose RDN is not ASCII (its DN is base64
/// in LDIF) and one with an escaped comma, `ou=groups` with a groupOfNames naming people,
/// and an entry moved (modrdn) under an OU created after it, so that the server returns
/// a child before its parent. Returns the number of entries under the suffix.
pub fn seed(server: &LdapServer, people: usize) -> usize {
    let photo = server.dir.join("photo.bin");
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    fs::write(&photo, bytes).expect("write the photo");
    let photo_url = format!("file://{}", photo.display());
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n\
         o: Example Org\ndescription: the seeded tree of the stowage LDAP tests\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: uid=mover,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: mover\n\
         cn: Mover\nsn: Mover\n\n"
    );
    for n in 0..people {
        ldif.push_str(&format!(
            "dn: uid=p{n},ou=people,{SUFFIX}\n\
             objectClass: inetOrgPerson\n\
             uid: p{n}\n\
             cn: Person {n}\n\
             cn: Zoë Ünïcødé {n} 日本語\n\
             sn: Ørsted\n\
             givenName: Zoë\n\
             mail: p{n}@example.org\n\
             mail: p{n}.alt@example.org\n\
             telephoneNumber: +1 555 {n:04}\n\
             description: line with trailing space \n\
             userPassword: {{SSHA}}not-a-real-hash-{n}\n"
        ));
        if n % 5 == 0 {
            ldif.push_str(&format!("jpegPhoto:< {photo_url}\n"));
        }
        ldif.push('\n');
    }
    ldif.push_str(&format!(
        "dn: cn=Zoë Ørsted,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\n\
         cn: Zoë Ørsted\nsn: Ørsted\n\n\
         dn: cn=Doe\\, John,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\n\
         cn: Doe, John\nsn: Doe\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: cn=staff,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: staff\n\
         member: uid=mover,ou=people,{SUFFIX}\nmember: cn=Doe\\, John,ou=people,{SUFFIX}\n\n\
         dn: ou=late,{SUFFIX}\nobjectClass: organizationalUnit\nou: late\n\n"
    ));
    server.add(&ldif);
    // The entry created first moves under the OU created last: in the server's (ID)
    // order it now comes before its parent.
    if let Err(e) = server.try_tool(
        "ldapmodrdn",
        &["-s", &format!("ou=late,{SUFFIX}")],
        &format!("uid=mover,ou=people,{SUFFIX}\nuid=mover\n"),
    ) {
        panic!("ldapmodrdn failed: {e}");
    }
    people + 8
}
