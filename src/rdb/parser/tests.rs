use super::*;
use crate::rdb::crc64::crc64;
use crate::rdb::encodings::{ListpackBuilder, ZiplistBuilder, encode_intset};
use crate::rdb::event::HashField;
use crate::rdb::primitives::Writer;
use crate::rdb::types::module_type_id;
use crate::rdb::value::Value;
use proptest::prelude::*;

/// A test-only file writer.
struct File {
    w: Writer,
}

impl File {
    fn new(version: u16) -> File {
        let mut w = Writer::new();
        w.write_bytes(&RdbVersion(version).header().unwrap());
        File { w }
    }
    fn op(&mut self, op: u8) -> &mut Writer {
        self.w.write_u8(op);
        &mut self.w
    }
    fn key(&mut self, id: u8, key: &[u8]) -> &mut Writer {
        self.w.write_u8(id);
        self.w.write_string(key);
        &mut self.w
    }
    fn finish(mut self, checksum: bool) -> Vec<u8> {
        self.w.write_u8(ty::OP_EOF);
        let crc = if checksum {
            crc64(self.w.as_slice())
        } else {
            0
        };
        self.w.write_u64_le(crc);
        self.w.into_inner()
    }
}

fn listpack(items: &[&[u8]]) -> Vec<u8> {
    let mut b = ListpackBuilder::new();
    for i in items {
        b.push_bytes(i).unwrap();
    }
    b.finish().unwrap()
}

fn ziplist(items: &[&[u8]]) -> Vec<u8> {
    let mut b = ZiplistBuilder::new();
    for i in items {
        b.push_bytes(i).unwrap();
    }
    b.finish().unwrap()
}

type ParsedKey = (KeyInfo, Value, Option<Vec<u8>>);

/// (key info, collected value, raw) per key, plus the other events.
fn keys(events: Vec<Event>) -> (Vec<ParsedKey>, Vec<Event>) {
    let mut out = Vec::new();
    let mut other = Vec::new();
    let mut cur: Option<(KeyInfo, Value)> = None;
    for ev in events {
        match ev {
            Event::KeyStart(k) => {
                let v = Value::empty(k.rdb_type.kind());
                cur = Some((k, v));
            }
            Event::KeyEnd { raw } => {
                let (k, v) = cur.take().unwrap();
                out.push((k, v, raw));
            }
            ev if cur.is_some() => assert!(cur.as_mut().unwrap().1.push(ev)),
            ev => other.push(ev),
        }
    }
    (out, other)
}

fn parse_split(data: &[u8], opts: ParserOptions, splits: &[usize]) -> Result<Vec<Event>> {
    let mut p = RdbParser::with_options(opts);
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&data.len())) {
        let s = s.clamp(at, data.len());
        out.extend(p.feed_and_collect(&data[at..s])?);
        at = s;
    }
    p.finish()?;
    Ok(out)
}

