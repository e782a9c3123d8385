#!/usr/bin/env bash
# A/B of two patrol-router settings on the demo cluster, side by side with HAProxy and direct:
# REPS interleaved pgbench runs, medians of TPS and of the ratios to direct.
#
#   scripts/demo.sh
#   A='threads: 1' B='busy_poll_us: 50' C=1 MODE=-S REPS=3 T=5 scripts/router-ab.sh
#
# A and B are extra lines of router YAML (default: none); C clients, MODE pgbench options
# (-S select-only, empty for TPC-B-like).
T=${T:-5} REPS=${REPS:-5} C=${C:-8} MODE=${MODE--S}
. "$(dirname "$0")/bench-lib.sh"
bench_db
start_router 6100 "${A:-}"
start_router 6200 "${B:-}"
start_haproxy 7100
wait_ports 6100 6200 7100
run() { $pgbench -p "$1" -c "$C" -j $(( C < 2 ? C : 2 )) -T "$T" -n $MODE bench 2>/dev/null | awk '/^tps/ {print $3; exit}'; }
out="$work/runs.txt"; : >"$out"
for _ in $(seq 1 "$REPS"); do
  echo "$(run "$LP") $(run 6100) $(run 6200) $(run 7100)" | tee -a "$out"
done
col() { awk -v c="$1" '{ print $c }' "$out" | median; }
ratio() { awk -v c="$1" '{ print $c / $1 }' "$out" | median; }
printf 'medians (TPS): direct %.0f  A %.0f  B %.0f  HAProxy %.0f\n' "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)"
printf 'medians (ratio to direct): A %.3f  B %.3f  HAProxy %.3f\n' "$(ratio 2)" "$(ratio 3)" "$(ratio 4)"
