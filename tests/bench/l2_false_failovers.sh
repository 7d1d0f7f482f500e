#!/usr/bin/env bash
# False failovers with both cores saturated: 10 minutes per failover profile
# by default (needs root; installs stress-ng from Debian if missing).
#
#   tests/bench/l2_false_failovers.sh                 # 600 s per profile
#   tests/bench/l2_false_failovers.sh --seconds 60
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if ! command -v stress-ng >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng
fi
cargo build --release --locked -q -p ferrolb-speaker -p ferrolb-tests --bins
exec cargo bench --locked -q -p ferrolb-tests --bench l2_false_failovers -- "$@"