#[test]
fn minimal_file_and_metadata() {
    let mut f = File::new(11);
    let w = f.op(ty::OP_AUX);
    w.write_string(b"redis-ver");
    w.write_string(b"7.2.4");
    f.op(ty::OP_FUNCTION2).write_string(b"#!lua name=x\n");
    f.op(ty::OP_SELECTDB).write_len(2);
    let w = f.op(ty::OP_RESIZEDB);
    w.write_len(3);
    w.write_len(1);
    f.op(ty::OP_EXPIRETIME_MS).write_millis(1_700_000_000_123);
    f.op(ty::OP_IDLE).write_len(77);
    f.key(0, b"k1").write_string(b"v1");
    f.op(ty::OP_EXPIRETIME).write_seconds(1_700_000_000);
    f.op(ty::OP_FREQ).write_u8(9);
    f.key(0, b"k2").write_string(b"12");
    f.key(0, b"k3").write_string(b"");
    let data = f.finish(true);
    let events = parse_all(&data, ParserOptions::default()).unwrap();
    assert_eq!(
        events[0],
        Event::Header {
            version: RdbVersion(11),
            dialect: Dialect::Common
        }
    );
    let (keys, other) = keys(events);
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0].0.db, 2);
    assert_eq!(keys[0].0.expire_ms, Some(1_700_000_000_123));
    assert_eq!(keys[0].0.idle_s, Some(77));
    assert_eq!(keys[0].0.freq, None);
    assert_eq!(keys[0].1, Value::String(b"v1".to_vec()));
    assert_eq!(keys[0].2.as_deref(), Some(&b"\x00\x02v1"[..]));
    assert_eq!(keys[1].0.expire_ms, Some(1_700_000_000_000));
    assert_eq!(keys[1].0.idle_s, None, "prefixes apply to one key only");
    assert_eq!(keys[1].0.freq, Some(9));
    assert_eq!(keys[1].1, Value::String(b"12".to_vec()));
    assert_eq!(keys[2].0.expire_ms, None);
    assert!(other.contains(&Event::Aux {
        key: b"redis-ver".to_vec(),
        value: b"7.2.4".to_vec()
    }));
    assert!(other.contains(&Event::Function {
        code: b"#!lua name=x\n".to_vec()
    }));
    assert!(other.contains(&Event::ResizeDb {
        db_size: 3,
        expires_size: 1
    }));
    assert!(matches!(
        other.last(),
        Some(Event::Eof {
            verified: true,
            checksum: Some(_)
        })
    ));
    // Byte by byte gives the same events.
    let splits: Vec<usize> = (0..data.len()).collect();
    assert_eq!(
        parse_split(&data, ParserOptions::default(), &splits).unwrap(),
        parse_all(&data, ParserOptions::default()).unwrap()
    );
}

#[test]
fn checksum() {
    let mut f = File::new(9);
    f.key(0, b"k").write_string(b"v");
    let mut data = f.finish(true);
    let n = data.len();
    data[n - 3] ^= 1;
    let e = parse_all(&data, ParserOptions::default()).unwrap_err();
    assert!(matches!(e, RdbError::Checksum { offset, .. } if offset == n as u64 - 8));
    let opts = ParserOptions {
        verify_checksum: false,
        ..ParserOptions::default()
    };
    assert!(parse_all(&data, opts).is_ok());
    // A stored 0 is not checked.
    let mut f = File::new(9);
    f.key(0, b"k").write_string(b"v");
    let events = parse_all(&f.finish(false), ParserOptions::default()).unwrap();
    assert_eq!(
        events.last(),
        Some(&Event::Eof {
            checksum: Some(0),
            verified: false
        })
    );
    // RDB < 5 has no trailer.
    let mut w = Writer::new();
    w.write_bytes(b"REDIS0004");
    w.write_u8(0);
    w.write_string(b"k");
    w.write_string(b"v");
    w.write_u8(ty::OP_EOF);
    w.write_bytes(b"extra");
    let mut p = RdbParser::new();
    let events = p.feed_and_collect(w.as_slice()).unwrap();
    assert_eq!(
        events.last(),
        Some(&Event::Eof {
            checksum: None,
            verified: false
        })
    );
    assert_eq!(p.trailing(), b"extra");
}

#[test]
fn truncation_waits_then_fails_at_finish() {
    let mut f = File::new(10);
    f.key(1, b"list").write_len(3);
    f.w.write_string(b"a");
    f.w.write_string(b"b");
    f.w.write_string(b"c");
    let data = f.finish(true);
    for cut in 0..data.len() {
        let mut p = RdbParser::new();
        p.feed(&data[..cut]);
        while p.next_event().unwrap().is_some() {}
        assert!(p.finish().unwrap_err().is_truncated(), "cut at {cut}");
        p.feed(&data[cut..]);
        while p.next_event().unwrap().is_some() {}
        p.finish().unwrap();
    }
}

