//! Integration tests of the transparent proxy against real servers (Redis 7.0, Redis 6.2,
//! Valkey 9.1 from `.servers/bin`).
//!
//! Every test starts its own server(s) and its own `cutover run`, so tests are independent and
//! can run in parallel (`cargo test --test proxy -- --test-threads=2`). Every wait is bounded.
//!
//! Many tests compare the proxy with the server itself: the same bytes are sent straight to the
//! server and through the proxy, and the replies must be identical byte for byte.

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;

// ----- helpers -------------------------------------------------------------------------------

/// A server and a proxy in front of it.
fn setup(version: Version) -> (Server, Proxy) {
    let server = Server::start(version);
    let proxy = Proxy::start(&server.url(), &[]);
    (server, proxy)
}

/// One step of a scripted conversation: bytes to send and how many reply frames follow.
struct Step {
    send: Vec<u8>,
    replies: usize,
    /// Compare the replies (false for replies that differ per connection, like `HELLO`'s id).
    compare: bool,
}

fn step(args: &[&str]) -> Step {
    Step {
        send: encode(args),
        replies: 1,
        compare: true,
    }
}

fn step_n(args: &[&str], replies: usize) -> Step {
    Step {
        send: encode(args),
        replies,
        compare: true,
    }
}

fn step_raw(bytes: &[u8], replies: usize) -> Step {
    Step {
        send: bytes.to_vec(),
        replies,
        compare: true,
    }
}

fn unchecked(mut s: Step) -> Step {
    s.compare = false;
    s
}

/// Runs `steps` on one fresh connection to `addr`: one step at a time, or everything written
/// at once and then all replies read (`pipelined`).
fn run_steps(addr: &str, steps: &[Step], pipelined: bool) -> Vec<Vec<Vec<u8>>> {
    let mut raw = Raw::connect(addr);
    if pipelined {
        let all: Vec<u8> = steps.iter().flat_map(|s| s.send.clone()).collect();
        raw.send(&all);
        steps.iter().map(|s| raw.read_replies(s.replies)).collect()
    } else {
        steps
            .iter()
            .map(|s| {
                raw.send(&s.send);
                raw.read_replies(s.replies)
            })
            .collect()
    }
}

/// Asserts the proxy answers `steps` exactly like the server does.
fn assert_same_as_direct(server: &Server, proxy: &Proxy, steps: &[Step], pipelined: bool) {
    let direct = run_steps(&server.addr(), steps, pipelined);
    let proxied = run_steps(&proxy.addr(), steps, pipelined);
    for (i, s) in steps.iter().enumerate() {
        if !s.compare {
            continue;
        }
        assert_eq!(
            proxied[i],
            direct[i],
            "{:?}: step {i} `{}`: through the proxy {:?}, directly {:?}",
            server.version(),
            show(&s.send),
            proxied[i].iter().map(|r| show(r)).collect::<Vec<_>>(),
            direct[i].iter().map(|r| show(r)).collect::<Vec<_>>(),
        );
    }
}

/// Generates one `#[test]` per server version for `fn $f(Version)`.
macro_rules! per_version {
    ($name:ident, $f:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn redis70() {
                $f(Version::Redis70)
            }
            #[test]
            fn redis62() {
                $f(Version::Redis62)
            }
            #[test]
            fn valkey91() {
                $f(Version::Valkey91)
            }
        }
    };
}

fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The value of one Prometheus sample line `name{labels} value`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn info_field(info: &str, field: &str) -> Option<i64> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    })
}

// ----- basic commands ------------------------------------------------------------------------

#[test]
fn basic_commands_with_the_redis_crate() {
    let (server, proxy) = setup(Version::Redis70);
    let mut con = proxy.conn();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = con.set("greeting", "hello").unwrap();
    let v: String = con.get("greeting").unwrap();
    assert_eq!(v, "hello");
    let missing: Option<String> = con.get("nope").unwrap();
    assert_eq!(missing, None);
    let n: i64 = con.incr("counter", 5).unwrap();
    assert_eq!(n, 5);
    let _: () = con.rpush("list", &["a", "b", "c"]).unwrap();
    let items: Vec<String> = con.lrange("list", 0, -1).unwrap();
    assert_eq!(items, ["a", "b", "c"]);
    let _: () = con
        .hset_multiple("hash", &[("f1", "v1"), ("f2", "v2")])
        .unwrap();
    let mut all: Vec<(String, String)> = con.hgetall("hash").unwrap();
    all.sort();
    assert_eq!(
        all,
        [("f1".into(), "v1".into()), ("f2".into(), "v2".into())]
    );
    let binary = b"\x00\r\n\xff binary \r\n".to_vec();
    let _: () = con.set("bin", &binary).unwrap();
    let back: Vec<u8> = con.get("bin").unwrap();
    assert_eq!(back, binary);
    let err = redis::cmd("INCR")
        .arg("greeting")
        .query::<i64>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    let err = redis::cmd("NOSUCHCOMMAND")
        .query::<String>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    // The connection is still usable after errors, and the data really is on the server.
    let n: i64 = con.del("counter").unwrap();
    assert_eq!(n, 1);
    let mut direct = server.conn();
    let v: String = direct.get("greeting").unwrap();
    assert_eq!(v, "hello");
    let back: Vec<u8> = direct.get("bin").unwrap();
    assert_eq!(back, binary);
    // A redis-crate pipeline (sent in one write).
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("p:{i}"), i).ignore();
    }
    for i in 0..500 {
        pipe.get(format!("p:{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(got, (0..500).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_clients() {
    let (_server, proxy) = setup(Version::Redis70);
    let client = proxy.client();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            for i in 0..200 {
                let key = format!("t{t}:{i}");
                let _: () = redis::AsyncCommands::set(&mut con, &key, i).await.unwrap();
                let v: i64 = redis::AsyncCommands::get(&mut con, &key).await.unwrap();
                assert_eq!(v, i);
            }
            // Concurrent requests on one multiplexed connection are pipelined by the crate.
            let futs = (0..200).map(|i| {
                let mut con = con.clone();
                async move {
                    let v: i64 = redis::AsyncCommands::get(&mut con, format!("t{t}:{i}"))
                        .await
                        .unwrap();
                    assert_eq!(v, i);
                }
            });
            futures_util::future::join_all(futs).await;
        }));
    }
    tokio::time::timeout(TIMEOUT, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("async clients finished in time");
}

