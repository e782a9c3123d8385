//! The agent's logging, configured by Patroni's `log` section: lines in Patroni's layout
//! (`2024-01-01 12:00:00,123 INFO: message`) or another Python logging format, or JSON
//! objects; on stderr, or only in `<log.dir>/patroni.log` rotated by size; the level, per
//! logger levels (Patroni's logger names mapped to Patrol's modules) and `RUST_LOG`, which wins.
//! [`reload`] applies a changed section at run time, as Patroni does.
//!
//! Lines for the file go through a bounded queue to a writer thread (`tracing-appender`), so a
//! slow disk does not hold up the HA loop; when the queue is full lines are dropped and
//! counted, and the next line says how many (as Patroni's queue does). [`LogGuard`] writes
//! what is queued when the agent ends.
//!
//! The subscriber is process-wide by nature; its reload handles are kept in a process-wide
//! [`OnceLock`], set once by [`init`].

mod file;
mod filter;
mod format;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::Context;
use patrol_config::log::Log;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::Config;
use file::{RotatingFile, Rotation, SharedFile};
use format::PatroniFormat;

/// The target of the errors that end the agent, printed at Patroni's `CRITICAL` level (as
/// Patroni's `logger.fatal`), e.g. `tracing::error!(target: CRITICAL, "...")`.
pub const CRITICAL: &str = "patrol::critical";

type FmtLayer = tracing_subscriber::fmt::Layer<Registry, DefaultFields, PatroniFormat, Sink>;
type WithFmt = Layered<reload::Layer<FmtLayer, Registry>, Registry>;

/// Where lines go.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(NonBlocking),
}

enum SinkWriter {
    Stderr(std::io::Stderr),
    File(NonBlocking),
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        match self {
            Sink::Stderr => SinkWriter::Stderr(std::io::stderr()),
            Sink::File(nb) => SinkWriter::File(nb.clone()),
        }
    }
}

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SinkWriter::Stderr(w) => w.write(buf),
            SinkWriter::File(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            SinkWriter::Stderr(w) => w.write_all(buf),
            SinkWriter::File(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SinkWriter::Stderr(w) => w.flush(),
            SinkWriter::File(w) => w.flush(),
        }
    }
}

/// The log file in use: the file (its rotation changes in place), its queue and writer thread.
struct LogFile {
    dir: PathBuf,
    max_queue_size: usize,
    file: Arc<Mutex<RotatingFile>>,
    writer: NonBlocking,
    /// Dropping it writes what is queued and ends the writer thread.
    guard: WorkerGuard,
}

impl LogFile {
    fn open(log: &Log, dir: &std::path::Path) -> anyhow::Result<LogFile> {
        let file = RotatingFile::open(dir, Rotation::of(log)).with_context(|| {
            format!(
                "cannot open the log file {}",
                dir.join(patrol_config::log::FILE_NAME).display()
            )
        })?;
        let file = Arc::new(Mutex::new(file));
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(log.max_queue_size)
            .thread_name("patrol-log-writer")
            .finish(SharedFile(file.clone()));
        Ok(LogFile {
            dir: dir.to_path_buf(),
            max_queue_size: log.max_queue_size,
            file,
            writer,
            guard,
        })
    }
}

struct Current {
    log: Log,
    file: Option<LogFile>,
}

