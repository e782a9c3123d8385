//! Reloading the local configuration: SIGHUP and `POST /reload` re-read the YAML and apply the
//! PostgreSQL parameters with a reload of PostgreSQL; a broken file keeps the running config.

use std::time::Duration;

use crate::support::{show, wait_healthy, HEALTHY_TIMEOUT};
use patrol_tests::{wait_until, Cluster, Signal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_apply_new_parameters() -> anyhow::Result<()> {
    let mut c = Cluster::new(1)?;
    c.start_node(0)?;
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT).await?;
    assert_eq!(show(&c, 0, "work_mem").await?, "4MB");

    // SIGHUP with a new work_mem.
    let yaml = c.config_yaml(0).replace(
        "shared_buffers: 16MB,",
        "shared_buffers: 16MB, work_mem: 7MB,",
    );
    std::fs::write(c.config_path(0), &yaml)?;
    c.stop_node(0, Signal::SIGHUP)?;
    wait_until(
        "work_mem 7MB after SIGHUP",
        Duration::from_secs(30),
        || async { Ok((show(&c, 0, "work_mem").await? == "7MB").then_some(())) },
    )
    .await?;

    // POST /reload with another value.
    let yaml = yaml.replace("work_mem: 7MB", "work_mem: 9MB");
    std::fs::write(c.config_path(0), &yaml)?;
    let r = reqwest::Client::new()
        .post(format!("{}/reload", c.api_url(0)))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.text().await?, "reload scheduled");
    wait_until(
        "work_mem 9MB after POST /reload",
        Duration::from_secs(30),
        || async { Ok((show(&c, 0, "work_mem").await? == "9MB").then_some(())) },
    )
    .await?;

    // A broken file: the agent keeps running with what it had and says why.
    std::fs::write(c.config_path(0), "scope: [unclosed\n")?;
    c.stop_node(0, Signal::SIGHUP)?;
    wait_until(
        "the reload error in the log",
        Duration::from_secs(30),
        || async {
            Ok(c.agent_log(0)
                .contains("keeping the running configuration")
                .then_some(()))
        },
    )
    .await?;
    assert!(
        c.is_node_running(0),
        "the agent must survive a broken reload"
    );
    assert_eq!(show(&c, 0, "work_mem").await?, "9MB");
    Ok(())
}
