//! The cluster model: every value Patroni 4 keeps under `/<namespace>/<scope>/`, with codecs that
//! write compact JSON exactly as Patroni does and read leniently (garbage becomes a default, never
//! an error). Pure: no IO here.

use std::time::Duration;

use serde_json::{Map, Value};

/// One key/value as read from the DCS, with the metadata the model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// Key relative to the cluster prefix, e.g. `members/pg0`.
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// Serialize a JSON value compactly (`,` and `:` without spaces), as Python's
/// `json.dumps(separators=(',', ':'))` does.
pub fn to_compact(v: &Value) -> String {
    serde_json::to_string(v).expect("serializing a serde_json::Value cannot fail")
}

fn parse_object(s: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Reads an integer leniently: JSON ints, floats with no fraction and numeric strings.
pub fn lenient_i64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a boolean the way Patroni's `parse_bool` does (`on/true/yes/1`, `off/false/no/0`).
pub fn lenient_bool(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" | "y" | "t" => Some(true),
            "off" | "false" | "no" | "0" | "n" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Python's truthiness of a parsed JSON/YAML value (`if value:` in Patroni): `null`, `false`,
/// `0`, `""`, `[]` and `{}` are false, everything else true.
pub fn python_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn lenient_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The role a member publishes. Unknown strings are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Uninitialized,
    Promoted,
    Other(String),
}

impl Role {
    pub fn parse(s: &str) -> Role {
        match s {
            "primary" | "master" => Role::Primary,
            "replica" => Role::Replica,
            "standby_leader" => Role::StandbyLeader,
            "demoted" => Role::Demoted,
            "uninitialized" => Role::Uninitialized,
            "promoted" => Role::Promoted,
            other => Role::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
            Role::Promoted => "promoted",
            Role::Other(s) => s,
        }
    }
}

/// The JSON document of `members/<name>` (spec 1.3). Field order here is the order Patroni writes.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberData {
    pub conn_url: String,
    pub api_url: String,
    pub state: String,
    pub role: Role,
    pub version: String,
    pub proxy_url: Option<String>,
    pub checkpoint_after_promote: Option<bool>,
    pub tags: Map<String, Value>,
    pub pending_restart: bool,
    pub pending_restart_reason: Option<Value>,
    pub scheduled_restart: Option<Value>,
    pub pause: bool,
    pub xlog_location: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub receive_lsn: Option<u64>,
    pub replication_state: Option<String>,
    pub timeline: Option<u64>,
    /// Fields we do not know, kept so a round trip loses nothing.
    pub extra: Map<String, Value>,
}

const MEMBER_FIELDS: &[&str] = &[
    "conn_url",
    "api_url",
    "state",
    "role",
    "version",
    "proxy_url",
    "checkpoint_after_promote",
    "tags",
    "pending_restart",
    "pending_restart_reason",
    "scheduled_restart",
    "pause",
    "xlog_location",
    "replay_lsn",
    "receive_lsn",
    "replication_state",
    "timeline",
];

impl MemberData {
    pub fn new(conn_url: String, api_url: String, state: &str, role: Role, version: &str) -> Self {
        MemberData {
            conn_url,
            api_url,
            state: state.to_string(),
            role,
            version: version.to_string(),
            proxy_url: None,
            checkpoint_after_promote: None,
            tags: Map::new(),
            pending_restart: false,
            pending_restart_reason: None,
            scheduled_restart: None,
            pause: false,
            xlog_location: None,
            replay_lsn: None,
            receive_lsn: None,
            replication_state: None,
            timeline: None,
            extra: Map::new(),
        }
    }

