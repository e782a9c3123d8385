//! `show-config`, `edit-config` and `history`: the YAML patronictl shows, its `-s/-p` dotted
//! path edits, `--apply` merges (`patch_config`), `--replace`, and the history table.

use patrol_dcs::Cluster;
use serde_json::{Map, Value};

use super::pyfmt::{py_str, yaml11_plain_scalar, yaml_dump};
use super::table::{print_output, Format};

/// `format_config_for_editing`: block YAML, keys sorted.
pub fn format_config(data: &Map<String, Value>) -> String {
    yaml_dump(&Value::Object(data.clone()), false)
}

/// `show-config` output: the YAML plus `click.echo`'s newline; nothing without a config key.
pub fn show_config(cluster: &Cluster) -> String {
    match &cluster.config {
        Some(c) => format!("{}\n", format_config(&c.value.data)),
        None => String::new(),
    }
}

/// Converts YAML text to JSON values (`yaml.safe_load`); an empty document is `null`.
pub fn load_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// `yaml.safe_load(value)` for a `-s key=value` value: plain one-line scalars are resolved as
/// PyYAML (YAML 1.1) would (`on` is true, `010` is 8); anything with YAML structure is parsed.
pub fn parse_value(value: &str) -> Result<Value, String> {
    let t = value.trim();
    let structured = t.contains('\n')
        || t.starts_with([
            '[', '{', '\'', '"', '!', '&', '*', '|', '>', '%', '@', '`', '#',
        ])
        || t.starts_with("- ")
        || t.starts_with("? ")
        || t.contains(": ")
        || t.ends_with(':')
        || t.contains(" #");
    if structured {
        load_yaml(t)
    } else {
        Ok(yaml11_plain_scalar(t))
    }
}

fn set_path_value(
    config: &mut Map<String, Value>,
    path: &[String],
    value: &Value,
    prefix: &[String],
) {
    let joined;
    let path: &[String] =
        if prefix.len() == 2 && prefix[0] == "postgresql" && prefix[1] == "parameters" {
            joined = vec![path.join(".")];
            &joined
        } else {
            path
        };
    let key = &path[0];
    if path.len() == 1 {
        if value.is_null() {
            config.shift_remove(key);
        } else {
            config.insert(key.clone(), value.clone());
        }
        return;
    }
    if !matches!(config.get(key), Some(Value::Object(_))) {
        config.insert(key.clone(), Value::Object(Map::new()));
    }
    let mut p = prefix.to_vec();
    p.push(key.clone());
    if let Some(Value::Object(sub)) = config.get_mut(key) {
        set_path_value(sub, &path[1..], value, &p);
        if sub.is_empty() {
            config.shift_remove(key);
        }
    }
}

/// `apply_config_changes`: each `a.b.c=value` sets (or with `null` removes) a dotted path;
/// under `postgresql.parameters` the rest of the path is one GUC name (GUCs contain dots).
pub fn apply_config_changes(
    data: &Map<String, Value>,
    kvpairs: &[String],
) -> Result<Map<String, Value>, String> {
    let mut changed = data.clone();
    for pair in kvpairs {
        let Some((key_path, value)) = pair.split_once('=') else {
            return Err(format!("Invalid parameter setting {pair}"));
        };
        if pair.is_empty() {
            return Err(format!("Invalid parameter setting {pair}"));
        }
        let path: Vec<String> = key_path.trim().split('.').map(String::from).collect();
        let value = parse_value(value)?;
        set_path_value(&mut changed, &path, &value, &[]);
    }
    Ok(changed)
}

/// Patroni's `patch_config`: `null` removes, objects merge, other values replace when their
/// `str()` differs. Returns whether anything changed.
pub fn patch_config(config: &mut Map<String, Value>, data: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in data {
        if value.is_null() {
            if config.shift_remove(name).is_some_and(|v| !v.is_null()) {
                changed = true;
            }
        } else if let Some(current) = config.get_mut(name) {
            if let Value::Object(vm) = value {
                if let Value::Object(cm) = current {
                    if patch_config(cm, vm) {
                        changed = true;
                    }
                } else {
                    *current = value.clone();
                    changed = true;
                }
            } else if py_str(current) != py_str(value) {
                *current = value.clone();
                changed = true;
            }
        } else {
            config.insert(name.clone(), value.clone());
            changed = true;
        }
    }
    changed
}

/// `apply_yaml_file`: the YAML document merged into `data` with [`patch_config`].
pub fn apply_yaml(data: &Map<String, Value>, text: &str) -> Result<Map<String, Value>, String> {
    let mut changed = data.clone();
    match load_yaml(text)? {
        Value::Object(new) => {
            patch_config(&mut changed, &new);
            Ok(changed)
        }
        Value::Null => Err("'NoneType' object has no attribute 'items'".into()),
        other => Err(format!(
            "the YAML document must be a mapping, not {}",
            py_str(&other)
        )),
    }
}

