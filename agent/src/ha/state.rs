//! State shared between the HA loop (writer) and the REST API (readers): the last observation,
//! whether we hold the leader key, and the wake-up signal for the loop.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use patrol_dcs::{Cluster, Role};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::postgres::LocalStatus;

/// What the last cycle saw and did.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub cluster: Option<Arc<Cluster>>,
    pub status: Option<LocalStatus>,
    pub state: String,
    pub role: Role,
    pub sysid: Option<String>,
    pub paused: bool,
    pub ttl: u64,
    pub maximum_lag_on_failover: i64,
}

/// A consistent copy for one request.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub node: NodeState,
    pub status: Option<LocalStatus>,
    /// We refreshed the leader key and its lease deadline has not passed.
    pub is_leader: bool,
    pub dcs_last_seen: Option<SystemTime>,
    /// When the last cycle completed.
    pub last_cycle: Option<Instant>,
}

struct Inner {
    node: NodeState,
    leader_until: Option<Instant>,
    dcs_last_seen: Option<SystemTime>,
    last_cycle: Option<Instant>,
}

/// Operations the REST API asks the HA loop to carry out; the reply is Patroni's (code, text).
#[derive(Debug)]
pub enum Request {
    Restart {
        filters: RestartFilters,
        reply: oneshot::Sender<(u16, String)>,
    },
    ScheduleRestart {
        filters: RestartFilters,
        /// The schedule as given (ISO 8601 with zone) and in epoch ms.
        schedule: String,
        at_ms: i64,
        reply: oneshot::Sender<(u16, String)>,
    },
    CancelRestart {
        reply: oneshot::Sender<(u16, String)>,
    },
    /// Re-read the local configuration (SIGHUP, `POST /reload`).
    Reload {
        reply: oneshot::Sender<(u16, String)>,
    },
    Reinitialize {
        force: bool,
        from_leader: bool,
        reply: oneshot::Sender<(u16, String)>,
    },
}

/// `POST /restart` conditions (spec 2.7).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartFilters {
    pub role: Option<String>,
    /// Restart only if the running version is lower than this (`server_version` number).
    pub postgres_version: Option<(String, i32)>,
    pub restart_pending: bool,
    pub timeout: Option<u64>,
}

pub struct SharedState {
    inner: Mutex<Inner>,
    /// Wakes the HA loop before `loop_wait` (REST calls, tests).
    pub wakeup: Notify,
    requests_tx: mpsc::UnboundedSender<Request>,
    requests_rx: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
}

impl Default for SharedState {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        SharedState {
            inner: Mutex::new(Inner {
                node: NodeState {
                    cluster: None,
                    status: None,
                    state: "stopped".into(),
                    role: Role::Uninitialized,
                    sysid: None,
                    paused: false,
                    ttl: 30,
                    maximum_lag_on_failover: 1_048_576,
                },
                leader_until: None,
                dcs_last_seen: None,
                last_cycle: None,
            }),
            wakeup: Notify::new(),
            requests_tx: tx,
            requests_rx: Mutex::new(Some(rx)),
        }
    }
}

impl SharedState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent (plain assignments).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request to the HA loop and waits for its answer.
    pub async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<(u16, String)>) -> Request,
    ) -> (u16, String) {
        let (tx, rx) = oneshot::channel();
        if self.requests_tx.send(make(tx)).is_err() {
            return (503, "the HA loop is not running".into());
        }
        rx.await
            .unwrap_or((503, "the HA loop did not answer".into()))
    }

    /// The HA loop's end of the request channel (taken once).
    pub fn take_requests(&self) -> Option<mpsc::UnboundedReceiver<Request>> {
        self.requests_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn update(&self, node: NodeState) {
        let mut g = self.lock();
        g.node = node;
        g.last_cycle = Some(Instant::now());
    }

    pub fn set_leader(&self, held: bool, deadline: Option<Instant>) {
        let mut g = self.lock();
        g.leader_until = if held { deadline } else { None };
    }

    /// The deadline of the leader's lease while we hold the key.
    pub fn leader_until(&self) -> Option<Instant> {
        self.lock().leader_until
    }

    pub fn dcs_seen(&self) {
        self.lock().dcs_last_seen = Some(SystemTime::now());
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot {
            node: g.node.clone(),
            status: g.node.status.clone(),
            is_leader: g.leader_until.is_some_and(|d| d > Instant::now()),
            dcs_last_seen: g.dcs_last_seen,
            last_cycle: g.last_cycle,
        }
    }
}
