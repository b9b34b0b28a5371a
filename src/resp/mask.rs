//! Masking of secrets in a reply (`CONFIG GET requirepass` through a proxy with its own
//! password must not hand out the backend's password).
//!
//! [`mask_values_after`] rewrites one whole reply: inside any aggregate, a string element at
//! an even position whose text is one of the given names (case-insensitive) makes the *next*
//! element, when it is a non-empty string, read `***`. That is exactly the shape of `CONFIG GET`'s reply
//! (name/value pairs, RESP2 array or RESP3 map), also nested in `EXEC`'s array. An empty
//! value (the setting is not set) is left as it is. Non-recursive; every other byte is
//! copied unchanged.

use super::request::{parse_int, read_line};

/// The configuration parameters whose values are passwords (Redis, Valkey).
pub const SECRET_CONFIGS: &[&str] = &[
    "requirepass",
    "masterauth",
    "primaryauth",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// What replaces a masked value.
pub const MASK: &str = "***";

/// `reply` with the values after `names` masked; `None` when `reply` is not one whole,
/// well-formed reply (the caller then refuses to pass it on).
pub fn mask_values_after(reply: &[u8], names: &[&str]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(reply.len());
    // Per open aggregate: elements left, the index of the current one, and whether the
    // previous element was a secret name.
    let mut stack: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = 0;
    loop {
        let kind = *reply.get(at)?;
        let (line, next) = read_line(reply, at + 1, reply.len()).ok()??;
        let mask_this = stack.last().is_some_and(|&(_, _, m)| m);
        let mut is_name = false;
        match kind {
            b'+' => {
                is_name = names
                    .iter()
                    .any(|n| line.eq_ignore_ascii_case(n.as_bytes()));
                if mask_this && !line.is_empty() {
                    out.push(b'+');
                    out.extend_from_slice(MASK.as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(&reply[at..next]);
                }
                at = next;
            }
            b'$' | b'=' | b'!' => {
                let n = parse_int(line)?;
                if n < 0 {
                    out.extend_from_slice(&reply[at..next]);
                    at = next;
                } else {
                    let end = next.checked_add(n as usize)?.checked_add(2)?;
                    let body = reply.get(next..end - 2)?;
                    if reply.get(end - 2..end)? != b"\r\n" {
                        return None;
                    }
                    if kind == b'$' {
                        is_name = names
                            .iter()
                            .any(|n| body.eq_ignore_ascii_case(n.as_bytes()));
                    }
                    if mask_this && kind == b'$' && !body.is_empty() {
                        out.extend_from_slice(format!("$3\r\n{MASK}\r\n").as_bytes());
                    } else {
                        out.extend_from_slice(&reply[at..end]);
                    }
                    at = end;
                }
            }
            b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                out.extend_from_slice(&reply[at..next]);
                at = next;
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let n = parse_int(line)?;
                out.extend_from_slice(&reply[at..next]);
                at = next;
                let count = match kind {
                    b'%' | b'|' => (n.max(0) as u64) * 2,
                    _ => n.max(0) as u64,
                };
                if let Some(top) = stack.last_mut() {
                    top.2 = false;
                }
                if kind == b'|' {
                    // An attribute annotates the value after it: it counts as one more element
                    // of its level (at the top, the reply is the attribute and its value).
                    match stack.last_mut() {
                        Some(top) => top.0 += 1,
                        None => stack.push((2, 0, false)),
                    }
                }
                if count > 0 {
                    stack.push((count, 0, false));
                    continue;
                }
            }
            _ => return None,
        }
        // One element done: close finished aggregates.
        if let Some(top) = stack.last_mut() {
            top.2 = is_name && top.1 % 2 == 0;
        }
        loop {
            match stack.last_mut() {
                None => return (at == reply.len()).then_some(out),
                Some(top) => {
                    top.0 -= 1;
                    top.1 += 1;
                    if top.0 > 0 {
                        break;
                    }
                    stack.pop();
                    if let Some(parent) = stack.last_mut() {
                        parent.2 = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 1024,
            rng_seed: proptest::test_runner::RngSeed::Fixed(8),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// What `fuzz/fuzz_targets/reply_mask.rs` checks, on stable.
        #[test]
        fn arbitrary_replies(
            pairs in proptest::collection::vec((
                proptest::sample::select(vec!["requirepass", "MASTERAUTH", "maxmemory", "x"]),
                proptest::collection::vec(any::<u8>(), 0..6),
            ), 0..4),
            garble in proptest::option::of((0usize..120, any::<u8>())),
        ) {
            let mut wire = format!("*{}\r\n", pairs.len() * 2).into_bytes();
            for (name, value) in &pairs {
                wire.extend_from_slice(format!("${}\r\n{name}\r\n${}\r\n", name.len(), value.len()).as_bytes());
                wire.extend_from_slice(value);
                wire.extend_from_slice(b"\r\n");
            }
            if let Some((at, b)) = garble && at < wire.len() {
                wire[at] = b;
            }
            if let Some(masked) = mask_values_after(&wire, SECRET_CONFIGS) {
                let info = crate::resp::ReplyParser::default().parse(&masked).unwrap().unwrap();
                prop_assert_eq!(info.len, masked.len());
                prop_assert_eq!(mask_values_after(&masked, SECRET_CONFIGS), Some(masked.clone()));
                if garble.is_none() {
                    for (name, value) in &pairs {
                        if name != &"x" && name != &"maxmemory" && !value.is_empty() {
                            prop_assert!(masked.windows(value.len()).all(|w| w != &value[..]) || value.len() < 3 || *value == b"***");
                        }
                    }
                }
            }
        }
    }

    fn mask(r: &[u8]) -> String {
        String::from_utf8(mask_values_after(r, SECRET_CONFIGS).expect("valid")).unwrap()
    }

    #[test]
    fn config_get_replies() {
        assert_eq!(
            mask(b"*4\r\n$11\r\nrequirepass\r\n$6\r\nsecret\r\n$10\r\nmasterauth\r\n$0\r\n\r\n"),
            "*4\r\n$11\r\nrequirepass\r\n$3\r\n***\r\n$10\r\nmasterauth\r\n$0\r\n\r\n"
        );
        assert_eq!(
            mask(b"%2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$11\r\nREQUIREPASS\r\n$2\r\npw\r\n"),
            "%2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$11\r\nREQUIREPASS\r\n$3\r\n***\r\n"
        );
        // Inside EXEC's array, next to other replies.
        assert_eq!(
            mask(b"*3\r\n+OK\r\n*2\r\n$10\r\nmasterauth\r\n$2\r\npw\r\n$11\r\nrequirepass\r\n"),
            "*3\r\n+OK\r\n*2\r\n$10\r\nmasterauth\r\n$3\r\n***\r\n$11\r\nrequirepass\r\n"
        );
        // A name as a value does not mask the next pair's name.
        assert_eq!(
            mask(b"*4\r\n$3\r\nfoo\r\n$11\r\nrequirepass\r\n$3\r\nbar\r\n$1\r\nx\r\n"),
            "*4\r\n$3\r\nfoo\r\n$11\r\nrequirepass\r\n$3\r\nbar\r\n$1\r\nx\r\n"
        );
        // Attributes (RESP3) around and inside.
        assert_eq!(
            mask(b"|1\r\n+a\r\n:1\r\n*2\r\n+requirepass\r\n+pw\r\n"),
            "|1\r\n+a\r\n:1\r\n*2\r\n+requirepass\r\n+***\r\n"
        );
        assert_eq!(mask(b"|0\r\n+OK\r\n"), "|0\r\n+OK\r\n");
        assert_eq!(mask_values_after(b"|0\r\n", SECRET_CONFIGS), None);
        for plain in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b"*0\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
        ] {
            assert_eq!(mask(plain).as_bytes(), plain);
        }
    }

    #[test]
    fn malformed_replies_are_none() {
        for bad in [
            &b"*2\r\n$1\r\na\r\n"[..],
            b"$5\r\nab\r\n",
            b"?\r\n",
            b"+OK\r\nextra",
        ] {
            assert_eq!(mask_values_after(bad, SECRET_CONFIGS), None, "{bad:?}");
        }
        let deep = b"*1\r\n".repeat(100_000);
        assert_eq!(mask_values_after(&deep, SECRET_CONFIGS), None);
    }
}
