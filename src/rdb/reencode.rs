//! Re-encoding a value for an older server: the RDB encodings a target loading an older RDB
//! version knows, and the value (type byte + body) rewritten in them.
//!
//! Newer servers save small collections as listpacks (Redis 7.0+, Valkey) and streams as v2/v3;
//! Redis 3.2–6.2 (RDB 7–9) know only quicklists of ziplists, ziplist hashes and zsets, intsets
//! and the plain encodings, and stream v1. [`target_knows`] says whether a type id loads on a
//! server of a given RDB version (and dialect: ids 22+ differ between Redis and Valkey);
//! [`reencode`] builds a value such a server loads from the decoded elements, with the same
//! compact-encoding limits Redis 6.2 uses by default, so the value is stored as that server
//! would have stored it; [`downgrade_stream`] turns a stream v2/v3 body into v1, copying the
//! nodes (listpacks, the same in all three) and leaving out what v1 lacks.
//!
//! Pure functions of bytes and decoded events, like the rest of [`crate::rdb`]; the sync's
//! converter (`sync::convert`) decides when to use them.

use super::encodings::encode_intset;
use super::event::HashField;
use super::{
    Dialect, Event, KeyInfo, RdbType, RdbVersion, Reader, ValueKind, Writer, ZiplistBuilder,
};

/// The oldest RDB version that knows type `t`, and the dialect it belongs to if the id is not
/// shared by both servers (ids 22+).
pub fn type_needs(t: RdbType) -> (RdbVersion, Option<Dialect>) {
    use RdbType::*;
    let (v, d) = match t {
        String | List | Set | Zset | Hash => (1, None),
        HashZipmap | ListZiplist | SetIntset | ZsetZiplist => (2, None),
        HashZiplist => (4, None),
        ListQuicklist => (7, None),
        Zset2 | ModulePreGa | Module2 => (8, None),
        StreamListpacks => (9, None),
        HashListpack | ZsetListpack | ListQuicklist2 | StreamListpacks2 => (10, None),
        SetListpack | StreamListpacks3 => (11, None),
        HashMetadataPreGa | HashListpackExPreGa | HashMetadata | HashListpackEx => {
            (12, Some(Dialect::Redis))
        }
        StreamListpacks4 => (13, Some(Dialect::Redis)),
        StreamListpacks5 | Array => (14, Some(Dialect::Redis)),
        Hash2 => (80, Some(Dialect::Valkey)),
    };
    (RdbVersion(v), d)
}

/// True if a server loading RDB versions up to `max` understands type `t`.
pub fn target_knows(t: RdbType, max: RdbVersion) -> bool {
    if t == RdbType::ModulePreGa {
        return false;
    }
    let (needs, dialect) = type_needs(t);
    needs <= max && dialect.is_none_or(|d| d == max.dialect())
}

/// A `DUMP` payload as the `RESTORE` of a server loading RDB versions up to `max` takes it:
/// unchanged when it reads the payload's version, the version rewritten when only the
/// footer is newer (the value's encoding is known there), else `Err` with the reason, naming
/// that server as `side` ("this side", "the old side"). One rule for the links' repair
/// (`sync::engine::repair`) and the shadow writer's (`cutover::shadow::repair`).
pub fn restore_payload(payload: &[u8], max: RdbVersion, side: &str) -> Result<Vec<u8>, String> {
    let dump =
        super::DumpPayload::parse(payload).map_err(|e| format!("unreadable DUMP payload: {e}"))?;
    if dump.version <= max && dump.version.dialect() == max.dialect() {
        return Ok(payload.to_vec());
    }
    match RdbType::from_id(dump.type_byte(), dump.version.dialect()) {
        Some(t) if target_knows(t, max) => Ok(dump.retarget(max)),
        _ => Err(format!(
            "the primary's value (RDB type {}, version {}) has an encoding {side} (RDB {}) cannot load",
            dump.type_byte(),
            dump.version.0,
            max.0
        )),
    }
}

/// Compact encodings are used up to Redis 6.2's default limits (`hash-max-ziplist-entries`,
/// `-value`, `zset-…`, `set-max-intset-entries`, `list-max-ziplist-size -2`), so the value
/// is stored as the target would have stored it.
const ZIPLIST_ENTRIES: usize = 128;
const ZIPLIST_VALUE: usize = 64;
const INTSET_ENTRIES: usize = 512;
const QUICKLIST_NODE_BYTES: usize = 8 * 1024;

