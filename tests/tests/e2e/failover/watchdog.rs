//! The watchdog (rows W-1..W-4) with Patroni's `driver: testing` on a FIFO the test reads: a
//! frozen leader's watchdog fires before its leader key expires, so its host would be reset
//! before a replica can take over (the window `frozen.rs` leaves open without one); and the
//! leader's watchdog follows the ttl, maintenance mode and a clean stop.

use std::time::{Duration, Instant};

use patrol_tests::{Cluster, Signal};

use super::wait_new_leader;
use crate::support::http::call;
use crate::support::watchdog::{Event, WatchdogFifo};
use crate::support::workload::LeaderWatch;
use crate::support::{in_recovery, start_all, HEALTHY_TIMEOUT, TTL};

/// The harness's ttl (10 s) minus Patroni's default safety margin (5 s).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A FIFO watchdog per node, `mode: required`.
fn with_watchdogs(c: &mut Cluster) -> Vec<WatchdogFifo> {
    (0..c.len())
        .map(|i| {
            let fifo = WatchdogFifo::create(&c.node_dir(i).join("watchdog.fifo")).expect("fifo");
            let section = fifo.config("required");
            c.set_config_override(i, move |yaml| yaml.push_str(&section));
            fifo
        })
        .collect()
}

/// Waits until the watchdog of a node was armed with the expected timeout and fed since.
async fn wait_armed(fifo: &WatchdogFifo, since: Instant, timeout: u64) -> Instant {
    let set = fifo
        .wait_for(
            &format!("the watchdog armed with a {timeout} s timeout"),
            since,
            HEALTHY_TIMEOUT,
            |e| *e == Event::Timeout(timeout as i64),
        )
        .await
        .expect("armed");
    fifo.wait_for("a keepalive", set, HEALTHY_TIMEOUT, |e| *e == Event::Ping)
        .await
        .expect("fed")
}

/// Rows W-2, W-3 and D-1: the leader's agent is frozen (SIGSTOP). Its watchdog, armed with
/// `ttl - safety_margin` and fed after every refresh of the key, sees its last keepalive
/// right after the last refresh, so it fires (last keepalive + timeout) before the key
/// expires (last refresh + ttl): the host would have been reset before a replica could take
/// over. The replica's watchdog is never armed until it leads; once woken, the old leader
/// demotes and disarms it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_agent_is_reset_by_the_watchdog_before_its_key_expires() {
    let mut c = Cluster::new(2).expect("cluster");
    let fifos = with_watchdogs(&mut c);
    let t0 = Instant::now();
    let old = start_all(&mut c).await;
    let replica = 1 - old;
    wait_armed(&fifos[old], t0, 5).await;
    assert!(
        fifos[replica].events().is_empty(),
        "a replica never arms its watchdog:\n{}",
        fifos[replica].describe(t0)
    );

    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    // Feed a few rounds, then freeze.
    let fed = fifos[old].last_ping().expect("fed");
    fifos[old]
        .wait_for("more keepalives", fed, HEALTHY_TIMEOUT, |e| {
            *e == Event::Ping
        })
        .await
        .expect("fed every cycle");
    let stop_at = Instant::now();
    c.stop_node(old, Signal::SIGSTOP).expect("SIGSTOP agent");
    let new = wait_new_leader(&c, old, TTL + Duration::from_secs(15))
        .await
        .expect("a replica takes over while the leader's agent is frozen");
    assert_eq!(new, replica);
    let changes = watch.stop();
    let key_gone = changes
        .iter()
        .find(|ch| ch.at > stop_at && ch.holder.as_deref() != Some(c.name(old)))
        .expect("the leader key left the frozen node")
        .at;

    let events = fifos[old].events();
    let last_ping = fifos[old].last_ping().expect("fed");
    // SIGSTOP can land while a keepalive is being written, never later.
    assert!(
        last_ping <= stop_at + Duration::from_millis(500),
        "keepalive from a frozen agent:\n{}",
        fifos[old].describe(t0)
    );
    assert!(
        !events
            .iter()
            .any(|(at, e)| *at > last_ping && *e == Event::MagicClose),
        "the frozen agent cannot have disarmed its watchdog:\n{}",
        fifos[old].describe(t0)
    );
    let fires_at = last_ping + TIMEOUT;
    eprintln!(
        "SIGSTOP at {:+.3}s; last keepalive at {:+.3}s; the watchdog fires at {:+.3}s; the key \
         left the frozen node at {:+.3}s ({:.3}s later)",
        (stop_at - t0).as_secs_f64(),
        (last_ping - t0).as_secs_f64(),
        (fires_at - t0).as_secs_f64(),
        (key_gone - t0).as_secs_f64(),
        key_gone.saturating_duration_since(fires_at).as_secs_f64()
    );
    assert!(
        fires_at < key_gone,
        "the watchdog would fire at {:+.3}s, after the key expired at {:+.3}s:\n{}",
        (fires_at - t0).as_secs_f64(),
        (key_gone - t0).as_secs_f64(),
        fifos[old].describe(t0)
    );
    // The new leader armed its own watchdog.
    wait_armed(&fifos[new], stop_at, 5).await;

    // Woken, the old leader demotes and disarms cleanly.
    let cont_at = Instant::now();
    c.stop_node(old, Signal::SIGCONT).expect("SIGCONT agent");
    fifos[old]
        .wait_for("the magic close", cont_at, Duration::from_secs(20), |e| {
            *e == Event::MagicClose
        })
        .await
        .expect("the demoted node disarms its watchdog");
    let cl = &c;
    patrol_tests::wait_until(
        &format!("{} to be in recovery", c.name(old)),
        Duration::from_secs(30),
        || async move { Ok(in_recovery(cl, old).await.unwrap_or(false).then_some(())) },
    )
    .await
    .expect("the old leader demotes after SIGCONT");
}

