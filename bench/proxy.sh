#!/usr/bin/env bash
# Proxy throughput benchmark: redis-benchmark against one Redis 7.0 server directly, through
# twemproxy (nutcracker) and through cutover, alternating the targets in every round, plus
# cutover's resident memory with 1,000 idle client connections and after the load.
#
#   bash bench/proxy.sh                # 7 rounds
#   ROUNDS=3 bash bench/proxy.sh
#
# Environment: ROUNDS (default 7), N_P1 / N_P16 (requests per test per run; defaults 600000 /
# 3000000, each test ~1.5-4 s on a 2-core machine), CLIENTS (default 50), IDLE_CONNS (1000),
# SKIP_BUILD=1 (use target/release/cutover as it is), METRICS=0 (no metrics listener; it is on
# by default, as deployed), TLS=0 (skip the TLS run), TLS_ONLY=1 (only the TLS run),
# TLS_ROUNDS (default ROUNDS).
#
# The TLS run (issue 14): redis-benchmark --tls straight to a TLS-only Redis 7.0 vs through
# cutover with TLS on both hops (its TLS listener, rediss:// to the server), alternating in
# every round; certificates made with openssl in the temporary folder. Target: >= 0.85x direct
# TLS at P16.
# Needs scripts/install-servers.sh to have run. Everything listens on 127.0.0.1 (free ports).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.servers/bin"
ROUNDS=${ROUNDS:-7}
N_P1=${N_P1:-600000}
N_P16=${N_P16:-3000000}
CLIENTS=${CLIENTS:-50}
IDLE_CONNS=${IDLE_CONNS:-1000}
RSS_TARGET_MB=64

die() { echo "bench/proxy.sh: $*" >&2; exit 2; }
TLS=${TLS:-1}
TLS_ONLY=${TLS_ONLY:-0}
[ "$TLS_ONLY" = 1 ] && TLS=1
TLS_ROUNDS=${TLS_ROUNDS:-$ROUNDS}
for b in redis-7.0-server redis-cli redis-benchmark nutcracker; do
  [ -x "$bin/$b" ] || die "$bin/$b missing: run scripts/install-servers.sh first"
done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"

t_begin=$(date +%s)
echo "# cutover proxy benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# command: ROUNDS=$ROUNDS N_P1=$N_P1 N_P16=$N_P16 CLIENTS=$CLIENTS IDLE_CONNS=$IDLE_CONNS METRICS=${METRICS:-1} TLS=$TLS TLS_ONLY=$TLS_ONLY TLS_ROUNDS=$TLS_ROUNDS bash bench/proxy.sh${*:+ $*}"

# ---- processes: every one started here is killed on exit ------------------------------------
# shellcheck source=../scripts/lib/processes.sh
source "$root/scripts/lib/processes.sh"
tmp=$(mktemp -d /tmp/cutover-bench.XXXXXX)

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release --quiet) || die "cargo build --release failed"
fi
cutover="$root/target/release/cutover"
[ -x "$cutover" ] || die "$cutover missing"
# Benchmark a copy: a concurrent `cargo build` must not swap the binary under the run.
cp "$cutover" "$tmp/cutover"

# 1000 client sockets plus 1000 backend sockets for the proxy, and as many for the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((2 * IDLE_CONNS + 200)) ] ||
  die "open-file limit $(ulimit -n) is too low for $IDLE_CONNS idle connections"

# shellcheck source=../scripts/lib/ports.sh
source "$root/scripts/lib/ports.sh"
read -r p_redis p_twem p_twem_stats p_cutover p_metrics <<<"$(free_ports 5)"


"$bin/redis-7.0-server" --port "$p_redis" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients $((IDLE_CONNS * 2 + 1000)) --dir "$tmp" --logfile "$tmp/redis.log" &
redis_pid=$!; pids+=("$redis_pid")
wait_port "$p_redis" "$redis_pid" redis

cat >"$tmp/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$p_twem
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  timeout: 10000
  servers:
   - 127.0.0.1:$p_redis:1
