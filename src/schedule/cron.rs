//! Parsing `spec.schedule` / `spec.timeZone`, and walking the ticks of a schedule.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};

/// Upper bound on the candidate local times examined by one search. Only local times
/// skipped by a DST gap or already passed in a repeated hour are examined without being
/// returned, so a real time zone needs at most a few dozen.
const MAX_CANDIDATES: usize = 10_000;

/// The IANA time zone database compiled into stowage.
///
/// Used instead of `jiff::tz::db()`, which prefers the host's `/usr/share/zoneinfo`: the
/// controller's image has none, and a developer machine or a tool image (the runner may
/// run in `postgres:17`) may carry a different tzdata release. One database everywhere
/// makes the ticks and retention's calendar periods the same wherever they are computed.
pub fn time_zone_database() -> &'static TimeZoneDatabase {
    static DATABASE: std::sync::OnceLock<TimeZoneDatabase> = std::sync::OnceLock::new();
    DATABASE.get_or_init(TimeZoneDatabase::bundled)
}

/// The macros `spec.schedule` accepts, and the 5-field expression each stands for.
const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Why `spec.schedule` or `spec.timeZone` of a BackupSchedule cannot be used. Each message
/// names the field, the value and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not have exactly five fields.
    #[error(
        "invalid cron expression {expression:?} in spec.schedule: it has {fields} fields; \
         use 5 fields `minute hour day-of-month month day-of-week` (e.g. \"30 2 * * *\") or \
         a macro (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"
    )]
    FieldCount {
        /// The expression as written.
        expression: String,
        /// How many whitespace-separated fields it has.
        fields: usize,
    },
    /// An `@` word that is not one of the supported macros.
    #[error(
        "unknown cron macro {expression:?} in spec.schedule: use one of @yearly, @annually, \
         @monthly, @weekly, @daily, @midnight, @hourly, or a 5-field expression"
    )]
    UnknownMacro {
        /// The expression as written.
        expression: String,
    },
    /// A `TZ=` or `CRON_TZ=` prefix, which Kubernetes CronJobs reject too.
    #[error(
        "cron expression {expression:?} in spec.schedule carries a time zone prefix: remove \
         it and set the time zone in spec.timeZone (e.g. timeZone: Europe/Paris)"
    )]
    TimeZoneInExpression {
        /// The expression as written.
        expression: String,
    },
    /// A field is out of range or malformed.
    #[error(
        "invalid cron expression {expression:?} in spec.schedule: {reason}; fields are \
         minute (0-59), hour (0-23), day-of-month (1-31), month (1-12 or JAN-DEC) and \
         day-of-week (0-7 or SUN-SAT), e.g. \"30 2 * * *\""
    )]
    Invalid {
        /// The expression as written.
        expression: String,
        /// What the cron parser objected to.
        reason: String,
    },
    /// The expression is well formed but no date matches it (e.g. February 30).
    #[error(
        "cron expression {expression:?} in spec.schedule never matches a date (such as \
         day 30 of February): choose a day-of-month that exists in the chosen months"
    )]
    NeverMatches {
        /// The expression as written.
        expression: String,
    },
    /// The time zone is not in the (compiled-in) IANA database.
    #[error(
        "unknown time zone {name:?} in spec.timeZone: use an IANA name such as Europe/Paris, \
         America/New_York or UTC"
    )]
    UnknownTimeZone {
        /// The time zone as written.
        name: String,
    },
}

impl ScheduleError {
    /// A CamelCase reason for a condition (`InvalidSchedule` or `UnknownTimeZone`).
    pub fn reason(&self) -> &'static str {
        match self {
            ScheduleError::UnknownTimeZone { .. } => "UnknownTimeZone",
            _ => "InvalidSchedule",
        }
    }
}

/// A parsed cron expression in a time zone: the ticks of a BackupSchedule.
///
/// A tick is a local wall-clock time in the time zone that matches the expression, at the
/// first instant that shows it (see the [module docs](super) for daylight-saving time).
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expression: String,
    cron: Cron,
    time_zone: TimeZone,
    time_zone_name: String,
}

