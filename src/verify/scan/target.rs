//! The target pass: the digest of the target's key set, and — only when it differs from the
//! digest of the keys the source pass found on both sides — a second walk that looks for the
//! extra keys with one `EXISTS k1 … kn` on the source per page.

use super::*;

/// The quick target pass: `SCAN` target db `tdb` and digest its wanted keys (no question to
/// the source). If the digest equals the source pass's digest of keys found on both sides,
/// there are no extra keys; otherwise [`target_pass`] looks for them.
pub fn target_digest(
    tgt: &mut Conn,
    sdb: Option<u32>,
    tdb: u32,
    opts: &PassOpts,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    tgt.select(tdb)?;
    let count = opts.scan_count.to_string();
    let mut digest = KeySetDigest::default();
    let mut cursor = b"0".to_vec();
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let r = tgt.call(&[b"SCAN", &cursor, b"COUNT", count.as_bytes()])?;
        let (next, page) = scan_page(tgt, r)?;
        let mut n = 0u64;
        for k in page {
            if let Reply::Bulk(k) = k {
                if opts.filter.wants(tdb, &k)
                    && sdb.is_none_or(|s| opts.filter.wants(s, &k))
                    && opts.wants_slot(&k)
                {
                    digest.add(&k);
                    n += 1;
                }
            }
        }
        progress.target_keys.fetch_add(n, Ordering::Relaxed);
        if next == b"0" {
            out.key_sets.insert(tdb, digest);
            return Ok(());
        }
        cursor = next;
    }
}

/// Looks for keys of target db `tdb` that source db `sdb` lacks (`None`: no source db maps
/// here, so every key is extra).
pub fn target_pass(
    src: &mut Conn,
    tgt: &mut Conn,
    sdb: Option<u32>,
    tdb: u32,
    opts: &PassOpts,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    tgt.select(tdb)?;
    if let Some(s) = sdb {
        src.select(s)?;
    }
    let count = opts.scan_count.to_string();
    let mut cursor = b"0".to_vec();
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let r = tgt.call(&[b"SCAN", &cursor, b"COUNT", count.as_bytes()])?;
        let (next, page) = scan_page(tgt, r)?;
        let mut seen = HashSet::new();
        let keys: Vec<Vec<u8>> = page
            .into_iter()
            .filter_map(|k| match k {
                Reply::Bulk(k)
                    if opts.filter.wants(tdb, &k)
                        && sdb.is_none_or(|s| opts.filter.wants(s, &k))
                        && opts.wants_slot(&k) =>
                {
                    Some(k)
                }
                _ => None,
            })
            .filter(|k| seen.insert(k.clone()))
            .collect();
        progress
            .target_keys
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let absent: Vec<&Vec<u8>> = match sdb {
            None => keys.iter().collect(),
            Some(_) if keys.is_empty() => Vec::new(),
            Some(_) => {
                let mut args: Vec<&[u8]> = vec![b"EXISTS"];
                args.extend(keys.iter().map(Vec::as_slice));
                // One EXISTS per key on a cluster (keys of several slots: CROSSSLOT).
                let n = if opts.per_key {
                    -1
                } else {
                    src.call(&args)?.as_int().unwrap_or(-1)
                };
                if n == keys.len() as i64 {
                    Vec::new()
                } else {
                    for k in &keys {
                        src.send(&[b"EXISTS", k])?;
                    }
                    let mut absent = Vec::new();
                    for k in &keys {
                        if src.recv()? == Reply::Int(0) {
                            absent.push(k);
                        }
                    }
                    absent
                }
            }
        };
        for k in &absent {
            tgt.send(&[b"TYPE", k])?;
        }
        for k in absent {
            let t = tgt.recv()?;
            let t = type_text(tgt, t)?;
            if t != "none" {
                out.count(&t);
                out.found(
                    sdb,
                    tdb,
                    k,
                    Diff::new(DiffKind::Extra, &t, "not on the source"),
                );
            }
        }
        if next == b"0" {
            return Ok(());
        }
        cursor = next;
    }
}
