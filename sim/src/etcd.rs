//! The `Dcs` port over the simulated etcd, with etcd's semantics: one lease per agent process,
//! the leader key created only on `create_revision == 0`, confirmed on `value == me AND lease
//! == ours`, deleted only on `value == me`, compare-and-swap on mod revisions. A partitioned
//! node's calls fail after `retry_timeout`; a frozen node's calls wait; a dead process's calls
//! never return.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patrol_dcs::{Cluster, Dcs, DcsError, LeaseInfo, Timing};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::world::{lock, Agent, Shared};

struct Lease {
    id: i64,
    deadline: Option<Instant>,
}

pub struct SimEtcd {
    w: Shared,
    i: usize,
    epoch: u64,
    me: String,
    timing: Mutex<Timing>,
    lease: Mutex<Option<Lease>>,
}

impl SimEtcd {
    pub fn new(w: Shared, i: usize, epoch: u64, me: String, timing: Timing) -> SimEtcd {
        SimEtcd {
            w,
            i,
            epoch,
            me,
            timing: Mutex::new(timing),
            lease: Mutex::new(None),
        }
    }

    fn timing(&self) -> Timing {
        *self.timing.lock().expect("not poisoned")
    }

    /// One round trip: waits while the agent is frozen, never returns for a dead process, fails
    /// after `retry_timeout` when partitioned.
    async fn call(&self) -> Result<(), DcsError> {
        crate::pg::gate(&self.w, self.i, self.epoch).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        crate::pg::gate(&self.w, self.i, self.epoch).await;
        if lock(&self.w).nodes[self.i].partitioned {
            tokio::time::sleep(self.timing().retry_timeout()).await;
            crate::pg::gate(&self.w, self.i, self.epoch).await;
            return Err(DcsError::Unavailable("partitioned (simulated)".into()));
        }
        Ok(())
    }

    /// Keeps our lease alive, granting a new one when it is gone. Runs under the world lock.
    fn keep_alive(&self, w: &mut crate::world::World, sent: Instant) -> LeaseInfo {
        w.etcd.expire();
        let ttl = Duration::from_secs(self.timing().ttl);
        let mut lease = self.lease.lock().expect("not poisoned");
        let alive = lease
            .as_ref()
            .is_some_and(|l| w.etcd.leases.contains_key(&l.id));
        if !alive {
            let id = w.etcd.grant(ttl);
            *lease = Some(Lease { id, deadline: None });
        }
        let l = lease.as_mut().expect("granted above");
        w.etcd.leases.insert(l.id, Instant::now() + ttl);
        let deadline = sent + ttl;
        l.deadline = Some(deadline);
        LeaseInfo { id: l.id, deadline }
    }

    fn lease_id(&self) -> Option<i64> {
        self.lease
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|l| l.id)
    }

    /// A write on our lease (granting one when there is none).
    fn on_lease(&self, w: &mut crate::world::World) -> i64 {
        match self.lease_id().filter(|id| w.etcd.leases.contains_key(id)) {
            Some(id) => id,
            None => self.keep_alive(w, Instant::now()).id,
        }
    }

    fn cas(&self, key: &str, json: &str, version: Option<i64>) -> bool {
        let mut w = lock(&self.w);
        if let Some(v) = version {
            // Revision 0 compares with an absent key, as etcd's mod_revision does.
            let now = w.etcd.keys.get(key).map(|e| e.mod_revision).unwrap_or(0);
            if now != v {
                return false;
            }
        }
        w.etcd.put(key, json, 0);
        w.publish();
        true
    }
}

impl Dcs for SimEtcd {
    fn prefix(&self) -> &str {
        crate::world::SCOPE_PREFIX
    }

