#!/bin/bash
# Side-by-side failover and router benchmarks of two release builds, alternating runs so that
# the machine's noise falls on both alike. Prints each benchmark's summary lines.
#
#   cargo build --release --bins -p patrol-agent -p patrol-router -p patrol-ctl
#   cargo build --release -p patrol-tests --examples
#   scripts/ab-bench.sh <base bin dir> <new bin dir> [rounds]
#
# The bin dirs hold `patrol`, `patrolctl` and `patrol-router` (a `target/release` of each
# build). The benchmark programs come from this checkout's `target/release/examples`.
set -euo pipefail
base=$(realpath "$1")
new=$(realpath "$2")
rounds=${3:-2}
cd "$(dirname "$0")/.."
fb=target/release/examples/failover_bench
rb=target/release/examples/router_switch_bench
summary() { grep -E '^\| [a-z]' || true; }
for round in $(seq "$rounds"); do
  for side in base new; do
    dir=$base; [ "$side" = new ] && dir=$new
    echo "== round $round, $side: direct switchover (5 runs), crash and SIGTERM (3 runs)"
    PATROL_BIN_DIR=$dir BENCH_RUNS=5 BENCH_SCENARIOS=switchover $fb 2>&1 | summary
    PATROL_BIN_DIR=$dir BENCH_RUNS=3 BENCH_SCENARIOS=crash,sigterm $fb 2>&1 | summary
  done
done
for side in base new; do
  dir=$base; [ "$side" = new ] && dir=$new
  echo "== $side: host loss (2 runs), through patrol-router (3 runs), router T1/T2 (3 runs)"
  PATROL_BIN_DIR=$dir BENCH_RUNS=2 BENCH_SCENARIOS=hostloss $fb 2>&1 | summary
  PATROL_BIN_DIR=$dir BENCH_VIA_ROUTER=1 BENCH_RUNS=3 BENCH_SCENARIOS=switchover,crash $fb 2>&1 | summary
  PATROL_BIN_DIR=$dir BENCH_RUNS=3 $rb 2>&1 | summary
done
