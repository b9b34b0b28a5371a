//! The handoff's tests: each transition and race by hand, and proptests of the one word and
//! of the move (the controller and two engines interleaved at random).

use super::*;
use proptest::prelude::*;

/// A handoff in the replica overlap, held, asked to apply from replication id `r` at offset
/// `at`.
fn requested(at: u64) -> Handoff {
    let h = Handoff::default();
    h.init_overlap(true);
    h.hold().unwrap();
    h.apply_from("r", at).unwrap();
    h
}

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
        h.started_applying(10),
        Err(Role::Following),
        "the engine loses the race it came late to"
    );
    assert!(h.is_following());
}

#[test]
fn an_abort_that_comes_after_the_take_over_commits() {
    let h = requested(0);
    assert_eq!(h.apply_request(), Some(("r".to_string(), 0)));
    h.started_applying(0).unwrap();
    assert_eq!(h.abort_apply(), Abort::TookOver);
    assert!(!h.is_following());
}

#[test]
fn a_take_over_of_an_older_request_fails() {
    let h = requested(5);
    assert_eq!(h.abort_apply(), Abort::Undone);
    h.hold().unwrap();
    h.apply_from("r", 9).unwrap();
    assert_eq!(h.started_applying(5), Err(Role::Requested(9)));
    assert!(
        !h.refuse(5, "late".into()),
        "a late refusal changes nothing"
    );
    assert_eq!(h.refused(), None);
    h.started_applying(9).unwrap();
}

#[test]
fn a_refusal_ends_the_request() {
    let h = requested(0);
    assert!(h.refuse(0, "x".into()));
    assert_eq!(h.apply_request(), None);
    assert_eq!(h.refused().as_deref(), Some("x"));
    assert_eq!(h.role(), Role::Refused(0));
    assert!(h.is_following(), "a refusing link writes nothing");
    assert_eq!(h.abort_apply(), Abort::Undone);
    assert_eq!(h.role(), Role::Following);
    assert_eq!(h.refused(), None);
}

#[test]
fn park_and_cancel_race_exactly_one_wins() {
    // The engine parks first: the cancel unparks.
    let h = Handoff::default();
    h.init_overlap(false);
    h.request_stop(42).unwrap();
    assert_eq!(h.role().stop_at(), Some(42));
    assert!(h.park(42));
    assert_eq!(h.role(), Role::Parked(42));
    assert!(!h.applies());
    assert_eq!(h.cancel_stop(), Role::Applying);
    assert!(h.applies());
    // The cancel comes first: the engine's park fails, it applies on.
    h.request_stop(50).unwrap();
    assert_eq!(h.cancel_stop(), Role::Applying);
    assert!(!h.park(50));
    assert_eq!(h.role(), Role::Applying);
    // A park of an older request fails too.
    h.request_stop(60).unwrap();
    assert!(!h.park(50));
    assert!(h.park(60));
    h.follow().unwrap();
    assert_eq!(h.role(), Role::Following);
    assert_eq!(h.cancel_stop(), Role::Following, "nothing to withdraw");
}

#[test]
fn a_plain_sync_stops_at_the_barrier_and_never_follows() {
    let h = Handoff::default();
    assert_eq!(h.role(), Role::Solo, "the default is a plain sync");
    assert!(h.applies() && !h.is_following());
    assert!(h.hold().is_err(), "a plain sync cannot be handed the role");
    assert!(h.apply_from("r", 1).is_err());
    h.request_stop(7).unwrap();
    assert_eq!(h.role(), Role::SoloStopRequested(7));
    assert!(!h.park(7), "a plain sync does not park");
    assert!(h.solo_stopped(7));
    assert!(h.is_solo_stopped() && !h.applies());
    assert!(h.follow().is_err());
    assert_eq!(h.cancel_stop(), Role::Solo);
    assert!(h.request_stop(MAX_ROLE_OFFSET + 1).is_err());
    assert_eq!(h.role(), Role::Solo);
}

#[test]
fn the_overlap_ends_only_outside_a_move() {
    let h = Handoff::default();
    h.init_overlap(false);
    h.request_stop(3).unwrap();
    assert_eq!(h.end_overlap(), Err(Role::ParkRequested(3)));
    h.cancel_stop();
    h.end_overlap().unwrap();
    assert_eq!(h.role(), Role::Solo);
    h.end_overlap().unwrap();
}

