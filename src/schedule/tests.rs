use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn sched(expr: &str, tz: Option<&str>) -> CronSchedule {
    CronSchedule::parse(expr, tz).unwrap()
}

/// The ticks in `(from, to]`, in order.
fn ticks(schedule: &CronSchedule, from: &str, to: &str) -> Vec<String> {
    let (mut t, to) = (ts(from), ts(to));
    let mut out = Vec::new();
    while let Some(next) = schedule.next_after(t).filter(|n| *n <= to) {
        out.push(next.to_string());
        t = next;
    }
    out
}

// ---- parsing -------------------------------------------------------------------------

#[test]
fn five_fields_in_utc_by_default() {
    let s = sched("30 2 * * *", None);
    assert_eq!(s.time_zone_name(), "UTC");
    assert_eq!(s.expression(), "30 2 * * *");
    assert_eq!(
        s.next_after(ts("2026-01-10T02:30:00Z")),
        Some(ts("2026-01-11T02:30:00Z"))
    );
    assert_eq!(
        s.next_after(ts("2026-01-10T02:29:59.999Z")),
        Some(ts("2026-01-10T02:30:00Z"))
    );
}

#[test]
fn macros_expand_to_their_expressions() {
    // 2026-01-07 is a Wednesday.
    let after = ts("2026-01-07T10:15:00Z");
    let cases = [
        ("@yearly", "2027-01-01T00:00:00Z"),
        ("@annually", "2027-01-01T00:00:00Z"),
        ("@monthly", "2026-02-01T00:00:00Z"),
        ("@weekly", "2026-01-11T00:00:00Z"),
        ("@daily", "2026-01-08T00:00:00Z"),
        ("@midnight", "2026-01-08T00:00:00Z"),
        ("@hourly", "2026-01-07T11:00:00Z"),
        ("@DAILY", "2026-01-08T00:00:00Z"),
    ];
    for (expr, want) in cases {
        assert_eq!(
            sched(expr, None).next_after(after),
            Some(ts(want)),
            "{expr}"
        );
    }
}

#[test]
fn names_and_ranges_work() {
    let s = sched("0 9 * JAN-MAR MON-FRI", Some("Europe/Paris"));
    // Saturday 2026-01-10 → Monday 2026-01-12 09:00 CET.
    assert_eq!(
        s.next_after(ts("2026-01-10T12:00:00Z")),
        Some(ts("2026-01-12T08:00:00Z"))
    );
    let s = sched("*/15 * * * *", None);
    assert_eq!(
        ticks(&s, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"),
        [
            "2026-01-01T00:15:00Z",
            "2026-01-01T00:30:00Z",
            "2026-01-01T00:45:00Z",
            "2026-01-01T01:00:00Z"
        ]
    );
}

#[test]
fn february_29_is_a_valid_but_rare_schedule() {
    let s = sched("0 0 29 2 *", None);
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2028-02-29T00:00:00Z"))
    );
}

#[test]
fn invalid_expressions_name_the_field_the_value_and_the_fix() {
    let cases = [
        ("61 * * * *", "InvalidSchedule", "minute (0-59)"),
        ("* * * *", "InvalidSchedule", "it has 4 fields"),
        ("0 0 2 * * *", "InvalidSchedule", "it has 6 fields"),
        ("@fortnightly", "InvalidSchedule", "@daily"),
        (
            "TZ=Europe/Paris 0 2 * * *",
            "InvalidSchedule",
            "spec.timeZone",
        ),
        ("0 0 30 2 *", "InvalidSchedule", "never matches"),
        ("every day", "InvalidSchedule", "it has 2 fields"),
        ("", "InvalidSchedule", "it has 0 fields"),
        ("a b c d e", "InvalidSchedule", "e.g. \"30 2 * * *\""),
    ];
    for (expr, reason, hint) in cases {
        let err = CronSchedule::parse(expr, None).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.reason(), reason, "{expr}: {msg}");
        assert!(msg.contains("spec.schedule"), "{expr}: {msg}");
        assert!(msg.contains(&format!("{expr:?}")), "{expr}: {msg}");
        assert!(msg.contains(hint), "{expr}: {msg}");
    }
}

