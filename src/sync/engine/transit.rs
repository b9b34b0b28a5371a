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
