#!/usr/bin/env bash
# Starts a single-site Hazina ledger node, from a fresh Debian machine (as root) onwards:
# RocksDB in ./hazina-data (or $HAZINA_DATA_DIR), gRPC on 127.0.0.1:7400, Prometheus metrics on
# 127.0.0.1:9400/metrics. Extra arguments go to hazinad (see target/release/hazinad --help).
# The first run compiles RocksDB's C++ in release mode: 15 to 30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
cargo build --release --locked -p hazinad -p hazina-cli
exec target/release/hazinad --data-dir "${HAZINA_DATA_DIR:-hazina-data}" "$@"
