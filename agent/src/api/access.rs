//! Access control for the unsafe endpoints (spec 2.2), in Patroni's order: source address
//! (`allowlist`, `allowlist_include_members`) → 403 `Access is denied`; client certificate when
//! `verify_client` is optional/required → 403 `client certificate required`; Basic auth →
//! 401 `no auth header received` / `not authenticated`.
//!
//! Dangerous: the password. It is only held as Patroni holds it (the base64 of `user:password`),
//! compared in constant time, and never logged; the audit line names only the user.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;
use patrol_dcs::Cluster;
use subtle::ConstantTimeEq;

use super::tls::VerifyClient;
use crate::config::RestApi;

/// Why a request was refused: the HTTP code and Patroni's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: u16,
    pub text: &'static str,
}

/// The `restapi` access settings, resolved once at start.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// `restapi.allowlist` has entries (even if none of them resolved).
    allowlist_configured: bool,
    pub allowlist: Vec<IpNet>,
    pub include_members: bool,
    pub tls: bool,
    pub verify_client: VerifyClient,
    /// base64(`user:password`), compared with what follows `Basic ` in the header.
    auth_key: Option<String>,
}

/// What the connection and request say about the client.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub ip: IpAddr,
    pub has_client_cert: bool,
    pub authorization: Option<&'a str>,
}

impl AccessPolicy {
    /// Resolves the allowlist (host names through the system resolver; entries that cannot be
    /// resolved or parsed are logged and skipped, as Patroni does).
    pub async fn new(api: &RestApi) -> AccessPolicy {
        let mut allowlist = Vec::new();
        for entry in &api.allowlist {
            allowlist.extend(resolve_entry(entry).await);
        }
        if !api.allowlist.is_empty() && allowlist.is_empty() {
            tracing::error!(
                "no entry of restapi.allowlist resolves to an address: the unsafe endpoints refuse everyone until one does (restart or reload)"
            );
        }
        let open_to_anyone = api.authentication.is_none()
            && api.allowlist.is_empty()
            && !api.allowlist_include_members
            && !(api.certfile.is_some()
                && VerifyClient::from_config(api.verify_client.as_deref())
                    == VerifyClient::Required);
        if open_to_anyone {
            tracing::warn!(
                "the REST API's unsafe endpoints (PATCH/PUT /config, POST /switchover, /failover, /restart, /reinitialize, /reload) are open to anyone who can reach {}: set restapi.authentication, restapi.allowlist or client certificates (verify_client: required)",
                api.listen
            );
        }
        AccessPolicy {
            allowlist_configured: !api.allowlist.is_empty(),
            allowlist,
            include_members: api.allowlist_include_members,
            tls: api.certfile.is_some(),
            verify_client: VerifyClient::from_config(api.verify_client.as_deref()),
            auth_key: api.authentication.as_ref().map(|c| {
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password))
            }),
        }
    }

    /// A policy from parts (tests).
    pub fn from_parts(
        allowlist: Vec<IpNet>,
        include_members: bool,
        tls: bool,
        verify_client: VerifyClient,
        credentials: Option<(&str, &str)>,
    ) -> AccessPolicy {
        AccessPolicy {
            allowlist_configured: !allowlist.is_empty(),
            allowlist,
            include_members,
            tls,
            verify_client,
            auth_key: credentials
                .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))),
        }
    }

    /// Whether the source-address check needs the members' addresses.
    pub fn needs_member_ips(&self, check_members: bool) -> bool {
        check_members && self.include_members
    }

    /// Patroni's `check_access`. `member_ips` are the members' REST API addresses (only
    /// consulted when `allowlist_include_members` is on and `check_members` is true).
    pub fn check(
        &self,
        client: &Client<'_>,
        check_members: bool,
        member_ips: &[IpAddr],
    ) -> Result<(), Denied> {
        let members = self.needs_member_ips(check_members);
        // A configured allowlist applies even when none of its host names resolved (fail
        // closed): an empty list must not mean "no check".
        if self.allowlist_configured || members {
            let ip = canonical(client.ip);
            let listed = self.allowlist.iter().any(|n| n.contains(&ip))
                || (members && member_ips.iter().any(|m| canonical(*m) == ip));
            if !listed {
                return Err(Denied {
                    code: 403,
                    text: "Access is denied",
                });
            }
        }
        if self.tls && self.verify_client != VerifyClient::None && !client.has_client_cert {
            return Err(Denied {
                code: 403,
                text: "client certificate required",
            });
        }
        if let Some(key) = &self.auth_key {
            let Some(header) = client.authorization else {
                return Err(Denied {
                    code: 401,
                    text: "no auth header received",
                });
            };
            let ok = header
                .strip_prefix("Basic ")
                .is_some_and(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())));
            if !ok {
                return Err(Denied {
                    code: 401,
                    text: "not authenticated",
                });
            }
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(canonical(ip))
}

async fn resolve_entry(entry: &str) -> Vec<IpNet> {
    let entry = entry.trim();
    if entry.contains('/') {
        return match entry.parse::<IpNet>() {
            Ok(n) => vec![n],
            Err(e) => {
                tracing::error!("Invalid value \"{entry}\" in the allowlist: {e}");
                Vec::new()
            }
        };
    }
    resolve_host(entry, 8080)
        .await
        .into_iter()
        .map(host_net)
        .collect()
}

/// IP literal or host name → addresses (2 s limit for the resolver).
async fn resolve_host(host: &str, port: u16) -> Vec<IpAddr> {
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return vec![ip];
    }
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((bare, port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        Ok(Err(e)) => {
            tracing::error!("Failed to resolve {host}: {e}");
            Vec::new()
        }
        Err(_) => {
            tracing::error!("Failed to resolve {host}: no answer within 2 s");
            Vec::new()
        }
    }
}

/// Host and port of an `api_url` (`http(s)://host:port/patroni`).
pub fn api_url_host(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_string(), default_port)),
        None => None,
    }
}

/// The addresses of every member's REST API (from `api_url`), for `allowlist_include_members`.
pub async fn member_ips(cluster: Option<&Cluster>) -> Vec<IpAddr> {
    let Some(cluster) = cluster else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in &cluster.members {
        if let Some((host, port)) = api_url_host(&m.data.api_url) {
            out.extend(resolve_host(&host, port).await);
        }
    }
    out
}

/// The user named in a Basic `Authorization` header, for the audit log (never the password).
pub fn claimed_user(authorization: Option<&str>) -> Option<String> {
    let b64 = authorization?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    let user = text.split(':').next()?;
    let clean: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
    (!clean.is_empty()).then_some(clean)
}
