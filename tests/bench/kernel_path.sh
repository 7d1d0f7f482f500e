#!/usr/bin/env bash
# Kernel data path benchmark (root): installs its tools (wrk, haproxy, nginx,
# nftables, clang and libbpf-dev for the program), builds ferrolb in release
# mode with the program required, and runs kernel_path.py: direct, ferrolb
# kernel mode (NAT and DSR), ferrolb user space, HAProxy and nftables DNAT in fresh
# namespaces, keep-alive and Connection: close, requests/s, p99 and CPU per
# request from /proc/stat.
#
#   tests/bench/kernel_path.sh           # 3 rounds x 8 s per measurement (~5 min)
#   tests/bench/kernel_path.sh --quick   # 1 round x 3 s (~1 min)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "kernel_path.sh needs root (namespaces, the eBPF program)" >&2
  exit 1
fi
need=()
for p in wrk haproxy nginx nftables clang libbpf-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  # Keep the packages' own services from starting on install (nginx would take port 80).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
FERROLB_REQUIRE_BPF=1 cargo build --release --locked -q -p ferrolb-speaker --bins
exec python3 tests/bench/kernel_path.py "$@"