fn resp2_steps() -> Vec<Step> {
    let mut s = vec![
        step(&["SELECT", "9"]),
        step(&["FLUSHDB"]),
        step(&["SET", "k", "v"]),
        step(&["GET", "k"]),
        step(&["GET", "missing"]),
        step(&["SET", "empty", ""]),
        step(&["GET", "empty"]),
        step(&["SET", "n", "10"]),
        step(&["INCR", "n"]),
        step(&["INCRBYFLOAT", "n", "0.5"]),
        step(&["INCR", "k"]),
        step(&["LPUSH", "l", "a", "b", "c"]),
        step(&["LRANGE", "l", "0", "-1"]),
        step(&["LRANGE", "nosuch", "0", "-1"]),
        step(&["LPOP", "nosuch"]),
        step(&["HSET", "h", "f1", "v1", "f2", "v2"]),
        step(&["HGETALL", "h"]),
        step(&["HGET", "h", "nope"]),
        step(&["SADD", "s", "3", "1", "2"]),
        step(&["SMEMBERS", "s"]),
        step(&["SISMEMBER", "s", "1"]),
        step(&["ZADD", "z", "1.5", "a", "2", "b"]),
        step(&["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        step(&["ZSCORE", "z", "a"]),
        step(&["ZSCORE", "z", "nope"]),
        step(&["XADD", "st", "1-1", "f", "v"]),
        step(&["XADD", "st", "2-1", "g", "w", "h", "x"]),
        step(&["XRANGE", "st", "-", "+"]),
        step(&["MGET", "k", "missing", "n"]),
        step(&["EXISTS", "k", "missing", "l"]),
        step(&["TYPE", "h"]),
        step(&["TYPE", "nope"]),
        step(&["GET", "h"]),
        step(&["NOSUCHCOMMAND", "a", "b"]),
        step(&["GET"]),
        step(&["SET", "bin", "\0\r\n\u{7f}"]),
        step(&["GET", "bin"]),
        step(&["STRLEN", "bin"]),
        step(&[
            "EVAL",
            "return {1,'two',{3,'four'},redis.status_reply('FINE')}",
            "0",
        ]),
        step(&[
            "EVAL",
            "return redis.error_reply('MYERR custom error')",
            "0",
        ]),
        step(&["EVAL", "return 3.99", "0"]),
        step(&["ECHO", "hello"]),
        step(&["PING"]),
        step(&["PING", "with message"]),
        step(&["OBJECT", "ENCODING", "l"]),
        step(&["CLIENT", "GETNAME"]),
        step(&["DBSIZE"]),
        step(&["EXPIRE", "k", "100"]),
        step(&["PERSIST", "k"]),
        step(&["TTL", "k"]),
    ];
    for p in [
        "string", "integer", "double", "bignum", "null", "array", "set", "map", "attrib", "true",
        "false", "verbatim", "push",
    ] {
        s.push(step(&["DEBUG", "PROTOCOL", p]));
    }
    s
}

fn resp3_steps() -> Vec<Step> {
    let mut s = vec![
        unchecked(step(&["HELLO", "3"])),
        step(&["SELECT", "9"]),
        step(&["FLUSHDB"]),
        step(&["HSET", "h", "a", "1", "b", "2"]),
        step(&["HGETALL", "h"]),
        step(&["HGETALL", "nosuch"]),
        step(&["SADD", "s", "1", "2", "3"]),
        step(&["SMEMBERS", "s"]),
        step(&["ZADD", "z", "1.5", "m", "2.25", "n"]),
        step(&["ZSCORE", "z", "m"]),
        step(&["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        step(&["ZINCRBY", "z", "1", "m"]),
        step(&["GET", "nope"]),
        step(&["LPOP", "nope"]),
        step(&["LRANGE", "nope", "0", "-1"]),
        step(&["SET", "k", "v"]),
        step(&["GET", "k"]),
        step(&["INCR", "k"]),
        step(&["EXISTS", "k"]),
        step(&["CONFIG", "GET", "maxmemory-policy"]),
        step(&["XADD", "st", "1-1", "f", "v"]),
        step(&["XREAD", "COUNT", "5", "STREAMS", "st", "0"]),
        step(&[
            "EVAL",
            "redis.setresp(3); return redis.call('HGETALL', KEYS[1])",
            "1",
            "h",
        ]),
        step(&[
            "EVAL",
            "redis.setresp(3); return redis.call('ZSCORE', KEYS[1], 'm')",
            "1",
            "z",
        ]),
        step(&["PING"]),
    ];
    for p in [
        "string", "integer", "double", "bignum", "null", "array", "set", "map", "attrib", "true",
        "false", "verbatim",
    ] {
        s.push(step(&["DEBUG", "PROTOCOL", p]));
    }
    // A push frame followed by the real reply: two frames.
    s.push(step_n(&["DEBUG", "PROTOCOL", "push"], 2));
    s.push(unchecked(step(&["HELLO", "2"])));
    s.push(step(&["HGETALL", "h"]));
    s.push(step(&["ZSCORE", "z", "m"]));
    s
}

/// The same RESP2 and RESP3 conversations, straight to the server and through the proxy:
/// identical bytes, step by step and pipelined.
fn byte_identical(version: Version) {
    let (server, proxy) = setup(version);
    let resp2 = resp2_steps();
    assert_same_as_direct(&server, &proxy, &resp2, false);
    assert_same_as_direct(&server, &proxy, &resp2, true);
    let resp3 = resp3_steps();
    assert_same_as_direct(&server, &proxy, &resp3, false);
    assert_same_as_direct(&server, &proxy, &resp3, true);

    // Sanity: the RESP3 replies really are RESP3 types (the comparison alone would pass if
    // both sides spoke RESP2).
    let mut raw = Raw::connect(&proxy.addr());
    let hello = raw.cmd(&["HELLO", "3"]);
    assert!(hello.starts_with(b"%"), "{}", show(&hello));
    assert!(show(&hello).contains("proto\\r\\n:3"), "{}", show(&hello));
    assert_eq!(raw.cmd(&["SELECT", "9"]), b"+OK\r\n");
    assert!(raw.cmd(&["HGETALL", "h"]).starts_with(b"%2\r\n"));
    assert!(raw.cmd(&["SMEMBERS", "s"]).starts_with(b"~3\r\n"));
    assert_eq!(raw.cmd(&["ZSCORE", "z", "n"]), b",2.25\r\n");
    assert_eq!(raw.cmd(&["GET", "nope"]), b"_\r\n");
    assert_eq!(
        raw.cmd(&["DEBUG", "PROTOCOL", "bignum"]),
        b"(1234567999999999999999999999999999999\r\n"
    );
    assert_eq!(raw.cmd(&["DEBUG", "PROTOCOL", "true"]), b"#t\r\n");
}
per_version!(byte_identical_replies, byte_identical);

/// A pipeline that starts with ordinary commands and then changes connection state half-way
/// (naming, selecting, watching, blocking): replies in order and identical to the server's.
#[test]
fn pipeline_mixing_stateless_and_stateful_commands() {
    let (server, proxy) = setup(Version::Redis70);
    let mut steps = vec![step(&["FLUSHALL"])];
    for i in 0..50 {
        let k = format!("k{i}");
        steps.push(step(&["SET", &k, &i.to_string()]));
        steps.push(step(&["GET", &k]));
    }
    steps.extend([
        step(&["INCR", "n"]),
        step(&["CLIENT", "SETNAME", "mixed"]),
        step(&["GET", "k1"]),
        step(&["SELECT", "1"]),
        step(&["GET", "k1"]),
        step(&["SET", "k1", "db1"]),
        step(&["SELECT", "0"]),
        step(&["GET", "k1"]),
        step(&["WATCH", "k2"]),
        step(&["MULTI"]),
        step(&["INCR", "k2"]),
        step(&["EXEC"]),
        step(&["BLPOP", "nolist", "0.01"]),
        step(&["CLIENT", "GETNAME"]),
        step(&["INCR", "n"]),
        step(&["PING"]),
    ]);
    for _ in 0..3 {
        assert_same_as_direct(&server, &proxy, &steps, true);
    }
    assert_same_as_direct(&server, &proxy, &steps, false);
}

#[test]
fn quit_answers_ok_and_closes() {
    let (server, proxy) = setup(Version::Redis70);
    let direct = send_and_read_until_closed(&server.addr(), b"PING\r\nQUIT\r\nPING\r\n", TIMEOUT);
    let proxied = send_and_read_until_closed(&proxy.addr(), b"PING\r\nQUIT\r\nPING\r\n", TIMEOUT);
    assert_eq!(direct, (b"+PONG\r\n+OK\r\n".to_vec(), true));
    assert_eq!(proxied.0, direct.0, "{}", show(&proxied.0));
    assert!(proxied.1, "the proxy closed the connection after QUIT");
}

#[test]
fn client_reply_off_and_skip() {
    let (server, proxy) = setup(Version::Redis70);
    let mut script = Vec::new();
    for cmd in [
        &["CLIENT", "REPLY", "SKIP"][..],
        &["SET", "a", "1"],
        &["GET", "a"],
        &["CLIENT", "REPLY", "OFF"],
        &["SET", "b", "2"],
        &["GET", "b"],
        &["CLIENT", "REPLY", "ON"],
        &["GET", "b"],
    ] {
        encode_into(cmd, &mut script);
    }
    let expected = b"$1\r\n1\r\n+OK\r\n$1\r\n2\r\n";
    for addr in [server.addr(), proxy.addr()] {
        let mut raw = Raw::connect(&addr);
        raw.send(&script);
        let got = raw.read_exact_within(expected.len(), TIMEOUT).unwrap();
        assert_eq!(got, expected, "{addr}: {}", show(&got));
        raw.expect_silence(Duration::from_millis(200));
        assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    }
}

// ----- pipelining ----------------------------------------------------------------------------

/// Writes `pipeline` on `raw`'s socket from another thread while nobody reads; panics if the
/// write does not complete within the time limit (the proxy deadlocked).
fn write_all_before_reading(raw: &Raw, pipeline: Vec<u8>) {
    let mut writer = raw.stream.try_clone().expect("clone socket");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = writer.write_all(&pipeline).map(|_| pipeline.len());
        let _ = tx.send(r);
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("writing the pipeline failed: {e}"),
        Err(_) => panic!("the pipeline could not be written within {TIMEOUT:?} while nothing read"),
    }
}

#[test]
fn pipeline_of_10k_commands_written_before_reading() {
    let (_server, proxy) = setup(Version::Redis70);
    let mut raw = Raw::connect(&proxy.addr());
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    let mut counter = 0;
    for i in 0..10_000 {
        match i % 3 {
            0 => {
                encode_into(
                    &["SET".to_string(), format!("k:{i}"), format!("value-{i}")],
                    &mut pipeline,
                );
                expected.extend_from_slice(b"+OK\r\n");
            }
            1 => {
                let v = format!("value-{}", i - 1);
                encode_into(&["GET".to_string(), format!("k:{}", i - 1)], &mut pipeline);
                expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
            }
            _ => {
                counter += 1;
                encode_into(&["INCR", "counter"], &mut pipeline);
                expected.extend_from_slice(format!(":{counter}\r\n").as_bytes());
            }
        }
    }
    let started = Instant::now();
    write_all_before_reading(&raw, pipeline);
    let got = raw.read_exact_within(expected.len(), TIMEOUT).unwrap();
    assert!(
        got == expected,
        "replies differ (first 200 bytes): {}",
        show(&got[..200])
    );
    raw.expect_silence(Duration::from_millis(100));
    eprintln!("10k small commands: {:?}", started.elapsed());
}

/// Many clients pipelining at once share the backend connection, whose writes are coalesced
/// while one is in flight: every client must get exactly its own replies, in order. Command
/// names vary in case (the session caches the last name's lookup by its exact bytes), and a
/// stateful command midway moves one client to its own connection under load.
#[test]
fn many_pipelining_clients_get_their_own_replies_in_order() {
    let (server, proxy) = setup(Version::Redis70);
    const CLIENTS: usize = 40;
    const ROUNDS: usize = 60;
    const DEPTH: usize = 16;
    let addr = proxy.addr();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&addr);
                let mut count = 0u64;
                for round in 0..ROUNDS {
                    let mut pipeline = Vec::new();
                    let mut expected = Vec::new();
                    if c == 0 && round == ROUNDS / 2 {
                        // Stateful: this client moves to its own connection mid-load.
                        encode_into(&["CLIENT", "SETNAME", "mover"], &mut pipeline);
                        expected.extend_from_slice(b"+OK\r\n");
                    }
                    for i in 0..DEPTH {
                        let key = format!("c{c}");
                        match (round + i) % 4 {
                            0 => encode_into(&["INCR", &key], &mut pipeline),
                            1 => encode_into(&["incr", &key], &mut pipeline),
                            2 => encode_into(&["IncrBy", &key, "1"], &mut pipeline),
                            _ => encode_into(&["incrby", &key, "1"], &mut pipeline),
                        }
                        count += 1;
                        expected.extend_from_slice(format!(":{count}\r\n").as_bytes());
                    }
                    raw.send(&pipeline);
                    let got = raw.read_exact_within(expected.len(), TIMEOUT).unwrap();
                    assert!(
                        got == expected,
                        "client {c} round {round}: got {}",
                        show(&got[..got.len().min(200)])
                    );
                }
                raw.expect_silence(Duration::from_millis(50));
                count
            })
        })
        .collect();
    for (c, t) in threads.into_iter().enumerate() {
        let count = t.join().expect("client thread");
        let mut direct = Raw::connect(&server.addr());
        assert_eq!(
            direct.cmd_str(&["GET", &format!("c{c}")]),
            format!("${}\r\n{count}\r\n", count.to_string().len())
        );
    }
}

#[test]
fn pipeline_of_10k_large_replies_written_before_reading() {
    let (server, proxy) = setup(Version::Redis70);
    let value = pseudo_random_bytes(1024, 7)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect::<Vec<u8>>();
    let mut direct = server.conn();
    let _: () = direct.set("big", &value).unwrap();
    let mut raw = Raw::connect(&proxy.addr());
    let one = encode(&["GET", "big"]);
    let pipeline: Vec<u8> = one.repeat(10_000);
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    let started = Instant::now();
    // ~10 MB of replies: more than the proxy's buffers and the kernel's; the writer must still
    // be able to finish before anything is read.
    write_all_before_reading(&raw, pipeline);
    for i in 0..10_000 {
        let got = raw.read_reply();
        assert!(got == reply, "reply {i} differs: {}", show(&got));
    }
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    eprintln!("10k x 1 KB replies: {:?}", started.elapsed());
}