    /// Lenient parse: unparsable JSON gives an empty member; a bare `postgres://...` string is the
    /// conn_url of an old-format member (as Patroni's `Member.from_node`).
    pub fn parse(value: &str) -> MemberData {
        let mut m = MemberData::new(
            String::new(),
            String::new(),
            "",
            Role::Other(String::new()),
            "",
        );
        let Some(obj) = parse_object(value) else {
            if value.starts_with("postgres") {
                m.conn_url = value.to_string();
            }
            return m;
        };
        let u64_of = |k: &str| lenient_i64(obj.get(k)).and_then(|i| u64::try_from(i).ok());
        m.conn_url = lenient_str(obj.get("conn_url")).unwrap_or_default();
        m.api_url = lenient_str(obj.get("api_url")).unwrap_or_default();
        m.state = lenient_str(obj.get("state")).unwrap_or_default();
        m.role = Role::parse(&lenient_str(obj.get("role")).unwrap_or_default());
        m.version = lenient_str(obj.get("version")).unwrap_or_default();
        m.proxy_url = lenient_str(obj.get("proxy_url"));
        m.checkpoint_after_promote = lenient_bool(obj.get("checkpoint_after_promote"));
        if let Some(Value::Object(t)) = obj.get("tags") {
            m.tags = t.clone();
        }
        m.pending_restart = lenient_bool(obj.get("pending_restart")).unwrap_or(false);
        m.pending_restart_reason = obj.get("pending_restart_reason").cloned();
        m.scheduled_restart = obj.get("scheduled_restart").cloned();
        m.pause = lenient_bool(obj.get("pause")).unwrap_or(false);
        m.xlog_location = u64_of("xlog_location");
        m.replay_lsn = u64_of("replay_lsn");
        m.receive_lsn = u64_of("receive_lsn");
        m.replication_state = lenient_str(obj.get("replication_state"));
        m.timeline = u64_of("timeline");
        for (k, v) in obj {
            if !MEMBER_FIELDS.contains(&k.as_str()) {
                m.extra.insert(k, v);
            }
        }
        m
    }

    pub fn to_value(&self) -> Value {
        let mut o = Map::new();
        o.insert("conn_url".into(), self.conn_url.clone().into());
        o.insert("api_url".into(), self.api_url.clone().into());
        o.insert("state".into(), self.state.clone().into());
        o.insert("role".into(), self.role.as_str().into());
        o.insert("version".into(), self.version.clone().into());
        if let Some(p) = &self.proxy_url {
            o.insert("proxy_url".into(), p.clone().into());
        }
        if let Some(c) = self.checkpoint_after_promote {
            o.insert("checkpoint_after_promote".into(), c.into());
        }
        if !self.tags.is_empty() {
            o.insert("tags".into(), Value::Object(self.tags.clone()));
        }
        if self.pending_restart {
            o.insert("pending_restart".into(), true.into());
            if let Some(r) = &self.pending_restart_reason {
                o.insert("pending_restart_reason".into(), r.clone());
            }
        }
        if let Some(s) = &self.scheduled_restart {
            o.insert("scheduled_restart".into(), s.clone());
        }
        if self.pause {
            o.insert("pause".into(), true.into());
        }
        if let Some(x) = self.xlog_location {
            o.insert("xlog_location".into(), x.into());
        }
        if let Some(x) = self.replay_lsn {
            o.insert("replay_lsn".into(), x.into());
        }
        if let Some(x) = self.receive_lsn {
            o.insert("receive_lsn".into(), x.into());
        }
        if let Some(s) = &self.replication_state {
            o.insert("replication_state".into(), s.clone().into());
        }
        if let Some(t) = self.timeline {
            o.insert("timeline".into(), t.into());
        }
        for (k, v) in &self.extra {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }

    pub fn to_json(&self) -> String {
        to_compact(&self.to_value())
    }

    /// `nofailover` in Patroni's sense (see [`tags_nofailover`]).
    pub fn nofailover(&self) -> bool {
        tags_nofailover(&self.tags)
    }

    pub fn failover_priority(&self) -> i64 {
        tags_failover_priority(&self.tags)
    }

    pub fn nosync(&self) -> bool {
        tags_nosync(&self.tags)
    }

    pub fn sync_priority(&self) -> i64 {
        tags_sync_priority(&self.tags)
    }

    /// The `replicatefrom` tag.
    pub fn replicatefrom(&self) -> Option<String> {
        tags_replicatefrom(&self.tags)
    }

    pub fn clonefrom(&self) -> bool {
        lenient_bool(self.tags.get("clonefrom")).unwrap_or(false)
    }

    pub fn nostream(&self) -> bool {
        tags_nostream(&self.tags)
    }

    pub fn noloadbalance(&self) -> bool {
        lenient_bool(self.tags.get("noloadbalance")).unwrap_or(false)
    }

    /// Host and port parsed from `conn_url` (`postgres://host:port/db`; port defaults to 5432).
    pub fn host_port(&self) -> Option<(String, u16)> {
        parse_conn_url(&self.conn_url)
    }
}

/// `nosync` in Patroni's sense: the tag when set, else `sync_priority` not above 0.
pub fn tags_nosync(tags: &Map<String, Value>) -> bool {
    match lenient_bool(tags.get("nosync")) {
        Some(b) => b,
        None => lenient_i64(tags.get("sync_priority")).is_some_and(|p| p <= 0),
    }
}

/// `sync_priority` (default 1; 0 when `nosync`).
pub fn tags_sync_priority(tags: &Map<String, Value>) -> i64 {
    if lenient_bool(tags.get("nosync")) == Some(true) {
        return 0;
    }
    lenient_i64(tags.get("sync_priority")).unwrap_or(1)
}

/// `nofailover` in Patroni's sense: the tag, or `failover_priority: 0` (the tag wins when both
/// are set).
pub fn tags_nofailover(tags: &Map<String, Value>) -> bool {
    match lenient_bool(tags.get("nofailover")) {
        Some(b) => b,
        None => lenient_i64(tags.get("failover_priority")) == Some(0),
    }
}

/// `replicatefrom`: the member to stream from (cascading replication), when set.
pub fn tags_replicatefrom(tags: &Map<String, Value>) -> Option<String> {
    lenient_str(tags.get("replicatefrom")).filter(|s| !s.is_empty())
}

/// `nostream`: the member does not stream (recovery from the archive only).
pub fn tags_nostream(tags: &Map<String, Value>) -> bool {
    lenient_bool(tags.get("nostream")).unwrap_or(false)
}

/// `failover_priority` (default 1; 0 when `nofailover`).
pub fn tags_failover_priority(tags: &Map<String, Value>) -> i64 {
    if tags_nofailover(tags) {
        return 0;
    }
    lenient_i64(tags.get("failover_priority")).unwrap_or(1)
}

/// Whether `host` may be used as a host as it is, in a libpq connection string, an HAProxy
/// `server` line or a URL: an IPv4 or IPv6 address, or a DNS name (labels of letters, digits,
/// `-` and `_`, not starting or ending with `-`, separated by dots, at most 253 characters).
/// Anything else (whitespace, a control character, a quote, `=`, `#`, ...) could add keywords
/// or lines where it is written.
pub fn is_valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Host and port of a URL authority (`[user@]host:port` or `[user@][v6]:port`), both checked:
/// the host by [`is_valid_host`], the port between 1 and 65535. `default_port` is used when
/// the authority has none.
fn authority_host_port(authority: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let authority = authority.rsplit('@').next()?;
    let port_of = |p: Option<&str>| -> Option<u16> {
        match p {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|&n| n > 0)
            }
            Some(_) => None,
            None => default_port,
        }
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => port_of(None)?,
            a => port_of(Some(a.strip_prefix(':')?))?,
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, port_of(Some(p))?),
            None => (authority, port_of(None)?),
        }
    };
    is_valid_host(host).then(|| (host.to_string(), port))
}

