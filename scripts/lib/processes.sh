# Sourced by the benchmark and conformance scripts (bash). Every process a script starts and
# records with `pids+=("$pid")` is stopped when it exits (TERM, then KILL after 5 s), and its
# temporary folder `$tmp` is removed (kept with KEEP_TMP=1).

pids=()
tmp=""
stop() { # <pid>: stops one process started here (TERM, then KILL after 5 s)
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ -n "$tmp" ]; then
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "# logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
