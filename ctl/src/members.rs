//! Member selection as patronictl does it (`get_all_members`, `get_any_member`,
//! `get_all_members_leader_first`, switchover candidates) and small texts built from members
//! (`dsn`, `version`, responses).

use patrol_dcs::{parse_conn_url, Cluster, Member, Role};
use serde_json::Value;

/// `--role` values (`CtlPostgresqlRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlRole {
    Leader,
    Primary,
    StandbyLeader,
    Replica,
    Standby,
    Any,
}

impl CtlRole {
    pub fn parse(s: &str) -> Option<CtlRole> {
        Some(match s {
            "leader" => CtlRole::Leader,
            "primary" | "master" => CtlRole::Primary,
            "standby-leader" => CtlRole::StandbyLeader,
            "replica" => CtlRole::Replica,
            "standby" => CtlRole::Standby,
            "any" => CtlRole::Any,
            _ => return None,
        })
    }

    pub const ALL: [&'static str; 6] = [
        "leader",
        "primary",
        "standby-leader",
        "replica",
        "standby",
        "any",
    ];
}

/// `get_all_members(cluster, role)`: the leader member for leader-ish roles (primary only
/// when its member key does not say standby_leader, standby-leader only when it does not say
/// primary), every non-leader for replica/standby, everyone for any.
pub fn all_members(cluster: &Cluster, role: CtlRole) -> Vec<&Member> {
    let leader = cluster.leader_name();
    match role {
        CtlRole::Leader | CtlRole::Primary | CtlRole::StandbyLeader => {
            let Some(name) = leader.filter(|n| !n.is_empty()) else {
                return Vec::new();
            };
            let Some(m) = cluster.member(name) else {
                return Vec::new();
            };
            let ok = match role {
                CtlRole::Leader => true,
                CtlRole::StandbyLeader => m.data.role != Role::Primary,
                _ => m.data.role != Role::StandbyLeader,
            };
            if ok {
                vec![m]
            } else {
                Vec::new()
            }
        }
        CtlRole::Any => cluster.members.iter().collect(),
        CtlRole::Replica | CtlRole::Standby => cluster
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != leader)
            .collect(),
    }
}

/// `get_any_member(cluster, role, member)`: the first member with the role (default leader),
/// or the named member (any role). Both given is patronictl's error.
pub fn any_member<'a>(
    cluster: &'a Cluster,
    role: Option<CtlRole>,
    member: Option<&str>,
) -> Result<Option<&'a Member>, String> {
    let role = match (member, role) {
        (Some(_), Some(_)) => {
            return Err("--role and --member are mutually exclusive options".into())
        }
        (Some(_), None) => CtlRole::Any,
        (None, r) => r.unwrap_or(CtlRole::Leader),
    };
    Ok(all_members(cluster, role)
        .into_iter()
        .find(|m| member.is_none_or(|n| m.name == n)))
}

/// `get_all_members_leader_first`: members with an api_url, the leader first.
pub fn members_leader_first(cluster: &Cluster) -> Vec<&Member> {
    let leader = cluster
        .leader_member()
        .filter(|m| !m.data.api_url.is_empty());
    let mut out: Vec<&Member> = leader.into_iter().collect();
    for m in &cluster.members {
        if !m.data.api_url.is_empty() && Some(m.name.as_str()) != leader.map(|l| l.name.as_str()) {
            out.push(m);
        }
    }
    out
}

/// Switchover/failover candidates: every member but the leader and `nofailover` ones, sorted.
pub fn failover_candidates(cluster: &Cluster) -> Vec<String> {
    let leader = cluster.leader_name();
    let mut v: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != leader && !m.data.nofailover())
        .map(|m| m.name.clone())
        .collect();
    v.sort();
    v
}

/// `dsn` output: `host=<host> port=<port>` from the member's conn_url.
pub fn dsn(member: &Member) -> Option<String> {
    let (host, port) = parse_conn_url(&member.data.conn_url)?;
    Some(format!("host={} port={port}", host.to_lowercase()))
}

/// `format_pg_version`: 90624 → 9.6.24, 140008 → 14.8.
pub fn format_pg_version(v: i64) -> String {
    if v < 100000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}", v / 10000, v % 100)
    }
}

/// One `version` line from a member's `GET /patroni` body.
pub fn version_line(name: &str, body: &Value) -> String {
    let version = body
        .get("patroni")
        .and_then(|p| p.get("version"))
        .map(super::pyfmt::py_str)
        .unwrap_or_else(|| "None".into());
    let pg = body
        .get("server_version")
        .and_then(Value::as_i64)
        .filter(|v| *v != 0)
        .map(|v| format!(" PostgreSQL {}", format_pg_version(v)))
        .unwrap_or_default();
    format!("{name}: Patroni {version}{pg}")
}

