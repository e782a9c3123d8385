//! The control side: the etcd view (snapshot + watch, re-read after a lost stream), live probes
//! of every member's REST API, the loop that rebuilds the routing table, swaps it, and cuts
//! the sessions of backends that left their pool, and the sweeps that cut redirected ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use patrol_dcs::Cluster;
use tokio::sync::watch;

use crate::kernel::redirect;
use crate::state::Shared;
use crate::table::{self, Port, Probe, Table};

/// Seconds since the Unix epoch of a `YYYY-MM-DD HH:MM:SS[.frac][+HH:MM|-HH:MM|Z]` timestamp
/// (how Patroni and the agent write `xlog.replayed_timestamp`).
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(|b| b.is_ascii_digit()).count();
        frac = format!("0.{}", &r[..n]).parse().ok()?;
        rest = &r[n..];
    }
    let offset = match rest.as_bytes().first() {
        None | Some(b'Z') => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let t: Vec<&str> = rest[1..].split(':').collect();
            let oh: i64 = t.first()?.parse().ok()?;
            let om: i64 = t.get(1).map_or(Some(0), |m| m.parse().ok())?;
            let o = oh * 3600 + om * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs as f64 + frac)
}

/// Reads a member's `GET /patroni` answer.
pub fn probe_from_status(body: &serde_json::Value, at: Instant) -> Probe {
    let s = patrol_dcs::NodeStatus::from_json(body);
    // Replay delay: how old the last replayed transaction is, while replay is behind what was
    // received (a replica that replayed everything is not late however old its last commit).
    let replay_delay_seconds = if !s.primary && s.received > s.replayed {
        s.replayed_timestamp
            .as_deref()
            .and_then(parse_timestamp)
            .map(|ts| {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                (now - ts).max(0.0)
            })
            .unwrap_or(0.0)
    } else {
        0.0
    };
    Probe {
        at,
        reachable: true,
        refused: false,
        primary: s.primary,
        running: s.running,
        wal_position: s.wal_position,
        replayed: s.replayed,
        streaming: s.streaming,
        timeline: s.timeline,
        replay_delay_seconds,
        failures: 0,
        failsafe_active: s.failsafe_active,
    }
}

/// Probes every member's `GET /patroni`, one task per member, so a member that does not answer
/// (a frozen host: each probe waits the whole probe timeout) never delays the others. Members
/// are probed every `probe_interval`; the lock holder that is not confirmed primary yet
/// (promoting) every 20 ms, and at once on any etcd change while it is in that state.
pub async fn run_probes(
    shared: Arc<Shared>,
    mut cluster_rx: watch::Receiver<Option<Arc<Cluster>>>,
) {
    let Ok(client) = reqwest::Client::builder()
        .timeout(shared.cfg.probe_timeout)
        .pool_max_idle_per_host(2)
        .build()
    else {
        tracing::error!("cannot build the HTTP client for probes");
        return;
    };
    let mut tasks: BTreeMap<String, (String, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    loop {
        let cluster = cluster_rx.borrow_and_update().clone();
        if let Some(c) = cluster {
            let wanted: BTreeMap<&str, &str> = c
                .members
                .iter()
                .filter(|m| !m.data.api_url.is_empty())
                .map(|m| (m.name.as_str(), m.data.api_url.as_str()))
                .collect();
            // The writer stays probed while it is the writer even when its member key is gone
            // (its lease expired while it was cut off from etcd in failsafe mode: the table
            // keeps it only on a fresh probe saying its agent holds it).
            let writer = shared.table.load().writer.as_ref().map(|w| w.name.clone());
            let is_writer = |name: &str| writer.as_deref() == Some(name);
            tasks.retain(|name, (url, task)| {
                let keep = wanted.get(name.as_str()) == Some(&url.as_str())
                    || (is_writer(name) && !wanted.contains_key(name.as_str()));
                if !keep {
                    task.abort();
                }
                keep
            });
            for (name, url) in &wanted {
                if !tasks.contains_key(*name) {
                    let task = tokio::spawn(probe_member(
                        shared.clone(),
                        client.clone(),
                        name.to_string(),
                        url.to_string(),
                        cluster_rx.clone(),
                    ));
                    tasks.insert(name.to_string(), (url.to_string(), task));
                }
            }
            let names: Vec<String> = c.members.iter().map(|m| m.name.clone()).collect();
            shared
                .probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| names.contains(k) || is_writer(k));
        }
        if cluster_rx.changed().await.is_err() {
            for (_, (_, task)) in tasks {
                task.abort();
            }
            return;
        }
    }
}

