//! Property tests: whatever JSON anyone writes into the DCS, reading it never panics, the
//! timing accessors stay within their bounds and keep Patroni's rule, and a host that comes
//! out of a member key can be written anywhere as it is.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;

/// Numbers that break naive arithmetic, next to ordinary ones.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            i64::MIN,
            -1,
            0,
            1,
            2,
            3,
            10,
            30,
            86_400,
            86_401,
            i64::MAX,
        ])
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1e300)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-z .:/@\\[\\]\t\n'\"=\\\\-]{0,24}",
        prop::sample::select(vec![
            "9223372036854775807",
            "18446744073709551616",
            "-1",
            " 30 ",
            "on",
            "off",
            "quorum",
            "30min",
            "1e400h",
        ])
        .prop_map(String::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value, a few levels deep.
pub fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

const CONFIG_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "maximum_lag_on_syncnode",
    "max_timelines_history",
    "primary_start_timeout",
    "master_start_timeout",
    "primary_stop_timeout",
    "synchronous_mode",
    "synchronous_node_count",
    "member_slots_ttl",
    "pause",
    "check_timeline",
    "failsafe_mode",
    "standby_cluster",
    "slots",
    "ignore_slots",
    "postgresql",
];

/// A `config` object: the keys the agent reads, with any value (a `postgresql` section of the
/// keys it reads too), and any other key.
pub fn config_object() -> impl Strategy<Value = Map<String, Value>> {
    let pg = prop::collection::vec(
        (
            prop::sample::select(vec![
                "use_slots",
                "use_pg_rewind",
                "parameters",
                "pg_hba",
                "pg_ctl_timeout",
            ])
            .prop_map(String::from),
            json(),
        ),
        0..4,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().collect()));
    let value = prop_oneof![3 => leaf(), 1 => json(), 1 => pg];
    prop::collection::vec(
        (
            prop_oneof![
                4 => prop::sample::select(CONFIG_KEYS.to_vec()).prop_map(String::from),
                1 => text(),
            ],
            value,
        ),
        0..8,
    )
    .prop_map(|kv| kv.into_iter().collect())
}

fn timing_holds(t: Timing) -> Result<(), TestCaseError> {
    prop_assert!((MIN_TTL..=MAX_TTL).contains(&t.ttl), "{t:?}");
    prop_assert!(t.loop_wait >= 1 && t.retry_timeout >= 1, "{t:?}");
    prop_assert!(t.loop_wait + 2 * t.retry_timeout <= t.ttl, "{t:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn timing_rule_holds_for_any_numbers(ttl in any::<u64>(), lw in any::<u64>(), rt in any::<u64>()) {
        timing_holds(Timing::adjusted(ttl, lw, rt))?;
        // Within the accepted ranges, values that keep the rule are kept as they are.
        let (ttl, lw, rt) = (ttl % 200 + MIN_TTL, lw % 50 + 1, rt % 50 + 1);
        if lw + 2 * rt <= ttl {
            prop_assert_eq!(Timing::adjusted(ttl, lw, rt), Timing { ttl, loop_wait: lw, retry_timeout: rt });
        }
    }

    #[test]
    fn any_config_reads_without_panic_and_within_bounds(data in config_object()) {
        let c = ClusterConfig::from_map(data);
        timing_holds(c.timing())?;
        prop_assert!(c.primary_start_timeout() <= MAX_SECONDS);
        let _ = (c.maximum_lag_on_failover(), c.max_timelines_history(), c.check_timeline());
        let _ = (c.pause(), c.failsafe_mode(), c.use_slots(), c.use_pg_rewind());
        let _ = (c.parameters(), c.pg_hba(), c.is_standby_cluster());
        if c.check().is_ok() {
            // What passes the check is what the agent acts on: its timing is what was asked
            // for (after Patroni's rule), never a clamped stand-in.
            let asked = |k: &str, d: u64| lenient_i64(c.data.get(k)).map_or(d, |v| v as u64);
            let d = Timing::default();
            prop_assert_eq!(
                c.timing(),
                Timing::adjusted(asked("ttl", d.ttl), asked("loop_wait", d.loop_wait), asked("retry_timeout", d.retry_timeout))
            );
            prop_assert!(c.maximum_lag_on_failover() >= 0);
        }
    }

    #[test]
    fn any_value_of_any_key_reads_without_panic(values in prop::collection::vec((
        prop_oneof![
            prop::sample::select(vec![
                "config", "leader", "initialize", "history", "sync", "failover", "status",
                "failsafe", "optime/leader", "members/pg0", "members/pg1", "members/",
                "members/a/b",
            ]).prop_map(String::from),
            text(),
        ],
        prop_oneof![text(), json().prop_map(|v| v.to_string())],
    ), 0..10)) {
        let kvs: Vec<Kv> = values
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| Kv { key, value, mod_revision: i as i64, lease: 0 })
            .collect();
        let c = Cluster::from_kvs(1, &kvs);
        let _ = (c.timeline(), c.initialized_sysid(), c.is_paused(), c.leader_member());
        if let Some(cfg) = &c.config {
            timing_holds(cfg.value.timing())?;
            let _ = cfg.value.check();
        }
        for m in &c.members {
            let _ = (m.data.to_json(), m.data.failover_priority(), m.data.host_port());
            let _ = member_address_problem(&m.data);
        }
    }

    #[test]
    fn hosts_from_member_urls_are_safe_to_write(url in prop_oneof![
        text(),
        (text(), any::<u16>()).prop_map(|(h, p)| format!("postgres://{h}:{p}/postgres")),
        (text(), any::<u16>()).prop_map(|(h, p)| format!("http://{h}:{p}/patroni")),
    ]) {
        for parsed in [parse_conn_url(&url), parse_api_url(&url)].into_iter().flatten() {
            let (host, port) = parsed;
            prop_assert!(port > 0);
            prop_assert!(is_valid_host(&host), "{host:?}");
            prop_assert!(
                !host.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\=#,;/@".contains(c)),
                "{host:?} from {url:?}"
            );
        }
    }
}
