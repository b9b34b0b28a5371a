//! The streaming RDB parser against files written by real servers (Redis 6.2, Redis 7.0,
//! Valkey 9.1): write a dataset with every type in small and big variants (so both compact and
//! plain encodings occur), `SAVE`, parse `dump.rdb` fed in random pieces, and check every key,
//! value and TTL against what the server returns. Every key's `DUMP` payload is decoded with
//! the same value decoder and must give the same value, and the raw bytes the parser kept for a
//! key must be exactly the body of its DUMP payload.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Server, Version};
use cutover::rdb::dump::DumpPayload;
use cutover::rdb::event::StreamId;
use cutover::rdb::parser::{ParserOptions, RdbParser};
use cutover::rdb::{ChunkLimits, Event, KeyInfo, RdbType, Value, ValueKind, decode_dump};
use redis::Value as V;

fn q(con: &mut redis::Connection, args: &[&[u8]]) -> V {
    let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        c.arg(*a);
    }
    match c.query::<V>(con) {
        Ok(v) => v,
        Err(e) => panic!(
            "{:?} failed: {e}",
            args.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        ),
    }
}

fn qs(con: &mut redis::Connection, args: &[&str]) -> V {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    q(con, &a)
}

fn bytes(v: &V) -> Vec<u8> {
    match v {
        V::BulkString(b) => b.clone(),
        V::SimpleString(s) => s.as_bytes().to_vec(),
        V::Int(i) => i.to_string().into_bytes(),
        V::Okay => b"OK".to_vec(),
        other => panic!("not a string: {other:?}"),
    }
}

fn text(v: &V) -> String {
    String::from_utf8(bytes(v)).unwrap()
}

fn int(v: &V) -> i64 {
    match v {
        V::Int(i) => *i,
        other => text(other).parse().unwrap(),
    }
}

fn arr(v: &V) -> &[V] {
    match v {
        V::Array(a) | V::Set(a) => a,
        other => panic!("not an array: {other:?}"),
    }
}

/// A RESP2 flat key/value array as a map.
fn fields(v: &V) -> HashMap<String, V> {
    arr(v)
        .chunks(2)
        .map(|p| (text(&p[0]), p[1].clone()))
        .collect()
}

