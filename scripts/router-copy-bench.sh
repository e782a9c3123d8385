#!/usr/bin/env bash
# Bulk transfer through the router (spec P6): COPY of a large result set out to the client and
# a large COPY in, direct to the leader, through patrol-router (user-space relay and `splice:
# true`, which needs root) and through HAProxy in TCP mode, on the demo cluster. Prints MB/s,
# the median of REPS runs in which the four take turns.
#
#   scripts/demo.sh
#   scripts/router-copy-bench.sh [MB, default 256] [repetitions, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-256} REPS=${2:-3}
root="$PWD/demo"; bin="$root/bin"
[ -x "$bin/patrolctl" ] || { echo "start the demo first: scripts/demo.sh"; exit 1; }
cargo build --release -q -p patrol-router
router_bin="$PWD/target/release/patrol-router"
export PGPASSWORD=postgres PGUSER=postgres PGHOST=127.0.0.1
LP=$("$bin/patrolctl" -c "$root/pg0/patrol.yml" list | awk -F'|' '/ Leader / { split($3, hp, ":"); gsub(/ /, "", hp[2]); print hp[2] }')
work="$root/copy-bench"; mkdir -p "$work"
printf 'agent_config: %s\nlisten: {write: 127.0.0.1:6100, read: 127.0.0.1:6101, admin: 127.0.0.1:6180}\n' "$root/pg0/patrol.yml" >"$work/a.yml"
printf 'agent_config: %s\nlisten: {write: 127.0.0.1:6200, read: 127.0.0.1:6201, admin: 127.0.0.1:6280}\nsplice: true\n' "$root/pg0/patrol.yml" >"$work/b.yml"
"$router_bin" -c "$work/a.yml" >"$work/a.log" 2>&1 & pa=$!
"$router_bin" -c "$work/b.yml" >"$work/b.log" 2>&1 & pb=$!
"$router_bin" haproxy-config --agent-config "$root/pg0/patrol.yml" --write-bind 127.0.0.1:7100 --read-bind 127.0.0.1:7101 --stats-bind 127.0.0.1:7180 >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & ph=$!
trap 'kill $pa $pb $ph 2>/dev/null || true' EXIT
for p in 6100 6200 7100; do
  for _ in $(seq 1 100); do psql -p $p -qAtc "select 1" postgres >/dev/null 2>&1 && break; sleep 0.1; done
done
grep -q "relayed in the kernel" "$work/b.log" || echo "(splice: the kernel relay did not load, see $work/b.log)"
rows=$(( MB * 1024 ))   # rows of 1 kB
psql -p "$LP" -qc "DROP TABLE IF EXISTS copy_bench; CREATE UNLOGGED TABLE copy_bench (v text)" postgres
out_sql="COPY (SELECT repeat('x', 1023) FROM generate_series(1, $rows)) TO STDOUT"
psql -p "$LP" -qc "$out_sql" postgres >"$work/in.txt"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }
copy_out() { psql -p "$1" -qc "$out_sql" postgres; }
copy_in() { psql -p "$1" -qc "TRUNCATE copy_bench" postgres && psql -p "$1" -qc "COPY copy_bench FROM STDIN" postgres <"$work/in.txt"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "| transfer ($MB MB) | direct MB/s | patrol-router (ratio) | patrol-router, splice (ratio) | HAProxy (ratio) |"
echo "|---|---|---|---|---|"
for what in copy_out copy_in; do
  : >"$work/$what.txt"
  for _ in $(seq 1 "$REPS"); do
    echo "$(secs $what "$LP") $(secs $what 6100) $(secs $what 6200) $(secs $what 7100)" >>"$work/$what.txt"
  done
  col() { awk -v c="$1" '{ print $c }' "$work/$what.txt" | median; }
  d=$(col 1) a=$(col 2) b=$(col 3) h=$(col 4)
  name=$([ $what = copy_out ] && echo "COPY ... TO STDOUT (to the client)" || echo "COPY ... FROM STDIN (to the server)")
  awk -v n="$name" -v mb="$MB" -v d="$d" -v a="$a" -v b="$b" -v h="$h" 'BEGIN { printf "| %s | %.0f | %.0f (%.2f) | %.0f (%.2f) | %.0f (%.2f) |\n", n, mb/d, mb/a, d/a, mb/b, d/b, mb/h, d/h }'
done
psql -p "$LP" -qc "DROP TABLE copy_bench" postgres
