#!/usr/bin/env bash
# patrol-router memory with N idle client sessions (default 10,000): real PostgreSQL sessions
# through the router's write port, authenticated and each having run SELECT 1, then left idle.
# PostgreSQL cannot hold 10,000 backends on this machine, so a PgBouncer in transaction mode
# sits in front of the demo leader and the router reaches it with `backend_port` (the
# pooler-beside-PostgreSQL setup); the router's side of each session is the same as without it.
#
#   scripts/demo.sh                      # a running demo cluster (release build)
#   scripts/router-idle-bench.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
root="$PWD/demo"
bin="$root/bin"
[ -x "$bin/patrolctl" ] || { echo "start the demo first: scripts/demo.sh"; exit 1; }
command -v pgbouncer >/dev/null || { echo "install pgbouncer first (apt-get install pgbouncer)"; exit 1; }
cargo build --release -q -p patrol-router -p patrol-tests --example hold_connections
# Each session costs the router two descriptors (client and PgBouncer need one each): raise the
# limit where we may; where the hard limit is lower, measure as many sessions as it allows.
ulimit -Hn $((2 * N + 200)) 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
fit=$(( ($(ulimit -n) - 100) / 2 ))
if [ "$N" -gt "$fit" ]; then
  echo "open file limit $(ulimit -n) (hard) holds $fit sessions in one router process, not $N: measuring $fit"
  N=$fit
fi
leader_port=$("$bin/patrolctl" -c "$root/pg0/patrol.yml" list | awk -F'|' '/ Leader / { split($3, hp, ":"); gsub(/ /, "", hp[2]); print hp[2] }')
work="$root/idle-bench"; rm -rf "$work"; mkdir -p "$work"; chmod 777 "$work"
pgb_port=6432 router_port=6300
cat >"$work/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$leader_port user=postgres password=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = $((N + 100))
default_pool_size = 4
ignore_startup_parameters = extra_float_digits
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
run_as=(); [ "$(id -u)" -eq 0 ] && run_as=(-u patrol)
pgbouncer -d "${run_as[@]}" "$work/pgbouncer.ini"
cat >"$work/router.yml" <<YML
agent_config: $root/pg0/patrol.yml
listen: {write: 127.0.0.1:$router_port, read: 127.0.0.1:$((router_port + 1)), admin: 127.0.0.1:$((router_port + 80))}
backend_port: $pgb_port
max_connections: $((N + 100))
YML
target/release/patrol-router -c "$work/router.yml" >"$work/router.log" 2>&1 &
router_pid=$!
mkfifo "$work/hold"
cleanup() {
  exec 3>&- 2>/dev/null || true
  kill "$router_pid" 2>/dev/null || true
  [ -f "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
}
trap cleanup EXIT
export PGPASSWORD=postgres
for _ in $(seq 1 100); do psql -h 127.0.0.1 -p $router_port -U postgres -qAtc "select 1" postgres >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$router_pid/status"; }
sleep 1
before=$(rss)
target/release/examples/hold_connections "host=127.0.0.1 port=$router_port user=postgres password=postgres dbname=postgres" "$N" <"$work/hold" >"$work/hold.out" 2>&1 &
hold_pid=$!
exec 3>"$work/hold"
for _ in $(seq 1 600); do grep -q '^ready' "$work/hold.out" && break; kill -0 $hold_pid 2>/dev/null || break; sleep 0.5; done
grep -q "^ready $N" "$work/hold.out" || { echo "client failed:"; cat "$work/hold.out"; exit 1; }
sleep 2
after=$(rss)
sessions=$(curl -s "http://127.0.0.1:$((router_port + 80))/metrics" | awk '/^patrol_router_sessions_current\{.*port="write"/ {s += $2} END {print s+0}')
exec 3>&-
wait $hold_pid || true
awk -v n="$N" -v b="$before" -v a="$after" -v s="$sessions" 'BEGIN {
  printf "patrol-router RSS: %.1f MB idle, %.1f MB with %d idle sessions (router counts %d): %.1f kB per idle session\n", b/1024, a/1024, n, s, (a-b)/n }'
tail -1 "$work/hold.out"
