//! Component tests of `patrol_dcs::EtcdDcs` against a real etcd (one per test, on free ports):
//! the leader key by transaction (taken only while absent, refreshed only while it holds our
//! name, on our lease, deleted only by its holder), compare-and-swap writes that lose on a stale
//! revision, a lease etcd dropped, and the cluster watch, which must come back to the current
//! view with one new watch, and then stay quiet, after the revision it was at was compacted and
//! after a lost stream (a cut connection, a frozen etcd, a restarted etcd). With three etcd
//! members: a killed or frozen member, the one in use and etcd's raft leader, is left within
//! `retry_timeout` by every call, the lease keep-alive and the watch.
//!
//! These live in the e2e binary, not in `dcs/tests/`: the harness (etcd on free ports, the TCP
//! proxy) is here, and a dev-dependency of `patrol-dcs` on `patrol-tests` would link a second
//! copy of `patrol-dcs` into those tests, and one more test binary into every build.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::CompactionOptions;
use patrol_dcs::{Cluster, EtcdDcs, EtcdSettings, EtcdTls};
use patrol_tests::{assert_holds_for, metric, wait_until, Etcd, EtcdCluster, TcpProxy};
use tokio::sync::watch;

const PREFIX: &str = "/service/dcs-test/";
/// Every call's deadline (and the channel's keep-alive timeout) unless a test needs another.
const RETRY: Duration = Duration::from_secs(3);
/// A `retry_timeout` that holds an etcd election after its raft leader froze: the others
/// notice after one to two election timeouts (1 s each by default), and the requests they took
/// meanwhile wait for the new leader.
const ELECTION_RETRY: Duration = Duration::from_secs(6);
/// Watch streams etcd has started (each `EtcdDcs` watch is one).
const WATCHES: &str = "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}";
/// Range (read) calls etcd has started.
const READS: &str = "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
/// Watchers etcd could not keep up to date (their buffer was full): unsynced or victims.
const SLOW_WATCHERS: &str = "etcd_debugging_mvcc_slow_watcher_total";

/// Member `name` of the cluster under [`PREFIX`] through `endpoint`, with `ttl` 10 s.
async fn member(endpoint: String, name: &str, retry: Duration) -> EtcdDcs {
    member_through(vec![endpoint], name, retry).await
}

/// Member `name` of the cluster under [`PREFIX`] through `endpoints`, in order, with `ttl` 10 s.
async fn member_through(endpoints: Vec<String>, name: &str, retry: Duration) -> EtcdDcs {
    let settings = EtcdSettings {
        endpoints,
        username: None,
        password: None,
        tls: EtcdTls::default(),
        prefix: PREFIX.to_owned(),
        member_name: name.to_owned(),
    };
    EtcdDcs::connect(&settings, 10, retry)
        .await
        .expect("EtcdDcs connects")
}

/// The value and lease of `<PREFIX><key>`, read straight from etcd.
async fn raw_get(etcd: &Etcd, key: &str) -> Option<(String, i64)> {
    let mut c = etcd.client().await.expect("etcd client");
    let r = c
        .get(format!("{PREFIX}{key}"), None)
        .await
        .expect("etcd get");
    r.kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
}

async fn raw_put(etcd: &Etcd, key: &str, value: &str) -> i64 {
    let mut c = etcd.client().await.expect("etcd client");
    let r = c
        .put(format!("{PREFIX}{key}"), value, None)
        .await
        .expect("etcd put");
    r.header().expect("a header").revision()
}

async fn read(dcs: &EtcdDcs) -> Cluster {
    dcs.get_cluster().await.expect("a linearizable read")
}

