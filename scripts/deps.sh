#!/usr/bin/env bash
# The one list of Debian 12 packages Patrol needs, and their installation. `scripts/demo.sh`
# calls it with `demo`, `.ci/run` with `test`; nothing else installs system packages.
#
#   scripts/deps.sh demo    what the demo cluster needs (build + etcd, PostgreSQL, HAProxy)
#   scripts/deps.sh test    that plus what the test suite runs (Prometheus, Chromium, PgBouncer, ...)
#   scripts/deps.sh bench   the demo's plus what the etcd benchmarks read etcd with (etcdctl, curl)
#   scripts/deps.sh list demo|test   print the list only
#
# Packages are installed with --no-install-recommends, so every package whose files we use is
# named here even when another one only recommends it: `libprotobuf-dev` holds the well-known
# `.proto` files (google/protobuf/*.proto) that building etcd-client needs, and Debian's
# `protobuf-compiler` merely recommends it.
set -euo pipefail

# Building: protoc and the well-known types (etcd-client's build script), a C toolchain for
# crates with C parts.
build=(protobuf-compiler libprotobuf-dev gcc libc6-dev)
# Running the demo: etcd, PostgreSQL 15 (server and client), HAProxy, setpriv (util-linux).
demo=(etcd-server postgresql-15 postgresql-client-15 haproxy util-linux ca-certificates)
# The tests add: Prometheus and Chromium (dashboards and the stats page), PgBouncer, openssl (test
# certificates), python3-venv (Patroni's own patronictl from PyPI), iproute2 (network namespaces),
# procps (ps, pkill in diagnostics), curl.
test_extra=(prometheus chromium pgbouncer openssl python3-venv python3-pip iproute2 procps curl)

# The etcd benchmarks (scripts/etcd-idle.sh): etcdctl's watch, curl for etcd's /metrics.
bench_extra=(etcd-client curl)

what="${1:-test}"
list_only=false
if [ "$what" = list ]; then list_only=true; what="${2:-test}"; fi
case "$what" in
  demo) pkgs=("${build[@]}" "${demo[@]}") ;;
  test) pkgs=("${build[@]}" "${demo[@]}" "${test_extra[@]}") ;;
  bench) pkgs=("${build[@]}" "${demo[@]}" "${bench_extra[@]}") ;;
  *) echo "usage: $0 [list] demo|test|bench" >&2; exit 2 ;;
esac
if $list_only; then printf '%s\n' "${pkgs[@]}"; exit 0; fi

sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Debian's postgresql-15 package creates and starts the cluster 15/main on 5432 when it is
# installed; neither the demo nor the tests use it, and it would take the port the demo's first
# node wants. Stop it only when this run installed the package: a cluster that was there before
# is somebody's, and is left alone.
if [[ " ${need[*]-} " == *" postgresql-15 "* ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
  "${sudo_cmd[@]+"${sudo_cmd[@]}"}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
