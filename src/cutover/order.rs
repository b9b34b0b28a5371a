//! Per-key order of the writes in a shadow overlap.
//!
//! Shadow writes ([`super::shadow`]) are queued for the old side in the order in which the
//! proxy handled their replies. For two writes to the same key that order is the primary's
//! own order only if the second was sent after the first was answered: two sessions (or the
//! shared connection, whose replies reach their sessions in an order the scheduler picks) with
//! writes to one key in flight at once could see their replies handled the other way round,
//! and the old side would apply `APPEND`s, `RPUSH`es or `SET`s in another order than the
//! primary did.
//!
//! So while writes are shadowed the proxy never has two writes to the same key in flight to
//! the primary: a write takes the keys it touches here ([`KeyOrder::try_acquire`]) before it is
//! sent, and gives them back ([`KeyGuard`]'s drop) once its reply was handled and its shadow
//! queued. A write whose keys are taken waits (its session sends nothing after it meanwhile,
//! so each client's own order holds too). A write whose keys cannot be known (`FLUSHALL`,
//! `SWAPDB`, an unknown command…) takes every key: it waits until no write is in flight, and
//! every write waits for it.
//!
//! Keys are held as 64-bit hashes of (database, key): a collision only makes a write wait
//! for an unrelated one. The cost is one mutex per write and, for writes to one hot key, one
//! round trip per write instead of a pipeline (measured in `bench/RESULTS.md`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};

/// What a write touches, for ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKeys {
    /// These keys (hashed with their database).
    Keys(Vec<u64>),
    /// Unknown: it is ordered against every write.
    All,
}

/// Writes in flight on one key: how many, and of which commuting class (0: an ordinary
/// write, alone on its key).
#[derive(Debug, Clone, Copy)]
struct Holders {
    count: u32,
    class: u8,
}

#[derive(Debug, Default)]
struct State {
    /// Writes in flight per key hash.
    keys: HashMap<u64, Holders>,
    /// Writes in flight that take every key.
    all: u32,
    /// Writes in flight.
    writes: u32,
    /// Keys a repair ([`KeyOrder::hold`]) waits for: no new write takes them meanwhile.
    reserved: HashMap<u64, u32>,
}

/// The keys with a shadowed write in flight to the primary (one per proxy).
#[derive(Debug, Default)]
pub struct KeyOrder {
    state: Mutex<State>,
    released: tokio::sync::Notify,
    hasher: std::collections::hash_map::RandomState,
}

impl KeyOrder {
    /// The hash of `key` in database `db`.
    pub fn key(&self, db: u32, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u32(db);
        h.write(key);
        h.finish()
    }

    /// Takes `keys` for a write about to be sent, unless one of them (or every key) is taken;
    /// `None`: wait for [`Self::released`] and try again. Writes of the same non-zero
    /// `class` ([`commuting_class`]) may share a key: their shadows commute (counters'
    /// deltas), so the order in which their replies are handled does not matter.
    pub fn try_acquire(self: &Arc<Self>, keys: OrderKeys, class: u8) -> Option<KeyGuard> {
        let mut s = self.state.lock().ok()?;
        let free = s.all == 0
            && match &keys {
                OrderKeys::All => s.writes == 0,
                OrderKeys::Keys(k) => k.iter().all(|h| {
                    !s.reserved.contains_key(h)
                        && s.keys.get(h).is_none_or(|w| class != 0 && w.class == class)
                }),
            };
        if !free {
            return None;
        }
        match &keys {
            OrderKeys::All => s.all += 1,
            OrderKeys::Keys(k) => {
                for h in k {
                    s.keys
                        .entry(*h)
                        .or_insert(Holders { count: 0, class })
                        .count += 1;
                }
            }
        }
        s.writes += 1;
        Some(KeyGuard {
            order: Arc::clone(self),
            keys,
        })
    }

