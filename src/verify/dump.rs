//! The fast path: what two `DUMP` payloads say without asking the servers anything more.
//!
//! Identical payloads are identical values (type, encoding, elements). Different payloads can
//! still hold the same value: another RDB version (Valkey 9.1 vs Redis 6.2), another encoding
//! (listpack vs hashtable), or a hash table's iteration order. Those are decoded with the
//! project's own codec (`crate::rdb`) and compared as values: sets and hashes as sorted
//! collections, scores as numbers, streams by entries, last id and each group's last delivered
//! id and PEL size. Only payloads of at most [`super::client::BIG_BULK`] bytes get here (bigger
//! ones arrive as digests); when the decoded values differ, or a payload cannot be decoded,
//! `compare.rs` asks the servers, chunk by chunk, and says exactly what differs.

use crate::rdb::{self, DumpPayload, RdbType, Value};

/// The type name (`TYPE`'s answer) of a DUMP payload, from its first byte.
pub fn dump_type(payload: &[u8]) -> &'static str {
    let Ok(dump) = DumpPayload::parse_unchecked(payload) else {
        return "unknown";
    };
    match RdbType::from_id(dump.type_byte(), dump.version.dialect()) {
        Some(t) => t.kind().name(),
        None => "unknown",
    }
}

/// The type name of a payload known only by its first byte and its last 16 bytes (a
/// [`super::client::Reply::Digest`]): the RDB version is in the footer.
pub fn digest_type(first: u8, tail: &[u8]) -> &'static str {
    let Some(v) = tail.len().checked_sub(10).and_then(|i| tail.get(i..i + 2)) else {
        return "unknown";
    };
    let version = rdb::RdbVersion(u16::from_le_bytes([v[0], v[1]]));
    match RdbType::from_id(first, version.dialect()) {
        Some(t) => t.kind().name(),
        None => "unknown",
    }
}

/// A value in a form where equal values compare equal.
#[derive(Debug, PartialEq)]
enum Canonical {
    String(Vec<u8>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    Zset(Vec<(Vec<u8>, f64)>),
    /// (field, value, absolute expiry ms)
    Hash(Vec<(Vec<u8>, Vec<u8>, Option<i64>)>),
    Stream {
        entries: Vec<rdb::event::StreamEntry>,
        last_id: Option<rdb::event::StreamId>,
        /// (name, last delivered id, PEL size), by name.
        groups: Vec<(Vec<u8>, rdb::event::StreamId, usize)>,
    },
}

fn canonical(payload: &[u8]) -> Option<Canonical> {
    let d = rdb::decode_dump(payload).ok()?;
    let v = Value::collect(d.rdb_type, d.events).ok()?;
    Some(match v {
        Value::String(s) => Canonical::String(s),
        Value::List(l) => Canonical::List(l),
        Value::Set(mut s) => {
            s.sort_unstable();
            Canonical::Set(s)
        }
        Value::Zset(mut z) => {
            z.sort_by(|a, b| a.0.cmp(&b.0));
            Canonical::Zset(z)
        }
        Value::Hash(h) => {
            let mut h: Vec<_> = h
                .into_iter()
                .map(|f| (f.field, f.value, f.expire_ms))
                .collect();
            h.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Canonical::Hash(h)
        }
        Value::Stream {
            entries,
            meta,
            groups,
        } => {
            let mut groups: Vec<_> = groups
                .into_iter()
                .map(|g| (g.group.name, g.group.last_id, g.pel.len()))
                .collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            Canonical::Stream {
                entries,
                last_id: meta.map(|m| m.last_id),
                groups,
            }
        }
        Value::Module { .. } => return None,
    })
}

/// True when two different payloads hold the same value (hash field expiries within
/// `tolerance_ms`). False when they differ *or* cannot be decoded: the caller then compares
/// with commands.
pub fn same_value(a: &[u8], b: &[u8], tolerance_ms: i64) -> bool {
    let (Some(x), Some(y)) = (canonical(a), canonical(b)) else {
        return false;
    };
    match (x, y) {
        (Canonical::Hash(x), Canonical::Hash(y)) => {
            x.len() == y.len()
                && x.iter().zip(&y).all(|(p, q)| {
                    p.0 == q.0
                        && p.1 == q.1
                        && match (p.2, q.2) {
                            (None, None) => true,
                            (Some(s), Some(t)) => (s - t).abs() <= tolerance_ms,
                            _ => false,
                        }
                })
        }
        (x, y) => x == y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::{RdbVersion, build_dump};

    fn string_dump(s: &[u8], version: u16) -> Vec<u8> {
        // Type 0 (string), then the length-prefixed bytes (6-bit length for short strings).
        let mut body = vec![0u8, s.len() as u8];
        body.extend_from_slice(s);
        build_dump(&body, RdbVersion(version))
    }

    #[test]
    fn types_and_values_across_versions() {
        let a = string_dump(b"hello", 9);
        let b = string_dump(b"hello", 11);
        assert_ne!(a, b);
        assert_eq!(dump_type(&a), "string");
        assert!(same_value(&a, &b, 0));
        assert!(!same_value(&a, &string_dump(b"hellp", 11), 0));
        assert!(!same_value(&a, b"garbage", 0));
        assert_eq!(dump_type(b"x"), "unknown");
    }
}
