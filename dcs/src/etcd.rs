//! The etcd v3 client: one lease per process, leader key by transaction, compare-and-swap writes,
//! linearizable snapshot reads and a prefix watch that never leaves a stale view.
//!
//! Several endpoints (the members of an etcd cluster) are used one at a time ([`members`]): a
//! call that fails or gets no answer within its share of `retry_timeout` is retried on the next
//! member within the same `retry_timeout`, and the lease keep-alive and the watch streams follow
//! to that member, so one failed or frozen member of three costs a leader at most one attempt.
//!
//! Dangerous part: leadership. The leader key is created only by `create_revision == 0`, kept
//! alive only by lease keep-alive, checked by a linearizable transaction (never by a possibly
//! stale read) and deleted only by `value == me`. The lease deadline is computed from the *send*
//! time of the last acknowledged keep-alive, so the holder can step down before etcd expires it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::{watch, Mutex};
use tokio::time::{timeout, Instant};

mod members;
use members::Members;

/// The least interval between two progress requests on the watch stream.
const MIN_PROBE: Duration = Duration::from_millis(250);

/// HTTP/2 pings on a connection that received nothing for this long. Above etcd's
/// `--grpc-keepalive-min-time` (5 s by default): a client that pings more often while the
/// server sends nothing is sent away (`too_many_pings`). Every call has its own deadline and
/// the watch follows the calls (or asks its progress), so the pings only close a connection
/// that went dead.
const PING_INTERVAL: Duration = Duration::from_secs(6);

/// A keep-alive sent this recently (the leader's heartbeat, then its member key, in the same
/// cycle) is not sent again; at most `ttl / 10`.
const KEEPALIVE_REUSE: Duration = Duration::from_secs(2);

use crate::model::{keys, Cluster, Kv, Status, Timing};
use crate::tls::EtcdTls;

/// Errors callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// etcd did not answer within the deadline, or the connection failed.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The lease we wrote with no longer exists.
    #[error("lease not found")]
    LeaseNotFound,
    /// Anything else etcd refused.
    #[error("etcd error: {0}")]
    Other(String),
}

fn classify(e: etcd_client::Error) -> DcsError {
    let text = e.to_string();
    if text.contains("requested lease not found") || text.contains("lease not found") {
        return DcsError::LeaseNotFound;
    }
    match e {
        // A keep-alive or watch stream whose channel closed: its connection is gone.
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::LeaseKeepAliveError(_)
        | etcd_client::Error::WatchError(_) => DcsError::Unavailable(text),
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            DcsError::Unavailable(text)
        }
        // The connection broke under the request (tonic reports hyper's or h2's error with code
        // Unknown and the transport error as its source, e.g. a member killed mid-call): the
        // member is gone, not the request refused.
        etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::Unknown
                && (std::error::Error::source(&s).is_some()
                    || text.contains("h2 protocol error")
                    || text.contains("broken pipe")) =>
        {
            DcsError::Unavailable(text)
        }
        _ => DcsError::Other(text),
    }
}

/// How to reach etcd and what this process is.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to etcd (used when an endpoint is `https://` or any file is given).
    pub tls: EtcdTls,
    /// `/<namespace>/<scope>/`.
    pub prefix: String,
    /// This member's name (the leader key's value when we hold it).
    pub member_name: String,
}

impl EtcdTls {
    fn is_set(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The TLS options, or an error naming the file that cannot be read.
    fn options(&self) -> Result<TlsOptions, DcsError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                DcsError::Other(format!("cannot read etcd {what} {}: {e}", p.display()))
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read("cacert", ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(Identity::from_pem(read("cert", c)?, read("key", k)?));
            }
            (None, None) => {}
            _ => {
                return Err(DcsError::Other(
                    "etcd cert and key go together: give both or neither".into(),
                ))
            }
        }
        Ok(tls)
    }
}

