#!/usr/bin/env bash
# The receiver's figures, on this machine, with the release build:
#   1. reports per second one `reporter receive` stores, on a local directory and on moto S3
#      (64 concurrent clients on loopback, every report distinct);
#   2. summary, clusters, metrics and dashboard latency over 90 days at the design point
#      (100,000 clusters of 3 replicas, 50 metric keys a report), cold (first request) and
#      warm (p50/p99 of 50);
#   3. rollup time for 50,000 reports of one day, and per day at 1.8 M reports; store bytes
#      written per one-minute window at the design point, against the reports' bytes;
#   4. a legitimate POST's latency (p50, p99, max of 100) alone and while 2,000 idle and 500
#      slow-body connections are open, three runs each.
#
#   scripts/bench-receiver.sh            # N=20000 reports for 1.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-20000}"
ROLL="${ROLL:-50000}"
cargo build --release --quiet --bin reporter --example receiver_bench
bin=target/release/reporter
bench=target/release/examples/receiver_bench
. scripts/bench-lib.sh

addr=""
start_receiver() { # store arguments...
  "$bin" receive --listen 127.0.0.1:0 --rate-limit 1e9 --rate-burst 1e9 --rollup-every 1h "$@" \
    2>"$work/rx.log" &
  pids+=($!)
  addr="$(addr_of "$work/rx.log")"
}
stop_receiver() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; }
latency() { # url: "cold p50 p99" in ms
  local cold
  cold="$(curl -s -o /dev/null -w '%{time_total}' "$1")"
  for _ in $(seq 1 50); do curl -s -o /dev/null -w '%{time_total}\n' "$1"; done | sort -n >"$work/lat"
  awk -v cold="$cold" '{a[NR]=$1} END {printf "%.1f %.1f %.1f\n", cold*1000, a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000}' "$work/lat"
}

echo "| figure | value |"
echo "|---|---|"
start_receiver --store "$work/local"
read -r rps failed < <("$bench" load "http://$addr/api/v1/reports" "$N" 64)
echo "| reports stored per second, local directory ($N reports, $failed failed) | $rps |"
stop_receiver

start_moto
if [ ${#moto[@]} -gt 0 ]; then
  flags=()
  for o in "${moto[@]}"; do flags+=(--store-option "$o"); done
  start_receiver --store s3://bench/r "${flags[@]}"
  read -r rps failed < <("$bench" load "http://$addr/api/v1/reports" "$((N / 4))" 64)
  echo "| reports stored per second, moto S3 ($((N / 4)) reports, $failed failed) | $rps |"
  stop_receiver
else
  echo "| reports stored per second, moto S3 | (moto not installed: run scripts/test.sh once) |"
fi

"$bench" design-point "$work/dp"
start_receiver --store "$work/dp"
read -r c50 p50 p99 < <(latency "http://$addr/api/v1/summary?days=90")
echo "| /api/v1/summary?days=90 at the design point: cold, warm p50, warm p99 (ms) | $c50, $p50, $p99 |"
read -r c50 p50 p99 < <(latency "http://$addr/api/v1/clusters?limit=500")
echo "| /api/v1/clusters?limit=500 at the design point (ms) | $c50, $p50, $p99 |"
read -r c50 p50 p99 < <(latency "http://$addr/api/v1/metrics?days=7")
echo "| /api/v1/metrics?days=7 at the design point (ms) | $c50, $p50, $p99 |"
read -r c50 p50 p99 < <(latency "http://$addr/api/v1/metrics/storage_backend?days=7")
echo "| /api/v1/metrics/storage_backend?days=7 at the design point (ms) | $c50, $p50, $p99 |"
read -r c50 p50 p99 < <(latency "http://$addr/api/v1/metrics/memstats.heap_inuse?days=90")
echo "| /api/v1/metrics/memstats.heap_inuse?days=90 at the design point (ms) | $c50, $p50, $p99 |"
read -r c50 p50 p99 < <(latency "http://$addr/")
echo "| dashboard page (ms) | $c50, $p50, $p99 |"
rss="$(awk '/VmRSS/ {print $2}' "/proc/${pids[-1]}/status")"
echo "| receiver resident memory with the design point loaded | $((rss / 1024)) MiB |"
stop_receiver

"$bench" fill "$work/roll" "$ROLL"
started="$(date +%s.%N)"
"$bin" rollup --store "$work/roll" >/dev/null
ended="$(date +%s.%N)"
python3 - "$started" "$ended" "$ROLL" <<'PY'
import sys
secs = float(sys.argv[2]) - float(sys.argv[1])
n = int(sys.argv[3])
print(f"| rollup of {n} reports of one day (s) | {secs:.2f} |")
print(f"| rollup time per day at 1.8 M reports, extrapolated (min) | {secs * 1_800_000 / n / 60:.1f} |")
PY

read -r report_bytes written ratio _ < <("$bench" window-bytes "$work/wb" "${WINDOWS:-48}" 2>"$work/wb.log")
echo "| store bytes written per one-minute window at the design point (417 clusters of 3; reports $report_bytes bytes) | $written bytes, ${ratio}x the reports |"
# The cluster list's base is folded every 256 windows: its share at 100,000 clusters.
python3 - "$report_bytes" "$written" <<'PY'
import sys
reports, written = int(sys.argv[1]), int(sys.argv[2])
base = 100_000 * 400  # bytes of the base at 100,000 clusters (400 bytes an entry)
print(f"| the same with the cluster list's compaction at 100,000 clusters (base/256 a window) | {(written + base / 256) / reports:.2f}x the reports |")
PY

# 4. Served under attack: fresh receivers, a fresh connection per legitimate request.
for run in 1 2 3; do
  start_receiver --store "$work/attack$run"
  read -r p50 p99 max < <("$bench" attack "$addr" 0 0 100)
  echo "| legitimate POST, no attack, run $run: p50, p99, max (ms) | $p50, $p99, $max |"
  stop_receiver
  start_receiver --store "$work/attacked$run"
  read -r p50 p99 max < <("$bench" attack "$addr" 2000 500 100)
  echo "| legitimate POST with 2,000 idle + 500 slow-body connections open, run $run: p50, p99, max (ms) | $p50, $p99, $max |"
  stop_receiver
done
