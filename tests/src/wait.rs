//! Polling until a condition holds or a deadline passes: the only way tests wait.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(150);

/// Calls `f` every ~150 ms until it returns `Ok(Some(v))`, then returns `v`. `Ok(None)` means
/// "not yet", `Err` is remembered and retried. Each attempt is cut off at the deadline. On
/// timeout the error names `what`, the number of attempts and the last `None` or error seen.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(remaining.max(POLL), f()).await {
            Ok(Ok(Some(v))) => return Ok(v),
            Ok(Ok(None)) => "condition not met (None)".to_owned(),
            Ok(Err(e)) => format!("error: {e:#}"),
            Err(_) => "attempt still running at the deadline".to_owned(),
        };
        if Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {:.1?} waiting for {what} ({attempts} attempts); last: {last}",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
