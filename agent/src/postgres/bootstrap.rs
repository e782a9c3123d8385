//! Flow ② 1.5, the bootstrap long operation on the real PostgreSQL: initdb or the user's custom
//! bootstrap method (a restore from a backup), pg_hba, configuration, start as primary (after
//! the archive recovery of a restore), roles, `post_bootstrap`. Writing `initialize`, `config`
//! and the leader key is the HA loop's (`FinishBootstrap`).

use std::time::Duration;

use anyhow::Context;
use patrol_dcs::ClusterConfig;

use super::{ConfigFiles, PgClient, Postgres, Recovery};
use crate::config::{Config, CustomBootstrap};

/// How often the end of a restored cluster's recovery is checked.
const RECOVERY_POLL: Duration = Duration::from_secs(1);

/// The bootstrap long operation (flow ② 1.5): initdb or the custom method, pg_hba,
/// configuration, start as primary, roles. Writing `initialize`, `config` and the leader key
/// is `FinishBootstrap`.
pub async fn bootstrap(
    pg: &Postgres,
    client: &PgClient,
    cfg: &Config,
    dynamic: &ClusterConfig,
) -> anyhow::Result<()> {
    let custom = cfg.bootstrap.custom.as_ref();
    match custom {
        None => pg.initdb(&cfg.bootstrap.initdb).await.context("initdb")?,
        Some(m) => run_custom_bootstrap(pg, m).await?,
    }
    if cfg.postgresql.pg_hba.is_none() && !cfg.bootstrap.pg_hba.is_empty() {
        super::append_pg_hba(&pg.config_dir, &cfg.bootstrap.pg_hba)
            .context("writing pg_hba.conf")?;
    }
    // After a restore: the archive recovery its `recovery_conf` asks for, the recovery files
    // its tool wrote (`keep_existing_recovery_conf`), or none.
    let recovery = custom
        .and_then(|m| m.recovery_conf.as_ref())
        .map(Recovery::archive);
    let keep_recovery = recovery.is_none() && custom.is_some_and(|m| m.keep_existing_recovery_conf);
    // As Patroni: a recovery that promotes at its end runs without hot standby (values such as
    // max_connections may be lower than the backup's), so does one the tool configured.
    let no_hot_standby = keep_recovery
        || recovery.as_ref().is_some_and(|r| {
            r.settings
                .iter()
                .any(|(k, v)| k == "recovery_target_action" && v.eq_ignore_ascii_case("promote"))
        });
    let files = config_files(cfg, dynamic, recovery, keep_recovery);
    pg.write_config(&files).context("writing configuration")?;
    pg.write_pgpass().context("writing the passfile")?;
    let mut params = pg.cmdline_params(&dynamic.parameters());
    if no_hot_standby {
        for (k, v) in &mut params {
            if k == "hot_standby" {
                *v = "off".into();
            }
        }
    }
    let started = pg
        .start(&params, Duration::from_secs(cfg.postgresql.pg_ctl_timeout))
        .await;
    match started {
        Ok(()) => {}
        // A long archive recovery outlasts pg_ctl's wait; the server goes on.
        Err(e) if custom.is_some() && pg.is_running() => {
            tracing::info!("PostgreSQL is still recovering after the custom bootstrap ({e})")
        }
        Err(e) => return Err(e).context("starting PostgreSQL"),
    }
    client.reset().await;
    if custom.is_some() {
        wait_for_end_of_recovery(pg, client).await?;
        // A primary now: no recovery settings or signal files are left.
        pg.write_config(&config_files(cfg, dynamic, None, false))
            .context("writing configuration")?;
        pg.reload().await.context("reloading PostgreSQL")?;
    }
    client
        .execute_unlogged(&roles_sql(cfg))
        .await
        .context("creating roles")?;
    if let Some(script) = &cfg.bootstrap.post_bootstrap {
        run_post_bootstrap(script, pg).await?;
    }
    Ok(())
}

fn config_files(
    cfg: &Config,
    dynamic: &ClusterConfig,
    recovery: Option<Recovery>,
    keep_recovery: bool,
) -> ConfigFiles {
    let mut parameters = dynamic.parameters();
    for (k, v) in &cfg.postgresql.parameters {
        parameters.insert(k.clone(), v.clone());
    }
    ConfigFiles {
        parameters,
        pg_hba: cfg.postgresql.pg_hba.clone().or_else(|| dynamic.pg_hba()),
        pg_ident: cfg.postgresql.pg_ident.clone(),
        recovery,
        keep_recovery,
    }
}

