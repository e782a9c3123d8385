//! What every command starts from: the configuration (`-c`, `--dcs-url`, `PATRONI_*`), the
//! etcd connection it names and the REST client for members.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use patrol_config::{self as config, CtlTarget};
use patrol_dcs::{cluster_prefix, Cluster, EtcdDcs, EtcdSettings};
use serde_json::{json, Map, Value};

use crate::client::{RestClient, RestSettings};
use crate::error::{fail, CtlError};
use crate::pyfmt::py_str;

/// The loaded configuration: DCS target, REST settings and the raw document.
pub(crate) struct Ctx {
    pub(crate) doc: Map<String, Value>,
    pub(crate) target: CtlTarget,
    rest: RestSettings,
    http: Option<RestClient>,
}

pub(crate) fn default_config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".config")
        });
    base.join("patroni").join("patronictl.yaml")
}

/// patronictl's `parse_dcs`: `[scheme://]host[:port][/namespace]` as a DCS section.
pub(crate) fn parse_dcs_url(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let with = if url.contains("//") {
        url.to_string()
    } else {
        format!("//{url}")
    };
    let (scheme, rest) = with.split_once("//").unwrap_or(("", &with));
    let scheme = scheme.trim_end_matches(':');
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
        _ => (hostport, None),
    };
    let scheme = if scheme.is_empty() {
        match port {
            Some(2181) => "zookeeper",
            Some(8181) => "exhibitor",
            Some(8500) => "consul",
            _ => "etcd",
        }
    } else {
        scheme
    };
    match scheme {
        "etcd" | "etcd3" => {}
        "zookeeper" | "exhibitor" | "consul" => {
            return fail(format!(
                "Patrol supports only etcd (v3 API) as DCS, not {scheme}"
            ))
        }
        other => return fail(format!("Unknown dcs scheme: {other}")),
    }
    let host = if host.is_empty() { "localhost" } else { host };
    let hp = format!("{host}:{}", port.unwrap_or(2379));
    let ns = Some(path.trim())
        .filter(|p| !p.is_empty() && *p != "/")
        .map(String::from);
    Ok((hp, ns))
}

const DCS_SECTIONS: [&str; 7] = [
    "etcd",
    "etcd3",
    "consul",
    "zookeeper",
    "exhibitor",
    "kubernetes",
    "raft",
];

/// Reads the configuration file (`-c`, else patronictl's default path when it exists) with the
/// `PATRONI_*` overrides, and applies `--dcs-url` and `--insecure`.
pub(crate) fn load_ctx(
    config_file: Option<&Path>,
    dcs_url: Option<&str>,
    insecure: bool,
) -> anyhow::Result<Ctx> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let path = match config_file {
        Some(p) => {
            if std::fs::File::open(p).is_err() {
                return fail(format!(
                    "Provided config file {} not existing or no read rights. Check the -c/--config-file parameter",
                    p.display()
                ));
            }
            Some(p.to_path_buf())
        }
        None => Some(default_config_path()).filter(|p| std::fs::File::open(p).is_ok()),
    };
    let mut doc = config::load_ctl_doc(path.as_deref(), &env).with_context(|| {
        format!(
            "reading {}",
            path.as_deref().unwrap_or(Path::new("")).display()
        )
    })?;
    if let Some(url) = dcs_url {
        let (hp, ns) = parse_dcs_url(url)?;
        for s in DCS_SECTIONS {
            doc.remove(s);
        }
        doc.insert("etcd3".into(), json!({ "host": hp }));
        if let Some(ns) = ns {
            doc.insert("namespace".into(), Value::String(ns));
        }
    }
    if !DCS_SECTIONS.iter().any(|s| doc.contains_key(*s)) {
        doc.insert("etcd3".into(), json!({"host": "127.0.0.1:2379"}));
    }
    let target = config::ctl_target(&doc).map_err(|e| CtlError(e.to_string()))?;
    let sect = |s: &str| {
        doc.get(s)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let ctl = sect("ctl");
    let restapi = sect("restapi");
    let auth_of = |m: &Map<String, Value>| {
        m.get("authentication")
            .and_then(Value::as_object)
            .and_then(|a| {
                Some((
                    a.get("username").map(py_str)?,
                    a.get("password").map(py_str).unwrap_or_default(),
                ))
            })
    };
    let (username, password) = match auth_of(&ctl).or_else(|| auth_of(&restapi)) {
        Some((u, p)) => (Some(u), Some(p)),
        None => (None, None),
    };
    let path_of = |m: &Map<String, Value>, k: &str| {
        m.get(k)
            .map(py_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    let rest = RestSettings {
        username,
        password,
        insecure: insecure || patrol_dcs::lenient_bool(ctl.get("insecure")).unwrap_or(false),
        cacert: path_of(&ctl, "cacert").or_else(|| path_of(&restapi, "cafile")),
        certfile: path_of(&ctl, "certfile"),
        keyfile: path_of(&ctl, "keyfile"),
    };
    Ok(Ctx {
        doc,
        target,
        rest,
        http: None,
    })
}

impl Ctx {
    pub(crate) fn scope_or(&self, cluster: Option<String>) -> anyhow::Result<String> {
        match cluster.or_else(|| self.target.scope.clone()) {
            Some(c) => Ok(c),
            None => fail("Missing argument 'CLUSTER_NAME': no cluster name given and no scope in the configuration"),
        }
    }

    pub(crate) async fn dcs(&self, scope: &str) -> anyhow::Result<EtcdDcs> {
        let settings = EtcdSettings {
            endpoints: self.target.endpoints.clone(),
            username: self.target.username.clone(),
            password: self.target.password.clone(),
            tls: self.target.tls.clone(),
            prefix: cluster_prefix(&self.target.namespace, scope),
            member_name: String::new(),
        };
        EtcdDcs::connect(&settings, 30, Duration::from_secs(10))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.target.endpoints.join(",")))
    }

    pub(crate) async fn cluster(&self, dcs: &EtcdDcs) -> anyhow::Result<Cluster> {
        dcs.get_cluster().await.with_context(|| {
            format!(
                "reading the cluster from etcd at {}",
                self.target.endpoints.join(",")
            )
        })
    }

    pub(crate) fn http(&mut self) -> anyhow::Result<&RestClient> {
        if self.http.is_none() {
            self.http = Some(RestClient::new(self.rest.clone())?);
        }
        Ok(self.http.as_ref().expect("just set"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcs_urls_like_patronictl() {
        assert_eq!(
            parse_dcs_url("etcd3://random.com:2399/customnamespace").unwrap(),
            ("random.com:2399".into(), Some("/customnamespace".into()))
        );
        assert_eq!(
            parse_dcs_url("etcd://:2399").unwrap(),
            ("localhost:2399".into(), None)
        );
        assert_eq!(
            parse_dcs_url("127.0.0.1:2379").unwrap(),
            ("127.0.0.1:2379".into(), None)
        );
        assert_eq!(
            parse_dcs_url("etcd://test").unwrap(),
            ("test:2379".into(), None)
        );
        assert!(parse_dcs_url("consul://x:8500").is_err());
        assert_eq!(
            parse_dcs_url("foo://x").unwrap_err().to_string(),
            "Unknown dcs scheme: foo"
        );
    }
}
