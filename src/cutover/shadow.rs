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
//! | `INCR`/`DECR`/`INCRBY`/`DECRBY`                  | `INCRBY key <delta>` (see below) ¹    |
//! | `INCRBYFLOAT`                                    | `SET key <reply> KEEPTTL [XX]` ¹ ²    |
//! | `HINCRBY key field n`                            | itself (see below) ¹                  |
//! | `HINCRBYFLOAT key field`                         | `HSET key field <reply>` ¹            |
//! | `ZINCRBY key n member`                           | `ZADD key <reply> member` ¹           |
//! | `EXPIRE`/`PEXPIRE` (reply 1)                     | `PEXPIREAT key <now + ttl>` ¹         |
//! | `PERSIST` (reply 1)                              | itself ¹                              |
//! | `SETEX`/`PSETEX`/`SET … EX/PX/EXAT`              | `SET key value PXAT <absolute>`       |
//! | `SET … NX/XX/GET`                                | plain `SET` if it was applied, else — |
//! | `SET … KEEPTTL` (applied)                        | `SET key value KEEPTTL XX` ² (`NX`: plain `SET`) |
//! | `GETEX … EX/PX/…`, `GETEX … PERSIST`, `GETDEL`   | `PEXPIREAT` ¹, `SET key <reply>`, `DEL` |
//! | `SPOP`                                           | `SREM key <members it returned>`      |
//! | `XADD key … *`                                   | `XADD key … <id it returned>`         |
//! | `BLPOP`/`BRPOP`/`BRPOPLPUSH`/`BLMOVE`/`BZPOP*`   | `LPOP`/`RPOP`/`RPOPLPUSH`/`LMOVE`/`ZREM` |
//! | `RPUSH`/`LPUSH`/`RPUSHX`/`LPUSHX`/`LINSERT`/`APPEND`/`SETRANGE` (reply > 0) | itself ³ |
//! | `SADD`/`SREM`/`HSET`/`HSETNX`/`HDEL`/`ZADD`/`ZREM`/`LREM` (an integer reply) | itself ⁴ |
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
//! **Keys the old side lost on its own** (issue 20). The old side is a primary with its own
//! clock: it expires (or evicts) a key by itself, and a refresh shadowed a few milliseconds
//! late, or a clock a little ahead, finds the key already gone there. Every form marked ¹ is
//! one whose reply on the old side shows that ([`Action::Expect`]): `PEXPIREAT`/`PERSIST`
//! answering 0 where the primary answered 1, a counter answering its bare increment where
//! the primary's result was larger, `HSET`/`ZADD` answering "new field/member" where the
//! primary incremented an existing one; and the other way round, a counter the primary
//! started from nothing answered with more than its increment ([`Action::Exact`]: the old
//! side still held a key the primary had expired, its clock behind). A key found so is copied from the primary, fenced
//! in the per-key order ([`repair`]). The forms marked ² would silently *create* a key
//! without its TTL where the old side lost one that has a TTL on the primary (`SET … KEEPTTL`
//! keeps a TTL only if the key is there): they are sent with `XX`, and a nil (the key is not
//! there) is copied the same way: a lost key, or a new key on the primary (then the copy
//! creates it). `GETEX … PERSIST` is sent as `SET key <the value it returned>`, which gives
//! the primary's result whether the old side still had the key or not. The forms marked ³
//! answer the key's resulting size: writes to one key reach the old side in the primary's
//! order, so its reply must equal the primary's exactly ([`Action::Exact`]); a list or
//! string shorter there (the typical `RPUSH log:x …` + sliding `EXPIRE log:x 60`: the
//! `EXPIRE` finds the key the `RPUSH` just created, so only the size shows the loss), or an
//! `RPUSHX` answered 0 there, is copied. (A pop the old side has not taken yet, see
//! [`Action::Take`], can make a push answer one more there: a needless copy, still exact.)
//! The cost on every other write is nil (they stay raw: the one table lookup by command id
//! that already chose raw or rewritten); these writes have their reply decoded (an integer)
//! and compared once in the writer. The writes marked ⁴ answer how many members they added
//! or removed: the same holds, the old side must answer the same count (a set or hash the old
//! side lost answers every member new). A write that adds only new members answers the same
//! count on a lost key: such a key is found by the next write that names a member it held
//! (or by `cutover verify`).
//!
//! The queue between the sessions and the shadow writer is bounded: a session never waits for
//! the old side. If the queue overflows, or the old side refuses a shadow write or cannot be
//! reached, the rollback is no longer safe: [`ShadowSink::mark_unsafe`] records why (status,
//! metric, log) and the primary keeps going at full speed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::route::Side;

