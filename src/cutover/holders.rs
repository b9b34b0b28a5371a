//! Which client sessions hold a move up, and the policy for the ones that stalled.
//!
//! A move waits until no session has a command in flight ([`super::gate`]). One client
//! that stops reading its replies (a hung worker, a stopped consumer, a long GC pause), or
//! that leaves a `MULTI` open, therefore holds every move past its pause limit. Each session
//! publishes what would hold a move in a [`ClientInfo`] (a few relaxed atomics, written
//! only while it is busy), so that:
//!
//! * a refused move names the sessions that held it ([`Holder::describe`]: address, name,
//!   age, and what is pending — unread replies and bytes, an open `MULTI`, a blocked call
//!   with commands behind it);
//! * `cutover status` lists the sessions that would hold a move now, before anyone tries;
//! * `[cutover] stalled_client_disconnect_ms`, like Redis' `client-output-buffer-limit`: at
//!   the move, a session that has not read anything for longer than that while replies wait
//!   for it, that holds a `MULTI` open that long, or whose blocked call has commands waiting
//!   behind it that long, is disconnected (a WARN line names it, and
//!   `cutover_clients_disconnected_at_move_total{reason}` counts it), and the move proceeds.
//!   What such a client was told succeeded ran where the route pointed when it was sent
//!   (before the flip); a transaction left open is discarded by the server; commands queued
//!   behind a blocked call never ran. Writes it sent that the server may still run are waited
//!   for (their replies dropped) before the session stops counting as busy, so the move reads
//!   the old primary's offset after them (the session's `leave_kicked`). `--force` covers them explicitly (reason `force`): at
//!   the start of the pause it disconnects every session stalled longer than the pause
//!   limit, and at half the pause limit every session still holding the move.
//!
//! A session waiting for the server itself (a slow command: nothing to read yet, no `MULTI`)
//! is named but never disconnected: its command runs on the old primary either way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

/// What one session publishes about itself for the barrier (written by the session only).
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    connected_ms: u64,
    name: Mutex<Option<String>>,
    busy: AtomicBool,
    pending: AtomicUsize,
    unread: AtomicUsize,
    /// Last progress (ms on the registry's clock): it became busy, or the client took bytes.
    progress_ms: AtomicU64,
    /// When its `MULTI` was sent (ms + 1; 0: none open).
    multi_since: AtomicU64,
    /// Its oldest command waiting for a reply is a blocking call.
    blocked: AtomicBool,
    kick: tokio::sync::Notify,
}

impl ClientInfo {
    /// Session: it became busy (`true`, at `at`) or idle.
    pub fn set_busy(&self, busy: bool, at_ms: u64) {
        if busy {
            self.progress_ms.store(at_ms, Ordering::Relaxed);
        }
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Session, while busy: commands waiting for replies, bytes the client has not read, and
    /// whether the oldest waiting command is a blocking call.
    pub fn set_pending(&self, pending: usize, unread: usize, blocked: bool) {
        self.pending.store(pending, Ordering::Relaxed);
        self.unread.store(unread, Ordering::Relaxed);
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Session: the client took bytes.
    pub fn progressed(&self, at_ms: u64) {
        self.progress_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Session: a `MULTI` was sent (`Some(at)`) or the transaction ended.
    pub fn set_multi(&self, at_ms: Option<u64>) {
        self.multi_since
            .store(at_ms.map_or(0, |m| m + 1), Ordering::Relaxed);
    }

    /// Session: `CLIENT SETNAME` succeeded.
    pub fn set_name(&self, name: Option<&[u8]>) {
        if let Ok(mut n) = self.name.lock() {
            *n = name.map(|n| String::from_utf8_lossy(&n[..n.len().min(64)]).into_owned());
        }
    }

    /// Session: resolves when the controller disconnects this client.
    pub async fn kicked(&self) {
        self.kick.notified().await
    }
}

/// Why a session holds a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Replies wait for a client that does not read them.
    NotReading,
    /// A `MULTI` is open.
    Multi,
    /// A blocking call with commands queued behind it.
    Blocked,
    /// A command the server has not answered yet.
    Server,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotReading => "not_reading",
            Reason::Multi => "multi",
            Reason::Blocked => "blocked",
            Reason::Server => "server",
        }
    }
}

/// A session that holds (or would hold) a move.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holder {
    #[serde(skip)]
    info: Arc<ClientInfo>,
    pub id: u64,
    pub addr: String,
    pub name: Option<String>,
    pub age_ms: u64,
    pub reason: Reason,
    /// How long it has been in this state.
    pub stalled_ms: u64,
    pub pending_replies: usize,
    pub unread_bytes: usize,
    pub multi_open_ms: Option<u64>,
    pub blocked_call: bool,
}

