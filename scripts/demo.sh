#!/usr/bin/env bash
# Sets up and runs a local demo cluster on loopback: one etcd, three Patrol agents (PostgreSQL 15
# each), then prints the cluster and how to connect. Installs what is missing (Debian), builds,
# and keeps everything under ./demo (remove it with `scripts/demo.sh stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/demo"
pgbin=/usr/lib/postgresql/15/bin
etcd_port=2379
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

stop() {
  for pidf in "$root"/router.pid "$root"/haproxy.pid "$root"/*/agent.pid "$root"/etcd.pid; do
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  sleep 2
  for d in "$root"/pg*/data; do
    [ -f "$d/postmaster.pid" ] && kill -9 "$(head -1 "$d/postmaster.pid")" 2>/dev/null || true
  done
  pkill -f "$root/etcd-data" 2>/dev/null || true
}

if [ "${1:-}" = "stop" ]; then stop; rm -rf "$root"; echo "demo stopped and removed"; exit 0; fi

# 1. What is missing.
need=()
for pkg in etcd-server haproxy protobuf-compiler postgresql-15; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs"; exit 1; }

# 2. Build.
cargo build --release --bins -p patrol-agent -p patrol-router

# 3. PostgreSQL refuses to run as root: run the agents as `patrol` when we are root.
run_as=()
if [ "$(id -u)" -eq 0 ]; then
  id -u patrol >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin patrol
  run_as=(setpriv --reuid=patrol --regid=patrol --clear-groups)
fi

stop 2>/dev/null || true
rm -rf "$root"; mkdir -p "$root/bin"
cp target/release/patrol target/release/patrolctl target/release/patrol-router "$root/bin/"
chmod 755 "$root" "$root/bin" "$root"/bin/*

etcd --name demo --data-dir "$root/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 >"$root/etcd.log" 2>&1 &
echo $! >"$root/etcd.pid"

for i in 0 1 2; do
  d="$root/pg$i"; mkdir -p "$d"
  cat >"$d/patrol.yml" <<YAML
scope: demo
namespace: /service/
name: pg$i
restapi:
  listen: 127.0.0.1:800$i
  connect_address: 127.0.0.1:800$i
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
  listen: 127.0.0.1:543$((2 + i))
  connect_address: 127.0.0.1:543$((2 + i))
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
for _ in $(seq 1 600); do
  out=$("$root/bin/patrolctl" -c "$root/pg0/patrol.yml" list 2>/dev/null || true)
  if [ "$(grep -c streaming <<<"$out")" -eq 2 ] && grep -q Leader <<<"$out"; then break; fi
  sleep 0.1
done
awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "bootstrapped (one leader, two streaming replicas) in %.1f s\n", b - a }'
"$root/bin/patrolctl" -c "$root/pg0/patrol.yml" list
leader_port=$("$root/bin/patrolctl" -c "$root/pg0/patrol.yml" list | awk -F'|' '/ Leader / { split($3, hp, ":"); gsub(/ /, "", hp[2]); print hp[2] }')

# HAProxy with the generated configuration (write 6000, read 6001, stats 7000), kept in step by
# the router through its runtime API; the router itself on 5000/5001, stats on 8080.
"$root/bin/patrol-router" haproxy-config --agent-config "$root/pg0/patrol.yml" \
  --write-bind 127.0.0.1:6000 --read-bind 127.0.0.1:6001 --stats-bind 127.0.0.1:7000 \
  --admin-socket "$root/haproxy.sock" >"$root/haproxy.cfg"
haproxy -W -db -f "$root/haproxy.cfg" -S "$root/haproxy-master.sock" >"$root/haproxy.log" 2>&1 &
echo $! >"$root/haproxy.pid"
for _ in $(seq 1 50); do [ -S "$root/haproxy.sock" ] && break; sleep 0.1; done
"$root/bin/patrol-router" --agent-config "$root/pg0/patrol.yml" \
  --write 127.0.0.1:5000 --read 127.0.0.1:5001 --admin 127.0.0.1:8080 \
  --haproxy-socket "$root/haproxy.sock" --haproxy-config "$root/haproxy.cfg" \
  --haproxy-master-socket "$root/haproxy-master.sock" >"$root/router.log" 2>&1 &
echo $! >"$root/router.pid"
for _ in $(seq 1 50); do (echo >/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
cat <<TXT

Patrol demo cluster "demo" is running (logs in $root/pg*/agent.log, $root/router.log).
  Writes (patrol-router):  psql "host=127.0.0.1 port=5000 user=postgres password=postgres"
  Reads (patrol-router):   psql "host=127.0.0.1 port=5001 user=postgres password=postgres"
  Router stats page:       http://127.0.0.1:8080/   (JSON: /stats.json, metrics: /metrics)
  Through HAProxy:         ports 6000 (write), 6001 (read); stats http://127.0.0.1:7000/ (admin/admin)
  The leader directly:     psql "host=127.0.0.1 port=${leader_port:-5432} user=postgres password=postgres"
  Any node:                ports 5432, 5433, 5434
  REST API:                curl http://127.0.0.1:8000/patroni   (8001, 8002)
  Cluster listing:         $root/bin/patrolctl -c $root/pg0/patrol.yml list
  Stop and clean up:       scripts/demo.sh stop
TXT
