//! A FIFO standing in for a watchdog device, read as Patroni's acceptance harness reads it
//! (`WatchdogMonitor`): the agent's `driver: testing` writes `1` for a keepalive, `V` for the
//! magic close and `Ctimeout=N\n` to set the timeout; a reader thread records each with the
//! time it arrived, and reopens the FIFO whenever the agent closes it.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use patrol_tests::{chown_to_agent, wait_until};

/// What the device saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent opened the device (armed it).
    Opened,
    /// `Ctimeout=N`.
    Timeout(i64),
    /// `1`: a keepalive.
    Ping,
    /// `V`: the magic close (a clean disarm).
    MagicClose,
    /// The agent closed the device.
    Closed,
}

type Log = Arc<Mutex<Vec<(Instant, Event)>>>;

pub struct WatchdogFifo {
    path: PathBuf,
    events: Log,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WatchdogFifo {
    /// Creates the FIFO at `path`, writable by the agent user, and starts reading it.
    pub fn create(path: &Path) -> anyhow::Result<WatchdogFifo> {
        let _ = std::fs::remove_file(path);
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        chown_to_agent(path)?;
        let events: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (path, events, stop) = (path.to_path_buf(), events.clone(), stop.clone());
            std::thread::spawn(move || read_loop(&path, &events, &stop))
        };
        Ok(WatchdogFifo {
            path: path.to_path_buf(),
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// The `watchdog` section that makes an agent use this FIFO.
    pub fn config(&self, mode: &str) -> String {
        format!(
            "watchdog: {{mode: {mode}, driver: testing, device: {}}}\n",
            self.path.display()
        )
    }

    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().expect("watchdog log").clone()
    }

    /// The events that arrived after `since`.
    pub fn events_since(&self, since: Instant) -> Vec<(Instant, Event)> {
        self.events()
            .into_iter()
            .filter(|(at, _)| *at > since)
            .collect()
    }

    /// The last keepalive, if any.
    pub fn last_ping(&self) -> Option<Instant> {
        self.events()
            .into_iter()
            .rev()
            .find(|(_, e)| *e == Event::Ping)
            .map(|(at, _)| at)
    }

    /// Waits until an event after `since` matches `want`; returns when it arrived.
    pub async fn wait_for(
        &self,
        what: &str,
        since: Instant,
        timeout: Duration,
        want: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Instant> {
        let want = &want;
        wait_until(what, timeout, || async move {
            Ok(self
                .events_since(since)
                .into_iter()
                .find(|(_, e)| want(e))
                .map(|(at, _)| at))
        })
        .await
    }

    /// The log, one line per event, times relative to `t0`.
    pub fn describe(&self, t0: Instant) -> String {
        self.events()
            .iter()
            .map(|(at, e)| {
                format!(
                    "  {:+.3}s {e:?}",
                    at.saturating_duration_since(t0).as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for WatchdogFifo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the reader, blocked in open() or read(): a writer that sends `X`.
        let woke = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&self.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"X"))
            .is_ok();
        if let Some(t) = self.thread.take().filter(|_| woke) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_loop(path: &Path, events: &Log, stop: &AtomicBool) {
    let push = |e: Event| {
        events
            .lock()
            .expect("watchdog log")
            .push((Instant::now(), e))
    };
    while !stop.load(Ordering::SeqCst) {
        // Blocks until a writer (the agent arming its watchdog) opens it.
        let Ok(file) = std::fs::File::open(path) else {
            return;
        };
        push(Event::Opened);
        let mut bytes = std::io::BufReader::new(file).bytes();
        loop {
            match bytes.next() {
                None | Some(Err(_)) => {
                    push(Event::Closed);
                    break;
                }
                Some(Ok(b'X')) => return,
                Some(Ok(b'1')) => push(Event::Ping),
                Some(Ok(b'V')) => push(Event::MagicClose),
                Some(Ok(b'C')) => {
                    let mut cmd = Vec::new();
                    for b in bytes.by_ref() {
                        match b {
                            Ok(b'\n') | Err(_) => break,
                            Ok(c) => cmd.push(c),
                        }
                    }
                    let cmd = String::from_utf8_lossy(&cmd).into_owned();
                    if let Some(n) = cmd.strip_prefix("timeout=").and_then(|n| n.parse().ok()) {
                        push(Event::Timeout(n));
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
