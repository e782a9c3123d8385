//! `member_slots_ttl` (spec 5.12): the leader keeps a gone member's replication slot for the
//! ttl, then drops it, so a removed member does not hold WAL until the disk is full; a live
//! member's slot is never dropped; the kept names are published in `status.retain_slots`.

use std::time::Duration;

use crate::support::{start_all, PROPAGATION_TIMEOUT};
use patrol_tests::{wait_until, Cluster, Signal};

async fn slots_on(c: &Cluster, i: usize) -> anyhow::Result<Vec<String>> {
    let client = c.connect(i).await?;
    let rows = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_member_s_slot_is_dropped_after_member_slots_ttl() {
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..3 {
        c.set_config_override(i, |yaml| {
            let before = yaml.clone();
            *yaml = yaml.replacen("dcs: {ttl: 10,", "dcs: {member_slots_ttl: 5, ttl: 10,", 1);
            assert_ne!(
                *yaml, before,
                "the harness config has a one-line dcs section"
            );
        });
    }
    let leader = start_all(&mut c).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (stays, goes) = (others[0], others[1]);
    let (stays_slot, goes_slot) = (c.name(stays).to_string(), c.name(goes).to_string());
    let cl = &c;
    wait_until(
        "both replicas' slots on the leader",
        PROPAGATION_TIMEOUT,
        || {
            let (a, b) = (stays_slot.clone(), goes_slot.clone());
            async move {
                let s = slots_on(cl, leader).await?;
                Ok((s.contains(&a) && s.contains(&b)).then_some(()))
            }
        },
    )
    .await
    .expect("slots created");

    // One replica leaves for good (its agent stops PostgreSQL and its member key goes).
    c.stop_node(goes, Signal::SIGTERM).expect("SIGTERM");
    let cl = &c;
    let left = wait_until(
        "the gone member's slot to be dropped",
        Duration::from_secs(90),
        || {
            let goes_slot = goes_slot.clone();
            async move {
                let s = slots_on(cl, leader).await?;
                Ok((!s.contains(&goes_slot)).then_some(s))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nleader log:\n{}", c.agent_log(leader)));
    assert!(
        left.contains(&stays_slot),
        "the live member's slot was dropped too: {left:?}"
    );
    assert!(
        c.agent_log(leader)
            .contains(&format!("dropped replication slot {goes_slot}")),
        "{}",
        c.agent_log(leader)
    );
    // status.retain_slots names the live members only now.
    let cl = &c;
    let status = wait_until(
        "retain_slots without the gone member",
        PROPAGATION_TIMEOUT,
        || {
            let (a, b) = (stays_slot.clone(), goes_slot.clone());
            async move {
                let raw = cl.etcd_get("status").await?.unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
                let retain: Vec<String> = v["retain_slots"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((retain.contains(&a) && !retain.contains(&b)).then_some(raw))
            }
        },
    )
    .await
    .expect("retain_slots");
    eprintln!("status: {status}");
    // The member that stayed still streams through its slot.
    let client = c.connect(leader).await.expect("connect");
    let active: bool = client
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&stays_slot],
        )
        .await
        .expect("the staying member's slot")
        .get(0);
    assert!(active);

    // After a switchover the former leader is a replica that may become leader again: it keeps
    // a slot for the new leader (as Patroni 4 does with member_slots_ttl > 0), inactive and
    // without an xmin, advanced to the position the new leader publishes.
    c.switchover(leader, stays).await.expect("switchover");
    let cl = &c;
    let leader_name = c.name(leader).to_string();
    wait_until(
        "the former leader to keep the new leader's slot, advanced",
        PROPAGATION_TIMEOUT,
        || {
            let stays_slot = stays_slot.clone();
            async move {
                let s = physical_slot(cl, leader, &stays_slot).await?;
                Ok(
                    s.filter(|s| !s.active && !s.has_xmin && s.restart_lsn.is_some())
                        .map(|_| ()),
                )
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.agent_log(leader)));
    assert!(
        !slots_on(&c, leader)
            .await
            .expect("slots")
            .contains(&goes_slot),
        "the expired member's slot came back on a replica"
    );
    // And the new leader has one for it, which it streams from.
    wait_until(
        "the former leader streams from its slot on the new one",
        PROPAGATION_TIMEOUT,
        || {
            let leader_name = leader_name.clone();
            async move {
                Ok(physical_slot(cl, stays, &leader_name)
                    .await?
                    .filter(|s| s.active)
                    .map(|_| ()))
            }
        },
    )
    .await
    .expect("slot on the new leader");
}

/// A physical slot on node `i`, if there.
#[derive(Debug, Clone)]
struct Physical {
    active: bool,
    has_xmin: bool,
    restart_lsn: Option<i64>,
}

async fn physical_slot(c: &Cluster, i: usize, name: &str) -> anyhow::Result<Option<Physical>> {
    let client = c.connect(i).await?;
    let row = client
        .query_opt(
            "SELECT active, xmin IS NOT NULL, (restart_lsn - '0/0'::pg_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| Physical {
        active: r.get(0),
        has_xmin: r.get(1),
        restart_lsn: r.get(2),
    }))
}

/// Rows H-1.2m, H-1.5: with member slot retention (the default `member_slots_ttl`), every
/// replica that may become leader keeps a slot for each other member, inactive, without an
/// xmin, advanced to the position the leader publishes. After the leader dies, the new leader
/// already has the slot the other replica streams from, and keeps the dead leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_the_members_slots_so_a_new_leader_has_them() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let names: Vec<String> = (0..3).map(|i| c.name(i).to_string()).collect();
    let client = c.connect(leader).await.expect("connect");
    client
        .batch_execute("CREATE TABLE t (id integer); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .expect("write");
    let after_write: i64 = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .expect("lsn")
        .get(0);
    let cl = &c;
    for node in 0..3 {
        for slot in (0..3).filter(|&s| s != node) {
            // The leader's slots are streamed from; a replica's are not.
            let active = node == leader;
            let name = names[slot].clone();
            wait_until(
                &format!("slot {name} on {} (active: {active})", names[node]),
                PROPAGATION_TIMEOUT,
                || {
                    let name = name.clone();
                    async move {
                        let s = physical_slot(cl, node, &name).await?;
                        Ok(s.filter(|s| {
                            s.active == active
                                && (active || !s.has_xmin && s.restart_lsn >= Some(after_write))
                        })
                        .map(|_| ()))
                    }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", c.agent_log(node)));
        }
        assert!(
            physical_slot(&c, node, &names[node])
                .await
                .expect("query")
                .is_none(),
            "{} has a slot of its own name",
            names[node]
        );
    }

    // The leader dies: the new one already had the slot the other replica streams from.
    c.kill_node(leader);
    let cl = &c;
    let new_leader = wait_until("a new leader", Duration::from_secs(90), || async move {
        for i in (0..3).filter(|&i| i != leader) {
            if !crate::support::in_recovery(cl, i).await.unwrap_or(true) {
                return Ok(Some(i));
            }
        }
        Ok(None)
    })
    .await
    .expect("failover");
    let other = (0..3)
        .find(|&i| i != leader && i != new_leader)
        .expect("3 nodes");
    let other_name = names[other].clone();
    wait_until(
        "the remaining replica streams from its slot on the new leader",
        Duration::from_secs(90),
        || {
            let other_name = other_name.clone();
            async move {
                Ok(physical_slot(cl, new_leader, &other_name)
                    .await?
                    .filter(|s| s.active)
                    .map(|_| ()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.agent_log(new_leader)));
    assert!(
        physical_slot(&c, new_leader, &names[leader])
            .await
            .expect("query")
            .is_some(),
        "the dead leader's slot is kept on the new leader for member_slots_ttl"
    );
}

/// A slot's position on node `i`: `restart_lsn` (physical) or `confirmed_flush_lsn`
/// (logical), as bytes; `None` if the slot is not there (or not of that type).
async fn slot_position(
    c: &Cluster,
    i: usize,
    name: &str,
    logical: bool,
) -> anyhow::Result<Option<i64>> {
    let client = c.connect(i).await?;
    let row = client
        .query_opt(
            "SELECT (CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END
                     - '0/0'::pg_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = $2",
            &[&name, &if logical { "logical" } else { "physical" }],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// The ids inserted into `t` that the logical slot `cdc` on node `i` gives now (consumed).
async fn read_changes(c: &Cluster, i: usize) -> anyhow::Result<Vec<i64>> {
    let client = c.connect(i).await?;
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes('cdc', NULL, NULL)",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let data: String = r.get(0);
            data.strip_prefix("table public.t: INSERT: id[integer]:")
                .and_then(|n| n.trim().parse().ok())
        })
        .collect())
}

async fn insert(c: &Cluster, i: usize, ids: std::ops::RangeInclusive<i64>) {
    let client = c.connect(i).await.expect("connect");
    client
        .execute(
            "INSERT INTO t SELECT generate_series($1::bigint, $2::bigint)",
            &[ids.start(), ids.end()],
        )
        .await
        .expect("insert");
}

/// Rows H-1.5p and H-1.2p: permanent slots from the dynamic `slots`. The leader creates a
/// physical and a logical (`test_decoding`) slot; the replicas keep copies advanced to the
/// positions the leader publishes in `status.slots`; after the leader dies, a logical decoding
/// consumer on the new leader reads every change made before and after the failover exactly
/// once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_slots_follow_the_leader_and_survive_a_failover() {
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..3 {
        c.set_config_override(i, |yaml| {
            let before = yaml.clone();
            *yaml = yaml.replacen(
                "parameters: {wal_keep_size: 128MB}}}",
                "parameters: {wal_keep_size: 128MB, wal_level: logical}}, \
                 slots: {arch: null, cdc: {type: logical, database: postgres, plugin: test_decoding}}}",
                1,
            );
            assert_ne!(*yaml, before, "the harness's dcs section changed");
        });
    }
    let leader = start_all(&mut c).await;
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let cl = &c;
    wait_until(
        "both slots on the leader",
        PROPAGATION_TIMEOUT,
        || async move {
            Ok((slot_position(cl, leader, "arch", false).await?.is_some()
                && slot_position(cl, leader, "cdc", true).await?.is_some())
            .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.agent_log(leader)));

    // Changes before the failover: some read, some not yet.
    let client = c.connect(leader).await.expect("connect");
    client
        .batch_execute("CREATE TABLE t (id integer PRIMARY KEY)")
        .await
        .expect("create table");
    insert(&c, leader, 1..=10).await;
    assert_eq!(
        read_changes(&c, leader).await.expect("read"),
        (1..=10).collect::<Vec<_>>()
    );
    insert(&c, leader, 11..=20).await;
    // Something consumed the physical slot up to here.
    let moved: i64 = client
        .query_one(
            "SELECT ((pg_replication_slot_advance('arch', pg_current_wal_lsn())).end_lsn
                     - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .expect("advance arch");
    let confirmed = slot_position(&c, leader, "cdc", true)
        .await
        .expect("query")
        .expect("cdc on the leader");

    for &r in &replicas {
        let cl = &c;
        wait_until(
            "the replica's copies at the leader's positions",
            Duration::from_secs(90),
            || async move {
                let arch = slot_position(cl, r, "arch", false).await?;
                let cdc = slot_position(cl, r, "cdc", true).await?;
                let rows: i64 = cl
                    .connect(r)
                    .await?
                    .query_one("SELECT count(*) FROM t", &[])
                    .await?
                    .get(0);
                Ok(
                    (arch.is_some_and(|a| a >= moved) && cdc == Some(confirmed) && rows == 20)
                        .then_some(()),
                )
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nreplica log:\n{}", c.agent_log(r)));
        let log = c.agent_log(r);
        assert!(log.contains("copied logical slots [\"cdc\"]"), "{log}");
    }

    // The leader dies (agent and PostgreSQL).
    c.kill_node(leader);
    c.signal_postgres(leader, Signal::SIGKILL)
        .expect("SIGKILL the postmaster");
    let cl = &c;
    let old = c.name(leader).to_string();
    let new_name = wait_until("a new leader", Duration::from_secs(90), || {
        let old = old.clone();
        async move {
            Ok(cl
                .leader()
                .await?
                .filter(|l| *l != old)
                .map(|l| l.to_string()))
        }
    })
    .await
    .expect("failover");
    let new = patrol_tests::index_of(&c, &new_name).expect("index");
    let cl = &c;
    wait_until(
        "the new leader takes writes",
        Duration::from_secs(60),
        || async move {
            Ok(crate::support::in_recovery(cl, new)
                .await
                .ok()
                .filter(|r| !r)
                .map(|_| ()))
        },
    )
    .await
    .expect("promoted");
    insert(&c, new, 21..=30).await;
    assert_eq!(
        read_changes(&c, new).await.expect("read on the new leader"),
        (11..=30).collect::<Vec<_>>(),
        "every change after the last read, exactly once, in order\n{}",
        c.agent_log(new)
    );
    assert!(slot_position(&c, new, "arch", false)
        .await
        .expect("query")
        .is_some());
}