/// A client that pipelines big replies and does not read them: the proxy must apply
/// back-pressure (stop reading the server, as a direct connection would leave the data in the
/// server's output buffer), not buffer every reply in its own memory.
#[test]
fn slow_reader_does_not_make_the_proxy_buffer_everything() {
    let (server, proxy) = setup(Version::Redis70);
    let mut direct = server.conn();
    let value = vec![b'm'; 1024 * 1024];
    let _: () = direct.set("mb", &value).unwrap();
    // A session on its own backend connection (pinned by CLIENT SETNAME) first, then one on
    // the shared connection (RSS rarely shrinks, so the order matters).
    let mut failures = Vec::new();
    for pinned in [true, false] {
        let mut raw = Raw::connect(&proxy.addr());
        if pinned {
            assert_eq!(raw.cmd(&["CLIENT", "SETNAME", "pinned"]), b"+OK\r\n");
        }
        assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
        let before = proxy.rss_bytes();
        let count = 200;
        write_all_before_reading(&raw, encode(&["GET", "mb"]).repeat(count));
        // Give the proxy time to pull everything from the server if it is going to.
        std::thread::sleep(Duration::from_millis(1500));
        let during = proxy.rss_bytes();
        // Everything still arrives, in order.
        let mut expected = b"$1048576\r\n".to_vec();
        expected.extend_from_slice(&value);
        expected.extend_from_slice(b"\r\n");
        for i in 0..count {
            let reply = raw.read_reply();
            assert!(reply == expected, "reply {i}: {}", show(&reply));
        }
        assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
        let grown = during.saturating_sub(before);
        if grown >= 64 * 1024 * 1024 {
            failures.push(format!(
                "{}: the proxy's memory grew by {} MB while the client did not read {count} MB \
                 of replies (RSS {} MB -> {} MB)",
                if pinned {
                    "own connection"
                } else {
                    "shared connection"
                },
                grown >> 20,
                before >> 20,
                during >> 20
            ));
        }
    }
    assert!(failures.is_empty(), "no back-pressure: {failures:#?}");
}

// ----- inline commands and redis-cli ---------------------------------------------------------

#[test]
fn inline_commands() {
    let (server, proxy) = setup(Version::Redis70);
    let steps = vec![
        step_raw(b"FLUSHDB\r\n", 1),
        step_raw(b"PING\r\n", 1),
        step_raw(b"SET k v\r\n", 1),
        step_raw(b"GET k\r\n", 1),
        step_raw(b"SET q \"hello world\"\r\n", 1),
        step_raw(b"GET q\r\n", 1),
        step_raw(b"SET q2 'a b'\r\n", 1),
        step_raw(b"GET q2\r\n", 1),
        step_raw(b"SET hex \"\\x41\\x42\\n\\t\"\r\n", 1),
        step_raw(b"GET hex\r\n", 1),
        step_raw(b"SET esc 'it\\'s'\r\n", 1),
        step_raw(b"GET esc\r\n", 1),
        step_raw(b"PING\n", 1),
        step_raw(b"\r\n\r\nPING\r\n", 1),
        step_raw(b"   ECHO    spaced    \r\n", 1),
        step_raw(b"ping inline\r\n", 1),
        step_raw(b"NOSUCH cmd\r\n", 1),
        // Inline and RESP mixed in one write.
        step_raw(b"INCR n\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\nINCR n\r\n", 3),
        step_raw(b"GET n\r\n", 1),
    ];
    assert_same_as_direct(&server, &proxy, &steps, false);
    assert_same_as_direct(&server, &proxy, &steps, true);
    let mut raw = Raw::connect(&proxy.addr());
    raw.send(b"PING\r\n");
    assert_eq!(raw.read_reply(), b"+PONG\r\n");
    raw.send(b"SET inl \"x y\"\r\n");
    assert_eq!(raw.read_reply(), b"+OK\r\n");
    raw.send(b"GET inl\r\n");
    assert_eq!(raw.read_reply(), b"$3\r\nx y\r\n");
}

#[test]
fn redis_cli_through_the_proxy() {
    let (server, proxy) = setup(Version::Redis70);
    let sp = server.port().to_string();
    let pp = proxy.port().to_string();
    let cli = |port: &str, args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", port];
        all.extend_from_slice(args);
        let (ok, out, err) = redis_cli(&all, None);
        assert!(ok, "redis-cli {all:?} failed: {err}");
        out
    };
    assert_eq!(cli(&pp, &["PING"]), "PONG\n");
    assert_eq!(cli(&pp, &["SET", "foo", "bar"]), "OK\n");
    assert_eq!(cli(&pp, &["GET", "foo"]), "bar\n");
    assert_eq!(cli(&pp, &["-n", "2", "SET", "x", "in-db-2"]), "OK\n");
    assert_eq!(cli(&pp, &["-n", "2", "GET", "x"]), "in-db-2\n");
    assert_eq!(cli(&sp, &["-n", "2", "GET", "x"]), "in-db-2\n");
    assert_eq!(cli(&pp, &["GET", "x"]), "\n");
    cli(&sp, &["HSET", "h", "a", "1", "b", "2"]);
    cli(&sp, &["RPUSH", "l", "x", "y", "z"]);
    // The same invocations straight to the server and through the proxy print the same.
    for args in [
        &["--no-raw", "GET", "foo"][..],
        &["--no-raw", "GET", "nope"],
        &["--no-raw", "HGETALL", "h"],
        &["--no-raw", "LRANGE", "l", "0", "-1"],
        &["--no-raw", "INCR", "foo"],
        &["-3", "--no-raw", "HGETALL", "h"],
        &["-3", "--no-raw", "SMEMBERS", "nope"],
        &["-3", "--no-raw", "GET", "nope"],
        &["--no-raw", "NOSUCHCOMMAND"],
        &["--raw", "LRANGE", "l", "0", "-1"],
        &["-r", "3", "LLEN", "l"],
    ] {
        assert_eq!(cli(&pp, args), cli(&sp, args), "redis-cli {args:?}");
    }
    // Commands on stdin.
    let script = b"FLUSHDB\nSET a 1\nINCR a\nGET a\nLPUSH q one two\nLRANGE q 0 -1\n";
    let direct = redis_cli(&["-p", &sp], Some(script));
    let proxied = redis_cli(&["-p", &pp], Some(script));
    assert!(proxied.0, "{}", proxied.2);
    assert_eq!(proxied.1, direct.1);
    assert!(proxied.1.contains("OK\n2\n2\n"), "{}", proxied.1);
    // Mass insertion (--pipe sends raw RESP and waits for an ECHO of a random marker).
    let mut mass = Vec::new();
    for i in 0..2000 {
        encode_into(
            &["SET".to_string(), format!("m:{i}"), i.to_string()],
            &mut mass,
        );
    }
    let (ok, out, err) = redis_cli(&["-p", &pp, "--pipe"], Some(&mass));
    assert!(ok, "redis-cli --pipe failed: {out} {err}");
    assert!(
        out.contains("errors: 0, replies: 2000"),
        "redis-cli --pipe: {out} {err}"
    );
    assert_eq!(cli(&sp, &["GET", "m:1999"]), "1999\n");
}

// ----- RESP3, client state -------------------------------------------------------------------

#[test]
fn resp3_hello_and_push_messages() {
    let (server, proxy) = setup(Version::Redis70);
    let mut sub = Raw::connect(&proxy.addr());
    let hello = sub.cmd(&["HELLO", "3"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "ch"]),
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let mut publisher = server.conn();
    let n: i64 = publisher.publish("ch", "hi").unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        sub.read_reply(),
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    // RESP3 allows ordinary commands while subscribed; pushes interleave with replies.
    assert_eq!(sub.cmd(&["SET", "k", "v"]), b"+OK\r\n");
    let _: i64 = publisher.publish("ch", "between").unwrap();
    assert_eq!(
        sub.read_reply(),
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$7\r\nbetween\r\n"
    );
    assert_eq!(sub.cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    assert_eq!(
        sub.cmd(&["UNSUBSCRIBE"]),
        b">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"
    );
    let _: i64 = publisher.publish("ch", "after").unwrap();
    sub.expect_silence(Duration::from_millis(200));
    assert_eq!(sub.cmd(&["PING"]), b"+PONG\r\n");
}

#[tokio::test]
async fn resp3_push_messages_with_the_async_redis_crate() {
    let (server, proxy) = setup(Version::Valkey91);
    let client = redis::Client::open(format!("{}/?protocol=resp3", proxy.url())).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let run = async {
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        con.subscribe("news").await.unwrap();
        con.psubscribe("n*").await.unwrap();
        let mut publisher = server.conn();
        let _: i64 = publisher.publish("news", "extra").unwrap();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let push = rx.recv().await.expect("push channel open");
            seen.push((push.kind.clone(), push.data.clone()));
        }
        let kinds: Vec<_> = seen.iter().map(|(k, _)| format!("{k:?}")).collect();
        assert_eq!(
            kinds,
            ["Subscribe", "PSubscribe", "Message", "PMessage"],
            "{seen:?}"
        );
        assert_eq!(
            seen[2].1,
            vec![
                redis::Value::BulkString(b"news".to_vec()),
                redis::Value::BulkString(b"extra".to_vec())
            ]
        );
        let v: String = redis::AsyncCommands::get(&mut con, "missing")
            .await
            .unwrap_or_else(|_| "nil".into());
        assert_eq!(v, "nil");
        con.unsubscribe("news").await.unwrap();
        con.punsubscribe("n*").await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
        assert_eq!(pong, "PONG");
    };
    tokio::time::timeout(TIMEOUT, run).await.expect("in time");
}

fn client_commands(version: Version) {
    let (server, proxy) = setup(version);
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), b"$-1\r\n");
    assert_eq!(raw.cmd(&["CLIENT", "SETNAME", "my-app"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), b"$6\r\nmy-app\r\n");
    let id = raw.cmd_str(&["CLIENT", "ID"]);
    assert!(id.starts_with(':'), "{id}");
    let id: i64 = id[1..].trim().parse().unwrap();
    // The id is the one of the backend connection that carries this client, named as it asked.
    let mut direct = server.conn();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut direct).unwrap();
    let line = list
        .lines()
        .find(|l| l.contains(" name=my-app "))
        .unwrap_or_else(|| panic!("no client named my-app in {list}"));
    assert!(line.starts_with(&format!("id={id} ")), "{line}");
    if version.has_client_setinfo() {
        assert_eq!(
            raw.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "mylib"]),
            b"+OK\r\n"
        );
        assert_eq!(
            raw.cmd(&["CLIENT", "SETINFO", "LIB-VER", "1.2.3"]),
            b"+OK\r\n"
        );
        let info = raw.cmd_str(&["CLIENT", "INFO"]);
        assert!(info.contains("lib-name=mylib lib-ver=1.2.3"), "{info}");
    }
    // Whatever the server says to these (an error on older servers), the proxy says the same.
    let steps = vec![
        step(&["CLIENT", "SETINFO", "LIB-NAME", "other"]),
        step(&["CLIENT", "SETINFO", "LIB-NAME", "bad name"]),
        step(&["CLIENT", "SETNAME", "bad name"]),
        step(&["CLIENT", "SETNAME", "ok"]),
        step(&["CLIENT", "GETNAME"]),
        step(&["CLIENT", "SETNAME", ""]),
        step(&["CLIENT", "GETNAME"]),
        step(&["CLIENT", "NOSUCH"]),
    ];
    assert_same_as_direct(&server, &proxy, &steps, false);
    // HELLO SETNAME also names the connection.
    let mut raw = Raw::connect(&proxy.addr());
    let hello = raw.cmd(&["HELLO", "3", "SETNAME", "via-hello"]);
    assert!(hello.starts_with(b"%"), "{}", show(&hello));
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), b"$9\r\nvia-hello\r\n");
}
per_version!(client_name_id_setinfo, client_commands);

