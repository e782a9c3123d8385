//! Polling until a condition holds or a deadline passes, and checking that one keeps holding
//! for a window: the only ways tests wait.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(150);

/// How long one check of [`assert_holds_for`] may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Checks `f` at once, then every ~150 ms, and a last time at the end of `window`: every check
/// must return `Ok(())`, so the condition held throughout (as far as polling can tell). The
/// first `Err` ends the wait with an error naming `what`, how far into the window it broke,
/// how many checks held before, and the check's error; a check still running after 10 s counts
/// as failed. For "stays true" windows, instead of a sleep followed by one check. Returns a
/// `Result` like [`wait_until`], so that a test can undo a fault before it panics.
pub async fn assert_holds_for<F, Fut>(what: &str, window: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let end = start + window;
    let mut held = 0u32;
    loop {
        let at = start.elapsed();
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, f()).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "the check did not finish within {CHECK_TIMEOUT:?}"
            )),
        };
        if let Err(e) = outcome {
            anyhow::bail!(
                "{what} stopped holding {at:.1?} into its {window:?} window (after {held} good \
                 checks): {e:#}"
            );
        }
        held += 1;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        tokio::time::sleep(POLL.min(end - now)).await;
    }
}
