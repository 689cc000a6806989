//! The typed configuration of the files plugin (`BackupTarget.spec.files`), and the pure
//! decisions it drives: which path on the claim, and which entries of the tree go into the
//! archive.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stowage_plugin_sdk::ValidationErrors;

/// A Kubernetes object name (RFC 1123 DNS subdomain), as the API server checks claims'.
const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Archive a directory tree that an application keeps on its PersistentVolumeClaim
/// (uploads, attachments, configuration, media) as a tar stream: directories, regular
/// files with their modes and modification times, and symbolic links kept as links (never
/// followed). FIFOs, sockets and device files are skipped and counted in the artifact's
/// facts. Restores unpack into the same directory or another one on the claim.
///
/// The Job mounts the claim read-only (restores: read-write). When the claim is
/// ReadWriteOnce the Job runs on the node of the pod that uses it. Files that only the
/// application's user may read need `spec.job.runAs` set to that user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesConfig {
    /// The application's PersistentVolumeClaim holding the files, in the target's
    /// namespace (the claim the application's pod mounts, e.g. `nextcloud-data`).
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub claim_name: String,
    /// The directory to archive, relative to the claim's root (e.g. `uploads` or
    /// `config/media`); no leading `/`, no `..`. The default `.` archives the whole claim.
    /// Entries are stored relative to this directory.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Glob patterns, relative to `path`, of what to archive (e.g. `photos/**`, `*.conf`).
    /// `*` and `?` stay within one path segment, `**` crosses directories, `{a,b}` is
    /// either. A pattern that matches a directory takes its whole subtree. Empty (the
    /// default): everything under `path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 4096)))]
    pub include: Vec<String>,
    /// Glob patterns, relative to `path`, of what to leave out, applied after `include`
    /// (e.g. `cache`, `**/*.tmp`, `logs/*.log`). A pattern that matches a directory
    /// leaves out its whole subtree, which is then not even read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 4096)))]
    pub exclude: Vec<String>,
}

fn default_path() -> String {
    ".".to_owned()
}

impl FilesConfig {
    /// Semantic checks the schema cannot express: `path` is a plain relative path, every
    /// glob compiles and stays inside `path`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Err(message) = relative_dir(&self.path) {
            errors.push("path", message);
        }
        for (field, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, pattern) in patterns.iter().enumerate() {
                if let Err(message) = glob(pattern) {
                    errors.push(format!("{field}[{i}]"), message);
                }
            }
        }
        errors.into_result()
    }

    /// The compiled `include` and `exclude` patterns.
    pub fn selection(&self) -> Result<Selection, ValidationErrors> {
        self.validate()?;
        Selection::new(&self.include, &self.exclude)
    }
}

/// `text` as a directory relative to the claim's root (`.` or empty result: the root
/// itself), or why it is not one.
pub fn relative_dir(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err(
            "must name a directory inside the claim, e.g. uploads, or . for the whole claim"
                .to_owned(),
        );
    }
    if text.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    let mut clean = PathBuf::new();
    for component in Path::new(text).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                let relative = text.trim_start_matches('/');
                return Err(format!(
                    "{text:?} is absolute; give it relative to the claim's root (e.g. {:?})",
                    if relative.is_empty() { "." } else { relative }
                ));
            }
            Component::ParentDir => {
                return Err(format!(
                    "{text:?} leaves the claim with `..`; give a directory inside the claim"
                ));
            }
        }
    }
    Ok(clean)
}

/// One glob pattern, compiled the way the plugin matches paths, or why it cannot be.
fn glob(pattern: &str) -> Result<Glob, String> {
    if pattern.starts_with('/') {
        return Err(format!(
            "{pattern:?} is absolute; patterns are relative to `path` (e.g. {:?})",
            pattern.trim_start_matches('/')
        ));
    }
    if pattern.split('/').any(|part| part == "..") {
        return Err(format!(
            "{pattern:?} uses `..`; patterns match only inside `path`"
        ));
    }
    let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
    let pattern = pattern.strip_suffix('/').unwrap_or(pattern);
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("{pattern:?} is not a valid glob: {e}"))
}

/// What becomes of one entry of the tree (see [`Selection::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Into the archive (a directory: and walk into it).
    Archive,
    /// Not into the archive, but a directory is walked: something below may be included.
    WalkOnly,
    /// Left out; a directory's subtree is not read at all.
    Skip,
}

