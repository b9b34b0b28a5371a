//! Foreign writes: during a replica overlap the following link reads every write made on the
//! side it follows (the old side). Everything there should come from the applying link,
//! whose batches are recognisable: each is one `MULTI … EXEC` that also sets
//! `cutover:position` (a batch whose data commands all turned out to be no-ops reaches the
//! stream as the position write alone, and a link that starts applying, or stores its
//! position while idle, writes it alone too). Anything else is **foreign**: a command the
//! proxy sent to the wrong side, an application, cron job or operator writing to the old side
//! directly. It is not on the primary, so the old side is no longer a copy of it and a
//! rollback would hand the clients different data.
//!
//! [`ForeignWatch`] classifies the followed stream command by command (only once the link
//! follows because a move made it the follower: before the first switch the reverse link
//! follows a target that the snapshot load writes into outside batches), and
//! [`ForeignSeen`] keeps what was seen for status (a count, a bounded list of keys, the
//! clients of the old side that `CLIENT LIST` shows writing), `rollback_safe` and the metric
//! `cutover_foreign_writes_total{direction}`.
//!
//! A full resync of the applying link (it lost its place in the primary's stream) loads a
//! new snapshot into the old side, outside batches: between its position set to
//! `snapshot-loading` (before its `FLUSHALL` and after) and its next position, nothing is
//! foreign.
//!
//! A lone `DEL`/`UNLINK` of one key outside a transaction is how the old side propagates its
//! own expirations and evictions, and also what `redis-cli DEL key` sends: it is not decided
//! here but kept ([`ForeignWatch::take_lone_deletes`]) for `expiry.rs`, which asks the
//! primary. Not counted: `SCRIPT LOAD`/`FLUSH`, which change no key (Redis < 7.0 propagates them, so the
//! proxy's own loading of its scripts into a 6.2 primary at a move reaches the stream).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::split_args;
use crate::sync::batch::{LOADING, is_own_key};
use crate::sync::filter::command_keys;
use crate::sync::target::show_key;

/// How many foreign writes (and clients) status names.
pub const NAMED: usize = 10;

/// What a following link saw (shared with status and the controller).
#[derive(Debug, Default)]
pub struct ForeignSeen {
    /// The link follows because a move made it the follower: its stream is checked.
    pub watching: std::sync::atomic::AtomicBool,
    /// Foreign writes counted.
    pub count: AtomicU64,
    /// The first [`NAMED`] foreign writes (`SET key (db 0)`).
    pub keys: Mutex<Vec<String>>,
    /// The old side's clients that wrote last, not ours (bounded; `CLIENT LIST`).
    pub clients: Mutex<Vec<String>>,
}

impl ForeignSeen {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().map(|k| k.clone()).unwrap_or_default()
    }

    pub fn clients(&self) -> Vec<String> {
        self.clients.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Records `n` foreign writes, naming the first ones.
    pub(super) fn record(&self, n: u64, what: Vec<String>) {
        self.count.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut keys) = self.keys.lock() {
            for w in what {
                if keys.len() >= NAMED {
                    break;
                }
                if !keys.contains(&w) {
                    keys.push(w);
                }
            }
        }
    }

    pub(super) fn set_clients(&self, clients: Vec<String>) {
        if clients.is_empty() {
            return;
        }
        if let Ok(mut c) = self.clients.lock() {
            for cl in clients {
                if c.len() >= NAMED {
                    break;
                }
                if !c.contains(&cl) {
                    c.push(cl);
                }
            }
        }
    }
}

/// The classifier of one followed stream (the applier's, across its steps).
#[derive(Debug, Default)]
pub(super) struct ForeignWatch {
    /// Inside a `MULTI` of the stream.
    in_multi: bool,
    /// The open transaction wrote `cutover:position`: it is a batch of ours.
    ours: bool,
    /// The first writes of the open transaction (as received: named only if it turns out
    /// foreign), and how many it has.
    pending: Vec<(Bytes, u64)>,
    pending_count: u64,
    /// The applying link is loading a snapshot into the followed side (its position reads
    /// `snapshot-loading`, set before its `FLUSHALL` and after): everything is its own until
    /// the position is set again.
    loading: bool,
    /// Lone `DEL`/`UNLINK`s of one key seen since the last check (`expiry.rs`): the old
    /// side's expiries, or foreign deletes.
    lone_deletes: Vec<LoneDelete>,
    /// The followed side's `evicted_keys` at the last check of lone deletes (`expiry.rs`),
    /// and when it was last seen growing.
    evicted_seen: Option<u64>,
    evicted_grew: Option<std::time::Instant>,
    /// The open transaction (not ours) holds only one-key `DEL`/`UNLINK`s so far, kept here
    /// (up to [`MULTI_DELETES`]): Redis 7+ wraps the deletes of several keys that expire or
    /// are evicted during one command in `MULTI … EXEC`, so they are lone deletes too.
    multi_dels: Vec<(Bytes, u64)>,
    multi_only_dels: bool,
}