/// Parses `postgres://host:port/db` (or `postgresql://`) into host and port (5432 when absent).
/// IPv6 hosts come bracketed in the URL and are returned without brackets. `None` unless the
/// host passes [`is_valid_host`] and the port is a number from 1 to 65535: a member key is
/// written by whoever can write to etcd, and its host ends up in `primary_conninfo`, in
/// `pg_basebackup`'s connection string and in `haproxy.cfg`.
pub fn parse_conn_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    authority_host_port(authority, Some(5432))
}

/// Parses a member's `api_url` (`http(s)://host:port/patroni`) into host and port, checked as
/// [`parse_conn_url`] checks its own; the port is required.
pub fn parse_api_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    authority_host_port(authority, None)
}

/// Why a member's `conn_url` or `api_url` cannot be used, if it cannot: for the error that names
/// a member whose key is skipped.
pub fn member_address_problem(data: &MemberData) -> Option<String> {
    if parse_conn_url(&data.conn_url).is_none() {
        return Some(format!(
            "conn_url {:?} is not postgres://host:port/... with a valid host and port",
            data.conn_url
        ));
    }
    if !data.api_url.is_empty() && parse_api_url(&data.api_url).is_none() {
        return Some(format!(
            "api_url {:?} is not http(s)://host:port/... with a valid host and port",
            data.api_url
        ));
    }
    None
}

/// A member key as read: name, its JSON, and the etcd metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    /// mod_revision of the key.
    pub version: i64,
    /// Lease id the key is attached to (0 = none).
    pub session: i64,
    pub data: MemberData,
}

/// The `leader` key: plain member name on the holder's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub name: String,
    pub version: i64,
    pub session: i64,
}

/// A value read with its mod_revision, for compare-and-swap writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub version: i64,
    pub value: T,
}

/// The `failover` key (`{}` = nothing pending). A legacy `leader:member` string is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Failover {
    pub leader: Option<String>,
    pub member: Option<String>,
    pub scheduled_at: Option<String>,
}

