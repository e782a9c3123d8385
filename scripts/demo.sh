#!/usr/bin/env bash
# Sets up and runs a local demo cluster on loopback: one etcd, three Patrol agents (PostgreSQL 15
# each), patrol-router and HAProxy, then prints the cluster and how to connect. Installs what is
# missing (Debian), builds, and keeps everything under ./demo (remove it with
# `scripts/demo.sh stop`, which stops exactly the processes whose pid files it wrote).
#
# Knobs (the test of this script uses them; the defaults are what README shows):
#   DEMO_DIR         where everything lives (default ./demo)
#   PATROL_BIN_DIR   take patrol, patrolctl, patrol-router from here instead of building
#   DEMO_ETCD_PORT DEMO_ETCD_PEER_PORT DEMO_PG_PORTS DEMO_API_PORTS DEMO_ROUTER_PORTS
#   DEMO_HAPROXY_PORTS   ports; the *_PORTS ones take three, space separated. The defaults keep
#                    clear of a system etcd (2379) and PostgreSQL (5432) that Debian's packages
#                    start.
#                    (PostgreSQL nodes, REST APIs, router write/read/admin, HAProxy write/read/stats)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${DEMO_DIR:-$PWD/demo}"
pgbin=/usr/lib/postgresql/15/bin
etcd_port="${DEMO_ETCD_PORT:-12379}"
etcd_peer_port="${DEMO_ETCD_PEER_PORT:-12380}"
read -r -a pg_ports <<<"${DEMO_PG_PORTS:-15432 15433 15434}"
read -r -a api_ports <<<"${DEMO_API_PORTS:-8000 8001 8002}"
read -r -a router_ports <<<"${DEMO_ROUTER_PORTS:-5000 5001 8080}"
read -r -a haproxy_ports <<<"${DEMO_HAPROXY_PORTS:-6000 6001 7000}"

