//! Logging in Patroni's layout (`YYYY-MM-DD HH:MM:SS,mmm LEVEL: message`), so tools that parse
//! Patroni's log lines keep working.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// The target of the errors that end the agent, printed at Patroni's `CRITICAL` level (as
/// Patroni's `logger.fatal`), e.g. `tracing::error!(target: CRITICAL, "...")`.
pub const CRITICAL: &str = "patrol::critical";

struct PatroniFormat;

impl<S, N> FormatEvent<S, N> for PatroniFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Local::now();
        let level = match *event.metadata().level() {
            Level::ERROR if event.metadata().target() == CRITICAL => "CRITICAL",
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "DEBUG",
        };
        write!(
            writer,
            "{} {}: ",
            now.format("%Y-%m-%d %H:%M:%S,%3f"),
            level
        )?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Sets the global subscriber. Level from `RUST_LOG`, else `log.level` from the config, else
/// INFO. Noisy dependencies stay at WARN.
pub fn init(cfg: &Config) {
    let level = cfg
        .raw
        .get("log")
        .and_then(|l| l.get("level"))
        .and_then(|v| v.as_str())
        .map(|s| match s.to_ascii_uppercase().as_str() {
            "DEBUG" => "debug",
            "WARNING" | "WARN" => "warn",
            "ERROR" | "CRITICAL" | "FATAL" => "error",
            _ => "info",
        })
        .unwrap_or("info");
    let default = format!("{level},h2=warn,hyper=warn,tower=warn,tokio_postgres=warn,reqwest=warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(PatroniFormat)
        .with_writer(std::io::stderr)
        .try_init();
}