fn parse_id(s: &str) -> StreamId {
    let (ms, seq) = s.split_once('-').unwrap();
    StreamId {
        ms: ms.parse().unwrap(),
        seq: seq.parse().unwrap(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A tiny deterministic generator (xorshift) for data and piece sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rpush_many(con: &mut redis::Connection, cmd: &str, key: &[u8], items: &[Vec<u8>]) {
    for batch in items.chunks(1000) {
        let mut c = redis::cmd(cmd);
        c.arg(key);
        for i in batch {
            c.arg(i.as_slice());
        }
        c.query::<V>(con).unwrap();
    }
}

/// Writes the dataset. Returns nothing: the checks read everything back from the server.
fn populate(con: &mut redis::Connection, version: Version) {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let now = now_ms();
    // ---- db 0 ----
    qs(con, &["SET", "str:small", "hello"]);
    qs(con, &["SET", "str:int", "12345"]);
    qs(con, &["SET", "str:neg", "-7"]);
    qs(con, &["SET", "str:bigint", "123456789012"]);
    qs(con, &["SET", "str:compressible", &"abcdefgh".repeat(2000)]);
    let noise: Vec<u8> = (0..700_000).map(|_| rng.next() as u8).collect();
    q(con, &[b"SET", b"str:huge-random", &noise]);
    q(con, &[b"SET", b"bin\x00\xff\r\nkey", b"\x00\x01\x02\xff"]);
    q(con, &[b"SET", b"", b"empty key name"]);
    qs(con, &["SET", "str:ttl", "v", "PX", "5000000"]);
    qs(con, &["SET", "str:empty", ""]);
    let at = (now / 1000 + 90_000).to_string();
    qs(con, &["SET", "str:expireat", "v"]);
    qs(con, &["EXPIREAT", "str:expireat", &at]);

    qs(
        con,
        &["RPUSH", "list:small", "a", "1", "-2", "hello", "300000"],
    );
    let big: Vec<Vec<u8>> = (0..100_000)
        .map(|i| match i % 3 {
            0 => i.to_string().into_bytes(),
            1 => format!("item-{i}").into_bytes(),
            _ => vec![b'x'; (i % 50) as usize],
        })
        .collect();
    rpush_many(con, "RPUSH", b"list:big", &big);
    let huge_elem = "E".repeat(20_000);
    qs(
        con,
        &["RPUSH", "list:plain-node", "a", &huge_elem, "b", &huge_elem],
    );
    qs(con, &["RPUSH", "list:ttl", "x"]);
    qs(con, &["PEXPIRE", "list:ttl", "7000000"]);

    qs(con, &["SADD", "set:ints", "1", "2", "3", "-100", "70000"]);
    qs(
        con,
        &[
            "SADD",
            "set:bigints",
            "1",
            "9223372036854775807",
            "-9223372036854775808",
        ],
    );
    qs(con, &["SADD", "set:strs", "a", "b", "c", "hello"]);
    let members: Vec<Vec<u8>> = (0..1000).map(|i| format!("m{i}").into_bytes()).collect();
    rpush_many(con, "SADD", b"set:big", &members);
    let ints: Vec<Vec<u8>> = (0..2000)
        .map(|i| (i * 7).to_string().into_bytes())
        .collect();
    rpush_many(con, "SADD", b"set:big-ints", &ints);

    qs(
        con,
        &[
            "ZADD",
            "zset:small",
            "1",
            "a",
            "2.5",
            "b",
            "-3",
            "c",
            "inf",
            "d",
            "-inf",
            "e",
            "0.1",
            "f",
        ],
    );
    let mut big_z = redis::cmd("ZADD");
    big_z.arg("zset:big");
    for i in 0..1000 {
        big_z.arg(i as f64 / 7.0).arg(format!("member-{i}"));
    }
    big_z.arg("inf").arg("top");
    big_z.query::<V>(con).unwrap();

    qs(
        con,
        &[
            "HSET",
            "hash:small",
            "f1",
            "v1",
            "f2",
            "2",
            "f3",
            "",
            "n",
            "-12",
        ],
    );
    let mut big_h = redis::cmd("HSET");
    big_h.arg("hash:big");
    for i in 0..1000 {
        big_h.arg(format!("field-{i}")).arg(format!("value-{i}"));
    }
    big_h.query::<V>(con).unwrap();
    qs(con, &["HSET", "hash:longval", "f", &"L".repeat(100)]);
    qs(con, &["EXPIRE", "hash:longval", "8000000"]);

    // Streams: entries with different field sets, deletions, groups, PELs, consumers.
    for i in 0..60 {
        if i % 4 == 0 {
            qs(con, &["XADD", "stream:small", "*", "other", &i.to_string()]);
        } else {
            qs(
                con,
                &[
                    "XADD",
                    "stream:small",
                    "*",
                    "name",
                    "n",
                    "idx",
                    &i.to_string(),
                ],
            );
        }
    }
    let ids = arr(&qs(con, &["XRANGE", "stream:small", "-", "+"]))
        .iter()
        .map(|e| text(&arr(e)[0]))
        .collect::<Vec<_>>();
    qs(con, &["XDEL", "stream:small", &ids[3], &ids[10], &ids[59]]);
    qs(con, &["XGROUP", "CREATE", "stream:small", "g1", "0"]);
    qs(con, &["XGROUP", "CREATE", "stream:small", "g2", "$"]);
    qs(con, &["XGROUP", "CREATE", "stream:small", "g3", &ids[20]]);
    qs(
        con,
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "10",
            "STREAMS",
            "stream:small",
            ">",
        ],
    );
    qs(
        con,
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "bob",
            "COUNT",
            "5",
            "STREAMS",
            "stream:small",
            ">",
        ],
    );
    qs(
        con,
        &["XGROUP", "CREATECONSUMER", "stream:small", "g1", "carol"],
    );
    qs(con, &["XACK", "stream:small", "g1", &ids[0], &ids[1]]);
    // A second delivery of alice's pending entries to bob.
    qs(
        con,
        &["XCLAIM", "stream:small", "g1", "bob", "0", &ids[2], &ids[4]],
    );
    qs(
        con,
        &[
            "XREADGROUP",
            "GROUP",
            "g3",
            "dave",
            "COUNT",
            "3",
            "STREAMS",
            "stream:small",
            ">",
        ],
    );
    for i in 0..5000 {
        qs(
            con,
            &[
                "XADD",
                "stream:big",
                &format!("{}-{}", 1000 + i / 3, i % 3),
                "k",
                &i.to_string(),
                "payload",
                "p",
            ],
        );
    }
    qs(con, &["XADD", "stream:empty", "5-5", "a", "b"]);
    qs(con, &["XDEL", "stream:empty", "5-5"]);
    qs(con, &["XADD", "stream:ttl", "*", "a", "b"]);
    qs(con, &["PEXPIRE", "stream:ttl", "6000000"]);

    if version != Version::Redis62 {
        qs(
            con,
            &[
                "FUNCTION",
                "LOAD",
                "#!lua name=mylib\nredis.register_function('myfunc', function(keys, args) return 1 end)",
            ],
        );
    }
    if version == Version::Valkey91 {
        // Hashes with per-field TTLs (Valkey 9: HASH_2).
        qs(
            con,
            &["HSET", "hfe:small", "a", "1", "b", "2", "c", "three"],
        );
        qs(
            con,
            &["HPEXPIRE", "hfe:small", "5000000", "FIELDS", "2", "a", "c"],
        );
        let mut h = redis::cmd("HSET");
        h.arg("hfe:big");
        for i in 0..300 {
            h.arg(format!("f{i}")).arg(i);
        }
        h.query::<V>(con).unwrap();
        qs(
            con,
            &[
                "HEXPIRE", "hfe:big", "9000", "FIELDS", "3", "f1", "f100", "f299",
            ],
        );
    }

    // ---- db 3 and db 15 ----
    qs(con, &["SELECT", "3"]);
    qs(con, &["SET", "db3:str", "three"]);
    qs(con, &["RPUSH", "db3:list", "x", "y"]);
    qs(con, &["SET", "db3:ttl", "v", "EX", "100000"]);
    qs(con, &["SELECT", "15"]);
    qs(con, &["HSET", "db15:hash", "k", "v"]);
    qs(con, &["SELECT", "0"]);
}

/// One key as the parser reported it.
#[derive(Debug)]
struct Parsed {
    info: KeyInfo,
    value: Value,
    raw: Option<Vec<u8>>,
}

struct ParsedFile {
    keys: BTreeMap<(u64, Vec<u8>), Parsed>,
    aux: HashMap<Vec<u8>, Vec<u8>>,
    functions: Vec<Vec<u8>>,
    verified: bool,
    max_chunk_items: usize,
    string_chunks: usize,
}

fn parse_file(data: &[u8], seed: u64, max_piece: u64) -> ParsedFile {
    let mut parser = RdbParser::with_options(ParserOptions {
        raw_limit: 512 * 1024,
        chunks: ChunkLimits {
            items: 100,
            bytes: 64 * 1024,
        },
        verify_checksum: true,
        raw_strings_without_expiry: true,
    });
    let mut rng = Rng(seed);
    let mut out = ParsedFile {
        keys: BTreeMap::new(),
        aux: HashMap::new(),
        functions: Vec::new(),
        verified: false,
        max_chunk_items: 0,
        string_chunks: 0,
    };
    let mut current: Option<(KeyInfo, Value)> = None;
    let mut rest = data;
    let mut max_buffered = 0;
    loop {
        let n = (1 + rng.below(max_piece)).min(rest.len() as u64) as usize;
        parser.feed(&rest[..n]);
        rest = &rest[n..];
        max_buffered = max_buffered.max(parser.buffered());
        while let Some(ev) = parser.next_event().expect("parse") {
            match ev {
                Event::Aux { key, value } => {
                    out.aux.insert(key, value);
                }
                Event::Function { code } => out.functions.push(code),
                Event::KeyStart(info) => {
                    assert!(current.is_none());
                    let v = Value::empty(info.rdb_type.kind());
                    current = Some((info, v));
                }
                Event::KeyEnd { raw } => {
                    let (info, value) = current.take().expect("KeyEnd without KeyStart");
                    let k = (info.db, info.key.clone());
                    let prev = out.keys.insert(k, Parsed { info, value, raw });
                    assert!(prev.is_none(), "duplicate key");
                }
                Event::Eof { verified, .. } => out.verified = verified,
                Event::Header { .. }
                | Event::SelectDb { .. }
                | Event::ResizeDb { .. }
                | Event::SlotInfo { .. } => assert!(current.is_none()),
                ev => {
                    let (_, v) = current.as_mut().expect("value event outside a key");
                    match &ev {
                        Event::ListChunk(c) | Event::SetChunk(c) => {
                            out.max_chunk_items = out.max_chunk_items.max(c.len())
                        }
                        Event::StringChunk(_) => out.string_chunks += 1,
                        _ => {}
                    }
                    assert!(v.push(ev.clone()), "unexpected {ev:?}");
                }
            }
        }
        if rest.is_empty() {
            break;
        }
    }
    parser.finish().expect("complete file");
    assert!(parser.trailing().is_empty());
    // Never the whole file, never a whole big key: at most a record plus one piece.
    assert!(
        max_buffered < 200_000 + max_piece as usize,
        "buffered {max_buffered} bytes"
    );
    out
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn check_key(con: &mut redis::Connection, version: Version, db: u64, key: &[u8], p: &Parsed) {
    let name = String::from_utf8_lossy(key).into_owned();
    let ty = text(&q(con, &[b"TYPE", key]));
    assert_eq!(ty, p.info.rdb_type.kind().name(), "{name}: type");

    // TTL.
    let pttl = int(&q(con, &[b"PTTL", key]));
    match p.info.expire_ms {
        None => assert_eq!(pttl, -1, "{name}: server has a TTL, file has none"),
        Some(at) => {
            assert!(pttl > 0, "{name}: file has a TTL, server has none");
            let diff = (at - now_ms() - pttl).abs();
            assert!(diff < 10_000, "{name}: expiry {at} vs pttl {pttl}");
            if version != Version::Redis62 {
                assert_eq!(int(&q(con, &[b"PEXPIRETIME", key])), at, "{name}: expiry");
            }
        }
    }

    match &p.value {
        Value::String(s) => assert_eq!(bytes(&q(con, &[b"GET", key])), *s, "{name}"),
        Value::List(l) => {
            let server: Vec<Vec<u8>> = arr(&q(con, &[b"LRANGE", key, b"0", b"-1"]))
                .iter()
                .map(bytes)
                .collect();
            assert_eq!(&server, l, "{name}");
        }
        Value::Set(s) => {
            let server: Vec<Vec<u8>> = arr(&q(con, &[b"SMEMBERS", key]))
                .iter()
                .map(bytes)
                .collect();
            assert_eq!(sorted(server), sorted(s.clone()), "{name}");
        }
        Value::Zset(z) => {
            let server: Vec<(Vec<u8>, f64)> =
                arr(&q(con, &[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"]))
                    .chunks(2)
                    .map(|p| (bytes(&p[0]), text(&p[1]).parse::<f64>().unwrap()))
                    .collect();
            let mut mine = z.clone();
            mine.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
            assert_eq!(server, mine, "{name}");
        }
        Value::Hash(h) => {
            let server: Vec<(Vec<u8>, Vec<u8>)> = arr(&q(con, &[b"HGETALL", key]))
                .chunks(2)
                .map(|p| (bytes(&p[0]), bytes(&p[1])))
                .collect();
            let mine: Vec<(Vec<u8>, Vec<u8>)> = h
                .iter()
                .map(|f| (f.field.clone(), f.value.clone()))
                .collect();
            assert_eq!(sorted(server), sorted(mine), "{name}");
            if version == Version::Valkey91 {
                let mut args: Vec<Vec<u8>> = vec![
                    b"HPEXPIRETIME".to_vec(),
                    key.to_vec(),
                    b"FIELDS".to_vec(),
                    h.len().to_string().into_bytes(),
                ];
                args.extend(h.iter().map(|f| f.field.clone()));
                let a: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
                let times = q(con, &a);
                for (f, t) in h.iter().zip(arr(&times)) {
                    let t = int(t);
                    assert_eq!(f.expire_ms.unwrap_or(-1), t, "{name}: field TTL");
                }
                assert_eq!(
                    p.info.rdb_type == RdbType::Hash2,
                    h.iter().any(|f| f.expire_ms.is_some()),
                    "{name}: HASH_2 iff some field has a TTL"
                );
            } else {
                assert!(h.iter().all(|f| f.expire_ms.is_none()));
            }
        }
        Value::Stream {
            entries,
            meta,
            groups,
        } => check_stream(con, version, key, entries, meta.as_ref().unwrap(), groups),
        Value::Module { .. } => panic!("{name}: no modules loaded"),
    }
    let _ = db;
}

fn check_stream(
    con: &mut redis::Connection,
    version: Version,
    key: &[u8],
    entries: &[cutover::rdb::event::StreamEntry],
    meta: &cutover::rdb::event::StreamMeta,
    groups: &[cutover::rdb::value::Group],
) {
    let name = String::from_utf8_lossy(key).into_owned();
    type Entries = Vec<(StreamId, Vec<(Vec<u8>, Vec<u8>)>)>;
    let server: Entries = arr(&q(con, &[b"XRANGE", key, b"-", b"+"]))
        .iter()
        .map(|e| {
            let e = arr(e);
            let f = arr(&e[1])
                .chunks(2)
                .map(|p| (bytes(&p[0]), bytes(&p[1])))
                .collect();
            (parse_id(&text(&e[0])), f)
        })
        .collect();
    let mine: Vec<_> = entries.iter().map(|e| (e.id, e.fields.clone())).collect();
    assert_eq!(server, mine, "{name}: entries");

    let info = fields(&q(con, &[b"XINFO", b"STREAM", key]));
    assert_eq!(int(&info["length"]) as u64, meta.length, "{name}: length");
    assert_eq!(
        parse_id(&text(&info["last-generated-id"])),
        meta.last_id,
        "{name}: last id"
    );
    assert_eq!(int(&info["groups"]) as u64, meta.groups);
    if version == Version::Redis62 {
        assert!(meta.first_id.is_none() && meta.entries_added.is_none());
    } else {
        assert_eq!(
            Some(int(&info["entries-added"]) as u64),
            meta.entries_added,
            "{name}: entries added"
        );
        assert_eq!(
            Some(parse_id(&text(&info["max-deleted-entry-id"]))),
            meta.max_deleted_id,
            "{name}: max deleted"
        );
        assert_eq!(
            Some(parse_id(&text(&info["recorded-first-entry-id"]))),
            meta.first_id,
            "{name}: first id"
        );
    }

    let server_groups = arr(&q(con, &[b"XINFO", b"GROUPS", key])).to_vec();
    assert_eq!(server_groups.len(), groups.len(), "{name}: groups");
    for (sg, g) in server_groups.iter().zip(groups) {
        let sg = fields(sg);
        let gname = g.group.name.clone();
        assert_eq!(bytes(&sg["name"]), gname);
        assert_eq!(
            parse_id(&text(&sg["last-delivered-id"])),
            g.group.last_id,
            "{name}: group last id"
        );
        assert_eq!(int(&sg["pending"]) as u64, g.pel.len() as u64);
        assert_eq!(int(&sg["consumers"]) as usize, g.consumers.len());
        if version != Version::Redis62 {
            match &sg["entries-read"] {
                V::Nil => assert_eq!(g.group.entries_read, Some(u64::MAX)),
                v => assert_eq!(Some(int(v) as u64), g.group.entries_read),
            }
        }
        // Group PEL: ids, owners, delivery counts.
        let pending = q(con, &[b"XPENDING", key, &gname, b"-", b"+", b"1000000"]);
        let mut owner: HashMap<StreamId, Vec<u8>> = HashMap::new();
        let server_pel: Vec<(StreamId, u64)> = arr(&pending)
            .iter()
            .map(|p| {
                let p = arr(p);
                let id = parse_id(&text(&p[0]));
                owner.insert(id, bytes(&p[1]));
                (id, int(&p[3]) as u64)
            })
            .collect();
        let mine: Vec<(StreamId, u64)> = g.pel.iter().map(|p| (p.id, p.delivery_count)).collect();
        assert_eq!(server_pel, mine, "{name}: group PEL");
        for p in &g.pel {
            assert!(p.delivery_time_ms > now_ms() - 600_000 && p.delivery_time_ms <= now_ms());
        }
        let server_consumers = arr(&q(con, &[b"XINFO", b"CONSUMERS", key, &gname])).to_vec();
        let mut server_c: Vec<(Vec<u8>, i64)> = server_consumers
            .iter()
            .map(|c| {
                let c = fields(c);
                (bytes(&c["name"]), int(&c["pending"]))
            })
            .collect();
        server_c.sort();
        let mut mine_c: Vec<(Vec<u8>, i64)> = g
            .consumers
            .iter()
            .map(|(c, pel)| (c.name.clone(), pel.len() as i64))
            .collect();
        mine_c.sort();
        assert_eq!(server_c, mine_c, "{name}: consumers");
        for (c, pel) in &g.consumers {
            assert_eq!(c.pending, pel.len() as u64);
            assert_eq!(
                c.active_time_ms.is_some(),
                version == Version::Valkey91,
                "active time only in stream v3"
            );
            for id in pel {
                assert_eq!(owner.get(id), Some(&c.name), "{name}: consumer PEL owner");
            }
        }
    }
}

fn run(version: Version) {
    let server = Server::start(version);
    let mut con = server.conn();
    let t0 = std::time::Instant::now();
    populate(&mut con, version);
    assert_eq!(text(&qs(&mut con, &["SAVE"])), "OK");
    let dir = text(&arr(&qs(&mut con, &["CONFIG", "GET", "dir"]))[1]);
    let data = std::fs::read(std::path::Path::new(&dir).join("dump.rdb")).unwrap();
    eprintln!(
        "{version:?}: dataset and SAVE {:?}, {} bytes",
        t0.elapsed(),
        data.len()
    );

    let t1 = std::time::Instant::now();
    let file = parse_file(&data, 12345, 70_000);
    eprintln!("{version:?}: parsed in {:?}", t1.elapsed());
    assert!(file.verified, "checksum verified");
    let ver_key: &[u8] = if version == Version::Valkey91 {
        b"valkey-ver"
    } else {
        b"redis-ver"
    };
    assert!(file.aux.contains_key(ver_key), "aux {ver_key:?}");
    assert!(file.max_chunk_items <= 100);
    assert!(file.string_chunks > 11, "the huge string arrives in pieces");
    if version == Version::Redis62 {
        assert!(file.functions.is_empty());
    } else {
        assert_eq!(file.functions.len(), 1);
        assert!(file.functions[0].starts_with(b"#!lua name=mylib"));
    }

    // Same result with tiny pieces (every record split across feeds).
    let small = parse_file(&data, 777, 7);
    assert_eq!(small.keys.len(), file.keys.len());
    for (k, p) in &small.keys {
        let other = &file.keys[k];
        assert_eq!(p.value, other.value);
        assert_eq!(p.info, other.info);
        assert_eq!(p.raw, other.raw);
    }

    // Every key of every db is in the file, and vice versa.
    let mut seen_types = std::collections::HashSet::new();
    for db in [0u64, 3, 15] {
        qs(&mut con, &["SELECT", &db.to_string()]);
        let server_keys: Vec<Vec<u8>> = arr(&qs(&mut con, &["KEYS", "*"]))
            .iter()
            .map(bytes)
            .collect();
        let file_keys: Vec<Vec<u8>> = file
            .keys
            .keys()
            .filter(|(d, _)| *d == db)
            .map(|(_, k)| k.clone())
            .collect();
        assert_eq!(sorted(server_keys), file_keys, "db {db} keys");
        for ((d, key), p) in file.keys.range((db, Vec::new())..(db + 1, Vec::new())) {
            assert_eq!(*d, db);
            seen_types.insert(p.info.rdb_type);
            check_key(&mut con, version, db, key, p);

            // DUMP decodes to the same value, and the raw bytes are its body.
            let dump = bytes(&q(&mut con, &[b"DUMP", key]));
            let decoded = decode_dump(&dump).expect("decode DUMP");
            assert_eq!(decoded.rdb_type, p.info.rdb_type);
            let v = Value::collect(decoded.rdb_type, decoded.events).unwrap();
            assert_eq!(v, p.value, "{:?}: DUMP value", String::from_utf8_lossy(key));
            let body = DumpPayload::parse(&dump).unwrap().value;
            match &p.raw {
                Some(raw) => assert_eq!(raw.as_slice(), body, "raw == DUMP body"),
                None => assert!(body.len() > 512 * 1024, "raw kept below the limit"),
            }
        }
    }
    let expected: &[RdbType] = match version {
        Version::Redis62 => &[
            RdbType::String,
            RdbType::ListQuicklist,
            RdbType::SetIntset,
            RdbType::Set,
            RdbType::ZsetZiplist,
            RdbType::Zset2,
            RdbType::HashZiplist,
            RdbType::Hash,
            RdbType::StreamListpacks,
        ],
        Version::Redis70 => &[
            RdbType::String,
            RdbType::ListQuicklist2,
            RdbType::SetIntset,
            RdbType::Set,
            RdbType::ZsetListpack,
            RdbType::Zset2,
            RdbType::HashListpack,
            RdbType::Hash,
            RdbType::StreamListpacks2,
        ],
        Version::Valkey91 => &[
            RdbType::String,
            RdbType::ListQuicklist2,
            RdbType::SetIntset,
            RdbType::SetListpack,
            RdbType::Set,
            RdbType::ZsetListpack,
            RdbType::Zset2,
            RdbType::HashListpack,
            RdbType::Hash,
            RdbType::Hash2,
            RdbType::StreamListpacks3,
        ],
        Version::Redis82 | Version::Valkey81 => {
            unreachable!("this file reads Redis 6.2, 7.0 and Valkey 9.1 snapshots only")
        }
    };
    for t in expected {
        assert!(seen_types.contains(t), "{version:?}: no key of {t}");
    }
    assert!(
        file.keys
            .values()
            .any(|p| p.info.rdb_type.kind() == ValueKind::Stream
                && matches!(&p.value, Value::Stream { groups, .. } if !groups.is_empty()))
    );
    eprintln!("{version:?}: total {:?}", t0.elapsed());
}

#[test]
fn redis_7_0_dump_rdb() {
    run(Version::Redis70);
}

#[test]
fn redis_6_2_dump_rdb() {
    run(Version::Redis62);
}

#[test]
fn valkey_9_1_dump_rdb() {
    run(Version::Valkey91);
}
