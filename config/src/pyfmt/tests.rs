//! Python's text forms and PyYAML's output, against what Python prints for the same values.

use super::*;
use serde_json::json;

#[test]
fn floats_like_python() {
    for (f, s) in [
        (0.5, "0.5"),
        (1e20, "1e+20"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5, "1.5"),
        (-2.0, "-2.0"),
        (123.456, "123.456"),
        (1.0 / 3.0, "0.3333333333333333"),
        (1.2345e-7, "1.2345e-07"),
    ] {
        assert_eq!(float_repr(f), s, "{f}");
    }
}

#[test]
fn json_like_python() {
    let v = json!({"a": [1, 2.5, null, true], "é": "h\u{e9}llo \"q\"", "big": 1e20});
    assert_eq!(
        json_dumps(&v),
        r#"{"a": [1, 2.5, null, true], "\u00e9": "h\u00e9llo \"q\"", "big": 1e+20}"#
    );
    assert_eq!(
        json_dumps_compact(&json!({"ttl": 30, "x": [1]})),
        r#"{"ttl":30,"x":[1]}"#
    );
}

#[test]
fn reprs_like_python() {
    assert_eq!(py_str(&json!(null)), "None");
    assert_eq!(py_str(&json!(true)), "True");
    assert_eq!(py_str(&json!("x")), "x");
    assert_eq!(
        py_str(&json!({"a": [1, "b'"], "c": false})),
        r#"{'a': [1, "b'"], 'c': False}"#
    );
    assert_eq!(str_repr("it's \"x\""), r#"'it\'s "x"'"#);
}

#[test]
fn plain_scalars_resolve_like_pyyaml() {
    assert_eq!(yaml11_plain_scalar("on"), json!(true));
    assert_eq!(yaml11_plain_scalar("No"), json!(false));
    assert_eq!(yaml11_plain_scalar("30"), json!(30));
    assert_eq!(yaml11_plain_scalar("0x1F"), json!(31));
    assert_eq!(yaml11_plain_scalar("010"), json!(8));
    assert_eq!(yaml11_plain_scalar("1_000"), json!(1000));
    assert_eq!(yaml11_plain_scalar("0.5"), json!(0.5));
    assert_eq!(yaml11_plain_scalar("1e5"), json!("1e5"));
    assert_eq!(yaml11_plain_scalar("1.0e+5"), json!(100000.0));
    assert_eq!(yaml11_plain_scalar("null"), json!(null));
    assert_eq!(yaml11_plain_scalar(""), json!(null));
    assert_eq!(yaml11_plain_scalar("128MB"), json!("128MB"));
}

/// Expected texts produced by PyYAML 6.0 (`yaml.safe_dump(d, default_flow_style=False,
/// encoding=None, allow_unicode=True, width=200)`) for the same data.
#[test]
fn block_yaml_like_pyyaml() {
    let cfg = json!({"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"pause":true,"synchronous_mode":true,
            "postgresql":{"use_pg_rewind":true,"use_slots":true,"parameters":{"wal_keep_size":"128MB","max_connections":100,"archive_command":"cp %p /arch/%f","hot_standby":"on","x.y":"","ratio":0.5,"big":1e20}},
            "slots":{"s1":{"type":"physical"}},"pg_hba":["host all all 0.0.0.0/0 md5","local all all trust"],"ignore_slots":[{"name":"a","type":"logical"}],
            "empty":{},"elist":[],"nul":null,"unicode":"héllo","multi":"line1\nline2","colon":"a: b","hash":"#x","num":"123","flt":"1.5","yes":"yes","tilde":"~","star":"*x","dash":"- x","lead":" sp","trail":"sp "});
    let expected = "\
colon: 'a: b'
dash: '- x'
elist: []
empty: {}
flt: '1.5'
hash: '#x'
ignore_slots:
- name: a
  type: logical
lead: ' sp'
loop_wait: 10
maximum_lag_on_failover: 1048576
multi: 'line1

  line2'
nul: null
num: '123'
pause: true
pg_hba:
- host all all 0.0.0.0/0 md5
- local all all trust
postgresql:
  parameters:
    archive_command: cp %p /arch/%f
    big: 1.0e+20
    hot_standby: 'on'
    max_connections: 100
    ratio: 0.5
    wal_keep_size: 128MB
    x.y: ''
  use_pg_rewind: true
  use_slots: true
retry_timeout: 10
slots:
  s1:
    type: physical
star: '*x'
synchronous_mode: true
tilde: '~'
trail: 'sp '
ttl: 30
unicode: héllo
'yes': 'yes'
";
    assert_eq!(yaml_dump(&cfg, false), expected);
}

#[test]
fn list_yaml_like_pyyaml() {
    let rows = json!([{"Cluster":"gold","Member":"pg0","Pending restart":"*","Pending restart reason":"max_connections: 100->200\nshared_buffers: 128MB->256MB","TL":3,"Tags":{"nofailover":true,"clonefrom":true}},
            {"Timestamp":"2019-09-23T16:57:57+02:00","LSN":25623960}]);
    let expected = "\
- Cluster: gold
  Member: pg0
  Pending restart: '*'
  Pending restart reason: 'max_connections: 100->200

    shared_buffers: 128MB->256MB'
  TL: 3
  Tags:
    clonefrom: true
    nofailover: true
- LSN: 25623960
  Timestamp: '2019-09-23T16:57:57+02:00'
";
    assert_eq!(yaml_dump(&rows, false), expected);
    assert_eq!(yaml_dump(&json!([]), false), "[]\n");
    assert_eq!(yaml_dump(&json!({}), false), "{}\n");
}

#[test]
fn nested_and_special_scalars() {
    let v = json!({"a": [[1, 2], {"b": []}], "tab": "x\ty", "both": "a\n\tb", "q": "it's", "d": "2024-01-01"});
    // PyYAML 6.0 output for the same data.
    let expected = "\
a:
- - 1
  - 2
- b: []
both: \"a\\n\\tb\"
d: '2024-01-01'
q: it's
tab: \"x\\ty\"
";
    assert_eq!(yaml_dump(&v, false), expected);
}

#[test]
fn flow_yaml_like_pyyaml() {
    assert_eq!(
        yaml_dump(&json!({"nofailover": true, "clonefrom": true}), true),
        "{clonefrom: true, nofailover: true}\n"
    );
    assert_eq!(
        yaml_dump(
            &json!({"replicatefrom": "pg0", "x": "a, b", "l": [1, "y"]}),
            true
        ),
        "{l: [1, y], replicatefrom: pg0, x: 'a, b'}\n"
    );
}

#[test]
fn long_plain_values_fold_at_200_columns() {
    let words: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    let text = words.join(" ");
    let out = yaml_dump(&json!({ "k": text }), false);
    let first = out.lines().next().unwrap();
    assert!(first.len() > 200 && first.len() < 215, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("  word"), "{out}");
    // PyYAML 6.0 output for the same data.
    let expected = format!(
        "k: {}\n  {}\n  word59\n",
        words[..30].join(" "),
        words[30..59].join(" ")
    );
    assert_eq!(out, expected);
    let long = format!("{} y", "x".repeat(250));
    assert_eq!(
        yaml_dump(&json!({ "k": long }), false),
        format!("k: {}\n  y\n", "x".repeat(250))
    );
    let quoted = "it's a long 'quoted' ".repeat(20);
    let q = "it''s a long ''quoted''";
    let expected = format!(
        "k: '{} it''s\n  a long ''quoted'' {}\n  {} '\n",
        [q; 8].join(" "),
        [q; 8].join(" "),
        [q; 3].join(" ")
    );
    assert_eq!(yaml_dump(&json!({ "k": quoted }), false), expected);
    assert_eq!(yaml_dump(&json!("abc"), false), "abc\n...\n");
    assert_eq!(yaml_dump(&json!(""), false), "''\n");
    assert_eq!(yaml_dump(&json!(5), false), "5\n...\n");
}
