//! `cutover sync` against real servers: a dataset with every type in small and big encodings,
//! TTLs, two databases and binary keys is copied with `--once`, then the target is compared
//! with the source key by key (type, value, TTL within 2 s) with an independent client.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Server, Version};
use redis::Connection;

/// Where `cutover sync` keeps the replication position on the target (db 0).
const POSITION_KEY: &[u8] = b"cutover:position";

fn cutover() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
}

/// Waits for `child` up to `limit`, killing it if it takes longer.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "cutover sync did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sync_once(source: &Server, target: &Server) -> Output {
    let child = cutover()
        .args([
            "sync",
            "--once",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, Duration::from_secs(30))
}

fn q<T: redis::FromRedisValue>(conn: &mut Connection, args: &[&[u8]]) -> T {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(conn)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])))
}

/// Fills `conn` with the test dataset: every type, small and big, TTLs, binary keys, db 0 and 1.
fn populate(conn: &mut Connection) {
    let run = |conn: &mut Connection, args: Vec<Vec<u8>>| {
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let _: redis::Value = q(conn, &refs);
    };
    let b = |s: &str| s.as_bytes().to_vec();
    let _: () = q(conn, &[b"SELECT", b"0"]);
    // Strings: int, raw, big (bigger than the parser's raw limit: SET + APPEND), binary.
    run(conn, vec![b("SET"), b("str:int"), b("12345")]);
    run(conn, vec![b("SET"), b("str:neg"), b("-9000000000")]);
    run(conn, vec![b("SET"), b("str:raw"), b("hello world")]);
    run(conn, vec![b("SET"), b("str:empty"), b("")]);
    // Pseudo-random, so that LZF cannot shrink it below the raw limit.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..700_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    run(conn, vec![b("SET"), b("str:big"), big]);
    run(
        conn,
        vec![
            b("SET"),
            b"bin\x00\xff\r\nkey".to_vec(),
            b"\x00\x01\xfe\xff".to_vec(),
        ],
    );
    // Lists: small (listpack / ziplist), big (several nodes), a long element.
    let mut args = vec![b("RPUSH"), b("list:small")];
    args.extend(["a", "b", "1", "-5", "c"].map(b));
    run(conn, args);
    let mut args = vec![b("RPUSH"), b("list:big")];
    args.extend((0..3000).map(|i| format!("element-{i}-{}", "x".repeat(i % 50)).into_bytes()));
    run(conn, args);
    run(
        conn,
        vec![b("RPUSH"), b("list:long"), vec![b'L'; 20_000], b("tail")],
    );
    // Sets: intset, small strings (listpack on 7.2+), big.
    let mut args = vec![b("SADD"), b("set:int")];
    args.extend((0..100).map(|i| (i * 3 - 50).to_string().into_bytes()));
    run(conn, args);
    let mut args = vec![b("SADD"), b("set:small")];
    args.extend(["apple", "pear", "fig"].map(b));
    run(conn, args);
    let mut args = vec![b("SADD"), b("set:big")];
    args.extend((0..1500).map(|i| format!("member-{i}").into_bytes()));
    run(conn, args);
    // Zsets: small (listpack / ziplist) with awkward scores, big (skiplist).
    let mut args = vec![b("ZADD"), b("zset:small")];
    for (s, m) in [
        ("1.5", "a"),
        ("-2.25", "b"),
        ("+inf", "c"),
        ("0.1", "d"),
        ("3", "e"),
    ] {
        args.push(b(s));
        args.push(b(m));
    }
    run(conn, args);
    let mut args = vec![b("ZADD"), b("zset:big")];
    for i in 0..600 {
        args.push(format!("{}", i as f64 / 7.0).into_bytes());
        args.push(format!("m{i}").into_bytes());
    }
    run(conn, args);
    // Hashes: small, big (many fields), big value (hashtable).
    run(
        conn,
        vec![
            b("HSET"),
            b("hash:small"),
            b("f1"),
            b("v1"),
            b("f2"),
            b("22"),
        ],
    );
    let mut args = vec![b("HSET"), b("hash:big")];
    for i in 0..1000 {
        args.push(format!("field{i}").into_bytes());
        args.push(format!("value{i}").into_bytes());
    }
    run(conn, args);
    run(
        conn,
        vec![b("HSET"), b("hash:bigval"), b("f"), vec![b'v'; 1000]],
    );
    // TTLs.
    run(
        conn,
        vec![b("SET"), b("ttl:str"), b("x"), b("PX"), b("100000")],
    );
    run(conn, vec![b("RPUSH"), b("ttl:list"), b("a"), b("b")]);
    run(conn, vec![b("EXPIRE"), b("ttl:list"), b("500")]);
    run(conn, vec![b("HSET"), b("ttl:hash"), b("a"), b("b")]);
    run(conn, vec![b("EXPIRE"), b("ttl:hash"), b("3000")]);
    // Database 1.
    let _: () = q(conn, &[b"SELECT", b"1"]);
    run(conn, vec![b("SET"), b("db1:str"), b("in db 1")]);
    run(conn, vec![b("SADD"), b("db1:set"), b("x"), b("y")]);
    run(conn, vec![b("SET"), b("str:int"), b("other db")]);
    let _: () = q(conn, &[b"SELECT", b"0"]);
}

/// A key's value in a comparable form.
fn dump_value(conn: &mut Connection, key: &[u8]) -> (String, String, i64) {
    let kind: String = q(conn, &[b"TYPE", key]);
    let value = match kind.as_str() {
        "string" => format!("{:?}", q::<Vec<u8>>(conn, &[b"GET", key])),
        "list" => format!(
            "{:?}",
            q::<Vec<Vec<u8>>>(conn, &[b"LRANGE", key, b"0", b"-1"])
        ),
        "set" => format!(
            "{:?}",
            q::<Vec<Vec<u8>>>(conn, &[b"SMEMBERS", key])
                .into_iter()
                .collect::<BTreeSet<_>>()
        ),
        "zset" => format!(
            "{:?}",
            q::<Vec<(Vec<u8>, f64)>>(conn, &[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"])
        ),
        "hash" => format!(
            "{:?}",
            q::<Vec<(Vec<u8>, Vec<u8>)>>(conn, &[b"HGETALL", key])
                .into_iter()
                .collect::<BTreeSet<_>>()
        ),
        "stream" => stream_state(conn, key).join("\n"),
        other => panic!("unexpected type {other}"),
    };
    let pttl: i64 = q(conn, &[b"PTTL", key]);
    (kind, value, pttl)
}

/// Asserts that every key of dbs 0 and 1 is the same on both sides.
fn assert_same(source: &Server, target: &Server) {
    let mut src = source.conn();
    let mut dst = target.conn();
    let mut total = 0;
    for db in [&b"0"[..], b"1"] {
        let _: () = q(&mut src, &[b"SELECT", db]);
        let _: () = q(&mut dst, &[b"SELECT", db]);
        let keys: BTreeSet<Vec<u8>> = q::<Vec<Vec<u8>>>(&mut src, &[b"KEYS", b"*"])
            .into_iter()
            .collect();
        // The target also holds cutover's position (db 0), which is not the source's.
        let target_keys: BTreeSet<Vec<u8>> = q::<Vec<Vec<u8>>>(&mut dst, &[b"KEYS", b"*"])
            .into_iter()
            .filter(|k| !(db == b"0" && k == POSITION_KEY))
            .collect();
        assert_eq!(
            keys,
            target_keys,
            "keys of db {}",
            String::from_utf8_lossy(db)
        );
        for key in &keys {
            let (st, sv, sp) = dump_value(&mut src, key);
            let (tt, tv, tp) = dump_value(&mut dst, key);
            let name = String::from_utf8_lossy(key);
            assert_eq!(st, tt, "type of {name}");
            assert!(
                sv == tv,
                "value of {name}: source {sv:.300} target {tv:.300}"
            );
            if sp < 0 || tp < 0 {
                assert_eq!(sp, tp, "TTL of {name}");
            } else {
                assert!((sp - tp).abs() <= 2000, "TTL of {name}: {sp} vs {tp}");
            }
        }
        total += keys.len();
    }
    assert!(total > 20, "only {total} keys compared");
}

fn copy_and_check(from: Version, to: Version) {
    copy_and_check_with(from, to, &[]);
}

fn copy_and_check_with(from: Version, to: Version, source_args: &[&str]) {
    let mut args = vec!["--repl-diskless-sync-delay", "0"];
    args.extend(source_args);
    let source = Server::start_with(from, &args);
    let target = Server::start(to);
    populate(&mut source.conn());
    let out = sync_once(&source, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cutover sync failed: {}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("done at offset"), "{stderr}");
    eprintln!("{stderr}");
    assert_same(&source, &target);
}

#[test]
fn redis70_to_redis70() {
    copy_and_check(Version::Redis70, Version::Redis70);
}

#[test]
fn valkey91_to_redis70() {
    copy_and_check(Version::Valkey91, Version::Redis70);
}

/// A disk-based full sync from Valkey 9.1 sends a VALKEY080 file (a diskless one RDB 11).
#[test]
fn valkey91_disk_to_redis62() {
    copy_and_check_with(
        Version::Valkey91,
        Version::Redis62,
        &["--repl-diskless-sync", "no"],
    );
}

#[test]
fn redis70_to_redis62() {
    copy_and_check(Version::Redis70, Version::Redis62);
}

/// Listpack values of Redis 7.0 / Valkey 9.1 reach Redis 6.2 as re-encoded DUMP payloads
/// (ziplist, quicklist of ziplists, intset, plain set/hash/zset) that 6.2 accepts even with
/// `sanitize-dump-payload yes` (deep checks of every ziplist), in 6.2's own encodings.
#[test]
fn reencoded_payloads_to_redis62() {
    for from in [Version::Redis70, Version::Valkey91] {
        let source = Server::start_with(from, &["--repl-diskless-sync-delay", "0"]);
        let target = Server::start_with(Version::Redis62, &["--sanitize-dump-payload", "yes"]);
        populate(&mut source.conn());
        let out = sync_once(&source, &target);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        // Strings without TTL go by MSET, the one bigger than one RESTORE by SET + APPEND.
        assert!(stderr.contains("15 restored, 8 plain"), "{stderr}");
        assert_same(&source, &target);
        let mut dst = target.conn();
        for (key, encoding) in [
            (&b"list:small"[..], "quicklist"),
            (b"list:big", "quicklist"),
            (b"set:int", "intset"),
            (b"set:small", "hashtable"),
            (b"set:big", "hashtable"),
            (b"zset:small", "ziplist"),
            (b"zset:big", "skiplist"),
            (b"hash:small", "ziplist"),
            (b"hash:big", "hashtable"),
            (b"hash:bigval", "hashtable"),
        ] {
            let got: String = q(&mut dst, &[b"OBJECT", b"ENCODING", key]);
            assert_eq!(got, encoding, "{}", String::from_utf8_lossy(key));
        }
    }
}

#[test]
fn redis62_to_valkey91() {
    copy_and_check(Version::Redis62, Version::Valkey91);
}

/// Keys that already expired are not copied; the target's old value of a key is replaced.
#[test]
fn replaces_existing_keys() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let mut dst = target.conn();
    let _: () = q(&mut src, &[b"RPUSH", b"l", b"new"]);
    let _: () = q(&mut dst, &[b"RPUSH", b"l", b"old1", b"old2"]);
    let _: () = q(&mut dst, &[b"SET", b"s", b"stale type"]);
    let _: () = q(&mut src, &[b"SADD", b"s", b"m"]);
    let out = sync_once(&source, &target);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        q::<Vec<String>>(&mut dst, &[b"LRANGE", b"l", b"0", b"-1"]),
        ["new"]
    );
    assert_eq!(q::<Vec<String>>(&mut dst, &[b"SMEMBERS", b"s"]), ["m"]);
}

