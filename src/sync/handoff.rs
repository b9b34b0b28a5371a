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
//!
//! **The role is one value** ([`Role`], one atomic), changed only by compare-and-swap, so
//! that when the controller and the engine race, exactly one wins and the loser sees it:
//!
//! ```text
//!              hold (C)          engine sees it (E)       apply_from (C)
//!  Following ───────────► Holding ───────────────► Held ─────────────────► Requested
//!      ▲  ▲                  │                       │                        │ │
//!      │  └──── abort (C) ───┴───────────────────────┴──── abort (C) ─────────┘ │ refuse (E)
//!      │                                                                        │ ─► Following
//!      │ follow (C: commit)                   started_applying (E) ◄────────────┘
//!  Parked ◄──── park at the barrier (E) ──── Applying ◄──────────────────────────
//!      └──────── unpark (C: abort, or E: the stop was withdrawn) ───► Applying
//!  any ──── stop (C: finish) ───► Stopped (final)
//! ```
//!
//! (C: the controller, E: the engine.) The race the flags of old lost: the controller's
//! deadline passes while the follower is inside [`Handoff::started_applying`]'s round trip.
//! Now the controller's abort is a CAS from `Holding`/`Held`/`Requested` to `Following`, the
//! engine's take-over a CAS from `Requested` to `Applying`: if the engine won, the abort sees
//! `Applying` ([`Abort::TookOver`]) and the controller commits the move instead; if the
//! controller won, the engine's CAS fails and it follows on (what it wrote meanwhile is its
//! own position key, never copied). A parked link is released only by the controller's
//! decision (commit: `Following`, abort: `Applying`), so two links never apply at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// The role of one link (see the module doc for who moves it where).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Reads its stream without applying.
    Following = 0,
    /// The controller asked the follower to take nothing more from its stream.
    Holding = 1,
    /// The follower saw [`Role::Holding`] and takes nothing more.
    Held = 2,
    /// The controller asked the follower to apply from an offset ([`Handoff::apply_request`]).
    Requested = 3,
    /// Writes what it reads.
    Applying = 4,
    /// The applying link stopped at the barrier's offset and waits for the controller.
    Parked = 5,
    /// `finish`: the link writes nothing more, whatever it was.
    Stopped = 6,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            0 => Role::Following,
            1 => Role::Holding,
            2 => Role::Held,
            3 => Role::Requested,
            4 => Role::Applying,
            5 => Role::Parked,
            _ => Role::Stopped,
        }
    }

    /// The link reads without writing (also while held or asked to take over).
    pub fn follows(self) -> bool {
        matches!(
            self,
            Role::Following | Role::Holding | Role::Held | Role::Requested
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Following => "following",
            Role::Holding => "holding",
            Role::Held => "held",
            Role::Requested => "requested",
            Role::Applying => "applying",
            Role::Parked => "parked",
            Role::Stopped => "stopped",
        }
    }
}

/// What [`Handoff::abort_apply`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// The link follows (again): the move is undone.
    Undone,
    /// The engine had already taken over (it applies): the controller must commit the move.
    TookOver,
    /// The link was stopped (`finish`).
    Stopped,
}

