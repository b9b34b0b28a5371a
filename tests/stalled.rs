//! One client that stalls must not block every move (issue 18). A client that pipelines 50
//! `GET`s of a 1 MB value and reads nothing, and one that leaves a `MULTI` open, each during
//! a switch and a rollback (and a nameless one that started on the shared connection) while
//! other clients (shared and pinned sessions) keep writing:
//! `cutover status` lists the stalled client before the move; a move while it has been
//! stalled for less than `[cutover] stalled_client_disconnect_ms` is refused, naming it
//! (address, name, what is pending); once it has been stalled longer, the move disconnects
//! it (counted by reason) and proceeds. Every `INCR` the other clients were told succeeded
//! is on the primary exactly once, and both sides are equal once the writers stopped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::sides::{assert_sides_equal, config_file, metric_value};
use common::{Proxy, Raw, Server, Version, cli, encode, step, tail, wait_streaming};

const WRITERS: usize = 4;
/// The policy's limit in these tests.
const LIMIT_MS: u64 = 3000;
/// The pause limit in these tests (above the default, so that a loaded test machine does not
/// refuse a move for its own steps' time).
const MAX_PAUSE_MS: u64 = 500;

/// Clients that keep writing through the proxy: `INCR {w}:ctr:<i>`, counting what was
/// acknowledged (half on the shared connection, half pinned by `CLIENT SETNAME`).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Vec<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(proxy: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicU64>> =
            Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        let threads = (0..WRITERS)
            .map(|w| {
                let (stop, acked, client) = (stop.clone(), acked.clone(), proxy.client());
                let addr = proxy.addr();
                std::thread::spawn(move || {
                    // Even writers: raw clients that send only INCR (the proxy's shared
                    // connection); odd ones: redis-rs with a name (pinned to their own).
                    let mut raw = (w % 2 == 0).then(|| Raw::connect(&addr));
                    let mut named = None;
                    if w % 2 == 1 {
                        let mut c = client.get_connection().map_err(|e| e.to_string())?;
                        let _: () = redis::cmd("CLIENT")
                            .arg("SETNAME")
                            .arg(format!("writer-{w}"))
                            .query(&mut c)
                            .map_err(|e| e.to_string())?;
                        named = Some(c);
                    }
                    let key = format!("{{w}}:ctr:{w}");
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                        if let Some(raw) = &mut raw {
                            let reply = raw.cmd(&["INCR", &key]);
                            if reply.first() != Some(&b':') {
                                return Err(format!("writer {w}: INCR answered {reply:?}"));
                            }
                        } else if let Some(c) = &mut named {
                            let _: i64 = redis::cmd("INCR")
                                .arg(&key)
                                .query(c)
                                .map_err(|e| format!("writer {w}: {e}"))?;
                        }
                        acked[w].fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            stop,
            acked,
            threads,
        }
    }

    /// Stops the writers; every acknowledged INCR is on `primary` exactly once.
    fn finish(self, primary: &Server) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().expect("writer").expect("a writer failed");
        }
        let mut c = primary.conn();
        for w in 0..WRITERS {
            let got: Option<u64> = redis::cmd("GET")
                .arg(format!("{{w}}:ctr:{w}"))
                .query(&mut c)
                .unwrap();
            let want = self.acked[w].load(Ordering::Relaxed);
            assert!(want > 0, "writer {w} wrote nothing");
            assert_eq!(
                got,
                Some(want),
                "writer {w}: acknowledged INCRs on the primary"
            );
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Stall {
    /// 50 pipelined GETs of a 1 MB value, none read.
    NotReading,
    /// MULTI, one queued INCR, then nothing.
    OpenMulti,
}

/// A client of the proxy that stalls the given way, named `name` (`""`: no name, so it starts
/// on the shared connection); its address.
fn stalled_client(proxy: &Proxy, how: Stall, name: &str) -> (Raw, String) {
    let mut raw = Raw::connect(&proxy.addr());
    if !name.is_empty() {
        // (Pins the session to its own backend connection; without, it starts on the
        // shared one.)
        assert_eq!(raw.cmd_str(&["CLIENT", "SETNAME", name]), "+OK\r\n");
    }
    match how {
        Stall::NotReading => {
            let mut pipeline = Vec::new();
            for _ in 0..50 {
                pipeline.extend(encode(&["GET", "{w}:big"]));
            }
            raw.send(&pipeline);
        }
        Stall::OpenMulti => {
            assert_eq!(raw.cmd_str(&["MULTI"]), "+OK\r\n");
            assert_eq!(raw.cmd_str(&["INCR", "{w}:never"]), "+QUEUED\r\n");
        }
    }
    let addr = raw.stream.local_addr().unwrap().to_string();
    (raw, addr)
}

/// The status entry of the session at `addr` that would hold a move, once it is listed.
fn listed(proxy: &Proxy, addr: &str, min_stalled_ms: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = proxy.status_json();
        let found = status["cutover"]["would_hold_move"]
            .as_array()
            .and_then(|l| l.iter().find(|h| h["addr"] == addr).cloned());
        // (While the first replies are still being transferred, it waits for the server.)
        if let Some(h) = found
            && h["stalled_ms"].as_u64().unwrap_or(0) >= min_stalled_ms
            && h["reason"] != "server"
        {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never listed as holding a move (stalled ≥ {min_stalled_ms} ms): {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `verb` with a stalled client: first refused naming it, then (once stalled past the
/// limit) done, the client disconnected.
fn move_past(proxy: &Proxy, verb: &str, how: Stall, name: &str) {
    let (mut raw, addr) = stalled_client(proxy, how, name);
    let entry = listed(proxy, &addr, MAX_PAUSE_MS);
    let reason = match how {
        Stall::NotReading => "not_reading",
        Stall::OpenMulti => "multi",
    };
    assert_eq!(entry["reason"], reason, "{entry}");
    if name.is_empty() {
        assert_eq!(entry["name"], serde_json::Value::Null, "{entry}");
    } else {
        assert_eq!(entry["name"], name, "{entry}");
    }
    if let Stall::NotReading = how {
        assert!(entry["unread_bytes"].as_u64().unwrap() > 0, "{entry}");
    }
    let (text_code, text, _) = cli(proxy, &["status"]);
    assert_eq!(text_code, 0);
    assert!(
        text.contains(&addr) && text.contains("would hold a move"),
        "{text}"
    );
    // Stalled for less than the limit: the move is refused and names it.
    let (code, _, err) = cli(proxy, &[verb, "--json"]);
    assert_ne!(code, 0, "{verb} went through a stalled client");
    assert!(err.contains("pause limit reached"), "{err}");
    assert!(
        err.contains(&addr) && err.contains(name),
        "the refusal names the client: {err}"
    );
    let what = match how {
        Stall::NotReading => "unread",
        Stall::OpenMulti => "MULTI open",
    };
    assert!(err.contains(what), "{err}");
    // Past the limit: the move disconnects it and goes on.
    listed(proxy, &addr, LIMIT_MS + 100);
    let series = format!("cutover_clients_disconnected_at_move_total{{reason=\"{reason}\"}}");
    let before = metric_value(&proxy.metrics(), &series);
    step(proxy, verb);
    let (_, closed) = raw.read_until_closed(Duration::from_secs(10));
    assert!(closed, "the stalled client was not disconnected");
    let metrics = proxy.metrics();
    assert_eq!(
        metric_value(&metrics, &series),
        before + 1.0,
        "{series}: {}",
        tail(&metrics, 3000)
    );
    assert!(
        proxy
            .log()
            .contains("disconnecting a client that holds the move"),
        "{}",
        tail(&proxy.log(), 3000)
    );
}

/// Two Redis 7.0 servers, a proxy with the given stalled-client policy (0: never disconnect)
/// and a 1 MB value whose replies a stalled reader leaves unread, once the link streams.
fn setup(disconnect_ms: u64) -> (Server, Server, tempfile::TempDir, Proxy) {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let (dir, config) = config_file(&format!(
        "[cutover]\nstalled_client_disconnect_ms = {disconnect_ms}\nmax_pause_ms = {MAX_PAUSE_MS}\n"
    ));
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--config", &config],
    );
    let big = "v".repeat(1024 * 1024);
    let _: () = redis::cmd("SET")
        .arg("{w}:big")
        .arg(&big)
        .query(&mut proxy.conn())
        .unwrap();
    wait_streaming(&proxy);
    (source, target, dir, proxy)
}

#[test]
fn stalled_clients_are_named_then_disconnected_at_switch_and_rollback() {
    let (source, target, _dir, proxy) = setup(LIMIT_MS);
    let load = Load::start(&proxy);
    move_past(&proxy, "switch", Stall::NotReading, "stuck-reader-1");
    move_past(&proxy, "rollback", Stall::OpenMulti, "open-multi-1");
    move_past(&proxy, "switch", Stall::OpenMulti, "open-multi-2");
    move_past(&proxy, "rollback", Stall::NotReading, "stuck-reader-2");
    // A client without a name, which started on the proxy's shared connection.
    move_past(&proxy, "switch", Stall::NotReading, "");
    load.finish(&target);
    // The transactions left open never ran.
    for side in [&source, &target] {
        let never: Option<i64> = redis::cmd("GET")
            .arg("{w}:never")
            .query(&mut side.conn())
            .unwrap();
        assert_eq!(never, None);
    }
    assert_sides_equal(&source, &target, "at the end");
}

/// With the policy off, a stalled client makes every move fail (naming it); `--force`
/// disconnects it explicitly and the move goes on.
#[test]
fn force_disconnects_a_stalled_client_when_the_policy_is_off() {
    let (source, target, _dir, proxy) = setup(0);
    let load = Load::start(&proxy);
    let (mut raw, addr) = stalled_client(&proxy, Stall::NotReading, "stuck");
    let entry = listed(&proxy, &addr, MAX_PAUSE_MS + 100);
    assert_eq!(entry["at_move"], "holds the move", "{entry}");
    for _ in 0..2 {
        let (code, _, err) = cli(&proxy, &["switch", "--json"]);
        assert_ne!(code, 0);
        assert!(err.contains(&addr), "{err}");
    }
    let report = {
        let (code, out, err) = cli(&proxy, &["switch", "--force", "--json"]);
        assert_eq!(code, 0, "{err}\n{}", tail(&proxy.log(), 3000));
        out
    };
    assert!(
        report.contains("\"forced\":true") || report.contains("\"forced\": true"),
        "{report}"
    );
    let (_, closed) = raw.read_until_closed(Duration::from_secs(10));
    assert!(closed, "--force did not disconnect the stalled client");
    assert_eq!(
        metric_value(
            &proxy.metrics(),
            "cutover_clients_disconnected_at_move_total{reason=\"force\"}"
        ),
        1.0
    );
    load.finish(&target);
    assert_sides_equal(&source, &target, "after the forced switch");
}

/// A client disconnected at a move while writes of its pipeline have not run yet on the old
/// primary (held there by `CLIENT PAUSE WRITE`): the move waits for them (dropping their
/// replies) before it reads the old primary's offset, so whatever ran there reaches the new
/// primary too. (Without the wait the session ended at once and the writes never ran; had
/// the server run them after the offset was read, the old side would differ.)
#[test]
fn a_disconnected_client_s_writes_in_flight_reach_the_new_primary() {
    let (source, target, _dir, proxy) = setup(LIMIT_MS);
    let (mut raw, addr) = stalled_client(&proxy, Stall::NotReading, "stuck-writer");
    listed(&proxy, &addr, LIMIT_MS + 100);
    // Its next writes are held by the old primary for a while (CLIENT PAUSE … WRITE): when
    // the move disconnects the client they have not run yet.
    let paused: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query(&mut source.conn())
        .unwrap();
    assert_eq!(paused, "OK");
    let mut writes = Vec::new();
    for _ in 0..5 {
        writes.extend(encode(&["INCR", "{w}:late"]));
    }
    raw.send(&writes);
    std::thread::sleep(Duration::from_millis(100));
    // (The move waits for them: up to the end of that pause.)
    let (code, _, err) = cli(&proxy, &["switch", "--max-pause-ms", "5000", "--json"]);
    assert_eq!(code, 0, "{err}\n{}", tail(&proxy.log(), 3000));
    let (_, closed) = raw.read_until_closed(Duration::from_secs(10));
    assert!(closed, "the stalled client was not disconnected");
    let late: Option<i64> = redis::cmd("GET")
        .arg("{w}:late")
        .query(&mut target.conn())
        .unwrap();
    assert_eq!(late, Some(5), "its writes are on the new primary");
    assert_sides_equal(&source, &target, "after the switch");
}