impl Failover {
    pub fn parse(value: &str) -> Failover {
        if let Some(o) = parse_object(value) {
            return Failover {
                leader: lenient_str(o.get("leader")),
                member: lenient_str(o.get("member")),
                scheduled_at: lenient_str(o.get("scheduled_at")),
            };
        }
        match value.split_once(':') {
            Some((l, m)) if !value.trim_start().starts_with('{') => Failover {
                leader: Some(l.to_string()).filter(|s| !s.is_empty()),
                member: Some(m.to_string()).filter(|s| !s.is_empty()),
                scheduled_at: None,
            },
            _ => Failover::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none() && self.scheduled_at.is_none()
    }

    pub fn to_json(&self) -> String {
        let mut o = Map::new();
        if let Some(l) = &self.leader {
            o.insert("leader".into(), l.clone().into());
        }
        if let Some(m) = &self.member {
            o.insert("member".into(), m.clone().into());
        }
        if let Some(s) = &self.scheduled_at {
            o.insert("scheduled_at".into(), s.clone().into());
        }
        to_compact(&Value::Object(o))
    }
}

/// The `sync` key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncState {
    pub leader: Option<String>,
    pub sync_standby: Vec<String>,
    pub quorum: i64,
}

impl SyncState {
    pub fn parse(value: &str) -> SyncState {
        let Some(o) = parse_object(value) else {
            return SyncState::default();
        };
        let sync_standby = lenient_str(o.get("sync_standby"))
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        SyncState {
            leader: lenient_str(o.get("leader")),
            sync_standby,
            quorum: lenient_i64(o.get("quorum")).unwrap_or(0),
        }
    }

    /// `{"leader":..,"quorum":..,"sync_standby":..}` with `sync_standby` sorted and
    /// comma-joined, or `null` when empty.
    pub fn to_json(&self) -> String {
        let mut names = self.sync_standby.clone();
        names.sort();
        let standby = if names.is_empty() {
            Value::Null
        } else {
            Value::String(names.join(","))
        };
        let mut o = Map::new();
        o.insert(
            "leader".into(),
            self.leader
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        o.insert("quorum".into(), self.quorum.into());
        o.insert("sync_standby".into(), standby);
        to_compact(&Value::Object(o))
    }

    /// `leader` is empty: synchronous replication is not active (yet).
    pub fn is_empty(&self) -> bool {
        self.leader.as_deref().is_none_or(str::is_empty)
    }

    /// Patroni's `matches(name, check_leader=True)`: a voter or the leader of the key.
    pub fn matches_or_leader(&self, name: &str) -> bool {
        !self.is_empty()
            && (self.matches(name)
                || self
                    .leader
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(name)))
    }

    /// Case-insensitive membership, as Patroni matches names.
    pub fn matches(&self, name: &str) -> bool {
        !self.is_empty()
            && self
                .sync_standby
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
    }

    /// Whether the key was written by (for) `name` as leader, case-insensitively. A key naming
    /// another leader is stale: its standbys were chosen for that leader.
    pub fn leader_matches(&self, name: &str) -> bool {
        self.leader
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case(name))
    }
}

/// The dynamic configuration's `synchronous_mode`, as Patroni reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynchronousMode {
    Off,
    /// `true`, `on` (any of Patroni's true spellings): the `sync` key lists synchronous standbys.
    On,
    /// `quorum`: the `sync` key lists the quorum standbys.
    Quorum,
}

/// One line of the `history` key: `[timeline, switch_lsn, reason, timestamp, new_leader]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    pub timeline: u64,
    pub lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

/// The `history` key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub lines: Vec<HistoryLine>,
}

impl History {
    /// Returns `None` for unparsable content (Patroni treats it as absent).
    pub fn parse(value: &str) -> Option<History> {
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(value) else {
            return None;
        };
        let mut lines = Vec::new();
        for item in items {
            let Value::Array(f) = item else { continue };
            let (Some(tl), Some(lsn)) = (
                lenient_i64(f.first()).and_then(|i| u64::try_from(i).ok()),
                lenient_i64(f.get(1)).and_then(|i| u64::try_from(i).ok()),
            ) else {
                continue;
            };
            lines.push(HistoryLine {
                timeline: tl,
                lsn,
                reason: lenient_str(f.get(2)).unwrap_or_default(),
                timestamp: lenient_str(f.get(3)),
                new_leader: lenient_str(f.get(4)),
            });
        }
        Some(History { lines })
    }

    pub fn to_json(&self) -> String {
        let v: Vec<Value> = self
            .lines
            .iter()
            .map(|l| {
                let mut a = vec![
                    Value::from(l.timeline),
                    Value::from(l.lsn),
                    Value::from(l.reason.clone()),
                ];
                if let Some(ts) = &l.timestamp {
                    a.push(ts.clone().into());
                    if let Some(n) = &l.new_leader {
                        a.push(n.clone().into());
                    }
                }
                Value::Array(a)
            })
            .collect();
        to_compact(&Value::Array(v))
    }

