#!/usr/bin/env bash
# Layer 2 failover in Kubernetes mode (root): the fake API server, the
# controller Deployment and the speaker DaemonSet from deploy/, run by the
# lab's kubelet in network namespaces; the owner's speaker is SIGKILLed N
# times. Prints figures.
#
#   tests/bench/kube_failover.sh              # 20 trials
#   tests/bench/kube_failover.sh --trials 5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release --locked -q -p ferrolb-controller -p ferrolb-speaker -p ferrolb-tests --bins
# The Pods' images hold static release binaries.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -q \
  --target "$(uname -m)-unknown-linux-gnu" -p ferrolb-controller -p ferrolb-speaker --bins
export FERROLB_IMAGE_PROFILE=release
exec cargo bench --locked -q -p ferrolb-tests --bench kube_failover -- "$@"
