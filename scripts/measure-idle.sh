#!/usr/bin/env bash
# Measures the agents of the running demo cluster at idle: RSS and CPU over a window.
# Usage: scripts/demo.sh; scripts/measure-idle.sh [seconds, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-60}
hz=$(getconf CLK_TCK)
declare -A before
for f in demo/pg*/agent.pid; do
  pid=$(cat "$f"); before[$pid]=$(awk '{print $14 + $15}' "/proc/$pid/stat")
done
sleep "$window"
for f in demo/pg*/agent.pid; do
  pid=$(cat "$f")
  ticks=$(( $(awk '{print $14 + $15}' "/proc/$pid/stat") - ${before[$pid]} ))
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  awk -v n="$(basename "$(dirname "$f")")" -v r="$rss" -v t="$ticks" -v hz="$hz" -v w="$window" \
    'BEGIN { printf "%s: RSS %.1f MB, CPU %.2f%% over %d s\n", n, r / 1024, 100 * t / hz / w, w }'
done