/// Functions reach a 7.0 target; a 6.2 target is reported as incomplete (exit code 3).
#[test]
fn functions() {
    let source = Server::start(Version::Redis70);
    let mut src = source.conn();
    let code =
        "#!lua name=mylib\nredis.register_function('myfn', function(keys, args) return 7 end)";
    let _: String = q(&mut src, &[b"FUNCTION", b"LOAD", code.as_bytes()]);
    let _: () = q(&mut src, &[b"SET", b"k", b"v"]);
    let target = Server::start(Version::Redis70);
    let out = sync_once(&source, &target);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dst = target.conn();
    assert_eq!(q::<i64>(&mut dst, &[b"FCALL", b"myfn", b"0"]), 7);
    let old = Server::start(Version::Redis62);
    let out = sync_once(&source, &old);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("mylib"), "{stderr}");
    assert_eq!(q::<String>(&mut old.conn(), &[b"GET", b"k"]), "v");
}

/// Writes made while the sync runs reach the target exactly once (counters and list lengths
/// exact), through the live stream.
#[test]
fn writes_during_sync() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis62);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"DEBUG", b"POPULATE", b"30000", b"pop", b"50"]);
    let writer = {
        let mut conn = source.conn();
        std::thread::spawn(move || {
            for i in 0..3000 {
                let _: i64 = q(&mut conn, &[b"INCR", b"counter"]);
                let _: i64 = q(&mut conn, &[b"RPUSH", b"events", i.to_string().as_bytes()]);
                let _: i64 = q(
                    &mut conn,
                    &[
                        b"PEXPIRE",
                        b"events",
                        b"100000",
                        if i % 2 == 0 { b"GT" } else { b"LT" },
                    ],
                );
                if i % 500 == 0 {
                    let _: () = q(
                        &mut conn,
                        &[b"SELECT", if i % 1000 == 0 { b"1" } else { b"0" }],
                    );
                }
            }
            let _: () = q(&mut conn, &[b"SELECT", b"0"]);
        })
    };
    let mut child = cutover()
        .args(["sync", "--source", &source.url(), "--target", &target.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writer.join().unwrap();
    let mut dst = target.conn();
    let deadline = Instant::now() + Duration::from_secs(15);
    let expected: Vec<(Option<i64>, i64)> = [&b"0"[..], b"1"]
        .iter()
        .map(|db| {
            let _: () = q(&mut src, &[b"SELECT", db]);
            (
                q(&mut src, &[b"GET", b"counter"]),
                q(&mut src, &[b"LLEN", b"events"]),
            )
        })
        .collect();
    loop {
        let got: Vec<(Option<i64>, i64)> = [&b"0"[..], b"1"]
            .iter()
            .map(|db| {
                let _: () = q(&mut dst, &[b"SELECT", db]);
                (
                    q(&mut dst, &[b"GET", b"counter"]),
                    q(&mut dst, &[b"LLEN", b"events"]),
                )
            })
            .collect();
        if got == expected {
            break;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "target {got:?} != source {expected:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    for db in [&b"0"[..], b"1"] {
        let _: () = q(&mut src, &[b"SELECT", db]);
        let _: () = q(&mut dst, &[b"SELECT", db]);
        let position = i64::from(db == b"0");
        assert_eq!(
            q::<i64>(&mut src, &[b"DBSIZE"]),
            q::<i64>(&mut dst, &[b"DBSIZE"]) - position
        );
        let (_, sv, sp) = dump_value(&mut src, b"events");
        let (_, tv, tp) = dump_value(&mut dst, b"events");
        assert!(sv == tv, "events differ");
        assert!((sp - tp).abs() <= 2000, "TTL {sp} vs {tp}");
    }
}

/// Streams move by RESTORE when the target knows their encoding (Redis 7.0 → 7.0); the two
/// too big for a RESTORE are written with plain commands that keep the 7.0 counters
/// (`ENTRIESADDED`, `MAXDELETEDID`, `ENTRIESREAD`).
#[test]
fn streams() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let mut src = source.conn();
    populate_streams(&mut src);
    let same = Server::start(Version::Redis70);
    let out = sync_once(&source, &same);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("6 restored, 3 plain"), "{stderr}");
    let mut dst = same.conn();
    assert_same_streams(&mut src, &mut dst);
    for key in STREAM_KEYS {
        let v7 = |conn: &mut Connection| {
            let info: redis::Value = q(conn, &[b"XINFO", b"STREAM", key]);
            let mut out = fields(
                &info,
                &[
                    "entries-added",
                    "max-deleted-entry-id",
                    "recorded-first-entry-id",
                ],
            );
            let groups: redis::Value = q(conn, &[b"XINFO", b"GROUPS", key]);
            let redis::Value::Array(groups) = groups else {
                panic!("XINFO GROUPS");
            };
            for g in &groups {
                out.extend(fields(g, &["name", "entries-read", "lag"]));
            }
            out
        };
        assert_eq!(
            v7(&mut src),
            v7(&mut dst),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
}

/// Redis 7.0's stream v2 (type 19) cannot be restored on Redis 6.2 as it is: re-encoded as a
/// stream v1 payload, or plain commands when too big for one RESTORE.
#[test]
fn streams_redis70_to_redis62() {
    streams_to_redis62(Version::Redis70);
}

/// Valkey 9.1's stream v3 (type 21), the same.
#[test]
fn streams_valkey91_to_redis62() {
    streams_to_redis62(Version::Valkey91);
}

fn streams_to_redis62(from: Version) {
    let source = Server::start_with(from, &["--repl-diskless-sync-delay", "0"]);
    let mut src = source.conn();
    populate_streams(&mut src);
    // Deep checks of every RESTOREd payload.
    let target = Server::start_with(Version::Redis62, &["--sanitize-dump-payload", "yes"]);
    let out = sync_once(&source, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // st:mid and st:huge are too big for one RESTORE; the string k goes by MSET.
    assert!(
        stderr.contains("6 restored, 3 plain, 0 expired and skipped, 0 not copied"),
        "{stderr}"
    );
    eprintln!("{stderr}");
    let mut dst = target.conn();
    assert_same_streams(&mut src, &mut dst);
    let ttl: i64 = q(&mut dst, &[b"PTTL", b"st:ttl"]);
    assert!(ttl > 90_000 && ttl <= 100_000, "{ttl}");
}

const STREAM_KEYS: [&[u8]; 8] = [
    b"st",
    b"st:empty",
    b"st:mk",
    b"st:ttl",
    b"st:big",
    b"st:nogroup",
    b"st:mid",
    b"st:huge",
];

/// Streams with deletions, two groups, pending entries (one delivered 3 times, one whose
/// message was deleted since), an empty consumer, an all-deleted stream and more.
fn populate_streams(conn: &mut Connection) {
    let run = |conn: &mut Connection, args: &[&str]| {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let _: redis::Value = q(conn, &args);
    };
    for i in 1..=10 {
        let id = format!("1-{i}");
        let v = format!("value {i}");
        run(conn, &["XADD", "st", &id, "f", &v, "n", &i.to_string()]);
    }
    run(conn, &["XGROUP", "CREATE", "st", "g1", "0"]);
    run(conn, &["XGROUP", "CREATE", "st", "g2", "1-5"]);
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "3",
            "STREAMS",
            "st",
            ">",
        ],
    );
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "bob",
            "COUNT",
            "2",
            "STREAMS",
            "st",
            ">",
        ],
    );
    // 1-4 delivered 3 times in all (XCLAIM without JUSTID counts a delivery).
    run(conn, &["XCLAIM", "st", "g1", "bob", "0", "1-4"]);
    run(conn, &["XCLAIM", "st", "g1", "bob", "0", "1-4"]);
    run(conn, &["XGROUP", "CREATECONSUMER", "st", "g1", "carol"]);
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "g2",
            "dave",
            "COUNT",
            "2",
            "STREAMS",
            "st",
            ">",
        ],
    );
    run(conn, &["XACK", "st", "g1", "1-2"]);
    // Deleted: 1-1 (still pending for alice), 1-7, and the last entry 1-10.
    run(conn, &["XDEL", "st", "1-1", "1-7", "1-10"]);
    run(conn, &["XADD", "st:empty", "5-1", "a", "b"]);
    run(conn, &["XADD", "st:empty", "5-2", "a", "b"]);
    run(conn, &["XDEL", "st:empty", "5-1", "5-2"]);
    run(conn, &["XGROUP", "CREATE", "st:mk", "g", "$", "MKSTREAM"]);
    run(conn, &["XADD", "st:ttl", "7-7", "x", "y"]);
    run(conn, &["PEXPIRE", "st:ttl", "100000"]);
    for i in 0..2000 {
        let v = format!("{i}-{}", "z".repeat(i % 40));
        run(
            conn,
            &["XADD", "st:big", "*", "i", &v, "bin", "\x00\x7f\r\n"],
        );
    }
    run(conn, &["XGROUP", "CREATE", "st:big", "readers", "0"]);
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "readers",
            "r1",
            "COUNT",
            "700",
            "STREAMS",
            "st:big",
            ">",
        ],
    );
    run(conn, &["XADD", "st:nogroup", "3-0", "only", "entry"]);
    // Too big for one RESTORE (512 KiB), small enough to be held back: plain commands, and
    // the pending entry of the deleted 8-3 is recreated with a placeholder entry.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut pipe = redis::pipe();
    for i in 1..=700 {
        let noise: String = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x >> 58) as u8)
            })
            .collect();
        pipe.cmd("XADD")
            .arg("st:mid")
            .arg(format!("8-{i}"))
            .arg("noise")
            .arg(noise)
            .ignore();
    }
    pipe.exec(conn).unwrap();
    run(conn, &["XGROUP", "CREATE", "st:mid", "m", "0"]);
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "m",
            "c",
            "COUNT",
            "5",
            "STREAMS",
            "st:mid",
            ">",
        ],
    );
    run(conn, &["XGROUP", "CREATE", "st:mid", "m2", "8-10"]);
    run(conn, &["XCLAIM", "st:mid", "m", "c2", "0", "8-4"]);
    run(conn, &["XCLAIM", "st:mid", "m", "c2", "0", "8-4"]);
    run(conn, &["XGROUP", "CREATECONSUMER", "st:mid", "m", "idle"]);
    let read_m2 = "XREADGROUP GROUP m2 d COUNT 2 STREAMS st:mid >";
    run(conn, &read_m2.split(' ').collect::<Vec<_>>());
    run(conn, &["XDEL", "st:mid", "8-3", "8-700"]);
    // Bigger than the converter holds back (4 MiB): written as its entries arrive.
    let mut pipe = redis::pipe();
    for i in 1..=5000 {
        pipe.cmd("XADD")
            .arg("st:huge")
            .arg(format!("9-{i}"))
            .arg("payload")
            .arg(format!("{i:0>1000}"))
            .ignore();
    }
    pipe.exec(conn).unwrap();
    run(conn, &["XDEL", "st:huge", "9-2", "9-5000"]);
    run(conn, &["XGROUP", "CREATE", "st:huge", "h", "0"]);
    run(
        conn,
        &[
            "XREADGROUP",
            "GROUP",
            "h",
            "c1",
            "COUNT",
            "100",
            "STREAMS",
            "st:huge",
            ">",
        ],
    );
    run(conn, &["XGROUP", "CREATECONSUMER", "st:huge", "h", "c2"]);
    run(conn, &["SET", "k", "v"]);
}

