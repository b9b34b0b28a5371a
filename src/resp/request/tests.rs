use super::*;
use proptest::prelude::*;

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_command(args, &mut v);
    v
}

#[test]
fn whole_and_split_commands() {
    let wire = cmd(&[b"SET", b"key", b"value"]);
    let mut p = RequestParser::default();
    let Some(Request::Array { len, argc, args }) = p.parse(&wire).unwrap() else {
        panic!()
    };
    assert_eq!((len, argc), (wire.len(), 3));
    assert_eq!(args.get(&wire, 0), Some(&b"SET"[..]));
    assert_eq!(args.get(&wire, 2), Some(&b"value"[..]));
    // Byte by byte: same result, each byte looked at once.
    let mut p = RequestParser::default();
    for i in 1..wire.len() {
        assert_eq!(p.parse(&wire[..i]).unwrap(), None, "at {i}");
    }
    assert!(matches!(
        p.parse(&wire).unwrap(),
        Some(Request::Array { argc: 3, .. })
    ));
}

#[test]
fn inline_commands() {
    let mut p = RequestParser::default();
    let r = p.parse(b"PING\r\n").unwrap();
    assert_eq!(
        r,
        Some(Request::Inline {
            len: 6,
            args: vec![Bytes::from_static(b"PING")]
        })
    );
    let r = p.parse(b"set k \"a b\\x41\" 'c\\'d'\n").unwrap().unwrap();
    let Request::Inline { args, .. } = r else {
        panic!()
    };
    assert_eq!(args, vec!["set", "k", "a bA", "c'd"]);
    assert_eq!(p.parse(b"\r\n").unwrap(), Some(Request::Empty { len: 2 }));
    assert!(p.parse(b"get \"open\r\n").is_err());
    let r = p.parse(b"a\0b c\n").unwrap().unwrap();
    assert!(
        matches!(r, Request::Inline { len: 6, ref args } if args == &vec![Bytes::from_static(b"a")])
    );
}

#[test]
fn refuses_bad_input_with_redis_messages() {
    let cases: &[(&[u8], &str)] = &[
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n+x\r\n", "expected '$', got '+'"),
        (b"*1\r\n$-3\r\n", "invalid bulk length"),
        (b"*1\r\n$536870913\r\n", "invalid bulk length"),
        (b"*1\r\n$1\r\nxyz", "bulk string not terminated by CRLF"),
    ];
    for (wire, msg) in cases {
        let e = RequestParser::default().parse(wire).unwrap_err();
        assert_eq!(e.0, *msg, "{:?}", String::from_utf8_lossy(wire));
    }
    let long = vec![b'a'; MAX_INLINE + 10];
    assert!(RequestParser::default().parse(&long).is_err());
    let mut long_header = b"*".to_vec();
    long_header.extend(std::iter::repeat_n(b'1', 100));
    assert!(RequestParser::default().parse(&long_header).is_err());
}

#[test]
fn unauthenticated_clients_are_limited_like_redis() {
    let mut p = RequestParser::default();
    p.set_unauthenticated(true);
    let big = cmd(&[&b"AUTH"[..], &[b'x'; 16 * 1024 + 1]]);
    assert_eq!(
        p.parse(&big[..40]).unwrap_err().0,
        "unauthenticated bulk length"
    );
    let many: Vec<&[u8]> = vec![b"x"; 11];
    let mut p = RequestParser::default();
    p.set_unauthenticated(true);
    assert_eq!(
        p.parse(&cmd(&many)).unwrap_err().0,
        "unauthenticated multibulk length"
    );
    let ok = cmd(&[&b"AUTH"[..], &[b'x'; 16 * 1024]]);
    let mut p = RequestParser::default();
    p.set_unauthenticated(true);
    assert!(matches!(
        p.parse(&ok),
        Ok(Some(Request::Array { argc: 2, .. }))
    ));
    p.set_unauthenticated(false);
    assert!(matches!(
        p.parse(&big),
        Ok(Some(Request::Array { argc: 2, .. }))
    ));
}