#[test]
fn unknown_time_zone_is_reported_with_an_example() {
    let err = CronSchedule::parse("30 2 * * *", Some("Europe/Pariss")).unwrap_err();
    assert_eq!(err.reason(), "UnknownTimeZone");
    assert_eq!(
        err.to_string(),
        "unknown time zone \"Europe/Pariss\" in spec.timeZone: use an IANA name such as \
         Europe/Paris, America/New_York or UTC"
    );
    assert!(CronSchedule::parse("30 2 * * *", Some("")).is_err());
}

/// Run in a child process with `TZDIR` pointing at an empty directory by
/// `time_zones_come_from_the_compiled_in_database`.
#[test]
#[ignore = "run by time_zones_come_from_the_compiled_in_database in a child process"]
fn child_parses_time_zones_without_zoneinfo() {
    let dir = std::env::var("TZDIR").unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "TZDIR {dir} not empty"
    );
    println!("time zone database: {:?}", time_zone_database());
    let s = sched("30 2 * * *", Some("Europe/Paris"));
    assert_eq!(
        s.next_after(ts("2026-07-01T00:00:00Z")),
        Some(ts("2026-07-01T00:30:00Z"))
    );
    let s = sched("0 12 * * *", Some("America/New_York"));
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-01T17:00:00Z"))
    );
}