/// How long after the followed side was last seen evicting its lone deletes are taken as
/// evictions.
const EVICTING: std::time::Duration = std::time::Duration::from_secs(10);

/// One-key deletes of a transaction kept to be decided as lone deletes; a transaction with
/// more is counted as foreign as a whole.
const MULTI_DELETES: usize = 16 * 1024;

/// A one-key `DEL`/`UNLINK` as a server propagates it (its expiries and evictions).
fn is_one_key_delete(wire: &[u8]) -> bool {
    wire.starts_with(b"*2\r\n$3\r\nDEL\r\n") || wire.starts_with(b"*2\r\n$6\r\nUNLINK\r\n")
}

/// A lone `DEL`/`UNLINK` of one key in the followed stream, to be decided by asking the
/// primary whether the key was expiring (`expiry.rs`).
#[derive(Debug, Clone)]
pub(super) struct LoneDelete {
    /// The followed side's database (the stream's).
    pub db: u64,
    pub key: Bytes,
    /// `DEL key (db N)`, for status.
    pub named: String,
}

/// Lone deletes kept before the caller must decide them (bounds the memory of a burst).
pub(super) const LONE_DELETES: usize = 1024;

/// How the applying link's position write reaches the stream (`SET cutover:position …`, as
/// `batch::queue_set` sends it): one comparison per command inside a transaction.
const POSITION_SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$16\r\ncutover:position\r\n";

/// `wire` is the one-argument command `name` (`MULTI`, `EXEC`).
fn is_bare(wire: &[u8], name: &[u8]) -> bool {
    wire.len() == 8 + name.len() + 2
        && wire.starts_with(b"*1\r\n$")
        && wire
            .get(8..8 + name.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// A `SELECT` (which writes nothing).
fn is_select(wire: &[u8]) -> bool {
    wire.starts_with(b"*2\r\n$6\r\n")
        && wire
            .get(8..14)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"SELECT"))
}

/// `NAME key (db N)` of a command.
fn describe(args: &[&[u8]], db: u64) -> String {
    let upper = args
        .first()
        .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
        .unwrap_or_default();
    let key = command_keys(&upper, args)
        .first()
        .and_then(|i| args.get(*i).copied());
    match key {
        Some(k) => format!("{upper} {} (db {db})", show_key(k)),
        None => format!("{upper} (db {db})"),
    }
}

impl ForeignWatch {
    /// Records the followed side's `evicted_keys`; whether it evicted lately: since the last
    /// call (at the first: ever), or within [`EVICTING`] of a call that saw it grow (the
    /// deletes checked now were read from a stream that lags the counter). Its lone deletes
    /// are then evictions, which the eviction watcher (`cutover::memory`) reports, not
    /// foreign deletes.
    pub(super) fn evicting(&mut self, evicted_keys: u64) -> bool {
        let now = std::time::Instant::now();
        let grew = match self.evicted_seen.replace(evicted_keys) {
            None => evicted_keys > 0,
            Some(b) => evicted_keys > b,
        };
        if grew {
            self.evicted_grew = Some(now);
        }
        self.evicted_grew
            .is_some_and(|t| now.duration_since(t) < EVICTING)
    }
    /// Looks at one command of the followed stream (in database `db`); returns the foreign
    /// writes it completes: their number and the first of them named. Inside a transaction
    /// this costs one comparison per command; the commands are parsed only outside one, or
    /// when a transaction turns out foreign.
    pub(super) fn see(&mut self, wire: &Bytes, db: u64) -> Option<(u64, Vec<String>)> {
        if self.in_multi {
            if is_bare(wire, b"EXEC") {
                self.in_multi = false;
                if self.ours || self.pending_count == 0 {
                    return None;
                }
                if self.multi_only_dels && self.multi_dels.len() as u64 == self.pending_count {
                    // Expiries or evictions of several keys at once (or a foreign
                    // transaction of deletes): decided one by one, as lone deletes.
                    self.pending.clear();
                    self.pending_count = 0;
                    for (w, db) in std::mem::take(&mut self.multi_dels) {
                        self.lone_delete(&w, db);
                    }
                    return None;
                }
                let named = std::mem::take(&mut self.pending)
                    .iter()
                    .filter_map(|(w, db)| Some(describe(&split_args(w).ok()?, *db)))
                    .collect();
                return Some((std::mem::take(&mut self.pending_count), named));
            }
            if self.ours || is_select(wire) {
                return None;
            }
            if db == 0 && wire.starts_with(POSITION_SET) {
                self.ours = true;
                self.pending.clear();
                return None;
            }
            self.pending_count += 1;
            if self.pending.len() < NAMED {
                self.pending.push((wire.clone(), db));
            }
            if self.multi_only_dels {
                if is_one_key_delete(wire) && self.multi_dels.len() < MULTI_DELETES {
                    self.multi_dels.push((wire.clone(), db));
                } else {
                    self.multi_only_dels = false;
                    self.multi_dels = Vec::new();
                }
            }
            return None;
        }
        if is_bare(wire, b"MULTI") {
            self.in_multi = true;
            self.ours = false;
            self.pending.clear();
            self.pending_count = 0;
            self.multi_dels.clear();
            self.multi_only_dels = true;
            return None;
        }
        if is_select(wire) {
            return None;
        }
        if db == 0 && wire.starts_with(POSITION_SET) {
            // The position alone (a start, an idle store, a snapshot load's start or end).
            let args = split_args(wire).ok()?;
            self.loading = args.get(2).is_some_and(|v| *v == LOADING.as_bytes());
            return None;
        }
        if self.loading {
            return None;
        }
        let args = split_args(wire).ok()?;
        let name = *args.first()?;
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        // `SCRIPT` (`LOAD`, `FLUSH`: Redis < 7.0 propagates them) changes no key: the proxy's
        // own script loading into a new primary (`cutover::scripts`) reaches its stream so.
        if [
            "PING", "REPLCONF", "PUBLISH", "SPUBLISH", "EXEC", "DISCARD", "SCRIPT",
        ]
        .iter()
        .any(|n| is(n))
        {
            return None;
        }
        if (is("DEL") || is("UNLINK")) && args.len() == 2 {
            // The old side's own expiration or eviction, or a foreign delete: the primary
            // tells (`expiry.rs`).
            self.lone_delete(wire, db);
            return None;
        }
        let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
        if command_keys(&upper, &args)
            .iter()
            .any(|i| args.get(*i).is_some_and(|k| is_own_key(db, k)))
        {
            // cutover's own marker (`cutover:switched`).
            return None;
        }
        Some((1, vec![describe(&args, db)]))
    }
}

