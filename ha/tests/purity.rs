//! The core's purity is the crate graph's: resolved on its own (as `cargo build -p patrol-ha`
//! resolves it), no crate that does IO is among its normal dependencies.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "etcd-client",
    "tonic",
    "tokio-postgres",
    "hyper",
    "reqwest",
    "nix",
    "libc",
    "mio",
    "socket2",
    "tracing",
];

#[test]
fn the_ha_core_depends_on_no_io_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "patrol-ha",
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
            "the HA core must not depend on {bad}:\n{tree}"
        );
    }
}
