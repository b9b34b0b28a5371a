//! The per-slot positions of a link into a cluster target (see the module doc of
//! [`super`]): the key of a slot's position, how often every slot's is stored, the reading
//! of one `GET`, and what all the slots' positions say together.

use std::time::Duration;

use crate::cluster::Slot;
use crate::sync::batch::{LOADING, Stored};
use crate::sync::target::reply_text;

/// The position key of `link` for `slot`.
pub fn position_key(slot: Slot, link: &str) -> Vec<u8> {
    format!(
        "cutover:position:{{{}}}:{link}",
        crate::cluster::slot::tag_for(slot)
    )
    .into_bytes()
}

/// How often the stream batches store the position of every slot (a chunk of
/// [`ALL_SLOTS_CHUNK`] slots per batch, in turn, at most every `ALL_SLOTS_EVERY / 16`).
pub(super) const ALL_SLOTS_EVERY: Duration = Duration::from_secs(2);

/// [`ALL_SLOTS_EVERY`], or the test-only `CUTOVER_TEST_ALL_SLOTS_EVERY_MS` (a test widens
/// the time when slots' positions differ, to stop cutover inside it).
pub(super) fn all_slots_every() -> Duration {
    static EVERY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("CUTOVER_TEST_ALL_SLOTS_EVERY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(ALL_SLOTS_EVERY, Duration::from_millis)
    })
}

/// Slots per round when every slot's position is read or written (at start, at a snapshot's
/// start and end): 16,384 transactions built at once cost each link ~20 MB at its peak (keys,
/// values, tags, checks, the wire, the replies), and a cluster source runs a link per master.
pub(super) const ALL_SLOTS_CHUNK: usize = 1024;

/// One GET of each slot's position: parses `*1\r\n$N\r\nvalue\r\n` (`None`: missing).
pub(super) fn exec_get_value(reply: &[u8]) -> Result<Option<String>, String> {
    let rest = reply
        .strip_prefix(b"*1\r\n")
        .ok_or_else(|| reply_text(reply))?;
    if rest.starts_with(b"$-1") || rest.starts_with(b"_") {
        return Ok(None);
    }
    let rest = rest.strip_prefix(b"$").ok_or_else(|| reply_text(reply))?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| reply_text(reply))?;
    let n: usize = std::str::from_utf8(&rest[..nl.saturating_sub(1)])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| reply_text(reply))?;
    let v = rest
        .get(nl + 1..nl + 1 + n)
        .ok_or_else(|| reply_text(reply))?;
    Ok(Some(String::from_utf8_lossy(v).into_owned()))
}

/// What the per-slot positions say together (see the module doc); with the per-slot offsets
/// to skip.
pub fn combine(values: &[Option<String>]) -> (Stored, Vec<u64>) {
    let present = values.iter().filter(|v| v.is_some()).count();
    if present == 0 {
        return (Stored::None, Vec::new());
    }
    if present < values.len() {
        return (
            Stored::Unusable(format!(
                "{} of {} slots have no position (an earlier sync did not finish writing them)",
                values.len() - present,
                values.len()
            )),
            Vec::new(),
        );
    }
    let mut skip = Vec::with_capacity(values.len());
    let mut best: Option<(String, u64, Option<u64>)> = None;
    // Per replication id, the smallest and largest offset stored under it.
    let mut ids: Vec<(String, u64, u64)> = Vec::new();
    for v in values.iter().flatten() {
        if v == LOADING {
            return (Stored::Unusable(LOADING.to_string()), Vec::new());
        }
        match Stored::parse(v) {
            Stored::At { replid, offset, db } => {
                match ids.iter_mut().find(|(id, _, _)| *id == replid) {
                    Some((_, lo, hi)) => {
                        *lo = (*lo).min(offset);
                        *hi = (*hi).max(offset);
                    }
                    None => ids.push((replid.clone(), offset, offset)),
                }
                skip.push(offset);
                if best.as_ref().is_none_or(|(_, o, _)| offset < *o) {
                    best = Some((replid, offset, db));
                }
            }
            _ => return (Stored::Unusable(v.clone()), Vec::new()),
        }
    }
    // Several ids: the link continued under a new id (a promoted replica's `+CONTINUE
    // <new id>`) and was stopped before every slot's position carried it. That is one
    // history, so the offsets are ordered: every offset of the older id at or below every
    // offset of the newer. Then `PSYNC` goes from the smallest, under its (older) id,
    // which the new master accepts through `replid2` (else a full sync). Overlapping ranges
    // are not one history: unusable.
    ids.sort_by_key(|(_, lo, hi)| (*lo, *hi));
    if let Some(w) = ids.windows(2).find(|w| w[0].2 > w[1].1) {
        return (
            Stored::Unusable(format!(
                "the slots' positions name two replication ids whose offsets overlap ({} {}-{}, {} {}-{})",
                w[0].0, w[0].1, w[0].2, w[1].0, w[1].1, w[1].2
            )),
            Vec::new(),
        );
    }
    let (replid, offset, db) = best.expect("present > 0");
    (Stored::At { replid, offset, db }, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_combine() {
        let id = "a".repeat(40);
        let at = |o: u64| Some(crate::sync::batch::format(&id, o, 0));
        assert_eq!(combine(&[None, None]).0, Stored::None);
        assert!(matches!(combine(&[at(5), None]).0, Stored::Unusable(_)));
        assert!(matches!(
            combine(&[at(5), Some(LOADING.into())]).0,
            Stored::Unusable(_)
        ));
        let (s, skip) = combine(&[at(9), at(5), at(7)]);
        assert_eq!(
            s,
            Stored::At {
                replid: id.clone(),
                offset: 5,
                db: Some(0)
            }
        );
        assert_eq!(skip, vec![9, 5, 7]);
        // Two ids of one history (a continue under a promoted replica's new id): ordered
        // offsets, PSYNC from the smallest under its id; overlapping: unusable.
        let b = |o: u64| Some(crate::sync::batch::format(&"b".repeat(40), o, 0));
        let (s, skip) = combine(&[at(5), b(9), at(7), b(7)]);
        assert_eq!(
            s,
            Stored::At {
                replid: id.clone(),
                offset: 5,
                db: Some(0)
            }
        );
        assert_eq!(skip, vec![5, 9, 7, 7]);
        assert!(matches!(
            combine(&[at(5), b(6), at(7)]).0,
            Stored::Unusable(_)
        ));
        assert!(matches!(
            combine(&[b(5), at(6), b(7)]).0,
            Stored::Unusable(_)
        ));
        assert_eq!(exec_get_value(b"*1\r\n$-1\r\n"), Ok(None));
        assert_eq!(
            exec_get_value(b"*1\r\n$3\r\nabc\r\n"),
            Ok(Some("abc".into()))
        );
        assert!(exec_get_value(b"-MOVED 1 x:1\r\n").is_err());
        assert!(position_key(5, "0").starts_with(b"cutover:position:{"));
        assert_eq!(crate::cluster::slot(&position_key(777, "0")), 777);
    }
}
