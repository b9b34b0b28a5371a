#!/usr/bin/env bash
# Cutover benchmark (issues 4 and 11): what clients see while `cutover switch` / `rollback` /
# `switch` run under a paced 20,000 ops/s load through the proxy, the proxy's throughput while
# the old side is kept in step (the overlap: OVERLAP=replica, the default, or shadow) against
# proxy-only and direct Redis in the same run, and the overlap's replication lag at LAG_RATE
# writes/s.
#
#   bash bench/cutover.sh                  # 5 rounds, Redis 7.0 -> 7.0 and Valkey 9.1 -> Redis 7.0
#   ROUNDS=3 PAIRS=redis-7.0:redis-7.0 bash bench/cutover.sh
#
# Every round of every pair starts fresh servers and a fresh `cutover run`:
#   1. source (--repl-diskless-sync-delay 0 --save ''), target, and a third Redis 7.0 as the
#      direct reference; cutover run; wait for `phase: streaming`, lag 0;
#   2. throughput, proxy-only: redis-benchmark -t set,incr -c CLIENTS -P 1 (and -P 16) against
#      the reference directly and through the proxy (sync streaming into the target), order
#      rotated per round;
#   3. latency: target/release/deps/cutover_load (bench/cutover_load.rs) paces CONNS
#      connections to RATE ops/s (SET/INCR/GET, pipeline 1) through the proxy and runs
#      `cutover switch`, `rollback`, `switch` WARMUP, then every GAP seconds; per move the
#      p99/max latency of the ops in flight while the CLI ran, the barrier's pause_ms, errors;
#      then it checks that source and target both hold what the clients were last told;
#   4. throughput while overlapping (target primary; the reverse link replicates it into the
#      source, or every write is shadowed there), then direct again;
#   5. overlap lag: cutover_load --moves none --mix writes paces LAG_RATE writes/s (SET/INCR)
#      through the proxy for LAG_SECS while a probe writes a key every 2 ms and times how long
#      it takes to appear on the old side (p50/p99/max);
#   6. `cutover finish`; throughput through the proxy after finish (no overlap, no sync: the
#      proxy alone).
# Then medians over the rounds, the ratios, and a verdict per target (pause <= 10 ms, 0 errors,
# overlap/proxy throughput >= 0.95, overlap lag p99 <= 5 ms).
#
# Environment: ROUNDS (5), PAIRS ("redis-7.0:redis-7.0 valkey-9.1:redis-7.0"), RATE (20000),
# CONNS (32), WARMUP (2), GAP (2), N_P1 (100000 requests per test), N_P16 (1000000; 0 = skip
# P16), CLIENTS (50), PAUSE_TARGET_MS (10), OVERLAP (replica), LAG_RATE (50000), LAG_SECS (5;
# 0 = skip), SKIP_BUILD=1 (use the built binaries as they are).
# Needs scripts/install-servers.sh to have run. Everything listens on 127.0.0.1 (free ports),
# every load is bounded in count and time, and every process started here is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.servers/bin"
ROUNDS=${ROUNDS:-5}
PAIRS=${PAIRS:-"redis-7.0:redis-7.0 valkey-9.1:redis-7.0"}
RATE=${RATE:-20000}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
GAP=${GAP:-2}
N_P1=${N_P1:-100000}
N_P16=${N_P16:-1000000}
CLIENTS=${CLIENTS:-50}
PAUSE_TARGET_MS=${PAUSE_TARGET_MS:-10}
OVERLAP=${OVERLAP:-replica}
LAG_RATE=${LAG_RATE:-50000}
LAG_SECS=${LAG_SECS:-5}

die() { echo "bench/cutover.sh: $*" >&2; exit 2; }
for b in redis-7.0-server redis-cli redis-benchmark; do
  [ -x "$bin/$b" ] || die "$bin/$b missing: run scripts/install-servers.sh first"
