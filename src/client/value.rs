//! [`Value`]: a reply decoded into a small tree (the control client's [`super::Client::query`],
//! the shadow writes' derivation from a client's reply, `ROLE`).

/// A reply, decoded enough to derive a shadow command from it (RESP2 and RESP3 alike).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    /// Bulk, simple and verbatim strings; doubles and big numbers as their text.
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Error(String),
}

impl Value {
    /// Decodes one reply as sent to a client speaking RESP `resp` (2 or 3); `None` for one
    /// that cannot be read or is nested too deeply to decode on the stack (the decoder
    /// descends one call per level; a server may send thousands).
    pub fn decode(bytes: &[u8], resp: u8) -> Option<Value> {
        if !shallow(bytes) {
            return None;
        }
        Self::decode_unchecked(bytes, resp)
    }

    fn decode_unchecked(bytes: &[u8], resp: u8) -> Option<Value> {
        if resp == 3 {
            use redis_protocol::resp3::types::OwnedFrame as F;
            fn conv(f: F) -> Value {
                match f {
                    F::BlobString { data, .. }
                    | F::SimpleString { data, .. }
                    | F::BigNumber { data, .. }
                    | F::VerbatimString { data, .. }
                    | F::ChunkedString(data) => Value::Bytes(data),
                    F::BlobError { data, .. } => {
                        Value::Error(String::from_utf8_lossy(&data).into_owned())
                    }
                    F::SimpleError { data, .. } => Value::Error(data),
                    F::Boolean { data, .. } => Value::Int(data as i64),
                    F::Null => Value::Nil,
                    F::Number { data, .. } => Value::Int(data),
                    F::Double { data, .. } => Value::Bytes(format_double(data).into_bytes()),
                    F::Array { data, .. } | F::Push { data, .. } => {
                        Value::Array(data.into_iter().map(conv).collect())
                    }
                    F::Set { data, .. } => Value::Array(data.into_iter().map(conv).collect()),
                    F::Map { data, .. } => Value::Array(
                        data.into_iter()
                            .flat_map(|(k, v)| [conv(k), conv(v)])
                            .collect(),
                    ),
                    F::Hello { .. } => Value::Nil,
                }
            }
            let (frame, _) = redis_protocol::resp3::decode::complete::decode(bytes).ok()??;
            Some(conv(frame))
        } else {
            use redis_protocol::resp2::types::OwnedFrame as F;
            fn conv(f: F) -> Value {
                match f {
                    F::SimpleString(b) | F::BulkString(b) => Value::Bytes(b),
                    F::Error(e) => Value::Error(e),
                    F::Integer(i) => Value::Int(i),
                    F::Array(a) => Value::Array(a.into_iter().map(conv).collect()),
                    F::Null => Value::Nil,
                }
            }
            let (frame, _) = redis_protocol::resp2::decode::decode(bytes).ok()??;
            Some(conv(frame))
        }
    }

    /// The text of a string or an integer.
    pub fn text(&self) -> Option<Vec<u8>> {
        match self {
            Value::Int(i) => Some(i.to_string().into_bytes()),
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
}

/// The shortest text that reads back as the same double (what Redis prints, give or take
/// the exponent form).
fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{d}")
    }
}

/// Aggregates a decoded reply may hold at most (and so its depth).
const MAX_AGGREGATES: usize = 64;

/// Whether `bytes` holds at most [`MAX_AGGREGATES`] aggregate headers (a bound on its
/// nesting): each line that starts with an aggregate type counts, also inside bulk strings,
/// which only errs on the safe side.
fn shallow(bytes: &[u8]) -> bool {
    let mut n = 0;
    let mut at_line_start = true;
    for &b in bytes {
        if at_line_start && matches!(b, b'*' | b'%' | b'~' | b'>' | b'|') {
            n += 1;
            if n > MAX_AGGREGATES {
                return false;
            }
        }
        at_line_start = b == b'\n';
    }
    true
}
