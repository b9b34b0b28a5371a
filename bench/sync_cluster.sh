#!/usr/bin/env bash
# Cluster sync benchmark (issue 21): `cutover sync` from a 3-master source cluster into a
# 4-master target cluster, against the physical floor of a shard-parallel copy measured in the
# same run: one native replica per source master, all started at once, the slowest one's time.
#
#   bash bench/sync_cluster.sh                          # 3 x 2M keys x 100 B, 3 rounds
#   KEYS_PER_SHARD=200000 ROUNDS=3 bash bench/sync_cluster.sh
#   PARTS=scaling TARGETS=redis-7.0 bash bench/sync_cluster.sh
#
# Parts (PARTS, default "pairs scaling"):
#   pairs    a 3-master Redis 7.0 source (KEYS_PER_SHARD keys of VALUE bytes per master, every
#            key in its master's slots) into a fresh 4-master target of each of TARGETS
#            (default "redis-7.0 valkey-9.1 redis-6.2"). Every round times, alternating which
#            goes first:
#              native   3 fresh standalone Redis 7.0 servers, `REPLICAOF` each source master at
#                       once; the time until the slowest says `master_link_status:up` and
#                       `loading:0` (the floor: the source's own replication, all shards in
#                       parallel);
#              cutover  `cutover sync --once --quiet --source <3 seeds> --target <4 seeds>`
#                       into an empty 4-master cluster (started before the clock), until it
#                       exits (snapshot and the writes made meanwhile applied and confirmed),
#                       with its peak RSS (`/usr/bin/time -f %M`).
#            Then the target's key count is checked (every key, plus cutover's position keys).
#   scaling  1, 2 and 3 source masters of KEYS_PER_SHARD keys each into a 4-master Redis 7.0
#            target (the 3-master case is the pairs' 7.0 -> 7.0 when that ran): native floor,
#            cutover time, MB/s of RDB, keys/s, per-shard MB/s.
#
# CPU: every round also reads the CPU seconds each side used (`INFO cpu` of the servers, forks
# included; cutover's user + sys from /usr/bin/time): cutover's, the targets', the masters'
# (their RDB), the native replicas'. The "CPU ratio" (cutover run / native run) measures the
# work, which the machine's load does not change much; on a 2-core machine the wall times are
# mostly that work shared by two cores (so a loaded machine shows in them, not in the CPU).
#
# RDB size: each source master's `SAVE` file, once after the fill (the bytes a replica
# receives). Throughput = total RDB bytes (or keys) of the source / cutover's time.
# The source is filled through `redis-cli --pipe` with `SET {tag}:<i> <VALUE random bytes>`,
# `{tag}` a hash tag of one of the master's slots (keys spread evenly over its slots). Random
# values make the RDB as large as the data (DEBUG POPULATE's zero-padded values compress ~10x).
#
# Environment: KEYS_PER_SHARD (2000000), VALUE (100), ROUNDS (3), TARGETS, PARTS, SOURCE
# (redis-7.0), NATIVE (the replica binary, default the source's), TARGET_MASTERS (4),
# SOURCE_MASTERS (3), SCALING (the source master counts of the scaling part, "1 2 3"),
# CUTOVER_ARGS (more `cutover sync` arguments, e.g. "--pipeline 8192"), CUTOVER_WRAP (a
# command prefix for profiling, e.g. "perf record -g -o /tmp/p.data --": RSS and CPU are then
# the wrapper's), CUTOVER_BIN (a cutover binary to run instead of the release build: an A/B of
# two builds), SKIP_BUILD=1 (use $CARGO_TARGET_DIR/release/cutover as it is), KEEP_TMP=1 (keep
# the logs). Ports are below 55000 (a cluster node's bus is port + 10000). Needs bc, python3,
# /usr/bin/time. Edit a copy, not this file, while it runs (bash reads it as it goes).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.servers/bin"
KEYS_PER_SHARD=${KEYS_PER_SHARD:-2000000}
VALUE=${VALUE:-100}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-redis-7.0 valkey-9.1 redis-6.2}
PARTS=${PARTS:-pairs scaling}
SOURCE=${SOURCE:-redis-7.0}
NATIVE=${NATIVE:-$SOURCE}
TARGET_MASTERS=${TARGET_MASTERS:-4}
SOURCE_MASTERS=${SOURCE_MASTERS:-3}
CUTOVER_ARGS=${CUTOVER_ARGS:-}
CUTOVER_WRAP=${CUTOVER_WRAP:-}
SCALING=${SCALING:-1 2 3}
target_dir=${CARGO_TARGET_DIR:-$root/target}

