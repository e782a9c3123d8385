#!/usr/bin/env bash
# Added latency per round trip (spec P1): pgbench -S -c 1 --protocol=prepared with a
# per-transaction log, direct to the leader, through patrol-router (default, `busy_poll_us: 50`,
# `splice: true`) and through HAProxy in TCP mode, on the demo cluster; p50 and p99 of REPS runs
# in which the five take turns (all transactions of a target pooled).
#
#   scripts/demo.sh
#   scripts/router-latency-bench.sh [seconds per run, default 5] [repetitions, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5} REPS=${2:-3}
root="$PWD/demo"; bin="$root/bin"
[ -x "$bin/patrolctl" ] || { echo "start the demo first: scripts/demo.sh"; exit 1; }
cargo build --release -q -p patrol-router
router_bin="$PWD/target/release/patrol-router"
export PGPASSWORD=postgres PGUSER=postgres PGHOST=127.0.0.1
LP=$("$bin/patrolctl" -c "$root/pg0/patrol.yml" list | awk -F'|' '/ Leader / { split($3, hp, ":"); gsub(/ /, "", hp[2]); print hp[2] }')
pgbench=/usr/lib/postgresql/15/bin/pgbench
psql -p "$LP" -qAtc "select 1" bench >/dev/null 2>&1 || {
  psql -p "$LP" -qc "CREATE DATABASE bench" postgres
  $pgbench -p "$LP" -i -s 10 -q bench >/dev/null 2>&1
}
work="$root/latency-bench"; rm -rf "$work"; mkdir -p "$work"
pids=()
router() { # port-base extra-yaml
  printf 'agent_config: %s\nlisten: {write: 127.0.0.1:%d, read: 127.0.0.1:%d, admin: 127.0.0.1:%d}\n%s\n' \
    "$root/pg0/patrol.yml" "$1" $(( $1 + 1 )) $(( $1 + 80 )) "$2" >"$work/r$1.yml"
  "$router_bin" -c "$work/r$1.yml" >"$work/r$1.log" 2>&1 & pids+=($!)
}
router 6100 ''
router 6200 'busy_poll_us: 50'
router 6300 'splice: true'
"$router_bin" haproxy-config --agent-config "$root/pg0/patrol.yml" --write-bind 127.0.0.1:7100 --read-bind 127.0.0.1:7101 --stats-bind 127.0.0.1:7180 >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for p in 6100 6200 6300 7100; do
  for _ in $(seq 1 100); do psql -p $p -qAtc "select 1" bench >/dev/null 2>&1 && break; sleep 0.1; done
done
grep -q "relayed in the kernel" "$work/r6300.log" || echo "(splice: the kernel relay did not load, see $work/r6300.log)"
names=(direct "patrol-router" "patrol-router, busy_poll_us: 50" "patrol-router, splice: true" HAProxy)
ports=("$LP" 6100 6200 6300 7100)
for rep in $(seq 1 "$REPS"); do
  for i in "${!ports[@]}"; do
    (cd "$work" && $pgbench -p "${ports[$i]}" -c 1 -j 1 -T "$T" -n -S --protocol=prepared -l --log-prefix="t$i.$rep" bench >/dev/null 2>&1)
  done
done
pct() { sort -n | awk -v p="$1" '{ v[NR] = $1 } END { i = int(NR * p / 100); if (i < 1) i = 1; print v[i] }'; }
echo "| target | transactions | p50 µs (added) | p99 µs (added) |"
echo "|---|---|---|---|"
d50=0 d99=0
for i in "${!ports[@]}"; do
  cat "$work"/t$i.*.* | awk '{ print $3 }' >"$work/lat$i.txt"
  n=$(wc -l <"$work/lat$i.txt"); p50=$(pct 50 <"$work/lat$i.txt"); p99=$(pct 99 <"$work/lat$i.txt")
  [ "$i" = 0 ] && { d50=$p50; d99=$p99; }
  echo "| ${names[$i]} | $n | $p50 (+$(( p50 - d50 ))) | $p99 (+$(( p99 - d99 ))) |"
done