/// `history [-f FMT]`: TL, LSN, Reason, Timestamp, New Leader (missing fields as empty).
pub fn history_output(cluster: &Cluster, fmt: Format) -> String {
    let columns: Vec<String> = ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows: Vec<Vec<Value>> = cluster
        .history
        .as_ref()
        .map(|h| {
            h.lines
                .iter()
                .map(|l| {
                    vec![
                        Value::from(l.timeline),
                        Value::from(l.lsn),
                        Value::from(l.reason.clone()),
                        Value::from(l.timestamp.clone().unwrap_or_default()),
                        Value::from(l.new_leader.clone().unwrap_or_default()),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_output(&columns, &rows, &["TL", "LSN"], fmt, "", "\t")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::difflib::unified_diff;
    use crate::testutil::cluster_from;
    use serde_json::json;

    fn a() -> Cluster {
        cluster_from(include_str!("testdata/a_keys.json"))
    }

    #[test]
    fn show_config_like_patronictl() {
        assert_eq!(
            show_config(&a()),
            include_str!("testdata/a_show_config.txt")
        );
        assert_eq!(show_config(&Cluster::default()), "");
    }

    #[test]
    fn history_like_patronictl() {
        let c = a();
        assert_eq!(
            history_output(&c, Format::Pretty),
            include_str!("testdata/a_history.txt")
        );
        assert_eq!(
            history_output(&c, Format::Tsv),
            include_str!("testdata/a_history_tsv.txt")
        );
        assert_eq!(
            history_output(&c, Format::Json),
            include_str!("testdata/a_history_json.txt")
        );
        assert_eq!(
            history_output(&c, Format::Yaml),
            include_str!("testdata/a_history_yaml.txt")
        );
        let b = cluster_from(include_str!("testdata/b_keys.json"));
        assert_eq!(
            history_output(&b, Format::Pretty),
            include_str!("testdata/b_history.txt")
        );
        assert_eq!(history_output(&b, Format::Json), "[]\n");
    }

    #[test]
    fn set_diff_like_patronictl() {
        let c = a();
        let data = &c.config.as_ref().unwrap().value.data;
        let pairs: Vec<String> = [
            "ttl=20",
            "postgresql.parameters.max_connections=200",
            "postgresql.parameters.work_mem=4MB",
            "nul=null",
            "new.key=x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let changed = apply_config_changes(data, &pairs).unwrap();
        // Printed by patronictl 4.1 `edit-config -s ttl=20 -s postgresql.parameters.
        // max_connections=200 -p work_mem=4MB -s nul=null -s new.key=x --force`.
        let expected = "\
--- 
+++ 
@@ -13,7 +13,8 @@
 multi: 'line1
 
   line2'
-nul: null
+new:
+  key: x
 num: '123'
 pause: true
 pg_hba:
@@ -24,9 +25,10 @@
     archive_command: cp %p /arch/%f
     big: 1.0e+20
     hot_standby: 'on'
-    max_connections: 100
+    max_connections: 200
     ratio: 0.5
     wal_keep_size: 128MB
+    work_mem: 4MB
     x.y: ''
   use_pg_rewind: true
   use_slots: true
@@ -38,6 +40,6 @@
 synchronous_mode: true
 tilde: '~'
 trail: 'sp '
-ttl: 30
+ttl: 20
 unicode: héllo
 'yes': 'yes'
";
        assert_eq!(
            unified_diff(&format_config(data), &format_config(&changed)),
            expected
        );
    }

    #[test]
    fn set_values_are_yaml_typed() {
        let m = Map::new();
        let pairs = |p: &[&str]| -> Vec<String> { p.iter().map(|s| s.to_string()).collect() };
        let c = apply_config_changes(
            &m,
            &pairs(&[
                "a=on",
                "b=30",
                "c='30'",
                "d=[1, x]",
                "e.f=0.5",
                "postgresql.parameters.pg_stat_statements.max=1000",
                "g=",
            ]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(c),
            json!({"a": true, "b": 30, "c": "30", "d": [1, "x"], "e": {"f": 0.5},
                   "postgresql": {"parameters": {"pg_stat_statements.max": 1000}}})
        );
        assert_eq!(
            apply_config_changes(&m, &pairs(&["foo"])).unwrap_err(),
            "Invalid parameter setting foo"
        );
    }

    #[test]
    fn patch_config_like_patroni() {
        let mut m = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": "100"})
            .as_object()
            .cloned()
            .unwrap();
        let p = json!({"a": null, "b": {"c": 5}, "e": 100, "f": [1]});
        assert!(patch_config(&mut m, p.as_object().unwrap()));
        assert_eq!(
            Value::Object(m.clone()),
            json!({"b": {"c": 5, "d": 3}, "e": "100", "f": [1]})
        );
        assert!(!patch_config(
            &mut m,
            json!({"e": 100}).as_object().unwrap()
        ));
        let applied = apply_yaml(&m, "loop_wait: 5\nb: {d: null}\n").unwrap();
        assert_eq!(
            Value::Object(applied),
            json!({"b": {"c": 5}, "e": "100", "f": [1], "loop_wait": 5})
        );
    }
}
