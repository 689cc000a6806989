//! Periodic progress of a long run: bytes so far and the recent rate.

use std::sync::Arc;
use std::time::Duration;

use crate::artifacts::Counters;

/// One progress sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressSample {
    /// Time since the run started writing.
    pub elapsed: Duration,
    /// Bytes received from (backup) or fed to (restore) the plugin so far.
    pub raw_bytes: u64,
    /// Bytes written to the file so far (backup).
    pub stored_bytes: u64,
    /// Raw bytes per second over the last interval.
    pub bytes_per_second: f64,
}

/// Stops the reporter when dropped.
pub struct ProgressReporter(tokio::task::JoinHandle<()>);

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Call `report` every `every` with the counters' progress, until the returned value is
/// dropped. An `every` of zero disables reporting.
pub fn spawn_progress(
    counters: Arc<Counters>,
    every: Duration,
    report: impl Fn(ProgressSample) + Send + 'static,
) -> ProgressReporter {
    ProgressReporter(tokio::spawn(async move {
        if every.is_zero() {
            return;
        }
        let start = tokio::time::Instant::now();
        let mut interval = tokio::time::interval_at(start + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (start, counters.raw());
        loop {
            let now = interval.tick().await;
            let raw = counters.raw();
            let secs = (now - last.0).as_secs_f64();
            let bytes_per_second = if secs > 0.0 {
                raw.saturating_sub(last.1) as f64 / secs
            } else {
                0.0
            };
            last = (now, raw);
            report(ProgressSample {
                elapsed: now - start,
                raw_bytes: raw,
                stored_bytes: counters.stored(),
                bytes_per_second,
            });
        }
    }))
}

/// Log a sample with `tracing` (structured fields plus a human rate).
pub fn log_sample(operation: &'static str, sample: ProgressSample) {
    tracing::info!(
        operation,
        raw_bytes = sample.raw_bytes,
        stored_bytes = sample.stored_bytes,
        bytes_per_second = sample.bytes_per_second as u64,
        elapsed_seconds = sample.elapsed.as_secs(),
        "progress: {} read, {}/s",
        crate::artifacts::human_bytes(sample.raw_bytes),
        crate::artifacts::human_bytes(sample.bytes_per_second as u64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn progress_reports_bytes_and_rate_every_interval() {
        let counters = Arc::new(Counters::default());
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        let reporter = spawn_progress(counters.clone(), Duration::from_secs(5), move |s| {
            sink.lock().unwrap().push(s)
        });
        tokio::task::yield_now().await;
        for step in 1..=3u64 {
            counters.add_raw(5_000 * step);
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::yield_now().await;
        }
        drop(reporter);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let samples = samples.lock().unwrap().clone();
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].raw_bytes, 5_000);
        assert_eq!(samples[0].bytes_per_second, 1_000.0);
        assert_eq!(samples[1].raw_bytes, 15_000);
        assert_eq!(samples[1].bytes_per_second, 2_000.0);
        assert_eq!(samples[2].raw_bytes, 30_000);
        assert_eq!(samples[2].elapsed, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_disables_progress() {
        let counters = Arc::new(Counters::default());
        let samples = Arc::new(Mutex::new(0));
        let sink = samples.clone();
        let _reporter = spawn_progress(counters, Duration::ZERO, move |_| {
            *sink.lock().unwrap() += 1
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*samples.lock().unwrap(), 0);
    }
}
