//! What Patroni's configuration can ask for that Patrol does not do yet. [`UNSUPPORTED`] is the
//! one table of those keys; it is read by the check of the local configuration (file and
//! `PATRONI_*` variables, at start and on reload), by the check of the dynamic configuration
//! (the DCS `config` key, every HA cycle and on `PATCH`/`PUT /config`) and by the test that
//! keeps `docs/patroni-compatibility.md` in step with it. When a feature is implemented, its
//! rows leave the table (and the document's "not yet" with them).
//!
//! Most keys are named in a warning and ignored. A key that asks for a guarantee Patrol does
//! not give ([`Effect::Refuse`]: a fencing script, a standby cluster) stops the agent from starting, and the REST API from writing it
//! into the dynamic configuration, unless [`ALLOW_VAR`] (or `patrol --allow-unsupported`) is
//! set. In the dynamic configuration of a running cluster nothing can be refused: the HA loop
//! logs it at ERROR ([`DynamicNotice`]) whenever the set of such keys changes.

use serde_json::{Map, Value};

use super::env::parse_bool;

/// The environment variable that lets the agent start with, and the REST API accept, keys that
/// ask for guarantees Patrol does not give; `patrol --allow-unsupported` sets it. Meant for
/// tests and for knowingly running without the guarantee.
pub const ALLOW_VAR: &str = "PATROL_ALLOW_UNSUPPORTED";

/// Whether the environment map sets [`ALLOW_VAR`] to a true value (`1`, `true`, `on`, `yes`).
pub fn allowed(env: &std::collections::BTreeMap<String, String>) -> bool {
    env.get(ALLOW_VAR)
        .and_then(|v| parse_bool(v))
        .unwrap_or(false)
}

/// Where a key is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The local configuration only.
    Local,
    /// The dynamic configuration (the DCS `config` key, and `bootstrap.dcs` locally).
    Dynamic,
    /// Both: a `postgresql` key Patroni reads from the local file and from the dynamic
    /// `postgresql` section.
    Both,
}

/// What Patrol does when a value asks for the feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Log a warning and run without it.
    Warn,
    /// The key asks for a guarantee Patrol does not give: refuse (unless allowed).
    Refuse,
}

/// When a value asks for the feature (a value that does not is what Patrol does anyway).
#[derive(Debug, Clone, Copy)]
pub enum When {
    /// Present and not null, `""`, `[]` or `{}`.
    Set,
    /// A number above 0.
    Positive,
    /// Set to something other than one of these strings.
    NotOneOf(&'static [&'static str]),
    /// Set, while the agent reaches its PostgreSQL over TCP (`postgresql.use_unix_socket` off):
    /// TLS options mean nothing on a unix socket.
    SetOverTcp,
}

/// One key Patrol does not implement yet.
#[derive(Debug)]
pub struct Unsupported {
    /// Dotted path; `*` stands for any key at that level.
    pub key: &'static str,
    /// Keys a trailing `*` does not cover (they are implemented).
    pub except: &'static [&'static str],
    pub scope: Scope,
    pub effect: Effect,
    pub when: When,
    /// What Patrol does instead, in a few words.
    pub reason: &'static str,
}

const fn warn(key: &'static str, scope: Scope, when: When, reason: &'static str) -> Unsupported {
    Unsupported {
        key,
        except: &[],
        scope,
        effect: Effect::Warn,
        when,
        reason,
    }
}

const fn refuse(key: &'static str, scope: Scope, when: When, reason: &'static str) -> Unsupported {
    Unsupported {
        key,
        except: &[],
        scope,
        effect: Effect::Refuse,
        when,
        reason,
    }
}

const fn warn_others(
    key: &'static str,
    except: &'static [&'static str],
    scope: Scope,
    reason: &'static str,
) -> Unsupported {
    Unsupported {
        key,
        except,
        scope,
        effect: Effect::Warn,
        when: When::Set,
        reason,
    }
}

use Scope::{Both, Dynamic, Local};
use When::{NotOneOf, Positive, Set};

