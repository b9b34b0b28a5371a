//! The write barrier's gate: how the cutover controller holds every client's next command
//! and learns that nothing is in flight any more.
//!
//! Sessions and the controller meet on two atomics, in the classic "flag, then check the other
//! flag" order (both `SeqCst`), so neither can miss the other:
//!
//! * a session that is about to dispatch first marks itself **busy**, then reads **paused**;
//!   if paused, it unmarks itself (when nothing of its own is in flight) and waits;
//! * the controller first sets **paused**, then waits until **busy** is zero.
//!
//! So once the controller sees `busy == 0` after pausing, every command ever dispatched has
//! been answered and none will be dispatched until [`Gate::resume`]. Two kinds of sessions
//! never hold the barrier up: one blocked in `BLPOP`-like calls (it is *parked*: the controller
//! cancels the call with `CLIENT UNBLOCK` and the session re-issues it on the new side), and one
//! only listening to pub/sub. A session inside `MULTI` keeps going until its `EXEC`/`DISCARD`
//! (it stays busy meanwhile), so a transaction is never split across the two sides.
//!
//! Wake-ups go through a `tokio::sync::watch` channel that carries a generation number: a
//! session that saw `paused` waits for the generation to change, which cannot be missed the
//! way a bare `Notify` could be. The same channel announces route flips to sessions that must
//! act on them while idle (subscribers, parked blocking calls, `WATCH`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::watch;

pub struct Gate {
    paused: AtomicBool,
    busy: AtomicUsize,
    /// Sessions waiting at the gate right now (for status and metrics).
    held: AtomicUsize,
    /// Sessions whose only command in flight is a blocking call.
    parked: AtomicUsize,
    generation: watch::Sender<u64>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            paused: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            generation: watch::Sender::new(0),
        }
    }
}

impl Gate {
    /// Controller: hold every session's next command.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Controller: let held sessions go on (they read the route again first).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.announce();
    }

    /// Wakes every session that waits on [`Gate::subscribe`] (after a resume or a flip).
    pub fn announce(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Sessions with commands in flight (or an open `MULTI`).
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Sessions waiting at the gate.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Session: a receiver that changes on every resume and every flip.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Session: mark (or unmark) this session as having work in flight. `flag` is the
    /// session's own record, so the count stays exact.
    pub fn set_busy(&self, flag: &mut bool, busy: bool) {
        count(&self.busy, flag, busy);
    }

    /// Session: before dispatching. Marks the session busy, then tells whether it may go on.
    /// `in_txn`: the session is inside `MULTI` and must be let through until `EXEC`.
    pub fn enter(&self, flag: &mut bool, in_txn: bool) -> bool {
        self.set_busy(flag, true);
        in_txn || !self.paused.load(Ordering::SeqCst)
    }

    /// Sessions whose only command in flight is a blocking call (they do not hold the barrier
    /// up; the controller cancels that many calls on the old side).
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Session: starts or stops counting as parked.
    pub fn set_parked(&self, flag: &mut bool, parked: bool) {
        count(&self.parked, flag, parked);
    }

    /// Session: starts or stops counting as held.
    pub fn set_held(&self, flag: &mut bool, held: bool) {
        count(&self.held, flag, held);
    }
}

/// Keeps `counter` equal to the number of sessions whose `flag` is set.
fn count(counter: &AtomicUsize, flag: &mut bool, on: bool) {
    if *flag != on {
        *flag = on;
        if on {
            counter.fetch_add(1, Ordering::SeqCst);
        } else {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_entered_before_the_pause_is_waited_for() {
        let gate = Gate::default();
        let mut busy = false;
        assert!(gate.enter(&mut busy, false));
        gate.pause();
        assert_eq!(gate.busy(), 1);
        gate.set_busy(&mut busy, false);
        assert_eq!(gate.busy(), 0);
        // Paused: a new command is held, a transaction goes on.
        assert!(!gate.enter(&mut busy, false));
        assert!(gate.enter(&mut busy, true));
        gate.set_busy(&mut busy, false);
        let rx = gate.subscribe();
        gate.resume();
        assert!(rx.has_changed().unwrap());
        assert!(gate.enter(&mut busy, false));
    }
}
