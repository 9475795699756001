#!/usr/bin/env bash
# What a service pays to embed the library: crates compiled, clean release build time and
# stripped binary size of a service depending on usage-reporter with default features off
# (S3 and aws-lc on, as a real service would), beside the floor, the same service with
# object_store + axum + tokio alone, measured in the same run. Each is built RUNS times from
# a clean target directory; min and max are printed. About 4 minutes a run on 2 cores.
#
#   scripts/bench-embed.sh [RUNS]      # default 3
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
runs="${1:-3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/bench-embed.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log() { printf '[bench-embed] %s\n' "$*" >&2; }

common_deps='object_store = { version = "0.14", default-features = false, features = ["aws"] }
axum = { version = "0.8", default-features = false, features = ["http1", "tokio"] }
tokio = { version = "1", features = ["rt-multi-thread", "macros", "net", "signal"] }'

mkdir -p "$work/floor/src" "$work/embedder/src"
cat >"$work/floor/Cargo.toml" <<TOML
[package]
name = "floor"
version = "0.1.0"
edition = "2021"
[dependencies]
$common_deps
[workspace]
TOML
cat >"$work/floor/src/main.rs" <<'RS'
use std::sync::Arc;
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::aws::AmazonS3Builder::from_env().build()?);
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{store}");
    axum::serve(listener, app).with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await?;
    Ok(())
}
RS
cat >"$work/embedder/Cargo.toml" <<TOML
[package]
name = "embedder"
version = "0.1.0"
edition = "2021"
[dependencies]
$common_deps
usage-reporter = { path = "$root", default-features = false, features = ["s3", "aws-lc"] }
[workspace]
TOML
# The README's embedding example, as a service's main.
cat >"$work/embedder/src/main.rs" <<'RS'
use std::sync::Arc;
use usage_reporter::{stats, ReplicaBuilder};
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::aws::AmazonS3Builder::from_env().build()?);
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    stats::global().counter("queries")?.inc();
    let replica = ReplicaBuilder::new().object_store(store, "usage").target("querier").without_endpoint().start().await?;
    let app = app.route("/status/usage-stats", replica.usage_stats());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    axum::serve(listener, app).with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await?;
    replica.shutdown().await;
    Ok(())
}
RS

measure() { # name -> "crates seconds bytes"
  local dir="$work/$1"
  (cd "$dir" && cargo fetch --quiet) # downloads are not build time
  rm -rf "$dir/target"
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && cargo build --release 2>"$dir/build.log")
  end=$(date +%s.%N)
  local crates
  crates=$(grep -c '^ *Compiling ' "$dir/build.log")
  strip -o "$dir/stripped" "$dir/target/release/$1"
  echo "$crates $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", b-a}') $(stat -c %s "$dir/stripped")"
}

for i in $(seq 1 "$runs"); do
  for name in floor embedder; do
    log "run $i: $name"
    echo "$name $(measure "$name")" | tee -a "$work/results" >&2
  done
done
# Forbidden crates in the embedder's tree.
forbidden="$(cd "$work/embedder" && cargo tree -e normal --prefix none | { grep -E '^(parquet|arrow-[a-z]+|clap|tracing-subscriber|flatbuffers) ' || true; } | sort -u | tr '\n' ' ')"

awk -v forbidden="$forbidden" '
  { n[$1]=$2; t[$1]=t[$1] " " $3; if (!($1 in tmin) || $3<tmin[$1]) tmin[$1]=$3; if ($3>tmax[$1]) tmax[$1]=$3;
    if (!($1 in smin) || $4<smin[$1]) smin[$1]=$4; if ($4>smax[$1]) smax[$1]=$4 }
  END {
    printf "| figure | embedder (usage-reporter, default features off, s3 + aws-lc) | floor (object_store + axum + tokio) | ratio | goal |\n|---|---|---|---|---|\n"
    printf "| crates compiled | %d | %d | +%d | at most +40 |\n", n["embedder"], n["floor"], n["embedder"]-n["floor"]
    printf "| clean release build, s (min to max of %d) | %d to %d | %d to %d | %.2fx | at most 1.5x |\n", NR/2, tmin["embedder"], tmax["embedder"], tmin["floor"], tmax["floor"], tmin["embedder"]/tmin["floor"]
    printf "| stripped binary, MB | %.2f | %.2f | %.2fx | at most 2x |\n", smax["embedder"]/1e6, smax["floor"]/1e6, smax["embedder"]/smax["floor"]
    printf "| parquet, arrow, clap, tracing-subscriber, flatbuffers in the tree | %s | | | none |\n", (forbidden == "" ? "none" : forbidden)
  }' "$work/results"