struct State {
    fmt: reload::Handle<FmtLayer, Registry>,
    filter: reload::Handle<EnvFilter, WithFmt>,
    /// `RUST_LOG` is set: it decides the levels, whatever the configuration says.
    rust_log: bool,
    started: SystemTime,
    current: Mutex<Current>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Keep it until the agent ends: dropping it writes the lines still queued for the log file.
#[must_use = "dropping the guard stops the log file's writer"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(state) = STATE.get() {
            let file = lock(&state.current).file.take();
            // The worker writes what is queued before the guard's drop returns (1 s at most).
            drop(file.map(|f| f.guard));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fmt_layer(log: &Log, started: SystemTime, file: Option<&LogFile>) -> FmtLayer {
    let (sink, dropped) = match file {
        Some(f) => (Sink::File(f.writer.clone()), Some(f.writer.error_counter())),
        None => (Sink::Stderr, None),
    };
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(PatroniFormat::new(log, started, dropped))
        .with_writer(sink)
}

/// The level filter: `RUST_LOG` when it is set, not empty and valid, else from `log.level`
/// and `log.loggers`.
fn env_filter(log: &Log) -> (EnvFilter, bool) {
    let set = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    match EnvFilter::try_from_default_env() {
        Ok(f) if set => (f, true),
        _ => (config_filter(log), false),
    }
}

fn config_filter(log: &Log) -> EnvFilter {
    let directives = filter::directives(log);
    EnvFilter::builder()
        .parse(&directives)
        .unwrap_or_else(|_| EnvFilter::new(filter::FALLBACK))
}

/// Sets the process's subscriber from the configuration's `log` section. An error if the log
/// file cannot be opened (its directory must exist, as for Patroni).
pub fn init(cfg: &Config) -> anyhow::Result<LogGuard> {
    let log = &cfg.log;
    let started = SystemTime::now();
    let file = match &log.dir {
        Some(dir) => Some(LogFile::open(log, dir)?),
        None => None,
    };
    let (fmt, fmt_handle) = reload::Layer::new(fmt_layer(log, started, file.as_ref()));
    let (filter, rust_log) = env_filter(log);
    let (filter, filter_handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init()
        .is_ok();
    if installed && rust_log {
        let configured = cfg
            .raw
            .get("log")
            .and_then(|l| l.as_object())
            .is_some_and(|l| l.contains_key("level") || l.contains_key("loggers"));
        if configured {
            tracing::info!(
                "RUST_LOG is set: it decides the log levels, not log.level and log.loggers"
            );
        }
    }
    if installed {
        let _ = STATE.set(State {
            fmt: fmt_handle,
            filter: filter_handle,
            rust_log,
            started,
            current: Mutex::new(Current {
                log: log.clone(),
                file,
            }),
        });
    }
    Ok(LogGuard(()))
}

/// Applies a reloaded `log` section (SIGHUP, `POST /reload`), as Patroni does: levels,
/// format, and the destination with its rotation. If the new log file cannot be opened,
/// everything stays as it was and the error is logged.
pub fn reload(log: &Log) {
    let Some(state) = STATE.get() else {
        return;
    };
    let mut current = lock(&state.current);
    if current.log == *log {
        return;
    }
    // The file first: if it cannot be opened, nothing changes.
    let mut retired = None;
    let same_file = matches!(
        (&current.file, &log.dir),
        (Some(f), Some(dir)) if f.dir == *dir && f.max_queue_size == log.max_queue_size
    );
    if same_file {
        if let Some(f) = &current.file {
            let mut file = lock(&f.file);
            if let Err(e) = file.set_rotation(Rotation::of(log)) {
                let path = file.path().display().to_string();
                drop(file);
                tracing::error!("reload: cannot set log.mode on {path}: {e}");
            }
        }
    } else {
        let new_file = match &log.dir {
            Some(dir) => match LogFile::open(log, dir) {
                Ok(f) => Some(f),
                Err(e) => {
                    drop(current);
                    tracing::error!("reload: keeping the current log settings: {e:#}");
                    return;
                }
            },
            None => None,
        };
        retired = std::mem::replace(&mut current.file, new_file);
    }
    let layer = fmt_layer(log, state.started, current.file.as_ref());
    let fmt_result = state.fmt.reload(layer);
    let filter_result = if state.rust_log {
        Ok(())
    } else {
        state.filter.reload(config_filter(log))
    };
    current.log = log.clone();
    drop(current);
    // After the switch: the old writer thread writes what it still has, then ends.
    drop(retired);
    if let Err(e) = fmt_result.and(filter_result) {
        tracing::error!("reload: the new log settings could not be applied: {e}");
    } else {
        tracing::info!("applied the new log settings");
    }
}