/// A keep-alive stream, on the member of `generation`.
struct Keeper {
    generation: u64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

struct LeaseState {
    id: Option<i64>,
    ttl: u64,
    keeper: Option<Keeper>,
    /// When etcd may expire the lease at the earliest, from the send time of the last
    /// acknowledged keep-alive (or grant).
    deadline: Option<Instant>,
}

/// A watch's view of the cluster and whether it is current.
type WatchView = (watch::Receiver<Option<Arc<Cluster>>>, watch::Receiver<bool>);

/// The etcd v3 DCS.
pub struct EtcdDcs {
    /// The etcd members, the one in use and its client (shared with the watch task).
    members: Arc<Members>,
    prefix: String,
    name: String,
    /// The deadline of every call, shared with the watch task so that a new `retry_timeout`
    /// reaches it too.
    retry_timeout: Arc<std::sync::Mutex<Duration>>,
    lease: Mutex<LeaseState>,
    /// The first watch's view and health: `get_cluster` answers from it while it is current
    /// and has seen this process's last write, so an idle member reads nothing from etcd.
    view: std::sync::OnceLock<WatchView>,
    /// The store revision of this process's last write (read-your-writes for the view).
    last_write: std::sync::atomic::AtomicI64,
    /// The watch checks its member with progress requests (see [`EtcdDcs::without_watch_probes`]).
    watch_probes: bool,
}

/// Outcome of a lease refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub deadline: Instant,
}

