//! Load generator for `bench/cutover.sh`: client-visible latency while `cutover switch` /
//! `rollback` / `switch` run under a steady, paced load through the proxy.
//!
//! * `--conns` connections (raw RESP over `std::net::TcpStream`, TCP_NODELAY, one thread each,
//!   pipeline 1) paced together to `--rate` ops/s on a fixed schedule (open loop: an op that
//!   falls behind its slot is sent at once). Mix: 40% SET, 20% INCR, 40% GET, on keys each
//!   connection owns (`cb:k:<conn>:<slot>`, `cb:n:<conn>`), so every reply can be checked:
//!   INCR must return the previous value + 1, GET the value this connection last SET.
//! * Every op's send time, its latency (send → reply) and how late it was against its slot
//!   are stored in preallocated buffers (bounded: the run stops when they are full).
//! * The main thread runs the CLI (`cutover switch|rollback|switch --admin A --json`) after
//!   `--warmup` seconds, then every `--gap` seconds, stops the load `--gap` seconds after the
//!   last move, and (with `--source`/`--target`) waits for the shadow queue to drain and checks
//!   that both sides hold what the clients were last told.
//! * A move's window runs from just before the CLI is started until it has exited. The ops
//!   in flight at any moment of that window (the commands the barrier held, and their
//!   neighbours) give the move's p99 and max; the other ops give the baseline.
//!
//! * With `--moves none --lag-probe HOST:PORT` it measures the replication lag of the
//!   overlap instead: while the paced load runs (`--mix writes`: SET/INCR only), a probe
//!   connection writes `cb:probe <n>` through the proxy every 2 ms and polls the old side
//!   (HOST:PORT, directly) until it holds that value; lag = seen there − acknowledged by the
//!   primary (p50/p99/max).
//!
//! Any `-ERR` reply, socket error, time-out or wrong value is an error: the table says so and
//! the exit code is 1. Machine-readable results go to `--out` (tab-separated).
//!
//! Run through `bench/cutover.sh`; by hand:
//! `target/release/deps/cutover_load-* --proxy 127.0.0.1:P --admin 127.0.0.1:A [--rate 20000]`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Default)]
struct Sample {
    /// Send time, ns since t0.
    start: u64,
    /// Send → complete reply, ns.
    lat: u32,
    /// How late the send was against the op's slot in the schedule, ns (saturating).
    late: u32,
}

struct ConnResult {
    samples: Vec<Sample>,
    errors: u64,
    error_msgs: Vec<String>,
    /// Last INCR reply and, per slot, the last value SET (for the consistency check).
    counter: i64,
    slots: Vec<Option<u64>>,
}

struct Opts {
    proxy: String,
    admin: String,
    cutover: String,
    source: Option<String>,
    target: Option<String>,
    conns: usize,
    rate: f64,
    warmup: f64,
    gap: f64,
    moves: Vec<String>,
    max_pause_ms: Option<u64>,
    out: Option<String>,
    label: String,
    /// SET/INCR only (no GET).
    writes_only: bool,
    /// Key prefix (`cb`): a second run against the same servers uses another one.
    prefix: String,
    /// The old side's address, to measure the overlap's replication lag.
    lag_probe: Option<String>,
}

const SLOTS: usize = 64;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

