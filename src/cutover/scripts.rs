//! The script cache across a move.
//!
//! Redis keeps Lua scripts in a per-server cache, addressed by the SHA1 of their body:
//! `SCRIPT LOAD body` (or an `EVAL body …`) puts a script there, `EVALSHA sha …` runs it.
//! Since Redis 7.0 `SCRIPT LOAD` is no longer replicated (scripts are not data), and a
//! replica or a server written by the sync never sees it: after a move every `EVALSHA` of
//! a script loaded before it would fail with `NOSCRIPT No matching script` on the new
//! primary. Many clients (rate limiters, locks, queues) call `EVALSHA` without falling back
//! to `EVAL`, so to them a move would look like an outage.
//!
//! The proxy sees every `SCRIPT LOAD` and every `EVAL`/`EVAL_RO` body its clients send, so
//! it keeps them here ([`Scripts`]), bounded in count and bytes, and each move loads them
//! into the new primary ([`load_into`], pipelined `SCRIPT LOAD`s whose replies must be the
//! expected SHA): everything known before the pause, then, inside the pause (before the held
//! commands are released), what was learned meanwhile. So a script loaded through the proxy
//! — before the first move or between two moves — is on the new primary before any client
//! command reaches it.
//!
//! What the proxy cannot know: a script loaded directly on a server (not through the proxy).
//! No Redis command lists the script cache (`SCRIPT EXISTS` only answers for a given SHA),
//! so such scripts cannot be copied; the first switch compares the source's
//! `number_of_cached_scripts` (`INFO memory`) with what the proxy knows and reports the
//! difference (status and a WARN line); and the SHAs clients call with `EVALSHA` that the
//! registry does not know, but the server has, are listed by SHA
//! ([`super::unknown_scripts`]).
//!
//! Bounds: when a new script would pass `max_scripts` or `max_bytes`, scripts first seen as
//! an `EVAL` body are given up, oldest first (an application generating a new script per
//! call must not push out the few it loads with `SCRIPT LOAD`); a script that still does not
//! fit is not kept. Each script given up that way is counted (`dropped`).
//! `SCRIPT FLUSH` through the proxy empties the registry (the server's cache is empty too).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value as Json, json};

use super::shadow::Value;
use crate::client::Client;
use crate::resp::request::encode_command;

/// Default bound on the number of scripts kept.
pub const DEFAULT_MAX_SCRIPTS: usize = 10_000;
/// Default bound on the bytes of script bodies kept.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// A SHA1, as Redis names scripts (40 lowercase hex digits).
pub type Sha = [u8; 40];

/// A script by its SHA.
pub type Script = (Sha, Arc<[u8]>);

/// How a script became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `SCRIPT LOAD`: the application will call it by SHA.
    Load,
    /// An `EVAL`/`EVAL_RO` body (Redis caches those too; `EVALSHA` of them works directly).
    Eval,
}

struct Entry {
    body: Arc<[u8]>,
    seq: u64,
    origin: Origin,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Sha, Entry>,
    bytes: usize,
    /// Increases with every script learned; [`Scripts::since`] hands out what is newer.
    seq: u64,
    /// Scripts of [`Origin::Eval`], oldest first (given up first at the bound).
    evictable: VecDeque<Sha>,
}

/// The proxy's registry of the scripts its clients loaded (see the module doc).
pub struct Scripts {
    inner: Mutex<Inner>,
    max_scripts: AtomicUsize,
    max_bytes: AtomicUsize,
    dropped: AtomicU64,
    /// Scripts loaded into a new primary by moves, and refused by it.
    loaded: AtomicU64,
    refused: AtomicU64,
    /// What the source's `INFO memory` said at the first switch (`number_of_cached_scripts`).
    source_cached: AtomicU64,
    source_checked: std::sync::atomic::AtomicBool,
    /// `EVALSHA`s of scripts not in the registry ([`super::unknown_scripts`]).
    pub called: super::unknown_scripts::CalledUnknown,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new(DEFAULT_MAX_SCRIPTS, DEFAULT_MAX_BYTES)
    }
}

