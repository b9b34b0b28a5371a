#!/usr/bin/env bash
# Runs units of Redis' own Tcl test suite (`runtest` in external-server mode, as
# scripts/redis-tcl-suite.sh does) through a cutover proxy whose route was SWITCHED: for each
# unit, a fresh source and target (Redis 7.0), `cutover run --source … --target …`, the sync
# streaming, `cutover switch` (replica overlap: the target is the primary, the reverse link
# keeps the source an exact copy), then the unit through the proxy. After every unit:
#   1. the two sides are compared by an independent reader: `cutover verify` (both sides
#      scanned, every database, values and TTLs, differences re-checked) once the reverse link
#      caught up (`rollback_safe` true) — a difference fails the unit;
#   2. every `not applied` / `link stopped` line in cutover's log must be explained by
#      scripts/redis-tcl-switched-known-differences.txt — any other fails the unit;
#   3. the unit's failed tests ([err]) are listed; one not explained by
#      scripts/redis-tcl-known-differences.txt (the proxy's known differences) or the
#      switched file fails the unit (a test that also fails directly shows up here too: run
#      scripts/redis-tcl-suite.sh for the direct comparison).
#
#   bash scripts/redis-tcl-switched.sh                         the default units (UNITS_DEFAULT)
#   UNITS="unit/expire unit/multi" bash scripts/redis-tcl-switched.sh
#   CUTOVER_BIN=target/debug/cutover bash scripts/redis-tcl-switched.sh   (no release build)
#
# Exits 1 if a unit's sides differ, or a `not applied` line or a failed test is unexplained;
# 2 if something could not run. Logs in target/redis-tcl-switched/.
#
# Environment:
#   UNITS          the units to run (space-separated)
#   TAGS           runtest --tags value (default "-needs:repl -slow")
#   UNIT_TIMEOUT   time limit of one unit, in seconds (default 600)
#   RUNTEST_ARGS   extra runtest arguments
#   CUTOVER_BIN    the cutover binary to test (default: target/release/cutover, built here)
#   SELFTEST=1     writes a key straight to the old side after each unit: every unit must
#                  then be reported as differing (checks the comparison itself)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
servers="$root/.servers"
bin="$servers/bin"
suite="$servers/redis-tests"
known_proxy="$root/scripts/redis-tcl-known-differences.txt"
known="$root/scripts/redis-tcl-switched-known-differences.txt"
out="$root/target/redis-tcl-switched"
UNIT_TIMEOUT=${UNIT_TIMEOUT:-600}
RUNTEST_ARGS=${RUNTEST_ARGS:-}
TAGS=${TAGS:--needs:repl -slow}
UNITS_DEFAULT="unit/expire unit/type/incr unit/type/list unit/type/hash unit/multi"

t_start=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }
die() { echo "redis-tcl-switched: $*" >&2; exit 2; }