/// Rows W-2 and W-3: a new ttl reaches the armed watchdog at the next keepalive; maintenance
/// mode disarms it and resuming arms it again; a clean stop (SIGTERM) disarms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_follows_ttl_pause_and_a_clean_stop() {
    let mut c = Cluster::new(1).expect("cluster");
    let fifos = with_watchdogs(&mut c);
    let fifo = &fifos[0];
    let t0 = Instant::now();
    start_all(&mut c).await;
    wait_armed(fifo, t0, 5).await;
    let port = c.api_port(0);

    let at = Instant::now();
    let r = call(port, "PATCH", "/config", Some(r#"{"ttl":20}"#), &[]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    wait_armed(fifo, at, 15).await;

    let at = Instant::now();
    let r = call(port, "PATCH", "/config", Some(r#"{"pause":true}"#), &[]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let closed = fifo
        .wait_for(
            "the magic close in maintenance mode",
            at,
            Duration::from_secs(20),
            |e| *e == Event::MagicClose,
        )
        .await
        .expect("pause disarms");
    // Paused: no keepalive, no arming, for a few cycles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !fifo
            .events_since(closed)
            .iter()
            .any(|(_, e)| matches!(e, Event::Ping | Event::Timeout(_))),
        "armed or fed in maintenance mode:\n{}",
        fifo.describe(t0)
    );

    let at = Instant::now();
    let r = call(port, "PATCH", "/config", Some(r#"{"pause":false}"#), &[]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    wait_armed(fifo, at, 15).await;

    let at = Instant::now();
    c.stop_node(0, Signal::SIGTERM).expect("SIGTERM agent");
    c.wait_node_exit(0, Duration::from_secs(60))
        .await
        .expect("the agent stops");
    let ev = fifo.events_since(at);
    assert!(
        ev.iter().any(|(_, e)| *e == Event::MagicClose),
        "a clean stop disarms the watchdog:\n{}",
        fifo.describe(t0)
    );
}
