//! Garbage input never panics.

use super::*;

#[test]
fn garbage_documents_are_errors() {
    for text in [
        "- a\n- b\n",
        "just a scalar",
        "42",
        "true",
        "[1, 2, 3]",
        "{",
        "name: [unclosed",
        "? [a, b]\n: c\n",
        "\t\tname: tab",
        "name: &a [*a]",
        "%YAML 1.2\n---\nname: x\n---\nname: y\n",
        "name: !!binary aGVsbG8=\nscope: 1\n",
        "name: .nan\nscope: .inf\n",
        "name: {a: 1}\nscope: [x]\nrestapi: 5\npostgresql: 'x'\netcd3: true\n",
        "\u{0}",
        "",
    ] {
        let res = load_yaml(text, &[]);
        assert!(res.is_err(), "{text:?} should not load");
    }
}

/// Replace every node of valid documents by values of every type: loading must return
/// (Ok or Err) without panicking.
#[test]
fn wrong_types_everywhere_never_panic() {
    let replacements = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(99_999_999_999_u64),
        json!(1.5),
        json!(""),
        json!("abc"),
        json!("yes"),
        json!(":"),
        json!("[::1"),
        json!([]),
        json!(["a", {"b": 1}]),
        json!({}),
        json!({"x": [1]}),
    ];
    for base in [SEED, POSTGRES0, MINIMAL] {
        let doc: Value = serde_yaml_ng::from_str(base).expect("base parses");
        let mut paths = Vec::new();
        collect_paths(&doc, &mut Vec::new(), &mut paths);
        for path in &paths {
            for replacement in &replacements {
                let mut mutated = doc.clone();
                replace_at(&mut mutated, path, replacement.clone());
                let Value::Object(map) = mutated else {
                    continue;
                };
                // Straight to the parser (no temp files), as `load` would after merging.
                let _ = crate::parse::build(&map, "/home/x");
            }
        }
        // And whole-document replacements through the YAML front door.
        for replacement in &replacements {
            let text = serde_yaml_ng::to_string(replacement).expect("serialise");
            let _ = load(
                ConfigSource::EnvOnly,
                &env(&[("PATRONI_CONFIGURATION", &text)]),
            );
        }
    }
}

fn collect_paths(v: &Value, cur: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                cur.push(k.clone());
                out.push(cur.clone());
                collect_paths(child, cur, out);
                cur.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                cur.push(i.to_string());
                out.push(cur.clone());
                collect_paths(child, cur, out);
                cur.pop();
            }
        }
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], replacement: Value) {
    let mut cur = v;
    for p in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m.get_mut(p).expect("path exists"),
            Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            _ => return,
        };
    }
    let last = &path[path.len() - 1];
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), replacement);
        }
        Value::Array(a) => a[last.parse::<usize>().expect("index")] = replacement,
        _ => {}
    }
}

#[test]
fn garbage_environment_never_panics() {
    let nasty = [
        "",
        "[",
        "{",
        "- ",
        "]",
        "::::",
        "a: [b",
        "\u{0}",
        "%(",
        "[[[[]]]]",
        "99999999999999999999999",
    ];
    let keys = [
        "PATRONI_NAME",
        "PATRONI_RESTAPI_LISTEN",
        "PATRONI_RESTAPI_ALLOWLIST",
        "PATRONI_RESTAPI_HTTP_EXTRA_HEADERS",
        "PATRONI_RESTAPI_REQUEST_QUEUE_SIZE",
        "PATRONI_CTL_INSECURE",
        "PATRONI_ETCD3_HOSTS",
        "PATRONI_ETCD3_PORT",
        "PATRONI_ETCD3_URL",
        "PATRONI_LOG_FORMAT",
        "PATRONI_LOG_LOGGERS",
        "PATRONI_RAFT_PARTNER_ADDRS",
        "PATRONI_KUBERNETES_LABELS",
        "PATRONI_CITUS_GROUP",
        "PATRONI_",
        "PATRONI__HOST",
        "PATRONI_POSTGRESQL_LISTEN",
        "PATRONI_SUPERUSER_USERNAME",
    ];
    for value in nasty {
        let mut vars: Vec<(&str, &str)> = keys.iter().map(|k| (*k, value)).collect();
        vars.push(("PATRONI_SCOPE", "s"));
        let _ = load_yaml(MINIMAL, &vars);
        let _ = load(ConfigSource::EnvOnly, &env(&vars));
    }
}

#[test]
fn non_string_mapping_keys_are_stringified() {
    let yaml = format!("{MINIMAL}tags:\n  1: one\n  true: yes-key\n");
    let c = load_ok(&yaml, &[]).config;
    assert_eq!(c.tags["1"], json!("one"));
    assert_eq!(c.tags["true"], json!("yes-key"));
}
