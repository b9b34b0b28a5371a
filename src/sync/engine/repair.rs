//! The active repair of keys the side a link writes to expired (or evicted) before the
//! primary did (issue 20): the key is copied from the primary, **fenced at a stream offset**.
//!
//! A link writes into a *primary*, which expires keys on its own clock. When the primary
//! refreshes a key just before it expires, the refresh can reach this side after the key is
//! gone here; every later write to the key then lands on nothing (`PEXPIREAT` answers `0`,
//! `INCR` restarts at 1). The applier finds such keys from the replies inside its `EXEC`s
//! (`Tag::must_change`: a refresh or conditional update answered `0`/nil; `Tag::suspect_reply`:
//! a counter answered with its bare increment — maybe a new counter, maybe a lost one) and
//! queues them in `Refusals` (shared: a restarted engine repairs them too).
//!
//! Writes answered with the key's resulting size are checked the same way
//! (`sync::engine::rewrite`): `RPUSHX`/`LPUSHX`/`LINSERT` are in the stream only when they
//! pushed on the primary, so `0` here (or `LINSERT`'s `-1`) means the key was missing
//! (`must_change`); an `RPUSH`/`LPUSH` of n elements answered n, an `APPEND` answered its
//! argument's length, a `SETRANGE` answered offset + length means the key was missing here
//! before it (`suspect_reply`). Without this, the usual `RPUSH log:x …` + sliding `EXPIRE
//! log:x 60` loses silently: the push recreates a shorter list, and the `EXPIRE` finds it.
//! **The price** is the counters' one: every new list or string costs one copy (a `DUMP`/
//! `PTTL` on the primary, batched up to 256 keys a transaction, and a `RESTORE` here), since
//! no reply tells a new key from a lost one. Measured (`tests/size_replies.rs`
//! `cost_of_new_lists`, debug build): 20,000 new lists take the link 4.5 s where 20,000 new
//! strings take 0.8 s; a key already waiting for its copy is not queued again, so a queue
//! emptied after every push costs one copy per read of the primary (2 for 20,000 pushes).
//! Kept: a slower catch-up for a workload made only of new keys, against a list left short
//! on the side that takes over.
//!
//! **The copy.** On the link's kept control connection to the primary (the server whose
//! stream the link applies), in one transaction:
//!
//! ```text
//! SELECT <db>      (before MULTI)
//! MULTI
//! INFO replication          → master_repl_offset = O
//! DUMP k1 / PTTL k1 …       → the keys' values and remaining TTLs at O
//! EXEC
//! ```
//!
//! A transaction runs alone, so the values are those of the stream up to offset `O`
//! exactly: every write before `O` is in them, none after. (`INFO` comes first: a `DUMP` that
//! finds a key past its TTL deletes it and propagates a `DEL`, which Redis 6.2 feeds to the
//! stream at once — after `O`, where it deletes a key that is absent here too.)
//!
//! **The fence.** The value at `O` is placed into this side's stream **at offset `O`**: the
//! applier applies every stream command that ends at or before `O`, then `RESTORE k <pttl>
//! <payload> REPLACE` (or `DEL k` when the primary no longer has the key) in the same batch
//! as the commands after it, then goes on. The key is thus replaced whole by the value the
//! primary had at that very point of the stream, and every later write applies on top of it
//! exactly once: nothing is skipped, nothing applied twice (an `INCR` or `RPUSH` between the
//! loss and `O` went into the primary's value and is overwritten here; one after `O` applies
//! to the copy), and a key the primary expired or deleted meanwhile is not resurrected. The
//! link receives only what the primary fed to its stream, so `O` is never behind the link: it
//! reaches `O` within its lag. The TTL is written relative (`PTTL`), so a clock that is ahead
//! here does not shorten it; the time the copy travels only lengthens it, and the primary's
//! `DEL` does the real expiry.
//!
//! **At a move** the clients are held and the applying link parks at the primary's offset
//! `L`: every copy still waiting is read and placed there (the primary's stream then holds at
//! most its own expiries past `L`, already in the values read), so the side handed to the
//! clients, or kept for a rollback, has every repaired key.
//!
//! A value in an encoding this side cannot load (a listpack hash from Redis 7+ into 6.2) is
//! written by the snapshot converter instead (`sync::convert`: re-encoded, or plain
//! commands), then given its TTL with `PEXPIRE`.
//!
//! **What stays unrepaired** — the primary does not answer (or refuses `DUMP`), the value
//! cannot be expressed here (hash-field TTLs, module values), this side refuses the copy — is named in status
//! (`expired_early`) and refuses the moves, until the primary writes the key whole. Not
//! found: a write that reads a key lost here and writes *another* key (`LMOVE lost dst`)
//! before the loss is seen; `cutover verify` finds it.

