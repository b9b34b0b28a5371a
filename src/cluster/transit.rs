//! Keys moving between source shards during a sync: the pairing of the exporting link's
//! `DEL` with the importing link's `RESTORE` (see ARCHITECTURE.md, *Clusters*).
//!
//! A pure model, property-tested. The engine does not use it: it applies a simpler rule
//! that needs no held ops for `MIGRATE` (the importer waits until the exporter applied past
//! its master's offset, the migration's `DEL` applied as any delete, before the `RESTORE`):
//! [`crate::sync::cluster::transit_run`].
//!
//! `redis-cli --cluster reshard` moves a key with `MIGRATE` on the exporting master A: A sends
//! `RESTORE k` to the importing master B, and once B said OK, A deletes `k`. A's replication
//! stream carries `DEL k`, B's carries `RESTORE k …`; the two streams reach `cutover` through
//! two links with no common order, and the target is one keyspace. Applying A's `DEL` after
//! B's `RESTORE` would lose the key; applying B's `RESTORE` and later writes before A's last
//! writes to `k` would leave an old value. [`Transit`] decides, per key:
//!
//! * a `RESTORE` read by B, **after a read barrier**, of a key another link A owns (the owner
//!   known once every op before it was read, which also covers keys whose slot moved while
//!   they did not exist) puts the key **in transit** A→B: B's ops on it are held, in order
//!   ([`OnOp::Held`]);
//! * any other op of B on a key attributed to another link (a key created on B through `ASK`
//!   while its slot migrated, or a slot that moved while the key did not exist) is applied
//!   **after a read barrier**, and the key is B's from then on: the old owner's earlier ops
//!   on it are applied first;
//! * a `DEL`/`UNLINK` read by A, **after a read barrier** (every other link has read its stream
//!   up to the offset its master had when A's `DEL` was read — so a `RESTORE` that happened
//!   before the `DEL` has been seen): if the key is in transit from A, the `DEL` is the
//!   migration's and is not applied; the held ops are released ([`OnDel::Migrated`]) and the
//!   key is B's from then on. Otherwise it is a user's delete ([`OnDel::Apply`]).
//!
//! So per key the target applies A's ops up to the migration, then B's, which is the order
//! they had on the source. Pure: the engine supplies the barrier and the default owner (the
//! slot map at the start); `tests.rs` proves the rule on random histories and interleavings
//! (and shows that without the barrier keys are lost).

use std::collections::HashMap;

/// A source link (one per source master).
pub type LinkId = usize;

/// What to do with an op that is not a delete.
#[derive(Debug, PartialEq, Eq)]
pub enum OnOp<Op> {
    Apply(Op),
    /// Kept until the exporting link's migration delete.
    Held,
}

/// What to do with a delete (read after the barrier).
#[derive(Debug, PartialEq, Eq)]
pub enum OnDel<Op> {
    /// A user's delete: apply it.
    Apply(Op),
    /// A delete of a key in transit to this link: held behind its other ops.
    Held,
    /// The migration's delete: do not apply it; apply these held ops of the importing link.
    Migrated(Vec<Op>),
}

struct Held<Op> {
    from: LinkId,
    to: LinkId,
    ops: Vec<Op>,
}

/// The keys in transit between links, and the keys whose owner changed since the start.
pub struct Transit<Op> {
    owner: HashMap<Vec<u8>, LinkId>,
    held: HashMap<Vec<u8>, Held<Op>>,
}

impl<Op> Default for Transit<Op> {
    fn default() -> Self {
        Transit {
            owner: HashMap::new(),
            held: HashMap::new(),
        }
    }
}

impl<Op> Transit<Op> {
    /// The link that owns `key` now (`default`: its slot's link in the map at the start).
    pub fn owner(&self, key: &[u8], default: LinkId) -> LinkId {
        self.owner.get(key).copied().unwrap_or(default)
    }

    /// Keys in transit now (their importing link's ops are held).
    pub fn in_transit(&self) -> usize {
        self.held.len()
    }

    /// Ops held now, over all keys (for back-pressure: past a bound the importing link waits).
    pub fn held_ops(&self) -> usize {
        self.held.values().map(|h| h.ops.len()).sum()
    }

    /// True when the op must wait for the read barrier (every other link has read its stream
    /// up to where its master was when this op was read): a delete (it may be a migration's),
    /// a `RESTORE` (it may be one; the owner known after the barrier says), or an op on a key
    /// another link owns. Ops of a key in transit to `link` are held without a barrier.
    pub fn needs_barrier(
        &self,
        link: LinkId,
        key: &[u8],
        default: LinkId,
        delete: bool,
        restore: bool,
    ) -> bool {
        if delete {
            return true;
        }
        if self.held.get(key).is_some_and(|h| h.to == link) {
            return false;
        }
        if restore {
            return true;
        }
        self.owner(key, default) != link
    }

    /// An op other than a delete, read by `link` for `key`; `restore` when it is a `RESTORE`
    /// (the first op of an incoming key); `default`: the key's slot's link at the start.
    pub fn on_op(
        &mut self,
        link: LinkId,
        key: &[u8],
        default: LinkId,
        restore: bool,
        op: Op,
    ) -> OnOp<Op> {
        if let Some(h) = self.held.get_mut(key) {
            if h.to == link {
                h.ops.push(op);
                return OnOp::Held;
            }
        }
        let owner = self.owner(key, default);
        if owner != link && restore && !self.held.contains_key(key) {
            self.held.insert(
                key.to_vec(),
                Held {
                    from: owner,
                    to: link,
                    ops: vec![op],
                },
            );
            return OnOp::Held;
        }
        if owner != link {
            // After the barrier: the key lives on `link` now.
            self.owner.insert(key.to_vec(), link);
        }
        OnOp::Apply(op)
    }

    /// A `DEL`/`UNLINK` of `key` read by `link`, once the read barrier is taken.
    pub fn on_delete(&mut self, link: LinkId, key: &[u8], default: LinkId, op: Op) -> OnDel<Op> {
        match self.held.get_mut(key) {
            Some(h) if h.to == link => {
                h.ops.push(op);
                OnDel::Held
            }
            Some(h) if h.from == link => {
                let h = self.held.remove(key).expect("present");
                self.owner.insert(key.to_vec(), h.to);
                OnDel::Migrated(h.ops)
            }
            _ => {
                if self.owner(key, default) != link {
                    self.owner.insert(key.to_vec(), link);
                }
                OnDel::Apply(op)
            }
        }
    }
}

#[cfg(test)]
mod tests;
