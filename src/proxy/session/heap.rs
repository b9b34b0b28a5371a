//! Giving memory back after a storm of connections.
//!
//! Each session's buffers (16 KiB read reservations, reply buffers) come from the C heap. When
//! thousands of clients leave at once, their memory is free but glibc returns only the top of
//! the heap to the system: blocks still in use higher up (the I/O driver's registration pages,
//! queues that grew during the storm) pin it, so the process' RSS stayed at its peak and crept
//! up with each storm (measured: 11 MB idle, 63 → 92 MB after five storms of 2,000 clients;
//! `malloc_trim(0)` from a debugger brought it back to 11 MB, so none of it was live). After
//! the number of open clients has halved from its peak (and at least [`heap::MIN_PEAK`] / 2 have
//! left), the proxy asks the allocator once, on a blocking thread, half a second later, to
//! release free pages (`malloc_trim`, glibc only; elsewhere nothing happens).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::proxy::ProxyShared;

/// Fewer clients than this at the peak: not worth a trim (after a trim, half of it must
/// have left again for the next one).
pub const MIN_PEAK: usize = 256;
const DELAY: Duration = Duration::from_millis(500);

static PEAK: AtomicUsize = AtomicUsize::new(0);
static SCHEDULED: AtomicBool = AtomicBool::new(false);

pub(super) fn session_ended(shared: Arc<ProxyShared>) {
    // This session is still counted (`proxy::listen` counts it down after `run`).
    let open = shared
        .client_conns
        .load(Ordering::Relaxed)
        .saturating_sub(1);
    let peak = PEAK.fetch_max(open + 1, Ordering::Relaxed).max(open + 1);
    if peak - open < MIN_PEAK / 2 || open > peak / 2 {
        return;
    }
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(DELAY).await;
        PEAK.store(
            shared.client_conns.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        SCHEDULED.store(false, Ordering::Release);
        let released = tokio::task::spawn_blocking(release).await;
        tracing::debug!(?released, "gave free heap memory back after clients left");
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() -> bool {
    unsafe extern "C" {
        /// glibc: releases free memory at the top of the heap and whole free pages inside
        /// it (`madvise(MADV_DONTNEED)`); returns 1 if any memory was released.
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: `malloc_trim` takes no pointers and only works on the allocator's own state
    // under its own locks; any thread may call it at any time.
    unsafe { malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}
