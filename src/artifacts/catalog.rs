//! Finding artifacts from their sidecars, and verifying them.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::StoreError;
use super::layout::{PARTIAL_SUFFIX, SIDECAR_SUFFIX};
use super::sidecar::Sidecar;
use super::writer::hex;

/// One artifact found through its sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// Path of the artifact file.
    pub path: PathBuf,
    /// Its sidecar.
    pub sidecar: Sidecar,
}

/// What was found under a path: artifacts with readable sidecars, and problems.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Artifacts, oldest first.
    pub artifacts: Vec<Listed>,
    /// Sidecars that cannot be read, and artifact files without a sidecar.
    pub problems: Vec<Problem>,
}

/// One problem with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// The kinds of problems `verify` and `list` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The sidecar exists, its artifact does not.
    Missing,
    /// The artifact's size differs from the sidecar's `storedBytes`.
    SizeMismatch {
        /// Size recorded in the sidecar.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The artifact's SHA-256 differs from the sidecar's.
    HashMismatch {
        /// SHA-256 recorded in the sidecar.
        expected: String,
        /// SHA-256 of the file.
        actual: String,
    },
    /// The sidecar cannot be read or parsed.
    BadSidecar(String),
    /// An artifact file has no sidecar (its run did not finish, or the sidecar was deleted).
    NoSidecar,
    /// Reading the artifact failed.
    Unreadable(String),
    /// The sidecar exists and the run's partial file is still there: the run was stopped
    /// between writing the sidecar and publishing the file.
    Uncommitted {
        /// The partial file that holds the artifact's bytes.
        partial: PathBuf,
    },
    /// A partial file nobody has written to for a day: left by a run that was killed.
    StalePartial,
}

impl Problem {
    /// What to do about it, with the command when there is one.
    pub fn fix(&self) -> String {
        let dir = self
            .path
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".".into());
        match &self.kind {
            ProblemKind::Missing => format!(
                "if it was deleted on purpose, `stowage artifacts repair {dir}` removes its sidecar"
            ),
            ProblemKind::Uncommitted { .. } => format!(
                "`stowage artifacts repair {dir}` publishes it if the file matches its sidecar and removes both otherwise (the target's next backup does the same)"
            ),
            ProblemKind::StalePartial => format!(
                "`stowage artifacts repair {dir}` removes it (the target's next backup does the same)"
            ),
            ProblemKind::SizeMismatch { .. } | ProblemKind::HashMismatch { .. } => {
                "the file is damaged: do not restore from it; delete it and its sidecar, and restore from another artifact".into()
            }
            ProblemKind::BadSidecar(_) => {
                "restore the sidecar from a copy, or delete the sidecar and its artifact".into()
            }
            ProblemKind::NoSidecar => {
                "not a complete stowage artifact: move it out of the store or delete it".into()
            }
            ProblemKind::Unreadable(_) => "check the volume and the file's permissions".into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display();
        match &self.kind {
            ProblemKind::Uncommitted { partial } => write!(
                f,
                "{path}: interrupted commit: its sidecar exists, its bytes are still in {}",
                partial.display()
            ),
            ProblemKind::StalePartial => write!(
                f,
                "{path}: partial file of a run that was stopped (not written to for a day)"
            ),
            ProblemKind::Missing => write!(f, "{path}: missing (its sidecar exists)"),
            ProblemKind::SizeMismatch { expected, actual } => write!(
                f,
                "{path}: size mismatch: sidecar says {expected} bytes, file has {actual}"
            ),
            ProblemKind::HashMismatch { expected, actual } => write!(
                f,
                "{path}: sha256 mismatch: sidecar says {expected}, file has {actual}"
            ),
            ProblemKind::BadSidecar(message) => write!(f, "{path}: unreadable sidecar: {message}"),
            ProblemKind::NoSidecar => write!(f, "{path}: no sidecar ({path}{SIDECAR_SUFFIX})"),
            ProblemKind::Unreadable(message) => write!(f, "{path}: cannot read: {message}"),
        }
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The artifact a sidecar path describes.
pub fn artifact_of_sidecar(sidecar: &Path) -> Option<PathBuf> {
    let name = file_name(sidecar);
    name.strip_suffix(SIDECAR_SUFFIX)
        .map(|artifact| sidecar.with_file_name(artifact))
}

/// Every artifact under `path` (a store root, any directory below it, one artifact file, or
/// one sidecar), read from sidecars alone.
pub fn scan(path: &Path) -> Result<Catalog, StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| StoreError::io("read", path, e))?;
    let mut sidecars = Vec::new();
    let mut artifacts = Vec::new();
    let mut partials = Vec::new();
    if meta.is_dir() {
        walk(path, &mut sidecars, &mut artifacts, &mut partials)?;
    } else if file_name(path).ends_with(SIDECAR_SUFFIX) {
        sidecars.push(path.to_owned());
    } else {
        let sidecar = super::layout::with_suffix(path, SIDECAR_SUFFIX);
        if sidecar.exists() {
            sidecars.push(sidecar);
        } else {
            artifacts.push(path.to_owned());
        }
    }
    let mut catalog = Catalog::default();
    for sidecar_path in &sidecars {
        let Some(artifact) = artifact_of_sidecar(sidecar_path) else {
            continue;
        };
        match Sidecar::read(sidecar_path) {
            Ok(sidecar) if !artifact.exists() => {
                // Never listed: retention and restores must not count a file that is not
                // there. Which leftover it is decides the fix.
                let partial = super::layout::partial_name(&artifact, &sidecar.run_id);
                let kind = if partial.exists() {
                    ProblemKind::Uncommitted { partial }
                } else {
                    ProblemKind::Missing
                };
                catalog.problems.push(Problem {
                    path: artifact,
                    kind,
                });
            }
            Ok(sidecar) => catalog.artifacts.push(Listed {
                path: artifact,
                sidecar,
            }),
            Err(e) => catalog.problems.push(Problem {
                path: sidecar_path.clone(),
                kind: ProblemKind::BadSidecar(match e {
                    StoreError::BadSidecar { message, .. } => message,
                    other => other.to_string(),
                }),
            }),
        }
    }
    for artifact in artifacts {
        if !sidecars.contains(&super::layout::with_suffix(&artifact, SIDECAR_SUFFIX)) {
            catalog.problems.push(Problem {
                path: artifact,
                kind: ProblemKind::NoSidecar,
            });
        }
    }
    let day_ago = std::time::SystemTime::now()
        .checked_sub(STALE_PARTIAL_AGE)
        .unwrap_or(std::time::UNIX_EPOCH);
    for partial in partials {
        let old = std::fs::metadata(&partial)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified < day_ago);
        let committing = catalog
            .problems
            .iter()
            .any(|p| matches!(&p.kind, ProblemKind::Uncommitted { partial: p } if *p == partial));
        if old && !committing {
            catalog.problems.push(Problem {
                path: partial,
                kind: ProblemKind::StalePartial,
            });
        }
    }
    catalog.artifacts.sort_by(|a, b| {
        a.sidecar
            .time()
            .cmp(&b.sidecar.time())
            .then(a.path.cmp(&b.path))
    });
    catalog.problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(catalog)
}

