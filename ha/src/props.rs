//! Property tests of `decide`: for any DCS content (well-formed or not), any local PostgreSQL
//! state and any peer answers, it never panics and the decision table's promises hold (see
//! docs/ha-decision-table.md; the table's rows are checked one by one in `tests.rs`).

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use patrol_dcs::{Cluster, ClusterConfig, Kv};

use crate::*;

const ME: &str = "pg0";
const SYSID: &str = "7277694203142172922";

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["pg0", "pg1", "pg2"]).prop_map(String::from),
        1 => "[a-z0-9\n ]{0,6}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..1 << 40).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, 3, 10, 30, 86_400, i64::MAX, -1]).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(json!(1e300)),
    ]
}

/// A scalar as it may turn up anywhere: well-typed or not.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "[a-z0-9 :/.]{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["on", "off", "true", "quorum", "30", "-1", ""])
            .prop_map(|s| Value::String(s.into())),
    ]
}

fn config() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "ttl",
        "loop_wait",
        "retry_timeout",
        "pause",
        "maximum_lag_on_failover",
        "primary_start_timeout",
        "check_timeline",
        "max_timelines_history",
        "synchronous_mode",
    ]);
    // Mostly values of the right type and range (so that the configuration is in effect and
    // `pause` and the rest matter), sometimes anything.
    let value = prop_oneof![
        3 => (0i64..100).prop_map(Value::from),
        3 => any::<bool>().prop_map(Value::Bool),
        1 => scalar(),
    ];
    let pg = (scalar(), scalar()).prop_map(|(s, r)| json!({"use_slots": s, "use_pg_rewind": r}));
    (
        prop::collection::vec((keys, value), 0..6),
        prop::option::of(pg),
        0..8u8,
    )
        .prop_map(|(kv, pg, garbage)| {
            if garbage == 0 {
                return "not json".into();
            }
            let mut o: serde_json::Map<String, Value> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(pg) = pg {
                o.insert("postgresql".into(), pg);
            }
            Value::Object(o).to_string()
        })
}

fn member() -> impl Strategy<Value = String> {
    let role = prop::sample::select(vec!["primary", "replica", "master", "demoted", "x"]);
    let state = prop::sample::select(vec!["running", "stopped", "starting", ""]);
    let conn = prop_oneof![
        (5432u16..5435).prop_map(|p| format!("postgres://127.0.0.1:{p}/postgres")),
        Just("postgres://127.0.0.1\tservice=x:5432/postgres".to_string()),
        Just(String::new()),
    ];
    let tags = prop::option::of((scalar(), scalar(), scalar())).prop_map(|t| {
        t.map(|(n, p, c)| json!({"nofailover": n, "failover_priority": p, "clonefrom": c}))
    });
    (role, state, conn, tags, scalar(), scalar(), 0..10u8).prop_map(
        |(role, state, conn, tags, xlog, tl, garbage)| {
            if garbage == 0 {
                return "{".into();
            }
            let mut o = json!({"conn_url": conn, "api_url": "http://127.0.0.1:8008/patroni",
                "state": state, "role": role, "xlog_location": xlog, "timeline": tl});
            if let Some(t) = tags {
                o["tags"] = t;
            }
            o.to_string()
        },
    )
}

fn history() -> impl Strategy<Value = String> {
    prop::collection::vec((0u64..6, number(), "[a-z ]{0,4}"), 0..4).prop_map(|lines| {
        let v: Vec<Value> = lines
            .into_iter()
            .map(|(tl, lsn, why)| json!([tl, lsn, why]))
            .collect();
        Value::Array(v).to_string()
    })
}

fn failover() -> impl Strategy<Value = String> {
    (
        prop::option::of(name()),
        prop::option::of(name()),
        prop::option::of(prop::sample::select(vec![
            "2023-11-14T22:13:20+00:00",
            "2023-11-14T22:13:21+00:00",
            "2099-01-01T00:00:00+00:00",
            "garbage",
        ])),
    )
        .prop_map(|(l, m, at)| json!({"leader": l, "member": m, "scheduled_at": at}).to_string())
}

