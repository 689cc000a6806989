//! The pure decision a BackupSchedule reconcile makes at an instant.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::CronSchedule;

/// `startingDeadlineSeconds` when a BackupSchedule does not set it: one hour.
pub const DEFAULT_STARTING_DEADLINE: SignedDuration = SignedDuration::from_hours(1);

/// The smallest `startingDeadlineSeconds` the schema accepts (its `minimum`).
///
/// A tick is handled by a reconcile that wakes at the tick and then lists targets and
/// Jobs before it decides; a busy controller, a slow API server or a leader handover
/// easily adds a few seconds. With a deadline below that, ticks would be recorded as
/// missed while the operator is up (Kubernetes CronJobs document the same limit: below
/// 10 s a CronJob may never be scheduled).
pub const MIN_STARTING_DEADLINE_SECONDS: i64 = 10;

/// [`MIN_STARTING_DEADLINE_SECONDS`] as a duration: [`decide`] treats any smaller
/// deadline (one stored before the schema had a minimum) as this one.
pub const MIN_STARTING_DEADLINE: SignedDuration =
    SignedDuration::from_secs(MIN_STARTING_DEADLINE_SECONDS);

/// The starting deadline in effect for `spec.startingDeadlineSeconds`: the default when
/// unset, never less than [`MIN_STARTING_DEADLINE`].
pub fn starting_deadline(seconds: Option<i64>) -> SignedDuration {
    seconds
        .map_or(DEFAULT_STARTING_DEADLINE, SignedDuration::from_secs)
        .max(MIN_STARTING_DEADLINE)
}

/// The shortest delay [`requeue_after`] returns, so a reconcile that wakes a hair before
/// its tick does not spin.
pub const REQUEUE_FLOOR: Duration = Duration::from_secs(1);

/// The longest delay [`requeue_after`] returns, so a schedule is looked at again at least
/// hourly (picking up clock corrections and time zone database changes of a new build).
pub const REQUEUE_CAP: Duration = Duration::from_secs(3600);

/// What a BackupSchedule reconcile does now. Every variant carries `next`, the first tick
/// strictly after now (for `status.nextScheduleTime` and [`requeue_after`]); it is `None`
/// only for an expression with no tick left before year 5000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickDecision {
    /// Start the runs of `tick` now: it is the most recent due tick and it is within the
    /// starting deadline. After creating the Jobs, record `status.lastScheduleTime = tick`
    /// so the tick is never run twice (the Job names derive from it too, so a retry that
    /// races the status write finds the Jobs already there).
    Run {
        /// The tick to run (its scheduled instant).
        tick: Timestamp,
        /// The first tick after now.
        next: Option<Timestamp>,
    },
    /// The most recent due tick is older than the starting deadline (the operator was
    /// down): do not run it; record `status.lastMissedTime = tick` (and emit an event only
    /// when that value changes: this decision repeats until the next tick).
    Missed {
        /// The tick that was missed.
        tick: Timestamp,
        /// The first tick after now.
        next: Option<Timestamp>,
    },
    /// Nothing is due; look again at `next`.
    Wait {
        /// The first tick after now.
        next: Option<Timestamp>,
    },
    /// `spec.suspend` is true: nothing runs.
    Suspended {
        /// The first tick after now, were the schedule resumed.
        next: Option<Timestamp>,
    },
}

impl TickDecision {
    /// The first tick strictly after now.
    pub fn next(&self) -> Option<Timestamp> {
        match *self {
            TickDecision::Run { next, .. }
            | TickDecision::Missed { next, .. }
            | TickDecision::Wait { next }
            | TickDecision::Suspended { next } => next,
        }
    }
}

/// Decides what a BackupSchedule reconcile does at `now`.
///
/// - Ticks at or before `last_schedule_time` (`status.lastScheduleTime`, the last tick
///   whose runs were started) are done.
/// - Ticks at or before `since` never run. Pass the later of the schedule's
///   `metadata.creationTimestamp` and the instant it last became active, i.e. the
///   `lastTransitionTime` of its `Ready` condition when that is `True` (the controller
///   sets `Ready=False` with reason `Suspended` while `spec.suspend` is true, and
///   `Ready=True` again on resume). That way ticks that passed while the schedule was
///   suspended (or invalid) never fire after it resumes.
/// - Only the latest due tick matters: after an outage of any length there is at most one
///   run, never a burst.
/// - That tick runs if `now - tick <= starting_deadline` (the boundary included; a
///   deadline below [`MIN_STARTING_DEADLINE`], such as a legacy `0`, counts as that
///   minimum), else it is reported as missed.
/// - When `suspended`, nothing runs.
pub fn decide(
    schedule: &CronSchedule,
    last_schedule_time: Option<Timestamp>,
    since: Timestamp,
    now: Timestamp,
    starting_deadline: SignedDuration,
    suspended: bool,
) -> TickDecision {
    let next = schedule.next_after(now);
    if suspended {
        return TickDecision::Suspended { next };
    }
    let done_until = last_schedule_time.map_or(since, |last| last.max(since));
    match schedule.latest_at_or_before(now) {
        Some(tick) if tick > done_until => {
            let deadline = starting_deadline.max(MIN_STARTING_DEADLINE);
            if now.duration_since(tick) <= deadline {
                TickDecision::Run { tick, next }
            } else {
                TickDecision::Missed { tick, next }
            }
        }
        _ => TickDecision::Wait { next },
    }
}

/// How long to wait before reconciling a schedule again: until `next` (rounded up to the
/// millisecond), at least [`REQUEUE_FLOOR`] and at most [`REQUEUE_CAP`]. With no next
/// tick, the cap.
pub fn requeue_after(now: Timestamp, next: Option<Timestamp>) -> Duration {
    let Some(next) = next else {
        return REQUEUE_CAP;
    };
    let until = now.duration_until(next);
    if until <= SignedDuration::ZERO {
        return REQUEUE_FLOOR;
    }
    let millis = (until.as_nanos() + 999_999) / 1_000_000;
    let millis = u64::try_from(millis).unwrap_or(u64::MAX);
    Duration::from_millis(millis).clamp(REQUEUE_FLOOR, REQUEUE_CAP)
}
