#!/usr/bin/env bash
# BGP measurements against BIRD 2 and GoBGP (root): 10,000 VIPs to a peer, and the
# time from a service being added to its route in the router. Prints figures.
#
#   tests/bench/bgp_scale.sh            # 10,000 VIPs
#   tests/bench/bgp_scale.sh --n 2000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
for pkg in bird2 gobgpd; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  fi
done
cargo build --release --locked -q -p ferrolb-speaker -p ferrolb-tests --bins
exec cargo bench --locked -q -p ferrolb-tests --bench bgp_scale -- "$@"
