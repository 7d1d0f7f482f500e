#!/usr/bin/env bash
# ferrolb demo: standalone mode on loopback, no root, no Kubernetes.
#
# Starts the example backends of examples/standalone.yaml (ferrolb-echo),
# runs `ferrolb-speaker standalone` on that file, sends a few requests
# through the VIPs to show them balanced across healthy backends, then keeps
# running so you can try it yourself. Ctrl-C stops everything.
#
#   ./examples/demo.sh          # interactive
#   ./examples/demo.sh --once   # show the traffic and exit (used by the tests)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
once=0
[ "${1:-}" = "--once" ] && once=1

echo "building ferrolb-speaker and the example backends..."
cargo build -q -p ferrolb-speaker -p ferrolb-tests --bins
bin=target/debug
metrics=127.0.0.1:9470

"$bin/ferrolb-echo" \
  --http web-1@127.0.0.1:9001 --http web-2@127.0.0.1:9002 \
  --udp dns@127.0.0.1:9053 \
  --http api-1@127.0.0.1:9101 --http api-2@127.0.0.1:9102 --http api-3@127.0.0.1:9103 &
echo_pid=$!
# Warnings only (a backend going down, a refused reload), to keep the demo readable.
"$bin/ferrolb-speaker" standalone --config examples/standalone.yaml --node demo --metrics-address "$metrics" --log-level warn &
speaker_pid=$!
cleanup() {
  kill "$speaker_pid" "$echo_pid" 2>/dev/null || true
  wait "$speaker_pid" "$echo_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# http HOST PORT PATH: one request with bash's /dev/tcp, so the demo needs no curl.
http() {
  local host=$1 port=$2 path=$3
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
  local body
  body=$(cat <&3)
  exec 3<&-
  printf '%s' "${body##*$'\r\n\r\n'}"
}

for _ in $(seq 1 100); do
  if [ "$(http 127.0.0.1 9470 /readyz 2>/dev/null)" = "ready" ]; then break; fi
  sleep 0.1
done
# Give the health checks a moment to see the backends (rise 2 x 300ms).
sleep 1

echo
echo "== 6 requests to service web at 127.0.10.1:8080 (round robin, web-2 has weight 2):"
for i in 1 2 3 4 5 6; do
  printf '  request %s -> %s\n' "$i" "$(http 127.0.10.1 8080 /)"
done
echo "== 4 requests to service api at 127.0.10.2:8443 from one client (Maglev: same backend each time):"
for i in 1 2 3 4; do
  printf '  request %s -> %s\n' "$i" "$(http 127.0.10.2 8443 /)"
done
echo "== backend health as the speaker sees it (/metrics):"
http 127.0.0.1 9470 /metrics | grep '^ferrolb_backend_up' | sed 's/^/  /'
echo
echo "Try it yourself:"
echo "  curl http://127.0.10.1:8080/            # service web"
echo "  curl http://127.0.10.2:8443/            # service api"
echo "  curl http://$metrics/metrics    # Prometheus metrics"
echo "  kill $echo_pid                          # kill the backends and watch them go down"
if [ "$once" = 1 ]; then
  exit 0
fi
echo "Ctrl-C stops the demo."
wait "$speaker_pid"