#[test]
fn big_string_streams_in_pieces() {
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut f = File::new(11);
    f.key(0, b"s").write_raw_string(&big);
    let data = f.finish(true);
    let opts = ParserOptions {
        raw_limit: 1000,
        chunks: ChunkLimits {
            items: 10,
            bytes: 4096,
        },
        ..ParserOptions::default()
    };
    let splits: Vec<usize> = (0..data.len()).step_by(1000).collect();
    let events = parse_split(&data, opts, &splits).unwrap();
    let chunks = events
        .iter()
        .filter(|e| matches!(e, Event::StringChunk(_)))
        .count();
    assert!(chunks >= 25, "{chunks}");
    let (keys, _) = keys(events);
    assert_eq!(keys[0].1, Value::String(big));
    assert_eq!(keys[0].2, None, "over the raw limit");
}

#[test]
fn raw_of_strings_without_expiry_can_be_left_out() {
    let mut f = File::new(11);
    f.key(0, b"plain").write_raw_string(b"v1");
    f.op(ty::OP_EXPIRETIME_MS).write_u64_le(4_000_000_000_000);
    f.key(0, b"ttl").write_raw_string(b"v2");
    f.key(2, b"set").write_len(1);
    f.w.write_raw_string(b"m");
    let data = f.finish(true);
    let raws = |raw_strings_without_expiry| {
        let opts = ParserOptions {
            raw_strings_without_expiry,
            ..ParserOptions::default()
        };
        let (keys, _) = keys(parse_split(&data, opts, &[]).unwrap());
        keys.into_iter()
            .map(|(k, v, raw)| (k.key, v, raw.is_some()))
            .collect::<Vec<_>>()
    };
    let all = raws(true);
    let some = raws(false);
    assert_eq!(
        all.iter().map(|k| k.2).collect::<Vec<_>>(),
        [true, true, true]
    );
    assert_eq!(
        some.iter().map(|k| k.2).collect::<Vec<_>>(),
        [false, true, true]
    );
    // The values themselves are the same either way.
    let values = |v: &[(Vec<u8>, Value, bool)]| v.iter().map(|k| k.1.clone()).collect::<Vec<_>>();
    assert_eq!(values(&all), values(&some));
    assert_eq!(some[0].1, Value::String(b"v1".to_vec()));
}

#[test]
fn modules() {
    let id = module_type_id("test-type", 5).unwrap();
    let mut f = File::new(9);
    let w = f.op(ty::OP_MODULE_AUX);
    w.write_len(id);
    w.write_len(2);
    w.write_len(1);
    w.write_len(5);
    w.write_string(b"aux");
    w.write_len(0);
    let w = f.key(7, b"m");
    w.write_len(id);
    w.write_len(1);
    w.write_len((-5i64) as u64);
    w.write_len(2);
    w.write_len(7);
    w.write_len(3);
    w.write_f32_le(1.5);
    w.write_len(4);
    w.write_f64_le(2.25);
    w.write_len(5);
    w.write_string(b"hello");
    w.write_len(0);
    let data = f.finish(true);
    let (keys, other) = keys(parse_all(&data, ParserOptions::default()).unwrap());
    assert!(other.iter().any(|e| matches!(e,
            Event::ModuleAux { name, encver: 5, when: 1, items, .. }
                if name == "test-type" && items == &[ModuleItem::String(b"aux".to_vec())])));
    use crate::rdb::event::ModuleItem;
    assert_eq!(
        keys[0].1,
        Value::Module {
            module_id: id,
            items: vec![
                ModuleItem::Sint(-5),
                ModuleItem::Uint(7),
                ModuleItem::Float(1.5),
                ModuleItem::Double(2.25),
                ModuleItem::String(b"hello".to_vec()),
            ]
        }
    );
    // Type 6 has no annotations.
    let mut f = File::new(8);
    f.key(6, b"m").write_len(id);
    let e = parse_all(&f.finish(true), ParserOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot be parsed without the module"),
        "{e}"
    );
}

