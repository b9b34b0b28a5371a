//! Shadow writes: after a switch, every write the new primary acknowledged is copied to the
//! old side, in a form that gives the same result there, so a rollback loses nothing.
//!
//! Replaying a command as the client sent it is not always right: `INCR` on a side that
//! missed nothing gives the same number, but `EXPIRE k 10` sent a few milliseconds later ends
//! a few milliseconds later, `SPOP` picks another member, `XADD *` makes another id. So each
//! write is turned into a **deterministic** command from the command *and its reply* (what
//! Redis itself does for its replicas):
//!
//! | client command                                  | shadow command                        |
//! |-------------------------------------------------|---------------------------------------|
//! | `INCR`/`DECR`/`INCRBY`/`DECRBY`                  | `INCRBY key <delta>` (see below)      |
//! | `INCRBYFLOAT`                                    | `SET key <reply> KEEPTTL`             |
//! | `HINCRBY key field n`                            | itself (see below)                    |
//! | `HINCRBYFLOAT key field`                         | `HSET key field <reply>`              |
//! | `ZINCRBY key n member`                           | `ZADD key <reply> member`             |
//! | `EXPIRE`/`PEXPIRE` (reply 1)                     | `PEXPIREAT key <now + ttl>`           |
//! | `SETEX`/`PSETEX`/`SET … EX/PX/EXAT`              | `SET key value PXAT <absolute>`       |
//! | `SET … NX/XX/GET`                                | plain `SET` if it was applied, else — |
//! | `GETEX … EX/PX/…`, `GETEX … PERSIST`, `GETDEL`   | `PEXPIREAT`, `PERSIST`, `DEL`         |
//! | `SPOP`                                           | `SREM key <members it returned>`      |
//! | `XADD key … *`                                   | `XADD key … <id it returned>`         |
//! | `BLPOP`/`BRPOP`/`BRPOPLPUSH`/`BLMOVE`/`BZPOP*`   | `LPOP`/`RPOP`/`RPOPLPUSH`/`LMOVE`/`ZREM` |
//! | `EVAL`/`EVALSHA`/`FCALL`, `SORT … STORE`, `RESTORE`, `*MPOP` | copy of the keys' state after it |
//! | any other write                                  | itself                                 |
//!
//! **Order.** One client's writes reach the old side in the order the primary answered them.
//! Writes of *different* clients are queued in the order the proxy handled their replies,
//! which can differ from the primary's own order by a few microseconds when two clients write
//! the same key at the same instant. That is why integer counters are shadowed as their
//! *delta* rather than their result: increments commute, so a counter incremented by many
//! clients at once is exact on the old side whatever the interleaving (`SET <result>` could
//! leave an older result last). Float increments do not commute exactly (rounding), so they
//! use the result form, as do the other rewrites. `cutover verify` compares both sides before
//! `finish`.
//!
//! Writes the primary refused (error replies) and conditional writes that did nothing (`SET
//! NX` answered nil, `EXPIRE` answered 0) are not shadowed. Reads are never shadowed.
//!
//! The queue between the sessions and the shadow writer is bounded: a session never waits for
//! the old side. If the queue overflows, or the old side refuses a shadow write or cannot be
//! reached, the rollback is no longer safe: [`ShadowSink::mark_unsafe`] records why (status,
//! metric, log) and the primary keeps going at full speed.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::route::Side;

pub use crate::client::Value;

use crate::command::flags_where;

/// One command as argument vectors.
pub type Args = Vec<Vec<u8>>;

/// Whether a captured command (RESP bytes) runs a script or function.
pub fn is_script(wire: &[u8]) -> bool {
    crate::sync::engine::split_args(wire)
        .ok()
        .and_then(|a| a.first().map(|n| n.to_ascii_lowercase()))
        .is_some_and(|n| matches!(n.as_slice(), b"eval" | b"evalsha" | b"fcall"))
}