[ -x "$suite/runtest" ] || die "$suite/runtest missing: run scripts/install-servers.sh first"
[ -x "$bin/redis-7.0-server" ] || die "$bin/redis-7.0-server missing: run scripts/install-servers.sh first"
command -v tclsh8.6 >/dev/null 2>&1 || die "tclsh8.6 missing: run scripts/install-servers.sh first"
[ -f "$known" ] || die "$known missing"
[ -f "$known_proxy" ] || die "$known_proxy missing"
read -r -a units <<<"$(echo "${UNITS:-$UNITS_DEFAULT}")"
[ ${#units[@]} -gt 0 ] || die "no units to run"

# shellcheck source=lib/processes.sh
source "$root/scripts/lib/processes.sh"
# shellcheck source=lib/ports.sh
source "$root/scripts/lib/ports.sh"

tmp=$(mktemp -d /tmp/redis-tcl-switched.XXXXXX)
rm -rf "$out"; mkdir -p "$out"

if [ -z "${CUTOVER_BIN:-}" ]; then
  log "cargo build --release"
  (cd "$root" && cargo build --release --quiet) || die "cargo build --release failed"
  CUTOVER_BIN="$root/target/release/cutover"
fi
[ -x "$CUTOVER_BIN" ] || die "$CUTOVER_BIN missing"
# Test a copy: a concurrent `cargo build` must not swap the binary during the run.
cutover="$tmp/cutover"
cp "$CUTOVER_BIN" "$cutover"
log "cutover: $CUTOVER_BIN (tree $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?'))"
log "suite: Debian redis $(cat "$suite/.debian-version" 2>/dev/null || echo '?'), ${#units[@]} unit(s), --tags \"$TAGS\""

cp -a "$suite" "$tmp/suite"
mkdir -p "$tmp/suite/src"
ln -s "$bin/redis-cli" "$tmp/suite/src/redis-cli"
ln -s "$bin/redis-benchmark" "$tmp/suite/src/redis-benchmark"

wait_pong() { # <port> <pid>: up to 10 s for PING -> PONG
  for _ in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || return 1
    [ "$("$bin/redis-cli" -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  return 1
}

read -r p_src p_tgt p_proxy p_admin p_metrics <<<"$(free_ports 5)"
admin="127.0.0.1:$p_admin"
started=()
start_redis() { # <port> <log>
  rm -rf "$tmp/data-$1"; mkdir -p "$tmp/data-$1"
  "$bin/redis-7.0-server" --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
    --enable-debug-command yes --enable-protected-configs yes --enable-module-command yes \
    --repl-diskless-sync-delay 0 \
    --dir "$tmp/data-$1" --logfile "$2" --daemonize no &
  pids+=("$!"); started+=("$!")
  wait_pong "$1" "$!" || die "redis on port $1 did not start (see $2)"
}
start_cutover() { # <log>
  CUTOVER_LOG=${CUTOVER_LOG:-info} "$cutover" run --source "redis://127.0.0.1:$p_src" \
    --target "redis://127.0.0.1:$p_tgt" --overlap replica \
    --proxy-listen "127.0.0.1:$p_proxy" --admin-listen "$admin" \
    --metrics-listen "127.0.0.1:$p_metrics" >"$1" 2>&1 &
  pids+=("$!"); started+=("$!")
  wait_pong "$p_proxy" "$!" || die "cutover on port $p_proxy did not start (see $1)"
}
stop_started() {
  local p
  for p in "${started[@]}"; do stop "$p"; done
  started=()
}
status_field() { # <python expression on the status document s>: prints it
  "$cutover" status --admin "$admin" --json 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1" 2>/dev/null || echo "?"
}
wait_status() { # <python condition> <seconds>
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    [ "$(status_field "$1")" = True ] && return 0
    sleep 0.2
  done
  return 1
}

# The known `not applied` lines: "<unit>: <text in the line> # <why>" (or "*: …" for any unit).
explained_by() { # <file> <unit> <line>: the reason, if a pattern of the file explains it
  python3 - "$@" <<'PY'
import sys
path, unit, line = sys.argv[1:4]
for raw in open(path):
    raw = raw.rstrip("\n")
    if not raw.strip() or raw.lstrip().startswith("#"):
        continue
    what, _, why = raw.partition(" # ")
    u, _, text = what.strip().partition(": ")
    if u.strip() in (unit, "*") and text.strip() and text.strip() in line:
        print(why.strip() or "(no reason given)")
        sys.exit(0)
sys.exit(1)
PY
}

bad=0
report="$out/report.txt"
: >"$report"
for unit in "${units[@]}"; do
  f=${unit//\//_}
  ulog="$out/$f.log"; clog="$out/$f.cutover.log"
  start_redis "$p_src" "$out/$f.source.log"
  start_redis "$p_tgt" "$out/$f.target.log"
  start_cutover "$clog"
  wait_status 's["phase"]=="streaming" and s["lag_bytes"]==0' 30 || die "$unit: the sync never streamed (see $clog)"
  "$cutover" switch --admin "$admin" >"$out/$f.switch.txt" 2>&1 || die "$unit: the switch failed: $(cat "$out/$f.switch.txt")"
  [ "$(status_field 's["primary"]')" = target ] || die "$unit: the route is not on the target after the switch"
  t0=$(date +%s); rc=0
  # shellcheck disable=SC2086
  (cd "$tmp/suite" && TERM=dumb exec timeout -k 10 "$UNIT_TIMEOUT" ./runtest \
      --host 127.0.0.1 --port "$p_proxy" --single "$unit" --tags "$TAGS" --durable \
      --timeout "$UNIT_TIMEOUT" --dump-logs --no-latency $RUNTEST_ARGS) >"$ulog" 2>&1 </dev/null &
  child=$!; pids+=("$child")
  wait "$child" || rc=$?
  secs=$(( $(date +%s) - t0 ))
  ok=$(grep -c '^\[ok\]' "$ulog" || true); err=$(grep -c '^\[err\]' "$ulog" || true)
  problems=()
  # 1. both sides equal, compared by an independent reader once the old side caught up.
  if ! wait_status 's["rollback_safe"]==True' 60; then
    problems+=("the old side never caught up: $(status_field 's["cutover"]["rollback_unsafe_reason"]')")
  fi
  if [ "${SELFTEST:-0}" = 1 ]; then
    # The comparison's own check: a write straight to the old side must be found.
    "$bin/redis-cli" -p "$p_src" SET cutover-selftest "only on the source" >/dev/null
  fi
  vrc=0
  "$cutover" verify --source "redis://127.0.0.1:$p_src" --target "redis://127.0.0.1:$p_tgt" \
    --exclude-prefix cutover: --rounds 3 --interval 300ms --json "$out/$f.verify.json" \
    >"$out/$f.verify.txt" 2>&1 || vrc=$?
  case $vrc in
    0) verify="equal" ;;
    1) verify="DIFFER ($(wc -l <"$out/$f.verify.json") keys)"; problems+=("the sides differ: $(head -c 600 "$out/$f.verify.json")") ;;
    *) verify="verify failed ($vrc)"; problems+=("verify could not run: $(tail -3 "$out/$f.verify.txt")") ;;
  esac
  # 2. `not applied` in cutover's log.
  n_na=0
  while IFS= read -r line; do
    n_na=$((n_na + 1))
    if why=$(explained_by "$known" "$unit" "$line"); then
      echo "  $unit: known not-applied ($why): ${line:0:200}" >>"$report"
    else
      problems+=("unexplained: ${line:0:300}")
    fi
  done < <(grep -E 'not applied|link stopped' "$clog" || true)
  # 3. failed tests.
  while IFS= read -r line; do
    t=${line#\[err\]: }; t=${t% in tests/*}
    if why=$(explained_by "$known_proxy" "$unit" "$t") || why=$(explained_by "$known" "$unit" "$t"); then
      echo "  $unit: known failure ($why): $t" >>"$report"
    else
      problems+=("test failed: $t")
    fi
  done < <(grep '^\[err\]' "$ulog" || true)
  complete=yes; grep -qE '^\[[0-9]+/[0-9]+ done\]' "$ulog" || complete="NO (exit $rc)"
  [ "$complete" = yes ] || problems+=("the unit did not complete (exit $rc)")
  stop_started
  log "$unit: ${secs}s, $ok ok, $err err, complete: $complete; sides: $verify; not applied: $n_na"
  if [ ${#problems[@]} -gt 0 ]; then
    bad=1
    for p in "${problems[@]}"; do echo "  $unit: $p" | tee -a "$report"; done
  fi
done
log "done in $(( $(date +%s) - t_start ))s (logs in ${out#"$root"/})"
cat "$report"
exit "$bad"