/// The value of a held-back list, set, zset or hash (type byte + body) in encodings that
/// targets loading RDB 7–9 (Redis 3.2–6.2) know: a quicklist of ziplists (14), a ziplist hash
/// (13) or zset (12), an intset (11), or the plain set (2), hash (4) and zset (5); a stream v2/v3
/// as a stream v1 (15, RDB 9) from its `raw` body ([`downgrade_stream`]). `None` if the target
/// is older than that or the value cannot be re-encoded.
pub fn reencode(info: &KeyInfo, raw: &[u8], held: &[Event], max: RdbVersion) -> Option<Vec<u8>> {
    if !target_knows(RdbType::ListQuicklist, max) || !target_knows(RdbType::Zset2, max) {
        return None;
    }
    let mut w = Writer::new();
    match info.rdb_type.kind() {
        ValueKind::Stream if target_knows(RdbType::StreamListpacks, max) => {
            return downgrade_stream(info.rdb_type, raw).ok();
        }
        ValueKind::List => {
            let items = held.iter().flat_map(|ev| match ev {
                Event::ListChunk(v) => v.as_slice(),
                _ => &[],
            });
            let mut nodes = Vec::new();
            let mut node = ZiplistBuilder::new();
            let mut bytes = 0;
            for item in items {
                if !node.is_empty() && bytes + item.len() + 11 > QUICKLIST_NODE_BYTES {
                    nodes.push(std::mem::take(&mut node).finish().ok()?);
                    bytes = 0;
                }
                node.push_bytes(item).ok()?;
                bytes += item.len() + 11;
            }
            if !node.is_empty() {
                nodes.push(node.finish().ok()?);
            }
            w.write_u8(RdbType::ListQuicklist.id());
            w.write_len(nodes.len() as u64);
            for n in &nodes {
                w.write_raw_string(n);
            }
        }
        ValueKind::Set => {
            let items: Vec<&Vec<u8>> = held
                .iter()
                .flat_map(|ev| match ev {
                    Event::SetChunk(v) => v.as_slice(),
                    _ => &[],
                })
                .collect();
            let ints: Option<Vec<i64>> = items.iter().map(|m| canonical_int(m)).collect();
            match ints {
                Some(ints) if ints.len() <= INTSET_ENTRIES => {
                    w.write_u8(RdbType::SetIntset.id());
                    w.write_raw_string(&encode_intset(ints).ok()?);
                }
                _ => {
                    w.write_u8(RdbType::Set.id());
                    w.write_len(items.len() as u64);
                    for m in items {
                        w.write_string(m);
                    }
                }
            }
        }
        ValueKind::Zset => {
            let items: Vec<&(Vec<u8>, f64)> = held
                .iter()
                .flat_map(|ev| match ev {
                    Event::ZsetChunk(v) => v.as_slice(),
                    _ => &[],
                })
                .collect();
            if items.iter().any(|(_, s)| s.is_nan()) {
                return None;
            }
            if items.len() <= ZIPLIST_ENTRIES && items.iter().all(|(m, _)| m.len() <= ZIPLIST_VALUE)
            {
                // Sorted by score, then member, as the server keeps it.
                let mut sorted = items;
                sorted.sort_by(|a, b| {
                    a.1.partial_cmp(&b.1)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then_with(|| a.0.cmp(&b.0))
                });
                let mut zl = ZiplistBuilder::new();
                for (m, s) in sorted {
                    zl.push_bytes(m).ok()?;
                    zl.push_bytes(ziplist_score(*s).as_bytes()).ok()?;
                }
                w.write_u8(RdbType::ZsetZiplist.id());
                w.write_raw_string(&zl.finish().ok()?);
            } else {
                w.write_u8(RdbType::Zset2.id());
                w.write_len(items.len() as u64);
                for (m, s) in items {
                    w.write_string(m);
                    w.write_f64_le(*s);
                }
            }
        }
        ValueKind::Hash => {
            let fields: Vec<&HashField> = held
                .iter()
                .flat_map(|ev| match ev {
                    Event::HashChunk(v) => v.as_slice(),
                    _ => &[],
                })
                .collect();
            if fields.len() <= ZIPLIST_ENTRIES
                && fields
                    .iter()
                    .all(|f| f.field.len() <= ZIPLIST_VALUE && f.value.len() <= ZIPLIST_VALUE)
            {
                let mut zl = ZiplistBuilder::new();
                for f in fields {
                    zl.push_bytes(&f.field).ok()?;
                    zl.push_bytes(&f.value).ok()?;
                }
                w.write_u8(RdbType::HashZiplist.id());
                w.write_raw_string(&zl.finish().ok()?);
            } else {
                w.write_u8(RdbType::Hash.id());
                w.write_len(fields.len() as u64);
                for f in fields {
                    w.write_string(&f.field);
                    w.write_string(&f.value);
                }
            }
        }
        _ => return None,
    }
    Some(w.into_inner())
}

