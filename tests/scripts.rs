//! Scripts across moves (issue 18): since Redis 7.0 `SCRIPT LOAD` is not replicated, so the
//! new primary never had the scripts the applications call by SHA. The proxy keeps every
//! script it sees (`SCRIPT LOAD`, `EVAL` bodies) and loads them into the new primary inside
//! each move. Here: `SCRIPT LOAD` + `EVALSHA` across switch → rollback → switch → finish,
//! on a session of the shared connection and on a pinned one, with a script first seen as
//! an `EVAL` body and scripts loaded between moves; after each move every `EVALSHA` works
//! on the first try, the new primary has every script (`SCRIPT EXISTS`, asked directly),
//! both sides are equal, and every `EVALSHA`'s increment is on the primary exactly once.
//! One story (`scripts_survive_every_move_in`) for every pair of servers here: a subset in
//! every `cargo test`, all 25 ordered pairs with `CUTOVER_SCRIPTS_ALL_PAIRS=1`.

mod common;

use common::sides::{assert_sides_equal, config_file};
use common::{Proxy, Raw, Server, Version, show, step, wait_streaming};

/// A client of the proxy: a raw connection that sends nothing but the test's commands (so it
/// stays on the proxy's shared connection), or one pinned to its own backend connection by
/// `CLIENT SETNAME` (redis-rs also sends `CLIENT SETINFO` at connect, which pins it too).
enum App {
    Shared(Raw),
    Pinned(redis::Connection),
}

