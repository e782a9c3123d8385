//! End to end: the user's own ways of making a data directory. A replica is created by a
//! custom `create_replica_methods` command that restores a base backup of the leader and
//! recovers from archived WAL (`recovery_conf.restore_command`); a failing first method falls
//! back to `basebackup`; a new cluster is bootstrapped from another cluster's backup by a
//! custom `bootstrap.method` and keeps that backup's system identifier.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use patrol_tests::{
    as_agent_user, chown_to_agent, make_agent_dir, wait_until, Cluster, PG_BIN_DIR,
};

use crate::support::{
    in_recovery, system_identifier, wait_healthy, wait_table_values, HEALTHY_TIMEOUT,
    PROPAGATION_TIMEOUT,
};

/// A restore script, as a backup tool's wrapper would be: it records its arguments in
/// `<dir>/<name>.args`, then copies `--source`'s content into `--datadir`.
fn restore_script(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.sh"));
    let args = dir.join(format!("{name}.args"));
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
set -e
printf '%s\n' "$@" > '{args}'
for a in "$@"; do
  case "$a" in
    --datadir=*) datadir="${{a#--datadir=}}" ;;
    --source=*) source="${{a#--source=}}" ;;
  esac
done
mkdir -p "$datadir"
cp -R "$source"/. "$datadir"/
chmod 700 "$datadir"
"#,
            args = args.display()
        ),
    )
    .expect("write the restore script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    chown_to_agent(&path).expect("chown");
    path
}

