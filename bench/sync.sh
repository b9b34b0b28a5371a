#!/usr/bin/env bash
# Sync benchmark (issue 3): in the same run, a native replica (REPLICAOF, diskless, delay 0)
# and `cutover sync --once` copy the same dataset; each is timed from start until it streams
# (native: master_link_status:up; cutover: --once returns once the snapshot and the writes
# made meanwhile are applied and confirmed). Rounds alternate which goes first.
#
#   bash bench/sync.sh                 # 5M keys x 100 B, 3 rounds
#   KEYS=1000000 ROUNDS=2 bash bench/sync.sh
#
# Pairs: Redis 7.0 -> Redis 7.0 (vs a native 7.0 replica) and Valkey 9.1 -> Redis 6.2 (vs a
# native Valkey 9.1 replica: the "same-version native" time). Then cutover's peak RSS for a
# source holding one ~200 MB list (into 7.0 and into 6.2), and the streaming lag at ~50k
# writes/s (redis-benchmark on the source, `cutover run` syncing into a 7.0 target, lag_ms
# sampled from its admin STATUS every 10 ms).
#
# Environment: KEYS (5000000), VALUE (100), ROUNDS (3), BIG_MB (200), LAG_CLIENTS (4: the
# redis-benchmark connections that give ~50k writes/s here; the rate achieved is printed),
# LAG_SECS (20), SKIP_BUILD=1, PARTS (default "pairs big lag").
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.servers/bin"
KEYS=${KEYS:-5000000}
VALUE=${VALUE:-100}
ROUNDS=${ROUNDS:-3}
BIG_MB=${BIG_MB:-200}
LAG_CLIENTS=${LAG_CLIENTS:-4}
LAG_SECS=${LAG_SECS:-20}
PARTS=${PARTS:-pairs big lag}
target_dir=${CARGO_TARGET_DIR:-$root/target}

die() { echo "bench/sync.sh: $*" >&2; exit 2; }
for b in redis-7.0-server redis-6.2-server valkey-9.1-server redis-cli redis-benchmark; do
  [ -x "$bin/$b" ] || die "$bin/$b missing: run scripts/install-servers.sh first"
done

echo "# cutover sync benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(cd "$root" && git rev-parse --short HEAD)"
echo "# command: KEYS=$KEYS VALUE=$VALUE ROUNDS=$ROUNDS BIG_MB=$BIG_MB LAG_CLIENTS=$LAG_CLIENTS LAG_SECS=$LAG_SECS PARTS=\"$PARTS\" bash bench/sync.sh"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# shellcheck source=../scripts/lib/processes.sh
source "$root/scripts/lib/processes.sh"
tmp=$(mktemp -d /tmp/cutover-sync-bench.XXXXXX)

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release --quiet --bin cutover) || die "cargo build --release failed"
fi
[ -x "$target_dir/release/cutover" ] || die "$target_dir/release/cutover missing"
cp "$target_dir/release/cutover" "$tmp/cutover"
cutover="$tmp/cutover"

free_port() {
  python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"
}
cli() { "$bin/redis-cli" -p "$@"; }

