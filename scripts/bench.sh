#!/usr/bin/env bash
# Every benchmark, one table: each figure beside its baseline, measured in the same run, and its
# goal. Release build, this machine; moto from the test script's cache (scripts/test.sh once).
# About 8 minutes. BENCHMARKS.md explains each row.
#
#   scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin reporter --example scale_bench --example receiver_bench
bin=target/release/reporter
scale=target/release/examples/scale_bench
load=target/release/examples/receiver_bench
. scripts/bench-lib.sh
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }
log() { printf '[bench] %s\n' "$*" >&2; }
start_moto

echo "| figure | value | baseline (same run) | goal |"
echo "|---|---|---|---|"

log "hot path (cargo bench --bench hot_path)"
cargo bench --quiet --bench hot_path 2>/dev/null >"$work/hot"
atomic="$(awk '/bare `AtomicU64::fetch_add`|bare AtomicU64/ {print $(NF-1)" / "$NF; exit}' "$work/hot")"
counter="$(awk '/Counter::inc/ {print $(NF-1)" / "$NF; exit}' "$work/hot")"
stats="$(awk '/Statistics::record/ {print $(NF-1)" / "$NF; exit}' "$work/hot")"
row "Counter::inc, ns per op, 1 / 2 threads" "$counter" "bare atomic: $atomic" "no worse than a bare atomic"
row "Statistics::record, ns per op, 1 / 2 threads" "$stats" "bare atomic: $atomic" ""

log "seed agreement, 100 processes"
read -r p50 p99 max listen missing < <("$scale" seed 100 "$work/seed-local")
row "100 processes agree on the seed, local directory: p50 / p99 / max ms from start" "$p50 / $p99 / $max ($missing missing)" "p50 $listen ms to a listening endpoint" "each within 1 s"
if [ ${#moto[@]} -gt 0 ]; then
  read -r p50 p99 max listen missing < <("$scale" seed 100 s3://bench/seed "${moto[@]}")
  row "100 processes agree on the seed, moto S3: p50 / p99 / max ms" "$p50 / $p99 / $max ($missing missing)" "p50 $listen ms to a listening endpoint" "each within 1 s"
fi

log "memory and /status/usage-stats"
"$bin" run --listen 127.0.0.1:0 --store "$work/mem" 2>"$work/run.log" &
pids+=($!)
rpid=$!
addr="$(addr_of "$work/run.log")"
sleep 5
idle="$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$rpid/status")"
"$scale" status "$addr" 10 8 >"$work/status" &
spid=$!
peak=0
while kill -0 "$spid" 2>/dev/null; do
  r="$(awk '/VmRSS/ {print $2}' "/proc/$rpid/status")"
  [ "$r" -gt "$peak" ] && peak="$r"
  sleep 0.2
done
read -r rps p99 base_rps base_p99 <"$work/status"
row "idle reporter run, resident MiB" "$idle" "" "under 20"
row "reporter run under endpoint load, peak resident MiB" "$(awk -v p="$peak" 'BEGIN {printf "%.1f", p/1024}')" "idle: $idle" ""
row "/status/usage-stats from a second process (8 connections): requests/s, p99 ms" "$rps, $p99" "/healthz: $base_rps, $base_p99" ""
kill "$rpid"

log "one slot of N replicas delivered (each takes a slot of 20 s)"
for n in 10 100 1000; do
  read -r secs dup missing per rss < <("$scale" slot "$n" "$work/slot-$n")
  row "$n replicas, local directory: s from collect delay to last report; duplicates; missing" "$secs; $dup; $missing" "leader store requests per report: $per" "within 30 s, 0, 0; requests per report constant"
  row "$n replicas, local directory: the leader's peak resident MiB during the pass" "$rss" "idle: $idle" "under 64 at 1,000"
done
if [ ${#moto[@]} -gt 0 ]; then
  read -r secs dup missing per rss < <("$scale" slot 1000 s3://bench/slot "${moto[@]}")
  row "1,000 replicas, moto S3: s from collect delay to last report; duplicates; missing" "$secs; $dup; $missing" "leader store requests per report: $per" "within 30 s, 0, 0"
  row "1,000 replicas, moto S3: the leader's peak resident MiB during the pass" "$rss" "idle: $idle" "under 64"
fi

log "reporter receive, reports stored per second"
"$bin" receive --listen 127.0.0.1:0 --store "$work/rx" --rate-limit 1e9 --rate-burst 1e9 2>"$work/rx.log" &
pids+=($!)
raddr="$(addr_of "$work/rx.log")"
read -r rxs failed < <("$load" load "http://$raddr/api/v1/reports" 20000 64)
row "reporter receive, local directory: reports stored per second ($failed failed)" "$rxs" "" "2,000"

log "store requests per hour at the defaults (scripts/request-volume.sh, 2.5 min)"
scripts/request-volume.sh >"$work/volume"
follower="$(awk '/^follower/ {print $2}' "$work/volume" | sort -n | tail -1)"
leader="$(awk '/^leader/ {print $2}' "$work/volume")"
row "store requests per hour at the defaults: follower, leader" "$follower, $leader" "" "at most 20, 40"