/// Resolves the host of the member's `conn_url` when it is a name (each probe round, so a
/// changed DNS record is followed); a failed lookup keeps the last address.
async fn resolve_conn_host(shared: &Shared, name: &str, cluster: Option<&Cluster>) {
    let Some((host, port)) = cluster
        .and_then(|c| c.member(name))
        .and_then(|m| patrol_dcs::parse_conn_url(&m.data.conn_url))
    else {
        return;
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return;
    }
    let lookup = tokio::net::lookup_host(format!("{host}:{port}"));
    let found = tokio::time::timeout(shared.cfg.probe_timeout, lookup).await;
    match found {
        Ok(Ok(addrs)) => {
            // IPv4 first when a name has both (PostgreSQL often listens on IPv4 only).
            let addrs: Vec<std::net::SocketAddr> = addrs.collect();
            let first = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
            if let Some(a) = first {
                let mut g = shared.resolved.lock().unwrap_or_else(|p| p.into_inner());
                if g.insert(host, a.ip()) != Some(a.ip()) {
                    shared.dirty.notify_one();
                }
            }
        }
        Ok(Err(e)) => tracing::debug!("{name}: cannot resolve {host}: {e}"),
        Err(_) => tracing::debug!("{name}: resolving {host} timed out"),
    }
}

/// Whether `name` holds the leader key in `cluster` but is not the table's writer yet (a
/// standby cluster's leader never becomes one).
fn unconfirmed_leader(shared: &Shared, cluster: Option<&Cluster>, name: &str) -> bool {
    let holds = cluster
        .filter(|c| !table::is_standby_cluster(c))
        .and_then(|c| c.leader.as_ref())
        .is_some_and(|l| l.name == name);
    holds && shared.table.load().writer.as_ref().map(|w| w.name.as_str()) != Some(name)
}

async fn probe_member(
    shared: Arc<Shared>,
    client: reqwest::Client,
    name: String,
    url: String,
    mut cluster_rx: watch::Receiver<Option<Arc<Cluster>>>,
) {
    loop {
        let at = Instant::now();
        let cluster = cluster_rx.borrow().clone();
        resolve_conn_host(&shared, &name, cluster.as_deref()).await;
        let r = async {
            client
                .get(&url)
                .send()
                .await?
                .json::<serde_json::Value>()
                .await
        }
        .await;
        let mut p = match r {
            Ok(body) => probe_from_status(&body, at),
            Err(e) => Probe {
                at,
                reachable: false,
                // Nothing listens on the agent's port (its process is gone), as opposed to no
                // answer in time (a slow or frozen host).
                refused: e.is_connect() && !e.is_timeout(),
                primary: false,
                running: false,
                wal_position: 0,
                replayed: 0,
                streaming: false,
                timeline: 0,
                replay_delay_seconds: 0.0,
                failures: 1,
                failsafe_active: false,
            },
        };
        let changed = {
            let mut g = shared.probes.lock().unwrap_or_else(|p| p.into_inner());
            if !p.reachable {
                p.failures = g.get(&name).map(|o| o.failures + 1).unwrap_or(1);
            }
            // Only a different reading needs a new table (the control loop also rebuilds every
            // probe interval, which ages readings out).
            let changed = g.get(&name).is_none_or(|o| {
                Probe {
                    at: p.at,
                    ..o.clone()
                } != p
            });
            g.insert(name.clone(), p);
            changed
        };
        if changed {
            shared.dirty.notify_one();
        }
        let fast = unconfirmed_leader(&shared, cluster_rx.borrow_and_update().as_deref(), &name);
        let next = at
            + if fast {
                Duration::from_millis(20)
            } else {
                shared.cfg.probe_interval
            };
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => break,
                r = cluster_rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let c = cluster_rx.borrow_and_update().clone();
                    if unconfirmed_leader(&shared, c.as_deref(), &name) {
                        break;
                    }
                }
            }
        }
    }
}

