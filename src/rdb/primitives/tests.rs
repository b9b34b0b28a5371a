use super::*;
use proptest::prelude::*;

fn written(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::new();
    f(&mut w);
    w.into_inner()
}

#[test]
fn length_forms() {
    assert_eq!(written(|w| w.write_len(0)), [0x00]);
    assert_eq!(written(|w| w.write_len(63)), [0x3f]);
    assert_eq!(written(|w| w.write_len(64)), [0x40, 0x40]);
    assert_eq!(written(|w| w.write_len(700)), [0x42, 0xbc]);
    assert_eq!(written(|w| w.write_len(16383)), [0x7f, 0xff]);
    assert_eq!(
        written(|w| w.write_len(16384)),
        [0x80, 0x00, 0x00, 0x40, 0x00]
    );
    assert_eq!(
        written(|w| w.write_len(u32::MAX as u64)),
        [0x80, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(
        written(|w| w.write_len(1 << 32)),
        [0x81, 0, 0, 0, 1, 0, 0, 0, 0]
    );
    // Non-minimal forms are accepted.
    assert_eq!(Reader::new(&[0x80, 0, 0, 0, 5]).read_len("n").unwrap(), 5);
    assert_eq!(Reader::new(&[0x40, 0x05]).read_len("n").unwrap(), 5);
    assert_eq!(
        Reader::new(&[0x81, 0, 0, 0, 0, 0, 0, 0, 5])
            .read_len("n")
            .unwrap(),
        5
    );
}

#[test]
fn length_errors() {
    let e = Reader::new(&[0x82]).read_len("set size").unwrap_err();
    assert_eq!(
        e,
        RdbError::invalid(0, "set size", "unknown length encoding 0x82")
    );
    let e = Reader::new(&[0xc4]).read_length("key").unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown special string encoding 0xc4")
    );
    let e = Reader::new(&[0xc0, 1]).read_len("count").unwrap_err();
    assert!(e.to_string().contains("expected a length"), "{e}");
    let e = Reader::with_base(&[0x80, 1, 2], 1000)
        .read_len("count")
        .unwrap_err();
    assert_eq!(e, RdbError::truncated(1001, "count", 4, 2));
    let mut r = Reader::new(&[0x41]);
    assert!(r.read_len("count").unwrap_err().is_truncated());
    assert_eq!(r.position(), 0, "a failed read does not move the reader");
    assert!(
        Reader::new(&[])
            .read_len("count")
            .unwrap_err()
            .is_truncated()
    );
}

#[test]
fn string_forms() {
    // Plain.
    let mut r = Reader::new(b"\x03foo\x00");
    assert_eq!(
        r.read_string("s").unwrap(),
        RdbString::Bytes(Cow::Borrowed(b"foo"))
    );
    assert_eq!(r.read_string("s").unwrap().to_bytes().as_ref(), b"");
    assert!(r.is_empty());
    // Integers: 0xc0 i8, 0xc1 i16 LE, 0xc2 i32 LE.
    let mut r = Reader::new(&[
        0xc0, 0x7b, 0xc0, 0xff, 0xc1, 0x39, 0x30, 0xc2, 0x87, 0xd6, 0x12, 0x00,
    ]);
    assert_eq!(r.read_string("s").unwrap(), RdbString::Int(123));
    assert_eq!(r.read_string("s").unwrap().to_bytes().as_ref(), b"-1");
    assert_eq!(r.read_string("s").unwrap(), RdbString::Int(12345));
    assert_eq!(r.read_string("s").unwrap(), RdbString::Int(1_234_567));
    // LZF: "aaaaaaaaaa" = literal 'a' + reference (distance 1, 9 bytes).
    let mut r = Reader::new(&[0xc3, 0x05, 0x0a, 0x00, b'a', 0xe0, 0x00, 0x00]);
    assert_eq!(r.read_blob("s").unwrap().as_ref(), b"aaaaaaaaaa");
    // The writer's choices.
    assert_eq!(written(|w| w.write_string(b"123")), [0xc0, 0x7b]);
    assert_eq!(written(|w| w.write_string(b"-129")), [0xc1, 0x7f, 0xff]);
    assert_eq!(written(|w| w.write_string(b"0123")), b"\x040123");
    assert_eq!(written(|w| w.write_string(b"-0")), b"\x02-0");
    assert_eq!(
        written(|w| w.write_string(b"2147483648")),
        b"\x0a2147483648"
    );
    assert_eq!(
        written(|w| w.write_string(b"-2147483648")),
        [0xc2, 0x00, 0x00, 0x00, 0x80]
    );
    assert_eq!(
        written(|w| w.write_int_string(1 << 40)),
        b"\x0d1099511627776"
    );
    let long = vec![b'x'; 100];
    let c = written(|w| w.write_string_compressed(&long));
    assert_eq!(c[0], 0xc3);
    assert!(c.len() < 20);
    assert_eq!(Reader::new(&c).read_blob("s").unwrap().as_ref(), &long[..]);
    // Short or incompressible strings stay plain.
    assert_eq!(
        written(|w| w.write_string_compressed(b"aaaaaaaaaa")),
        b"\x0aaaaaaaaaaa"
    );
}

#[test]
fn string_errors() {
    let e = Reader::new(b"\x05ab").read_string("key").unwrap_err();
    assert_eq!(e, RdbError::truncated(1, "key", 5, 2));
    let e = Reader::new(&[0xc1, 0x01]).read_string("key").unwrap_err();
    assert!(e.is_truncated());
    // LZF with a declared size that doesn't match, at the right offset.
    let e = Reader::with_base(&[0xc3, 0x02, 0x05, 0x00, b'a'], 10)
        .read_string("value")
        .unwrap_err();
    assert_eq!(e.offset(), Some(15));
    // LZF with an absurd uncompressed size is refused without allocating.
    let e = Reader::new(&[
        0xc3, 0x02, 0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, b'a',
    ])
    .read_string("value")
    .unwrap_err();
    assert!(e.to_string().contains("impossible"), "{e}");
    // A 64-bit string length beyond the input is just truncation.
    let e = Reader::new(&[0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .read_string("value")
        .unwrap_err();
    assert!(e.is_truncated());
}

#[test]
fn skip_string_matches_read_string() {
    let mut w = Writer::new();
    w.write_string(b"plain");
    w.write_string(b"-5");
    w.write_string(b"30000");
    w.write_string(b"100000");
    w.write_string_compressed(&[b'z'; 64]);
    let bytes = w.into_inner();
    let (mut a, mut b) = (Reader::new(&bytes), Reader::new(&bytes));
    while !a.is_empty() {
        a.read_string("s").unwrap();
        b.skip_string("s").unwrap();
        assert_eq!(a.position(), b.position());
    }
}

#[test]
fn string_doubles() {
    for (bytes, v) in [
        (&b"\xfd"[..], f64::NAN),
        (b"\xfe", f64::INFINITY),
        (b"\xff", f64::NEG_INFINITY),
        (b"\x031.5", 1.5),
        (b"\x05-1e+3", -1000.0),
        (b"\x130.10000000000000001", 0.1),
    ] {
        let got = Reader::new(bytes).read_string_double("score").unwrap();
        assert!(got == v || (got.is_nan() && v.is_nan()), "{bytes:?}");
    }
    assert_eq!(written(|w| w.write_string_double(1.5)), b"\x031.5");
    assert_eq!(
        written(|w| w.write_string_double(f64::NEG_INFINITY)),
        b"\xff"
    );
    let e = Reader::new(b"\x03abc")
        .read_string_double("score")
        .unwrap_err();
    assert_eq!(e.offset(), Some(1));
    assert!(
        Reader::new(b"\x09")
            .read_string_double("score")
            .unwrap_err()
            .is_truncated()
    );
    let w = written(|w| w.write_string_double(1e300));
    assert!(w.len() < 30, "{w:?}");
}

#[test]
fn fixed_width_and_times() {
    let bytes = written(|w| {
        w.write_u16_le(0x0102);
        w.write_u32_le(0x01020304);
        w.write_u64_le(0x0102030405060708);
        w.write_u32_be(0x01020304);
        w.write_u64_be(7);
        w.write_millis(1_700_000_000_123);
        w.write_seconds(-5);
        w.write_f64_le(2.5);
        w.write_f32_le(-0.5);
    });
    assert_eq!(&bytes[..2], [0x02, 0x01]);
    assert_eq!(&bytes[14..18], [1, 2, 3, 4]);
    let mut r = Reader::new(&bytes);
    assert_eq!(r.read_u16_le("x").unwrap(), 0x0102);
    assert_eq!(r.read_u32_le("x").unwrap(), 0x01020304);
    assert_eq!(r.read_u64_le("x").unwrap(), 0x0102030405060708);
    assert_eq!(r.read_u32_be("x").unwrap(), 0x01020304);
    assert_eq!(r.read_u64_be("x").unwrap(), 7);
    assert_eq!(r.read_millis("x").unwrap(), 1_700_000_000_123);
    assert_eq!(r.read_seconds("x").unwrap(), -5);
    assert_eq!(r.read_f64_le("x").unwrap(), 2.5);
    assert_eq!(r.read_f32_le("x").unwrap(), -0.5);
    assert!(r.is_empty());
    assert_eq!(r.consumed().len(), bytes.len());
    assert!(r.read_u8("x").unwrap_err().is_truncated());
}

#[test]
fn strict_integers() {
    for ok in [
        "0",
        "1",
        "-1",
        "9223372036854775807",
        "-9223372036854775808",
        "120",
    ] {
        assert_eq!(parse_i64(ok.as_bytes()), Some(ok.parse().unwrap()), "{ok}");
    }
    for bad in [
        "",
        "-",
        "-0",
        "00",
        "01",
        "+1",
        " 1",
        "1 ",
        "1a",
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
    ] {
        assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
    }
    assert_eq!(RdbString::Int(-120).len(), 4);
    assert_eq!(RdbString::Int(i64::MIN).len(), 20);
    assert!(!RdbString::Int(0).is_empty());
    assert!(RdbString::Bytes(Cow::Borrowed(b"")).is_empty());
    assert_eq!(RdbString::Bytes(Cow::Borrowed(b"42")).as_int(), Some(42));
}

#[test]
fn capacity_hint_is_bounded_by_input() {
    let r = Reader::new(&[0; 10]);
    assert_eq!(r.capacity_hint(u64::MAX, 2), 5);
    assert_eq!(r.capacity_hint(3, 2), 3);
    assert_eq!(r.capacity_hint(100, 0), 10);
}

proptest! {
    #[test]
    fn lengths_round_trip(n in any::<u64>(), small in 0u64..20000) {
        for n in [n, small, n >> 32] {
            let bytes = written(|w| w.write_len(n));
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.read_len("n").unwrap(), n);
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn strings_round_trip(s in proptest::collection::vec(any::<u8>(), 0..400), repeat in 1usize..4) {
        let s = s.repeat(repeat);
        for compressed in [false, true] {
            let bytes = written(|w| if compressed { w.write_string_compressed(&s) } else { w.write_string(&s) });
            let mut r = Reader::new(&bytes);
            let got = r.read_string("s").unwrap().into_bytes();
            prop_assert_eq!(got.as_ref(), &s[..]);
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn integer_strings_round_trip(v in any::<i64>(), small in -70000i64..70000) {
        for v in [v, small] {
            let text = v.to_string();
            let bytes = written(|w| w.write_string(text.as_bytes()));
            let s = Reader::new(&bytes).read_string("s").unwrap();
            let got = s.to_bytes();
            prop_assert_eq!(got.as_ref(), text.as_bytes());
            prop_assert_eq!(s.as_int(), Some(v));
            prop_assert_eq!(s.len(), text.len());
            let bytes = written(|w| w.write_int_string(v));
            prop_assert_eq!(Reader::new(&bytes).read_string("s").unwrap().as_int(), Some(v));
            prop_assert_eq!(parse_i64(text.as_bytes()), Some(v));
        }
    }

    #[test]
    fn doubles_round_trip(bits in any::<u64>()) {
        let v = f64::from_bits(bits);
        let bytes = written(|w| w.write_string_double(v));
        let got = Reader::new(&bytes).read_string_double("d").unwrap();
        prop_assert!(got.to_bits() == v.to_bits() || (got.is_nan() && v.is_nan()));
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut r = Reader::new(&data);
        while !r.is_empty() {
            let before = r.position();
            let ok = match data[before] % 4 {
                0 => r.read_string("s").is_ok(),
                1 => r.read_len("n").is_ok(),
                2 => r.read_string_double("d").is_ok(),
                _ => r.skip_string("s").is_ok(),
            };
            if !ok {
                prop_assert_eq!(r.position(), before);
                r.skip(1, "x").unwrap();
            }
        }
    }
}