/// A reply as comparable text.
fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::Nil => "nil".into(),
        redis::Value::Array(a) => format!("[{}]", a.iter().map(text).collect::<Vec<_>>().join(" ")),
        other => format!("{other:?}"),
    }
}

/// The named fields of a flat `XINFO` reply.
fn fields(v: &redis::Value, names: &[&str]) -> Vec<String> {
    let redis::Value::Array(a) = v else {
        panic!("not an array: {v:?}");
    };
    names
        .iter()
        .map(|name| {
            let at = a
                .chunks(2)
                .find(|kv| text(&kv[0]) == *name)
                .unwrap_or_else(|| panic!("no {name} in {}", text(v)));
            format!("{name}={}", text(&at[1]))
        })
        .collect()
}

/// Everything about a stream that plain commands can reproduce on Redis 6.2.
fn stream_state(conn: &mut Connection, key: &[u8]) -> Vec<String> {
    let mut out = vec![
        q::<String>(conn, &[b"TYPE", key]),
        text(&q(conn, &[b"XRANGE", key, b"-", b"+"])),
    ];
    let info: redis::Value = q(conn, &[b"XINFO", b"STREAM", key]);
    out.extend(fields(&info, &["length", "last-generated-id", "groups"]));
    let groups: redis::Value = q(conn, &[b"XINFO", b"GROUPS", key]);
    let redis::Value::Array(groups) = groups else {
        panic!("XINFO GROUPS");
    };
    for g in &groups {
        out.extend(fields(
            g,
            &["name", "consumers", "pending", "last-delivered-id"],
        ));
        let name = fields(g, &["name"])[0]
            .trim_start_matches("name=")
            .to_string();
        let name = name.as_bytes();
        out.push(text(&q(conn, &[b"XPENDING", key, name])));
        let pending: redis::Value = q(conn, &[b"XPENDING", key, name, b"-", b"+", b"100000"]);
        let redis::Value::Array(pending) = pending else {
            panic!("XPENDING");
        };
        for p in &pending {
            // id, consumer, idle ms, delivery count: all but the idle time.
            let redis::Value::Array(p) = p else { panic!() };
            out.push(format!("{} {} {}", text(&p[0]), text(&p[1]), text(&p[3])));
        }
        let consumers: redis::Value = q(conn, &[b"XINFO", b"CONSUMERS", key, name]);
        let redis::Value::Array(consumers) = consumers else {
            panic!("XINFO CONSUMERS");
        };
        for c in &consumers {
            out.extend(fields(c, &["name", "pending"]));
        }
    }
    out
}

fn assert_same_streams(src: &mut Connection, dst: &mut Connection) {
    for key in STREAM_KEYS {
        let s = stream_state(src, key);
        let t = stream_state(dst, key);
        assert_eq!(s, t, "stream {}", String::from_utf8_lossy(key));
    }
    // The interesting cases really are in the data set.
    let st = stream_state(src, b"st").join("\n");
    for needle in [
        "last-generated-id=1-10",
        "1-1 alice 1",
        "1-4 bob 3",
        "name=carol\npending=0",
    ] {
        assert!(st.contains(needle), "{needle} not in {st}");
    }
    assert!(stream_state(src, b"st:empty").contains(&"length=0".to_string()));
    let mid = stream_state(src, b"st:mid").join("\n");
    for needle in [
        "last-generated-id=8-700",
        "groups=2",
        "8-3 c 1",
        "8-4 c2 3",
        "8-11 d 1",
        "name=idle\npending=0",
    ] {
        assert!(
            mid.contains(needle),
            "{needle} not in {}",
            &mid[mid.find("length=").unwrap_or(0)..]
        );
    }
    assert_eq!(q::<String>(dst, &[b"GET", b"k"]), "v");
}

// ----- --from-rdb ----------------------------------------------------------------------------

