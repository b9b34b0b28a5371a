//! Regression tests for hostile and unusual input (issue 12), against real servers.
//!
//! Each test names the defect it guards. Every wait is bounded; each test starts its own
//! server(s) and `cutover run`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The process is alive and the proxy still answers a well-behaved client.
fn assert_serving(proxy: &mut Proxy) {
    assert!(
        proxy.is_running(),
        "the proxy process died; log:\n{}",
        tail(&proxy.log(), 4000)
    );
    let mut raw = Raw::connect(&proxy.addr());
    if let Some(auth) = proxy_auth(proxy) {
        assert_eq!(raw.cmd_str(&["AUTH", &auth]), "+OK\r\n");
    }
    assert_eq!(raw.cmd_str(&["PING"]), "+PONG\r\n");
    assert!(
        !proxy.log().contains("panicked at"),
        "the proxy logged a panic:\n{}",
        tail(&proxy.log(), 4000)
    );
}

fn proxy_auth(proxy: &Proxy) -> Option<String> {
    let url = proxy.url();
    let rest = url.strip_prefix("redis://")?;
    let (cred, _) = rest.rsplit_once('@')?;
    Some(cred.rsplit_once(':').map_or(cred, |(_, p)| p).to_string())
}

/// Writes `bytes` and then reads until the peer closes or `limit` passes; `(read, closed)`.
/// A write refused because the peer already closed counts as closed.
fn blast(addr: &str, bytes: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_write_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

// ----- 1: the admin listener's decoder --------------------------------------------------------

#[test]
fn admin_refuses_deeply_nested_frame_before_auth() {
    let server = Server::start(Version::Redis70);
    let mut proxy = Proxy::start(&server.url(), &["--admin-token", "tok"]);
    let (reply, closed) = blast(
        &proxy.admin_addr(),
        &b"*1\r\n".repeat(100_000),
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR Protocol error") && text.contains("nesting"),
        "{text}"
    );
    assert!(
        closed,
        "the admin connection stays open after a protocol error"
    );
    // A frame too big for an unauthenticated client is refused too, before it is buffered.
    let mut big = encode(&["AUTH", &"x".repeat(100_000)]);
    big.truncate(50_000);
    let (reply, closed) = blast(&proxy.admin_addr(), &big, Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&reply).contains("longer than"),
        "{}",
        show(&reply)
    );
    assert!(closed);
    assert_serving(&mut proxy);
    // The admin listener still works for the CLI.
    let mut admin = Raw::connect(&proxy.admin_addr());
    assert_eq!(admin.cmd_str(&["AUTH", "tok"]), "+OK\r\n");
    assert!(admin.cmd_str(&["STATUS"]).starts_with('$'));
}

// ----- 2: big requests before a backend connection / before AUTH -------------------------------

/// A command whose last argument is `size` bytes, written from a thread (the proxy may stop
/// reading); returns the connection for reading.
fn send_big(addr: &str, head: &[&str], size: usize) -> (Raw, std::thread::JoinHandle<()>) {
    let raw = Raw::connect(addr);
    let mut wire = format!("*{}\r\n", head.len() + 1).into_bytes();
    for a in head {
        wire.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    wire.extend_from_slice(format!("${size}\r\n").as_bytes());
    wire.resize(wire.len() + size, b'v');
    wire.extend_from_slice(b"\r\n");
    let mut w = raw.stream.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&wire);
    });
    (raw, writer)
}

fn max_clients_are_all_usable(proxy: &mut Proxy, password: Option<&str>) {
    // Every slot was released: as many well-behaved clients as --max-clients get served.
    let mut clients: Vec<Raw> = (0..5).map(|_| Raw::connect(&proxy.addr())).collect();
    for c in &mut clients {
        if let Some(p) = password {
            assert_eq!(c.cmd_str(&["AUTH", p]), "+OK\r\n");
        }
        assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
    }
    drop(clients);
    assert!(proxy.is_running());
    assert!(
        !proxy.log().contains("panicked at"),
        "{}",
        tail(&proxy.log(), 3000)
    );
}

