#!/usr/bin/env bash
# A/B of two patrol-router settings on the demo cluster, side by side with HAProxy and direct:
# REPS interleaved pgbench runs, medians of TPS and of the ratios to direct.
#
#   scripts/demo.sh
#   A='threads: 1' B='busy_poll_us: 50' C=1 MODE=-S REPS=3 T=5 scripts/router-ab.sh
#
# A and B are extra lines of router YAML (default: none); C clients, MODE pgbench options
# (-S select-only, empty for TPC-B-like).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${T:-5} REPS=${REPS:-5} C=${C:-8} MODE=${MODE--S}
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
work="$root/ab"; mkdir -p "$work"
printf 'agent_config: %s\nlisten: {write: 127.0.0.1:6100, read: 127.0.0.1:6101, admin: 127.0.0.1:6180}\n%s\n' "$root/pg0/patrol.yml" "${A:-}" >"$work/a.yml"
printf 'agent_config: %s\nlisten: {write: 127.0.0.1:6200, read: 127.0.0.1:6201, admin: 127.0.0.1:6280}\n%s\n' "$root/pg0/patrol.yml" "${B:-}" >"$work/b.yml"
"$router_bin" -c "$work/a.yml" >"$work/a.log" 2>&1 & pa=$!
"$router_bin" -c "$work/b.yml" >"$work/b.log" 2>&1 & pb=$!
"$router_bin" haproxy-config --agent-config "$root/pg0/patrol.yml" --write-bind 127.0.0.1:7100 --read-bind 127.0.0.1:7101 --stats-bind 127.0.0.1:7180 >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & ph=$!
trap 'kill $pa $pb $ph 2>/dev/null || true' EXIT
for p in 6100 6200 7100; do
  for _ in $(seq 1 100); do psql -p $p -qAtc "select 1" bench >/dev/null 2>&1 && break; sleep 0.1; done
done
run() { $pgbench -p "$1" -c "$C" -j $(( C < 2 ? C : 2 )) -T "$T" -n $MODE bench 2>/dev/null | awk '/^tps/ {print $3; exit}'; }
out="$work/runs.txt"; : >"$out"
for _ in $(seq 1 "$REPS"); do
  echo "$(run "$LP") $(run 6100) $(run 6200) $(run 7100)" | tee -a "$out"
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$1" '{ print $c }' "$out" | median; }
ratio() { awk -v c="$1" '{ print $c / $1 }' "$out" | median; }
printf 'medians (TPS): direct %.0f  A %.0f  B %.0f  HAProxy %.0f\n' "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)"
printf 'medians (ratio to direct): A %.3f  B %.3f  HAProxy %.3f\n' "$(ratio 2)" "$(ratio 3)" "$(ratio 4)"