fn usage() -> ! {
    eprintln!(
        "usage: cutover_load --proxy HOST:PORT --admin HOST:PORT [--cutover PATH] [--source HOST:PORT --target HOST:PORT]\n\
         \x20      [--conns 32] [--rate 20000] [--warmup 2] [--gap 2] [--moves switch,rollback,switch]\n\
         \x20      [--max-pause-ms MS] [--out FILE] [--label TEXT]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        proxy: String::new(),
        admin: String::new(),
        cutover: env!("CARGO_BIN_EXE_cutover").to_string(),
        source: None,
        target: None,
        conns: 32,
        rate: 20_000.0,
        warmup: 2.0,
        gap: 2.0,
        moves: vec!["switch".into(), "rollback".into(), "switch".into()],
        max_pause_ms: None,
        out: None,
        label: String::new(),
        writes_only: false,
        lag_probe: None,
        prefix: "cb".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `cargo bench` passes --bench to harness-less benches.
        if a == "--bench" {
            continue;
        }
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--proxy" => o.proxy = v,
            "--admin" => o.admin = v,
            "--cutover" => o.cutover = v,
            "--source" => o.source = Some(v),
            "--target" => o.target = Some(v),
            "--conns" => o.conns = v.parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = v.parse().unwrap_or_else(|_| usage()),
            "--warmup" => o.warmup = v.parse().unwrap_or_else(|_| usage()),
            "--gap" => o.gap = v.parse().unwrap_or_else(|_| usage()),
            "--moves" if v == "none" => o.moves = Vec::new(),
            "--moves" => o.moves = v.split(',').map(str::to_string).collect(),
            "--mix" => {
                o.writes_only = match v.as_str() {
                    "writes" => true,
                    "default" => false,
                    _ => usage(),
                }
            }
            "--lag-probe" => o.lag_probe = Some(v),
            "--key-prefix" => o.prefix = v,
            "--max-pause-ms" => o.max_pause_ms = Some(v.parse().unwrap_or_else(|_| usage())),
            "--out" => o.out = Some(v),
            "--label" => o.label = v,
            _ => usage(),
        }
    }
    if o.proxy.is_empty() || o.admin.is_empty() || o.conns == 0 || o.conns > 1000 || o.rate <= 0.0 {
        usage();
    }
    if o.moves
        .iter()
        .any(|m| !matches!(m.as_str(), "switch" | "rollback" | "finish"))
    {
        usage();
    }
    o
}

// ---- RESP ----------------------------------------------------------------------------------

