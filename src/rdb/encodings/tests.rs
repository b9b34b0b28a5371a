use super::zipmap::ZM_BIGLEN;
use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// Zipmaps are never written by a current server; this test-only encoder (with optional
/// padding after values) feeds the decoder's round-trip tests.
fn encode_zipmap(pairs: &[(Vec<u8>, Vec<u8>, u8)], big_count: bool) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < ZM_BIGLEN as usize {
            out.push(n as u8);
        } else {
            out.push(ZM_BIGLEN);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }
    let mut out = vec![if big_count || pairs.len() >= 254 {
        254
    } else {
        pairs.len() as u8
    }];
    for (k, v, free) in pairs {
        len(&mut out, k.len());
        out.extend_from_slice(k);
        len(&mut out, v.len());
        out.push(*free);
        out.extend_from_slice(v);
        out.extend(std::iter::repeat_n(0xAA, *free as usize));
    }
    out.push(END);
    out
}

#[test]
fn ziplist_reference_example() {
    let zl = hex("0f 00 00 00 0c 00 00 00 02 00 00 f3 02 f6 ff");
    assert_eq!(decode_ziplist(&zl).unwrap(), [Entry::Int(2), Entry::Int(5)]);
    assert_eq!(
        encode_ziplist([Entry::Bytes(b"2"), Entry::Bytes(b"5")]).unwrap(),
        zl
    );
    let iter = ZiplistIter::new(&zl).unwrap();
    assert_eq!(iter.declared_len(), Some(2));
}

#[test]
fn ziplist_hand_built() {
    // ["hello", 300, -2, 2^40] : strings, i16, i8, i64, and a big prevlen after a long one.
    let mut zl = vec![0u8; 10];
    let e1 = [&[0x00, 0x05][..], b"hello"].concat();
    let e2 = vec![e1.len() as u8, 0xC0, 0x2c, 0x01];
    let e3 = vec![e2.len() as u8, 0xFE, 0xFE];
    let e4 = [&[e3.len() as u8, 0xE0][..], &(1i64 << 40).to_le_bytes()].concat();
    let long = vec![b'x'; 300];
    let e5 = [&[e4.len() as u8, 0x41, 0x2c][..], &long].concat();
    let e6 = [
        &[0xFE][..],
        &(e5.len() as u32).to_le_bytes(),
        &[0xF0, 0xff, 0xff, 0x7f],
    ]
    .concat();
    let mut tail = 0;
    for e in [&e1, &e2, &e3, &e4, &e5, &e6] {
        tail = zl.len();
        zl.extend_from_slice(e);
    }
    zl.push(0xFF);
    let total = zl.len() as u32;
    zl[..4].copy_from_slice(&total.to_le_bytes());
    zl[4..8].copy_from_slice(&(tail as u32).to_le_bytes());
    zl[8..10].copy_from_slice(&6u16.to_le_bytes());
    let got = decode_ziplist(&zl).unwrap();
    assert_eq!(
        got,
        [
            Entry::Bytes(b"hello"),
            Entry::Int(300),
            Entry::Int(-2),
            Entry::Int(1 << 40),
            Entry::Bytes(&long),
            Entry::Int(0x7fffff),
        ]
    );
    let rebuilt = encode_ziplist(got.iter().copied()).unwrap();
    assert_eq!(rebuilt, zl);
    // Unknown count (65535) is accepted.
    zl[8..10].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(decode_ziplist(&zl).unwrap().len(), 6);
}

#[test]
fn ziplist_long_strings_and_wide_prevlen() {
    // A string of 2^14 bytes or more takes the 5-byte form `0x80 + u32 BE`.
    let s = vec![b'L'; 20000];
    let zl = encode_ziplist([Entry::Bytes(&s), Entry::Int(-1)]).unwrap();
    assert_eq!(&zl[10..16], &[0x00, 0x80, 0x00, 0x00, 0x4e, 0x20]);
    assert_eq!(
        decode_ziplist(&zl).unwrap(),
        [Entry::Bytes(&s), Entry::Int(-1)]
    );
    // Redis may leave a 5-byte prevlen holding a small value after a cascade update.
    let zl = hex("13 00 00 00 0c 00 00 00 02 00 00 f3 fe 02 00 00 00 f6 ff");
    assert_eq!(decode_ziplist(&zl).unwrap(), [Entry::Int(2), Entry::Int(5)]);
}