pub use crate::client::Value;

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
    /// clock ahead, or the refresh reached it a little late). The writer counts it
    /// ([`ShadowSink::lost_key`]) and copies the key from the primary ([`repair`]).
    Expect(Args, Value),
    /// A reply the old side must give exactly (`.1`); anything else means its key differs
    /// from the primary's. A counter the primary started from nothing (`INCR` answered its
    /// bare increment): a larger result there means it still held a key the primary no
    /// longer had (its clock behind: it expires later). A write answered with its key's
    /// size (`RPUSH`, `APPEND`…): another size there means it lost the key (or kept it
    /// longer). Copied like [`Self::Expect`].
    Exact(Args, Value),
    /// The copy of a key the old side lost, read from the primary while no write to it was
    /// in flight ([`repair`]): `RESTORE … REPLACE`, `DEL`, or plain commands in one
    /// `MULTI`. Applied: the key is repaired; refused: it stays lost.
    Repair { key: Vec<u8>, commands: Vec<Args> },
}

/// `BRPOPLPUSH`/`BLMOVE` on the old side: move that element once it is there.
const MOVE_SCRIPT: &str = "if redis.call('LREM', KEYS[1], ARGV[2], ARGV[1]) == 1 then redis.call(ARGV[3], KEYS[2], ARGV[1]) return 1 end return 0";

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
                (Some(by), _) => Action::Exact(
                    cmd(&[b"INCRBY", &key, by.to_string().as_bytes()]),
                    Value::Int(by),
                ),
                (None, Some(v)) => Action::Apply(vec![cmd(&[b"SET", &key, &v, b"KEEPTTL"])]),
                (None, None) => Action::Unsupported(format!("{name} answered {reply:?}")),
            }
        }
        // The primary's result is the increment itself: most likely a new key (a lost one
        // that held exactly 0 goes unnoticed); otherwise the key was there, and `XX` finds
        // whether it still is on the old side.
        "incrbyfloat" => match reply.text() {
            Some(v) if same_number(&v, args.get(2)) => {
                Action::Apply(vec![cmd(&[b"SET", &key, &v, b"KEEPTTL"])])
            }
            Some(v) => Action::Expect(cmd(&[b"SET", &key, &v, b"KEEPTTL", b"XX"]), Value::Nil),
            None => Action::Unsupported(format!("{name} answered {reply:?}")),
        },
        "hincrby" => {
            let by = args
                .get(3)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse::<i64>().ok());
            match by {
                Some(by) if *reply != Value::Int(by) => {
                    Action::Expect(args.to_vec(), Value::Int(by))
                }
                Some(by) => Action::Exact(args.to_vec(), Value::Int(by)),
                None => same(),
            }
        }
        // `HSET`/`ZADD` answer 1 for a new field or member: where the primary's result is
        // not the bare increment, the field was there, and 1 means the old side lost it.
        "hincrbyfloat" => match (args.get(2), reply.text()) {
            (Some(field), Some(v)) => {
                let c = cmd(&[b"HSET", &key, field, &v]);
                if same_number(&v, args.get(3)) {
                    Action::Apply(vec![c])
                } else {
                    Action::Expect(c, Value::Int(1))
                }
            }
            _ => Action::Unsupported(format!("{name} answered {reply:?}")),
        },
        "zincrby" => match (args.get(3), reply.text()) {
            (Some(member), Some(v)) => {
                let c = cmd(&[b"ZADD", &key, &v, member]);
                if same_number(&v, args.get(2)) {
                    Action::Apply(vec![c])
                } else {
                    Action::Expect(c, Value::Int(1))
                }
            }
            _ => Action::Unsupported(format!("{name} answered {reply:?}")),
        },
        "persist" => match reply {
            Value::Int(1) => Action::Expect(cmd(&[b"PERSIST", &key]), Value::Int(0)),
            _ => Action::Skip,
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
        // Answered with the key's resulting size: the old side, in the same per-key order,
        // must answer the same size; a shorter list or string there (it lost the key, or
        // expired it while the primary refreshed it) is copied. `*X`/`LINSERT` answered 0
        // or -1 changed nothing.
        "rpush" | "lpush" | "rpushx" | "lpushx" | "linsert" | "append" | "setrange" => {
            match reply {
                Value::Int(n) if *n > 0 => Action::Exact(args.to_vec(), Value::Int(*n)),
                _ if matches!(name.as_str(), "rpushx" | "lpushx" | "linsert") => Action::Skip,
                _ => same(),
            }
        }
        // Answered with how many members it added or removed: in the same per-key order
        // the old side must answer the same count; another count there means it lost the key
        // (a set, hash or sorted set refreshed by a sliding `EXPIRE` after each `SADD`/`HSET`:
        // the refresh finds the key the write just created, only the count shows the loss),
        // and the key is copied.
        "sadd" | "srem" | "hset" | "hsetnx" | "hdel" | "zadd" | "zrem" | "lrem" => match reply {
            Value::Int(n) => Action::Exact(args.to_vec(), Value::Int(*n)),
            _ => same(),
        },
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
                // The value it returned, without TTL: the primary's result even where the
                // old side lost the key.
                Some(b"PERSIST") => {
                    return match reply {
                        Value::Bytes(v) => Action::Apply(vec![cmd(&[b"SET", &key, v])]),
                        _ => Action::Unsupported(format!("GETEX answered {reply:?}")),
                    };
                }
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
    let keep = expiry.as_ref().is_some_and(|e| e[0] == b"KEEPTTL");
    if keep {
        // `NX` applied, or `GET` answered nil: the key was new on the primary, so it has no
        // TTL to keep.
        if nx || (get && *reply == Value::Nil) {
            return Action::Apply(vec![c]);
        }
        // `KEEPTTL` on the old side keeps a TTL only if the key is there: `XX` says whether
        // it is, and a nil is copied from the primary (a key the old side lost, or a key
        // new on the primary).
        c.extend([b"KEEPTTL".to_vec(), b"XX".to_vec()]);
        return Action::Expect(c, Value::Nil);
    }
    c.extend(expiry.unwrap_or_default());
    Action::Apply(vec![c])
}

