//! Callback scripts (spec 5.14): `postgresql.callbacks` run as `<cmd> <action> <role> <scope>`
//! from the agent's working directory; `before_stop` runs, and is waited for, before a planned
//! stop. A script records its calls; each step waits for the line it must add, in order.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{wait_healthy, HEALTHY_TIMEOUT};
use patrol_tests::{chown_to_agent, wait_until, Cluster, Signal};

const WAIT: Duration = Duration::from_secs(60);

async fn wait_for_line(calls: &std::path::Path, line: String) -> anyhow::Result<()> {
    wait_until(&format!("the call {line:?}"), WAIT, || {
        let line = line.clone();
        async move {
            let text = std::fs::read_to_string(calls).unwrap_or_default();
            Ok(text.lines().any(|l| l == line).then_some(()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_and_before_stop_run_with_patronis_arguments() -> anyhow::Result<()> {
    let mut c = Cluster::new(1)?;
    let dir = c.node_dir(0).to_path_buf();
    let calls = dir.join("calls.log");
    let script = dir.join("callback.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display()),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    chown_to_agent(&script)?;
    let cb = script.display().to_string();
    c.set_config_override(0, move |y| {
        *y = y.replace(
            "\n  bin_dir:",
            &format!(
                "\n  callbacks: {{on_start: {cb}, on_stop: {cb}, on_restart: {cb}, on_reload: {cb}, on_role_change: {cb}}}\n  before_stop: {cb} before_stop\n  bin_dir:"
            ),
        )
    });
    c.start_node(0)?;
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT).await?;
    let scope = c.scope().to_string();
    wait_for_line(&calls, format!("on_start primary {scope}")).await?;

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/restart", c.api_url(0)))
        .body("{}")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    wait_for_line(&calls, format!("on_restart primary {scope}")).await?;

    let r = http.post(format!("{}/reload", c.api_url(0))).send().await?;
    assert_eq!(r.status().as_u16(), 202);
    wait_for_line(&calls, format!("on_reload primary {scope}")).await?;

    c.stop_node(0, Signal::SIGTERM)?;
    wait_for_line(&calls, format!("on_stop primary {scope}")).await?;

    let text = std::fs::read_to_string(&calls)?;
    let lines: Vec<&str> = text.lines().collect();
    let pos = |l: &str| lines.iter().position(|x| *x == l);
    let start = pos(&format!("on_start primary {scope}")).expect("on_start");
    let restart = pos(&format!("on_restart primary {scope}")).expect("on_restart");
    let stop = pos(&format!("on_stop primary {scope}")).expect("on_stop");
    // before_stop ran before the restart's stop and before the shutdown's, and was waited for.
    let before: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == "before_stop")
        .map(|(i, _)| i)
        .collect();
    assert!(start < restart && restart < stop, "{lines:?}");
    assert_eq!(before.len(), 2, "{lines:?}");
    assert!(
        before[0] < restart && before[1] > restart && before[1] < stop,
        "{lines:?}"
    );
    // A restart is not also a stop and a start.
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("on_start")).count(),
        1,
        "{lines:?}"
    );
    Ok(())
}

/// `on_role_change` across a switchover and a failover, on both nodes, in order: each node's
/// script records `<node> <action> <role> <scope>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_role_change_follows_a_switchover_and_a_failover() -> anyhow::Result<()> {
    let mut c = Cluster::new(2)?;
    let calls = c.root().join("calls.log");
    std::fs::write(&calls, "")?;
    std::fs::set_permissions(&calls, std::fs::Permissions::from_mode(0o666))?;
    for i in 0..c.len() {
        let script = c.node_dir(i).join("callback.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{} $*\" >> {}\n",
                c.name(i),
                calls.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        chown_to_agent(&script)?;
        let cb = script.display().to_string();
        c.set_config_override(i, move |y| {
            *y = y.replace(
                "\n  bin_dir:",
                &format!("\n  callbacks: {{on_role_change: {cb}}}\n  bin_dir:"),
            )
        });
    }
    let first = crate::support::start_all(&mut c).await;
    let second = 1 - first;
    let scope = c.scope().to_string();
    let (a, b) = (c.name(first).to_string(), c.name(second).to_string());

    c.switchover(first, second).await?;
    wait_for_line(&calls, format!("{b} on_role_change primary {scope}")).await?;
    wait_for_line(&calls, format!("{a} on_role_change replica {scope}")).await?;
    wait_healthy(&c, &[0, 1], HEALTHY_TIMEOUT).await?;

    // Failover: the new leader's host is lost (agent and postmaster killed).
    c.stop_node(second, Signal::SIGKILL)?;
    c.signal_postgres(second, Signal::SIGKILL)?;
    let promoted = format!("{a} on_role_change primary {scope}");
    wait_for_line(&calls, promoted.clone()).await?;

    let text = std::fs::read_to_string(&calls)?;
    let lines: Vec<&str> = text.lines().collect();
    let pos = |l: &str| lines.iter().position(|x| *x == l);
    let b_up = pos(&format!("{b} on_role_change primary {scope}")).expect("b promoted");
    let a_down = pos(&format!("{a} on_role_change replica {scope}")).expect("a demoted");
    let a_up = pos(&promoted).expect("a promoted again");
    assert!(b_up < a_up && a_down < a_up, "{lines:?}");
    Ok(())
}
