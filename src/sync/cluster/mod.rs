//! The sync engine's writes into a Redis Cluster target: [`ClusterSink`], the
//! [`Sink`](crate::sync::target::Sink) the applier and the converter use when the target is a
//! cluster (see ARCHITECTURE.md, *Clusters*).
//!
//! **Routing.** Every command goes to the master of its keys' slot (`cluster::slot`, hash
//! tags); a command whose keys span slots is cut per slot where the result is the same
//! ([`split`]), else reported as not applied. Keyless writes (`FLUSHALL`, `FUNCTION LOAD`…)
//! go to every master. Commands are grouped per slot into single-slot `MULTI … EXEC`
//! transactions ([`crate::cluster::SlotTxn`]) and sent through the
//! [`ClusterWriter`](crate::cluster::ClusterWriter): pipelined per node, following `MOVED`,
//! `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, a lost connection settled by the transaction's check key.
//!
//! **Exactly once, per slot.** The position of a link is stored once per slot, in the key
//! `cutover:position:{<tag>}:<link>` ([`position_key`]: `<tag>` hashes to the slot, so the
//! key lives in the slot and moves with it in a reshard of the target), value
//! `"<replid> <offset> <db>"` as on a standalone target. A batch of stream commands becomes one
//! transaction per slot it touches, each ending with `SET` of that slot's position to the
//! batch's offset: a slot's data and its position change together. Transactions of one slot
//! apply in order; different slots may apply in any order, which is fine: each slot's
//! position describes that slot only. Every 125 ms a batch also carries the position of
//! the next 1,024 slots in turn (nothing of theirs is pending), so that quiet slots do not
//! hold the resume point back: every slot every two seconds when batches come that often.
//! After a snapshot, all 16384 positions are written, 1,024 slots at a time (16,384
//! transactions built at once cost a link ~20 MB at its peak).
//!
//! **Resume.** [`ClusterSink::read_position`] reads all 16384 positions: none → no earlier
//! sync; any `snapshot-loading`, a missing one among others, or two replication ids whose
//! offsets overlap → an unusable position (a full sync, the target flushed); else the
//! **smallest** offset (under its id: after a continue under a promoted replica's new id the
//! older id holds the smaller offsets, and `replid2` accepts it) is where
//! `PSYNC` resumes, and each slot skips the stream commands at or below its own stored offset
//! (`Tag::stream_end`), so nothing is applied twice.
//!
//! **Not atomic.** A source transaction whose keys span several slots is applied as one
//! transaction per slot (each atomic, the whole not): counted (`take_non_atomic`, status
//! `non_atomic_txns`).
//!
//! A cluster has only database 0: a stream `SELECT` of another database is refused by
//! `check_db` (the sync refuses a source with data in db n > 0 before it starts, unless
//! `[sync] db_map` maps it to 0).

pub mod names;
pub mod position;
pub mod room;
pub mod source;
pub mod split;
pub mod transit_run;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cluster::writer::TxnResult;
use crate::cluster::{ClusterWriter, SLOTS, Slot, SlotTxn, Topology, WriterError};
use crate::sync::batch::{LOADING, Stored};
use crate::sync::target::{
    Refusal, Sink, Tag, TargetError, TargetInfo, TargetWriter, array_errors, array_unchanged,
    reply_text,
};
use split::Route;

use position::{ALL_SLOTS_CHUNK, all_slots_every, exec_get_value};
pub use position::{combine, position_key};

/// The link name of a standalone source's one link.
pub const STANDALONE_LINK: &str = "0";

/// Transactions queued for one apply, with the tags of their commands.
struct Unit {
    txns: Vec<SlotTxn>,
    tags: Vec<Vec<Tag>>,
    /// Where a snapshot command's slot is in `txns`.
    by_slot: HashMap<Slot, usize>,
    /// Confirmed once applied.
    offset: Option<u64>,
    /// Applied alone, after everything before it (keyless commands, all-slot positions).
    barrier: bool,
    /// Open for more snapshot commands.
    loose: bool,
}