    /// Parses a PostgreSQL timeline history file (`<tl>\t<X/Y>\t<reason>` per line; comments
    /// and blank lines skipped). Timestamps and leader names are left empty.
    pub fn from_timeline_file(text: &str) -> Vec<HistoryLine> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                let tl = f.next()?.trim().parse().ok()?;
                let lsn = parse_lsn(f.next()?)?;
                Some(HistoryLine {
                    timeline: tl,
                    lsn,
                    reason: f.next().unwrap_or("").trim().to_string(),
                    timestamp: None,
                    new_leader: None,
                })
            })
            .collect()
    }

    /// The cluster timeline implied by the history: last entry's timeline + 1, 1 when empty.
    pub fn cluster_timeline(&self) -> u64 {
        self.lines.last().map(|l| l.timeline + 1).unwrap_or(1)
    }
}

/// The `status` key: last known leader WAL position and slot positions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    pub optime: Option<u64>,
    pub slots: Map<String, Value>,
    pub retain_slots: Vec<String>,
}

impl Status {
    pub fn parse(value: &str) -> Status {
        if let Ok(v) = serde_json::from_str::<Value>(value) {
            match v {
                Value::Object(o) => {
                    let slots = match o.get("slots") {
                        Some(Value::Object(s)) => s.clone(),
                        _ => Map::new(),
                    };
                    let retain_slots = match o.get("retain_slots") {
                        Some(Value::Array(a)) => {
                            a.iter().filter_map(|v| lenient_str(Some(v))).collect()
                        }
                        _ => Vec::new(),
                    };
                    return Status {
                        optime: lenient_i64(o.get("optime")).and_then(|i| u64::try_from(i).ok()),
                        slots,
                        retain_slots,
                    };
                }
                Value::Number(_) => {
                    return Status {
                        optime: lenient_i64(Some(&v)).and_then(|i| u64::try_from(i).ok()),
                        ..Status::default()
                    }
                }
                _ => {}
            }
        }
        Status::default()
    }

    /// Null/empty fields are omitted, as Patroni does.
    pub fn to_json(&self) -> String {
        let mut o = Map::new();
        if let Some(x) = self.optime {
            o.insert("optime".into(), x.into());
        }
        if !self.slots.is_empty() {
            o.insert("slots".into(), Value::Object(self.slots.clone()));
        }
        if !self.retain_slots.is_empty() {
            let mut r = self.retain_slots.clone();
            r.sort();
            o.insert(
                "retain_slots".into(),
                Value::Array(r.into_iter().map(Value::String).collect()),
            );
        }
        to_compact(&Value::Object(o))
    }
}

/// The `failsafe` key: member name -> api_url.
pub type Failsafe = Map<String, Value>;

/// Timing settings after Patroni's adjustment rule (`loop_wait + 2*retry_timeout <= ttl`), in
/// seconds. Every value is within `1..=MAX_TTL`, so any sum or product of them, or an `Instant`
/// plus one of them, is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

/// Lowest `ttl` Patrol accepts: etcd will not keep a lease shorter than about 2 s, and the rule
/// `loop_wait + 2*retry_timeout <= ttl` with `loop_wait >= 1` and `retry_timeout >= 1` needs 3.
pub const MIN_TTL: u64 = 3;

/// Highest `ttl`, `loop_wait` and `retry_timeout` (one day): a lease that outlives a day is no
/// failover, and the bound keeps every deadline computed from them far from overflowing.
pub const MAX_TTL: u64 = 86_400;

/// Highest value of the other durations of the dynamic configuration (`primary_start_timeout`,
/// `primary_stop_timeout`, `member_slots_ttl`, `postgresql.pg_ctl_timeout`): one year.
pub const MAX_SECONDS: u64 = 365 * 86_400;

impl Default for Timing {
    /// Patroni's defaults: `ttl: 30`, `loop_wait: 10`, `retry_timeout: 10`.
    fn default() -> Self {
        Timing {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
        }
    }
}

