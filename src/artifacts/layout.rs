//! Where an artifact lives: `<root>/<namespace>/<target>/<YYYY-MM-DD>/<plugin>-<stamp>.<ext>[.gz|.zst]`.
//!
//! Every name that comes from the cluster (namespace, target, plugin key, extension) is
//! validated before it becomes a path component, so nothing a user puts in a resource can
//! make the store write outside `<root>/<namespace>/<target>/`.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::Compression;

/// Suffix of a file being written; such a file is never an artifact. An artifact being
/// written is `<final name>.<run>.partial` ([`partial_name`]), so a run can tell its own
/// leftovers from another run's live file.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The longest schedule part of an artifact's file name ([`ArtifactName::relative_path`]).
pub const MAX_SCHEDULE_PART_LEN: usize = 40;
/// Suffix of an artifact's sidecar (appended to the artifact's file name).
pub const SIDECAR_SUFFIX: &str = ".meta.json";

/// A name that cannot be used as a path component.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    /// Which name (e.g. `namespace`).
    pub what: &'static str,
    /// The rejected value (names are never secret).
    pub value: String,
    /// Why, and what is accepted.
    pub reason: &'static str,
}

/// Check a Kubernetes namespace name: an RFC 1123 DNS label (1-63 characters, lowercase
/// letters, digits and `-`, starting and ending with a letter or digit).
pub fn validate_namespace(name: &str) -> Result<(), InvalidName> {
    validate_label(name, "namespace")
}

/// Check a `BackupTarget` name: an RFC 1123 DNS subdomain (1-253 characters, lowercase
/// letters, digits, `-` and `.`, each dot-separated part a DNS label).
pub fn validate_target(name: &str) -> Result<(), InvalidName> {
    let invalid = |reason| InvalidName {
        what: "target",
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 253 {
        return Err(invalid("a target name must be 1 to 253 characters long"));
    }
    for part in name.split('.') {
        validate_label(part, "target").map_err(|_| {
            invalid(
                "a target name must be a DNS subdomain: lowercase letters, digits, '-' and '.', \
                 with no empty, leading or trailing parts",
            )
        })?;
    }
    Ok(())
}

/// Check a plugin key or artifact extension: 1-63 characters of lowercase letters, digits,
/// `-` and `_`, not starting with `-` (used inside a file name).
pub fn validate_token(name: &str, what: &'static str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: name.to_owned(),
            reason: "must be 1 to 63 characters of lowercase letters, digits, '-' and '_'",
        })
    }
}

/// Check an artifact extension: dot-separated parts of lowercase letters and digits
/// (e.g. `dump`, `tar.gz`), at most 32 characters.
pub fn validate_extension(extension: &str) -> Result<(), InvalidName> {
    let ok = !extension.is_empty()
        && extension.len() <= 32
        && extension.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what: "artifact extension",
            value: extension.to_owned(),
            reason: "must be dot-separated parts of lowercase letters and digits, e.g. dump or tar.gz",
        })
    }
}

fn validate_label(name: &str, what: &'static str) -> Result<(), InvalidName> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: name.to_owned(),
            reason: "must be a DNS label: 1 to 63 lowercase letters, digits or '-', \
                     starting and ending with a letter or digit",
        })
    }
}

/// The file-name suffix a compression adds (`""`, `.gz`, `.zst`).
pub fn compression_suffix(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "",
        Compression::Gzip => ".gz",
        Compression::Zstd => ".zst",
    }
}

/// The validated identity of a target's artifact directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDir {
    namespace: String,
    target: String,
}

