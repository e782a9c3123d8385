//! The router's stats page in a real browser (headless Chromium): a screenshot that is not
//! blank, and the rendered DOM (`--dump-dom`) showing the leader, the replicas with their lag,
//! the pools and the sessions; after a switchover the page, loaded again, shows the new
//! leader. `PATROL_UPDATE_SCREENSHOT=1` copies the screenshot to `docs/stats-page.png`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{index_of, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};
use anyhow::{bail, Context};
use patrol_tests::{wait_until, workspace_dir, Cluster, Router, Signal};

/// Runs headless Chromium with a fresh profile in `dir`, killing its whole process group
/// after `timeout` (and when it is done: helpers may linger).
fn chromium(dir: &Path, args: &[String], timeout: Duration) -> anyhow::Result<Output> {
    let profile = tempfile::Builder::new()
        .prefix("chromium-profile-")
        .tempdir_in(dir)?;
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let child = cmd.spawn().context("spawning chromium")?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(timeout);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    match out {
        Ok(o) => Ok(o?),
        Err(_) => bail!("chromium did not finish within {timeout:?}"),
    }
}

fn screenshot(dir: &Path, url: &str, name: &str) -> anyhow::Result<PathBuf> {
    let png = dir.join(name);
    let out = chromium(
        dir,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,900".into(),
            url.into(),
        ],
        Duration::from_secs(90),
    )?;
    if !png.is_file() {
        bail!(
            "no screenshot {} ({}): {}",
            png.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(png)
}

fn dump_dom(dir: &Path, url: &str) -> anyhow::Result<String> {
    let out = chromium(
        dir,
        &["--dump-dom".into(), url.into()],
        Duration::from_secs(90),
    )?;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    if !dom.contains("</html>") {
        bail!(
            "chromium --dump-dom printed no page ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dom)
}

/// Width and height from a PNG's IHDR.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

/// The text of the element with `id="<id>"` (its inner HTML up to the next tag).
fn by_id<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].trim())
}

