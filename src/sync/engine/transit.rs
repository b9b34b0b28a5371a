//! The applier's part in slots moving on a cluster source
//! ([`crate::sync::cluster::transit_run`]): a stream command on a key another link owns
//! waits for that link ([`Applier::settle_keys`]), and a `FLUSHALL`/`FLUSHDB` in one
//! shard's stream clears only that shard's keys on the shared target
//! ([`Applier::flush_shard`]). Only a link of a cluster source (`Applier::transit` set) comes
//! here: a standalone source's path does not.

use std::sync::atomic::Ordering;

use crate::sync::batch;
use crate::sync::convert::Stats;
use crate::sync::replica::StreamCommand;
use crate::sync::target::Sink;

use super::applier::Applier;

impl Applier<'_> {
    /// What a link of a cluster source does with a stream command before applying it; true
    /// when it is done with it (applied here, held or skipped), false to apply it as usual.
    pub(in crate::sync) fn transit_route<W: Sink>(
        &mut self,
        cmd: &StreamCommand,
        args: &[&[u8]],
        name: &str,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<bool> {
        if matches!(name, "FLUSHALL" | "FLUSHDB") {
            self.flush_shard(cmd, w, stats)?;
            return Ok(true);
        }
        if name == "CLUSTER" {
            // Valkey 9 atomic slot migration markers (`CLUSTER SYNCSLOTS …`): not data.
            let sub = args
                .get(1)
                .map(|a| a.to_ascii_uppercase())
                .unwrap_or_default();
            let step = args
                .get(2)
                .map(|a| a.to_ascii_uppercase())
                .unwrap_or_default();
            if sub == b"SYNCSLOTS" {
                self.report.commands_skipped += 1;
                match step.as_slice() {
                    b"ESTABLISH" => {
                        if let Some(t) = self.transit.as_mut() {
                            t.start_import(args);
                        }
                    }
                    b"FINISH" => self.finish_import(cmd, args, w, stats)?,
                    _ => {}
                }
                return Ok(true);
            }
            return Ok(false);
        }
        let Some(t) = &self.transit else {
            return Ok(false);
        };
        let keys = crate::sync::filter::command_keys(name, args);
        let mut foreign = false;
        for i in &keys {
            let Some(k) = args.get(*i) else { continue };
            if t.importing(k) {
                // The copy of slots being imported (the exporter's stream has the same).
                let k = k.to_vec();
                let fits = self.transit.as_mut().is_some_and(|t| t.hold(&k, cmd));
                if !fits {
                    anyhow::bail!(
                        "an atomic slot migration into {} holds more than {} MB of its copy: cutover cannot order it; run the sync again after the migration",
                        self.opts.source.addr(),
                        crate::sync::cluster::transit_run::MAX_HELD_BYTES >> 20
                    );
                }
                return Ok(true);
            }
            if !t.is_mine(k) {
                match t.owners().exported_after(t.me, k) {
                    // This link's master handed the slot over: ops past the handover are
                    // its clean-up of the slot (the importer's copy holds the data).
                    Some(after) if cmd.end_offset > after && matches!(name, "DEL" | "UNLINK") => {
                        self.report.commands_skipped += 1;
                        return Ok(true);
                    }
                    // Its own history of the slot, before the handover.
                    Some(after) if cmd.end_offset <= after => {}
                    // Anything else on a slot that left: it came back (settled as usual).
                    Some(_) => foreign = true,
                    None => foreign = true,
                }
            }
        }
        if foreign {
            self.settle_keys(args, name, w, stats)?;
        }
        Ok(false)
    }

    /// `CLUSTER SYNCSLOTS FINISH`: once the exporter applied up to the handover, the
    /// migrated slots are cleared on the target and the held copy applied in their place
    /// (as of this command's offset, so a cluster target's per-slot positions do not skip
    /// it).
    fn finish_import<W: Sink>(
        &mut self,
        cmd: &StreamCommand,
        args: &[&[u8]],
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let Some(mut t) = self.transit.take() else {
            return Ok(());
        };
        let r = t.finish_import(args, &self.stop, self.opts.timeout);
        self.transit = Some(t);
        let Some(import) = r? else {
            return Ok(());
        };
        if self.txn_open && !self.in_source_txn {
            self.close_txn(w, stats)?;
        }
        w.drain()?;
        let slots = import.slots.clone();
        let removed =
            crate::sync::cluster::source::clear_keys(self.opts, &|k| slots.contains_key(k))?;
        let n = import.held.len();
        for held in import.held {
            let held = StreamCommand {
                wire: held.wire,
                end_offset: cmd.end_offset,
            };
            let args = super::split_args(&held.wire)?;
            let name = args
                .first()
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
                .unwrap_or_default();
            if !self.txn_open {
                w.begin_txn()?;
                self.txn_open = true;
                self.txn_commands = 0;
            }
            self.forward(&held, &args, &name, w, stats)?;
            self.txn_commands += 1;
            if !self.in_source_txn && self.txn_commands >= self.opts.tuning.batch_size.max(1) {
                self.close_txn(w, stats)?;
            }
        }
        self.bar.say(&format!(
            "cutover sync: an atomic slot migration handed {} slots to {}: {removed} keys of them replaced on the target by the {n} commands of its copy",
            import.slots.len(),
            self.opts.source.addr()
        ));
        Ok(())
    }

    /// Orders a stream command after the ops another link had on its keys, for each key
    /// another link owns (a key or slot moving to this link's master). Before waiting, this
    /// link's own batches are applied and its offset published (another link may wait for
    /// them).
    pub(in crate::sync) fn settle_keys<W: Sink>(
        &mut self,
        args: &[&[u8]],
        name: &str,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let Some(t) = &self.transit else {
            return Ok(());
        };
        let keys = crate::sync::filter::command_keys(name, args);
        let foreign: Vec<&[u8]> = keys
            .iter()
            .filter_map(|i| args.get(*i).copied())
            .filter(|k| !t.is_mine(k))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        if self.txn_open && !self.in_source_txn {
            self.close_txn(w, stats)?;
        }
        if !self.in_source_txn {
            w.drain()?;
            if let Some(off) = w.confirmed_offset() {
                self.progress.applied_offset.store(off, Ordering::Release);
            }
        }
        let Some(mut t) = self.transit.take() else {
            return Ok(());
        };
        let mut r = Ok(());
        for k in foreign {
            r = t.settle(k, &self.stop, self.opts.timeout);
            if r.is_err() {
                break;
            }
        }
        self.transit = Some(t);
        Ok(r?)
    }

    /// A `FLUSHALL`/`FLUSHDB` read by one link of a cluster source: on the source it emptied
    /// that master only, so on the target only the keys this link owns now go (`SCAN` +
    /// `UNLINK`, [`crate::sync::cluster::source::clear_keys`]), after this link's earlier
    /// batches; the other links' keys stay. The position is stored past it at once (a
    /// restart does not clear again keys written after it).
    pub(in crate::sync) fn flush_shard<W: Sink>(
        &mut self,
        cmd: &StreamCommand,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        if self.txn_open && !self.in_source_txn {
            self.close_txn(w, stats)?;
        }
        w.drain()?;
        let Some(t) = &self.transit else {
            return Ok(());
        };
        let (owners, me) = (std::sync::Arc::clone(t.owners()), t.me);
        let removed =
            crate::sync::cluster::source::clear_keys(self.opts, &|k| owners.owner(k) == me)?;
        let label = self
            .opts
            .shard
            .as_ref()
            .map(|s| s.label.clone())
            .unwrap_or_default();
        self.bar.say(&format!(
            "cutover sync: a FLUSHALL/FLUSHDB in the stream of {label} (offset {}): its {removed} keys removed from the target, the other shards' kept",
            cmd.end_offset
        ));
        self.report.commands += 1;
        if !self.in_source_txn {
            self.last_offset = cmd.end_offset;
            batch::queue_set(
                w,
                &batch::format(&self.replid, cmd.end_offset, self.stream_db),
            )?;
            self.stored_offset = cmd.end_offset;
            w.drain()?;
            w.mark_offset(cmd.end_offset);
        }
        Ok(())
    }
}
