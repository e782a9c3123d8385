//! Patroni's `log` section end to end: JSON lines in `<log.dir>/patroni.log` only (not on
//! stderr), rotated by size with at most `file_num` old files, the files' mode; a reload that
//! moves the log to another directory in another format; the last line written at shutdown;
//! a log directory that does not exist stops the agent with a clear message; `log.level` and a
//! Patroni logger's level without `RUST_LOG`.

use std::path::Path;
use std::time::Duration;

use patrol_tests::{make_agent_dir, wait_until, Cluster, Signal};
use serde_json::Value;

use crate::support::{wait_healthy, HEALTHY_TIMEOUT};

const FILE_SIZE: u64 = 2000;

/// `(name, size)` of every file in `dir`, sorted.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Every line of every file in `dir` is a JSON object with the format's keys and the static
/// field; returns how many lines there were.
fn check_json_lines(dir: &Path) -> usize {
    let mut n = 0;
    for (name, _) in files(dir) {
        for line in read(&dir.join(&name)).lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
            for key in ["asctime", "levelname", "message"] {
                assert!(
                    v.get(key).is_some_and(Value::is_string),
                    "{name}: no {key}: {line}"
                );
            }
            assert_eq!(v["app"], "patrol-e2e", "{name}: {line}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_files_rotate_by_size_and_a_reload_moves_them() -> anyhow::Result<()> {
    let mut c = Cluster::new(1)?;
    let json_dir = c.node_dir(0).join("json-logs");
    let plain_dir = c.node_dir(0).join("plain-logs");
    make_agent_dir(&json_dir)?;
    make_agent_dir(&plain_dir)?;
    let base = c.config_yaml(0);
    let yaml = format!(
        "{base}log: {{type: json, dir: {}, file_size: {FILE_SIZE}, file_num: 2, mode: 0640, static_fields: {{app: patrol-e2e}}}}\n",
        json_dir.display()
    );
    c.start_node_with_config(0, &yaml)?;
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT).await?;

    // Bootstrapping logs enough to rotate twice; reloads (a few lines each) top it up.
    let http = reqwest::Client::new();
    let reload_url = format!("{}/reload", c.api_url(0));
    wait_until("patroni.log.2", Duration::from_secs(30), || async {
        if json_dir.join("patroni.log.2").exists() {
            return Ok(Some(()));
        }
        http.post(&reload_url).send().await?;
        Ok(None)
    })
    .await?;
    let names: Vec<String> = files(&json_dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["patroni.log", "patroni.log.1", "patroni.log.2"]);
    for (name, size) in files(&json_dir) {
        assert!(size <= FILE_SIZE, "{name} is {size} bytes");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(json_dir.join("patroni.log"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);
    assert!(check_json_lines(&json_dir) > 10);
    let stderr = c.agent_log(0);
    assert!(
        !stderr.contains("levelname") && !stderr.contains(" INFO: "),
        "with log.dir, nothing goes to stderr: {stderr}"
    );

    // A reload moves the log to another directory, as plain lines in another format.
    let yaml = format!(
        "{base}log: {{dir: {}, format: '%(levelname)s|%(name)s|%(message)s'}}\n",
        plain_dir.display()
    );
    std::fs::write(c.config_path(0), &yaml)?;
    c.stop_node(0, Signal::SIGHUP)?;
    let plain_log = plain_dir.join("patroni.log");
    wait_until(
        "the reload in the new log",
        Duration::from_secs(30),
        || async {
            Ok(read(&plain_log)
                .contains("INFO|patrol_agent.ha.runner.requests|reloaded the local configuration")
                .then_some(()))
        },
    )
    .await?;
    // The old directory's writer finished its lines, all of them JSON; then nothing more.
    let before = files(&json_dir);
    check_json_lines(&json_dir);

    c.stop_node(0, Signal::SIGTERM)?;
    let status = c
        .wait_node_exit(0, Duration::from_secs(60))
        .await
        .expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status}");
    // Logged just before the agent exits: the queue is written out at exit.
    let plain = read(&plain_log);
    assert!(
        plain.contains("INFO|patrol_agent.run|patrol stopped\n"),
        "{plain}"
    );
    assert_eq!(
        files(&json_dir),
        before,
        "the old log directory is left alone"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_dir_stops_the_agent_naming_the_file() -> anyhow::Result<()> {
    let mut c = Cluster::new(1)?;
    let missing = c.node_dir(0).join("no-such-dir");
    let yaml = format!("{}log: {{dir: {}}}\n", c.config_yaml(0), missing.display());
    c.start_node_with_config(0, &yaml)?;
    let status = c
        .wait_node_exit(0, Duration::from_secs(30))
        .await
        .expect("the agent exits");
    assert!(!status.success(), "{status}");
    let stderr = c.agent_log(0);
    assert!(
        stderr.contains(&format!(
            "patrol: cannot open the log file {}/patroni.log",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!c.data_dir(0).exists(), "nothing was started");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_and_patroni_loggers_apply_without_rust_log() -> anyhow::Result<()> {
    let mut c = Cluster::new(1)?;
    let yaml = format!(
        "{}log: {{level: WARNING, loggers: {{patroni.ha: INFO}}}}\n",
        c.config_yaml(0)
    );
    // An empty RUST_LOG counts as unset.
    c.start_node_with(0, &yaml, &[("RUST_LOG", "")])?;
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT).await?;
    wait_until(
        "the HA loop's INFO line",
        Duration::from_secs(30),
        || async {
            Ok(c.agent_log(0)
                .contains(" INFO: no action. I am (pg0), the leader with the lock")
                .then_some(()))
        },
    )
    .await?;
    let log = c.agent_log(0);
    // patroni.ha is the HA loop; the rest of the agent logs from WARNING up.
    assert!(
        log.contains(" WARNING: postgresql.parameters.max_connections is ignored"),
        "{log}"
    );
    assert!(!log.contains("starting: member pg0"), "{log}");
    Ok(())
}
