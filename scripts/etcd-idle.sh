#!/usr/bin/env bash
# What an idle 3-node cluster costs etcd, Patrol and Patroni side by side in the same run, with
# the same Patroni-format YAML and Patroni's default timing (ttl 30, loop_wait 10,
# retry_timeout 10): each gets its own etcd, bootstraps, settles, then for WINDOW seconds
# nothing happens while etcd's own /metrics and `etcdctl watch --prefix` count what it is asked
# and what is written.
# Usage (as root; agents run as the `patrol` user): scripts/etcd-idle.sh [WINDOW, default 60]
#   AGENTS="patrol patroni" (default both) PATRONI=<patroni executable> (default: the tests' venv)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-60}
settle=${SETTLE:-20}
agents=${AGENTS:-patrol patroni}
patroni=${PATRONI:-$PWD/target/patroni-venv/bin/patroni}
pgbin=/usr/lib/postgresql/15/bin
work="$PWD/demo/etcd-idle"
scripts/deps.sh bench >/dev/null
cargo build --release -q -p patrol-agent
patrol_bin="$PWD/target/release/patrol"
id -u patrol >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin patrol
run_as=(setpriv --reuid=patrol --regid=patrol --clear-groups)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  sleep 2
  pkill -f "$work/" 2>/dev/null || true
}
trap cleanup EXIT

# metric NAME FILE: the sum of every series of NAME in a /metrics dump.
metric() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f", s }' "$2"; }
metricf() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.3f", s }' "$2"; }

run() {
  local agent=$1 base=$2 dir="$work/$1"
  rm -rf "$dir"; mkdir -p "$dir"; chmod 755 "$work" "$dir"
  local ec=$((base)) ep=$((base + 1))
  etcd --name idle --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
    --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "idle=http://127.0.0.1:$ep" \
    >"$dir/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "serving client" "$dir/etcd.log" 2>/dev/null && break; sleep 0.1; done
  for i in 0 1 2; do
    local d="$dir/pg$i"; mkdir -p "$d"
    cat >"$d/node.yml" <<YAML
scope: idle
namespace: /service/
name: node$((i + 1))
restapi:
  listen: 127.0.0.1:$((base + 10 + i))
  connect_address: 127.0.0.1:$((base + 10 + i))
etcd3:
  hosts: [127.0.0.1:$ec]
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
  initdb: [{encoding: UTF8}, data-checksums]
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:$((base + 20 + i))
  connect_address: 127.0.0.1:$((base + 20 + i))
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
    chown -R patrol:patrol "$d"
    local cmd=("$patrol_bin" node.yml)
    [ "$agent" = patroni ] && cmd=("$patroni" node.yml)
    (cd "$d" && exec "${run_as[@]}" "${cmd[@]}" >"$d/agent.log" 2>&1) &
    pids+=($!)
  done
  # Bootstrapped: a leader and two replicas that stream (their member keys say so).
  local ok=false
  for _ in $(seq 1 1200); do
    local keys
    keys=$(ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$ec" get --prefix /service/idle/members/ --print-value-only 2>&1 || true)
    if [ "$(grep -o '"replication_state": *"streaming"' <<<"$keys" | wc -l)" -eq 2 ] && grep -q '"role": *"\(primary\|master\)"' <<<"$keys"; then ok=true; break; fi
    sleep 0.1
  done
  $ok || { echo "$agent: the cluster did not bootstrap; see $dir/pg*/agent.log; the member keys: $keys" >&2; return 1; }
  sleep "$settle"
  ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$ec" watch --prefix /service/idle/ >"$dir/watch.txt" 2>/dev/null &
  local watch=$!
  curl -s "http://127.0.0.1:$ec/metrics" >"$dir/before.prom"
  sleep "$window"
  curl -s "http://127.0.0.1:$ec/metrics" >"$dir/after.prom"
  kill "$watch" 2>/dev/null || true
  local grpc msgs props puts
  grpc=$(( $(metric grpc_server_handled_total "$dir/after.prom") - $(metric grpc_server_handled_total "$dir/before.prom") ))
  # Messages on streams too (lease keep-alives, watch progress requests), one per unary call.
  msgs=$(( $(metric grpc_server_msg_received_total "$dir/after.prom") - $(metric grpc_server_msg_received_total "$dir/before.prom") ))
  props=$(( $(metric etcd_server_proposals_committed_total "$dir/after.prom") - $(metric etcd_server_proposals_committed_total "$dir/before.prom") ))
  puts=$(( $(metric etcd_mvcc_put_total "$dir/after.prom") - $(metric etcd_mvcc_put_total "$dir/before.prom") ))
  # The watch prints each event as PUT|DELETE, key, value: count the keys written.
  local written
  written=$(awk 'prev == "PUT" || prev == "DELETE" { n[$0]++ } { prev = $0 } END { for (k in n) printf "%s %d×, ", k, n[k] }' "$dir/watch.txt")
  local cpu
  cpu=$(awk -v b="$(metricf process_cpu_seconds_total "$dir/before.prom")" -v a="$(metricf process_cpu_seconds_total "$dir/after.prom")" 'BEGIN { print a - b }')
  awk -v a="$agent" -v g="$grpc" -v m="$msgs" -v p="$props" -v u="$puts" -v c="$cpu" -v w="$window" -v k="${written:-none}" 'BEGIN {
    printf "%-8s gRPC calls %.2f/s, gRPC messages received %.2f/s, raft proposals %.2f/s, puts %.2f/s, etcd CPU %.2f%% over %d s; keys written: %s\n", a, g / w, m / w, p / w, u / w, c / w * 100, w, k }'
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 150); do pgrep -f "$dir/" >/dev/null || break; sleep 0.1; done
  pkill -9 -f "$dir/" 2>/dev/null || true
  pids=()
}

base=32000
for a in $agents; do
  run "$a" "$base"
  base=$((base + 100))
done