impl CronSchedule {
    /// Parses a 5-field cron expression (`minute hour day-of-month month day-of-week`) or a
    /// macro (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
    /// `@hourly`), read in the IANA time zone `time_zone` (UTC when `None`), looked up in
    /// [`time_zone_database`], compiled into the binary: no zoneinfo files needed.
    ///
    /// When both fields are wrong, the time zone error is reported.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<CronSchedule, ScheduleError> {
        let (time_zone, time_zone_name) = match time_zone {
            None => (TimeZone::UTC, "UTC".to_owned()),
            Some(name) => {
                let tz =
                    time_zone_database()
                        .get(name)
                        .map_err(|_| ScheduleError::UnknownTimeZone {
                            name: name.to_owned(),
                        })?;
                (tz, name.to_owned())
            }
        };
        let cron = parse_expression(expression)?;
        let schedule = CronSchedule {
            expression: expression.to_owned(),
            cron,
            time_zone,
            time_zone_name,
        };
        // Refuse expressions that name no real date (e.g. `0 0 30 2 *`) now rather than
        // report "no next run" forever. February 29 matches within 8 years.
        let reference = DateTime::constant(2000, 1, 1, 0, 0, 0, 0);
        if schedule
            .cron
            .find_next_occurrence(&reference, true)
            .is_err()
        {
            return Err(ScheduleError::NeverMatches {
                expression: expression.to_owned(),
            });
        }
        Ok(schedule)
    }

    /// The expression as written in `spec.schedule`.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's name as written in `spec.timeZone`, or `UTC`.
    pub fn time_zone_name(&self) -> &str {
        &self.time_zone_name
    }

    /// The time zone the expression is read in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// The first tick strictly after `t`, or `None` if there is none (past year 5000).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut local = self.time_zone.to_datetime(t);
        for _ in 0..MAX_CANDIDATES {
            local = self.cron.find_next_occurrence(&local, false).ok()?;
            // Local times skipped by a gap have no instant; local times of a repeated
            // hour may have first occurred before `t` (when `t` is in the repeat).
            match self.first_instant(local) {
                Some(instant) if instant > t => return Some(instant),
                _ => {}
            }
        }
        None
    }

    /// The latest tick at or before `t`, or `None` if there is none.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let mut local = self.time_zone.to_datetime(t);
        let mut inclusive = true;
        let mut latest = None;
        for _ in 0..MAX_CANDIDATES {
            local = self.cron.find_previous_occurrence(&local, inclusive).ok()?;
            inclusive = false;
            // Every local time at or before `t`'s own first occurs at or before `t`,
            // unless a gap removed it.
            if let Some(instant) = self.first_instant(local).filter(|i| *i <= t) {
                latest = Some(instant);
                break;
            }
        }
        let mut latest = latest?;
        // When `t` is in a repeated hour, local times later than `t`'s (in the same
        // repeated hour) already happened during the first pass: walk forward to them.
        while let Some(next) = self.next_after(latest).filter(|n| *n <= t) {
            latest = next;
        }
        Some(latest)
    }

    /// The first instant showing local time `local`, `None` inside a DST gap.
    fn first_instant(&self, local: DateTime) -> Option<Timestamp> {
        let offset = match self.time_zone.to_ambiguous_timestamp(local).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset,
            AmbiguousOffset::Fold { before, .. } => before,
            AmbiguousOffset::Gap { .. } => return None,
        };
        offset.to_timestamp(local).ok()
    }
}

/// Parses the expression into croner's representation, with stowage's rules: exactly 5
/// fields (no seconds or years), the macros above, no time zone prefix.
fn parse_expression(expression: &str) -> Result<Cron, ScheduleError> {
    let trimmed = expression.trim();
    let upper = trimmed.to_ascii_uppercase();
    if upper.starts_with("TZ=") || upper.starts_with("CRON_TZ=") {
        return Err(ScheduleError::TimeZoneInExpression {
            expression: expression.to_owned(),
        });
    }
    let pattern = if trimmed.starts_with('@') {
        MACROS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(trimmed))
            .map(|(_, pattern)| *pattern)
            .ok_or_else(|| ScheduleError::UnknownMacro {
                expression: expression.to_owned(),
            })?
    } else {
        trimmed
    };
    let fields = pattern.split_whitespace().count();
    if fields != 5 {
        return Err(ScheduleError::FieldCount {
            expression: expression.to_owned(),
            fields,
        });
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| ScheduleError::Invalid {
            expression: expression.to_owned(),
            reason: e.to_string(),
        })
}