# Stops what the pid files name: TERM, then KILL after 10 s; returns once all of them are gone.
stop() {
  local pids=() pidf pid sig
  for pidf in "$root"/router.pid "$root"/haproxy.pid "$root"/pg*/agent.pid "$root"/pg*/data/postmaster.pid "$root"/etcd.pid; do
    # The file can vanish meanwhile (a stopping agent stops its PostgreSQL, which removes it).
    pid="$(head -1 "$pidf" 2>/dev/null)" || continue
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    # A pid file left from before a reboot may name somebody else's process now: only signal
    # a process whose command line mentions this demo's directory.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$root" || continue
    # A postmaster gets SIGINT (fast shutdown: SIGTERM would wait for every session to end).
    sig=TERM
    [[ "$pidf" == */postmaster.pid ]] && sig=INT
    kill -s "$sig" "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 1 100); do
    local alive=()
    for pid in "${pids[@]+"${pids[@]}"}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  for pid in "${alive[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

if [ "${1:-}" = "stop" ]; then stop; rm -rf "$root"; echo "demo stopped and removed"; exit 0; fi

# 1. What is missing (the one package list, shared with .ci/run).
scripts/deps.sh demo
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs"; exit 1; }

# 2. Build (unless prebuilt binaries are given).
bindir="${PATROL_BIN_DIR:-}"
if [ -z "$bindir" ]; then
  cargo build --release --bins -p patrol-agent -p patrol-ctl -p patrol-router
  bindir=target/release
fi

# 3. PostgreSQL refuses to run as root: run the agents as `patrol` when we are root.
run_as=()
if [ "$(id -u)" -eq 0 ]; then
  id -u patrol >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin patrol
  run_as=(setpriv --reuid=patrol --regid=patrol --clear-groups)
fi

stop 2>/dev/null || true
rm -rf "$root"; mkdir -p "$root/bin"
cp "$bindir/patrol" "$bindir/patrolctl" "$bindir/patrol-router" "$root/bin/"
chmod 755 "$root" "$root/bin" "$root"/bin/*

etcd --name demo --data-dir "$root/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "demo=http://127.0.0.1:$etcd_peer_port" >"$root/etcd.log" 2>&1 &
echo $! >"$root/etcd.pid"
# Debian's etcd-server package runs etcd on 2379 itself (hence 12379 here): if this one could
# not bind its ports, the agents would quietly use another etcd. Wait until ours answers, and fail if it exited.
for _ in $(seq 1 100); do
  kill -0 "$(cat "$root/etcd.pid")" 2>/dev/null || { echo "the demo's etcd exited (ports $etcd_port/$etcd_peer_port taken?):" >&2; tail -n 5 "$root/etcd.log" >&2; exit 1; }
  grep -q "serving client" "$root/etcd.log" 2>/dev/null && break
  sleep 0.1
done

for i in 0 1 2; do
  d="$root/pg$i"; mkdir -p "$d"
  cat >"$d/patrol.yml" <<YAML
scope: demo
namespace: /service/
name: pg$i
restapi:
  listen: 127.0.0.1:${api_ports[$i]}
  connect_address: 127.0.0.1:${api_ports[$i]}
etcd3:
  hosts: [127.0.0.1:$etcd_port]
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters: {wal_keep_size: 128MB}
  initdb: [{encoding: UTF8}, data-checksums, {auth-host: scram-sha-256}]
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:${pg_ports[$i]}
  connect_address: 127.0.0.1:${pg_ports[$i]}
  data_dir: $d/data
  bin_dir: $pgbin
  pgpass: $d/pgpass
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator}
    rewind: {username: rewinder, password: rewinder}
  parameters:
    unix_socket_directories: $d
YAML
  [ ${#run_as[@]} -gt 0 ] && chown -R patrol:patrol "$d"
  (
    cd "$d" || exit 1
    "${run_as[@]}" "$root/bin/patrol" patrol.yml >"$d/agent.log" 2>&1 &
    echo $! >"$d/agent.pid"
  )
done

echo "waiting for the cluster to bootstrap..."
started=$(date +%s.%N)
ready=false
for _ in $(seq 1 1200); do
  out=$("$root/bin/patrolctl" -c "$root/pg0/patrol.yml" list 2>/dev/null || true)
  if [ "$(grep -c streaming <<<"$out")" -eq 2 ] && grep -q Leader <<<"$out"; then ready=true; break; fi
  sleep 0.1
done
if ! $ready; then
  echo "the cluster did not bootstrap within 120 s; the agents' logs end with:" >&2
  for i in 0 1 2; do echo "--- $root/pg$i/agent.log" >&2; tail -n 20 "$root/pg$i/agent.log" >&2; done
  exit 1
fi
awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "bootstrapped (one leader, two streaming replicas) in %.1f s\n", b - a }'
"$root/bin/patrolctl" -c "$root/pg0/patrol.yml" list
leader_port=$("$root/bin/patrolctl" -c "$root/pg0/patrol.yml" list | awk -F'|' '/ Leader / { split($3, hp, ":"); gsub(/ /, "", hp[2]); print hp[2] }')

# HAProxy with the generated configuration (write 6000, read 6001, stats 7000), kept in step by
# the router through its runtime API; the router itself on 5000/5001, stats on 8080.
"$root/bin/patrol-router" haproxy-config --agent-config "$root/pg0/patrol.yml" \
  --write-bind "127.0.0.1:${haproxy_ports[0]}" --read-bind "127.0.0.1:${haproxy_ports[1]}" --stats-bind "127.0.0.1:${haproxy_ports[2]}" \
  --admin-socket "$root/haproxy.sock" >"$root/haproxy.cfg"
haproxy -W -db -f "$root/haproxy.cfg" -S "$root/haproxy-master.sock" >"$root/haproxy.log" 2>&1 &
echo $! >"$root/haproxy.pid"
for _ in $(seq 1 50); do [ -S "$root/haproxy.sock" ] && break; sleep 0.1; done
"$root/bin/patrol-router" --agent-config "$root/pg0/patrol.yml" \
  --write "127.0.0.1:${router_ports[0]}" --read "127.0.0.1:${router_ports[1]}" --admin "127.0.0.1:${router_ports[2]}" \
  --haproxy-socket "$root/haproxy.sock" --haproxy-config "$root/haproxy.cfg" \
  --haproxy-master-socket "$root/haproxy-master.sock" >"$root/router.log" 2>&1 &
echo $! >"$root/router.pid"
for _ in $(seq 1 50); do (echo >/dev/tcp/127.0.0.1/"${router_ports[2]}") 2>/dev/null && break; sleep 0.1; done
w=${router_ports[0]} r=${router_ports[1]} a=${router_ports[2]}
stop_cmd="scripts/demo.sh stop"
[ -n "${DEMO_DIR:-}" ] && stop_cmd="DEMO_DIR=$root scripts/demo.sh stop"
cat <<TXT

Patrol demo cluster "demo" is running (logs in $root/pg*/agent.log, $root/router.log).
  Writes (patrol-router):  psql "host=127.0.0.1 port=$w user=postgres password=postgres"
  Reads (patrol-router):   psql "host=127.0.0.1 port=$r user=postgres password=postgres"
  Router stats page:       http://127.0.0.1:$a/   (JSON: /stats.json, metrics: /metrics)
  Through HAProxy:         ports ${haproxy_ports[0]} (write), ${haproxy_ports[1]} (read); stats http://127.0.0.1:${haproxy_ports[2]}/ (admin/admin)
  The leader directly:     psql "host=127.0.0.1 port=${leader_port:-${pg_ports[0]}} user=postgres password=postgres"
  Any node:                ports ${pg_ports[*]}
  REST API:                curl http://127.0.0.1:${api_ports[0]}/patroni   (${api_ports[1]}, ${api_ports[2]})
  Cluster listing:         $root/bin/patrolctl -c $root/pg0/patrol.yml list
  Stop and clean up:       $stop_cmd
TXT
