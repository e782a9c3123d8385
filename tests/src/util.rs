//! Small shared helpers: random bits without a `rand` dependency, log tails, running a future
//! to completion from synchronous code (even from inside a tokio runtime), HTTP GET and reading
//! one sample of Prometheus text.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 64 random-enough bits: std's per-process random SipHash keys over a counter, the time and
/// the pid. Good for picking ports and naming scopes, not for cryptography.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

/// The last `n` lines of a text file (reads at most its last 1 MiB). Never fails: an
/// unreadable file yields a one-line note instead, because this feeds failure reports.
pub fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 1 << 20;
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(MAX);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(n);
            lines[skip..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs `fut` on a fresh current-thread runtime in a scoped thread, so synchronous harness code
/// (constructors, `Drop`) can use async clients whether or not the caller is inside a runtime.
pub(crate) fn block_on_thread<F>(fut: F) -> anyhow::Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<F::Output> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(fut))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("harness helper thread panicked"))?
    })
}

/// `GET url`: status code and body text (5 s timeout).
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .with_context(|| format!("body of GET {url}"))?;
    Ok((status, body))
}

/// The sum of every series of the metric `name` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let series = k.strip_prefix(name)?;
            (series.is_empty() || series.starts_with('{')).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// The value of the sample `name{labels}` (exactly as exported, labels sorted) in Prometheus
/// text; 0 when absent, as an unset counter.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}
