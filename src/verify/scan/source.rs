//! The source pass: a scanner thread pages through the source (`SCAN … COUNT 1000`) over a
//! bounded channel, and the comparing thread keeps up to [`DEPTH`] batches in flight on both
//! servers — a page's `MGET` (or `TYPE`), then its follow-up batch (`DUMP` + `PTTL`, or the
//! length commands) sent behind the pages in flight, so neither server waits for the other.
//! What the batches cannot settle goes to [`super::compare`].

use super::*;

/// Compares every wanted key of source db `sdb` with target db `tdb` (`scanner`: a third
/// connection, to the source, for the `SCAN`). `ttls` says which side's
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
    pipelined_pass(src, tgt, scanner, sdb, tdb, ttls, opts, progress, out)
}

/// Keys of one `SCAN` page that the filter wants.
fn wanted(page: Vec<Reply>, opts: &PassOpts, sdb: u32, tdb: u32) -> Vec<Vec<u8>> {
    page.into_iter()
        .filter_map(|k| match k {
            Reply::Bulk(k)
                if opts.filter.wants(sdb, &k)
                    && opts.filter.wants(tdb, &k)
                    && opts.wants_slot(&k) =>
            {
                Some(k)
            }
            _ => None,
        })
        .collect()
}

/// Slow keys (compared one by one with commands) gathered before the pipeline is drained for
/// them.
const DEFER_BATCH: usize = 1000;
/// Pages in flight on the compare connections.
const DEPTH: usize = 3;
/// Pages the scanner may be ahead of the comparison.
const SCAN_AHEAD: usize = 4;

/// One batch of commands in flight on both compare connections, in the order it was sent.
enum Item {
    /// Mode full, a page: `MGET` of the keys, `PTTL` per key (where the side has TTLs).
    Strings(Vec<Vec<u8>>),
    /// Mode full, the keys of a page not settled by `MGET`: `DUMP` + `PTTL` per key.
    Dumps(Vec<Vec<u8>>),
    /// Modes keys and length, a page: `TYPE` per key (+ `PTTL` in mode length).
    Types(Vec<Vec<u8>>),
    /// Mode length, the keys of a page whose types agree: the type's length command.
    Lengths(Vec<(Vec<u8>, String, i64, i64)>),
}

/// What a pass is comparing: db pair, which sides have TTLs, settings.
struct Ctx<'a> {
    opts: &'a PassOpts,
    sdb: u32,
    tdb: u32,
    ttls: (bool, bool),
}

/// The source pass of one db pair. A scanner thread walks the source with `SCAN` on its own
/// connection and hands pages over a bounded channel; this thread keeps up to [`DEPTH`] pages
/// in flight on both servers, and sends the follow-up batch of a page (`DUMP` for what `MGET`
/// did not settle, lengths for what `TYPE` did not) as soon as the page is read, behind the
/// pages already in flight. So the servers always have work queued while this thread compares
/// (on a busy 2-core machine, a server that waits for the client is a server doing nothing).
/// Keys that need commands one by one ([`compare::compare_key`]) wait until the pipeline is
/// drained (every [`DEFER_BATCH`] keys and at the end).
#[allow(clippy::too_many_arguments)]
fn pipelined_pass(
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
    let ctx = Ctx {
        opts,
        sdb,
        tdb,
        ttls,
    };
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
        let result = compare_pages(src, tgt, &rx, &ctx, progress, out);
        if result.is_err() {
            progress.stop.store(true, Ordering::Relaxed);
        }
        // Unblock the scanner if it waits on a full channel.
        drop(rx);
        let _ = scan.join();
        result
    })
}