/// A stream v2 (type 19, Redis 7.0+) or v3 (type 21, Redis 7.2+, Valkey) payload body as a
/// stream v1 (type 15, Redis 5.0–6.2). The nodes (listpacks) are the same in all three and
/// are copied as they are; what v1 lacks is left out: the first id, highest deleted id and
/// entries-added count of the stream, each group's entries-read count, each consumer's
/// active time.
pub fn downgrade_stream(ty: RdbType, raw: &[u8]) -> super::error::Result<Vec<u8>> {
    use super::RdbError;
    const CTX: &str = "stream downgrade";
    let v3 = match ty {
        RdbType::StreamListpacks2 => false,
        RdbType::StreamListpacks3 => true,
        _ => return Err(RdbError::invalid(0, CTX, "not a stream v2 or v3")),
    };
    let mut r = Reader::new(raw);
    r.read_u8(CTX)?;
    let mut w = Writer::with_capacity(raw.len());
    w.write_u8(RdbType::StreamListpacks.id());
    // Nodes: key and listpack strings, copied.
    let start = r.position();
    let nodes = r.read_len(CTX)?;
    for _ in 0..nodes {
        r.skip_string(CTX)?;
        r.skip_string(CTX)?;
    }
    w.write_bytes(&raw[start..r.position()]);
    let length = r.read_len(CTX)?;
    let (last_ms, last_seq) = (r.read_len(CTX)?, r.read_len(CTX)?);
    for _ in 0..5 {
        r.read_len(CTX)?; // first id, max deleted id, entries added
    }
    w.write_len(length);
    w.write_len(last_ms);
    w.write_len(last_seq);
    let groups = r.read_len(CTX)?;
    w.write_len(groups);
    for _ in 0..groups {
        // Name, last id.
        let start = r.position();
        r.skip_string(CTX)?;
        r.read_len(CTX)?;
        r.read_len(CTX)?;
        w.write_bytes(&raw[start..r.position()]);
        r.read_len(CTX)?; // entries read
        // PEL: 16-byte id, delivery time, delivery count.
        let start = r.position();
        let pel = r.read_len(CTX)?;
        for _ in 0..pel {
            r.skip(16 + 8, CTX)?;
            r.read_len(CTX)?;
        }
        let consumers = r.read_len(CTX)?;
        w.write_bytes(&raw[start..r.position()]);
        for _ in 0..consumers {
            // Name, seen time.
            let start = r.position();
            r.skip_string(CTX)?;
            r.skip(8, CTX)?;
            w.write_bytes(&raw[start..r.position()]);
            if v3 {
                r.skip(8, CTX)?; // active time
            }
            let start = r.position();
            let pel = r.read_len(CTX)?;
            r.skip(
                usize::try_from(pel.saturating_mul(16)).unwrap_or(usize::MAX),
                CTX,
            )?;
            w.write_bytes(&raw[start..r.position()]);
        }
    }
    if !r.is_empty() {
        return Err(r.invalid(CTX, "bytes after the stream"));
    }
    Ok(w.into_inner())
}

/// The integer `s` is the canonical decimal text of, if any (what an intset may hold).
fn canonical_int(s: &[u8]) -> Option<i64> {
    let v: i64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    (v.to_string().as_bytes() == s).then_some(v)
}

/// A score as a ziplist zset stores it: text `strtod` reads back exactly, short (Redis 6.2
/// reads it into a 128-byte buffer).
fn ziplist_score(s: f64) -> String {
    if s.is_infinite() {
        if s > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        let text = format!("{s}");
        if text.len() > 24 {
            format!("{s:e}")
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types() {
        let v62 = RdbVersion(9);
        let v70 = RdbVersion(10);
        let valkey = RdbVersion(80);
        let redis74 = RdbVersion(12);
        assert!(target_knows(RdbType::SetIntset, v62));
        assert!(target_knows(RdbType::Zset2, v62));
        assert!(!target_knows(RdbType::HashListpack, v62));
        assert!(!target_knows(RdbType::ListQuicklist2, v62));
        assert!(target_knows(RdbType::ListQuicklist2, v70));
        assert!(!target_knows(RdbType::SetListpack, v70));
        assert!(target_knows(RdbType::SetListpack, valkey));
        assert!(target_knows(RdbType::Hash2, valkey));
        assert!(!target_knows(RdbType::Hash2, redis74));
        assert!(!target_knows(RdbType::HashListpackEx, valkey));
        assert!(target_knows(RdbType::HashListpackEx, redis74));
    }

    #[test]
    fn scores() {
        for s in [1e300, -1.5e-300, 0.1, 1.0 / 3.0, 3.0, -0.0] {
            let text = ziplist_score(s);
            assert!(text.len() <= 24, "{text}");
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                s.to_bits(),
                "{text}"
            );
        }
        assert_eq!(ziplist_score(f64::NEG_INFINITY), "-inf");
        assert_eq!(canonical_int(b"-5"), Some(-5));
        assert_eq!(canonical_int(b"007"), None);
        assert_eq!(canonical_int(b"+1"), None);
        assert_eq!(canonical_int(b"x"), None);
    }
}