/// The keys of one cluster, any of them absent or garbage.
fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::option::of(name()),
        prop::option::weighted(
            0.9,
            prop_oneof![
                6 => Just(SYSID),
                1 => prop::sample::select(vec!["", "1234567890123", "x"]),
            ],
        ),
        prop::option::weighted(0.8, config()),
        prop::collection::vec((name(), member()), 0..4),
        prop::option::of(failover()),
        prop::option::of(number()),
        prop::option::of(history()),
    )
        .prop_map(
            |(leader, init, config, members, failover, optime, history)| {
                let mut kvs = Vec::new();
                let mut kv = |key: String, value: String| {
                    kvs.push(Kv {
                        key,
                        value,
                        mod_revision: 5,
                        lease: 0,
                    })
                };
                if let Some(l) = leader {
                    kv("leader".into(), l);
                }
                if let Some(i) = init {
                    kv("initialize".into(), i.into());
                }
                if let Some(c) = config {
                    kv("config".into(), c);
                }
                for (n, m) in members {
                    kv(format!("members/{n}"), m);
                }
                if let Some(f) = failover {
                    kv("failover".into(), f);
                }
                if let Some(o) = optime {
                    kv("status".into(), json!({ "optime": o }).to_string());
                }
                if let Some(h) = history {
                    kv("history".into(), h);
                }
                Cluster::from_kvs(10, &kvs)
            },
        )
}

fn local() -> impl Strategy<Value = LocalPg> {
    let data = prop_oneof![
        1 => Just(DataState::Empty),
        1 => Just(DataState::Invalid("no pg_control".into())),
        8 => prop::sample::select(vec![SYSID, SYSID, SYSID, "1234567890123"]).prop_map(|s| {
            DataState::Initialized {
                sysid: s.into(),
                cluster_state: "in production".into(),
            }
        }),
    ];
    (
        data,
        prop::bool::weighted(0.8),
        prop::option::weighted(0.9, any::<bool>()),
        prop::option::of(0u64..1 << 40),
        prop::option::of(0u64..6),
        prop::option::of(0u64..1 << 40),
        any::<bool>(),
    )
        .prop_map(
            |(data, running, in_recovery, wal, tl, replay, paused)| LocalPg {
                data,
                running,
                in_recovery: in_recovery.filter(|_| running),
                wal_position: wal,
                timeline: tl,
                replay_position: replay,
                replay_paused: paused,
                history: None,
                walsenders: Vec::new(),
                standby_names: None,
                stopped_at: None,
                switches: Vec::new(),
            },
        )
}

fn task() -> impl Strategy<Value = Task> {
    prop::sample::select(vec![
        Task::Bootstrap,
        Task::Clone,
        Task::Start,
        Task::StartPrimary,
        Task::Promote,
        Task::Demote,
        Task::Rewind,
    ])
}

prop_compose! {
    fn observation()(
        cluster in cluster(),
        local in local(),
        in_flight in prop::option::weighted(0.15, task()),
        last in prop::option::weighted(0.15, (task(), any::<bool>())),
        bootstrapping in prop::bool::weighted(0.1),
        flags in prop::array::uniform8(any::<bool>()),
        failover_priority in -2i64..3,
        peers in prop::collection::vec((name(), prop_oneof![
            Just(Value::Null),
            (any::<bool>(), 0u64..1 << 40, 0u64..6, scalar()).prop_map(|(primary, pos, tl, p)| json!({
                "role": if primary { "primary" } else { "replica" },
                "xlog": if primary { json!({"location": pos}) } else { json!({"received_location": pos, "replayed_location": pos, "paused": p}) },
                "timeline": tl,
                "tags": {"nofailover": p},
            })),
        ]), 0..3),
        down in prop::option::of(0u64..1000),
        now in 1_600_000_000_000i64..1_800_000_000_000,
    ) -> Observation {
        // What the runner does: the `config` key is in effect once it passes the check, and
        // `decide` sees the configuration in effect in its place (here: none before it).
        let mut cluster = cluster;
        let dynamic = cluster
            .config
            .as_ref()
            .map(|c| c.value.clone())
            .filter(|c| c.check().is_ok())
            .unwrap_or_default();
        if let Some(c) = cluster.config.as_mut() {
            c.value = dynamic.clone();
        }
        Observation {
            me: ME.into(),
            dcs: DcsView::Reachable(cluster),
            local,
            timing: dynamic.timing(),
            dynamic,
            in_flight,
            last_result: last.map(|(t, ok)| match (ok, t) {
                (true, t) => TaskResult::Succeeded(t),
                (false, Task::Promote) if flags[0] => TaskResult::PrePromoteFailed("x".into()),
                (false, t) => TaskResult::Failed(t, "x".into()),
            }),
            mem: Memory {
                bootstrapping,
                needs_rewind: flags[3],
                rewind_failed: flags[4],
                primary_down_since: down.map(|d| Duration::from_secs(1_000 - d)),
                ..Memory::default()
            },
            now: Duration::from_secs(1_000),
            can_bootstrap: flags[1],
            replica_without_leader: flags[0],
            nofailover: flags[2],
            failover_priority,
            replicatefrom: None,
            nostream: false,
            peers: peers.iter().map(|(n, v)| PeerStatus::from_status(n, v)).collect(),
            use_pg_rewind: flags[5],
            remove_data_directory_on_rewind_failure: flags[6],
            remove_data_directory_on_diverged_timelines: flags[7],
            now_epoch_ms: now,
            sync_names_managed: false,
            failsafe_check: None,
            failsafe_leader: None,
            watchdog: Default::default(),
        }
    }
}

