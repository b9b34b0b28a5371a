//! `cutover switch / rollback / finish` against real servers: the barrier, the shadow writes
//! and the state that crosses a flip.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proxy, Server, Version};

use common::{cli, step, wait_streaming};

fn source_and_target(from: Version, to: Version) -> (Server, Server) {
    let source = Server::start_with(from, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(to);
    (source, target)
}

fn get(conn: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(conn).unwrap()
}

/// `cutover verify --rounds 0` between the two servers (exit 0: equal).
fn verify(source: &Server, target: &Server) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "verify",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .args(["--rounds", "0", "--quiet"])
        .output()
        .expect("run cutover verify")
}

/// Waits until `f` holds on a fresh look (shadow writes arrive asynchronously).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn switch_rollback_switch_finish_keep_both_sides_in_step() {
    let (source, target) = source_and_target(Version::Valkey91, Version::Redis70);
    let mut src = source.conn();
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("pre:{i}"))
            .arg(i)
            .query(&mut src)
            .unwrap();
    }
    // This connection only reads from now on (a direct writer would block the switch).
    assert_eq!(get(&mut src, "pre:1").as_deref(), Some("1"));
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut c = proxy.conn();
    let _: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();

    let report = step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{report}");
    assert!(report["pause_ms"].as_f64().unwrap() < 100.0, "{report}");
    let status = proxy.status_json();
    assert_eq!(status["phase"], "switched", "{status}");
    assert_eq!(status["primary"], "target", "{status}");
    assert_eq!(status["rollback_safe"], true, "{status}");

    let mut dst = target.conn();
    // Writes now land on the target first, and reach the source in deterministic form.
    let n: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();
    assert_eq!(n, 2);
    assert_eq!(get(&mut dst, "counter").as_deref(), Some("2"));
    eventually("INCR shadowed to the source", || {
        get(&mut src, "counter").as_deref() == Some("2")
    });

    let _: () = redis::cmd("SETEX")
        .arg("ttl")
        .arg(100)
        .arg("v")
        .query(&mut c)
        .unwrap();
    eventually("SETEX shadowed", || {
        get(&mut src, "ttl").as_deref() == Some("v")
    });
    let pttl: i64 = redis::cmd("PTTL").arg("ttl").query(&mut src).unwrap();
    assert!(
        (95_000..=100_000).contains(&pttl),
        "absolute expiry on the source: {pttl}"
    );

    let _: i64 = redis::cmd("SADD")
        .arg("set")
        .arg(&["a", "b", "c", "d"])
        .query(&mut c)
        .unwrap();
    let popped: String = redis::cmd("SPOP").arg("set").query(&mut c).unwrap();
    eventually("SPOP shadowed as SREM", || {
        let m: Vec<String> = redis::cmd("SMEMBERS").arg("set").query(&mut src).unwrap();
        m.len() == 3 && !m.contains(&popped)
    });

    let _: i64 = redis::cmd("EVAL")
        .arg("redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], 5)")
        .arg(2)
        .arg("script:list")
        .arg("script:n")
        .arg("x")
        .query(&mut c)
        .unwrap();
    eventually("EVAL's keys copied", || {
        let l: Vec<String> = redis::cmd("LRANGE")
            .arg("script:list")
            .arg(0)
            .arg(-1)
            .query(&mut src)
            .unwrap();
        l == ["x"] && get(&mut src, "script:n").as_deref() == Some("5")
    });
    let id: String = redis::cmd("XADD")
        .arg("stream")
        .arg("*")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    eventually("XADD shadowed with the same id", || {
        let ids: Vec<redis::Value> = redis::cmd("XRANGE")
            .arg("stream")
            .arg("-")
            .arg("+")
            .query(&mut src)
            .unwrap();
        format!("{ids:?}").contains(&id)
    });

    let report = step(&proxy, "rollback");
    assert_eq!(report["primary"], "source", "{report}");
    let n: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();
    assert_eq!(n, 3, "the source had every write of the target");
    eventually("INCR shadowed to the target", || {
        get(&mut dst, "counter").as_deref() == Some("3")
    });
    assert_eq!(proxy.status_json()["phase"], "rolled_back");

    let report = step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{report}");
    let n: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();
    assert_eq!(n, 4);

    let report = step(&proxy, "finish");
    assert_eq!(report["action"], "finish", "{report}");
    let status = proxy.status_json();
    assert_eq!(status["phase"], "finished", "{status}");
    assert_eq!(status["rollback_safe"], false, "{status}");
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_eq!(code, 1, "rollback after finish must be refused");
    assert!(err.contains("finished"), "{err}");
    // The pre-existing data is on the target.
    assert_eq!(get(&mut dst, "pre:42").as_deref(), Some("42"));
}