#[test]
fn ziplist_corruptions() {
    let good = hex("0f 00 00 00 0c 00 00 00 02 00 00 f3 02 f6 ff");
    let mutate = |i: usize, b: u8| {
        let mut z = good.clone();
        z[i] = b;
        decode_ziplist(&z).unwrap_err()
    };
    assert_eq!(mutate(0, 0x10).offset(), Some(0)); // zlbytes
    assert_eq!(mutate(4, 0x0a).offset(), Some(4)); // zltail at the first entry
    assert_eq!(mutate(4, 0x20).offset(), Some(4)); // zltail past the end
    assert_eq!(mutate(8, 0x03).offset(), Some(8)); // count
    assert_eq!(mutate(12, 0x01).offset(), Some(12)); // prevlen
    assert_eq!(mutate(13, 0xC1).offset(), Some(13)); // unknown encoding
    assert_eq!(mutate(14, 0x00).offset(), Some(14)); // terminator missing
    assert_eq!(mutate(11, 0x05).offset(), Some(12)); // string runs over the terminator
    assert!(decode_ziplist(&good[..10]).is_err());
}

#[test]
fn listpack_hand_built() {
    let lp = hex("0d 00 00 00 02 00 81 61 02 c3 e8 02 ff");
    assert_eq!(
        decode_listpack(&lp).unwrap(),
        [Entry::Bytes(b"a"), Entry::Int(1000)]
    );
    assert_eq!(
        encode_listpack([Entry::Bytes(b"a"), Entry::Bytes(b"1000")]).unwrap(),
        lp
    );
    // Each integer width: 7-bit, 13-bit negative, 16, 24, 32, 64.
    let mut lp = hex("00 00 00 00 ff ff");
    for e in [
        "05 01",
        "df ff 02",                      // 13-bit: 0x1fff = -1
        "f1 00 80 03",                   // i16 -32768
        "f2 ff ff 7f 04",                // i24 8388607
        "f3 00 00 00 80 05",             // i32 min
        "f4 00 00 00 00 00 00 00 80 09", // i64 min
        "e0 40",                         // 12-bit string of 64 bytes, backlen 66 below
    ] {
        lp.extend(hex(e));
    }
    lp.extend(vec![b'z'; 64]);
    lp.push(66);
    lp.push(0xff);
    let total = lp.len() as u32;
    lp[..4].copy_from_slice(&total.to_le_bytes());
    let z64 = vec![b'z'; 64];
    assert_eq!(
        decode_listpack(&lp).unwrap(),
        [
            Entry::Int(5),
            Entry::Int(-1),
            Entry::Int(-32768),
            Entry::Int(8388607),
            Entry::Int(i32::MIN as i64),
            Entry::Int(i64::MIN),
            Entry::Bytes(&z64),
        ]
    );
    let iter = ListpackIter::new(&lp).unwrap();
    assert_eq!(iter.declared_len(), None);
    // Empty listpack.
    let empty = encode_listpack([]).unwrap();
    assert_eq!(empty, hex("07 00 00 00 00 00 ff"));
    assert!(decode_listpack(&empty).unwrap().is_empty());
}

#[test]
fn listpack_backlen_boundaries() {
    // Entry sizes around the backlen size boundaries (127/128, 16382/16383).
    for len in [
        122, 123, 124, 125, 126, 127, 16372, 16373, 16377, 16378, 16379,
    ] {
        let s = vec![b's'; len];
        let lp = encode_listpack([Entry::Bytes(&s), Entry::Int(1)]).unwrap();
        assert_eq!(
            decode_listpack(&lp).unwrap(),
            [Entry::Bytes(&s), Entry::Int(1)]
        );
    }
    // A 16378-byte string is a 32-bit-length entry of exactly 16383 bytes: 3-byte backlen.
    let s = vec![b's'; 16378];
    let lp = encode_listpack([Entry::Bytes(&s)]).unwrap();
    assert_eq!(lp.len(), 6 + 16383 + 3 + 1);
    assert_eq!(&lp[lp.len() - 4..lp.len() - 1], &[0x00, 0xFF, 0xFF]);
}