EOF
"$bin/nutcracker" -c "$tmp/nutcracker.yml" -o "$tmp/nutcracker.log" -a 127.0.0.1 -s "$p_twem_stats" &
twem_pid=$!; pids+=("$twem_pid")
wait_port "$p_twem" "$twem_pid" nutcracker

# Metrics on by default (as deployed: every command is counted and timed); METRICS=0 turns
# the listener off.
METRICS_FLAG=()
[ "${METRICS:-1}" = 0 ] || METRICS_FLAG=(--metrics-listen "127.0.0.1:$p_metrics")
CUTOVER_LOG=${CUTOVER_LOG:-warn} "$tmp/cutover" run --source "redis://127.0.0.1:$p_redis" \
  --proxy-listen "127.0.0.1:$p_cutover" ${METRICS_FLAG[@]+"${METRICS_FLAG[@]}"} >"$tmp/cutover.log" 2>&1 &
cutover_pid=$!; pids+=("$cutover_pid")
wait_port "$p_cutover" "$cutover_pid" cutover
[ "$("$bin/redis-cli" -h 127.0.0.1 -p "$p_cutover" ping)" = PONG ] || die "no PONG through cutover"
[ "$("$bin/redis-cli" -h 127.0.0.1 -p "$p_twem" set bench:probe 1)" = OK ] || die "no OK through twemproxy"

echo "# machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $(uname -sr)"
echo "# redis: $("$bin/redis-7.0-server" --version | awk '{print $3}'), twemproxy: $("$bin/nutcracker" --version 2>&1 | head -n1 | awk '{print $NF}'), cutover: $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?')"
echo "# ports: redis $p_redis, twemproxy $p_twem, cutover $p_cutover; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# per run: $bin/redis-benchmark -h 127.0.0.1 -p PORT -t set,get -c $CLIENTS -n N -P P --csv"
echo "#          with P=1 N=$N_P1 and P=16 N=$N_P16; $ROUNDS rounds, target order rotated each round"
echo

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}'; }

# Opens IDLE_CONNS connections to a proxy, each sends PING and reads +PONG, then (all still
# open and idle) reads the proxy's VmRSS; prints "<rss kB> <backend clients>".
idle_rss() { # <proxy port> <proxy pid>
  python3 - "$1" "$2" "$IDLE_CONNS" "$p_redis" <<'PY'
import socket, sys, time
port, pid, n, redis_port = map(int, sys.argv[1:])
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
def server_clients():
    with socket.create_connection(("127.0.0.1", redis_port), timeout=10) as d:
        d.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
        info = b""
        while b"connected_clients:" not in info or not info.endswith(b"\r\n"):
            chunk = d.recv(4096)
            if not chunk:
                break
            info += chunk
    return int(info.split(b"connected_clients:")[1].split(b"\r\n")[0])
before = server_clients()
conns = []
deadline = time.time() + 60
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    conns.append(s)
for s in conns:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk or time.time() > deadline:
            sys.exit("connection closed or too slow before +PONG")
        buf += chunk
    if buf != b"+PONG\r\n":
        sys.exit(f"unexpected reply {buf!r}")
time.sleep(1.0)
r = rss()
backends = server_clients() - before
for s in conns:
    s.close()
print(r, backends)
PY
}

if [ "$TLS_ONLY" != 1 ]; then
rss_fresh=$(rss_kb "$cutover_pid")
read -r rss_idle backend_idle <<<"$(idle_rss "$p_cutover" "$cutover_pid")"
read -r twem_idle _ <<<"$(idle_rss "$p_twem" "$twem_pid")"
sleep 1

# ---- throughput ----------------------------------------------------------------------------
targets=(direct twemproxy cutover)
declare -A port=([direct]=$p_redis [twemproxy]=$p_twem [cutover]=$p_cutover)
results="$tmp/results.tsv"
: >"$results"
t0=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for P in 1 16; do
    n=$N_P1; [ "$P" = 16 ] && n=$N_P16
    for i in 0 1 2; do
      t=${targets[$(( (i + round - 1) % 3 ))]}
      csv=$(timeout 300 "$bin/redis-benchmark" -h 127.0.0.1 -p "${port[$t]}" -t set,get \
              -c "$CLIENTS" -n "$n" -P "$P" --csv 2>/dev/null) || die "redis-benchmark against $t failed"
      for test in SET GET; do
        rps=$(awk -F'"' -v t="$test" '$2 == t {print $4}' <<<"$csv")
        [ -n "$rps" ] || die "no $test result from redis-benchmark against $t: $csv"
        printf '%s\t%s P%s\t%s\t%s\n' "$round" "$test" "$P" "$t" "$rps" >>"$results"
      done
    done
  done
  printf '# round %d/%d done (%ds)\n' "$round" "$ROUNDS" $(( $(date +%s) - t0 ))
