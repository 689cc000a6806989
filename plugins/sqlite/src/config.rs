//! The typed configuration of the sqlite plugin (`BackupTarget.spec.sqlite`).

use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::ValidationErrors;

/// A Kubernetes object name (RFC 1123 DNS subdomain), as the API server checks claims'.
const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Copy a SQLite database file that an application keeps on its PersistentVolumeClaim
/// (Vaultwarden, Home Assistant, Gitea, the *arr apps), while the application keeps
/// running, with SQLite's online backup API: the copy is one consistent state of the
/// database, WAL-mode databases included, and is integrity-checked before it is stored.
///
/// The Job mounts the claim read-only (restores: read-write). When the claim is
/// ReadWriteOnce the Job runs on the node of the pod that uses it. Files that only the
/// application's user may read need `spec.job.runAs` set to that user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SqliteConfig {
    /// The application's PersistentVolumeClaim holding the database, in the target's
    /// namespace (the claim the application's pod mounts, e.g. `vaultwarden-data`).
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub claim_name: String,
    /// Path of the database file inside the claim, relative to the claim's root (e.g.
    /// `db.sqlite3` or `config/home-assistant_v2.db`); no leading `/`, no `..`.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

impl SqliteConfig {
    /// Semantic checks the schema cannot express: `path` is a plain relative path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Err(message) = relative_path(&self.path) {
            errors.push("path", message);
        }
        errors.into_result()
    }
}

/// `text` as a path relative to the claim's root, or why it is not one.
pub fn relative_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err("must name a file inside the claim, e.g. db.sqlite3".to_owned());
    }
    if text.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    if text.ends_with('/') {
        return Err(format!(
            "{text:?} names a directory; name the database file inside it"
        ));
    }
    let path = Path::new(text);
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{text:?} is absolute; give it relative to the claim's root (e.g. {:?})",
                    text.trim_start_matches('/')
                ));
            }
            Component::ParentDir => {
                return Err(format!(
                    "{text:?} leaves the claim with `..`; give a path inside the claim"
                ));
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(format!("{text:?} names the claim's root; name a file"));
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let cases: [(&str, Result<&str, &str>); 9] = [
            ("db.sqlite3", Ok("db.sqlite3")),
            ("config/home.db", Ok("config/home.db")),
            ("./data/./app.db", Ok("data/app.db")),
            ("/data/app.db", Err("is absolute")),
            ("../other/app.db", Err("leaves the claim")),
            ("data/../../x.db", Err("leaves the claim")),
            ("data/", Err("names a directory")),
            ("", Err("must name a file")),
            (".", Err("names the claim's root")),
        ];
        for (text, want) in cases {
            match (relative_path(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, PathBuf::from(want), "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
