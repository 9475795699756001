#!/usr/bin/env bash
# Store requests per hour of a follower and of the leader in steady state, at the defaults
# (--interval 4h --lease-ttl 5m --seed-check 15m), measured on a local directory with time
# scaled down 100 times: 3 replicas run for 4 scaled hours (144 s) after a settling period.
#
#   scripts/request-volume.sh            # prints requests per (scaled) hour per replica
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/reporter
dir="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
args=(--store "$dir/bucket" --interval 144s --lease-ttl 3s --collect-delay 600ms --seed-check 9s)
for i in 1 2 3; do
  "$bin" run --listen 127.0.0.1:0 "${args[@]}" 2>"$dir/log$i" &
done
sleep 2
addrs=()
for i in 1 2 3; do
  addrs+=("$(grep -o 'addr=[0-9.:]*' "$dir/log$i" | head -1 | cut -d= -f2)")
done
total() { curl -s "http://$1/metrics" | awk '/^usage_reporter_store_requests_total/ {s+=$2} END {print s+0}'; }
leader() { curl -s "http://$1/metrics" | grep -qx 'usage_reporter_leader 1' && echo leader || echo follower; }
sleep 10
declare -a before
for i in 0 1 2; do before[$i]=$(total "${addrs[$i]}"); done
sleep 144
for i in 0 1 2; do
  n=$(( $(total "${addrs[$i]}") - before[$i] ))
  awk -v r="$(leader "${addrs[$i]}")" -v n="$n" 'BEGIN { printf "%-8s %6.2f store requests per hour\n", r, n / 4 }'
done