#[tokio::test]
async fn the_leader_key_is_taken_only_while_absent_and_refreshed_only_while_ours() {
    let etcd = Etcd::start().expect("etcd");
    let a = member(etcd.endpoint(), "a", RETRY).await;
    let b = member(etcd.endpoint(), "b", RETRY).await;

    assert!(a.attempt_to_acquire_leader().await.expect("a races"));
    assert!(
        !b.attempt_to_acquire_leader().await.expect("b races"),
        "b took a key that exists"
    );
    let lease_a = a.refresh_lease().await.expect("a's lease").id;
    assert_eq!(raw_get(&etcd, "leader").await, Some(("a".into(), lease_a)));
    let (held, lease) = a.update_leader().await.expect("a refreshes");
    assert!(held && lease.id == lease_a, "{held} {lease:?}");
    assert!(!b.update_leader().await.expect("b refreshes").0);
    assert_eq!(
        raw_get(&etcd, "leader").await,
        Some(("a".into(), lease_a)),
        "b's refresh touched a's key"
    );

    // Another name in the key: not ours, and left alone.
    raw_put(&etcd, "leader", "c").await;
    assert!(!a.update_leader().await.expect("a refreshes").0);
    assert_eq!(raw_get(&etcd, "leader").await, Some(("c".into(), 0)));

    // Our name on another lease (as when ours was granted again): put back on our lease.
    raw_put(&etcd, "leader", "a").await;
    let (held, lease) = a.update_leader().await.expect("a refreshes");
    assert!(held);
    assert_eq!(raw_get(&etcd, "leader").await, Some(("a".into(), lease.id)));

    // A key that vanished (it expired: someone else may have led since) is not re-created;
    // only the race takes it.
    let mut c = etcd.client().await.expect("etcd client");
    c.delete(format!("{PREFIX}leader"), None)
        .await
        .expect("delete");
    assert!(!a.update_leader().await.expect("a refreshes").0);
    assert_eq!(
        raw_get(&etcd, "leader").await,
        None,
        "the refresh re-created the key"
    );
    assert!(b.attempt_to_acquire_leader().await.expect("b races"));
    let lease_b = b.refresh_lease().await.expect("b's lease").id;
    assert_eq!(raw_get(&etcd, "leader").await, Some(("b".into(), lease_b)));
}

#[tokio::test]
async fn the_leader_key_is_deleted_only_by_its_holder() {
    let etcd = Etcd::start().expect("etcd");
    let a = member(etcd.endpoint(), "a", RETRY).await;
    let b = member(etcd.endpoint(), "b", RETRY).await;
    assert!(a.attempt_to_acquire_leader().await.expect("a races"));

    assert!(!b.delete_leader(Some(16_777_376)).await.expect("b releases"));
    assert_eq!(
        raw_get(&etcd, "leader").await.map(|(v, _)| v).as_deref(),
        Some("a"),
        "b deleted a's key"
    );
    assert_eq!(
        read(&a).await.status.optime,
        None,
        "b published its WAL position as the leader's"
    );
    assert!(a.delete_leader(Some(50_331_744)).await.expect("a releases"));
    assert_eq!(raw_get(&etcd, "leader").await, None);
    assert_eq!(
        read(&a).await.status.optime,
        Some(50_331_744),
        "the last WAL position is published with the release"
    );
    assert!(!a.delete_leader(None).await.expect("a releases again"));
}

