# Sourced by the router benchmark scripts (router-bench, router-ab, router-copy-bench,
# router-latency-bench): the running demo cluster, its leader's port, routers and an HAProxy
# beside the demo's own on other ports, all killed when the script exits; logs and configs in
# demo/<script name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/demo"
bin="$root/bin"
[ -x "$bin/patrolctl" ] || { echo "start the demo first: scripts/demo.sh"; exit 1; }
cargo build --release -q -p patrol-router
router_bin="$PWD/target/release/patrol-router"
pgbench=/usr/lib/postgresql/15/bin/pgbench
export PGPASSWORD=postgres PGUSER=postgres PGHOST=127.0.0.1
# The leader's PostgreSQL port, from the cluster listing.
LP=$("$bin/patrolctl" -c "$root/pg0/patrol.yml" list | awk -F'|' '/ Leader / { split($3, hp, ":"); gsub(/ /, "", hp[2]); print hp[2] }')
work="$root/$(basename "$0" .sh)"
mkdir -p "$work"
bench_pids=()
trap 'kill "${bench_pids[@]}" 2>/dev/null || true' EXIT

# bench_db [fresh]: a scale-10 pgbench database `bench` on the leader (dropped and made anew
# with "fresh").
bench_db() {
  if [ "${1:-}" = fresh ]; then psql -p "$LP" -qc "DROP DATABASE IF EXISTS bench" postgres; fi
  psql -p "$LP" -qAtc "select 1" bench >/dev/null 2>&1 || {
    psql -p "$LP" -qc "CREATE DATABASE bench" postgres
    $pgbench -p "$LP" -i -s 10 -q bench >/dev/null 2>&1
  }
}

# start_router PORT [YAML]: a patrol-router for the demo cluster with write on PORT, read on
# PORT+1, admin on PORT+80 and the extra YAML lines; config and log are $work/rPORT.*.
start_router() {
  printf 'agent_config: %s\nlisten: {write: 127.0.0.1:%d, read: 127.0.0.1:%d, admin: 127.0.0.1:%d}\n%s\n' \
    "$root/pg0/patrol.yml" "$1" $(( $1 + 1 )) $(( $1 + 80 )) "${2:-}" >"$work/r$1.yml"
  "$router_bin" -c "$work/r$1.yml" >"$work/r$1.log" 2>&1 &
  bench_pids+=($!)
}

# start_haproxy PORT: HAProxy with the generated configuration, write on PORT, read on PORT+1,
# stats on PORT+80.
start_haproxy() {
  "$router_bin" haproxy-config --agent-config "$root/pg0/patrol.yml" --write-bind "127.0.0.1:$1" \
    --read-bind "127.0.0.1:$(( $1 + 1 ))" --stats-bind "127.0.0.1:$(( $1 + 80 ))" >"$work/haproxy.cfg"
  haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
  bench_pids+=($!)
}

# wait_ports PORT...: until a query answers through each (10 s at most each).
wait_ports() {
  for p in "$@"; do
    for _ in $(seq 1 100); do psql -p "$p" -qAtc "select 1" postgres >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

# check_splice PORT: says so when the router on PORT could not load the kernel relay.
check_splice() {
  grep -q "relayed in the kernel" "$work/r$1.log" || echo "(splice: the kernel relay did not load, see $work/r$1.log)"
}

# median: of the numbers on stdin (whitespace-separated).
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
