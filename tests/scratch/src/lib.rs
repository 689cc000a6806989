//! What the crates that start real services for the tests (`stowage-test-postgres`,
//! `stowage-test-mariadb`, `stowage-test-ldap`) share: a free port, a scratch directory,
//! a private file, and the short difference of two snapshots of a service's data.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A port on 127.0.0.1 that nothing listens on right now (a refused connection).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// A new, empty directory under the system's temporary directory, `prefix` in its name
/// (with the process id, a counter and the time, so parallel tests never share one).
pub fn scratch_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    fs::create_dir(&path)
        .unwrap_or_else(|e| panic!("create the directory {}: {e}", path.display()));
    path
}

/// Writes `contents` to a new file `path`, readable by its owner only (a password file).
pub fn write_private(path: &Path, contents: &[u8]) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The keys of two snapshots that differ, each with the start (300 characters) of both
/// values as `show` prints them: a short failure message where `assert_eq!` would print
/// megabytes.
pub fn differences<V: PartialEq>(
    want: &BTreeMap<String, V>,
    got: &BTreeMap<String, V>,
    show: impl Fn(&V) -> String,
) -> Vec<String> {
    let short = |v: Option<&V>| -> String {
        match v {
            None => "<missing>".to_owned(),
            Some(v) => show(v).chars().take(300).collect(),
        }
    };
    want.keys()
        .chain(got.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "{k}:\n  want {:?}\n  got  {:?}",
                short(want.get(k)),
                short(got.get(k))
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_keys_that_differ_or_are_missing() {
        let want = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let got = BTreeMap::from([
            ("a".to_owned(), 1),
            ("b".to_owned(), 3),
            ("c".to_owned(), 4),
        ]);
        let diff = differences(&want, &got, |v| v.to_string());
        assert_eq!(
            diff,
            [
                "b:\n  want \"2\"\n  got  \"3\"",
                "c:\n  want \"<missing>\"\n  got  \"4\""
            ]
        );
        assert!(differences(&want, &want, |v| v.to_string()).is_empty());
    }

    #[test]
    fn scratch_dirs_are_new_and_private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (
            scratch_dir("stowage-scratch-test"),
            scratch_dir("stowage-scratch-test"),
        );
        assert_ne!(a, b);
        let file = a.join("pw");
        write_private(&file, b"x");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(a).unwrap();
        fs::remove_dir_all(b).unwrap();
    }
}
