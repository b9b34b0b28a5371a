//! Moves under real clients (issue 18): every write a client sends after a `switch` or a
//! `rollback` lands on the primary of that moment, whatever its size (around the 256 KiB
//! streaming size and the 4 MiB buffer limit), its form (alone, head of a pipeline, inside
//! `MULTI`), its command and its session (the shared connection, or its own after `SELECT` /
//! `CLIENT SETNAME`), in both overlaps. Checked with an independent client on both servers.
//!
//! The defect these tests pin: a connection's first write above the streaming size after a
//! move went to the connection of the old epoch, was answered `+OK`, and was lost.

mod common;

use std::time::{Duration, Instant};

use common::moves::*;
use common::{Proxy, Raw, Server, Version, encode, show, step, wait_streaming};

/// One case of the matrix: a client used before the move, and its first write after it.
struct Case {
    client: Raw,
    write: Write,
    form: Form,
    label: String,
}

/// Every case of the matrix for one move: sizes × forms × sessions with `SET`, plus the
/// other writes (alone) at 300 KB and 5 MB on both kinds of session.
fn cases(proxy: &Proxy, tag: &str, dump: &mut impl FnMut(&[u8]) -> Vec<u8>) -> Vec<Case> {
    let mut out = Vec::new();
    let sizes = [10, 200 * KB, 300 * KB, 5 * MB, 16 * MB];
    let mut n = 0;
    let mut add = |kind: &str, size: usize, form: Form, pin: Option<&str>, out: &mut Vec<Case>| {
        n += 1;
        let session = pin.unwrap_or("shared");
        let key = format!("{tag}:{kind}:{size}:{form:?}:{session}");
        let client = warm_client(proxy, pin, &format!("{tag}-{n}"));
        out.push(Case {
            client,
            write: write(kind, &key, size, dump),
            form,
            label: key,
        });
    };
    for (i, &size) in sizes.iter().enumerate() {
        let pinned = if i % 2 == 0 { "select" } else { "setname" };
        for form in [Form::Alone, Form::PipelineHead, Form::InMulti] {
            for pin in [None, Some(pinned)] {
                add("SET", size, form, pin, &mut out);
            }
        }
    }
    for kind in ["APPEND", "RPUSH", "HSET", "EVAL", "RESTORE"] {
        for size in [300 * KB, 5 * MB] {
            for pin in [None, Some("setname")] {
                add(kind, size, Form::Alone, pin, &mut out);
            }
        }
    }
    out
}

