//! Sources: directories of files, missing files, YAML syntax errors, anchors.

use super::*;

#[test]
fn directory_source_merges_sorted_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("10-base.yml"), POSTGRES0).expect("write");
    std::fs::write(
        d.join("20-override.yaml"),
        "name: postgresql1\nrestapi:\n  listen: 127.0.0.1:8009\n  connect_address: ~\ntags:\n  nosync: true\n",
    )
    .expect("write");
    std::fs::write(d.join("30-ignored.txt"), "name: nope\n").expect("write");
    std::fs::create_dir(d.join("40-dir.yml")).expect("mkdir");
    std::fs::write(
        d.join("05-first.yml"),
        "name: overwritten\nscope: overwritten\n",
    )
    .expect("write");

    let loaded = load(ConfigSource::File(d), &no_env()).expect("directory loads");
    let c = &loaded.config;
    assert_eq!(c.name, "postgresql1");
    assert_eq!(c.scope, "batman");
    assert_eq!(c.restapi.listen.to_string(), "127.0.0.1:8009");
    // `connect_address: ~` removed the key, so it defaults to listen.
    assert_eq!(c.restapi.connect_address.to_string(), "127.0.0.1:8009");
    assert!(c.raw["restapi"].get("connect_address").is_none());
    // Mappings merge key by key and keep the first file's order.
    assert_eq!(
        Value::Object(c.tags.clone()),
        json!({"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": true})
    );
    assert_eq!(
        c.restapi
            .authentication
            .as_ref()
            .map(|a| a.username.as_str()),
        Some("username")
    );

    // Environment still applies on top of a directory.
    let c = load(ConfigSource::File(d), &env(&[("PATRONI_NAME", "envname")]))
        .expect("loads")
        .config;
    assert_eq!(c.name, "envname");
}

#[test]
fn empty_directory_warns_then_fails_on_missing_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(ConfigSource::File(dir.path()), &no_env()).expect_err("nothing configured");
    assert_eq!(
        err.to_string(),
        "invalid configuration: name: missing (required)"
    );
}

#[test]
fn missing_file_error_names_the_path() {
    let err = load(
        ConfigSource::File(Path::new("/nonexistent/patroni.yml")),
        &no_env(),
    )
    .expect_err("missing file");
    assert!(matches!(err, ConfigError::Io { .. }));
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/patroni.yml"), "{msg}");
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yml");
    std::fs::write(&path, "name: a\n  scope: [b\n").expect("write");
    let err = load(ConfigSource::File(&path), &no_env()).expect_err("bad yaml");
    match &err {
        ConfigError::Yaml { path_or_source, .. } => assert!(path_or_source.ends_with("bad.yml")),
        other => panic!("expected a YAML error, got {other:?}"),
    }
}

#[test]
fn yaml_anchors_and_merge_keys_work() {
    let yaml = format!(
        "{MINIMAL}x-auth: &auth\n  username: admin\n  password: pw\nctl:\n  authentication:\n    <<: *auth\n    password: other\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_eq!(
        loaded.config.ctl.authentication,
        Some(Credentials {
            username: "admin".into(),
            password: "other".into()
        })
    );
    assert_warning(&loaded, "unknown configuration key x-auth");
}
