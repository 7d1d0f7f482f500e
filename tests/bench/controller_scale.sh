#!/usr/bin/env bash
# Controller measurements against the in-project fake API server (no root
# needed): N existing Services, create-to-status latency, restart to ready,
# RSS. Prints figures.
#
#   tests/bench/controller_scale.sh                        # 10,000 Services, 1,000 creates
#   tests/bench/controller_scale.sh --n 2000 --creates 200
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release --locked -q -p ferrolb-controller --bins
exec cargo bench --locked -q -p ferrolb-tests --bench controller_scale -- "$@"