impl Timing {
    /// Applies Patroni's rule: on violation `loop_wait` shrinks to `ttl - 2*retry_timeout`, and if
    /// even `loop_wait = 1` violates it, `retry_timeout = (ttl - 1) / 2`. Unlike Patroni (min ttl
    /// 20, retry_timeout 3), Patrol accepts values down to `MIN_TTL` and `retry_timeout` 1 so that
    /// fast failover can be configured; see docs/timing.md. Values above `MAX_TTL` are lowered
    /// to it (the validation of the dynamic configuration refuses them before they get here).
    pub fn adjusted(ttl: u64, loop_wait: u64, retry_timeout: u64) -> Timing {
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        let mut loop_wait = loop_wait.clamp(1, MAX_TTL);
        let mut retry_timeout = retry_timeout.clamp(1, MAX_TTL);
        if loop_wait + 2 * retry_timeout > ttl {
            if 2 * retry_timeout < ttl {
                loop_wait = ttl - 2 * retry_timeout;
            } else {
                loop_wait = 1;
                retry_timeout = (ttl - 1) / 2;
            }
        }
        Timing {
            ttl,
            loop_wait,
            retry_timeout,
        }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    pub fn loop_wait(&self) -> Duration {
        Duration::from_secs(self.loop_wait)
    }

    pub fn retry_timeout(&self) -> Duration {
        Duration::from_secs(self.retry_timeout)
    }
}

/// The dynamic configuration (`config` key, or `bootstrap.dcs` before it exists): kept as the
/// JSON object it is, with typed accessors for the settings the agent reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterConfig {
    pub data: Map<String, Value>,
}

impl ClusterConfig {
    pub fn parse(value: &str) -> Option<ClusterConfig> {
        parse_object(value).map(|data| ClusterConfig { data })
    }

    pub fn from_map(data: Map<String, Value>) -> ClusterConfig {
        ClusterConfig { data }
    }

    pub fn to_json(&self) -> String {
        to_compact(&Value::Object(self.data.clone()))
    }

    fn int(&self, key: &str) -> Option<i64> {
        lenient_i64(self.data.get(key))
    }

    fn pg(&self) -> Option<&Map<String, Value>> {
        self.data.get("postgresql").and_then(Value::as_object)
    }

    /// The timing this configuration asks for, after Patroni's rule. Lenient, for readers that
    /// only display it: a value that is not an integer is the default, one out of range the
    /// nearest bound. What the agent acts on is checked first ([`ClusterConfig::check`]).
    pub fn timing(&self) -> Timing {
        let d = Timing::default();
        let get = |k: &str, d: u64| {
            self.int(k)
                .map(|i| i.clamp(0, MAX_TTL as i64) as u64)
                .unwrap_or(d)
        };
        Timing::adjusted(
            get("ttl", d.ttl),
            get("loop_wait", d.loop_wait),
            get("retry_timeout", d.retry_timeout),
        )
    }

    pub fn maximum_lag_on_failover(&self) -> i64 {
        self.int("maximum_lag_on_failover").unwrap_or(1_048_576)
    }

    pub fn primary_start_timeout(&self) -> u64 {
        self.int("primary_start_timeout")
            .or_else(|| self.int("master_start_timeout"))
            .and_then(|i| u64::try_from(i).ok())
            .map(|s| s.min(MAX_SECONDS))
            .unwrap_or(300)
    }

    /// `max_timelines_history` (0 = keep all).
    pub fn max_timelines_history(&self) -> usize {
        self.int("max_timelines_history")
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(0)
    }

    pub fn check_timeline(&self) -> bool {
        lenient_bool(self.data.get("check_timeline")).unwrap_or(false)
    }

    pub fn pause(&self) -> bool {
        lenient_bool(self.data.get("pause")).unwrap_or(false)
    }

    pub fn synchronous_mode_strict(&self) -> bool {
        lenient_bool(self.data.get("synchronous_mode_strict")).unwrap_or(false)
    }

    /// `synchronous_node_count` (default 1, at least 1).
    pub fn synchronous_node_count(&self) -> usize {
        self.int("synchronous_node_count")
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(1)
            .max(1)
    }

    /// `maximum_lag_on_syncnode` in bytes (non-positive: no limit).
    pub fn maximum_lag_on_syncnode(&self) -> i64 {
        self.int("maximum_lag_on_syncnode").unwrap_or(-1)
    }

    pub fn failsafe_mode(&self) -> bool {
        lenient_bool(self.data.get("failsafe_mode")).unwrap_or(false)
    }

