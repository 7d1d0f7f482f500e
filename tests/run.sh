#!/usr/bin/env bash
# Runs every ferrolb test on a fresh machine and prints a summary.
#
#   ./tests/run.sh            # everything
#   FERROLB_REQUIRE_ALL_TESTS=1 ./tests/run.sh   # what CI runs: a skip is a failure
#
# It installs what the suites need (Debian packages with apt-get, cargo-nextest
# with cargo), then runs: formatting, clippy with warnings as errors, every
# unit/property/integration test of the workspace, doc tests, and a short
# allocator benchmark whose figures are printed (never asserted).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

# Debian packages the suites need. Suites that drive namespaces and router
# daemons add theirs here. iproute2: the namespace suites; bird2, gobgpd, exabgp: the BGP suite's routers;
# prometheus: promtool for the alert rules' unit tests (tests/monitoring.rs) and the
# Prometheus the product end-to-end tests scrape and alert with (tests/product.rs).
APT_PACKAGES=(iproute2 bird2 gobgpd exabgp frr faketime nftables clang libbpf-dev prometheus)

LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ferrolb-tests.XXXXXX")
export FERROLB_SKIP_LOG="$LOG_DIR/skipped.txt"
: >"$FERROLB_SKIP_LOG"
export CARGO_TERM_COLOR=never
# The kernel data path's BPF program must be built in (crates/sys/build.rs):
# without clang a build would succeed with it left out and its tests skip.
export FERROLB_REQUIRE_BPF=1

declare -a STEP_NAMES=() STEP_RESULTS=() STEP_SECONDS=()
failed_steps=0

# step NAME COMMAND...: runs a command, keeps its output in the log dir, records the result.
step() {
  local name=$1
  shift
  local log="$LOG_DIR/${name// /_}.log"
  local start=$SECONDS
  printf '\n==> %s: %s\n' "$name" "$*"
  if "$@" 2>&1 | tee "$log"; then
    STEP_RESULTS+=(ok)
  else
    STEP_RESULTS+=(FAILED)
    failed_steps=$((failed_steps + 1))
  fi
  STEP_NAMES+=("$name")
  STEP_SECONDS+=($((SECONDS - start)))
}

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    # "install ok installed" only: a removed package keeps its config files and still answers dpkg -s.
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # Any kubectl will do (tests/tests/kubectl.rs); Debian's is kubernetes-client.
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  if [ ${#missing[@]} -eq 0 ]; then
    echo "all Debian packages present (${APT_PACKAGES[*]:-none needed})"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages ${missing[*]} and not root: suites that need them will skip loudly"
    return 0
  fi
  # Keep the packages' own services (bird) from starting on install: the tests run their own.
  local had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  local rc=0
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || rc=$?
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  return $rc
}

# Python tools the suites need, in a virtualenv under target/ (kept between runs):
# kubernetes-validate checks deploy/ against the Kubernetes schemas offline.
PY_TOOLS="$ROOT/target/tools/venv"
PY_PACKAGES=(kubernetes-validate==1.37.0)
export PATH="$PY_TOOLS/bin:$PATH"
install_python_tools() {
  if [ -x "$PY_TOOLS/bin/kubernetes-validate" ]; then
    "$PY_TOOLS/bin/kubernetes-validate" --version
    return 0
  fi
  python3 -m venv "$PY_TOOLS" && "$PY_TOOLS/bin/pip" install -q "${PY_PACKAGES[@]}" && "$PY_TOOLS/bin/kubernetes-validate" --version
}

install_deny() {
  if cargo deny --version >/dev/null 2>&1; then
    cargo deny --version
    return 0
  fi
  echo "cargo-deny not found; installing it from crates.io"
  cargo install --locked cargo-deny
}

install_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest --version | head -1
    return 0
  fi
  echo "cargo-nextest not found; installing it from crates.io"
  cargo install --locked cargo-nextest
}