die() { echo "bench/sync_cluster.sh: $*" >&2; exit 2; }
for b in "$SOURCE" "$NATIVE" $TARGETS; do
  [ -x "$bin/$b-server" ] || die "$bin/$b-server missing: run scripts/install-servers.sh first"
done
[ -x "$bin/redis-cli" ] || die "$bin/redis-cli missing"
for t in bc python3 /usr/bin/time; do command -v "$t" >/dev/null || die "$t is needed"; done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"
[[ "$KEYS_PER_SHARD" =~ ^[1-9][0-9]*$ ]] || die "KEYS_PER_SHARD must be a positive number"

echo "# cutover cluster sync benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(cd "$root" && git rev-parse --short HEAD)"
echo "# command: KEYS_PER_SHARD=$KEYS_PER_SHARD VALUE=$VALUE ROUNDS=$ROUNDS TARGETS=\"$TARGETS\" PARTS=\"$PARTS\" SOURCE=$SOURCE NATIVE=$NATIVE SOURCE_MASTERS=$SOURCE_MASTERS TARGET_MASTERS=$TARGET_MASTERS CUTOVER_ARGS=\"$CUTOVER_ARGS\" bash bench/sync_cluster.sh"
echo "# $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# shellcheck source=../scripts/lib/processes.sh
source "$root/scripts/lib/processes.sh"
tmp=$(mktemp -d /tmp/cutover-sync-cluster-bench.XXXXXX)

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release -j 2 --quiet --bin cutover) || die "cargo build --release failed"
fi
CUTOVER_BIN=${CUTOVER_BIN:-$target_dir/release/cutover}
[ -x "$CUTOVER_BIN" ] || die "$CUTOVER_BIN missing"
# A copy: a concurrent `cargo build` must not swap the binary under the run.
cp "$CUTOVER_BIN" "$tmp/cutover"
cutover="$tmp/cutover"

