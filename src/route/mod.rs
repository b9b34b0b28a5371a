//! The route table: which backend is the primary that clients talk to.
//!
//! It lives in an [`ArcSwap`] so every session reads it with one atomic load per batch of
//! commands and a switch (a later issue) replaces it in one store. Sessions notice a new
//! `epoch` between batches and move their connection state to the new primary.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::RedisUrl;
use crate::proxy::mux::MuxHandle;

/// The two sides of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// One upstream endpoint and its shared reconnect back-off (so a dead server is not hammered
/// by every client session at once).
pub struct Backend {
    pub side: Side,
    pub url: RedisUrl,
    /// Milliseconds since `epoch_start` before which nobody should try to connect.
    down_until_ms: AtomicU64,
    failures: AtomicU32,
    epoch_start: Instant,
    /// The shared connection for sessions without connection state of their own.
    mux: OnceLock<MuxHandle>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Backend {
    pub fn new(side: Side, url: RedisUrl) -> Self {
        Backend {
            side,
            url,
            down_until_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            epoch_start: Instant::now(),
            mux: OnceLock::new(),
        }
    }

    /// The shared connection to this backend, started on first use.
    pub fn mux(self: &Arc<Self>, connect_timeout: Duration, buffer_limit: usize) -> &MuxHandle {
        self.mux
            .get_or_init(|| MuxHandle::spawn(self.clone(), connect_timeout, buffer_limit))
    }

    fn now_ms(&self) -> u64 {
        self.epoch_start.elapsed().as_millis() as u64
    }

    /// `Some(wait)` while the back-off after a failed connect is running.
    pub fn backoff_remaining(&self) -> Option<Duration> {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Records a failed connect and starts the exponential back-off.
    pub fn connect_failed(&self) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(10);
        let wait = (BACKOFF_MIN * 2u32.pow(n)).min(BACKOFF_MAX);
        self.down_until_ms
            .store(self.now_ms() + wait.as_millis() as u64, Ordering::Relaxed);
        wait
    }

    pub fn connect_succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Human name for messages: `source 127.0.0.1:6379`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.side.as_str(), self.url.addr())
    }
}

/// One immutable version of the routing decision.
pub struct Route {
    /// Incremented by every flip; sessions compare it to notice one.
    pub epoch: u64,
    pub primary: Side,
    pub source: Arc<Backend>,
    pub target: Option<Arc<Backend>>,
}

impl Route {
    pub fn primary_backend(&self) -> &Arc<Backend> {
        match (self.primary, &self.target) {
            (Side::Target, Some(t)) => t,
            _ => &self.source,
        }
    }
}

/// The shared, atomically swappable route.
pub type RouteTable = ArcSwap<Route>;