impl Unit {
    fn new(barrier: bool, loose: bool) -> Unit {
        Unit {
            txns: Vec::new(),
            tags: Vec::new(),
            by_slot: HashMap::new(),
            offset: None,
            barrier,
            loose,
        }
    }

    /// Appends a command to its slot's transaction in this unit.
    fn push(&mut self, slot: Slot, cmd: Vec<Vec<u8>>, tag: Tag) {
        let i = *self.by_slot.entry(slot).or_insert_with(|| {
            self.txns.push(SlotTxn {
                slot,
                cmds: Vec::new(),
                check: None,
            });
            self.tags.push(Vec::new());
            self.txns.len() - 1
        });
        self.txns[i].cmds.push(cmd);
        self.tags[i].push(tag);
    }

    fn len(&self) -> usize {
        self.txns.iter().map(|t| t.cmds.len()).sum()
    }
}

/// The transaction being queued (`begin_txn` … `exec_txn`).
struct OpenTxn {
    cmds: Vec<(Vec<Vec<u8>>, Tag)>,
    position: Option<String>,
    db_before: u64,
}

/// Writes the sync into a cluster (see the module doc).
pub struct ClusterSink {
    writer: ClusterWriter,
    info: TargetInfo,
    addr: String,
    link: String,
    db: u64,
    window: usize,
    queue: Vec<Unit>,
    queued: usize,
    txn: Option<OpenTxn>,
    confirmed: Option<u64>,
    /// Per slot, the offset its stored position held when this run started (stream commands
    /// at or below it are skipped there); empty when not resuming.
    skip: Vec<u64>,
    /// When the position of every slot was last written.
    all_slots_at: Option<Instant>,
    /// The first slot of the next chunk of positions a stream batch writes (see `close`).
    all_slots_next: usize,
    exec_errors: Vec<Refusal>,
    unchanged: Vec<Tag>,
    non_atomic: u64,
}

impl ClusterSink {
    /// Connects to the cluster `topo` (its first master answers `INFO server`), writing the
    /// positions of `link`.
    pub fn connect(
        topo: Topology,
        link: &str,
        timeout: Duration,
        window: usize,
    ) -> Result<ClusterSink, TargetError> {
        let first = topo
            .master_urls()
            .into_iter()
            .next()
            .ok_or_else(|| TargetError::Protocol {
                addr: topo.read_from().to_string(),
                detail: "the cluster has no master".into(),
            })?;
        let info = TargetWriter::connect(&first, timeout)?.info().clone();
        let addr = format!(
            "cluster of {} masters ({})",
            topo.map().shards().len(),
            first.addr()
        );
        Ok(ClusterSink {
            writer: ClusterWriter::new(topo, timeout.max(Duration::from_secs(60))),
            info,
            addr,
            link: link.to_string(),
            db: 0,
            window: window.max(1),
            queue: Vec::new(),
            queued: 0,
            txn: None,
            confirmed: None,
            skip: Vec::new(),
            all_slots_at: None,
            all_slots_next: 0,
            exec_errors: Vec::new(),
            unchanged: Vec::new(),
            non_atomic: 0,
        })
    }

    /// Redirects followed and lost connections settled so far (`MOVED`, waits, checks).
    pub fn redirects(&self) -> (u64, u64, u64) {
        (self.writer.moved, self.writer.waited, self.writer.resolved)
    }

    /// The first slot of each master: where a keyless command is sent.
    fn master_slots(&self) -> Vec<Slot> {
        self.writer
            .topology()
            .map()
            .shards()
            .iter()
            .filter_map(|s| s.ranges.first().map(|r| r.0))
            .collect()
    }

    fn loose_unit(&mut self) -> &mut Unit {
        if !self.queue.last().is_some_and(|u| u.loose) {
            self.queue.push(Unit::new(false, true));
        }
        self.queue.last_mut().expect("pushed")
    }

    fn push_barrier(&mut self, unit: Unit) {
        self.queued += unit.len();
        self.queue.push(unit);
    }

    /// A keyless command on every master, applied after what is queued.
    fn keyless_unit(&self, cmd: &[Vec<u8>], tag: &Tag) -> Unit {
        let mut unit = Unit::new(true, false);
        for s in self.master_slots() {
            unit.push(s, cmd.to_vec(), tag.clone());
        }
        unit
    }

