//! The configuration reader's independence is the crate graph's: resolved on its own (as
//! `cargo build -p patrol-config` resolves it), neither the HA daemon nor an IO stack is among
//! its normal dependencies. Reading files, the user database (`nix`) and logging are its own.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "patrol-agent",
    "patrol-ha",
    "tokio",
    "etcd-client",
    "tonic",
    "tokio-postgres",
    "hyper",
    "reqwest",
];

#[test]
fn the_configuration_reader_links_neither_the_agent_nor_an_io_stack() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "patrol-config",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"patrol-dcs"), "{tree}");
    for bad in FORBIDDEN {
        assert!(
            !crates.contains(bad),
            "patrol-config must not depend on {bad}:\n{tree}"
        );
    }
}