# start_server <binary> <port> [args…]: starts it in the background, waits for PING.
start_server() {
  local b=$1 port=$2
  shift 2
  "$bin/$b" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --dbfilename "dump-$port.rdb" --logfile "$tmp/server-$port.log" "$@" &
  pids+=($!)
  for _ in $(seq 1 100); do
    [ "$(cli "$port" PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  die "$b on $port did not start (log $tmp/server-$port.log)"
}
stop_server() { # <port>
  cli "$1" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  sleep 0.2
}
now() { date +%s.%N; }

# native_time <source port> <replica binary>: seconds until master_link_status:up.
native_time() {
  local src=$1 b=$2 port t0 t1
  port=$(free_port)
  start_server "$b" "$port"
  t0=$(now)
  cli "$port" REPLICAOF 127.0.0.1 "$src" >/dev/null
  until cli "$port" INFO replication | grep -q '^master_link_status:up'; do sleep 0.02; done
  t1=$(now)
  stop_server "$port"
  echo "$t1 - $t0" | bc
}

# cutover_time <source port> <target binary>: "seconds peak_rss_kb" of `cutover sync --once`.
cutover_time() {
  local src=$1 b=$2 port t0 t1 rss
  port=$(free_port)
  start_server "$b" "$port"
  t0=$(now)
  /usr/bin/time -f '%M' -o "$tmp/rss" "$cutover" sync --once --quiet \
    --source "redis://127.0.0.1:$src" --target "redis://127.0.0.1:$port" 2>"$tmp/sync.err" ||
    die "cutover sync failed: $(tail -3 "$tmp/sync.err")"
  t1=$(now)
  rss=$(tail -1 "$tmp/rss")
  local got
  got=$(cli "$port" DBSIZE)
  [ "$got" -ge "$KEYS" ] || die "the target holds $got keys, expected $KEYS + 1"
  stop_server "$port"
  echo "$(echo "$t1 - $t0" | bc) $rss"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

pair() { # <source binary> <target binary> <native replica binary> <label>
  local sb=$1 tb=$2 nb=$3 label=$4 sp r n c rss
  sp=$(free_port)
  start_server "$sb" "$sp" --enable-debug-command local --repl-diskless-sync yes \
    --repl-diskless-sync-delay 0 --repl-backlog-size 64mb
  local t0
  t0=$(now)
  cli "$sp" DEBUG POPULATE "$KEYS" key "$VALUE" >/dev/null
  echo "## $label: $KEYS keys x $VALUE B populated in $(echo "$(now) - $t0" | bc | cut -c1-5) s; used_memory $(cli "$sp" INFO memory | grep '^used_memory_human' | cut -d: -f2 | tr -d '\r')"
  : >"$tmp/native" ; : >"$tmp/cut" ; : >"$tmp/rsss"
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      n=$(native_time "$sp" "$nb"); read -r c rss <<<"$(cutover_time "$sp" "$tb")"
    else
      read -r c rss <<<"$(cutover_time "$sp" "$tb")"; n=$(native_time "$sp" "$nb")
    fi
    echo "$n" >>"$tmp/native"; echo "$c" >>"$tmp/cut"; echo "$rss" >>"$tmp/rsss"
    printf 'round %d: native %.2f s, cutover %.2f s (%.2fx), cutover peak RSS %d MB\n' \
      "$r" "$n" "$c" "$(echo "$c / $n" | bc -l)" $((rss / 1024))
  done
  local mn mc mr
  mn=$(median <"$tmp/native"); mc=$(median <"$tmp/cut"); mr=$(sort -g "$tmp/rsss" | tail -1)
  printf 'median: native %.2f s, cutover %.2f s, ratio %.2fx; cutover peak RSS max %d MB\n\n' \
    "$mn" "$mc" "$(echo "$mc / $mn" | bc -l)" $((mr / 1024))
  stop_server "$sp"
}

big() {
  local sp per n
  sp=$(free_port)
  start_server redis-7.0-server "$sp" --repl-diskless-sync yes --repl-diskless-sync-delay 0 \
    --proto-max-bulk-len 1gb
  # One list of ~BIG_MB MB: 100-byte elements, pushed 100,000 at a time by a script.
  n=$((BIG_MB * 1024 * 1024 / 100))
  per=100000
  local done_=0
  while [ "$done_" -lt "$n" ]; do
    local k=$((n - done_ < per ? n - done_ : per))
    cli "$sp" EVAL "for i=1,tonumber(ARGV[1]) do redis.call('RPUSH', KEYS[1], string.rep('x', 92) .. string.format('%08d', i)) end" 1 big "$k" >/dev/null
    done_=$((done_ + k))
  done
  echo "## one big key: a list of $(cli "$sp" LLEN big) elements x 100 B, used_memory $(cli "$sp" INFO memory | grep '^used_memory_human' | cut -d: -f2 | tr -d '\r')"
  local tb port t0 rss
  for tb in redis-7.0-server redis-6.2-server; do
    port=$(free_port)
    start_server "$tb" "$port"
    t0=$(now)
    /usr/bin/time -f '%M' -o "$tmp/rss" "$cutover" sync --once --quiet \
      --source "redis://127.0.0.1:$sp" --target "redis://127.0.0.1:$port" 2>"$tmp/sync.err" ||
      die "cutover sync failed: $(tail -3 "$tmp/sync.err")"
    rss=$(tail -1 "$tmp/rss")
    [ "$(cli "$port" LLEN big)" = "$(cli "$sp" LLEN big)" ] || die "the big list differs on $tb"
    printf 'into %s: %.1f s, cutover peak RSS %d MB\n' "$tb" "$(echo "$(now) - $t0" | bc)" $((rss / 1024))
    stop_server "$port"
  done
  echo
  stop_server "$sp"
}

lag() {
  local sp tp ap pp
  sp=$(free_port); tp=$(free_port); ap=$(free_port); pp=$(free_port)
  start_server redis-7.0-server "$sp" --repl-diskless-sync yes --repl-diskless-sync-delay 0
  start_server redis-7.0-server "$tp"
  "$cutover" run --source "redis://127.0.0.1:$sp" --target "redis://127.0.0.1:$tp" \
    --proxy-listen "127.0.0.1:$pp" --admin-listen "127.0.0.1:$ap" 2>"$tmp/run.err" &
  pids+=($!)
  for _ in $(seq 1 200); do
    cli "$ap" STATUS 2>/dev/null | grep -q '"phase":"streaming"' && break
    sleep 0.05
  done
  cli "$ap" STATUS | grep -q '"phase":"streaming"' || die "cutover run never reached streaming: $(tail -3 "$tmp/run.err")"
  "$bin/redis-benchmark" -p "$sp" -t set -c "$LAG_CLIENTS" -P 1 -r 100000 -d 100 \
    -n 100000000 -q >/dev/null 2>&1 &
  local bench=$!
  pids+=($bench)
  sleep 1
  local off0 t0
  off0=$(cli "$sp" INFO replication | grep '^master_repl_offset' | cut -d: -f2 | tr -d '\r')
  local cmds0
  cmds0=$(cli "$sp" INFO stats | grep '^total_commands_processed' | cut -d: -f2 | tr -d '\r')
  t0=$(now)
  python3 - "$ap" "$LAG_SECS" >"$tmp/lags" <<'PY'
import json, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
end = time.time() + secs
while time.time() < end:
    s.sendall(b"*1\r\n$6\r\nSTATUS\r\n")
    n = int(f.readline()[1:])
    doc = json.loads(f.read(n + 2)[:n])
    print(doc["sync"]["lag_ms"], doc["sync"]["lag_bytes"])
    time.sleep(0.01)
PY
  local secs cmds
  secs=$(echo "$(now) - $t0" | bc)
  cmds=$(cli "$sp" INFO stats | grep '^total_commands_processed' | cut -d: -f2 | tr -d '\r')
  kill "$bench" 2>/dev/null || true
  local rate p50 p99 max n
  rate=$(echo "($cmds - $cmds0) / $secs" | bc)
  n=$(wc -l <"$tmp/lags")
  p50=$(cut -d' ' -f1 "$tmp/lags" | sort -g | awk -v n="$n" 'NR==int(n*0.50)+1')
  p99=$(cut -d' ' -f1 "$tmp/lags" | sort -g | awk -v n="$n" 'NR==int(n*0.99)+1')
  max=$(cut -d' ' -f1 "$tmp/lags" | sort -g | tail -1)
  echo "## streaming lag: ~$rate writes/s on the source (redis-benchmark SET -c $LAG_CLIENTS) for $LAG_SECS s, $n samples of lag_ms"
  echo "lag_ms p50 $p50, p99 $p99, max $max (target: p99 <= 5 ms)"
  echo
}

for part in $PARTS; do
  case $part in
    pairs)
      pair redis-7.0-server redis-7.0-server redis-7.0-server "Redis 7.0 -> Redis 7.0 (native: a Redis 7.0 replica)"
      pair valkey-9.1-server redis-6.2-server valkey-9.1-server "Valkey 9.1 -> Redis 6.2 (native: a Valkey 9.1 replica)"
      ;;
    big) big ;;
    lag) lag ;;
    *) die "unknown part $part (pairs, big, lag)" ;;
  esac
done
