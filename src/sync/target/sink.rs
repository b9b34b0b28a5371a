//! What the applier and the converter write into: a [`Sink`].
//!
//! The one standalone server ([`TargetWriter`]) and a Redis Cluster
//! ([`crate::sync::cluster::ClusterSink`]) take the same calls: commands with their [`Tag`]s,
//! transactions (`begin_txn` … `exec_txn`), the replication position (`store_position`,
//! `read_position`), and the confirmed offset. The engine is generic over it, so the
//! standalone path is the same machine code as before (no dynamic call per command).

use super::{Refusal, Tag, TargetError, TargetInfo, TargetWriter};
use crate::sync::batch::{self, Stored};

/// A target the sync engine writes into (see the module doc).
pub trait Sink {
    /// What the target is (version, newest RDB version its `RESTORE` takes).
    fn info(&self) -> &TargetInfo;
    /// The target's address, for messages.
    fn addr(&self) -> &str;
    /// The database later commands go to.
    fn db(&self) -> u64;
    /// Records a database change made by a command the caller sent itself.
    fn set_db(&mut self, db: u64);
    /// How many databases the target has, when it says.
    fn databases(&self) -> Option<u64>;
    /// Refuses a database the target does not have.
    fn check_db(&self, db: u64) -> Result<(), TargetError>;
    /// Selects `db` for what follows.
    fn select(&mut self, db: u64) -> Result<(), TargetError>;
    /// Queues a command.
    fn send<A: AsRef<[u8]>>(&mut self, args: &[A], tag: Tag) -> Result<(), TargetError>;
    /// Queues a command already in RESP form.
    fn send_wire(&mut self, wire: &[u8], tag: Tag) -> Result<(), TargetError>;
    /// Everything up to `offset` needs no command: confirmed with what is in flight.
    fn mark_offset(&mut self, offset: u64);
    /// The replication offset the target has confirmed.
    fn confirmed_offset(&self) -> Option<u64>;
    /// Commands not answered yet.
    fn in_flight(&self) -> usize;
    /// Reads what has been answered (a cluster may apply what is queued).
    fn poll(&mut self) -> Result<(), TargetError>;
    /// Sends everything and waits for every answer.
    fn drain(&mut self) -> Result<(), TargetError>;
    /// Opens a transaction.
    fn begin_txn(&mut self) -> Result<(), TargetError>;
    /// The commands of the open transaction refused while queueing.
    fn txn_refused(&mut self) -> Result<Vec<(usize, Refusal)>, TargetError>;
    /// Closes the open transaction (`EXEC`); `tag.offset` is the position it reaches.
    fn exec_txn(&mut self, tag: Tag) -> Result<(), TargetError>;
    /// Sends the open transaction again without the commands at `drop`.
    fn resend_txn_without(&mut self, drop: &[usize]) -> Result<(), TargetError>;
    /// Discards the open transaction, if any.
    fn discard(&mut self) -> Result<(), TargetError>;
    /// Commands that failed inside an `EXEC` since the last call.
    fn take_exec_errors(&mut self) -> Vec<Refusal>;
    /// `must_change` commands that changed nothing since the last call.
    fn take_unchanged(&mut self) -> Vec<Tag>;
    /// Source transactions applied as several transactions (a cluster target whose slots
    /// they span) since the last call.
    fn take_non_atomic(&mut self) -> u64 {
        0
    }
    /// Tags what follows as a copy of a key from the primary (`sync::engine::repair`), in
    /// the stream's database `db`, until called with `None`. A sink that can't say which
    /// command a refusal was for treats a refused copy as any refused stream command.
    fn set_repair_tags(&mut self, _db: Option<u64>) {}
    /// The one standalone server, for what only exists there: a following link's checks of
    /// the side it follows (`cutover run`, whose sides are single servers).
    fn standalone(&mut self) -> Option<&mut TargetWriter> {
        None
    }
    /// The position an earlier sync stored ([`batch`]).
    fn read_position(&mut self) -> Result<Stored, TargetError>;
    /// Queues the write of the position (inside a transaction: part of it).
    fn store_position(&mut self, value: &str) -> Result<(), TargetError>;
    /// Queues the removal of the position.
    fn del_position(&mut self) -> Result<(), TargetError>;
}

impl Sink for TargetWriter {
    fn info(&self) -> &TargetInfo {
        TargetWriter::info(self)
    }
    fn addr(&self) -> &str {
        TargetWriter::addr(self)
    }
    fn db(&self) -> u64 {
        TargetWriter::db(self)
    }
    fn set_db(&mut self, db: u64) {
        TargetWriter::set_db(self, db)
    }
    fn databases(&self) -> Option<u64> {
        TargetWriter::databases(self)
    }
    fn check_db(&self, db: u64) -> Result<(), TargetError> {
        TargetWriter::check_db(self, db)
    }
    fn select(&mut self, db: u64) -> Result<(), TargetError> {
        TargetWriter::select(self, db)
    }
    #[inline]
    fn send<A: AsRef<[u8]>>(&mut self, args: &[A], tag: Tag) -> Result<(), TargetError> {
        TargetWriter::send(self, args, tag)
    }
    #[inline]
    fn send_wire(&mut self, wire: &[u8], tag: Tag) -> Result<(), TargetError> {
        TargetWriter::send_wire(self, wire, tag)
    }
    fn mark_offset(&mut self, offset: u64) {
        TargetWriter::mark_offset(self, offset)
    }
    fn confirmed_offset(&self) -> Option<u64> {
        TargetWriter::confirmed_offset(self)
    }
    fn in_flight(&self) -> usize {
        TargetWriter::in_flight(self)
    }
    fn poll(&mut self) -> Result<(), TargetError> {
        TargetWriter::poll(self)
    }
    fn drain(&mut self) -> Result<(), TargetError> {
        TargetWriter::drain(self)
    }
    fn begin_txn(&mut self) -> Result<(), TargetError> {
        TargetWriter::begin_txn(self)
    }
    fn txn_refused(&mut self) -> Result<Vec<(usize, Refusal)>, TargetError> {
        TargetWriter::txn_refused(self)
    }
    fn exec_txn(&mut self, tag: Tag) -> Result<(), TargetError> {
        TargetWriter::exec_txn(self, tag)
    }
    fn resend_txn_without(&mut self, drop: &[usize]) -> Result<(), TargetError> {
        TargetWriter::resend_txn_without(self, drop)
    }
    fn discard(&mut self) -> Result<(), TargetError> {
        TargetWriter::discard(self)
    }
    fn take_exec_errors(&mut self) -> Vec<Refusal> {
        TargetWriter::take_exec_errors(self)
    }
    fn take_unchanged(&mut self) -> Vec<Tag> {
        TargetWriter::take_unchanged(self)
    }
    fn set_repair_tags(&mut self, db: Option<u64>) {
        TargetWriter::set_repair_tags(self, db)
    }
    fn standalone(&mut self) -> Option<&mut TargetWriter> {
        Some(self)
    }
    fn read_position(&mut self) -> Result<Stored, TargetError> {
        batch::read_standalone(self)
    }
    fn store_position(&mut self, value: &str) -> Result<(), TargetError> {
        batch::queue_set_standalone(self, value)
    }
    fn del_position(&mut self) -> Result<(), TargetError> {
        batch::queue_del_standalone(self)
    }
}