/// The compiled `include` and `exclude` patterns of a config.
#[derive(Clone, Debug)]
pub struct Selection {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Selection {
    /// Compile the patterns; errors name `include[i]` / `exclude[i]`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut build = |field: &str, patterns: &[String]| -> GlobSet {
            let mut set = GlobSetBuilder::new();
            for (i, pattern) in patterns.iter().enumerate() {
                match glob(pattern) {
                    Ok(glob) => {
                        set.add(glob);
                    }
                    Err(message) => errors.push(format!("{field}[{i}]"), message),
                }
            }
            set.build().unwrap_or_else(|_| GlobSet::empty())
        };
        let include = (!include.is_empty()).then(|| build("include", include));
        let exclude = build("exclude", exclude);
        errors.into_result()?;
        Ok(Selection { include, exclude })
    }

    /// Whether there are `include` patterns (else everything is included).
    pub fn filters_includes(&self) -> bool {
        self.include.is_some()
    }

    /// Whether there are `exclude` patterns.
    pub fn excludes_anything(&self) -> bool {
        !self.exclude.is_empty()
    }

    /// The decision for the entry at `relative` (relative to `path`, `/`-separated
    /// components) whose parent directory was decided `parent`. An excluded entry is
    /// skipped (a directory with its subtree); an entry inside an included directory is
    /// included; otherwise an entry is included when an `include` pattern matches it, and
    /// a directory that no pattern matches is still walked, since a pattern may match
    /// something below it.
    pub fn decide(&self, relative: &Path, is_dir: bool, parent: Decision) -> Decision {
        if self.exclude.is_match(relative) {
            return Decision::Skip;
        }
        let included = match &self.include {
            None => true,
            Some(_) if parent == Decision::Archive => true,
            Some(include) => include.is_match(relative),
        };
        match (included, is_dir) {
            (true, _) => Decision::Archive,
            (false, true) => Decision::WalkOnly,
            (false, false) => Decision::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories() {
        let cases: [(&str, Result<&str, &str>); 9] = [
            (".", Ok("")),
            ("./", Ok("")),
            ("uploads", Ok("uploads")),
            ("uploads/", Ok("uploads")),
            ("./data/./media", Ok("data/media")),
            ("/data/media", Err("is absolute")),
            ("../other", Err("leaves the claim")),
            ("data/../../x", Err("leaves the claim")),
            ("  ", Err("must name a directory")),
        ];
        for (text, want) in cases {
            match (relative_dir(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, PathBuf::from(want), "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn globs() {
        let cases: [(&str, Result<(), &str>); 7] = [
            ("*.conf", Ok(())),
            ("photos/**", Ok(())),
            ("**/*.{jpg,png}", Ok(())),
            ("./cache/", Ok(())),
            ("/etc/*", Err("is absolute")),
            ("../*", Err("uses `..`")),
            ("[a-", Err("not a valid glob")),
        ];
        for (pattern, want) in cases {
            match (glob(pattern), want) {
                (Ok(_), Ok(())) => {}
                (Err(got), Err(want)) => assert!(got.contains(want), "{pattern}: {got}"),
                (got, want) => panic!("{pattern}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn validation_names_each_bad_pattern_by_index() {
        let config = FilesConfig {
            claim_name: "app".into(),
            path: "/data".into(),
            include: vec!["ok/**".into(), "[x".into()],
            exclude: vec!["../up".into()],
        };
        let errors = config.validate().unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["path", "include[1]", "exclude[0]"]);
    }

    #[test]
    fn decisions() {
        use Decision::*;
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (include, exclude, path, is_dir, parent decision, want)
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a str,
            bool,
            Decision,
            Decision,
        );
        let cases: [Case<'_>; 16] = [
            (&[], &[], "a.txt", false, Archive, Archive),
            (&[], &[], "dir", true, Archive, Archive),
            (&[], &["cache"], "cache", true, Archive, Skip),
            (&[], &["cache"], "sub/cache", true, Archive, Archive),
            (&[], &["**/cache"], "sub/cache", true, Archive, Skip),
            (&[], &["*.tmp"], "a.tmp", false, Archive, Skip),
            (&[], &["*.tmp"], "sub/a.tmp", false, Archive, Archive),
            (&[], &["**/*.tmp"], "sub/deep/a.tmp", false, Archive, Skip),
            (&["*.conf"], &[], "app.conf", false, WalkOnly, Archive),
            (&["*.conf"], &[], "data.bin", false, WalkOnly, Skip),
            (&["*.conf"], &[], "sub", true, WalkOnly, WalkOnly),
            (&["photos"], &[], "photos", true, WalkOnly, Archive),
            (
                &["photos"],
                &[],
                "photos/2024/a.jpg",
                false,
                Archive,
                Archive,
            ),
            (
                &["photos/**"],
                &[],
                "photos/2024/a.jpg",
                false,
                WalkOnly,
                Archive,
            ),
            (
                &["photos"],
                &["photos/raw"],
                "photos/raw",
                true,
                Archive,
                Skip,
            ),
            (&["./photos/"], &[], "photos", true, WalkOnly, Archive),
        ];
        for (include, exclude, path, is_dir, parent, want) in cases {
            let selection = Selection::new(&strings(include), &strings(exclude)).unwrap();
            assert_eq!(
                selection.decide(Path::new(path), is_dir, parent),
                want,
                "include {include:?} exclude {exclude:?} {path}"
            );
        }
    }
}
