//! The exactly-once batch protocol: every batch of stream commands goes to the target in one
//! `MULTI … EXEC` together with the replication position it reaches.
//!
//! **The position.** The key [`POSITION_KEY`] (`cutover:position`, in database 0 of the
//! target) holds `"<replid> <offset> <db>"`: the source's replication id, the replication
//! offset up to which the target holds the source's writes (the offset `INFO replication`
//! calls `master_repl_offset`, i.e. the number of stream bytes applied) and the stream's
//! database at that offset (the source's number, before any `db_map`). The database is part
//! of the position because Redis writes `SELECT` only when the stream's database changes, and
//! not again after a partial resync (Redis' own replicas save `repl-stream-db` with their
//! position for the same reason): a resumed stream starts in the middle of a database. An
//! older two-field position (`"<replid> <offset>"`) is still read: its database is unknown,
//! the writer stays in the target URL's database (as before) and says so. Every batch of stream
//! commands is applied inside one `MULTI … EXEC` that also sets the key (with `SELECT 0`
//! before and `SELECT <current db>` after it), so the key and the data always agree: after a
//! crash, `PSYNC <replid> <offset + 1>` continues exactly after the last applied batch.
//!
//! While a snapshot is being loaded the key holds [`LOADING`]: a restart then knows the target
//! holds an incomplete copy and starts over with `FLUSHALL`.
//!
//! The key is never copied from the source (neither from its snapshot nor from its stream).
//!
//! **The batches** (`Applier::apply_batch`): the commands of one read from the link are cut
//! into transactions of at most `batch_size` commands; a transaction of the source becomes
//! exactly one of ours (never nested, never split: ours is closed before its `MULTI`). Closing
//! a batch (`Applier::close_txn`) queues the position and sends `EXEC`. A batch holding a
//! command the target might refuse while queueing waits for every `+QUEUED` first; a command
//! answered with `-ERR` is reported, the batch is `DISCARD`ed and sent again without it
//! (the target writer keeps the batch's commands for that: `TargetWriter::begin_txn`,
//! `txn_refused`, `resend_txn_without`, `exec_txn` in [`super::target`]). Nothing behind a
//! batch is sent before its `EXEC`, so order and exactly-once hold. Errors inside `EXEC`'s
//! array are mapped back to their commands and reported (`Applier::report_exec_errors`).
//!
//! **The barrier.** When the cutover asks the engine to stop at an offset, no command past it
//! is queued (a link of a replica overlap keeps them for what it does next).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::convert::Stats;
use super::engine::{Applier, Msg, split_args};
use super::replica::StreamCommand;
use super::target::{Sink, Tag, TargetError, TargetWriter, reply_text, show_key};
use crate::config::RedisUrl;

/// The key that holds the position (database 0 of the target).
pub const POSITION_KEY: &[u8] = b"cutover:position";

/// Set in database 0 of the target by the first `cutover switch` (`"<unix ms> <offset>"`):
/// the target has been the primary since, so a new `cutover run` must not sync into it again
/// (it would route clients back to the source and apply the shadowed writes a second time).
pub const SWITCHED_KEY: &[u8] = b"cutover:switched";

/// cutover's own bookkeeping keys (database 0): never copied from a source, never compared.
pub fn is_own_key(db: u64, key: &[u8]) -> bool {
    db == 0 && (key == POSITION_KEY || key == SWITCHED_KEY || key.starts_with(POSITION_PREFIX))
}

/// The prefix of the positions of a cluster target or of a cluster source's links
/// (`cutover:position:{<tag>}:<link>`, `cutover:position:<link>`, see [`crate::sync::cluster`]).
pub const POSITION_PREFIX: &[u8] = b"cutover:position:";
/// The key's value while a snapshot is loading.
pub const LOADING: &str = "snapshot-loading";

/// What the target says about an earlier sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No position: the target was never synced into (by this tool).
    None,
    /// An earlier sync stopped here; `db` is the stream's database there (`None`: a
    /// position written before the database was recorded).
    At {
        replid: String,
        offset: u64,
        db: Option<u64>,
    },
    /// An earlier sync left something that cannot be resumed (a snapshot that did not finish).
    Unusable(String),
}

impl Stored {
    pub fn parse(value: &str) -> Stored {
        let mut parts = value.split_whitespace();
        let (id, off, db, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(id), Some(off), None) = (id, off, rest) else {
            return Stored::Unusable(value.to_string());
        };
        let db = match db.map(str::parse::<u64>) {
            None => None,
            Some(Ok(db)) => Some(db),
            Some(Err(_)) => return Stored::Unusable(value.to_string()),
        };
        match off.parse() {
            Ok(offset) if id.len() == 40 => Stored::At {
                replid: id.to_string(),
                offset,
                db,
            },
            _ => Stored::Unusable(value.to_string()),
        }
    }
}

