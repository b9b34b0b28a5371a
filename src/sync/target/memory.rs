//! Room on the side a link writes to: its `maxmemory` against what the side it copies from
//! uses (issue 20).
//!
//! A real replica ignores its own `maxmemory` for its master's writes (`mustObeyClient`), and
//! never evicts. A link writes into a *primary* as a normal client: under `noeviction` a full
//! side answers `OOM` (the link waits, see [`crate::sync::refusals`]), under any other policy
//! it evicts keys on its own, in silence, and the copy loses them. So a link refuses to start
//! writing, and the first switch refuses to move, when the side written to cannot hold what
//! the other side uses, with a margin ([`MARGIN_PERCENT`]); the evictions that happen anyway
//! are counted (`cutover::memory` watches `evicted_keys`).

use std::time::Duration;

use super::TargetError;
use crate::client::{BlockingClient, Info};
use crate::config::RedisUrl;

/// The side written to must have room for this share of what the other side uses: memory per
/// key differs between versions and encodings (listpacks vs ziplists, Valkey's smaller key
/// overhead the other way round) by up to ~20%, and a side written to also holds a
/// replication backlog and client buffers.
pub const MARGIN_PERCENT: u64 = 125;

/// A server's memory, from `INFO memory` (and `evicted_keys` from `INFO stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    /// 0: no limit.
    pub maxmemory: u64,
    pub policy: String,
    pub evicted_keys: Option<u64>,
}

impl Memory {
    /// From an `INFO` reply holding the `memory` (and, optionally, `stats`) sections.
    pub fn from_info(info: &Info) -> Memory {
        Memory {
            used: info.used_memory().unwrap_or(0),
            maxmemory: info.maxmemory().unwrap_or(0),
            policy: info.maxmemory_policy().unwrap_or("").to_string(),
            evicted_keys: info.evicted_keys(),
        }
    }

    /// Whether the policy evicts keys (anything but `noeviction`).
    pub fn evicts(&self) -> bool {
        !self.policy.is_empty() && self.policy != "noeviction"
    }
}

/// Why `written` cannot hold what a side using `source_used` bytes holds (`None`: it can).
pub fn room_problem(source_used: u64, written: &Memory) -> Option<String> {
    short_of_room(
        source_used,
        written,
        &format!("the side it copies uses {}", human(source_used)),
        "",
    )
}

/// Why `written` cannot take `bytes` (with the [`MARGIN_PERCENT`] margin), `None` when it
/// can or has no limit: its limit and policy, `what` (what the bytes are, said after
/// "but"), what would happen, and how much room to give it (then `advice`, e.g. `", or give
/// it fewer slots"`). One message for a side and for a cluster node
/// ([`crate::sync::cluster::room`]).
pub fn short_of_room(bytes: u64, written: &Memory, what: &str, advice: &str) -> Option<String> {
    if written.maxmemory == 0 {
        return None;
    }
    let need = bytes.saturating_mul(MARGIN_PERCENT) / 100;
    if written.maxmemory >= need {
        return None;
    }
    let outcome = if written.evicts() {
        "it would evict keys on its own, and the copy would lose them in silence"
    } else {
        "it would refuse writes with OOM"
    };
    Some(format!(
        "its maxmemory is {} ({}) but {what} (with the {MARGIN_PERCENT}% margin for other versions' encodings, backlog and buffers: {}): {outcome}. Raise its maxmemory (CONFIG SET maxmemory) to at least {}{advice}",
        human(written.maxmemory),
        if written.policy.is_empty() {
            "policy unknown"
        } else {
            &written.policy
        },
        human(need),
        human(need)
    ))
}

/// Why `written` is nearly full (over 90% of its `maxmemory`), if it is.
pub fn full_problem(written: &Memory) -> Option<String> {
    if written.maxmemory == 0 || written.used.saturating_mul(10) < written.maxmemory * 9 {
        return None;
    }
    Some(format!(
        "it uses {} of its maxmemory {} ({}): raise its maxmemory",
        human(written.used),
        human(written.maxmemory),
        written.policy
    ))
}

pub fn human(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1 << 20 {
        format!("{:.1} MiB ({b} bytes)", b as f64 / MIB)
    } else {
        format!("{b} bytes")
    }
}

/// Refuses a link's first start when `written` cannot hold what `source` uses (a server that
/// will not say is not refused).
pub fn check_room(
    source: &RedisUrl,
    written: &RedisUrl,
    timeout: Duration,
) -> Result<(), TargetError> {
    let info = |url: &RedisUrl| {
        BlockingClient::open_url(url, timeout)
            .and_then(|mut c| c.info("memory"))
            .ok()
    };
    let (Some(src), Some(dst)) = (info(source), info(written)) else {
        return Ok(());
    };
    let used = Memory::from_info(&src).used;
    match room_problem(used, &Memory::from_info(&dst)) {
        Some(detail) => Err(TargetError::NoRoom {
            addr: written.addr(),
            detail,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room() {
        let info = "# Memory\r\nused_memory:1000\r\nused_memory_human:1K\r\nmaxmemory:8388608\r\nmaxmemory_policy:allkeys-lru\r\n# Stats\r\nevicted_keys:42\r\n";
        let m = Memory::from_info(&Info::new(info));
        assert_eq!(
            m,
            Memory {
                used: 1000,
                maxmemory: 8 << 20,
                policy: "allkeys-lru".into(),
                evicted_keys: Some(42)
            }
        );
        assert!(m.evicts());
        assert_eq!(room_problem(1 << 20, &m), None);
        let why = room_problem(20 << 20, &m).unwrap();
        assert!(
            why.contains("8.0 MiB") && why.contains("20.0 MiB") && why.contains("25.0 MiB"),
            "{why}"
        );
        assert!(why.contains("evict"), "{why}");
        let noevict = Memory {
            policy: "noeviction".into(),
            ..m.clone()
        };
        assert!(room_problem(20 << 20, &noevict).unwrap().contains("OOM"));
        let unlimited = Memory {
            maxmemory: 0,
            ..m.clone()
        };
        assert_eq!(room_problem(u64::MAX, &unlimited), None);
        assert_eq!(full_problem(&m), None);
        let full = Memory { used: 8 << 20, ..m };
        assert!(full_problem(&full).unwrap().contains("raise"));
    }
}