impl App {
    /// One command; its reply, or the error the server answered.
    fn run(&mut self, args: &[String]) -> Result<String, String> {
        match self {
            App::Shared(raw) => {
                let reply = raw.cmd(args);
                match reply.first() {
                    Some(b'-') => Err(show(&reply)),
                    _ => Ok(String::from_utf8_lossy(&reply).into_owned()),
                }
            }
            App::Pinned(c) => {
                let mut cmd = redis::cmd(&args[0]);
                for a in &args[1..] {
                    cmd.arg(a);
                }
                cmd.query::<redis::Value>(c)
                    .map(|v| format!("{v:?}"))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// `SCRIPT LOAD body`: the SHA the server answered.
    fn load(&mut self, body: &str) -> String {
        let reply = self
            .run(&["SCRIPT".into(), "LOAD".into(), body.into()])
            .expect("SCRIPT LOAD");
        let sha = common::sides::sha1_of(body);
        assert!(reply.contains(&sha), "SCRIPT LOAD answered {reply}");
        sha
    }
}

/// (body, key it increments): each script adds 1 to its own counter.
const SCRIPTS: [&str; 5] = [
    "return redis.call('INCR', KEYS[1])",
    "return redis.call('INCRBY', KEYS[1], 1)",
    "local v = redis.call('INCR', KEYS[1]) return v",
    "redis.call('INCR', KEYS[1]) return 'ok'",
    "return redis.call('HINCRBY', KEYS[1], 'n', 1)",
];

/// `EVAL body 1 {s}:ctr:<i>` (the script is first seen as an EVAL body), counted.
fn eval(c: &mut App, body: &str, i: usize, counts: &mut [i64]) -> String {
    c.run(&[
        "EVAL".into(),
        body.into(),
        "1".into(),
        format!("{{s}}:ctr:{i}"),
    ])
    .expect("EVAL");
    counts[i] += 1;
    common::sides::sha1_of(body)
}

/// Runs script `i` by SHA once and counts it; an error (NOSCRIPT) fails the test.
fn evalsha(c: &mut App, shas: &[String], i: usize, counts: &mut [i64], label: &str) {
    let r = c.run(&[
        "EVALSHA".into(),
        shas[i].clone(),
        "1".into(),
        format!("{{s}}:ctr:{i}"),
    ]);
    if let Err(e) = r {
        panic!("{label}: EVALSHA of script {i} failed: {e}");
    }
    counts[i] += 1;
}

fn counter(c: &mut redis::Connection, i: usize) -> i64 {
    let key = format!("{{s}}:ctr:{i}");
    if i == 4 {
        redis::cmd("HGET")
            .arg(&key)
            .arg("n")
            .query::<Option<i64>>(c)
            .unwrap()
            .unwrap_or(0)
    } else {
        redis::cmd("GET")
            .arg(&key)
            .query::<Option<i64>>(c)
            .unwrap()
            .unwrap_or(0)
    }
}

/// Every known script is on `primary` (asked directly), and every counter there is what
/// the acknowledged `EVALSHA`s make it.
fn check_primary(primary: &Server, shas: &[String], known: usize, counts: &[i64], label: &str) {
    let mut c = primary.conn();
    let mut exists = redis::cmd("SCRIPT");
    exists.arg("EXISTS");
    for s in &shas[..known] {
        exists.arg(s);
    }
    let have: Vec<i64> = exists.query(&mut c).unwrap();
    assert_eq!(have, vec![1; known], "{label}: scripts on the new primary");
    for (i, want) in counts.iter().enumerate() {
        assert_eq!(
            counter(&mut c, i),
            *want,
            "{label}: counter {i} on the primary"
        );
    }
}

/// `server` is the version asked for (`INFO server`, asked directly): a pair is the pair
/// it says.
fn assert_runs(server: &Server, version: Version) {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut server.conn())
        .unwrap();
    let want = match version {
        Version::Redis62 => "redis_version:6.2.",
        Version::Redis70 => "redis_version:7.0.",
        Version::Redis82 => "redis_version:8.2.",
        Version::Valkey81 => "valkey_version:8.1.",
        Version::Valkey91 => "valkey_version:9.1.",
    };
    assert!(info.contains(want), "{version:?}: {info}");
}

fn scripts_survive_every_move(from: Version, to: Version) {
    scripts_survive_every_move_in(from, to, "auto");
}

fn scripts_survive_every_move_in(from: Version, to: Version, overlap: &str) {
    let source = Server::start(from);
    let target = Server::start(to);
    assert_runs(&source, from);
    assert_runs(&target, to);
    // (A pause limit above the default: a loaded test machine must not refuse a move for
    // its own steps' time; this test is about scripts.)
    let (_dir, config) = config_file("[cutover]\nmax_pause_ms = 1000\n");
    let proxy = Proxy::start(
        &source.url(),
        &[
            "--target",
            &target.url(),
            "--overlap",
            overlap,
            "--config",
            &config,
        ],
    );
    wait_streaming(&proxy);
    // A session of the shared connection, and one pinned to its own (CLIENT SETNAME).
    let mut shared = App::Shared(Raw::connect(&proxy.addr()));
    let mut pinned = {
        let mut c = proxy.conn();
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("pinned-app")
            .query(&mut c)
            .unwrap();
        App::Pinned(c)
    };
    let mut counts = [0i64; 5];
    let mut shas: Vec<String> = Vec::new();
    // Script 0: SCRIPT LOAD on the shared connection. Script 1: first seen as an EVAL body
    // (on the pinned session), then called by SHA.
    shas.push(shared.load(SCRIPTS[0]));
    shas.push(eval(&mut pinned, SCRIPTS[1], 1, &mut counts));
    let all = |c: &mut App, shas: &[String], counts: &mut [i64], label: &str| {
        for i in 0..shas.len() {
            evalsha(c, shas, i, counts, label);
        }
    };
    all(
        &mut shared,
        &shas,
        &mut counts,
        "before the switch (shared)",
    );
    all(
        &mut pinned,
        &shas,
        &mut counts,
        "before the switch (pinned)",
    );

    let moves = [
        ("switch", &target, 2usize),
        ("rollback", &source, 3),
        ("switch", &target, 4),
    ];
    for (n, (verb, primary, _)) in moves.iter().enumerate() {
        step(&proxy, verb);
        let label = format!("after move {n} ({verb})");
        // No EVALSHA fails because of the move, on either kind of session.
        all(&mut shared, &shas, &mut counts, &format!("{label}, shared"));
        all(&mut pinned, &shas, &mut counts, &format!("{label}, pinned"));
        check_primary(primary, &shas, shas.len(), &counts, &label);
        assert_sides_equal(&source, &target, &label);
        // A script loaded between moves: by SCRIPT LOAD on the pinned session after the
        // first move, as an EVAL body on the shared connection after the second, by SCRIPT
        // LOAD on the shared one after the third.
        let body = SCRIPTS[shas.len()];
        let i = shas.len();
        match n {
            0 => shas.push(pinned.load(body)),
            1 => shas.push(eval(&mut shared, body, i, &mut counts)),
            _ => shas.push(shared.load(body)),
        }
        all(
            &mut shared,
            &shas,
            &mut counts,
            &format!("{label}, new script"),
        );
    }
    step(&proxy, "finish");
    all(&mut shared, &shas, &mut counts, "after finish (shared)");
    all(&mut pinned, &shas, &mut counts, "after finish (pinned)");
    check_primary(&target, &shas, shas.len(), &counts, "after finish");
    let status = proxy.status_json();
    let scripts = &status["scripts"];
    assert_eq!(scripts["scripts"], 5, "{status}");
    assert_eq!(scripts["dropped"], 0, "{status}");
    assert!(scripts["max_scripts"].as_u64().unwrap() > 0, "{status}");
    assert!(
        scripts["loaded_by_moves"].as_u64().unwrap() >= 2 + 3 + 4,
        "{status}"
    );
}

// Every pair of servers here (`Version::EVERY`, 25 ordered pairs) runs the same story. In
// `cargo test` a subset: the pairs below make every version a source once and a target
// once at least (a rotation of `EVERY`: 6.2→7.0→8.2→Valkey 8.1→Valkey 9.1→6.2, plus 7.0→7.0,
// 7.0→Valkey 9.1 and the shadow overlap); all 25 with `CUTOVER_SCRIPTS_ALL_PAIRS=1`.

#[test]
fn scripts_cross_moves_redis_7_0_to_redis_7_0() {
    scripts_survive_every_move(Version::Redis70, Version::Redis70);
}

#[test]
fn scripts_cross_moves_redis_7_0_to_valkey_9_1() {
    scripts_survive_every_move(Version::Redis70, Version::Valkey91);
}

#[test]
fn scripts_cross_moves_redis_6_2_to_redis_7_0() {
    scripts_survive_every_move(Version::Redis62, Version::Redis70);
}

#[test]
fn scripts_cross_moves_redis_7_0_to_redis_8_2() {
    scripts_survive_every_move(Version::Redis70, Version::Redis82);
}

#[test]
fn scripts_cross_moves_redis_8_2_to_valkey_8_1() {
    scripts_survive_every_move(Version::Redis82, Version::Valkey81);
}

#[test]
fn scripts_cross_moves_valkey_8_1_to_valkey_9_1() {
    scripts_survive_every_move(Version::Valkey81, Version::Valkey91);
}

#[test]
fn scripts_cross_moves_valkey_9_1_to_redis_6_2() {
    scripts_survive_every_move(Version::Valkey91, Version::Redis62);
}

/// The same in the shadow overlap (the proxy copies each write, scripts run again on the old
/// side): the moves there (first switch, later flips) load the scripts too.
#[test]
fn scripts_cross_moves_in_shadow_overlap_redis_7_0_to_redis_7_0() {
    scripts_survive_every_move_in(Version::Redis70, Version::Redis70, "shadow");
}

/// All 25 ordered pairs of `Version::EVERY`, one after the other (each pair's proxy and
/// servers are stopped before the next starts), when `CUTOVER_SCRIPTS_ALL_PAIRS=1`: about
/// 25 times the cost of one pair, so not in every `cargo test`. Every pair runs even when
/// one fails; the failures are listed together at the end.
#[test]
fn scripts_cross_moves_every_version_pair() {
    if std::env::var("CUTOVER_SCRIPTS_ALL_PAIRS").as_deref() != Ok("1") {
        eprintln!("all 25 pairs run with CUTOVER_SCRIPTS_ALL_PAIRS=1; skipped");
        return;
    }
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for from in Version::EVERY {
        for to in Version::EVERY {
            let t = std::time::Instant::now();
            let run = std::panic::catch_unwind(|| scripts_survive_every_move(from, to));
            eprintln!(
                "{from:?} -> {to:?}: {} in {:.1} s",
                if run.is_ok() { "ok" } else { "FAILED" },
                t.elapsed().as_secs_f64()
            );
            if run.is_err() {
                failed.push(format!("{from:?} -> {to:?}"));
            }
        }
    }
    eprintln!(
        "25 pairs in {:.1} s, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "pairs that failed: {failed:?}");
}

/// A script loaded directly on the source (not through the proxy) cannot be copied (no
/// command lists the script cache): the first switch reports it (status: the source's count
/// of cached scripts beyond what the proxy knows). The ones clients call by SHA through the
/// proxy are named: status lists their SHAs (JSON and text, with a WARN) before any move,
/// both from a session of the shared connection and a pinned one (`EVALSHA_RO`); a SHA that
/// got `NOSCRIPT` and one the proxy knows are not listed; the move warns naming them and
/// goes on.
#[test]
fn a_script_loaded_directly_on_the_source_is_reported() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let (_dir, proxy) = proxy_with_room(&source, &target);
    wait_streaming(&proxy);
    let mut shared = App::Shared(Raw::connect(&proxy.addr()));
    let known = shared.load(SCRIPTS[0]);
    let direct = App::Pinned(source.conn()).load(SCRIPTS[1]);
    let direct_ro = App::Pinned(source.conn()).load("return redis.call('GET', KEYS[1])");
    let run = |c: &mut App, cmd: &str, sha: &str| {
        c.run(&[cmd.into(), sha.into(), "1".into(), "{s}:k".into()])
    };
    run(&mut shared, "EVALSHA", &known).expect("a known script");
    run(&mut shared, "EVALSHA", &direct).expect("a script loaded on the source");
    run(&mut shared, "EVALSHA", &direct).expect("again");
    let mut pinned = App::Pinned(proxy.conn());
    run(&mut pinned, "EVALSHA_RO", &direct_ro).expect("read-only, pinned");
    let missing = common::sides::sha1_of("return 'nowhere'");
    let err = run(&mut shared, "EVALSHA", &missing).expect_err("NOSCRIPT");
    assert!(err.contains("NOSCRIPT"), "{err}");
    let status = common::wait_for("the SHAs listed", std::time::Duration::from_secs(5), || {
        let s = proxy.status_json();
        (s["scripts"]["unknown_called"].as_array()?.len() == 2).then_some(s)
    });
    let listed = status["scripts"]["unknown_called"].to_string();
    for sha in [&direct, &direct_ro] {
        assert!(listed.contains(sha.as_str()), "{sha}: {listed}");
    }
    let (code, text, _) = common::cli(&proxy, &["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("WARN: clients call scripts by SHA that were not loaded through the proxy")
            && text.contains(&direct),
        "{text}"
    );
    step(&proxy, "switch");
    let status = proxy.status_json();
    assert_eq!(status["scripts"]["source_cached_at_switch"], 3, "{status}");
    assert_eq!(status["scripts"]["unknown_on_source"], 2, "{status}");
    let (code, text, _) = common::cli(&proxy, &["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("2 scripts cached on the source were not loaded through the proxy"),
        "{text}"
    );
    let log = proxy.log();
    assert!(
        log.lines().any(
            |l| l.contains("moving although clients call scripts by SHA")
                && l.contains(&direct)
                && l.contains(&direct_ro)
        ),
        "{log}"
    );
}

/// An `EVAL` whose argument is above the proxy's streaming size (256 KiB) is streamed to the
/// server; its body, whole in the head, is still learned: `EVALSHA` of it works on the new
/// primary after the switch.
#[test]
fn a_script_first_seen_in_a_streamed_eval_crosses_the_switch() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let (_dir, proxy) = proxy_with_room(&source, &target);
    wait_streaming(&proxy);
    let body = "return redis.call('SET', KEYS[1], ARGV[1])";
    let big = "v".repeat(300_000);
    let mut shared = App::Shared(Raw::connect(&proxy.addr()));
    shared
        .run(&[
            "EVAL".into(),
            body.into(),
            "1".into(),
            "{s}:big".into(),
            big,
        ])
        .expect("the big EVAL");
    step(&proxy, "switch");
    let sha = common::sides::sha1_of(body);
    let reply = shared.run(&[
        "EVALSHA".into(),
        sha.clone(),
        "1".into(),
        "{s}:small".into(),
        "x".into(),
    ]);
    assert!(reply.is_ok(), "EVALSHA after the switch: {reply:?}");
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query(&mut target.conn())
        .unwrap();
    assert_eq!(exists, vec![1]);
}

/// The new primary loses its script cache after a move (a `SCRIPT FLUSH` straight to it, as a
/// restart would): an `EVALSHA` of a script the proxy knows, the only command of its session
/// in flight, is answered `NOSCRIPT` by the server and sent again as `EVAL` by the proxy: the
/// client sees its result, on a session of the shared connection and on a pinned one
/// (`EVALSHA_RO`), and the script runs exactly once. Two `EVALSHA`s pipelined are not retried
/// (the second was already sent: a retry of the first would run after it); they get the
/// server's `NOSCRIPT`.
#[test]
fn an_evalsha_the_new_primary_lost_is_sent_again_as_eval() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let (_dir, proxy) = proxy_with_room(&source, &target);
    wait_streaming(&proxy);
    let mut shared = App::Shared(Raw::connect(&proxy.addr()));
    let mut pinned = App::Pinned(proxy.conn());
    let incr = shared.load(SCRIPTS[0]);
    let get = pinned.load("return redis.call('GET', KEYS[1])");
    step(&proxy, "switch");
    let flush = || {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut target.conn())
            .unwrap();
    };
    flush();
    let call = |c: &mut App, cmd: &str, sha: &str| {
        c.run(&[cmd.into(), sha.into(), "1".into(), "{s}:ctr:0".into()])
    };
    assert_eq!(
        call(&mut shared, "EVALSHA", &incr).as_deref(),
        Ok(":1\r\n"),
        "shared, after the primary's cache was flushed"
    );
    flush();
    let got = call(&mut pinned, "EVALSHA_RO", &get);
    assert!(
        got.as_deref().is_ok_and(|v| v.contains("\"1\"")),
        "pinned EVALSHA_RO after the flush: {got:?}"
    );
    let got = call(&mut pinned, "EVALSHA", &incr);
    assert!(
        got.as_deref().is_ok_and(|v| v.contains('2')),
        "pinned EVALSHA (its script was flushed too): {got:?}"
    );
    let n: i64 = redis::cmd("GET")
        .arg("{s}:ctr:0")
        .query(&mut target.conn())
        .unwrap();
    assert_eq!(n, 2, "each script ran once");
    // Pipelined: not retried.
    flush();
    let mut raw = Raw::connect(&proxy.addr());
    let one = common::encode(&["EVALSHA", incr.as_str(), "1", "{s}:ctr:0"]);
    raw.send(&[one.clone(), one].concat());
    let replies = raw.read_replies(2);
    assert!(
        replies.iter().all(|r| r.starts_with(b"-NOSCRIPT")),
        "{:?}",
        replies.iter().map(|r| show(r)).collect::<Vec<_>>()
    );
}

/// A proxy in front of `source` with `target`, whose pause limit leaves a loaded test
/// machine room (these tests are about scripts, not the pause).
fn proxy_with_room(source: &Server, target: &Server) -> (tempfile::TempDir, Proxy) {
    let (dir, config) = config_file("[cutover]\nmax_pause_ms = 1000\n");
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--config", &config],
    );
    (dir, proxy)
}