done
echo

python3 - "$results" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = {}
for _round, test, target, rps in rows:
    data.setdefault((test, target), []).append(float(rps))
tests = ["SET P1", "GET P1", "SET P16", "GET P16"]
med = {k: statistics.median(v) for k, v in data.items()}
spread = {k: (max(v) - min(v)) / statistics.median(v) * 100 for k, v in data.items()}
print("median requests/s over %d rounds (spread = (max-min)/median)" % len(next(iter(data.values()))))
hdr = "%-8s %12s %12s %12s   %10s %12s %12s" % (
    "test", "direct", "twemproxy", "cutover", "cut/direct", "twem/direct", "cut/twem")
print(hdr)
print("-" * len(hdr))
for t in tests:
    d, w, c = med[(t, "direct")], med[(t, "twemproxy")], med[(t, "cutover")]
    print("%-8s %12.0f %12.0f %12.0f   %10.2f %12.2f %12.2f" % (t, d, w, c, c / d, w / d, c / w))
print()
print("spread   " + "   ".join(
    "%s: %s" % (t, "/".join("%.0f%%" % spread[(t, x)] for x in ("direct", "twemproxy", "cutover")))
    for t in tests) + "   (direct/twemproxy/cutover)")
print()
print("all runs, requests/s in round order")
for t in tests:
    for x in ("direct", "twemproxy", "cutover"):
        print("  %-8s %-10s %s" % (t, x, " ".join("%9.0f" % v for v in data[(t, x)])))
PY

rss_after=$(rss_kb "$cutover_pid")
hwm_after=$(hwm_kb "$cutover_pid")
read -r rss_idle_after _ <<<"$(idle_rss "$p_cutover" "$cutover_pid")"
verdict="within"; [ "$rss_idle" -le $((RSS_TARGET_MB * 1024)) ] || verdict="OVER"
echo
echo "cutover memory (VmRSS of the proxy process)"
printf '  %-44s %9s\n' "fresh, no clients:" "$(mb "$rss_fresh")"
printf '  %-44s %9s   (%s the %d MB target; server connections added: %s)\n' \
  "$IDLE_CONNS idle clients (each sent PING):" "$(mb "$rss_idle")" "$verdict" "$RSS_TARGET_MB" "$backend_idle"
printf '  %-44s %9s   (peak VmHWM %s)\n' "after the benchmark load, no clients:" "$(mb "$rss_after")" "$(mb "$hwm_after")"
printf '  %-44s %9s\n' "$IDLE_CONNS idle clients, after the load:" "$(mb "$rss_idle_after")"
printf '  %-44s %9s\n' "(twemproxy, $IDLE_CONNS idle clients:" "$(mb "$twem_idle"))"
fi # TLS_ONLY

