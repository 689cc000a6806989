//! Small pure helpers of benchmark reports: percentiles and the instants a scheduled
//! tick is aimed at.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};

/// The `p`-th percentile (0 < p <= 100) of `values` by the nearest-rank method: the
/// smallest value with at least p% of the values at or below it. `None` when empty.
pub fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    if values.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The first whole minute at least `lead` after `now`.
pub fn minute_boundary_after(now: Timestamp, lead: Duration) -> Timestamp {
    let lead = SignedDuration::try_from(lead).unwrap_or(SignedDuration::MAX);
    let earliest = now.saturating_add(lead).unwrap_or(now);
    let seconds = earliest.as_second();
    let whole = seconds - seconds.rem_euclid(60);
    let boundary = if whole == seconds && earliest.subsec_nanosecond() == 0 {
        whole
    } else {
        whole + 60
    };
    Timestamp::from_second(boundary).unwrap_or(earliest)
}

/// A 5-field cron expression, read in UTC, that fires at `at`'s minute (and again a year
/// later): `minute hour day-of-month month *`.
pub fn cron_firing_at(at: Timestamp) -> String {
    let utc = at.to_zoned(TimeZone::UTC);
    format!(
        "{} {} {} {} *",
        utc.minute(),
        utc.hour(),
        utc.day(),
        utc.month()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let cases = [(50.0, 50), (99.0, 99), (100.0, 100), (1.0, 1), (0.5, 1)];
        for (p, expected) in cases {
            assert_eq!(percentile(&values, p), Some(ms(expected)), "p{p}");
        }
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[ms(1), ms(9)], 50.0), Some(ms(1)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[ms(1)], 0.0), None);
    }

    #[test]
    fn the_boundary_leaves_at_least_the_lead() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let lead = Duration::from_secs(30);
        let cases = [
            ("2026-11-30T12:00:10Z", "2026-11-30T12:01:00Z"),
            ("2026-11-30T12:00:30Z", "2026-11-30T12:01:00Z"),
            ("2026-11-30T12:00:30.5Z", "2026-11-30T12:02:00Z"),
            ("2026-11-30T12:00:45Z", "2026-11-30T12:02:00Z"),
            ("2026-12-31T23:59:50Z", "2027-01-01T00:01:00Z"),
        ];
        for (now, expected) in cases {
            assert_eq!(minute_boundary_after(at(now), lead), at(expected), "{now}");
        }
    }

    #[test]
    fn the_cron_expression_names_the_instant_in_utc() {
        let at = "2026-11-30T07:05:00Z".parse::<Timestamp>().unwrap();
        assert_eq!(cron_firing_at(at), "5 7 30 11 *");
    }
}