/// The comparing half of [`pipelined_pass`].
fn compare_pages(
    src: &mut Conn,
    tgt: &mut Conn,
    pages: &std::sync::mpsc::Receiver<Result<Vec<Vec<u8>>, VerifyError>>,
    ctx: &Ctx<'_>,
    progress: &Arc<Progress>,
    out: &mut PassResult,
) -> Result<(), VerifyError> {
    let mut inflight: std::collections::VecDeque<Item> = Default::default();
    let mut slow: Vec<Vec<u8>> = Vec::new();
    let mut scanned_all = false;
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            src.discard_pending()?;
            tgt.discard_pending()?;
            return Ok(());
        }
        // Top up the pipeline (wait for a page only when nothing is in flight), unless slow
        // keys are due.
        while !scanned_all && inflight.len() < DEPTH && slow.len() < DEFER_BATCH {
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
                    let item = if ctx.opts.compare.mode == Mode::Full {
                        Item::Strings(keys)
                    } else {
                        Item::Types(keys)
                    };
                    send_item(src, tgt, &item, ctx)?;
                    inflight.push_back(item);
                }
                None => scanned_all = true,
            }
        }
        let Some(item) = inflight.pop_front() else {
            if !slow.is_empty() {
                let keys = std::mem::take(&mut slow);
                slow_keys(src, tgt, keys, ctx.opts, ctx.sdb, ctx.tdb, out)?;
            }
            if scanned_all {
                return Ok(());
            }
            continue;
        };
        let page_keys = match &item {
            Item::Strings(k) | Item::Types(k) => k.len() as u64,
            _ => 0,
        };
        if let Some(next) = read_item(src, tgt, item, ctx, &mut slow, out)? {
            send_item(src, tgt, &next, ctx)?;
            inflight.push_back(next);
        }
        progress.source_keys.fetch_add(page_keys, Ordering::Relaxed);
    }
}

/// Sends an item's commands to both sides.
fn send_item(
    src: &mut Conn,
    tgt: &mut Conn,
    item: &Item,
    ctx: &Ctx<'_>,
) -> Result<(), VerifyError> {
    for (conn, ttl) in [(&mut *src, ctx.ttls.0), (&mut *tgt, ctx.ttls.1)] {
        match item {
            Item::Strings(keys) if ctx.opts.per_key => {
                for k in keys {
                    conn.send(&[b"MGET", k])?;
                }
                if ttl {
                    for k in keys {
                        conn.send(&[b"PTTL", k])?;
                    }
                }
            }
            Item::Strings(keys) => {
                let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
                args.push(b"MGET");
                args.extend(keys.iter().map(Vec::as_slice));
                conn.send(&args)?;
                if ttl {
                    for k in keys {
                        conn.send(&[b"PTTL", k])?;
                    }
                }
            }
            Item::Dumps(keys) => {
                for k in keys {
                    conn.send(&[b"DUMP", k])?;
                    conn.send(&[b"PTTL", k])?;
                }
            }
            Item::Types(keys) => {
                let length = ctx.opts.compare.mode == Mode::Length;
                for k in keys {
                    conn.send(&[b"TYPE", k])?;
                    if length && ttl {
                        conn.send(&[b"PTTL", k])?;
                    }
                }
            }
            Item::Lengths(keys) => {
                for (k, t, _, _) in keys {
                    // `EXISTS` for any other type: 1 on both sides.
                    conn.send(&[compare::length_command(t).unwrap_or(b"EXISTS"), k])?;
                }
            }
        }
        conn.flush()?;
    }
    Ok(())
}

