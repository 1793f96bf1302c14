#!/usr/bin/env bash
# Architecture invariant: the ledger core depends on no async runtime, storage engine, network
# stack, clock or random-number crate. Fails listing any such crate in its dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p hazina-core -e normal --prefix none --locked | awk '{print $1}' | sort -u)
forbidden='^(tokio|async-std|smol|futures|rocksdb|librocksdb-sys|tonic|prost|hyper|mio|rand|rand_core|getrandom|fastrand|chrono|time|ahash|uuid)$'
if bad=$(grep -E "$forbidden" <<<"$tree"); then
  echo "hazina-core must stay pure, but depends on: $bad" >&2
  exit 1
fi
echo "hazina-core dependencies: $(tr '\n' ' ' <<<"$tree")"

# Architecture invariant: RocksDB is named by hazina-store only (its C++ takes most of a build;
# every other crate reaches storage through hazina-store's API).
direct=$(grep -l -E '^\s*rocksdb\s*(=|\.workspace)' crates/*/Cargo.toml benches/Cargo.toml loadtest/Cargo.toml || true)
if [ "$direct" != "crates/hazina-store/Cargo.toml" ]; then
  echo "only crates/hazina-store may depend on rocksdb directly; found: ${direct:-none}" >&2
  exit 1
fi
echo "rocksdb is a direct dependency of: $direct"