#[test]
fn listpack_corruptions() {
    let good = hex("0d 00 00 00 02 00 81 61 02 c3 e8 02 ff");
    let mutate = |i: usize, b: u8| {
        let mut z = good.clone();
        z[i] = b;
        decode_listpack(&z).unwrap_err()
    };
    assert_eq!(mutate(0, 0x0c).offset(), Some(0)); // total bytes
    assert_eq!(mutate(4, 0x03).offset(), Some(4)); // count
    assert_eq!(mutate(8, 0x03).offset(), Some(8)); // backlen value
    assert_eq!(mutate(8, 0x82).offset(), Some(8)); // backlen continuation on its first byte
    assert_eq!(mutate(9, 0xF5).offset(), Some(9)); // unknown encoding
    assert_eq!(mutate(6, 0x86).offset(), Some(7)); // string runs over the terminator
    assert_eq!(mutate(12, 0x00).offset(), Some(12)); // terminator missing
    assert_eq!(mutate(9, 0xff).offset(), Some(9)); // terminator too early
    assert!(decode_listpack(&good[..6]).is_err());
    // Unknown count is fine.
    let mut z = good.clone();
    z[4..6].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(decode_listpack(&z).unwrap().len(), 2);
}

#[test]
fn intset_hand_built() {
    let blob = hex("02 00 00 00 03 00 00 00 fe ff 05 00 39 30");
    let set = Intset::parse(&blob).unwrap();
    assert_eq!(set.to_vec(), [-2, 5, 12345]);
    assert_eq!(
        (set.len(), set.width(), set.get(1), set.get(3)),
        (3, 2, Some(5), None)
    );
    assert!(!set.is_empty());
    assert_eq!(encode_intset([12345, -2, 5, 5]).unwrap(), blob);
    assert_eq!(encode_intset([1 << 40]).unwrap()[0], 8);
    assert_eq!(encode_intset([-40000]).unwrap()[0], 4);
    let empty = encode_intset([]).unwrap();
    assert!(Intset::parse(&empty).unwrap().is_empty());
    // Corruptions: unsorted, duplicate, bad width, size mismatch.
    let e = Intset::parse(&hex("02 00 00 00 02 00 00 00 05 00 04 00")).unwrap_err();
    assert_eq!(e.offset(), Some(10));
    assert!(Intset::parse(&hex("02 00 00 00 02 00 00 00 05 00 05 00")).is_err());
    assert!(Intset::parse(&hex("03 00 00 00 00 00 00 00")).is_err());
    assert!(Intset::parse(&hex("02 00 00 00 02 00 00 00 05 00")).is_err());
    assert!(Intset::parse(&hex("02 00 00 00 ff ff ff ff")).is_err());
    assert!(Intset::parse(&hex("02 00 00")).is_err());
}

#[test]
fn zipmap_hand_built() {
    // {"foo": "bar", "hello": "world"}, with 2 bytes of slack after "bar".
    let zm = [
        &[0x02, 0x03][..],
        b"foo",
        &[0x03, 0x02],
        b"bar",
        &[0x00, 0x00, 0x05],
        b"hello",
        &[0x05, 0x00],
        b"world",
        &[0xff],
    ]
    .concat();
    let pairs = decode_zipmap(&zm).unwrap();
    assert_eq!(pairs, [(&b"foo"[..], &b"bar"[..]), (b"hello", b"world")]);
    // Corruptions: count, terminator, slack past the end, a cut pair.
    let mut bad = zm.clone();
    bad[0] = 3;
    assert_eq!(decode_zipmap(&bad).unwrap_err().offset(), Some(0));
    bad[0] = 254;
    assert_eq!(decode_zipmap(&bad).unwrap().len(), 2);
    assert!(decode_zipmap(&zm[..zm.len() - 1]).is_err());
    let mut bad = zm.clone();
    bad[6] = 200;
    assert!(decode_zipmap(&bad).is_err());
    assert!(decode_zipmap(&[0x01, 0x03, b'f', b'o', b'o', 0xff]).is_err());
    assert!(decode_zipmap(&[0x00, 0xff]).unwrap().is_empty());
    assert!(decode_zipmap(&[0xff]).is_err());
}

fn entry_strategy() -> impl Strategy<Value = EntryOwned> {
    prop_oneof![
        any::<i64>().prop_map(EntryOwned::Int),
        (-70000i64..70000).prop_map(EntryOwned::Int),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(EntryOwned::Bytes),
        (any::<u8>(), 60usize..5000).prop_map(|(b, n)| EntryOwned::Bytes(vec![b; n])),
        any::<i64>().prop_map(|i| EntryOwned::Bytes(i.to_string().into_bytes())),
    ]
}

#[derive(Debug, Clone)]
enum EntryOwned {
    Bytes(Vec<u8>),
    Int(i64),
}

impl EntryOwned {
    fn entry(&self) -> Entry<'_> {
        match self {
            EntryOwned::Bytes(b) => Entry::Bytes(b),
            EntryOwned::Int(i) => Entry::Int(*i),
        }
    }
}