/// The value stored for a position: the stream `replid` applied up to `offset`, where the
/// stream's database is `db` (the source's number).
pub fn format(replid: &str, offset: u64, db: u64) -> String {
    format!("{replid} {offset} {db}")
}

/// Reads the stored position (the writer's database is kept).
pub fn read<W: Sink>(w: &mut W) -> Result<Stored, TargetError> {
    w.read_position()
}

/// [`read`] on one server.
pub(in crate::sync) fn read_standalone(w: &mut TargetWriter) -> Result<Stored, TargetError> {
    read_key(w, POSITION_KEY)
}

/// The position stored in `key` (database 0).
pub(in crate::sync) fn read_key(w: &mut TargetWriter, key: &[u8]) -> Result<Stored, TargetError> {
    let db = w.db().to_string();
    w.call(&[b"SELECT", b"0"])?;
    let reply = w.call(&[b"GET", key])?;
    w.call(&[b"SELECT", db.as_bytes()])?;
    if reply.starts_with(b"$-1") || reply.starts_with(b"_") {
        return Ok(Stored::None);
    }
    if reply.first() != Some(&b'$') {
        return Ok(Stored::Unusable(reply_text(&reply)));
    }
    Ok(Stored::parse(&reply_text(&reply)))
}

/// Queues `SET <position key> <value>` in database 0 (the writer's database is restored after
/// it): inside a `MULTI` these are part of the transaction.
pub fn queue_set<W: Sink>(w: &mut W, value: &str) -> Result<(), TargetError> {
    w.store_position(value)
}

/// [`queue_set`] on one server.
pub(in crate::sync) fn queue_set_standalone(
    w: &mut TargetWriter,
    value: &str,
) -> Result<(), TargetError> {
    queue_set_key(w, POSITION_KEY, value)
}

/// Queues `SET key value` in database 0 (the writer's database is restored after it).
pub(in crate::sync) fn queue_set_key(
    w: &mut TargetWriter,
    key: &[u8],
    value: &str,
) -> Result<(), TargetError> {
    let db = w.db();
    w.select(0)?;
    w.send(
        &[&b"SET"[..], key, value.as_bytes()],
        super::target::Tag::key("SET", key),
    )?;
    w.select(db)
}

/// Queues `DEL <position key>` in database 0.
pub fn queue_del<W: Sink>(w: &mut W) -> Result<(), TargetError> {
    w.del_position()
}

/// [`queue_del`] on one server.
pub(in crate::sync) fn queue_del_standalone(w: &mut TargetWriter) -> Result<(), TargetError> {
    queue_del_key(w, POSITION_KEY)
}

/// Queues `DEL key` in database 0.
pub(in crate::sync) fn queue_del_key(w: &mut TargetWriter, key: &[u8]) -> Result<(), TargetError> {
    let db = w.db();
    w.select(0)?;
    w.send(&[&b"DEL"[..], key], super::target::Tag::key("DEL", key))?;
    w.select(db)
}

/// The value of [`SWITCHED_KEY`] on the target, when an earlier `cutover run` switched to it
/// (`Ok(None)`: it did not). A new sync into such a target would apply writes a second time
/// (the source's stream holds the writes shadowed to it), and a new proxy would send the
/// clients back to the source.
pub fn switched_marker(
    target: &RedisUrl,
    timeout: Duration,
) -> Result<Option<String>, TargetError> {
    let mut db0 = target.clone();
    db0.db = 0;
    let raw = crate::client::BlockingClient::open_url(&db0, timeout)
        .and_then(|mut c| c.call_raw(&[b"GET", SWITCHED_KEY]))?;
    Ok(raw
        .strip_prefix(b"$")
        .filter(|r| !r.starts_with(b"-"))
        .and_then(|r| {
            let nl = r.iter().position(|b| *b == b'\n')?;
            Some(
                String::from_utf8_lossy(r.get(nl + 1..)?)
                    .trim_end()
                    .to_string(),
            )
        }))
}