    /// `synchronous_mode`: `quorum` (any case), a true value, or off (absent, false or
    /// unreadable). A standby cluster is never synchronous, as in Patroni.
    pub fn synchronous_mode(&self) -> SynchronousMode {
        if self.is_standby_cluster() {
            return SynchronousMode::Off;
        }
        let v = self.data.get("synchronous_mode");
        if v.and_then(Value::as_str)
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("quorum"))
        {
            SynchronousMode::Quorum
        } else if lenient_bool(v) == Some(true) {
            SynchronousMode::On
        } else {
            SynchronousMode::Off
        }
    }

    pub fn use_slots(&self) -> bool {
        lenient_bool(self.pg().and_then(|p| p.get("use_slots"))).unwrap_or(true)
    }

    pub fn use_pg_rewind(&self) -> Option<bool> {
        lenient_bool(self.pg().and_then(|p| p.get("use_pg_rewind")))
    }

    /// `postgresql.parameters` from the dynamic config.
    pub fn parameters(&self) -> Map<String, Value> {
        self.pg()
            .and_then(|p| p.get("parameters"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// `postgresql.recovery_conf` from the dynamic config.
    pub fn recovery_conf(&self) -> Map<String, Value> {
        self.pg()
            .and_then(|p| p.get("recovery_conf"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    pub fn pg_hba(&self) -> Option<Vec<String>> {
        let a = self.pg()?.get("pg_hba")?.as_array()?;
        Some(a.iter().filter_map(|v| lenient_str(Some(v))).collect())
    }

    /// Whether `standby_cluster` describes a standby cluster (host, port or restore_command set).
    pub fn is_standby_cluster(&self) -> bool {
        self.standby_cluster().is_some()
    }

    /// The remote source of a standby cluster (spec 5.9): `Some` when `standby_cluster` sets
    /// `host`, `port` or `restore_command`.
    pub fn standby_cluster(&self) -> Option<StandbySource> {
        let Some(Value::Object(s)) = self.data.get("standby_cluster") else {
            return None;
        };
        let text = |k: &str| lenient_str(s.get(k)).filter(|t| !t.trim().is_empty());
        let source = StandbySource {
            host: text("host"),
            port: text("port").and_then(|p| p.trim().parse().ok()),
            primary_slot_name: text("primary_slot_name"),
            restore_command: text("restore_command"),
            archive_cleanup_command: text("archive_cleanup_command"),
            recovery_min_apply_delay: text("recovery_min_apply_delay"),
            create_replica_methods: s
                .get("create_replica_methods")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| lenient_str(Some(v))).collect()),
        };
        (source.host.is_some() || source.port.is_some() || source.restore_command.is_some())
            .then_some(source)
    }
}

/// Where the leader of a standby cluster (the *standby leader*) takes its WAL from: a remote
/// primary (`host`, `port`, through `primary_slot_name` when set) and/or an archive
/// (`restore_command`), as the dynamic `standby_cluster` section gives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StandbySource {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub primary_slot_name: Option<String>,
    pub restore_command: Option<String>,
    pub archive_cleanup_command: Option<String>,
    pub recovery_min_apply_delay: Option<String>,
    /// The methods that create the standby leader's data directory (default `basebackup`).
    pub create_replica_methods: Option<Vec<String>>,
}

impl StandbySource {
    /// What the standby leader follows, for logs and to notice a change: the remote host and
    /// port (5432 when only the host is set), or the archive alone.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.host.is_some() || self.port.is_some() {
            parts.push(format!(
                "the remote primary {}:{}",
                self.host.as_deref().unwrap_or("localhost"),
                self.port.unwrap_or(5432)
            ));
        }
        if let Some(slot) = &self.primary_slot_name {
            parts.push(format!("slot {slot}"));
        }
        if self.restore_command.is_some() {
            parts.push("the archive (restore_command)".into());
        }
        parts.join(", ")
    }
}

/// The whole cluster as read in one prefix read (or rebuilt by the watch), with its revision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cluster {
    /// The store revision this view reflects.
    pub revision: i64,
    /// `initialize`: `None` = absent, `Some("")` = bootstrap in progress, else the sysid.
    pub initialize: Option<String>,
    pub config: Option<Versioned<ClusterConfig>>,
    /// The revision of a `config` key that is not a JSON object (`config` is then `None`).
    pub config_unreadable: Option<i64>,
    pub leader: Option<Leader>,
    /// Sorted by name.
    pub members: Vec<Member>,
    pub failover: Option<Versioned<Failover>>,
    pub sync: Option<Versioned<SyncState>>,
    pub history: Option<History>,
    pub status: Status,
    pub failsafe: Option<Failsafe>,
}

/// The key names under the cluster prefix.
pub mod keys {
    pub const LEADER: &str = "leader";
    pub const MEMBERS: &str = "members/";
    pub const CONFIG: &str = "config";
    pub const INITIALIZE: &str = "initialize";
    pub const HISTORY: &str = "history";
    pub const SYNC: &str = "sync";
    pub const FAILOVER: &str = "failover";
    pub const STATUS: &str = "status";
    pub const FAILSAFE: &str = "failsafe";
    pub const LEGACY_OPTIME: &str = "optime/leader";
}

