#!/usr/bin/env bash
# The one command that runs every test, from a fresh Debian machine (as root) onwards.
# Random tests take HAZINA_SEED (replay one case) and HAZINA_CASES (run more cases).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
cargo fmt --all -- --check
bash deploy/check-core-deps.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --doc --locked
# Last, so that its summary closes the output.
cargo nextest run --workspace --locked --profile ci
