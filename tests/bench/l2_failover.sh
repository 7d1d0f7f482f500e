#!/usr/bin/env bash
# Layer 2 failover measurement: builds the release binaries the bench runs,
# then prints p50/p99 failover figures for IPv4 and IPv6 (needs root).
#
#   tests/bench/l2_failover.sh               # 20 trials per family (~2 min)
#   tests/bench/l2_failover.sh --trials 5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release --locked -q -p ferrolb-speaker -p ferrolb-tests --bins
exec cargo bench --locked -q -p ferrolb-tests --bench l2_failover -- "$@"
