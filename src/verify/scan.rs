//! The two passes of a verify, each on a thread of its own with its own connections.
//!
//! * **Source pass** ([`source_pass`]), mode full: a scanner thread walks the source with
//!   `SCAN … COUNT 1000` and hands pages over a bounded channel; the comparing thread keeps up
//!   to [`DEPTH`] pages in flight on *both* servers: per page one `MGET` of its keys (plus
//!   `PTTL` per key on a side whose db holds keys with a TTL). Strings equal on both sides are
//!   settled there; every other key (not a string, missing, different) goes to the `DUMP`
//!   stage: `DUMP` + `PTTL` on both sides, pipelined; identical payloads, or payloads that
//!   decode to the same value (`dump.rs`), settle the key; what is left is compared with
//!   commands (`compare.rs`), which also writes the detail. Modes keys and length: `TYPE` +
//!   `PTTL` per key, then the length commands, a page at a time.
//! * **Target pass** ([`target_digest`]): `SCAN` the target and digest its key set
//!   ([`KeySetDigest`]). When that equals the digest of the keys the source pass found on both
//!   sides, the target has no extra key. Otherwise [`target_pass`] runs after both passes:
//!   `SCAN` the target again, one `EXISTS k1 … kn` on the source per page (key by key only for
//!   a page with a shortfall).
//!
//! Neither pass keeps keys beyond the pages in flight, except the differences (at most
//! [`MAX_CANDIDATES`] per pass; beyond that they are only counted), so memory stays bounded
//! whatever the size of the dataset.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::client::{Conn, Reply, VerifyError};
use super::compare::{self, CompareOpts, Diff, DiffKind, Mode, Outcome};
use super::dump;
use super::filter::KeyFilter;

/// Differences kept per pass for the re-check rounds; more are counted, not listed.
pub const MAX_CANDIDATES: usize = 100_000;

/// A difference seen in a pass, before the re-checks.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub source_db: Option<u32>,
    pub target_db: u32,
    pub key: Vec<u8>,
    pub diff: Diff,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct PassResult {
    /// Keys compared, by type.
    pub checked: BTreeMap<String, u64>,
    pub candidates: Vec<Candidate>,
    /// Differences beyond [`MAX_CANDIDATES`] (not listed, not re-checked), by kind.
    pub overflow: BTreeMap<DiffKind, u64>,
    /// Per target db: a [`KeySetDigest`] of the keys seen on both sides (source pass) or of
    /// the target's keys (target pass's quick scan).
    pub key_sets: BTreeMap<u32, KeySetDigest>,
}

/// An order-independent digest of a set of keys: their number and the wrapping sum of a 64-bit
/// hash of each. The source pass adds every key it found on both sides, the target pass every
/// key of the target: equal digests mean the target has no key the source lacks (a key only
/// on the target would add its hash to one side only). Unequal digests (an extra key, a key
/// deleted meanwhile, a key `SCAN` returned twice) send the target pass through the exact
/// check, `EXISTS` on the source for every target key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySetDigest {
    pub count: u64,
    pub sum: u64,
}

impl KeySetDigest {
    pub fn add(&mut self, key: &[u8]) {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        self.count += 1;
        self.sum = self.sum.wrapping_add(h);
    }
}

impl PassResult {
    fn count(&mut self, key_type: &str) {
        match self.checked.get_mut(key_type) {
            Some(n) => *n += 1,
            None => {
                self.checked.insert(key_type.to_string(), 1);
            }
        }
    }

    /// `key` exists on both sides (whether equal or not).
    fn on_both(&mut self, tdb: u32, key: &[u8]) {
        self.key_sets.entry(tdb).or_default().add(key);
    }

    fn found(&mut self, source_db: Option<u32>, target_db: u32, key: &[u8], diff: Diff) {
        if self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push(Candidate {
                source_db,
                target_db,
                key: key.to_vec(),
                diff,
            });
        } else {
            *self.overflow.entry(diff.kind).or_default() += 1;
        }
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub source_keys: AtomicU64,
    pub target_keys: AtomicU64,
    /// Set to stop both passes early.
    pub stop: AtomicBool,
}

