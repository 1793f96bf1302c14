#!/usr/bin/env bash
# Starts a three-site Hazina group on this machine, for demos and drills, from a fresh Debian
# machine (as root) onwards. Each site is its own hazinad process with its own RocksDB folder,
# as the three data centres would run it (deploy/sites.conf):
#
#   site 1 (primary site, preferred)  API 127.0.0.1:7401  peers 127.0.0.1:7411  metrics :9401
#   site 2 (disaster recovery)        API 127.0.0.1:7402  peers 127.0.0.1:7412  metrics :9402
#   site 3 (disaster recovery)        API 127.0.0.1:7403  peers 127.0.0.1:7413  metrics :9403
#
# Data in ./hazina-cluster/site{1,2,3} (or $HAZINA_CLUSTER_DIR), logs beside them. Ctrl-C stops
# all three. Extra arguments go to every hazinad. Then, from another terminal:
#   target/release/hazina --addr 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 admin status
# The first run compiles RocksDB's C++ in release mode: 15 to 30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
cargo build --release --locked -p hazinad -p hazina-cli -p hazina-loadtest
dir="${HAZINA_CLUSTER_DIR:-hazina-cluster}"
mkdir -p "$dir"
# The group's sites, the same list for every site.
sites=()
while read -r id api peer; do
  [[ -z "$id" || "$id" == \#* ]] && continue
  sites+=(--site "$id=$api,$peer")
done < deploy/sites.conf

pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT
for id in 1 2 3; do
  target/release/hazinad --site-id "$id" "${sites[@]}" --data-dir "$dir/site$id" \
    --metrics-listen "127.0.0.1:940$id" "$@" 2>>"$dir/site$id.log" &
  pids+=($!)
  echo "site $id: pid $!, log $dir/site$id.log"
done
echo "three sites starting; Ctrl-C stops them"
wait -n "${pids[@]}" || true
echo "a site stopped; see its log" >&2
wait
