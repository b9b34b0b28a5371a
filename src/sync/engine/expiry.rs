//! Is a lone `DEL` on the followed side its own expiry, or a foreign delete?
//!
//! A server propagates the expiry of a key (and its eviction) to its replicas as a `DEL` (or
//! `UNLINK`, with `lazyfree-lazy-expire`) of that one key, outside any transaction. The old
//! side is a primary written by the applying link, so it expires keys on its own and its
//! stream carries such deletes. But `redis-cli DEL key` straight to the old side reaches the
//! stream in exactly the same form. The stream cannot tell them apart; the primary can: an
//! expiry deletes a key whose TTL ran out, and the applying link gave the old side the
//! primary's absolute expiry times, so at that moment the primary either no longer holds
//! the key or holds it with a TTL within the clocks' skew.
//!
//! So after each batch of the followed stream the follower asks the primary (the side it
//! would apply to, on its writer connection, pipelined: one round trip per batch that has
//! lone deletes, nothing otherwise) `PTTL key` in the mapped database:
//!
//! * `-1` (no TTL): the old side's copy had no TTL either (the applying link copies TTLs, and
//!   a `PERSIST` that lost the race is the early-expiry repair's case), so it cannot have
//!   expired there: a **suspect**;
//! * `-2` (absent) or any TTL: possibly its expiry, not counted. A TTL can't tell: a sliding
//!   TTL the primary refreshed after the old side had expired the key (the refresh still on
//!   its way) shows the full new TTL. Such a key, if the primary writes it again, is put back
//!   by the early-expiry repair (`repair.rs`); a foreign delete of a key with a TTL that the
//!   primary never touches again is left to `cutover verify` (a known limit).
//!
//! A suspect is confirmed on the old side before it is counted: the primary may have written
//! the key again after its own expiry (a cache refilled at once), and that new key is what
//! `PTTL` saw. The follower reads the primary's `master_repl_offset`, waits (briefly, bounded)
//! until the applying link's position on the old side reached it, and asks the old side
//! `EXISTS key`: a key the link has written back there is the primary's re-creation (the sides
//! agree), a key still missing is a foreign delete (counted, named, rollback unsafe, like any
//! foreign write). If the old side cannot be asked, the primary's word stands.
//!
//! Evictions are the other source of lone deletes: an evicted key is still on the primary, so
//! it would read as foreign here. When the old side's `evicted_keys` grew at this check or
//! within 10 s of one that saw it grow, its missing keys are taken as evictions: the eviction watcher (`cutover::memory`)
//! counts and reports those, names the cause, and refuses the moves as well.
//!
//! Known limits: a foreign `DEL` of a key the primary writes again before the check (an
//! `INCR`, an `RPUSH`) is missed, since the old side holds the key again (with another value:
//! `cutover verify` finds it); a key the primary deletes between the check and the
//! confirmation reads as a foreign delete.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::Info;
use crate::sync::batch::{POSITION_KEY, Stored};
use crate::sync::handoff::Role;
use crate::sync::target::{TargetWriter, reply_text};

use super::applier::Applier;
use super::foreign::LoneDelete;

/// How long the confirmation waits for the old side to catch up with the primary; a side
/// that did not catch up in that time is not asked (nothing is counted: a miss rather than
/// a false alarm that would make the rollback unsafe).
const CATCH_UP: Duration = Duration::from_millis(500);

/// `PTTL`'s reply says the primary holds the key with no TTL (see the module doc). An error
/// or an unexpected reply says nothing (not a suspect).
pub(super) fn persistent(pttl_reply: &[u8]) -> bool {
    pttl_reply
        .strip_prefix(b":")
        .is_some_and(|rest| String::from_utf8_lossy(rest).trim_end() == "-1")
}