/// Runs `cutover sync --from-rdb FILE --target URL`.
fn load_rdb(file: &std::path::Path, target: &Server) -> Output {
    let child = cutover()
        .args(["sync", "--from-rdb"])
        .arg(file)
        .args(["--target", &target.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, Duration::from_secs(60))
}

/// `SAVE`s the server and returns the path of its `dump.rdb`.
fn save(server: &Server) -> std::path::PathBuf {
    let mut conn = server.conn();
    let _: () = q(&mut conn, &[b"SAVE"]);
    let dir: Vec<String> = q(&mut conn, &[b"CONFIG", b"GET", b"dir"]);
    std::path::Path::new(&dir[1]).join("dump.rdb")
}

fn rdb_file_loads(from: Version) {
    let source = Server::start(from);
    let mut src = source.conn();
    populate(&mut src);
    // cutover's own key in the file is not copied (the source was a sync target itself) …
    let _: () = q(&mut src, &[b"SET", POSITION_KEY, b"from the file"]);
    let file = save(&source);
    let _: () = q(&mut src, &[b"DEL", POSITION_KEY]);
    let target = Server::start(Version::Redis70);
    // … and a position the target held no longer applies once a file is loaded into it.
    let stale = format!("{} 1", "f".repeat(40));
    let mut dst = target.conn();
    let _: () = q(&mut dst, &[b"SET", POSITION_KEY, stale.as_bytes()]);
    let out = load_rdb(&file, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(stderr.contains("done at offset"), "{stderr}");
    assert_eq!(q::<Option<String>>(&mut dst, &[b"GET", POSITION_KEY]), None);
    assert_same(&source, &target);
}

#[test]
fn rdb_file_from_redis62() {
    rdb_file_loads(Version::Redis62);
}

#[test]
fn rdb_file_from_redis70() {
    rdb_file_loads(Version::Redis70);
}

#[test]
fn rdb_file_from_valkey91() {
    rdb_file_loads(Version::Valkey91);
}

/// A missing, a truncated and a corrupt file are clear errors naming the file (and the byte).
#[test]
fn rdb_file_errors() {
    let source = Server::start(Version::Redis70);
    populate(&mut source.conn());
    let data = std::fs::read(save(&source)).unwrap();
    let target = Server::start(Version::Redis70);
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.rdb");
    let out = load_rdb(&missing, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.rdb"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let truncated = dir.path().join("truncated.rdb");
    std::fs::write(&truncated, &data[..data.len() / 2]).unwrap();
    let out = load_rdb(&truncated, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    eprintln!("{stderr}");
    assert!(
        stderr.contains("truncated.rdb") && stderr.contains("at byte"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The checksum at the end no longer matches.
    let corrupt = dir.path().join("corrupt.rdb");
    let mut bad = data.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x5a;
    std::fs::write(&corrupt, &bad).unwrap();
    let out = load_rdb(&corrupt, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    eprintln!("{stderr}");
    assert!(
        stderr.contains("corrupt.rdb") && stderr.contains("at byte"),
        "{stderr}"
    );

    // Neither was loaded in part: the file is read to its end (checksum included) before
    // the target is written to.
    let keys: i64 = q(&mut target.conn(), &[b"DBSIZE"]);
    assert_eq!(keys, 0, "a bad file left keys on the target");
    assert!(stderr.contains("nothing was written"), "{stderr}");

    // Garbage from the first byte.
    let garbage = dir.path().join("garbage.rdb");
    std::fs::write(&garbage, b"this is not an RDB file at all").unwrap();
    let out = load_rdb(&garbage, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("garbage.rdb") && stderr.contains("at byte"),
        "{stderr}"
    );
}

/// A source database the target does not have (db 20 of a 32-db source, into 16 dbs) is
/// refused before anything is written, with the `db_map` that would fix it — never written
/// into db 0 — from a file and from a live source alike.
#[test]
fn a_database_the_target_lacks_is_refused_before_writing() {
    let source = Server::start_with(Version::Redis70, &["--databases", "32"]);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"SET", b"k", b"from-db0"]);
    let _: () = q(&mut src, &[b"SELECT", b"20"]);
    let _: () = q(&mut src, &[b"SET", b"k", b"from-db20"]);
    let file = save(&source);
    let target = Server::start(Version::Redis70);
    let mut dst = target.conn();
    let _: () = q(&mut dst, &[b"SET", b"k", b"target's own"]);
    let check = |out: Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("20") && stderr.contains("db_map") && stderr.contains("16 databases"),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was written"), "{stderr}");
        assert_eq!(
            q::<String>(&mut target.conn(), &[b"GET", b"k"]),
            "target's own",
            "db 0 of the target is untouched"
        );
    };
    check(load_rdb(&file, &target));
    check(sync_once(&source, &target));
    // With the suggested map, it is copied.
    let child = cutover()
        .args(["sync", "--once", "--db-map", "20=1", "--fresh"])
        .args(["--source", &source.url(), "--target", &target.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut db1 = target.conn();
    let _: () = q(&mut db1, &[b"SELECT", b"1"]);
    assert_eq!(q::<String>(&mut db1, &[b"GET", b"k"]), "from-db20");
}

// ----- exactly once across restarts ----------------------------------------------------------

/// `cutover sync` (no `--once`) with its stderr going to `log`.
fn start_sync(source: &Server, target: &Server, log: &std::path::Path, extra: &[&str]) -> Child {
    cutover()
        .args(["sync", "--source", &source.url(), "--target", &target.url()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The position stored on the target: (replid, offset).
fn stored_position(conn: &mut Connection) -> Option<(String, u64)> {
    let _: () = q(conn, &[b"SELECT", b"0"]);
    let v: Option<String> = q(conn, &[b"GET", POSITION_KEY]);
    let v = v?;
    // "<replid> <offset> <db>" (or the older "<replid> <offset>")
    let mut parts = v.split(' ');
    let (id, off) = (parts.next()?, parts.next()?);
    Some((id.to_string(), off.parse().ok()?))
}

fn master_repl_offset(conn: &mut Connection) -> u64 {
    let info: String = q(conn, &[b"INFO", b"replication"]);
    info.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn read_log(log: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned()
}

/// SIGKILL of `cutover sync` mid-stream under INCR/RPUSH load (some in MULTI/EXEC), then a
/// restart: it continues with PSYNC (+CONTINUE) from the position stored on the target, and
/// counters and lists on the target are exact (nothing lost, nothing applied twice).
#[test]
fn restart_resumes_exactly_once() {
    use std::sync::atomic::Ordering;
    let (source, stop, load) = source_under_load();
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("first.log");
    let mut first = start_sync(&source, &target, &log1, &[]);
    let mut dst = target.conn();
    // Mid-stream: the snapshot is applied and stream batches have been stored since.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    loop {
        let counter: Option<i64> = q(&mut dst, &[b"GET", b"counter"]);
        if stored_position(&mut dst).is_some() && counter.is_some_and(|c| c > seen + 500) {
            if seen > 0 {
                break;
            }
            seen = counter.unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline && first.try_wait().unwrap().is_none(),
            "no stream progress; stderr:\n{}",
            read_log(&log1)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let killed_at = stored_position(&mut dst).unwrap();

    let log2 = dir.path().join("second.log");
    let mut second = start_sync(&source, &target, &log2, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_log(&log2).contains("+CONTINUE") {
        assert!(
            Instant::now() < deadline && second.try_wait().unwrap().is_none(),
            "no partial resync; stderr:\n{}",
            read_log(&log2)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (incrs, pushed) = load.join().unwrap();
    let want = master_repl_offset(&mut src);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, offset) = stored_position(&mut dst).unwrap();
        // (It may pass `want` if the source sent a PING meanwhile.)
        if offset >= want {
            break;
        }
        assert!(
            Instant::now() < deadline && second.try_wait().unwrap().is_none(),
            "the target's offset {offset} does not reach {want}; stderr:\n{}",
            read_log(&log2)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let log = read_log(&log2);
    assert!(!log.contains("FLUSHALL"), "{log}");
    assert!(
        killed_at.1 < want,
        "the restart resumed nothing: {killed_at:?} {want}"
    );
    eprintln!("killed at {killed_at:?}, source offset {want}, {incrs} INCRs\n{log}");

    assert_eq!(q::<u64>(&mut src, &[b"GET", b"counter"]), incrs);
    assert_eq!(q::<u64>(&mut dst, &[b"GET", b"counter"]), incrs);
    assert_eq!(q::<u64>(&mut src, &[b"LLEN", b"events"]), pushed);
    assert_eq!(q::<u64>(&mut dst, &[b"LLEN", b"events"]), pushed);
    let expected: Vec<String> = (0..pushed).map(|i| format!("v{i}")).collect();
    assert_eq!(
        q::<Vec<String>>(&mut dst, &[b"LRANGE", b"events", b"0", b"-1"]),
        expected
    );
    assert_eq!(
        q::<i64>(&mut src, &[b"DBSIZE"]),
        q::<i64>(&mut dst, &[b"DBSIZE"]) - 1
    );
}

/// When the source cannot continue from the stored position (+FULLRESYNC), the target is
/// flushed first (said on stderr): no stale key remains. `--fresh` does the same on purpose.
#[test]
fn full_resync_flushes_the_target() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let mut dst = target.conn();
    let _: () = q(&mut src, &[b"RPUSH", b"l", b"a", b"b"]);
    let unknown = format!("{} 12345", "f".repeat(40));
    let _: () = q(&mut dst, &[b"SET", POSITION_KEY, unknown.as_bytes()]);
    let _: () = q(&mut dst, &[b"RPUSH", b"l", b"a", b"b"]);
    let _: () = q(&mut dst, &[b"SET", b"stale", b"x"]);
    let out = sync_once(&source, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("FLUSHALL"), "{stderr}");
    assert_eq!(q::<Option<String>>(&mut dst, &[b"GET", b"stale"]), None);
    assert_eq!(
        q::<Vec<String>>(&mut dst, &[b"LRANGE", b"l", b"0", b"-1"]),
        ["a", "b"]
    );
    let (replid, offset) = stored_position(&mut dst).unwrap();
    assert_eq!(replid.len(), 40);
    assert_ne!(replid, "f".repeat(40));
    assert_eq!(offset, master_repl_offset(&mut src));

    // --fresh: the valid position is not used.
    let _: () = q(&mut dst, &[b"SET", b"stale", b"x"]);
    let child = cutover()
        .args([
            "sync",
            "--once",
            "--fresh",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--fresh") && stderr.contains("FLUSHALL"),
        "{stderr}"
    );
    assert_eq!(q::<Option<String>>(&mut dst, &[b"GET", b"stale"]), None);
    assert_same_small(&mut src, &mut dst);
}

fn assert_same_small(src: &mut Connection, dst: &mut Connection) {
    assert_eq!(
        q::<Vec<String>>(src, &[b"LRANGE", b"l", b"0", b"-1"]),
        q::<Vec<String>>(dst, &[b"LRANGE", b"l", b"0", b"-1"])
    );
    assert_eq!(q::<i64>(src, &[b"DBSIZE"]), q::<i64>(dst, &[b"DBSIZE"]) - 1);
}

/// SIGTERM stops `cutover sync` cleanly: exit 0, the position stored; the next start continues.
#[test]
fn sigterm_stops_cleanly() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let mut dst = target.conn();
    for i in 0..100 {
        let _: i64 = q(&mut src, &[b"RPUSH", b"l", i.to_string().as_bytes()]);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let wait_caught_up = |dst: &mut Connection, src: &mut Connection, child: &mut Child| {
        let want = master_repl_offset(src);
        let deadline = Instant::now() + Duration::from_secs(15);
        while stored_position(dst).is_none_or(|(_, off)| off < want) {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "not caught up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for i in 100..200 {
        let _: i64 = q(&mut src, &[b"RPUSH", b"l", i.to_string().as_bytes()]);
    }
    wait_caught_up(&mut dst, &mut src, &mut child);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(10));
    let stderr = read_log(&log);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped; position"), "{stderr}");

    for i in 200..300 {
        let _: i64 = q(&mut src, &[b"RPUSH", b"l", i.to_string().as_bytes()]);
    }
    let log2 = dir.path().join("sync2.log");
    let mut child = start_sync(&source, &target, &log2, &[]);
    wait_caught_up(&mut dst, &mut src, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    assert!(read_log(&log2).contains("+CONTINUE"), "{}", read_log(&log2));
    let _: () = q(&mut dst, &[b"SELECT", b"0"]);
    let expected: Vec<String> = (0..300).map(|i: i32| i.to_string()).collect();
    assert_eq!(
        q::<Vec<String>>(&mut dst, &[b"LRANGE", b"l", b"0", b"-1"]),
        expected
    );
}

/// What a file holds that the target cannot (functions on 6.2) is reported: exit code 3.
#[test]
fn rdb_file_incomplete_copy_exits_3() {
    let source = Server::start(Version::Redis70);
    let mut src = source.conn();
    let code =
        "#!lua name=mylib\nredis.register_function('myfn', function(keys, args) return 7 end)";
    let _: String = q(&mut src, &[b"FUNCTION", b"LOAD", code.as_bytes()]);
    let _: () = q(&mut src, &[b"SET", b"k", b"v"]);
    let file = save(&source);
    let old = Server::start(Version::Redis62);
    let out = load_rdb(&file, &old);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("mylib"), "{stderr}");
    assert_eq!(q::<String>(&mut old.conn(), &[b"GET", b"k"]), "v");
}

/// `cutover run` with a target syncs in the background as soon as the proxy is up: `status`
/// goes connecting → syncing → streaming, and writes made through the proxy reach the target.
#[test]
fn run_syncs_in_the_background_and_status_shows_it() {
    use common::Proxy;
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis62);
    let mut src = source.conn();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("before:{i}"))
            .arg(i)
            .query(&mut src)
            .unwrap();
    }
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = proxy.status_json();
        if status["phase"] == "streaming" {
            let sync = &status["sync"];
            assert_eq!(sync["keys_done"], 200, "{status}");
            assert_eq!(sync["keys_total"], 200, "{status}");
            assert_eq!(sync["keys_by_type"]["string"], 200, "{status}");
            // Strings without TTL are batched into MSETs.
            assert_eq!(sync["keys_plain"], 200, "{status}");
            assert_eq!(sync["reconnects"], 0, "{status}");
            assert!(sync["snapshot_bytes"].as_u64().unwrap() > 1000, "{status}");
            assert!(
                status["lag_bytes"].is_u64() && status["lag_ms"].is_u64(),
                "{status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached streaming: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut through = proxy.conn();
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("via-proxy")
        .query(&mut through)
        .unwrap();
    let mut dst = target.conn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = redis::cmd("GET").arg("after").query(&mut dst).unwrap();
        if v.as_deref() == Some("via-proxy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write never reached the target"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: Option<String> = redis::cmd("GET").arg("before:7").query(&mut dst).unwrap();
    assert_eq!(v.as_deref(), Some("7"));
    let status = proxy.status_json();
    assert_eq!(status["primary"], "source", "{status}");
    let metrics = proxy.metrics();
    for name in [
        "cutover_sync_applied_offset",
        "cutover_sync_keys_total",
        "cutover_sync_keys_by_type{direction=\"forward\",type=\"string\"} 200",
        "cutover_sync_keys_written{direction=\"forward\",how=\"plain\"} 200",
        "cutover_sync_snapshot_bytes_total",
        "cutover_sync_lag_bytes",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    // A dropped link is connected again within the run, and counted.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut src)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.status_json()["sync"]["reconnects"] != 1 {
        assert!(Instant::now() < deadline, "{}", proxy.status_json());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.status_json()["sync"]["starts"], 1);
}

// ----- the version matrix ---------------------------------------------------------------------

/// Writes of every type in dbs 0 and 1 (some in MULTI/EXEC), `n` rounds, on `conn`.
fn live_writes(conn: &mut Connection, n: usize, expire_flags: bool) {
    for i in 0..n {
        let v = i.to_string();
        let v = v.as_bytes();
        let db: &[u8] = if (i / 100) % 2 == 0 { b"0" } else { b"1" };
        if i % 100 == 0 {
            let _: () = q(conn, &[b"SELECT", db]);
        }
        let _: i64 = q(conn, &[b"INCR", b"live:counter"]);
        let _: i64 = q(conn, &[b"RPUSH", b"live:list", v]);
        let _: i64 = q(
            conn,
            &[b"HSET", b"live:hash", format!("f{}", i % 50).as_bytes(), v],
        );
        let _: i64 = q(
            conn,
            &[b"SADD", b"live:set", format!("m{}", i % 300).as_bytes()],
        );
        let _: f64 = q(
            conn,
            &[
                b"ZINCRBY",
                b"live:zset",
                b"1.5",
                format!("m{}", i % 70).as_bytes(),
            ],
        );
        let _: String = q(conn, &[b"XADD", b"live:stream", b"*", b"f", v]);
        let _: () = q(conn, &[b"SET", b"live:str", v, b"EX", b"1000"]);
        if expire_flags {
            let _: i64 = q(conn, &[b"PEXPIRE", b"live:list", b"100000", b"GT"]);
        } else {
            let _: i64 = q(conn, &[b"PEXPIRE", b"live:list", b"100000"]);
        }
        if i % 50 == 0 {
            let _: (i64, i64) = redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg("live:counter")
                .cmd("LPOP")
                .arg("live:list")
                .query(conn)
                .unwrap();
            let _: i64 = q(conn, &[b"DEL", format!("str:{}", i % 7).as_bytes()]);
        }
    }
    let _: () = q(conn, &[b"SELECT", b"0"]);
}

/// Waits until the target's stored position reaches the source's offset now.
fn wait_caught_up(
    src: &mut Connection,
    dst: &mut Connection,
    child: &mut Child,
    log: &std::path::Path,
) {
    let want = master_repl_offset(src);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_position(dst).is_none_or(|(_, off)| off < want) {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the target does not reach the source's offset {want}; stderr:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One pair of the matrix: the full dataset (every type and encoding, streams with groups and
/// pending entries, TTLs, dbs 0 and 1, binary keys), writes running while the sync starts and
/// streams, then a key-by-key comparison with an independent client.
fn matrix(from: Version, to: Version) {
    matrix_with(from, to, &[]);
}

fn matrix_with(from: Version, to: Version, sync_args: &[&str]) -> String {
    let source = Server::start_with(from, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(to);
    let mut src = source.conn();
    populate(&mut src);
    populate_streams(&mut src);
    let expire_flags = from != Version::Redis62;
    let writer = {
        let mut conn = source.conn();
        std::thread::spawn(move || live_writes(&mut conn, 1500, expire_flags))
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, sync_args);
    writer.join().unwrap();
    let mut dst = target.conn();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read_log(&log);
    assert!(!stderr.contains("not copied:"), "{stderr}");
    assert_same(&source, &target);
    let _: () = q(&mut src, &[b"SELECT", b"0"]);
    let _: () = q(&mut dst, &[b"SELECT", b"0"]);
    assert_same_streams(&mut src, &mut dst);
    stderr
}

/// Small sizes everywhere (big keys from 1 KiB: chunked plain commands; transactions of 3
/// stream commands; 2 commands in flight): the copy is just as exact.
#[test]
fn tuning_options_keep_the_copy_exact() {
    let stderr = matrix_with(
        Version::Redis70,
        Version::Redis62,
        &[
            "--big-key-bytes",
            "1024",
            "--batch-size",
            "3",
            "--pipeline",
            "2",
        ],
    );
    // The big lists, sets, zsets, hashes and streams went by plain commands (with the default
    // 512 KiB only the two huge streams and the strings do: 12).
    let line = stderr
        .lines()
        .find(|l| l.contains("snapshot applied"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let plain: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" plain"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(plain >= 17, "{line}");
}

#[test]
fn matrix_redis62_to_redis62() {
    matrix(Version::Redis62, Version::Redis62);
}

#[test]
fn matrix_redis62_to_redis70() {
    matrix(Version::Redis62, Version::Redis70);
}

#[test]
fn matrix_redis62_to_valkey91() {
    matrix(Version::Redis62, Version::Valkey91);
}

#[test]
fn matrix_redis70_to_redis62() {
    matrix(Version::Redis70, Version::Redis62);
}

#[test]
fn matrix_redis70_to_redis70() {
    matrix(Version::Redis70, Version::Redis70);
}

#[test]
fn matrix_redis70_to_valkey91() {
    matrix(Version::Redis70, Version::Valkey91);
}

#[test]
fn matrix_valkey91_to_redis62() {
    matrix(Version::Valkey91, Version::Redis62);
}

#[test]
fn matrix_valkey91_to_redis70() {
    matrix(Version::Valkey91, Version::Redis70);
}

#[test]
fn matrix_valkey91_to_valkey91() {
    matrix(Version::Valkey91, Version::Valkey91);
}

// ----- reconnects within a run ----------------------------------------------------------------

/// A Redis 7.0 source whose backlog outlives the reconnects of these tests, holding 20,000
/// keys, with [`counting_load`] running against it until the returned flag is set.
fn source_under_load() -> (
    Server,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(u64, u64)>,
) {
    let source = Server::start_with(
        Version::Redis70,
        &[
            "--repl-diskless-sync-delay",
            "0",
            "--repl-backlog-size",
            "64mb",
        ],
    );
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"DEBUG", b"POPULATE", b"20000", b"pop", b"50"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = counting_load(source.conn(), std::sync::Arc::clone(&stop));
    (source, stop, load)
}

/// INCR/RPUSH load (every tenth pair in MULTI/EXEC) until `stop`; returns (INCRs, RPUSHes).
fn counting_load(
    mut conn: Connection,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && i < 300_000 {
            if i % 10 == 0 {
                let _: (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("counter")
                    .cmd("RPUSH")
                    .arg("events")
                    .arg(format!("v{i}"))
                    .query(&mut conn)
                    .unwrap();
            } else {
                let _: i64 = q(&mut conn, &[b"INCR", b"counter"]);
                let _: i64 = q(
                    &mut conn,
                    &[b"RPUSH", b"events", format!("v{i}").as_bytes()],
                );
            }
            i += 1;
        }
        (i, i)
    })
}

/// Waits until the target's counter has grown by `by` (the stream is flowing).
fn wait_counter_grows(dst: &mut Connection, by: i64, child: &mut Child, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let start: Option<i64> = q(dst, &[b"GET", b"counter"]);
    loop {
        let now: Option<i64> = q(dst, &[b"GET", b"counter"]);
        if stored_position(dst).is_some() && now.unwrap_or(0) >= start.unwrap_or(0) + by {
            return;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "no stream progress; stderr:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_exact_counts(src: &mut Connection, dst: &mut Connection, (incrs, pushed): (u64, u64)) {
    let _: () = q(src, &[b"SELECT", b"0"]);
    let _: () = q(dst, &[b"SELECT", b"0"]);
    assert_eq!(q::<u64>(src, &[b"GET", b"counter"]), incrs);
    assert_eq!(q::<u64>(dst, &[b"GET", b"counter"]), incrs);
    assert_eq!(q::<u64>(dst, &[b"LLEN", b"events"]), pushed);
    let expected: Vec<String> = (0..pushed).map(|i| format!("v{i}")).collect();
    assert_eq!(
        q::<Vec<String>>(dst, &[b"LRANGE", b"events", b"0", b"-1"]),
        expected
    );
    assert_eq!(q::<i64>(src, &[b"DBSIZE"]), q::<i64>(dst, &[b"DBSIZE"]) - 1);
}

/// The source drops the replica link (`CLIENT KILL TYPE replica`) three times mid-stream
/// under INCR/RPUSH load: the running `cutover sync` connects again, the source continues
/// (+CONTINUE) right after the last byte received, and counters and lists are exact.
#[test]
fn link_killed_mid_stream_continues_exactly() {
    use std::sync::atomic::Ordering;
    let (source, stop, load) = source_under_load();
    let target = Server::start(Version::Redis62);
    let mut src = source.conn();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let mut dst = target.conn();
    for round in 0..3 {
        wait_counter_grows(&mut dst, 300, &mut child, &log);
        let killed: i64 = q(&mut src, &[b"CLIENT", b"KILL", b"TYPE", b"replica"]);
        assert_eq!(killed, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_log(&log)
            .matches("reconnected; the source continued")
            .count()
            <= round
        {
            assert!(
                Instant::now() < deadline,
                "no reconnection: {}",
                read_log(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_counter_grows(&mut dst, 300, &mut child, &log);
    stop.store(true, Ordering::Relaxed);
    let counts = load.join().unwrap();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read_log(&log);
    assert_eq!(
        stderr.matches("reconnected; the source continued").count(),
        3,
        "{stderr}"
    );
    assert!(!stderr.contains("FLUSHALL"), "{stderr}");
    assert_exact_counts(&mut src, &mut dst, counts);
}

/// The link drops and the source's backlog no longer holds what was missed (+FULLRESYNC):
/// the target is flushed and loaded anew inside the same run; counts stay exact.
#[test]
fn link_killed_backlog_lost_full_resync_is_exact() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let source = Server::start_with(
        Version::Redis70,
        &[
            "--repl-diskless-sync-delay",
            "0",
            "--repl-backlog-size",
            "16kb",
        ],
    );
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"DEBUG", b"POPULATE", b"5000", b"pop", b"50"]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = counting_load(source.conn(), Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let mut dst = target.conn();
    wait_counter_grows(&mut dst, 300, &mut child, &log);
    // Kill the link and at once write more than the backlog holds, before it reconnects.
    let _: (i64, ()) = redis::pipe()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .cmd("SET")
        .arg("junk")
        .arg(vec![b'x'; 256 * 1024])
        .query(&mut src)
        .unwrap();
    wait_counter_grows(&mut dst, 300, &mut child, &log);
    stop.store(true, Ordering::Relaxed);
    let counts = load.join().unwrap();
    let _: i64 = q(&mut src, &[b"DEL", b"junk"]);
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read_log(&log);
    assert!(stderr.contains("could not continue the stream"), "{stderr}");
    assert!(stderr.contains("FLUSHALL"), "{stderr}");
    assert_exact_counts(&mut src, &mut dst, counts);
}

/// The link drops in the middle of the snapshot (slowed down with rdb-key-save-delay): the
/// partial copy is flushed and a new snapshot loaded; keys deleted meanwhile are not left
/// behind.
#[test]
fn link_killed_mid_snapshot_starts_over() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"DEBUG", b"POPULATE", b"20000", b"pop", b"20"]);
    let _: () = q(
        &mut src,
        &[b"CONFIG", b"SET", b"rdb-key-save-delay", b"200"],
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &["--once"]);
    let mut dst = target.conn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while q::<i64>(&mut dst, &[b"DBSIZE"]) < 1000 {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the snapshot does not load; stderr:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _: () = q(&mut src, &[b"CONFIG", b"SET", b"rdb-key-save-delay", b"0"]);
    // Keys the first (partial) copy may already hold.
    for i in 0..2000 {
        let _: i64 = q(&mut src, &[b"DEL", format!("pop:{i}").as_bytes()]);
    }
    let killed: i64 = q(&mut src, &[b"CLIENT", b"KILL", b"TYPE", b"replica"]);
    assert_eq!(killed, 1);
    let out = wait_output(child, Duration::from_secs(60));
    let stderr = read_log(&log);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("did not arrive whole"), "{stderr}");
    assert_eq!(q::<i64>(&mut src, &[b"DBSIZE"]), 18000);
    assert_eq!(q::<i64>(&mut dst, &[b"DBSIZE"]), 18001);
    assert_eq!(q::<Option<String>>(&mut dst, &[b"GET", b"pop:5"]), None);
}

// ----- options -------------------------------------------------------------------------------

/// db_map with --only-mapped-dbs, key include/exclude rules and an excluded command, for the
/// snapshot and for the stream; the unlisted databases are named on stderr.
#[test]
fn options_map_and_filter() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    for (db, key) in [
        ("0", "keep:1"),
        ("0", "keep:secret"),
        ("0", "drop:1"),
        ("1", "keep:db1"),
        ("2", "keep:db2"),
    ] {
        let _: () = q(&mut src, &[b"SELECT", db.as_bytes()]);
        let _: () = q(&mut src, &[b"SET", key.as_bytes(), b"v"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(
        &source,
        &target,
        &log,
        &[
            "--db-map",
            "0=3,1=1",
            "--only-mapped-dbs",
            "--include-prefix",
            "keep:",
            "--exclude-regex",
            "secret$",
            "--exclude-command",
            "flushdb",
        ],
    );
    let mut dst = target.conn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_position(&mut dst).is_none() {
        assert!(Instant::now() < deadline, "{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stream: the same rules.
    let _: () = q(&mut src, &[b"SELECT", b"0"]);
    let _: () = q(&mut src, &[b"SET", b"keep:2", b"v"]);
    let _: () = q(&mut src, &[b"SET", b"drop:2", b"v"]);
    let _: () = q(&mut src, &[b"MSET", b"keep:3", b"v", b"drop:3", b"v"]);
    let _: i64 = q(&mut src, &[b"MOVE", b"keep:1", b"2"]);
    let _: () = q(&mut src, &[b"SELECT", b"2"]);
    let _: () = q(&mut src, &[b"SET", b"keep:in2", b"v"]);
    let _: () = q(&mut src, &[b"SELECT", b"1"]);
    let _: () = q(&mut src, &[b"FLUSHDB"]);
    let _: () = q(&mut src, &[b"SET", b"keep:after", b"v"]);
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read_log(&log);
    assert!(
        stderr.contains("snapshot applied: 5 keys [5 string]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not list the source's databases 2: they are NOT copied"),
        "{stderr}"
    );
    let keys = |dst: &mut Connection, db: &[u8]| {
        let _: () = q(dst, &[b"SELECT", db]);
        let mut k: Vec<String> = q(dst, &[b"KEYS", b"*"]);
        k.sort();
        k
    };
    // (MSET touches a copied key: applied whole, drop:3 included.)
    assert_eq!(keys(&mut dst, b"3"), ["drop:3", "keep:2", "keep:3"]);
    assert_eq!(keys(&mut dst, b"1"), ["keep:after", "keep:db1"]);
    assert_eq!(keys(&mut dst, b"2"), Vec::<String>::new());
    assert_eq!(keys(&mut dst, b"0"), ["cutover:position"]);
}

/// `--unsupported fail` stops at the first item the target cannot hold, naming it.
#[test]
fn unsupported_fail_stops() {
    let source = Server::start(Version::Redis70);
    let mut src = source.conn();
    let code =
        "#!lua name=mylib\nredis.register_function('myfn', function(keys, args) return 7 end)";
    let _: String = q(&mut src, &[b"FUNCTION", b"LOAD", code.as_bytes()]);
    let target = Server::start(Version::Redis62);
    let child = cutover()
        .args([
            "sync",
            "--once",
            "--unsupported",
            "fail",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mylib") && stderr.contains("unsupported = fail"),
        "{stderr}"
    );
}

/// Stream commands newer than the target: `SET … IFEQ` loses the condition (it held on the
/// source), `XGROUP … ENTRIESREAD` loses the counter on 6.2, `PEXPIREAT … GT` the flag; hash
/// field TTL commands of Valkey 9.1 cannot be expressed on 6.2 / 7.0 and are reported by key.
#[test]
fn stream_rewrites_for_older_targets() {
    for to in [Version::Redis62, Version::Redis70] {
        let source = Server::start_with(Version::Valkey91, &["--repl-diskless-sync-delay", "0"]);
        let target = Server::start(to);
        let mut src = source.conn();
        let _: () = q(&mut src, &[b"SET", b"k", b"v"]);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sync.log");
        let mut child = start_sync(&source, &target, &log, &[]);
        let mut dst = target.conn();
        wait_caught_up(&mut src, &mut dst, &mut child, &log);
        let _: () = q(&mut src, &[b"SET", b"k", b"v2", b"IFEQ", b"v"]);
        let _: () = q(&mut src, &[b"SET", b"k", b"v3", b"IFEQ", b"nope"]);
        let _: () = q(
            &mut src,
            &[
                b"XGROUP",
                b"CREATE",
                b"s",
                b"g",
                b"0",
                b"MKSTREAM",
                b"ENTRIESREAD",
                b"0",
            ],
        );
        let _: () = q(
            &mut src,
            &[b"XGROUP", b"SETID", b"s", b"g", b"0", b"ENTRIESREAD", b"3"],
        );
        let _: i64 = q(&mut src, &[b"PEXPIREAT", b"k", b"99999999999999", b"GT"]);
        let _: i64 = q(&mut src, &[b"PEXPIREAT", b"k", b"99999999999990", b"LT"]);
        let _: i64 = q(
            &mut src,
            &[b"HSETEX", b"h", b"EX", b"100", b"FIELDS", b"1", b"f", b"v"],
        );
        let _: () = q(&mut src, &[b"SET", b"gone", b"x"]);
        let _: i64 = q(&mut src, &[b"DELIFEQ", b"gone", b"x"]);
        // Only a field TTL change: not expressible, reported (as a lost field TTL).
        let _: redis::Value = q(&mut src, &[b"HEXPIRE", b"h", b"500", b"FIELDS", b"1", b"f"]);
        let _: () = q(&mut src, &[b"SET", b"after", b"1"]);
        wait_caught_up(&mut src, &mut dst, &mut child, &log);
        let _ = child.kill();
        let _ = child.wait();
        let stderr = read_log(&log);
        eprintln!("{to:?}: {stderr}");
        assert_eq!(q::<String>(&mut dst, &[b"GET", b"k"]), "v2");
        assert!(q::<i64>(&mut dst, &[b"PTTL", b"k"]) > 1_000_000_000);
        assert_eq!(q::<String>(&mut dst, &[b"GET", b"after"]), "1");
        assert_eq!(q::<Option<String>>(&mut dst, &[b"GET", b"gone"]), None);
        let groups: redis::Value = q(&mut dst, &[b"XINFO", b"GROUPS", b"s"]);
        assert!(text(&groups).contains('g'), "{}", text(&groups));
        assert!(stderr.contains("applied as HSET"), "{stderr}");
        assert!(stderr.contains("cannot hold hash field TTLs"), "{stderr}");
        assert_eq!(q::<String>(&mut dst, &[b"HGET", b"h", b"f"]), "v");
    }
}

/// A source that stops answering (SIGSTOP) longer than `--timeout-secs`: the silent link is
/// dropped, connected again once the source is back (SIGCONT), and continues (+CONTINUE).
#[test]
fn stalled_link_is_detected_and_continues() {
    let source = Server::start_with(
        Version::Redis70,
        &[
            "--repl-diskless-sync-delay",
            "0",
            "--repl-ping-replica-period",
            "1",
        ],
    );
    let target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"SET", b"before", b"1"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &["--timeout-secs", "2"]);
    let mut dst = target.conn();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let pid: u64 = {
        let info: String = q(&mut src, &[b"INFO", b"server"]);
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(3500));
    signal("-CONT");
    let _: () = q(&mut src, &[b"SET", b"after", b"2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while q::<Option<String>>(&mut dst, &[b"GET", b"after"]).is_none() {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the write after the stall never arrived: {}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read_log(&log);
    assert!(stderr.contains("sent no data for 2 s"), "{stderr}");
    assert!(
        stderr.contains("reconnected; the source continued"),
        "{stderr}"
    );
}

// ----- a target that goes away ----------------------------------------------------------------

/// Waits until `log` holds `text` at least `n` times.
fn wait_log(log: &std::path::Path, text: &str, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_log(log).matches(text).count() < n {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "no {text:?} (x{n}) in the log:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Headless `cutover sync` under INCR/RPUSH load (some in MULTI/EXEC) while the TARGET is
/// SIGKILLed and restarted on the same port with its AOF (appendfsync always: data and stored
/// position come back together), and later has its connections killed (CLIENT KILL TYPE
/// normal): each time the sync says it retries, resumes from the stored position (+CONTINUE,
/// no FLUSHALL), and counters and lists end exact — nothing lost, nothing applied twice.
#[test]
fn target_killed_or_disconnected_resumes_exactly() {
    use std::sync::atomic::Ordering;
    let (source, stop, load) = source_under_load();
    let mut target = Server::start_with(
        Version::Redis62,
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let mut src = source.conn();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let mut dst = target.conn();
    wait_counter_grows(&mut dst, 300, &mut child, &log);

    target.restart();
    wait_log(&log, "retrying in", 1, &mut child);
    let mut dst = target.conn();
    wait_log(&log, "+CONTINUE", 1, &mut child);
    wait_counter_grows(&mut dst, 300, &mut child, &log);

    let killed: i64 = q(&mut dst, &[b"CLIENT", b"KILL", b"TYPE", b"normal"]);
    assert!(killed >= 1, "killed {killed}"); // cutover's writer (not this connection)
    wait_log(&log, "retrying in", 2, &mut child);
    wait_log(&log, "+CONTINUE", 2, &mut child);
    wait_counter_grows(&mut dst, 300, &mut child, &log);

    stop.store(true, Ordering::Relaxed);
    let counts = load.join().unwrap();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    assert!(child.try_wait().unwrap().is_none(), "{}", read_log(&log));
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read_log(&log);
    eprintln!("{stderr}");
    assert!(!stderr.contains("FLUSHALL"), "{stderr}");
    assert!(
        stderr.contains("connection to the target") || stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert_exact_counts(&mut src, &mut dst, counts);
}

/// The target restarts without persistence: its data and the stored position are gone, so
/// the retried run does a new full sync (nothing to flush) while the load goes on; the
/// counts end exact.
#[test]
fn target_restarted_empty_full_sync_is_exact() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let mut target = Server::start(Version::Redis70);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"DEBUG", b"POPULATE", b"5000", b"pop", b"50"]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = counting_load(source.conn(), Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let mut dst = target.conn();
    wait_counter_grows(&mut dst, 300, &mut child, &log);
    target.restart();
    let mut dst = target.conn();
    assert_eq!(q::<i64>(&mut dst, &[b"DBSIZE"]), 0);
    wait_log(&log, "retrying in", 1, &mut child);
    wait_counter_grows(&mut dst, 300, &mut child, &log);
    stop.store(true, Ordering::Relaxed);
    let counts = load.join().unwrap();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let _ = child.kill();
    let _ = child.wait();
    assert_exact_counts(&mut src, &mut dst, counts);
    assert_eq!(q::<i64>(&mut dst, &[b"EXISTS", b"pop:4999"]), 1);
}

/// While the target stays down, `cutover sync` retries with growing back-off, and Ctrl-C
/// (SIGINT) during the wait stops it at once (exit 0, the reason said); without Ctrl-C it
/// gives up after five times --timeout-secs (exit 2, saying how to continue).
#[test]
fn target_down_retries_then_stops_or_gives_up() {
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"SET", b"k", b"v"]);
    for interrupt in [true, false] {
        let mut target = Server::start(Version::Redis70);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sync.log");
        let mut child = start_sync(&source, &target, &log, &["--timeout-secs", "1"]);
        let mut dst = target.conn();
        wait_caught_up(&mut src, &mut dst, &mut child, &log);
        target.kill();
        wait_log(&log, "retrying in 1 s", 1, &mut child);
        wait_log(&log, "retrying in 2 s", 1, &mut child);
        if interrupt {
            let status = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let started = Instant::now();
            let out = wait_output(child, Duration::from_secs(5));
            let stderr = read_log(&log);
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            assert!(started.elapsed() < Duration::from_secs(2), "{stderr}");
            assert!(
                stderr.contains("stopped while waiting to retry"),
                "{stderr}"
            );
        } else {
            let out = wait_output(child, Duration::from_secs(20));
            let stderr = read_log(&log);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("giving up"), "{stderr}");
            assert!(stderr.contains("run `cutover sync` again"), "{stderr}");
        }
    }
}

/// What waiting cannot cure is not retried: a wrong password for the target exits 2 at once
/// with the target's answer.
#[test]
fn wrong_target_password_is_not_retried() {
    let source = Server::start(Version::Redis70);
    let target = Server::start_with(Version::Redis70, &["--requirepass", "right"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", target.port());
    let child = cutover()
        .args(["sync", "--source", &source.url(), "--target", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WRONGPASS") || stderr.contains("invalid"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");
}

// ----- what the target refuses ----------------------------------------------------------------

/// Valkey 9.1 → Redis 6.2 under INCR/RPUSH load, with commands 6.2 cannot take mixed in
/// (also inside source transactions). The target has COMMAND disabled, so cutover cannot ask
/// it what it knows and forwards them: 6.2 refuses MSETEX and HSETEX while queueing
/// (the batch's EXEC would apply nothing). Each is reported by name and key and left out, the
/// batch is sent again without it, and the sync goes on; an APPEND that fails inside EXEC
/// (WRONGTYPE: the target's key differs) is reported too. Afterwards the counters and lists
/// are exact, and a stop (SIGTERM) exits 3 listing what was not copied.
#[test]
fn refused_commands_are_reported_and_the_rest_applies_exactly_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let source = Server::start_with(Version::Valkey91, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start_with(Version::Redis62, &["--rename-command", "COMMAND", ""]);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"SET", b"k", b"v"]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = counting_load(source.conn(), Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let mut dst = target.conn();
    wait_counter_grows(&mut dst, 300, &mut child, &log);
    // A key only the target has, as a list: the source's APPEND to it fails inside EXEC.
    let _: i64 = q(&mut dst, &[b"RPUSH", b"diverged", b"x"]);
    let rounds = 20;
    for i in 0..rounds {
        let n = i.to_string();
        let key = format!("mk{i}");
        let _: (i64, i64, i64, i64) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg("counter2")
            .cmd("MSETEX")
            .arg(1)
            .arg(&key)
            .arg("v")
            .arg("PXAT")
            .arg("99999999999999")
            .cmd("RPUSH")
            .arg("events2")
            .arg(&n)
            .cmd("HSETEX")
            .arg("h")
            .arg("EX")
            .arg(100)
            .arg("FIELDS")
            .arg(1)
            .arg(&n)
            .arg("v")
            .query(&mut src)
            .unwrap();
        let _: () = q(&mut src, &[b"SET", b"gone", b"x"]);
        let _: i64 = q(&mut src, &[b"DELIFEQ", b"gone", b"x"]);
        let _: i64 = q(&mut src, &[b"INCR", b"counter2"]);
        let _: i64 = q(&mut src, &[b"RPUSH", b"events2", n.as_bytes()]);
        if i == 0 {
            let _: i64 = q(&mut src, &[b"APPEND", b"diverged", b"y"]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let counts = load.join().unwrap();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    assert!(child.try_wait().unwrap().is_none(), "{}", read_log(&log));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(10));
    let stderr = read_log(&log);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    for refused in ["MSETEX", "HSETEX"] {
        assert!(
            stderr.contains(&format!("not copied: {refused} (stream offset")),
            "{refused}: {stderr}"
        );
    }
    assert!(stderr.contains("on key 'mk7'"), "{stderr}");
    assert!(stderr.contains("HSETEX (stream offset") && stderr.contains("on key 'h'"));
    assert!(
        stderr.contains("APPEND (stream offset") && stderr.contains("WRONGTYPE"),
        "{stderr}"
    );
    // Everything else is exact: the batches were applied once, without the refused commands.
    let (incrs, pushed) = counts;
    assert_eq!(q::<u64>(&mut dst, &[b"GET", b"counter"]), incrs);
    let expected: Vec<String> = (0..pushed).map(|i| format!("v{i}")).collect();
    assert_eq!(
        q::<Vec<String>>(&mut dst, &[b"LRANGE", b"events", b"0", b"-1"]),
        expected
    );
    assert_eq!(q::<i64>(&mut dst, &[b"GET", b"counter2"]), 2 * rounds);
    let expected: Vec<String> = (0..rounds)
        .flat_map(|i| [i.to_string(), i.to_string()])
        .collect();
    assert_eq!(
        q::<Vec<String>>(&mut dst, &[b"LRANGE", b"events2", b"0", b"-1"]),
        expected
    );
    // (Valkey propagates a DELIFEQ that deleted as DEL.)
    assert_eq!(q::<i64>(&mut dst, &[b"EXISTS", b"gone"]), 0);
    assert_eq!(q::<i64>(&mut dst, &[b"EXISTS", b"mk0"]), 0);
    assert_eq!(q::<i64>(&mut dst, &[b"LLEN", b"diverged"]), 1);
}

/// Valkey 9.1 → Redis 6.2 with equivalents: MSETEX becomes SET + PEXPIREAT per key,
/// EXPIRE … NX (propagated as PEXPIREAT … NX) loses the flag that held on the source, HPERSIST
/// is a no-op where fields have no TTL. Nothing is reported as not copied (exit 0).
#[test]
fn equivalents_for_redis62() {
    let source = Server::start_with(Version::Valkey91, &["--repl-diskless-sync-delay", "0"]);
    let target = Server::start(Version::Redis62);
    let mut src = source.conn();
    let _: () = q(&mut src, &[b"SET", b"k", b"v"]);
    let _: i64 = q(&mut src, &[b"HSET", b"h", b"f", b"v"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut child = start_sync(&source, &target, &log, &[]);
    let mut dst = target.conn();
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let _: i64 = q(
        &mut src,
        &[
            b"MSETEX",
            b"2",
            b"a",
            b"1",
            b"b",
            b"2",
            b"NX",
            b"PXAT",
            b"99999999999999",
        ],
    );
    let _: () = q(&mut src, &[b"SET", b"c", b"old", b"EX", b"1000"]);
    let _: i64 = q(&mut src, &[b"MSETEX", b"1", b"c", b"3", b"KEEPTTL"]);
    let _: i64 = q(&mut src, &[b"EXPIRE", b"k", b"5000", b"NX"]);
    let _: i64 = q(&mut src, &[b"EXPIRE", b"k", b"100", b"GT"]); // not applied on the source
    let _: redis::Value = q(&mut src, &[b"HPERSIST", b"h", b"FIELDS", b"1", b"f"]);
    let _: () = q(&mut src, &[b"SET", b"after", b"1"]);
    wait_caught_up(&mut src, &mut dst, &mut child, &log);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(10));
    let stderr = read_log(&log);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("not copied:"), "{stderr}");
    assert_eq!(q::<String>(&mut dst, &[b"GET", b"a"]), "1");
    assert_eq!(q::<String>(&mut dst, &[b"GET", b"b"]), "2");
    assert!(q::<i64>(&mut dst, &[b"PTTL", b"b"]) > 1_000_000_000);
    assert_eq!(q::<String>(&mut dst, &[b"GET", b"c"]), "3");
    let ttl: i64 = q(&mut dst, &[b"TTL", b"c"]);
    assert!((900..=1000).contains(&ttl), "{ttl}");
    let ttl: i64 = q(&mut dst, &[b"TTL", b"k"]);
    assert!((4900..=5000).contains(&ttl), "{ttl}");
    assert_eq!(q::<String>(&mut dst, &[b"HGET", b"h", b"f"]), "v");
    assert_eq!(q::<String>(&mut dst, &[b"GET", b"after"]), "1");
}
