//! What every task of the router shares: the routing table (swapped whole), the live probes,
//! the session registry, recent events and the metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::table::{Probe, Table};

/// Which listener a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Write,
    Read,
}

impl Port {
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Write => "write",
            Port::Read => "read",
        }
    }
}

struct Session {
    port: Port,
    backend: String,
    cancel: CancellationToken,
}

/// Live sessions, by id, with per-(port, backend) counts for least-connections.
#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    inner: Mutex<SessionsInner>,
}

#[derive(Default)]
struct SessionsInner {
    by_id: HashMap<u64, Session>,
    counts: HashMap<(Port, String), usize>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, port: Port, backend: &str) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let mut g = self.lock();
        g.by_id.insert(
            id,
            Session {
                port,
                backend: backend.to_string(),
                cancel: cancel.clone(),
            },
        );
        *g.counts.entry((port, backend.to_string())).or_default() += 1;
        (id, cancel)
    }

    pub fn unregister(&self, id: u64) {
        let mut g = self.lock();
        if let Some(s) = g.by_id.remove(&id) {
            if let Some(c) = g.counts.get_mut(&(s.port, s.backend)) {
                *c = c.saturating_sub(1);
            }
        }
    }

    pub fn count(&self, port: Port, backend: &str) -> usize {
        self.lock()
            .counts
            .get(&(port, backend.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Cancels every session on `port` whose backend does not satisfy `keep`. Returns how many.
    pub fn kill_where(&self, port: Port, keep: impl Fn(&str) -> bool) -> usize {
        let g = self.lock();
        let mut n = 0;
        for s in g.by_id.values() {
            if s.port == port && !keep(&s.backend) && !s.cancel.is_cancelled() {
                s.cancel.cancel();
                n += 1;
            }
        }
        n
    }
}

/// One line of the stats page's timeline.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub text: String,
}

pub struct Shared {
    pub cfg: Arc<Config>,
    pub table: ArcSwap<Table>,
    /// Bumped (with the generation) on every table swap; held write connections wait on it.
    pub table_tx: watch::Sender<u64>,
    pub probes: Mutex<BTreeMap<String, Probe>>,
    /// Member host names and what they last resolved to (kept when a lookup fails).
    pub resolved: Mutex<crate::table::Resolved>,
    /// Probes or the DCS view changed: rebuild the table.
    pub dirty: Notify,
    pub sessions: Sessions,
    pub events: Mutex<VecDeque<Event>>,
    pub metrics: Metrics,
    /// Current leader and since when (wall clock, for the stats page).
    pub leader_since: Mutex<Option<(String, SystemTime)>>,
    /// When the event behind the last routing change happened (what a session kill's latency
    /// counts from).
    pub routing_event_at: Mutex<Option<Instant>>,
    pub started: Instant,
    /// Rotates ties in least-connections balancing.
    pub rr: AtomicU64,
    /// Client connections open on the write and read ports in any phase (startup, held for a
    /// leader, relaying): what `max_connections` caps.
    pub connections: AtomicUsize,
    /// Kernel splicing of established sessions (`splice: true` and the program loaded).
    pub splicer: Option<crate::splice::Splicer>,
    /// Connect-time routing of local clients (`redirect_local: true` and the program linked).
    pub local: Option<crate::redirect::Local>,
}

/// One open client connection, counted in [`Shared::connections`] until dropped.
pub struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    /// Takes a slot unless `max` connections are already open.
    pub fn acquire(shared: &Arc<Shared>, max: usize) -> Option<ConnectionSlot> {
        shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(shared.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub fn new(cfg: Arc<Config>) -> Arc<Shared> {
        let splicer = if cfg.splice {
            match crate::splice::Splicer::new(cfg.max_connections) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        "splice: cannot load the kernel relay ({e}); relaying in user space"
                    );
                    None
                }
            }
        } else {
            None
        };
        let local = if cfg.redirect_local {
            match crate::redirect::Local::new(cfg.redirect_cgroup.as_deref()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(
                        "redirect_local: cannot route local clients at connect time ({e}; it \
                         needs CAP_BPF and CAP_NET_ADMIN, cgroup v2 and Linux 5.14); relaying \
                         them"
                    );
                    None
                }
            }
        } else {
            None
        };
        let (table_tx, _) = watch::channel(0);
        Arc::new(Shared {
            cfg,
            table: ArcSwap::from_pointee(Table::default()),
            table_tx,
            probes: Mutex::new(BTreeMap::new()),
            resolved: Mutex::new(BTreeMap::new()),
            dirty: Notify::new(),
            sessions: Sessions::default(),
            events: Mutex::new(VecDeque::new()),
            metrics: Metrics::new(),
            leader_since: Mutex::new(None),
            routing_event_at: Mutex::new(None),
            started: Instant::now(),
            rr: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            splicer,
            local,
        })
    }

    pub fn event(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!("{text}");
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.push_front(Event {
            at: SystemTime::now(),
            text,
        });
        e.truncate(200);
    }
}
