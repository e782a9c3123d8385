#!/usr/bin/env bash
# pgbench TPC-B at 8 clients against the demo cluster's leader in each replication mode:
# asynchronous, `synchronous_mode: on` and `synchronous_mode: quorum` (set with PATCH /config,
# then waiting until the sync key names its standbys). Prints one line per mode with pgbench's
# tps and latency. Starts the demo cluster in its own directory and removes it at the end.
#
#   PATROL_BIN_DIR=target/release scripts/pgbench-modes.sh [seconds per mode, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
export DEMO_DIR="${DEMO_DIR:-/tmp/patrol-pgbench-demo}"
pgbin=/usr/lib/postgresql/15/bin
api=8000
trap 'scripts/demo.sh stop >/dev/null 2>&1 || true' EXIT
scripts/demo.sh >/dev/null
leader_port() {
  curl -sf "http://127.0.0.1:$api/cluster" |
    python3 -c 'import json,sys; c=json.load(sys.stdin); print([m["port"] for m in c["members"] if m["role"]=="leader"][0])'
}
sync_key() { curl -sf "http://127.0.0.1:$api/cluster" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(sorted(m["name"] for m in c["members"] if m["role"] in ("sync_standby","quorum_standby")))'; }
export PGPASSWORD=postgres
port="$(leader_port)"
"$pgbin/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
for mode in off on quorum; do
  case "$mode" in
    off) body='{"synchronous_mode": false}'; want='[]' ;;
    on) body='{"synchronous_mode": true}'; want='one' ;;
    quorum) body='{"synchronous_mode": "quorum"}'; want='two' ;;
  esac
  curl -sf -XPATCH -d "$body" "http://127.0.0.1:$api/config" >/dev/null
  for _ in $(seq 1 100); do
    s="$(sync_key)"
    case "$want" in
      '[]') [ "$s" = "[]" ] && break ;;
      one) [ "$(python3 -c "print(len($s))")" = 1 ] && break ;;
      two) [ "$(python3 -c "print(len($s))")" = 2 ] && break ;;
    esac
    sleep 0.2
  done
  port="$(leader_port)"
  out="$("$pgbin/pgbench" -h 127.0.0.1 -p "$port" -U postgres -c 8 -j 2 -T "$secs" -M prepared postgres 2>/dev/null)"
  tps="$(grep -oP 'tps = \K[0-9.]+' <<<"$out" | head -1)"
  lat="$(grep -oP 'latency average = \K[0-9.]+ ms' <<<"$out")"
  echo "synchronous_mode=$mode standbys=$(sync_key) tps=$tps latency=$lat"
done