/// What a decoder must give back: the same element value (text or integer).
fn same_value(a: &Entry<'_>, b: &Entry<'_>) -> bool {
    a.to_bytes() == b.to_bytes()
}

proptest! {
    #[test]
    fn listpack_round_trip(entries in proptest::collection::vec(entry_strategy(), 0..40)) {
        let lp = encode_listpack(entries.iter().map(EntryOwned::entry)).unwrap();
        let got = decode_listpack(&lp).unwrap();
        prop_assert_eq!(got.len(), entries.len());
        for (g, e) in got.iter().zip(&entries) {
            prop_assert!(same_value(g, &e.entry()), "{:?} vs {:?}", g, e);
            // Canonical integers always come back as integers.
            prop_assert_eq!(matches!(g, Entry::Int(_)), e.entry().as_int().is_some());
        }
        // Re-encoding what was decoded is byte-identical.
        prop_assert_eq!(encode_listpack(got.iter().copied()).unwrap(), lp);
    }

    #[test]
    fn ziplist_round_trip(entries in proptest::collection::vec(entry_strategy(), 0..40)) {
        let zl = encode_ziplist(entries.iter().map(EntryOwned::entry)).unwrap();
        let got = decode_ziplist(&zl).unwrap();
        prop_assert_eq!(got.len(), entries.len());
        for (g, e) in got.iter().zip(&entries) {
            prop_assert!(same_value(g, &e.entry()), "{:?} vs {:?}", g, e);
            prop_assert_eq!(matches!(g, Entry::Int(_)), e.entry().as_int().is_some());
        }
        prop_assert_eq!(encode_ziplist(got.iter().copied()).unwrap(), zl);
    }

    #[test]
    fn intset_round_trip(values in proptest::collection::vec(any::<i64>(), 0..100), small in proptest::collection::vec(-40000i64..40000, 0..100)) {
        for values in [values, small] {
            let blob = encode_intset(values.iter().copied()).unwrap();
            let mut expected = values.clone();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(Intset::parse(&blob).unwrap().to_vec(), expected);
        }
    }

    #[test]
    fn zipmap_round_trip(
        pairs in proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 0..300),
                0u8..5,
            ),
            0..20,
        ),
        big_count in any::<bool>(),
    ) {
        let zm = encode_zipmap(&pairs, big_count);
        let got = decode_zipmap(&zm).unwrap();
        prop_assert_eq!(got.len(), pairs.len());
        for ((k, v), (ek, ev, _)) in got.iter().zip(&pairs) {
            prop_assert_eq!(*k, &ek[..]);
            prop_assert_eq!(*v, &ev[..]);
        }
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = decode_listpack(&data);
        let _ = decode_ziplist(&data);
        let _ = Intset::parse(&data);
        let _ = decode_zipmap(&data);
    }

    /// Valid headers over garbage bodies reach deeper than pure garbage does.
    #[test]
    fn framed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..120), count in any::<u16>()) {
        let mut lp = Vec::new();
        lp.extend_from_slice(&((body.len() + 7) as u32).to_le_bytes());
        lp.extend_from_slice(&count.to_le_bytes());
        lp.extend_from_slice(&body);
        lp.push(0xff);
        let _ = decode_listpack(&lp);
        let mut zl = Vec::new();
        zl.extend_from_slice(&((body.len() + 11) as u32).to_le_bytes());
        zl.extend_from_slice(&((body.len() as u32 / 2) + 10).to_le_bytes());
        zl.extend_from_slice(&count.to_le_bytes());
        zl.extend_from_slice(&body);
        zl.push(0xff);
        let _ = decode_ziplist(&zl);
        let mut zm = vec![count as u8];
        zm.extend_from_slice(&body);
        zm.push(0xff);
        let _ = decode_zipmap(&zm);
    }

    /// Flipping any one byte of a valid blob gives an error or a (different) valid blob,
    /// never a panic.
    #[test]
    fn mutations_never_panic(
        entries in proptest::collection::vec(entry_strategy(), 1..8),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let lp = encode_listpack(entries.iter().map(EntryOwned::entry)).unwrap();
        let mut m = lp.clone();
        let i = at.index(m.len());
        m[i] = byte;
        let _ = decode_listpack(&m);
        let zl = encode_ziplist(entries.iter().map(EntryOwned::entry)).unwrap();
        let mut m = zl.clone();
        let i = at.index(m.len());
        m[i] = byte;
        let _ = decode_ziplist(&m);
    }
}
