//! Where a command goes on a cluster target: the slot of its keys, or several slots when the
//! command can be cut into per-slot commands with the same result.
//!
//! A cluster refuses (`CROSSSLOT`) any command whose keys are in different slots, even on
//! one node. Of the writes a replication stream carries, these split into one command per
//! slot with the same effect:
//!
//! * `MSET k v k v …` → an `MSET` of each slot's pairs;
//! * `DEL`, `UNLINK`, `TOUCH` → the same command with each slot's keys (their reply, a count,
//!   is not used);
//! * `MSETNX` → an `MSETNX` per slot. Not atomic: on the source it set every key or none, and
//!   it is in the stream only because it set them all (none existed). On a target that holds
//!   what the source held each part sets its keys too; the split is still counted as
//!   non-atomic, because a reader of the target can see part of it.
//!
//! Anything else across slots (`RENAME`, `SMOVE`, `LMOVE`, `SUNIONSTORE`, `COPY`…) has no
//! per-slot form: it is [`Route::CrossSlot`], reported as not applied.

use crate::cluster::{Slot, slot};
use crate::sync::filter::command_keys;

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No key: every master (`FLUSHALL`, `FUNCTION LOAD`…); the command.
    Keyless(Vec<Vec<u8>>),
    /// One command per slot (one entry when every key is in one slot). `split_non_atomic`:
    /// cut from a command the source applied atomically (`MSETNX`).
    Slots {
        parts: Vec<(Slot, Vec<Vec<u8>>)>,
        split_non_atomic: bool,
    },
    /// Keys in several slots and no per-slot form.
    CrossSlot(Vec<Slot>),
}

/// Routes `args` (`name` is its upper-case name).
pub fn route(name: &str, args: Vec<Vec<u8>>) -> Route {
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let keys = command_keys(name, &refs);
    let Some(first) = keys.first() else {
        return Route::Keyless(args);
    };
    let s0 = slot(&args[*first]);
    if keys.iter().all(|i| slot(&args[*i]) == s0) {
        return Route::Slots {
            parts: vec![(s0, args)],
            split_non_atomic: false,
        };
    }
    match name {
        "MSET" | "MSETNX" if args.len() % 2 == 1 => {
            let mut parts: Vec<(Slot, Vec<Vec<u8>>)> = Vec::new();
            for pair in args[1..].chunks(2) {
                let s = slot(&pair[0]);
                match parts.iter_mut().find(|(ps, _)| *ps == s) {
                    Some((_, cmd)) => cmd.extend_from_slice(pair),
                    None => {
                        let mut cmd = vec![args[0].clone()];
                        cmd.extend_from_slice(pair);
                        parts.push((s, cmd));
                    }
                }
            }
            Route::Slots {
                parts,
                split_non_atomic: name == "MSETNX",
            }
        }
        "DEL" | "UNLINK" | "TOUCH" => {
            let mut parts: Vec<(Slot, Vec<Vec<u8>>)> = Vec::new();
            for key in &args[1..] {
                let s = slot(key);
                match parts.iter_mut().find(|(ps, _)| *ps == s) {
                    Some((_, cmd)) => cmd.push(key.clone()),
                    None => parts.push((s, vec![args[0].clone(), key.clone()])),
                }
            }
            Route::Slots {
                parts,
                split_non_atomic: false,
            }
        }
        _ => {
            let mut slots: Vec<Slot> = keys.iter().map(|i| slot(&args[*i])).collect();
            slots.sort_unstable();
            slots.dedup();
            Route::CrossSlot(slots)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("FLUSHALL", v(&["FLUSHALL"])),
            Route::Keyless(v(&["FLUSHALL"]))
        );
        let one = route("MSET", v(&["MSET", "{a}1", "x", "{a}2", "y"]));
        assert!(
            matches!(one, Route::Slots { ref parts, split_non_atomic: false } if parts.len() == 1)
        );
        let Route::Slots { parts, .. } =
            route("MSET", v(&["MSET", "a", "1", "b", "2", "{a}c", "3"]))
        else {
            panic!()
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, v(&["MSET", "a", "1", "{a}c", "3"]));
        assert_eq!(parts[1].1, v(&["MSET", "b", "2"]));
        let Route::Slots { parts, .. } = route("DEL", v(&["DEL", "a", "b", "{b}x"])) else {
            panic!()
        };
        assert_eq!(parts[1].1, v(&["DEL", "b", "{b}x"]));
        assert!(matches!(
            route("MSETNX", v(&["MSETNX", "a", "1", "b", "2"])),
            Route::Slots {
                split_non_atomic: true,
                ..
            }
        ));
        assert!(matches!(
            route("RENAME", v(&["RENAME", "a", "b"])),
            Route::CrossSlot(_)
        ));
        assert!(matches!(
            route("RENAME", v(&["RENAME", "{a}1", "{a}2"])),
            Route::Slots { .. }
        ));
    }
}
