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
//! 1. the applying link is asked to park at its primary's `master_repl_offset` O
//!    ([`Handoff::request_stop`]: `Applying → ParkRequested(O)`); it applies up to O and
//!    parks there (`ParkRequested(O) → Parked(O)`);
//! 2. the following link is held ([`Handoff::hold`]): it takes nothing more from its stream
//!    until told where to start, so it cannot skip a byte that it will have to apply;
//! 3. the new primary's `master_repl_offset` N is read, and the following link is told to
//!    apply everything after it ([`Handoff::apply_from`]: `Requested(N)`); it skips what
//!    comes before and switches to applying exactly there, storing that position on its side
//!    at once;
//! 4. the parked link becomes the follower ([`Handoff::follow`]: `Parked(O) → Following`).
//!
//! Past the move's deadline every step is undone ([`Handoff::abort_apply`],
//! [`Handoff::cancel_stop`]); nothing has been applied by then that the old primary does not
//! have.
//!
//! **The role is one value** ([`Role`], one `AtomicU64`), changed only by compare-and-swap,
//! so that when the controller and the engine race, exactly one wins and the loser sees it.
//! The offsets a role carries (the barrier's O, the follower's N) are packed into the same
//! word (`offset << 4 | tag`): "asked to park at O" is a state, not a flag beside the role
//! and an offset beside the flag, and a CAS that expects `ParkRequested(O)` fails on
//! `ParkRequested(O')`. The engine reads the whole role with one atomic load per step.
//!
//! ```text
//!  a link of a replica overlap:
//!
//!              hold (C)          engine sees it (E)       apply_from N (C)
//!  Following ───────────► Holding ───────────────► Held ─────────────────► Requested(N)
//!      ▲  ▲                  │                       │                       │   │
//!      │  └──── abort (C) ───┴───────────────────────┴──── abort (C) ────────┤   │ cannot (E)
//!      │                                                                     │   ▼
//!      │                         abort (C) ◄──────────────────────── Refused(N)  │
//!      │ follow (C: commit)              started_applying (E) ◄──────────────────┘
//!  Parked(O) ◄── at O (E) ── ParkRequested(O) ◄── request_stop O (C) ── Applying ◄──┘
//!      │                          │                                        ▲
//!      └──── cancel (C) ──────────┴──── cancel (C) ────────────────────────┘
//!
//!  a plain sync (headless `cutover sync`, or the shadow overlap's forward link):
//!
//!  Solo ── request_stop O (C) ──► SoloStopRequested(O) ── at O, run ended (E) ──► SoloStopped(O)
//!    ▲                                   │                                            │
//!    └────────────── cancel (C) ─────────┴──────────────── cancel (C) ────────────────┘
//!
//!  any ──── stop (C: finish) ───► Stopped (final)
//! ```
//!
//! (C: the controller, E: the engine.) The races this settles:
//!
//! * the controller's deadline passes while the follower is inside
//!   [`Handoff::started_applying`]'s round trip: the controller's abort is a CAS from
//!   `Holding`/`Held`/`Requested`/`Refused` to `Following`, the engine's take-over a CAS from
//!   `Requested(N)` to `Applying`. If the engine won, the abort sees `Applying`
//!   ([`Abort::TookOver`]) and the controller commits the move instead; if the controller
//!   won, the engine's CAS fails and it follows on (what it wrote meanwhile is its own
//!   position key, never copied);
//! * the controller withdraws the park request just as the applying link reaches O: the
//!   cancel is a CAS from `ParkRequested(O)` to `Applying`, the engine's park a CAS from
//!   `ParkRequested(O)` to `Parked(O)`. If the engine parked first, the cancel unparks it
//!   (`Parked(O) → Applying`); either way the link applies on, and the engine never leaves
//!   `Parked` by itself: a parked link is released only by the controller's decision
//!   (commit: `Following`, cancel: `Applying`), so two links never apply at once.
//!
//! A plain sync has its own states (`Solo…`): at the barrier's offset it ends its run
//! (`cutover run` starts it again after a cancel, from the stored position) instead of
//! parking, it never follows, and nothing can hand it the role of a link.
//!
//! The replication id that goes with `Requested(N)` does not fit the word: the controller
//! writes it (under a mutex) before its CAS to `Requested(N)` publishes it, and the engine
//! reads it after loading `Requested(N)`; the only other writer is the controller's next
//! [`Handoff::apply_from`], which needs the role at `Holding`/`Held`, i.e. after this request
//! was withdrawn — and then the engine's CAS from `Requested(N)` fails unless the new request
//! has the same offset (of the same follower's stream: the same id, unless the new primary
//! restarted in between, which the engine's own replid check refuses). The refusal's reason
//! is written likewise, by the engine, before its CAS to `Refused(N)`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest offset a role can carry (60 bits: an exbibyte of replication stream).
pub const MAX_ROLE_OFFSET: u64 = (1 << 60) - 1;