/// Whether a float reply is the increment itself (the key started from nothing, or 0).
fn same_number(reply: &[u8], increment: Option<&Vec<u8>>) -> bool {
    match (num(reply), increment.and_then(|a| num(a))) {
        (Some(r), Some(i)) => r == i,
        _ => false,
    }
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
    /// Keys copied back from the primary ([`Action::Repair`] applied).
    repaired: AtomicU64,
    /// The first [`LOST_NAMED`] keys that stayed lost (their copy failed), `db:key`.
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
                repaired: AtomicU64::new(0),
                lost_keys: Mutex::new(Vec::new()),
            },
            rx,
        )
    }

    /// Queues a write; never waits. A full queue makes the rollback unsafe. `true` when
    /// the item is queued.
    pub fn push(&self, item: ShadowItem) -> bool {
        if let Action::Unsupported(why) = &item.action {
            self.mark_unsafe(&format!(
                "a write cannot be copied to the {}: {why}",
                self.side.as_str()
            ));
            return false;
        }
        if item.action == Action::Skip {
            return false;
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                self.enqueued.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("cutover_shadow_writes_total").increment(1);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.mark_unsafe(&format!(
                    "the shadow queue is full ({} writes not yet on the {}); raise [cutover] shadow_queue",
                    self.pending(),
                    self.side.as_str()
                ));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.mark_unsafe("the shadow writer stopped");
                false
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
    /// Counted; the writer then copies the key ([`repair`]), and the rollback is unsafe only
    /// if that fails ([`Self::unrepaired`]).
    pub fn lost_key(&self, db: u32, key: &[u8], write: &str) {
        self.lost.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("cutover_shadow_keys_lost_total").increment(1);
        tracing::debug!(key = %format!("{db}:{}", String::from_utf8_lossy(key)), write, "the old side had lost a key the primary holds; copying it");
    }

    /// Writer: the copy of a lost key is on the old side.
    pub fn repaired(&self, db: u32, key: &[u8]) {
        self.repaired.fetch_add(1, Ordering::AcqRel);
        metrics::counter!("cutover_shadow_keys_repaired_total").increment(1);
        tracing::debug!(key = %format!("{db}:{}", String::from_utf8_lossy(key)), "a key the old side lost is copied from the primary");
    }

    /// Writer: a key the old side lost could not be copied back (`why`): named in status,
    /// and the rollback is marked unsafe.
    pub fn unrepaired(&self, db: u32, key: &[u8], why: &str) {
        metrics::counter!("cutover_shadow_keys_unrepaired_total").increment(1);
        let name = format!("{db}:{}", String::from_utf8_lossy(key));
        if let Ok(mut keys) = self.lost_keys.lock()
            && keys.len() < LOST_NAMED
            && !keys.contains(&name)
        {
            keys.push(name.clone());
        }
        tracing::warn!(key = %name, why, "the old side lost a key the primary holds, and it cannot be copied back");
        self.mark_unsafe(&format!(
            "the {} no longer had key {name} (it expired or evicted the key on its own) and the copy from the primary failed: {why} (see shadow_keys_lost_names)",
            self.side.as_str()
        ));
    }

    /// Keys copied back from the primary.
    pub fn repaired_count(&self) -> u64 {
        self.repaired.load(Ordering::Acquire)
    }

    /// Writes the old side answered as if their key were missing.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// The keys that stayed lost (the first [`LOST_NAMED`]), `db:key`.
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

pub mod repair;
mod table;

#[cfg(test)]
use table::NEEDS_REPLY;
pub use table::{is_write, needs_reply};

#[cfg(test)]
mod tests;
