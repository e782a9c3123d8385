//! The `Dcs` trait: what the agent needs from a distributed configuration store. `EtcdDcs` is
//! the implementation; the trait keeps the HA runner independent of etcd (and lets tests drive
//! it with another store).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::etcd::{DcsError, EtcdDcs, LeaseInfo};
use crate::model::{Cluster, Timing};

/// Every write is conditional where Patroni's is: leader key by lease and value, `config`,
/// `failover` and `sync` by mod revision when a version is given.
pub trait Dcs: Send + Sync + 'static {
    /// The cluster prefix, `/<namespace>/<scope>/`.
    fn prefix(&self) -> &str;
    /// One linearizable read of the whole cluster, with its revision.
    fn get_cluster(&self) -> impl Future<Output = Result<Cluster, DcsError>> + Send;
    /// Keeps our lease alive (granting a new one when it is gone).
    fn refresh_lease(&self) -> impl Future<Output = Result<LeaseInfo, DcsError>> + Send;
    /// The deadline of the last acknowledged keep-alive.
    fn lease_deadline(&self) -> impl Future<Output = Option<Instant>> + Send;
    /// New timing from the dynamic config: the deadline of every call, and the lease's TTL (a
    /// changed ttl re-grants the lease).
    fn set_timing(&self, timing: Timing) -> impl Future<Output = ()> + Send;
    /// Writes `members/<me>` on our lease.
    fn touch_member(&self, json: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Creates the leader key if it does not exist.
    fn attempt_to_acquire_leader(&self) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Confirms (and re-attaches) our leader key; `false` = someone else holds it.
    fn update_leader(&self) -> impl Future<Output = Result<(bool, LeaseInfo), DcsError>> + Send;
    /// Unconditional put of the leader key (bootstrap winner only).
    fn take_leader(&self) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Deletes the leader key if it holds our name, in one transaction (`value == me`) with the
    /// write of `status.optime` when `last_lsn` is known.
    fn delete_leader(
        &self,
        last_lsn: Option<u64>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// The `initialize` race (`create_new`) or storing the sysid.
    fn initialize(
        &self,
        create_new: bool,
        sysid: &str,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn cancel_initialization(&self) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn set_config(
        &self,
        json: &str,
        version: Option<i64>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn set_failover(
        &self,
        json: &str,
        version: Option<i64>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn set_sync(
        &self,
        json: &str,
        version: Option<i64>,
    ) -> impl Future<Output = Result<Option<i64>, DcsError>> + Send;
    fn delete_sync(
        &self,
        version: Option<i64>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn set_history(&self, json: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn set_status(&self, json: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn set_failsafe(&self, json: &str) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn delete_cluster(&self) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// A live view: snapshot plus watch, never stale after a lost stream.
    fn watch_cluster(&self) -> watch::Receiver<Option<Arc<Cluster>>>;
}

impl Dcs for EtcdDcs {
    fn prefix(&self) -> &str {
        EtcdDcs::prefix(self)
    }
    async fn get_cluster(&self) -> Result<Cluster, DcsError> {
        EtcdDcs::get_cluster(self).await
    }
    async fn refresh_lease(&self) -> Result<LeaseInfo, DcsError> {
        EtcdDcs::refresh_lease(self).await
    }
    async fn lease_deadline(&self) -> Option<Instant> {
        EtcdDcs::lease_deadline(self).await
    }
    async fn set_timing(&self, timing: Timing) {
        EtcdDcs::set_timing(self, timing).await
    }
    async fn touch_member(&self, json: &str) -> Result<(), DcsError> {
        EtcdDcs::touch_member(self, json).await
    }
    async fn attempt_to_acquire_leader(&self) -> Result<bool, DcsError> {
        EtcdDcs::attempt_to_acquire_leader(self).await
    }
    async fn update_leader(&self) -> Result<(bool, LeaseInfo), DcsError> {
        EtcdDcs::update_leader(self).await
    }
    async fn take_leader(&self) -> Result<(), DcsError> {
        EtcdDcs::take_leader(self).await
    }
    async fn delete_leader(&self, last_lsn: Option<u64>) -> Result<bool, DcsError> {
        EtcdDcs::delete_leader(self, last_lsn).await
    }
    async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        EtcdDcs::initialize(self, create_new, sysid).await
    }
    async fn cancel_initialization(&self) -> Result<(), DcsError> {
        EtcdDcs::cancel_initialization(self).await
    }
    async fn set_config(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        EtcdDcs::set_config(self, json, version).await
    }
    async fn set_failover(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        EtcdDcs::set_failover(self, json, version).await
    }
    async fn set_sync(&self, json: &str, version: Option<i64>) -> Result<Option<i64>, DcsError> {
        EtcdDcs::set_sync(self, json, version).await
    }
    async fn delete_sync(&self, version: Option<i64>) -> Result<bool, DcsError> {
        EtcdDcs::delete_sync(self, version).await
    }
    async fn set_history(&self, json: &str) -> Result<(), DcsError> {
        EtcdDcs::set_history(self, json).await
    }
    async fn set_status(&self, json: &str) -> Result<(), DcsError> {
        EtcdDcs::set_status(self, json).await
    }
    async fn set_failsafe(&self, json: &str) -> Result<(), DcsError> {
        EtcdDcs::set_failsafe(self, json).await
    }
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        EtcdDcs::delete_cluster(self).await
    }
    fn watch_cluster(&self) -> watch::Receiver<Option<Arc<Cluster>>> {
        EtcdDcs::watch_cluster(self)
    }
}