fn has(d: &Decision, f: impl Fn(&Action) -> bool) -> bool {
    d.actions.iter().any(f)
}

fn position(d: &Decision, f: impl Fn(&Action) -> bool) -> Option<usize> {
    d.actions.iter().position(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decide_keeps_the_decision_table_promises(o in observation()) {
        let d = decide(&o);
        let reason = &d.reason;
        prop_assert!(!reason.is_empty());
        let cluster = o.cluster().expect("the generator reads the DCS");
        let leader = cluster.leader_name();
        let i_lead = leader == Some(ME);
        let paused = cluster.is_paused();
        let promote = position(&d, |a| matches!(a, Action::Promote));
        let acquire = position(&d, |a| matches!(a, Action::AcquireLeaderKey));
        let demote = has(&d, |a| matches!(a, Action::Demote { .. } | Action::GracefulDemote));

        // Never promote and demote in one cycle.
        prop_assert!(!(promote.is_some() && demote), "{reason}: {:?}", d.actions);
        // Promote only while holding the key, or right after taking it.
        if let Some(p) = promote {
            prop_assert!(i_lead || acquire.is_some_and(|a| a < p), "{reason}: {:?}", d.actions);
            if !i_lead {
                prop_assert!(!o.nofailover, "a nofailover node raced: {reason}");
            }
        }
        // Only the holder refreshes the key, and only the holder starts as a primary.
        if has(&d, |a| matches!(a, Action::RefreshLeaderKey)) {
            prop_assert!(i_lead, "{reason}");
        }
        if has(&d, |a| matches!(a, Action::Start { standby_of: None })) {
            prop_assert!(i_lead, "{reason}");
        }
        // The key is raced for only when nobody holds it.
        if acquire.is_some() {
            prop_assert!(leader.is_none(), "{reason}");
        }
        if has(&d, |a| matches!(a, Action::FinishBootstrap { .. })) {
            prop_assert!(o.mem.bootstrapping, "{reason}");
        }
        // In maintenance mode the agent neither stops nor starts PostgreSQL on its own (an
        // aborted promotion of ours excepted, Row S-2.2').
        if paused && o.in_flight.is_none() && matches!(o.local.data, DataState::Initialized { .. }) {
            prop_assert!(!demote, "{reason}");
            prop_assert!(!has(&d, |a| matches!(a, Action::Start { .. } | Action::Rewind(_) | Action::RemoveDataDirectory { .. })), "{reason}");
        }
        // A running primary without the key does not stay one: it is demoted, or takes the
        // free key (Rows H-1.2', U-1.2/1.3); exceptions: maintenance mode, a long operation
        // in flight, a data directory of another cluster (the agent exits), adopting the data
        // directory of a cluster not initialized yet.
        let running_primary = o.local.running && o.local.in_recovery == Some(false);
        let ours = matches!(&o.local.data, DataState::Initialized { sysid, .. } if cluster.initialized_sysid().is_none_or(|s| s == sysid));
        let fatal = has(&d, |a| matches!(a, Action::Fatal { .. } | Action::AbortBootstrap { .. }));
        let adopting = has(&d, |a| matches!(a, Action::WriteInitialize { .. }));
        if running_primary && !i_lead && !paused && o.in_flight.is_none() && ours && !o.mem.bootstrapping
            && !fatal && !adopting
        {
            prop_assert!(demote || acquire.is_some(), "{reason}: {:?}", d.actions);
        }
        // With the key held by another member, a primary of ours is always demoted.
        if running_primary && leader.is_some() && !i_lead && !paused && o.in_flight.is_none()
            && ours && !o.mem.bootstrapping && !fatal
        {
            prop_assert!(demote, "{reason}: {:?}", d.actions);
        }
    }

    #[test]
    fn decide_never_panics_on_any_dynamic_config(o in observation(), raw in config()) {
        // The runner hands `decide` only a checked configuration; even an unchecked one must
        // not make it panic.
        let mut o = o;
        if let Some(c) = ClusterConfig::parse(&raw) {
            o.dynamic = c;
        }
        let _ = decide(&o);
    }
}