    /// Takes `keys` alone (no other write to them in flight, of any class) for a repair of
    /// the shadow writer, waiting at most until `deadline`: from the first try on, new writes
    /// to these keys wait (they are *reserved*), so a hot key's stream of writes cannot
    /// starve the repair; the writes already in flight finish (one round trip to the
    /// primary). `None` when they did not finish in time (the reservation is dropped).
    pub async fn hold(
        self: &Arc<Self>,
        keys: Vec<u64>,
        deadline: tokio::time::Instant,
    ) -> Option<KeyGuard> {
        let _reserved = Reservation::new(self, &keys)?;
        loop {
            let released = self.released();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(g) = self.try_take_reserved(&keys) {
                return Some(g);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }

    /// [`Self::try_acquire`] for keys this caller reserved.
    fn try_take_reserved(self: &Arc<Self>, keys: &[u64]) -> Option<KeyGuard> {
        let mut s = self.state.lock().ok()?;
        if s.all != 0 || keys.iter().any(|h| s.keys.contains_key(h)) {
            return None;
        }
        for h in keys {
            s.keys.insert(*h, Holders { count: 1, class: 0 });
        }
        s.writes += 1;
        Some(KeyGuard {
            order: Arc::clone(self),
            keys: OrderKeys::Keys(keys.to_vec()),
        })
    }

    /// Resolves when some write gave its keys back (register before trying, so that a
    /// release in between is not missed: `let n = order.released(); … n.await`).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Writes in flight (for tests and status).
    pub fn in_flight(&self) -> u32 {
        self.state.lock().map_or(0, |s| s.writes)
    }

    fn release(&self, keys: &OrderKeys) {
        if let Ok(mut s) = self.state.lock() {
            match keys {
                OrderKeys::All => s.all = s.all.saturating_sub(1),
                OrderKeys::Keys(k) => {
                    for h in k {
                        if let Some(w) = s.keys.get_mut(h) {
                            w.count -= 1;
                            if w.count == 0 {
                                s.keys.remove(h);
                            }
                        }
                    }
                }
            }
            s.writes = s.writes.saturating_sub(1);
        }
        self.released.notify_waiters();
    }
}

/// Keys reserved by [`KeyOrder::hold`] while it waits (released when dropped, and the
/// writes waiting for them woken).
struct Reservation<'a> {
    order: &'a KeyOrder,
    keys: &'a [u64],
}

impl<'a> Reservation<'a> {
    fn new(order: &'a KeyOrder, keys: &'a [u64]) -> Option<Self> {
        let mut s = order.state.lock().ok()?;
        for h in keys {
            *s.reserved.entry(*h).or_insert(0) += 1;
        }
        Some(Reservation { order, keys })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.order.state.lock() {
            for h in self.keys {
                if let Some(n) = s.reserved.get_mut(h) {
                    *n -= 1;
                    if *n == 0 {
                        s.reserved.remove(h);
                    }
                }
            }
        }
        self.order.released.notify_waiters();
    }
}

/// The keys one write holds; given back when dropped (after its shadow was queued, or when
/// the write is abandoned: a lost connection, a session that ends).
#[derive(Debug)]
pub struct KeyGuard {
    order: Arc<KeyOrder>,
    keys: OrderKeys,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.order.release(&self.keys);
    }
}