/// Lowercase hex SHA1 of a script body (Redis' name for it).
pub fn sha1_hex(body: &[u8]) -> Sha {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
    let mut out = [0u8; 40];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in digest.as_ref().iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

impl Scripts {
    pub fn new(max_scripts: usize, max_bytes: usize) -> Self {
        Scripts {
            inner: Mutex::default(),
            max_scripts: AtomicUsize::new(max_scripts),
            max_bytes: AtomicUsize::new(max_bytes),
            dropped: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            source_cached: AtomicU64::new(0),
            source_checked: std::sync::atomic::AtomicBool::new(false),
            called: Default::default(),
        }
    }

    /// Sets the bounds (`[cutover] script_cache_scripts`, `script_cache_bytes`).
    pub fn set_limits(&self, max_scripts: usize, max_bytes: usize) {
        self.max_scripts.store(max_scripts, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Remembers a script body seen in `SCRIPT LOAD` or `EVAL`.
    pub fn learn(&self, body: &[u8], origin: Origin) {
        let sha = sha1_hex(body);
        let Ok(mut g) = self.inner.lock() else { return };
        if let Some(e) = g.map.get_mut(&sha) {
            if origin == Origin::Load && e.origin == Origin::Eval {
                e.origin = Origin::Load;
                g.evictable.retain(|s| *s != sha);
            }
            return;
        }
        let max_n = self.max_scripts.load(Ordering::Relaxed);
        let max_b = self.max_bytes.load(Ordering::Relaxed);
        let fits = |g: &Inner| g.map.len() < max_n && g.bytes + body.len() <= max_b;
        while !fits(&g) {
            let Some(old) = g.evictable.pop_front() else {
                break;
            };
            if let Some(e) = g.map.remove(&old) {
                g.bytes -= e.body.len();
                self.count_drop();
            }
        }
        if !fits(&g) {
            drop(g);
            self.count_drop();
            return;
        }
        g.seq += 1;
        let seq = g.seq;
        g.bytes += body.len();
        if origin == Origin::Eval {
            g.evictable.push_back(sha);
        }
        g.map.insert(
            sha,
            Entry {
                body: Arc::from(body),
                seq,
                origin,
            },
        );
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cutover_scripts_dropped_total").increment(1);
    }

    /// `SCRIPT FLUSH` went through: the server's cache is empty, and so is this one.
    pub fn forget_all(&self) {
        if let Ok(mut g) = self.inner.lock() {
            let seq = g.seq;
            *g = Inner::default();
            g.seq = seq;
        }
    }

    /// The scripts learned after `seq` (0: all), and the sequence number to ask from next.
    pub fn since(&self, seq: u64) -> (Vec<Script>, u64) {
        let Ok(g) = self.inner.lock() else {
            return (Vec::new(), seq);
        };
        let mut out: Vec<(u64, Sha, Arc<[u8]>)> = g
            .map
            .iter()
            .filter(|(_, e)| e.seq > seq)
            .map(|(s, e)| (e.seq, *s, e.body.clone()))
            .collect();
        out.sort_unstable_by_key(|(q, _, _)| *q);
        (out.into_iter().map(|(_, s, b)| (s, b)).collect(), g.seq)
    }

    /// A script the new primary refused (it does not compile there): not offered again.
    fn forget(&self, sha: &Sha) {
        if let Ok(mut g) = self.inner.lock()
            && let Some(e) = g.map.remove(sha)
        {
            g.bytes -= e.body.len();
            g.evictable.retain(|s| s != sha);
        }
    }

    /// Whether the body of `sha` is known.
    pub fn knows(&self, sha: &[u8]) -> bool {
        let Ok(sha) = <Sha>::try_from(sha.to_ascii_lowercase().as_slice()) else {
            return false;
        };
        self.inner.lock().is_ok_and(|g| g.map.contains_key(&sha))
    }

    /// The body of `sha`, if kept.
    pub fn body(&self, sha: &[u8]) -> Option<Arc<[u8]>> {
        let sha = <Sha>::try_from(sha.to_ascii_lowercase().as_slice()).ok()?;
        self.inner
            .lock()
            .ok()?
            .map
            .get(&sha)
            .map(|e| e.body.clone())
    }

    /// (scripts, bytes) kept now.
    pub fn usage(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map(|g| (g.map.len(), g.bytes))
            .unwrap_or((0, 0))
    }

    /// Records the source's `number_of_cached_scripts`, read at the first switch.
    pub fn set_source_cached(&self, n: u64) {
        self.source_cached.store(n, Ordering::Relaxed);
        self.source_checked.store(true, Ordering::Relaxed);
    }

    /// Scripts the source had cached at the first switch beyond what the proxy knows
    /// (`None` before the first switch): their `EVALSHA` may fail with `NOSCRIPT` after it.
    pub fn unknown_on_source(&self) -> Option<u64> {
        self.source_checked.load(Ordering::Relaxed).then(|| {
            self.source_cached
                .load(Ordering::Relaxed)
                .saturating_sub(self.usage().0 as u64)
        })
    }

    /// The `scripts` part of the status document.
    pub fn status(&self) -> Json {
        let (n, bytes) = self.usage();
        let (called, more) = self.called.confirmed(|s| self.knows(s));
        json!({
            "scripts": n,
            "bytes": bytes,
            "max_scripts": self.max_scripts.load(Ordering::Relaxed),
            "max_bytes": self.max_bytes.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "loaded_by_moves": self.loaded.load(Ordering::Relaxed),
            "refused_by_new_primary": self.refused.load(Ordering::Relaxed),
            "source_cached_at_switch": self.source_checked.load(Ordering::Relaxed).then(|| self.source_cached.load(Ordering::Relaxed)),
            "unknown_on_source": self.unknown_on_source(),
            "unknown_called": called,
            "unknown_called_more": more,
        })
    }
}

/// Loads `scripts` into the server behind `c` with pipelined `SCRIPT LOAD`s, all answered
/// by `until`. Each reply must be the script's SHA; a script the server refuses (an error
/// reply: it does not compile there) is logged, counted and forgotten. `Err`: the server
/// did not answer them all in time, or the connection failed.
pub async fn load_into(
    registry: &Scripts,
    c: &mut Client,
    scripts: &[Script],
    until: Instant,
) -> Result<usize, String> {
    if scripts.is_empty() {
        return Ok(0);
    }
    let work = async {
        let mut loaded = 0;
        // In chunks, so that a big registry neither builds one huge buffer nor fills both
        // socket buffers before the first reply is read.
        for chunk in scripts.chunks(256) {
            let mut wire = Vec::new();
            for (_, body) in chunk {
                encode_command(&[&b"SCRIPT"[..], b"LOAD", body], &mut wire);
            }
            c.write(&wire).await?;
            for (sha, _) in chunk {
                let raw = c.read_reply().await?;
                match Value::decode(&raw, 2) {
                    Some(Value::Bytes(got)) if got.eq_ignore_ascii_case(sha) => loaded += 1,
                    Some(Value::Error(e)) => {
                        registry.refused.fetch_add(1, Ordering::Relaxed);
                        registry.forget(sha);
                        tracing::warn!(sha = %String::from_utf8_lossy(sha), error = %e, "the new primary refused a script the proxy had seen; its EVALSHA will fail there");
                    }
                    other => {
                        return Err(format!(
                            "SCRIPT LOAD of {} answered {other:?}",
                            String::from_utf8_lossy(sha)
                        ));
                    }
                }
            }
        }
        Ok(loaded)
    };
    let loaded = tokio::time::timeout_at(tokio::time::Instant::from_std(until), work)
        .await
        .map_err(|_| "the scripts were not all loaded in time".to_string())??;
    registry.loaded.fetch_add(loaded as u64, Ordering::Relaxed);
    metrics::counter!("cutover_scripts_loaded_total").increment(loaded as u64);
    Ok(loaded)
}

/// `number_of_cached_scripts` from a server's `INFO memory` (absent on very old servers).
pub async fn cached_scripts(c: &mut Client) -> Option<u64> {
    c.info("memory").await.ok()?.cached_scripts()
}

impl super::Controller {
    /// Before the pause of a move: every script the proxy knows goes into the new primary
    /// (within the control connections' time limit); the registry's sequence number, from
    /// which [`Self::scripts_in_pause`] continues. At the first switch, the source's own
    /// count of cached scripts is compared with the registry's (scripts loaded directly on
    /// the source cannot be listed, so they cannot be copied: reported instead).
    pub(super) async fn scripts_before_pause(
        &self,
        old: &mut Client,
        new: &mut Client,
    ) -> Result<u64, super::CutoverError> {
        let registry = self.proxy.scripts();
        if self.phase().is_none()
            && let Some(n) = cached_scripts(old).await
        {
            registry.set_source_cached(n);
            if let Some(unknown) = registry.unknown_on_source().filter(|u| *u > 0) {
                tracing::warn!(
                    source_cached = n,
                    unknown,
                    "the source has scripts cached that were not loaded through the proxy; they cannot be copied (no command lists the script cache): an EVALSHA of one of them fails with NOSCRIPT after the switch until its client loads it again (clients that fall back to EVAL recover by themselves)"
                );
            }
        }
        // Scripts the clients call by SHA that the proxy never saw loaded: asked of the old
        // primary now, named (the move goes on: they cannot be copied).
        let asked = tokio::time::timeout(
            self.settings.timeout,
            super::unknown_scripts::resolve(registry, old),
        )
        .await;
        if !matches!(asked, Ok(Ok(()))) {
            tracing::debug!("cannot ask the old primary about the scripts called by SHA");
        }
        let (unknown, more) = registry.called.confirmed(|s| registry.knows(s));
        if !unknown.is_empty() {
            tracing::warn!(
                shas = ?unknown,
                more,
                "moving although clients call scripts by SHA that were not loaded through the proxy: the new primary will not have them, and their EVALSHA fails with NOSCRIPT until the client loads them again"
            );
        }
        let (all, seq) = registry.since(0);
        let until = Instant::now() + self.settings.timeout;
        load_into(registry, new, &all, until).await.map_err(|e| {
            super::CutoverError::Refused(format!(
                "cannot load the {} scripts the proxy knows into the new primary: {e}; not moving",
                all.len()
            ))
        })?;
        Ok(seq)
    }

    /// Inside the pause (every client command held, before the flip): the scripts learned
    /// since [`Self::scripts_before_pause`], by `deadline`. `Err`: the move must be aborted.
    pub(super) async fn scripts_in_pause(
        &self,
        new: &mut Client,
        since: u64,
        deadline: Instant,
    ) -> Result<(), String> {
        let registry = self.proxy.scripts();
        let (later, _) = registry.since(since);
        load_into(registry, new, &later, deadline)
            .await
            .map(|_| ())
            .map_err(|e| format!("the new primary did not take the scripts learned meanwhile: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sha_is_redis_name_for_the_script() {
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(
            &sha1_hex(b"return 1"),
            b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }

    #[test]
    fn bounds_give_up_eval_bodies_first_and_count_what_is_dropped() {
        let s = Scripts::new(3, 1000);
        s.learn(b"return 1", Origin::Load);
        s.learn(b"return 2", Origin::Eval);
        s.learn(b"return 3", Origin::Eval);
        // Full: the oldest EVAL body goes.
        s.learn(b"return 4", Origin::Load);
        assert_eq!(s.usage().0, 3);
        assert!(!s.knows(&sha1_hex(b"return 2")));
        assert!(s.knows(&sha1_hex(b"return 1")));
        assert!(s.knows(&sha1_hex(b"return 4")));
        assert_eq!(s.dropped.load(Ordering::Relaxed), 1);
        // Only loaded scripts left after one more: a new one is not kept.
        s.learn(b"return 5", Origin::Load);
        s.learn(b"return 6", Origin::Load);
        assert_eq!(s.usage().0, 3);
        assert!(!s.knows(&sha1_hex(b"return 6")));
        assert_eq!(s.dropped.load(Ordering::Relaxed), 3);
        // Bytes bound.
        let b = Scripts::new(100, 10);
        b.learn(b"return 12345", Origin::Load);
        assert_eq!(b.usage(), (0, 0));
        b.learn(b"return 1", Origin::Load);
        assert_eq!(b.usage(), (1, 8));
    }

    #[test]
    fn since_hands_out_what_was_learned_later_in_order() {
        let s = Scripts::default();
        s.learn(b"return 1", Origin::Eval);
        let (all, seq) = s.since(0);
        assert_eq!(all.len(), 1);
        s.learn(b"return 1", Origin::Load);
        s.learn(b"return 2", Origin::Load);
        let (later, seq2) = s.since(seq);
        assert_eq!(later.len(), 1);
        assert_eq!(&*later[0].1, b"return 2");
        assert!(s.since(seq2).0.is_empty());
        s.forget_all();
        assert_eq!(s.usage(), (0, 0));
        assert!(s.since(0).0.is_empty());
    }
}