/// A partial file not written to for this long is reported by `verify` as a leftover.
pub const STALE_PARTIAL_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn walk(
    dir: &Path,
    sidecars: &mut Vec<PathBuf>,
    artifacts: &mut Vec<PathBuf>,
    partials: &mut Vec<PathBuf>,
) -> Result<(), StoreError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io("list", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::io("list", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| StoreError::io("stat", &path, e))?;
        if kind.is_dir() {
            walk(&path, sidecars, artifacts, partials)?;
        } else if kind.is_file() {
            let name = file_name(&path);
            if name.ends_with(PARTIAL_SUFFIX) {
                partials.push(path);
            } else if name.starts_with('.') {
                continue;
            } else if name.ends_with(SIDECAR_SUFFIX) {
                sidecars.push(path);
            } else {
                artifacts.push(path);
            }
        }
    }
    Ok(())
}

/// Size and SHA-256 (lowercase hex) of a file, read in bounded chunks.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Check one artifact against its sidecar.
pub fn verify_one(listed: &Listed) -> Option<Problem> {
    let problem = |kind| {
        Some(Problem {
            path: listed.path.clone(),
            kind,
        })
    };
    match hash_file(&listed.path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => problem(ProblemKind::Missing),
        Err(e) => problem(ProblemKind::Unreadable(e.to_string())),
        Ok((size, _)) if size != listed.sidecar.stored_bytes => {
            problem(ProblemKind::SizeMismatch {
                expected: listed.sidecar.stored_bytes,
                actual: size,
            })
        }
        Ok((_, sha)) if sha != listed.sidecar.sha256 => problem(ProblemKind::HashMismatch {
            expected: listed.sidecar.sha256.clone(),
            actual: sha,
        }),
        Ok(_) => None,
    }
}

/// The result of verifying every artifact under a path.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Artifacts whose size and SHA-256 match their sidecar.
    pub ok: Vec<PathBuf>,
    /// Everything wrong, sorted by path.
    pub problems: Vec<Problem>,
}

/// Re-hash every artifact under `path` against its sidecar.
pub fn verify(path: &Path) -> Result<VerifyReport, StoreError> {
    let catalog = scan(path)?;
    let mut report = VerifyReport {
        ok: Vec::new(),
        problems: catalog.problems,
    };
    for listed in &catalog.artifacts {
        match verify_one(listed) {
            None => report.ok.push(listed.path.clone()),
            Some(problem) => report.problems.push(problem),
        }
    }
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}