/// Writes whose shadows commute with each other on the same key (0: none). Counters are
/// shadowed as deltas (`INCRBY <delta>`), so increments of one key may be in flight together;
/// any other write to that key still waits for them all.
pub fn commuting_class(args: &[&[u8]]) -> u8 {
    match args.first().map(|n| n.to_ascii_uppercase()).as_deref() {
        Some(b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY") => 1,
        Some(b"HINCRBY") => 2,
        _ => 0,
    }
}

/// The keys a write touches, for ordering: the key positions the command table gives
/// ([`crate::command::keys`]; scripts and functions: their declared keys), or
/// [`OrderKeys::All`] when they cannot be known: an unknown command, a command without keys
/// (`FLUSHALL`, `SWAPDB`, `FUNCTION`…), arguments that do not say where the keys are, and the
/// writes that reach keys of another database (`MOVE`, `COPY … DB n`).
pub fn write_keys(order: &KeyOrder, db: u32, args: &[&[u8]]) -> OrderKeys {
    let Some(cmd) = crate::command::lookup_argv(args) else {
        return OrderKeys::All;
    };
    let other_db = match cmd.name {
        "move" => true,
        "copy" => args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"DB")),
        _ => false,
    };
    if other_db {
        return OrderKeys::All;
    }
    let mut keys = Vec::new();
    match crate::command::for_each_key(cmd, args, |i, _| keys.push(order.key(db, args[i]))) {
        Ok(()) if !keys.is_empty() => OrderKeys::Keys(keys),
        _ => OrderKeys::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(o: &KeyOrder, names: &[&str]) -> OrderKeys {
        OrderKeys::Keys(names.iter().map(|k| o.key(0, k.as_bytes())).collect())
    }

    #[test]
    fn one_write_per_key_in_flight() {
        let o = Arc::new(KeyOrder::default());
        let a = o.try_acquire(keys(&o, &["a"]), 0).expect("free");
        assert!(o.try_acquire(keys(&o, &["a"]), 0).is_none(), "a is taken");
        assert!(
            o.try_acquire(keys(&o, &["b", "a"]), 0).is_none(),
            "a is taken"
        );
        let b = o.try_acquire(keys(&o, &["b"]), 0).expect("b is free");
        assert_eq!(o.in_flight(), 2);
        assert!(
            o.try_acquire(OrderKeys::All, 0).is_none(),
            "writes in flight"
        );
        drop(a);
        assert!(
            o.try_acquire(keys(&o, &["a"]), 0).is_some(),
            "a was given back"
        );
        drop(b);
        assert_eq!(o.in_flight(), 0);
        let all = o.try_acquire(OrderKeys::All, 0).expect("nothing in flight");
        assert!(
            o.try_acquire(keys(&o, &["z"]), 0).is_none(),
            "everything waits"
        );
        drop(all);
        assert!(o.try_acquire(keys(&o, &["z"]), 0).is_some());
    }

    #[test]
    fn increments_of_one_key_may_be_in_flight_together() {
        let o = Arc::new(KeyOrder::default());
        let i1 = o.try_acquire(keys(&o, &["n"]), 1).expect("free");
        let i2 = o
            .try_acquire(keys(&o, &["n"]), 1)
            .expect("increments commute");
        assert!(
            o.try_acquire(keys(&o, &["n"]), 0).is_none(),
            "a SET waits for them"
        );
        assert!(
            o.try_acquire(keys(&o, &["n"]), 2).is_none(),
            "another class waits"
        );
        drop(i1);
        assert!(
            o.try_acquire(keys(&o, &["n"]), 0).is_none(),
            "one is still in flight"
        );
        drop(i2);
        assert!(o.try_acquire(keys(&o, &["n"]), 0).is_some());
        assert_eq!(commuting_class(&[b"incrby", b"n", b"2"]), 1);
        assert_eq!(commuting_class(&[b"SET", b"n", b"2"]), 0);
    }

    #[tokio::test]
    async fn a_hold_waits_for_the_writes_in_flight_and_stops_new_ones() {
        let o = Arc::new(KeyOrder::default());
        let k = o.key(0, b"n");
        // Two increments in flight (they share the key).
        let i1 = o.try_acquire(OrderKeys::Keys(vec![k]), 1).unwrap();
        let i2 = o.try_acquire(OrderKeys::Keys(vec![k]), 1).unwrap();
        let soon = || tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        // Not given back in time: no hold, and the reservation is gone.
        assert!(o.hold(vec![k], soon()).await.is_none());
        assert!(o.try_acquire(OrderKeys::Keys(vec![k]), 1).is_some());
        let o2 = Arc::clone(&o);
        let hold = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            o2.hold(vec![k], deadline).await.is_some()
        });
        // While the hold waits, a new increment of the key waits too.
        let reserved = crate::cutover::order::tests::wait(|| {
            o.try_acquire(OrderKeys::Keys(vec![k]), 1).is_none()
        })
        .await;
        assert!(reserved, "the key was not reserved");
        assert!(
            o.try_acquire(OrderKeys::Keys(vec![o.key(0, b"other")]), 1)
                .is_some()
        );
        drop(i1);
        drop(i2);
        assert!(
            hold.await.unwrap(),
            "the hold got the key once both were given back"
        );
        assert!(o.try_acquire(OrderKeys::Keys(vec![k]), 0).is_some());
        assert_eq!(o.in_flight(), 0);
    }

    /// Polls `f` for up to 2 s.
    async fn wait(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    #[test]
    fn the_same_key_in_two_databases_is_two_keys() {
        let o = Arc::new(KeyOrder::default());
        let _a = o
            .try_acquire(OrderKeys::Keys(vec![o.key(0, b"k")]), 0)
            .unwrap();
        assert!(
            o.try_acquire(OrderKeys::Keys(vec![o.key(1, b"k")]), 0)
                .is_some()
        );
    }

    #[test]
    fn keys_of_writes() {
        let o = KeyOrder::default();
        let k = |ks: &[&str]| OrderKeys::Keys(ks.iter().map(|k| o.key(0, k.as_bytes())).collect());
        let w = |a: &[&str]| {
            let a: Vec<&[u8]> = a.iter().map(|s| s.as_bytes()).collect();
            write_keys(&o, 0, &a)
        };
        assert_eq!(w(&["SET", "a", "1"]), k(&["a"]));
        assert_eq!(w(&["mset", "a", "1", "b", "2"]), k(&["a", "b"]));
        assert_eq!(
            w(&["EVAL", "return 1", "2", "x", "y", "arg"]),
            k(&["x", "y"])
        );
        assert_eq!(w(&["RENAME", "a", "b"]), k(&["a", "b"]));
        assert_eq!(w(&["FLUSHALL"]), OrderKeys::All);
        assert_eq!(w(&["SORT", "a", "STORE", "b"]), k(&["a", "b"]));
        assert_eq!(w(&["EVAL", "return 1", "0"]), OrderKeys::All);
        assert_eq!(w(&["MOVE", "a", "1"]), OrderKeys::All);
        assert_eq!(w(&["COPY", "a", "b", "DB", "1"]), OrderKeys::All);
        assert_eq!(w(&["COPY", "a", "b"]), k(&["a", "b"]));
        assert_eq!(w(&["XGROUP", "CREATE", "s", "g", "$"]), k(&["s"]));
        assert_eq!(w(&["module.write", "a"]), OrderKeys::All);
        // Keys past the eighth argument count too.
        let many: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let mut del = vec!["DEL"];
        del.extend(many.iter().map(String::as_str));
        let all: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(w(&del), k(&all));
    }
}
