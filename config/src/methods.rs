//! The user's own ways of making a data directory: the replica creation methods of
//! `postgresql.create_replica_methods` (besides the built-in `basebackup`) and a custom
//! `bootstrap.method`. Each is a command Patrol runs with the arguments Patroni passes; this
//! module turns their sections into typed values and builds those arguments (pure: the agent
//! runs them).

use serde_json::{Map, Value};

/// A replica creation method other than `basebackup`: its `postgresql.<name>` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMethod {
    pub name: String,
    /// `command` split as a shell would; the method's name when the section has no `command`
    /// (Patroni runs the name then).
    pub command: Vec<String>,
    /// `no_leader`: the method can create a replica while the cluster has no leader (it does
    /// not need a replication connection).
    pub no_leader: bool,
    /// `keep_data`: the data directory is not emptied before the command runs, nor after it
    /// fails.
    pub keep_data: bool,
    /// `no_params`: only the section's own options are passed, not `--scope`, `--role`,
    /// `--datadir`, `--connstring`.
    pub no_params: bool,
    /// The section's keys other than `command`, in order, values as Patroni writes them.
    pub options: Vec<(String, String)>,
}

impl ReplicaMethod {
    /// Reads a method's section (`None`: the method has no section).
    pub(crate) fn parse(
        name: &str,
        section: Option<&Map<String, Value>>,
    ) -> Result<ReplicaMethod, String> {
        let empty = Map::new();
        let section = section.unwrap_or(&empty);
        let command = match section.get("command") {
            None | Some(Value::Null) => vec![name.to_string()],
            Some(c) => split_command(c)?,
        };
        Ok(ReplicaMethod {
            name: name.to_string(),
            command,
            no_leader: truthy(section.get("no_leader")),
            keep_data: truthy(section.get("keep_data")),
            no_params: truthy(section.get("no_params")),
            options: section
                .iter()
                .filter(|(k, _)| *k != "command")
                .map(|(k, v)| (k.clone(), python_str(v)))
                .collect(),
        })
    }

    /// The arguments after the command, as Patroni's `create_replica` passes them: every option
    /// of the section as `--key=value` (`no_leader`, `keep_data` included), then `--scope`,
    /// `--role=replica`, `--datadir` and `--connstring` (empty without a leader); with
    /// `no_params`, only the section's other options. An option of the section named like one
    /// of Patroni's keeps its place and takes Patroni's value.
    pub fn args(&self, scope: &str, datadir: &str, connstring: &str) -> Vec<String> {
        let mut opts = self.options.clone();
        if self.no_params {
            opts.retain(|(k, _)| !matches!(k.as_str(), "no_params" | "no_leader" | "keep_data"));
        } else {
            for (k, v) in [
                ("scope", scope),
                ("role", "replica"),
                ("datadir", datadir),
                ("connstring", connstring),
            ] {
                match opts.iter_mut().find(|(name, _)| name == k) {
                    Some(slot) => slot.1 = v.to_string(),
                    None => opts.push((k.to_string(), v.to_string())),
                }
            }
        }
        opts.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }
}

/// A custom bootstrap method: `bootstrap.method` names it and `bootstrap.<name>` has its
/// `command`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomBootstrap {
    pub name: String,
    /// `command` split as a shell would.
    pub command: Vec<String>,
    /// `no_params`: `--scope` and `--datadir` are not passed.
    pub no_params: bool,
    /// `keep_existing_recovery_conf`: the recovery settings and signal files the command left
    /// (pgBackRest, Barman) are kept.
    pub keep_existing_recovery_conf: bool,
    /// `recovery_conf`: recovery settings for the archive recovery that follows the command.
    pub recovery_conf: Option<Map<String, Value>>,
    /// The section's other keys, in order, values as Patroni writes them.
    pub options: Vec<(String, String)>,
}

/// The keys of a custom bootstrap section that are not passed to its command.
const BOOTSTRAP_RESERVED: &[&str] = &[
    "command",
    "no_params",
    "keep_existing_recovery_conf",
    "recovery_conf",
    "scope",
    "datadir",
];

impl CustomBootstrap {
    pub(crate) fn parse(
        name: &str,
        section: &Map<String, Value>,
    ) -> Result<CustomBootstrap, String> {
        let command = split_command(section.get("command").unwrap_or(&Value::Null))?;
        let recovery_conf = match section.get("recovery_conf") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return Err("recovery_conf: expected a mapping".to_string()),
        };
        Ok(CustomBootstrap {
            name: name.to_string(),
            command,
            no_params: truthy(section.get("no_params")),
            keep_existing_recovery_conf: truthy(section.get("keep_existing_recovery_conf")),
            recovery_conf,
            options: section
                .iter()
                .filter(|(k, _)| !BOOTSTRAP_RESERVED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), python_str(v)))
                .collect(),
        })
    }

    /// The arguments after the command, as Patroni's `_custom_bootstrap` passes them:
    /// `--scope` and `--datadir` (unless `no_params`), then the section's other keys as
    /// `--key=value`.
    pub fn args(&self, scope: &str, datadir: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.no_params {
            out.push(format!("--scope={scope}"));
            out.push(format!("--datadir={datadir}"));
        }
        out.extend(self.options.iter().map(|(k, v)| format!("--{k}={v}")));
        out
    }
}