/// Every key Patroni acts on that Patrol does not implement yet. More specific keys come before
/// the `postgresql.*` catch-all, which only reports what they did not. One line per key.
#[rustfmt::skip]
pub const UNSUPPORTED: &[Unsupported] = &[
    // Local only.
    Unsupported { key: "postgresql.authentication.superuser.*", except: &["username", "password", "sslmode", "sslrootcert", "sslcert", "sslkey"], scope: Local, effect: Effect::Warn, when: When::SetOverTcp, reason: "the agent's own TCP connection to PostgreSQL uses sslmode, sslrootcert, sslcert and sslkey only (no revocation lists, encrypted keys, GSSAPI or channel binding settings)" },
    refuse("citus", Local, Set, "Citus clusters (a coordinator and worker groups registered with each other) are not managed: the node would run as a plain PostgreSQL cluster"),
    // The postgresql section, locally and in the dynamic configuration.
    warn("postgresql.custom_conf", Both, Set, "postgresql.conf always includes postgresql.base.conf, not this file"),
    warn("postgresql.config_base_name", Both, NotOneOf(&["postgresql"]), "the generated file is always postgresql.conf"),
    // Dynamic only.
    warn("primary_stop_timeout", Dynamic, Positive, "Patrol does not bound a synchronous primary's shutdown with it: PostgreSQL is stopped fast and waited for"),
    warn("master_stop_timeout", Dynamic, Positive, "Patrol does not bound a synchronous primary's shutdown with it: PostgreSQL is stopped fast and waited for"),
    warn_others(
        "postgresql.*",
        &[
            "parameters",
            "pg_hba",
            "use_slots",
            "use_pg_rewind",
            "recovery_conf",
            // Local only in Patroni too: it drops them from the dynamic section.
            "connect_address",
            "proxy_address",
            "listen",
            "config_dir",
            "data_dir",
            "pgpass",
            "authentication",
        ],
        Dynamic,
        "from the dynamic postgresql section Patrol applies only parameters, pg_hba, use_slots, use_pg_rewind and recovery_conf; set it in each member's local configuration",
    ),
];

/// One key of a configuration that asks for something Patrol does not do.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Dotted path as found, e.g. `bootstrap.dcs.synchronous_mode`, `postgresql.callbacks.on_start`.
    pub path: String,
    /// The value, for messages (`required`, `true`, a compact JSON object...).
    pub value: String,
    pub effect: Effect,
    pub reason: &'static str,
    /// The key came from a `PATRONI_*` variable.
    pub from_env: bool,
}

/// Entries that exercise what no real one does today (a refused dynamic key) in the tests.
#[cfg(test)]
const TEST_ENTRIES: &[Unsupported] = &[refuse(
    "test_guarantee",
    Dynamic,
    Set,
    "a guarantee Patrol does not give",
)];
#[cfg(not(test))]
const TEST_ENTRIES: &[Unsupported] = &[];

const OVERRIDE: &str = "--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1";

impl Finding {
    fn origin(&self) -> &'static str {
        if self.from_env {
            " (from the environment)"
        } else {
            ""
        }
    }

    /// The warning for a local key, or for a refused one that [`ALLOW_VAR`] let through.
    pub fn warning(&self) -> String {
        match self.effect {
            Effect::Warn => format!(
                "{}{}: not implemented by Patrol yet, ignored: {}",
                self.path,
                self.origin(),
                self.reason
            ),
            Effect::Refuse => format!(
                "{} = {}{}: {}; Patrol does not give this guarantee yet and runs without it ({OVERRIDE} is set)",
                self.path,
                self.value,
                self.origin(),
                self.reason
            ),
        }
    }

    /// Why the agent does not start (a refused local key).
    pub fn refusal(&self) -> String {
        format!(
            "{} = {}{}: {}; Patrol does not give this guarantee yet, so it refuses to start ({OVERRIDE} starts it anyway; see docs/patroni-compatibility.md)",
            self.path,
            self.value,
            self.origin(),
            self.reason
        )
    }

    /// The REST API's answer to a change that would write a refused key.
    pub fn rejection(&self) -> String {
        format!(
            "{} = {}: {}; Patrol does not implement it yet, so it is not written (see docs/patroni-compatibility.md)",
            self.path, self.value, self.reason
        )
    }

    /// The HA loop's line for a key of the dynamic configuration.
    pub fn dynamic_message(&self) -> String {
        match self.effect {
            Effect::Warn => format!(
                "dynamic configuration: {}: not implemented by Patrol yet, ignored: {}",
                self.path, self.reason
            ),
            Effect::Refuse => format!(
                "dynamic configuration: {} = {}: {}; Patrol does not give this guarantee yet and runs without it: set it back (patrolctl edit-config)",
                self.path, self.value, self.reason
            ),
        }
    }
}

