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

    // After a switchover the former leader is a replica: it does not keep the members' slots,
    // whose frozen restart_lsn would retain WAL there until its disk is full.
    c.switchover(leader, stays).await.expect("switchover");
    let cl = &c;
    let leader_name = c.name(leader).to_string();
    wait_until(
        "the former leader to drop its member slots",
        PROPAGATION_TIMEOUT,
        || {
            let stays_slot = stays_slot.clone();
            async move {
                let s = slots_on(cl, leader).await?;
                Ok((!s.contains(&stays_slot)).then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.agent_log(leader)));
    // And the new leader has one for it.
    wait_until(
        "a slot for the former leader on the new one",
        PROPAGATION_TIMEOUT,
        || {
            let leader_name = leader_name.clone();
            async move {
                Ok(slots_on(cl, stays)
                    .await?
                    .contains(&leader_name)
                    .then_some(()))
            }
        },
    )
    .await
    .expect("slot on the new leader");
}