#[test]
fn a_stopped_link_cannot_be_revived() {
    let h = Handoff::default();
    h.init_overlap(false);
    h.request_stop(3).unwrap();
    assert_eq!(h.stop(), Role::ParkRequested(3));
    assert!(!h.park(3));
    assert_eq!(h.cancel_stop(), Role::Stopped);
    assert!(h.follow().is_err() && h.hold().is_err() && h.apply_from("r", 1).is_err());
    assert_eq!(h.abort_apply(), Abort::Stopped);
    assert!(h.started_applying(1).is_err() && !h.ack_hold());
    assert!(!h.applies() && !h.is_following());
}

fn any_role() -> impl Strategy<Value = Role> {
    let o = 0..=MAX_ROLE_OFFSET;
    prop_oneof![
        Just(Role::Solo),
        o.clone().prop_map(Role::SoloStopRequested),
        o.clone().prop_map(Role::SoloStopped),
        Just(Role::Following),
        Just(Role::Holding),
        Just(Role::Held),
        o.clone().prop_map(Role::Requested),
        o.clone().prop_map(Role::Refused),
        Just(Role::Applying),
        o.clone().prop_map(Role::ParkRequested),
        o.prop_map(Role::Parked),
        Just(Role::Stopped),
    ]
}

proptest! {
    /// The one word holds every role with its offset.
    #[test]
    fn a_role_survives_its_word(r in any_role()) {
        prop_assert_eq!(Role::decode(r.encode()), r);
    }
}

/// One step of the model: what the controller or one of the two engines does next.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The controller does its next step of the move (or, with `give_up`, its deadline
    /// passes now and it aborts).
    Controller { give_up: bool },
    /// The engine of link 0 (the old applier) or 1 (the follower) loads the role.
    Load(usize),
    /// That engine acts on the role it loaded last (which may be stale by now: the
    /// time between is the engine's round trip); `refuse`: the follower cannot apply
    /// from the offset asked.
    Act { link: usize, refuse: bool },
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
    ctl: Ctl,
    /// The role each engine loaded last (what it acts on).
    seen: [Option<Role>; 2],
    /// The barrier's offset (old primary) and the new primary's.
    old: u64,
    new: u64,
}

impl Model {
    fn new(old: u64, new: u64) -> Model {
        let links = [Handoff::default(), Handoff::default()];
        links[0].init_overlap(false);
        links[1].init_overlap(true);
        Model {
            links,
            ctl: Ctl::RequestStop,
            seen: [None, None],
            old,
            new,
        }
    }

    fn abort(&mut self) {
        // overlap.rs: the follower's request is withdrawn first; if the engine won,
        // the move is committed instead.
        match self.links[1].abort_apply() {
            Abort::TookOver => self.commit(),
            Abort::Undone | Abort::Stopped => {
                let left = self.links[0].cancel_stop();
                assert_eq!(
                    left,
                    Role::Applying,
                    "the cancel leaves the old link applying"
                );
                self.ctl = Ctl::Done { moved: false };
            }
        }
    }

    fn commit(&mut self) {
        self.links[0]
            .follow()
            .expect("the old applier is parked at commit");
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
                self.links[0]
                    .request_stop(self.old)
                    .expect("the old link applies");
                Ctl::WaitParked
            }
            Ctl::WaitParked if self.links[0].is_parked() => Ctl::Hold,
            Ctl::Hold => {
                self.links[1].hold().expect("the follower follows");
                Ctl::WaitHeld
            }
            Ctl::WaitHeld if self.links[1].is_held() => Ctl::ApplyFrom,
            Ctl::ApplyFrom => {
                self.links[1].apply_from("r", self.new).expect("held");
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

    /// What the engine does with the role it loaded (as `applier.rs`/`role.rs` do).
    fn act(&mut self, i: usize, refuse: bool) {
        let Some(seen) = self.seen[i].take() else {
            return;
        };
        let h = &self.links[i];
        match seen {
            Role::ParkRequested(at) => {
                h.park(at);
            }
            Role::Holding => {
                h.ack_hold();
            }
            Role::Requested(from) if refuse => {
                h.refuse(from, "cannot".into());
            }
            Role::Requested(from) => {
                let _ = h.started_applying(from);
            }
            // Parked: it waits for the controller; the rest: applies or reads on.
            _ => {}
        }
    }

    fn appliers(&self) -> usize {
        self.links.iter().filter(|h| h.applies()).count()
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Controller { give_up: false }),
        1 => Just(Step::Controller { give_up: true }),
        3 => (0usize..2).prop_map(Step::Load),
        3 => ((0usize..2), proptest::bool::weighted(0.1))
            .prop_map(|(link, refuse)| Step::Act { link, refuse }),
    ]
}