# ---- TLS: direct TLS vs cutover with TLS on both hops ----------------------------------------
if [ "$TLS" = 1 ]; then
  command -v openssl >/dev/null || die "openssl is needed for the TLS run's certificates (or TLS=0)"
  (
    cd "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cutover bench CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out server.pem 2>/dev/null
  ) || die "openssl could not make the certificates"
  read -r p_tls_redis p_tls_cutover p_tls_plain <<<"$(free_ports 3)"
  "$bin/redis-7.0-server" --port 0 --tls-port "$p_tls_redis" --bind 127.0.0.1 --save '' \
    --appendonly no --tls-cert-file "$tmp/server.pem" --tls-key-file "$tmp/server.key" \
    --tls-ca-cert-file "$tmp/ca.pem" --tls-auth-clients no --dir "$tmp" --logfile "$tmp/redis-tls.log" &
  tls_redis_pid=$!; pids+=("$tls_redis_pid")
  wait_port "$p_tls_redis" "$tls_redis_pid" "redis (TLS)"
  CUTOVER_LOG=${CUTOVER_LOG:-warn} "$tmp/cutover" run \
    --source "rediss://127.0.0.1:$p_tls_redis" --source-tls-ca-file "$tmp/ca.pem" \
    --proxy-listen "127.0.0.1:$p_tls_plain" --proxy-tls-listen "127.0.0.1:$p_tls_cutover" \
    --proxy-tls-cert "$tmp/server.pem" --proxy-tls-key "$tmp/server.key" \
    >"$tmp/cutover-tls.log" 2>&1 &
  tls_cutover_pid=$!; pids+=("$tls_cutover_pid")
  wait_port "$p_tls_cutover" "$tls_cutover_pid" "cutover (TLS)"
  tls_cli=("$bin/redis-cli" --tls --cacert "$tmp/ca.pem" -h 127.0.0.1)
  [ "$("${tls_cli[@]}" -p "$p_tls_cutover" ping 2>&1)" = PONG ] ||
    die "no PONG through cutover over TLS (both hops): $(tail -n 5 "$tmp/cutover-tls.log")"
  echo
  echo "# TLS: redis $p_tls_redis (tls-port only), cutover TLS listener $p_tls_cutover -> rediss://127.0.0.1:$p_tls_redis"
  echo "# per run: redis-benchmark --tls --cacert ca.pem -h 127.0.0.1 -p PORT -t set,get -c $CLIENTS -n N -P P --csv; $TLS_ROUNDS rounds"
  tls_results="$tmp/results-tls.tsv"
  : >"$tls_results"
  declare -A tls_port=([direct]=$p_tls_redis [cutover]=$p_tls_cutover)
  tls_targets=(direct cutover)
  t0=$(date +%s)
  for round in $(seq 1 "$TLS_ROUNDS"); do
    for P in 1 16; do
      n=$N_P1; [ "$P" = 16 ] && n=$N_P16
      for i in 0 1; do
        t=${tls_targets[$(( (i + round - 1) % 2 ))]}
        csv=$(timeout 300 "$bin/redis-benchmark" --tls --cacert "$tmp/ca.pem" -h 127.0.0.1 \
                -p "${tls_port[$t]}" -t set,get -c "$CLIENTS" -n "$n" -P "$P" --csv 2>/dev/null) ||
          die "redis-benchmark --tls against $t failed"
        for test in SET GET; do
          rps=$(awk -F'"' -v t="$test" '$2 == t {print $4}' <<<"$csv")
          [ -n "$rps" ] || die "no $test result from redis-benchmark --tls against $t: $csv"
          printf '%s\t%s P%s\t%s\t%s\n' "$round" "$test" "$P" "$t" "$rps" >>"$tls_results"
        done
      done
    done
    printf '# TLS round %d/%d done (%ds)\n' "$round" "$TLS_ROUNDS" $(( $(date +%s) - t0 ))
  done
  echo
  python3 - "$tls_results" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = {}
for _round, test, target, rps in rows:
    data.setdefault((test, target), []).append(float(rps))
med = {k: statistics.median(v) for k, v in data.items()}
print("TLS, median requests/s over %d rounds (direct TLS vs cutover with TLS on both hops)"
      % len(next(iter(data.values()))))
hdr = "%-8s %12s %12s   %10s" % ("test", "direct TLS", "cutover TLS", "cut/direct")
print(hdr)
print("-" * len(hdr))
for t in ["SET P1", "GET P1", "SET P16", "GET P16"]:
    d, c = med[(t, "direct")], med[(t, "cutover")]
    print("%-8s %12.0f %12.0f   %10.2f" % (t, d, c, c / d))
print("(target: >= 0.85 at P16)")
print("all runs, requests/s in round order")
for t in ["SET P1", "GET P1", "SET P16", "GET P16"]:
    for x in ("direct", "cutover"):
        print("  %-8s %-8s %s" % (t, x, " ".join("%9.0f" % v for v in data[(t, x)])))
PY
fi
echo "# total $(( $(date +%s) - t_begin ))s"
