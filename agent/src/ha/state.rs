//! State shared between the HA loop (writer) and the REST API (readers): the last observation,
//! whether we hold the leader key, and the wake-up signal for the loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use patrol_dcs::{Cluster, Role, Timing};
use tokio::sync::{mpsc, oneshot, watch, Notify};
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
    pub maximum_lag_on_failover: i64,
    /// The watchdog as the last cycle left it.
    pub watchdog: patrol_ha::WatchdogView,
    /// Patroni's `pending_restart_reason` (`{name: {old_value, new_value}}`); empty: no
    /// restart pending (or PostgreSQL's state not known this cycle).
    pub pending_restart: serde_json::Map<String, serde_json::Value>,
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
    /// How many cycles completed.
    pub cycles: u64,
    /// The timing in effect.
    pub timing: Timing,
    /// Patroni's `failsafe_mode_is_active` ([`SharedState::failsafe_active`]).
    pub failsafe_active: bool,
}

/// The leader lease as the lease guard sees it: until when etcd cannot have expired it, and
/// how long before that PostgreSQL must be stopped if no refresh came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderLease {
    pub until: Instant,
    /// `retry_timeout` when the lease was last refreshed (see [`SharedState::lease_guard`]).
    pub margin: Duration,
}

pub use patrol_ha::Guard;

struct Inner {
    node: NodeState,
    leader: Option<LeaderLease>,
    dcs_last_seen: Option<SystemTime>,
    last_cycle: Option<Instant>,
    cycles: u64,
    /// The one current timing (from the dynamic configuration last applied), read by the HA
    /// loop, the lease guard and the REST API.
    timing: Timing,
    /// Maintenance mode, as last applied from the dynamic configuration.
    paused: bool,
    /// Failsafe mode (row D-2F): as leader, until when every member accepted our last
    /// `POST /failsafe` round lets us lead without the DCS.
    failsafe_hold: Option<Instant>,
    /// As a member: the last leader that called our `POST /failsafe`, and when.
    failsafe_leader: Option<(FailsafeLeader, Instant)>,
}

use patrol_ha::failsafe::FailsafeLeader;

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
    /// How many cycles completed, for those who wait for one (systemd's readiness).
    cycles_tx: watch::Sender<u64>,
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
                    maximum_lag_on_failover: 1_048_576,
                    watchdog: Default::default(),
                    pending_restart: Default::default(),
                },
                leader: None,
                dcs_last_seen: None,
                last_cycle: None,
                cycles: 0,
                timing: Timing::default(),
                paused: false,
                failsafe_hold: None,
                failsafe_leader: None,
            }),
            wakeup: Notify::new(),
            requests_tx: tx,
            requests_rx: Mutex::new(Some(rx)),
            cycles_tx: watch::Sender::new(0),
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
        let cycles = {
            let mut g = self.lock();
            g.node = node;
            g.last_cycle = Some(Instant::now());
            g.cycles += 1;
            g.cycles
        };
        self.cycles_tx.send_replace(cycles);
    }

    /// Changes whenever a cycle completes (with the DCS, its state published).
    pub fn subscribe_cycles(&self) -> watch::Receiver<u64> {
        self.cycles_tx.subscribe()
    }

    /// Records whether we hold the leader key and until when its lease is safe. The margin
    /// of the lease guard is the `retry_timeout` in effect now, when the lease was refreshed.
    /// Ends a failsafe hold: the DCS answered, or we lost the key.
    pub fn set_leader(&self, held: bool, deadline: Option<Instant>) {
        let mut g = self.lock();
        g.failsafe_hold = None;
        let margin = g.timing.retry_timeout();
        g.leader = deadline
            .filter(|_| held)
            .map(|until| LeaderLease { until, margin });
    }

    /// The deadline of the leader's lease while we hold the key.
    pub fn leader_until(&self) -> Option<Instant> {
        self.lock().leader.map(|l| l.until)
    }

    /// The dynamic settings every reader shares, applied by the HA loop when the dynamic
    /// configuration changes (and before it acts on it).
    pub fn set_dynamic(&self, timing: Timing, paused: bool) {
        let mut g = self.lock();
        g.timing = timing;
        g.paused = paused;
    }

    /// The timing in effect.
    pub fn timing(&self) -> Timing {
        self.lock().timing
    }

    /// The lease guard's verdict at `now` (row D-3, [`patrol_ha::lease_guard`]).
    pub fn lease_guard(&self, now: Instant) -> Guard {
        let g = self.lock();
        let left = g.leader.map(|l| l.until.saturating_duration_since(now));
        let margin = g.leader.map(|l| l.margin).unwrap_or_default();
        patrol_ha::lease_guard(left, margin, g.timing, g.paused)
    }
}

