#!/usr/bin/env bash
# The whole test suite, from scratch: installs and starts moto (S3) and Azurite (Azure Blob) on
# 127.0.0.1, creates their bucket and container, installs DuckDB (PyPI), Chromium (Debian) and
# cargo-deny, runs every check and test, and stops what it started, even when tests fail. Installs are cached in $REPORTER_CACHE (default ~/.cache/usage-reporter)
# so a second run is fast.
#
#   scripts/test.sh               # everything: fmt, clippy, unit, integration, backends
#   scripts/test.sh seed_race     # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${REPORTER_CACHE:-$HOME/.cache/usage-reporter}"
mkdir -p "$cache"
run_dir="$(mktemp -d "${TMPDIR:-/tmp}/reporter-test.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$run_dir"
}
trap cleanup EXIT

log() { printf '[test.sh] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # url, name, pid
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then log "$2 exited during start-up"; return 1; fi
    sleep 0.2
  done
  log "$2 did not answer at $1 within 30 s"
  return 1
}

show_log() { # name, file: why a server failed to start
  log "$1 log:"; sed 's/^/    /' "$2" >&2 || true
}

# --- moto, S3 -----------------------------------------------------------------------------
if [ ! -x "$cache/venv/bin/moto_server" ]; then
  log "installing moto[server] into $cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q 'moto[server]>=5.1.5'
fi
s3_port="$(free_port)"
# moto's own server, its writes made atomic (see scripts/moto_server.py).
"$cache/venv/bin/python" scripts/moto_server.py 127.0.0.1 "$s3_port" >"$run_dir/moto.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$s3_port/moto-api/" moto "${pids[-1]}" || { show_log moto "$run_dir/moto.log"; exit 1; }
curl -sf -X PUT "http://127.0.0.1:$s3_port/reporter-test" >/dev/null
log "moto (S3) on 127.0.0.1:$s3_port, bucket reporter-test"

# --- Azurite, Azure Blob ------------------------------------------------------------------
if [ ! -x "$cache/azurite/node_modules/.bin/azurite-blob" ]; then
  log "installing azurite@3.35.0 into $cache/azurite"
  mkdir -p "$cache/azurite"
  npm install --prefix "$cache/azurite" --no-audit --no-fund --loglevel=error azurite@3.35.0 >/dev/null
fi
az_port="$(free_port)"
"$cache/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$az_port" \
  --inMemoryPersistence --skipApiVersionCheck --loose --disableTelemetry \
  >"$run_dir/azurite.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$az_port/devstoreaccount1?comp=list" Azurite "${pids[-1]}" || { show_log Azurite "$run_dir/azurite.log"; exit 1; }
python3 scripts/azurite_container.py "http://127.0.0.1:$az_port/devstoreaccount1" reporter-test
log "Azurite (Azure Blob) on 127.0.0.1:$az_port, container reporter-test"

# --- DuckDB (PyPI) reads the Parquet rollups back, prometheus-client (PyPI) parses /metrics as
# --- strict OpenMetrics; Chromium (Debian) renders the dashboard -----------------------------
if ! "$cache/venv/bin/python" -c 'import duckdb, prometheus_client.openmetrics.parser' 2>/dev/null; then
  log "installing duckdb and prometheus-client into $cache/venv"
  "$cache/venv/bin/pip" install -q duckdb prometheus-client
fi
if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium (needs root)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export REPORTER_TEST_PYTHON="$cache/venv/bin/python"
REPORTER_TEST_CHROMIUM="$(command -v chromium)"
export REPORTER_TEST_CHROMIUM

export REPORTER_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export REPORTER_TEST_S3_BUCKET="reporter-test"
export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$az_port"
export REPORTER_TEST_AZURE_CONTAINER="reporter-test"
# Backend tests fail, rather than skip, when their server is missing.
export REPORTER_TEST_REQUIRE_BACKENDS=1
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings
log "cargo check of the library as a service embeds it: no default features, then S3 with ring"
cargo check --quiet -p usage-reporter --no-default-features
cargo check --quiet -p usage-reporter --no-default-features --features s3,ring
# What an embedder compiles: none of the receiver's, the CLI's or the log subscriber's crates.
forbidden="$(cargo tree -p usage-reporter --no-default-features --features s3,aws-lc -e normal --prefix none \
  | { grep -E '^(parquet|arrow(-[a-z]+)?|clap|tracing-subscriber|flatbuffers) ' || true; } | sort -u)"
if [ -n "$forbidden" ]; then
  log "an embedder with default features off compiles crates it never uses:"; echo "$forbidden" >&2; exit 1
fi
if [ ! -x "$cache/cargo/bin/cargo-deny" ]; then
  log "installing cargo-deny into $cache/cargo (about 2 minutes, once)"
  cargo install --quiet --locked cargo-deny@0.20.2 --root "$cache/cargo"
fi
log "cargo deny check licenses bans sources"
"$cache/cargo/bin/cargo-deny" --log-level error check licenses bans sources
log "module import graph (no cycle)"
python3 scripts/import-graph.py >/dev/null
log "cargo doc (no warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --workspace --no-deps
log "cargo test"
# The example service runs as three processes in tests/embedding.rs; `cargo test` builds
# examples only under hashed names, so build them by name first.
cargo build --quiet --workspace --examples
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
log "cargo publish --workspace --dry-run (every crate packaged, then built from its package alone)"
cargo publish --quiet --workspace --dry-run --allow-dirty