impl Applier<'_> {
    /// Decides the lone deletes the followed stream carried since the last call (see the
    /// module doc); the foreign ones are recorded like any foreign write.
    pub(super) fn check_lone_deletes(&mut self, w: &mut TargetWriter) -> anyhow::Result<()> {
        let dels = self.foreign.take_lone_deletes();
        if dels.is_empty() {
            return Ok(());
        }
        // 1. The primary: which keys does it hold with no TTL?
        let mut by_db: BTreeMap<u64, Vec<LoneDelete>> = BTreeMap::new();
        for d in dels {
            if let Some(to) = self.opts.tuning.filter.map_db(d.db) {
                by_db.entry(to).or_default().push(d);
            }
        }
        let keep_db = w.db();
        let mut suspects = Vec::new();
        for (to, dels) in by_db {
            w.select(to)?;
            let cmds: Vec<Vec<&[u8]>> = dels.iter().map(|d| vec![&b"PTTL"[..], &d.key]).collect();
            let replies = w.call_all(&cmds)?;
            suspects.extend(
                dels.into_iter()
                    .zip(replies)
                    .filter(|(_, r)| persistent(r))
                    .map(|(d, _)| d),
            );
        }
        w.select(keep_db)?;
        if suspects.is_empty() {
            return Ok(());
        }
        // 2. The old side, once the applying link brought it up to the primary's offset now:
        // a key it holds again is the primary's re-creation, not a foreign delete.
        let offset =
            Info::new(reply_text(&w.call(&[b"INFO", b"replication"])?)).master_repl_offset();
        let foreign = match self.still_missing(&suspects, offset) {
            Ok(missing) => missing,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the followed side about deleted keys; the primary's word stands");
                suspects
            }
        };
        if !foreign.is_empty() {
            let n = foreign.len() as u64;
            self.record_foreign(n, foreign.into_iter().map(|d| d.named).collect());
        }
        Ok(())
    }

    /// The suspects the followed side still lacks, once its applying link's position
    /// reached `offset` on the primary; none when it did not within [`CATCH_UP`], or a move
    /// began meanwhile.
    fn still_missing(
        &mut self,
        suspects: &[LoneDelete],
        offset: Option<u64>,
    ) -> anyhow::Result<Vec<LoneDelete>> {
        let deadline = Instant::now() + CATCH_UP;
        let handoff = &self.progress.handoff;
        let (stop, foreign) = (&self.stop, &mut self.foreign);
        // On the link's kept control connection to the followed side (`CLIENT LIST` uses it
        // too).
        let missing = self
            .source_ctl
            .with(&self.opts.source, Duration::from_secs(1), |old| {
                old.call(&[b"SELECT", b"0"])?;
                if let Some(want) = offset {
                    loop {
                        let reply = old.call(&[b"GET", POSITION_KEY])?;
                        let reached = matches!(
                            Stored::parse(&reply_text(&reply)),
                            Stored::At { offset: at, .. } if at >= want
                        );
                        if reached {
                            break;
                        }
                        if Instant::now() >= deadline {
                            tracing::debug!(
                                want,
                                "the followed side did not catch up with the primary in time; its lone deletes are not counted"
                            );
                            return Ok(Vec::new());
                        }
                        if handoff.role() != Role::Following || stop.load(Ordering::Acquire) {
                            // A move began (or the link stops): undecided, not counted.
                            return Ok(Vec::new());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                let evicted = old.info("stats")?.evicted_keys().unwrap_or(0);
                if foreign.evicting(evicted) {
                    tracing::debug!(
                        evicted,
                        "the followed side evicts keys: its lone deletes are taken as evictions (reported by the eviction watcher)"
                    );
                    return Ok(Vec::new());
                }
                let mut missing = Vec::new();
                let mut db = None;
                for d in suspects {
                    if db != Some(d.db) {
                        old.call(&[b"SELECT", d.db.to_string().as_bytes()])?;
                        db = Some(d.db);
                    }
                    if old.call(&[b"EXISTS", &d.key])?.starts_with(b":0") {
                        missing.push(d.clone());
                    }
                }
                Ok(missing)
            })?;
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_key_the_primary_keeps_for_good_is_a_suspect() {
        assert!(persistent(b":-1\r\n"));
        assert!(!persistent(b":3600000\r\n"));
        assert!(!persistent(b":46\r\n"));
        assert!(!persistent(b":0\r\n"));
        assert!(!persistent(b":-2\r\n"));
        assert!(!persistent(b"-ERR wrong\r\n"));
        assert!(!persistent(b"$-1\r\n"));
    }
}
