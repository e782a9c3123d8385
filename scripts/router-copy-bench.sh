#!/usr/bin/env bash
# Bulk transfer through the router (spec P6): COPY of a large result set out to the client and
# a large COPY in, direct to the leader, through patrol-router (user-space relay, `splice:
# true` and `redirect_local: true`, both of which need root) and through HAProxy in TCP mode, on
# the demo cluster. Prints MB/s, the median of REPS runs in which the five take turns.
#
#   scripts/demo.sh
#   scripts/router-copy-bench.sh [MB, default 256] [repetitions, default 3]
MB=${1:-256} REPS=${2:-3}
. "$(dirname "$0")/bench-lib.sh"
start_router 6100
start_router 6200 'splice: true'
start_router 6300 'redirect_local: true'
start_haproxy 7100
wait_ports 6100 6200 6300 7100
check_splice 6200
rows=$(( MB * 1024 ))   # rows of 1 kB
psql -p "$LP" -qc "DROP TABLE IF EXISTS copy_bench; CREATE UNLOGGED TABLE copy_bench (v text)" postgres
out_sql="COPY (SELECT repeat('x', 1023) FROM generate_series(1, $rows)) TO STDOUT"
psql -p "$LP" -qc "$out_sql" postgres >"$work/in.txt"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }
copy_out() { psql -p "$1" -qc "$out_sql" postgres; }
copy_in() { psql -p "$1" -qc "TRUNCATE copy_bench" postgres && psql -p "$1" -qc "COPY copy_bench FROM STDIN" postgres <"$work/in.txt"; }
echo "| transfer ($MB MB) | direct MB/s | patrol-router (ratio) | patrol-router, splice (ratio) | patrol-router, redirect_local (ratio) | HAProxy (ratio) |"
echo "|---|---|---|---|---|---|"
for what in copy_out copy_in; do
  : >"$work/$what.txt"
  for _ in $(seq 1 "$REPS"); do
    echo "$(secs $what "$LP") $(secs $what 6100) $(secs $what 6200) $(secs $what 6300) $(secs $what 7100)" >>"$work/$what.txt"
  done
  col() { awk -v c="$1" '{ print $c }' "$work/$what.txt" | median; }
  d=$(col 1) a=$(col 2) b=$(col 3) r=$(col 4) h=$(col 5)
  name=$([ $what = copy_out ] && echo "COPY ... TO STDOUT (to the client)" || echo "COPY ... FROM STDIN (to the server)")
  awk -v n="$name" -v mb="$MB" -v d="$d" -v a="$a" -v b="$b" -v r="$r" -v h="$h" 'BEGIN { printf "| %s | %.0f | %.0f (%.2f) | %.0f (%.2f) | %.0f (%.2f) | %.0f (%.2f) |\n", n, mb/d, mb/a, d/a, mb/b, d/b, mb/r, d/r, mb/h, d/h }'
done
psql -p "$LP" -qc "DROP TABLE copy_bench" postgres