/// The member table as rows of cell texts, with each row's class.
fn member_rows(dom: &str) -> Vec<(String, Vec<String>)> {
    let Some(t) = dom.find("id=\"members\"") else {
        return Vec::new();
    };
    let table = &dom[t..dom[t..].find("</table>").map_or(dom.len(), |e| t + e)];
    let mut rows = Vec::new();
    for tr in table.split("<tr").skip(1) {
        let class = tr
            .split_once("class=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(c, _)| c.to_string())
            .unwrap_or_default();
        let cells: Vec<String> = tr
            .split("<td>")
            .skip(1)
            .map(|c| c.split("</td>").next().unwrap_or("").trim().to_string())
            .collect();
        if !cells.is_empty() {
            rows.push((class, cells));
        }
    }
    rows
}

/// Columns of the member table (see `router/src/admin.rs`).
const NAME: usize = 0;
const ROLE: usize = 2;
const SYNC: usize = 3;
const LAG_BYTES: usize = 6;
const WRITE_POOL: usize = 8;
const READ_POOL: usize = 9;
const WRITE_SESSIONS: usize = 11;
const READ_SESSIONS: usize = 12;

/// Checks the dumped page shows `leader` as the leader and write backend, every other running
/// member as a replica in the read pool with a lag, and the held sessions.
fn check_page(dom: &str, leader: &str, replicas: &[&str], sessions: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        dom.contains("http-equiv=\"refresh\""),
        "the page does not refresh itself"
    );
    anyhow::ensure!(
        by_id(dom, "leader") == Some(leader),
        "leader shown: {:?}",
        by_id(dom, "leader")
    );
    anyhow::ensure!(
        by_id(dom, "writer") == Some(leader),
        "write backend shown: {:?}",
        by_id(dom, "writer")
    );
    let readers = by_id(dom, "readers").unwrap_or("");
    for r in replicas {
        anyhow::ensure!(readers.contains(r), "read pool shown: {readers:?}");
    }
    let rows = member_rows(dom);
    let row = |n: &str| {
        rows.iter()
            .find(|(_, c)| c.get(NAME).map(String::as_str) == Some(n))
    };
    let (class, cells) = row(leader).with_context(|| format!("no row for {leader}: {rows:?}"))?;
    anyhow::ensure!(
        class == "writer" && cells[ROLE] == "leader" && cells[WRITE_POOL] == "yes",
        "leader row: {class} {cells:?}"
    );
    if sessions {
        anyhow::ensure!(cells[WRITE_SESSIONS] == "1", "leader row: {cells:?}");
    }
    let mut read_sessions = 0;
    for r in replicas {
        let (class, cells) = row(r).with_context(|| format!("no row for {r}: {rows:?}"))?;
        anyhow::ensure!(
            class == "reader"
                && cells[ROLE] == "replica"
                && cells[READ_POOL] == "yes"
                && cells[SYNC] == "async",
            "replica row: {class} {cells:?}"
        );
        anyhow::ensure!(
            cells[LAG_BYTES].parse::<u64>().is_ok(),
            "replica {r} shows no lag: {cells:?}"
        );
        read_sessions += cells[READ_SESSIONS].parse::<u32>().unwrap_or(0);
    }
    if sessions {
        anyhow::ensure!(read_sessions == 1, "read sessions shown: {rows:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_page_in_headless_chromium_shows_leader_replicas_lag_pools_and_follows_a_switchover()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let router = Router::start(&cluster, "").expect("router");
    let url = format!("{}/", router.admin_url());
    let replicas: Vec<&str> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.name(i))
        .collect();
    let write = router.connect_write().await.expect("write session");
    write
        .batch_execute("CREATE TABLE page (v int); INSERT INTO page VALUES (1)")
        .await
        .expect("write");
    let read = wait_until("a read session", PROPAGATION_TIMEOUT, || async {
        let c = router.connect_read().await?;
        c.query_one("SELECT count(*) FROM page", &[]).await?;
        Ok(Some(c))
    })
    .await
    .expect("read session");
    wait_until(
        "the router to list both pools",
        PROPAGATION_TIMEOUT,
        || async {
            let s = router.stats().await?;
            let readers = s["read_backends"].as_array().map_or(0, |a| a.len());
            Ok((s["write_backend"]["name"] == cluster.name(leader) && readers == 2).then_some(()))
        },
    )
    .await
    .expect("pools");

    // Screenshot: a real PNG of the window size, with content (much larger than a blank page).
    let started = Instant::now();
    let png = screenshot(d, &url, "stats.png").expect("screenshot");
    let bytes = std::fs::read(&png).expect("read screenshot");
    assert_eq!(png_size(&bytes), Some((1400, 900)), "not a 1400x900 PNG");
    let blank = screenshot(d, "about:blank", "blank.png").expect("blank screenshot");
    let blank_len = std::fs::metadata(&blank).expect("blank").len();
    assert!(
        bytes.len() as u64 > 3 * blank_len && bytes.len() > 20_000,
        "the screenshot looks empty: {} bytes (blank page: {blank_len})",
        bytes.len()
    );
    println!(
        "screenshot: {} bytes (blank page {blank_len}), {:.1} s",
        bytes.len(),
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("PATROL_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let dest = workspace_dir().join("docs/stats-page.png");
        std::fs::copy(&png, &dest).expect("copy the screenshot to docs/");
        println!("updated {}", dest.display());
    }

    let dom = dump_dom(d, &url).expect("dump DOM");
    check_page(&dom, cluster.name(leader), &replicas, true)
        .unwrap_or_else(|e| panic!("stats page: {e:#}\n{dom}"));

    // Switchover: the leader's agent stops; the page, loaded again, names the new leader.
    drop(write);
    drop(read);
    cluster
        .stop_node(leader, Signal::SIGTERM)
        .expect("SIGTERM the leader's agent");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = wait_healthy(&cluster, &others, HEALTHY_TIMEOUT)
        .await
        .expect("new leader");
    let new_name = cluster.name(new).to_string();
    let remaining: Vec<&str> = others
        .iter()
        .filter(|&&i| i != new)
        .map(|&i| cluster.name(i))
        .collect();
    let dom = wait_until(
        "the stats page to show the new leader",
        PROPAGATION_TIMEOUT,
        || async {
            let dom = dump_dom(d, &url)?;
            check_page(&dom, &new_name, &remaining, false)?;
            Ok(Some(dom))
        },
    )
    .await
    .expect("page after the switchover");
    let rows = member_rows(&dom);
    // The stopped member is listed out of every pool until its key expires.
    let old = rows.iter().find(|(_, c)| c[NAME] == cluster.name(leader));
    if let Some(old) = old {
        assert_eq!(old.0, "out", "old leader row: {old:?}");
    }
    assert!(index_of(&cluster, &new_name).is_some());
    println!("after the switchover the page shows leader {new_name}; old leader row {old:?}");
}