impl EtcdDcs {
    /// Connects (lazily: etcd may be down at start; calls fail with `Unavailable` until it is up;
    /// the first call goes to the first endpoint). `retry_timeout` is the deadline of every call
    /// until [`EtcdDcs::set_timing`] changes it; the channel itself has no request timeout of its
    /// own, so that only the current value counts.
    pub async fn connect(
        settings: &EtcdSettings,
        ttl: u64,
        retry_timeout: Duration,
    ) -> Result<EtcdDcs, DcsError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(retry_timeout)
            .with_keep_alive(PING_INTERVAL, retry_timeout);
        if let (Some(u), Some(p)) = (&settings.username, &settings.password) {
            opts = opts.with_user(u.clone(), p.clone());
        }
        if settings.tls.is_set() || settings.endpoints.iter().any(|e| e.starts_with("https://")) {
            opts = opts.with_tls(settings.tls.options()?);
        }
        Ok(EtcdDcs {
            members: Arc::new(Members::new(settings.endpoints.clone(), opts)?),
            prefix: settings.prefix.clone(),
            name: settings.member_name.clone(),
            retry_timeout: Arc::new(std::sync::Mutex::new(retry_timeout)),
            lease: Mutex::new(LeaseState {
                id: None,
                ttl,
                keeper: None,
                deadline: None,
            }),
            view: std::sync::OnceLock::new(),
            last_write: std::sync::atomic::AtomicI64::new(0),
            watch_probes: true,
        })
    }

    /// Notes the revision a write of ours produced.
    fn wrote(&self, header: Option<&etcd_client::ResponseHeader>) {
        if let Some(h) = header {
            self.last_write
                .fetch_max(h.revision(), std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn member_name(&self) -> &str {
        &self.name
    }

    /// The etcd endpoint calls go to now.
    pub fn endpoint(&self) -> String {
        self.members.endpoint()
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel)
    }

    fn deadline(&self) -> Duration {
        current(&self.retry_timeout)
    }

    /// Applies new timing from the dynamic config: `retry_timeout` becomes the deadline of
    /// every call (the watch's included), and a changed ttl drops the lease so the next refresh
    /// grants one with the new TTL (and keys are re-attached by the next writes).
    pub async fn set_timing(&self, timing: Timing) {
        *self.retry_timeout.lock().unwrap_or_else(|p| p.into_inner()) = timing.retry_timeout();
        let mut l = self.lease.lock().await;
        if l.ttl != timing.ttl {
            l.ttl = timing.ttl;
            l.id = None;
            l.keeper = None;
            l.deadline = None;
        }
    }

    /// Runs one request within `retry_timeout`: on the member in use, and on the next ones
    /// while a member fails or does not answer within its share of the deadline.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, DcsError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let total = self.deadline();
        let mut retry = self.members.retry(total);
        let mut last = None;
        while let Some(limit) = retry.next().await {
            match self.members.attempt(limit, &f).await {
                Ok((v, _)) => return Ok(v),
                Err(e @ DcsError::Unavailable(_)) => {
                    retry.failed();
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| DcsError::Unavailable(format!("no answer within {total:?}"))))
    }

    /// The cluster: from the watch's view while it is current (the stream established on the
    /// member in use, which calls or progress requests check) and has seen our own last write, as Patroni
    /// reads its KV cache; else one linearizable prefix read. What must not be stale is
    /// checked against etcd itself: the leader's transaction in `update_leader`, the races and
    /// compare-and-swap writes.
    pub async fn get_cluster(&self) -> Result<Cluster, DcsError> {
        if let Some((view, healthy)) = self.view.get() {
            let seen = self.last_write.load(std::sync::atomic::Ordering::SeqCst);
            let current = view
                .borrow()
                .clone()
                .filter(|c| *healthy.borrow() && c.revision >= seen);
            if let Some(c) = current {
                return Ok((*c).clone());
            }
        }
        self.read_cluster().await
    }

    /// A linearizable prefix read, never from the view.
    pub async fn read_cluster(&self) -> Result<Cluster, DcsError> {
        let (rev, kvs) = self.read_prefix().await?;
        Ok(Cluster::from_kvs(rev, &kvs))
    }

    async fn read_prefix(&self) -> Result<(i64, Vec<Kv>), DcsError> {
        let resp = self
            .call(|mut c| {
                let prefix = self.prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let kvs = resp.kvs().iter().filter_map(|kv| self.to_kv(kv)).collect();
        Ok((rev, kvs))
    }

    /// A transaction that may write: a successful one's revision is noted (`wrote`).
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, DcsError> {
        let r = self.txn_read(txn).await?;
        if r.succeeded() {
            self.wrote(r.header());
        }
        Ok(r)
    }

    /// A transaction that only compares and reads.
    async fn txn_read(&self, txn: Txn) -> Result<etcd_client::TxnResponse, DcsError> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn put(
        &self,
        key: String,
        value: &str,
        options: Option<PutOptions>,
    ) -> Result<etcd_client::PutResponse, DcsError> {
        let r = self
            .call(|mut c| {
                let (key, value, options) = (key.clone(), value.to_string(), options.clone());
                async move { c.put(key, value, options).await }
            })
            .await?;
        self.wrote(r.header());
        Ok(r)
    }

    async fn delete(&self, key: String, options: Option<DeleteOptions>) -> Result<(), DcsError> {
        let r = self
            .call(|mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.delete(key, options).await }
            })
            .await?;
        self.wrote(r.header());
        Ok(())
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Option<Kv> {
        let key = kv.key_str().ok()?;
        let rel = key.strip_prefix(&self.prefix)?;
        Some(Kv {
            key: rel.to_string(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    /// The current lease id, granting one if needed (no keep-alive).
    async fn lease_id(&self) -> Result<i64, DcsError> {
        let mut l = self.lease.lock().await;
        if let Some(id) = l.id {
            return Ok(id);
        }
        self.grant(&mut l).await.map(|lease| lease.id)
    }

    async fn grant(&self, l: &mut LeaseState) -> Result<LeaseInfo, DcsError> {
        let sent = Instant::now();
        let ttl = l.ttl as i64;
        let resp = self
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        let deadline = sent + Duration::from_secs(resp.ttl().max(0) as u64);
        l.id = Some(resp.id());
        l.keeper = None;
        l.deadline = Some(deadline);
        Ok(LeaseInfo {
            id: resp.id(),
            deadline,
        })
    }

    /// Keeps the lease alive (granting a new one if it is gone). Returns the lease and the
    /// deadline before which etcd cannot have expired it. The keep-alive stream lives on the
    /// member in use: it is reopened on the next member when that one fails or stalls (within
    /// the same `retry_timeout`, as any call), or when another call or the watch moved on.
    pub async fn refresh_lease(&self) -> Result<LeaseInfo, DcsError> {
        let mut l = self.lease.lock().await;
        let Some(id) = l.id else {
            return self.grant(&mut l).await;
        };
        let ttl = Duration::from_secs(l.ttl);
        if let Some(deadline) = l.deadline {
            // Acknowledged moments ago: the deadline it gave still holds.
            let left = deadline.saturating_duration_since(Instant::now());
            if left > ttl.saturating_sub(KEEPALIVE_REUSE.min(ttl / 10)) {
                return Ok(LeaseInfo { id, deadline });
            }
        }
        let total = self.deadline();
        let mut retry = self.members.retry(total);
        let mut last = None;
        while let Some(limit) = retry.next().await {
            let sent = Instant::now();
            let mut generation = self.members.generation();
            let answer = timeout(limit, async {
                let k = match l.keeper.take() {
                    Some(k) if k.generation == self.members.generation() => k,
                    _ => {
                        let conn = self.members.conn().await?;
                        generation = conn.generation;
                        let mut c = conn.client;
                        let (keeper, stream) = c.lease_keep_alive(id).await.map_err(classify)?;
                        Keeper {
                            generation: conn.generation,
                            keeper,
                            stream,
                        }
                    }
                };
                generation = k.generation;
                let k = l.keeper.insert(k);
                k.keeper.keep_alive().await.map_err(classify)?;
                k.stream.message().await.map_err(classify)
            })
            .await;
            let e = match answer {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    let deadline = sent + Duration::from_secs(resp.ttl() as u64);
                    l.deadline = Some(deadline);
                    return Ok(LeaseInfo { id, deadline });
                }
                Ok(Ok(Some(_)) | Err(DcsError::LeaseNotFound)) => {
                    // TTL 0: the lease expired; everything on it is gone. Grant a new one.
                    tracing::warn!(lease = id, "lease expired in etcd, granting a new one");
                    l.id = None;
                    l.keeper = None;
                    l.deadline = None;
                    return self.grant(&mut l).await;
                }
                Ok(Ok(None)) => DcsError::Unavailable("keep-alive stream closed".into()),
                Ok(Err(e @ DcsError::Unavailable(_))) => e,
                Ok(Err(e)) => {
                    l.keeper = None;
                    return Err(e);
                }
                Err(_) => {
                    DcsError::Unavailable(format!("keep-alive not acknowledged within {limit:?}"))
                }
            };
            l.keeper = None;
            self.members.failed(generation, &e);
            retry.failed();
            last = Some(e);
        }
        Err(last.unwrap_or_else(|| DcsError::Unavailable(format!("no answer within {total:?}"))))
    }

    /// The deadline of the last acknowledged keep-alive, if any.
    pub async fn lease_deadline(&self) -> Option<Instant> {
        self.lease.lock().await.deadline
    }

    async fn forget_lease(&self, id: i64) {
        let mut l = self.lease.lock().await;
        if l.id == Some(id) {
            l.id = None;
            l.keeper = None;
            l.deadline = None;
        }
    }

    /// Runs `f` with the current lease; if etcd says the lease is gone, grants a new one and
    /// retries once.
    async fn with_lease<T, F, Fut>(&self, f: F) -> Result<T, DcsError>
    where
        F: Fn(i64) -> Fut,
        Fut: std::future::Future<Output = Result<T, DcsError>>,
    {
        let id = self.lease_id().await?;
        match f(id).await {
            Err(DcsError::LeaseNotFound) => {
                self.forget_lease(id).await;
                let id = self.lease_id().await?;
                f(id).await
            }
            other => other,
        }
    }

    /// Writes our member key on our lease.
    pub async fn touch_member(&self, json: &str) -> Result<(), DcsError> {
        let key = self.key(&format!("{}{}", keys::MEMBERS, self.name));
        self.with_lease(|id| self.put(key.clone(), json, Some(PutOptions::new().with_lease(id))))
            .await
            .map(|_| ())
    }

    /// The leader race: create the leader key on our lease if and only if it does not exist.
    /// A key that already holds our name on our lease counts as won: that is what a retry on
    /// another member finds when the first member applied the transaction but its answer was
    /// lost.
    pub async fn attempt_to_acquire_leader(&self) -> Result<bool, DcsError> {
        match self.refresh_lease().await {
            // Revoked while we could not keep it alive: the race takes a new one (below).
            Err(DcsError::LeaseNotFound) => {}
            other => {
                other?;
            }
        }
        let key = self.key(keys::LEADER);
        self.with_lease(|id| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.name.clone(),
                    Some(PutOptions::new().with_lease(id)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            async move {
                let r = self.txn(txn).await?;
                let ours = |kv: &etcd_client::KeyValue| {
                    kv.value() == self.name.as_bytes() && kv.lease() == id
                };
                Ok(r.succeeded()
                    || r.op_responses().into_iter().any(|op| match op {
                        TxnOpResponse::Get(g) => g.kvs().iter().any(ours),
                        _ => false,
                    }))
            }
        })
        .await
    }

    /// The leader's heartbeat: keep the lease alive, then confirm with a linearizable
    /// transaction that the key still holds our name on our lease. When the lease was re-created
    /// the key is re-put (`value == me`). A key that vanished is never re-created here: it
    /// expired, so another node may have led since (and died), and only the leader race, with
    /// its timeline check, may take it again. `Ok(false)` means we do not hold the key.
    pub async fn update_leader(&self) -> Result<(bool, LeaseInfo), DcsError> {
        let lease = self.refresh_lease().await?;
        let key = self.key(keys::LEADER);
        let put = || {
            TxnOp::put(
                key.clone(),
                self.name.clone(),
                Some(PutOptions::new().with_lease(lease.id)),
            )
        };
        // The check is a read-only transaction: etcd answers it as a linearizable read, with
        // no raft proposal (an idle leader writes nothing). Only a key that is ours on another
        // lease (granted anew after an expiry) is written, re-attached to this one.
        let check = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, self.name.clone()),
                Compare::lease(key.clone(), CompareOp::Equal, lease.id),
            ])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn_read(check).await?;
        if resp.succeeded() {
            return Ok((true, lease));
        }
        let ours_elsewhere = resp.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.value() == self.name.as_bytes()),
            _ => false,
        });
        if !ours_elsewhere {
            return Ok((false, lease));
        }
        let reattach = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.name.clone(),
            )])
            .and_then([put()]);
        let held = self.txn(reattach).await?.succeeded();
        if held {
            tracing::info!(
                lease = lease.id,
                "leader key re-attached to the current lease"
            );
        }
        Ok((held, lease))
    }

    /// Puts the leader key unconditionally on our lease (after bootstrap, as Patroni's
    /// `take_leader`). Only the winner of the `initialize` race may call this.
    pub async fn take_leader(&self) -> Result<(), DcsError> {
        self.refresh_lease().await?;
        let key = self.key(keys::LEADER);
        self.with_lease(|id| {
            self.put(
                key.clone(),
                &self.name,
                Some(PutOptions::new().with_lease(id)),
            )
        })
        .await
        .map(|_| ())
    }

    /// `patronictl scaffold`'s permanent leader: if there is no leader key, writes the member
    /// key of `member` (`json`) and a leader key naming it, both without a lease (they never
    /// expire), in one transaction. `Ok(false)`: a leader key exists.
    pub async fn put_permanent_leader(&self, member: &str, json: &str) -> Result<bool, DcsError> {
        let key = self.key(keys::LEADER);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(self.key(&format!("{}{member}", keys::MEMBERS)), json, None),
                TxnOp::put(key, member, None),
            ]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Releases the leader key if and only if it holds our name, writing `status` with the
    /// final WAL position in the same transaction when known: a member that no longer holds the
    /// key (its lease expired and another leads) must not overwrite the leader's `status`.
    pub async fn delete_leader(&self, last_lsn: Option<u64>) -> Result<bool, DcsError> {
        let key = self.key(keys::LEADER);
        let mut ops = Vec::new();
        if let Some(lsn) = last_lsn {
            let status = Status {
                optime: Some(lsn),
                ..Status::default()
            };
            ops.push(TxnOp::put(self.key(keys::STATUS), status.to_json(), None));
        }
        ops.push(TxnOp::delete(key.clone(), None));
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, self.name.clone())])
            .and_then(ops);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// The `initialize` race (`create_new`: create `""` if absent), or storing the sysid.
    pub async fn initialize(&self, create_new: bool, sysid: &str) -> Result<bool, DcsError> {
        let key = self.key(keys::INITIALIZE);
        if create_new {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, sysid, None)]);
            return Ok(self.txn(txn).await?.succeeded());
        }
        self.put_plain(keys::INITIALIZE, sysid).await?;
        Ok(true)
    }

    /// Removes `initialize` after a failed bootstrap.
    pub async fn cancel_initialization(&self) -> Result<(), DcsError> {
        self.delete(self.key(keys::INITIALIZE), None).await
    }

    async fn put_plain(&self, rel: &str, value: &str) -> Result<i64, DcsError> {
        let r = self.put(self.key(rel), value, None).await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Put with `mod_revision == version` when a version is given. Returns the new revision on
    /// success, `None` when the compare failed.
    async fn put_cas(
        &self,
        rel: &str,
        value: &str,
        version: Option<i64>,
    ) -> Result<Option<i64>, DcsError> {
        let Some(v) = version else {
            return self.put_plain(rel, value).await.map(Some);
        };
        let key = self.key(rel);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, v)])
            .and_then([TxnOp::put(key, value, None)]);
        let r = self.txn(txn).await?;
        Ok(r.succeeded()
            .then(|| r.header().map(|h| h.revision()).unwrap_or(0)))
    }

    pub async fn set_config(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        Ok(self.put_cas(keys::CONFIG, json, version).await?.is_some())
    }

    pub async fn set_failover(&self, json: &str, version: Option<i64>) -> Result<bool, DcsError> {
        Ok(self.put_cas(keys::FAILOVER, json, version).await?.is_some())
    }

    /// Returns the new revision (the version for the next compare) or `None` on conflict.
    pub async fn set_sync(
        &self,
        json: &str,
        version: Option<i64>,
    ) -> Result<Option<i64>, DcsError> {
        self.put_cas(keys::SYNC, json, version).await
    }

    pub async fn delete_sync(&self, version: Option<i64>) -> Result<bool, DcsError> {
        let key = self.key(keys::SYNC);
        let mut txn = Txn::new();
        if let Some(v) = version {
            txn = txn.when([Compare::mod_revision(key.clone(), CompareOp::Equal, v)]);
        }
        let txn = txn.and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    pub async fn set_history(&self, json: &str) -> Result<(), DcsError> {
        self.put_plain(keys::HISTORY, json).await.map(|_| ())
    }

    pub async fn set_status(&self, json: &str) -> Result<(), DcsError> {
        self.put_plain(keys::STATUS, json).await.map(|_| ())
    }

    pub async fn set_failsafe(&self, json: &str) -> Result<(), DcsError> {
        self.put_plain(keys::FAILSAFE, json).await.map(|_| ())
    }

    /// Deletes the whole cluster prefix (`patronictl remove`).
    pub async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.delete(
            self.prefix.clone(),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
    }

    /// For a process that calls etcd every cycle anyway (the agent: its lease keep-alive each
    /// `loop_wait`): its watch sends no progress requests. A stalled member is then left when
    /// that call finds it silent (within `loop_wait` + `retry_timeout`, as Patroni's HA loop
    /// notices it), and the watch follows the call to the next member; a closed connection is
    /// noticed at once either way. Saves an idle member most of what it would send etcd.
    pub fn without_watch_probes(mut self) -> EtcdDcs {
        self.watch_probes = false;
        self
    }

    /// Starts the background watch: one prefix read, a prefix watch from its revision, and on
    /// any loss of the stream a fresh read before resuming. Every change publishes a new
    /// `Arc<Cluster>`; `None` until the first read succeeds.
    pub fn watch_cluster(&self) -> watch::Receiver<Option<Arc<Cluster>>> {
        self.watch_with_health().0
    }

    /// Like `watch_cluster`, plus a health signal: `true` while the view is current (snapshot
    /// read and watch stream established), `false` from the moment the stream is lost until a
    /// fresh read succeeds.
    ///
    /// The stream lives on the member in use and follows it: it is reopened (after a fresh read)
    /// on the next member when a call moves on, and it checks the member itself with a progress
    /// request once the stream was silent for three eighths of `retry_timeout` (looked at
    /// every quarter): a stream silent for three quarters of it is on a stalled member, which
    /// is then left (unless [`EtcdDcs::without_watch_probes`]).
    pub fn watch_with_health(
        &self,
    ) -> (watch::Receiver<Option<Arc<Cluster>>>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(None);
        let (htx, hrx) = watch::channel(false);
        let members = self.members.clone();
        let prefix = self.prefix.clone();
        let retry = self.retry_timeout.clone();
        let probes = self.watch_probes;
        tokio::spawn(run_watch(members, prefix, retry, probes, tx, htx));
        let _ = self.view.set((rx.clone(), hrx.clone()));
        (rx, hrx)
    }
}

