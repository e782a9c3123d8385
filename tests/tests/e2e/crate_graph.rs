//! The crate graph of ARCHITECTURE.md, checked. Each crate is resolved on its own (as `cargo
//! build -p <crate>` resolves it, so the workspace's feature unification hides nothing) and its
//! normal dependencies must include what it is built on and none of what it must not link.

use std::process::Command;

/// The crates that do IO (or read a clock) and must stay out of the pure ones.
const IO: &[&str] = &[
    "tokio",
    "etcd-client",
    "tonic",
    "tokio-postgres",
    "hyper",
    "reqwest",
];

/// Every crate in the normal dependency graph of `package`.
fn dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn check(package: &str, built_on: &str, forbidden: &[&str]) {
    let deps = dependencies(package);
    assert!(
        deps.iter().any(|d| d == built_on),
        "{package} should depend on {built_on}: {deps:?}"
    );
    for bad in forbidden {
        assert!(
            !deps.iter().any(|d| d == bad),
            "{package} must not depend on {bad}: {deps:?}"
        );
    }
}

#[test]
fn the_ha_core_depends_on_no_io_crate() {
    let mut forbidden = IO.to_vec();
    forbidden.extend(["nix", "libc", "mio", "socket2", "tracing"]);
    check("patrol-ha", "patrol-dcs", &forbidden);
}

#[test]
fn the_configuration_reader_links_neither_the_agent_nor_an_io_stack() {
    let mut forbidden = IO.to_vec();
    forbidden.extend(["patrol-agent", "patrol-ha"]);
    check("patrol-config", "patrol-dcs", &forbidden);
}

#[test]
fn the_clients_do_not_link_the_agent_or_its_core() {
    check(
        "patrol-ctl",
        "patrol-config",
        &["patrol-agent", "patrol-ha"],
    );
    check(
        "patrol-router",
        "patrol-config",
        &["patrol-agent", "patrol-ha"],
    );
}

#[test]
fn the_agent_does_not_link_the_clients() {
    check(
        "patrol-agent",
        "patrol-ha",
        &["patrol-haproxy", "patrol-ctl", "patrol-router"],
    );
}
