#!/usr/bin/env bash
# Verify benchmark: `cutover verify` over KEYS identical keys, Redis 7.0 vs Redis 7.0, on this
# machine; prints keys/s of every round, the median, the peak RSS (VmHWM) and the ratios to
# the targets (>= 300k keys/s, <= 128 MB).
#
#   bash bench/verify.sh               # 5M keys, 3 rounds
#   KEYS=1000000 ROUNDS=5 bash bench/verify.sh
#
# The source is filled with `DEBUG POPULATE KEYS key 100` (100-byte strings); the target is
# started from the source's RDB file, so both hold the same data. Environment: KEYS
# (5000000), ROUNDS (3), SKIP_BUILD=1 (use the release binary as it is), CARGO_TARGET_DIR.
# Needs scripts/install-servers.sh to have run. Everything listens on 127.0.0.1 (free ports);
# every process started here is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.servers/bin"
KEYS=${KEYS:-5000000}
ROUNDS=${ROUNDS:-3}
RATE_TARGET=300000
RSS_TARGET_MB=128

die() { echo "bench/verify.sh: $*" >&2; exit 2; }
for b in redis-7.0-server redis-cli; do
  [ -x "$bin/$b" ] || die "$bin/$b missing: run scripts/install-servers.sh first"
done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"

echo "# cutover verify benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# command: KEYS=$KEYS ROUNDS=$ROUNDS bash bench/verify.sh"
echo "# $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# shellcheck source=../scripts/lib/processes.sh
source "$root/scripts/lib/processes.sh"
tmp=$(mktemp -d /tmp/cutover-bench-verify.XXXXXX)

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release --quiet) || die "cargo build --release failed"
fi
cutover="$target_dir/release/cutover"
[ -x "$cutover" ] || die "$cutover missing"
cp "$cutover" "$tmp/cutover"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_server() { # port dir
  "$bin/redis-7.0-server" --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$2" --dbfilename dump.rdb --enable-debug-command local --logfile "$2/server.log" &
  pids+=($!)
  for _ in $(seq 1 600); do
    if "$bin/redis-cli" -p "$1" ping 2>/dev/null | grep -q PONG; then return 0; fi
    sleep 0.1
  done
  die "redis on port $1 did not start (log: $(tail -3 "$2/server.log"))"
}

sp=$(free_port); tp=$(free_port)
mkdir -p "$tmp/src" "$tmp/tgt"
start_server "$sp" "$tmp/src"
echo "# populating $KEYS keys on the source..."
"$bin/redis-cli" -p "$sp" debug populate "$KEYS" key 100 >/dev/null
"$bin/redis-cli" -p "$sp" save >/dev/null
cp "$tmp/src/dump.rdb" "$tmp/tgt/dump.rdb"
start_server "$tp" "$tmp/tgt"
for _ in $(seq 1 600); do
  n=$("$bin/redis-cli" -p "$tp" dbsize 2>/dev/null || echo 0)
  [ "$n" = "$KEYS" ] && break
  sleep 0.2
done
[ "$("$bin/redis-cli" -p "$tp" dbsize)" = "$KEYS" ] || die "target did not load the RDB"
echo "# source :$sp and target :$tp hold $KEYS keys each ($("$bin/redis-cli" -p "$sp" info memory | grep used_memory_human | tr -d '\r'))"

ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
spid=${pids[0]}; tpid=${pids[1]}   # the servers themselves (started with `&`, no wrapper)
rates=(); hwms=()
for r in $(seq 1 "$ROUNDS"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  s0=$(ticks "$spid"); t0=$(ticks "$tpid")
  "$tmp/cutover" verify --source "redis://127.0.0.1:$sp" --target "redis://127.0.0.1:$tp" \
    --quiet >"$tmp/out.jsonl" 2>"$tmp/err.txt" &
  pid=$!
  hwm=0; own=0
  while kill -0 "$pid" 2>/dev/null; do
    h=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
    o=$(ticks "$pid"); [ -n "$o" ] && [ "$o" -gt "$own" ] && own=$o
    sleep 0.2
  done
  s1=$(ticks "$spid"); t1=$(ticks "$tpid")
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 0 ] || { cat "$tmp/err.txt"; die "round $r: exit code $rc (expected 0: identical)"; }
  rate=$(grep -o '([0-9]* keys/s)' "$tmp/err.txt" | tr -dc '0-9')
  secs=$(grep -o 'EQUAL in [0-9.]* s' "$tmp/err.txt" | awk '{print $3}')
  cpu=$(awk -v a=$((s1 - s0)) -v b=$((t1 - t0)) -v c="$own" -v hz="$hz" 'BEGIN {printf "source %.1f s, target %.1f s, cutover %.1f s", a/hz, b/hz, c/hz}')
  echo "round $r: $rate keys/s ($secs s), peak RSS $((hwm / 1024)) MB; CPU: $cpu; load average at start $load"
  rates+=("$rate"); hwms+=("$hwm")
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
med=$(median "${rates[@]}")
peak=$(printf '%s\n' "${hwms[@]}" | sort -n | tail -1)
echo
echo "median: $med keys/s (target >= $RATE_TARGET: $(awk -v a="$med" -v b=$RATE_TARGET 'BEGIN {printf "%.2fx", a/b}'))"
echo "peak RSS: $((peak / 1024)) MB (target <= $RSS_TARGET_MB MB: $(awk -v a="$peak" -v b=$RSS_TARGET_MB 'BEGIN {printf "%.2fx of the budget", a/1024/b}'))"
echo "last summary:"
cat "$tmp/err.txt"
