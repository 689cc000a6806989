//! GFS retention over the artifacts one schedule made for one target.
//!
//! [`plan`] is a pure function deciding what to keep, with restic's semantics (`restic
//! forget --keep-*`); [`apply`] reads a target's sidecars, plans and deletes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::layout::{SIDECAR_SUFFIX, with_suffix};
use crate::artifacts::{ArtifactStore, StoreError, TargetDir, catalog};

/// How many artifacts a schedule keeps per target, grandfather-father-son style with
/// restic's semantics: each rule keeps the newest artifact of each of its most recent
/// periods, an artifact kept by any rule is kept, the newest successful artifact is never
/// deleted, and on-demand artifacts are never deleted by a schedule. All zero keeps
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N artifacts.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_last: u32,
    /// Keep the newest artifact of each of the last N hours that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_hourly: u32,
    /// Keep the newest artifact of each of the last N days that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_daily: u32,
    /// Keep the newest artifact of each of the last N ISO weeks that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_weekly: u32,
    /// Keep the newest artifact of each of the last N months that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_monthly: u32,
    /// Keep the newest artifact of each of the last N years that have one.
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub keep_yearly: u32,
}

impl RetentionPolicy {
    /// Whether every count is zero (keep everything).
    pub fn is_keep_all(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// One artifact as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<Id> {
    /// What identifies the artifact to the caller (a path).
    pub id: Id,
    /// The schedule that made it; `None` for an on-demand backup.
    pub schedule: Option<String>,
    /// The time it is bucketed by (the schedule tick, else the run's start).
    pub time: Timestamp,
    /// A restore is reading it ([`crate::artifacts::select::Hold`]): kept whatever the
    /// rules say.
    pub held: bool,
}

/// An artifact that stays, and every reason why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept<Id> {
    /// The artifact.
    pub id: Id,
    /// Why it is kept (e.g. `daily`, `newest`, `on-demand`).
    pub reasons: Vec<String>,
}

/// An artifact to delete, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pruned<Id> {
    /// The artifact.
    pub id: Id,
    /// Why it goes.
    pub reason: String,
}

/// What retention decided, newest first in each list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<Id> {
    /// Artifacts that stay (including every artifact the schedule did not make).
    pub keep: Vec<Kept<Id>>,
    /// Artifacts to delete.
    pub prune: Vec<Pruned<Id>>,
}

struct Rule {
    count: u32,
    last: Option<i64>,
    name: &'static str,
    bucket: fn(&jiff::Zoned, usize) -> i64,
}

fn bucket_last(_: &jiff::Zoned, nr: usize) -> i64 {
    nr as i64
}
fn bucket_hour(z: &jiff::Zoned, _: usize) -> i64 {
    i64::from(z.year()) * 1_000_000
        + i64::from(z.month()) * 10_000
        + i64::from(z.day()) * 100
        + i64::from(z.hour())
}
fn bucket_day(z: &jiff::Zoned, _: usize) -> i64 {
    i64::from(z.year()) * 10_000 + i64::from(z.month()) * 100 + i64::from(z.day())
}
fn bucket_week(z: &jiff::Zoned, _: usize) -> i64 {
    let week = z.date().iso_week_date();
    i64::from(week.year()) * 100 + i64::from(week.week())
}
fn bucket_month(z: &jiff::Zoned, _: usize) -> i64 {
    i64::from(z.year()) * 100 + i64::from(z.month())
}
fn bucket_year(z: &jiff::Zoned, _: usize) -> i64 {
    i64::from(z.year())
}