/// The role of one link and the handoff requests of the cutover controller (shared between
/// the controller and the engine's applier thread).
#[derive(Debug, Default)]
pub struct Handoff {
    /// This engine is one of the two links of a replica overlap: at the barrier's offset it
    /// parks (and may become the follower) instead of returning. (Set when the links are
    /// set up, before either side races on [`Self::role`].)
    overlap: AtomicBool,
    /// The [`Role`], changed only by compare-and-swap.
    role: AtomicU8,
    /// The follower applies every command from this offset on (written before the CAS to
    /// [`Role::Requested`], read after seeing it).
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
    /// The current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// One transition: `from` → `to`, only if the role is still `from`. `Err` with the role
    /// found otherwise.
    fn cas(&self, from: Role, to: Role) -> Result<(), Role> {
        self.role
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Role::from_u8)
    }

    /// Marks the engine as a link of a replica overlap, applying or following.
    pub fn init_overlap(&self, following: bool) {
        self.overlap.store(true, Ordering::Release);
        let role = if following {
            Role::Following
        } else {
            Role::Applying
        };
        self.role.store(role as u8, Ordering::Release);
    }

    /// The engine is a plain sync again (a shadow overlap was chosen, before anything was
    /// handed over): at the barrier's offset it returns, and it applies whatever it reads.
    pub fn end_overlap(&self) {
        self.overlap.store(false, Ordering::Release);
        self.role.store(Role::Applying as u8, Ordering::Release);
    }

    pub fn is_overlap(&self) -> bool {
        self.overlap.load(Ordering::Acquire)
    }

    /// The link writes nothing now (following, held, asked to take over, or stopped after
    /// following). A plain sync (no overlap) always applies.
    pub fn is_following(&self) -> bool {
        self.is_overlap() && self.role().follows()
    }

    /// The link writes to its side now: a plain sync always does (its own stop is the shadow
    /// overlap's `SyncProgress::stopped`, not a role); a link of a replica overlap only while
    /// [`Role::Applying`] (not parked, following, holding, asked to take over, or stopped).
    pub fn applies(&self) -> bool {
        !self.is_overlap() || self.role() == Role::Applying
    }

    /// The applying link of a replica overlap waits at the barrier's offset (what the
    /// controller waits for in step 2 of a move).
    pub fn is_parked(&self) -> bool {
        self.is_overlap() && self.role() == Role::Parked
    }

    /// Step 5 of a move (commit): the applying link parked at the barrier becomes the
    /// follower. `Err` with the role found if it is not parked.
    pub fn follow(&self) -> Result<(), Role> {
        self.cas(Role::Parked, Role::Following)
    }

    /// The move was aborted: the parked link applies on (`Err`: it was not parked — it never
    /// reached the barrier, or already unparked itself).
    pub fn unpark(&self) -> Result<(), Role> {
        self.cas(Role::Parked, Role::Applying)
    }

    /// Step 2 of a move: the follower stops taking commands from its stream.
    pub fn hold(&self) -> Result<(), Role> {
        self.cas(Role::Following, Role::Holding)
    }

    /// Whether the follower has stopped taking commands (after [`Self::hold`]).
    pub fn is_held(&self) -> bool {
        self.role() == Role::Held
    }

    /// Step 3: apply from `offset` of the stream `replid` on (the follower must be held).
    pub fn apply_from(&self, replid: &str, offset: u64) -> Result<(), Role> {
        if let Ok(mut r) = self.refused.lock() {
            *r = None;
        }
        if let Ok(mut id) = self.apply_replid.lock() {
            *id = replid.to_string();
        }
        self.apply_from.store(offset, Ordering::Release);
        self.cas(Role::Held, Role::Requested)
            .or_else(|_| self.cas(Role::Holding, Role::Requested))
    }

    /// Undoes [`Self::hold`] and [`Self::apply_from`] (the move's deadline passed), unless
    /// the engine won the race and applies already: then the move must be committed
    /// ([`Abort::TookOver`]).
    pub fn abort_apply(&self) -> Abort {
        loop {
            let now = self.role();
            match now {
                Role::Holding | Role::Held | Role::Requested => {
                    if self.cas(now, Role::Following).is_ok() {
                        return Abort::Undone;
                    }
                }
                Role::Following => return Abort::Undone,
                Role::Applying | Role::Parked => return Abort::TookOver,
                Role::Stopped => return Abort::Stopped,
            }
        }
    }

    /// `finish`: the link writes nothing more (the engine stops at its next step).
    pub fn stop(&self) {
        self.role.store(Role::Stopped as u8, Ordering::Release);
    }

    /// Why the last [`Self::apply_from`] could not be honoured, if it could not.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    // --- the engine's side ---

    /// The follower saw [`Role::Holding`]: it takes nothing more.
    pub(crate) fn ack_hold(&self) -> bool {
        self.cas(Role::Holding, Role::Held).is_ok()
    }

    /// The pending [`Self::apply_from`] request: (replication id, offset).
    pub(crate) fn apply_request(&self) -> Option<(String, u64)> {
        if self.role() != Role::Requested {
            return None;
        }
        Some((
            self.apply_replid
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default(),
            self.apply_from.load(Ordering::Acquire),
        ))
    }

    /// The follower took over at the offset it was asked for. `Err` with the role found
    /// when the controller withdrew the request first (the link follows on).
    pub(crate) fn started_applying(&self) -> Result<(), Role> {
        self.cas(Role::Requested, Role::Applying)
    }

    /// The follower cannot start applying where it was asked to (the move is aborted by the
    /// controller, which sees this).
    pub(crate) fn refuse(&self, why: String) {
        tracing::error!("the link cannot take over applying: {why}");
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(why);
        }
        let _ = self.cas(Role::Requested, Role::Following);
    }

    /// The applying link reached the barrier's offset: it parks (`false`: it does not apply
    /// any more — stopped).
    pub(crate) fn park(&self) -> bool {
        self.cas(Role::Applying, Role::Parked).is_ok()
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
    use proptest::prelude::*;

    #[test]
    fn a_handoff_request_is_undone_by_an_abort() {
        let h = Handoff::default();
        h.init_overlap(true);
        h.hold().unwrap();
        assert!(h.ack_hold());
        assert!(h.is_held());
        h.apply_from("r", 10).unwrap();
        assert_eq!(h.apply_request(), Some(("r".to_string(), 10)));
        assert_eq!(h.abort_apply(), Abort::Undone);
        assert_eq!(h.apply_request(), None);
        assert!(
            h.is_following(),
            "an aborted move leaves the link following"
        );
        assert_eq!(
            h.started_applying(),
            Err(Role::Following),
            "the engine loses the race it came late to"
        );
        assert!(h.is_following());
    }

    #[test]
    fn an_abort_that_comes_after_the_take_over_commits() {
        let h = Handoff::default();
        h.init_overlap(true);
        h.hold().unwrap();
        h.apply_from("r", 0).unwrap();
        assert_eq!(h.apply_request(), Some(("r".to_string(), 0)));
        h.started_applying().unwrap();
        assert_eq!(h.abort_apply(), Abort::TookOver);
        assert!(!h.is_following());
    }

    #[test]
    fn a_refusal_ends_the_request() {
        let h = Handoff::default();
        h.init_overlap(true);
        h.hold().unwrap();
        h.apply_from("r", 0).unwrap();
        h.refuse("x".into());
        assert_eq!(h.apply_request(), None);
        assert_eq!(h.refused().as_deref(), Some("x"));
        assert_eq!(h.role(), Role::Following);
    }

    /// One step of the model: what the controller or one of the two engines does next.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// The controller does its next step of the move (or, with `give_up`, its deadline
        /// passes now and it aborts).
        Controller { give_up: bool },
        /// The engine of link 0 (the old applier) or 1 (the follower) takes one step.
        Engine(usize),
    }

    /// Where the controller is in [`crate::cutover::overlap`]'s replica move.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ctl {
        RequestStop,
        WaitParked,
        Hold,
        WaitHeld,
        ApplyFrom,
        WaitTakeOver,
        Commit,
        Done { moved: bool },
    }

    /// The two links and the controller, moved by the real [`Handoff`] transitions.
    struct Model {
        links: [Handoff; 2],
        /// `request_stop_at` of the old applier (the engine parks when it sees it).
        stop_requested: bool,
        ctl: Ctl,
        /// The follower's engine took the request and is inside its round trip.
        starting: bool,
        /// The follower's stream has not reached the offset yet (it refuses only if asked
        /// to start at an offset it already passed: modelled as never).
        _reached: bool,
    }

    impl Model {
        fn new() -> Model {
            let links = [Handoff::default(), Handoff::default()];
            links[0].init_overlap(false);
            links[1].init_overlap(true);
            Model {
                links,
                stop_requested: false,
                ctl: Ctl::RequestStop,
                starting: false,
                _reached: true,
            }
        }

        fn abort(&mut self) {
            // overlap.rs: the follower's request is withdrawn first; if the engine won,
            // the move is committed instead.
            match self.links[1].abort_apply() {
                Abort::TookOver => self.commit(),
                Abort::Undone | Abort::Stopped => {
                    self.stop_requested = false;
                    let _ = self.links[0].unpark();
                    self.ctl = Ctl::Done { moved: false };
                }
            }
        }

        fn commit(&mut self) {
            self.links[0]
                .follow()
                .expect("the old applier is parked at commit");
            self.stop_requested = false;
            self.ctl = Ctl::Done { moved: true };
        }

        fn controller(&mut self, give_up: bool) {
            if matches!(self.ctl, Ctl::Done { .. }) {
                return;
            }
            if give_up && self.ctl != Ctl::RequestStop && self.ctl != Ctl::Commit {
                self.abort();
                return;
            }
            self.ctl = match self.ctl {
                Ctl::RequestStop => {
                    self.stop_requested = true;
                    Ctl::WaitParked
                }
                Ctl::WaitParked if self.links[0].role() == Role::Parked => Ctl::Hold,
                Ctl::Hold => {
                    self.links[1].hold().expect("the follower follows");
                    Ctl::WaitHeld
                }
                Ctl::WaitHeld if self.links[1].is_held() => Ctl::ApplyFrom,
                Ctl::ApplyFrom => {
                    self.links[1].apply_from("r", 7).expect("held");
                    Ctl::WaitTakeOver
                }
                Ctl::WaitTakeOver if self.links[1].role() == Role::Applying => Ctl::Commit,
                Ctl::WaitTakeOver if self.links[1].refused().is_some() => {
                    self.abort();
                    return;
                }
                Ctl::Commit => {
                    self.commit();
                    return;
                }
                other => other,
            };
        }

        fn engine(&mut self, i: usize) {
            let h = &self.links[i];
            match h.role() {
                Role::Applying if self.stop_requested && i == 0 => {
                    h.park();
                }
                Role::Parked if !self.stop_requested => {
                    // The stop was withdrawn: the engine unparks itself (the controller
                    // may have done it already).
                    let _ = h.unpark();
                }
                Role::Holding => {
                    h.ack_hold();
                }
                Role::Requested if !self.starting => {
                    // Takes the request; the round trip (SELECT, position) follows.
                    assert!(h.apply_request().is_some());
                    self.starting = true;
                }
                Role::Requested | Role::Following | Role::Held if self.starting => {
                    self.starting = false;
                    let _ = h.started_applying();
                }
                _ => {}
            }
        }

        fn appliers(&self) -> usize {
            self.links
                .iter()
                .filter(|h| h.role() == Role::Applying)
                .count()
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Controller { give_up: false }),
            1 => Just(Step::Controller { give_up: true }),
            3 => (0usize..2).prop_map(Step::Engine),
        ]
    }

    proptest! {
        /// Random interleavings of the controller's move (with its deadline passing at any
        /// point) and both engines: never two appliers; and once the controller is done and
        /// the engines have caught up, exactly one link applies — the new one if the move
        /// was committed, the old one if it was undone (no hand-over is lost).
        #[test]
        fn the_role_hand_over_never_makes_two_appliers(steps in proptest::collection::vec(step(), 0..60)) {
            let mut m = Model::new();
            for s in steps {
                match s {
                    Step::Controller { give_up } => m.controller(give_up),
                    Step::Engine(i) => m.engine(i),
                }
                prop_assert!(m.appliers() <= 1, "two appliers: {:?} {:?}", m.links[0].role(), m.links[1].role());
            }
            // The controller runs to its end (giving up at once), the engines settle.
            for _ in 0..20 {
                m.controller(true);
                m.engine(0);
                m.engine(1);
                prop_assert!(m.appliers() <= 1);
            }
            let Ctl::Done { moved } = m.ctl else {
                return Err(TestCaseError::fail(format!("the controller did not finish: {:?}", m.ctl)));
            };
            let (applier, follower) = if moved { (1, 0) } else { (0, 1) };
            prop_assert_eq!(m.links[applier].role(), Role::Applying);
            prop_assert!(m.links[follower].role().follows(), "{:?}", m.links[follower].role());
        }
    }
}
