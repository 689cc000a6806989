//! Polling with a generous guard timeout (tests never assert on wall time).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::TestEnvError;

/// Calls `probe` every 250 ms until it returns `Ok(value)`; `Err(text)` means "not yet,
/// and this is what I saw". Fails after `timeout` (a guard against hangs, never a
/// performance assertion) with the last observation.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, TestEnvError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if start.elapsed() >= timeout {
            return Err(TestEnvError::Timeout {
                what: what.to_string(),
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