    /// `SET` of every slot's position to `value` (or `DEL` with `None`), as barrier units of
    /// [`ALL_SLOTS_CHUNK`] slots each, in slot order.
    fn all_slots_units(&self, value: Option<&str>) -> Vec<Unit> {
        (0..SLOTS)
            .step_by(ALL_SLOTS_CHUNK)
            .map(|lo| self.slots_unit(value, lo..(lo + ALL_SLOTS_CHUNK).min(SLOTS)))
            .collect()
    }

    /// Writes (`Some`) or removes (`None`) every slot's position now, [`ALL_SLOTS_CHUNK`]
    /// slots at a time, after everything queued.
    fn write_all_slots(&mut self, value: Option<&str>) -> Result<(), TargetError> {
        for lo in (0..SLOTS).step_by(ALL_SLOTS_CHUNK) {
            let unit = self.slots_unit(value, lo..(lo + ALL_SLOTS_CHUNK).min(SLOTS));
            self.push_barrier(unit);
            self.apply_queued()?;
        }
        Ok(())
    }

    /// `SET` of the position of each slot of `slots` to `value` (or `DEL` with `None`).
    fn slots_unit(&self, value: Option<&str>, slots: std::ops::Range<usize>) -> Unit {
        let mut unit = Unit::new(true, false);
        for s in slots.map(|s| s as Slot) {
            let key = position_key(s, &self.link);
            let cmd = match value {
                Some(v) => vec![b"SET".to_vec(), key.clone(), v.as_bytes().to_vec()],
                None => vec![b"DEL".to_vec(), key.clone()],
            };
            unit.push(s, cmd, Tag::key("SET cutover:position", &key));
        }
        if let Some(v) = value {
            set_checks(&mut unit, v);
        }
        unit
    }