/// What the local configuration asks for that Patrol does not do: the local keys, and the
/// dynamic keys of `bootstrap.dcs`.
pub fn check_local(doc: &Map<String, Value>) -> Vec<Finding> {
    let mut out = check(doc, &[Local, Both], "");
    if let Some(Value::Object(dcs)) = doc
        .get("bootstrap")
        .and_then(|b| b.get("dcs"))
        .filter(|v| v.is_object())
    {
        out.extend(check(dcs, &[Dynamic, Both], "bootstrap.dcs."));
    }
    out
}

/// What the dynamic configuration (the DCS `config` key) asks for that Patrol does not do.
pub fn check_dynamic(config: &Map<String, Value>) -> Vec<Finding> {
    check(config, &[Dynamic, Both], "")
}

/// The refused keys that `after` asks for and `before` did not: what a change of the dynamic
/// configuration through the REST API must not write.
pub fn newly_refused(before: &Map<String, Value>, after: &Map<String, Value>) -> Vec<Finding> {
    let old: Vec<String> = check_dynamic(before)
        .into_iter()
        .filter(|f| f.effect == Effect::Refuse)
        .map(|f| f.path)
        .collect();
    check_dynamic(after)
        .into_iter()
        .filter(|f| f.effect == Effect::Refuse && !old.contains(&f.path))
        .collect()
}

fn check(root: &Map<String, Value>, scopes: &[Scope], prefix: &str) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for entry in UNSUPPORTED
        .iter()
        .chain(TEST_ENTRIES)
        .filter(|e| scopes.contains(&e.scope))
    {
        let segments: Vec<&str> = entry.key.split('.').collect();
        let mut found = Vec::new();
        resolve(root, &segments, entry.except, String::new(), &mut found);
        for (path, value, parent) in found {
            if !asks(entry.when, value, parent, root) {
                continue;
            }
            let path = format!("{prefix}{path}");
            // Report a key once: the first (most specific) entry that covers it wins.
            let covered = out.iter().any(|f| {
                f.path == path
                    || path.starts_with(&format!("{}.", f.path))
                    || f.path.starts_with(&format!("{path}."))
            });
            if covered {
                continue;
            }
            out.push(Finding {
                path,
                value: shown(entry.when, value),
                effect: entry.effect,
                reason: entry.reason,
                from_env: false,
            });
        }
    }
    out
}

/// Every `(path, value, parent)` the pattern names under `map`. The last segment, when it is
/// not `*`, is reported even if absent (`value` `None`) as long as its parent mapping exists.
fn resolve<'a>(
    map: &'a Map<String, Value>,
    segments: &[&str],
    except: &[&str],
    path: String,
    out: &mut Vec<(String, Option<&'a Value>, &'a Map<String, Value>)>,
) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let keys: Vec<&String> = if *first == "*" {
        map.keys()
            .filter(|k| !(rest.is_empty() && except.contains(&k.as_str())))
            .collect()
    } else {
        match map.get_key_value(*first) {
            Some((k, _)) => vec![k],
            None => {
                if rest.is_empty() {
                    out.push((join(first), None, map));
                }
                return;
            }
        }
    };
    for key in keys {
        let value = &map[key];
        if rest.is_empty() {
            out.push((join(key), Some(value), map));
        } else if let Value::Object(sub) = value {
            resolve(sub, rest, except, join(key), out);
        }
    }
}

fn is_set(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn bool_ish(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool(s),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        _ => None,
    }
}