impl Applier<'_> {
    /// Applies the commands of one read from the link: in transactions that also store the
    /// position (a source transaction becomes one of them; ours are closed before it).
    pub(in crate::sync) fn apply_batch<W: Sink>(
        &mut self,
        cmds: Vec<StreamCommand>,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        // (The role's one load of this batch: the barrier's offset, if one is asked.)
        let role = self.progress.handoff.role();
        let limit = role.stop_at();
        if let Some(d) = self.transit.as_ref().and_then(|t| t.test_delay) {
            std::thread::sleep(d);
        }
        let mut cmds = cmds.into_iter();
        while let Some(cmd) = cmds.next() {
            if let Some(limit) = limit
                && self.last_offset >= limit
                && !self.in_source_txn
            {
                // The cutover barrier's offset is reached: what follows (the shadow writes of
                // the proxy, after the flip) must never reach the target. A link of a replica
                // overlap keeps it for what it does next (apply it after an aborted move, or
                // skip it as the follower).
                if !role.is_solo() {
                    let mut rest = vec![cmd];
                    rest.extend(cmds);
                    self.held_back = Some(Msg::Commands(rest, Instant::now()));
                }
                break;
            }
            // A key copied from the primary at an offset the stream has now reached goes
            // here, before the first command past that offset (`engine::repair`).
            if self
                .repairs
                .next_offset()
                .is_some_and(|o| o <= self.last_offset)
                && !self.in_source_txn
            {
                self.place_ready(w, false)?;
            }
            let args = split_args(&cmd.wire).with_context(|| {
                format!(
                    "unreadable command in the replication stream before offset {}",
                    cmd.end_offset
                )
            })?;
            let name = args
                .first()
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
                .unwrap_or_default();
            match name.as_str() {
                "MULTI" => {
                    if self.in_source_txn {
                        bail!(
                            "MULTI inside MULTI in the replication stream before offset {}",
                            cmd.end_offset
                        );
                    }
                    if self.txn_open {
                        self.close_txn(w, stats)?;
                    }
                    w.begin_txn()?;
                    self.txn_open = true;
                    self.in_source_txn = true;
                    self.txn_commands = 0;
                }
                "EXEC" if self.in_source_txn => {
                    self.last_offset = cmd.end_offset;
                    self.close_txn(w, stats)?;
                    self.in_source_txn = false;
                }
                // A command that writes nothing (the master's `PING`, the `REPLCONF GETACK`
                // of a client's `WAIT`, a `PUBLISH`) between batches: its bytes are applied
                // without a transaction, confirmed with whatever is in flight (the stored
                // position stays at the last batch; a restart reads such bytes again and
                // skips them again).
                "PING" | "REPLCONF" | "PUBLISH" | "SPUBLISH" if !self.txn_open => {
                    self.report.commands_skipped += 1;
                    w.mark_offset(cmd.end_offset);
                }
                "EXEC" | "DISCARD" => {
                    tracing::warn!(
                        offset = cmd.end_offset,
                        "{name} outside a transaction in the replication stream: ignored"
                    );
                    self.report.commands_skipped += 1;
                    if !self.txn_open {
                        w.mark_offset(cmd.end_offset);
                    }
                }
                _ => {
                    if name == "SELECT"
                        && let Some(db) = args
                            .get(1)
                            .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
                    {
                        // The stream's database (the source's number), stored with the position.
                        self.stream_db = db;
                    }
                    // A link of a cluster source: keys moving between the source's shards
                    // (`engine::transit`).
                    if self.transit.is_some() && self.transit_route(&cmd, &args, &name, w, stats)? {
                        self.last_offset = cmd.end_offset;
                        if !self.txn_open {
                            w.mark_offset(cmd.end_offset);
                        }
                        continue;
                    }
                    if !self.txn_open {
                        w.begin_txn()?;
                        self.txn_open = true;
                        self.txn_commands = 0;
                    }
                    self.forward(&cmd, &args, &name, w, stats)?;
                    self.txn_commands += 1;
                }
            }
            self.last_offset = cmd.end_offset;
            if self.txn_open
                && !self.in_source_txn
                && self.txn_commands >= self.opts.tuning.batch_size.max(1)
            {
                self.close_txn(w, stats)?;
            }
        }
        if self.txn_open && !self.in_source_txn {
            self.close_txn(w, stats)?;
        }
        Ok(())
    }

    /// Stores the position reached and sends `EXEC` — at once, or, when the batch holds a
    /// command the target might refuse while queueing ([`Applier::check_queueable`]), once
    /// the target has queued every command of the transaction. A stream command it refuses while queueing (an argument
    /// or a command it does not know: `-ERR` instead of `+QUEUED`, and `EXEC` would then
    /// apply nothing) is reported and left out, and the transaction is sent again without it,
    /// together with the position: the rest applies exactly once, in order (nothing behind
    /// the transaction is sent before its `EXEC`).
    pub(in crate::sync) fn close_txn<W: Sink>(
        &mut self,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        queue_set(w, &format(&self.replid, self.last_offset, self.stream_db))?;
        self.stored_offset = self.last_offset;
        // Only a command the target does not know, or one with an argument count outside
        // its arity, is refused while queueing (target-wide refusals such as OOM or READONLY
        // hit the position write of every batch alike). Without such a command the `EXEC`
        // follows at once and batches stay pipelined.
        let uncertain = std::mem::take(&mut self.txn_uncertain);
        if uncertain {
            loop {
                let refused = w.txn_refused()?;
                if refused.is_empty() {
                    break;
                }
                let mut drop = Vec::with_capacity(refused.len());
                for (i, r) in refused {
                    if !r.tag.replicated || !r.is_command_error() {
                        // Our own command, or the target refuses writes as a whole (OOM,
                        // NOPERM, READONLY…): stop; the position stored is still the last one
                        // applied.
                        bail!(TargetError::Refused {
                            addr: w.addr().to_string(),
                            step: describe_tag(&r.tag),
                            reply: r.error,
                        });
                    }
                    let text = format!(
                        "{}: {} refused it ({}); left out, the rest of the stream is applied",
                        describe_tag(&r.tag),
                        self.info.describe(),
                        r.error
                    );
                    self.not_applied(stats, unapplied(&r), text)?;
                    self.report.commands = self.report.commands.saturating_sub(1);
                    self.report.commands_skipped += 1;
                    drop.push(i);
                }
                w.resend_txn_without(&drop)?;
            }
        }
        w.exec_txn(Tag {
            what: "EXEC".into(),
            offset: Some(self.last_offset),
            source_txn: self.in_source_txn,
            ..Tag::default()
        })?;
        self.txn_open = false;
        self.txn_commands = 0;
        Ok(())
    }

    /// Reports the stream commands that failed inside an `EXEC` (`WRONGTYPE`…: the target's
    /// data differs from the source's, or a `RESTORE` payload it cannot read). A replica of
    /// Redis ignores such errors too; the rest of the transaction was applied, so the sync
    /// goes on (under `unsupported = fail` it stops).
    pub(in crate::sync) fn report_exec_errors<W: Sink>(
        &mut self,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let split = w.take_non_atomic();
        if split > 0 {
            self.progress
                .non_atomic_txns
                .fetch_add(split, std::sync::atomic::Ordering::Relaxed);
        }
        self.note_lost(w);
        for r in w.take_exec_errors() {
            if r.tag.repair {
                // A copy from the primary this side refused: the key stays different.
                self.progress.refusals.unrepaired(
                    r.tag.stream_db,
                    &r.tag.key,
                    &format!("{} refused the copy: {}", self.info.describe(), r.error),
                );
                continue;
            }
            if !r.tag.replicated {
                bail!(TargetError::Refused {
                    addr: w.addr().to_string(),
                    step: format!("{} (inside a transaction)", describe_tag(&r.tag)),
                    reply: r.error,
                });
            }
            let text = format!(
                "{}: failed on {} ({}); not applied, the rest of the stream is",
                describe_tag(&r.tag),
                self.info.describe(),
                r.error
            );
            self.not_applied(stats, unapplied(&r), text)?;
        }
        Ok(())
    }
}