step "install packages" install_packages
step "install nextest" install_nextest
step "install cargo-deny" install_deny
step "install python tools" install_python_tools
step "format" cargo fmt --all -- --check
# cargo-deny reads the metadata of every crate in Cargo.lock, other
# platforms' included, which a build never downloads: fetch them first.
step "fetch crates" cargo fetch --locked
# Licences (no GPL), banned crates and sources (deny.toml); advisories need a
# database these machines cannot fetch, so they are not checked here.
step "supply chain" cargo deny --offline check licenses bans sources
step "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# End-to-end suites run the real binaries, found next to the test executables.
step "build binaries" cargo build --workspace --bins --locked
# The product suites run the binaries as deploy/ ships them, from image
# directories laid out by the Dockerfile's final stages: they need static
# executables (crt-static glibc for the host's own target triple).
step "build static binaries for the Pod images" env RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --target "$(uname -m)-unknown-linux-gnu" -p ferrolb-speaker -p ferrolb-controller --bins

tests_passed=0
tests_failed=0
if cargo nextest --version >/dev/null 2>&1; then
  step "tests" cargo nextest run --workspace --locked --no-fail-fast --failure-output final
  summary=$(grep -E '^\s*Summary \[' "$LOG_DIR/tests.log" | tail -1)
  tests_passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
  tests_failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
else
  step "tests" cargo test --workspace --locked --no-fail-fast
  tests_passed=$(grep -oE 'test result: .* ([0-9]+) passed' "$LOG_DIR/tests.log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  tests_failed=$(grep -oE '[0-9]+ failed' "$LOG_DIR/tests.log" | awk '{s+=$1} END {print s+0}')
fi
step "doc tests" cargo test --workspace --locked --doc
doc_passed=$(grep -oE 'test result: .* ([0-9]+) passed' "$LOG_DIR/doc_tests.log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
doc_failed=$(grep -oE '[0-9]+ failed' "$LOG_DIR/doc_tests.log" | awk '{s+=$1} END {print s+0}')
tests_passed=$((tests_passed + doc_passed))
tests_failed=$((tests_failed + doc_failed))

# The README's first command, non-interactively: traffic must reach both web backends.
demo_check() {
  ./examples/demo.sh --once >"$LOG_DIR/demo.out" 2>&1 || { cat "$LOG_DIR/demo.out"; return 1; }
  cat "$LOG_DIR/demo.out"
  grep -q -- '-> web-1' "$LOG_DIR/demo.out" && grep -q -- '-> web-2' "$LOG_DIR/demo.out"
}
step "demo (README first command)" demo_check

# Figures only: speed targets are compared against a reference in the same run, never asserted.
step "allocator benchmark" cargo bench --locked -p ferrolb-alloc --bench alloc -- --quick --naive-budget 60
step "controller benchmark" ./tests/bench/controller_scale.sh --n 10000 --creates 1000

skipped=$(wc -l <"$FERROLB_SKIP_LOG")
echo
echo "==================== ferrolb test summary ===================="
for i in "${!STEP_NAMES[@]}"; do
  printf '  %-22s %-7s %4ss\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}" "${STEP_SECONDS[$i]}"
done
if [ "$skipped" -gt 0 ]; then
  echo "  skipped tests (need root or programs this machine lacks):"
  sed 's/^/    /' "$FERROLB_SKIP_LOG"
fi
echo "  logs: $LOG_DIR"
# A failed step that is not a test (format, clippy, install, benchmark) counts as one failure.
other_failures=0
for i in "${!STEP_NAMES[@]}"; do
  if [ "${STEP_RESULTS[$i]}" = FAILED ] && [ "${STEP_NAMES[$i]}" != tests ] && [ "${STEP_NAMES[$i]}" != "doc tests" ]; then
    other_failures=$((other_failures + 1))
  fi
done
total_failed=$((tests_failed + other_failures))
# A test that skipped returned early and was counted as passed by the runner; count it as skipped only.
tests_passed=$((tests_passed > skipped ? tests_passed - skipped : 0))
if [ "$failed_steps" -gt 0 ] && [ "$total_failed" -eq 0 ]; then
  total_failed=$failed_steps
fi
echo "summary: ${tests_passed} passed, ${total_failed} failed, ${skipped} skipped"
[ "$failed_steps" -eq 0 ] && [ "$total_failed" -eq 0 ]
