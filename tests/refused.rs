//! What the side a link writes to refuses (issue 19, part 4): a link writes as an ordinary
//! client, so a command a replica would obey from its master can be refused.
//!
//! - Every propagated form of `XADD`/`XTRIM` (`MAXLEN`/`MINID`, `~`/`=`, with and without
//!   `LIMIT`, alone, in a transaction, in a script) written through the proxy reaches the
//!   other side: in the snapshot, in the stream, and in both directions of the overlap
//!   (switch → rollback → switch → finish), compared key by key with an independent client.
//! - A permanent refusal (a string past the target's `proto-max-bulk-len`) stops the link:
//!   status names the command, its key and the reason, the gauge for the alert is set, the
//!   first switch is refused with the same detail; after a switch, the same on the old side
//!   makes the rollback unsafe and refused.
//! - Transient refusals (`NOREPLICAS` under `min-replicas-to-write`, `OOM` under
//!   `maxmemory`, `BUSY` while a script runs) are retried in order until the target takes
//!   them: status says what the link waits for, the switch is refused meanwhile, and then
//!   every acknowledged write is on the target exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, Server, Version, cli, differences, snapshot, step, wait_streaming};

fn q<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")))
}

/// Waits until both sides hold the same keys and values (10 s at most).
fn assert_equal(a: &Server, b: &Server, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let differ = differences(&snapshot(&mut a.conn()), &snapshot(&mut b.conn()), 5);
        if differ.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{label}: {differ:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every trimming form of XADD and XTRIM, `rounds` times, on keys `<prefix>…`: the
/// approximate ones with `LIMIT` are what a primary propagates as `= <length> LIMIT n`.
fn trim_writes(c: &mut redis::Connection, prefix: &str, rounds: u64) {
    let k = |s: &str| format!("{prefix}{s}");
    for i in 1..=rounds {
        let v = i.to_string();
        let old = format!("{}-0", i.saturating_sub(8));
        let id = format!("{i}-1");
        let _: String = q(
            c,
            &[
                "XADD",
                &k("maxlen~limit"),
                "MAXLEN",
                "~",
                "6",
                "LIMIT",
                "8",
                "*",
                "f",
                &v,
            ],
        );
        let _: String = q(
            c,
            &["XADD", &k("maxlen~"), "MAXLEN", "~", "6", "*", "f", &v],
        );
        let _: String = q(
            c,
            &["XADD", &k("maxlen="), "MAXLEN", "=", "6", "*", "f", &v],
        );
        let _: String = q(c, &["XADD", &k("maxlen"), "MAXLEN", "6", "*", "f", &v]);
        let _: String = q(
            c,
            &[
                "XADD",
                &k("minid~limit"),
                "MINID",
                "~",
                &old,
                "LIMIT",
                "8",
                &id,
                "f",
                &v,
            ],
        );
        let _: String = q(c, &["XADD", &k("minid~"), "MINID", "~", &old, &id, "f", &v]);
        let _: String = q(c, &["XADD", &k("minid="), "MINID", "=", &old, &id, "f", &v]);
        let _: Option<String> = q(
            c,
            &[
                "XADD",
                &k("nomk"),
                "NOMKSTREAM",
                "MAXLEN",
                "~",
                "4",
                "LIMIT",
                "4",
                "*",
                "f",
                &v,
            ],
        );
        let _: String = q(c, &["XADD", &k("xtrim"), "*", "f", &v]);
        let _: i64 = q(c, &["XTRIM", &k("xtrim"), "MAXLEN", "~", "5", "LIMIT", "8"]);
        let _: String = q(c, &["XADD", &k("xtrim-minid"), &id, "f", &v]);
        let _: i64 = q(
            c,
            &["XTRIM", &k("xtrim-minid"), "MINID", "~", &old, "LIMIT", "8"],
        );
        let _: i64 = q(c, &["XTRIM", &k("maxlen="), "MAXLEN", "=", "5"]);
        // In a transaction, and from a script (propagated as its effects).
        let _: (String, i64) = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(k("multi"))
            .arg("MAXLEN")
            .arg("~")
            .arg(5)
            .arg("LIMIT")
            .arg(8)
            .arg("*")
            .arg("f")
            .arg(&v)
            .cmd("XTRIM")
            .arg(k("multi"))
            .arg("MINID")
            .arg("~")
            .arg("0-1")
            .arg("LIMIT")
            .arg(8)
            .query(c)
            .unwrap();
        let _: String = redis::cmd("EVAL")
            .arg("return redis.call('XADD', KEYS[1], 'MAXLEN', '~', 5, 'LIMIT', 8, '*', 'f', ARGV[1])")
            .arg(1)
            .arg(k("script"))
            .arg(&v)
            .query(c)
            .unwrap();
    }
    // The NOMKSTREAM stream exists from here on (the first rounds made nothing).
    let _: String = q(c, &["XADD", &k("nomk"), "*", "f", "first"]);
    let _: String = q(
        c,
        &[
            "XADD",
            &k("nomk"),
            "NOMKSTREAM",
            "MAXLEN",
            "~",
            "4",
            "LIMIT",
            "4",
            "*",
            "f",
            "x",
        ],
    );
}

/// The approximate trims did trim (whole nodes of 4 entries): the test exercises LIMIT.
fn assert_trimmed(c: &mut redis::Connection, prefix: &str, rounds: u64) {
    for key in ["maxlen~limit", "minid~limit", "script", "multi"] {
        let n: u64 = q(c, &["XLEN", &format!("{prefix}{key}")]);
        assert!(
            n < rounds / 2,
            "{prefix}{key} has {n} entries after {rounds} adds"
        );
    }
}

fn unapplied(proxy: &Proxy) -> u64 {
    let s = proxy.status_json();
    s["sync"]["unapplied_commands"].as_u64().unwrap_or(u64::MAX)
}

const NODE: &[&str] = &["--stream-node-max-entries", "4"];

fn every_trim_form_reaches_the_other_side(from: Version, to: Version) {
    let source = Server::start_with(from, NODE);
    let target = Server::start_with(to, NODE);
    const ROUNDS: u64 = 40;
    // In the snapshot.
    trim_writes(&mut source.conn(), "snap:", ROUNDS);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    assert_equal(&source, &target, "after the snapshot");
    let mut c = proxy.conn();
    // In the stream.
    trim_writes(&mut c, "stream:", ROUNDS);
    assert_trimmed(&mut source.conn(), "stream:", ROUNDS);
    assert_equal(&source, &target, "in the stream");
    assert_eq!(unapplied(&proxy), 0, "{}", proxy.status_json());
    // Both directions of the overlap.
    for (i, verb) in ["switch", "rollback", "switch"].iter().enumerate() {
        step(&proxy, verb);
        let prefix = format!("{verb}{i}:");
        trim_writes(&mut c, &prefix, ROUNDS);
        let primary = if *verb == "rollback" {
            &source
        } else {
            &target
        };
        assert_trimmed(&mut primary.conn(), &prefix, ROUNDS);
        assert_equal(&source, &target, verb);
        let status = proxy.status_json();
        assert_eq!(status["rollback_safe"], true, "{verb}: {status}");
        for link in status["cutover"]["links"].as_array().unwrap() {
            assert_eq!(link["unapplied_commands"], 0, "{link}");
        }
    }
    step(&proxy, "finish");
    assert_equal(&source, &target, "after finish");
}

#[test]
fn every_trim_form_reaches_the_other_side_redis_7_0() {
    every_trim_form_reaches_the_other_side(Version::Redis70, Version::Redis70);
}

#[test]
fn every_trim_form_reaches_the_other_side_redis_6_2_to_valkey_9_1() {
    every_trim_form_reaches_the_other_side(Version::Redis62, Version::Valkey91);
}

/// The first entry of the link's `unapplied` list, from the proxy's status (the forward
/// link's `sync` object, or the link `direction` of the overlap).
fn first_unapplied(proxy: &Proxy, direction: Option<&str>) -> Option<serde_json::Value> {
    let s = proxy.status_json();
    let link = match direction {
        None => s["sync"].clone(),
        Some(d) => s["cutover"]["links"]
            .as_array()?
            .iter()
            .find(|l| l["direction"] == d)?
            .clone(),
    };
    link["unapplied"].as_array()?.first().cloned()
}

/// Waits (up to 10 s) for the link's first `unapplied` entry.
fn wait_unapplied(proxy: &Proxy, direction: Option<&str>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(u) = first_unapplied(proxy, direction) {
            return u;
        }
        assert!(Instant::now() < deadline, "{}", proxy.status_json());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_permanent_refusal_stops_the_link_and_refuses_the_moves() {
    let source = Server::start(Version::Redis70);
    let target = Server::start_with(Version::Redis70, &["--proto-max-bulk-len", "1mb"]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut c = proxy.conn();
    let _: i64 = q(&mut c, &["SETRANGE", "big", "1500000", "x"]);
    let _: () = q(&mut c, &["SET", "after", "1"]);
    let u = wait_unapplied(&proxy, None);
    assert!(
        u["command"].as_str().unwrap().starts_with("SETRANGE"),
        "{u}"
    );
    assert_eq!(u["key"], "big", "{u}");
    assert!(
        u["reason"].as_str().unwrap().contains("proto-max-bulk-len"),
        "{u}"
    );
    let status = proxy.status_json();
    assert_eq!(status["sync"]["halted"], true, "{status}");
    assert_eq!(status["sync"]["phase"], "sync_error", "{status}");
    let metrics = proxy.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cutover_sync_unapplied_commands{direction=\"forward\"} 1")),
        "{metrics}"
    );
    for args in [&["switch"][..], &["switch", "--force"]] {
        let (code, _, err) = cli(&proxy, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("SETRANGE") && err.contains("'big'") && err.contains("proto-max-bulk-len"),
            "{err}"
        );
    }
    // The link stays stopped (not retried into skipping the write).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(proxy.status_json()["sync"]["halted"], true);
    assert_eq!(proxy.status_json()["primary"], "source");
}

#[test]
fn a_permanent_refusal_on_the_old_side_makes_the_rollback_unsafe() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    step(&proxy, "switch");
    let mut c = proxy.conn();
    let _: () = q(&mut c, &["SET", "a", "1"]);
    assert_equal(&source, &target, "after the switch");
    let _: () = q(
        &mut source.conn(),
        &["CONFIG", "SET", "proto-max-bulk-len", "1mb"],
    );
    let _: i64 = q(&mut c, &["SETRANGE", "big", "1500000", "x"]);
    let u = wait_unapplied(&proxy, Some("target_to_source"));
    assert_eq!(u["key"], "big", "{u}");
    let status = proxy.status_json();
    assert_eq!(status["rollback_safe"], false, "{status}");
    let why = status["cutover"]["rollback_unsafe_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("SETRANGE") && why.contains("'big'"),
        "{status}"
    );
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SETRANGE"), "{err}");
    assert_eq!(proxy.status_json()["primary"], "target");
    // `finish` still ends both links.
    step(&proxy, "finish");
}

/// A condition on the target that refuses every write for a while: set, then cleared.
fn transient_refusal(
    name: &str,
    target_args: &[&str],
    set: &dyn Fn(&Server) -> Option<std::thread::JoinHandle<()>>,
    clear: &dyn Fn(&Server),
    expect: &str,
) {
    let source = Server::start(Version::Redis70);
    let target = Server::start_with(Version::Redis70, target_args);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut c = proxy.conn();
    let _: i64 = q(&mut c, &["INCR", "ctr"]);
    assert_equal(&source, &target, "before");
    let busy = set(&target);
    const N: i64 = 200;
    for i in 0..N {
        let _: i64 = q(&mut c, &["INCR", "ctr"]);
        let _: i64 = q(&mut c, &["RPUSH", "l", &i.to_string()]);
        if i == N / 2 {
            // The link saw the refusal and waits on it.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let s = proxy.status_json();
                if s["sync"]["waiting_on_refusal"]
                    .as_str()
                    .is_some_and(|w| w.contains(expect))
                {
                    break;
                }
                assert!(Instant::now() < deadline, "{name}: {s}");
                std::thread::sleep(Duration::from_millis(20));
            }
            let (code, _, err) = cli(&proxy, &["switch"]);
            assert_eq!(code, 1, "{name}: {err}");
            assert!(err.contains(expect), "{name}: {err}");
        }
    }
    clear(&target);
    if let Some(t) = busy {
        t.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let differ = differences(
            &snapshot(&mut source.conn()),
            &snapshot(&mut target.conn()),
            3,
        );
        if differ.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {differ:?} {}",
            proxy.status_json()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut t = target.conn();
    assert_eq!(q::<i64>(&mut t, &["GET", "ctr"]), N + 1, "{name}");
    let l: Vec<i64> = q(&mut t, &["LRANGE", "l", "0", "-1"]);
    assert_eq!(l, (0..N).collect::<Vec<_>>(), "{name}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.status_json()["sync"]["waiting_on_refusal"].is_null()
        || proxy.status_json()["phase"] != "streaming"
    {
        assert!(Instant::now() < deadline, "{name}: {}", proxy.status_json());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(unapplied(&proxy), 0, "{name}");
    let report = step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{name}: {report}");
}

#[test]
fn min_replicas_to_write_on_the_target_is_waited_out() {
    transient_refusal(
        "min-replicas-to-write",
        &[],
        &|t| {
            // (The reverse link is one replica of the target: two are asked for.)
            let _: () = q(
                &mut t.conn(),
                &["CONFIG", "SET", "min-replicas-to-write", "2"],
            );
            None
        },
        &|t| {
            let _: () = q(
                &mut t.conn(),
                &["CONFIG", "SET", "min-replicas-to-write", "0"],
            );
        },
        "NOREPLICAS",
    );
}

#[test]
fn a_full_target_is_waited_out() {
    transient_refusal(
        "maxmemory",
        &[],
        &|t| {
            let _: () = q(&mut t.conn(), &["CONFIG", "SET", "maxmemory", "1"]);
            None
        },
        &|t| {
            let _: () = q(&mut t.conn(), &["CONFIG", "SET", "maxmemory", "0"]);
        },
        "OOM",
    );
}

#[test]
fn a_long_script_on_the_target_is_waited_out() {
    transient_refusal(
        "busy script",
        &["--busy-reply-threshold", "20"],
        &|t| {
            let url = t.url();
            let started = std::time::Instant::now();
            let h = std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                // Runs until SCRIPT KILL (at most ~60 s: a bounded loop).
                let r: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
                    .arg("local i = 0 while i < 4000000000 do i = i + 1 end return i")
                    .arg(0)
                    .query(&mut c);
                assert!(r.is_err(), "the script was killed: {r:?}");
            });
            while started.elapsed() < Duration::from_millis(200) {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(h)
        },
        &|t| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r: redis::RedisResult<()> =
                    redis::cmd("SCRIPT").arg("KILL").query(&mut t.conn());
                if r.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "SCRIPT KILL: {r:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        },
        "BUSY",
    );
}

/// A `CLIENT PAUSE WRITE` on the target does not refuse: it holds the link's writes until it
/// ends. A switch meanwhile does not go through (the target cannot reach the source's
/// offset); afterwards every write is there exactly once and the switch goes through.
#[test]
fn a_client_pause_on_the_target_holds_the_link_and_loses_nothing() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut c = proxy.conn();
    let _: () = q(&mut target.conn(), &["CLIENT", "PAUSE", "2000", "WRITE"]);
    let paused = Instant::now();
    const N: i64 = 100;
    for i in 0..N {
        let _: i64 = q(&mut c, &["INCR", "ctr"]);
        let _: i64 = q(&mut c, &["RPUSH", "l", &i.to_string()]);
    }
    let (code, _, err) = cli(&proxy, &["switch"]);
    assert!(
        paused.elapsed() < Duration::from_millis(1800),
        "the pause ended too early for the test"
    );
    assert_eq!(
        code, 1,
        "a switch while the target holds the link's writes: {err}"
    );
    assert_eq!(proxy.status_json()["primary"], "source");
    assert_equal(&source, &target, "after the pause");
    let mut t = target.conn();
    assert_eq!(q::<i64>(&mut t, &["GET", "ctr"]), N);
    let l: Vec<i64> = q(&mut t, &["LRANGE", "l", "0", "-1"]);
    assert_eq!(l, (0..N).collect::<Vec<_>>());
    assert_eq!(unapplied(&proxy), 0);
    wait_streaming(&proxy);
    let report = step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{report}");
}