/// The matrix through `switch` then `rollback` in one overlap. `shadow`: the shadow overlap,
/// where a write over the 4 MiB buffer limit reaches the primary unshadowed (the rollback
/// then needs `--force`, and the old side lacks exactly those keys).
fn matrix(shadow: bool) {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    // The RESTORE payloads, made on a third server of the same version (nothing of it on
    // either side).
    let scratch = Server::start(Version::Redis70);
    let mut args = vec!["--target".to_string(), target.url()];
    if shadow {
        args.extend(["--overlap".to_string(), "shadow".to_string()]);
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let proxy = Proxy::start(&source.url(), &args);
    wait_streaming(&proxy);
    let limit = 4 * 1024 * 1024;
    let mut misses = Vec::new();
    for verb in ["switch", "rollback"] {
        let tag = format!("{}{verb}", if shadow { "s" } else { "r" });
        let mut cases = cases(&proxy, &tag, &mut dumper(&scratch));
        // (In the shadow overlap the switch's writes over the buffer limit made the rollback
        // unsafe, checked below: it is forced.)
        let report = move_retrying(&proxy, verb, verb == "rollback" && shadow);
        assert_eq!(report["action"], verb, "{report}");
        let (primary, old) = sides(&proxy, &source, &target);
        for case in &mut cases {
            if let Err(e) = send_first(&mut case.client, &case.write, case.form) {
                misses.push(format!("{verb}: {}: {e}", case.label));
            }
        }
        let mut unshadowed = Vec::new();
        for case in &cases {
            if !holds(primary, &case.write, case.form) {
                let where_ = if holds(old, &case.write, case.form) {
                    "on the old side instead"
                } else {
                    "nowhere"
                };
                misses.push(format!(
                    "{verb}: {} missed the primary ({where_})",
                    case.label
                ));
            }
            if shadow && case.write.size > limit {
                unshadowed.push(case.write.key.clone());
                unshadowed.push(format!("{}:n", case.write.key));
            }
        }
        // Both sides equal (in the shadow overlap but for the writes over the limit, which
        // the old side cannot have).
        if let Err(differ) = wait_equal(&source, &target, &unshadowed, Duration::from_secs(20)) {
            misses.push(format!("{verb}: the sides differ: {differ:?}"));
        }
        let status = proxy.status_json();
        if shadow && verb == "switch" {
            assert_eq!(status["rollback_safe"], false, "{status}");
            assert!(
                status.to_string().contains("buffer_limit_bytes"),
                "the rollback is unsafe for the writes over the limit: {status}"
            );
        } else if !shadow {
            assert_eq!(status["rollback_safe"], true, "{verb}: {status}");
        }
        // The big values go (through the proxy, so on both sides): the next move's snapshot
        // stays small.
        let mut c = Raw::connect(&proxy.addr());
        for case in &cases {
            let n = format!("{}:n", case.write.key);
            c.cmd(&["DEL", case.write.key.as_str(), n.as_str()]);
        }
        if let Err(differ) = wait_equal(&source, &target, &[], Duration::from_secs(20)) {
            misses.push(format!(
                "{verb}: after the clean-up the sides differ: {differ:?}"
            ));
        }
    }
    assert!(
        misses.is_empty(),
        "{} writes went wrong:\n{}\nproxy log:\n{}",
        misses.len(),
        misses.join("\n"),
        common::tail(&proxy.log(), 2000)
    );
    no_assertion_failed(&proxy);
}

#[test]
fn every_first_write_after_a_move_lands_on_the_primary_replica_overlap() {
    let started = Instant::now();
    matrix(false);
    eprintln!("replica overlap matrix: {:?}", started.elapsed());
}

#[test]
fn every_first_write_after_a_move_lands_on_the_primary_shadow_overlap() {
    let started = Instant::now();
    matrix(true);
    eprintln!("shadow overlap matrix: {:?}", started.elapsed());
}

// ----- property test: random sessions interleaved with moves ---------------------------------

/// One step of a session in the property test.
#[derive(Clone, Debug)]
enum Op {
    /// A `SET` of this size, in this form.
    Write(usize, Form),
    /// A `BLPOP` that times out (a blocking call on the session's own connection).
    Blocking,
    /// A `BLPOP` in flight across a move (cancelled on the old side, re-issued on the new
    /// primary), then answered by a push through another client.
    BlockedAcrossMove,
    /// A move (switch or rollback, whichever the phase allows).
    Move,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    // Around the streaming size (262 144 bytes), and one past several reads.
    let size = proptest::sample::select(vec![
        10usize, 200_000, 262_000, 262_144, 262_200, 300_000, 300_000, 1_000_000, 1_000_000,
    ]);
    let form = prop_oneof![
        Just(Form::Alone),
        Just(Form::PipelineHead),
        Just(Form::InMulti)
    ];
    prop_oneof![
        5 => (size, form).prop_map(|(s, f)| Op::Write(s, f)),
        1 => Just(Op::Blocking),
        1 => Just(Op::BlockedAcrossMove),
        4 => Just(Op::Move),
    ]
}

#[test]
fn a_session_through_random_commands_and_moves_always_writes_to_the_primary() {
    use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
    let cases: u32 = std::env::var("CUTOVER_MOVES_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(18),
        failure_persistence: None,
        // No shrinking: every step runs against real servers, and a failing case leaves its
        // keys behind, so a shrunk case would be reported for the wrong reason.
        max_shrink_iters: 0,
        ..Config::default()
    });
    let started = Instant::now();
    let n = std::cell::Cell::new(0u32);
    let moves = std::cell::Cell::new(0u32);
    let strategy = (
        proptest::sample::select(vec![None, Some("select"), Some("setname")]),
        proptest::collection::vec(op(), 2..10),
    );
    let result = runner.run(&strategy, |(pin, ops)| {
        n.set(n.get() + 1);
        let tag = format!("p{}", n.get());
        let mut c = warm_client(&proxy, pin, &tag);
        let mut keys = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let key = format!("{tag}:{i}");
            match op {
                Op::Write(size, form) => {
                    let w = write("SET", &key, *size, &mut |_| Vec::new());
                    send_first(&mut c, &w, *form).map_err(TestCaseError::fail)?;
                    let (primary, _) = sides(&proxy, &source, &target);
                    if !holds(primary, &w, *form) {
                        return Err(TestCaseError::fail(format!(
                            "{key} ({size} bytes, {form:?}, {pin:?}) is not on the primary after {ops:?}"
                        )));
                    }
                    keys.push(key.clone());
                    keys.push(format!("{key}:n"));
                }
                Op::Blocking => {
                    let got = c.cmd(&["BLPOP", &format!("{key}:q"), "0.01"]);
                    if got != b"*-1\r\n" {
                        return Err(TestCaseError::fail(format!("BLPOP: {}", show(&got))));
                    }
                }
                Op::BlockedAcrossMove => {
                    let q = format!("{key}:q");
                    c.send(&encode(&["BLPOP", q.as_str(), "10"]));
                    // Blocked on the server before the move looks for it: the controller
                    // looks for the proxy's blocked calls for 10 ms only, and a call that
                    // reaches the old side later stays blocked there (seen on a loaded
                    // machine; the controller's part, not the session's).
                    let (primary, _) = sides(&proxy, &source, &target);
                    let deadline = Instant::now() + Duration::from_secs(5);
                    loop {
                        let info: String = redis::cmd("INFO")
                            .arg("clients")
                            .query(&mut primary.conn())
                            .unwrap();
                        if !info.contains("blocked_clients:0") {
                            break;
                        }
                        if Instant::now() >= deadline {
                            return Err(TestCaseError::fail("the BLPOP never blocked"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    next_move(&proxy);
                    moves.set(moves.get() + 1);
                    // A big write pipelined behind the blocked call: it runs once the call
                    // is served, on the new primary.
                    let w = write("SET", &key, 300 * KB, &mut |_| Vec::new());
                    c.send(&encode(&w.args));
                    std::thread::sleep(Duration::from_millis(30));
                    let mut other = Raw::connect(&proxy.addr());
                    assert_eq!(other.cmd_str(&["RPUSH", &q, "job"]), ":1\r\n");
                    let got = c
                        .read_reply_within(Duration::from_secs(5))
                        .map_err(TestCaseError::fail)?;
                    let want = format!("*2\r\n${}\r\n{q}\r\n$3\r\njob\r\n", q.len());
                    if got != want.as_bytes() {
                        return Err(TestCaseError::fail(format!(
                            "the BLPOP across the move got {}",
                            show(&got)
                        )));
                    }
                    let got = c
                        .read_reply_within(Duration::from_secs(5))
                        .map_err(TestCaseError::fail)?;
                    let (primary, _) = sides(&proxy, &source, &target);
                    if got != b"+OK\r\n" || !holds(primary, &w, Form::Alone) {
                        return Err(TestCaseError::fail(format!(
                            "the write behind the re-issued BLPOP: {} (on the primary: {})",
                            show(&got),
                            holds(primary, &w, Form::Alone)
                        )));
                    }
                    keys.push(key.clone());
                }
                Op::Move => {
                    next_move(&proxy);
                    moves.set(moves.get() + 1);
                }
            }
        }
        // Both sides equal with an independent client, then the case's keys go.
        wait_equal(&source, &target, &[], Duration::from_secs(10))
            .map_err(|d| TestCaseError::fail(format!("the sides differ after {ops:?}: {d:?}")))?;
        let mut del = vec!["DEL".to_string()];
        del.extend(keys);
        if del.len() > 1 {
            let d: Vec<&str> = del.iter().map(|s| s.as_str()).collect();
            c.cmd(&d);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nproxy log:\n{}", common::tail(&proxy.log(), 3000));
    }
    no_assertion_failed(&proxy);
    eprintln!(
        "{} cases, {} moves in {:?}",
        n.get(),
        moves.get(),
        started.elapsed()
    );
}

// ----- continuous mixed load -------------------------------------------------------------------

#[test]
fn continuous_mixed_load_through_moves_keeps_every_acknowledged_write_once() {
    mixed_load(false);
}

/// The same in the shadow overlap (values up to 300 KB are kept whole and shadowed there).
#[test]
fn continuous_mixed_load_through_moves_in_shadow_overlap() {
    mixed_load(true);
}

fn mixed_load(shadow: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The issue's workload is 10 moves 1.5 s apart (CUTOVER_MOVES_FULL=1); by default fewer.
    let full = std::env::var("CUTOVER_MOVES_FULL").is_ok_and(|v| v == "1");
    let (moves, gap) = if full {
        (10, Duration::from_millis(1500))
    } else {
        (6, Duration::from_millis(1000))
    };
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let mut args = vec!["--target".to_string(), target.url()];
    if shadow {
        args.extend(["--overlap".to_string(), "shadow".to_string()]);
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let proxy = Proxy::start(&source.url(), &args);
    wait_streaming(&proxy);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..LOAD_CLIENTS)
        .map(|w| {
            let (addr, stop) = (proxy.addr(), stop.clone());
            std::thread::spawn(move || load_client(w, addr, &stop))
        })
        .collect();
    let mut done = 0;
    for m in 0..moves {
        std::thread::sleep(gap);
        let verb = if m % 2 == 0 { "switch" } else { "rollback" };
        if move_under_load(&proxy, verb) {
            done += 1;
        } else {
            // (The next move in the same direction would be refused: stop here.)
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let acked: Vec<Acked> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let errors: Vec<&String> = acked.iter().flat_map(|a| &a.errors).collect();
    assert!(
        errors.is_empty(),
        "clients saw wrong replies: {errors:?}\nproxy log:\n{}",
        common::tail(&proxy.log(), 2000)
    );
    assert!(done >= moves / 2, "only {done} of {moves} moves succeeded");
    let (primary, _) = sides(&proxy, &source, &target);
    let mut p = primary.conn();
    for (w, a) in acked.iter().enumerate() {
        assert!(a.incr > 0, "client {w} ran");
        let ctr: u64 = redis::cmd("GET")
            .arg(format!("ml:{w}:ctr"))
            .query::<Option<u64>>(&mut p)
            .unwrap()
            .unwrap_or(0);
        assert_eq!(
            ctr, a.incr,
            "client {w}: every acknowledged INCR once on the primary"
        );
        let len: u64 = redis::cmd("LLEN")
            .arg(format!("ml:{w}:list"))
            .query(&mut p)
            .unwrap();
        assert_eq!(
            len, a.pushed,
            "client {w}: every acknowledged RPUSH once on the primary"
        );
    }
    if let Err(d) = wait_equal(&source, &target, &[], Duration::from_secs(20)) {
        panic!(
            "the sides differ at the end: {d:?}\nstatus: {}",
            proxy.status_json()
        );
    }
    let status = proxy.status_json();
    assert_eq!(status["rollback_safe"], true, "{status}");
    no_assertion_failed(&proxy);
    eprintln!(
        "{done} moves; acknowledged INCRs: {:?}",
        acked.iter().map(|a| a.incr).collect::<Vec<_>>()
    );
}

// ----- connection state decided once per connection, across a move ---------------------------

/// What a connection set up before a move still holds after it, when its first command after
/// the move is a big (streamed) write: the database, the RESP version, the name; `CLIENT REPLY
/// OFF` stays off; a `WATCH` fails the transaction; a client-side cache and a monitor, which
/// cannot follow, are disconnected rather than left silently stale.
#[test]
fn connection_state_follows_a_move() {
    use std::io::Write as _;
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let big = value("state", 300 * KB);
    let big_set = |key: &str| encode(&[b"SET".to_vec(), b(key), big.clone()]);

    // db 3, RESP3 and a name, then a big write first after the move.
    let mut state = Raw::connect(&proxy.addr());
    assert_eq!(state.cmd_str(&["SELECT", "3"]), "+OK\r\n");
    assert!(state.cmd_str(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(state.cmd_str(&["CLIENT", "SETNAME", "keeper"]), "+OK\r\n");
    assert_eq!(state.cmd_str(&["CLIENT", "NO-EVICT", "on"]), "+OK\r\n");
    // CLIENT REPLY OFF: nothing answered until ON.
    let mut quiet = Raw::connect(&proxy.addr());
    quiet.send(&encode(&["CLIENT", "REPLY", "OFF"]));
    quiet.send(&encode(&["SET", "quiet:1", "1"]));
    // WATCH before the move.
    let mut watcher = Raw::connect(&proxy.addr());
    assert_eq!(watcher.cmd_str(&["WATCH", "w"]), "+OK\r\n");
    // A client-side cache (RESP3 tracking) that cached `t`.
    let mut cache = Raw::connect(&proxy.addr());
    assert!(cache.cmd_str(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(cache.cmd_str(&["CLIENT", "TRACKING", "ON"]), "+OK\r\n");
    cache.cmd(&["GET", "t"]);
    // A client logged in as a user of its own (the proxy has no password): the same user on
    // both servers (ACLs are not replicated).
    for server in [&source, &target] {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "alice", "on", ">pw", "~*", "+@all"])
            .query(&mut server.conn())
            .unwrap();
    }
    // One that logged in as the user the proxy logs in as (`default`) follows the move.
    let mut same_user = Raw::connect(&proxy.addr());
    assert_eq!(same_user.cmd_str(&["AUTH", "default", "x"]), "+OK\r\n");
    let mut alice = Raw::connect(&proxy.addr());
    assert_eq!(alice.cmd_str(&["AUTH", "alice", "pw"]), "+OK\r\n");
    assert_eq!(alice.cmd_str(&["ACL", "WHOAMI"]), "$5\r\nalice\r\n");
    // A monitor.
    let mut monitor = Raw::connect(&proxy.addr());
    assert_eq!(monitor.cmd_str(&["MONITOR"]), "+OK\r\n");
    std::thread::sleep(Duration::from_millis(200));

    step(&proxy, "switch");
    // Every check is made (and all failures listed at the end).
    let mut fails: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            fails.push(what.to_string());
        }
    };

    state.send(&big_set("in3"));
    check(
        state.read_reply() == b"+OK\r\n",
        "the big write is answered +OK",
    );
    let mut t3 = redis::Client::open(format!("{}/3", target.url()))
        .unwrap()
        .get_connection()
        .unwrap();
    let got: Option<Vec<u8>> = redis::cmd("GET").arg("in3").query(&mut t3).unwrap();
    check(
        got.as_ref() == Some(&big),
        "the big write is in db 3 on the new primary",
    );
    check(
        state.cmd_str(&["HSET", "h3", "f", "v"]) == ":1\r\n"
            && state.cmd_str(&["HGETALL", "h3"]).starts_with("%1"),
        "RESP3 (a map reply) after the move",
    );
    check(
        state.cmd_str(&["CLIENT", "GETNAME"]) == "$6\r\nkeeper\r\n",
        "the name after the move",
    );
    check(
        client_line(&target, "keeper").is_some_and(|l| flags_of(&l).contains('e')),
        "CLIENT NO-EVICT on after the move (CLIENT LIST on the new primary)",
    );

    quiet.send(&big_set("quiet:2"));
    check(
        quiet.cmd_str(&["CLIENT", "REPLY", "ON"]) == "+OK\r\n"
            && quiet.cmd_str(&["EXISTS", "quiet:1", "quiet:2"]) == ":2\r\n"
            && quiet.read_reply_within(Duration::from_millis(200)).is_err(),
        "CLIENT REPLY OFF stays off across the move (no stray replies)",
    );
    let on_primary: i64 = redis::cmd("EXISTS")
        .arg("quiet:2")
        .query(&mut target.conn())
        .unwrap();
    check(
        on_primary == 1,
        "the silenced big write is on the new primary",
    );

    watcher.send(&encode(&["MULTI"]));
    watcher.send(&big_set("w"));
    watcher.send(&encode(&["EXEC"]));
    check(
        watcher.read_replies(3)
            == vec![
                b"+OK\r\n".to_vec(),
                b"+QUEUED\r\n".to_vec(),
                b"*-1\r\n".to_vec(),
            ],
        "a WATCH from before the move fails the transaction",
    );

    // The cache re-reads `t` (through the proxy) and `t` changes: it must hear of it, or be
    // disconnected (then it drops its cache). Silence would leave it stale for good.
    let _ = cache.stream.write_all(&encode(&["GET", "t"]));
    std::thread::sleep(Duration::from_millis(100));
    let mut other = Raw::connect(&proxy.addr());
    assert_eq!(other.cmd_str(&["SET", "t", "new"]), "+OK\r\n");
    let (seen, closed) = cache.read_until_closed(Duration::from_secs(3));
    let seen = String::from_utf8_lossy(&seen);
    check(
        closed || seen.contains("invalidate"),
        "a tracking client is invalidated or disconnected after the move",
    );
    // Alice is still alice after the move, or told to reconnect: never silently another user.
    let _ = alice.stream.write_all(&encode(&["ACL", "WHOAMI"]));
    let (seen, closed) = alice.read_until_closed(Duration::from_secs(3));
    check(
        closed && !String::from_utf8_lossy(&seen).contains("default"),
        "a client logged in as its own user is disconnected at the move (not run as the proxy's user)",
    );
    check(
        same_user.cmd_str(&["ACL", "WHOAMI"]) == "$7\r\ndefault\r\n",
        "a client logged in as the proxy's own user follows the move",
    );
    let (_, closed) = monitor.read_until_closed(Duration::from_secs(3));
    check(
        closed,
        "a monitor of the old primary is disconnected at the move",
    );
    let mut p = proxy.conn();
    let pong: String = redis::cmd("PING").query(&mut p).unwrap();
    assert_eq!(pong, "PONG");
    assert!(fails.is_empty(), "after the move: {fails:#?}");
    no_assertion_failed(&proxy);
}

/// The `CLIENT LIST` line of the connection named `name` on `server` (asked directly).
fn client_line(server: &Server, name: &str) -> Option<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.conn())
        .unwrap();
    let field = format!(" name={name} ");
    list.lines()
        .find(|l| l.contains(&field))
        .map(str::to_string)
}

/// The `flags=` field of a `CLIENT LIST` line.
fn flags_of(line: &str) -> String {
    field_of(line, "flags").unwrap_or_default()
}

/// A `key=value` field of a `CLIENT LIST` line.
fn field_of(line: &str, key: &str) -> Option<String> {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// `CLIENT NO-EVICT on`, `CLIENT NO-TOUCH on` and `CLIENT SETINFO LIB-NAME|LIB-VER`, sent by
/// a client before a move, hold on its connection to the new primary after it (checked with
/// `CLIENT LIST` there, directly), also when its first command after the move is a big write;
/// a new primary that lacks a setting (Redis 7.0 has no `NO-TOUCH` nor `SETINFO`) skips it
/// and the session goes on.
fn client_settings_follow_a_move(from: Version, to: Version) {
    let source = Server::start(from);
    let target = Server::start(to);
    // (A pause limit above the default: a loaded test machine must not refuse the move for
    // its own steps' time; this test is about the connection's settings.)
    let (_dir, config) = common::sides::config_file("[cutover]\nmax_pause_ms = 1000\n");
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--config", &config],
    );
    wait_streaming(&proxy);
    let big = value("settings", 300 * KB);
    let mut c = Raw::connect(&proxy.addr());
    for cmd in [
        ["CLIENT", "SETNAME", "settings"].as_slice(),
        &["CLIENT", "NO-EVICT", "on"],
        &["CLIENT", "NO-TOUCH", "on"],
        &["CLIENT", "SETINFO", "LIB-NAME", "mylib"],
        &["CLIENT", "SETINFO", "lib-ver", "1.2.3"],
    ] {
        assert_eq!(c.cmd_str(cmd), "+OK\r\n", "{cmd:?} before the move");
    }
    let before = client_line(&source, "settings").expect("the session on the source");
    assert!(
        flags_of(&before).contains('e') && flags_of(&before).contains('T'),
        "{before}"
    );

    step(&proxy, "switch");
    c.send(&encode(&[b"SET".to_vec(), b("settings:big"), big.clone()]));
    assert_eq!(
        show(&c.read_reply()),
        show(b"+OK\r\n"),
        "the big write after the move"
    );
    let line = client_line(&target, "settings").expect("the session on the new primary");
    let mut fails = Vec::new();
    if !flags_of(&line).contains('e') {
        fails.push("CLIENT NO-EVICT on after the move");
    }
    if to.has_client_setinfo() {
        if !flags_of(&line).contains('T') {
            fails.push("CLIENT NO-TOUCH on after the move");
        }
        if field_of(&line, "lib-name").as_deref() != Some("mylib") {
            fails.push("CLIENT SETINFO LIB-NAME after the move");
        }
        if field_of(&line, "lib-ver").as_deref() != Some("1.2.3") {
            fails.push("CLIENT SETINFO LIB-VER after the move");
        }
    }
    assert!(fails.is_empty(), "{fails:?}: {line}");
    assert_eq!(c.cmd_str(&["GET", "settings:none"]), "$-1\r\n");
    let got: Option<Vec<u8>> = redis::cmd("GET")
        .arg("settings:big")
        .query(&mut target.conn())
        .unwrap();
    assert!(got == Some(big), "the big write is on the new primary");
    // A setting the new primary lacks is skipped quietly (a debug line, not a warning).
    assert!(
        !proxy.log().contains("restoring connection state failed"),
        "{}",
        proxy.log()
    );
    no_assertion_failed(&proxy);
}

#[test]
fn client_settings_follow_a_move_valkey() {
    client_settings_follow_a_move(Version::Valkey91, Version::Valkey91);
}

#[test]
fn client_settings_a_new_primary_lacks_are_skipped() {
    client_settings_follow_a_move(Version::Valkey91, Version::Redis70);
}
