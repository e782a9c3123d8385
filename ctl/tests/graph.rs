//! `patrolctl` is a client: resolved on its own (as `cargo build -p patrol-ctl` resolves it), it
//! does not link the HA daemon or its decision core.

use std::process::Command;

#[test]
fn patrolctl_does_not_link_the_agent() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "patrol-ctl",
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
    assert!(crates.contains(&"patrol-config"), "{tree}");
    for bad in ["patrol-agent", "patrol-ha"] {
        assert!(
            !crates.contains(&bad),
            "patrol-ctl must not depend on {bad}:\n{tree}"
        );
    }
}