fn split_command(value: &Value) -> Result<Vec<String>, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("command: expected a string, found {other}")),
    };
    let argv = shlex::split(&text).ok_or_else(|| format!("command {text:?}: unbalanced quotes"))?;
    if argv.is_empty() {
        return Err("command is empty".to_string());
    }
    Ok(argv)
}

/// Whether a flag of a method's section is on: booleans as they are, a number other than 0, a
/// boolean word (`true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0`), or any other non-empty text
/// (Patroni takes any non-empty value as true).
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => crate::env::parse_bool(s).unwrap_or(!s.is_empty()),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
    }
}

/// A value as Patroni (Python's `str`) writes it into `--key=value`: text as is, `True` and
/// `False`, numbers as written, `None`; lists and mappings as compact JSON.
fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "None".to_string(),
        other => other.to_string(),
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

    #[test]
    fn replica_method_arguments_are_patroni_s() {
        let m = ReplicaMethod::parse(
            "wal_e",
            Some(&map(json!({
                "command": "/usr/bin/wal-e --config '/etc/my conf'",
                "no_leader": 1,
                "threads": 4,
                "envdir": "/etc/wal-e",
                "role": "ignored",
            }))),
        )
        .expect("parse");
        assert_eq!(m.command, ["/usr/bin/wal-e", "--config", "/etc/my conf"]);
        assert!(m.no_leader && !m.keep_data && !m.no_params);
        assert_eq!(
            m.args("batman", "/data/pg", "host=h port=5432"),
            [
                "--no_leader=1",
                "--threads=4",
                "--envdir=/etc/wal-e",
                "--role=replica",
                "--scope=batman",
                "--datadir=/data/pg",
                "--connstring=host=h port=5432",
            ]
        );
    }

    #[test]
    fn no_params_passes_only_the_section_s_own_options() {
        let m = ReplicaMethod::parse(
            "restore",
            Some(&map(json!({
                "command": "restore.sh",
                "no_params": true,
                "keep_data": "yes",
                "no_leader": false,
                "target": "latest",
            }))),
        )
        .expect("parse");
        assert!(m.keep_data && m.no_params && !m.no_leader);
        assert_eq!(m.args("s", "/d", ""), ["--target=latest"]);
    }

    #[test]
    fn a_method_without_a_section_runs_its_name() {
        let m = ReplicaMethod::parse("pgbackrest_restore", None).expect("parse");
        assert_eq!(m.command, ["pgbackrest_restore"]);
        assert_eq!(
            m.args("s", "/d", ""),
            [
                "--scope=s",
                "--role=replica",
                "--datadir=/d",
                "--connstring="
            ]
        );
        assert!(ReplicaMethod::parse("x", Some(&map(json!({"command": "'a"})))).is_err());
        assert!(ReplicaMethod::parse("x", Some(&map(json!({"command": ""})))).is_err());
    }

    #[test]
    fn flags_read_as_patroni_reads_them() {
        for (v, want) in [
            (json!(true), true),
            (json!("1"), true),
            (json!("on"), true),
            (json!("anything"), true),
            (json!(0), false),
            (json!("false"), false),
            (json!(""), false),
            (Value::Null, false),
        ] {
            assert_eq!(truthy(Some(&v)), want, "{v}");
        }
    }

    #[test]
    fn custom_bootstrap_arguments_are_patroni_s() {
        let b = CustomBootstrap::parse(
            "backup_restore",
            &map(json!({
                "command": "python3 /x/backup_restore.py --sourcedir=/b",
                "test-argument": "test-value",
                "keep_existing_recovery_conf": false,
                "recovery_conf": {"restore_command": "cp /a/%f %p", "recovery_target_action": "promote"},
                "datadir": "/ignored",
            })),
        )
        .expect("parse");
        assert_eq!(
            b.command,
            ["python3", "/x/backup_restore.py", "--sourcedir=/b"]
        );
        assert!(!b.keep_existing_recovery_conf && !b.no_params);
        assert_eq!(b.recovery_conf.as_ref().map(|r| r.len()), Some(2), "{b:?}");
        assert_eq!(
            b.args("batman2", "/data/pg2"),
            [
                "--scope=batman2",
                "--datadir=/data/pg2",
                "--test-argument=test-value"
            ]
        );
        let b = CustomBootstrap::parse(
            "r",
            &map(json!({"command": "r.sh", "no_params": "true", "keep_existing_recovery_conf": true})),
        )
        .expect("parse");
        assert!(b.keep_existing_recovery_conf);
        assert_eq!(b.args("s", "/d"), Vec::<String>::new());
    }
}