impl ForeignWatch {
    /// Keeps a one-key delete to be decided by `expiry.rs` (cutover's own keys aside).
    fn lone_delete(&mut self, wire: &[u8], db: u64) {
        let Ok(args) = split_args(wire) else {
            return;
        };
        if args.len() == 2 && !is_own_key(db, args[1]) {
            self.lone_deletes.push(LoneDelete {
                db,
                key: Bytes::copy_from_slice(args[1]),
                named: describe(&args, db),
            });
        }
    }

    /// The lone deletes seen since the last call, to decide now.
    pub(super) fn take_lone_deletes(&mut self) -> Vec<LoneDelete> {
        std::mem::take(&mut self.lone_deletes)
    }

    /// So many lone deletes wait that they must be decided before reading on.
    pub(super) fn lone_deletes_full(&self) -> bool {
        self.lone_deletes.len() >= LONE_DELETES
    }
}

/// The clients in a `CLIENT LIST` reply that may have written foreign writes: not replicas
/// or masters, not cutover's own writers, whose last command was a write, active within the
/// last few seconds (the proxy's connections to the old side are idle since the move).
pub(super) fn writing_clients(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in list.lines() {
        let (mut addr, mut flags, mut cmd, mut name, mut idle) = ("", "", "", "", u64::MAX);
        for field in line.split(' ') {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            match k {
                "addr" => addr = v,
                "flags" => flags = v,
                "cmd" => cmd = v,
                "name" => name = v,
                "idle" => idle = v.parse().unwrap_or(u64::MAX),
                _ => {}
            }
        }
        if flags.contains('S') || flags.contains('M') || name == crate::sync::target::CLIENT_NAME {
            continue;
        }
        let base = cmd.split('|').next().unwrap_or("");
        let writes = crate::command::lookup(base.as_bytes())
            .is_some_and(|c| c.flags & crate::command::F_WRITE != 0);
        if writes && idle <= 5 {
            let named = if name.is_empty() {
                String::new()
            } else {
                format!(" name={name}")
            };
            out.push(format!("{addr}{named} (last command {cmd}, idle {idle} s)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn see(w: &mut ForeignWatch, cmd: &[&str]) -> Option<(u64, Vec<String>)> {
        let mut wire = format!("*{}\r\n", cmd.len());
        for a in cmd {
            wire.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        w.see(&Bytes::from(wire), 0)
    }

    #[test]
    fn batches_of_the_applying_link_are_not_foreign() {
        let mut w = ForeignWatch::default();
        assert_eq!(see(&mut w, &["MULTI"]), None);
        assert_eq!(see(&mut w, &["SET", "a", "1"]), None);
        assert_eq!(see(&mut w, &["SELECT", "0"]), None);
        assert_eq!(see(&mut w, &["SET", "cutover:position", "x 1 0"]), None);
        assert_eq!(see(&mut w, &["EXEC"]), None);
        // The position alone (a start, an idle store).
        assert_eq!(see(&mut w, &["SET", "cutover:position", "x 2 0"]), None);
        // Expirations (or foreign deletes: kept for the primary to tell).
        assert_eq!(see(&mut w, &["DEL", "gone"]), None);
        let lone = w.take_lone_deletes();
        assert_eq!(lone.len(), 1);
        assert_eq!(lone[0].named, "DEL gone (db 0)");
        assert!(w.take_lone_deletes().is_empty());
        // The proxy's script loading into a Redis 6.2 primary reaches its stream.
        assert_eq!(see(&mut w, &["SCRIPT", "LOAD", "return 1"]), None);
        assert_eq!(see(&mut w, &["PING"]), None);
    }

    #[test]
    fn anything_else_is_foreign() {
        let mut w = ForeignWatch::default();
        assert_eq!(
            see(&mut w, &["SET", "k", "v"]),
            Some((1, vec!["SET k (db 0)".to_string()]))
        );
        assert_eq!(see(&mut w, &["MULTI"]), None);
        assert_eq!(see(&mut w, &["INCR", "a"]), None);
        assert_eq!(see(&mut w, &["RPUSH", "l", "x"]), None);
        assert_eq!(
            see(&mut w, &["EXEC"]),
            Some((
                2,
                vec!["INCR a (db 0)".to_string(), "RPUSH l (db 0)".to_string()]
            ))
        );
        assert!(see(&mut w, &["DEL", "a", "b"]).is_some());
    }

    /// Redis 7+ wraps the deletes of several keys expired or evicted during one command in a
    /// transaction: they are lone deletes too (decided by `expiry.rs`), unless anything else
    /// is in the transaction.
    #[test]
    fn a_transaction_of_one_key_deletes_is_lone_deletes() {
        let mut w = ForeignWatch::default();
        assert_eq!(see(&mut w, &["MULTI"]), None);
        assert_eq!(see(&mut w, &["DEL", "a"]), None);
        assert_eq!(see(&mut w, &["UNLINK", "b"]), None);
        assert_eq!(see(&mut w, &["EXEC"]), None);
        let lone = w.take_lone_deletes();
        let named: Vec<&str> = lone.iter().map(|d| d.named.as_str()).collect();
        assert_eq!(named, ["DEL a (db 0)", "UNLINK b (db 0)"]);
        assert_eq!(see(&mut w, &["MULTI"]), None);
        assert_eq!(see(&mut w, &["DEL", "a"]), None);
        assert_eq!(see(&mut w, &["SET", "c", "1"]), None);
        assert_eq!(see(&mut w, &["EXEC"]).map(|(n, _)| n), Some(2));
        assert!(w.take_lone_deletes().is_empty());
        // A delete of several keys is not a server's own.
        assert_eq!(see(&mut w, &["MULTI"]), None);
        assert_eq!(see(&mut w, &["DEL", "a", "b"]), None);
        assert_eq!(see(&mut w, &["EXEC"]).map(|(n, _)| n), Some(1));
    }

    #[test]
    fn a_snapshot_load_of_the_applying_link_is_not_foreign() {
        let mut w = ForeignWatch::default();
        assert_eq!(see(&mut w, &["SET", "cutover:position", LOADING]), None);
        assert_eq!(see(&mut w, &["FLUSHALL"]), None);
        assert_eq!(see(&mut w, &["SET", "cutover:position", LOADING]), None);
        assert_eq!(see(&mut w, &["MSET", "a", "1", "b", "2"]), None);
        assert_eq!(see(&mut w, &["SET", "cutover:position", "x 10 0"]), None);
        assert!(see(&mut w, &["MSET", "a", "1"]).is_some());
    }

    #[test]
    fn client_list() {
        let list = "id=3 addr=127.0.0.1:5000 laddr=x fd=8 name= age=1 idle=0 flags=N db=0 cmd=set user=default\n\
                    id=4 addr=127.0.0.1:5001 fd=9 name=cutover-sync age=9 idle=0 flags=N db=0 cmd=exec\n\
                    id=5 addr=127.0.0.1:5002 fd=9 name= age=9 idle=0 flags=S db=0 cmd=psync\n\
                    id=6 addr=127.0.0.1:5003 fd=9 name=app age=9 idle=0 flags=N db=0 cmd=get\n\
                    id=7 addr=127.0.0.1:5004 fd=9 name=old age=99 idle=90 flags=N db=0 cmd=set\n";
        assert_eq!(
            writing_clients(list),
            vec!["127.0.0.1:5000 (last command set, idle 0 s)".to_string()]
        );
    }
}