/// The record of a refused stream command ([`super::refusals`]).
fn unapplied(r: &super::target::Refusal) -> super::refusals::Unapplied {
    super::refusals::Unapplied {
        command: r.tag.what.to_string(),
        key: show_key(&r.tag.key),
        reason: r.error.clone(),
    }
}

fn describe_tag(tag: &Tag) -> String {
    if tag.key.is_empty() {
        tag.what.to_string()
    } else {
        format!("{} on key '{}'", tag.what, show_key(&tag.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let id = "a".repeat(40);
        assert_eq!(
            Stored::parse(&format(&id, 77, 9)),
            Stored::At {
                replid: id.clone(),
                offset: 77,
                db: Some(9)
            }
        );
        // A position stored before the database was recorded.
        assert_eq!(
            Stored::parse(&format!("{id} 77")),
            Stored::At {
                replid: id.clone(),
                offset: 77,
                db: None
            }
        );
        assert!(matches!(
            Stored::parse(&format!("{id} 77 x")),
            Stored::Unusable(_)
        ));
        assert!(matches!(
            Stored::parse(&format!("{id} 77 1 2")),
            Stored::Unusable(_)
        ));
        assert!(matches!(Stored::parse(LOADING), Stored::Unusable(_)));
        assert!(matches!(
            Stored::parse(&format!("{id} x")),
            Stored::Unusable(_)
        ));
    }
}
