#!/usr/bin/env bash
# The Kubernetes speaker at scale (root, bird2): 10,000 Services with 30,000
# EndpointSlices on the fake API server, three speakers peering with BIRD,
# then 100 endpoint flips a second for 60 s. Prints each speaker's CPU, RSS
# and change-to-route latency for the incremental index and for the full
# recompute (--full-recompute) from the same build, and their ratio.
#
#   tests/bench/speaker_scale.sh                         # both modes (~6 min)
#   tests/bench/speaker_scale.sh --services 2000 --seconds 20 --mode incremental
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if ! dpkg-query -W -f='${Status}' bird2 2>/dev/null | grep -q "install ok installed"; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bird2 >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --locked -q -p ferrolb-speaker --bins
exec cargo bench --locked -q -p ferrolb-tests --bench speaker_scale -- "$@"
