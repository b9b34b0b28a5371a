//! Room on the target when either side is a cluster (see ARCHITECTURE.md, *Clusters*; the
//! one-server check is [`crate::sync::target::memory`]).
//!
//! What a target master receives is the source's data of the slots it serves. The source's
//! memory is known per source node (`used_memory` of each master, or of the one server), and
//! a source node's slots are taken to hold equal shares of it (keys hash evenly over slots;
//! hash tags can skew that, and the margin does not cover a heavy skew). So each target node
//! `t` needs [`share`]: `Σ over source nodes s of used(s) × |slots(s) ∩ slots(t)| /
//! |slots(s)|` (a standalone side serves all 16,384 slots), times the margin
//! ([`MARGIN_PERCENT`](crate::sync::target::memory::MARGIN_PERCENT)), and the sync refuses to
//! start when one target node's `maxmemory` is below it, naming that node, its limit, its
//! share and the total (the message of [`short_of_room`], as for one server). Per node, not the
//! sum: a cluster with room in total still evicts (or answers `OOM`) on the one node that is
//! full. A node that does not answer `INFO memory` is not refused (as on one server).

use std::time::Duration;

use crate::client::BlockingClient;
use crate::cluster::{SLOTS, SlotSet, Topology};
use crate::config::RedisUrl;
use crate::sync::target::TargetError;
use crate::sync::target::memory::{Memory, human, short_of_room};

/// One node of a side: its URL, and its slots (`None`: a standalone server, every slot).
pub type Node = (RedisUrl, Option<SlotSet>);

/// The nodes of a side: its masters with their slots, or the one server.
pub fn nodes(topo: Option<&Topology>, single: &RedisUrl) -> Vec<Node> {
    match topo {
        Some(t) => t
            .map()
            .shards()
            .iter()
            .filter(|s| !s.ranges.is_empty())
            .map(|s| (t.node_url(&s.master), Some(SlotSet::from_ranges(&s.ranges))))
            .collect(),
        None => vec![(single.clone(), None)],
    }
}

fn count(s: &Option<SlotSet>) -> u64 {
    s.as_ref().map_or(SLOTS as u64, |s| s.len() as u64)
}

/// The bytes of the source (`(used_memory, slots)` per source node) that land on a target
/// node serving `target` (pure).
pub fn share(sources: &[(u64, Option<SlotSet>)], target: &Option<SlotSet>) -> u64 {
    sources
        .iter()
        .map(|(used, slots)| {
            let total = count(slots);
            let common = match (slots, target) {
                (Some(a), Some(b)) => a.intersection(b).len() as u64,
                (None, t) => count(t),
                (s, None) => count(s),
            };
            if total == 0 {
                0
            } else {
                ((*used as u128 * common as u128) / total as u128) as u64
            }
        })
        .sum()
}

/// Why a target node with `written` memory cannot take `share` bytes of a source using
/// `total` (`None`: it can).
pub fn problem(share: u64, total: u64, slots: u64, written: &Memory) -> Option<String> {
    short_of_room(
        share,
        written,
        &format!(
            "its share of the copy ({slots} of 16384 slots) is {} of the source's {} in all",
            human(share),
            human(total)
        ),
        ", or give it fewer slots",
    )
}

fn memory(url: &RedisUrl, timeout: Duration) -> Option<Memory> {
    let info = BlockingClient::open_url(url, timeout)
        .and_then(|mut c| c.info("memory"))
        .ok()?;
    Some(Memory::from_info(&info))
}

/// Refuses the start of a sync whose target nodes cannot each hold their share of what the
/// source nodes use (see the module doc).
pub fn check(sources: &[Node], targets: &[Node], timeout: Duration) -> Result<(), TargetError> {
    let mut used: Vec<(u64, Option<SlotSet>)> = Vec::new();
    for (url, slots) in sources {
        match memory(url, timeout) {
            Some(m) => used.push((m.used, slots.clone())),
            // A source node that does not say: its share is unknown, nothing is refused.
            None => return Ok(()),
        }
    }
    let total: u64 = used.iter().map(|(u, _)| u).sum();
    for (url, slots) in targets {
        let Some(m) = memory(url, timeout) else {
            continue;
        };
        let need = share(&used, slots);
        if let Some(detail) = problem(need, total, count(slots), &m) {
            return Err(TargetError::NoRoom {
                addr: url.addr(),
                detail,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(a: u16, b: u16) -> Option<SlotSet> {
        Some(SlotSet::from_ranges(&[(a, b)]))
    }

    #[test]
    fn shares_follow_the_slots() {
        // A standalone source into 2 halves.
        let src = vec![(1000u64, None)];
        assert_eq!(share(&src, &set(0, 8191)), 500);
        assert_eq!(share(&src, &None), 1000);
        // 2 source halves into one server: the sum.
        let src = vec![(1000u64, set(0, 8191)), (3000, set(8192, 16383))];
        assert_eq!(share(&src, &None), 4000);
        // ... into a node serving the first quarter: half of the first source half.
        assert_eq!(share(&src, &set(0, 4095)), 500);
        // ... into a node straddling both halves.
        assert_eq!(share(&src, &set(4096, 12287)), 500 + 1500);
    }

    #[test]
    fn a_full_node_is_named_with_numbers() {
        let m = Memory {
            used: 0,
            maxmemory: 4 << 20,
            policy: "allkeys-lru".into(),
            evicted_keys: None,
        };
        assert_eq!(problem(3 << 20, 9 << 20, 5461, &m), None);
        let why = problem(10 << 20, 30 << 20, 5461, &m).unwrap();
        assert!(
            why.contains("4.0 MiB")
                && why.contains("10.0 MiB")
                && why.contains("30.0 MiB")
                && why.contains("12.5 MiB")
                && why.contains("5461 of 16384"),
            "{why}"
        );
        let unlimited = Memory { maxmemory: 0, ..m };
        assert_eq!(problem(u64::MAX, u64::MAX, 1, &unlimited), None);
    }
}