/// Failsafe mode (row D-2F, [`patrol_ha::failsafe`]).
impl SharedState {
    /// As leader: every member of the `failsafe` key accepted the round sent at `asked`: we
    /// lead without the DCS until `ttl` after it (the lease guard's deadline and `is_leader`
    /// follow, with the lease's own margin), or until the lease's deadline if that is later.
    pub fn hold_as_failsafe(&self, asked: Instant, lease: Option<Instant>) {
        let mut g = self.lock();
        let until = asked + Duration::from_secs(g.timing.ttl);
        let until = lease.map_or(until, |l| l.max(until));
        let margin = g.timing.retry_timeout();
        g.leader = Some(LeaderLease { until, margin });
        g.failsafe_hold = Some(until);
    }

    /// As leader: a failsafe hold is in effect now (every member accepted a round less than
    /// `ttl` ago, so none of them may take the key meanwhile).
    pub fn failsafe_hold_in_effect(&self) -> bool {
        let now = Instant::now();
        self.lock().failsafe_hold.is_some_and(|u| u > now)
    }

    /// `POST /failsafe` accepted from `leader` now.
    pub fn failsafe_called_by(&self, leader: FailsafeLeader) {
        self.lock().failsafe_leader = Some((leader, Instant::now()));
    }

    /// The leader that called `POST /failsafe` less than `ttl` ago.
    pub fn failsafe_leader(&self) -> Option<FailsafeLeader> {
        let g = self.lock();
        let ttl = Duration::from_secs(g.timing.ttl);
        g.failsafe_leader
            .as_ref()
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(l, _)| l.clone())
    }

    /// Patroni's `failsafe_mode_is_active`: we lead on a failsafe hold, or a failsafe leader
    /// called us less than `ttl` ago.
    pub fn failsafe_active(&self) -> bool {
        let now = Instant::now();
        let hold = self.lock().failsafe_hold.is_some_and(|u| u > now);
        hold || self.failsafe_leader().is_some()
    }
}

impl SharedState {
    pub fn dcs_seen(&self) {
        self.lock().dcs_last_seen = Some(SystemTime::now());
    }

    pub fn snapshot(&self) -> Snapshot {
        let failsafe_active = self.failsafe_active();
        let g = self.lock();
        Snapshot {
            node: g.node.clone(),
            status: g.node.status.clone(),
            is_leader: g.leader.is_some_and(|l| l.until > Instant::now()),
            dcs_last_seen: g.dcs_last_seen,
            last_cycle: g.last_cycle,
            cycles: g.cycles,
            timing: g.timing,
            failsafe_active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn guard_takes_its_margin_from_the_timing_in_effect() {
        // The agent starts with bootstrap.dcs {ttl: 30, loop_wait: 10, retry_timeout: 10};
        // the cluster then gets {ttl: 10, loop_wait: 1, retry_timeout: 3}. A lease refreshed
        // under the new timing is 10 s long: with the old margin of 10 s the guard stopped
        // PostgreSQL right after every refresh.
        let s = SharedState::default();
        s.set_dynamic(Timing::adjusted(30, 10, 10), false);
        s.set_dynamic(Timing::adjusted(10, 1, 3), false);
        let now = Instant::now();
        s.set_leader(true, Some(now + secs(10)));
        assert_eq!(s.lease_guard(now), Guard::Idle);
        assert_eq!(s.lease_guard(now + secs(6)), Guard::Idle);
        assert_eq!(
            s.lease_guard(now + secs(8)),
            Guard::Stop { left: secs(2) },
            "no refresh for 8 s of a 10 s lease"
        );
        assert_eq!(s.timing(), Timing::adjusted(10, 1, 3));
        assert!(s.snapshot().is_leader);
        assert_eq!(s.snapshot().timing.ttl, 10);
    }

    #[test]
    fn guard_does_not_stop_postgres_in_maintenance_mode() {
        // Patroni's update_lock failure and DCS-error paths leave a paused primary running.
        let s = SharedState::default();
        s.set_dynamic(Timing::adjusted(10, 1, 3), true);
        let now = Instant::now();
        s.set_leader(true, Some(now + secs(10)));
        assert_eq!(
            s.lease_guard(now + secs(9)),
            Guard::KeepPaused { left: secs(1) }
        );
        s.set_dynamic(Timing::adjusted(10, 1, 3), false);
        assert_eq!(s.lease_guard(now + secs(9)), Guard::Stop { left: secs(1) });
        s.set_leader(false, None);
        assert_eq!(s.lease_guard(now + secs(9)), Guard::Idle);
    }
}
