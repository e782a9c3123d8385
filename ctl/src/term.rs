//! The terminal: output on stdout, patronictl's WARNING lines on stderr, the screen cleared
//! between `--watch` refreshes, and input read from a file or stdin.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::Context;

/// patronictl's `logging.warning` lines on stderr.
pub(crate) fn warn(msg: &str) {
    eprintln!(
        "{} - WARNING - {msg}",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f")
    );
}

/// Writes to stdout and flushes, so that text shows before a prompt or a `--watch` pause.
pub(crate) fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Clears a terminal (not a pipe) for the next `--watch` refresh.
pub(crate) fn clear_screen() {
    if std::io::stdout().is_terminal() {
        out("\x1b[2J\x1b[1;1H");
    }
}

/// patronictl's `watching(w, watch)`: the refresh interval, if any.
pub(crate) fn watch_interval(w: bool, watch: Option<f64>) -> Option<Duration> {
    match watch {
        Some(s) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        _ if w => Some(Duration::from_secs(2)),
        _ => None,
    }
}

/// The text of a file, or of stdin for `-`.
pub(crate) fn read_source(name: &str) -> anyhow::Result<String> {
    if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(name).with_context(|| format!("reading {name}"))
    }
}