#[tokio::test]
async fn a_lease_etcd_dropped_takes_the_leader_key_along_and_writes_get_a_new_one() {
    let etcd = Etcd::start().expect("etcd");
    let a = member(etcd.endpoint(), "a", RETRY).await;
    assert!(a.attempt_to_acquire_leader().await.expect("a races"));
    a.touch_member(r#"{"role":"primary","state":"running"}"#)
        .await
        .expect("member key");
    let old = a.refresh_lease().await.expect("lease").id;
    assert_eq!(raw_get(&etcd, "members/a").await.map(|(_, l)| l), Some(old));

    let mut c = etcd.client().await.expect("etcd client");
    c.lease_revoke(old).await.expect("revoke");
    assert_eq!(raw_get(&etcd, "leader").await, None);

    // The member key is written on a new lease (etcd says "lease not found" to the first try).
    a.touch_member(r#"{"role":"primary","state":"running"}"#)
        .await
        .expect("member key on a new lease");
    let (_, lease) = raw_get(&etcd, "members/a").await.expect("member key");
    assert!(lease != 0 && lease != old, "member key on lease {lease}");
    // The leader learns the key is gone and does not put it back.
    let (held, info) = a.update_leader().await.expect("a refreshes");
    assert!(!held);
    assert_eq!(info.id, lease, "one new lease, used by both");
    assert_eq!(raw_get(&etcd, "leader").await, None);
}

#[tokio::test]
async fn compare_and_swap_writes_lose_on_a_stale_revision() {
    let etcd = Etcd::start().expect("etcd");
    let a = member(etcd.endpoint(), "a", RETRY).await;

    assert!(a.set_config(r#"{"ttl":30}"#, None).await.expect("config"));
    let v1 = read(&a).await.config.expect("config").version;
    assert!(a
        .set_config(r#"{"ttl":20}"#, Some(v1))
        .await
        .expect("config"));
    let v2 = read(&a).await.config.expect("config").version;
    assert!(v2 > v1);
    assert!(
        !a.set_config(r#"{"ttl":10}"#, Some(v1))
            .await
            .expect("config"),
        "a write on a stale revision won"
    );
    let config = read(&a).await.config.expect("config");
    assert_eq!(
        (config.version, &config.value.data["ttl"]),
        (v2, &20.into())
    );

    assert!(a
        .set_failover(r#"{"leader":"a","member":"b"}"#, None)
        .await
        .expect("failover"));
    let f1 = read(&a).await.failover.expect("failover").version;
    assert!(a
        .set_failover(r#"{"leader":"a","member":"c"}"#, Some(f1))
        .await
        .expect("failover"));
    assert!(!a
        .set_failover(r#"{"leader":"a","member":"d"}"#, Some(f1))
        .await
        .expect("failover"));
    let failover = read(&a).await.failover.expect("failover").value;
    assert_eq!(failover.member.as_deref(), Some("c"));

    let s1 = a
        .set_sync(r#"{"leader":"a","sync_standby":null}"#, None)
        .await
        .expect("sync")
        .expect("an unconditional write");
    let s2 = a
        .set_sync(r#"{"leader":"a","sync_standby":"b"}"#, Some(s1))
        .await
        .expect("sync")
        .expect("the current revision wins");
    assert!(s2 > s1);
    assert_eq!(
        a.set_sync(r#"{"leader":"a","sync_standby":"c"}"#, Some(s1))
            .await
            .expect("sync"),
        None
    );
    assert!(!a.delete_sync(Some(s1)).await.expect("delete sync"));
    assert_eq!(read(&a).await.sync.expect("sync").version, s2);
    assert!(a.delete_sync(Some(s2)).await.expect("delete sync"));
    assert_eq!(read(&a).await.sync, None);

    // The initialize race: one winner; then the winner stores the system identifier.
    assert!(a.initialize(true, "").await.expect("initialize"));
    assert!(!a.initialize(true, "").await.expect("initialize"));
    assert!(a
        .initialize(false, "7000000000000000001")
        .await
        .expect("initialize"));
    assert_eq!(
        read(&a).await.initialize.as_deref(),
        Some("7000000000000000001")
    );
}

type View = watch::Receiver<Option<Arc<Cluster>>>;

/// Waits until the view is current and shows the configuration's `ttl` as `ttl`.
async fn follows_to_ttl(
    view: &View,
    health: &watch::Receiver<bool>,
    ttl: u64,
) -> anyhow::Result<()> {
    wait_until(
        "the view to follow",
        Duration::from_secs(20),
        || async move {
            let v = view.borrow().clone();
            Ok(v.and_then(|c| c.config.clone())
                .filter(|c| c.value.data["ttl"] == ttl && *health.borrow())
                .map(|_| ()))
        },
    )
    .await
}

/// Waits until `view` shows what a fresh linearizable read through `reader` shows (revision
/// aside: the view moves only when something under the prefix changes) and returns it.
async fn wait_current(view: &View, reader: &EtcdDcs, what: &str) -> Cluster {
    wait_until(what, Duration::from_secs(30), || async move {
        let fresh = reader.get_cluster().await?;
        let Some(seen) = view.borrow().clone() else {
            anyhow::bail!("no view yet");
        };
        let mut seen = (*seen).clone();
        anyhow::ensure!(
            seen.revision <= fresh.revision,
            "the view is at revision {}, ahead of etcd's {}",
            seen.revision,
            fresh.revision
        );
        seen.revision = fresh.revision;
        anyhow::ensure!(
            seen == fresh,
            "the view differs:\n{seen:?}\nfrom\n{fresh:?}"
        );
        Ok(Some(fresh))
    })
    .await
    .expect(what)
}

async fn etcd_metric(etcd: &Etcd, name: &str) -> f64 {
    metric(&etcd.metrics().await.expect("etcd metrics"), name)
}

/// Waits until etcd has started `n` watch streams in all, none of them slow: the watcher starts
/// its watch just after it publishes the view it read, so a current view does not mean a watch
/// yet.
async fn wait_watches(etcd: &Etcd, n: f64, what: &str) {
    wait_until(what, Duration::from_secs(30), || async move {
        let text = etcd.metrics().await?;
        let (watches, slow) = (metric(&text, WATCHES), metric(&text, SLOW_WATCHERS));
        anyhow::ensure!(watches <= n, "{watches} watches started, more than {n}");
        Ok((watches == n && slow == 0.0).then_some(()))
    })
    .await
    .expect(what)
}

/// For 2 s, etcd starts no watch and serves no read: the watcher has settled and does not spin.
/// (Nothing else calls etcd meanwhile.)
async fn assert_settled(etcd: &Etcd) {
    let text = etcd.metrics().await.expect("etcd metrics");
    let before = (metric(&text, WATCHES), metric(&text, READS));
    assert_holds_for(
        "the watcher to stay settled",
        Duration::from_secs(2),
        || async move {
            let text = etcd.metrics().await?;
            let now = (metric(&text, WATCHES), metric(&text, READS));
            anyhow::ensure!(
                now == before,
                "{} more watches and {} more reads",
                now.0 - before.0,
                now.1 - before.1
            );
            Ok(())
        },
    )
    .await
    .expect("no spinning");
}

/// The watch falls behind while its connection is frozen, etcd gives up on it and compacts
/// past the revision it was at: etcd cancels it with `compact_revision`, and the watcher reads
/// the prefix again and watches from there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reads_again_after_its_revision_was_compacted() {
    let etcd = Etcd::start().expect("etcd");
    let proxy = TcpProxy::start(([127, 0, 0, 1], etcd.client_port()).into())
        .await
        .expect("proxy");
    // A keep-alive timeout far beyond the freeze: the channel must not give up on the frozen
    // connection (that would be the lost-stream case below).
    let watcher = member(proxy.endpoint(), "w", Duration::from_secs(60)).await;
    let reader = member(etcd.endpoint(), "r", RETRY).await;
    let view = watcher.watch_cluster();
    raw_put(&etcd, "config", r#"{"ttl":30}"#).await;
    wait_current(&view, &reader, "the first view").await;
    wait_watches(&etcd, 1.0, "the watch").await;

    // Frozen, the watcher reads nothing: etcd fills the stream's flow-control window, then
    // the watch's buffer, and then counts it as a slow watcher.
    proxy.freeze();
    let big = "x".repeat(64 * 1024);
    let mut puts = 0;
    while etcd_metric(&etcd, SLOW_WATCHERS).await < 1.0 {
        assert!(
            puts < 2_000,
            "the frozen watcher was not a slow watcher after {puts} puts of 64 kB"
        );
        for _ in 0..10 {
            raw_put(&etcd, "flood", &big).await;
        }
        puts += 10;
    }
    // Changes it has not seen, then everything up to them compacted.
    raw_put(
        &etcd,
        "members/m1",
        r#"{"role":"replica","state":"running"}"#,
    )
    .await;
    let last = raw_put(&etcd, "config", r#"{"ttl":20}"#).await;
    let mut c = etcd.client().await.expect("etcd client");
    c.compact(last, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    proxy.thaw();

    let seen = wait_current(&view, &reader, "the view after the compaction").await;
    assert!(seen.members.iter().any(|m| m.name == "m1"), "{seen:?}");
    assert_eq!(seen.config.expect("config").value.data["ttl"], 20);
    assert_eq!(
        proxy.accepted(),
        1,
        "the watcher's connection was lost: this is not the compaction case"
    );
    wait_watches(&etcd, 2.0, "one new watch after the compaction").await;
    assert_settled(&etcd).await;
    eprintln!("the watcher fell behind after {puts} puts of 64 kB");
}

/// Its connection closed under it, the watcher reads the prefix again, through a new
/// connection, and watches from there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reads_again_after_its_connection_was_cut() {
    let etcd = Etcd::start().expect("etcd");
    let proxy = TcpProxy::start(([127, 0, 0, 1], etcd.client_port()).into())
        .await
        .expect("proxy");
    let watcher = member(proxy.endpoint(), "w", RETRY).await;
    let reader = member(etcd.endpoint(), "r", RETRY).await;
    let view = watcher.watch_cluster();
    raw_put(&etcd, "config", r#"{"ttl":30}"#).await;
    wait_current(&view, &reader, "the first view").await;
    wait_watches(&etcd, 1.0, "the watch").await;

    proxy.cut();
    raw_put(&etcd, "config", r#"{"ttl":20}"#).await;
    let seen = wait_current(&view, &reader, "the view after the cut").await;
    assert_eq!(seen.config.expect("config").value.data["ttl"], 20);
    wait_watches(&etcd, 2.0, "one new watch after the cut").await;
    assert_settled(&etcd).await;
    assert_eq!(proxy.accepted(), 2, "one new connection");
}

/// etcd frozen (SIGSTOP) past the channel's keep-alive: the watcher says its view is stale,
/// and after SIGCONT reads the prefix again and follows the changes made since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reads_again_after_etcd_was_frozen() {
    let etcd = Etcd::start().expect("etcd");
    let watcher = member(etcd.endpoint(), "w", Duration::from_secs(2)).await;
    let reader = member(etcd.endpoint(), "r", RETRY).await;
    let (view, health) = watcher.watch_with_health();
    raw_put(&etcd, "config", r#"{"ttl":30}"#).await;
    wait_current(&view, &reader, "the first view").await;
    let health = &health;
    wait_until(
        "the watcher to report its view current",
        Duration::from_secs(20),
        || async move { Ok(health.borrow().then_some(())) },
    )
    .await
    .expect("healthy once watching");

    etcd.pause().expect("SIGSTOP etcd");
    let stale = wait_until(
        "the watcher to report its view stale",
        Duration::from_secs(20),
        || async move { Ok((!*health.borrow()).then_some(())) },
    )
    .await;
    etcd.resume().expect("SIGCONT etcd");
    stale.expect("the frozen etcd is noticed");

    raw_put(&etcd, "config", r#"{"ttl":20}"#).await;
    let seen = wait_current(&view, &reader, "the view after the freeze").await;
    assert_eq!(seen.config.expect("config").value.data["ttl"], 20);
    wait_until(
        "the watcher to report its view current",
        Duration::from_secs(20),
        || async move { Ok(health.borrow().then_some(())) },
    )
    .await
    .expect("healthy again");
    assert_settled(&etcd).await;
}

/// etcd killed and started again on the same data: the watcher retries its read (without
/// spinning) until etcd answers, then follows the changes made since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reads_again_after_etcd_restarted() {
    let mut etcd = Etcd::start().expect("etcd");
    let watcher = member(etcd.endpoint(), "w", RETRY).await;
    let reader = member(etcd.endpoint(), "r", RETRY).await;
    let (view, health) = watcher.watch_with_health();
    raw_put(&etcd, "config", r#"{"ttl":30}"#).await;
    wait_current(&view, &reader, "the first view").await;

    etcd.kill();
    let health = &health;
    wait_until(
        "the watcher to report its view stale",
        Duration::from_secs(20),
        || async move { Ok((!*health.borrow()).then_some(())) },
    )
    .await
    .expect("the dead etcd is noticed");
    etcd.restart().expect("etcd restarts");

    raw_put(&etcd, "config", r#"{"ttl":20}"#).await;
    let seen = wait_current(&view, &reader, "the view after the restart").await;
    assert_eq!(seen.config.expect("config").value.data["ttl"], 20);
    assert_settled(&etcd).await;
}

/// Member `name` given every member of `etcd`, in order from member `first` on, with `ttl`
/// 10 s.
async fn member_of(etcd: &EtcdCluster, first: usize, name: &str, retry: Duration) -> EtcdDcs {
    let mut endpoints = etcd.endpoints();
    endpoints.rotate_left(first);
    member_through(endpoints, name, retry).await
}

/// The value and lease of `<PREFIX><key>`, read through the members the test left serving
/// (retrying while etcd elects a new leader).
async fn cluster_get(etcd: &EtcdCluster, key: &str) -> Option<(String, i64)> {
    let key = format!("{PREFIX}{key}");
    wait_until(
        &format!("etcd to read {key}"),
        Duration::from_secs(30),
        || async {
            let mut c = etcd.client().await?;
            let Ok(r) = c.get(key.as_str(), None).await else {
                return Ok(None);
            };
            let kv = r.kvs().first();
            Ok(Some(kv.map(|kv| {
                (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())
            })))
        },
    )
    .await
    .expect("etcd get")
}

async fn cluster_put(etcd: &EtcdCluster, key: &str, value: &str) {
    let key = format!("{PREFIX}{key}");
    wait_until(
        &format!("etcd to take {key}"),
        Duration::from_secs(30),
        || async {
            let mut c = etcd.client().await?;
            Ok(c.put(key.as_str(), value, None).await.ok().map(|_| ()))
        },
    )
    .await
    .expect("etcd put")
}

/// The member a client uses, etcd's raft leader, is killed: its next calls, each within their
/// own `retry_timeout`, go to the next member (waiting out the election of a new raft leader);
/// the leader keeps its key on the same lease, and its watch follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_left_and_the_leader_keeps_its_key() {
    let mut etcd = EtcdCluster::start(3).expect("etcd cluster");
    let first = etcd.leader_index().await.expect("a raft leader");
    // The raft leader dies: the calls wait out an election (1-2 s, longer on a loaded machine).
    let a = member_of(&etcd, first, "a", ELECTION_RETRY).await;
    let (view, health) = a.watch_with_health();
    assert!(a.attempt_to_acquire_leader().await.expect("a races"));
    let lease = a.refresh_lease().await.expect("lease").id;
    assert_eq!(
        a.endpoint(),
        etcd.member(first).endpoint(),
        "the first member first"
    );
    wait_until("the watch", Duration::from_secs(20), || async {
        Ok(health.borrow().then_some(()))
    })
    .await
    .expect("watching");

    etcd.member_mut(first).kill();
    let (held, info) = a
        .update_leader()
        .await
        .expect("update_leader on another member");
    assert!(held, "the leader lost its key");
    assert_eq!(
        info.id, lease,
        "the same lease, kept alive on another member"
    );
    assert_ne!(a.endpoint(), etcd.member(first).endpoint());
    assert_eq!(
        cluster_get(&etcd, "leader").await,
        Some(("a".into(), lease))
    );
    a.touch_member(r#"{"role":"primary"}"#)
        .await
        .expect("writes go on");

    cluster_put(&etcd, "config", r#"{"ttl":20}"#).await;
    let view = &view;
    wait_until(
        "the watch to follow",
        Duration::from_secs(20),
        || async move {
            let v = view.borrow().clone();
            Ok(v.and_then(|c| c.config.clone())
                .filter(|c| c.value.data["ttl"] == 20)
                .map(|_| ()))
        },
    )
    .await
    .expect("the watch reopened on a live member");
}

/// The member a client uses, etcd's raft leader, is frozen (SIGSTOP: connections accepted,
/// nothing answered): the lease keep-alive, the leader's transaction, reads and writes each
/// answer within `retry_timeout` from another member (once the others elected a new raft
/// leader), and the lease never lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_is_left_within_retry_timeout() {
    let etcd = EtcdCluster::start(3).expect("etcd cluster");
    let first = etcd.leader_index().await.expect("a raft leader");
    let a = member_of(&etcd, first, "a", ELECTION_RETRY).await;
    assert!(a.attempt_to_acquire_leader().await.expect("a races"));
    let lease = a.refresh_lease().await.expect("lease").id;

    etcd.member(first).pause().expect("SIGSTOP the raft leader");
    let result = async {
        let (held, info) = a.update_leader().await?;
        anyhow::ensure!(held, "the leader lost its key");
        anyhow::ensure!(info.id == lease, "a new lease {} (was {lease})", info.id);
        a.get_cluster().await?;
        a.touch_member(r#"{"role":"primary"}"#).await?;
        // Several rounds: every one lands on a live member, none waits for the frozen one.
        for _ in 0..5 {
            anyhow::ensure!(a.update_leader().await?.0, "the leader lost its key");
        }
        anyhow::ensure!(
            a.endpoint() != etcd.member(first).endpoint(),
            "still on the frozen member"
        );
        Ok(())
    }
    .await;
    let key = cluster_get(&etcd, "leader").await;
    etcd.member(first).resume().expect("SIGCONT");
    result.expect("calls answered by another member");
    assert_eq!(key, Some(("a".into(), lease)));
}

/// A client that only watches (the router) leaves a frozen member by itself: its watch stream
/// falls silent, the progress requests it sends go unanswered, and it reopens on the next
/// member, where it sees the changes made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_leaves_a_frozen_member_by_itself() {
    let etcd = EtcdCluster::start(3).expect("etcd cluster");
    let watcher = member_of(&etcd, 0, "w", RETRY).await;
    let (view, health) = watcher.watch_with_health();
    cluster_put(&etcd, "config", r#"{"ttl":30}"#).await;
    let (view, health) = (&view, &health);
    wait_until("the first view", Duration::from_secs(20), || async move {
        Ok((health.borrow().to_owned() && view.borrow().is_some()).then_some(()))
    })
    .await
    .expect("watching");
    // A healthy member answers the watch's progress requests: the watch stays on it.
    let (w, e0) = (&watcher, etcd.member(0).endpoint());
    let e0 = &e0;
    assert_holds_for("the watch to stay on e0", RETRY * 2, || async move {
        anyhow::ensure!(&w.endpoint() == e0, "the watch moved to {}", w.endpoint());
        anyhow::ensure!(*health.borrow(), "the view is not current");
        Ok(())
    })
    .await
    .expect("a healthy member is kept");

    etcd.member(0).pause().expect("SIGSTOP member 0");
    cluster_put(&etcd, "config", r#"{"ttl":20}"#).await;
    let followed = follows_to_ttl(view, health, 20).await;
    let moved_to = watcher.endpoint();
    etcd.member(0).resume().expect("SIGCONT member 0");
    followed.expect("the watch left the frozen member");
    assert_ne!(moved_to, etcd.member(0).endpoint());
}

/// The agent's client (`without_watch_probes`) sends its watch no progress requests: a frozen
/// member is left by the call the agent makes every cycle (the lease keep-alive), and the watch
/// follows it to the next member, where it sees the changes made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_probes_the_watch_follows_the_keep_alive_off_a_frozen_member() {
    let etcd = EtcdCluster::start(3).expect("etcd cluster");
    let a = member_of(&etcd, 0, "a", ELECTION_RETRY)
        .await
        .without_watch_probes();
    let (view, health) = a.watch_with_health();
    a.refresh_lease().await.expect("lease");
    cluster_put(&etcd, "config", r#"{"ttl":30}"#).await;
    let (view, health) = (&view, &health);
    wait_until("the first view", Duration::from_secs(20), || async move {
        Ok((*health.borrow() && view.borrow().is_some()).then_some(()))
    })
    .await
    .expect("watching");

    etcd.member(0).pause().expect("SIGSTOP member 0");
    cluster_put(&etcd, "config", r#"{"ttl":20}"#).await;
    // The keep-alive, once past the window in which the last answer is reused (1 s at ttl
    // 10), finds member 0 silent and moves on.
    let a = &a;
    wait_until(
        "the last keep-alive to be older than the reuse window",
        Duration::from_secs(10),
        || async move {
            let left = a
                .lease_deadline()
                .await
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            Ok(left.filter(|l| *l < Duration::from_secs(9)).map(|_| ()))
        },
    )
    .await
    .expect("the keep-alive ages");
    let kept = a.refresh_lease().await;
    let followed = follows_to_ttl(view, health, 20).await;
    let moved_to = a.endpoint();
    etcd.member(0).resume().expect("SIGCONT member 0");
    kept.expect("the lease kept alive on another member");
    followed.expect("the watch followed the keep-alive");
    assert_ne!(moved_to, etcd.member(0).endpoint());
}
