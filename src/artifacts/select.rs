//! Which artifact a restore takes: a pure choice over a target's artifacts as their
//! sidecars list them, and the hold that keeps retention off the artifact being restored.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jiff::Timestamp;

use super::catalog::Listed;
use super::layout::run_part;

/// How to choose among one target's artifacts. All unset: the newest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only the artifacts this schedule made.
    pub schedule: Option<String>,
    /// The newest made at or before this time.
    pub as_of: Option<Timestamp>,
    /// Skip this many of the newest.
    pub previous: Option<u32>,
}

impl Selection {
    /// The choice in words, for messages (`the newest artifact of schedule nightly`).
    pub fn describe(&self) -> String {
        let mut text = match (self.as_of, self.previous) {
            (Some(t), _) => format!("the newest artifact made at or before {t}"),
            (None, Some(0) | None) => "the newest artifact".to_owned(),
            (None, Some(n)) => format!("the artifact before the {n} newest"),
        };
        if let Some(schedule) = &self.schedule {
            text.push_str(&format!(" of schedule {schedule}"));
        }
        text
    }
}

/// Why no artifact fits a [`Selection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoArtifact {
    /// The target has no artifact at all (of that schedule, when one is named).
    None,
    /// Artifacts exist, none fits: how many there were, and the oldest one's time.
    NoneFits {
        /// Artifacts considered (after the schedule filter).
        considered: usize,
        /// The time of the oldest of them.
        oldest: Timestamp,
        /// The time of the newest of them.
        newest: Timestamp,
    },
}

/// Choose among `artifacts` (those of one target, any order) by `selection`. An
/// artifact's time is its schedule tick, else its start ([`super::Sidecar::time`]).
pub fn choose<'a>(
    artifacts: &'a [Listed],
    selection: &Selection,
) -> Result<&'a Listed, NoArtifact> {
    let mut candidates: Vec<&Listed> = artifacts
        .iter()
        .filter(|a| {
            selection
                .schedule
                .as_deref()
                .is_none_or(|s| a.sidecar.schedule.as_deref() == Some(s))
        })
        .collect();
    // Newest first; ties broken by path so the choice is stable.
    candidates.sort_by(|a, b| {
        b.sidecar
            .time()
            .cmp(&a.sidecar.time())
            .then(b.path.cmp(&a.path))
    });
    let (Some(newest), Some(oldest)) = (candidates.first(), candidates.last()) else {
        return Err(NoArtifact::None);
    };
    let none_fits = NoArtifact::NoneFits {
        considered: candidates.len(),
        oldest: oldest.sidecar.time(),
        newest: newest.sidecar.time(),
    };
    let fitting = candidates
        .iter()
        .filter(|a| selection.as_of.is_none_or(|t| a.sidecar.time() <= t));
    let skip = selection.previous.unwrap_or(0) as usize;
    fitting.copied().nth(skip).ok_or(none_fits)
}

/// Prefix of a hold file's name: `.<artifact file name>.restoring-<run>`, hidden so the
/// catalog skips it.
const HOLD_INFIX: &str = ".restoring-";

/// A hold older than this is left over from a restore that was killed: retention ignores
/// it (restores are bounded by their Job's deadline, at most a week).
pub const HOLD_MAX_AGE: Duration = Duration::from_secs(8 * 24 * 3600);

/// The hold file of `artifact` for run `run_id`.
pub fn hold_path(artifact: &Path, run_id: &str) -> PathBuf {
    let name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    artifact.with_file_name(format!(".{name}{HOLD_INFIX}{}", run_part(run_id)))
}

/// Whether a restore holds `artifact`: a hold file of it younger than [`HOLD_MAX_AGE`]
/// exists.
pub fn is_held(artifact: &Path, now: SystemTime) -> bool {
    let (Some(dir), Some(name)) = (artifact.parent(), artifact.file_name()) else {
        return false;
    };
    let prefix = format!(".{}{HOLD_INFIX}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| {
                    now.duration_since(modified)
                        .is_ok_and(|age| age < HOLD_MAX_AGE)
                        // A clock behind the file's time: the hold is fresh.
                        || modified > now
                })
    })
}

/// A hold on an artifact for as long as the value lives: retention does not delete an
/// artifact a restore is reading. Best effort: a claim mounted read-only cannot take one
/// (nothing prunes it then either).
pub struct Hold {
    path: Option<PathBuf>,
}

