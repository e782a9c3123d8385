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
use crate::table::{Backend, Port, Probe, Table};

struct Session {
    port: Port,
    backend: Backend,
    cancel: CancellationToken,
    /// The backend's cancel key (process id and secret, the body of its `BackendKeyData`),
    /// once the relay saw it; `None` for TLS, GSS-encrypted and kernel-relayed sessions, whose
    /// key the router cannot read, and for sessions still authenticating.
    key: Option<Box<[u8]>>,
}

/// Live sessions, by id, with per-(port, backend) counts for least-connections and the
/// cancel keys seen, so that a `CancelRequest` goes to the one backend that holds its session.
#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    inner: Mutex<SessionsInner>,
}

#[derive(Default)]
struct SessionsInner {
    by_id: HashMap<u64, Session>,
    counts: HashMap<(Port, String), usize>,
    /// Cancel key -> session id.
    keys: HashMap<Box<[u8]>, u64>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, port: Port, backend: &Backend) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let mut g = self.lock();
        g.by_id.insert(
            id,
            Session {
                port,
                backend: backend.clone(),
                cancel: cancel.clone(),
                key: None,
            },
        );
        *g.counts.entry((port, backend.name.clone())).or_default() += 1;
        (id, cancel)
    }

    pub fn unregister(&self, id: u64) {
        let mut g = self.lock();
        if let Some(s) = g.by_id.remove(&id) {
            if let Some(c) = g.counts.get_mut(&(s.port, s.backend.name)) {
                *c = c.saturating_sub(1);
            }
            if let Some(k) = s.key {
                if g.keys.get(&k) == Some(&id) {
                    g.keys.remove(&k);
                }
            }
        }
    }

    /// Records session `id`'s cancel key (the body of the backend's `BackendKeyData`).
    pub fn set_key(&self, id: u64, key: &[u8]) {
        let mut g = self.lock();
        let Some(s) = g.by_id.get_mut(&id) else {
            return;
        };
        let key: Box<[u8]> = key.into();
        s.key = Some(key.clone());
        g.keys.insert(key, id);
    }

    /// The backend of the session whose cancel key is `key` (process id and secret, as a
    /// `CancelRequest` carries them after its code).
    pub fn holder(&self, key: &[u8]) -> Option<Backend> {
        let g = self.lock();
        let id = g.keys.get(key)?;
        g.by_id.get(id).map(|s| s.backend.clone())
    }

    /// The backends holding sessions on `port` whose cancel key the router has not seen
    /// (TLS, GSS-encrypted or kernel-relayed ones, or still authenticating), each once.
    pub fn keyless_backends(&self, port: Port) -> Vec<Backend> {
        let g = self.lock();
        let mut out: Vec<Backend> = Vec::new();
        for s in g.by_id.values() {
            if s.port == port && s.key.is_none() && !out.contains(&s.backend) {
                out.push(s.backend.clone());
            }
        }
        out
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
            if s.port == port && !keep(&s.backend.name) && !s.cancel.is_cancelled() {
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
    pub splicer: Option<crate::kernel::splice::Splicer>,
    /// Connect-time routing of local clients (`redirect_local: true` and the program linked).
    pub local: Option<crate::redirect_local::Local>,
    /// When each rate-limited warning was last logged, by topic.
    warned: Mutex<HashMap<String, Instant>>,
}

/// A rate-limited warning is logged at most this often per topic.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
            match crate::kernel::splice::Splicer::new(cfg.max_connections) {
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
            match crate::redirect_local::Local::new(cfg.redirect_cgroup.as_deref()) {
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
            warned: Mutex::new(HashMap::new()),
        })
    }

    /// Logs `text` at WARN unless `topic` was warned about in the last 10 s (a condition that
    /// every connection meets, such as a hung backend or a full admin port, is said once, not
    /// once per connection).
    pub fn warn_limited(&self, topic: &str, text: impl std::fmt::Display) {
        let now = Instant::now();
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if w.get(topic)
            .is_some_and(|at| now.duration_since(*at) < WARN_EVERY)
        {
            return;
        }
        if w.len() > 1000 {
            w.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        }
        w.insert(topic.to_string(), now);
        drop(w);
        tracing::warn!("{text}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, port: u16) -> Backend {
        Backend {
            name: name.into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn a_cancel_key_names_its_session_backend_until_the_session_ends() {
        let s = Sessions::default();
        let (a, b) = (backend("a", 1), backend("b", 2));
        let (one, _) = s.register(Port::Read, &a);
        let (two, _) = s.register(Port::Read, &b);
        let (three, _) = s.register(Port::Read, &b);
        // Keys not seen yet: both backends may hold any of them.
        let mut keyless = s.keyless_backends(Port::Read);
        keyless.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(keyless, vec![a.clone(), b.clone()]);
        assert!(s.keyless_backends(Port::Write).is_empty());
        s.set_key(one, &[0, 0, 0, 7, 1, 2, 3, 4]);
        s.set_key(two, &[0, 0, 0, 8, 5, 6, 7, 8]);
        assert_eq!(s.holder(&[0, 0, 0, 7, 1, 2, 3, 4]), Some(a.clone()));
        assert_eq!(s.holder(&[0, 0, 0, 8, 5, 6, 7, 8]), Some(b.clone()));
        // Same process id, another secret: no holder.
        assert_eq!(s.holder(&[0, 0, 0, 7, 1, 2, 3, 5]), None);
        // Only session three (on b) has no key now.
        assert_eq!(s.keyless_backends(Port::Read), vec![b.clone()]);
        s.unregister(one);
        assert_eq!(s.holder(&[0, 0, 0, 7, 1, 2, 3, 4]), None);
        s.unregister(three);
        assert!(s.keyless_backends(Port::Read).is_empty());
        assert_eq!(s.count(Port::Read, "b"), 1);
        // A key set for a session that already ended is not recorded.
        s.set_key(three, &[9; 8]);
        assert_eq!(s.holder(&[9; 8]), None);
        s.unregister(two);
        assert_eq!(s.total(), 0);
        assert!(s.lock().keys.is_empty());
    }
}
