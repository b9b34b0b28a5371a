#!/usr/bin/env bash
# The whole story on one machine, with real servers, in about a minute:
#   a Valkey 9.1 "source" with sample data, a Redis 7.0 "target" (an older server: Valkey's
#   payloads are refused by it and get converted), the cutover proxy in front, a small client
#   load through the proxy that counts what it saw acknowledged, then
#   full sync -> switch -> rollback -> switch -> verify -> finish,
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
"$bin/redis-7.0-server" --port "$dst_port" --save '' --appendonly no --dir "$work" --logfile "$work/target.log" & pids+=($!)
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

# The client load: INCR a counter and RPUSH unique values through the proxy, ~2,000 writes/s,
# counting what the proxy acknowledged. Stops when $work/stop appears (or after 120 s).
cat > "$work/load.py" <<'PY'
import os, socket, sys, time
port, stopfile, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
def cmd(*args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args)))
    line = f.readline()
    if line.startswith(b"-"):
        raise RuntimeError(line.decode().strip())
    if line.startswith(b"$") and line[1:2] != b"-":
        f.read(int(line[1:]) + 2)
    return line
incr = pushed = errors = 0
start = time.time()
while not os.path.exists(stopfile) and time.time() - start < 120:
    try:
        cmd("INCR", "demo:counter"); incr += 1
        cmd("RPUSH", "demo:list", str(pushed)); pushed += 1
        cmd("SETEX", "demo:session", "300", str(incr))
    except Exception as e:
        errors += 1
        print("load: error:", e, file=sys.stderr)
    time.sleep(0.001)
open(out, "w").write(f"{incr} {pushed} {errors}\n")
PY
python3 "$work/load.py" "$proxy_port" "$work/stop" "$work/load.out" & load_pid=$!
say "client load started (INCR demo:counter, RPUSH demo:list, SETEX demo:session through the proxy)"

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
  say "cutover $1: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("the %s stays the primary; shadowing stopped after %d writes, the other side is detached" % (d["primary"], d["shadow_writes"]) if d["action"] == "finish" else "the %s is the primary now; commands were held %.2f ms" % (d["primary"], d["pause_ms"]))')"
}
sleep 1
move switch
sleep 1
say "while shadowing: demo:counter source (shadow)=$(src GET demo:counter) target (primary)=$(dst GET demo:counter) (shadow queue $(status_field "['shadow_queue']"), rollback safe: $(status_field "['rollback_safe']"))"
move rollback
sleep 1
move switch
sleep 1
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
