//! A small RESP reply decoder for the cluster's control replies (`CLUSTER SHARDS`,
//! `CLUSTER SLOTS`, `INFO`): a tree of [`Value`]s. Replies on the data path are never decoded
//! (see `resp/`); these are a few kilobytes, read once per topology refresh.
//!
//! RESP3 maps and sets are read as flat arrays (`k1 v1 k2 v2 …`), the same shape RESP2 gives
//! `CLUSTER SHARDS`, so the map parser sees one form. Nesting is bounded ([`MAX_DEPTH`]) and
//! every length is checked against the bytes present, so garbage gives an error, never a
//! panic or a huge allocation (property test).

/// Deeper than any cluster reply (`CLUSTER SHARDS` is 4 levels).
pub const MAX_DEPTH: usize = 16;

/// One decoded reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    /// Simple, bulk and verbatim strings, doubles and big numbers (as their text).
    Str(Vec<u8>),
    Error(String),
    /// Arrays, sets, pushes, and maps flattened to `k v k v …`.
    Array(Vec<Value>),
}

impl Value {
    /// The string's bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }

    /// The string as UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    /// An integer, or a string holding one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Str(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value under `key` in a flat `k v k v …` array (`CLUSTER SHARDS`' form).
    pub fn field(&self, key: &str) -> Option<&Value> {
        let a = self.as_array()?;
        a.chunks(2)
            .find(|kv| kv.len() == 2 && kv[0].as_bytes() == Some(key.as_bytes()))
            .map(|kv| &kv[1])
    }
}

/// Why bytes are not one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("the reply is incomplete")]
    Incomplete,
    #[error("the reply is not valid RESP at byte {0}")]
    Invalid(usize),
    #[error("the reply is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Decodes one complete reply from `bytes`; returns it and the number of bytes it took.
pub fn decode(bytes: &[u8]) -> Result<(Value, usize), ValueError> {
    let mut pos = 0;
    let v = decode_at(bytes, &mut pos, 0)?;
    Ok((v, pos))
}

fn line<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a [u8], ValueError> {
    let rest = &bytes[*pos..];
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(ValueError::Incomplete)?;
    *pos += end + 2;
    Ok(&rest[..end])
}

fn number(text: &[u8], at: usize) -> Result<i64, ValueError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ValueError::Invalid(at))
}

fn decode_at(bytes: &[u8], pos: &mut usize, depth: usize) -> Result<Value, ValueError> {
    if depth > MAX_DEPTH {
        return Err(ValueError::TooDeep);
    }
    let start = *pos;
    let kind = *bytes.get(start).ok_or(ValueError::Incomplete)?;
    *pos += 1;
    let head = line(bytes, pos)?;
    match kind {
        b'+' | b',' | b'(' => Ok(Value::Str(head.to_vec())),
        b'-' => Ok(Value::Error(String::from_utf8_lossy(head).into())),
        b':' => Ok(Value::Int(number(head, start)?)),
        b'#' => Ok(Value::Int(i64::from(head == b"t"))),
        b'_' => Ok(Value::Nil),
        b'$' | b'=' | b'!' => {
            let n = number(head, start)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let n = n as usize;
            let body = bytes
                .get(*pos..)
                .filter(|r| r.len() >= n.saturating_add(2))
                .ok_or(ValueError::Incomplete)?;
            if &body[n..n + 2] != b"\r\n" {
                return Err(ValueError::Invalid(*pos + n));
            }
            *pos += n + 2;
            let data = &body[..n];
            match kind {
                b'!' => Ok(Value::Error(String::from_utf8_lossy(data).into())),
                // Verbatim strings start with a 3-letter format and a colon.
                b'=' if n >= 4 => Ok(Value::Str(data[4..].to_vec())),
                _ => Ok(Value::Str(data.to_vec())),
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number(head, start)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let items = if matches!(kind, b'%' | b'|') {
                (n as usize).saturating_mul(2)
            } else {
                n as usize
            };
            // Every element takes at least 3 bytes: a longer count than that is a lie.
            if items > (bytes.len() - *pos) / 3 + 1 {
                return Err(ValueError::Incomplete);
            }
            let mut out = Vec::with_capacity(items);
            for _ in 0..items {
                out.push(decode_at(bytes, pos, depth + 1)?);
            }
            if kind == b'|' {
                // An attribute comes before the reply it describes: skip it.
                return decode_at(bytes, pos, depth + 1);
            }
            Ok(Value::Array(out))
        }
        _ => Err(ValueError::Invalid(start)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_nested_replies() {
        let (v, n) = decode(b"*3\r\n$3\r\nfoo\r\n:-12\r\n*2\r\n+OK\r\n$-1\r\nrest").unwrap();
        assert_eq!(n, 33);
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Str(b"foo".to_vec()),
                Value::Int(-12),
                Value::Array(vec![Value::Str(b"OK".to_vec()), Value::Nil]),
            ])
        );
        let (m, _) = decode(b"%1\r\n+port\r\n:7000\r\n").unwrap();
        assert_eq!(m.field("port").and_then(Value::as_int), Some(7000));
        assert_eq!(decode(b"*2\r\n:1\r\n"), Err(ValueError::Incomplete));
        assert_eq!(decode(b"$3\r\nfoox\r\n"), Err(ValueError::Invalid(7)));
        assert!(decode(b"*99999999999\r\n").is_err());
        let deep = "*1\r\n".repeat(40) + ":1\r\n";
        assert_eq!(decode(deep.as_bytes()), Err(ValueError::TooDeep));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_resp_like_input(parts in proptest::collection::vec(
            prop_oneof![Just("*2\r\n"), Just("%1\r\n"), Just("$3\r\nabc\r\n"), Just(":5\r\n"),
                        Just("$-1\r\n"), Just("*-1\r\n"), Just("+x\r\n"), Just("$10\r\n"), Just("=5\r\ntxt:a\r\n"),
                        Just("|1\r\n"), Just("_\r\n"), Just("\r\n")], 0..30)) {
            let _ = decode(parts.concat().as_bytes());
        }
    }
}