#[derive(Debug)]
enum Reply {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// One complete reply at the start of `b` (scalars only: that is all this load produces):
/// `Some((reply, consumed))`, or `None` if more bytes are needed.
fn parse_reply(b: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    if b.is_empty() {
        return Ok(None);
    }
    let Some(eol) = find_crlf(b, 1) else {
        return Ok(None);
    };
    let line = &b[1..eol];
    let text = || String::from_utf8_lossy(line).into_owned();
    match b[0] {
        b'+' => Ok(Some((Reply::Simple(line.to_vec()), eol + 2))),
        b'-' => Ok(Some((Reply::Error(text()), eol + 2))),
        b':' => text()
            .parse()
            .map(|n| Some((Reply::Int(n), eol + 2)))
            .map_err(|_| format!("bad integer reply {:?}", text())),
        b'$' => {
            let n: i64 = text()
                .parse()
                .map_err(|_| format!("bad bulk length {:?}", text()))?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), eol + 2)));
            }
            let end = eol + 2 + n as usize;
            if b.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(b[eol + 2..end].to_vec())), end + 2)))
        }
        other => Err(format!("unexpected reply type byte {:?}", other as char)),
    }
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.clear();
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Sends one command and reads its reply (pipeline 1).
fn roundtrip(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<Reply, String> {
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((r, used)) = parse_reply(buf)? {
            if used != buf.len() {
                return Err(format!(
                    "{} unexpected bytes after a reply",
                    buf.len() - used
                ));
            }
            return Ok(r);
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the proxy".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(OP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(OP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

// ---- one client connection ------------------------------------------------------------------

/// What one connection does (besides its schedule).
#[derive(Clone)]
struct ConnPlan {
    addr: String,
    t0: Instant,
    interval: Duration,
    capacity: usize,
    /// SET/INCR only.
    writes_only: bool,
    prefix: String,
}

fn client(id: usize, plan: ConnPlan, phase: Duration, stop: Arc<AtomicBool>) -> ConnResult {
    let ConnPlan {
        addr,
        t0,
        interval,
        capacity,
        writes_only,
        prefix,
    } = plan;
    let mut res = ConnResult {
        samples: Vec::with_capacity(capacity),
        errors: 0,
        error_msgs: Vec::new(),
        counter: 0,
        slots: vec![None; SLOTS],
    };
    let fail = |res: &mut ConnResult, msg: String| {
        res.errors += 1;
        if res.error_msgs.len() < 5 {
            res.error_msgs.push(format!("conn {id}: {msg}"));
        }
    };
    let mut stream = match connect(&addr) {
        Ok(s) => s,
        Err(e) => {
            fail(&mut res, e);
            return res;
        }
    };
    let counter_key = format!("{prefix}:n:{id}");
    let slot_keys: Vec<String> = (0..SLOTS).map(|s| format!("{prefix}:k:{id}:{s}")).collect();
    let mut req = Vec::with_capacity(128);
    let mut buf = Vec::with_capacity(4096);
    let mut i: u64 = 0;
    while res.samples.len() < capacity && !stop.load(Ordering::Relaxed) {
        let slot_time = t0 + phase + interval * i as u32;
        let now = Instant::now();
        if slot_time > now {
            std::thread::sleep(slot_time - now);
        }
        // Which op: 0,1 SET; 2 INCR; 3,4 GET (40/20/40), rotated by connection.
        let mut kind = (i as usize + id) % 5;
        if writes_only && kind >= 3 {
            // SET/INCR only (4 SET for 1 INCR).
            kind -= 3;
        }
        let slot = (i as usize * 7 + id) % SLOTS;
        let value = i + 1;
        let value_text = format!("v{value:015}");
        match kind {
            0 | 1 => encode(
                &mut req,
                &[b"SET", slot_keys[slot].as_bytes(), value_text.as_bytes()],
            ),
            2 => encode(&mut req, &[b"INCR", counter_key.as_bytes()]),
            _ => encode(&mut req, &[b"GET", slot_keys[slot].as_bytes()]),
        }
        let sent = Instant::now();
        let reply = roundtrip(&mut stream, &req, &mut buf);
        let done = Instant::now();
        res.samples.push(Sample {
            start: sent.duration_since(t0).as_nanos() as u64,
            lat: done.duration_since(sent).as_nanos().min(u32::MAX as u128) as u32,
            late: sent
                .saturating_duration_since(slot_time)
                .as_nanos()
                .min(u32::MAX as u128) as u32,
        });
        i += 1;
        match reply {
            Err(e) => {
                fail(&mut res, e);
                // The connection is unusable; carry on with a fresh one (the error counts).
                std::thread::sleep(Duration::from_millis(10));
                match connect(&addr) {
                    Ok(s) => stream = s,
                    Err(e) => {
                        fail(&mut res, e);
                        return res;
                    }
                }
            }
            Ok(Reply::Error(e)) => fail(&mut res, format!("error reply: {e}")),
            Ok(r) => match (kind, r) {
                (0 | 1, Reply::Simple(s)) if s == b"OK" => res.slots[slot] = Some(value),
                (2, Reply::Int(n)) => {
                    if n != res.counter + 1 {
                        let want = res.counter + 1;
                        fail(&mut res, format!("INCR returned {n}, expected {want}"));
                    }
                    res.counter = n;
                }
                (3 | 4, Reply::Bulk(v)) => {
                    let want = res.slots[slot].map(|x| format!("v{x:015}").into_bytes());
                    if v != want {
                        fail(
                            &mut res,
                            format!(
                                "GET {} returned {:?}, expected {:?}",
                                slot_keys[slot],
                                v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                                want.map(|b| String::from_utf8_lossy(&b).into_owned())
                            ),
                        );
                    }
                }
                (k, r) => fail(&mut res, format!("op kind {k}: unexpected reply {r:?}")),
            },
        }
    }
    res
}

// ---- the CLI --------------------------------------------------------------------------------

struct MoveResult {
    verb: String,
    /// Window, ns since t0: just before the CLI starts, and after it has exited.
    begin: u64,
    end: u64,
    ok: bool,
    report: serde_json::Value,
    stderr: String,
}

fn run_cli(o: &Opts, verb: &str, json: bool) -> (bool, String, String) {
    let mut cmd = Command::new(&o.cutover);
    cmd.arg(verb).args(["--admin", &o.admin]);
    if json {
        cmd.arg("--json");
    }
    if let (Some(ms), "switch" | "rollback") = (o.max_pause_ms, verb) {
        cmd.args(["--max-pause-ms", &ms.to_string()]);
    }
    cmd.env_remove("CUTOVER_CONFIG")
        .env_remove("CUTOVER_ADMIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                String::new(),
                format!("cannot run {}: {e}", o.cutover),
            );
        }
    };
    // Bounded: the CLI gets 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (
                    false,
                    String::new(),
                    format!("cutover {verb} did not exit within 30 s"),
                );
            }
        }
    }
    match child.wait_with_output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}

