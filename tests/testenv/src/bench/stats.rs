//! Small pure helpers of benchmark reports: percentiles, medians and ratios, the
//! comparison of repeated ticks with the baselines around them, and the instants a
//! scheduled tick is aimed at.

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

/// The median of `values`: the middle one, or the mean of the two middle ones. `None`
/// when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    middle(&sorted, |a, b| (a + b) / 2)
}

/// The middle of `sorted`, or `mean_of` its two middle values. `None` when empty.
fn middle<T: Copy>(sorted: &[T], mean_of: impl Fn(T, T) -> T) -> Option<T> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(mean_of(sorted[n / 2 - 1], sorted[n / 2])),
    }
}

/// The mean of two durations, `None` when either is missing.
pub fn mean(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    Some((a? + b?) / 2)
}

/// `a / b`, `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => Some(a.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    }
}

/// Repeated ticks against the plain client's runs around them: tick `i` ran between
/// baseline `i` and baseline `i + 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct TickComparison {
    /// Each tick against the mean of the two baselines around it (`None` where a time
    /// is missing).
    pub per_tick: Vec<Option<f64>>,
    /// The median of `per_tick`'s known ratios: one slow window, of either side, moves it
    /// little.
    pub median_of_ratios: Option<f64>,
    /// The median of the ticks' known times.
    pub median_tick: Option<Duration>,
    /// The median of the baselines' known times.
    pub median_baseline: Option<Duration>,
    /// `median_tick / median_baseline`.
    pub ratio_of_medians: Option<f64>,
}

/// Compares `ticks` with `baselines`, which holds one more run than `ticks` (one before
/// the first tick and one after each). Times that are `None` (not measured) are left out.
pub fn compare_ticks(ticks: &[Option<Duration>], baselines: &[Option<Duration>]) -> TickComparison {
    let per_tick: Vec<Option<f64>> = ticks
        .iter()
        .enumerate()
        .map(|(i, tick)| {
            let around = mean(
                baselines.get(i).copied().flatten(),
                baselines.get(i + 1).copied().flatten(),
            );
            ratio(*tick, around)
        })
        .collect();
    let mut known: Vec<f64> = per_tick.iter().flatten().copied().collect();
    known.sort_by(f64::total_cmp);
    let median_of_ratios = middle(&known, |a, b| (a + b) / 2.0);
    let ticks: Vec<Duration> = ticks.iter().flatten().copied().collect();
    let baselines: Vec<Duration> = baselines.iter().flatten().copied().collect();
    let (median_tick, median_baseline) = (median(&ticks), median(&baselines));
    TickComparison {
        per_tick,
        median_of_ratios,
        median_tick,
        median_baseline,
        ratio_of_medians: ratio(median_tick, median_baseline),
    }
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
    fn medians_means_and_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(5)]), Some(ms(5)));
        assert_eq!(median(&[ms(9), ms(1), ms(5)]), Some(ms(5)));
        assert_eq!(median(&[ms(9), ms(1), ms(5), ms(3)]), Some(ms(4)));
        assert_eq!(mean(Some(ms(2)), Some(ms(4))), Some(ms(3)));
        assert_eq!(mean(Some(ms(2)), None), None);
        assert_eq!(ratio(Some(ms(3)), Some(ms(2))), Some(1.5));
        assert_eq!(ratio(Some(ms(3)), Some(ms(0))), None);
        assert_eq!(ratio(None, Some(ms(2))), None);
    }

    #[test]
    fn ticks_are_compared_with_the_baselines_around_them() {
        let s =
            |v: &[Option<u64>]| -> Vec<Option<Duration>> { v.iter().map(|x| x.map(ms)).collect() };
        struct Case {
            name: &'static str,
            ticks: Vec<Option<Duration>>,
            baselines: Vec<Option<Duration>>,
            per_tick: Vec<Option<f64>>,
            median_of_ratios: Option<f64>,
            ratio_of_medians: Option<f64>,
        }
        let cases = [
            Case {
                name: "one tick between two baselines",
                ticks: s(&[Some(1200)]),
                baselines: s(&[Some(1000), Some(1400)]),
                per_tick: vec![Some(1.0)],
                median_of_ratios: Some(1.0),
                ratio_of_medians: Some(1.0),
            },
            Case {
                // The second baseline is a slow window: it lowers the ratios of both
                // ticks beside it, the median of the ratios stays with the typical one.
                name: "a slow baseline between two ticks",
                ticks: s(&[Some(1000), Some(1000), Some(1000)]),
                baselines: s(&[Some(1000), Some(3000), Some(1000), Some(1000)]),
                per_tick: vec![Some(0.5), Some(0.5), Some(1.0)],
                median_of_ratios: Some(0.5),
                ratio_of_medians: Some(1.0),
            },
            Case {
                name: "a slow tick",
                ticks: s(&[Some(1000), Some(2000), Some(1000)]),
                baselines: s(&[Some(1000), Some(1000), Some(1000), Some(1000)]),
                per_tick: vec![Some(1.0), Some(2.0), Some(1.0)],
                median_of_ratios: Some(1.0),
                ratio_of_medians: Some(1.0),
            },
            Case {
                name: "a time missing from the audit log is left out",
                ticks: s(&[Some(1000), None]),
                baselines: s(&[Some(1000), None, Some(2000)]),
                per_tick: vec![None, None],
                median_of_ratios: None,
                ratio_of_medians: Some(2.0 / 3.0),
            },
            Case {
                name: "two ticks, the median of two ratios is their mean",
                ticks: s(&[Some(1000), Some(1500)]),
                baselines: s(&[Some(1000), Some(1000), Some(1000)]),
                per_tick: vec![Some(1.0), Some(1.5)],
                median_of_ratios: Some(1.25),
                ratio_of_medians: Some(1.25),
            },
        ];
        for case in cases {
            let got = compare_ticks(&case.ticks, &case.baselines);
            assert_eq!(got.per_tick, case.per_tick, "{}", case.name);
            assert_eq!(got.median_of_ratios, case.median_of_ratios, "{}", case.name);
            assert_eq!(got.ratio_of_medians, case.ratio_of_medians, "{}", case.name);
        }
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