/// The role of one link (see the module doc for who moves it where).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A plain sync (no overlap): applies what it reads.
    Solo,
    /// A plain sync asked to end its run once it has applied this offset.
    SoloStopRequested(u64),
    /// A plain sync that ended its run at the barrier's offset (it writes nothing; `cutover
    /// run` waits for the controller: detached for good, or started again after a cancel).
    SoloStopped(u64),
    /// Reads its stream without applying.
    Following,
    /// The controller asked the follower to take nothing more from its stream.
    Holding,
    /// The follower saw [`Role::Holding`] and takes nothing more.
    Held,
    /// The controller asked the follower to apply from this offset on.
    Requested(u64),
    /// The follower cannot apply from this offset ([`Handoff::refused`] says why); it reads
    /// without applying until the controller withdraws the request.
    Refused(u64),
    /// Writes what it reads.
    Applying,
    /// The controller asked the applying link to park once it has applied this offset; it
    /// applies up to there.
    ParkRequested(u64),
    /// The applying link stopped at this offset (the barrier's) and waits for the controller.
    Parked(u64),
    /// `finish`: the link writes nothing more, whatever it was.
    Stopped,
}

impl Role {
    fn tag(self) -> u64 {
        match self {
            Role::Solo => 0,
            Role::SoloStopRequested(_) => 1,
            Role::SoloStopped(_) => 2,
            Role::Following => 3,
            Role::Holding => 4,
            Role::Held => 5,
            Role::Requested(_) => 6,
            Role::Refused(_) => 7,
            Role::Applying => 8,
            Role::ParkRequested(_) => 9,
            Role::Parked(_) => 10,
            Role::Stopped => 11,
        }
    }

    /// The offset this role carries (0 for the others).
    pub fn offset(self) -> u64 {
        match self {
            Role::SoloStopRequested(o)
            | Role::SoloStopped(o)
            | Role::Requested(o)
            | Role::Refused(o)
            | Role::ParkRequested(o)
            | Role::Parked(o) => o,
            _ => 0,
        }
    }

    /// The one word: `offset << 4 | tag` (offsets are checked ≤ [`MAX_ROLE_OFFSET`] where
    /// they enter).
    fn encode(self) -> u64 {
        (self.offset().min(MAX_ROLE_OFFSET) << 4) | self.tag()
    }

    fn decode(w: u64) -> Role {
        let o = w >> 4;
        match w & 0xf {
            0 => Role::Solo,
            1 => Role::SoloStopRequested(o),
            2 => Role::SoloStopped(o),
            3 => Role::Following,
            4 => Role::Holding,
            5 => Role::Held,
            6 => Role::Requested(o),
            7 => Role::Refused(o),
            8 => Role::Applying,
            9 => Role::ParkRequested(o),
            10 => Role::Parked(o),
            _ => Role::Stopped,
        }
    }

    /// The link reads without writing (also while held, asked to take over, or refusing).
    pub fn follows(self) -> bool {
        matches!(
            self,
            Role::Following | Role::Holding | Role::Held | Role::Requested(_) | Role::Refused(_)
        )
    }

    /// The link writes to its side in this role (parked, stopped and following ones do not).
    pub fn applies(self) -> bool {
        matches!(
            self,
            Role::Solo | Role::SoloStopRequested(_) | Role::Applying | Role::ParkRequested(_)
        )
    }

    /// A plain sync's role (not a link of a replica overlap).
    pub fn is_solo(self) -> bool {
        matches!(
            self,
            Role::Solo | Role::SoloStopRequested(_) | Role::SoloStopped(_)
        )
    }