#[test]
fn unauthenticated_big_bulk_is_refused_and_slots_are_released() {
    let server = Server::start(Version::Redis70);
    let mut proxy = Proxy::start(
        &server.url(),
        &["--proxy-password", "pw", "--max-clients", "5"],
    );
    for head in [&["AUTH"][..], &["SET", "k"], &["CLIENT", "SETNAME"]] {
        let mut bad = Vec::new();
        for _ in 0..5 {
            bad.push(send_big(&proxy.addr(), head, 10_000_000));
        }
        for (mut raw, writer) in bad {
            let (reply, closed) = raw.read_until_closed(Duration::from_secs(10));
            assert_eq!(
                String::from_utf8_lossy(&reply),
                "-ERR Protocol error: unauthenticated bulk length\r\n",
                "{head:?}"
            );
            assert!(closed, "{head:?}: the connection stays open");
            drop(raw);
            writer.join().unwrap();
        }
    }
    // Too many arguments before AUTH, as Redis.
    let many: Vec<String> = (0..11).map(|i| i.to_string()).collect();
    let (reply, closed) = blast(&proxy.addr(), &encode(&many), Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    assert!(closed);
    wait_for("client slots released", Duration::from_secs(5), || {
        let mut c = Raw::connect(&proxy.addr());
        (c.cmd_str(&["AUTH", "pw"]) == "+OK\r\n").then_some(())
    });
    max_clients_are_all_usable(&mut proxy, Some("pw"));
}

#[test]
fn huge_control_commands_are_refused_without_stalling() {
    let server = Server::start(Version::Redis70);
    let mut proxy = Proxy::start(&server.url(), &["--max-clients", "5"]);
    let heads: [&[&str]; 5] = [
        &["CLIENT", "SETNAME"],
        &["SUBSCRIBE"],
        &["AUTH"],
        &["HELLO", "3", "SETNAME"],
        &["SELECT"],
    ];
    let mut bad = Vec::new();
    for head in heads {
        bad.push((head, send_big(&proxy.addr(), head, 10_000_000)));
    }
    for (head, (mut raw, writer)) in bad {
        let reply = raw
            .read_reply_within(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{head:?}: {e}"));
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("-ERR cutover: ") && text.contains("buffer limit"),
            "{head:?}: {text}"
        );
        writer.join().unwrap();
        // The rest of the refused command was dropped; the connection goes on.
        assert_eq!(raw.cmd_str(&["PING"]), "+PONG\r\n", "{head:?}");
        assert_eq!(raw.cmd_str(&["SET", "k", "v"]), "+OK\r\n", "{head:?}");
    }
    // The name was never set on the server.
    let mut direct = Raw::connect(&server.addr());
    let list = direct.cmd_str(&["CLIENT", "LIST"]);
    assert!(
        !list.contains("vvvvvvvv"),
        "a refused name reached the server"
    );
    max_clients_are_all_usable(&mut proxy, None);
}

// ----- 3: a client that leaves in the middle of a streamed command ----------------------------

fn connected_clients(server: &Server) -> i64 {
    let mut direct = Raw::connect(&server.addr());
    let info = String::from_utf8_lossy(&direct.cmd(&["INFO", "clients"])).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("connected_clients")
}

#[test]
fn client_leaving_mid_command_frees_its_backend_connection() {
    let server = Server::start(Version::Redis70);
    let mut proxy = Proxy::start(&server.url(), &[]);
    let baseline = connected_clients(&server);
    for _ in 0..3 {
        let mut raw = Raw::connect(&proxy.addr());
        let mut wire = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$10000000\r\n".to_vec();
        wire.resize(wire.len() + 5_000_000, b'x');
        raw.send(&wire);
        // The head was forwarded on the session's own connection.
        wait_for(
            "the streamed command's connection",
            Duration::from_secs(10),
            || (connected_clients(&server) > baseline).then_some(()),
        );
        drop(raw);
    }
    wait_for(
        "the backend connections of the departed clients to close",
        Duration::from_secs(5),
        || (connected_clients(&server) <= baseline).then_some(()),
    );
    assert_serving(&mut proxy);
}

// ----- 6: a legal, deeply nested reply on the shared connection --------------------------------

/// Length of a whole RESP2 reply at the start of `buf`, without recursion (the rig's
/// `frame_len` recurses, and this reply is ~8,000 levels deep); `None` while incomplete.
fn deep_frame_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut open: Vec<i64> = Vec::new();
    loop {
        let kind = *buf.get(at)?;
        let rest = buf.get(at + 1..)?;
        let cr = rest.windows(2).position(|w| w == b"\r\n")?;
        let n: i64 = std::str::from_utf8(&rest[..cr]).ok()?.parse().unwrap_or(0);
        at += 1 + cr + 2;
        match kind {
            b'*' if n > 0 => {
                open.push(n);
                continue;
            }
            b'$' if n >= 0 => {
                at += n as usize + 2;
                if buf.len() < at {
                    return None;
                }
            }
            _ => {}
        }
        loop {
            match open.last_mut() {
                None => return Some(at),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

fn read_deep_reply(raw: &mut Raw) -> Vec<u8> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(len) = deep_frame_len(&buf) {
            assert_eq!(len, buf.len(), "more than one reply arrived");
            return buf;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no whole reply within {TIMEOUT:?}: {}",
            show(&buf)
        );
        raw.stream.set_read_timeout(Some(left)).expect("timeout");
        let mut chunk = [0u8; 64 * 1024];
        match raw.stream.read(&mut chunk) {
            Ok(0) => panic!("EOF in the deep reply; got {}", show(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the deep reply: {e}; got {}", show(&buf)),
        }
    }
}

fn deep_eval_reply_passes_through(version: Version) {
    let server = Server::start(version);
    let mut proxy = Proxy::start(&server.url(), &[]);
    let script = "local a={}; local b={a}; a[1]=b; return a";
    let eval = encode(&["EVAL", script, "0"]);
    let mut direct = Raw::connect(&server.addr());
    direct.send(&eval);
    let want = read_deep_reply(&mut direct);
    let depth = want.chunks(4).take_while(|c| *c == b"*1\r\n").count();
    assert!(
        depth > 1000,
        "{version:?}: only {depth} levels: {}",
        show(&want)
    );
    // Another client keeps the shared connection busy meanwhile: its commands are queued
    // behind the deep reply and must all be answered.
    let addr = proxy.addr();
    let other = std::thread::spawn(move || {
        let mut raw = Raw::connect(&addr);
        for i in 0..300 {
            let r = raw.cmd_str(&["SET", &format!("k{i}"), "v"]);
            assert_eq!(r, "+OK\r\n", "SET {i} behind the deep reply");
        }
    });
    for _ in 0..5 {
        let mut raw = Raw::connect(&proxy.addr());
        raw.send(&eval);
        let got = read_deep_reply(&mut raw);
        assert!(
            got == want,
            "{version:?}: the reply (depth {depth}) differs"
        );
        assert_eq!(raw.cmd_str(&["PING"]), "+PONG\r\n");
    }
    other.join().expect("the concurrent client");
    assert!(
        !proxy.log().contains("backend connection lost"),
        "{}",
        tail(&proxy.log(), 3000)
    );
    assert_serving(&mut proxy);
}

#[test]
fn deep_eval_reply_passes_through_redis70() {
    deep_eval_reply_passes_through(Version::Redis70)
}

#[test]
fn deep_eval_reply_passes_through_valkey91() {
    deep_eval_reply_passes_through(Version::Valkey91)
}

// ----- 7: SCRIPT DEBUG takes a connection of its own -------------------------------------------

#[test]
fn script_debug_does_not_take_over_the_shared_connection() {
    let server = Server::start(Version::Redis70);
    let mut proxy = Proxy::start(&server.url(), &[]);
    // What the debugger answers directly.
    let mut direct = Raw::connect(&server.addr());
    assert_eq!(direct.cmd_str(&["SCRIPT", "DEBUG", "YES"]), "+OK\r\n");
    let debugged = direct.cmd(&["EVAL", "return 2", "0"]);
    drop(direct);
    assert!(debugged.starts_with(b"*"), "{}", show(&debugged));

    let mut a = Raw::connect(&proxy.addr());
    let mut b = Raw::connect(&proxy.addr());
    // Both on the shared connection first.
    assert_eq!(a.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(b.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(a.cmd_str(&["SCRIPT", "DEBUG", "YES"]), "+OK\r\n");
    // Another client's scripts are not debugged.
    for _ in 0..3 {
        assert_eq!(b.cmd_str(&["EVAL", "return 1", "0"]), ":1\r\n");
        assert_eq!(b.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    }
    // The debugging client is, as directly.
    let got = a.cmd(&["EVAL", "return 2", "0"]);
    assert_eq!(show(&got), show(&debugged));
    drop(a);
    let mut c = Raw::connect(&proxy.addr());
    assert_eq!(c.cmd_str(&["EVAL", "return 3", "0"]), ":3\r\n");
    assert_serving(&mut proxy);
}

// ----- 4: no password in a URL parse error -----------------------------------------------------

#[test]
fn url_parse_errors_never_print_the_password() {
    for (sub, flag) in [
        ("verify", "--source"),
        ("verify", "--target"),
        ("sync", "--source"),
        ("run", "--source"),
    ] {
        for bad in [
            "default:S3cretPw@127.0.0.1:6379",
            "redis:/default:S3cretPw@127.0.0.1:6379",
            "redis:default:S3cretPw@127.0.0.1:6379",
            "http://default:S3cretPw@127.0.0.1:6379",
        ] {
            let mut args = vec![sub, "--source", "redis://127.0.0.1:1"];
            if sub != "run" {
                args.extend(["--target", "redis://127.0.0.1:1"]);
            }
            let at = args.iter().position(|a| *a == flag).unwrap() + 1;
            args[at] = bad;
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
                .args(&args)
                .env_remove("CUTOVER_SOURCE")
                .env_remove("CUTOVER_TARGET")
                .env_remove("CUTOVER_CONFIG")
                .output()
                .expect("run cutover");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{args:?}");
            assert!(text.contains("invalid Redis URL"), "{args:?}: {text}");
            assert!(
                !text.contains("S3cretPw"),
                "{args:?} printed the password: {text}"
            );
        }
    }
}

// ----- 5: HELLO with an unsupported version and the right password ----------------------------

fn hello_bad_version_leaves_the_client_logged_out(version: Version) {
    let server = Server::start_with(version, &["--requirepass", "pw"]);
    let proxy = Proxy::start(&server.url(), &["--proxy-password", "pw"]);
    let conversations: [&[&[&str]]; 4] = [
        &[&["HELLO", "4", "AUTH", "default", "pw"], &["GET", "k"]],
        &[&["HELLO", "x", "AUTH", "default", "pw"], &["GET", "k"]],
        &[
            &["HELLO", "1", "AUTH", "default", "pw", "SETNAME", "n"],
            &["GET", "k"],
        ],
        &[
            &["HELLO", "4"],
            &["HELLO", "2", "AUTH", "default", "pw"],
            &["GET", "k"],
        ],
    ];
    for steps in conversations {
        let mut direct = Raw::connect(&server.addr());
        let mut proxied = Raw::connect(&proxy.addr());
        for (i, args) in steps.iter().enumerate() {
            let want = direct.cmd(args);
            let got = proxied.cmd(args);
            if args[0] == "HELLO" && want.starts_with(b"*") {
                // The server's HELLO map (ids differ): both succeeded.
                assert!(
                    got.starts_with(b"*"),
                    "{version:?} {args:?}: {}",
                    show(&got)
                );
                continue;
            }
            assert_eq!(
                show(&got),
                show(&want),
                "{version:?} step {i} {args:?} of {steps:?}"
            );
        }
    }
}

#[test]
fn hello_bad_version_leaves_the_client_logged_out_redis70() {
    hello_bad_version_leaves_the_client_logged_out(Version::Redis70)
}

#[test]
fn hello_bad_version_leaves_the_client_logged_out_redis62() {
    hello_bad_version_leaves_the_client_logged_out(Version::Redis62)
}

#[test]
fn hello_bad_version_leaves_the_client_logged_out_valkey91() {
    hello_bad_version_leaves_the_client_logged_out(Version::Valkey91)
}

// ----- 8: the backend's passwords are not handed out -------------------------------------------

fn config_get_masks_backend_passwords(version: Version) {
    let server = Server::start_with(
        version,
        &[
            "--requirepass",
            "Backend5ecret",
            "--masterauth",
            "Master5ecret",
        ],
    );
    let proxy = Proxy::start(&server.url(), &["--proxy-password", "pw"]);
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd_str(&["AUTH", "pw"]), "+OK\r\n");
    let leaks = |r: &str| r.contains("5ecret");
    let r = raw.cmd_str(&["CONFIG", "GET", "requirepass"]);
    assert_eq!(
        r, "*2\r\n$11\r\nrequirepass\r\n$3\r\n***\r\n",
        "{version:?}"
    );
    for pattern in ["masterauth", "*pass*", "*auth*", "*"] {
        let r = raw.cmd_str(&["CONFIG", "GET", pattern]);
        assert!(
            r.starts_with('*') && !leaks(&r),
            "{version:?} {pattern}: {r}"
        );
    }
    // Several parameters at once (Redis 7+).
    if version != Version::Redis62 {
        let r = raw.cmd_str(&["CONFIG", "GET", "maxmemory", "masterauth", "requirepass"]);
        assert!(r.contains("maxmemory") && !leaks(&r), "{version:?}: {r}");
    }
    // Inside a transaction, and pipelined behind other commands.
    raw.send(
        &[
            encode(&["MULTI"]),
            encode(&["SET", "k", "requirepass"]),
            encode(&["CONFIG", "GET", "requirepass"]),
            encode(&["GET", "k"]),
            encode(&["EXEC"]),
        ]
        .concat(),
    );
    let replies = raw.read_replies(5);
    let exec = String::from_utf8_lossy(&replies[4]).into_owned();
    assert_eq!(
        exec, "*3\r\n+OK\r\n*2\r\n$11\r\nrequirepass\r\n$3\r\n***\r\n$11\r\nrequirepass\r\n",
        "{version:?}"
    );
    // RESP3: a map.
    assert!(raw.cmd(&["HELLO", "3"]).starts_with(b"%"));
    let r = raw.cmd_str(&["CONFIG", "GET", "masterauth"]);
    assert_eq!(r, "%1\r\n$10\r\nmasterauth\r\n$3\r\n***\r\n", "{version:?}");
    // Other parameters pass unchanged.
    let mut direct = Raw::connect(&server.addr());
    assert_eq!(direct.cmd_str(&["AUTH", "Backend5ecret"]), "+OK\r\n");
    let mut proxied = Raw::connect(&proxy.addr());
    assert_eq!(proxied.cmd_str(&["AUTH", "pw"]), "+OK\r\n");
    for p in ["maxmemory", "port", "save"] {
        assert_eq!(
            proxied.cmd_str(&["CONFIG", "GET", p]),
            direct.cmd_str(&["CONFIG", "GET", p]),
            "{version:?} {p}"
        );
    }
}

#[test]
fn config_get_masks_backend_passwords_redis70() {
    config_get_masks_backend_passwords(Version::Redis70)
}

#[test]
fn config_get_masks_backend_passwords_redis62() {
    config_get_masks_backend_passwords(Version::Redis62)
}

#[test]
fn config_get_masks_backend_passwords_valkey91() {
    config_get_masks_backend_passwords(Version::Valkey91)
}

// ----- property test: arbitrary client bytes against a real server -----------------------------

/// Pieces a hostile or broken client might send: whole commands (safe ones: nothing that
/// stops or empties the server), fragments of the framing, and raw bytes.
fn client_piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let commands: Vec<Vec<u8>> = [
        &["GET", "k"][..],
        &["SET", "k", "v"],
        &["SUBSCRIBE", "c"],
        &["UNSUBSCRIBE"],
        &["PSUBSCRIBE", "p*"],
        &["MULTI"],
        &["EXEC"],
        &["DISCARD"],
        &["WATCH", "k"],
        &["HELLO", "3"],
        &["HELLO", "2"],
        &["CLIENT", "REPLY", "OFF"],
        &["CLIENT", "REPLY", "SKIP"],
        &["CLIENT", "SETNAME", "fuzz"],
        &["SELECT", "1"],
        &["BLPOP", "q", "0.01"],
        &["RESET"],
        &["QUIT"],
        &["AUTH", "x"],
        &["AUTH", "pw"],
        &["HELLO", "3", "AUTH", "default", "pw"],
        &["CONFIG", "GET", "maxmemory"],
        &["EVAL", "return {1,{2,{3}}}", "0"],
        &["PING"],
        &["MONITOR"],
    ]
    .iter()
    .map(|c| encode(c))
    .collect();
    let fragments: Vec<Vec<u8>> = [
        &b"*1\r\n"[..],
        b"*3\r\n",
        b"$5\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"$99999999\r\n",
        b"*2147483648\r\n",
        b"\r\n",
        b"PING\r\n",
        b"\"unbalanced\r\n",
        b"$1\r\nx",
    ]
    .iter()
    .map(|f| f.to_vec())
    .collect();
    prop_oneof![
        3 => proptest::sample::select(commands),
        2 => proptest::sample::select(fragments),
        2 => proptest::collection::vec(any::<u8>(), 0..48),
        1 => (1usize..3000).prop_map(|n| b"*1\r\n".repeat(n)),
    ]
}

#[test]
fn arbitrary_client_bytes_never_break_the_proxy() {
    arbitrary_client_bytes(None, 20261206)
}

#[test]
fn arbitrary_client_bytes_never_break_a_proxy_with_a_password() {
    arbitrary_client_bytes(Some("pw"), 612)
}

fn arbitrary_client_bytes(password: Option<&str>, seed: u64) {
    use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
    let server = Server::start(Version::Redis70);
    let extra: Vec<&str> = password.map_or(vec![], |p| vec!["--proxy-password", p]);
    let mut proxy = Proxy::start(&server.url(), &extra);
    let mut good = Raw::connect(&proxy.addr());
    if let Some(p) = password {
        assert_eq!(good.cmd_str(&["AUTH", p]), "+OK\r\n");
    }
    let good = std::cell::RefCell::new(good);
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        // Each shrinking step of a failure may wait out a timeout.
        max_shrink_iters: 64,
        ..Config::default()
    });
    let started = Instant::now();
    let case = std::cell::Cell::new(0u32);
    let strategy = proptest::collection::vec(client_piece(), 1..12);
    let result = runner.run(&strategy, |pieces| {
        case.set(case.get() + 1);
        let wire = pieces.concat();
        let mut raw = Raw::connect(&proxy.addr());
        let _ = raw.stream.write_all(&wire);
        raw.shutdown_write();
        // Whatever it answers, the proxy closes the connection by itself (the client has
        // gone) — or the client may hang up first: both are fine, neither may take long.
        let (_, closed) = raw.read_until_closed(Duration::from_secs(2));
        if !closed {
            return Err(TestCaseError::fail(format!(
                "the proxy kept a departed client's connection open: {}",
                show(&wire)
            )));
        }
        // The well-behaved client on the shared connection is served, in order.
        let value = format!("v{}", case.get());
        let mut good = good.borrow_mut();
        let set = good.cmd_str(&["SET", "good", &value]);
        let get = good.cmd_str(&["GET", "good"]);
        if set != "+OK\r\n" || get != format!("${}\r\n{value}\r\n", value.len()) {
            return Err(TestCaseError::fail(format!(
                "after {}: SET {set:?}, GET {get:?}",
                show(&wire)
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nproxy log:\n{}", tail(&proxy.log(), 3000));
    }
    assert_serving(&mut proxy);
    eprintln!("{} cases in {:?}", case.get(), started.elapsed());
}

// ----- 9: memory after a storm of connections --------------------------------------------------

/// Opens `n` connections through the proxy, each running a few commands (so every session
/// allocates its buffers and some take a bigger value), then closes them all; the proxy's RSS
/// while they were all open.
/// `n` clients at once, each with a few commands (1 in 16 — 1 in 1,000 above 1,000 clients —
/// also sends and reads a big value); the proxy's RSS with all of them connected.
fn storm(proxy: &Proxy, n: usize, big: &[u8]) -> u64 {
    let every = if n > 1000 { 1000 } else { 16 };
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect(proxy.addr()).expect("connect");
        let mut wire = encode(&["SET", &format!("storm{}", i % 64), "v"]);
        if i % every == 0 {
            wire.extend(encode::<&[u8]>(&[b"SET", b"stormbig", big]));
            wire.extend(encode(&["GET", "stormbig"]));
        }
        wire.extend(encode(&["PING"]));
        (&s).write_all(&wire).expect("write");
        conns.push((s, i % every == 0));
    }
    let mut buf = vec![0u8; 64 * 1024];
    for (s, with_big) in &mut conns {
        // Read every reply: "+OK" (+ "+OK" and the big value) + "+PONG".
        let want = 5 + if *with_big { 5 + big.len() + 16 } else { 0 } + 7;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = 0;
        while got < want {
            match s.read(&mut buf) {
                Ok(0) => panic!("the proxy closed a storm connection"),
                Ok(n) => {
                    got += n;
                    if buf[..n].ends_with(b"+PONG\r\n") {
                        break;
                    }
                }
                Err(e) => panic!("storm read: {e}"),
            }
        }
    }
    let peak = proxy.rss_bytes();
    drop(conns);
    peak
}

/// The soft limit on open files of this process (`/proc/self/limits`).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

#[test]
fn memory_returns_after_connection_storms() {
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&server.url(), &[]);
    let clients = |p: &Proxy| {
        p.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("cutover_client_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let big = vec![b'x'; 100_000];
    storm(&proxy, 50, &big);
    wait_for("clients gone", Duration::from_secs(10), || {
        (clients(&proxy) == 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let baseline = proxy.rss_bytes();
    let started = Instant::now();
    let mut rounds = Vec::new();
    let mb = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    // Three storms of 1,000 clients, then one of 10,000 (as many as the open-file limit of
    // this process allows: the proxy needs as many on its side).
    let limit = open_file_limit();
    let storms = [1000, 1000, 1000, 10_000.min(limit.saturating_sub(500) / 2)];
    for n in storms {
        let peak = storm(&proxy, n, &big);
        wait_for("clients gone", Duration::from_secs(10), || {
            (clients(&proxy) == 0.0).then_some(())
        });
        // Most of what the storm took must be given back, shortly after the clients left (a
        // bounded wait): at least 3/4 of the growth, and never more than 2x the idle RSS.
        let goal = (baseline + peak.saturating_sub(baseline) / 4).min(baseline * 2);
        let deadline = Instant::now() + Duration::from_secs(3);
        let rss = loop {
            let rss = proxy.rss_bytes();
            if rss <= goal || Instant::now() > deadline {
                break rss;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        rounds.push((mb(peak), mb(rss)));
        assert!(
            rss <= goal,
            "RSS {} MB after the storm's clients left (peak {} MB, idle {} MB): not given back",
            mb(rss),
            mb(peak),
            mb(baseline)
        );
    }
    eprintln!(
        "RSS idle {} MB; (peak, after) per storm of {storms:?} clients: {rounds:?} MB ({:?})",
        mb(baseline),
        started.elapsed()
    );
}

/// Before `AUTH`, an idle or half-sent admin connection is closed after a few seconds
/// instead of being kept for as long as the peer likes.
#[test]
fn admin_connections_without_auth_do_not_stay() {
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&server.url(), &["--admin-token", "t0ken"]);
    let mut half = Raw::connect(&proxy.admin_addr());
    half.send(b"*1\r\n$4\r\nPI");
    let started = Instant::now();
    let (_, closed) = half.read_until_closed(Duration::from_secs(20));
    assert!(closed, "the half-sent admin connection was kept");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // With the token, a connection may be idle (status --watch, scripts).
    let mut ok = Raw::connect(&proxy.admin_addr());
    assert_eq!(ok.cmd_str(&["AUTH", "t0ken"]), "+OK\r\n");
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(ok.cmd_str(&["PING"]), "+PONG\r\n");
}