/// Reads an item's replies from both sides and settles what it can; returns the follow-up
/// item for the rest, if any.
fn read_item(
    src: &mut Conn,
    tgt: &mut Conn,
    item: Item,
    ctx: &Ctx<'_>,
    slow: &mut Vec<Vec<u8>>,
    out: &mut PassResult,
) -> Result<Option<Item>, VerifyError> {
    let (opts, sdb, tdb) = (ctx.opts, ctx.sdb, ctx.tdb);
    match item {
        Item::Strings(keys) => {
            let values = |conn: &mut Conn| -> Result<Vec<Reply>, VerifyError> {
                if opts.per_key {
                    let mut v = Vec::with_capacity(keys.len());
                    for _ in &keys {
                        match conn.recv()? {
                            Reply::Array(mut a) if a.len() == 1 => v.push(a.remove(0)),
                            Reply::Error(e) => return Err(conn.refused(&[b"MGET"], e)),
                            other => {
                                return Err(conn.proto(format!("MGET answered {}", other.show())));
                            }
                        }
                    }
                    return Ok(v);
                }
                match conn.recv()? {
                    Reply::Array(a) if a.len() == keys.len() => Ok(a),
                    Reply::Error(e) => Err(conn.refused(&[b"MGET"], e)),
                    other => Err(conn.proto(format!("MGET answered {}", other.show()))),
                }
            };
            let read_ttls = |conn: &mut Conn, ttl: bool| -> Result<Vec<i64>, VerifyError> {
                let mut v = Vec::with_capacity(keys.len());
                for _ in &keys {
                    v.push(if ttl {
                        let r = conn.recv()?;
                        pttl(conn, r)?
                    } else {
                        -1
                    });
                }
                Ok(v)
            };
            let (a, at) = (values(src)?, read_ttls(src, ctx.ttls.0)?);
            let (b, bt) = (values(tgt)?, read_ttls(tgt, ctx.ttls.1)?);
            let mut rest = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let (x, y) = (&a[i], &b[i]);
                if !matches!(x, Reply::Nil) && !matches!(y, Reply::Nil) && x == y {
                    settle_ttl("string", k, at[i], bt[i], opts, sdb, tdb, out);
                } else {
                    rest.push(k.clone());
                }
            }
            Ok((!rest.is_empty()).then_some(Item::Dumps(rest)))
        }
        Item::Dumps(keys) => {
            let mut firsts = Vec::with_capacity(keys.len());
            for _ in &keys {
                let a = src.recv()?;
                let at = src.recv()?;
                firsts.push((a, pttl(src, at)?));
            }
            for (k, (a, at)) in keys.iter().zip(firsts) {
                let b = tgt.recv()?;
                let bt = tgt.recv()?;
                let bt = pttl(tgt, bt)?;
                full_fast_path(src, tgt, k, (a, at, b, bt), opts, slow, sdb, tdb, out)?;
            }
            Ok(None)
        }
        Item::Types(keys) => {
            let length = opts.compare.mode == Mode::Length;
            let read = |conn: &mut Conn, ttl: bool| -> Result<Vec<(String, i64)>, VerifyError> {
                let mut v = Vec::with_capacity(keys.len());
                for _ in &keys {
                    let t = conn.recv()?;
                    let t = type_text(conn, t)?;
                    let ttl = if length && ttl {
                        let r = conn.recv()?;
                        pttl(conn, r)?
                    } else {
                        -1
                    };
                    v.push((t, ttl));
                }
                Ok(v)
            };
            let (a, b) = (read(src, ctx.ttls.0)?, read(tgt, ctx.ttls.1)?);
            let mut same_type = Vec::new();
            for ((k, (ta, at)), (tb, bt)) in keys.into_iter().zip(a).zip(b) {
                match (ta.as_str(), tb.as_str()) {
                    ("none", "none") => {}
                    ("none", _) => slow.push(k),
                    (_, "none") => {
                        out.count(&ta);
                        let d = Diff::new(DiffKind::Missing, &ta, "not on the target");
                        out.found(Some(sdb), tdb, &k, d);
                    }
                    (x, y) if x != y => {
                        out.count(x);
                        out.on_both(tdb, &k);
                        let d = Diff::new(
                            DiffKind::Type,
                            x,
                            format!("{x} on the source, {y} on the target"),
                        );
                        out.found(Some(sdb), tdb, &k, d);
                    }
                    _ if !length => {
                        out.count(&ta);
                        out.on_both(tdb, &k);
                    }
                    _ => same_type.push((k, ta, at, bt)),
                }
            }
            Ok((!same_type.is_empty()).then_some(Item::Lengths(same_type)))
        }
        Item::Lengths(keys) => {
            for (k, t, at, bt) in keys {
                let (a, b) = (src.recv()?, tgt.recv()?);
                let diff = match (&a, &b) {
                    (Reply::Int(x), Reply::Int(y)) if x != y => {
                        Some(Diff::new(DiffKind::Value, &t, format!("length {x} vs {y}")))
                    }
                    (Reply::Int(_), Reply::Int(_)) => {
                        compare::ttl_diff(&t, at, bt, opts.compare.ttl_tolerance_ms)
                    }
                    // WRONGTYPE: the key changed meanwhile; compare it again on its own.
                    _ => {
                        slow.push(k);
                        continue;
                    }
                };
                out.count(&t);
                out.on_both(tdb, &k);
                if let Some(d) = diff {
                    out.found(Some(sdb), tdb, &k, d);
                }
            }
            Ok(None)
        }
    }
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

pub(super) fn type_text(conn: &Conn, r: Reply) -> Result<String, VerifyError> {
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
