//! End to end: Patroni's own `patronictl` (from PyPI) drives a patrol cluster through its REST
//! API — pause/resume (PATCH /config), reload, restart, a scheduled restart flushed (DELETE
//! /restart), reinit, and a switchover — and gets the answers it expects from Patroni.

use patrol_tests::{wait_until, Cluster};

use crate::support::ctl::patronictl_ok;
use crate::support::{start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_operates_the_cluster_through_the_rest_api() {
    let ctl = tokio::task::spawn_blocking(patrol_tests::patronictl)
        .await
        .expect("join")
        .expect("patronictl installed");
    assert!(ctl.is_file());

    let mut cluster = Cluster::new(3).expect("cluster");
    let all = [0, 1, 2];
    let leader = start_all(&mut cluster).await;
    let scope = cluster.scope().to_owned();
    let lname = cluster.name(leader).to_owned();
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    let rname = cluster.name(replica).to_owned();
    let cl = &cluster;

    // pause --wait: PATCH /config {"pause": true}, then every member publishes pause.
    let out = patronictl_ok(&cluster, &["pause", "--wait"]);
    assert!(
        out.contains("Success: cluster management is paused"),
        "{out}"
    );
    let out = patronictl_ok(&cluster, &["resume", "--wait"]);
    assert!(
        out.contains("Success: cluster management is resumed"),
        "{out}"
    );

    // reload: POST /reload on every member (202).
    let out = patronictl_ok(&cluster, &["reload", &scope, "--force"]);
    for i in 0..3 {
        assert!(
            out.contains(&format!(
                "Reload request received for member {}",
                cluster.name(i)
            )),
            "{out}"
        );
    }

    // restart of one member: POST /restart (200).
    let out = patronictl_ok(&cluster, &["restart", &scope, &rname, "--force"]);
    assert!(
        out.contains(&format!("Success: restart on member {rname}")),
        "{out}"
    );
    wait_healthy(&cluster, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the restart");

    // A scheduled restart (202), then flushed (DELETE /restart).
    let out = patronictl_ok(
        &cluster,
        &[
            "restart",
            &scope,
            &rname,
            "--scheduled",
            "2099-01-01T00:00:00+00:00",
            "--force",
        ],
    );
    assert!(
        out.contains(&format!("Success: restart scheduled on member {rname}")),
        "{out}"
    );
    let out = patronictl_ok(&cluster, &["flush", &scope, &rname, "restart", "--force"]);
    assert!(
        out.contains(&format!(
            "Success: flush scheduled restart for member {rname}"
        )),
        "{out}"
    );

    // reinit: POST /reinitialize (200), and the replica streams again.
    let out = patronictl_ok(&cluster, &["reinit", &scope, &rname, "--force", "--wait"]);
    assert!(
        out.contains(&format!("Success: reinitialize for member {rname}")),
        "{out}"
    );
    wait_healthy(&cluster, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the reinit");

    // switchover: POST /switchover to the leader, answered 200 with Patroni's text.
    let out = patronictl_ok(
        &cluster,
        &[
            "switchover",
            &scope,
            "--leader",
            &lname,
            "--candidate",
            &rname,
            "--force",
        ],
    );
    assert!(
        out.contains(&format!("Successfully switched over to \"{rname}\"")),
        "{out}"
    );
    assert_eq!(
        cluster.leader().await.expect("etcd").as_deref(),
        Some(rname.as_str())
    );
    wait_until(
        "all members healthy again",
        PROPAGATION_TIMEOUT,
        || async move {
            Ok(wait_healthy(cl, &all, std::time::Duration::from_secs(1))
                .await
                .ok())
        },
    )
    .await
    .expect("healthy after the switchover");
}
