//! Validation: every error names its key.

use super::*;

#[test]
fn validation_errors_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("name", "~", "name: missing (required)"),
        ("name", "[a]", "name: expected a string, found a list"),
        ("scope", "~", "scope: missing (required)"),
        ("scope", "''", "scope: missing (required)"),
        ("namespace", "{a: 1}", "namespace: expected a string, found a mapping"),
        ("restapi.listen", "~", "restapi.listen: missing (required)"),
        ("restapi.listen", "abc", "restapi.listen: 'abc' is not host:port"),
        ("restapi.listen", "8008", "restapi.listen: expected a string, found the number 8008"),
        ("restapi.listen", "'127.0.0.1:0'", "restapi.listen: port 0 in '127.0.0.1:0' is out of range 1..65535"),
        ("restapi.listen", "'127.0.0.1:70000'", "restapi.listen: port 70000 in '127.0.0.1:70000' is out of range 1..65535"),
        ("restapi.connect_address", "'h:x'", "restapi.connect_address: 'h:x' is not host:port"),
        ("restapi.verify_client", "sometimes", "restapi.verify_client: 'sometimes' is not one of none, optional, required"),
        ("restapi.allowlist", "127.0.0.1", "restapi.allowlist: expected a list, found '127.0.0.1'"),
        ("restapi.allowlist", "[[a]]", "restapi.allowlist: item 1: expected a string, found a list"),
        ("restapi.allowlist_include_members", "maybe", "restapi.allowlist_include_members: expected a boolean (true/false), found 'maybe'"),
        ("restapi.authentication", "{username: u}", "restapi.authentication.password: missing (required)"),
        ("restapi", "[]", "restapi: expected a mapping, found a list"),
        ("ctl.insecure", "[1]", "ctl.insecure: expected a boolean (true/false), found a list"),
        ("postgresql.listen", "~", "postgresql.listen: missing (required)"),
        ("postgresql.listen", "'*:abc'", "postgresql.listen: '*:abc' is not host:port"),
        ("postgresql.listen", "'*:0'", "postgresql.listen: port 0 in '*:0' is out of range 1..65535"),
        ("postgresql.data_dir", "~", "postgresql.data_dir: missing (required)"),
        ("postgresql.data_dir", "{}", "postgresql.data_dir: expected a string, found a mapping"),
        ("postgresql.connect_address", "'10.0.0.1'", "postgresql.connect_address: '10.0.0.1' is not host:port"),
        ("postgresql.authentication", "~", "postgresql.authentication.superuser: missing (required)"),
        ("postgresql.authentication.superuser", "~", "postgresql.authentication.superuser: missing (required)"),
        ("postgresql.authentication.replication", "~", "postgresql.authentication.replication: missing (required)"),
        ("postgresql.authentication.replication.username", "~", "postgresql.authentication.replication.username: missing (required)"),
        ("postgresql.authentication.superuser.password", "[x]", "postgresql.authentication.superuser.password: expected a string, found a list"),
        ("postgresql.pg_ctl_timeout", "-1", "postgresql.pg_ctl_timeout: expected a non-negative integer, found the number -1"),
        ("postgresql.pg_hba", "host all all", "postgresql.pg_hba: expected a list, found 'host all all'"),
        ("postgresql.parameters", "[a]", "postgresql.parameters: expected a mapping, found a list"),
        ("postgresql.callbacks", "{on_start: [a]}", "postgresql.callbacks.on_start: expected a string, found a list"),
        ("postgresql.basebackup", "max-rate", "postgresql.basebackup: expected a list or a mapping, found 'max-rate'"),
        ("postgresql.use_pg_rewind", "sure", "postgresql.use_pg_rewind: expected a boolean (true/false), found 'sure'"),
        ("postgresql", "~", "postgresql: missing (required)"),
        ("postgresql", "'x'", "postgresql: expected a mapping, found 'x'"),
        ("bootstrap.dcs.ttl", "abc", "bootstrap.dcs.ttl: expected an integer, found 'abc'"),
        ("bootstrap.dcs.loop_wait", "1.5", "bootstrap.dcs.loop_wait: expected an integer, found the number 1.5"),
        ("bootstrap.dcs.retry_timeout", "[]", "bootstrap.dcs.retry_timeout: expected an integer, found a list"),
        ("bootstrap.dcs.ttl", "9223372036854775807", "bootstrap.dcs.ttl: must be an integer from 1 to 86400, not 9223372036854775807"),
        ("bootstrap.dcs.loop_wait", "0", "bootstrap.dcs.loop_wait: must be an integer from 1 to 86400, not 0"),
        ("bootstrap.dcs.primary_start_timeout", "-1", "bootstrap.dcs.primary_start_timeout: must be an integer from 0 to 31536000, not -1"),
        ("bootstrap.dcs.maximum_lag_on_failover", "lots", "bootstrap.dcs.maximum_lag_on_failover: expected an integer, found 'lots'"),
        ("bootstrap.dcs.synchronous_mode", "sometimes", "bootstrap.dcs.synchronous_mode: expected a boolean or 'quorum', found 'sometimes'"),
        ("bootstrap.dcs.postgresql", "[]", "bootstrap.dcs.postgresql: expected a mapping, found a list"),
        ("bootstrap.dcs.postgresql.use_pg_rewind", "sure", "bootstrap.dcs.postgresql.use_pg_rewind: expected a boolean, found 'sure'"),
        ("bootstrap.dcs", "[]", "bootstrap.dcs: expected a mapping, found a list"),
        ("bootstrap.initdb", "[pgdata: /x]", "bootstrap.initdb: option 'pgdata' is not allowed for initdb"),
        ("bootstrap.initdb", "[nosync]", "bootstrap.initdb: option 'nosync' is not allowed for initdb"),
        ("bootstrap.initdb", "{pwfile: /x}", "bootstrap.initdb: option 'pwfile' is not allowed for initdb"),
        ("bootstrap.initdb", "[sync-only]", "bootstrap.initdb: option 'sync-only' is not allowed"),
        ("bootstrap.initdb", "[version]", "bootstrap.initdb: option 'version' is not allowed"),
        ("bootstrap.initdb", "[{a: 1, b: 2}]", "bootstrap.initdb: item 1: expected an option name or a single `option: value` pair, found a mapping"),
        ("bootstrap.initdb", "[{encoding: [UTF8]}]", "bootstrap.initdb: item 1: the value of 'encoding' must be a string, found a list"),
        ("bootstrap.initdb", "data-checksums", "bootstrap.initdb: expected a list or a mapping, found 'data-checksums'"),
        ("bootstrap.pg_hba", "[{a: b}]", "bootstrap.pg_hba: item 1: expected a string, found a mapping"),
        ("etcd3", "~", "etcd3: no DCS configured: add an etcd3 section with host/hosts/url"),
        ("etcd3", "{}", "etcd3: no etcd endpoints: set host, hosts or url"),
        ("etcd3", "[]", "etcd3: expected a mapping, found a list"),
        ("etcd3.host", "'h:99999'", "etcd3.host: port 99999 in 'h:99999' is out of range 1..65535"),
        ("etcd3.hosts", "{a: 1}", "etcd3.hosts: expected a list, found a mapping"),
        ("etcd3.hosts", "''", "etcd3.hosts: the list of hosts is empty"),
        ("etcd3.url", "'etcd:2379'", "etcd3.url: 'etcd:2379' is not a URL like http://host:2379"),
        ("etcd3.url", "'ftp://etcd:2379'", "etcd3.url: 'ftp://etcd:2379': the scheme must be http or https"),
        ("etcd3.protocol", "gopher", "etcd3.protocol: 'gopher' is not http or https"),
        ("etcd3.port", "0", "etcd3.port: expected a port number 1..65535, found the number 0"),
        ("etcd3.srv", "example.com", "etcd3.srv: DNS SRV discovery is not supported"),
        ("tags.nofailover", "maybe", "tags.nofailover: expected a boolean, found 'maybe'"),
        ("tags.nosync", "[true]", "tags.nosync: expected a boolean, found a list"),
        ("tags.clonefrom", "2", "tags.clonefrom: expected a boolean, found the number 2"),
        ("tags.failover_priority", "-1", "tags.failover_priority: expected a non-negative integer, found the number -1"),
        ("tags.sync_priority", "high", "tags.sync_priority: expected a non-negative integer, found 'high'"),
        ("tags.replicatefrom", "[a]", "tags.replicatefrom: expected a member name, found a list"),
        ("tags", "[a]", "tags: expected a mapping, found a list"),
    ];
    let mut failures = Vec::new();
    for (path, value, expected) in cases {
        let yaml = if *path == "etcd3.srv" {
            minimal_with("etcd3", &format!("{{srv: {value}}}"))
        } else {
            minimal_with(path, value)
        };
        match load_yaml(&yaml, &[]) {
            Ok(_) => failures.push(format!("{path} = {value}: loaded, expected {expected:?}")),
            Err(e) => {
                let msg = e.to_string();
                let want = format!("invalid configuration: {expected}");
                if !msg.starts_with(&want) {
                    failures.push(format!("{path} = {value}:\n   got  {msg}\n   want {want}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn other_dcs_only_is_an_error_naming_it() {
    let yaml = MINIMAL.replace(
        "etcd3:\n  host: 127.0.0.1:2379\n",
        "consul:\n  host: 127.0.0.1:8500\n",
    );
    let err = load_err(&yaml, &[]);
    assert!(
        err.starts_with("invalid configuration: consul: Patrol supports only etcd"),
        "{err}"
    );
}

#[test]
fn error_variants_carry_the_key() {
    let err = load_yaml(&minimal_with("postgresql.listen", "~"), &[]).expect_err("missing listen");
    match err {
        ConfigError::Invalid { key, message } => {
            assert_eq!(key, "postgresql.listen");
            assert_eq!(message, "missing (required)");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}