use std::collections::{HashSet, VecDeque};

use anyhow::Context;

use crate::rdb::reencode::restore_payload;
use crate::rdb::{DumpPayload, RdbVersion, Writer};
use crate::resp::request::encode_command;
use crate::sync::convert::Converter;
use crate::sync::convert::Stats;
use crate::sync::target::{Sink, Tag, array_elements, reply_text, show_key};

use super::*;

/// Keys read from the primary in one transaction at most.
const READ_AT_ONCE: usize = 256;
/// Failed reads of the primary before the keys asked are marked unrepaired.
const MAX_FAILURES: u32 = 3;

/// One key's value at a stream offset, waiting to be placed there.
#[derive(Debug)]
struct Copy {
    db: u64,
    key: Vec<u8>,
    /// The primary's `master_repl_offset` when it was read.
    offset: u64,
    /// `DUMP` payload and TTL in ms (0: none); `None`: the primary does not have the key.
    value: Option<(Vec<u8>, u64)>,
}

/// The applier's copies in progress.
#[derive(Default)]
pub(in crate::sync) struct Repairs {
    /// Keys read, waiting in `ready` (not asked again meanwhile).
    reading: HashSet<(u64, Vec<u8>)>,
    /// Copies in the order read (offsets never decrease).
    ready: VecDeque<Copy>,
    failures: u32,
}

impl Repairs {
    /// The offset of the oldest copy waiting to be placed.
    pub(in crate::sync) fn next_offset(&self) -> Option<u64> {
        self.ready.front().map(|c| c.offset)
    }

    /// A full resync copies everything again: the copies in progress are dropped.
    pub(in crate::sync) fn clear(&mut self) {
        self.reading.clear();
        self.ready.clear();
    }
}

/// Parses one element of an `EXEC` array: a bulk string (`None` for nil), or an integer.
enum Element<'a> {
    Bulk(Option<&'a [u8]>),
    Int(i64),
    Other(String),
}

fn element(e: &[u8]) -> Element<'_> {
    match e.first() {
        Some(b'$') => {
            if e.starts_with(b"$-1") {
                return Element::Bulk(None);
            }
            let Some(nl) = e.iter().position(|b| *b == b'\n') else {
                return Element::Other(reply_text(e));
            };
            match e.get(nl + 1..e.len().saturating_sub(2)) {
                Some(body) => Element::Bulk(Some(body)),
                None => Element::Other(reply_text(e)),
            }
        }
        Some(b'_') => Element::Bulk(None),
        Some(b':') => match reply_text(e).parse() {
            Ok(n) => Element::Int(n),
            Err(_) => Element::Other(reply_text(e)),
        },
        _ => Element::Other(reply_text(e)),
    }
}

/// The payload as this side's `RESTORE` takes it ([`restore_payload`]).
fn payload_for(payload: &[u8], max: RdbVersion) -> Result<Vec<u8>, String> {
    restore_payload(payload, max, "this side")
}

