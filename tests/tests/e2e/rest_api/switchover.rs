//! End to end: planned leader changes through the REST API on a real 3-node cluster — a
//! scheduled switchover (202, the `failover` key, `/cluster`, cancelled with DELETE), an
//! immediate switchover (200 with Patroni's text; the old leader then streams from the new
//! one), and a failover to a named candidate.

use std::time::Duration;

use patrol_tests::{wait_until, Cluster};
use serde_json::{json, Value};

use crate::support::http::{call, call_within, iso_utc_in};
use crate::support::workload::{primary_timeline, wait_streaming_from};
use crate::support::{index_of, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};

/// Longer than Patroni's own wait (2 * max(10, loop_wait) s) so the API decides.
const SWITCHOVER_CALL: Duration = Duration::from_secs(40);

async fn failover_key(cluster: &Cluster) -> Value {
    let raw = cluster
        .etcd_get("failover")
        .await
        .expect("etcd")
        .unwrap_or_else(|| "{}".into());
    serde_json::from_str(&raw).expect("failover key is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_switchover_switchover_and_failover() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let all: Vec<usize> = (0..3).collect();
    let leader = start_all(&mut cluster).await;
    let lname = cluster.name(leader).to_owned();
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let cand = cluster.name(replicas[0]).to_owned();
    let via = cluster.api_port(replicas[1]);

    // ---- Scheduled: 202, the key holds the schedule, /cluster shows it, DELETE cancels it.
    let at = iso_utc_in(3600);
    let body = json!({"leader": lname, "candidate": cand, "scheduled_at": at}).to_string();
    let r = call(via, "POST", "/switchover", Some(&body), &[]).await;
    assert_eq!(
        (r.code, r.body.as_str()),
        (202, "Switchover scheduled"),
        "{}",
        r.head
    );
    assert_eq!(
        failover_key(&cluster).await,
        json!({"leader": lname, "member": cand, "scheduled_at": at})
    );
    let v = call(cluster.api_port(leader), "GET", "/cluster", None, &[])
        .await
        .json();
    assert_eq!(
        v["scheduled_switchover"],
        json!({"at": at, "from": lname, "to": cand})
    );
    let r = call(via, "DELETE", "/switchover", None, &[]).await;
    assert_eq!(
        (r.code, r.body.as_str()),
        (200, "scheduled switchover deleted")
    );
    assert_eq!(failover_key(&cluster).await, json!({}), "reset to {{}}");
    let r = call(via, "DELETE", "/switchover", None, &[]).await;
    assert_eq!(
        (r.code, r.body.as_str()),
        (404, "no switchover is scheduled")
    );
    assert_eq!(
        cluster.leader().await.expect("etcd").as_deref(),
        Some(lname.as_str())
    );

    // ---- Immediate switchover from the leader, no candidate named, asked on a replica.
    let body = json!({"leader": lname}).to_string();
    let r = call_within(
        via,
        "POST",
        "/switchover",
        Some(&body),
        &[],
        SWITCHOVER_CALL,
    )
    .await;
    let new_leader = cluster.leader().await.expect("etcd").expect("a leader");
    assert_ne!(new_leader, lname, "the leader changed");
    assert_eq!(
        (r.code, r.body.clone()),
        (
            200,
            format!("Successfully switched over to \"{new_leader}\"")
        ),
        "{}",
        r.head
    );
    let nl = index_of(&cluster, &new_leader).expect("known member");
    wait_healthy(&cluster, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the switchover");
    let tl = primary_timeline(&cluster, nl).await.expect("timeline");
    assert_eq!(tl, 2, "the switchover promoted onto timeline 2");
    wait_streaming_from(&cluster, leader, nl, tl, PROPAGATION_TIMEOUT)
        .await
        .expect("the old leader streams from the new one");
    let cl = &cluster;
    wait_until(
        "the failover key to be reset",
        PROPAGATION_TIMEOUT,
        || async move { Ok((failover_key(cl).await == json!({})).then_some(())) },
    )
    .await
    .expect("failover key reset");

    // ---- Failover to a named candidate: the old leader, now a streaming replica.
    let body = json!({"candidate": lname}).to_string();
    let r = call_within(
        cluster.api_port(nl),
        "POST",
        "/failover",
        Some(&body),
        &[],
        SWITCHOVER_CALL,
    )
    .await;
    assert_eq!(
        (r.code, r.body.as_str()),
        (
            200,
            format!("Successfully failed over to \"{lname}\"").as_str()
        ),
        "{}",
        r.head
    );
    assert_eq!(
        cluster.leader().await.expect("etcd").as_deref(),
        Some(lname.as_str())
    );
    wait_healthy(&cluster, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the failover");

    // ---- Both promotions are in the history, and /cluster reports the new timeline.
    let h = wait_until("two history entries", PROPAGATION_TIMEOUT, || async move {
        let v = call(cl.api_port(0), "GET", "/history", None, &[])
            .await
            .json();
        Ok(v.as_array().filter(|a| a.len() >= 2).cloned())
    })
    .await
    .expect("history");
    assert_eq!(h[0][0], json!(1));
    assert_eq!(h[1][0], json!(2));
    assert_eq!(h[1][4], json!(lname), "the last promotion names its leader");
    let ln = lname.clone();
    wait_until(
        "/cluster to show the leader on timeline 3",
        PROPAGATION_TIMEOUT,
        || {
            let ln = ln.clone();
            async move {
                let v = call(cl.api_port(0), "GET", "/cluster", None, &[])
                    .await
                    .json();
                let me = v["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["name"] == json!(ln)).cloned());
                Ok(me
                    .filter(|m| m["role"] == json!("leader") && m["timeline"] == json!(3))
                    .map(|_| ()))
            }
        },
    )
    .await
    .expect("leader on timeline 3");

    // ---- The audit log names the calls.
    let log = cluster.agent_log(replicas[1]);
    assert!(log.contains("REST API: POST /switchover from 127.0.0.1 user=- -> 202"));
    assert!(log.contains("REST API: DELETE /switchover from 127.0.0.1 user=- -> 404"));
    for i in 0..3 {
        assert!(
            cluster.is_node_running(i),
            "agent {} exited",
            cluster.name(i)
        );
    }
}