/// The user's custom bootstrap command (Patroni's `_custom_bootstrap`), from the agent's
/// working directory, with `--scope`, `--datadir` and the section's other keys.
async fn run_custom_bootstrap(pg: &Postgres, m: &CustomBootstrap) -> anyhow::Result<()> {
    let datadir = pg.data_dir.display().to_string();
    let (prog, first) = m
        .command
        .split_first()
        .context("the custom bootstrap command is empty")?;
    tracing::info!("Running custom bootstrap script: {}", m.command.join(" "));
    let out = tokio::process::Command::new(prog)
        .args(first)
        .args(m.args(pg.scope(), &datadir))
        .env("PGPASSFILE", &pg.settings().pgpass)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running the custom bootstrap method {}", m.name))?;
    if !out.status.success() {
        anyhow::bail!(
            "the custom bootstrap method {} exited with {}: {} {}",
            m.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    // A trigger file in the restored directory would promote it before its recovery ends.
    let _ = std::fs::remove_file(pg.data_dir.join("promote"));
    Ok(())
}

/// Waits until the restored cluster finished its recovery and runs as a primary (PostgreSQL
/// promotes itself at the end of the archive, or at `recovery_target_action: promote`), as
/// long as it runs: a recovery may take hours, and one that pauses at its target waits for
/// the user, as with Patroni ("waiting for end of recovery after bootstrap").
async fn wait_for_end_of_recovery(pg: &Postgres, client: &PgClient) -> anyhow::Result<()> {
    let mut said = false;
    loop {
        if !pg.is_running() {
            anyhow::bail!(
                "PostgreSQL stopped during the recovery after the custom bootstrap (see {})",
                pg.log_file().display()
            );
        }
        match client.status().await {
            Ok(s) if !s.in_recovery => return Ok(()),
            Ok(_) | Err(_) => {
                if !said {
                    tracing::info!("waiting for end of recovery after bootstrap");
                    said = true;
                }
            }
        }
        tokio::time::sleep(RECOVERY_POLL).await;
    }
}

/// Superuser password, replication role and rewind role (spec 5.3).
fn roles_sql(cfg: &Config) -> String {
    use super::{quote_ident, quote_literal};
    let auth = &cfg.postgresql.authentication;
    let mut sql = String::from("SET synchronous_commit = 'local';\n");
    let ensure = |sql: &mut String, user: &str, pw: Option<&str>, opts: &str| {
        let pw = pw
            .map(|p| format!(" PASSWORD {}", quote_literal(p)))
            .unwrap_or_default();
        sql.push_str(&format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {id} {opts}; END IF; END$$;\nALTER ROLE {id} WITH {opts}{pw};\n",
            lit = quote_literal(user),
            id = quote_ident(user),
        ));
    };
    ensure(
        &mut sql,
        &auth.superuser.username,
        auth.superuser.password.as_deref(),
        "SUPERUSER LOGIN",
    );
    if auth.replication.username != auth.superuser.username {
        ensure(
            &mut sql,
            &auth.replication.username,
            auth.replication.password.as_deref(),
            "REPLICATION LOGIN",
        );
    }
    if let Some(rw) = &auth.rewind {
        if rw.username != auth.superuser.username {
            ensure(&mut sql, &rw.username, rw.password.as_deref(), "LOGIN");
            let id = quote_ident(&rw.username);
            for f in [
                "pg_catalog.pg_ls_dir(text, boolean, boolean)",
                "pg_catalog.pg_stat_file(text, boolean)",
                "pg_catalog.pg_read_binary_file(text)",
                "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
            ] {
                sql.push_str(&format!("GRANT EXECUTE ON FUNCTION {f} TO {id};\n"));
            }
        }
    }
    sql
}

/// `post_bootstrap` (or `post_init`) as Patroni runs it: the command split as a shell would
/// (`psql -w -c "SELECT 1"`), the superuser's local connection string (no password: it is in
/// the passfile that `PGPASSFILE` names) appended as the last argument.
async fn run_post_bootstrap(script: &str, pg: &Postgres) -> anyhow::Result<()> {
    let argv = shlex::split(script)
        .with_context(|| format!("post_bootstrap {script:?}: unbalanced quotes"))?;
    let (prog, args) = argv.split_first().context("post_bootstrap is empty")?;
    pg.write_pgpass().context("writing the passfile")?;
    let out = tokio::process::Command::new(prog)
        .args(args)
        .arg(pg.local_dsn())
        .env("PGPASSFILE", &pg.settings().pgpass)
        .env(
            "PGOPTIONS",
            "-c synchronous_commit=local -c statement_timeout=0",
        )
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running post_bootstrap {script:?}"))?;
    let output = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    if !out.status.success() {
        anyhow::bail!(
            "post_bootstrap {script:?} exited with {}: {}",
            out.status,
            output.trim()
        );
    }
    Ok(())
}
