//! The route table: which backend is the primary that clients talk to.
//!
//! It lives in an [`ArcSwap`] so every session reads it with one atomic load per batch of
//! commands and a switch (a later issue) replaces it in one store. Sessions notice a new
//! `epoch` between batches and move their connection state to the new primary.
//!
//! The table is pure data: it names the backends and their shared back-off, and owns no
//! connection. The proxy's shared connections live in the proxy (`proxy::mux::SharedLinks`,
//! one per side), so `route` imports nothing from `proxy`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::RedisUrl;

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
    /// Open connections to this backend (shared and per-session).
    connections: AtomicUsize,
    /// Why the last connection attempt failed, for the messages given during the back-off.
    last_error: Mutex<Option<String>>,
    /// Local addresses of the proxy's open connections to this backend: how the cutover
    /// tells the proxy's own connections from other clients in the server's `CLIENT LIST`.
    own_addrs: Mutex<HashSet<SocketAddr>>,
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
            connections: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            own_addrs: Mutex::new(HashSet::new()),
        }
    }

    /// Is `addr` (as the server sees its client) one of the proxy's own connections?
    pub fn is_own(&self, addr: &SocketAddr) -> bool {
        self.own_addrs.lock().is_ok_and(|s| s.contains(addr))
    }

    /// Open connections to this backend.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The reason of the last failed connection attempt.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
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
    pub fn connect_failed(&self, reason: &str) -> Duration {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason.to_string());
        }
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

/// Counts one open connection to a backend for as long as it lives (and remembers its local
/// address, see [`Backend::is_own`]).
pub struct ConnGuard(Arc<Backend>, Option<SocketAddr>);

impl ConnGuard {
    pub fn new(backend: Arc<Backend>, local: Option<SocketAddr>) -> Self {
        if let (Some(a), Ok(mut own)) = (local, backend.own_addrs.lock()) {
            own.insert(a);
        }
        backend.connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("cutover_backend_connections", "side" => backend.side.as_str())
            .increment(1.0);
        ConnGuard(backend, local)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let (Some(a), Ok(mut own)) = (self.1, self.0.own_addrs.lock()) {
            own.remove(&a);
        }
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("cutover_backend_connections", "side" => self.0.side.as_str())
            .decrement(1.0);
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