#[test]
fn select_isolates_databases() {
    let (server, proxy) = setup(Version::Redis70);
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["SELECT", "1"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "k", "in-db-1"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SELECT", "0"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]), b"$-1\r\n");
    assert_eq!(raw.cmd(&["SET", "k", "in-db-0"]), b"+OK\r\n");
    assert_eq!(
        raw.cmd(&["SELECT", "99999"]),
        b"-ERR DB index is out of range\r\n"
    );
    assert_eq!(raw.cmd(&["GET", "k"]), b"$7\r\nin-db-0\r\n");
    // Another client through the proxy starts in db 0, whatever the first one selected.
    let mut other = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["SELECT", "1"]), b"+OK\r\n");
    assert_eq!(other.cmd(&["GET", "k"]), b"$7\r\nin-db-0\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]), b"$7\r\nin-db-1\r\n");
    // The redis crate selects the URL's db on connect.
    let mut db1 = connect(&redis::Client::open(format!("{}/1", proxy.url())).unwrap());
    let v: String = db1.get("k").unwrap();
    assert_eq!(v, "in-db-1");
    // And the server agrees.
    let mut direct1 = connect(&redis::Client::open(format!("{}/1", server.url())).unwrap());
    let v: String = direct1.get("k").unwrap();
    assert_eq!(v, "in-db-1");
    let mut direct0 = server.conn();
    let v: String = direct0.get("k").unwrap();
    assert_eq!(v, "in-db-0");
    // SELECT inside MULTI takes effect with EXEC; RESET goes back to db 0.
    assert_eq!(raw.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SELECT", "0"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["EXEC"]), b"*1\r\n+OK\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]), b"$7\r\nin-db-0\r\n");
    assert_eq!(raw.cmd(&["SELECT", "1"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["RESET"]), b"+RESET\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]), b"$7\r\nin-db-0\r\n");
}

#[test]
fn source_url_database_is_the_default() {
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&format!("{}/2", server.url()), &[]);
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["SET", "where", "db2"]), b"+OK\r\n");
    let mut direct2 = connect(&redis::Client::open(format!("{}/2", server.url())).unwrap());
    let v: String = direct2.get("where").unwrap();
    assert_eq!(v, "db2");
    let mut direct0 = server.conn();
    let v: Option<String> = direct0.get("where").unwrap();
    assert_eq!(v, None);
    // RESET returns to the URL's database, not to 0.
    assert_eq!(raw.cmd(&["SELECT", "5"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["RESET"]), b"+RESET\r\n");
    assert_eq!(raw.cmd(&["GET", "where"]), b"$3\r\ndb2\r\n");
}

// ----- authentication ------------------------------------------------------------------------

