# Shared by scripts/bench.sh and scripts/bench-receiver.sh (sourced, not run): a work directory
# removed on exit with every process started, waiting for a logged address, and moto.
cache="${REPORTER_CACHE:-$HOME/.cache/usage-reporter}"
work="$(mktemp -d "${TMPDIR:-/tmp}/reporter-bench.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

addr_of() { # log file: prints the first addr= it logs
  local a
  for _ in $(seq 1 200); do
    a="$(grep -o 'addr=[0-9.:]*' "$1" | head -1 | cut -d= -f2 || true)"
    [ -n "$a" ] && { echo "$a"; return 0; }
    sleep 0.05
  done
  echo "nothing listening; its log:" >&2; cat "$1" >&2
  return 1
}

# moto on a free port with a bucket `bench`; sets `moto` to the store options (empty if moto
# is not installed: run scripts/test.sh once).
moto=()
start_moto() {
  [ -x "$cache/venv/bin/moto_server" ] || return 0
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$cache/venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/moto_server.py" 127.0.0.1 "$port" >"$work/moto.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/moto-api/" && break; sleep 0.2; done
  curl -s -X PUT "http://127.0.0.1:$port/bench" >/dev/null
  moto=("aws_endpoint=http://127.0.0.1:$port" aws_access_key_id=a aws_secret_access_key=b aws_region=us-east-1)
}
