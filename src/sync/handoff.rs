//! The applying role of a link, and how the cutover hands it from one link to the other.
//!
//! During the overlap of a migration (between the first `cutover switch` and `cutover
//! finish`) two engines run, each a replica of one side:
//!
//! * the **forward** link is a replica of the source and writes into the target;
//! * the **reverse** link is a replica of the target and writes into the source.
//!
//! Both stay connected all the time, but exactly one *applies*: the one reading the current
//! primary. The other one *follows*: it reads its server's stream, acknowledges it and
//! tracks its offset (and the stream's database), but writes nothing. What it skips is what
//! the applying link wrote into its server (the other side has it already), so no write ever
//! loops back.
//!
//! A move hands the role over at exact offsets, while the proxy holds every client command
//! (the cutover barrier, [`crate::cutover`]):
//!
//! 1. the applying link applies up to its primary's `master_repl_offset` and parks there
//!    ([`super::engine::SyncProgress::request_stop_at`]);
//! 2. the following link is held ([`Handoff::hold`]): it takes nothing more from its stream
//!    until told where to start, so it cannot skip a byte that it will have to apply;
//! 3. the new primary's `master_repl_offset` is read, and the following link is told to apply
//!    everything after it ([`Handoff::apply_from`]); it skips what comes before and switches
//!    to applying exactly there, storing that position on its side at once;
//! 4. the parked link becomes the follower ([`Handoff::follow`]).
//!
//! Past the move's deadline every step is undone ([`Handoff::abort_apply`],
//! [`super::engine::SyncProgress::cancel_stop`]); nothing has been applied by then that the
//! old primary does not have.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The role of one link and the handoff requests of the cutover controller (shared between
/// the controller and the engine's applier thread).
#[derive(Debug, Default)]
pub struct Handoff {
    /// This engine is one of the two links of a replica overlap: at the barrier's offset it
    /// parks (and may become the follower) instead of returning.
    overlap: AtomicBool,
    /// The link reads without applying.
    following: AtomicBool,
    /// The controller asks the follower to take nothing more from its stream.
    hold: AtomicBool,
    /// The follower has seen [`Self::hold`] and takes nothing more.
    held: AtomicBool,
    /// The follower applies every command from this offset on (offset + 1; 0: not asked).
    apply_from: AtomicU64,
    /// The replication id [`Self::apply_from`]'s offset belongs to.
    apply_replid: Mutex<String>,
    /// Why the follower could not start applying where it was asked to.
    refused: Mutex<Option<String>>,
    /// Where a follower stands (replication id, offset of the last byte read, the stream's
    /// database there): a new run of its engine continues from there.
    position: Mutex<Option<(String, u64, u64)>>,
}

impl Handoff {
    /// Marks the engine as a link of a replica overlap, applying or following.
    pub fn init_overlap(&self, following: bool) {
        self.overlap.store(true, Ordering::Release);
        self.following.store(following, Ordering::Release);
    }

    /// The engine is a plain sync again (a shadow overlap was chosen): at the barrier's
    /// offset it returns, and it applies whatever it reads.
    pub fn end_overlap(&self) {
        self.overlap.store(false, Ordering::Release);
        self.following.store(false, Ordering::Release);
    }

    pub fn is_overlap(&self) -> bool {
        self.overlap.load(Ordering::Acquire)
    }

    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// The applying link parked at the barrier becomes the follower.
    pub fn follow(&self) {
        self.following.store(true, Ordering::Release);
    }

    /// Step 2 of a move: the follower stops taking commands from its stream.
    pub fn hold(&self) {
        self.hold.store(true, Ordering::Release);
    }

    /// Whether the follower has stopped taking commands (after [`Self::hold`]).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Step 3: apply from `offset` of the stream `replid` on; releases the hold.
    pub fn apply_from(&self, replid: &str, offset: u64) {
        if let Ok(mut r) = self.refused.lock() {
            *r = None;
        }
        if let Ok(mut id) = self.apply_replid.lock() {
            *id = replid.to_string();
        }
        self.apply_from
            .store(offset.saturating_add(1), Ordering::Release);
        self.hold.store(false, Ordering::Release);
    }

    /// Undoes [`Self::hold`] and [`Self::apply_from`] (the move was aborted). A link that
    /// already started applying follows again: nothing reached its new primary yet (the
    /// clients are held), so it has applied nothing the old side lacks.
    pub fn abort_apply(&self) {
        self.apply_from.store(0, Ordering::Release);
        self.hold.store(false, Ordering::Release);
        if self.is_overlap() {
            self.following.store(true, Ordering::Release);
        }
    }

    /// Why the last [`Self::apply_from`] could not be honoured, if it could not.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    // --- the engine's side ---

    pub(crate) fn hold_requested(&self) -> bool {
        self.hold.load(Ordering::Acquire)
    }

    pub(crate) fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Release);
    }

    /// The pending [`Self::apply_from`] request: (replication id, offset).
    pub(crate) fn apply_request(&self) -> Option<(String, u64)> {
        match self.apply_from.load(Ordering::Acquire) {
            0 => None,
            n => Some((
                self.apply_replid
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_default(),
                n - 1,
            )),
        }
    }

    /// The follower started applying (the request is done).
    pub(crate) fn started_applying(&self) {
        self.following.store(false, Ordering::Release);
        self.apply_from.store(0, Ordering::Release);
    }

    /// The follower cannot start applying where it was asked to (the move is aborted by the
    /// controller, which sees this).
    pub(crate) fn refuse(&self, why: String) {
        tracing::error!("the link cannot take over applying: {why}");
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(why);
        }
        self.apply_from.store(0, Ordering::Release);
    }

    pub(crate) fn set_position(&self, replid: &str, offset: u64, db: u64) {
        if let Ok(mut p) = self.position.lock() {
            match p.as_mut() {
                Some((id, off, d)) if id == replid => {
                    *off = offset;
                    *d = db;
                }
                _ => *p = Some((replid.to_string(), offset, db)),
            }
        }
    }

    /// Where a follower stands (replication id, offset, the stream's database), for a new run
    /// of its engine.
    pub(crate) fn position(&self) -> Option<(String, u64, u64)> {
        self.position.lock().ok().and_then(|p| p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_request_is_undone_by_an_abort() {
        let h = Handoff::default();
        h.init_overlap(true);
        h.hold();
        assert!(h.hold_requested());
        h.apply_from("r", 10);
        assert!(!h.hold_requested(), "apply_from releases the hold");
        assert_eq!(h.apply_request(), Some(("r".to_string(), 10)));
        h.started_applying();
        assert!(!h.is_following());
        assert_eq!(h.apply_request(), None);
        h.abort_apply();
        assert!(
            h.is_following(),
            "an aborted move leaves the link following"
        );
    }

    #[test]
    fn apply_from_offset_zero_is_a_request() {
        let h = Handoff::default();
        h.apply_from("r", 0);
        assert_eq!(h.apply_request(), Some(("r".to_string(), 0)));
        h.refuse("x".into());
        assert_eq!(h.apply_request(), None);
        assert_eq!(h.refused().as_deref(), Some("x"));
    }
}