/// Whether `value` (found in `parent`, under the document `root`) asks for the feature.
fn asks(
    when: When,
    value: Option<&Value>,
    _parent: &Map<String, Value>,
    root: &Map<String, Value>,
) -> bool {
    match when {
        When::Set => is_set(value),
        When::Positive => match value {
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f > 0.0),
            Some(Value::String(s)) => s.trim().parse::<f64>().is_ok_and(|f| f > 0.0),
            _ => false,
        },
        When::NotOneOf(ok) => match value {
            Some(Value::String(s)) => !s.trim().is_empty() && !ok.contains(&s.trim()),
            v => is_set(v),
        },
        When::SetOverTcp => {
            let unix = root
                .get("postgresql")
                .and_then(|pg| pg.get("use_unix_socket"));
            is_set(value) && bool_ish(unix) != Some(true)
        }
    }
}

fn shown(when: When, value: Option<&Value>) -> String {
    let text = match (when, value) {
        (_, Some(Value::String(s))) => s.clone(),
        (_, Some(v)) => v.to_string(),
        (_, None) => "null".to_string(),
    };
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// Marks the findings whose key is set in `env_doc` (the document the `PATRONI_*` variables
/// make).
pub(crate) fn mark_env(findings: &mut [Finding], env_doc: &Map<String, Value>) {
    for f in findings {
        let mut cur: Option<&Value> = None;
        let mut map = Some(env_doc);
        for seg in f.path.split('.') {
            cur = map.and_then(|m| m.get(seg));
            map = cur.and_then(Value::as_object);
        }
        f.from_env = cur.is_some();
    }
}

/// The HA loop's memory of what the dynamic configuration asked for, so that it is logged when
/// it changes rather than every cycle.
#[derive(Debug, Default)]
pub struct DynamicNotice {
    last: Option<Vec<Finding>>,
}

impl DynamicNotice {
    /// The findings of `config` if they differ from the last call's (the first call always
    /// returns them, even when empty).
    pub fn changed(&mut self, config: &Map<String, Value>) -> Option<Vec<Finding>> {
        let now = check_dynamic(config);
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        self.last = Some(now.clone());
        Some(now)
    }

    /// Logs what `config` asks for that Patrol does not do, when that changed: refused keys at
    /// ERROR (WARN when `allow`), the others at WARN; an INFO line when nothing is left.
    pub fn observe(&mut self, config: &Map<String, Value>, allow: bool) {
        let had = self.last.as_ref().is_some_and(|l| !l.is_empty());
        let Some(now) = self.changed(config) else {
            return;
        };
        for f in &now {
            if f.effect == Effect::Refuse && !allow {
                tracing::error!("{}", f.dynamic_message());
            } else {
                tracing::warn!("{}", f.dynamic_message());
            }
        }
        if now.is_empty() && had {
            tracing::info!(
                "dynamic configuration: it no longer asks for anything Patrol does not implement"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn paths(findings: &[Finding]) -> Vec<(&str, Effect)> {
        findings
            .iter()
            .map(|f| (f.path.as_str(), f.effect))
            .collect()
    }

    #[test]
    fn local_keys_found_with_their_paths() {
        let doc = map(json!({
            "log": {"level": "INFO", "type": "plain", "dir": "/var/log/patroni", "format": "%(message)s"},
            "restapi": {"listen": ":8008", "request_queue_size": 10},
            "postgresql": {
                "callbacks": {"on_start": "/bin/s", "on_stop": ""},
                "create_replica_methods": ["basebackup"],
                "use_unix_socket": false,
                "config_base_name": "postgresql",
                "custom_conf": "/etc/pg.conf",
                "authentication": {
                    "superuser": {"username": "p", "password": "x", "sslmode": "require", "sslcrl": "/crl"},
                    "rewind": {"username": "r", "sslmode": "require"},
                },
            },
            "tags": {"nosync": false, "replicatefrom": "pg1", "nofailover": true},
        }));
        assert_eq!(
            paths(&check_local(&doc)),
            vec![
                ("postgresql.authentication.superuser.sslcrl", Effect::Warn),
                ("postgresql.custom_conf", Effect::Warn),
            ]
        );
    }

    #[test]
    fn values_that_ask_for_nothing_are_not_reported() {
        let doc = map(json!({
            "log": {"type": "plain", "level": "DEBUG"},
            "postgresql": {"create_replica_methods": ["basebackup"], "use_unix_socket": "off", "recovery_conf": {}},
            "watchdog": {"mode": "off", "device": "/dev/watchdog"},
            "tags": {"nostream": "false", "clonefrom": true},
            "bootstrap": {"method": "initdb", "dcs": {"synchronous_mode": "off", "synchronous_mode_strict": false, "failsafe_mode": false, "primary_stop_timeout": 0, "slots": {}, "standby_cluster": {"host": "10.0.0.1", "primary_slot_name": "x"}}},
        }));
        assert_eq!(check_local(&doc), vec![]);
    }

    #[test]
    fn bootstrap_dcs_is_checked_as_dynamic_configuration() {
        let doc = map(json!({"bootstrap": {"dcs": {
            "synchronous_mode": "on",
            "synchronous_mode_strict": true,
            "failsafe_mode": "yes",
            "standby_cluster": {"host": "10.0.0.1", "port": 5432},
            "test_guarantee": true,
            "postgresql": {"use_slots": true, "pg_ident": ["a b c"], "recovery_conf": {"restore_command": "cp"}},
        }}}));
        assert_eq!(
            paths(&check_local(&doc)),
            vec![
                ("bootstrap.dcs.postgresql.pg_ident", Effect::Warn),
                ("bootstrap.dcs.test_guarantee", Effect::Refuse),
            ]
        );
        for mode in [
            json!(true),
            json!("quorum"),
            json!(1),
            json!(false),
            json!("off"),
        ] {
            let got = check_dynamic(&map(json!({ "synchronous_mode": mode.clone() })));
            assert!(
                got.is_empty(),
                "{mode}: synchronous replication is implemented"
            );
        }
    }

    #[test]
    fn dynamic_postgresql_section_reports_what_is_not_applied_once() {
        let cfg = map(json!({"postgresql": {
            "parameters": {"work_mem": "8MB"},
            "pg_hba": ["local all all trust"],
            "use_slots": true,
            "use_pg_rewind": true,
            "data_dir": "/ignored/by/patroni/too",
            "callbacks": {"on_role_change": "/bin/x"},
            "pg_ctl_timeout": 30,
        }}));
        assert_eq!(
            paths(&check_dynamic(&cfg)),
            vec![
                ("postgresql.callbacks", Effect::Warn),
                ("postgresql.pg_ctl_timeout", Effect::Warn),
            ]
        );
    }

    #[test]
    fn superuser_tls_options_matter_only_over_tcp() {
        let tcp = map(
            json!({"postgresql": {"authentication": {"superuser": {"username": "p", "sslmode": "verify-ca", "sslrootcert": "/ca", "sslcrl": "/crl", "channel_binding": "require"}}}}),
        );
        assert_eq!(
            paths(&check_local(&tcp)),
            vec![
                ("postgresql.authentication.superuser.sslcrl", Effect::Warn),
                (
                    "postgresql.authentication.superuser.channel_binding",
                    Effect::Warn
                ),
            ]
        );
        let mut unix = tcp.clone();
        unix["postgresql"]["use_unix_socket"] = json!(true);
        assert_eq!(check_local(&unix), vec![]);
    }

    #[test]
    fn custom_methods_and_recovery_conf_are_implemented() {
        let doc = map(json!({
            "bootstrap": {"method": "restore", "restore": {"command": "/bin/r"},
                          "dcs": {"postgresql": {"recovery_conf": {"restore_command": "cp"}}}},
            "postgresql": {
                "create_replica_methods": ["pgbackrest", "basebackup"],
                "pgbackrest": {"command": "/bin/restore", "no_leader": true},
                "recovery_conf": {"restore_command": "cp /a/%f %p"},
            },
        }));
        assert_eq!(check_local(&doc), vec![]);
    }

    #[test]
    fn newly_refused_ignores_what_was_already_there() {
        let sc = |v: &str| json!({"level": v});
        let before = map(json!({"test_guarantee": sc("a"), "ttl": 30}));
        let after = map(json!({"test_guarantee": sc("b"), "ttl": 30, "failsafe_mode": true}));
        assert_eq!(newly_refused(&before, &after), vec![]);
        let after = map(json!({"test_guarantee": sc("a"), "ttl": 30}));
        assert_eq!(
            paths(&newly_refused(&map(json!({"ttl": 30})), &after)),
            vec![("test_guarantee", Effect::Refuse)]
        );
        // `pre_promote` is implemented: a local setting, warned about (not refused) in the
        // dynamic configuration, as every other dynamic postgresql key Patrol does not apply.
        let fence = map(json!({"postgresql": {"pre_promote": "/bin/f"}}));
        assert_eq!(newly_refused(&before, &fence), vec![]);
        let rejected = &newly_refused(&Map::new(), &before)[0];
        assert_eq!(
            rejected.rejection(),
            r#"test_guarantee = {"level":"a"}: a guarantee Patrol does not give; Patrol does not implement it yet, so it is not written (see docs/patroni-compatibility.md)"#
        );
        // Standby clusters are implemented.
        let standby = map(json!({"standby_cluster": {"host": "10.0.0.1", "port": 5432}}));
        assert_eq!(newly_refused(&Map::new(), &standby), vec![]);
        // Synchronous replication is implemented: nothing is refused.
        let sync = map(json!({"synchronous_mode": "quorum", "synchronous_mode_strict": true}));
        assert_eq!(newly_refused(&Map::new(), &sync), vec![]);
    }

    #[test]
    fn dynamic_notice_reports_changes_only() {
        let mut n = DynamicNotice::default();
        assert_eq!(n.changed(&Map::new()), Some(vec![]));
        assert_eq!(n.changed(&map(json!({"ttl": 30}))), None);
        let sc = map(json!({"test_guarantee": {"host": "10.0.0.1"}, "ttl": 30}));
        let got = n.changed(&sc).expect("changed");
        assert_eq!(paths(&got), vec![("test_guarantee", Effect::Refuse)]);
        assert!(got[0].dynamic_message().ends_with(
            "Patrol does not give this guarantee yet and runs without it: set it back (patrolctl edit-config)"
        ));
        assert_eq!(n.changed(&sc), None);
        assert_eq!(
            n.changed(&map(
                json!({"ttl": 40, "test_guarantee": {"host": "10.0.0.1"}})
            )),
            None
        );
        let more = map(
            json!({"test_guarantee": {"host": "10.0.0.1"}, "slots": {"s": {"type": "logical"}}}),
        );
        assert_eq!(
            n.changed(&more).map(|f| f.len()),
            None,
            "permanent slots are implemented"
        );
        assert_eq!(n.changed(&Map::new()), Some(vec![]));
    }

    #[test]
    fn env_origin_is_marked() {
        const SSLCRL: &str = "postgresql.authentication.superuser.sslcrl";
        let doc = map(json!({"postgresql": {
            "custom_conf": "/x",
            "authentication": {"superuser": {"sslcrl": "/crl"}},
        }}));
        let env_doc =
            map(json!({"postgresql": {"authentication": {"superuser": {"sslcrl": "/crl"}}}}));
        let mut f = check_local(&doc);
        mark_env(&mut f, &env_doc);
        let crl = f.iter().find(|f| f.path == SSLCRL).expect("sslcrl");
        assert!(crl.from_env);
        assert!(crl
            .warning()
            .starts_with(&format!("{SSLCRL} (from the environment): not implemented")));
        assert!(
            !f.iter()
                .find(|f| f.path == "postgresql.custom_conf")
                .expect("custom_conf")
                .from_env
        );
    }

    #[test]
    fn every_entry_is_well_formed() {
        for e in UNSUPPORTED {
            assert!(!e.key.is_empty() && !e.reason.is_empty(), "{e:?}");
            assert!(
                e.except.is_empty() || e.key.ends_with(".*"),
                "except needs a trailing *: {e:?}"
            );
            assert!(
                !e.key.contains('*') || e.key.ends_with(".*"),
                "only a trailing * is used: {e:?}"
            );
            if e.scope == Scope::Both {
                assert!(e.key.starts_with("postgresql."), "{e:?}");
            }
        }
    }
}
