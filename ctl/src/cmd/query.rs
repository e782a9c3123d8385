//! `query` and `dsn`: SQL run on a chosen member, its rows printed as patronictl prints
//! psycopg2's; the connection string of a member.

use std::time::{Duration, Instant};

use anyhow::Context;
use patrol_dcs::{parse_conn_url, Cluster};
use serde_json::Value;

use crate::cli::{DsnArgs, QueryArgs};
use crate::client;
use crate::cmd::{check_group, fmt_of, role_of};
use crate::context::Ctx;
use crate::error::{fail, CtlError};
use crate::members::{any_member, dsn as member_dsn, CtlRole};
use crate::pyfmt::{py_str, str_repr};
use crate::table::print_output;
use crate::term::{out, read_source, watch_interval};
use crate::time::timestamp;

pub(crate) async fn dsn(ctx: &Ctx, a: DsnArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    let dcs = ctx.dcs(&name).await?;
    let c = ctx.cluster(&dcs).await?;
    let role = a.role.as_deref().and_then(CtlRole::parse);
    let m = any_member(&c, role, a.member.as_deref()).map_err(CtlError)?;
    match m.and_then(member_dsn) {
        Some(d) => {
            out(&format!("{d}\n"));
            Ok(())
        }
        None => fail("Can not find a suitable member"),
    }
}

fn py_str_of_timestamp(text: &str) -> String {
    // PostgreSQL `2024-01-02 03:04:05.12+01` -> Python `2024-01-02 03:04:05.120000+01:00`.
    let (main, tz) = match text.rfind(['+', '-']) {
        Some(i) if i > 10 => (&text[..i], Some(&text[i..])),
        _ => (text, None),
    };
    let main = match main.split_once('.') {
        Some((a, f)) => format!("{a}.{:0<6}", f),
        None => main.to_string(),
    };
    match tz {
        Some(tz) => {
            let sign = &tz[..1];
            let parts: Vec<&str> = tz[1..].split(':').collect();
            let hh = parts.first().copied().unwrap_or("00");
            let mm = parts.get(1).copied().unwrap_or("00");
            format!("{main}{sign}{hh:0>2}:{mm:0>2}")
        }
        None => main,
    }
}

/// A text-format value as psycopg2 would decode it, for the given column type.
fn typed_value(text: Option<&str>, ty: Option<&tokio_postgres::types::Type>) -> Value {
    use tokio_postgres::types::Type;
    let Some(t) = text else { return Value::Null };
    match ty {
        Some(ty) if *ty == Type::BOOL => Value::Bool(t == "t"),
        Some(ty) if [Type::INT2, Type::INT4, Type::INT8, Type::OID].contains(ty) => t
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| t.into()),
        Some(ty) if [Type::FLOAT4, Type::FLOAT8].contains(ty) => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| t.into()),
        Some(ty) if *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP => {
            Value::String(py_str_of_timestamp(t))
        }
        _ => Value::String(t.to_string()),
    }
}

type QueryOutput = (Vec<Vec<Value>>, Option<Vec<String>>);

