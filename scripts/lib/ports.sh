# Sourced by the benchmark scripts (bash): free loopback ports, and a wait for a port to
# listen. The caller defines `die` (and `tmp`, named in messages).

free_ports() { # <n>: n distinct free loopback ports (never 6379), on one line
  python3 - "$1" <<'PY'
import socket, sys
socks, ports = [], []
while len(ports) < int(sys.argv[1]):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    p = s.getsockname()[1]
    if p != 6379:
        ports.append(p)
print(*ports)
PY
}

wait_port() { # <port> <pid> <what>: up to 10 s for the port to accept a connection
  for _ in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (logs in $tmp)"
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$3 did not listen on $1"
}