/// Decide which of `artifacts` `schedule` keeps under `policy`, bucketing times in `tz`.
///
/// restic's rules: the schedule's artifacts are sorted newest first; `keepLast` keeps the
/// newest N; each of `keepHourly`/`Daily`/`Weekly`/`Monthly`/`Yearly` walks them newest
/// first and keeps an artifact whenever its period (hour, day, ISO week, month, year in
/// `tz`) differs from the last one that rule kept, until it has kept N; when a rule runs out
/// of artifacts before keeping N, it also keeps the oldest one. An artifact kept by any rule
/// is kept. On top of restic: the newest artifact is always kept, artifacts of other
/// schedules and on-demand ones are never touched, and an all-zero policy keeps everything.
pub fn plan<Id: Clone>(
    policy: &RetentionPolicy,
    schedule: &str,
    artifacts: &[Candidate<Id>],
    tz: &TimeZone,
) -> Plan<Id> {
    let mut keep = Vec::new();
    let mut prune = Vec::new();
    let mut mine: Vec<&Candidate<Id>> = Vec::new();
    for candidate in artifacts {
        match &candidate.schedule {
            Some(s) if s == schedule => mine.push(candidate),
            Some(other) => keep.push(Kept {
                id: candidate.id.clone(),
                reasons: vec![format!("made by schedule {other}")],
            }),
            None => keep.push(Kept {
                id: candidate.id.clone(),
                reasons: vec!["on-demand".to_owned()],
            }),
        }
    }
    // Newest first; stable, so equal times keep the caller's order.
    mine.sort_by_key(|c| std::cmp::Reverse(c.time));
    if policy.is_keep_all() {
        keep.extend(mine.iter().map(|c| Kept {
            id: c.id.clone(),
            reasons: vec!["policy keeps everything".to_owned()],
        }));
        return Plan { keep, prune };
    }
    let mut rules = [
        Rule {
            count: policy.keep_last,
            last: None,
            name: "last",
            bucket: bucket_last,
        },
        Rule {
            count: policy.keep_hourly,
            last: None,
            name: "hourly",
            bucket: bucket_hour,
        },
        Rule {
            count: policy.keep_daily,
            last: None,
            name: "daily",
            bucket: bucket_day,
        },
        Rule {
            count: policy.keep_weekly,
            last: None,
            name: "weekly",
            bucket: bucket_week,
        },
        Rule {
            count: policy.keep_monthly,
            last: None,
            name: "monthly",
            bucket: bucket_month,
        },
        Rule {
            count: policy.keep_yearly,
            last: None,
            name: "yearly",
            bucket: bucket_year,
        },
    ];
    let oldest = mine.len().saturating_sub(1);
    for (nr, candidate) in mine.iter().enumerate() {
        let zoned = candidate.time.to_zoned(tz.clone());
        let mut reasons = Vec::new();
        if nr == 0 {
            reasons.push("newest".to_owned());
        }
        for rule in rules.iter_mut() {
            if rule.count == 0 {
                continue;
            }
            let value = (rule.bucket)(&zoned, nr);
            if rule.last != Some(value) {
                rule.last = Some(value);
                rule.count -= 1;
                reasons.push(rule.name.to_owned());
            } else if nr == oldest && rule.name != "last" {
                // restic: a rule with periods left also keeps the oldest artifact.
                rule.count -= 1;
                reasons.push(format!("oldest {}", rule.name));
            }
        }
        if reasons.is_empty() && candidate.held {
            reasons.push("being restored".to_owned());
        }
        if reasons.is_empty() {
            prune.push(Pruned {
                id: candidate.id.clone(),
                reason: "not selected by any keep rule".to_owned(),
            });
        } else {
            keep.push(Kept {
                id: candidate.id.clone(),
                reasons,
            });
        }
    }
    Plan { keep, prune }
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Artifacts kept, with their reasons.
    pub kept: Vec<Kept<PathBuf>>,
    /// Artifacts deleted (or that would be, in a dry run), with the reason.
    pub pruned: Vec<Pruned<PathBuf>>,
    /// Sum of the pruned artifacts' stored sizes in bytes (their sidecars' `storedBytes`),
    /// deleted or, in a dry run, that would be.
    pub pruned_bytes: u64,
    /// Whether nothing was deleted because it was a dry run.
    pub dry_run: bool,
}

/// Apply `policy` for `schedule` to a target's artifacts in `store`: read the sidecars,
/// [`plan`], and delete each pruned artifact and then its sidecar (so an interrupted prune
/// is finished by the next one). Unreadable sidecars are left alone.
pub fn apply(
    store: &ArtifactStore,
    dir: &TargetDir,
    schedule: &str,
    policy: &RetentionPolicy,
    tz: &TimeZone,
    dry_run: bool,
) -> Result<PruneOutcome, StoreError> {
    let base = store.target_path(dir);
    if !base.exists() {
        return Ok(PruneOutcome {
            dry_run,
            ..PruneOutcome::default()
        });
    }
    let found = catalog::scan(&base)?;
    let mut stored_bytes = BTreeMap::new();
    let now = std::time::SystemTime::now();
    let candidates: Vec<Candidate<PathBuf>> = found
        .artifacts
        .into_iter()
        .filter(|l| l.sidecar.namespace == dir.namespace() && l.sidecar.target == dir.target())
        .map(|l| {
            stored_bytes.insert(l.path.clone(), l.sidecar.stored_bytes);
            Candidate {
                time: l.sidecar.time(),
                schedule: l.sidecar.schedule,
                held: crate::artifacts::select::is_held(&l.path, now),
                id: l.path,
            }
        })
        .collect();
    let plan = plan(policy, schedule, &candidates, tz);
    let pruned_bytes = plan
        .prune
        .iter()
        .filter_map(|p| stored_bytes.get(&p.id))
        .fold(0u64, |sum, bytes| sum.saturating_add(*bytes));
    if !dry_run {
        for pruned in &plan.prune {
            for path in [pruned.id.clone(), with_suffix(&pruned.id, SIDECAR_SUFFIX)] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("delete", &path, e)),
                }
            }
            tracing::info!(artifact = %pruned.id.display(), reason = %pruned.reason, "pruned");
        }
    }
    Ok(PruneOutcome {
        kept: plan.keep,
        pruned: plan.prune,
        pruned_bytes,
        dry_run,
    })
}

