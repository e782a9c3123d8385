//! Failsafe mode (rows D-2F, D-2F', U-2F; the rules are the core's, `patrol_ha::failsafe`):
//! asking the members of the `failsafe` key while the DCS is unreachable, holding leadership
//! on their answer, and keeping the key current as leader.

use patrol_dcs::{Cluster, Dcs};
use patrol_ha::failsafe::{self, FailsafeCheck};
use patrol_ha::{Observation, Outcome};
use serde_json::json;
use tokio::time::Instant;

use super::Ha;
use crate::ha::port::{LocalPostgres, Peers};

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// Row D-2F: when the core wants it, asks every other member of the last `failsafe` key
    /// read whether we may go on as primary, and puts the answer in the observation.
    pub(super) async fn check_failsafe(&mut self, obs: &mut Observation) {
        if !failsafe::wants_check(obs) {
            return;
        }
        let Some(members) = failsafe::members_to_ask(self.last_failsafe.as_ref(), &self.cfg.name)
        else {
            obs.failsafe_check = Some(FailsafeCheck::NotInKey);
            return;
        };
        // The permanent slots' positions, fresh: the standbys advance their copies to them
        // while etcd is away (Patroni sends its `slots` the same way).
        let last = self.shared.snapshot().node.cluster;
        if let (Some(c), Ok(s)) = (last.as_deref(), self.pg.status().await) {
            self.sync_permanent_slots(c, Some(&s)).await;
        }
        let asked = Instant::now();
        let body = json!({
            "name": self.cfg.name,
            "conn_url": self.conn_url(),
            "api_url": self.api_url(),
            "slots": self.published_slots.clone().unwrap_or_default(),
        });
        let answers = if members.is_empty() {
            Default::default()
        } else {
            let limit = std::time::Duration::from_secs(2);
            self.peers
                .post_failsafe(&self.cfg, members, body, limit)
                .await
        };
        self.failsafe_asked = Some(asked);
        if answers.refused.is_empty() && !answers.lsn.is_empty() {
            // The standbys' positions stand in for their member keys: the copies of the slots
            // of members that cascade from another standby advance with them (Patroni's
            // `update_slots` from the `lsn` headers).
            if let (Some(c), Ok(s)) = (last.as_deref(), self.pg.status().await) {
                let mut c = c.clone();
                for m in &mut c.members {
                    if let Some(lsn) = answers.lsn.get(&m.name) {
                        m.data.xlog_location = Some(m.data.xlog_location.unwrap_or(0).max(*lsn));
                    }
                }
                self.sync_permanent_slots(&c, Some(&s)).await;
            }
        }
        obs.failsafe_check = Some(if answers.refused.is_empty() {
            FailsafeCheck::Accepted
        } else {
            FailsafeCheck::Refused(answers.refused)
        });
    }

    /// A standby while etcd is away: a failsafe leader that called less than `ttl` ago sent the
    /// positions of its slots; advance our copies of the permanent slots to them.
    pub(super) async fn follow_failsafe_slots(&mut self) {
        let Some(l) = self.shared.failsafe_leader() else {
            return;
        };
        let last = self.shared.snapshot().node.cluster;
        if let (Some(c), false) = (last.as_deref(), l.slots.is_empty()) {
            self.advance_slots_to(c, &l.slots).await;
        }
    }

    /// `Action::HoldAsFailsafe`: lead without the DCS until `ttl` after the accepted round.
    pub(super) fn hold_as_failsafe(&mut self) -> Outcome {
        if let Some(asked) = self.failsafe_asked {
            self.shared.hold_as_failsafe(asked, self.lease_deadline);
            self.failsafe_holding = true;
            // As Patroni: a failsafe leader keeps feeding its watchdog.
            self.watchdog.keepalive();
        }
        Outcome::Done
    }

    /// As leader, after a refresh of the key: the `failsafe` key names every member (and us)
    /// while failsafe mode is on, written when that changed (Patroni's `write_failsafe`).
    pub(super) async fn write_failsafe_key(&mut self, cluster: &Cluster) {
        let Some(want) = failsafe::topology(cluster, &self.cfg.name, &self.api_url()) else {
            return;
        };
        let json = serde_json::Value::Object(want).to_string();
        if let Err(e) = self.dcs.set_failsafe(&json).await {
            tracing::warn!("could not write the failsafe key: {e}");
        }
    }
}