/// The time zones come from the database compiled into the binary, whatever the host's
/// zoneinfo (`TZDIR` empty, and the child checks the database it used is the bundle).
#[test]
fn time_zones_come_from_the_compiled_in_database() {
    let empty = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "schedule::tests::child_parses_time_zones_without_zoneinfo",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TZDIR", empty.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed") && stdout.contains("Bundled"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- daylight-saving time ------------------------------------------------------------

#[test]
fn paris_spring_forward_skips_the_missing_local_time() {
    let s = sched("30 2 * * *", Some("Europe/Paris"));
    // 2026-03-29: 02:00 CET → 03:00 CEST, so 02:30 does not exist that day.
    assert_eq!(
        ticks(&s, "2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ]
    );
    let hourly = sched("0 * * * *", Some("Europe/Paris"));
    // Local 00:00, 01:00, (02:00 missing), 03:00, 04:00: still one run per real hour.
    assert_eq!(
        ticks(&hourly, "2026-03-28T22:30:00Z", "2026-03-29T02:30:00Z"),
        [
            "2026-03-28T23:00:00Z",
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T02:00:00Z"
        ]
    );
}

#[test]
fn paris_fall_back_runs_the_repeated_local_time_once() {
    let s = sched("30 2 * * *", Some("Europe/Paris"));
    // 2026-10-25: 03:00 CEST → 02:00 CET, so 02:30 happens twice; it runs at the first.
    assert_eq!(
        ticks(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // From inside the repeated hour (02:10 CET, after the first 02:30), the next is the
    // following day, and the latest is the first 02:30.
    let inside = ts("2026-10-25T01:10:00Z");
    assert_eq!(s.next_after(inside), Some(ts("2026-10-26T01:30:00Z")));
    assert_eq!(
        s.latest_at_or_before(inside),
        Some(ts("2026-10-25T00:30:00Z"))
    );
    let hourly = sched("0 * * * *", Some("Europe/Paris"));
    // Local 01:00 CEST, 02:00 CEST, (02:00 CET repeated: skipped), 03:00 CET.
    assert_eq!(
        ticks(&hourly, "2026-10-24T22:30:00Z", "2026-10-25T02:30:00Z"),
        [
            "2026-10-24T23:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00Z"
        ]
    );
    assert_eq!(
        hourly.latest_at_or_before(ts("2026-10-25T01:59:00Z")),
        Some(ts("2026-10-25T00:00:00Z"))
    );
}

#[test]
fn new_york_spring_forward_and_fall_back() {
    let s = sched("30 2 * * *", Some("America/New_York"));
    // 2026-03-08: 02:00 EST → 03:00 EDT.
    assert_eq!(
        ticks(&s, "2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
        ["2026-03-07T07:30:00Z", "2026-03-09T06:30:00Z"]
    );
    // 2026-11-01: 02:00 EDT → 01:00 EST; 02:30 is not repeated, it happens once in EST.
    assert_eq!(
        ticks(&s, "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
        [
            "2026-10-31T06:30:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-02T07:30:00Z"
        ]
    );
    let at_130 = sched("30 1 * * *", Some("America/New_York"));
    assert_eq!(
        ticks(&at_130, "2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z"),
        ["2026-11-01T05:30:00Z"]
    );
    let hourly = sched("0 * * * *", Some("America/New_York"));
    assert_eq!(
        ticks(&hourly, "2026-03-08T05:30:00Z", "2026-03-08T08:30:00Z"),
        [
            "2026-03-08T06:00:00Z", // 01:00 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT (02:00 does not exist)
            "2026-03-08T08:00:00Z"
        ]
    );
    assert_eq!(
        ticks(&hourly, "2026-11-01T04:30:00Z", "2026-11-01T07:30:00Z"),
        [
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T07:00:00Z", // 02:00 EST (01:00 EST repeated: skipped)
        ]
    );
}

// ---- decide --------------------------------------------------------------------------

const HOUR: SignedDuration = SignedDuration::from_hours(1);

fn nightly() -> CronSchedule {
    sched("30 2 * * *", Some("Europe/Paris"))
}

#[test]
fn a_new_schedule_waits_for_its_first_tick() {
    let created = ts("2026-06-10T10:00:00Z");
    let d = decide(
        &nightly(),
        None,
        created,
        ts("2026-06-10T10:00:05Z"),
        HOUR,
        false,
    );
    assert_eq!(
        d,
        TickDecision::Wait {
            next: Some(ts("2026-06-11T00:30:00Z"))
        }
    );
    // A tick exactly at creation time is not run either.
    let d = decide(
        &nightly(),
        None,
        ts("2026-06-11T00:30:00Z"),
        ts("2026-06-11T00:30:01Z"),
        HOUR,
        false,
    );
    assert!(matches!(d, TickDecision::Wait { .. }), "{d:?}");
}

#[test]
fn a_due_tick_runs_once_then_waits() {
    let created = ts("2026-06-01T00:00:00Z");
    let tick = ts("2026-06-11T00:30:00Z");
    let now = ts("2026-06-11T00:30:00.2Z");
    let d = decide(&nightly(), None, created, now, HOUR, false);
    let next = Some(ts("2026-06-12T00:30:00Z"));
    assert_eq!(d, TickDecision::Run { tick, next });
    assert_eq!(d.next(), next);
    // Once status.lastScheduleTime records it, the same tick is done.
    let d = decide(&nightly(), Some(tick), created, now, HOUR, false);
    assert_eq!(d, TickDecision::Wait { next });
}

#[test]
fn the_starting_deadline_boundary_is_inclusive() {
    let created = ts("2026-06-01T00:00:00Z");
    let tick = ts("2026-06-11T00:30:00Z");
    let at_deadline = ts("2026-06-11T01:30:00Z");
    let d = decide(&nightly(), None, created, at_deadline, HOUR, false);
    assert!(
        matches!(d, TickDecision::Run { tick: t, .. } if t == tick),
        "{d:?}"
    );
    let past = at_deadline + SignedDuration::from_nanos(1);
    let d = decide(&nightly(), None, created, past, HOUR, false);
    assert!(
        matches!(d, TickDecision::Missed { tick: t, .. } if t == tick),
        "{d:?}"
    );
}

#[test]
fn a_starting_deadline_below_ten_seconds_counts_as_ten_seconds() {
    // The schema refuses startingDeadlineSeconds below 10, but objects stored before the
    // limit (or written with validation off) can still hold 0 or a negative value: they
    // get the same 10 s of slack, so a tick handled a few seconds late still runs.
    let created = ts("2026-06-01T00:00:00Z");
    let tick = ts("2026-06-11T00:30:00Z");
    let ten_seconds = SignedDuration::from_secs(10);
    for deadline in [
        SignedDuration::ZERO,
        SignedDuration::from_secs(1),
        SignedDuration::from_secs(9),
        -HOUR,
    ] {
        for late in [
            SignedDuration::ZERO,
            SignedDuration::from_secs(3),
            ten_seconds,
        ] {
            let d = decide(&nightly(), None, created, tick + late, deadline, false);
            assert!(
                matches!(d, TickDecision::Run { tick: t, .. } if t == tick),
                "deadline {deadline}, {late} late: {d:?}"
            );
        }
        let too_late = tick + ten_seconds + SignedDuration::from_nanos(1);
        let d = decide(&nightly(), None, created, too_late, deadline, false);
        assert!(
            matches!(d, TickDecision::Missed { .. }),
            "{deadline}: {d:?}"
        );
    }
}

#[test]
fn the_deadline_in_effect_has_a_default_and_a_floor() {
    assert_eq!(starting_deadline(None), DEFAULT_STARTING_DEADLINE);
    assert_eq!(starting_deadline(Some(600)), SignedDuration::from_secs(600));
    assert_eq!(starting_deadline(Some(10)), MIN_STARTING_DEADLINE);
    assert_eq!(starting_deadline(Some(0)), MIN_STARTING_DEADLINE);
    assert_eq!(starting_deadline(Some(-5)), MIN_STARTING_DEADLINE);
}

#[test]
fn a_long_outage_yields_one_run_of_the_latest_tick_or_one_miss() {
    let every_minute = sched("* * * * *", None);
    let last = ts("2026-01-01T00:00:00Z");
    // Down for 30 days: only the latest tick (a minute ago) is considered, and it runs.
    let now = ts("2026-01-31T00:00:30Z");
    let d = decide(&every_minute, Some(last), last, now, HOUR, false);
    assert_eq!(
        d,
        TickDecision::Run {
            tick: ts("2026-01-31T00:00:00Z"),
            next: Some(ts("2026-01-31T00:01:00Z"))
        }
    );
    // A nightly schedule down for 30 days at 10:00: the latest tick is 8h old → missed.
    let now = ts("2026-07-01T08:00:00Z");
    let d = decide(
        &nightly(),
        Some(ts("2026-06-01T00:30:00Z")),
        last,
        now,
        HOUR,
        false,
    );
    assert_eq!(
        d,
        TickDecision::Missed {
            tick: ts("2026-07-01T00:30:00Z"),
            next: Some(ts("2026-07-02T00:30:00Z"))
        }
    );
}

#[test]
fn suspended_schedules_never_run_and_resuming_skips_what_passed() {
    let created = ts("2026-06-01T00:00:00Z");
    let now = ts("2026-06-11T00:30:10Z");
    let next = Some(ts("2026-06-12T00:30:00Z"));
    // Due, but suspended.
    let d = decide(&nightly(), None, created, now, HOUR, true);
    assert_eq!(d, TickDecision::Suspended { next });
    // Resumed 5 minutes after the tick: since = resume time, the tick never fires.
    let resumed = ts("2026-06-11T00:35:00Z");
    let d = decide(
        &nightly(),
        None,
        resumed,
        ts("2026-06-11T00:36:00Z"),
        HOUR,
        false,
    );
    assert_eq!(d, TickDecision::Wait { next });
    // The following tick runs normally.
    let d = decide(
        &nightly(),
        None,
        resumed,
        ts("2026-06-12T00:30:01Z"),
        HOUR,
        false,
    );
    assert!(matches!(d, TickDecision::Run { .. }), "{d:?}");
}

#[test]
fn decide_across_the_fall_back_hour_runs_the_tick_once() {
    let s = sched("30 2 * * *", Some("Europe/Paris"));
    let created = ts("2026-10-01T00:00:00Z");
    let tick = ts("2026-10-25T00:30:00Z"); // first 02:30
    let d = decide(&s, None, created, ts("2026-10-25T00:30:01Z"), HOUR, false);
    assert!(
        matches!(d, TickDecision::Run { tick: t, .. } if t == tick),
        "{d:?}"
    );
    // At the second 02:30 (CET), the tick is done.
    let d = decide(
        &s,
        Some(tick),
        created,
        ts("2026-10-25T01:30:01Z"),
        HOUR,
        false,
    );
    assert_eq!(
        d,
        TickDecision::Wait {
            next: Some(ts("2026-10-26T01:30:00Z"))
        }
    );
}

#[test]
fn requeue_waits_until_the_next_tick_within_a_floor_and_a_cap() {
    let now = ts("2026-06-11T00:00:00Z");
    let at = |s: &str| requeue_after(now, Some(ts(s)));
    assert_eq!(at("2026-06-11T00:10:00Z"), Duration::from_secs(600));
    assert_eq!(
        at("2026-06-11T00:00:10.0000001Z"),
        Duration::from_millis(10_001)
    );
    assert_eq!(at("2026-06-11T00:00:00.3Z"), REQUEUE_FLOOR);
    assert_eq!(at("2026-06-10T23:00:00Z"), REQUEUE_FLOOR);
    assert_eq!(at("2026-06-12T00:00:00Z"), REQUEUE_CAP);
    assert_eq!(requeue_after(now, None), REQUEUE_CAP);
}

// ---- properties ----------------------------------------------------------------------

const EXPRESSIONS: &[&str] = &[
    "30 2 * * *",
    "0 * * * *",
    "*/7 1-3 * * *",
    "15 2 * * 0",
    "0 0 1 * *",
    "@daily",
];
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
];

fn schedule_strategy() -> impl Strategy<Value = CronSchedule> {
    (0..EXPRESSIONS.len(), 0..ZONES.len())
        .prop_map(|(e, z)| CronSchedule::parse(EXPRESSIONS[e], Some(ZONES[z])).unwrap())
}

/// Instants around 2026, dense near the DST changes of the zones above.
fn instant_strategy() -> impl Strategy<Value = Timestamp> {
    (0i64..366 * 86_400).prop_map(|s| Timestamp::from_second(1_767_225_600 + s).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `next_after` is strictly after, is itself a tick, and nothing lies in between.
    #[test]
    fn next_after_is_the_first_tick_after(s in schedule_strategy(), t in instant_strategy()) {
        let next = s.next_after(t).unwrap();
        prop_assert!(next > t);
        prop_assert_eq!(s.latest_at_or_before(next), Some(next));
        let before = next - SignedDuration::from_nanos(1);
        prop_assert!(s.latest_at_or_before(before).is_none_or(|l| l <= t));
        // Ticks are on whole minutes.
        prop_assert_eq!(next.as_second() % 60, 0);
        prop_assert_eq!(next.subsec_nanosecond(), 0);
    }

    /// A controller that reconciles at arbitrary moments (including long outages) runs
    /// each tick at most once, never early, never later than the deadline, and always
    /// the latest due one.
    #[test]
    fn a_simulated_controller_never_runs_a_tick_twice(
        s in schedule_strategy(),
        start in instant_strategy(),
        steps in proptest::collection::vec(0i64..20 * 3600, 1..60),
        deadline_minutes in 0i64..180,
    ) {
        let deadline = SignedDuration::from_mins(deadline_minutes);
        // What decide applies: a deadline below the floor counts as the floor.
        let effective = deadline.max(MIN_STARTING_DEADLINE);
        let mut now = start;
        let mut last: Option<Timestamp> = None;
        let mut runs = Vec::new();
        for step in steps {
            now += SignedDuration::from_secs(step);
            match decide(&s, last, start, now, deadline, false) {
                TickDecision::Run { tick, next } => {
                    prop_assert!(tick <= now && tick > start);
                    prop_assert!(now.duration_since(tick) <= effective);
                    prop_assert_eq!(s.latest_at_or_before(now), Some(tick));
                    prop_assert!(next.is_some_and(|n| n > now));
                    prop_assert!(last.is_none_or(|l| tick > l), "tick {} ran twice", tick);
                    last = Some(tick);
                    runs.push(tick);
                }
                TickDecision::Missed { tick, .. } => {
                    prop_assert!(now.duration_since(tick) > effective);
                }
                TickDecision::Wait { next } => {
                    prop_assert!(next.is_some_and(|n| n > now));
                    let latest = s.latest_at_or_before(now);
                    prop_assert!(latest.is_none_or(|l| l <= start || last.is_some_and(|r| l <= r)));
                }
                TickDecision::Suspended { .. } => prop_assert!(false, "not suspended"),
            }
        }
        let mut sorted = runs.clone();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), runs.len());
    }

    /// A controller that wakes exactly when `requeue_after` says runs every tick once.
    #[test]
    fn a_punctual_controller_runs_every_tick(s in schedule_strategy(), start in instant_strategy()) {
        let mut now = start;
        let mut last = None;
        let mut runs = Vec::new();
        let until = start + SignedDuration::from_hours(72);
        while now < until {
            let decision = decide(&s, last, start, now, SignedDuration::ZERO, false);
            if let TickDecision::Run { tick, .. } = decision {
                last = Some(tick);
                runs.push(tick);
            }
            let wait = requeue_after(now, decision.next());
            now += SignedDuration::try_from(wait).unwrap();
        }
        let mut expected = Vec::new();
        let mut t = start;
        // Ticks before the last wake-up (which was not decided) are all run.
        while let Some(n) = s.next_after(t).filter(|n| *n < now) {
            expected.push(n);
            t = n;
        }
        prop_assert_eq!(runs, expected);
    }
}