/// Settings of a pass.
#[derive(Debug, Clone)]
pub struct PassOpts {
    pub compare: CompareOpts,
    pub filter: KeyFilter,
    /// `SCAN … COUNT`.
    pub scan_count: usize,
}

/// One page of `SCAN`: next cursor and keys.
fn scan_page(conn: &Conn, r: Reply) -> Result<(Vec<u8>, Vec<Reply>), VerifyError> {
    let mut it = match r {
        Reply::Array(a) if a.len() == 2 => a.into_iter(),
        Reply::Error(e) => return Err(conn.refused(&[b"SCAN"], e)),
        other => return Err(conn.proto(format!("SCAN answered {}", other.show()))),
    };
    match (it.next(), it.next()) {
        (Some(Reply::Bulk(cursor)), Some(Reply::Array(keys))) => Ok((cursor, keys)),
        _ => Err(conn.proto("malformed SCAN reply".into())),
    }
}

fn pttl(conn: &Conn, r: Reply) -> Result<i64, VerifyError> {
    match r {
        Reply::Int(i) => Ok(i),
        Reply::Error(e) => Err(conn.refused(&[b"PTTL"], e)),
        other => Err(conn.proto(format!("PTTL answered {}", other.show()))),
    }
}

/// Compares every wanted key of source db `sdb` with target db `tdb` (`scanner`: a third
/// connection, to the source, for mode full's `SCAN`). `ttls` says which side's
/// db had keys with a TTL when the verify started (`INFO keyspace` `expires=`): a side
/// without any is not asked `PTTL` for every string (all would answer -1); a key that gets a
/// TTL during the run is a live write, like any other write after its key was compared.
#[allow(clippy::too_many_arguments)]
pub fn source_pass(
    src: &mut Conn,
    tgt: &mut Conn,
    scanner: &mut Conn,
    sdb: u32,
    tdb: u32,
    ttls: (bool, bool),
    opts: &PassOpts,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    src.select(sdb)?;
    tgt.select(tdb)?;
    if opts.compare.mode == Mode::Full {
        full_pass(src, tgt, scanner, sdb, tdb, ttls, opts, progress, out)
    } else {
        light_pass(src, tgt, sdb, tdb, opts, progress, out)
    }
}

/// Keys of one `SCAN` page that the filter wants.
fn wanted(page: Vec<Reply>, opts: &PassOpts, sdb: u32, tdb: u32) -> Vec<Vec<u8>> {
    page.into_iter()
        .filter_map(|k| match k {
            Reply::Bulk(k) if opts.filter.wants(sdb, &k) && opts.filter.wants(tdb, &k) => Some(k),
            _ => None,
        })
        .collect()
}

/// Keys deferred to the `DUMP` stage before it runs (the pipeline is drained for it).
const DEFER_BATCH: usize = 1000;
/// Pages in flight on the compare connections.
const DEPTH: usize = 3;
/// Pages the scanner may be ahead of the comparison.
const SCAN_AHEAD: usize = 4;