    /// The barrier's offset, while the controller asks the link to apply up to it and stop
    /// there (park, or end a plain sync's run).
    pub fn stop_at(self) -> Option<u64> {
        match self {
            Role::ParkRequested(o) | Role::SoloStopRequested(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Solo => "solo",
            Role::SoloStopRequested(_) => "stop-requested",
            Role::SoloStopped(_) => "stopped-at-barrier",
            Role::Following => "following",
            Role::Holding => "holding",
            Role::Held => "held",
            Role::Requested(_) => "requested",
            Role::Refused(_) => "refused",
            Role::Applying => "applying",
            Role::ParkRequested(_) => "park-requested",
            Role::Parked(_) => "parked",
            Role::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
    /// The [`Role`] with its offset (`Role::encode`), changed only by compare-and-swap
    /// (setup before any race aside: [`Self::init_overlap`]). 0 is [`Role::Solo`].
    role: AtomicU64,
    /// The replication id of [`Role::Requested`]'s offset (see the module doc).
    apply_replid: Mutex<String>,
    /// Why the follower could not start applying ([`Role::Refused`]).
    refused: Mutex<Option<String>>,
    /// Where a follower stands (replication id, offset of the last byte read, the stream's
    /// database there): a new run of its engine continues from there.
    position: Mutex<Option<(String, u64, u64)>>,
}

impl Handoff {
    /// The current role: one atomic load.
    pub fn role(&self) -> Role {
        Role::decode(self.role.load(Ordering::Acquire))
    }

    /// One transition: `from` → `to` (offsets included), only if the role is still `from`.
    /// `Err` with the role found otherwise.
    fn cas(&self, from: Role, to: Role) -> Result<(), Role> {
        self.role
            .compare_exchange(
                from.encode(),
                to.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(Role::decode)
    }

    /// Marks the engine as a link of a replica overlap, applying or following (set up before
    /// either engine runs, so a plain store).
    pub fn init_overlap(&self, following: bool) {
        let role = if following {
            Role::Following
        } else {
            Role::Applying
        };
        self.role.store(role.encode(), Ordering::Release);
    }

    /// The engine is a plain sync again (a shadow overlap was chosen, before anything was
    /// handed over): at the barrier's offset it ends its run, and it applies whatever it
    /// reads (already a plain sync: nothing to do). `Err` with the role found when it was
    /// neither applying nor following (inside a move, or stopped).
    pub fn end_overlap(&self) -> Result<(), Role> {
        if self.role().is_solo() {
            return Ok(());
        }
        self.cas(Role::Applying, Role::Solo)
            .or_else(|_| self.cas(Role::Following, Role::Solo))
    }

    /// The link writes nothing now (following, held, asked to take over, refusing).
    pub fn is_following(&self) -> bool {
        self.role().follows()
    }

    /// The link writes to its side now ([`Role::applies`]).
    pub fn applies(&self) -> bool {
        self.role().applies()
    }

    /// The applying link of a replica overlap waits at the barrier's offset (what the
    /// controller waits for in step 1 of a move).
    pub fn is_parked(&self) -> bool {
        matches!(self.role(), Role::Parked(_))
    }

    /// A plain sync ended its run at the barrier's offset (the shadow overlap's first switch
    /// waits for it).
    pub fn is_solo_stopped(&self) -> bool {
        matches!(self.role(), Role::SoloStopped(_))
    }

    /// Step 1 of a move (the controller): the applying link applies up to `offset` and parks
    /// there (`Applying → ParkRequested`), or a plain sync ends its run there (`Solo →
    /// SoloStopRequested`). `Err` with the role found otherwise (or for an offset past
    /// [`MAX_ROLE_OFFSET`]: the role is unchanged).
    pub fn request_stop(&self, offset: u64) -> Result<(), Role> {
        if offset > MAX_ROLE_OFFSET {
            return Err(self.role());
        }
        self.cas(Role::Applying, Role::ParkRequested(offset))
            .or_else(|_| self.cas(Role::Solo, Role::SoloStopRequested(offset)))
    }

    /// Withdraws [`Self::request_stop`] (the controller: the move was aborted). Whether the
    /// engine had reached the offset or not, the link applies on (`ParkRequested`/`Parked →
    /// Applying`, `SoloStopRequested`/`SoloStopped → Solo`: `cutover run` starts a stopped
    /// plain sync again). Returns the role it leaves (unchanged when there was nothing to
    /// withdraw, e.g. the link was stopped by `finish`).
    pub fn cancel_stop(&self) -> Role {
        loop {
            let now = self.role();
            let to = match now {
                Role::ParkRequested(_) | Role::Parked(_) => Role::Applying,
                Role::SoloStopRequested(_) | Role::SoloStopped(_) => Role::Solo,
                other => return other,
            };
            if self.cas(now, to).is_ok() {
                return to;
            }
        }
    }

    /// Step 4 of a move (commit): the applying link parked at the barrier becomes the
    /// follower. `Err` with the role found if it is not parked.
    pub fn follow(&self) -> Result<(), Role> {
        match self.role() {
            now @ Role::Parked(_) => self.cas(now, Role::Following),
            other => Err(other),
        }
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
        if offset > MAX_ROLE_OFFSET {
            return Err(self.role());
        }
        if let Ok(mut id) = self.apply_replid.lock() {
            *id = replid.to_string();
        }
        self.cas(Role::Held, Role::Requested(offset))
            .or_else(|_| self.cas(Role::Holding, Role::Requested(offset)))
    }

    /// Undoes [`Self::hold`] and [`Self::apply_from`] (the move's deadline passed, or the
    /// follower refused), unless the engine won the race and applies already: then the move
    /// must be committed ([`Abort::TookOver`]).
    pub fn abort_apply(&self) -> Abort {
        loop {
            let now = self.role();
            match now {
                Role::Holding | Role::Held | Role::Requested(_) | Role::Refused(_) => {
                    if self.cas(now, Role::Following).is_ok() {
                        return Abort::Undone;
                    }
                }
                Role::Following => return Abort::Undone,
                Role::Stopped => return Abort::Stopped,
                // (Applying, or parked/asked to park by a later move: never the case for
                // this controller, which holds its move lock.)
                _ => return Abort::TookOver,
            }
        }
    }

    /// `finish`: the link writes nothing more (the engine stops at its next step). The one
    /// transition that does not depend on the role found, so a swap.
    pub fn stop(&self) -> Role {
        Role::decode(self.role.swap(Role::Stopped.encode(), Ordering::AcqRel))
    }

    /// Why the follower could not apply from the offset it was asked ([`Role::Refused`]).
    pub fn refused(&self) -> Option<String> {
        if !matches!(self.role(), Role::Refused(_)) {
            return None;
        }
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    // --- the engine's side ---

    /// The follower saw [`Role::Holding`]: it takes nothing more.
    pub(crate) fn ack_hold(&self) -> bool {
        self.cas(Role::Holding, Role::Held).is_ok()
    }

    /// The pending [`Self::apply_from`] request: (replication id, offset).
    pub(crate) fn apply_request(&self) -> Option<(String, u64)> {
        let Role::Requested(from) = self.role() else {
            return None;
        };
        Some((
            self.apply_replid
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default(),
            from,
        ))
    }

    /// The follower took over at `from`, the offset it was asked for. `Err` with the role
    /// found when the controller withdrew the request first (the link follows on).
    pub(crate) fn started_applying(&self, from: u64) -> Result<(), Role> {
        self.cas(Role::Requested(from), Role::Applying)
    }

    /// The follower cannot start applying at `from` (the controller sees [`Role::Refused`]
    /// and aborts the move). `false`: the request was withdrawn meanwhile.
    pub(crate) fn refuse(&self, from: u64, why: String) -> bool {
        tracing::error!("the link cannot take over applying: {why}");
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(why);
        }
        self.cas(Role::Requested(from), Role::Refused(from)).is_ok()
    }

    /// The applying link reached the barrier's offset `at` (and the target confirmed it): it
    /// parks (`false`: the request was withdrawn, or the link stopped, meanwhile).
    pub(crate) fn park(&self, at: u64) -> bool {
        self.cas(Role::ParkRequested(at), Role::Parked(at)).is_ok()
    }

    /// A plain sync reached the barrier's offset `at` and ends its run (`false`: the request
    /// was withdrawn meanwhile).
    pub(crate) fn solo_stopped(&self, at: u64) -> bool {
        self.cas(Role::SoloStopRequested(at), Role::SoloStopped(at))
            .is_ok()
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
mod tests;