#[test]
fn streaming_a_big_argument() {
    let big = vec![b'x'; 100_000];
    let wire = cmd(&[b"SET", b"k", &big]);
    let mut p = RequestParser::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut handed_on = 0;
    let mut done = None;
    for chunk in wire.chunks(4096) {
        buf.extend_from_slice(chunk);
        match p.parse(&buf).unwrap() {
            Some(r) => {
                done = Some(r);
                break;
            }
            None => {
                if p.pending_args().len() >= 2 || p.is_streaming() {
                    let n = p.scanned();
                    handed_on += n;
                    buf.drain(..n);
                    p.forwarded(n);
                }
            }
        }
    }
    let Some(Request::Array { len, argc: 3, .. }) = done else {
        panic!("{done:?}")
    };
    assert_eq!(handed_on + len, wire.len());
    assert!(buf.len() < 5000, "buffered {}", buf.len());
}

#[test]
fn crlf_split_after_a_forwarded_prefix() {
    // The body ends exactly at a read boundary and the "\r" arrives before the "\n".
    let mut wire = b"*2\r\n$3\r\nSET\r\n$10\r\n0123456789".to_vec();
    let mut p = RequestParser::default();
    assert_eq!(p.parse(&wire).unwrap(), None);
    let n = p.scanned();
    wire.drain(..n);
    p.forwarded(n);
    wire.push(b'\r');
    assert_eq!(p.parse(&wire).unwrap(), None);
    let n = p.scanned();
    wire.drain(..n);
    p.forwarded(n);
    wire.push(b'\n');
    assert!(matches!(
        p.parse(&wire).unwrap(),
        Some(Request::Array { argc: 2, .. })
    ));
}

#[test]
fn many_arguments_are_linear() {
    let args: Vec<Vec<u8>> = (0..200_000).map(|i| i.to_string().into_bytes()).collect();
    let mut wire = Vec::new();
    encode_command(&args, &mut wire);
    let mut p = RequestParser::default();
    let mut got = None;
    // Feed in 1 KiB steps: a quadratic parser would take minutes here.
    let t = std::time::Instant::now();
    for end in (1024..wire.len() + 1024).step_by(1024) {
        if let Some(r) = p.parse(&wire[..end.min(wire.len())]).unwrap() {
            got = Some(r);
            break;
        }
    }
    assert!(matches!(got, Some(Request::Array { argc: 200_000, .. })));
    assert!(t.elapsed().as_secs() < 5);
}

proptest! {
    #[test]
    fn any_split_finds_the_same_commands(
        cmds in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
        cuts in proptest::collection::vec(1usize..50, 1..20),
    ) {
        let mut wire = Vec::new();
        for c in &cmds { encode_command(c, &mut wire); }
        let mut p = RequestParser::default();
        let mut buf = Vec::new();
        let mut found = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(r) = p.parse(&buf).unwrap() {
                let Request::Array { len, argc, args } = r else { panic!() };
                let first = args.get(&buf, 0).unwrap().to_vec();
                found.push((argc, first));
                buf.drain(..len);
            }
        }
        prop_assert!(buf.is_empty());
        let want: Vec<_> = cmds.iter().map(|c| (c.len() as u64, c[0].clone())).collect();
        prop_assert_eq!(found, want);
    }

    #[test]
    fn frame_whole_agrees_with_parse(
        cmd in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..6),
        tail in proptest::collection::vec(any::<u8>(), 0..8),
        cut in 0usize..400,
        garble in proptest::option::of((0usize..400, any::<u8>())),
    ) {
        let mut wire = Vec::new();
        encode_command(&cmd, &mut wire);
        wire.extend_from_slice(&tail);
        wire.truncate(cut.max(1));
        if let Some((at, b)) = garble && at < wire.len() {
            wire[at] = b;
        }
        if let Some((name, len)) = frame_whole(&wire, DEFAULT_MAX_BULK) {
            let Ok(Some(Request::Array { len: plen, args, .. })) = RequestParser::default().parse(&wire) else {
                panic!("frame_whole found a command parse does not");
            };
            prop_assert_eq!(len, plen);
            prop_assert_eq!(&wire[name], args.get(&wire, 0).unwrap());
        }
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut p = RequestParser::default();
        let mut buf = data.clone();
        for _ in 0..50 {
            match p.parse(&buf) {
                Ok(Some(r)) => {
                    let len = match r { Request::Array { len, .. } | Request::Inline { len, .. } | Request::Empty { len } => len };
                    prop_assert!(len > 0 && len <= buf.len());
                    buf.drain(..len);
                }
                _ => break,
            }
        }
    }
}