impl Applier<'_> {
    /// The keys the last replies found missing here (or suspect): queued for a copy.
    pub(in crate::sync) fn note_lost<W: Sink>(&mut self, w: &mut W) {
        for t in w.take_unchanged() {
            if t.must_change {
                self.progress
                    .refusals
                    .record_lost(t.stream_db, &t.key, t.what.to_string());
            } else {
                self.progress
                    .refusals
                    .want_repair(t.stream_db, &t.key, false);
            }
        }
    }

    /// Between reads of the stream: reads the keys waiting for a copy from the primary, and
    /// places the copies whose offset the stream has reached.
    pub(in crate::sync) fn repair_step<W: Sink>(
        &mut self,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        self.note_lost(w);
        self.read_wanted();
        if self
            .repairs
            .next_offset()
            .is_some_and(|o| o <= self.last_offset)
            && !self.in_source_txn
        {
            let open = self.txn_open;
            self.place_ready(w, false)?;
            if !open && self.txn_open {
                self.close_txn(w, stats)?;
            }
        }
        Ok(())
    }

    /// At the barrier (the clients are held, the link is at the primary's offset): every
    /// key waiting is read and placed now, then everything is answered.
    pub(in crate::sync) fn repair_at_barrier<W: Sink>(
        &mut self,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        for _ in 0..3 {
            w.drain()?;
            self.report_exec_errors(w, stats)?;
            self.note_lost(w);
            self.read_wanted();
            if self.repairs.ready.is_empty() && self.progress.refusals.repairing() == 0 {
                return Ok(());
            }
            let open = self.txn_open;
            self.place_ready(w, true)?;
            if !open && self.txn_open {
                self.close_txn(w, stats)?;
            }
        }
        w.drain()?;
        self.report_exec_errors(w, stats)?;
        // What could not be read in three tries is handed over missing: named, not silent.
        for (db, key) in self.progress.refusals.pending_repairs() {
            self.progress.refusals.unrepaired(
                db,
                &key,
                "the primary did not give the key before the move",
            );
        }
        Ok(())
    }

    /// Reads from the primary the keys waiting that are not read yet.
    fn read_wanted(&mut self) {
        if self.progress.refusals.repairing() == 0 {
            return;
        }
        let mut wanted: Vec<(u64, Vec<u8>)> = self
            .progress
            .refusals
            .pending_repairs()
            .into_iter()
            .filter(|k| !self.repairs.reading.contains(k))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // One transaction reads keys of one database; from a cluster source master, of one
        // slot too (a transaction across slots is refused there with `CROSSSLOT`).
        let cluster_source = self.opts.shard.is_some();
        let group_of = |(db, key): &(u64, Vec<u8>)| {
            (
                *db,
                if cluster_source {
                    crate::cluster::slot(key)
                } else {
                    0
                },
            )
        };
        wanted.sort_by_cached_key(|k| (group_of(k), k.1.clone()));
        for group in wanted.chunk_by(|a, b| group_of(a) == group_of(b)) {
            for part in group.chunks(READ_AT_ONCE) {
                let db = part[0].0;
                let keys: Vec<&[u8]> = part.iter().map(|(_, k)| k.as_slice()).collect();
                match self.read_from_primary(db, &keys) {
                    Ok((offset, values)) => {
                        self.repairs.failures = 0;
                        for ((db, key), value) in part.iter().zip(values) {
                            self.repairs.reading.insert((*db, key.clone()));
                            self.repairs.ready.push_back(Copy {
                                db: *db,
                                key: key.clone(),
                                offset,
                                value,
                            });
                        }
                    }
                    Err(e) => {
                        self.repairs.failures += 1;
                        tracing::warn!(error = %format!("{e:#}"), failures = self.repairs.failures, "cannot read keys that expired early here from the primary");
                        if self.repairs.failures >= MAX_FAILURES {
                            let why = format!("the primary did not give the key: {e:#}");
                            for (db, key) in part {
                                self.progress.refusals.unrepaired(*db, key, &why);
                            }
                            self.repairs.failures = 0;
                        }
                        return;
                    }
                }
            }
        }
    }

    /// `MULTI`, `INFO replication`, `DUMP`/`PTTL` of each key, `EXEC` on the primary:
    /// its offset and the keys' values there.
    #[allow(clippy::type_complexity)]
    fn read_from_primary(
        &mut self,
        db: u64,
        keys: &[&[u8]],
    ) -> anyhow::Result<(u64, Vec<Option<(Vec<u8>, u64)>>)> {
        let mut wire = Vec::new();
        let n = db.to_string();
        encode_command(&[&b"SELECT"[..], n.as_bytes()], &mut wire);
        encode_command(&[&b"MULTI"[..]], &mut wire);
        encode_command(&[&b"INFO"[..], b"replication"], &mut wire);
        for k in keys {
            encode_command(&[&b"DUMP"[..], k], &mut wire);
            encode_command(&[&b"PTTL"[..], k], &mut wire);
        }
        encode_command(&[&b"EXEC"[..]], &mut wire);
        // On the link's kept control connection to the primary (the side it reads from),
        // opened when first needed and dropped after a failure.
        let (queued, exec) = self
            .source_ctl
            .with(&self.opts.source, self.opts.timeout, |conn| {
                conn.write(&wire)?;
                // SELECT, MULTI, the QUEUEDs.
                let queued = (0..(3 + 2 * keys.len()))
                    .map(|_| conn.read_reply())
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((queued, conn.read_reply()?))
            })
            .context("reading from the primary to copy keys")?;
        if let Some(r) = queued.iter().find(|r| r.first() == Some(&b'-')) {
            anyhow::bail!("the primary refused the read: {}", reply_text(r));
        }
        let elements = array_elements(&exec);
        if elements.len() != 1 + 2 * keys.len() {
            anyhow::bail!("unexpected EXEC reply: {}", reply_text(&exec));
        }
        let info = match element(elements[0].1) {
            Element::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => anyhow::bail!("INFO replication: {}", reply_text(elements[0].1)),
        };
        let offset = crate::client::Info::new(info)
            .master_repl_offset()
            .context("INFO replication has no master_repl_offset")?;
        let mut values = Vec::with_capacity(keys.len());
        for pair in elements[1..].chunks(2) {
            let value = match (element(pair[0].1), element(pair[1].1)) {
                (Element::Bulk(None), _) | (_, Element::Int(-2)) => None,
                (Element::Bulk(Some(p)), Element::Int(ttl)) => {
                    if ttl == 0 {
                        // Expires this very millisecond there: gone by the time it lands.
                        None
                    } else {
                        Some((p.to_vec(), ttl.max(0) as u64))
                    }
                }
                (a, b) => {
                    let text = |e: Element| match e {
                        Element::Other(t) => t,
                        _ => "?".into(),
                    };
                    anyhow::bail!("DUMP/PTTL: {} / {}", text(a), text(b));
                }
            };
            values.push(value);
        }
        Ok((offset, values))
    }

    /// Queues the copies whose offset the stream reached (all of them at the barrier) into
    /// the open batch, opening one if needed; the writer's database is the stream's again
    /// afterwards.
    pub(in crate::sync) fn place_ready<W: Sink>(
        &mut self,
        w: &mut W,
        all: bool,
    ) -> anyhow::Result<()> {
        let mut placed = false;
        while let Some(c) = self.repairs.ready.front() {
            if !all && c.offset > self.last_offset {
                break;
            }
            let Some(c) = self.repairs.ready.pop_front() else {
                break;
            };
            self.repairs.reading.remove(&(c.db, c.key.clone()));
            let Some(to) = self.opts.tuning.filter.map_db(c.db) else {
                self.progress.refusals.copied(c.db, &c.key);
                continue;
            };
            if !self.txn_open {
                w.begin_txn()?;
                self.txn_open = true;
                self.txn_commands = 0;
            }
            let value = match &c.value {
                None => None,
                Some((payload, ttl)) => match payload_for(payload, self.info.max_rdb) {
                    Ok(p) => Some((p, *ttl)),
                    Err(why) => {
                        // An encoding this side does not know: the snapshot converter writes
                        // it re-encoded (or with plain commands), then the TTL.
                        w.set_repair_tags(Some(c.db));
                        let res = self.write_converted(w, c.db, &c.key, payload, *ttl);
                        w.set_repair_tags(None);
                        match res {
                            Ok(()) => {
                                self.txn_commands += 1;
                                self.progress.refusals.copied(c.db, &c.key);
                                placed = true;
                            }
                            Err(e) => {
                                self.progress.refusals.unrepaired(
                                    c.db,
                                    &c.key,
                                    &format!("{why}; written another way: {e:#}"),
                                );
                            }
                        }
                        continue;
                    }
                },
            };
            w.select(to)?;
            let tag = |what: &'static str| Tag {
                key: c.key.clone(),
                what: format!(
                    "{what} (a copy from the primary at stream offset {})",
                    c.offset
                )
                .into(),
                stream_db: c.db,
                repair: true,
                ..Tag::default()
            };
            match value {
                None => w.send(&[&b"DEL"[..], &c.key], tag("DEL"))?,
                Some((payload, ttl)) => {
                    let ttl = ttl.to_string();
                    w.send(
                        &[
                            &b"RESTORE"[..],
                            &c.key,
                            ttl.as_bytes(),
                            &payload,
                            b"REPLACE",
                        ],
                        tag("RESTORE"),
                    )?
                }
            }
            self.txn_commands += 1;
            self.progress.refusals.copied(c.db, &c.key);
            tracing::debug!(key = %show_key(&c.key), offset = c.offset, "a key that expired early here is copied from the primary");
            placed = true;
        }
        if placed {
            self.select_stream_db(w)?;
        }
        Ok(())
    }
}

