#!/usr/bin/env bash
# Router data-path benchmark: pgbench select-only and TPC-B-like at 1, 8 and 32 clients, and
# connection rate (-C), direct to the leader, through patrol-router (default settings; with
# `splice: true`, the kernel relay; with `redirect_local: true`, connect-time routing of clients
# on the router's host; both need root) and through HAProxy 2.6 in TCP mode (the generated
# config), all in one run on the demo cluster. Prints a markdown table.
#
# Each figure is the median of REPS runs (default 3); the targets take turns within each
# repetition so that drift on the shared machine hits them alike.
#
#   scripts/demo.sh                # a running demo cluster (release build)
#   scripts/router-bench.sh [seconds per run, default 10] [repetitions, default 3]
T=${1:-10}
REPS=${2:-3}
. "$(dirname "$0")/bench-lib.sh"
bench_db fresh
start_router 6100                        # default settings (the demo has its own router on 5000)
router_pid=${bench_pids[0]}
start_router 6200 'splice: true'         # the kernel relay
start_router 6300 'redirect_local: true' # connect-time routing (pgbench runs on this host)
start_haproxy 7100
wait_ports 6100 6200 6300 7100
check_splice 6200
grep -q "routed at connect time" "$work/r6300.log" || echo "(redirect_local did not load, see $work/r6300.log)"

names=("patrol-router" "patrol-router, splice" "patrol-router, redirect_local" "HAProxy")
ports=(6100 6200 6300 7100)
run() { # port clients extra-args -> tps (0 when the run failed: one bad run must not end the script)
  { $pgbench -p "$1" -c "$2" -j 2 -T "$T" -n $3 bench 2>/dev/null || true; } | awk '/^tps/ { t = $3 } END { print t + 0 }'
}
lat() { # port -> average latency ms at 1 client, select-only
  $pgbench -p "$1" -c 1 -j 1 -T "$T" -n -S bench 2>/dev/null | awk '/latency average/ {print $4; exit}'
}
header="| workload | clients | direct TPS |"; rule="|---|---|---|"
for n in "${names[@]}"; do header+=" $n TPS (ratio) |"; rule+="---|"; done
echo "$header"; echo "$rule"
for mode in "-S" "" "-S -C"; do
  name=$([ "$mode" = "-S" ] && echo "select-only" || ([ "$mode" = "" ] && echo "TPC-B-like" || echo "select-only, new connection per transaction (-C)"))
  for c in 1 8 32; do
    ds=(); declare -A tps=() ratio=()
    for _ in $(seq 1 "$REPS"); do
      d=$(run "$LP" $c "$mode"); ds+=("$d")
      for i in "${!ports[@]}"; do
        x=$(run "${ports[$i]}" $c "$mode")
        tps[$i]+=" $x"; ratio[$i]+=" $(awk -v a="$x" -v b="$d" 'BEGIN { print (b > 0) ? a / b : 0 }')"
      done
    done
    line=$(awk -v n="$name" -v c=$c -v d="$(echo "${ds[*]}" | median)" 'BEGIN { printf "| %s | %d | %.0f |", n, c, d }')
    for i in "${!ports[@]}"; do
      line+=$(awk -v t="$(echo "${tps[$i]}" | median)" -v q="$(echo "${ratio[$i]}" | median)" 'BEGIN { printf " %.0f (%.2f) |", t, q }')
    done
    echo "$line"
    unset tps ratio
  done
done
lds=(); declare -A lats=()
for _ in $(seq 1 "$REPS"); do
  lds+=("$(lat "$LP")")
  for i in "${!ports[@]}"; do lats[$i]+=" $(lat "${ports[$i]}")"; done
done
ld=$(echo "${lds[*]}" | median)
line=$(awk -v d="$ld" 'BEGIN { printf "Latency at 1 client (select-only, medians): direct %.3f ms", d }')
for i in "${!ports[@]}"; do
  line+=$(awk -v n="${names[$i]}" -v d="$ld" -v x="$(echo "${lats[$i]}" | median)" 'BEGIN { printf ", %s %.3f ms (%+.0f us)", n, x, (x-d)*1000 }')
done
echo; echo "$line"
echo "patrol-router RSS after the runs: $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$router_pid/status)"
echo "(ratios are medians of the per-repetition ratios to direct)"