    async fn get_cluster(&self) -> Result<Cluster, DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        if !w.etcd.expire().is_empty() {
            w.publish();
        }
        Ok(w.etcd.cluster())
    }

    async fn refresh_lease(&self) -> Result<LeaseInfo, DcsError> {
        let sent = Instant::now();
        self.call().await?;
        let mut w = lock(&self.w);
        let info = self.keep_alive(&mut w, sent);
        w.publish();
        Ok(info)
    }

    async fn lease_deadline(&self) -> Option<Instant> {
        self.lease
            .lock()
            .expect("not poisoned")
            .as_ref()
            .and_then(|l| l.deadline)
    }

    async fn set_timing(&self, timing: Timing) {
        *self.timing.lock().expect("not poisoned") = timing;
    }

    async fn touch_member(&self, json: &str) -> Result<(), DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        let lease = self.on_lease(&mut w);
        w.etcd.put(&format!("members/{}", self.me), json, lease);
        w.publish();
        Ok(())
    }

    async fn attempt_to_acquire_leader(&self) -> Result<bool, DcsError> {
        let sent = Instant::now();
        self.call().await?;
        let mut w = lock(&self.w);
        let lease = self.keep_alive(&mut w, sent);
        if w.etcd.keys.contains_key("leader") {
            return Ok(false);
        }
        w.etcd.put("leader", &self.me, lease.id);
        w.publish();
        let m = format!("{}: took the leader key", self.me);
        w.log(m);
        if let Some(d) = w.freeze_next_winner.take() {
            w.nodes[self.i].agent = Agent::Frozen;
            w.frozen_winner = Some(self.i);
            let m = format!("{}: frozen (scripted) for {d:?}", self.me);
            w.log(m);
            let shared = self.w.clone();
            let i = self.i;
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                crate::driver::thaw(&shared, i);
            });
        }
        Ok(true)
    }

    async fn update_leader(&self) -> Result<(bool, LeaseInfo), DcsError> {
        let sent = Instant::now();
        self.call().await?;
        let mut w = lock(&self.w);
        let lease = self.keep_alive(&mut w, sent);
        let held = match w.etcd.keys.get("leader") {
            Some(e) if e.value == self.me && e.lease == lease.id => true,
            // Our lease was re-created: the key is ours by value; put it on the new lease.
            Some(e) if e.value == self.me => {
                w.etcd.put("leader", &self.me, lease.id);
                true
            }
            _ => false,
        };
        w.publish();
        Ok((held, lease))
    }

    async fn take_leader(&self) -> Result<(), DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        let lease = self.on_lease(&mut w);
        w.etcd.put("leader", &self.me, lease);
        w.publish();
        Ok(())
    }

    async fn delete_leader(&self, last_lsn: Option<u64>) -> Result<bool, DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        if w.etcd.value("leader") != Some(self.me.as_str()) {
            return Ok(false);
        }
        if let Some(lsn) = last_lsn {
            let mut status = patrol_dcs::Status::parse(w.etcd.value("status").unwrap_or("{}"));
            status.optime = Some(lsn);
            w.etcd.put("status", &status.to_json(), 0);
        }
        w.etcd.delete("leader");
        w.publish();
        Ok(true)
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        if create_new && w.etcd.keys.contains_key("initialize") {
            return Ok(false);
        }
        w.etcd.put("initialize", sysid, 0);
        w.publish();
        Ok(true)
    }

    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        w.etcd.delete("initialize");
        w.publish();
        Ok(())
    }

    async fn set_config(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        self.call().await?;
        Ok(self.cas("config", json, version))
    }

    async fn set_failover(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        self.call().await?;
        Ok(self.cas("failover", json, version))
    }

    async fn set_sync(&self, json: &str, version: Option<i64>) -> Result<Option<i64>, DcsError> {
        self.call().await?;
        if !self.cas("sync", json, version) {
            return Ok(None);
        }
        Ok(lock(&self.w).etcd.keys.get("sync").map(|e| e.mod_revision))
    }

    async fn delete_sync(&self, version: Option<i64>) -> Result<bool, DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        if version.is_some_and(|v| w.etcd.keys.get("sync").map(|e| e.mod_revision) != Some(v)) {
            return Ok(false);
        }
        let r = w.etcd.delete("sync");
        w.publish();
        Ok(r)
    }

    async fn set_history(&self, json: &str) -> Result<(), DcsError> {
        self.call().await?;
        self.cas("history", json, None);
        Ok(())
    }

    async fn set_status(&self, json: &str) -> Result<(), DcsError> {
        self.call().await?;
        self.cas("status", json, None);
        Ok(())
    }

    async fn set_failsafe(&self, json: &str) -> Result<(), DcsError> {
        self.call().await?;
        self.cas("failsafe", json, None);
        Ok(())
    }

    async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.call().await?;
        let mut w = lock(&self.w);
        w.etcd.keys.clear();
        w.etcd.revision += 1;
        w.publish();
        Ok(())
    }

    fn watch_cluster(&self) -> watch::Receiver<Option<Arc<Cluster>>> {
        lock(&self.w).watch.subscribe()
    }
}
