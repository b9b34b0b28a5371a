//! Streams: the entries with `XRANGE` in chunks (paged with an inclusive start just after the
//! last id, as Redis < 6.2 has no exclusive ranges), then `XINFO STREAM` (last id) and
//! `XINFO GROUPS` (name, last delivered id, PEL size).

use super::*;

/// The id right after `id` ("ms-seq"), for paging with inclusive `XRANGE` (Redis < 6.2 has no
/// exclusive ranges).
pub(super) fn next_stream_id(id: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(id).ok()?;
    let (ms, seq) = text.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(match seq.checked_add(1) {
        Some(s) => format!("{ms}-{s}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

/// A field of an `XINFO` reply (a flat array of name, value pairs).
pub(super) fn info_field<'a>(info: &'a [Reply], name: &str) -> Option<&'a Reply> {
    info.chunks(2)
        .find(|p| p.first().and_then(Reply::as_bytes) == Some(name.as_bytes()))
        .and_then(|p| p.get(1))
}

pub(super) fn compare_stream(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    chunk: usize,
) -> Result<Option<String>, VerifyError> {
    let (a, b) = both(src, tgt, &[b"XINFO", b"STREAM", key])?;
    let (a, b) = (array(src, a)?, array(tgt, b)?);
    let (x, y) = (
        info_field(&a, "last-generated-id"),
        info_field(&b, "last-generated-id"),
    );
    if x != y {
        return Ok(Some(format!(
            "last id {} vs {}",
            x.map_or("?".into(), Reply::show),
            y.map_or("?".into(), Reply::show)
        )));
    }
    let count = chunk.to_string();
    let mut start = "-".to_string();
    loop {
        let (a, b) = both(
            src,
            tgt,
            &[
                b"XRANGE",
                key,
                start.as_bytes(),
                b"+",
                b"COUNT",
                count.as_bytes(),
            ],
        )?;
        let (a, b) = (array(src, a)?, array(tgt, b)?);
        for i in 0..a.len().max(b.len()) {
            let (x, y) = (a.get(i), b.get(i));
            if x != y {
                let id = |r: Option<&Reply>| match r {
                    Some(Reply::Array(e)) => e.first().map_or("?".into(), Reply::show),
                    _ => "(none)".into(),
                };
                return Ok(Some(if id(x) == id(y) {
                    format!("entry {}: fields differ", id(x))
                } else {
                    format!("entry {} vs {}", id(x), id(y))
                }));
            }
        }
        if a.len() < chunk {
            break;
        }
        let last = match a.last() {
            Some(Reply::Array(e)) => e.first().and_then(Reply::as_bytes),
            _ => None,
        };
        match last.and_then(next_stream_id) {
            Some(next) => start = next,
            None => return Err(src.proto("XRANGE entry without a valid id".into())),
        }
    }
    let (a, b) = both(src, tgt, &[b"XINFO", b"GROUPS", key])?;
    let groups = |c: &Conn, r| -> Result<BTreeMap<Vec<u8>, (Reply, Reply)>, VerifyError> {
        let mut out = BTreeMap::new();
        for g in array(c, r)? {
            let g = array(c, g)?;
            let name = info_field(&g, "name")
                .and_then(Reply::as_bytes)
                .unwrap_or_default()
                .to_vec();
            let last = info_field(&g, "last-delivered-id")
                .cloned()
                .unwrap_or(Reply::Nil);
            let pending = info_field(&g, "pending").cloned().unwrap_or(Reply::Nil);
            out.insert(name, (last, pending));
        }
        Ok(out)
    };
    let (a, b) = (groups(src, a)?, groups(tgt, b)?);
    for (name, (last, pending)) in &a {
        let g = show_bytes(name, 60);
        match b.get(name) {
            None => return Ok(Some(format!("group {g}: only on the source"))),
            Some((l, _)) if l != last => {
                return Ok(Some(format!(
                    "group {g}: last delivered id {} vs {}",
                    last.show(),
                    l.show()
                )));
            }
            Some((_, p)) if p != pending => {
                return Ok(Some(format!(
                    "group {g}: {} vs {} pending entries",
                    pending.show(),
                    p.show()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(b.keys()
        .find(|n| !a.contains_key(*n))
        .map(|n| format!("group {}: only on the target", show_bytes(n, 60))))
}
