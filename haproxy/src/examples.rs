//! The configurations shipped in `haproxy/examples/` (regenerate them with
//! `cargo run -p patrol-haproxy --example regenerate`; a unit test keeps them in step).

use crate::render::{render, Options, Server};

/// The README's demo cluster (`scripts/demo.sh`): scope `demo`, members pg0..pg2 with
/// PostgreSQL on 127.0.0.1:5432-5434 and their REST APIs on 127.0.0.1:8000-8002.
pub fn demo_servers() -> Vec<Server> {
    (0..3u16)
        .map(|i| Server {
            name: format!("pg{i}"),
            host: "127.0.0.1".into(),
            port: 5432 + i,
            api_host: "127.0.0.1".into(),
            api_port: 8000 + i,
        })
        .collect()
}

/// `haproxy/examples/demo.cfg`: HAProxy in front of the demo cluster, driven by patrol-router.
pub fn demo() -> String {
    let o = Options {
        write_bind: "127.0.0.1:5000".into(),
        read_bind: "127.0.0.1:5001".into(),
        stats_bind: "127.0.0.1:7000".into(),
        admin_socket: Some("demo/haproxy/admin.sock".into()),
        server_state_file: Some("demo/haproxy/server-state".into()),
        prometheus_bind: Some("127.0.0.1:8405".into()),
        ..Options::default()
    };
    format!(
        "\
# HAProxy for the README's demo cluster (scripts/demo.sh: scope demo, PostgreSQL on
# 127.0.0.1:5432-5434, REST API on 127.0.0.1:8000-8002), driven by patrol-router.
# Generated with `cargo run -p patrol-haproxy --example regenerate`; the same text as
#   patrol-router haproxy-config --etcd 127.0.0.1:2379 --scope demo \\
#     --write-bind 127.0.0.1:5000 --read-bind 127.0.0.1:5001 --stats-bind 127.0.0.1:7000 \\
#     --admin-socket demo/haproxy/admin.sock --server-state-file demo/haproxy/server-state \\
#     --prometheus-bind 127.0.0.1:8405
# Run from the repository root, in master-worker mode so it can reload without dropping
# sessions (the router then leaves its own ports 5000/5001 to HAProxy):
#   mkdir -p demo/haproxy && cp haproxy/examples/demo.cfg demo/haproxy/haproxy.cfg
#   haproxy -W -S demo/haproxy/master.sock -f demo/haproxy/haproxy.cfg &
#   patrol-router --etcd 127.0.0.1:2379 --scope demo \\
#     --write 127.0.0.1:6000 --read 127.0.0.1:6001 --admin 127.0.0.1:8080 \\
#     --haproxy-socket demo/haproxy/admin.sock --haproxy-config demo/haproxy/haproxy.cfg \\
#     --haproxy-master-socket demo/haproxy/master.sock
# Stats: http://127.0.0.1:7000/ (admin/admin); HAProxy metrics: http://127.0.0.1:8405/metrics.
{}",
        render("demo", &demo_servers(), &o)
    )
}

/// `haproxy/examples/standalone.cfg`: for users who keep HAProxy alone (no router): health
/// checks only, with the timings of Patroni's own template.
pub fn standalone() -> String {
    format!(
        "\
# HAProxy alone in front of a Patrol (or Patroni) cluster: no runtime driving, HAProxy's
# health checks against each agent's REST API decide everything, with the timings of Patroni's
# template (inter 3s, fall 3, rise 2): a leader change reaches HAProxy 3-9 s after the agents
# see it. patrol-router, or this file driven by it (demo.cfg), switches within milliseconds.
# Servers: the README's demo cluster; generate yours with
#   patrol-router haproxy-config --standalone --etcd <host:port> --scope <cluster>
#     [--stats-user U --stats-password P]
# Change the stats login before exposing port 7000.
{}",
        render("demo", &demo_servers(), &Options::standalone())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn shipped_examples_are_the_renderer_output() {
        for (name, want) in [("demo.cfg", demo()), ("standalone.cfg", standalone())] {
            assert_eq!(
                example(name),
                want,
                "haproxy/examples/{name} is stale: cargo run -p patrol-haproxy --example regenerate"
            );
        }
    }
}
