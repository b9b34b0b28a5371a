#!/usr/bin/env bash
# The whole story on one machine, with real servers, in about a minute:
#   a Valkey 9.1 "source" with sample data, a Redis 7.0 "target" (an older server: Valkey's
#   payloads are refused by it and get converted), the cutover proxy in front, four clients
#   writing the same keys through the proxy (counting what they saw acknowledged), then
#   full sync -> switch -> rollback -> switch -> verify -> finish, with the overlap's reverse
#   link (the old side replicates the new primary) shown after every move,
# printing a timeline with the pause of every move, and at the end the acknowledged writes
# against what the final primary holds.
# Installs the servers and builds cutover itself. Everything runs on 127.0.0.1 (free ports) and
# is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-servers.sh
echo "== building cutover (release)"
cargo build --release -q
bin=.servers/bin
cutover=target/release/cutover
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

t0=$(date +%s.%N)
say() { printf '[%6.2f s] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do "$bin/redis-cli" -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "port $1 did not come up" >&2; exit 1; }

src_port=$(free_port); dst_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port); metrics_port=$(free_port)
"$bin/valkey-9.1-server" --port "$src_port" --save '' --appendonly no --repl-diskless-sync-delay 0 \
  --enable-debug-command local --dir "$work" --logfile "$work/source.log" & pids+=($!)
# (repl-diskless-sync-delay 0: cutover's reverse link, a replica of the target, gets its first
# snapshot at once instead of after Redis' default 5 s.)
"$bin/redis-7.0-server" --port "$dst_port" --save '' --appendonly no --repl-diskless-sync-delay 0 \
  --dir "$work" --logfile "$work/target.log" & pids+=($!)
wait_port "$src_port"; wait_port "$dst_port"
src() { "$bin/redis-cli" -p "$src_port" "$@"; }
dst() { "$bin/redis-cli" -p "$dst_port" "$@"; }
src DEBUG POPULATE 100000 sample 100 >/dev/null
src HSET user:1 name ada lang en >/dev/null
src RPUSH jobs a b c >/dev/null
src ZADD board 10 ada 20 bob >/dev/null
src XADD events '*' kind signup >/dev/null
say "source: Valkey 9.1 on $src_port with $(src DBSIZE) keys; target: Redis 7.0 on $dst_port (empty)"

cat > "$work/cutover.toml" <<TOML
[proxy]
listen = "127.0.0.1:$proxy_port"
[source]
url = "redis://127.0.0.1:$src_port"
[target]
url = "redis://127.0.0.1:$dst_port"
[admin]
listen = "127.0.0.1:$admin_port"
[metrics]
listen = "127.0.0.1:$metrics_port"
TOML
CUTOVER_LOG=warn "$cutover" run --config "$work/cutover.toml" & pids+=($!)
wait_port "$proxy_port"
say "cutover proxy on $proxy_port (admin $admin_port, metrics $metrics_port); applications talk to it from now on"

# The client load: four clients write the SAME keys through the proxy (INCR a shared counter,
# RPUSH unique values to a shared list, APPEND to a shared log, an EVAL that does both), two
# of them on their own backend connection (after CLIENT SETNAME) and two on the shared one,
# counting what the proxy acknowledged. Stops when $work/stop appears (or after 120 s).
cat > "$work/load.py" <<'PY'
import os, socket, sys, threading, time
port, stopfile, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
totals = {"incr": 0, "pushed": 0, "errors": 0}
def client(n):
    s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
    def cmd(*args):
        s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args)))
        line = f.readline()
        if line.startswith(b"-"):
            raise RuntimeError(line.decode().strip())
        if line.startswith(b"$") and line[1:2] != b"-":
            f.read(int(line[1:]) + 2)
        return line
    if n % 2 == 0:
        cmd("CLIENT", "SETNAME", "demo-%d" % n)
    incr = pushed = errors = i = 0
    start = time.time()
    while not os.path.exists(stopfile) and time.time() - start < 120:
        i += 1
        try:
            cmd("INCR", "demo:counter"); incr += 1
            cmd("RPUSH", "demo:list", "%d:%d" % (n, i)); pushed += 1
            cmd("APPEND", "demo:log", "%d:%d," % (n, i))
            cmd("EVAL", "redis.call('INCR', KEYS[1]); return redis.call('RPUSH', KEYS[2], ARGV[1])", "2", "demo:counter", "demo:list", "s%d:%d" % (n, i))
            incr += 1; pushed += 1
            cmd("SETEX", "demo:session:%d" % n, "300", str(i))
        except Exception as e:
            errors += 1
            print("load: error:", e, file=sys.stderr)
        time.sleep(0.002)
    with lock:
        totals["incr"] += incr; totals["pushed"] += pushed; totals["errors"] += errors
threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
open(out, "w").write("%d %d %d\n" % (totals["incr"], totals["pushed"], totals["errors"]))
PY
python3 "$work/load.py" "$proxy_port" "$work/stop" "$work/load.out" & load_pid=$!
say "client load started: 4 clients on the same keys (INCR demo:counter, RPUSH demo:list, APPEND demo:log, EVAL, SETEX) through the proxy"

status_field() { "$cutover" status --config "$work/cutover.toml" --json | python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
for _ in $(seq 600); do
  [ "$(status_field "['phase']")" = streaming ] && [ "$(status_field "['lag_bytes']")" = 0 ] && break
  sleep 0.1
done
say "full sync done: phase $(status_field "['phase']"), $(status_field "['sync']['keys_done']") keys copied, lag $(status_field "['lag_bytes']") bytes"

move() {
  local out
  if ! out=$("$cutover" "$1" --config "$work/cutover.toml" --json); then
    say "cutover $1 FAILED"; exit 1
  fi
  say "cutover $1: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("the %s stays the primary; the overlap stopped, the other side is detached and cutover'"'"'s keys are removed" % d["primary"] if d["action"] == "finish" else "the %s is the primary now; commands were held %.2f ms" % (d["primary"], d["pause_ms"]))')"
}
links() { # the overlap's two links, one line each
  "$cutover" status --config "$work/cutover.toml" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("overlap: %s; rollback safe: %s" % (d["cutover"]["overlap"], d["rollback_safe"]))
for l in d["cutover"]["links"] or []:
    print("    %s link %-9s offset %d applied, lag %d bytes / %d ms" % (l["direction"], l["role"], l["applied_offset"], l["lag_bytes"], l["lag_ms"]))'
}
sleep 1
move switch
sleep 1
say "while overlapping: demo:counter on the source (a replica now)=$(src GET demo:counter), a moment later on the target (the primary)=$(dst GET demo:counter); $(links)"
move rollback
sleep 1
say "after the rollback: $(links)"
move switch
sleep 1
say "after the second switch: $(links)"
if "$cutover" verify --help >/dev/null 2>&1; then
  touch "$work/stop"; wait "$load_pid" || true
  sleep 0.5
  if "$cutover" verify --source "redis://127.0.0.1:$src_port" --target "redis://127.0.0.1:$dst_port" --rounds 2 > "$work/verify.out" 2>&1; then
    say "cutover verify: source and target are equal ($(tail -n 1 "$work/verify.out"))"
  else
    say "cutover verify found differences:"; cat "$work/verify.out"
  fi
fi
move finish
touch "$work/stop"; wait "$load_pid" || true
read -r incr pushed errors < "$work/load.out"
say "load: $incr INCR and $pushed RPUSH acknowledged, $errors errors seen by the client"
say "final primary (target, Redis 7.0): demo:counter=$(dst GET demo:counter), LLEN demo:list=$(dst LLEN demo:list), user:1 name=$(dst HGET user:1 name), DBSIZE=$(dst DBSIZE)"
if [ "$(dst GET demo:counter)" = "$incr" ] && [ "$(dst LLEN demo:list)" = "$pushed" ] && [ "$errors" = 0 ]; then
  say "every acknowledged write is on the target exactly once; no client error, no dropped connection"
else
  say "MISMATCH between acknowledged writes and the target"; exit 1
fi
echo "== cutover status"
"$cutover" status --config "$work/cutover.toml"
