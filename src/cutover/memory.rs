//! Evictions on the side a link writes to (issue 20): divergence, counted.
//!
//! A side a link applies to is a *primary* with its own `maxmemory`: under an eviction policy
//! it removes keys on its own when full, and nothing in the replication protocol tells the
//! link. The keys are then missing there for good (the other side still has them). So while
//! a link applies, the `evicted_keys` counter of `INFO stats` on the side it writes to is read
//! every half second, and what it grew by is added to the link's record
//! ([`crate::sync::refusals::Refusals::add_evictions`]): status (`evicted_keys`), the
//! `cutover_sync_evicted_keys{direction}` gauge and its alert, a refused first switch, an
//! unsafe rollback. Evictions on the primary itself are not counted: it sends a `DEL` for
//! each one down its stream, so the other side follows. A restart of the server (its counter
//! back at 0) starts a new baseline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::control;
use crate::route::Backend;
use crate::sync::engine::SyncProgress;
use crate::sync::phase::SyncPhase;

/// How often the side written to is asked.
const EVERY: Duration = Duration::from_millis(500);

/// Watches `written` (the side `link` writes to) until the link ends.
pub async fn watch_evictions(written: Arc<Backend>, link: Arc<SyncProgress>) {
    let timeout = Duration::from_secs(2);
    let mut conn = None;
    let mut last: Option<u64> = None;
    // The first reading is taken at once: it is the baseline, and evictions before it
    // would go unseen.
    let mut first = true;
    while !link.ended.load(Ordering::Acquire) {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(EVERY).await;
        }
        if conn.is_none() {
            conn = tokio::time::timeout(timeout, control::connect(&written, timeout))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let info = match tokio::time::timeout(timeout, c.info("stats")).await {
            Ok(Ok(info)) => info,
            _ => {
                conn = None;
                continue;
            }
        };
        let Some(now) = info.evicted_keys() else {
            continue;
        };
        // (The role says whether the link writes: applying, or a plain sync that has not
        // stopped at the shadow overlap's barrier.)
        let applying = link.handoff.applies()
            && matches!(
                link.phase(),
                SyncPhase::Snapshot | SyncPhase::Streaming | SyncPhase::Error
            );
        if let Some(before) = last
            && now > before
            && applying
        {
            let n = now - before;
            link.refusals.add_evictions(n);
            tracing::error!(
                direction = link.direction(),
                evicted = n,
                total = link.refusals.evictions(),
                "the side this link writes to evicted keys (maxmemory): they are missing there; no move is allowed"
            );
        }
        last = Some(now);
    }
}
