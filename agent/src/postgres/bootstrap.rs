//! Flow ② 1.5, the bootstrap long operation on the real PostgreSQL: initdb, pg_hba,
//! configuration, start as primary, roles, `post_bootstrap`. Writing `initialize`, `config`
//! and the leader key is the HA loop's (`FinishBootstrap`).

use std::time::Duration;

use anyhow::Context;
use patrol_dcs::ClusterConfig;

use super::{ConfigFiles, PgClient, Postgres};
use crate::config::Config;

/// The bootstrap long operation (flow ② 1.5): initdb, pg_hba, configuration, start as primary,
/// roles. Writing `initialize`, `config` and the leader key is `FinishBootstrap`.
pub async fn bootstrap(
    pg: &Postgres,
    client: &PgClient,
    cfg: &Config,
    dynamic: &ClusterConfig,
) -> anyhow::Result<()> {
    if cfg.bootstrap.method != "initdb" {
        anyhow::bail!(
            "bootstrap method {:?} is not supported yet (only initdb)",
            cfg.bootstrap.method
        );
    }
    pg.initdb(&cfg.bootstrap.initdb).await.context("initdb")?;
    if cfg.postgresql.pg_hba.is_none() && !cfg.bootstrap.pg_hba.is_empty() {
        super::append_pg_hba(&pg.config_dir, &cfg.bootstrap.pg_hba)
            .context("writing pg_hba.conf")?;
    }
    let mut parameters = dynamic.parameters();
    for (k, v) in &cfg.postgresql.parameters {
        parameters.insert(k.clone(), v.clone());
    }
    let files = ConfigFiles {
        parameters,
        pg_hba: cfg.postgresql.pg_hba.clone().or_else(|| dynamic.pg_hba()),
        pg_ident: cfg.postgresql.pg_ident.clone(),
        recovery: None,
    };
    pg.write_config(&files).context("writing configuration")?;
    pg.write_pgpass().context("writing the passfile")?;
    let params = pg.cmdline_params(&dynamic.parameters());
    pg.start(&params, Duration::from_secs(cfg.postgresql.pg_ctl_timeout))
        .await
        .context("starting PostgreSQL")?;
    client.reset().await;
    client
        .execute_unlogged(&roles_sql(cfg))
        .await
        .context("creating roles")?;
    if let Some(script) = &cfg.bootstrap.post_bootstrap {
        run_post_bootstrap(script, pg).await?;
    }
    Ok(())
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
