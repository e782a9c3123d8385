//! A raw HTTP/1.1 client for the REST API tests: every byte of the request is the test's
//! (missing or lying `Content-Length`, chunked bodies, odd methods), and the answer is read
//! until the server closes the connection (one request per connection, as Patroni).

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: status code, header lines, body text.
#[derive(Debug, Clone)]
pub struct Resp {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.code, self.body))
    }
}

/// Sends `raw` to 127.0.0.1:`port` and reads the answer until EOF (or `limit`).
pub async fn send_raw(port: u16, raw: &[u8], limit: Duration) -> anyhow::Result<Resp> {
    let run = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
        s.write_all(raw).await.context("write request")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.context("read answer")?;
        Ok::<_, anyhow::Error>(buf)
    };
    let buf = tokio::time::timeout(limit, run)
        .await
        .with_context(|| format!("no complete answer within {limit:?}"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed answer: {text:?}");
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok(Resp {
        code,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `method path` with optional body (Content-Length set) and extra headers.
pub async fn call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    call_within(port, method, path, body, headers, Duration::from_secs(15)).await
}

/// As [`call`] with a longer deadline (switchover, restart).
pub async fn call_within(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Resp {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    raw.push_str("\r\n");
    if let Some(b) = body {
        raw.push_str(b);
    }
    send_raw(port, raw.as_bytes(), limit)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e:#}"))
}

/// Now + `secs` as ISO 8601 in UTC with an explicit zone (`2030-01-01T10:00:00+00:00`), the
/// form Patroni writes (`datetime.isoformat()`).
pub fn iso_utc_in(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    iso_utc(now + secs)
}

/// Epoch seconds → `YYYY-MM-DDTHH:MM:SS+00:00` (civil-from-days, H. Hinnant's algorithm).
pub fn iso_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let rem = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