fn status(o: &Opts) -> Option<serde_json::Value> {
    let (ok, out, _) = run_cli(o, "status", true);
    if !ok {
        return None;
    }
    serde_json::from_str(out.trim()).ok()
}

// ---- statistics -----------------------------------------------------------------------------

struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank percentiles, in ms.
fn stats(mut v: Vec<u64>) -> Stats {
    if v.is_empty() {
        return Stats {
            n: 0,
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1] as f64 / 1e6
    };
    Stats {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: *v.last().unwrap() as f64 / 1e6,
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

// ---- overlap lag ----------------------------------------------------------------------------

/// Every 2 ms until `stop`: `SET cb:probe <n>` through the proxy, then `GET cb:probe` on the
/// old side until it holds `<n>`; the time from the acknowledgment to that, ns, per probe.
fn lag_probe(proxy: &str, old: &str, stop: &AtomicBool) -> Result<Vec<u64>, String> {
    let mut p = connect(proxy)?;
    let mut o = connect(old)?;
    let (mut req, mut buf, mut get) = (Vec::new(), Vec::new(), Vec::new());
    encode(&mut get, &[b"GET", b"cb:probe"]);
    let mut lags = Vec::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && lags.len() < 1_000_000 {
        n += 1;
        let value = format!("p{n}");
        encode(&mut req, &[b"SET", b"cb:probe", value.as_bytes()]);
        match roundtrip(&mut p, &req, &mut buf)? {
            Reply::Simple(_) => {}
            other => return Err(format!("SET cb:probe answered {other:?}")),
        }
        let acked = Instant::now();
        loop {
            match roundtrip(&mut o, &get, &mut buf)? {
                Reply::Bulk(Some(v)) if v == value.as_bytes() => break,
                _ if acked.elapsed() > Duration::from_secs(5) => {
                    return Err(format!("{value} not on the old side after 5 s"));
                }
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        lags.push(acked.elapsed().as_nanos() as u64);
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(lags)
}

// ---- consistency check ----------------------------------------------------------------------

/// After the load: every key the clients wrote holds, on `addr`, what they were last told.
fn check_side(addr: &str, results: &[ConnResult], prefix: &str) -> Result<usize, String> {
    let mut s = connect(addr)?;
    let mut req = Vec::new();
    let mut buf = Vec::new();
    let mut wrong = 0;
    for (id, r) in results.iter().enumerate() {
        encode(&mut req, &[b"GET", format!("{prefix}:n:{id}").as_bytes()]);
        let want = (r.counter > 0).then(|| r.counter.to_string().into_bytes());
        match roundtrip(&mut s, &req, &mut buf)? {
            Reply::Bulk(v) if v == want => {}
            other => {
                wrong += 1;
                if wrong <= 3 {
                    eprintln!(
                        "  {addr}: {prefix}:n:{id} = {other:?}, clients last saw {:?}",
                        r.counter
                    );
                }
            }
        }
        for (slot, val) in r.slots.iter().enumerate() {
            encode(
                &mut req,
                &[b"GET", format!("{prefix}:k:{id}:{slot}").as_bytes()],
            );
            let want = val.map(|x| format!("v{x:015}").into_bytes());
            match roundtrip(&mut s, &req, &mut buf)? {
                Reply::Bulk(v) if v == want => {}
                other => {
                    wrong += 1;
                    if wrong <= 3 {
                        eprintln!(
                            "  {addr}: {prefix}:k:{id}:{slot} = {other:?}, clients last SET {val:?}"
                        );
                    }
                }
            }
        }
    }
    Ok(wrong)
}

// ---- main -----------------------------------------------------------------------------------

fn main() {
    // `cargo test --all-targets` and `cargo bench` run this target without our arguments (or
    // with only harness flags such as `--bench`): it needs servers set up by bench/cutover.sh.
    if !std::env::args().skip(1).any(|a| a == "--proxy") {
        eprintln!(
            "cutover_load: run it through `bash bench/cutover.sh` (nothing to do without --proxy)"
        );
        return;
    }
    let o = parse_opts();
    let planned = o.warmup + o.gap * o.moves.len().max(1) as f64;
    // Bounded in time and memory: every connection stops after `planned + 30 s` worth of ops.
    let per_conn_rate = o.rate / o.conns as f64;
    let capacity = ((planned + 30.0) * per_conn_rate).ceil() as usize + 16;
    let interval = Duration::from_secs_f64(1.0 / per_conn_rate);
    let stop = Arc::new(AtomicBool::new(false));
    // Connections start after 200 ms, spread evenly over one interval.
    let t0 = Instant::now() + Duration::from_millis(200);
    let mut handles = Vec::new();
    for id in 0..o.conns {
        let addr = o.proxy.clone();
        let stop = stop.clone();
        let phase = interval * id as u32 / o.conns as u32;
        handles.push(
            std::thread::Builder::new()
                .name(format!("conn{id}"))
                .stack_size(256 * 1024)
                .spawn({
                    let plan = ConnPlan {
                        addr,
                        t0,
                        interval,
                        capacity,
                        writes_only: o.writes_only,
                        prefix: o.prefix.clone(),
                    };
                    move || client(id, plan, phase, stop)
                })
                .expect("spawn"),
        );
    }
    let ns = |t: Instant| t.saturating_duration_since(t0).as_nanos() as u64;

    sleep_until(t0 + Duration::from_secs_f64(o.warmup));
    let probe = o.lag_probe.clone().map(|old| {
        let (proxy, stop) = (o.proxy.clone(), stop.clone());
        std::thread::spawn(move || lag_probe(&proxy, &old, &stop))
    });
    if o.moves.is_empty() {
        std::thread::sleep(Duration::from_secs_f64(o.gap));
    }
    let mut moves = Vec::new();
    for verb in &o.moves {
        let begin = Instant::now();
        let (ok, out, err) = run_cli(&o, verb, true);
        let end = Instant::now();
        let report = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
        moves.push(MoveResult {
            verb: verb.clone(),
            begin: ns(begin),
            end: ns(end),
            ok: ok && report.is_object(),
            report,
            stderr: err.trim().to_string(),
        });
        sleep_until(end + Duration::from_secs_f64(o.gap));
    }
    stop.store(true, Ordering::Relaxed);
    let t_stop = ns(Instant::now());
    let lag = probe.map(|h| h.join().expect("probe thread"));
    let results: Vec<ConnResult> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();

    // ---- analysis
    let total_ops: usize = results.iter().map(|r| r.samples.len()).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let overlaps =
        |s: &Sample, m: &MoveResult| s.start <= m.end && s.start + s.lat as u64 >= m.begin;
    let all = || results.iter().flat_map(|r| r.samples.iter());
    let achieved = total_ops as f64 / (t_stop as f64 / 1e9);
    let full = results.iter().any(|r| r.samples.len() >= capacity);

    let base_lat: Vec<u64> = all()
        .filter(|s| s.start >= 500_000_000 && !moves.iter().any(|m| overlaps(s, m)))
        .map(|s| s.lat as u64)
        .collect();
    let base = stats(base_lat);
    let base_late = stats(
        all()
            .filter(|s| s.start >= 500_000_000 && !moves.iter().any(|m| overlaps(s, m)))
            .map(|s| s.late as u64 + s.lat as u64)
            .collect(),
    );

    let label = if o.label.is_empty() {
        String::new()
    } else {
        format!(" [{}]", o.label)
    };
    println!(
        "cutover_load{label}: {} connections, target {:.0} ops/s, achieved {:.0} ops/s over {:.1} s, {} ops, {} errors",
        o.conns,
        o.rate,
        achieved,
        t_stop as f64 / 1e9,
        total_ops,
        errors
    );
    println!(
        "{:<10} {:>8} {:>6} {:>8} {:>7} {:>8} {:>8} {:>8} {:>10}",
        "window", "pause_ms", "held", "cli_ms", "ops", "p50_ms", "p99_ms", "max_ms", "max+late"
    );
    let mut tsv = String::new();
    println!(
        "{:<10} {:>8} {:>6} {:>8} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>10.3}",
        "baseline", "-", "-", "-", base.n, base.p50, base.p99, base.max, base_late.max
    );
    tsv += &format!(
        "base\tbaseline\t\t\t\t{}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\n",
        base.n, base.p50, base.p99, base.max, base_late.max
    );
    let mut failed_moves = 0;
    for (k, m) in moves.iter().enumerate() {
        let name = format!("{}{}", m.verb, k + 1);
        let w: Vec<&Sample> = all().filter(|s| overlaps(s, m)).collect();
        let st = stats(w.iter().map(|s| s.lat as u64).collect());
        let late = stats(w.iter().map(|s| s.late as u64 + s.lat as u64).collect());
        let pause = m.report["pause_ms"].as_f64().unwrap_or(f64::NAN);
        let held = m.report["held_sessions"]
            .as_u64()
            .map_or("-".to_string(), |h| h.to_string());
        let cli_ms = (m.end - m.begin) as f64 / 1e6;
        println!(
            "{:<10} {:>8.3} {:>6} {:>8.1} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>10.3}{}",
            name,
            pause,
            held,
            cli_ms,
            st.n,
            st.p50,
            st.p99,
            st.max,
            late.max,
            if m.ok {
                String::new()
            } else {
                format!("   FAILED: {}", m.stderr)
            }
        );
        if !m.ok {
            failed_moves += 1;
        }
        tsv += &format!(
            "move\t{name}\t{pause:.4}\t{held}\t{cli_ms:.3}\t{}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\n",
            st.n, st.p50, st.p99, st.max, late.max
        );
    }
    println!(
        "(pause_ms: the barrier's own figure from the report; held: sessions waiting at the gate; cli_ms: the CLI's wall time,\n\
         \x20window = that wall time; ops: ops in flight at any moment of the window; p50/p99/max: send -> reply of those ops;\n\
         \x20max+late: the same plus how late the op was sent against its slot, i.e. what an open-loop client sees)"
    );

    let mut probe_failed = false;
    if let Some(lag) = &lag {
        match lag {
            Ok(v) => {
                let st = stats(v.clone());
                println!(
                    "overlap lag (primary acknowledged -> visible on the old side), ms: n {} p50 {:.3} p99 {:.3} max {:.3}",
                    st.n, st.p50, st.p99, st.max
                );
                tsv += &format!(
                    "lag\t{}\t{:.4}\t{:.4}\t{:.4}\n",
                    st.n, st.p50, st.p99, st.max
                );
            }
            Err(e) => {
                eprintln!("lag probe failed: {e}");
                probe_failed = true;
            }
        }
    }

    // ---- consistency: the old side gets the writes (shadowed, or through the reverse
    // link); wait until it has them all.
    let mut divergent: Option<usize> = None;
    if let (Some(src), Some(tgt)) = (&o.source, &o.target) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = status(&o);
            let q = st.as_ref().and_then(|s| s["shadow_queue"].as_u64());
            let lag = st.as_ref().and_then(|s| s["lag_bytes"].as_u64());
            let done = q == Some(0) && lag.is_none_or(|l| l == 0);
            if done || Instant::now() > deadline {
                if !done {
                    eprintln!("the old side did not catch up within 10 s: {st:?}");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // (The last writes may still be on their way to the old side: look again, briefly.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let wrong = loop {
            let mut wrong = 0;
            for addr in [src, tgt] {
                match check_side(addr, &results, &o.prefix) {
                    Ok(n) => wrong += n,
                    Err(e) => {
                        eprintln!("consistency check on {addr} failed: {e}");
                        wrong += 1;
                    }
                }
            }
            if wrong == 0 || Instant::now() > deadline {
                break wrong;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        println!(
            "consistency: {} keys checked on source and target, {} differ from what the clients were last told",
            2 * results.len() * (SLOTS + 1),
            wrong
        );
        divergent = Some(wrong);
    }
    tsv += &format!(
        "summary\tops={total_ops}\terrors={errors}\tachieved={achieved:.0}\tfailed_moves={failed_moves}\tdivergent={}\tfull={full}\n",
        divergent.map_or(-1, |d| d as i64)
    );
    for r in &results {
        for m in &r.error_msgs {
            eprintln!("error: {m}");
        }
    }
    if let Some(path) = &o.out {
        std::fs::write(path, tsv).expect("write --out");
    }
    if full {
        eprintln!("warning: a connection filled its sample buffer and stopped early");
    }
    if errors > 0 || failed_moves > 0 || divergent.unwrap_or(0) > 0 || probe_failed {
        eprintln!(
            "cutover_load: FAILED ({errors} errors, {failed_moves} failed moves, divergent keys: {divergent:?})"
        );
        std::process::exit(1);
    }
}