impl TargetDir {
    /// Validate a namespace and target name.
    pub fn new(namespace: &str, target: &str) -> Result<Self, InvalidName> {
        validate_namespace(namespace)?;
        validate_target(target)?;
        Ok(TargetDir {
            namespace: namespace.to_owned(),
            target: target.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The target name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// `<namespace>/<target>`, relative to the store's root.
    pub fn relative(&self) -> PathBuf {
        Path::new(&self.namespace).join(&self.target)
    }
}

/// The validated name of one artifact, before collision handling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactName {
    /// The target's directory.
    pub dir: TargetDir,
    /// Plugin key (file-name prefix).
    pub plugin: String,
    /// Extension of the uncompressed artifact, without a dot.
    pub extension: String,
    /// How the bytes are compressed.
    pub compression: Compression,
    /// The time that names the file (the schedule tick, or the run's start).
    pub time: Timestamp,
    /// The schedule that made the run, if any: part of the file name, so two schedules
    /// firing at the same tick on one target never pick the same name.
    pub schedule: Option<String>,
}

impl ArtifactName {
    /// Validate every component.
    pub fn new(
        dir: TargetDir,
        plugin: &str,
        extension: &str,
        compression: Compression,
        time: Timestamp,
    ) -> Result<Self, InvalidName> {
        validate_token(plugin, "plugin key")?;
        validate_extension(extension)?;
        Ok(ArtifactName {
            dir,
            plugin: plugin.to_owned(),
            extension: extension.to_owned(),
            compression,
            time,
            schedule: None,
        })
    }

    /// The same name for a run of `schedule` (see [`ArtifactName::schedule`]).
    pub fn for_schedule(mut self, schedule: Option<&str>) -> Self {
        self.schedule = schedule.map(str::to_owned);
        self
    }

    /// The path relative to the root for the `n`-th candidate name:
    /// `<plugin>-<stamp>[-<schedule>][-<n>].<ext>[.gz|.zst]`. `n == 0` is the plain name,
    /// later ones get `-1`, `-2`... (two runs in the same second). The schedule part is the
    /// schedule's name with `.` turned into `-`, shortened with a hash past
    /// [`MAX_SCHEDULE_PART_LEN`] characters.
    pub fn relative_path(&self, n: u32) -> PathBuf {
        let utc = self.time.to_zoned(TimeZone::UTC);
        let day = utc.strftime("%Y-%m-%d").to_string();
        let stamp = utc.strftime("%Y%m%dT%H%M%SZ").to_string();
        let counter = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let schedule = self
            .schedule
            .as_deref()
            .map(|s| format!("-{}", schedule_part(s)))
            .unwrap_or_default();
        let file = format!(
            "{}-{stamp}{schedule}{counter}.{}{}",
            self.plugin,
            self.extension,
            compression_suffix(self.compression)
        );
        self.dir.relative().join(day).join(file)
    }
}

/// A schedule name as a file-name part: lowercase letters, digits and `-`, at most
/// [`MAX_SCHEDULE_PART_LEN`] characters (a longer name keeps its start and a hash of the
/// whole).
pub fn schedule_part(schedule: &str) -> String {
    use sha2::{Digest, Sha256};
    let cleaned: String = schedule
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if !cleaned.is_empty() && cleaned.len() <= MAX_SCHEDULE_PART_LEN && cleaned == schedule {
        return cleaned.to_owned();
    }
    let digest = Sha256::digest(schedule.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = MAX_SCHEDULE_PART_LEN - hash.len() - 1;
    let prefix: String = cleaned.chars().take(keep).collect();
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// A run id as a file-name part: lowercase letters, digits, `-` and `_`, at most 63
/// characters; `run` when nothing is left.
pub fn run_part(run_id: &str) -> String {
    let cleaned: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .map(|c| c.to_ascii_lowercase())
        .take(63)
        .collect();
    if cleaned.is_empty() {
        "run".to_owned()
    } else {
        cleaned
    }
}

/// The file an artifact is written to before it is published: `<final>.<run>.partial`.
pub fn partial_name(final_path: &Path, run_id: &str) -> PathBuf {
    with_suffix(
        final_path,
        &format!(".{}{PARTIAL_SUFFIX}", run_part(run_id)),
    )
}

/// A partial file's final name and run, from its path; `None` for a file that is not a
/// partial, or one without a run part (written by stowage 0.1).
pub fn parse_partial(path: &Path) -> Option<(PathBuf, String)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(PARTIAL_SUFFIX)?;
    let (final_name, run) = stem.rsplit_once('.')?;
    if final_name.is_empty() || run.is_empty() || run_part(run) != run {
        return None;
    }
    Some((path.with_file_name(final_name), run.to_owned()))
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time() -> Timestamp {
        "2026-11-21T02:30:00Z".parse().unwrap()
    }

    #[test]
    fn the_path_follows_the_documented_layout() {
        let dir = TargetDir::new("shop", "app-db").unwrap();
        let name = ArtifactName::new(dir, "postgres", "dump", Compression::Zstd, time()).unwrap();
        assert_eq!(
            name.relative_path(0),
            Path::new("shop/app-db/2026-11-21/postgres-20261121T023000Z.dump.zst")
        );
        assert_eq!(
            name.relative_path(2),
            Path::new("shop/app-db/2026-11-21/postgres-20261121T023000Z-2.dump.zst")
        );
        let plain = ArtifactName {
            compression: Compression::None,
            ..name.clone()
        };
        assert_eq!(
            plain.relative_path(0),
            Path::new("shop/app-db/2026-11-21/postgres-20261121T023000Z.dump")
        );
        let gz = ArtifactName {
            compression: Compression::Gzip,
            ..name
        };
        assert!(gz.relative_path(0).to_str().unwrap().ends_with(".dump.gz"));
    }

    #[test]
    fn two_schedules_at_one_tick_get_distinct_names() {
        let dir = TargetDir::new("shop", "app-db").unwrap();
        let name = ArtifactName::new(dir, "postgres", "dump", Compression::Zstd, time()).unwrap();
        let nightly = name.clone().for_schedule(Some("nightly"));
        let hourly = name.clone().for_schedule(Some("hourly"));
        assert_eq!(
            nightly.relative_path(0),
            Path::new("shop/app-db/2026-11-21/postgres-20261121T023000Z-nightly.dump.zst")
        );
        assert_ne!(nightly.relative_path(0), hourly.relative_path(0));
        assert_eq!(
            nightly.relative_path(1),
            Path::new("shop/app-db/2026-11-21/postgres-20261121T023000Z-nightly-1.dump.zst")
        );
        // Dots and long names stay one file-name part, distinct from a look-alike.
        assert_ne!(schedule_part("a.b"), schedule_part("a-b"));
        assert!(!schedule_part("a.b").contains('.'));
        let long = "x".repeat(200);
        assert!(schedule_part(&long).len() <= MAX_SCHEDULE_PART_LEN);
        assert_ne!(schedule_part(&long), schedule_part(&"x".repeat(199)));
    }

    #[test]
    fn a_partial_name_carries_its_run() {
        let final_path = Path::new("/b/shop/db/2026-11-21/pg-20261121T023000Z.dump.zst");
        let partial = partial_name(final_path, "3fa9c01b2e");
        assert_eq!(
            partial,
            Path::new("/b/shop/db/2026-11-21/pg-20261121T023000Z.dump.zst.3fa9c01b2e.partial")
        );
        assert_eq!(
            parse_partial(&partial),
            Some((final_path.to_owned(), "3fa9c01b2e".to_owned()))
        );
        assert_eq!(run_part("Manual/Run 1"), "manualrun1");
        assert_eq!(run_part("//"), "run");
        assert_eq!(parse_partial(Path::new("/b/x.dump")), None);
    }

    #[test]
    fn escaping_names_are_rejected() {
        for bad in [
            "", "..", ".", "a/b", "../etc", "/abs", "A", "a b", "-a", "a-", "a\0b", "é",
        ] {
            assert!(validate_namespace(bad).is_err(), "namespace {bad:?}");
        }
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            "a..b",
            ".a",
            "a.",
            "/",
            "x/../../y",
            "UP",
        ] {
            assert!(validate_target(bad).is_err(), "target {bad:?}");
        }
        let long = "a".repeat(64);
        assert!(validate_namespace(&long).is_err());
        assert!(validate_target("app-db.v2").is_ok());
        for bad in ["", "..", "a/b", "-x", "x.y", "../../etc"] {
            assert!(validate_token(bad, "plugin key").is_err(), "token {bad:?}");
        }
        let dir = TargetDir::new("shop", "db").unwrap();
        assert!(ArtifactName::new(dir.clone(), "../x", "dump", Compression::None, time()).is_err());
        for bad in ["d/../../x", "..", ".gz", "tar.", "a..b", "", "A"] {
            assert!(
                ArtifactName::new(dir.clone(), "pg", bad, Compression::None, time()).is_err(),
                "{bad:?}"
            );
        }
        let tgz = ArtifactName::new(dir, "http", "tar.gz", Compression::Zstd, time()).unwrap();
        assert!(
            tgz.relative_path(0)
                .ends_with("http-20261121T023000Z.tar.gz.zst")
        );
    }

    #[test]
    fn error_names_the_field_and_the_rule() {
        let err = TargetDir::new("shop", "../../etc").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("target"), "{text}");
        assert!(text.contains("DNS subdomain"), "{text}");
    }
}