/// Mode full. A scanner thread walks the source with `SCAN` on its own connection and hands
/// pages over a bounded channel; this thread keeps up to [`DEPTH`] pages in flight on both
/// servers: per page `MGET` of its keys and `PTTL` per key (strings, the common case, cost one
/// command per key and side), so the servers always have the next pages queued while this
/// thread compares the oldest one (on a busy 2-core machine, a server that waits for the
/// client is a server that does nothing). Keys that are not strings on both sides, or differ,
/// are deferred to [`dump_stage`], which runs when the pipeline is drained (every
/// [`DEFER_BATCH`] keys and at the end).
#[allow(clippy::too_many_arguments)]
fn full_pass(
    src: &mut Conn,
    tgt: &mut Conn,
    scanner: &mut Conn,
    sdb: u32,
    tdb: u32,
    ttls: (bool, bool),
    opts: &PassOpts,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    scanner.select(sdb)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Vec<u8>>, VerifyError>>(SCAN_AHEAD);
    std::thread::scope(|s| {
        let scan = s.spawn(move || {
            let count = opts.scan_count.to_string();
            let mut cursor = b"0".to_vec();
            loop {
                if progress.stop.load(Ordering::Relaxed) {
                    return;
                }
                let page = scanner
                    .call(&[b"SCAN", &cursor, b"COUNT", count.as_bytes()])
                    .and_then(|r| scan_page(scanner, r));
                match page {
                    Ok((next, page)) => {
                        let keys = wanted(page, opts, sdb, tdb);
                        if !keys.is_empty() && tx.send(Ok(keys)).is_err() {
                            return;
                        }
                        if next == b"0" {
                            return;
                        }
                        cursor = next;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let result = compare_pages(src, tgt, &rx, sdb, tdb, ttls, opts, progress, out);
        if result.is_err() {
            progress.stop.store(true, Ordering::Relaxed);
        }
        // Unblock the scanner if it waits on a full channel.
        drop(rx);
        let _ = scan.join();
        result
    })
}

/// The comparing half of [`full_pass`].
#[allow(clippy::too_many_arguments)]
fn compare_pages(
    src: &mut Conn,
    tgt: &mut Conn,
    pages: &std::sync::mpsc::Receiver<Result<Vec<Vec<u8>>, VerifyError>>,
    sdb: u32,
    tdb: u32,
    ttls: (bool, bool),
    opts: &PassOpts,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    let send_page = |src: &mut Conn, tgt: &mut Conn, keys: &[Vec<u8>]| -> Result<(), VerifyError> {
        for (conn, ttl) in [(&mut *src, ttls.0), (&mut *tgt, ttls.1)] {
            let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
            args.push(b"MGET");
            args.extend(keys.iter().map(Vec::as_slice));
            conn.send(&args)?;
            if ttl {
                for k in keys {
                    conn.send(&[b"PTTL", k])?;
                }
            }
            conn.flush()?;
        }
        Ok(())
    };
    let mut inflight: std::collections::VecDeque<Vec<Vec<u8>>> = Default::default();
    let mut deferred: Vec<Vec<u8>> = Vec::new();
    let mut scanned_all = false;
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            src.discard_pending()?;
            tgt.discard_pending()?;
            return Ok(());
        }
        // Top up the pipeline (wait for a page only when nothing is in flight), unless the
        // DUMP stage is due.
        while !scanned_all && inflight.len() < DEPTH && deferred.len() < DEFER_BATCH {
            let next = if inflight.is_empty() {
                pages.recv().ok()
            } else {
                match pages.try_recv() {
                    Ok(p) => Some(p),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
                }
            };
            match next {
                Some(keys) => {
                    let keys = keys?;
                    send_page(src, tgt, &keys)?;
                    inflight.push_back(keys);
                }
                None => scanned_all = true,
            }
        }
        let Some(keys) = inflight.pop_front() else {
            if !deferred.is_empty() {
                dump_stage(
                    src,
                    tgt,
                    &std::mem::take(&mut deferred),
                    opts,
                    sdb,
                    tdb,
                    out,
                )?;
            }
            if scanned_all {
                return Ok(());
            }
            continue;
        };
        read_strings(src, tgt, &keys, ttls, opts, sdb, tdb, &mut deferred, out)?;
        progress
            .source_keys
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
    }
}

/// Reads one page's `MGET` and `PTTL` replies from both sides; settles equal strings and
/// defers the rest.
#[allow(clippy::too_many_arguments)]
fn read_strings(
    src: &mut Conn,
    tgt: &mut Conn,
    keys: &[Vec<u8>],
    ttls: (bool, bool),
    opts: &PassOpts,
    sdb: u32,
    tdb: u32,
    deferred: &mut Vec<Vec<u8>>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    if keys.is_empty() {
        return Ok(());
    }
    let values = |conn: &mut Conn| -> Result<Vec<Reply>, VerifyError> {
        match conn.recv()? {
            Reply::Array(a) if a.len() == keys.len() => Ok(a),
            Reply::Error(e) => Err(conn.refused(&[b"MGET"], e)),
            other => Err(conn.proto(format!("MGET answered {}", other.show()))),
        }
    };
    let a = values(src)?;
    let mut at = Vec::with_capacity(keys.len());
    for _ in keys {
        at.push(if ttls.0 {
            let r = src.recv()?;
            pttl(src, r)?
        } else {
            -1
        });
    }
    let b = values(tgt)?;
    for ((k, (x, y)), sp) in keys.iter().zip(a.iter().zip(&b)).zip(at) {
        let tp = if ttls.1 {
            let r = tgt.recv()?;
            pttl(tgt, r)?
        } else {
            -1
        };
        let string_on_both = !matches!(x, Reply::Nil) && !matches!(y, Reply::Nil);
        if string_on_both && x == y {
            settle_ttl("string", k, sp, tp, opts, sdb, tdb, out);
        } else {
            deferred.push(k.clone());
        }
    }
    Ok(())
}

/// `DUMP` + `PTTL` of both sides for `keys`, pipelined; equal (or decoded-equal) payloads
/// settle a key, the rest is compared with commands ([`compare::compare_key`]).
fn dump_stage(
    src: &mut Conn,
    tgt: &mut Conn,
    keys: &[Vec<u8>],
    opts: &PassOpts,
    sdb: u32,
    tdb: u32,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    for conn in [&mut *src, &mut *tgt] {
        for k in keys {
            conn.send(&[b"DUMP", k])?;
            conn.send(&[b"PTTL", k])?;
        }
        conn.flush()?;
    }
    let mut firsts = Vec::with_capacity(keys.len());
    for _ in keys {
        let a = src.recv()?;
        let at = src.recv()?;
        firsts.push((a, pttl(src, at)?));
    }
    let mut slow = Vec::new();
    for (k, (a, at)) in keys.iter().zip(firsts) {
        let b = tgt.recv()?;
        let bt = tgt.recv()?;
        let bt = pttl(tgt, bt)?;
        full_fast_path(src, tgt, k, (a, at, b, bt), opts, &mut slow, sdb, tdb, out)?;
    }
    slow_keys(src, tgt, slow, opts, sdb, tdb, out)
}

/// Compares keys one by one with commands.
fn slow_keys(
    src: &mut Conn,
    tgt: &mut Conn,
    keys: Vec<Vec<u8>>,
    opts: &PassOpts,
    sdb: u32,
    tdb: u32,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    for k in keys {
        match compare::compare_key(src, tgt, &k, &opts.compare)? {
            Outcome::Gone => {}
            Outcome::Equal(t) => {
                out.count(&t);
                out.on_both(tdb, &k);
            }
            Outcome::Differs(d) if d.kind == DiffKind::Extra => {
                // Deleted from the source since the SCAN: the target pass owns extras.
            }
            Outcome::Differs(d) => {
                out.count(&d.key_type.clone());
                if d.kind != DiffKind::Missing {
                    out.on_both(tdb, &k);
                }
                out.found(Some(sdb), tdb, &k, d);
            }
        }
    }
    Ok(())
}

/// Modes keys and length: `TYPE` + `PTTL` per key on both sides, then the length commands.
fn light_pass(
    src: &mut Conn,
    tgt: &mut Conn,
    sdb: u32,
    tdb: u32,
    opts: &PassOpts,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    let count = opts.scan_count.to_string();
    let r = src.call(&[b"SCAN", b"0", b"COUNT", count.as_bytes()])?;
    let (mut cursor, mut page) = scan_page(src, r)?;
    let mut slow: Vec<Vec<u8>> = Vec::new();
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let keys = wanted(std::mem::take(&mut page), opts, sdb, tdb);
        let first: &[u8] = b"TYPE";
        for k in &keys {
            src.send(&[first, k])?;
            src.send(&[b"PTTL", k])?;
        }
        let more = cursor != b"0";
        if more {
            src.send(&[b"SCAN", &cursor, b"COUNT", count.as_bytes()])?;
        }
        src.flush()?;
        for k in &keys {
            tgt.send(&[first, k])?;
            tgt.send(&[b"PTTL", k])?;
        }
        tgt.flush()?;
        let mut firsts = Vec::with_capacity(keys.len());
        for _ in &keys {
            let a = src.recv()?;
            let at = src.recv()?;
            let at = pttl(src, at)?;
            let b = tgt.recv()?;
            let bt = tgt.recv()?;
            let bt = pttl(tgt, bt)?;
            firsts.push((a, at, b, bt));
        }
        if more {
            let r = src.recv()?;
            (cursor, page) = scan_page(src, r)?;
        }
        let mut same_type = Vec::new();
        for (k, (a, at, b, bt)) in keys.iter().zip(firsts) {
            let (ta, tb) = (type_text(src, a)?, type_text(tgt, b)?);
            match (ta.as_str(), tb.as_str()) {
                ("none", "none") => {}
                ("none", _) => slow.push(k.clone()),
                (_, "none") => {
                    out.count(&ta);
                    out.found(
                        Some(sdb),
                        tdb,
                        k,
                        Diff::new(DiffKind::Missing, &ta, "not on the target"),
                    );
                }
                (x, y) if x != y => {
                    out.count(x);
                    out.on_both(tdb, k);
                    out.found(
                        Some(sdb),
                        tdb,
                        k,
                        Diff::new(
                            DiffKind::Type,
                            x,
                            format!("{x} on the source, {y} on the target"),
                        ),
                    );
                }
                _ if opts.compare.mode == Mode::Keys => {
                    out.count(&ta);
                    out.on_both(tdb, k);
                }
                _ => same_type.push((k, ta, at, bt)),
            }
        }
        if !same_type.is_empty() {
            length_stage(src, tgt, &same_type, opts, sdb, tdb, out)?;
        }
        slow_keys(src, tgt, std::mem::take(&mut slow), opts, sdb, tdb, out)?;
        progress
            .source_keys
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        if !more {
            return Ok(());
        }
    }
}

fn type_text(conn: &Conn, r: Reply) -> Result<String, VerifyError> {
    match r {
        Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Reply::Error(e) => Err(conn.refused(&[b"TYPE"], e)),
        other => Err(conn.proto(format!("TYPE answered {}", other.show()))),
    }
}

/// Mode full, one key: `DUMP` and `PTTL` of both sides.
#[allow(clippy::too_many_arguments)]
fn full_fast_path(
    src: &Conn,
    tgt: &Conn,
    k: &[u8],
    (a, at, b, bt): (Reply, i64, Reply, i64),
    opts: &PassOpts,
    slow: &mut Vec<Vec<u8>>,
    sdb: u32,
    tdb: u32,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    if let Reply::Error(e) = a {
        return Err(src.refused(&[b"DUMP"], e));
    }
    if let Reply::Error(e) = b {
        return Err(tgt.refused(&[b"DUMP"], e));
    }
    match (&a, &b) {
        (Reply::Nil, Reply::Nil) => {}
        (Reply::Nil, _) => slow.push(k.to_vec()),
        (Reply::Bulk(x), Reply::Nil) => {
            let t = dump::dump_type(x);
            out.count(t);
            out.found(
                Some(sdb),
                tdb,
                k,
                Diff::new(DiffKind::Missing, t, "not on the target"),
            );
        }
        (_, Reply::Nil) => slow.push(k.to_vec()),
        (Reply::Bulk(x), Reply::Bulk(y))
            if x == y || same_type_value(x, y, opts.compare.ttl_tolerance_ms) =>
        {
            // Equal values (decoded-equal hashes also had their field expiries compared).
            let t = dump::dump_type(x);
            settle_ttl(t, k, at, bt, opts, sdb, tdb, out);
        }
        (Reply::Digest { first, tail, .. }, Reply::Digest { .. }) if a == b => {
            let t = dump::digest_type(*first, tail);
            settle_ttl(t, k, at, bt, opts, sdb, tdb, out);
        }
        _ => slow.push(k.to_vec()),
    }
    Ok(())
}

/// A key whose value is equal: counts it and compares the TTLs.
#[allow(clippy::too_many_arguments)]
fn settle_ttl(
    t: &str,
    k: &[u8],
    at: i64,
    bt: i64,
    opts: &PassOpts,
    sdb: u32,
    tdb: u32,
    out: &mut PassResult,
) {
    out.count(t);
    out.on_both(tdb, k);
    if let Some(d) = compare::ttl_diff(t, at, bt, opts.compare.ttl_tolerance_ms) {
        out.found(Some(sdb), tdb, k, d);
    }
}

fn same_type_value(x: &[u8], y: &[u8], tolerance_ms: i64) -> bool {
    dump::dump_type(x) == dump::dump_type(y) && dump::same_value(x, y, tolerance_ms)
}

/// `--mode length`: lengths of the keys whose types agree, pipelined to both sides.
fn length_stage(
    src: &mut Conn,
    tgt: &mut Conn,
    keys: &[(&Vec<u8>, String, i64, i64)],
    opts: &PassOpts,
    sdb: u32,
    tdb: u32,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    let cmd = |t: &str| -> &'static [u8] {
        match t {
            "string" => b"STRLEN",
            "list" => b"LLEN",
            "set" => b"SCARD",
            "zset" => b"ZCARD",
            "hash" => b"HLEN",
            "stream" => b"XLEN",
            _ => b"EXISTS",
        }
    };
    for (k, t, _, _) in keys {
        src.send(&[cmd(t), k])?;
        tgt.send(&[cmd(t), k])?;
    }
    src.flush()?;
    tgt.flush()?;
    for (k, t, at, bt) in keys {
        let (a, b) = (src.recv()?, tgt.recv()?);
        out.count(t);
        out.on_both(tdb, k);
        let diff = match (&a, &b) {
            (Reply::Int(x), Reply::Int(y)) if x != y => {
                Some(Diff::new(DiffKind::Value, t, format!("length {x} vs {y}")))
            }
            (Reply::Int(_), Reply::Int(_)) => {
                compare::ttl_diff(t, *at, *bt, opts.compare.ttl_tolerance_ms)
            }
            // WRONGTYPE: the key changed between the two stages; look again.
            _ => match compare::compare_key(src, tgt, k, &opts.compare)? {
                Outcome::Differs(d) => Some(d),
                _ => None,
            },
        };
        if let Some(d) = diff {
            out.found(Some(sdb), tdb, k, d);
        }
    }
    Ok(())
}

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
                if opts.filter.wants(tdb, &k) && sdb.is_none_or(|s| opts.filter.wants(s, &k)) {
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
                        && sdb.is_none_or(|s| opts.filter.wants(s, &k)) =>
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
                let n = src.call(&args)?.as_int().unwrap_or(-1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any order of the same keys gives the same digest; one key more or fewer never does.
        #[test]
        fn digest_is_a_set_function(
            keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..12), 1..40),
            seed in any::<u64>(),
        ) {
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let mut shuffled = keys.clone();
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % n);
            }
            let (mut a, mut b, mut c) = (KeySetDigest::default(), KeySetDigest::default(), KeySetDigest::default());
            keys.iter().for_each(|k| a.add(k));
            shuffled.iter().for_each(|k| b.add(k));
            keys[1..].iter().for_each(|k| c.add(k));
            prop_assert_eq!(a, b);
            prop_assert_ne!(a, c);
        }
    }

    #[test]
    fn key_set_digests_ignore_order_and_see_one_key_more() {
        let (mut a, mut b, mut c) = (
            KeySetDigest::default(),
            KeySetDigest::default(),
            KeySetDigest::default(),
        );
        for k in [&b"x"[..], b"y", b"\xff"] {
            a.add(k);
        }
        for k in [&b"\xff"[..], b"x", b"y"] {
            b.add(k);
        }
        assert_eq!(a, b);
        for k in [&b"x"[..], b"y", b"z"] {
            c.add(k);
        }
        assert_ne!(a, c);
        b.add(b"extra");
        assert_ne!(a, b);
    }
}
