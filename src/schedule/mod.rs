//! When a `BackupSchedule` runs: cron expressions in an IANA time zone, and the pure
//! decision of what a reconcile does at a given instant.
//!
//! - [`CronSchedule`] parses `spec.schedule` and `spec.timeZone` and walks its ticks.
//! - [`decide`] turns (schedule, last run, now, deadline, suspend) into a [`TickDecision`].
//! - [`requeue_after`] says when the controller should look again.
//!
//! # Daylight-saving time
//!
//! A tick is a local wall-clock time that matches the expression, run at the first
//! instant that shows it:
//!
//! - a local time skipped by a spring-forward (e.g. 02:30 on the last Sunday of March in
//!   Europe/Paris) does not exist that day, so it does not run that day;
//! - a local time repeated by a fall-back (e.g. 02:30 on the last Sunday of October in
//!   Europe/Paris) runs once, at its first occurrence (summer time).
//!
//! This is the behaviour of Kubernetes CronJobs for fixed times, applied to every
//! expression alike: an hourly schedule also runs the repeated hour once, so there are
//! two real hours between two of its runs on that night. Vixie cron differs (it runs a
//! skipped fixed time right after the gap and wildcard hours twice); one rule for every
//! expression is easier to predict and to read back from `status.lastScheduleTime`.

mod cron;
mod tick;

pub use cron::{CronSchedule, ScheduleError, time_zone_database};
pub use tick::{
    DEFAULT_STARTING_DEADLINE, MIN_STARTING_DEADLINE, MIN_STARTING_DEADLINE_SECONDS, REQUEUE_CAP,
    REQUEUE_FLOOR, TickDecision, decide, requeue_after, starting_deadline,
};

#[cfg(test)]
mod tests;