impl Applier<'_> {
    /// Writes a value whose encoding this side cannot `RESTORE` through the snapshot
    /// converter (`sync::convert`: a re-encoded payload, or plain commands after a `DEL`),
    /// from a one-key RDB built from the `DUMP` payload, without expiry; then `PEXPIRE` with
    /// the remaining TTL (relative, as for `RESTORE`). Anything the converter reports as not
    /// expressible here is an error: the key stays unrepaired.
    fn write_converted<W: Sink>(
        &mut self,
        w: &mut W,
        db: u64,
        key: &[u8],
        payload: &[u8],
        ttl: u64,
    ) -> anyhow::Result<()> {
        let dump = DumpPayload::parse(payload)?;
        let (ty, body) = dump.value.split_first().context("an empty DUMP payload")?;
        let mut rdb = Writer::new();
        rdb.write_bytes(&dump.version.header()?);
        rdb.write_u8(0xFE); // SELECTDB
        rdb.write_len(db);
        rdb.write_u8(*ty);
        rdb.write_string(key);
        rdb.write_bytes(body);
        rdb.write_u8(0xFF); // EOF, then a checksum of 0: not checked
        rdb.write_u64_le(0);
        let mut parser = self.opts.parser();
        let mut conv = Converter::with_options(w, self.opts.convert_options());
        parser.feed(rdb.as_slice());
        while let Some(ev) = parser.next_event()? {
            conv.apply(ev, w)?;
        }
        parser.finish()?;
        conv.finish(w)?;
        if conv.stats.unsupported > 0 || conv.stats.keys_done() != 1 {
            anyhow::bail!("not expressible here: {}", conv.stats.problems.join("; "));
        }
        if ttl > 0 {
            let ttl = ttl.to_string();
            w.send(
                &[&b"PEXPIRE"[..], key, ttl.as_bytes()],
                Tag::key("PEXPIRE", key),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::build_dump;

    #[test]
    fn payloads_for_an_older_side() {
        // The string "123" as Redis 8.2 dumps it (RDB 12): a Redis 6.2 side (RDB 9) gets
        // the same value with its own version.
        let value = [0x00, 0xc0, 0x7b];
        let new = build_dump(&value, RdbVersion(12));
        assert_eq!(payload_for(&new, RdbVersion(12)).unwrap(), new);
        assert_eq!(
            payload_for(&new, RdbVersion(9)).unwrap(),
            build_dump(&value, RdbVersion(9))
        );
        // A listpack hash (type 16) is unknown to RDB 9: unrepaired, with the reason.
        let hash = build_dump(&[16, 0], RdbVersion(12));
        assert!(
            payload_for(&hash, RdbVersion(9))
                .unwrap_err()
                .contains("cannot load")
        );
        assert!(payload_for(b"xx", RdbVersion(9)).is_err());
    }

    #[test]
    fn exec_elements() {
        assert!(matches!(element(b"$-1\r\n"), Element::Bulk(None)));
        assert!(matches!(element(b"_\r\n"), Element::Bulk(None)));
        assert!(matches!(
            element(b"$3\r\nabc\r\n"),
            Element::Bulk(Some(b"abc"))
        ));
        assert!(matches!(element(b":-2\r\n"), Element::Int(-2)));
        assert!(matches!(element(b"-ERR x\r\n"), Element::Other(_)));
    }
}