/// The current value of a shared deadline (a poisoned lock still holds a valid `Duration`).
fn current(d: &std::sync::Mutex<Duration>) -> Duration {
    *d.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run_watch(
    members: Arc<Members>,
    prefix: String,
    retry: Arc<std::sync::Mutex<Duration>>,
    probes: bool,
    tx: watch::Sender<Option<Arc<Cluster>>>,
    healthy: watch::Sender<bool>,
) {
    let rel = |key: &[u8]| -> Option<String> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(prefix.as_str())
            .map(String::from)
    };
    let mut switched = members.subscribe();
    loop {
        if tx.is_closed() {
            return;
        }
        let each = members.share(current(&retry));
        // 1. Snapshot.
        let snapshot = members
            .attempt(each, &|mut c: Client| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await;
        let resp = match snapshot {
            Ok((r, _)) => r,
            Err(e) => {
                healthy.send_replace(false);
                tracing::debug!("cluster watch: snapshot read failed ({e}), retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut map: BTreeMap<String, Kv> = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some(k) = rel(kv.key()) {
                map.insert(
                    k.clone(),
                    Kv {
                        key: k,
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    },
                );
            }
        }
        let publish = |rev: i64, map: &BTreeMap<String, Kv>| {
            let kvs: Vec<Kv> = map.values().cloned().collect();
            tx.send_replace(Some(Arc::new(Cluster::from_kvs(rev, &kvs))));
        };
        publish(rev, &map);
        // 2. Watch from the snapshot's revision, on the member in use.
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1)
            .with_progress_notify();
        let opened = members
            .attempt(each, &|mut c: Client| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                async move { c.watch(prefix, Some(opts)).await }
            })
            .await;
        let (mut stream, generation) = match opened {
            Ok(s) => s,
            Err(e) => {
                healthy.send_replace(false);
                tracing::debug!("cluster watch: watch failed ({e}), re-reading");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        switched.borrow_and_update();
        if members.generation() != generation {
            continue;
        }
        healthy.send_replace(true);
        let mut heard = Instant::now();
        let mut probe = tokio::time::interval((current(&retry) / 4).max(MIN_PROBE));
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                r = switched.changed() => {
                    if r.is_err() || *switched.borrow_and_update() != generation {
                        tracing::debug!("cluster watch: the member in use changed, reopening");
                        break;
                    }
                    continue;
                }
                _ = probe.tick(), if probes => {
                    let limit = current(&retry) * 3 / 4;
                    let silent = heard.elapsed();
                    if silent > limit {
                        let e = DcsError::Unavailable(format!(
                            "watch stream silent for {limit:?}"
                        ));
                        members.failed(generation, &e);
                        break;
                    }
                    // A stream heard from recently needs no question yet: one is asked once
                    // the next tick (a quarter of retry_timeout later, more on a loaded
                    // machine) could find the stream past the limit. An idle stream then asks
                    // every other tick, not every tick; a member that stopped answering is
                    // still left by the first tick past the limit.
                    if silent + probe.period() * 3 / 2 <= limit {
                        continue;
                    }
                    // etcd answers a progress request with an empty response on the stream.
                    if stream.request_progress().await.is_err() {
                        tracing::debug!("cluster watch: progress request failed, re-reading");
                        break;
                    }
                    continue;
                }
                _ = tx.closed() => return,
            };
            heard = Instant::now();
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    tracing::debug!("cluster watch: stream lost, re-reading");
                    break;
                }
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                tracing::debug!("cluster watch: canceled or compacted, re-reading");
                break;
            }
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(k) = rel(kv.key()) else { continue };
                changed = true;
                match ev.event_type() {
                    EventType::Put => {
                        map.insert(
                            k.clone(),
                            Kv {
                                key: k,
                                value: String::from_utf8_lossy(kv.value()).into_owned(),
                                mod_revision: kv.mod_revision(),
                                lease: kv.lease(),
                            },
                        );
                    }
                    EventType::Delete => {
                        map.remove(&k);
                    }
                }
            }
            if let Some(h) = resp.header() {
                rev = rev.max(h.revision());
            }
            if changed {
                publish(rev, &map);
            }
        }
        healthy.send_replace(false);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_broken_under_a_request_is_the_member_s_failure() {
        let broken = tonic::Status::new(
            tonic::Code::Unknown,
            "h2 protocol error: error reading a body from connection",
        );
        assert!(matches!(
            classify(etcd_client::Error::GRpcStatus(broken)),
            DcsError::Unavailable(_)
        ));
        let refused = tonic::Status::new(tonic::Code::Unknown, "etcdserver: request is too large");
        assert!(matches!(
            classify(etcd_client::Error::GRpcStatus(refused)),
            DcsError::Other(_)
        ));
        let down = tonic::Status::new(tonic::Code::Unavailable, "etcdserver: no leader");
        assert!(matches!(
            classify(etcd_client::Error::GRpcStatus(down)),
            DcsError::Unavailable(_)
        ));
    }
}