#[test]
fn proxy_password() {
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&server.url(), &["--proxy-password", "secret"]);
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["PING"]), b"-NOAUTH Authentication required.\r\n");
    assert_eq!(
        raw.cmd(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    let wrong = raw.cmd_str(&["AUTH", "wrong"]);
    assert!(wrong.starts_with("-WRONGPASS"), "{wrong}");
    assert_eq!(raw.cmd(&["PING"]), b"-NOAUTH Authentication required.\r\n");
    assert_eq!(raw.cmd(&["AUTH", "secret"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    assert_eq!(raw.cmd(&["SET", "k", "v"]), b"+OK\r\n");
    // Pipelined: replies stay in order with the proxy's own.
    let mut pipelined = Raw::connect(&proxy.addr());
    let mut script = Vec::new();
    encode_into(&["GET", "k"], &mut script);
    encode_into(&["AUTH", "secret"], &mut script);
    encode_into(&["GET", "k"], &mut script);
    pipelined.send(&script);
    assert_eq!(
        pipelined.read_replies(3),
        [
            b"-NOAUTH Authentication required.\r\n".to_vec(),
            b"+OK\r\n".to_vec(),
            b"$1\r\nv\r\n".to_vec()
        ]
    );
    // AUTH with the default user name.
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["AUTH", "default", "secret"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    let mut raw = Raw::connect(&proxy.addr());
    assert!(
        raw.cmd_str(&["AUTH", "someone", "secret"])
            .starts_with("-WRONGPASS")
    );
    // The redis crate with the password in the URL (RESP2 AUTH and RESP3 HELLO AUTH).
    let mut con = proxy.conn();
    let v: String = con.get("k").unwrap();
    assert_eq!(v, "v");
    let mut con =
        connect(&redis::Client::open(format!("{}/?protocol=resp3", proxy.url())).unwrap());
    let v: String = con.get("k").unwrap();
    assert_eq!(v, "v");
    let missing: Option<String> = con.get("nope").unwrap();
    assert_eq!(missing, None);
    // redis-cli -a.
    let (ok, out, err) = redis_cli(
        &[
            "-p",
            &proxy.port().to_string(),
            "-a",
            "secret",
            "--no-auth-warning",
            "GET",
            "k",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "v\n");
    let (_, out, _) = redis_cli(&["-p", &proxy.port().to_string(), "GET", "k"], None);
    assert!(out.contains("NOAUTH"), "{out}");
}

/// `HELLO 3 AUTH user pass` against a proxy with its own password: the proxy checks the
/// password itself and forwards `HELLO 3`; everything after must be RESP3, like a direct
/// connection after `HELLO 3`.
#[test]
fn proxy_password_with_hello_auth() {
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&server.url(), &["--proxy-password", "secret"]);
    let mut direct = server.conn();
    let _: () = direct.hset("h", "f", "v").unwrap();
    let mut raw = Raw::connect(&proxy.addr());
    let noauth = raw.cmd_str(&["HELLO", "3"]);
    assert!(noauth.starts_with("-NOAUTH"), "{noauth}");
    let bad = raw.cmd_str(&["HELLO", "3", "AUTH", "default", "nope"]);
    assert!(bad.starts_with("-WRONGPASS"), "{bad}");
    let hello = raw.cmd(&["HELLO", "3", "AUTH", "default", "secret"]);
    assert!(hello.starts_with(b"%7\r\n"), "{}", show(&hello));
    let mut wrong = Vec::new();
    for (cmd, want) in [
        (&["GET", "nope"][..], &b"_\r\n"[..]),
        (&["HGETALL", "h"], b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        (&["HGETALL", "nope"], b"%0\r\n"),
        (&["PING"], b"+PONG\r\n"),
        (&["EXISTS", "h"], b":1\r\n"),
    ] {
        let got = raw.cmd(cmd);
        if got != want {
            wrong.push(format!("{cmd:?}: got {} want {}", show(&got), show(want)));
        }
    }
    let info = raw.cmd_str(&["CLIENT", "INFO"]);
    assert!(info.contains("resp=3"), "{info}");
    assert!(
        wrong.is_empty(),
        "after HELLO 3 AUTH default secret through a proxy with a password: {wrong:#?}"
    );
    // HELLO 2 with AUTH and SETNAME.
    let mut raw = Raw::connect(&proxy.addr());
    let hello = raw.cmd(&[
        "HELLO", "2", "AUTH", "default", "secret", "SETNAME", "named",
    ]);
    assert!(hello.starts_with(b"*14\r\n"), "{}", show(&hello));
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), b"$5\r\nnamed\r\n");
    assert_eq!(raw.cmd(&["GET", "nope"]), b"$-1\r\n");
}

#[test]
fn proxy_user_and_password() {
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(
        &server.url(),
        &["--proxy-user", "alice", "--proxy-password", "s3cret"],
    );
    let mut raw = Raw::connect(&proxy.addr());
    assert!(raw.cmd_str(&["AUTH", "s3cret"]).starts_with("-WRONGPASS"));
    assert!(
        raw.cmd_str(&["AUTH", "default", "s3cret"])
            .starts_with("-WRONGPASS")
    );
    assert_eq!(raw.cmd(&["AUTH", "alice", "s3cret"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    let mut raw = Raw::connect(&proxy.addr());
    let hello = raw.cmd(&["HELLO", "3", "AUTH", "alice", "s3cret"]);
    assert!(hello.starts_with(b"%"), "{}", show(&hello));
    let mut con = proxy.conn();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn source_server_with_a_password() {
    let server = Server::start_with(Version::Redis70, &["--requirepass", "pw"]);
    assert!(server.url().contains(":pw@"));
    let proxy = Proxy::start(&server.url(), &[]);
    // Clients need no backend password: the proxy logs its backend connections in.
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    assert_eq!(raw.cmd(&["SET", "k", "v"]), b"+OK\r\n");
    let mut direct = server.conn();
    let v: String = direct.get("k").unwrap();
    assert_eq!(v, "v");
    // A client's own AUTH goes to the server; a failed one does not log the connection out.
    assert_eq!(raw.cmd(&["AUTH", "pw"]), b"+OK\r\n");
    assert!(raw.cmd_str(&["AUTH", "wrong"]).starts_with("-WRONGPASS"));
    assert_eq!(raw.cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    // RESET logs the backend connection out; the proxy must log it back in.
    assert_eq!(raw.cmd(&["RESET"]), b"+RESET\r\n");
    assert_eq!(raw.cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    let mut con = proxy.conn();
    let v: String = con.get("k").unwrap();
    assert_eq!(v, "v");

    // A wrong password in the source URL is a clear error, not a hang. (While the proxy
    // backs off after a refused login the message is "is down; next connection attempt…",
    // so poll until an attempt is made.)
    let bad = Proxy::start(&format!("redis://:bad@127.0.0.1:{}", server.port()), &[]);
    let mut raw = Raw::connect(&bad.addr());
    let mut replies = Vec::new();
    let named = wait_for(
        "an error naming the credentials",
        Duration::from_secs(5),
        || {
            let reply = raw.cmd_str(&["PING"]);
            assert!(reply.starts_with("-ERR cutover"), "{reply}");
            replies.push(reply.clone());
            reply.contains("credentials").then_some(reply)
        },
    );
    assert!(named.contains("WRONGPASS"), "{named}");
}

#[test]
fn config_file_and_max_clients() {
    let server = Server::start(Version::Redis70);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        "[proxy]\npassword = \"from-file\"\nmax_clients = 2\n\n[source]\nurl = \"redis://127.0.0.1:1\"\n",
    )
    .unwrap();
    // The --source flag (given by the rig) wins over the file; the rest comes from the file.
    let proxy = Proxy::start(&server.url(), &["--config", path.to_str().unwrap()]);
    wait_for(
        "the start-up probe to go away",
        Duration::from_secs(3),
        || (proxy.status_json()["proxy"]["client_connections"] == 0).then_some(()),
    );
    let mut a = Raw::connect(&proxy.addr());
    assert_eq!(a.cmd(&["PING"]), b"-NOAUTH Authentication required.\r\n");
    assert_eq!(a.cmd(&["AUTH", "from-file"]), b"+OK\r\n");
    assert_eq!(a.cmd(&["SET", "k", "v"]), b"+OK\r\n");
    let mut b = Raw::connect(&proxy.addr());
    assert_eq!(b.cmd(&["AUTH", "from-file"]), b"+OK\r\n");
    // A third client is refused the way Redis refuses it, and the connection is closed.
    let (reply, closed) = send_and_read_until_closed(&proxy.addr(), b"", Duration::from_secs(3));
    assert_eq!(
        show(&reply),
        show(b"-ERR max number of clients reached\r\n")
    );
    assert!(closed);
    assert_eq!(b.cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    drop(a);
    wait_for("a slot to free up", Duration::from_secs(3), || {
        let mut c = Raw::connect(&proxy.addr());
        (c.cmd(&["AUTH", "from-file"]) == b"+OK\r\n").then_some(())
    });
}

// ----- transactions --------------------------------------------------------------------------

#[test]
fn multi_exec_discard_watch() {
    let (server, proxy) = setup(Version::Redis70);
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "a", "1"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["INCR", "a"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["EXEC"]), b"*2\r\n+OK\r\n:2\r\n");

    assert_eq!(raw.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "b", "1"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["DISCARD"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["GET", "b"]), b"$-1\r\n");

    // WATCH: a watched key modified by another client makes EXEC return nil.
    let mut other = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["WATCH", "w"]), b"+OK\r\n");
    assert_eq!(other.cmd(&["SET", "w", "changed"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "w", "mine"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["EXEC"]), b"*-1\r\n");
    assert_eq!(raw.cmd(&["GET", "w"]), b"$7\r\nchanged\r\n");
    // Untouched watched key: EXEC runs.
    assert_eq!(raw.cmd(&["WATCH", "w"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "w", "mine"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["EXEC"]), b"*1\r\n+OK\r\n");
    // UNWATCH.
    assert_eq!(raw.cmd(&["WATCH", "w"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["UNWATCH"]), b"+OK\r\n");
    assert_eq!(other.cmd(&["SET", "w", "again"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["GET", "w"]), b"+QUEUED\r\n");
    assert_eq!(raw.cmd(&["EXEC"]), b"*1\r\n$5\r\nagain\r\n");

    // RESP3: an aborted EXEC is a RESP3 null.
    let mut r3 = Raw::connect(&proxy.addr());
    assert!(r3.cmd(&["HELLO", "3"]).starts_with(b"%"));
    assert_eq!(r3.cmd(&["WATCH", "x"]), b"+OK\r\n");
    assert_eq!(other.cmd(&["SET", "x", "1"]), b"+OK\r\n");
    assert_eq!(r3.cmd(&["MULTI"]), b"+OK\r\n");
    assert_eq!(r3.cmd(&["INCR", "x"]), b"+QUEUED\r\n");
    assert_eq!(r3.cmd(&["EXEC"]), b"_\r\n");

    // Errors: identical to the server's.
    let steps = vec![
        step(&["EXEC"]),
        step(&["DISCARD"]),
        step(&["MULTI"]),
        step(&["MULTI"]),
        step(&["SET", "e"]),
        step(&["SET", "e", "1"]),
        step(&["EXEC"]),
        step(&["MULTI"]),
        step(&["SET", "e", "1"]),
        step(&["LPUSH", "e", "x"]),
        step(&["EXEC"]),
        step(&["MULTI"]),
        step(&["WATCH", "e"]),
        step(&["DISCARD"]),
    ];
    assert_same_as_direct(&server, &proxy, &steps, false);
    assert_same_as_direct(&server, &proxy, &steps, true);

    // The redis crate's atomic pipeline.
    let mut con = proxy.conn();
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .incr("ax", 1)
        .incr("ax", 10)
        .query(&mut con)
        .unwrap();
    assert_eq!((x, y), (1, 11));
}

// ----- blocking commands ---------------------------------------------------------------------

#[test]
fn blocking_commands() {
    let (server, proxy) = setup(Version::Redis70);
    let mut blocked = Raw::connect(&proxy.addr());
    let mut other = Raw::connect(&proxy.addr());
    let unblock = |blocked: &mut Raw, other: &mut Raw, cmd: &[&str], push: &[&str]| -> Vec<u8> {
        blocked.send(&encode(cmd));
        // The blocked command really waits…
        blocked.expect_silence(Duration::from_millis(200));
        // …while other clients are served.
        assert_eq!(other.cmd(&["PING"]), b"+PONG\r\n");
        let started = Instant::now();
        other.cmd(push);
        let reply = blocked.read_reply();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{cmd:?} was not unblocked promptly"
        );
        reply
    };
    assert_eq!(
        unblock(
            &mut blocked,
            &mut other,
            &["BLPOP", "q", "5"],
            &["LPUSH", "q", "x"]
        ),
        b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n"
    );
    assert_eq!(
        unblock(
            &mut blocked,
            &mut other,
            &["BRPOPLPUSH", "src", "dst", "5"],
            &["RPUSH", "src", "y"]
        ),
        b"$1\r\ny\r\n"
    );
    let mut direct = server.conn();
    let dst: Vec<String> = direct.lrange("dst", 0, -1).unwrap();
    assert_eq!(dst, ["y"]);
    assert_eq!(
        unblock(
            &mut blocked,
            &mut other,
            &["BZPOPMIN", "zs", "5"],
            &["ZADD", "zs", "1", "m"]
        ),
        b"*3\r\n$2\r\nzs\r\n$1\r\nm\r\n$1\r\n1\r\n"
    );
    let reply = unblock(
        &mut blocked,
        &mut other,
        &["XREAD", "BLOCK", "5000", "STREAMS", "st", "$"],
        &["XADD", "st", "5-1", "f", "v"],
    );
    assert_eq!(
        reply,
        b"*1\r\n*2\r\n$2\r\nst\r\n*1\r\n*2\r\n$3\r\n5-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(
        unblock(
            &mut blocked,
            &mut other,
            &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "5"],
            &["RPUSH", "src", "z"]
        ),
        b"$1\r\nz\r\n"
    );
    assert_eq!(blocked.cmd(&["WAIT", "0", "0"]), b":0\r\n");
    // A blocking command that times out.
    let started = Instant::now();
    assert_eq!(blocked.cmd(&["BLPOP", "empty", "0.3"]), b"*-1\r\n");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Pipelined behind a blocking command: answered after it, in order.
    let mut script = encode(&["BLPOP", "q2", "5"]);
    encode_into(&["PING"], &mut script);
    blocked.send(&script);
    blocked.expect_silence(Duration::from_millis(200));
    other.cmd(&["RPUSH", "q2", "v"]);
    assert_eq!(
        blocked.read_replies(2),
        [
            b"*2\r\n$2\r\nq2\r\n$1\r\nv\r\n".to_vec(),
            b"+PONG\r\n".to_vec()
        ]
    );
}

// ----- pub/sub -------------------------------------------------------------------------------

/// A fixed pub/sub conversation (subscriber and publisher both on `addr`); returns every frame
/// each side received, in order.
fn pubsub_transcript(addr: &str, resp3: bool) -> Vec<Vec<u8>> {
    let mut sub = Raw::connect(addr);
    let mut publ = Raw::connect(addr);
    let mut log = Vec::new();
    if resp3 {
        let hello = sub.cmd(&["HELLO", "3"]);
        assert!(hello.starts_with(b"%"), "{}", show(&hello));
    }
    let s = |raw: &mut Raw, cmd: &[&str], n: usize, log: &mut Vec<Vec<u8>>| {
        if !cmd.is_empty() {
            raw.send(&encode(cmd));
        }
        log.extend(raw.read_replies(n));
    };
    s(&mut sub, &["SUBSCRIBE", "news", "sport"], 2, &mut log);
    s(&mut sub, &["PSUBSCRIBE", "n*", "x?z"], 2, &mut log);
    s(&mut publ, &["PUBLISH", "news", "hello"], 1, &mut log);
    s(&mut sub, &[], 2, &mut log); // message + pmessage
    s(&mut publ, &["PUBLISH", "sport", "goal"], 1, &mut log);
    s(&mut sub, &[], 1, &mut log);
    s(&mut publ, &["PUBLISH", "xyz", "pattern only"], 1, &mut log);
    s(&mut sub, &[], 1, &mut log);
    s(&mut publ, &["PUBLISH", "other", "nobody"], 1, &mut log);
    s(&mut sub, &["PING"], 1, &mut log);
    s(&mut sub, &["PING", "hi"], 1, &mut log);
    // Not allowed while subscribed in RESP2, allowed in RESP3.
    s(&mut sub, &["GET", "k"], 1, &mut log);
    // A subscription to a channel already subscribed, and to a new one.
    s(&mut sub, &["SUBSCRIBE", "news", "more"], 2, &mut log);
    s(&mut sub, &["UNSUBSCRIBE", "more"], 1, &mut log);
    // Published before a command is answered: the messages (channel and pattern) come first.
    publ.send(&encode(&["PUBLISH", "news", "racing"]));
    log.push(publ.read_reply());
    s(&mut sub, &["PING"], 3, &mut log);
    s(&mut sub, &["UNSUBSCRIBE"], 2, &mut log);
    s(&mut sub, &["PUNSUBSCRIBE"], 2, &mut log);
    s(&mut sub, &["UNSUBSCRIBE"], 1, &mut log);
    s(&mut publ, &["PUBLISH", "news", "gone"], 1, &mut log);
    sub.expect_silence(Duration::from_millis(100));
    // Back to normal.
    s(&mut sub, &["PING"], 1, &mut log);
    s(&mut sub, &["SET", "k", "v"], 1, &mut log);
    s(&mut sub, &["GET", "k"], 1, &mut log);
    s(&mut sub, &["DEL", "k"], 1, &mut log);
    log
}

fn pubsub(version: Version) {
    let (server, proxy) = setup(version);
    for resp3 in [false, true] {
        let direct = pubsub_transcript(&server.addr(), resp3);
        let proxied = pubsub_transcript(&proxy.addr(), resp3);
        for (i, (p, d)) in proxied.iter().zip(&direct).enumerate() {
            assert_eq!(
                p,
                d,
                "{version:?} resp3={resp3} frame {i}: proxy {} direct {}",
                show(p),
                show(d)
            );
        }
        assert_eq!(proxied.len(), direct.len());
        let text: Vec<String> = proxied.iter().map(|f| show(f)).collect();
        let (kind, message) = if resp3 { (">", ">3") } else { ("*", "*3") };
        assert_eq!(
            proxied[0],
            format!("{kind}3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n").into_bytes(),
            "{text:?}"
        );
        assert_eq!(
            proxied[5],
            format!("{message}\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n").into_bytes(),
            "{text:?}"
        );
        assert_eq!(
            proxied[6],
            format!("{kind}4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n")
                .into_bytes(),
            "{text:?}"
        );
    }

    // The redis crate's (RESP2) pub/sub API through the proxy.
    let mut con = proxy.conn();
    let mut publisher = proxy.conn();
    let mut ps = con.as_pubsub();
    ps.set_read_timeout(Some(TIMEOUT)).unwrap();
    ps.subscribe("c1").unwrap();
    ps.psubscribe("p.*").unwrap();
    let n: i64 = publisher.publish("c1", "one").unwrap();
    assert_eq!(n, 1);
    let n: i64 = publisher.publish("p.x", "two").unwrap();
    assert_eq!(n, 1);
    let m1 = ps.get_message().unwrap();
    assert_eq!(
        (m1.get_channel_name(), m1.get_payload::<String>().unwrap()),
        ("c1", "one".into())
    );
    let m2 = ps.get_message().unwrap();
    assert_eq!(m2.get_pattern::<String>().unwrap(), "p.*");
    assert_eq!(m2.get_payload::<String>().unwrap(), "two");
    ps.unsubscribe("c1").unwrap();
    ps.punsubscribe("p.*").unwrap();
    drop(ps);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}
per_version!(pubsub_resp2_and_resp3, pubsub);

fn sharded_pubsub_transcript(addr: &str, resp3: bool) -> Vec<Vec<u8>> {
    let mut sub = Raw::connect(addr);
    let mut publ = Raw::connect(addr);
    let mut log = Vec::new();
    if resp3 {
        assert!(sub.cmd(&["HELLO", "3"]).starts_with(b"%"));
    }
    sub.send(&encode(&["SSUBSCRIBE", "{s}a", "{s}b"]));
    log.extend(sub.read_replies(2));
    log.push(publ.cmd(&["SPUBLISH", "{s}a", "sharded"]));
    log.push(sub.read_reply());
    log.push(publ.cmd(&["SPUBLISH", "{s}b", "second"]));
    log.push(sub.read_reply());
    log.push(sub.cmd(&["PING"]));
    sub.send(&encode(&["SUNSUBSCRIBE"]));
    log.extend(sub.read_replies(2));
    log.push(publ.cmd(&["SPUBLISH", "{s}a", "gone"]));
    sub.expect_silence(Duration::from_millis(100));
    log.push(sub.cmd(&["PING"]));
    log.push(sub.cmd(&["GET", "k"]));
    log
}

fn sharded_pubsub(version: Version) {
    assert!(version.has_sharded_pubsub());
    let (server, proxy) = setup(version);
    for resp3 in [false, true] {
        let direct = sharded_pubsub_transcript(&server.addr(), resp3);
        let proxied = sharded_pubsub_transcript(&proxy.addr(), resp3);
        let d: Vec<String> = direct.iter().map(|f| show(f)).collect();
        let p: Vec<String> = proxied.iter().map(|f| show(f)).collect();
        assert_eq!(p, d, "{version:?} resp3={resp3}");
        assert!(p[3].contains("smessage"), "{p:?}");
    }
}

#[test]
fn sharded_pubsub_redis70() {
    sharded_pubsub(Version::Redis70);
}

#[test]
fn sharded_pubsub_valkey91() {
    sharded_pubsub(Version::Valkey91);
}

// ----- refused and admin-ish commands --------------------------------------------------------

#[test]
fn monitor_passes_through_and_keyspace_commands_pass_through() {
    let (server, proxy) = setup(Version::Redis70);
    // MONITOR through the proxy shows what the server executes, from every client of the
    // proxy (shared connection or not), as a direct MONITOR would.
    let mut monitor = Raw::connect(&proxy.addr());
    assert_eq!(monitor.cmd(&["MONITOR"]), b"+OK\r\n");
    let mut other = Raw::connect(&proxy.addr());
    assert_eq!(other.cmd(&["SET", "watched", "1"]), b"+OK\r\n");
    assert_eq!(other.cmd(&["CLIENT", "SETNAME", "pinned"]), b"+OK\r\n");
    assert_eq!(other.cmd(&["GET", "watched"]), b"$1\r\n1\r\n");
    let mut feed = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !feed.contains("\"GET\" \"watched\"") {
        assert!(Instant::now() < deadline, "monitor feed so far: {feed}");
        match monitor.read_reply_within(Duration::from_secs(5)) {
            Ok(line) => feed.push_str(&String::from_utf8_lossy(&line)),
            Err(e) => panic!("{e}; monitor feed so far: {feed}"),
        }
    }
    assert!(feed.contains("\"SET\" \"watched\" \"1\""), "{feed}");
    // QUIT ends a monitor as it does directly.
    monitor.send(&encode(&["QUIT"]));
    let (rest, closed) = monitor.read_until_closed(Duration::from_secs(5));
    assert!(closed && show(&rest).contains("+OK"), "{}", show(&rest));

    let mut raw = Raw::connect(&proxy.addr());
    for cmd in [
        &["SYNC"][..],
        &["PSYNC", "?", "-1"],
        &["REPLCONF", "listening-port", "1"],
    ] {
        let reply = raw.cmd_str(cmd);
        assert!(reply.starts_with("-ERR"), "{cmd:?}: {reply}");
    }
    // Refused without breaking the connection.
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    let mut con = proxy.conn();

    for i in 0..50 {
        raw.cmd(&["SET", &format!("key:{i}"), "x"]);
    }
    let mut keys: Vec<String> = con.keys("key:*").unwrap();
    keys.sort();
    let mut want: Vec<String> = (0..50).map(|i| format!("key:{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    let mut scanned: Vec<String> = con
        .scan_match("key:*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    scanned.sort();
    assert_eq!(scanned, want);
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
    assert!(info.contains("redis_version:"), "{info}");
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut con).unwrap();
    // 50 keys plus the one the monitor part wrote.
    assert!(info.contains("db0:keys=51"), "{info}");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut con)
        .unwrap();
    assert_eq!(cfg, ["maxmemory-policy", "noeviction"]);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut con)
        .unwrap();
    let mut direct = server.conn();
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(&mut direct)
        .unwrap();
    assert_eq!(cfg[1], "allkeys-lru");
    let steps = vec![
        step(&["SCAN", "0", "COUNT", "1000", "MATCH", "nomatch*"]),
        step(&["DBSIZE"]),
        step(&["TYPE", "key:1"]),
        step(&["DEBUG", "SLEEP", "0"]),
        step(&["OBJECT", "ENCODING", "key:1"]),
        step(&["COMMAND", "COUNT"]),
        step(&["COMMAND", "INFO", "get"]),
    ];
    assert_same_as_direct(&server, &proxy, &steps, false);
    assert_eq!(raw.cmd(&["FLUSHDB"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["DBSIZE"]), b":0\r\n");
    let n: i64 = redis::cmd("DBSIZE").query(&mut direct).unwrap();
    assert_eq!(n, 0);
}

// ----- big requests and replies --------------------------------------------------------------

#[test]
fn value_of_64_mb_round_trips() {
    let (server, proxy) = setup(Version::Redis70);
    let value = pseudo_random_bytes(64 * 1024 * 1024, 42);
    let started = Instant::now();
    let mut con = proxy.conn();
    let _: () = con.set("big", &value).unwrap();
    let mut direct = server.conn();
    let len: usize = direct.strlen("big").unwrap();
    assert_eq!(len, value.len());
    let back: Vec<u8> = con.get("big").unwrap();
    assert!(back == value, "the 64 MB value came back different");
    // The connection is in sync afterwards.
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let elapsed = started.elapsed();
    eprintln!("64 MB SET+GET through the proxy: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn rpush_with_a_million_arguments() {
    let (server, proxy) = setup(Version::Redis70);
    let n = 1_000_000;
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(n + 2);
    args.push(b"RPUSH".to_vec());
    args.push(b"biglist".to_vec());
    for i in 0..n {
        args.push(format!("{i:07}").into_bytes());
    }
    let command = encode(&args);
    drop(args);
    let started = Instant::now();
    let mut raw = Raw::connect(&proxy.addr());
    write_all_before_reading(&raw, command);
    assert_eq!(raw.read_reply(), b":1000000\r\n");
    assert_eq!(raw.cmd(&["LLEN", "biglist"]), b":1000000\r\n");
    assert_eq!(raw.cmd(&["LINDEX", "biglist", "-1"]), b"$7\r\n0999999\r\n");
    let mut direct = server.conn();
    let len: usize = direct.llen("biglist").unwrap();
    assert_eq!(len, n);
    // A big reply too: 1e6 elements.
    raw.send(&encode(&["LRANGE", "biglist", "0", "-1"]));
    let reply = raw.read_reply();
    assert!(reply.starts_with(b"*1000000\r\n$7\r\n0000000\r\n"));
    assert!(reply.ends_with(b"$7\r\n0999999\r\n"));
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    let elapsed = started.elapsed();
    eprintln!("RPUSH with 1e6 arguments + LRANGE: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

// ----- bad input -----------------------------------------------------------------------------

#[test]
fn malformed_requests_get_a_protocol_error_and_are_closed() {
    let (server, proxy) = setup(Version::Redis70);
    // Malformed input Redis refuses: the proxy answers exactly like Redis and closes.
    let cases: &[&[u8]] = &[
        b"*abc\r\n",
        b"*1\r\n+x\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$600000000\r\n",
        b"*1\r\n$abc\r\n",
        b"SET k \"unbalanced\r\n",
        b"PING\r\n*abc\r\nPING\r\n",
        b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n+x\r\n",
        b"*3000000000\r\n",
    ];
    for case in cases {
        let direct = send_and_read_until_closed(&server.addr(), case, Duration::from_secs(3));
        let proxied = send_and_read_until_closed(&proxy.addr(), case, Duration::from_secs(3));
        assert!(direct.1, "the server closed after {}", show(case));
        assert!(
            show(&direct.0).contains("-ERR Protocol error"),
            "direct: {}",
            show(&direct.0)
        );
        assert_eq!(
            show(&proxied.0),
            show(&direct.0),
            "reply to {} through the proxy",
            show(case)
        );
        assert!(
            proxied.1,
            "the proxy closed the connection after {}",
            show(case)
        );
    }
    // An incomplete command: both wait for the rest, without replying or closing.
    let incomplete = b"*2\r\n$3\r\nGET\r\n$5\r\nk";
    for addr in [server.addr(), proxy.addr()] {
        let got = send_and_read_until_closed(&addr, incomplete, Duration::from_millis(500));
        assert_eq!(got, (Vec::new(), false), "{addr}: {}", show(&got.0));
    }
    // A bulk string not followed by CRLF: Redis skips the two bytes whatever they are; the
    // proxy (which must frame exactly) refuses it as a protocol error and closes.
    for case in [
        &b"*1\r\n$4\r\nPINGxx\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n$1\r\nkXY",
    ] {
        let proxied = send_and_read_until_closed(&proxy.addr(), case, Duration::from_secs(3));
        assert_eq!(
            show(&proxied.0),
            show(b"-ERR Protocol error: bulk string not terminated by CRLF\r\n"),
            "reply to {}",
            show(case)
        );
        assert!(proxied.1, "closed after {}", show(case));
    }
    // The proxy keeps serving.
    let mut raw = Raw::connect(&proxy.addr());
    assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
    let mut con = proxy.conn();
    let _: () = con.set("still", "works").unwrap();
}

/// A big argument whose terminating CRLF arrives split: `\r` at the end of one write, `\n` in
/// the next. Requests this big are streamed to the server in pieces by the proxy; the first
/// piece is handed on once 256 KiB (the proxy's streaming threshold) are buffered, so a first
/// write of exactly 256 KiB ending in `\r` makes the cut fall between `\r` and `\n`.
#[test]
fn big_argument_with_crlf_split_across_reads() {
    let (server, proxy) = setup(Version::Redis70);
    const THRESHOLD: usize = 256 * 1024;
    let with_len = |len: usize, extra: &[&[u8]]| {
        let value = vec![b'v'; len];
        let mut args: Vec<&[u8]> = vec![b"SET", b"k", &value];
        args.extend_from_slice(extra);
        encode(&args)
    };
    // The value length that makes everything up to the value's `\r` exactly THRESHOLD bytes.
    let aligned = |extra: &[&[u8]]| {
        let tail_len = encode(extra).len() - format!("*{}\r\n", extra.len()).len();
        (THRESHOLD - 40..THRESHOLD)
            .find(|&len| with_len(len, extra).len() - tail_len - 1 == THRESHOLD)
            .expect("an aligned length")
    };
    let ex: Vec<&[u8]> = vec![b"EX", b"100"];
    let cases: Vec<(usize, Vec<&[u8]>)> = vec![
        (300_000, Vec::new()),
        (1_000_000, Vec::new()),
        (aligned(&[]), Vec::new()),
        (aligned(&ex), ex.clone()),
    ];
    for (len, extra) in cases {
        let cmd = with_len(len, &extra);
        let value_end = cmd.len() - (encode(&extra).len() - format!("*{}\r\n", extra.len()).len());
        let (head, tail) = cmd.split_at(value_end - 1);
        assert_eq!(&tail[..1], b"\n");
        let mut results = Vec::new();
        for addr in [server.addr(), proxy.addr()] {
            let mut raw = Raw::connect(&addr);
            raw.send(head);
            std::thread::sleep(Duration::from_millis(300));
            raw.send(tail);
            let reply = raw.read_reply_within(Duration::from_secs(5));
            results.push(reply.map(|r| show(&r)));
        }
        assert_eq!(
            results[1],
            results[0],
            "SET with a {len}-byte value{} sent as {} bytes up to the value's CR, then the rest: \
             through the proxy vs directly",
            if extra.is_empty() { "" } else { " and EX 100" },
            head.len()
        );
        let mut raw = Raw::connect(&proxy.addr());
        assert_eq!(
            raw.cmd(&["STRLEN", "k"]),
            format!(":{len}\r\n").into_bytes()
        );
    }
}

/// The reply direction of the same cut: a fake server sends a big bulk reply up to its final
/// `\r` (exactly 256 KiB), pauses, then sends the `\n`. Both the shared backend connection
/// (a plain `GET`) and a session's own connection (after `CLIENT SETNAME`) are exercised.
#[test]
fn big_reply_with_crlf_split_across_reads() {
    const THRESHOLD: usize = 256 * 1024;
    let header = |len: usize| format!("${len}\r\n").into_bytes();
    let len = (THRESHOLD - 20..THRESHOLD)
        .find(|&l| header(l).len() + l + 1 == THRESHOLD)
        .unwrap();
    let fake = FakeServer::start(move |args| {
        let name = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        match &name[..] {
            b"PING" => vec![b"+PONG\r\n".to_vec()],
            b"GET" => {
                let mut head = header(len);
                head.extend(std::iter::repeat_n(b'r', len));
                head.push(b'\r');
                vec![head, b"\n".to_vec()]
            }
            _ => vec![b"+OK\r\n".to_vec()],
        }
    });
    let mut expected = header(len);
    expected.extend(std::iter::repeat_n(b'r', len));
    expected.extend_from_slice(b"\r\n");
    let mut failures = Vec::new();
    for pinned in [true, false] {
        // A proxy of its own for each path, so one failure does not hide the other.
        let proxy = Proxy::start(&fake.url(), &[]);
        let mut raw = Raw::connect(&proxy.addr());
        if pinned {
            assert_eq!(raw.cmd(&["CLIENT", "SETNAME", "own"]), b"+OK\r\n");
        }
        let path = if pinned {
            "own connection"
        } else {
            "shared connection"
        };
        raw.send(&encode(&["GET", "big"]));
        match raw.read_reply_within(Duration::from_secs(3)) {
            Ok(reply) if reply == expected => {
                assert_eq!(raw.cmd(&["PING"]), b"+PONG\r\n");
            }
            Ok(reply) => failures.push(format!("{path}: wrong reply {}", show(&reply))),
            Err(e) => failures.push(format!("{path}: {}", &e[..e.len().min(120)])),
        }
        // Other clients, now and a little later, are still served.
        for delay in [0, 1000] {
            std::thread::sleep(Duration::from_millis(delay));
            let mut other = Raw::connect(&proxy.addr());
            other.send(b"PING\r\n");
            match other.read_reply_within(Duration::from_secs(3)) {
                Ok(r) if r == b"+PONG\r\n" => {}
                Ok(r) => failures.push(format!(
                    "{path}: a new client {delay} ms later got {}",
                    show(&r)
                )),
                Err(e) => failures.push(format!("{path}: a new client {delay} ms later: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "a {len}-byte bulk reply whose CRLF is split after the first 256 KiB: {failures:#?}"
    );
}

#[test]
fn garbage_from_many_clients_does_not_disturb_others() {
    let (_server, proxy) = setup(Version::Redis70);
    let mut good = Raw::connect(&proxy.addr());
    assert_eq!(good.cmd(&["SET", "k", "v"]), b"+OK\r\n");
    let garbage = pseudo_random_bytes(64 * 1024, 99);
    for i in 0..20u8 {
        let mut bad = Raw::connect(&proxy.addr());
        let mut bytes = vec![b'*', b'1', b'\r', b'\n', b'$', b'x' + i % 3];
        bytes.extend_from_slice(&garbage[..1024 * (i as usize + 1)]);
        bad.send(&bytes);
        let (reply, _) = bad.read_until_closed(Duration::from_secs(2));
        assert!(
            reply.is_empty() || reply.starts_with(b"-ERR Protocol error"),
            "{}",
            show(&reply)
        );
        assert_eq!(good.cmd(&["GET", "k"]), b"$1\r\nv\r\n");
    }
}

// ----- backend failures ----------------------------------------------------------------------

#[test]
fn subscriber_whose_backend_connection_dies_is_disconnected() {
    // A subscriber has no command in flight to carry an error; messages published while its
    // link is down would be lost silently. The proxy closes the client connection instead, as
    // the server itself would have.
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&server.url(), &[]);
    let mut sub = Raw::connect(&proxy.addr());
    let confirm = sub.cmd(&["SUBSCRIBE", "news"]);
    assert!(show(&confirm).contains("subscribe"), "{}", show(&confirm));
    let mut other = Raw::connect(&proxy.addr());
    assert_eq!(other.cmd(&["PING"]), b"+PONG\r\n");
    let mut admin = server.conn();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
    let (rest, closed) = sub.read_until_closed(Duration::from_secs(5));
    assert!(closed, "still open; got {}", show(&rest));
    // Everybody else is unaffected.
    assert_eq!(other.cmd(&["PING"]), b"+PONG\r\n");
}

#[test]
fn watch_or_multi_whose_backend_connection_dies_is_disconnected() {
    // WATCH and a transaction being queued cannot be re-created on a new connection: a change
    // in the gap would go unnoticed, later commands would run outside the transaction.
    let server = Server::start(Version::Redis70);
    let proxy = Proxy::start(&server.url(), &[]);
    let mut admin = server.conn();
    // Open the shared connection (a stateless client uses it).
    let mut stateless = Raw::connect(&proxy.addr());
    assert_eq!(stateless.cmd(&["GET", "warm"]), b"$-1\r\n");
    for setup in [&["WATCH", "k"][..], &["MULTI"][..]] {
        let mut c = Raw::connect(&proxy.addr());
        assert_eq!(c.cmd(&["CLIENT", "SETNAME", "victim"]), b"+OK\r\n");
        assert_eq!(c.cmd(setup), b"+OK\r\n");
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "USER", "default", "SKIPME", "yes"])
            .query(&mut admin)
            .unwrap();
        assert!(killed >= 1);
        let (rest, closed) = c.read_until_closed(Duration::from_secs(5));
        assert!(closed, "{setup:?}: still open; got {}", show(&rest));
    }
    // The idle shared connection was killed too: the proxy notices on its own (no request
    // needed) and drops it, so the next command gets a fresh connection instead of a
    // misleading "lost the connection" error.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = proxy.status_json()["proxy"]["backend_connections"].clone();
        if open == serde_json::json!(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend connections still open: {open}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fresh = Raw::connect(&proxy.addr());
    assert_eq!(fresh.cmd(&["GET", "nothing"]), b"$-1\r\n");
}

#[test]
fn backend_killed_then_restarted() {
    let mut server = Server::start(Version::Redis70);
    let port = server.port();
    let proxy = Proxy::start(&server.url(), &[]);
    let mut a = Raw::connect(&proxy.addr());
    assert_eq!(a.cmd(&["SELECT", "3"]), b"+OK\r\n");
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "survivor"]), b"+OK\r\n");
    let mut b = Raw::connect(&proxy.addr());
    assert_eq!(b.cmd(&["PING"]), b"+PONG\r\n");
    // Commands in flight when the server dies: a blocked BLPOP, a sleeping DEBUG SLEEP and a
    // pipeline behind it.
    a.send(&encode(&["BLPOP", "q", "0"]));
    let mut script = encode(&["DEBUG", "SLEEP", "5"]);
    encode_into(&["PING"], &mut script);
    encode_into(&["GET", "x"], &mut script);
    b.send(&script);
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let started = Instant::now();
    let reply = a
        .read_reply_within(Duration::from_secs(3))
        .expect("an error reply for the BLPOP in flight, not a hang");
    assert!(show(&reply).starts_with("-ERR"), "{}", show(&reply));
    for _ in 0..3 {
        let reply = b
            .read_reply_within(Duration::from_secs(3))
            .expect("an error reply for each command in flight");
        assert!(show(&reply).starts_with("-ERR"), "{}", show(&reply));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // A command while the server is down: a clear error, quickly.
    for raw in [&mut a, &mut b] {
        let started = Instant::now();
        raw.send(&encode(&["PING"]));
        let reply = raw
            .read_reply_within(Duration::from_secs(5))
            .expect("an error reply while the backend is down");
        assert!(show(&reply).starts_with("-ERR"), "{}", show(&reply));
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    let mut c = Raw::connect(&proxy.addr());
    let reply = c.read_reply_within(Duration::from_millis(10));
    assert!(reply.is_err(), "nothing unasked");
    c.send(&encode(&["GET", "k"]));
    let reply = c
        .read_reply_within(Duration::from_secs(5))
        .expect("a reply");
    assert!(show(&reply).starts_with("-ERR cutover"), "{}", show(&reply));

    // The server comes back on the same port: the proxy reconnects, and the sessions keep
    // their state (db 3, the name).
    let server = Server::start_on_port(Version::Redis70, port, &[]);
    wait_for("the proxy to serve again", Duration::from_secs(8), || {
        let mut raw = Raw::connect(&proxy.addr());
        (raw.cmd(&["PING"]) == b"+PONG\r\n").then_some(())
    });
    wait_for(
        "the old session to serve again",
        Duration::from_secs(5),
        || (a.cmd(&["PING"]) == b"+PONG\r\n").then_some(()),
    );
    assert_eq!(a.cmd(&["SET", "k", "in-db-3"]), b"+OK\r\n");
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), b"$8\r\nsurvivor\r\n");
    let mut direct3 = connect(&redis::Client::open(format!("{}/3", server.url())).unwrap());
    let v: String = direct3.get("k").unwrap();
    assert_eq!(v, "in-db-3");
    wait_for(
        "the second session to serve again",
        Duration::from_secs(5),
        || (b.cmd(&["PING"]) == b"+PONG\r\n").then_some(()),
    );
    assert_eq!(c.cmd(&["GET", "k"]), b"$-1\r\n");
}

#[test]
fn backend_down_at_start() {
    let port = free_port();
    let proxy = Proxy::start(&format!("redis://127.0.0.1:{port}"), &[]);
    let mut raw = Raw::connect(&proxy.addr());
    let started = Instant::now();
    let reply = raw.cmd_str(&["PING"]);
    assert!(reply.starts_with("-ERR cutover"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let _server = Server::start_on_port(Version::Valkey91, port, &[]);
    wait_for(
        "the proxy to reach the new server",
        Duration::from_secs(8),
        || (raw.cmd(&["PING"]) == b"+PONG\r\n").then_some(()),
    );
}

// ----- clients that go away ------------------------------------------------------------------

/// A client that disconnects while blocked: like a direct client, its blocking call is
/// cancelled at once (the backend connection is released), and data pushed afterwards is not
/// consumed on behalf of the departed client.
#[test]
fn client_disconnecting_with_blpop_in_flight() {
    let (server, proxy) = setup(Version::Redis70);
    let mut direct = server.conn();
    let clients = |direct: &mut redis::Connection| {
        let info: String = redis::cmd("INFO").arg("clients").query(direct).unwrap();
        (
            info_field(&info, "connected_clients").unwrap_or(-1),
            info_field(&info, "blocked_clients").unwrap_or(-1),
        )
    };
    let (base_clients, _) = clients(&mut direct);
    let cases: [(&[&str], &[&str], &str); 4] = [
        (
            &["BLPOP", "jobs", "0"],
            &["LPUSH", "jobs", "job-1"],
            "LLEN jobs",
        ),
        (
            &["BRPOP", "jobs2", "0"],
            &["LPUSH", "jobs2", "job-1"],
            "LLEN jobs2",
        ),
        (
            &["BZPOPMIN", "zjobs", "0"],
            &["ZADD", "zjobs", "1", "job-1"],
            "ZCARD zjobs",
        ),
        (
            &["BLMPOP", "0", "1", "jobs3", "LEFT"],
            &["RPUSH", "jobs3", "job-1"],
            "LLEN jobs3",
        ),
    ];
    let mut failures = Vec::new();
    let mut other = Raw::connect(&proxy.addr());
    for (block, push, count) in cases {
        {
            let mut gone = Raw::connect(&proxy.addr());
            gone.send(&encode(block));
            wait_for("the call to block", TIMEOUT, || {
                (clients(&mut direct).1 == 1).then_some(())
            });
            // The client goes away (a full close).
        }
        // Others keep working.
        assert_eq!(other.cmd(&["PING"]), b"+PONG\r\n");
        let released = (0..40).any(|_| {
            let done = clients(&mut direct).1 == 0;
            if !done {
                std::thread::sleep(Duration::from_millis(50));
            }
            done
        });
        let pushed = other.cmd(push);
        assert!(pushed.starts_with(b":1"), "{}", show(&pushed));
        std::thread::sleep(Duration::from_millis(100));
        let args: Vec<&str> = count.split(' ').collect();
        let left = other.cmd(&args);
        if !released || left != b":1\r\n" {
            failures.push(format!(
                "{block:?}: backend call {} after the client left; {count} after {push:?} = {}",
                if released {
                    "cancelled"
                } else {
                    "still blocked"
                },
                show(&left)
            ));
        }
    }
    drop(other);
    let status = proxy.status_json();
    assert!(
        failures.is_empty(),
        "clients that disconnected while blocked: {failures:#?}; status {status}"
    );
    wait_for("the sessions to end", Duration::from_secs(3), || {
        (clients(&mut direct).0 == base_clients).then_some(())
    });
}

#[test]
fn client_disconnecting_with_a_big_pipeline_in_flight() {
    let (server, proxy) = setup(Version::Redis70);
    let mut direct = server.conn();
    let _: () = direct.set("v10k", vec![b'x'; 10 * 1024]).unwrap();
    let mut other = Raw::connect(&proxy.addr());
    assert_eq!(other.cmd(&["PING"]), b"+PONG\r\n");
    for round in 0..3 {
        let gone = Raw::connect(&proxy.addr());
        // ~100 MB of replies requested, none read.
        let pipeline = encode(&["GET", "v10k"]).repeat(10_000);
        let mut w = gone.stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&pipeline);
        });
        std::thread::sleep(Duration::from_millis(100));
        let _ = gone.stream.shutdown(std::net::Shutdown::Both);
        drop(gone);
        let _ = writer.join();
        assert_eq!(other.cmd(&["SET", "round", &round.to_string()]), b"+OK\r\n");
        assert_eq!(
            other.cmd(&["GET", "round"]),
            format!("$1\r\n{round}\r\n").into_bytes()
        );
    }
    wait_for(
        "sessions of departed clients to end",
        Duration::from_secs(5),
        || {
            let status = proxy.status_json();
            (status["proxy"]["client_connections"] == 1).then_some(())
        },
    );
    wait_for(
        "their backend connections to close",
        Duration::from_secs(5),
        || {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query(&mut direct)
                .unwrap();
            // The direct connection and the one serving `other`.
            (info_field(&info, "connected_clients") == Some(2)).then_some(())
        },
    );
    assert_eq!(other.cmd(&["PING"]), b"+PONG\r\n");
}

// ----- status and metrics --------------------------------------------------------------------

#[test]
fn status_json_reports_the_proxy() {
    let (server, proxy) = setup(Version::Redis70);
    let status = proxy.status_json();
    assert_eq!(status["phase"], "proxying", "{status}");
    assert_eq!(status["primary"], "source", "{status}");
    assert!(
        status["source"]
            .as_str()
            .unwrap_or("")
            .contains(&server.port().to_string()),
        "{status}"
    );
    let mut clients: Vec<Raw> = (0..3).map(|_| Raw::connect(&proxy.addr())).collect();
    for c in &mut clients {
        assert_eq!(c.cmd(&["PING"]), b"+PONG\r\n");
    }
    let mut last = serde_json::Value::Null;
    let counted = (0..60).any(|_| {
        last = proxy.status_json();
        let ok = last["proxy"]["client_connections"] == 3;
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(counted, "expected 3 client connections: {last}");
    assert_eq!(last["proxy"]["listen"], proxy.addr(), "{last}");
    // backend_connections is what the server sees from the proxy (all but this direct one).
    let mut direct = server.conn();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut direct)
        .unwrap();
    let from_proxy = info_field(&info, "connected_clients").unwrap() - 1;
    let backends = last["proxy"]["backend_connections"].as_i64().unwrap_or(-1);
    assert!(from_proxy >= 1, "{info}");
    assert_eq!(
        backends, from_proxy,
        "status backend_connections vs the server's count of connections from the proxy: {last}"
    );
    drop(clients);
    let closed = (0..60).any(|_| {
        last = proxy.status_json();
        let ok = last["proxy"]["client_connections"] == 0;
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    });
    assert!(closed, "expected 0 client connections: {last}");
    // The text form.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["status", "--admin", &proxy.admin_addr()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("phase:") && text.contains("proxying"),
        "{text}"
    );
}

#[test]
fn metrics_count_commands_and_connections() {
    let (_server, proxy) = setup(Version::Redis70);
    let before = proxy.metrics();
    let gets_before = metric(&before, "cutover_commands_total{command=\"get\"}").unwrap_or(0.0);
    let mut raw = Raw::connect(&proxy.addr());
    for _ in 0..7 {
        assert_eq!(raw.cmd(&["GET", "k"]), b"$-1\r\n");
    }
    raw.send(b"GET k\r\n");
    assert_eq!(raw.read_reply(), b"$-1\r\n");
    let after = proxy.metrics();
    let gets_after = metric(&after, "cutover_commands_total{command=\"get\"}")
        .unwrap_or_else(|| panic!("no GET counter in:\n{after}"));
    assert!(
        gets_after >= gets_before + 8.0,
        "GET counter went from {gets_before} to {gets_after}"
    );
    let conns = metric(&after, "cutover_client_connections")
        .unwrap_or_else(|| panic!("no cutover_client_connections in:\n{after}"));
    assert!(conns >= 1.0, "{conns}");
    // Every GET answered was timed: the histogram's count and its +Inf bucket agree.
    let timed = metric(
        &after,
        "cutover_command_duration_seconds_count{command=\"get\"}",
    )
    .unwrap_or_else(|| panic!("no GET latency histogram in:\n{after}"));
    let inf = metric(
        &after,
        "cutover_command_duration_seconds_bucket{command=\"get\",le=\"+Inf\"}",
    )
    .unwrap_or_else(|| panic!("no +Inf bucket in:\n{after}"));
    assert!(timed >= 8.0 && timed == inf, "count {timed}, +Inf {inf}");
    assert!(
        after.contains("# TYPE cutover_command_duration_seconds histogram"),
        "{after}"
    );
    drop(raw);
}