/// What to do on the old side for one acknowledged write.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing changed on the primary (or the command only reads).
    Skip,
    /// These commands (in one `MULTI … EXEC` when several).
    Apply(Vec<Args>),
    /// The command exactly as the client sent it (RESP bytes): most writes.
    Raw(Vec<u8>),
    /// Copy the current state of these keys from the primary.
    CopyKeys(Vec<Vec<u8>>),
    /// Cannot be reproduced on the old side: the rollback is no longer safe.
    Unsupported(String),
    /// A command that answers 1 once it has done its work and 0 while what it removes is not
    /// there yet (the element a blocking pop took, whose push is still queued behind it): the
    /// writer retries it after the writes that follow, for a bounded time.
    Take(Args),
    /// A script or function run again on the old side, with the reply the primary gave. Its
    /// declared keys are ordered like any write's ([`super::order`]), so it meets the same
    /// state there; the writer compares the replies, and a difference (a script that is not
    /// deterministic, or that writes keys it did not declare) makes the rollback unsafe.
    Replay(Args, Option<Value>),
    /// A write whose primary reply says the key was there (an `EXPIRE` answered 1, a `GETEX`
    /// that returned a value, an `INCR` that did not start from nothing): the old side
    /// answering `.1` instead means it no longer had the key — it expired it first (its
    /// clock ahead, or the refresh reached it a little late). The writer counts and names
    /// the key and marks the rollback unsafe ([`ShadowSink::lost_key`]): see `lost_key` for
    /// why the key is not copied back.
    Expect(Args, Value),
}

/// `BRPOPLPUSH`/`BLMOVE` on the old side: move that element once it is there.
const MOVE_SCRIPT: &str = "if redis.call('LREM', KEYS[1], ARGV[2], ARGV[1]) == 1 then redis.call(ARGV[3], KEYS[2], ARGV[1]) return 1 end return 0";

/// Writes (and the few commands the old side needs to stay in step), by command id, from the
/// command table ([`crate::command`]): every command a server flags `write` (a container
/// such as `XGROUP` when one of its subcommands is), and the scripting commands that are not
/// read-only (`EVAL`, `EVALSHA`, `FCALL`, `SCRIPT`, `FUNCTION`: the old side needs the same
/// scripts, and their writes are not flagged on the command). Never `CLUSTER` (Valkey 9.1's
/// `CLUSTER FLUSHSLOT` is a write, but the container is mostly reads about the cluster the
/// proxy talks to, not data for the old side).
fn write_table() -> &'static [bool] {
    static TABLE: OnceLock<Vec<bool>> = OnceLock::new();
    TABLE.get_or_init(|| flags_where(is_write_command))
}

fn is_write_command(c: &crate::command::Command) -> bool {
    use crate::command::{F_READONLY, F_WRITE};
    if c.name == "cluster" {
        return false;
    }
    let scripting =
        c.in_category("scripting") || c.subcommands.iter().any(|s| s.in_category("scripting"));
    c.has_flag(F_WRITE) || (scripting && !c.has_flag(F_READONLY))
}

/// Must the proxy capture this command to shadow it? (By the id of `command::command_id`.)
pub fn is_write(cmd: usize) -> bool {
    write_table().get(cmd).copied().unwrap_or(false)
}

/// Does this write's shadow form depend on its reply (or differ from the command)? The others
/// are sent to the old side as the client sent them when they succeeded, without decoding
/// anything.
pub fn needs_reply(cmd: usize) -> bool {
    static TABLE: OnceLock<Vec<bool>> = OnceLock::new();
    let table = TABLE.get_or_init(|| flags_where(|c| NEEDS_REPLY.contains(&c.name)));
    // Unknown commands are never captured; be safe anyway.
    table.get(cmd).copied().unwrap_or(true)
}

/// The writes [`shadow_form`] rewrites (everything else there is "itself").
const NEEDS_REPLY: &[&str] = &[
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "hincrbyfloat",
    "zincrby",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "setex",
    "psetex",
    "set",
    "getex",
    "getdel",
    "spop",
    "xadd",
    "lpop",
    "rpop",
    "rpoplpush",
    "lmove",
    "blpop",
    "brpop",
    "brpoplpush",
    "blmove",
    "bzpopmin",
    "bzpopmax",
    "blmpop",
    "bzmpop",
    "lmpop",
    "zmpop",
    "xreadgroup",
    "eval",
    "evalsha",
    "fcall",
    "sort",
    "georadius",
    "georadiusbymember",
    "restore",
    "migrate",
];