impl Holder {
    /// `127.0.0.1:5000 (name worker-3, connected 12.0 s): 46 replies / 4.0 MB unread for 3.1 s`.
    pub fn describe(&self) -> String {
        let name = self
            .name
            .as_deref()
            .map_or_else(String::new, |n| format!("name {n}, "));
        let what = match self.reason {
            Reason::Multi => format!("MULTI open for {}", secs(self.stalled_ms)),
            Reason::NotReading => format!(
                "{} replies / {} unread for {}",
                self.pending_replies,
                super::human_bytes(self.unread_bytes as u64),
                secs(self.stalled_ms)
            ),
            Reason::Blocked => format!(
                "blocked call with {} commands behind it for {}",
                self.pending_replies.saturating_sub(1),
                secs(self.stalled_ms)
            ),
            Reason::Server => format!(
                "{} commands waiting for the server for {}",
                self.pending_replies,
                secs(self.stalled_ms)
            ),
        };
        format!(
            "{} ({name}connected {}): {what}",
            self.addr,
            secs(self.age_ms)
        )
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Every connected session's [`ClientInfo`].
pub struct Clients {
    base: Instant,
    next_id: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            base: Instant::now(),
            next_id: AtomicU64::new(1),
            map: Mutex::default(),
        }
    }
}

impl Clients {
    /// Milliseconds of `at` on the registry's clock.
    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    pub fn register(&self, addr: SocketAddr) -> Arc<ClientInfo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo {
            id,
            addr,
            connected_ms: self.ms(Instant::now()),
            name: Mutex::new(None),
            busy: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            unread: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
            multi_since: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            kick: tokio::sync::Notify::new(),
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, info.clone());
        }
        info
    }

    pub fn unregister(&self, id: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&id);
        }
    }

    /// The busy sessions in one state for at least `min` (longest first).
    pub fn holders(&self, min: Duration) -> Vec<Holder> {
        let now = self.ms(Instant::now());
        let min = min.as_millis() as u64;
        let infos: Vec<Arc<ClientInfo>> = match self.map.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<Holder> = infos
            .into_iter()
            .filter(|i| i.busy.load(Ordering::Relaxed))
            .filter_map(|info| {
                let multi = match info.multi_since.load(Ordering::Relaxed) {
                    0 => None,
                    m => Some(now.saturating_sub(m - 1)),
                };
                let pending = info.pending.load(Ordering::Relaxed);
                let unread = info.unread.load(Ordering::Relaxed);
                let blocked = info.blocked.load(Ordering::Relaxed);
                let idle = now.saturating_sub(info.progress_ms.load(Ordering::Relaxed));
                let (reason, stalled) = match multi {
                    Some(m) => (Reason::Multi, m),
                    None if unread > 0 => (Reason::NotReading, idle),
                    None if blocked => (Reason::Blocked, idle),
                    None => (Reason::Server, idle),
                };
                (stalled >= min).then(|| Holder {
                    id: info.id,
                    addr: info.addr.to_string(),
                    name: info.name.lock().ok().and_then(|n| n.clone()),
                    age_ms: now.saturating_sub(info.connected_ms),
                    reason,
                    stalled_ms: stalled,
                    pending_replies: pending,
                    unread_bytes: unread,
                    multi_open_ms: multi,
                    blocked_call: blocked,
                    info,
                })
            })
            .collect();
        out.sort_by_key(|h| std::cmp::Reverse(h.stalled_ms));
        out
    }

    /// Disconnects these sessions (each ends at its next turn), with a WARN line naming it
    /// and the counter `cutover_clients_disconnected_at_move_total{reason}`.
    pub fn disconnect(&self, holders: &[Holder], why: &str) {
        for h in holders {
            let reason = if why == "force" {
                "force"
            } else {
                h.reason.as_str()
            };
            tracing::warn!(
                client = %h.describe(),
                reason,
                "disconnecting a client that holds the move ({why})"
            );
            metrics::counter!("cutover_clients_disconnected_at_move_total", "reason" => reason)
                .increment(1);
            h.info.kick.notify_one();
        }
    }
}

/// The status list of holders.
pub fn holders_json(holders: &[Holder], disconnect_after: Option<Duration>) -> Json {
    Json::Array(
        holders
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).unwrap_or(Json::Null);
                let at_move = match disconnect_after {
                    Some(d)
                        if h.reason != Reason::Server && h.stalled_ms >= d.as_millis() as u64 =>
                    {
                        "disconnected at the move (stalled_client_disconnect_ms)"
                    }
                    _ => "holds the move",
                };
                v["at_move"] = json!(at_move);
                v["text"] = json!(h.describe());
                v
            })
            .collect(),
    )
}

