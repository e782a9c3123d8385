//! `configure` and `scaffold`: a patronictl configuration file, and a cluster's keys in the DCS
//! (initialize key, a permanent leader) before any agent runs.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::cli::{ConfigureArgs, ScaffoldArgs};
use crate::client;
use crate::config_edit::load_yaml;
use crate::context::{default_config_path, parse_dcs_url, Ctx};
use crate::error::{fail, CtlError};
use crate::pyfmt::{json_dumps_compact, py_str, yaml_dump};
use crate::term::{out, warn};

pub(crate) fn configure(a: ConfigureArgs) -> anyhow::Result<()> {
    let ConfigureArgs {
        config_file,
        dcs,
        namespace,
        scope,
    } = a;
    let path = match config_file {
        Some(p) => p,
        None => PathBuf::from(client::prompt(
            "Configuration file",
            Some(&default_config_path().display().to_string()),
        )?),
    };
    let dcs = match dcs {
        Some(d) => d,
        None => client::prompt("DCS connect url", Some("etcd3://localhost:2379"))?,
    };
    let namespace = match namespace {
        Some(n) => n,
        None => client::prompt("Namespace", Some("/service/"))?,
    };
    let scope = match scope {
        Some(s) => s,
        None => client::prompt("Cluster name (scope)", Some(""))?,
    };
    let (hp, ns_from_url) = parse_dcs_url(&dcs)?;
    let mut doc = Map::new();
    doc.insert("etcd3".into(), json!({ "host": hp }));
    doc.insert(
        "namespace".into(),
        Value::String(ns_from_url.unwrap_or(namespace)),
    );
    if !scope.is_empty() {
        doc.insert("scope".into(), Value::String(scope));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, yaml_dump(&Value::Object(doc), false))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `host[:port]` of a `listen`/`connect_address` value, with a default port.
fn address(v: Option<&Value>, default_host: &str, default_port: u16) -> String {
    let s = v.map(py_str).unwrap_or_default();
    let first = s.split(',').next().unwrap_or("").trim();
    if first.is_empty() {
        return format!("{default_host}:{default_port}");
    }
    if first.contains(':') && !first.ends_with(']') {
        first.to_string()
    } else {
        format!("{first}:{default_port}")
    }
}

pub(crate) async fn scaffold(ctx: &Ctx, a: ScaffoldArgs) -> anyhow::Result<()> {
    let ScaffoldArgs {
        cluster_name,
        sysid,
        config: config_file,
    } = a;
    let (name, sysid) = (cluster_name.as_str(), sysid.as_str());
    let config_json = match &config_file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            match load_yaml(&text).map_err(CtlError)? {
                Value::Object(m) => Some(json_dumps_compact(&Value::Object(m))),
                _ => {
                    return fail(format!(
                        "{}: the dynamic configuration must be a mapping",
                        f.display()
                    ))
                }
            }
        }
        None => None,
    };
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    if cluster.initialize.is_some() {
        return fail("This cluster is already initialized");
    }
    if !dcs
        .initialize(true, sysid)
        .await
        .context("writing the initialize key")?
    {
        return fail(format!("Initialize key for cluster {name} already exists"));
    }
    // The permanent member and leader keys Patroni's scaffold writes (no lease: they never
    // expire), named after the config's `name` or the cluster.
    let member = ctx
        .doc
        .get("name")
        .map(py_str)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.to_string());
    let pg = ctx.doc.get("postgresql").cloned().unwrap_or(Value::Null);
    let api = ctx.doc.get("restapi").cloned().unwrap_or(Value::Null);
    let pg_addr = address(
        pg.get("connect_address").or_else(|| pg.get("listen")),
        "127.0.0.1",
        5432,
    );
    let api_addr = address(
        api.get("connect_address").or_else(|| api.get("listen")),
        "127.0.0.1",
        8008,
    );
    let proto = if api.get("certfile").is_some() {
        "https"
    } else {
        "http"
    };
    let data = json!({
        "conn_url": format!("postgres://{pg_addr}/postgres"),
        "api_url": format!("{proto}://{api_addr}/patroni"),
        "state": "running",
        "role": "primary",
    });
    let written: anyhow::Result<bool> = async {
        let ok = dcs
            .put_permanent_leader(&member, &json_dumps_compact(&data))
            .await?;
        if ok {
            if let Some(c) = &config_json {
                dcs.set_config(c, None).await?;
            }
        }
        Ok(ok)
    }
    .await;
    if !matches!(written, Ok(true)) {
        let _ = dcs.delete_cluster().await;
        if let Err(e) = written {
            warn(&format!("{e:#}"));
        }
        return fail(format!(
            "Unable to install permanent leader for cluster {name}"
        ));
    }
    out(&format!("Cluster {name} has been created successfully\n"));
    Ok(())
}