#[allow(clippy::too_many_arguments)]
async fn query_member(
    cluster: &Cluster,
    member: Option<&str>,
    role: Option<&str>,
    sql: &str,
    user: &str,
    password: Option<&str>,
    dbname: &str,
) -> anyhow::Result<QueryOutput> {
    let role_e = role.map(role_of);
    let m = any_member(cluster, role_e, member).map_err(CtlError)?;
    let none = |member: Option<&str>, role: Option<&str>| {
        let message = match (member, role) {
            (Some(m), _) => format!("No connection to member {m} is available"),
            (None, Some(r)) => format!("No connection to role {} is available", str_repr(r)),
            _ => "No connection is available".to_string(),
        };
        (
            vec![vec![Value::from(timestamp(0)), Value::from(message)]],
            None,
        )
    };
    let Some(m) = m else {
        return Ok(none(member, role));
    };
    let Some((host, port)) = parse_conn_url(&m.data.conn_url) else {
        return Ok(none(member, role));
    };
    let err = |e: &tokio_postgres::Error| {
        let message = e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(e) {
                    s = format!("{s}: {src}");
                }
                s
            })
            .replace('\n', " ");
        (
            vec![vec![
                Value::from(timestamp(0)),
                Value::from(format!("ERROR, SQLSTATE: {message}")),
            ]],
            None,
        )
    };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&host)
        .port(port)
        .user(user)
        .dbname(dbname)
        .application_name("Patroni ctl")
        .connect_timeout(Duration::from_secs(5));
    if let Some(p) = password {
        cfg.password(p);
    }
    let (client, conn) = match cfg.connect(tokio_postgres::NoTls).await {
        Ok(x) => x,
        Err(e) => return Ok(err(&e)),
    };
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        if let Some(r) = role_e.filter(|r| ![CtlRole::Any, CtlRole::Leader].contains(r)) {
            let in_recovery = match client
                .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                .await
            {
                Ok(row) => row.get::<_, bool>(0),
                Err(e) => return Ok(err(&e)),
            };
            let ok = (in_recovery
                && [CtlRole::Replica, CtlRole::Standby, CtlRole::StandbyLeader].contains(&r))
                || (!in_recovery && r == CtlRole::Primary);
            if !ok {
                return Ok(none(member, role));
            }
        }
        let types: Option<Vec<tokio_postgres::types::Type>> = client
            .prepare(sql)
            .await
            .ok()
            .map(|s| s.columns().iter().map(|c| c.type_().clone()).collect());
        let msgs = match client.simple_query(sql).await {
            Ok(m) => m,
            Err(e) => return Ok(err(&e)),
        };
        let mut header: Option<Vec<String>> = None;
        let mut rows: Vec<Vec<Value>> = Vec::new();
        for msg in msgs {
            match msg {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    header = Some(cols.iter().map(|c| c.name().to_string()).collect());
                    rows.clear();
                }
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    if header.is_none() {
                        header = Some(r.columns().iter().map(|c| c.name().to_string()).collect());
                    }
                    let row = (0..r.len())
                        .map(|i| typed_value(r.get(i), types.as_ref().and_then(|t| t.get(i))))
                        .collect();
                    rows.push(row);
                }
                _ => {}
            }
        }
        match header {
            Some(h) => Ok((rows, Some(h))),
            None => Ok((
                vec![vec![
                    Value::from(timestamp(0)),
                    Value::from("ERROR, SQLSTATE: no results to fetch"),
                ]],
                None,
            )),
        }
    }
    .await;
    drop(client);
    let _ = task.await;
    result
}

pub(crate) async fn query(ctx: &Ctx, a: QueryArgs) -> anyhow::Result<()> {
    let QueryArgs {
        cluster_name,
        group,
        fmt,
        file,
        password,
        username,
        w,
        watch,
        role,
        member,
        delimiter,
        command,
        dbname,
    } = a;
    check_group(group)?;
    let name = &ctx.scope_or(cluster_name)?;
    let sql = match (file, command) {
        (Some(_), Some(_)) => return fail("--file and --command are mutually exclusive options"),
        (Some(f), None) => {
            if f.as_os_str() == "-" {
                read_source("-")?
            } else {
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
            }
        }
        (None, Some(c)) => c,
        (None, None) => return fail("You need to specify either --command or --file"),
    };
    let superuser = ctx
        .doc
        .get("postgresql")
        .and_then(|p| p.get("authentication"))
        .and_then(|a| a.get("superuser"))
        .cloned()
        .unwrap_or(Value::Null);
    let su_name = superuser.get("username").map(py_str);
    let su_pass = superuser.get("password").map(py_str);
    let user = username
        .clone()
        .or_else(|| su_name.clone())
        .or_else(|| std::env::var("PGUSER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into());
    let pass = if password {
        Some(client::prompt_password("Password")?)
    } else if su_name.as_deref() == Some(user.as_str()) && su_pass.is_some() {
        su_pass
    } else {
        std::env::var("PGPASSWORD").ok()
    };
    let db = dbname
        .or_else(|| std::env::var("PGDATABASE").ok())
        .unwrap_or_else(|| user.clone());
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let interval = watch_interval(w, watch);
    loop {
        let started = Instant::now();
        let (rows, header) = query_member(
            &cluster,
            member.as_deref(),
            role.as_deref(),
            &sql,
            &user,
            pass.as_deref(),
            &db,
        )
        .await?;
        out(&print_output(
            &header.unwrap_or_default(),
            &rows,
            &[],
            fmt_of(&fmt),
            "",
            &delimiter,
        ));
        let Some(iv) = interval else { return Ok(()) };
        tokio::time::sleep(iv.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_from_postgres_text() {
        assert_eq!(
            py_str_of_timestamp("2024-01-02 03:04:05.12+01"),
            "2024-01-02 03:04:05.120000+01:00"
        );
        assert_eq!(
            py_str_of_timestamp("2024-01-02 03:04:05"),
            "2024-01-02 03:04:05"
        );
    }
}