impl super::Controller {
    /// Step 2 of the barrier, with the gate paused: waits until no session has a command in
    /// flight. Sessions stalled past `stalled_client_disconnect_ms` are disconnected first;
    /// with `force`, so are those stalled longer than the pause limit, and whatever still
    /// holds the move at half the pause limit.
    /// `Err`: what still held the move at the deadline, naming each session.
    pub(super) async fn wait_for_sessions(
        &self,
        started: Instant,
        deadline: Instant,
        force: bool,
    ) -> Result<(), String> {
        let gate = self.proxy.gate();
        let clients = self.proxy.clients();
        let max_pause = deadline.saturating_duration_since(started);
        if let Some(limit) = self.settings.stalled_disconnect {
            let stalled: Vec<Holder> = clients
                .holders(limit)
                .into_iter()
                .filter(|h| h.reason != Reason::Server)
                .collect();
            clients.disconnect(&stalled, "stalled_client_disconnect_ms");
        }
        if force {
            // Stalled longer than the whole pause limit already: it would hold the move past
            // it; disconnected at once, so the move keeps its time for its own steps.
            let stalled: Vec<Holder> = clients
                .holders(max_pause)
                .into_iter()
                .filter(|h| h.reason != Reason::Server)
                .collect();
            clients.disconnect(&stalled, "force");
        }
        let first = if force {
            started + max_pause / 2
        } else {
            deadline
        };
        if super::wait_until(first, || gate.busy() == 0).await {
            return Ok(());
        }
        if force {
            let holding: Vec<Holder> = clients
                .holders(Duration::ZERO)
                .into_iter()
                .filter(|h| h.reason != Reason::Server)
                .collect();
            clients.disconnect(&holding, "force");
            if super::wait_until(deadline, || gate.busy() == 0).await {
                return Ok(());
            }
        }
        let holders = clients.holders(Duration::ZERO);
        let named = if holders.is_empty() {
            String::new()
        } else {
            let shown: Vec<String> = holders.iter().take(10).map(Holder::describe).collect();
            let more = holders.len().saturating_sub(10);
            format!(
                ": {}{} (set [cutover] stalled_client_disconnect_ms, or move with --force, to disconnect stalled clients at the move)",
                shown.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            )
        };
        Err(format!(
            "{} sessions still had commands in flight{named}",
            gate.busy()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_say_what_they_wait_for_and_since_when() {
        let clients = Clients::default();
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = || clients.ms(Instant::now());
        let idle = clients.register(addr);
        let reader = clients.register(addr);
        let multi = clients.register(addr);
        let blocked = clients.register(addr);
        let slow = clients.register(addr);
        // Stalled since the registry's start (ms 0), 30 ms ago.
        std::thread::sleep(Duration::from_millis(30));
        let past = 0;
        reader.set_busy(true, past);
        reader.set_pending(46, 4 << 20, false);
        reader.set_name(Some(b"worker-7"));
        multi.set_busy(true, past);
        multi.set_multi(Some(past));
        blocked.set_busy(true, past);
        blocked.set_pending(3, 0, true);
        slow.set_busy(true, now());
        slow.set_pending(1, 0, false);
        let all = clients.holders(Duration::from_millis(20));
        let reasons: Vec<(u64, Reason)> = all.iter().map(|h| (h.id, h.reason)).collect();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(reasons.contains(&(reader.id, Reason::NotReading)));
        assert!(reasons.contains(&(multi.id, Reason::Multi)));
        assert!(reasons.contains(&(blocked.id, Reason::Blocked)));
        assert!(
            !reasons
                .iter()
                .any(|(id, _)| *id == idle.id || *id == slow.id)
        );
        let text = all.iter().find(|h| h.id == reader.id).unwrap().describe();
        assert!(
            text.starts_with("127.0.0.1:5000 (name worker-7, connected"),
            "{text}"
        );
        assert!(text.contains("46 replies / 4.0 MB unread"), "{text}");
        // The slow one is listed with no minimum, as waiting for the server.
        let slow_one = clients.holders(Duration::ZERO);
        assert!(
            slow_one
                .iter()
                .any(|h| h.id == slow.id && h.reason == Reason::Server)
        );
        // The transaction ends, the session leaves: no longer listed.
        multi.set_multi(None);
        multi.set_busy(false, now());
        clients.unregister(reader.id);
        let left: Vec<u64> = clients
            .holders(Duration::from_millis(20))
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(left, vec![blocked.id]);
    }
}