/// The cluster prefix `/<namespace>/<scope>/` with repeated slashes collapsed.
pub fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let raw = format!(
        "/{}/{}/",
        namespace.trim_matches('/'),
        scope.trim_matches('/')
    );
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

impl Cluster {
    /// Builds the cluster from the keys under its prefix (keys relative to the prefix).
    pub fn from_kvs(revision: i64, kvs: &[Kv]) -> Cluster {
        let mut c = Cluster {
            revision,
            ..Cluster::default()
        };
        let mut legacy_optime = None;
        let mut have_status = false;
        for kv in kvs {
            let k = kv.key.as_str();
            if let Some(name) = k.strip_prefix(keys::MEMBERS) {
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                c.members.push(Member {
                    name: name.to_string(),
                    version: kv.mod_revision,
                    session: kv.lease,
                    data: MemberData::parse(&kv.value),
                });
                continue;
            }
            match k {
                keys::LEADER if !kv.value.is_empty() => {
                    c.leader = Some(Leader {
                        name: kv.value.clone(),
                        version: kv.mod_revision,
                        session: kv.lease,
                    })
                }
                keys::INITIALIZE => c.initialize = Some(kv.value.clone()),
                keys::CONFIG => match ClusterConfig::parse(&kv.value) {
                    Some(cfg) => {
                        c.config = Some(Versioned {
                            version: kv.mod_revision,
                            value: cfg,
                        })
                    }
                    None => c.config_unreadable = Some(kv.mod_revision),
                },
                keys::HISTORY => c.history = History::parse(&kv.value),
                keys::SYNC => {
                    c.sync = Some(Versioned {
                        version: kv.mod_revision,
                        value: SyncState::parse(&kv.value),
                    })
                }
                keys::FAILOVER => {
                    c.failover = Some(Versioned {
                        version: kv.mod_revision,
                        value: Failover::parse(&kv.value),
                    })
                }
                keys::STATUS => {
                    have_status = true;
                    c.status = Status::parse(&kv.value)
                }
                keys::FAILSAFE => c.failsafe = parse_object(&kv.value),
                keys::LEGACY_OPTIME => legacy_optime = kv.value.trim().parse::<u64>().ok(),
                _ => {}
            }
        }
        if !have_status || c.status.optime.is_none() {
            if let Some(o) = legacy_optime {
                c.status.optime = Some(o);
            }
        }
        c.members.sort_by(|a, b| a.name.cmp(&b.name));
        c
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.name.as_str())
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.member(self.leader_name()?)
    }

    /// The `config` key's `synchronous_mode` (off without a readable `config` key).
    pub fn synchronous_mode(&self) -> SynchronousMode {
        self.config
            .as_ref()
            .map_or(SynchronousMode::Off, |c| c.value.synchronous_mode())
    }

    pub fn is_paused(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.value.pause())
    }

    /// `initialize` holds a real system identifier (Patroni checks for at least 10 digits).
    pub fn initialized_sysid(&self) -> Option<&str> {
        self.initialize
            .as_deref()
            .filter(|s| s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit()))
    }

    pub fn timeline(&self) -> u64 {
        match &self.history {
            Some(h) => h.cluster_timeline(),
            None => 0,
        }
    }
}

/// Member slot name: lower-cased, `-` and `.` become `_`, anything else outside `[a-z0-9_]`
/// becomes `u` + 4-digit code point, truncated to 63 characters (spec 5.12).
pub fn slot_name_from_member_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.chars().take(63).collect()
}

/// Formats a WAL position as PostgreSQL prints it: `X/Y` in hex without zero padding.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `X/Y` into a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
        return None;
    }
    Some((hi << 32) | lo)
}

mod check;
pub use check::{seconds_with_unit, InvalidConfig};

/// Tags as Patroni publishes them: boolean built-ins omitted when false (except `nofailover`
/// when `failover_priority` is set, `nosync` when `sync_priority` is set).
pub fn publishable_tags(tags: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in tags {
        let builtin_bool = [
            "clonefrom",
            "nofailover",
            "noloadbalance",
            "nosync",
            "nostream",
        ]
        .contains(&k.as_str());
        if builtin_bool && lenient_bool(Some(v)) == Some(false) {
            let keep = (k == "nofailover" && tags.contains_key("failover_priority"))
                || (k == "nosync" && tags.contains_key("sync_priority"));
            if !keep {
                continue;
            }
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