impl Hold {
    /// Take a hold on `artifact` for run `run_id`.
    pub fn take(artifact: &Path, run_id: &str) -> Hold {
        let path = hold_path(artifact, run_id);
        match std::fs::write(&path, run_id.as_bytes()) {
            Ok(()) => Hold { path: Some(path) },
            Err(e) => {
                tracing::warn!(
                    hold = %path.display(),
                    error = %e,
                    "cannot mark the artifact as being restored; retention of another run could prune it meanwhile"
                );
                Hold { path: None }
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(path) = &self.path
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(hold = %path.display(), error = %e, "cannot remove the restore's hold file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Compression;
    use crate::artifacts::Sidecar;

    fn listed(name: &str, time: &str, schedule: Option<&str>) -> Listed {
        let time: Timestamp = time.parse().unwrap();
        Listed {
            path: PathBuf::from(name),
            sidecar: Sidecar {
                format_version: 1,
                plugin: "postgres".into(),
                plugin_version: "1".into(),
                stowage_version: "0".into(),
                namespace: "shop".into(),
                target: "db".into(),
                schedule: schedule.map(str::to_owned),
                run_id: name.into(),
                scheduled_time: schedule.map(|_| time),
                start_time: time,
                end_time: time,
                raw_bytes: 1,
                stored_bytes: 1,
                sha256: "00".into(),
                compression: Compression::None,
                content_type: "application/octet-stream".into(),
                facts: Default::default(),
            },
        }
    }

    #[test]
    fn choices_pick_the_expected_artifact() {
        let all = vec![
            listed("a", "2026-11-01T02:00:00Z", Some("nightly")),
            listed("c", "2026-11-03T02:00:00Z", Some("nightly")),
            listed("b", "2026-11-02T09:00:00Z", None),
            listed("d", "2026-11-03T12:00:00Z", Some("hourly")),
        ];
        let at = |t: &str| Some(t.parse::<Timestamp>().unwrap());
        let sel = |schedule: Option<&str>, as_of, previous| Selection {
            schedule: schedule.map(str::to_owned),
            as_of,
            previous,
        };
        let cases: Vec<(&str, Selection, Result<&str, ()>)> = vec![
            ("latest", sel(None, None, None), Ok("d")),
            ("previous 0 is latest", sel(None, None, Some(0)), Ok("d")),
            ("previous 1", sel(None, None, Some(1)), Ok("c")),
            ("previous 3", sel(None, None, Some(3)), Ok("a")),
            (
                "previous past the oldest",
                sel(None, None, Some(4)),
                Err(()),
            ),
            (
                "latest of a schedule",
                sel(Some("nightly"), None, None),
                Ok("c"),
            ),
            (
                "previous of a schedule",
                sel(Some("nightly"), None, Some(1)),
                Ok("a"),
            ),
            (
                "asOf between two",
                sel(None, at("2026-11-02T10:00:00Z"), None),
                Ok("b"),
            ),
            (
                "asOf exactly at one",
                sel(None, at("2026-11-03T02:00:00Z"), None),
                Ok("c"),
            ),
            (
                "asOf then previous",
                sel(None, at("2026-11-03T02:00:00Z"), Some(1)),
                Ok("b"),
            ),
            (
                "asOf before everything",
                sel(None, at("2026-10-01T00:00:00Z"), None),
                Err(()),
            ),
            (
                "asOf with a schedule",
                sel(Some("nightly"), at("2026-11-02T23:00:00Z"), None),
                Ok("a"),
            ),
            ("unknown schedule", sel(Some("weekly"), None, None), Err(())),
        ];
        for (name, selection, want) in cases {
            let got = choose(&all, &selection)
                .map(|l| l.path.to_string_lossy().into_owned())
                .map_err(|_| ());
            assert_eq!(got.as_deref().map_err(|_| ()), want, "{name}");
        }
    }

    #[test]
    fn no_artifact_says_whether_any_existed() {
        assert_eq!(choose(&[], &Selection::default()), Err(NoArtifact::None));
        let one = vec![listed("a", "2026-11-01T02:00:00Z", None)];
        let err = choose(
            &one,
            &Selection {
                previous: Some(1),
                ..Selection::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, NoArtifact::NoneFits { considered: 1, .. }));
    }

    #[test]
    fn a_hold_marks_the_artifact_until_dropped_and_old_holds_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("postgres-20261101T020000Z.dump.zst");
        std::fs::write(&artifact, b"x").unwrap();
        let now = SystemTime::now();
        assert!(!is_held(&artifact, now));
        let hold = Hold::take(&artifact, "restore-1");
        assert!(is_held(&artifact, now));
        assert!(
            !is_held(&artifact, now + HOLD_MAX_AGE + Duration::from_secs(1)),
            "a hold older than HOLD_MAX_AGE is a leftover"
        );
        let other = dir.path().join("postgres-20261102T020000Z.dump.zst");
        assert!(!is_held(&other, now), "a hold is for its own artifact only");
        drop(hold);
        assert!(!is_held(&artifact, now));
    }
}
