//! Hashes and sets: same length plus "every source element is on the target with the same
//! value" means equal. Small ones are read whole (`HGETALL`, `SMEMBERS`); big ones are
//! scanned on the source (`HSCAN`, `SSCAN`) one page at a time and looked up on the target
//! (`HMGET`, `SISMEMBER`), so no more than one page is held. Hash field TTLs (`HPTTL`) are
//! compared the same way, page by page, when both servers know the command.

use super::*;

pub(super) fn compare_hash(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    chunk: usize,
) -> Result<Option<String>, VerifyError> {
    let (len, _) = both(src, tgt, &[b"HLEN", key])?;
    if int_reply(src, "HLEN", len)? as usize <= chunk {
        let (a, b) = both(src, tgt, &[b"HGETALL", key])?;
        let (a, b) = (pairs(src, a)?, pairs(tgt, b)?);
        return Ok(first_map_difference("field", &a, &b));
    }
    let count = chunk.to_string();
    scan_source(src, key, b"HSCAN", &count, |src, src_pairs| {
        let map = pairs(src, Reply::Array(src_pairs))?;
        let mut args: Vec<&[u8]> = vec![b"HMGET", key];
        args.extend(map.keys().map(Vec::as_slice));
        let vals = tgt.call(&args)?;
        let vals = array(tgt, vals)?;
        for ((field, v), w) in map.iter().zip(vals.iter()) {
            if v != w {
                return Ok(Some(format!(
                    "field {}: {} vs {}",
                    show_bytes(field, 60),
                    v.show(),
                    w.show()
                )));
            }
        }
        Ok(None)
    })
}

pub(super) fn first_map_difference(
    what: &str,
    a: &BTreeMap<Vec<u8>, Reply>,
    b: &BTreeMap<Vec<u8>, Reply>,
) -> Option<String> {
    for (k, v) in a {
        match b.get(k) {
            Some(w) if w == v => {}
            w => {
                return Some(format!(
                    "{what} {}: {} vs {}",
                    show_bytes(k, 60),
                    v.show(),
                    w.map_or("(none)".into(), Reply::show)
                ));
            }
        }
    }
    b.keys()
        .find(|k| !a.contains_key(*k))
        .map(|k| format!("{what} {}: only on the target", show_bytes(k, 60)))
}

/// Walks a collection of the source with `*SCAN key cursor COUNT n`, handing each page to `f`
/// until `f` reports a difference.
pub(super) fn scan_source(
    src: &mut Conn,
    key: &[u8],
    cmd: &[u8],
    count: &str,
    mut f: impl FnMut(&Conn, Vec<Reply>) -> Result<Option<String>, VerifyError>,
) -> Result<Option<String>, VerifyError> {
    let mut cursor = b"0".to_vec();
    loop {
        let r = src.call(&[cmd, key, &cursor, b"COUNT", count.as_bytes()])?;
        let mut page = array(src, r)?.into_iter();
        let (Some(Reply::Bulk(next)), Some(Reply::Array(items))) = (page.next(), page.next())
        else {
            return Err(src.proto("unexpected *SCAN reply".into()));
        };
        if let Some(d) = f(src, items)? {
            return Ok(Some(d));
        }
        if next == b"0" {
            return Ok(None);
        }
        cursor = next;
    }
}

pub(super) fn compare_set(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    chunk: usize,
) -> Result<Option<String>, VerifyError> {
    let (len, _) = both(src, tgt, &[b"SCARD", key])?;
    if int_reply(src, "SCARD", len)? as usize <= chunk {
        let (a, b) = both(src, tgt, &[b"SMEMBERS", key])?;
        let set = |c: &Conn, r| -> Result<BTreeMap<Vec<u8>, Reply>, VerifyError> {
            Ok(array(c, r)?
                .into_iter()
                .filter_map(|m| match m {
                    Reply::Bulk(b) => Some((b, Reply::Nil)),
                    _ => None,
                })
                .collect())
        };
        let (a, b) = (set(src, a)?, set(tgt, b)?);
        return Ok(first_map_difference("member", &a, &b)
            .map(|d| d.replace(": (nil) vs (none)", ": only on the source")));
    }
    let count = chunk.to_string();
    scan_source(src, key, b"SSCAN", &count, |_, members| {
        for m in &members {
            if let Reply::Bulk(m) = m {
                tgt.send(&[b"SISMEMBER", key, m])?;
            }
        }
        let mut missing = None;
        for m in &members {
            if matches!(m, Reply::Bulk(_)) && tgt.recv()? == Reply::Int(0) && missing.is_none() {
                missing = Some(format!("member {}: only on the source", m.show()));
            }
        }
        Ok(missing)
    })
}

/// Field TTLs (`HPTTL key FIELDS n f…`), one `HSCAN` page of the source at a time.
pub(super) fn compare_field_ttls(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    opts: &CompareOpts,
) -> Result<Option<String>, VerifyError> {
    let count = opts.chunk.to_string();
    let mut cursor = b"0".to_vec();
    loop {
        let r = src.call(&[b"HSCAN", key, &cursor, b"COUNT", count.as_bytes()])?;
        let mut page = array(src, r)?.into_iter();
        let (Some(Reply::Bulk(next)), Some(Reply::Array(items))) = (page.next(), page.next())
        else {
            return Err(src.proto("unexpected HSCAN reply".into()));
        };
        let fields: Vec<Vec<u8>> = items
            .into_iter()
            .step_by(2)
            .filter_map(|f| match f {
                Reply::Bulk(b) => Some(b),
                _ => None,
            })
            .collect();
        if !fields.is_empty() {
            let n = fields.len().to_string();
            let mut args: Vec<&[u8]> = vec![b"HPTTL", key, b"FIELDS", n.as_bytes()];
            args.extend(fields.iter().map(Vec::as_slice));
            let (a, b) = both(src, tgt, &args)?;
            let (a, b) = (array(src, a)?, array(tgt, b)?);
            for (i, f) in fields.iter().enumerate() {
                let x = a.get(i).and_then(Reply::as_int).unwrap_or(-2);
                let y = b.get(i).and_then(Reply::as_int).unwrap_or(-2);
                if let Some(d) = ttl_diff("hash", x, y, opts.ttl_tolerance_ms) {
                    return Ok(Some(format!("field {}: {}", show_bytes(f, 60), d.detail)));
                }
            }
        }
        if next == b"0" {
            return Ok(None);
        }
        cursor = next;
    }
}