    fn args_of(args: &[impl AsRef<[u8]>]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_ref().to_vec()).collect()
    }

    fn queue_cmd(&mut self, args: Vec<Vec<u8>>, tag: Tag) -> Result<(), TargetError> {
        let name = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default();
        if name == "SELECT" {
            let db = args
                .get(1)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
                .unwrap_or(0);
            self.check_db(db)?;
            self.db = db;
            return Ok(());
        }
        if let Some(txn) = &mut self.txn {
            txn.cmds.push((args, tag));
            return Ok(());
        }
        match split::route(&name, args) {
            Route::Keyless(args) => {
                let unit = self.keyless_unit(&args, &tag);
                self.push_barrier(unit);
            }
            Route::Slots { parts, .. } => {
                for (slot, cmd) in parts {
                    self.loose_unit().push(slot, cmd, tag.clone());
                    self.queued += 1;
                }
            }
            Route::CrossSlot(slots) => {
                return Err(TargetError::Refused {
                    addr: self.addr.clone(),
                    step: format!(
                        "{} of key '{}'",
                        tag.what,
                        crate::sync::target::show_key(&tag.key)
                    ),
                    reply: format!(
                        "its keys are in slots {slots:?}: a cluster cannot apply it as one command"
                    ),
                });
            }
        }
        if self.queued >= self.window {
            self.apply_queued()?;
        }
        Ok(())
    }

    /// Applies everything queued: consecutive units together in one
    /// [`ClusterWriter::apply`] (slot order kept), barriers alone.
    fn apply_queued(&mut self) -> Result<(), TargetError> {
        let units = std::mem::take(&mut self.queue);
        self.queued = 0;
        let mut txns = Vec::new();
        let mut tags = Vec::new();
        let mut offset = None;
        for unit in units {
            if unit.barrier {
                self.apply_txns(std::mem::take(&mut txns), std::mem::take(&mut tags))?;
                if offset.is_some() {
                    self.confirmed = offset;
                }
                self.apply_txns(unit.txns, unit.tags)?;
                if unit.offset.is_some() {
                    self.confirmed = unit.offset;
                }
                offset = None;
                continue;
            }
            txns.extend(unit.txns);
            tags.extend(unit.tags);
            if unit.offset.is_some() {
                offset = unit.offset;
            }
        }
        self.apply_txns(txns, tags)?;
        if offset.is_some() {
            self.confirmed = offset;
        }
        Ok(())
    }

    fn apply_txns(&mut self, txns: Vec<SlotTxn>, tags: Vec<Vec<Tag>>) -> Result<(), TargetError> {
        if txns.is_empty() {
            return Ok(());
        }
        let results = self.writer.apply(&txns).map_err(|e| self.writer_error(e))?;
        for ((txn, tags), result) in txns.iter().zip(tags).zip(results) {
            let TxnResult::Exec(reply) = result else {
                continue;
            };
            if reply.first() != Some(&b'*') || reply.starts_with(b"*-1") {
                return Err(TargetError::Refused {
                    addr: self.addr.clone(),
                    step: format!("a transaction of slot {} ({})", txn.slot, describe(&tags)),
                    reply: reply_text(&reply),
                });
            }
            for (i, error) in array_errors(&reply) {
                let tag = tags.get(i).cloned().unwrap_or_default();
                if tag.replicated {
                    self.exec_errors.push(Refusal { tag, error });
                } else if !tag.tolerate_error {
                    return Err(TargetError::Refused {
                        addr: self.addr.clone(),
                        step: format!(
                            "{} of key '{}'",
                            tag.what,
                            crate::sync::target::show_key(&tag.key)
                        ),
                        reply: error,
                    });
                }
            }
            if tags.iter().any(|t| t.must_change) {
                for i in array_unchanged(&reply) {
                    if let Some(t) = tags.get(i).filter(|t| t.must_change) {
                        self.unchanged.push(t.clone());
                    }
                }
            }
            if tags.iter().any(|t| t.suspect_reply.is_some()) {
                for (i, element) in crate::sync::target::array_elements(&reply) {
                    if let Some(t) = tags
                        .get(i)
                        .filter(|t| t.suspect_reply.as_deref() == Some(element))
                    {
                        self.unchanged.push(t.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn writer_error(&self, e: WriterError) -> TargetError {
        match e {
            WriterError::Connect(c) => TargetError::Client(*c),
            // A cluster changing under us, or a connection lost with an unknown outcome: the
            // run starts again from the stored positions.
            other => TargetError::Io {
                addr: self.addr.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }

    /// Closes the open transaction into a unit (see the module doc).
    fn close(&mut self, txn: OpenTxn, tag: &Tag) -> Result<(), TargetError> {
        let position = txn.position.clone();
        let mut unit = Unit::new(false, false);
        let mut slots_touched: Vec<Slot> = Vec::new();
        let mut after: Vec<Unit> = Vec::new();
        for (args, ctag) in txn.cmds {
            let name = args
                .first()
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
                .unwrap_or_default();
            match split::route(&name, args) {
                Route::Keyless(args) => {
                    // Applied on every master between what came before and after it; the
                    // positions of all slots are written again after (a FLUSHALL removes
                    // them).
                    let before = std::mem::replace(&mut unit, Unit::new(false, false));
                    self.finish_unit(before, position.as_deref(), None, &mut after);
                    after.push(self.keyless_unit(&args, &ctag));
                    if let Some(p) = &position {
                        after.extend(self.all_slots_units(Some(p)));
                    }
                }
                Route::Slots {
                    parts,
                    split_non_atomic,
                } => {
                    if split_non_atomic {
                        self.non_atomic += 1;
                    }
                    for (slot, cmd) in parts {
                        if ctag.stream_end > 0
                            && self
                                .skip
                                .get(slot as usize)
                                .is_some_and(|s| ctag.stream_end <= *s)
                        {
                            continue;
                        }
                        if !slots_touched.contains(&slot) {
                            slots_touched.push(slot);
                        }
                        let mut t = ctag.clone();
                        t.key = cmd.get(1).cloned().unwrap_or_default();
                        unit.push(slot, cmd, t);
                    }
                }
                Route::CrossSlot(slots) => {
                    self.exec_errors.push(Refusal {
                        tag: ctag,
                        error: format!(
                            "CROSSSLOT its keys are in slots {slots:?} of the target cluster, and it has no per-slot form: a cluster cannot apply it"
                        ),
                    });
                }
            }
        }
        if tag.source_txn && slots_touched.len() > 1 {
            self.non_atomic += 1;
        }
        // The next chunk of every slot's position, in turn: all 16,384 every
        // `all_slots_every()` when batches come often enough, a chunk at a time (memory).
        let every = all_slots_every() / (SLOTS / ALL_SLOTS_CHUNK) as u32;
        let all = position.is_some() && self.all_slots_at.is_none_or(|t| t.elapsed() >= every);
        if all {
            self.all_slots_at = Some(Instant::now());
        }
        self.finish_unit(unit, position.as_deref(), tag.offset, &mut after);
        if all && let (Some(p), Some(last)) = (&position, after.last_mut()) {
            // Those slots' positions too (nothing of theirs is pending).
            let lo = self.all_slots_next;
            self.all_slots_next = (lo + ALL_SLOTS_CHUNK) % SLOTS;
            for s in (lo..lo + ALL_SLOTS_CHUNK).map(|s| s as Slot) {
                if !last.by_slot.contains_key(&s) {
                    let key = position_key(s, &self.link);
                    last.push(
                        s,
                        vec![b"SET".to_vec(), key.clone(), p.as_bytes().to_vec()],
                        Tag::key("SET cutover:position", &key),
                    );
                }
            }
            set_checks(last, p);
        }
        for u in after {
            self.push_barrier(u);
        }
        Ok(())
    }

    /// Ends each slot's transaction of `unit` with that slot's position and queues it.
    fn finish_unit(
        &self,
        mut unit: Unit,
        position: Option<&str>,
        offset: Option<u64>,
        out: &mut Vec<Unit>,
    ) {
        if let Some(p) = position {
            for (txn, tags) in unit.txns.iter_mut().zip(unit.tags.iter_mut()) {
                let key = position_key(txn.slot, &self.link);
                txn.cmds
                    .push(vec![b"SET".to_vec(), key.clone(), p.as_bytes().to_vec()]);
                tags.push(Tag::key("SET cutover:position", &key));
                // A lost connection is settled by reading the slot's position.
                txn.check = Some((key, p.as_bytes().to_vec()));
            }
        }
        unit.offset = offset;
        out.push(unit);
    }
}

/// Gives every transaction of `unit` without a check its slot's position as check (each
/// ends with the `SET` of it to `value`): a lost connection is then settled by reading it.
fn set_checks(unit: &mut Unit, value: &str) {
    for txn in unit.txns.iter_mut().filter(|t| t.check.is_none()) {
        let key = txn
            .cmds
            .last()
            .and_then(|c| c.get(1))
            .cloned()
            .unwrap_or_default();
        txn.check = Some((key, value.as_bytes().to_vec()));
    }
}

fn describe(tags: &[Tag]) -> String {
    let mut names: Vec<&str> = tags.iter().map(|t| t.what.as_ref()).collect();
    names.dedup();
    names.truncate(4);
    names.join(", ")
}

impl Sink for ClusterSink {
    fn info(&self) -> &TargetInfo {
        &self.info
    }
    fn addr(&self) -> &str {
        &self.addr
    }
    fn db(&self) -> u64 {
        self.db
    }
    fn set_db(&mut self, db: u64) {
        self.db = db;
    }
    fn databases(&self) -> Option<u64> {
        Some(1)
    }
    fn check_db(&self, db: u64) -> Result<(), TargetError> {
        if db == 0 {
            return Ok(());
        }
        Err(TargetError::NoSuchDb {
            addr: self.addr.clone(),
            db,
            databases: 1,
        })
    }
    fn select(&mut self, db: u64) -> Result<(), TargetError> {
        self.check_db(db)?;
        self.db = db;
        Ok(())
    }
    fn send<A: AsRef<[u8]>>(&mut self, args: &[A], tag: Tag) -> Result<(), TargetError> {
        self.queue_cmd(Self::args_of(args), tag)
    }
    fn send_wire(&mut self, wire: &[u8], tag: Tag) -> Result<(), TargetError> {
        let args = crate::sync::engine::split_args(wire).map_err(|e| TargetError::Protocol {
            addr: self.addr.clone(),
            detail: format!("a command to send cannot be read: {e}"),
        })?;
        self.send(&args, tag)
    }
    fn mark_offset(&mut self, offset: u64) {
        match self.queue.last_mut() {
            Some(u) => u.offset = Some(offset),
            None => self.confirmed = Some(offset),
        }
    }
    fn confirmed_offset(&self) -> Option<u64> {
        self.confirmed
    }
    fn in_flight(&self) -> usize {
        self.queued
    }
    fn poll(&mut self) -> Result<(), TargetError> {
        if self.queued >= self.window / 2 {
            self.apply_queued()?;
        }
        Ok(())
    }
    fn drain(&mut self) -> Result<(), TargetError> {
        self.apply_queued()
    }
    fn begin_txn(&mut self) -> Result<(), TargetError> {
        if self.txn.is_some() {
            return Err(TargetError::Protocol {
                addr: self.addr.clone(),
                detail: "MULTI inside MULTI (a bug in cutover)".into(),
            });
        }
        self.txn = Some(OpenTxn {
            cmds: Vec::new(),
            position: None,
            db_before: self.db,
        });
        Ok(())
    }
    fn txn_refused(&mut self) -> Result<Vec<(usize, Refusal)>, TargetError> {
        // A cluster's refusals come back with `EXEC` (an aborted transaction stops the run).
        Ok(Vec::new())
    }
    fn exec_txn(&mut self, tag: Tag) -> Result<(), TargetError> {
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        self.close(txn, &tag)?;
        if self.queued >= self.window {
            self.apply_queued()?;
        }
        Ok(())
    }
    fn resend_txn_without(&mut self, _drop: &[usize]) -> Result<(), TargetError> {
        Ok(())
    }
    fn discard(&mut self) -> Result<(), TargetError> {
        if let Some(txn) = self.txn.take() {
            self.db = txn.db_before;
        }
        Ok(())
    }
    fn take_exec_errors(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.exec_errors)
    }
    fn take_unchanged(&mut self) -> Vec<Tag> {
        std::mem::take(&mut self.unchanged)
    }
    fn take_non_atomic(&mut self) -> u64 {
        std::mem::take(&mut self.non_atomic)
    }
    fn read_position(&mut self) -> Result<Stored, TargetError> {
        self.apply_queued()?;
        let mut values = Vec::with_capacity(SLOTS);
        for lo in (0..SLOTS).step_by(ALL_SLOTS_CHUNK) {
            let txns: Vec<SlotTxn> = (lo..(lo + ALL_SLOTS_CHUNK).min(SLOTS))
                .map(|s| SlotTxn {
                    slot: s as Slot,
                    cmds: vec![vec![b"GET".to_vec(), position_key(s as Slot, &self.link)]],
                    check: None,
                })
                .collect();
            let results = self.writer.apply(&txns).map_err(|e| self.writer_error(e))?;
            for (t, r) in txns.iter().zip(results) {
                let TxnResult::Exec(reply) = r else {
                    return Err(TargetError::Protocol {
                        addr: self.addr.clone(),
                        detail: format!("the position of slot {} could not be read", t.slot),
                    });
                };
                values.push(exec_get_value(&reply).map_err(|e| TargetError::Refused {
                    addr: self.addr.clone(),
                    step: format!("GET of the position of slot {}", t.slot),
                    reply: e,
                })?);
            }
        }
        let (stored, skip) = combine(&values);
        self.skip = skip;
        Ok(stored)
    }
    fn store_position(&mut self, value: &str) -> Result<(), TargetError> {
        if let Some(txn) = &mut self.txn {
            txn.position = Some(value.to_string());
            return Ok(());
        }
        if value == LOADING {
            // A new snapshot: the stream that follows has nothing to skip (its offsets may
            // even start lower, under a new replication id).
            self.skip.clear();
        }
        self.all_slots_at = Some(Instant::now());
        self.write_all_slots(Some(value))
    }
    fn del_position(&mut self) -> Result<(), TargetError> {
        self.write_all_slots(None)
    }
}