done
for pair in $PAIRS; do
  for v in ${pair%%:*} ${pair##*:}; do
    [ -x "$bin/$v-server" ] || die "$bin/$v-server missing (pair $pair)"
  done
done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"

t_begin=$(date +%s)
echo "# cutover switch/rollback benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# command: ROUNDS=$ROUNDS PAIRS=\"$PAIRS\" RATE=$RATE CONNS=$CONNS WARMUP=$WARMUP GAP=$GAP N_P1=$N_P1 N_P16=$N_P16 CLIENTS=$CLIENTS OVERLAP=$OVERLAP LAG_RATE=$LAG_RATE LAG_SECS=$LAG_SECS bash bench/cutover.sh${*:+ $*}"

# ---- processes: every one started here is killed on exit ------------------------------------
round_pids=()
tmp=""
stop_pids() { # <pid>...: TERM, up to 5 s, then KILL
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
cleanup() {
  [ "${#round_pids[@]}" -gt 0 ] && stop_pids "${round_pids[@]}"
  if [ -n "$tmp" ]; then
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "# logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
tmp=$(mktemp -d /tmp/cutover-bench.XXXXXX)

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$root" && cargo build --release --quiet) || die "cargo build --release failed"
  (cd "$root" && cargo bench --bench cutover_load --no-run --quiet) || die "cargo bench --no-run failed"
fi
gen=$(ls -t "$root"/target/release/deps/cutover_load-* 2>/dev/null | grep -v '\.d$' | head -n1 || true)
[ -n "$gen" ] && [ -x "$gen" ] || die "the load generator is not built (cargo bench --bench cutover_load --no-run)"
[ -x "$root/target/release/cutover" ] || die "target/release/cutover missing"
# Benchmark copies: a concurrent `cargo build` must not swap a binary under the run.
cp "$root/target/release/cutover" "$tmp/cutover"
cp "$gen" "$tmp/cutover_load"
cutover="$tmp/cutover"

# shellcheck source=../scripts/lib/ports.sh
source "$root/scripts/lib/ports.sh"


status_field() { # <admin port> <python expression on the status document d>
  "$cutover" status --admin "127.0.0.1:$1" --json 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print($2)" 2>/dev/null || echo "?"
}

wait_status() { # <admin port> <python condition on d> <what>: up to 30 s
  for _ in $(seq 1 300); do
    [ "$(status_field "$1" "bool($2)")" = True ] && return 0
    sleep 0.1
  done
  die "timed out waiting for $3; status: $("$cutover" status --admin "127.0.0.1:$1" --json 2>&1 || true)"
}

results="$tmp/results.tsv"
: >"$results"
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; } # pair round metric value

bench_tput() { # <pair> <round> <mode> <port>: redis-benchmark SET/INCR at P1 (and P16)
  local P n csv test rps
  for P in 1 16; do
    n=$N_P1; [ "$P" = 16 ] && n=$N_P16
    [ "$n" -gt 0 ] || continue
    csv=$(timeout 300 "$bin/redis-benchmark" -h 127.0.0.1 -p "$4" -t set,incr \
            -c "$CLIENTS" -n "$n" -P "$P" --csv 2>/dev/null) || die "redis-benchmark ($3, P$P) failed"
    for test in SET INCR; do
      rps=$(awk -F'"' -v t="$test" '$2 == t {print $4}' <<<"$csv")
      [ -n "$rps" ] || die "no $test result from redis-benchmark ($3, P$P): $csv"
      rec "$1" "$2" "tput $test P$P $3" "$rps"
    done
  done
}

echo "# machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)), $(uname -sr)"
echo "# servers: $(for pair in $PAIRS; do for v in ${pair%%:*} ${pair##*:}; do echo "$v"; done; done | sort -u |
  while read -r v; do printf '%s=%s ' "$v" "$("$bin/$v-server" --version | awk '{print $3}' | sed 's/^v=//')"; done)"
echo "# cutover: $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# latency load: $CONNS connections, $RATE ops/s paced, SET 40% / INCR 20% / GET 40%, pipeline 1;"
echo "#   moves: warm-up ${WARMUP}s, switch, ${GAP}s, rollback, ${GAP}s, switch, ${GAP}s"
echo "# throughput: redis-benchmark -t set,incr -c $CLIENTS -P 1 -n $N_P1$( [ "$N_P16" -gt 0 ] && echo " and -P 16 -n $N_P16")"
echo

failures=0
t0=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
  for pair in $PAIRS; do
    src_v=${pair%%:*}; tgt_v=${pair##*:}
    dir="$tmp/$pair-$round"; mkdir -p "$dir"
    read -r p_src p_tgt p_ref p_proxy p_admin p_metrics <<<"$(free_ports 6)"
    round_pids=()
    "$bin/$src_v-server" --port "$p_src" --bind 127.0.0.1 --save '' --appendonly no \
      --repl-diskless-sync-delay 0 --dir "$dir" --logfile "$dir/source.log" &
    round_pids+=($!)
    "$bin/$tgt_v-server" --port "$p_tgt" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$dir" --logfile "$dir/target.log" &
    round_pids+=($!)
    "$bin/redis-7.0-server" --port "$p_ref" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$dir" --logfile "$dir/reference.log" &
    round_pids+=($!)
    wait_port "$p_src" "${round_pids[0]}" "source $src_v"
    wait_port "$p_tgt" "${round_pids[1]}" "target $tgt_v"
    wait_port "$p_ref" "${round_pids[2]}" "reference redis-7.0"
    CUTOVER_LOG=${CUTOVER_LOG:-info} "$cutover" run --source "redis://127.0.0.1:$p_src" \
      --target "redis://127.0.0.1:$p_tgt" --proxy-listen "127.0.0.1:$p_proxy" \
      --admin-listen "127.0.0.1:$p_admin" --metrics-listen "127.0.0.1:$p_metrics" \
      --overlap "$OVERLAP" >"$dir/cutover.log" 2>&1 &
    round_pids+=($!)
    wait_port "$p_proxy" "${round_pids[3]}" cutover
    wait_port "$p_admin" "${round_pids[3]}" "cutover admin"
    wait_status "$p_admin" 'd["phase"]=="streaming" and d["lag_bytes"]==0' "phase streaming, lag 0"

    # Proxy-only throughput (the sync streams into the target meanwhile) and direct.
    if [ $((round % 2)) = 1 ]; then
      bench_tput "$pair" "$round" direct "$p_ref"; bench_tput "$pair" "$round" proxy "$p_proxy"
    else
      bench_tput "$pair" "$round" proxy "$p_proxy"; bench_tput "$pair" "$round" direct "$p_ref"
    fi
    wait_status "$p_admin" 'd["phase"]=="streaming" and d["lag_bytes"]==0' "lag 0 before the switch"

    # Latency through switch / rollback / switch.
    load_rc=0
    "$tmp/cutover_load" --proxy "127.0.0.1:$p_proxy" --admin "127.0.0.1:$p_admin" \
      --cutover "$cutover" --source "127.0.0.1:$p_src" --target "127.0.0.1:$p_tgt" \
      --conns "$CONNS" --rate "$RATE" --warmup "$WARMUP" --gap "$GAP" \
      --label "$pair round $round" --out "$dir/load.tsv" 2>"$dir/load.err" | tee "$dir/load.out" || load_rc=$?
    [ -s "$dir/load.err" ] && sed 's/^/  /' "$dir/load.err"
    if [ "$load_rc" != 0 ]; then
      failures=$((failures + 1))
      echo "  !! cutover_load failed (exit $load_rc); cutover log tail:"; tail -n 20 "$dir/cutover.log" | sed 's/^/  | /'
    fi
    [ -s "$dir/load.tsv" ] && while IFS= read -r line; do
      printf '%s\t%s\tload\t%s\n' "$pair" "$round" "$line" >>"$results"
    done <"$dir/load.tsv"
    rec "$pair" "$round" load_rc "$load_rc"

    if [ "$(status_field "$p_admin" 'd["primary"]')" = target ]; then
      # Overlapping: the target is the primary, the source is kept in step.
      caught_up='d["shadow_queue"]==0 and d["lag_bytes"]==0'
      wait_status "$p_admin" "$caught_up" "the old side caught up"
      rec "$pair" "$round" overlap_mode "$(status_field "$p_admin" 'd["cutover"]["overlap"]')"
      if [ $((round % 2)) = 1 ]; then
        bench_tput "$pair" "$round" overlap "$p_proxy"; bench_tput "$pair" "$round" direct2 "$p_ref"
      else
        bench_tput "$pair" "$round" direct2 "$p_ref"; bench_tput "$pair" "$round" overlap "$p_proxy"
      fi
      rec "$pair" "$round" "rollback_safe_after" "$(status_field "$p_admin" 'd["rollback_safe"]')"
      rec "$pair" "$round" "rollback_unsafe_reason" "$(status_field "$p_admin" 'd["cutover"]["rollback_unsafe_reason"]')"
      wait_status "$p_admin" "$caught_up" "the old side caught up after the throughput run"
      if [ "$LAG_SECS" != 0 ]; then
        lag_rc=0
        "$tmp/cutover_load" --proxy "127.0.0.1:$p_proxy" --admin "127.0.0.1:$p_admin" \
          --cutover "$cutover" --source "127.0.0.1:$p_src" --target "127.0.0.1:$p_tgt" \
          --conns "$CONNS" --rate "$LAG_RATE" --mix writes --moves none --warmup 1 --gap "$LAG_SECS" --key-prefix cl \
          --lag-probe "127.0.0.1:$p_src" --label "$pair round $round, overlap lag" \
          --out "$dir/lag.tsv" 2>"$dir/lag.err" | tee "$dir/lag.out" | grep -E '^(cutover_load|overlap lag|consistency)' | sed 's/^/  /' || lag_rc=$?
        [ -s "$dir/lag.err" ] && sed 's/^/  /' "$dir/lag.err" | head -n 5
        [ "$lag_rc" = 0 ] || { failures=$((failures + 1)); echo "  !! the lag run failed (exit $lag_rc)"; }
        [ -s "$dir/lag.tsv" ] && grep -E '^(lag|summary)' "$dir/lag.tsv" | while IFS= read -r line; do
          printf '%s\t%s\tlagrun\t%s\n' "$pair" "$round" "$line" >>"$results"
        done
      fi
    else
      echo "  !! the target is not the primary after the moves; no overlap throughput this round"
      failures=$((failures + 1))
    fi
    if "$cutover" finish --admin "127.0.0.1:$p_admin" --json >"$dir/finish.json" 2>"$dir/finish.err"; then
      rec "$pair" "$round" finish_rc 0
      bench_tput "$pair" "$round" finished "$p_proxy"
    else
      rec "$pair" "$round" finish_rc 1
      echo "  !! cutover finish failed: $(cat "$dir/finish.err")"
      failures=$((failures + 1))
    fi
    grep -E ' (ERROR|WARN) ' "$dir/cutover.log" | head -n 5 | sed 's/^/  cutover log: /' || true
    stop_pids "${round_pids[@]}"
    round_pids=()
    printf '# round %d/%d %s done (%ds)\n' "$round" "$ROUNDS" "$pair" $(( $(date +%s) - t0 ))
  done
done
echo

python3 - "$results" "$PAUSE_TARGET_MS" "$N_P16" "$PAIRS" "$LAG_RATE" <<'PY'
import statistics, sys
path, target_ms, n_p16, pairs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
med = statistics.median
verdicts = []
for pair in pairs:
    R = [r for r in rows if r[0] == pair]
    rounds = sorted({int(r[1]) for r in R})
    print(f"== {pair.replace(':', ' -> ')}: {len(rounds)} rounds")
    # ---- latency
    moves, base, summ = {}, [], []
    for r in R:
        if r[2] != "load":
            continue
        f = r[3:]
        if f[0] == "move":
            name, pause, held, cli, n, p50, p99, mx, mxl = f[1:10]
            moves.setdefault(name, []).append(dict(pause=float(pause), held=held, cli=float(cli), n=int(n),
                                                   p50=float(p50), p99=float(p99), max=float(mx), maxl=float(mxl)))
        elif f[0] == "base":
            n, p50, p99, mx, mxl = f[5:10]
            base.append(dict(n=int(n), p50=float(p50), p99=float(p99), max=float(mx), maxl=float(mxl)))
        elif f[0] == "summary":
            summ.append(dict(kv.split("=", 1) for kv in f[1:]))
    def m(lst, k):
        v = [x[k] for x in lst if x[k] == x[k]]
        return med(v) if v else float("nan")
    print("latency (ms), median over rounds [worst round]; window = while the CLI ran")
    print("%-10s %9s %10s %7s %14s %14s %14s" % ("move", "pause_ms", "cli_ms", "ops", "p99", "max", "max+late"))
    if base:
        print("%-10s %9s %10s %7d %14s %14s %14s" % ("baseline", "-", "-", m(base, "n"),
              "%.3f [%.3f]" % (m(base, "p99"), max(b["p99"] for b in base)),
              "%.3f [%.3f]" % (m(base, "max"), max(b["max"] for b in base)),
              "%.3f [%.3f]" % (m(base, "maxl"), max(b["maxl"] for b in base))))
    worst_p99 = worst_max = worst_pause = 0.0
    med_max = med_p99 = 0.0
    for name, lst in moves.items():
        print("%-10s %9s %10.1f %7d %14s %14s %14s" % (name,
              "%.3f" % m(lst, "pause"), m(lst, "cli"), m(lst, "n"),
              "%.3f [%.3f]" % (m(lst, "p99"), max(x["p99"] for x in lst)),
              "%.3f [%.3f]" % (m(lst, "max"), max(x["max"] for x in lst)),
              "%.3f [%.3f]" % (m(lst, "maxl"), max(x["maxl"] for x in lst))))
        worst_p99 = max(worst_p99, max(x["p99"] for x in lst))
        worst_max = max(worst_max, max(x["max"] for x in lst))
        worst_pause = max(worst_pause, max(x["pause"] for x in lst if x["pause"] == x["pause"]) if any(x["pause"] == x["pause"] for x in lst) else float("nan"))
        med_max = max(med_max, m(lst, "max"))
        med_p99 = max(med_p99, m(lst, "p99"))
    print("pause_ms per round: " + "; ".join(
        "%s %s" % (name, " ".join("%.2f" % x["pause"] for x in lst)) for name, lst in moves.items()))
    print("max per round:      " + "; ".join(
        "%s %s" % (name, " ".join("%.2f" % x["max"] for x in lst)) for name, lst in moves.items()))
    errors = sum(int(s.get("errors", 0)) for s in summ)
    failed = sum(int(s.get("failed_moves", 0)) for s in summ)
    divergent = sum(max(0, int(s.get("divergent", 0))) for s in summ)
    rcs = [r[3] for r in R if r[2] in ("load_rc", "finish_rc")]
    ach = [float(s["achieved"]) for s in summ]
    print("load achieved %s ops/s (median); errors %d, failed moves %d, keys differing between source and target %d, non-zero exits %d"
          % ("%.0f" % med(ach) if ach else "?", errors, failed, divergent, sum(1 for c in rcs if c != "0")))
    om = sorted({r[3] for r in R if r[2] == "overlap_mode"})
    rs = [r[3] for r in R if r[2] == "rollback_safe_after"]
    print("overlap: %s; rollback_safe after the overlap throughput runs: %s" % (", ".join(om) or "?", " ".join(rs)))
    for r in R:
        if r[2] == "rollback_unsafe_reason" and r[3] not in ("", "None", "null"):
            print("  round %s: rollback unsafe because %s" % (r[1], r[3]))
    lags = [r[3:] for r in R if r[2] == "lagrun" and r[3] == "lag"]
    lag_p99 = med([float(l[3]) for l in lags]) if lags else float("nan")
    if lags:
        lag_ach = [dict(kv.split("=", 1) for kv in r[4:]) for r in R if r[2] == "lagrun" and r[3] == "summary"]
        print("overlap lag at %s writes/s paced (achieved median %s): p50 %.3f ms, p99 %.3f ms (median over rounds; per round %s), max %s ms"
              % (sys.argv[5], "%.0f" % med([float(a["achieved"]) for a in lag_ach]) if lag_ach else "?",
                 med([float(l[2]) for l in lags]), lag_p99, " ".join("%.2f" % float(l[3]) for l in lags),
                 " ".join("%.2f" % float(l[4]) for l in lags)))
    # ---- throughput
    tp = {}
    for r in R:
        if r[2].startswith("tput "):
            _, test, P, mode = r[2].split()
            mode = "direct" if mode == "direct2" else mode
            tp.setdefault((test, P, mode), []).append(float(r[3]))
    print()
    print("throughput, requests/s, median over rounds (direct: a separate Redis 7.0, measured before and after the switch)")
    print("%-9s %10s %10s %10s %10s   %13s %13s %13s %13s" % ("test", "direct", "proxy", "overlap", "finished",
          "overlap/proxy", "overlap/fin", "proxy/direct", "overlap/dir"))
    ratios = []
    for P in ("P1", "P16"):
        for test in ("SET", "INCR"):
            if (test, P, "proxy") not in tp:
                continue
            d, p = med(tp[(test, P, "direct")]), med(tp[(test, P, "proxy")])
            s = med(tp.get((test, P, "overlap"), [float("nan")]))
            f = med(tp.get((test, P, "finished"), [float("nan")]))
            ratios.append((f"{test} {P}", s / p))
            print("%-9s %10.0f %10.0f %10.0f %10.0f   %13.2f %13.2f %13.2f %13.2f" % (f"{test} {P}", d, p, s, f, s / p, s / f, p / d, s / d))
    print("all runs: " + "; ".join("%s %s %s: %s" % (t, P, mo, " ".join("%.0f" % v for v in vs))
                                   for (t, P, mo), vs in sorted(tp.items())))
    pause_ok = med_max <= target_ms and med_p99 <= target_ms
    verdicts.append((pair, med_p99, med_max, worst_max, worst_pause, errors + failed + divergent, pause_ok, ratios, lag_p99))
    print()
print("verdicts (target: commands held by the barrier see <= %.0f ms, zero errors)" % target_ms)
for pair, p99, mx, wmax, wpause, errs, ok, ratios, lag_p99 in verdicts:
    print("  %-22s pause p99/max <= %.0f ms: %s (median over rounds of the worst move: p99 %.2f ms, max %.2f ms; worst single round max %.2f ms, barrier pause_ms up to %.2f)"
          % (pair.replace(":", " -> "), target_ms, "met" if ok else "MISSED", p99, mx, wmax, wpause))
    print("  %-22s errors: %d (%s)" % ("", errs, "met" if errs == 0 else "MISSED"))
    print("  %-22s throughput overlap/proxy-only >= 0.95: %s (%s)" % ("", "met" if ratios and all(r[1] >= 0.95 for r in ratios) else "MISSED",
          ", ".join("%s %.2f" % r for r in ratios)))
    if lag_p99 == lag_p99:
        print("  %-22s overlap lag p99 <= 5 ms: %s (%.2f ms)" % ("", "met" if lag_p99 <= 5 else "MISSED", lag_p99))
PY
echo "# total $(( $(date +%s) - t_begin ))s"
[ "$failures" = 0 ] || { echo "bench/cutover.sh: $failures failures (see above)" >&2; exit 1; }