#[test]
fn a_switch_that_cannot_pause_in_time_changes_nothing() {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    // A client in the middle of a transaction holds the barrier (MULTI flips after EXEC).
    let mut txn = common::Raw::connect(&proxy.addr());
    assert_eq!(txn.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(txn.cmd_str(&["SET", "in-txn", "1"]), "+QUEUED\r\n");
    let (code, _, err) = cli(&proxy, &["switch", "--max-pause-ms", "30"]);
    assert_eq!(code, 1, "the switch must fail: {err}");
    assert!(err.contains("pause limit"), "{err}");
    let status = proxy.status_json();
    assert_eq!(status["primary"], "source", "{status}");
    assert_eq!(status["phase"], "streaming", "{status}");
    // The transaction completes on the source; other clients were never refused.
    let exec = txn.cmd_str(&["EXEC"]);
    assert!(exec.starts_with("*1"), "{exec}");
    let mut c = proxy.conn();
    assert_eq!(get(&mut c, "in-txn").as_deref(), Some("1"));
    // The sync went on after the abort: a later switch works.
    wait_streaming(&proxy);
    let report = step(&proxy, "switch");
    assert_eq!(report["primary"], "target");
    let mut dst = target.conn();
    assert_eq!(get(&mut dst, "in-txn").as_deref(), Some("1"));
}

#[test]
fn a_direct_writer_on_the_source_blocks_the_switch_unless_forced() {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis62);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut direct = source.conn();
    let _: () = redis::cmd("SET")
        .arg("direct")
        .arg("1")
        .query(&mut direct)
        .unwrap();
    let (code, _, err) = cli(&proxy, &["switch"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("write to the source directly"), "{err}");
    assert_eq!(proxy.status_json()["primary"], "source");
    wait_streaming(&proxy);
    let (code, out, err) = cli(&proxy, &["switch", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("target is the primary"), "{out}");
}

#[test]
fn state_crosses_the_flip_watch_fails_blpop_moves_subscriptions_follow() {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis62);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);

    // A client with SELECT and a name.
    let mut sel = common::Raw::connect(&proxy.addr());
    assert_eq!(sel.cmd_str(&["SELECT", "3"]), "+OK\r\n");
    assert_eq!(sel.cmd_str(&["SET", "in3", "x"]), "+OK\r\n");
    // WATCH before the flip.
    let mut watcher = common::Raw::connect(&proxy.addr());
    assert_eq!(watcher.cmd_str(&["WATCH", "w"]), "+OK\r\n");
    // A BLPOP waiting on the source.
    let mut blocked = common::Raw::connect(&proxy.addr());
    blocked.send(&common::encode(&["BLPOP", "queue", "10"]));
    // A subscriber.
    let mut sub = common::Raw::connect(&proxy.addr());
    let confirm = sub.cmd_str(&["SUBSCRIBE", "news"]);
    assert!(confirm.contains("subscribe"), "{confirm}");
    std::thread::sleep(Duration::from_millis(200));

    let report = step(&proxy, "switch");
    assert_eq!(report["unblocked"], 1, "{report}");

    // The db survived: the key written in db 3 before is read in db 3 on the target.
    assert_eq!(sel.cmd_str(&["GET", "in3"]), "$1\r\nx\r\n");
    // WATCH: the watched key moved; the transaction fails like a touched watch.
    assert_eq!(watcher.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(watcher.cmd_str(&["SET", "w", "1"]), "+QUEUED\r\n");
    assert_eq!(watcher.cmd_str(&["EXEC"]), "*-1\r\n");
    // The BLPOP is now waiting on the target: an element pushed there reaches it.
    let mut c = proxy.conn();
    let _: i64 = redis::cmd("RPUSH")
        .arg("queue")
        .arg("job")
        .query(&mut c)
        .unwrap();
    let got = blocked
        .read_reply_within(Duration::from_secs(5))
        .expect("BLPOP answered");
    assert_eq!(
        common::show(&got),
        common::show(b"*2\r\n$5\r\nqueue\r\n$3\r\njob\r\n")
    );
    // The element was popped exactly once (not left on either side).
    let mut dst = target.conn();
    let len: i64 = redis::cmd("LLEN").arg("queue").query(&mut dst).unwrap();
    assert_eq!(len, 0);
    // The subscriber follows the new primary.
    let n: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hello")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1, "the subscriber is on the target");
    let msg = sub
        .read_reply_within(Duration::from_secs(5))
        .expect("message");
    assert!(
        common::show(&msg).contains("hello"),
        "{}",
        common::show(&msg)
    );
}

// ----- the whole story under load ---------------------------------------------------------

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const WORKERS: usize = 4;

/// What the load's clients saw acknowledged.
#[derive(Default)]
struct Acked {
    counters: [AtomicU64; WORKERS],
    shared: AtomicU64,
    hincr: [AtomicU64; WORKERS],
    script: [AtomicU64; WORKERS],
    lists: Mutex<Vec<Vec<String>>>,
    errors: Mutex<Vec<String>>,
    ops: AtomicU64,
}

struct Load {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicU64>,
    acked: Arc<Acked>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Acked::default());
        acked.lists.lock().unwrap().resize(WORKERS, Vec::new());
        let mut threads = Vec::new();
        for w in 0..WORKERS {
            let client = proxy.client();
            let (stop, pause, paused, acked) =
                (stop.clone(), pause.clone(), paused.clone(), acked.clone());
            threads.push(std::thread::spawn(move || {
                let mut c = common::connect(&client);
                let script =
                    "redis.call('RPUSH', KEYS[2], ARGV[1]); return redis.call('INCRBY', KEYS[1], 1)";
                let mut i = 0u64;
                let started = Instant::now();
                while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(60) {
                    if pause.load(Ordering::Acquire) {
                        paused.fetch_add(1, Ordering::AcqRel);
                        while pause.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        paused.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    i += 1;
                    let fail = |what: &str, e: redis::RedisError| {
                        acked.errors.lock().unwrap().push(format!("worker {w} {what}: {e}"));
                    };
                    match redis::cmd("INCR").arg(format!("counter:{w}")).query::<i64>(&mut c) {
                        Ok(_) => {
                            acked.counters[w].fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => fail("INCR", e),
                    }
                    match redis::cmd("INCR").arg("counter:shared").query::<i64>(&mut c) {
                        Ok(_) => {
                            acked.shared.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => fail("INCR shared", e),
                    }
                    let value = format!("{w}:{i}");
                    match redis::cmd("RPUSH").arg(format!("list:{w}")).arg(&value).query::<i64>(&mut c) {
                        Ok(_) => acked.lists.lock().unwrap()[w].push(value),
                        Err(e) => fail("RPUSH", e),
                    }
                    match redis::cmd("HINCRBY").arg("hash").arg(format!("f{w}")).arg(1).query::<i64>(&mut c) {
                        Ok(_) => {
                            acked.hincr[w].fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => fail("HINCRBY", e),
                    }
                    if let Err(e) = redis::cmd("SETEX")
                        .arg(format!("ttl:{w}:{}", i % 20))
                        .arg(300)
                        .arg(i)
                        .query::<()>(&mut c)
                    {
                        fail("SETEX", e);
                    }
                    if i % 5 == 0 {
                        match redis::cmd("EVAL")
                            .arg(script)
                            .arg(2)
                            .arg(format!("script:{w}"))
                            .arg(format!("slist:{w}"))
                            .arg(i)
                            .query::<i64>(&mut c)
                        {
                            Ok(_) => {
                                acked.script[w].fetch_add(1, Ordering::AcqRel);
                            }
                            Err(e) => fail("EVAL", e),
                        }
                    }
                    acked.ops.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Load {
            stop,
            pause,
            paused,
            acked,
            threads,
        }
    }

    /// Holds the workers between two iterations (everything they sent is acknowledged).
    fn hold(&self) {
        self.pause.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.paused.load(Ordering::Acquire) < WORKERS as u64 {
            assert!(Instant::now() < deadline, "the load did not pause");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn release(&self) {
        self.pause.store(false, Ordering::Release);
    }

    fn finish(mut self) -> Arc<Acked> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        self.acked.clone()
    }
}

fn wait_shadow_drained(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = proxy.status_json();
        if status["shadow_queue"] == 0 {
            assert_eq!(status["rollback_safe"], true, "{status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shadow queue never drained: {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With the load held: the primary has exactly what was acknowledged, and (while shadowing)
/// the other side holds the same data.
fn checkpoint(
    proxy: &Proxy,
    load: &Load,
    source: &Server,
    target: &Server,
    label: &str,
    shadowing: bool,
) {
    load.hold();
    let errors = load.acked.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{label}: clients saw errors: {errors:?}");
    let status = proxy.status_json();
    let primary = if status["primary"] == "target" {
        target
    } else {
        source
    };
    let mut p = primary.conn();
    for w in 0..WORKERS {
        let n: Option<u64> = redis::cmd("GET")
            .arg(format!("counter:{w}"))
            .query(&mut p)
            .unwrap();
        assert_eq!(
            n.unwrap_or(0),
            load.acked.counters[w].load(Ordering::Acquire),
            "{label}: counter:{w}"
        );
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("list:{w}"))
            .arg(0)
            .arg(-1)
            .query(&mut p)
            .unwrap();
        assert_eq!(
            list,
            load.acked.lists.lock().unwrap()[w],
            "{label}: list:{w} holds each acknowledged element once, in order"
        );
        let h: Option<u64> = redis::cmd("HGET")
            .arg("hash")
            .arg(format!("f{w}"))
            .query(&mut p)
            .unwrap();
        assert_eq!(
            h.unwrap_or(0),
            load.acked.hincr[w].load(Ordering::Acquire),
            "{label}: hash f{w}"
        );
        let s: Option<u64> = redis::cmd("GET")
            .arg(format!("script:{w}"))
            .query(&mut p)
            .unwrap();
        assert_eq!(
            s.unwrap_or(0),
            load.acked.script[w].load(Ordering::Acquire),
            "{label}: script:{w}"
        );
    }
    let shared: Option<u64> = redis::cmd("GET")
        .arg("counter:shared")
        .query(&mut p)
        .unwrap();
    assert_eq!(
        shared.unwrap_or(0),
        load.acked.shared.load(Ordering::Acquire),
        "{label}: counter:shared"
    );
    if shadowing {
        wait_shadow_drained(proxy);
        // In the replica overlap the shadow queue is always empty: the old side follows by
        // the link, asynchronously. With the load held, the link catches up: wait for that
        // (bounded) rather than compare at once.
        if let Err(differ) = common::moves::wait_equal(source, target, &[], Duration::from_secs(10))
        {
            panic!("{label}: source and target differ while shadowing: {differ:?}");
        }
        // `cutover verify` agrees (an independent comparison, exact TTLs aside).
        let out = verify(source, target);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{label}: cutover verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    load.release();
}

fn whole_story_under_load(from: Version, to: Version) {
    let (source, target) = source_and_target(from, to);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let load = Load::start(&proxy);

    // A subscriber and a BLPOP waiter, through the proxy, for the whole story.
    let mut sub = common::Raw::connect(&proxy.addr());
    assert!(sub.cmd_str(&["SUBSCRIBE", "events"]).contains("subscribe"));
    let waiter = {
        let addr = proxy.addr();
        std::thread::spawn(move || {
            let mut w = common::Raw::connect(&addr);
            w.send(&common::encode(&["BLPOP", "jobs", "0"]));
            w.read_reply_within(Duration::from_secs(30))
        })
    };
    let mut c = proxy.conn();
    let mut publish_and_receive = |label: &str| {
        let n: i64 = redis::cmd("PUBLISH")
            .arg("events")
            .arg(label)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 1, "{label}: the subscriber is on the primary");
        let msg = sub
            .read_reply_within(Duration::from_secs(5))
            .expect("message");
        assert!(
            common::show(&msg).contains(label),
            "{label}: {}",
            common::show(&msg)
        );
    };
    std::thread::sleep(Duration::from_millis(300));
    checkpoint(&proxy, &load, &source, &target, "before", false);

    let mut pauses = Vec::new();
    for (verb, label) in [
        ("switch", "switch 1"),
        ("rollback", "rollback"),
        ("switch", "switch 2"),
    ] {
        let report = step(&proxy, verb);
        pauses.push(report["pause_ms"].as_f64().unwrap());
        std::thread::sleep(Duration::from_millis(300));
        checkpoint(&proxy, &load, &source, &target, label, true);
        publish_and_receive(label);
        if label == "rollback" {
            // The waiter moved twice by now; give it its element.
            let mut p = proxy.conn();
            let _: i64 = redis::cmd("RPUSH")
                .arg("jobs")
                .arg("the-job")
                .query(&mut p)
                .unwrap();
        }
    }
    let got = waiter
        .join()
        .unwrap()
        .expect("the BLPOP waiter got an answer");
    assert_eq!(
        common::show(&got),
        common::show(b"*2\r\n$4\r\njobs\r\n$7\r\nthe-job\r\n")
    );
    step(&proxy, "finish");
    std::thread::sleep(Duration::from_millis(200));
    checkpoint(&proxy, &load, &source, &target, "finish", false);
    let acked = load.finish();
    assert!(acked.ops.load(Ordering::Relaxed) > 100, "the load ran");
    assert!(acked.errors.lock().unwrap().is_empty());
    let status = proxy.status_json();
    assert_eq!(status["phase"], "finished", "{status}");
    assert!(status["proxy"]["clients_accepted"].as_u64().unwrap() >= WORKERS as u64);
    eprintln!("pauses (ms): {pauses:?}");
}

#[test]
fn the_whole_story_under_load_valkey_9_1_to_redis_7_0() {
    whole_story_under_load(Version::Valkey91, Version::Redis70);
}

#[test]
fn the_whole_story_under_load_redis_7_0_to_redis_6_2() {
    whole_story_under_load(Version::Redis70, Version::Redis62);
}

/// After a switch (in `overlap`), the source stops accepting writes (out of memory) and a
/// write goes to the target: the rollback turns unsafe. The servers, the proxy, a direct
/// connection to the source, a connection through the proxy and the reason given.
fn old_side_out_of_memory(
    overlap: &str,
) -> (
    Server,
    Server,
    Proxy,
    redis::Connection,
    redis::Connection,
    String,
) {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis70);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--overlap", overlap],
    );
    wait_streaming(&proxy);
    step(&proxy, "switch");
    assert_eq!(proxy.status_json()["cutover"]["overlap"], overlap);
    let mut direct = source.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut direct)
        .unwrap();
    let mut c = proxy.conn();
    let _: () = redis::cmd("SET")
        .arg("after-switch")
        .arg("v")
        .query(&mut c)
        .unwrap();
    eventually("rollback marked unsafe", || {
        proxy.status_json()["rollback_safe"] == false
    });
    let status = proxy.status_json();
    let reason = status["cutover"]["rollback_unsafe_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("OOM"), "{status}");
    (source, target, proxy, direct, c, reason)
}

#[test]
fn a_rollback_is_refused_once_the_old_side_missed_writes_unless_forced() {
    // The next shadow write fails on the source.
    let (_source, _target, proxy, mut direct, mut c, _) = old_side_out_of_memory("shadow");
    // The client never noticed: the primary is the target.
    assert_eq!(get(&mut c, "after-switch").as_deref(), Some("v"));
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missed writes"), "{err}");
    assert_eq!(proxy.status_json()["primary"], "target");
    assert!(proxy.metrics().contains("cutover_shadow_unsafe_total"));
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut direct)
        .unwrap();
    let (code, out, err) = cli(&proxy, &["rollback", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("source is the primary"), "{out}");
}

#[test]
fn in_replica_overlap_a_rollback_waits_until_the_old_side_took_every_write() {
    // The reverse link cannot apply.
    let (_source, _target, proxy, mut direct, mut c, _) = old_side_out_of_memory("replica");
    // The client never noticed: the primary is the target.
    assert_eq!(get(&mut c, "after-switch").as_deref(), Some("v"));
    for args in [&["rollback"][..], &["rollback", "--force"]] {
        let (code, _, err) = cli(&proxy, args);
        assert_eq!(code, 1, "{args:?} must be refused: {err}");
        assert!(err.contains("reverse link"), "{err}");
    }
    assert_eq!(proxy.status_json()["primary"], "target");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut direct)
        .unwrap();
    // The link resumes from the position it stored on the source, and catches up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.status_json()["rollback_safe"] != true {
        assert!(
            Instant::now() < deadline,
            "never safe again: {}",
            proxy.status_json()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&mut direct, "after-switch").as_deref(), Some("v"));
    let report = step(&proxy, "rollback");
    assert_eq!(report["primary"], "source", "{report}");
    assert_eq!(get(&mut c, "after-switch").as_deref(), Some("v"));
}

#[test]
fn shadow_writes_keep_the_clients_database() {
    let (source, target) = source_and_target(Version::Valkey91, Version::Redis62);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--overlap", "shadow"],
    );
    wait_streaming(&proxy);
    step(&proxy, "switch");
    let mut c = common::Raw::connect(&proxy.addr());
    assert_eq!(c.cmd_str(&["SELECT", "5"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "in5", "x"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["INCRBY", "n5", "7"]), ":7\r\n");
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["INCR", "n5"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["RPUSH", "l5", "a", "b"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "*2\r\n:8\r\n:2\r\n");
    let mut src = common::Raw::connect(&source.addr());
    assert_eq!(src.cmd_str(&["SELECT", "5"]), "+OK\r\n");
    eventually("db 5 writes shadowed to db 5", || {
        src.cmd_str(&["GET", "in5"]) == "$1\r\nx\r\n"
            && src.cmd_str(&["GET", "n5"]) == "$1\r\n8\r\n"
            && src.cmd_str(&["LLEN", "l5"]) == ":2\r\n"
    });
    assert_eq!(src.cmd_str(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(src.cmd_str(&["EXISTS", "in5"]), ":0\r\n");
}

#[test]
fn a_new_run_refuses_a_target_that_was_switched_to() {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    step(&proxy, "switch");
    let mut c = proxy.conn();
    let n: i64 = redis::cmd("INCR").arg("after").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let mut src = source.conn();
    eventually("the INCR shadowed to the source", || {
        get(&mut src, "after").as_deref() == Some("1")
    });
    drop(proxy);
    // Restarting with the same configuration would send clients back to the source and
    // replay the shadowed INCR into the target: refused, with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--source", &source.url(), "--target", &target.url()])
        .args([
            "--proxy-listen",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .output()
        .expect("run cutover");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was switched to"), "{err}");
    // `cutover sync` into it is refused too; the target is untouched.
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "sync",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
            "--once",
        ])
        .output()
        .expect("run cutover sync");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&mut target.conn(), "after").as_deref(), Some("1"));
    // The marker is cutover's own: verify does not report it as an extra key.
    let out = verify(&source, &target);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A move refused (or aborted) because a server did not answer must not happen later, once
/// the server answers again; and the CLI hears so well before its own 30 s limit.
fn a_frozen_target_refuses_the_switch_for_good(overlap: &str) {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis70);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--overlap", overlap],
    );
    wait_streaming(&proxy);
    target.signal("STOP");
    let started = Instant::now();
    let (code, _, err) = cli(&proxy, &["switch", "--max-pause-ms", "100"]);
    let took = started.elapsed();
    target.signal("CONT");
    assert_eq!(code, 1, "{err}");
    assert!(
        took < Duration::from_secs(15),
        "answered after {took:?}: {err}"
    );
    assert!(
        err.contains("target") && (err.contains("answer") || err.contains("time")),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let status = proxy.status_json();
    assert_eq!(status["primary"], "source", "{status}");
    assert!(
        status["cutover"]["history"].as_array().unwrap().is_empty(),
        "{status}"
    );
    // And the target still works for a real switch afterwards.
    wait_streaming(&proxy);
    assert_eq!(step(&proxy, "switch")["primary"], "target");
}

#[test]
fn a_frozen_target_refuses_the_switch_for_good_in_replica_overlap() {
    a_frozen_target_refuses_the_switch_for_good("replica");
}

#[test]
fn a_frozen_target_refuses_the_switch_for_good_in_shadow_overlap() {
    a_frozen_target_refuses_the_switch_for_good("shadow");
}

/// In shadow overlap a big write (past the size from which the proxy streams requests) is
/// still shadowed: it is kept whole up to `proxy.buffer_limit_bytes`, so a rollback returns
/// it. A write bigger than that limit is forwarded, and the rollback says it is no longer safe.
#[test]
fn big_writes_are_shadowed_or_make_the_rollback_unsafe() {
    let (source, target) = source_and_target(Version::Redis70, Version::Redis70);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--overlap", "shadow"],
    );
    wait_streaming(&proxy);
    assert_eq!(step(&proxy, "switch")["primary"], "target");
    let mut c = proxy.conn();
    let big = "x".repeat(1024 * 1024);
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("APPEND")
        .arg("big")
        .arg("!")
        .query(&mut c)
        .unwrap();
    let mut src = source.conn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: usize = redis::cmd("STRLEN").arg("big").query(&mut src).unwrap();
        if n == big.len() + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 1 MB write never reached the old side ({n} bytes)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.status_json()["rollback_safe"], true);
    // Bigger than the buffer limit: served, but the rollback is no longer exact.
    // The default limit is 4 MiB; one read may take the buffer past it by what the buffer
    // has room for (up to about as much again), so the value is well beyond both.
    let huge = "y".repeat(24 * 1024 * 1024);
    let _: () = redis::cmd("SET")
        .arg("huge")
        .arg(&huge)
        .query(&mut c)
        .unwrap();
    let n: usize = redis::cmd("STRLEN").arg("huge").query(&mut c).unwrap();
    assert_eq!(n, huge.len());
    let status = proxy.status_json();
    assert_eq!(status["rollback_safe"], false, "{status}");
    assert!(
        status.to_string().contains("buffer_limit_bytes"),
        "{status}"
    );
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_ne!(code, 0, "the rollback is refused: {err}");
}
