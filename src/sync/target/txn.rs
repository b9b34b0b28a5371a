//! The writer's transactions: `MULTI`, the commands queued after it, `EXEC`. A command the
//! target refuses while queueing is collected instead of failing the batch, so that the
//! transaction can be sent again without it (the exactly-once batches of `sync::batch` are
//! such transactions).

use super::*;

/// The transaction being queued: `MULTI` sent, `EXEC` not yet.
#[derive(Debug, Default)]
pub(super) struct Txn {
    /// Numbers the writer's transactions (replies of one may still arrive after the next
    /// began, when `EXEC` was sent without waiting for them).
    pub(super) seq: u64,
    /// The database before `MULTI` (the `SELECT`s inside take effect only with `EXEC`).
    pub(super) db_before: u64,
    /// The commands queued since `MULTI`, as sent (for a re-send without refused ones).
    pub(super) wire: Vec<u8>,
    /// Where each command ends in `wire`.
    pub(super) ends: Vec<usize>,
    /// The tags of the commands answered so far, in order.
    pub(super) tags: Vec<Tag>,
    /// Queue-time refusals: (index of the command, error).
    pub(super) refused: Vec<(usize, String)>,
}

impl TargetWriter {
    /// Sends `MULTI` and records what is queued after it, until [`Self::exec_txn`] or
    /// [`Self::discard_txn`]: a command the target refuses while queueing (`-ERR` instead of
    /// `+QUEUED`, after which `EXEC` would apply nothing) is collected instead of failing,
    /// so that the transaction can be sent again without it ([`Self::resend_txn_without`]).
    pub fn begin_txn(&mut self) -> Result<(), TargetError> {
        if self.txn.is_some() {
            return Err(TargetError::Protocol {
                addr: self.addr.clone(),
                detail: "MULTI inside MULTI (a bug in cutover)".into(),
            });
        }
        self.import_source()?;
        self.send(&[&b"MULTI"[..]], Tag::key("MULTI", b""))?;
        self.txn_seq += 1;
        self.txn = Some(Txn {
            seq: self.txn_seq,
            db_before: self.db,
            ..Txn::default()
        });
        Ok(())
    }

    /// True while a transaction is open.
    pub fn in_txn(&self) -> bool {
        self.txn.is_some()
    }

    /// Waits until the target has answered every command queued in the open transaction and
    /// returns those it refused, with their index in the transaction (empty: `EXEC` applies
    /// everything). Nothing sent after `MULTI` has been applied yet, and nothing else is in
    /// flight behind it, so leaving commands out keeps the order of the rest.
    pub fn txn_refused(&mut self) -> Result<Vec<(usize, Refusal)>, TargetError> {
        self.drain()?;
        let Some(txn) = &self.txn else {
            return Ok(Vec::new());
        };
        Ok(txn
            .refused
            .iter()
            .map(|(i, error)| {
                (
                    *i,
                    Refusal {
                        tag: txn.tags.get(*i).cloned().unwrap_or_default(),
                        error: error.clone(),
                    },
                )
            })
            .collect())
    }

    /// Sends `EXEC` for the open transaction: after [`Self::txn_refused`] found nothing, or
    /// at once when no command in it can be refused while queueing (their replies are then
    /// matched to the transaction as they come; a refusal is an error). A
    /// command failing inside it (`WRONGTYPE`…) does not fail the writer: it is kept for
    /// [`Self::take_exec_errors`].
    pub fn exec_txn(&mut self, tag: Tag) -> Result<(), TargetError> {
        let txn = self.txn.take().unwrap_or_default();
        self.execs.push_back((txn.seq, txn.tags));
        self.send(
            &[&b"EXEC"[..]],
            Tag {
                txn_exec: true,
                ..tag
            },
        )
    }

    /// `DISCARD`s the open transaction (if any) and sends it again without the commands at
    /// `drop` (indexes from [`Self::txn_refused`]); the transaction stays open.
    pub fn resend_txn_without(&mut self, drop: &[usize]) -> Result<(), TargetError> {
        // The database the transaction's `SELECT`s lead to (sent again as bytes below).
        let db_after = self.db;
        let Some(txn) = self.discard_txn()? else {
            return Ok(());
        };
        self.begin_txn()?;
        let mut start = 0;
        for (i, end) in txn.ends.iter().enumerate() {
            let wire = &txn.wire[start..*end];
            start = *end;
            if drop.contains(&i) {
                continue;
            }
            let mut tag = txn.tags.get(i).cloned().unwrap_or_default();
            tag.in_txn = false;
            self.send_wire(wire, tag)?;
        }
        self.db = db_after;
        Ok(())
    }

    /// `DISCARD`s the open transaction, if any (its `SELECT`s never took effect: the database
    /// is the one before `MULTI` again).
    fn discard_txn(&mut self) -> Result<Option<Txn>, TargetError> {
        let Some(txn) = self.txn.take() else {
            return Ok(None);
        };
        self.send(&[&b"DISCARD"[..]], Tag::key("DISCARD", b""))?;
        self.db = txn.db_before;
        Ok(Some(txn))
    }

    /// `DISCARD`s the open transaction, if any.
    pub fn discard(&mut self) -> Result<(), TargetError> {
        self.discard_txn().map(|_| ())
    }

    /// Commands that failed inside an `EXEC` since the last call.
    pub fn take_exec_errors(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.exec_errors)
    }

    /// [`Tag::must_change`] commands that changed nothing here (the key was missing) since
    /// the last call.
    pub fn take_unchanged(&mut self) -> Vec<Tag> {
        std::mem::take(&mut self.unchanged)
    }
}
