#!/usr/bin/env bash
# Router data-path benchmark: pgbench select-only and TPC-B-like at 1, 8 and 32 clients, and
# connection rate (-C), direct to the leader, through patrol-router (default settings, and with
# `splice: true`, the kernel relay, which needs root) and through HAProxy 2.6 in TCP mode (the
# generated config), all in one run on the demo cluster. Prints a markdown table.
#
# Each figure is the median of REPS runs (default 3); the four targets take turns within each
# repetition so that drift on the shared machine hits them alike.
#
#   scripts/demo.sh                # a running demo cluster (release build)
#   scripts/router-bench.sh [seconds per run, default 10] [repetitions, default 3]
T=${1:-10}
REPS=${2:-3}
. "$(dirname "$0")/bench-lib.sh"
bench_db fresh
start_router 6100                  # default settings (the demo has its own router on 5000)
start_router 6200 'splice: true'   # the kernel relay
start_haproxy 7100
router_pid=${bench_pids[0]}
wait_ports 6100 6200 7100

run() { # port clients extra-args -> tps
  $pgbench -p "$1" -c "$2" -j 2 -T "$T" -n $3 bench 2>/dev/null | awk '/^tps/ {print $3; exit}'
}
lat() { # port -> average latency ms at 1 client, select-only
  $pgbench -p "$1" -c 1 -j 1 -T "$T" -n -S bench 2>/dev/null | awk '/latency average/ {print $4; exit}'
}
check_splice 6200
echo "| workload | clients | direct TPS | patrol-router TPS (ratio) | patrol-router, splice TPS (ratio) | HAProxy TPS (ratio) |"
echo "|---|---|---|---|---|---|"
for mode in "-S" "" "-S -C"; do
  name=$([ "$mode" = "-S" ] && echo "select-only" || ([ "$mode" = "" ] && echo "TPC-B-like" || echo "select-only, new connection per transaction (-C)"))
  for c in 1 8 32; do
    ds=() rs=() ss=() hs=() rr=() sr=() hr=()
    for _ in $(seq 1 "$REPS"); do
      d=$(run "$LP" $c "$mode"); r=$(run 6100 $c "$mode"); s=$(run 6200 $c "$mode"); h=$(run 7100 $c "$mode")
      ds+=("$d"); rs+=("$r"); ss+=("$s"); hs+=("$h")
      rr+=("$(awk -v a="$r" -v b="$d" 'BEGIN { print a / b }')"); sr+=("$(awk -v a="$s" -v b="$d" 'BEGIN { print a / b }')"); hr+=("$(awk -v a="$h" -v b="$d" 'BEGIN { print a / b }')")
    done
    d=$(echo "${ds[*]}" | median); r=$(echo "${rs[*]}" | median); s=$(echo "${ss[*]}" | median); h=$(echo "${hs[*]}" | median)
    r_ratio=$(echo "${rr[*]}" | median); s_ratio=$(echo "${sr[*]}" | median); h_ratio=$(echo "${hr[*]}" | median)
    awk -v n="$name" -v c=$c -v d="$d" -v r="$r" -v s="$s" -v h="$h" -v rq="$r_ratio" -v sq="$s_ratio" -v hq="$h_ratio" 'BEGIN { printf "| %s | %d | %.0f | %.0f (%.2f) | %.0f (%.2f) | %.0f (%.2f) |\n", n, c, d, r, rq, s, sq, h, hq }'
  done
done
lds=() lrs=() lss=() lhs=()
for _ in $(seq 1 "$REPS"); do lds+=("$(lat "$LP")"); lrs+=("$(lat 6100)"); lss+=("$(lat 6200)"); lhs+=("$(lat 7100)"); done
ld=$(echo "${lds[*]}" | median); lr=$(echo "${lrs[*]}" | median); ls=$(echo "${lss[*]}" | median); lh=$(echo "${lhs[*]}" | median)
awk -v d="$ld" -v r="$lr" -v s="$ls" -v h="$lh" 'BEGIN { printf "\nLatency at 1 client (select-only, medians): direct %.3f ms, patrol-router %.3f ms (+%.0f us), with splice %.3f ms (+%.0f us), HAProxy %.3f ms (+%.0f us)\n", d, r, (r-d)*1000, s, (s-d)*1000, h, (h-d)*1000 }'
echo "patrol-router RSS after the runs: $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$router_pid/status)"
echo "(ratios are medians of the per-repetition ratios to direct)"