/// `check_response`: `Failed: <action> for member <m>, status code=<c>, (<body>)` for status
/// codes from 400 on, else `Success: <action> for member <m>` (unless silent). Returns the text (possibly
/// empty) and whether the response was a success.
pub fn check_response(
    status: u16,
    body: &str,
    member: &str,
    action: &str,
    silent: bool,
) -> (String, bool) {
    if status >= 400 {
        (
            format!("Failed: {action} for member {member}, status code={status}, ({body})"),
            false,
        )
    } else if silent {
        (String::new(), true)
    } else {
        (format!("Success: {action} for member {member}"), true)
    }
}

/// The text of a `POST /restart` response.
pub fn restart_response(status: u16, body: &str, member: &str) -> String {
    match status {
        200 => format!("Success: restart on member {member}"),
        202 => format!("Success: restart scheduled on member {member}"),
        409 => format!("Failed: another restart is already scheduled on member {member}"),
        _ => format!("Failed: restart for member {member}, status code={status}, ({body})"),
    }
}

/// The text of a `POST /reload` response (`loop_wait` from the dynamic config, default 10).
pub fn reload_response(status: u16, body: &str, member: &str, loop_wait: i64) -> String {
    match status {
        200 => format!("No changes to apply on member {member}"),
        202 => format!(
            "Reload request received for member {member} and will be processed within {loop_wait} seconds"
        ),
        _ => format!("Failed: reload for member {member}, status code={status}, ({body})"),
    }
}

/// `loop_wait` from the dynamic configuration (Patroni's `config.get('loop_wait') or
/// dcs.loop_wait`), within the bounds the agents accept (a value from etcd is anyone's: the
/// callers wait that long).
pub fn loop_wait(cluster: &Cluster) -> i64 {
    cluster
        .config
        .as_ref()
        .and_then(|c| patrol_dcs::lenient_i64(c.value.data.get("loop_wait")))
        .filter(|v| *v != 0)
        .unwrap_or(10)
        .clamp(1, patrol_dcs::MAX_TTL as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::cluster_from;

    fn a() -> Cluster {
        cluster_from(include_str!("testdata/a_keys.json"))
    }

    #[test]
    fn dsn_like_patronictl() {
        let a = a();
        let m = |r, n| any_member(&a, r, n).unwrap().map(|m| dsn(m).unwrap());
        assert_eq!(m(None, None).as_deref(), Some("host=10.0.0.2 port=5432"));
        assert_eq!(
            m(Some(CtlRole::Replica), None).as_deref(),
            Some("host=10.0.0.1 port=5432")
        );
        assert_eq!(
            m(None, Some("pg2")).as_deref(),
            Some("host=10.0.0.3 port=5432")
        );
        assert_eq!(m(None, Some("nosuch")), None);
        assert_eq!(
            any_member(&a, Some(CtlRole::Leader), Some("pg1")).unwrap_err(),
            "--role and --member are mutually exclusive options"
        );
        let b = cluster_from(include_str!("testdata/b_keys.json"));
        let m = |r| {
            any_member(&b, Some(r), None)
                .unwrap()
                .map(|m| dsn(m).unwrap())
        };
        assert_eq!(
            m(CtlRole::StandbyLeader).as_deref(),
            Some("host=127.0.0.1 port=5433")
        );
        assert_eq!(m(CtlRole::Primary), None);
        assert_eq!(m(CtlRole::Any).as_deref(), Some("host=127.0.0.1 port=5432"));
    }

    #[test]
    fn candidates_exclude_leader_and_nofailover() {
        assert_eq!(failover_candidates(&a()), vec!["pg2", "pg3"]);
        let c = a();
        let names: Vec<&str> = members_leader_first(&c)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, vec!["pg1", "pg0", "pg2", "pg3"]);
    }

    #[test]
    fn versions() {
        assert_eq!(format_pg_version(90624), "9.6.24");
        assert_eq!(format_pg_version(100000), "10.0");
        assert_eq!(format_pg_version(150004), "15.4");
        let body = serde_json::json!({"patroni": {"version": "4.1.4"}, "server_version": 150004});
        assert_eq!(
            version_line("pg0", &body),
            "pg0: Patroni 4.1.4 PostgreSQL 15.4"
        );
        let body = serde_json::json!({"patroni": {"version": "4.1.4"}});
        assert_eq!(version_line("pg0", &body), "pg0: Patroni 4.1.4");
    }

    #[test]
    fn response_texts() {
        assert_eq!(
            restart_response(503, "restart conditions are not satisfied", "pg0"),
            "Failed: restart for member pg0, status code=503, (restart conditions are not satisfied)"
        );
        assert_eq!(
            restart_response(200, "", "pg0"),
            "Success: restart on member pg0"
        );
        assert_eq!(
            check_response(200, "", "pg1", "reinitialize", false).0,
            "Success: reinitialize for member pg1"
        );
        assert_eq!(
            reload_response(202, "", "pg1", 10),
            "Reload request received for member pg1 and will be processed within 10 seconds"
        );
    }
}