#[test]
fn unknown_and_unsupported() {
    let mut f = File::new(11);
    f.key(22, b"x");
    let e = parse_all(&f.finish(true), ParserOptions::default()).unwrap_err();
    assert!(e.to_string().contains("unknown type or opcode 22"), "{e}");
    let mut f = File::new(13);
    f.op(243);
    let e = parse_all(&f.finish(true), ParserOptions::default()).unwrap_err();
    assert!(e.to_string().contains("KEY_META"), "{e}");
    let mut f = File::new(14);
    f.key(28, b"x");
    let e = parse_all(&f.finish(true), ParserOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
    assert!(parse_all(b"RADIS0011", ParserOptions::default()).is_err());
}

#[test]
fn redis_hash_field_ttls() {
    let mut f = File::new(12);
    // 24: min expire, then (ttl relative + 1, field, value).
    let w = f.key(24, b"h24");
    w.write_millis(1_000_000);
    w.write_len(2);
    w.write_len(0);
    w.write_string(b"a");
    w.write_string(b"1");
    w.write_len(501);
    w.write_string(b"b");
    w.write_string(b"2");
    // 22 (pre-GA): absolute.
    let w = f.key(22, b"h22");
    w.write_len(1);
    w.write_len(1_000_777);
    w.write_string(b"c");
    w.write_string(b"3");
    // 25: min expire, listpack of triplets.
    let lp = listpack(&[b"d", b"4", b"0", b"e", b"5", b"1000999"]);
    let w = f.key(25, b"h25");
    w.write_millis(1_000_999);
    w.write_string(&lp);
    // 23: listpack without the min expire.
    let w = f.key(23, b"h23");
    w.write_string(&listpack(&[b"f", b"6", b"2000000"]));
    let (keys, _) = keys(parse_all(&f.finish(true), ParserOptions::default()).unwrap());
    let h = |f: &str, v: &str, e: Option<i64>| HashField {
        field: f.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        expire_ms: e,
    };
    assert_eq!(keys[0].0.rdb_type, RdbType::HashMetadata);
    assert_eq!(
        keys[0].1,
        Value::Hash(vec![h("a", "1", None), h("b", "2", Some(1_000_500))])
    );
    assert_eq!(keys[1].1, Value::Hash(vec![h("c", "3", Some(1_000_777))]));
    assert_eq!(
        keys[2].1,
        Value::Hash(vec![h("d", "4", None), h("e", "5", Some(1_000_999))])
    );
    assert_eq!(keys[3].1, Value::Hash(vec![h("f", "6", Some(2_000_000))]));
}

#[test]
fn old_encodings() {
    let mut f = File::new(6);
    // zipmap hash: count 1, "f" -> "v" with one byte of free space.
    f.key(9, b"zm")
        .write_string(&[1, 1, b'f', 1, 1, b'v', 0, 0xff]);
    f.key(10, b"zl").write_string(&ziplist(&[b"x", b"12"]));
    f.key(12, b"zz")
        .write_string(&ziplist(&[b"m", b"1.5", b"n", b"3"]));
    let w = f.key(3, b"z3");
    w.write_len(1);
    w.write_string(b"m");
    w.write_string_double(f64::INFINITY);
    f.key(13, b"zh").write_string(&ziplist(&[b"f", b"v"]));
    f.key(11, b"is")
        .write_string(&encode_intset([5, -3]).unwrap());
    let (keys, _) = keys(parse_all(&f.finish(true), ParserOptions::default()).unwrap());
    let b = |s: &str| s.as_bytes().to_vec();
    assert_eq!(
        keys[0].1,
        Value::Hash(vec![HashField {
            field: b("f"),
            value: b("v"),
            expire_ms: None
        }])
    );
    assert_eq!(keys[1].1, Value::List(vec![b("x"), b("12")]));
    assert_eq!(keys[2].1, Value::Zset(vec![(b("m"), 1.5), (b("n"), 3.0)]));
    assert_eq!(keys[3].1, Value::Zset(vec![(b("m"), f64::INFINITY)]));
    assert_eq!(keys[5].1, Value::Set(vec![b("-3"), b("5")]));
}

// ---- property test: a model, encoded in a random encoding, parsed in random pieces ----

#[derive(Debug, Clone)]
enum Model {
    Str(Vec<u8>),
    List(Vec<Vec<u8>>),
    IntSet(Vec<i64>),
    Set(Vec<Vec<u8>>),
    Zset(Vec<(Vec<u8>, f64)>),
    Hash(Vec<(Vec<u8>, Vec<u8>, Option<i64>)>),
}

fn elem() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        any::<i32>().prop_map(|i| i.to_string().into_bytes()),
        Just(vec![b'z'; 300]),
    ]
}