cli() { "$bin/redis-cli" -p "$@"; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
info_field() { # <port> <section> <field>
  cli "$1" INFO "$2" | awk -F: -v f="$3" '$1 == f {sub(/\r$/, "", $2); print $2}'
}

cpu_of() { # <port>…: CPU seconds the servers used so far (their forks included)
  local p
  for p in "$@"; do cli "$p" INFO cpu; done | tr -d '\r' |
    awk -F: '/^used_cpu_(user|sys)(_children)?:/ {s += $2} END {printf "%.2f", s}'
}

# A free port p < 55000 whose cluster bus port p + 10000 is free too.
port_pair() {
  python3 - <<'PY'
import random, socket
for _ in range(5000):
    p = random.randrange(20000, 44990)
    try:
        a = socket.socket(); a.bind(("127.0.0.1", p))
        b = socket.socket(); b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    a.close(); b.close(); print(p); break
else:
    raise SystemExit("no free port pair below 55000")
PY
}

declare -A server_pid=()
# start_server <name> <port> [args…]: a server in the background, waits for PING.
start_server() {
  local b=$1 port=$2
  shift 2
  "$bin/$b-server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
    --dbfilename "dump-$port.rdb" --logfile "$tmp/server-$port.log" "$@" &
  server_pid[$port]=$!
  pids+=($!)
  for _ in $(seq 1 100); do
    [ "$(cli "$port" PING 2>/dev/null)" = PONG ] && return 0
    kill -0 "${server_pid[$port]}" 2>/dev/null || die "$b on $port exited at start (log $tmp/server-$port.log)"
    sleep 0.1
  done
  die "$b on $port did not start (log $tmp/server-$port.log)"
}
stop_servers() { # <port>…
  local p
  for p in "$@"; do cli "$p" SHUTDOWN NOSAVE >/dev/null 2>&1 || true; done
  for p in "$@"; do
    [ -n "${server_pid[$p]:-}" ] && stop "${server_pid[$p]}"
    rm -f "$tmp/dump-$p.rdb" "$tmp/nodes-$p.conf"
    unset "server_pid[$p]"
  done
}

# start_cluster <name> <masters> [server args…]: sets `cluster` to the masters' ports, in slot
# order. Slots are split evenly (ADDSLOTS, works on 6.2 too), the nodes are joined by MEET,
# and it returns once every node says cluster_state:ok and knows every other node.
cluster=()
start_cluster() {
  local b=$1 n=$2 i port lo hi
  shift 2
  cluster=()
  for i in $(seq 0 $((n - 1))); do
    port=$(port_pair)
    start_server "$b" "$port" --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
      --cluster-node-timeout 5000 "$@"
    cluster+=("$port")
  done
  for i in $(seq 0 $((n - 1))); do
    port=${cluster[$i]}
    lo=$((i * 16384 / n)); hi=$(((i + 1) * 16384 / n - 1))
    cli "$port" CLUSTER SET-CONFIG-EPOCH $((i + 1)) >/dev/null
    # shellcheck disable=SC2046
    [ "$(cli "$port" CLUSTER ADDSLOTS $(seq "$lo" "$hi"))" = OK ] || die "CLUSTER ADDSLOTS on $port failed"
  done
  for port in "${cluster[@]:1}"; do cli "${cluster[0]}" CLUSTER MEET 127.0.0.1 "$port" >/dev/null; done
  local deadline=$(($(date +%s) + 60)) ok
  while :; do
    ok=1
    for port in "${cluster[@]}"; do
      cli "$port" CLUSTER INFO | tr -d '\r' |
        awk -v n="$n" '/^cluster_state:ok$/ {a=1} $0 == "cluster_known_nodes:" n {b=1} END {exit !(a && b)}' ||
        { ok=0; break; }
    done
    [ "$ok" = 1 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "the $n-node $b cluster is not ok after 60 s (logs in $tmp)"
    sleep 0.1
  done
}
seeds() { local IFS=,; local a=("${@/#/127.0.0.1:}"); echo "redis://${a[*]}"; }

# The fill's generator: `SET {tag}:<i> <VALUE random bytes>` in RESP, key i in the i-th slot
# (round robin) of the master's range, `{tag}` a hash tag of that slot (binascii.crc_hqx is
# Redis Cluster's CRC16, XMODEM). Random values: the RDB is as large as the data (LZF finds
# nothing to compress), as with real values that are not runs of one byte.
gen=$(cat <<'PY'
import binascii, itertools, os, string, sys
lo, hi, keys, size = map(int, sys.argv[1:])
tags, alphabet = {}, string.ascii_letters + string.digits
def names():
    for n in itertools.count(1):
        for t in itertools.product(alphabet, repeat=n):
            yield "".join(t)
for t in names():
    s = binascii.crc_hqx(t.encode(), 0) % 16384
    if lo <= s <= hi and s not in tags:
        tags[s] = t.encode()
        if len(tags) == hi - lo + 1:
            break
slots = [tags[s] for s in range(lo, hi + 1)]
ns = len(slots)
out = sys.stdout.buffer
head = b"*3\r\n$3\r\nSET\r\n"
vhead = b"$%d\r\n" % size
chunk = 10000
for base in range(0, keys, chunk):
    n = min(chunk, keys - base)
    rnd = os.urandom(n * size)
    parts = []
    for j in range(n):
        i = base + j
        k = b"{%s}:%d" % (slots[i % ns], i)
        parts.append(b"%s$%d\r\n%s\r\n%s%s\r\n" % (head, len(k), k, vhead, rnd[j * size:(j + 1) * size]))
    out.write(b"".join(parts))
PY
)

# fill_source: each master of `cluster` gets KEYS_PER_SHARD keys of VALUE random bytes in its
# own slots (`redis-cli --pipe`); sets rdb_bytes (the masters' SAVE files summed) and total_keys.
rdb_bytes=0
total_keys=0
fill_source() {
  local n=${#cluster[@]} i port lo hi t0 got
  t0=$(now)
  for i in $(seq 0 $((n - 1))); do
    port=${cluster[$i]}
    lo=$((i * 16384 / n)); hi=$(((i + 1) * 16384 / n - 1))
    python3 -c "$gen" "$lo" "$hi" "$KEYS_PER_SHARD" "$VALUE" |
      "$bin/redis-cli" -p "$port" --pipe >"$tmp/fill-$port.out" 2>&1 ||
      die "filling $port failed: $(tail -3 "$tmp/fill-$port.out")"
    grep -q 'errors: 0,' "$tmp/fill-$port.out" || die "filling $port: $(tail -2 "$tmp/fill-$port.out")"
    got=$(cli "$port" DBSIZE)
    [ "$got" = "$KEYS_PER_SHARD" ] || die "master $port holds $got keys, expected $KEYS_PER_SHARD"
  done
  total_keys=$((n * KEYS_PER_SHARD))
  local filled
  filled=$(echo "$(now) - $t0" | bc)
  rdb_bytes=0
  for port in "${cluster[@]}"; do
    cli "$port" SAVE >/dev/null
    rdb_bytes=$((rdb_bytes + $(stat -c %s "$tmp/dump-$port.rdb")))
    rm -f "$tmp/dump-$port.rdb"
  done
  printf '%d masters x %d keys x %d B filled in %.1f s; RDB %.1f MB in all; used_memory per master %s\n' \
    "$n" "$KEYS_PER_SHARD" "$VALUE" "$filled" "$(echo "$rdb_bytes / 1048576" | bc -l)" \
    "$(info_field "${cluster[0]}" memory used_memory_human)"
}

# native_floor <master port>…: sets `native` (s, the slowest replica) and `native_fast`.
native=0
native_fast=0
native_cpu=""
n_rep=0
n_mst=0
native_floor() {
  local masters=("$@") reps=() port m t0 i left
  for m in "${masters[@]}"; do
    port=$(port_pair)
    start_server "$NATIVE" "$port"
    reps+=("$port")
  done
  local -A done_at=()
  local m0
  m0=$(cpu_of "${masters[@]}")
  t0=$(now)
  for i in "${!masters[@]}"; do
    cli "${reps[$i]}" REPLICAOF 127.0.0.1 "${masters[$i]}" >/dev/null
  done
  local deadline=$(($(date +%s) + 3600))
  left=${#reps[@]}
  while [ "$left" -gt 0 ]; do
    for port in "${reps[@]}"; do
      [ -n "${done_at[$port]:-}" ] && continue
      if cli "$port" INFO replication | grep -q '^master_link_status:up' &&
        [ "$(info_field "$port" persistence loading)" = 0 ]; then
        done_at[$port]=$(now)
        left=$((left - 1))
      fi
    done
    [ "$(date +%s)" -lt "$deadline" ] || die "a native replica did not finish within an hour"
    sleep 0.02
  done
  native=$(for port in "${reps[@]}"; do echo "${done_at[$port]} - $t0" | bc; done | sort -g | tail -1)
  native_fast=$(for port in "${reps[@]}"; do echo "${done_at[$port]} - $t0" | bc; done | sort -g | head -1)
  n_rep=$(cpu_of "${reps[@]}")
  n_mst=$(echo "$(cpu_of "${masters[@]}") - $m0" | bc)
  native_cpu="replicas $n_rep s, masters $n_mst s"
  stop_servers "${reps[@]}"
}

# cutover_run <target name> <master port>…: sets `cut` (s) and `rss_kb`.
cut=0
rss_kb=0
cut_cpu=""
c_cut=0
c_tgt=0
c_mst=0
cutover_run() {
  local tb=$1 t0 t1 p got=0 pid
  shift
  local masters=("$@")
  start_cluster "$tb" "$TARGET_MASTERS"
  local targets=("${cluster[@]}") m0
  m0=$(cpu_of "${masters[@]}")
  t0=$(now)
  # shellcheck disable=SC2086
  /usr/bin/time -f '%M %U %S' -o "$tmp/rss" $CUTOVER_WRAP "$cutover" sync --once --quiet $CUTOVER_ARGS \
    --source "$(seeds "${masters[@]}")" --target "$(seeds "${targets[@]}")" 2>"$tmp/sync.err" &
  pid=$!
  pids+=($pid)
  wait "$pid" || die "cutover sync into $tb failed: $(tail -5 "$tmp/sync.err")"
  t1=$(now)
  cut=$(echo "$t1 - $t0" | bc)
  local user sys
  read -r rss_kb user sys <<<"$(tail -1 "$tmp/rss")"
  c_cut=$(echo "$user + $sys" | bc)
  c_tgt=$(cpu_of "${targets[@]}")
  c_mst=$(echo "$(cpu_of "${masters[@]}") - $m0" | bc)
  cut_cpu="cutover $c_cut s, targets $c_tgt s, masters $c_mst s"
  for p in "${targets[@]}"; do got=$((got + $(cli "$p" DBSIZE))); done
  # Every key, plus cutover's position keys (one per slot and source master).
  [ "$got" -ge "$((${#masters[@]} * KEYS_PER_SHARD))" ] ||
    die "the $tb target holds $got keys, expected $((${#masters[@]} * KEYS_PER_SHARD)) and cutover's"
  stop_servers "${targets[@]}"
}

summary=()
rows=()
ratio() { echo "$1 / $2" | bc -l; }

# measure <label> <target name> <master port>…: ROUNDS alternating rounds, prints them and the
# medians, appends a summary row: label native cutover ratio MB/s keys/s rss_max_mb.
measure() {
  local label=$1 tb=$2 r
  shift 2
  local masters=("$@")
  : >"$tmp/n"; : >"$tmp/c"; : >"$tmp/r"; : >"$tmp/cc"; : >"$tmp/ct"; : >"$tmp/cx"
  echo "## $label"
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      native_floor "${masters[@]}"; cutover_run "$tb" "${masters[@]}"
    else
      cutover_run "$tb" "${masters[@]}"; native_floor "${masters[@]}"
    fi
    echo "$native" >>"$tmp/n"; echo "$cut" >>"$tmp/c"; echo "$rss_kb" >>"$tmp/r"
    echo "$c_cut" >>"$tmp/cc"; echo "$c_tgt" >>"$tmp/ct"
    # The work of each copy in CPU seconds, whatever the machine's load: cutover's run
    # (cutover, targets, masters) over the native one (replicas, masters).
    echo "($c_cut + $c_tgt + $c_mst) / ($n_rep + $n_mst)" | bc -l >>"$tmp/cx"
    printf 'round %d: native slowest %.2f s (fastest %.2f s), cutover %.2f s (%.2fx), peak RSS %d MB\n' \
      "$r" "$native" "$native_fast" "$cut" "$(ratio "$cut" "$native")" $((rss_kb / 1024))
    echo "  CPU: native: $native_cpu; cutover run: $cut_cpu"
  done
  local mn mc mr x mbs kps mcc mct mcx
  mn=$(median <"$tmp/n"); mc=$(median <"$tmp/c"); mr=$(sort -g "$tmp/r" | tail -1)
  mcc=$(median <"$tmp/cc"); mct=$(median <"$tmp/ct"); mcx=$(median <"$tmp/cx")
  x=$(ratio "$mc" "$mn")
  mbs=$(echo "$rdb_bytes / 1048576 / $mc" | bc -l)
  kps=$(echo "$total_keys / $mc" | bc -l)
  printf 'median: native %.2f s, cutover %.2f s, ratio %.2fx; %.1f MB/s of RDB, %.0f keys/s, %.1f MB/s per source shard; peak RSS max %d MB\n' \
    "$mn" "$mc" "$x" "$mbs" "$kps" "$(echo "$mbs / ${#masters[@]}" | bc -l)" $((mr / 1024))
  printf 'median CPU: cutover %.2f s (%.1f ms per MB of RDB), targets %.2f s (%.1f ms per MB); CPU ratio %.2fx\n\n' \
    "$mcc" "$(echo "$mcc * 1000 / ($rdb_bytes / 1048576)" | bc -l)" "$mct" \
    "$(echo "$mct * 1000 / ($rdb_bytes / 1048576)" | bc -l)" "$mcx"
  rows+=("$(printf '%s\t%.2f\t%.2f\t%.2f\t%.1f\t%.0f\t%.1f\t%d\t%.2f / %.2f\t%.2f' "$label" "$mn" "$mc" "$x" "$mbs" "$kps" \
    "$(echo "$mbs / ${#masters[@]}" | bc -l)" $((mr / 1024)) "$mcc" "$mct" "$mcx")")
}

src3=()
scaled3=""
for part in $PARTS; do
  case $part in
    pairs)
      start_cluster "$SOURCE" "$SOURCE_MASTERS" --repl-diskless-sync yes --repl-diskless-sync-delay 0 \
        --repl-backlog-size 64mb
      src3=("${cluster[@]}")
      fill_source
      for tb in $TARGETS; do
        measure "$SOURCE_MASTERS x $SOURCE -> $TARGET_MASTERS x $tb" "$tb" "${src3[@]}"
        if [ "$tb" = redis-7.0 ]; then scaled3=${rows[-1]}; fi
      done
      stop_servers "${src3[@]}"
      ;;
    scaling)
      for k in $SCALING; do
        if [ "$k" = "$SOURCE_MASTERS" ] && [ -n "$scaled3" ]; then
          echo "## scaling: $k source masters: the pairs' $SOURCE -> redis-7.0 run above"
          rows+=("scaling $k: the pairs' $SOURCE -> redis-7.0"$'\t'"$(cut -f2- <<<"$scaled3")")
          continue
        fi
        start_cluster "$SOURCE" "$k" --repl-diskless-sync yes --repl-diskless-sync-delay 0 \
          --repl-backlog-size 64mb
        local_src=("${cluster[@]}")
        fill_source
        measure "scaling $k: $k x $SOURCE -> $TARGET_MASTERS x redis-7.0" redis-7.0 "${local_src[@]}"
        stop_servers "${local_src[@]}"
      done
      ;;
    *) die "unknown part $part (pairs, scaling)" ;;
  esac
done

echo "# summary (paste into bench/RESULTS.md); ratio = cutover / slowest native replica;"
echo "# targets: <= 1.5x same version, <= 2x cross-version, peak RSS <= 256 MB"
echo
echo "# CPU: cutover's and the targets' CPU seconds (medians); CPU ratio = CPU seconds of the"
echo "# cutover run (cutover + targets + masters) / of the native one (replicas + masters)"
echo
echo "| run | native floor (s) | cutover (s) | ratio | MB/s of RDB | keys/s | MB/s per source shard | peak RSS (MB) | CPU s cutover / targets | CPU ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  IFS=$'\t' read -r a b c d e f g h i j <<<"$row"
  echo "| $a | $b | $c | ${d}x | $e | $f | $g | $h | $i | ${j}x |"
done
