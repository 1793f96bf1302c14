#!/usr/bin/env bash
# The runs of docs/BENCHMARKS.md, each on fresh data: starts the node (or a three-site group on
# 127.0.0.1), creates the load generator's population, waits a few seconds for the set-up's
# flushes, runs the load with --skip-setup, prints one line of figures, and stops every process
# it started.
#
#   loadtest/bench.sh RUN [SECONDS]       RUN: A, B, C (one site) or A3, B3, C3 (three sites)
#
#   A   one transfer per request, 256 callers, closed loop      (issue 3: 50,000 transfers/s)
#   B   8,000 transfers per request, 4 callers, closed loop     (issue 3: 500,000 transfers/s)
#   C   open loop at 16,000 transfers/s, the full mix           (p99)
#   A3, B3, C3: the same against three sites                    (issue 5: 30,000; 150,000; p99 < 25 ms)
#
# The line: transfers/s, p50 and p99 in ms, the CPU each process spent per transfer over the
# middle of the run (from /proc, in µs), and whether the verification passed. Release builds of
# the binaries named by HAZINAD and LOADTEST (default target/release/...), so two builds can be
# compared: HAZINAD=/tmp/old/hazinad loadtest/bench.sh A. NODE_ARGS adds flags to every site,
# LOAD_ARGS to the load generator's run (LOAD_ARGS="--concurrency 512"). The line ends with how
# the machine's cores spent the window (/proc/stat): busy, idle, and stolen by the host.
set -euo pipefail
cd "$(dirname "$0")/.."

run=${1:?usage: loadtest/bench.sh A|B|C|A3|B3|C3 [seconds]}
seconds=${2:-20}
hazinad=${HAZINAD:-target/release/hazinad}
loadtest=${LOADTEST:-target/release/hazina-loadtest}
for binary in "$hazinad" "$loadtest"; do
  [[ -x $binary ]] || { echo "bench: $binary not built (cargo build --release -p hazinad -p hazina-loadtest)" >&2; exit 1; }
done

case $run in
  A | A3) load=(--single --rate 0 --concurrency 256) ;;
  B | B3) load=(--single --rate 0 --batch 8000 --concurrency 4) ;;
  C | C3) load=(--rate 16000) ;;
  *) echo "bench: unknown run $run" >&2; exit 2 ;;
esac

work=$(mktemp -d /tmp/hazina-bench.XXXXXX)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${KEEP:-} ]]; then echo "bench: kept $work"; else rm -rf "$work"; fi
}
trap stop EXIT

machine_ticks() { # busy, idle (with iowait) and steal ticks of all cores
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6, $9 }' /proc/stat
}

cpu_ticks() { # utime + stime of a process, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

if [[ $run == *3 ]]; then
  sites=(--site 1=127.0.0.1:7401,127.0.0.1:7411 --site 2=127.0.0.1:7402,127.0.0.1:7412
    --site 3=127.0.0.1:7403,127.0.0.1:7413)
  for i in 1 2 3; do
    # shellcheck disable=SC2086
    "$hazinad" --site-id "$i" "${sites[@]}" --data-dir "$work/site$i" \
      --metrics-listen "127.0.0.1:940$i" --ready-file "$work/ready$i" ${NODE_ARGS:-} \
      >"$work/site$i.log" 2>&1 &
    pids+=($!)
  done
  ready=("$work/ready1" "$work/ready2" "$work/ready3")
  target=(--target 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 --attempts 10
    --metrics http://127.0.0.1:9401/metrics,http://127.0.0.1:9402/metrics,http://127.0.0.1:9403/metrics)
else
  # shellcheck disable=SC2086
  "$hazinad" --data-dir "$work/data" --listen 127.0.0.1:7400 --metrics-listen 127.0.0.1:9400 \
    --ready-file "$work/ready" ${NODE_ARGS:-} >"$work/node.log" 2>&1 &
  pids+=($!)
  ready=("$work/ready")
  target=(--target 127.0.0.1:7400 --metrics http://127.0.0.1:9400/metrics)
fi
nodes=("${pids[@]}")
for file in "${ready[@]}"; do
  for _ in $(seq 200); do [[ -s $file ]] && break; sleep 0.1; done
  [[ -s $file ]] || { echo "bench: a node did not start; its log is in $work" >&2; trap - EXIT; exit 1; }
done

# The set-up: the default population (1M customers), then a pause for its flushes.
"$loadtest" "${target[@]}" --rate 1000 --duration 1 >"$work/setup.log" 2>&1 ||
  { echo "bench: set-up failed:" >&2; tail -5 "$work/setup.log" >&2; exit 1; }
sleep 4
if [[ $run == *3 ]]; then
  # The preferred site leads every measured run: a cold start may elect another site, which
  # hands the primary back once site 1 has been up to date for 30 s (ADR 0014).
  for _ in $(seq 600); do
    curl -s 127.0.0.1:9401/metrics | grep -q '^hazina_is_primary 1' && break
    sleep 0.1
  done
fi

# shellcheck disable=SC2086
"$loadtest" "${target[@]}" "${load[@]}" ${LOAD_ARGS:-} --duration "$seconds" --skip-setup \
  --json "$work/run.json" >"$work/run.log" 2>&1 &
load_pid=$!
pids+=("$load_pid")
# CPU over the middle of the run: from 3 s in to 2 s before its end.
window=$((seconds - 5))
sleep 3
machine_before=$(machine_ticks)
before=()
for pid in "${nodes[@]}" "$load_pid"; do before+=("$(cpu_ticks "$pid")"); done
sleep "$window"
machine_after=$(machine_ticks)
after=()
for pid in "${nodes[@]}" "$load_pid"; do after+=("$(cpu_ticks "$pid")"); done
status=0
wait "$load_pid" || status=$?
[[ -s $work/run.json ]] || { echo "bench: the run wrote no report:" >&2; tail -5 "$work/run.log" >&2; exit 1; }

python3 - "$work/run.json" "$window" "$(getconf CLK_TCK)" "${before[*]}" "${after[*]}" "$status" "$run" \
  "$machine_before" "$machine_after" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
window, tick = float(sys.argv[2]), float(sys.argv[3])
before, after = [int(x) for x in sys.argv[4].split()], [int(x) for x in sys.argv[5].split()]
status, run = int(sys.argv[6]), sys.argv[7]
# Transfers in the CPU window, from the timeline (one point a second).
moved = sum(s["transfers_per_second"] for s in report["timeline"]
            if 3 < s["at_seconds"] <= 3 + window) or report["transfers_per_second"] * window
cpu = [(a - b) / tick * 1e6 / moved for a, b in zip(after, before)]
names = [f"site{i + 1}" for i in range(len(cpu) - 1)] if len(cpu) > 2 else ["node"]
lat = report["latency_us"]
spent = [int(a) - int(b) for a, b in zip(sys.argv[9].split(), sys.argv[8].split())]
print(f"{run}: {report['transfers_per_second']:,.0f} transfers/s, p50 {lat['p50'] / 1000:.1f} ms, "
      f"p99 {lat['p99'] / 1000:.1f} ms; CPU µs a transfer: "
      + ", ".join(f"{n} {c:.1f}" for n, c in zip(names + ["load generator"], cpu))
      + f"; verification {'passed' if report['verification']['passed'] and status == 0 else 'FAILED'}"
      + "; cores " + ", ".join(f"{name} {d / sum(spent):.0%}" for name, d in zip(
          ["busy", "idle", "stolen"], spent)))
EOF