fn model() -> impl Strategy<Value = Model> {
    let list = || proptest::collection::vec(elem(), 0..30);
    prop_oneof![
        elem().prop_map(Model::Str),
        list().prop_map(Model::List),
        proptest::collection::btree_set(any::<i64>(), 1..20)
            .prop_map(|s| Model::IntSet(s.into_iter().collect())),
        list().prop_map(Model::Set),
        proptest::collection::vec((elem(), -1e6f64..1e6), 0..20).prop_map(Model::Zset),
        proptest::collection::vec((elem(), elem(), proptest::option::of(1i64..1 << 40)), 0..20)
            .prop_map(Model::Hash),
    ]
}

/// Writes `m` under `key` in an encoding chosen by `pick`; returns the expected value.
fn write(f: &mut File, key: &[u8], m: &Model, pick: u8, valkey: bool) -> Value {
    let refs = |v: &[Vec<u8>]| v.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    match m {
        Model::Str(s) => {
            f.key(0, key).write_string_compressed(s);
            Value::String(s.clone())
        }
        Model::List(items) => {
            let slices: Vec<&[u8]> = items.iter().map(|v| v.as_slice()).collect();
            match pick % 4 {
                0 => {
                    let w = f.key(1, key);
                    w.write_len(items.len() as u64);
                    for i in items {
                        w.write_string(i);
                    }
                }
                1 => {
                    f.key(10, key).write_string(&ziplist(&slices));
                }
                2 => {
                    let w = f.key(14, key);
                    let nodes: Vec<_> = slices.chunks(7).collect();
                    w.write_len(nodes.len() as u64);
                    for n in nodes {
                        w.write_string_compressed(&ziplist(n));
                    }
                }
                _ => {
                    let w = f.key(18, key);
                    let nodes: Vec<_> = slices.chunks(5).collect();
                    w.write_len(nodes.len() as u64);
                    for n in nodes {
                        if n.len() == 1 {
                            w.write_len(1);
                            w.write_string(n[0]);
                        } else {
                            w.write_len(2);
                            w.write_string_compressed(&listpack(n));
                        }
                    }
                }
            }
            Value::List(refs(items))
        }
        Model::IntSet(v) => {
            f.key(11, key)
                .write_string(&encode_intset(v.iter().copied()).unwrap());
            Value::Set(v.iter().map(|i| i.to_string().into_bytes()).collect())
        }
        Model::Set(items) => {
            if pick % 2 == 0 {
                let w = f.key(2, key);
                w.write_len(items.len() as u64);
                for i in items {
                    w.write_string(i);
                }
            } else {
                let slices: Vec<&[u8]> = items.iter().map(|v| v.as_slice()).collect();
                f.key(20, key).write_string(&listpack(&slices));
            }
            Value::Set(refs(items))
        }
        Model::Zset(items) => {
            match pick % 4 {
                0 | 1 => {
                    let w = f.key(if pick % 4 == 0 { 3 } else { 5 }, key);
                    w.write_len(items.len() as u64);
                    for (m, s) in items {
                        w.write_string(m);
                        if pick % 4 == 0 {
                            w.write_string_double(*s);
                        } else {
                            w.write_f64_le(*s);
                        }
                    }
                }
                p => {
                    let texts: Vec<Vec<u8>> = items
                        .iter()
                        .map(|(_, s)| format!("{s:?}").into_bytes())
                        .collect();
                    let mut flat: Vec<&[u8]> = Vec::new();
                    for ((m, _), t) in items.iter().zip(&texts) {
                        flat.push(m);
                        flat.push(t);
                    }
                    let blob = if p == 2 {
                        ziplist(&flat)
                    } else {
                        listpack(&flat)
                    };
                    f.key(if p == 2 { 12 } else { 17 }, key).write_string(&blob);
                }
            }
            Value::Zset(items.clone())
        }
        Model::Hash(items) => {
            let with_ttl = |ttl: bool| {
                Value::Hash(
                    items
                        .iter()
                        .map(|(k, v, e)| HashField {
                            field: k.clone(),
                            value: v.clone(),
                            expire_ms: if ttl { *e } else { None },
                        })
                        .collect(),
                )
            };
            let mut flat: Vec<&[u8]> = Vec::new();
            for (k, v, _) in items {
                flat.push(k);
                flat.push(v);
            }
            match (valkey, pick % 4) {
                (true, 3) => {
                    let w = f.key(22, key);
                    w.write_len(items.len() as u64);
                    for (k, v, e) in items {
                        w.write_string(k);
                        w.write_string(v);
                        w.write_i64_le(e.unwrap_or(-1));
                    }
                    return with_ttl(true);
                }
                (_, 0) => {
                    let w = f.key(4, key);
                    w.write_len(items.len() as u64);
                    for (k, v, _) in items {
                        w.write_string(k);
                        w.write_string(v);
                    }
                }
                (_, 1) => {
                    f.key(13, key).write_string(&ziplist(&flat));
                }
                _ => {
                    f.key(16, key).write_string(&listpack(&flat));
                }
            }
            with_ttl(false)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn round_trip(
        models in proptest::collection::vec((model(), any::<u8>(), proptest::option::of(any::<i64>())), 0..12),
        valkey in any::<bool>(),
        splits in proptest::collection::vec(0usize..20_000, 0..40),
        items in 1usize..8,
    ) {
        let mut f = File::new(if valkey { 80 } else { 11 });
        let mut expected = Vec::new();
        for (i, (m, pick, ttl)) in models.iter().enumerate() {
            if i == 5 {
                f.op(ty::OP_SELECTDB).write_len(7);
            }
            if let Some(t) = ttl {
                f.op(ty::OP_EXPIRETIME_MS).write_millis(*t);
            }
            let key = format!("key{i}").into_bytes();
            expected.push((key.clone(), *ttl, write(&mut f, &key, m, *pick, valkey)));
        }
        let data = f.finish(true);
        let mut splits = splits;
        splits.sort();
        let opts = ParserOptions {
            raw_limit: 256,
            chunks: ChunkLimits { items, bytes: 200 },
            ..ParserOptions::default()
        };
        let events = parse_split(&data, opts, &splits).unwrap();
        let (got, _) = keys(events);
        prop_assert_eq!(got.len(), expected.len());
        for (i, ((info, value, raw), (key, ttl, want))) in got.iter().zip(&expected).enumerate() {
            prop_assert_eq!(&info.key, key);
            prop_assert_eq!(info.db, if i >= 5 { 7 } else { 0 });
            prop_assert_eq!(info.expire_ms, *ttl);
            prop_assert_eq!(value, want);
            if let Some(raw) = raw {
                prop_assert!(raw.len() <= 256);
                let dialect = if valkey { Dialect::Valkey } else { Dialect::Common };
                let (t, evs) = crate::rdb::value::decode_value(raw, dialect, ChunkLimits::UNLIMITED).unwrap();
                prop_assert_eq!(&Value::collect(t, evs).unwrap(), want);
            }
        }
    }

    #[test]
    fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
        let mut input = b"REDIS0011".to_vec();
        input.extend_from_slice(&data);
        let cut = cut.min(input.len());
        let _ = parse_split(&input, ParserOptions::default(), &[cut]);
    }
}
