#!/usr/bin/env bash
# Forwarder benchmark: installs its tools (wrk, haproxy, nginx with the stream
# module, iperf3), builds ferrolb in release mode, and runs forwarder.py, which
# prints requests/s, p99, bulk throughput, UDP replies/s, memory per idle
# connection and backend-down detection time, with ratios against a direct
# connection, HAProxy and nginx measured in the same run.
#
#   tests/bench/forwarder.sh           # 3 rounds x 5 s per measurement (~4 min)
#   tests/bench/forwarder.sh --quick   # 1 round x 2 s (~1 min)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

need=()
for p in wrk haproxy nginx libnginx-mod-stream iperf3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  # Keep the packages' own services from starting on install (nginx would take port 80).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p ferrolb-speaker -p ferrolb-tests --bins
exec python3 tests/bench/forwarder.py "$@"
