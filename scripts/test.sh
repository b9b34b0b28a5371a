#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real servers, checks formatting and lints,
# runs unit, property and integration tests against real servers, then redis-py's own test
# suite directly and through the proxy, and Redis' own (also through a switched proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
bash scripts/install-servers.sh
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -j 2 -- -D warnings
echo "== module graph (no import cycles between top-level modules)"
python3 scripts/module-graph.py
echo "== cargo test"
# One build shared by every test binary; tests that start servers run two at a time.
cargo test --all-targets -j 2 -- --test-threads=2
echo "== redis-py conformance"
bash scripts/redis-py-conformance.sh
echo "== Redis' own test suite (CI subset)"
bash scripts/redis-tcl-suite.sh
echo "== Redis' own test suite through a switched proxy (5 units, about 70 s)"
CUTOVER_BIN=target/release/cutover bash scripts/redis-tcl-switched.sh
