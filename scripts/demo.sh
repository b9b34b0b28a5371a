#!/usr/bin/env bash
# A one-minute local demo on a fresh machine: installs the real servers, builds cutover,
# starts a Valkey 9.1 "source" and a Redis 7.0 "target", puts the cutover proxy in front and
# drives traffic through it while cutover copies the source into the target in the background
# (a downgrade: Valkey's payloads are refused by Redis 7.0 and get converted), then shows
# `cutover status`, the target's copy and the Prometheus metrics.
# Everything runs on 127.0.0.1 and is stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-servers.sh
echo "== building cutover (release)"
cargo build --release -q
bin=.servers/bin
cutover=target/release/cutover
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do "$bin/redis-cli" -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "port $1 did not come up" >&2; exit 1; }

src_port=$(free_port); dst_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port); metrics_port=$(free_port)
"$bin/valkey-9.1-server" --port "$src_port" --save '' --appendonly no --repl-diskless-sync-delay 0 --dir "$work" --logfile "$work/source.log" & pids+=($!)
"$bin/redis-7.0-server" --port "$dst_port" --save '' --appendonly no --dir "$work" --logfile "$work/target.log" & pids+=($!)
wait_port "$src_port"; wait_port "$dst_port"
echo "== source: Valkey 9.1 on $src_port, target: Redis 7.0 on $dst_port"

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
echo "== cutover proxy on $proxy_port (admin $admin_port, metrics $metrics_port)"

cli() { "$bin/redis-cli" -p "$proxy_port" "$@"; }
echo "== a few commands through the proxy"
echo "\$ SET greeting hello      -> $(cli SET greeting hello)"
echo "\$ GET greeting            -> $(cli GET greeting)"
echo "\$ INCR visits (x3)        -> $(cli INCR visits >/dev/null; cli INCR visits >/dev/null; cli INCR visits)"
echo "\$ INFO server (via proxy) -> $(cli INFO server | grep -E '^(valkey|redis)_version' | tr -d '\r')"
echo "\$ MULTI/INCR/EXEC         -> $(printf 'MULTI\nINCR visits\nEXEC\n' | cli | tr '\n' ' ')"
echo "== load: redis-benchmark, 50 clients, SET/GET/INCR/LPUSH through the proxy"
"$bin/redis-benchmark" -p "$proxy_port" -c 50 -n 20000 -t set,get,incr,lpush -q | tr "\r" "\n" | grep "requests per second" || true
echo "== waiting for the background sync to stream"
for _ in $(seq 100); do
  "$cutover" status --config "$work/cutover.toml" --json | grep -q '"phase":"streaming"' && break
  sleep 0.1
done
"$bin/redis-cli" -p "$proxy_port" SET written-through-the-proxy "$(date +%s)" >/dev/null
sleep 0.5
echo "\$ GET greeting on the target (Redis 7.0)                   -> $("$bin/redis-cli" -p "$dst_port" GET greeting)"
echo "\$ GET written-through-the-proxy on the target               -> $("$bin/redis-cli" -p "$dst_port" GET written-through-the-proxy)"
echo "\$ DBSIZE source / target                                     -> $("$bin/redis-cli" -p "$src_port" DBSIZE) / $("$bin/redis-cli" -p "$dst_port" DBSIZE) (the target also holds cutover:position)"
echo "== cutover status"
"$cutover" status --config "$work/cutover.toml"
echo "== cutover status --json"
"$cutover" status --config "$work/cutover.toml" --json
echo "== metrics (excerpt of http://127.0.0.1:$metrics_port/metrics)"
python3 - "$metrics_port" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("cutover_commands_total{command=\"set\"", "cutover_commands_total{command=\"get\"",
                        "cutover_client_connections_total", "cutover_client_bytes_in_total",
                        "cutover_command_duration_seconds_count{command=\"get\"", "cutover_sync_")):
        print("  " + line)
PY
echo "== done: clients used the source through the proxy while the target was kept in sync; switch/rollback arrive in a later release"
