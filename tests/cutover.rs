//! `cutover switch / rollback / finish` against real servers: the barrier, the shadow writes
//! and the state that crosses a flip.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proxy, Server, Version};

/// Runs the CLI against the proxy's admin listener: (exit code, stdout, stderr).
fn cli(proxy: &Proxy, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .args(["--admin", &proxy.admin_addr()])
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .env_remove("CUTOVER_CONFIG")
        .env_remove("CUTOVER_ADMIN")
        .output()
        .expect("run cutover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cutover <verb> --json`, which must succeed; the report.
fn step(proxy: &Proxy, verb: &str) -> serde_json::Value {
    let (code, out, err) = cli(proxy, &[verb, "--json"]);
    assert_eq!(
        code,
        0,
        "cutover {verb} failed: {err}\nproxy log:\n{}",
        common::tail(&proxy.log(), 3000)
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{verb} printed no JSON ({e}): {out}"))
}

fn wait_streaming(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = proxy.status_json();
        if status["phase"] == "streaming" && status["lag_bytes"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reached streaming: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn source_and_target(from: Version, to: Version) -> (Server, Server) {
    let source = Server::start_with(from, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(to);
    (source, target)
}

fn get(conn: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(conn).unwrap()
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