fn upper(a: &[u8]) -> Vec<u8> {
    a.to_ascii_uppercase()
}

fn num(a: &[u8]) -> Option<f64> {
    std::str::from_utf8(a).ok()?.trim().parse().ok()
}

fn cmd(parts: &[&[u8]]) -> Args {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// The deterministic form of an acknowledged write (`reply` is not an error), at `now_ms`
/// (Unix milliseconds) for relative expiry.
pub fn shadow_form(args: &[Vec<u8>], reply: &Value, now_ms: u64) -> Action {
    if matches!(reply, Value::Error(_)) || args.is_empty() {
        return Action::Skip;
    }
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let key = args.get(1).cloned().unwrap_or_default();
    let same = || Action::Apply(vec![args.to_vec()]);
    match name.as_str() {
        "incr" | "decr" | "incrby" | "decrby" => {
            let n = args
                .get(2)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse::<i64>().ok());
            let by = match (name.as_str(), n) {
                ("incr", _) => Some(1),
                ("decr", _) => Some(-1),
                ("incrby", n) => n,
                (_, n) => n.and_then(i64::checked_neg),
            };
            match (by, reply.text()) {
                // The primary's result differs from the delta: the key was there. The old
                // side answering the delta itself means it started from nothing.
                (Some(by), _) if *reply != Value::Int(by) => Action::Expect(
                    cmd(&[b"INCRBY", &key, by.to_string().as_bytes()]),
                    Value::Int(by),
                ),
                (Some(by), _) => {
                    Action::Apply(vec![cmd(&[b"INCRBY", &key, by.to_string().as_bytes()])])
                }
                (None, Some(v)) => Action::Apply(vec![cmd(&[b"SET", &key, &v, b"KEEPTTL"])]),
                (None, None) => Action::Unsupported(format!("{name} answered {reply:?}")),
            }
        }
        "incrbyfloat" => match reply.text() {
            Some(v) => Action::Apply(vec![cmd(&[b"SET", &key, &v, b"KEEPTTL"])]),
            None => Action::Unsupported(format!("{name} answered {reply:?}")),
        },
        "hincrbyfloat" => match (args.get(2), reply.text()) {
            (Some(field), Some(v)) => Action::Apply(vec![cmd(&[b"HSET", &key, field, &v])]),
            _ => Action::Unsupported(format!("{name} answered {reply:?}")),
        },
        "zincrby" => match (args.get(3), reply.text()) {
            (Some(member), Some(v)) => Action::Apply(vec![cmd(&[b"ZADD", &key, &v, member])]),
            _ => Action::Unsupported(format!("{name} answered {reply:?}")),
        },
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            if *reply != Value::Int(1) {
                return Action::Skip;
            }
            let Some(n) = args.get(2).and_then(|a| num(a)) else {
                return Action::Skip;
            };
            let at = match name.as_str() {
                "expire" => now_ms as f64 + n * 1000.0,
                "pexpire" => now_ms as f64 + n,
                "expireat" => n * 1000.0,
                _ => n,
            };
            Action::Expect(
                cmd(&[
                    b"PEXPIREAT",
                    &key,
                    (at.max(0.0) as u64).to_string().as_bytes(),
                ]),
                Value::Int(0),
            )
        }
        "setex" | "psetex" => {
            let (Some(t), Some(v)) = (args.get(2).and_then(|a| num(a)), args.get(3)) else {
                return Action::Skip;
            };
            let ms = if name == "setex" { t * 1000.0 } else { t };
            let at = (now_ms as f64 + ms) as u64;
            Action::Apply(vec![cmd(&[
                b"SET",
                &key,
                v,
                b"PXAT",
                at.to_string().as_bytes(),
            ])])
        }
        "set" => shadow_set(args, reply, now_ms),
        "getex" => {
            if *reply == Value::Nil {
                return Action::Skip;
            }
            let opt = args.get(2).map(|a| upper(a));
            let n = args.get(3).and_then(|a| num(a)).unwrap_or(0.0);
            let at = match opt.as_deref() {
                Some(b"EX") => now_ms as f64 + n * 1000.0,
                Some(b"PX") => now_ms as f64 + n,
                Some(b"EXAT") => n * 1000.0,
                Some(b"PXAT") => n,
                Some(b"PERSIST") => return Action::Apply(vec![cmd(&[b"PERSIST", &key])]),
                _ => return Action::Skip,
            };
            Action::Expect(
                cmd(&[b"PEXPIREAT", &key, (at as u64).to_string().as_bytes()]),
                Value::Int(0),
            )
        }
        "getdel" => match reply {
            Value::Nil => Action::Skip,
            _ => Action::Apply(vec![cmd(&[b"DEL", &key])]),
        },
        "spop" => {
            let members: Vec<Vec<u8>> = match reply {
                Value::Bytes(m) => vec![m.clone()],
                Value::Array(items) => items.iter().filter_map(Value::text).collect(),
                _ => Vec::new(),
            };
            if members.is_empty() {
                return Action::Skip;
            }
            let mut c = cmd(&[b"SREM", &key]);
            c.extend(members);
            Action::Apply(vec![c])
        }
        "xadd" => {
            let Value::Bytes(id) = reply else {
                return Action::Skip; // NOMKSTREAM on a missing stream
            };
            let mut c = args.to_vec();
            if let Some(star) = c.iter().position(|a| a == b"*") {
                c[star] = id.clone();
            }
            Action::Apply(vec![c])
        }
        // A blocking pop is served *because* another client pushed, and the proxy may see the
        // pop's reply before the push's: remove the very element, and let the writer retry
        // until the push has reached the old side (see `Action::Take`).
        "blpop" | "brpop" => match reply {
            Value::Array(kv) if kv.len() == 2 => match (kv[0].text(), kv[1].text()) {
                (Some(k), Some(e)) => {
                    let from: &[u8] = if name == "blpop" { b"1" } else { b"-1" };
                    Action::Take(cmd(&[b"LREM", &k, from, &e]))
                }
                _ => Action::Skip,
            },
            _ => Action::Skip,
        },
        // A pop removes the very elements it returned, not "the head": a blocking pop served
        // just before it may not have reached the old side yet (its element is still there).
        "lpop" | "rpop" => {
            let from: &[u8] = if name == "lpop" { b"1" } else { b"-1" };
            let elems: Vec<Vec<u8>> = match reply {
                Value::Bytes(e) => vec![e.clone()],
                Value::Array(v) => v.iter().filter_map(Value::text).collect(),
                _ => Vec::new(),
            };
            if elems.is_empty() {
                return Action::Skip;
            }
            Action::Apply(
                elems
                    .iter()
                    .map(|e| cmd(&[b"LREM", &key, from, e]))
                    .collect(),
            )
        }
        "brpoplpush" | "blmove" | "rpoplpush" | "lmove" => {
            let (from, to): (&[u8], &[u8]) = if matches!(name.as_str(), "brpoplpush" | "rpoplpush")
            {
                (b"-1", b"LPUSH")
            } else {
                let side = |a: Option<&Vec<u8>>| a.map(|s| s.eq_ignore_ascii_case(b"LEFT"));
                (
                    if side(args.get(3)) == Some(true) {
                        b"1"
                    } else {
                        b"-1"
                    },
                    if side(args.get(4)) == Some(true) {
                        b"LPUSH"
                    } else {
                        b"RPUSH"
                    },
                )
            };
            match (reply, args.get(2)) {
                (Value::Bytes(e), Some(dst)) => Action::Take(cmd(&[
                    b"EVAL",
                    MOVE_SCRIPT.as_bytes(),
                    b"2",
                    &key,
                    dst,
                    e,
                    from,
                    to,
                ])),
                _ => Action::Skip,
            }
        }
        "bzpopmin" | "bzpopmax" => match reply {
            Value::Array(v) if v.len() >= 2 => match (v[0].text(), v[1].text()) {
                (Some(k), Some(m)) => Action::Take(cmd(&[b"ZREM", &k, &m])),
                _ => Action::Skip,
            },
            _ => Action::Skip,
        },
        "blmpop" | "bzmpop" | "lmpop" | "zmpop" => match reply {
            Value::Array(v) if !v.is_empty() => match v[0].text() {
                Some(k) => Action::CopyKeys(vec![k]),
                None => Action::Skip,
            },
            _ => Action::Skip,
        },
        "xreadgroup" => {
            if *reply == Value::Nil {
                return Action::Skip;
            }
            // The same read on the same state delivers the same entries; never block there.
            let mut c = Vec::with_capacity(args.len());
            let mut i = 0;
            while i < args.len() {
                if args[i].eq_ignore_ascii_case(b"BLOCK") {
                    i += 2;
                    continue;
                }
                c.push(args[i].clone());
                i += 1;
            }
            Action::Apply(vec![c])
        }
        // Run again on the old side (not a copy of the keys it touched: that costs the size
        // of the keys on every call, quadratic for a growing list).
        "eval" | "evalsha" | "fcall" => Action::Replay(args.to_vec(), Some(reply.clone())),
        "sort" => match args.iter().position(|a| a.eq_ignore_ascii_case(b"STORE")) {
            Some(i) => match args.get(i + 1) {
                Some(dst) => Action::CopyKeys(vec![dst.clone()]),
                None => Action::Skip,
            },
            None => Action::Skip,
        },
        "georadius" | "georadiusbymember" => {
            match args.iter().position(|a| {
                a.eq_ignore_ascii_case(b"STORE") || a.eq_ignore_ascii_case(b"STOREDIST")
            }) {
                Some(i) => match args.get(i + 1) {
                    Some(dst) => Action::CopyKeys(vec![dst.clone()]),
                    None => Action::Skip,
                },
                None => Action::Skip,
            }
        }
        "restore" => Action::CopyKeys(vec![key]),
        "migrate" => Action::Unsupported("MIGRATE moved keys away from the primary".into()),
        "zpopmin" | "zpopmax" if *reply == Value::Nil => Action::Skip,
        _ => same(),
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn shadow_set(args: &[Vec<u8>], reply: &Value, now_ms: u64) -> Action {
    let (Some(key), Some(value)) = (args.get(1), args.get(2)) else {
        return Action::Skip;
    };
    let mut cond = false;
    let mut get = false;
    let mut nx = false;
    let mut expiry: Option<Args> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = upper(&args[i]);
        let next = args.get(i + 1).and_then(|a| num(a));
        match opt.as_slice() {
            b"NX" => {
                cond = true;
                nx = true;
            }
            b"XX" => cond = true,
            b"GET" => get = true,
            b"KEEPTTL" => expiry = Some(vec![b"KEEPTTL".to_vec()]),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let n = next.unwrap_or(0.0);
                let at = match opt.as_slice() {
                    b"EX" => now_ms as f64 + n * 1000.0,
                    b"PX" => now_ms as f64 + n,
                    b"EXAT" => n * 1000.0,
                    _ => n,
                };
                expiry = Some(vec![b"PXAT".to_vec(), (at as u64).to_string().into_bytes()]);
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    let applied = match (get, cond) {
        // OK, or nil when the condition was not met.
        (false, _) => *reply != Value::Nil,
        (true, false) => true,
        // GET with NX: the old value means the key existed (not set); nil means it was set.
        (true, true) if nx => *reply == Value::Nil,
        // GET with XX: nil means the key did not exist (not set).
        (true, true) => *reply != Value::Nil,
    };
    if !applied {
        return Action::Skip;
    }
    let mut c = vec![b"SET".to_vec(), key.clone(), value.clone()];
    c.extend(expiry.unwrap_or_default());
    Action::Apply(vec![c])
}

/// One acknowledged write for the old side.
#[derive(Debug)]
pub struct ShadowItem {
    /// The database the client had selected.
    pub db: u32,
    pub action: Action,
}

/// The sessions' end of the shadow queue, and the state `status` reports.
pub struct ShadowSink {
    /// The side that receives the shadow writes (the old primary).
    pub side: Side,
    tx: mpsc::Sender<ShadowItem>,
    enqueued: AtomicU64,
    applied: AtomicU64,
    safe: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Writes the old side answered as if their key were missing ([`Action::Expect`]).
    lost: AtomicU64,
    /// The first [`LOST_NAMED`] of those keys, `db:key`, for status.
    lost_keys: Mutex<Vec<String>>,
}

/// How many keys lost on the old side status names (the count is exact).
pub const LOST_NAMED: usize = 20;

impl ShadowSink {
    /// A sink with room for `capacity` writes, and the receiver the writer task drains.
    pub fn new(side: Side, capacity: usize) -> (ShadowSink, mpsc::Receiver<ShadowItem>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            ShadowSink {
                side,
                tx,
                enqueued: AtomicU64::new(0),
                applied: AtomicU64::new(0),
                safe: AtomicBool::new(true),
                reason: Mutex::new(None),
                lost: AtomicU64::new(0),
                lost_keys: Mutex::new(Vec::new()),
            },
            rx,
        )
    }

    /// Queues a write; never waits. A full queue makes the rollback unsafe.
    pub fn push(&self, item: ShadowItem) {
        if let Action::Unsupported(why) = &item.action {
            self.mark_unsafe(&format!(
                "a write cannot be copied to the {}: {why}",
                self.side.as_str()
            ));
            return;
        }
        if item.action == Action::Skip {
            return;
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                self.enqueued.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("cutover_shadow_writes_total").increment(1);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.mark_unsafe(&format!(
                "the shadow queue is full ({} writes not yet on the {}); raise [cutover] shadow_queue",
                self.pending(),
                self.side.as_str()
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.mark_unsafe("the shadow writer stopped")
            }
        }
    }

    /// Records why a rollback would now lose writes (the first reason is kept).
    pub fn mark_unsafe(&self, why: &str) {
        if self.safe.swap(false, Ordering::AcqRel) {
            tracing::error!(reason = why, "rollback is no longer safe");
            metrics::counter!("cutover_shadow_unsafe_total").increment(1);
            if let Ok(mut r) = self.reason.lock() {
                *r = Some(why.to_string());
            }
        }
        metrics::gauge!("cutover_rollback_safe").set(0.0);
    }

    /// Writer: the old side answered `write` (on `key`, database `db`) as if it no longer
    /// had the key, while the primary had it: the old side expired (or evicted) it on its own.
    /// Counted, named in status, and the rollback is marked unsafe.
    ///
    /// Why no copy from the primary (as the links' repair does): the shadow writer replays
    /// the primary's writes in the order the primary answered them, but the primary may
    /// already have answered later writes for the same key that are still queued here. A copy
    /// taken now includes them, and replaying them after it applies them twice (an `INCR`
    /// counted twice, an element pushed twice). A correct copy needs a fence (no later
    /// write of the key answered yet) that the proxy does not track; so the loss is
    /// detected and reported, never repaired blindly.
    pub fn lost_key(&self, db: u32, key: &[u8], write: &str) {
        let n = self.lost.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::counter!("cutover_shadow_keys_lost_total").increment(1);
        let name = format!("{db}:{}", String::from_utf8_lossy(key));
        if let Ok(mut keys) = self.lost_keys.lock()
            && keys.len() < LOST_NAMED
            && !keys.contains(&name)
        {
            keys.push(name.clone());
        }
        tracing::warn!(key = %name, write, "the old side had lost a key the primary holds");
        self.mark_unsafe(&format!(
            "the {} no longer had key {name} when the shadow writer sent {write} (the primary had it): it expired or evicted the key on its own ({n} such writes so far, see shadow_keys_lost)",
            self.side.as_str()
        ));
    }

    /// Writes the old side answered as if their key were missing.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// The keys of [`Self::lost`] (the first [`LOST_NAMED`]), `db:key`.
    pub fn lost_keys(&self) -> Vec<String> {
        self.lost_keys.lock().map(|k| k.clone()).unwrap_or_default()
    }

    pub fn is_safe(&self) -> bool {
        self.safe.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// Writes queued and not yet confirmed by the old side.
    pub fn pending(&self) -> u64 {
        self.enqueued
            .load(Ordering::Acquire)
            .saturating_sub(self.applied.load(Ordering::Acquire))
    }

    pub fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::Acquire)
    }

    /// Writer: `n` more writes are confirmed by the old side.
    pub fn applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::AcqRel);
        metrics::gauge!("cutover_shadow_queue").set(self.pending() as f64);
    }
}

#[cfg(test)]
mod tests;