/// Reads the cluster prefix every half probe interval: a frozen or partitioned etcd leaves the
/// watch stream open but silent (the gRPC keep-alive notices only after seconds), so without
/// this the view would be called current while it is stale. Sends whether etcd answered within
/// the probe timeout.
pub async fn run_dcs_heartbeat(
    shared: Arc<Shared>,
    dcs: Arc<patrol_dcs::EtcdDcs>,
    tx: watch::Sender<bool>,
) {
    let every = (shared.cfg.probe_interval / 2).max(Duration::from_millis(50));
    let limit = shared.cfg.probe_timeout.max(Duration::from_millis(100));
    loop {
        let started = Instant::now();
        let ok = matches!(
            tokio::time::timeout(limit, dcs.read_cluster()).await,
            Ok(Ok(_))
        );
        if !ok {
            tracing::debug!("etcd did not answer a read within {limit:?}");
        }
        tx.send_if_modified(|v| std::mem::replace(v, ok) != ok);
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

/// Rebuilds the table on every DCS change, probe change and at least every probe interval.
/// The etcd view counts as current while the watch is established and etcd answers the
/// heartbeat reads.
pub async fn run_control(
    shared: Arc<Shared>,
    mut cluster_rx: watch::Receiver<Option<Arc<Cluster>>>,
    mut health_rx: watch::Receiver<bool>,
    mut heartbeat_rx: watch::Receiver<bool>,
) {
    let mut last_event = Instant::now();
    let mut was_healthy = false;
    let mut was_watching = false;
    loop {
        let cluster = cluster_rx.borrow_and_update().clone();
        let watching = *health_rx.borrow_and_update();
        let answering = *heartbeat_rx.borrow_and_update();
        let healthy = watching && answering;
        if was_watching && !watching {
            shared.metrics.watch_reconnects_total.inc();
        }
        if healthy != was_healthy {
            if healthy {
                shared.event("etcd view current (snapshot read, watch established)");
            } else if !watching {
                shared.event("etcd view lost: re-reading until etcd answers");
            } else {
                shared.event(format!(
                    "etcd not answering within {} ms: the view may be stale",
                    shared.cfg.probe_timeout.as_millis()
                ));
            }
        }
        was_healthy = healthy;
        was_watching = watching;
        shared.metrics.dcs_up.set(i64::from(healthy));
        let probes: BTreeMap<String, Probe> = shared
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let resolved = shared
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let prev = shared.table.load_full();
        let next = table::build(
            &shared.cfg,
            cluster.as_deref(),
            healthy,
            &probes,
            &resolved,
            &prev,
            Instant::now(),
        );
        apply(&shared, &prev, next, last_event);
        tokio::select! {
            r = cluster_rx.changed() => { if r.is_err() { return; } last_event = Instant::now(); }
            r = health_rx.changed() => { if r.is_err() { return; } last_event = Instant::now(); }
            r = heartbeat_rx.changed() => { if r.is_err() { return; } last_event = Instant::now(); }
            _ = shared.dirty.notified() => { last_event = Instant::now(); }
            _ = tokio::time::sleep(shared.cfg.probe_interval) => {}
        }
    }
}

/// Cuts the redirected sessions (`redirect_local`) the table no longer allows (the routes
/// themselves are rewritten by [`apply`] before each swap): at once on every table change,
/// again shortly after (for connects that were under way), otherwise every
/// [`redirect::SWEEP`]. Runs for the router's life.
pub async fn run_redirect_sweeps(shared: Arc<Shared>) {
    let mut table_rx = shared.table_tx.subscribe();
    let mut soon = 0;
    loop {
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || redirect_sweep(&s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("redirect_local: {e}"),
            Err(e) => tracing::error!("redirect_local: the sweep failed: {e}"),
        }
        let wait = if soon > 0 {
            soon -= 1;
            Duration::from_millis(25)
        } else {
            redirect::SWEEP
        };
        tokio::select! {
            r = table_rx.changed() => {
                if r.is_err() {
                    return;
                }
                soon = 2;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One sweep of the redirected sessions against the current table.
fn redirect_sweep(shared: &Shared) -> std::io::Result<()> {
    let Some(local) = shared.local.as_ref() else {
        return Ok(());
    };
    let t = shared.table.load_full();
    let destroyed = local.sweep(&shared.cfg, &t, &shared.metrics)?;
    let m = &shared.metrics;
    for (port, n) in destroyed {
        m.sessions_killed_total
            .with_label_values(&[port.as_str()])
            .inc_by(n as u64);
        let event_at = *shared
            .routing_event_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(at) = event_at {
            m.session_kill_seconds
                .with_label_values(&[port.as_str()])
                .observe(at.elapsed().as_secs_f64());
        }
        shared.event(format!(
            "closed {n} redirected {} session(s): their backend left the pool",
            port.as_str()
        ));
    }
    Ok(())
}

/// Swaps the table if routing changed, cuts sessions that lost their backend, records events.
fn apply(shared: &Shared, prev: &Table, next: Table, event_at: Instant) {
    let routing_changed = prev.writer != next.writer
        || prev.readers != next.readers
        || prev.leader != next.leader
        || prev.dcs_healthy != next.dcs_healthy
        || prev.writer_reason != next.writer_reason
        // A replica that stopped answering (or came back) changes who keeps read sessions.
        || prev.members.iter().map(|v| (&v.name, v.alive_replica)).ne(next
            .members
            .iter()
            .map(|v| (&v.name, v.alive_replica)));
    let m = &shared.metrics;
    for v in &next.members {
        m.pool_member
            .with_label_values(&["write", &v.name])
            .set(i64::from(v.in_write_pool));
        m.pool_member
            .with_label_values(&["read", &v.name])
            .set(i64::from(v.in_read_pool));
        if let Some(l) = v.lag_bytes {
            m.replica_lag_bytes
                .with_label_values(&[&v.name])
                .set(i64::try_from(l).unwrap_or(i64::MAX));
        }
        for role in table::SyncRole::ALL {
            m.replica_sync_state
                .with_label_values(&[&v.name, role.as_str()])
                .set(i64::from(v.sync_role == Some(role)));
        }
    }
    m.has_writer.set(i64::from(next.writer.is_some()));
    m.standby_cluster.set(i64::from(next.standby_cluster));
    if let Some(local) = &shared.local {
        if let Err(e) = local.route(&shared.cfg, &next) {
            tracing::error!("redirect_local: {e}");
        }
    }
    let next = Arc::new(next);
    shared.table.store(next.clone());
    if !routing_changed {
        return;
    }
    *shared
        .routing_event_at
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(event_at);
    let _ = shared.table_tx.send(next.generation);

    // Write sessions: only the current writer keeps them.
    let writer = next.writer.as_ref().map(|w| w.name.clone());
    let killed = shared
        .sessions
        .kill_where(Port::Write, |b| Some(b) == writer.as_deref());
    if killed > 0 {
        m.sessions_killed_total
            .with_label_values(&["write"])
            .inc_by(killed as u64);
        m.session_kill_seconds
            .with_label_values(&["write"])
            .observe(event_at.elapsed().as_secs_f64());
        shared.event(format!(
            "closed {killed} write session(s): the write backend is now {}",
            writer.as_deref().unwrap_or("none")
        ));
    }
    // Read sessions: a dead or demoted replica loses them; one that left for lag keeps them
    // unless configured otherwise.
    let killed = shared.sessions.kill_where(Port::Read, |b| {
        next.members
            .iter()
            .any(|v| v.name == b && table::keeps_read(&shared.cfg, v))
    });
    if killed > 0 {
        m.sessions_killed_total
            .with_label_values(&["read"])
            .inc_by(killed as u64);
        m.session_kill_seconds
            .with_label_values(&["read"])
            .observe(event_at.elapsed().as_secs_f64());
        shared.event(format!(
            "closed {killed} read session(s) of replicas that left"
        ));
    }

    if prev.writer != next.writer {
        match &next.writer {
            Some(w) => {
                m.leader_changes_total.inc();
                m.switch_latency_seconds
                    .observe(event_at.elapsed().as_secs_f64());
                *shared
                    .leader_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((w.name.clone(), SystemTime::now()));
                shared.event(format!(
                    "write port -> {} ({}), {:.1} ms after the event",
                    w.name,
                    w.addr,
                    event_at.elapsed().as_secs_f64() * 1000.0
                ));
            }
            None => shared.event(format!("write port has no backend: {}", next.writer_reason)),
        }
    }
    for v in &next.members {
        let before = prev.members.iter().find(|p| p.name == v.name);
        let was = before.is_some_and(|p| p.in_read_pool);
        if v.in_read_pool && !was {
            shared.event(format!("read pool += {}", v.name));
        } else if !v.in_read_pool && was {
            shared.event(format!("read pool -= {} ({})", v.name, v.reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_patroni_writes_them() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+00:00"), Some(0.0));
        assert_eq!(
            parse_timestamp("2024-03-01 12:34:56.5+00:00"),
            Some(1_709_296_496.5)
        );
        assert_eq!(
            parse_timestamp("2024-03-01 14:34:56.500000+02:00"),
            Some(1_709_296_496.5)
        );
        assert_eq!(
            parse_timestamp("2024-03-01T12:34:56Z"),
            Some(1_709_296_496.0)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn replay_delay_counts_only_while_replay_is_behind() {
        let now = Instant::now();
        let body = |received: u64, replayed: u64| {
            serde_json::json!({
                "state": "running", "role": "replica", "replication_state": "streaming",
                "xlog": {"received_location": received, "replayed_location": replayed,
                         "replayed_timestamp": "2000-01-01 00:00:00.000000+00:00", "paused": false},
                "timeline": 1,
            })
        };
        let p = probe_from_status(&body(100, 100), now);
        assert_eq!(p.replay_delay_seconds, 0.0);
        assert!(!p.primary && p.streaming && p.running);
        let p = probe_from_status(&body(200, 100), now);
        assert!(p.replay_delay_seconds > 365.0 * 86_400.0, "{p:?}");
    }
}
