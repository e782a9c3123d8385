#!/usr/bin/env bash
# Added latency per round trip (spec P1): pgbench -S -c 1 --protocol=prepared with a
# per-transaction log, direct to the leader, through patrol-router (default, `busy_poll_us: 50`,
# `splice: true`, `redirect_local: true`) and through HAProxy in TCP mode, on the demo cluster;
# p50 and p99 of REPS runs in which the six take turns (all transactions of a target pooled).
#
#   scripts/demo.sh
#   scripts/router-latency-bench.sh [seconds per run, default 5] [repetitions, default 3]
T=${1:-5} REPS=${2:-3}
. "$(dirname "$0")/bench-lib.sh"
bench_db
rm -f "$work"/t*.* "$work"/lat*.txt
start_router 6100
start_router 6200 'busy_poll_us: 50'
start_router 6300 'splice: true'
start_router 6400 'redirect_local: true'
start_haproxy 7100
wait_ports 6100 6200 6300 6400 7100
check_splice 6300
names=(direct "patrol-router" "patrol-router, busy_poll_us: 50" "patrol-router, splice: true" "patrol-router, redirect_local: true" HAProxy)
ports=("$LP" 6100 6200 6300 6400 7100)
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
    printf '| %s | %s | %s (%+d) | %s (%+d) |\n' "${names[$i]}" "$n" "$p50" $(( p50 - d50 )) "$p99" $(( p99 - d99 ))
done