proptest! {
    /// Random interleavings of the controller's move (with its deadline passing at any
    /// point) and both engines, each engine acting on a role it loaded earlier (stale by
    /// its round trip): never two appliers; a parked link leaves `Parked` only by a
    /// controller step; and once the controller is done and the engines have caught up,
    /// exactly one link applies — the new one if the move was committed, the old one if
    /// it was undone (no hand-over is lost).
    #[test]
    fn the_role_hand_over_never_makes_two_appliers(
        steps in proptest::collection::vec(step(), 0..80),
        old in prop_oneof![Just(0u64), Just(MAX_ROLE_OFFSET), 0..1000u64],
        new in prop_oneof![Just(0u64), Just(MAX_ROLE_OFFSET), 0..1000u64],
    ) {
        let mut m = Model::new(old, new);
        for s in steps {
            let parked_before = m.links[0].role();
            match s {
                Step::Controller { give_up } => m.controller(give_up),
                Step::Load(i) => m.seen[i] = Some(m.links[i].role()),
                Step::Act { link, refuse } => m.act(link, refuse),
            }
            prop_assert!(m.appliers() <= 1, "two appliers: {:?} {:?}", m.links[0].role(), m.links[1].role());
            if let Role::Parked(at) = parked_before {
                prop_assert_eq!(at, old);
                if !matches!(s, Step::Controller { .. }) {
                    prop_assert_eq!(m.links[0].role(), parked_before, "an engine released a parked link");
                }
            }
        }
        // The controller runs to its end (giving up at once), the engines settle.
        for _ in 0..20 {
            m.controller(true);
            for i in 0..2 {
                m.act(i, false);
                m.seen[i] = Some(m.links[i].role());
                m.act(i, false);
            }
            prop_assert!(m.appliers() <= 1);
        }
        let Ctl::Done { moved } = m.ctl else {
            return Err(TestCaseError::fail(format!("the controller did not finish: {:?}", m.ctl)));
        };
        let (applier, follower) = if moved { (1, 0) } else { (0, 1) };
        prop_assert_eq!(m.links[applier].role(), Role::Applying);
        prop_assert_eq!(m.links[follower].role(), Role::Following);
    }

    /// Any sequence of transitions, from either party, with any offsets, keeps a link's
    /// role one of its kind: a plain sync never becomes a link of an overlap (nor the
    /// reverse), and `Stopped` is final.
    #[test]
    fn a_role_keeps_its_kind(solo in any::<bool>(), ops in proptest::collection::vec((0u8..12, 0u64..4), 0..40)) {
        let h = Handoff::default();
        if !solo {
            h.init_overlap(false);
        }
        for (op, o) in ops {
            let before = h.role();
            match op {
                0 => { let _ = h.request_stop(o); }
                1 => { h.cancel_stop(); }
                2 => { let _ = h.follow(); }
                3 => { let _ = h.hold(); }
                4 => { let _ = h.apply_from("r", o); }
                5 => { h.abort_apply(); }
                6 => { h.ack_hold(); }
                7 => { let _ = h.started_applying(o); }
                8 => { h.refuse(o, "x".into()); }
                9 => { h.park(o); }
                10 => { h.solo_stopped(o); }
                _ => { h.stop(); }
            }
            let after = h.role();
            if before == Role::Stopped {
                prop_assert_eq!(after, Role::Stopped);
            } else if after != Role::Stopped {
                prop_assert_eq!(after.is_solo(), solo, "{:?} → {:?}", before, after);
            }
        }
    }
}
