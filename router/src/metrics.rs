//! `patrol_router_*` metrics (prometheus crate), registered on a registry of our own (no globals).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub sessions_current: IntGaugeVec,
    pub sessions_total: IntCounterVec,
    pub bytes_total: IntCounterVec,
    pub rejected_total: IntCounterVec,
    pub cancel_requests_total: IntCounterVec,
    pub sessions_killed_total: IntCounterVec,
    pub switch_latency_seconds: Histogram,
    pub session_kill_seconds: HistogramVec,
    pub pool_member: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_sync_state: IntGaugeVec,
    pub leader_changes_total: IntCounter,
    pub watch_reconnects_total: IntCounter,
    pub dcs_up: IntGauge,
    pub has_writer: IntGauge,
    pub standby_cluster: IntGauge,
    pub redirected_sessions: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Metrics {
            sessions_current: must(IntGaugeVec::new(
                Opts::new("patrol_router_sessions_current", "Open client sessions"),
                &["port", "backend"],
            )),
            sessions_total: must(IntCounterVec::new(
                Opts::new("patrol_router_sessions_total", "Client sessions routed"),
                &["port", "backend"],
            )),
            bytes_total: must(IntCounterVec::new(
                Opts::new("patrol_router_bytes_total", "Bytes relayed"),
                &["port", "direction"],
            )),
            rejected_total: must(IntCounterVec::new(
                Opts::new(
                    "patrol_router_connections_rejected_total",
                    "Connections answered with an error or closed",
                ),
                &["port", "reason"],
            )),
            cancel_requests_total: must(IntCounterVec::new(
                Opts::new(
                    "patrol_router_cancel_requests_total",
                    "Cancel requests forwarded: to the session's backend (its key was seen), or \
                     to every backend that may hold it",
                ),
                &["port", "target"],
            )),
            sessions_killed_total: must(IntCounterVec::new(
                Opts::new(
                    "patrol_router_sessions_killed_total",
                    "Sessions closed because their backend left the pool",
                ),
                &["port"],
            )),
            switch_latency_seconds: must(Histogram::with_opts(
                HistogramOpts::new(
                    "patrol_router_switch_latency_seconds",
                    "From the etcd event to the routing table naming the new writer",
                )
                .buckets(latency_buckets.clone()),
            )),
            session_kill_seconds: must(HistogramVec::new(
                HistogramOpts::new(
                    "patrol_router_session_kill_seconds",
                    "From the event to the sessions of a removed backend being cancelled",
                )
                .buckets(latency_buckets),
                &["port"],
            )),
            pool_member: must(IntGaugeVec::new(
                Opts::new(
                    "patrol_router_pool_member",
                    "1 when the member is in the pool (write or read)",
                ),
                &["pool", "member"],
            )),
            replica_lag_bytes: must(IntGaugeVec::new(
                Opts::new(
                    "patrol_router_replica_lag_bytes",
                    "Replay lag behind the leader",
                ),
                &["member"],
            )),
            replica_sync_state: must(IntGaugeVec::new(
                Opts::new(
                    "patrol_router_replica_sync_state",
                    "1 for the replica's state in the leader's sync key (sync, quorum or async), \
                     0 for the others; all 0 for the leader",
                ),
                &["member", "state"],
            )),
            leader_changes_total: must(IntCounter::new(
                "patrol_router_leader_changes_total",
                "Changes of the write backend",
            )),
            watch_reconnects_total: must(IntCounter::new(
                "patrol_router_watch_reconnects_total",
                "Times the etcd watch was lost and re-established",
            )),
            dcs_up: must(IntGauge::new(
                "patrol_router_dcs_up",
                "1 while the etcd view is current",
            )),
            has_writer: must(IntGauge::new(
                "patrol_router_write_backend_up",
                "1 while the write port has a backend",
            )),
            standby_cluster: must(IntGauge::new(
                "patrol_router_standby_cluster",
                "1 while the cluster is a standby cluster (no write backend by design)",
            )),
            redirected_sessions: must(IntGaugeVec::new(
                Opts::new(
                    "patrol_router_redirected_sessions",
                    "Live sessions of clients on this host routed at connect time \
                     (redirect_local), as of the last sweep",
                ),
                &["port", "backend"],
            )),
            registry,
        };
        for c in [
            Box::new(m.sessions_current.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.sessions_total.clone()),
            Box::new(m.bytes_total.clone()),
            Box::new(m.rejected_total.clone()),
            Box::new(m.cancel_requests_total.clone()),
            Box::new(m.sessions_killed_total.clone()),
            Box::new(m.switch_latency_seconds.clone()),
            Box::new(m.session_kill_seconds.clone()),
            Box::new(m.pool_member.clone()),
            Box::new(m.replica_lag_bytes.clone()),
            Box::new(m.replica_sync_state.clone()),
            Box::new(m.leader_changes_total.clone()),
            Box::new(m.watch_reconnects_total.clone()),
            Box::new(m.dcs_up.clone()),
            Box::new(m.has_writer.clone()),
            Box::new(m.standby_cluster.clone()),
            Box::new(m.redirected_sessions.clone()),
        ] {
            must(m.registry.register(c));
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