/// Counts of kept artifacts per reason, for logs.
pub fn reason_counts<Id>(kept: &[Kept<Id>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for k in kept {
        for r in &k.reasons {
            *counts.entry(r.clone()).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn nightly(id: u32, time: &str) -> Candidate<u32> {
        Candidate {
            id,
            schedule: Some("nightly".into()),
            time: at(time),
            held: false,
        }
    }

    fn kept_ids(plan: &Plan<u32>) -> Vec<u32> {
        let mut ids: Vec<u32> = plan.keep.iter().map(|k| k.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let artifacts = vec![
            nightly(1, "2026-01-01T01:00:00Z"),
            nightly(2, "2026-01-01T23:00:00Z"),
            nightly(3, "2026-01-02T01:00:00Z"),
            nightly(4, "2026-01-02T12:00:00Z"),
            nightly(5, "2026-01-03T12:00:00Z"),
        ];
        let policy = RetentionPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        let plan = plan(&policy, "nightly", &artifacts, &TimeZone::UTC);
        assert_eq!(kept_ids(&plan), vec![4, 5]);
        let policy = RetentionPolicy {
            keep_daily: 5,
            ..Default::default()
        };
        let plan = super::plan(&policy, "nightly", &artifacts, &TimeZone::UTC);
        // Three days, five wanted: restic also keeps the oldest.
        assert_eq!(kept_ids(&plan), vec![1, 2, 4, 5]);
    }

    #[test]
    fn days_are_counted_in_the_schedules_time_zone() {
        // 23:30 UTC on Jan 1 is Jan 2 in Paris, the same day as the 08:00 UTC artifact.
        let artifacts = vec![
            nightly(1, "2026-01-01T23:30:00Z"),
            nightly(2, "2026-01-02T08:00:00Z"),
        ];
        let policy = RetentionPolicy {
            keep_daily: 1,
            ..Default::default()
        };
        let utc = plan(&policy, "nightly", &artifacts, &TimeZone::UTC);
        assert_eq!(kept_ids(&utc), vec![2]);
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let plan = plan(
            &RetentionPolicy {
                keep_daily: 2,
                ..Default::default()
            },
            "nightly",
            &artifacts,
            &paris,
        );
        // One Paris day only, so keepDaily=2 keeps the newest and, as restic, the oldest.
        assert_eq!(
            plan.keep.iter().find(|k| k.id == 1).unwrap().reasons,
            vec!["oldest daily"]
        );
        let utc2 = super::plan(
            &RetentionPolicy {
                keep_daily: 2,
                ..Default::default()
            },
            "nightly",
            &artifacts,
            &TimeZone::UTC,
        );
        assert_eq!(
            utc2.keep.iter().find(|k| k.id == 1).unwrap().reasons,
            vec!["daily"]
        );
    }

    #[test]
    fn weeks_are_iso_weeks() {
        // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
        let artifacts = vec![
            nightly(1, "2026-01-03T12:00:00Z"),
            nightly(2, "2026-01-04T12:00:00Z"),
            nightly(3, "2026-01-05T12:00:00Z"),
            nightly(4, "2026-01-06T12:00:00Z"),
        ];
        let policy = RetentionPolicy {
            keep_weekly: 2,
            ..Default::default()
        };
        assert_eq!(
            kept_ids(&plan(&policy, "nightly", &artifacts, &TimeZone::UTC)),
            vec![2, 4]
        );
    }

    #[test]
    fn other_schedules_and_on_demand_are_kept_with_a_reason() {
        let artifacts = vec![
            nightly(1, "2026-01-01T00:00:00Z"),
            nightly(2, "2026-01-02T00:00:00Z"),
            Candidate {
                id: 3,
                schedule: None,
                time: at("2025-01-01T00:00:00Z"),
                held: false,
            },
            Candidate {
                id: 4,
                schedule: Some("hourly".into()),
                time: at("2025-01-01T00:00:00Z"),
                held: false,
            },
        ];
        let policy = RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        };
        let plan = plan(&policy, "nightly", &artifacts, &TimeZone::UTC);
        assert_eq!(kept_ids(&plan), vec![2, 3, 4]);
        assert_eq!(
            plan.prune,
            vec![Pruned {
                id: 1,
                reason: "not selected by any keep rule".into()
            }]
        );
        let reasons: Vec<_> = plan.keep.iter().map(|k| k.reasons.join(",")).collect();
        assert!(reasons.contains(&"on-demand".to_owned()));
        assert!(reasons.contains(&"made by schedule hourly".to_owned()));
    }

    #[test]
    fn an_artifact_being_restored_is_kept_whatever_the_rules_say() {
        let mut artifacts = vec![
            nightly(1, "2026-01-01T00:00:00Z"),
            nightly(2, "2026-01-02T00:00:00Z"),
            nightly(3, "2026-01-03T00:00:00Z"),
        ];
        artifacts[0].held = true;
        let policy = RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        };
        let plan = plan(&policy, "nightly", &artifacts, &TimeZone::UTC);
        assert_eq!(kept_ids(&plan), vec![1, 3]);
        assert_eq!(
            plan.keep.iter().find(|k| k.id == 1).unwrap().reasons,
            vec!["being restored"]
        );
        assert_eq!(plan.prune.len(), 1);
        assert_eq!(plan.prune[0].id, 2);
    }

    #[test]
    fn the_policy_deserializes_from_camel_case_with_defaults() {
        let policy: RetentionPolicy =
            serde_json::from_str(r#"{"keepLast":3,"keepDaily":7}"#).unwrap();
        assert_eq!(
            policy,
            RetentionPolicy {
                keep_last: 3,
                keep_daily: 7,
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"keepLats":3}"#).is_err());
    }

    fn tz_strategy() -> impl Strategy<Value = TimeZone> {
        prop_oneof![
            Just(TimeZone::UTC),
            Just(TimeZone::get("Europe/Paris").unwrap()),
            Just(TimeZone::get("America/New_York").unwrap()),
            Just(TimeZone::get("Asia/Kolkata").unwrap()),
        ]
    }

    fn policy_strategy() -> impl Strategy<Value = RetentionPolicy> {
        (0u32..5, 0u32..5, 0u32..5, 0u32..4, 0u32..4, 0u32..3).prop_map(|(l, h, d, w, m, y)| {
            RetentionPolicy {
                keep_last: l,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
            }
        })
    }

    fn artifacts_strategy() -> impl Strategy<Value = Vec<Candidate<u32>>> {
        // Up to ~3 years of minutes, from three schedules and on-demand runs.
        prop::collection::vec((0i64..1_600_000, 0u8..4), 0..60).prop_map(|items| {
            let base = at("2024-01-01T00:00:00Z");
            items
                .into_iter()
                .enumerate()
                .map(|(i, (minutes, s))| Candidate {
                    id: i as u32,
                    schedule: match s {
                        0 => None,
                        1 => Some("other".into()),
                        _ => Some("nightly".into()),
                    },
                    time: base + jiff::SignedDuration::from_mins(minutes),
                    held: false,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn retention_properties(policy in policy_strategy(), artifacts in artifacts_strategy(), tz in tz_strategy()) {
            let plan = plan(&policy, "nightly", &artifacts, &tz);
            let mut all: Vec<u32> = plan.keep.iter().map(|k| k.id).chain(plan.prune.iter().map(|p| p.id)).collect();
            all.sort();
            let mut input: Vec<u32> = artifacts.iter().map(|a| a.id).collect();
            input.sort();
            // kept ∪ pruned = input, disjoint.
            prop_assert_eq!(&all, &input);

            let pruned: Vec<u32> = plan.prune.iter().map(|p| p.id).collect();
            let mine: Vec<&Candidate<u32>> = artifacts.iter().filter(|a| a.schedule.as_deref() == Some("nightly")).collect();
            // Other schedules and on-demand are untouched.
            for a in &artifacts {
                if a.schedule.as_deref() != Some("nightly") {
                    prop_assert!(!pruned.contains(&a.id));
                }
            }
            // The newest is always kept.
            if let Some(newest) = mine.iter().map(|a| a.time).max() {
                prop_assert!(mine.iter().any(|a| a.time == newest && !pruned.contains(&a.id)));
            }
            // All-zero keeps everything.
            if policy.is_keep_all() {
                prop_assert!(pruned.is_empty());
            }
            // keepLast = n keeps at least min(n, len).
            let kept_mine = mine.iter().filter(|a| !pruned.contains(&a.id)).count();
            prop_assert!(kept_mine >= (policy.keep_last as usize).min(mine.len()));
            // Idempotent: planning again over what was kept prunes nothing.
            let kept: Vec<Candidate<u32>> = artifacts.iter().filter(|a| !pruned.contains(&a.id)).cloned().collect();
            let again = super::plan(&policy, "nightly", &kept, &tz);
            prop_assert!(again.prune.is_empty(), "second pass pruned {:?}", again.prune);
        }
    }
}