/// The arguments a script recorded, one per line.
fn recorded_args(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.args")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Archives WAL into `archive` (every node of the cluster) with local parameters.
fn with_archive(cluster: &mut Cluster, i: usize, archive: &Path) {
    let params = format!(
        "fsync: off, archive_mode: 'on', archive_command: 'test ! -f {a}/%f && cp %p {a}/%f'",
        a = archive.display()
    );
    cluster.set_config_override(i, move |y| *y = y.replace("fsync: off", &params));
}

/// `pg_basebackup` of node `i` into `dest`, as the agent user (the restore scripts run as it),
/// with `-X none`: the WAL needed to make it consistent is only in the archive (pg_basebackup
/// waits until it is archived).
fn base_backup(cluster: &Cluster, i: usize, dest: &Path) {
    let mut cmd = Command::new(Path::new(PG_BIN_DIR).join("pg_basebackup"));
    cmd.arg("-D")
        .arg(dest)
        .args([
            "-X",
            "none",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-U",
            "replicator",
        ])
        .arg("-p")
        .arg(cluster.pg_port(i).to_string())
        .env("PGPASSWORD", "replsecret");
    as_agent_user(&mut cmd).expect("as the agent user");
    let out = cmd.output().expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of any etcd key (another scope's too).
async fn etcd_value(cluster: &Cluster, key: &str) -> anyhow::Result<Option<String>> {
    let r = cluster.etcd().client().await?.get(key, None).await?;
    Ok(r.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

async fn insert(cluster: &Cluster, i: usize, sql: &str) {
    cluster
        .connect(i)
        .await
        .expect("connect")
        .batch_execute(sql)
        .await
        .expect(sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_created_by_custom_methods_with_fallback() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let root = cluster.root().to_path_buf();
    let archive = root.join("archive");
    let backup = root.join("backup");
    make_agent_dir(&archive).expect("archive dir");
    with_archive(&mut cluster, 0, &archive);
    cluster.start_node(0).expect("start pg0");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");
    insert(
        &cluster,
        0,
        "CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('in-backup');",
    )
    .await;
    base_backup(&cluster, 0, &backup);
    insert(&cluster, 0, "INSERT INTO t VALUES ('after-backup')").await;

    // pg1: a failing method, then the restore from the backup plus the archive.
    let script = restore_script(&root, "restore");
    let (s, b, a) = (script.clone(), backup.clone(), archive.clone());
    let params = format!(
        "fsync: off, archive_mode: 'on', archive_command: 'test ! -f {a}/%f && cp %p {a}/%f'",
        a = archive.display()
    );
    cluster.set_config_override(1, move |y| {
        *y = y.replace("fsync: off", &params);
        y.push_str(&format!(
            "  create_replica_methods: [broken, restore]\n  broken: {{command: /bin/false}}\n  restore: {{command: '{s} --source={b}', threads: 4}}\n  recovery_conf: {{restore_command: 'cp {a}/%f %p'}}\n",
            s = s.display(),
            b = b.display(),
            a = a.display(),
        ));
        *y = y.replace("tags: {}\n", "");
        y.push_str("tags: {}\n");
    });
    // pg2: a failing method, then pg_basebackup.
    let params = format!(
        "fsync: off, archive_mode: 'on', archive_command: 'test ! -f {a}/%f && cp %p {a}/%f'",
        a = archive.display()
    );
    cluster.set_config_override(2, move |y| {
        *y = y.replace("fsync: off", &params);
        *y = y.replace("tags: {}\n", "");
        y.push_str("  create_replica_methods: [broken, basebackup]\n  broken: {command: 'sh -c \"exit 3\"'}\ntags: {}\n");
    });
    cluster.start_node(1).expect("start pg1");
    cluster.start_node(2).expect("start pg2");
    wait_healthy(&cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("both replicas stream from pg0");

    // pg1 was restored by the script, with Patroni's arguments, and recovered from the archive.
    let args = recorded_args(&root, "restore");
    let connstring = args
        .iter()
        .find(|a| a.starts_with("--connstring="))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        args,
        vec![
            format!("--source={}", backup.display()),
            "--threads=4".to_string(),
            format!("--scope={}", cluster.scope()),
            "--role=replica".to_string(),
            format!("--datadir={}", cluster.data_dir(1).display()),
            connstring.clone(),
        ],
        "the method's arguments"
    );
    assert!(
        connstring.contains(&format!("port={}", cluster.pg_port(0)))
            && connstring.contains("user='replicator'")
            && !connstring.contains("replsecret"),
        "the connection string names the leader and no password: {connstring}"
    );
    let log = cluster.agent_log(1);
    assert!(
        log.contains("Error creating replica using method broken")
            && log.contains("replica has been created using restore"),
        "pg1 fell back from broken to restore:\n{log}"
    );
    let postmaster =
        std::fs::read_to_string(cluster.data_dir(1).join("log/postmaster.log")).unwrap_or_default();
    assert!(
        postmaster.contains("restored log file"),
        "pg1 replayed WAL from the archive (restore_command):\n{postmaster}"
    );
    let client = cluster.connect(1).await.expect("connect pg1");
    let restore: String = client
        .query_one("SHOW restore_command", &[])
        .await
        .expect("restore_command")
        .get(0);
    assert_eq!(restore, format!("cp {}/%f %p", archive.display()));
    assert_eq!(
        system_identifier(&cluster, 1).await.expect("sysid"),
        system_identifier(&cluster, 0).await.expect("sysid")
    );

    // pg2 fell back to pg_basebackup.
    let log = cluster.agent_log(2);
    assert!(
        log.contains("Error creating replica using method broken")
            && log.contains("replica has been created using basebackup"),
        "pg2 fell back to basebackup:\n{log}"
    );

    // Both replicas are replicas of the leader and follow it.
    insert(&cluster, 0, "INSERT INTO t VALUES ('later')").await;
    for i in [1, 2] {
        assert!(in_recovery(&cluster, i).await.expect("recovery"));
        wait_table_values(
            &cluster,
            i,
            &["after-backup", "in-backup", "later"],
            PROPAGATION_TIMEOUT,
        )
        .await
        .expect("every row on the replica");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_is_bootstrapped_from_a_backup_by_a_custom_method() {
    let mut cluster = Cluster::new(2).expect("cluster");
    let root = cluster.root().to_path_buf();
    let archive = root.join("archive");
    let backup = root.join("backup");
    make_agent_dir(&archive).expect("archive dir");
    with_archive(&mut cluster, 0, &archive);
    cluster.start_node(0).expect("start pg0");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");
    insert(
        &cluster,
        0,
        "CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('in-backup');",
    )
    .await;
    base_backup(&cluster, 0, &backup);
    // After the backup: archived, so the recovery replays it too.
    insert(&cluster, 0, "INSERT INTO t VALUES ('archived')").await;
    let client = cluster.connect(0).await.expect("connect pg0");
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .expect("segment")
        .get(0);
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .expect("switch");
    let archived = archive.join(&segment);
    wait_until(
        "the last segment to be archived",
        PROPAGATION_TIMEOUT,
        || {
            let done = archived.exists();
            async move { Ok(done.then_some(())) }
        },
    )
    .await
    .expect("archived");

    // pg1 starts a cluster of its own from that backup.
    let scope = format!("{}-restored", cluster.scope());
    let script = restore_script(&root, "bootstrap");
    let (s, b, a, sc) = (
        script.clone(),
        backup.clone(),
        archive.clone(),
        scope.clone(),
    );
    let old_scope = format!("scope: {}\n", cluster.scope());
    cluster.set_config_override(1, move |y| {
        *y = y.replace(&old_scope, &format!("scope: {sc}\n"));
        *y = y.replace(
            "  initdb:",
            &format!(
                "  method: restore\n  restore:\n    command: '{s}'\n    source: {b}\n    recovery_conf: {{restore_command: 'cp {a}/%f %p', recovery_target_action: promote, recovery_target_timeline: latest}}\n  initdb:",
                s = s.display(),
                b = b.display(),
                a = a.display(),
            ),
        );
    });
    cluster.start_node(1).expect("start pg1");
    let prefix = format!("/service/{scope}/");
    let (cl, p) = (&cluster, &prefix);
    let leader = wait_until(
        "pg1 to lead the restored cluster",
        HEALTHY_TIMEOUT,
        || async move {
            Ok(etcd_value(cl, &format!("{p}leader"))
                .await?
                .filter(|v| v == "pg1"))
        },
    )
    .await;
    assert!(leader.is_ok(), "{leader:?}\n{}", cluster.agent_log(1));

    // The restored data is the new cluster: the backup's rows and archived WAL, the backup's
    // system identifier (in its `initialize` key too), a writable primary.
    assert_eq!(
        recorded_args(&root, "bootstrap"),
        vec![
            format!("--scope={scope}"),
            format!("--datadir={}", cluster.data_dir(1).display()),
            format!("--source={}", backup.display()),
        ]
    );
    wait_table_values(&cluster, 1, &["archived", "in-backup"], PROPAGATION_TIMEOUT)
        .await
        .expect("the backup's rows and the archived ones");
    assert!(!in_recovery(&cluster, 1).await.expect("recovery"));
    let sysid = system_identifier(&cluster, 1).await.expect("sysid");
    assert_eq!(sysid, system_identifier(&cluster, 0).await.expect("sysid"));
    assert_eq!(
        etcd_value(&cluster, &format!("{prefix}initialize"))
            .await
            .expect("initialize"),
        Some(sysid)
    );
    insert(&cluster, 1, "INSERT INTO t VALUES ('new')").await;
    // The recovery settings are gone once it is a primary.
    assert!(!cluster.data_dir(1).join("recovery.signal").exists());
    let conf = std::fs::read_to_string(cluster.data_dir(1).join("postgresql.conf"))
        .expect("postgresql.conf");
    assert!(!conf.contains("restore_command"), "{conf}");
}
