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

use crate::proxy::command::flags_for;
use crate::route::Side;

/// A reply, decoded enough to derive a shadow command from it (RESP2 and RESP3 alike).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    /// Bulk, simple and verbatim strings; doubles and big numbers as their text.
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Error(String),
}

impl Value {
    /// Decodes one reply as sent to a client speaking RESP `resp` (2 or 3); `None` for one
    /// that cannot be read or is nested too deeply to decode on the stack (the decoder
    /// descends one call per level; a server may send thousands).
    pub fn decode(bytes: &[u8], resp: u8) -> Option<Value> {
        if !shallow(bytes) {
            return None;
        }
        Self::decode_unchecked(bytes, resp)
    }

    fn decode_unchecked(bytes: &[u8], resp: u8) -> Option<Value> {
        if resp == 3 {
            use redis_protocol::resp3::types::OwnedFrame as F;
            fn conv(f: F) -> Value {
                match f {
                    F::BlobString { data, .. }
                    | F::SimpleString { data, .. }
                    | F::BigNumber { data, .. }
                    | F::VerbatimString { data, .. }
                    | F::ChunkedString(data) => Value::Bytes(data),
                    F::BlobError { data, .. } => {
                        Value::Error(String::from_utf8_lossy(&data).into_owned())
                    }
                    F::SimpleError { data, .. } => Value::Error(data),
                    F::Boolean { data, .. } => Value::Int(data as i64),
                    F::Null => Value::Nil,
                    F::Number { data, .. } => Value::Int(data),
                    F::Double { data, .. } => Value::Bytes(format_double(data).into_bytes()),
                    F::Array { data, .. } | F::Push { data, .. } => {
                        Value::Array(data.into_iter().map(conv).collect())
                    }
                    F::Set { data, .. } => Value::Array(data.into_iter().map(conv).collect()),
                    F::Map { data, .. } => Value::Array(
                        data.into_iter()
                            .flat_map(|(k, v)| [conv(k), conv(v)])
                            .collect(),
                    ),
                    F::Hello { .. } => Value::Nil,
                }
            }
            let (frame, _) = redis_protocol::resp3::decode::complete::decode(bytes).ok()??;
            Some(conv(frame))
        } else {
            use redis_protocol::resp2::types::OwnedFrame as F;
            fn conv(f: F) -> Value {
                match f {
                    F::SimpleString(b) | F::BulkString(b) => Value::Bytes(b),
                    F::Error(e) => Value::Error(e),
                    F::Integer(i) => Value::Int(i),
                    F::Array(a) => Value::Array(a.into_iter().map(conv).collect()),
                    F::Null => Value::Nil,
                }
            }
            let (frame, _) = redis_protocol::resp2::decode::decode(bytes).ok()??;
            Some(conv(frame))
        }
    }

    fn text(&self) -> Option<Vec<u8>> {
        match self {
            Value::Int(i) => Some(i.to_string().into_bytes()),
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
}

/// The shortest text that reads back as the same double (what Redis prints, give or take
/// the exponent form).
fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{d}")
    }
}

/// One command as argument vectors.
pub type Args = Vec<Vec<u8>>;

/// Whether a captured command (RESP bytes) runs a script or function.
pub fn is_script(wire: &[u8]) -> bool {
    crate::sync::engine::split_args(wire)
        .ok()
        .and_then(|a| a.first().map(|n| n.to_ascii_lowercase()))
        .is_some_and(|n| matches!(n.as_slice(), b"eval" | b"evalsha" | b"fcall"))
}

/// Aggregates a decoded reply may hold at most (and so its depth).
const MAX_AGGREGATES: usize = 64;

/// Whether `bytes` holds at most [`MAX_AGGREGATES`] aggregate headers (a bound on its
/// nesting): each line that starts with an aggregate type counts, also inside bulk strings,
/// which only errs on the safe side.
fn shallow(bytes: &[u8]) -> bool {
    let mut n = 0;
    let mut at_line_start = true;
    for &b in bytes {
        if at_line_start && matches!(b, b'*' | b'%' | b'~' | b'>' | b'|') {
            n += 1;
            if n > MAX_AGGREGATES {
                return false;
            }
        }
        at_line_start = b == b'\n';
    }
    true
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
}

/// `BRPOPLPUSH`/`BLMOVE` on the old side: move that element once it is there.
const MOVE_SCRIPT: &str = "if redis.call('LREM', KEYS[1], ARGV[2], ARGV[1]) == 1 then redis.call(ARGV[3], KEYS[2], ARGV[1]) return 1 end return 0";

/// Writes (and the few commands the old side needs to stay in step), by command id.
fn write_table() -> &'static [bool] {
    static TABLE: OnceLock<Vec<bool>> = OnceLock::new();
    TABLE.get_or_init(|| flags_for(WRITES))
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
    let table = TABLE.get_or_init(|| flags_for(NEEDS_REPLY));
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

const WRITES: &[&str] = &[
    "append",
    "bitfield",
    "bitop",
    "blmove",
    "blmpop",
    "blpop",
    "brpop",
    "brpoplpush",
    "bzmpop",
    "bzpopmax",
    "bzpopmin",
    "copy",
    "decr",
    "decrby",
    "del",
    "eval",
    "evalsha",
    "expire",
    "expireat",
    "fcall",
    "flushall",
    "flushdb",
    "function",
    "geoadd",
    "georadius",
    "georadiusbymember",
    "geosearchstore",
    "getdel",
    "getex",
    "getset",
    "hdel",
    "hincrby",
    "hincrbyfloat",
    "hmset",
    "hset",
    "hsetnx",
    "incr",
    "incrby",
    "incrbyfloat",
    "linsert",
    "lmove",
    "lmpop",
    "lpop",
    "lpush",
    "lpushx",
    "lrem",
    "lset",
    "ltrim",
    "migrate",
    "move",
    "mset",
    "msetnx",
    "persist",
    "pexpire",
    "pexpireat",
    "pfadd",
    "pfmerge",
    "psetex",
    "rename",
    "renamenx",
    "restore",
    "rpop",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "script",
    "sdiffstore",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "sinterstore",
    "smove",
    "sort",
    "spop",
    "srem",
    "sunionstore",
    "swapdb",
    "unlink",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xgroup",
    "xreadgroup",
    "xsetid",
    "xtrim",
    "zadd",
    "zdiffstore",
    "zincrby",
    "zinterstore",
    "zmpop",
    "zpopmax",
    "zpopmin",
    "zrangestore",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zunionstore",
    "hexpire",
    "hpexpire",
    "hexpireat",
    "hpexpireat",
    "hpersist",
    "hsetex",
    "hgetex",
    "hgetdel",
    "delifeq",
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
            Action::Apply(vec![cmd(&[
                b"PEXPIREAT",
                &key,
                (at.max(0.0) as u64).to_string().as_bytes(),
            ])])
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
            Action::Apply(vec![cmd(&[
                b"PEXPIREAT",
                &key,
                (at as u64).to_string().as_bytes(),
            ])])
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
}

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
mod tests {
    use super::*;
    use crate::proxy::command::command_id;

    fn a(parts: &[&str]) -> Args {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn apply(parts: &[&str]) -> Action {
        Action::Apply(vec![a(parts)])
    }

    #[test]
    fn deep_replies_are_not_decoded() {
        let deep = b"*1\r\n".repeat(10_000);
        assert_eq!(Value::decode(&deep, 2), None);
        assert_eq!(Value::decode(&deep, 3), None);
        assert_eq!(
            Value::decode(b"*2\r\n:1\r\n$1\r\nx\r\n", 2),
            Some(Value::Array(vec![
                Value::Int(1),
                Value::Bytes(b"x".to_vec())
            ]))
        );
    }

    #[test]
    fn counters_become_their_result() {
        assert_eq!(
            shadow_form(&a(&["INCR", "c"]), &Value::Int(7), 0),
            apply(&["INCRBY", "c", "1"])
        );
        assert_eq!(
            shadow_form(&a(&["DECRBY", "c", "5"]), &Value::Int(2), 0),
            apply(&["INCRBY", "c", "-5"])
        );
        assert_eq!(
            shadow_form(
                &a(&["incrbyfloat", "c", "0.5"]),
                &Value::Bytes(b"1.5".to_vec()),
                0
            ),
            apply(&["SET", "c", "1.5", "KEEPTTL"])
        );
        assert_eq!(
            shadow_form(&a(&["HINCRBY", "h", "f", "2"]), &Value::Int(4), 0),
            apply(&["HINCRBY", "h", "f", "2"])
        );
        assert_eq!(
            shadow_form(
                &a(&["HINCRBYFLOAT", "h", "f", "0.5"]),
                &Value::Bytes(b"4.5".to_vec()),
                0
            ),
            apply(&["HSET", "h", "f", "4.5"])
        );
        assert_eq!(
            shadow_form(
                &a(&["ZINCRBY", "z", "2", "m"]),
                &Value::Bytes(b"3".to_vec()),
                0
            ),
            apply(&["ZADD", "z", "3", "m"])
        );
    }

    #[test]
    fn relative_expiry_becomes_absolute() {
        let now = 1_000_000;
        assert_eq!(
            shadow_form(&a(&["EXPIRE", "k", "10"]), &Value::Int(1), now),
            apply(&["PEXPIREAT", "k", "1010000"])
        );
        assert_eq!(
            shadow_form(&a(&["EXPIRE", "k", "10"]), &Value::Int(0), now),
            Action::Skip
        );
        assert_eq!(
            shadow_form(
                &a(&["SETEX", "k", "2", "v"]),
                &Value::Bytes(b"OK".to_vec()),
                now
            ),
            apply(&["SET", "k", "v", "PXAT", "1002000"])
        );
        assert_eq!(
            shadow_form(
                &a(&["SET", "k", "v", "NX", "PX", "500"]),
                &Value::Bytes(b"OK".to_vec()),
                now
            ),
            apply(&["SET", "k", "v", "PXAT", "1000500"])
        );
        assert_eq!(
            shadow_form(&a(&["SET", "k", "v", "NX"]), &Value::Nil, now),
            Action::Skip
        );
        assert_eq!(
            shadow_form(&a(&["SET", "k", "v", "GET"]), &Value::Nil, now),
            apply(&["SET", "k", "v"])
        );
        assert_eq!(
            shadow_form(
                &a(&["GETEX", "k", "EX", "1"]),
                &Value::Bytes(b"v".to_vec()),
                now
            ),
            apply(&["PEXPIREAT", "k", "1001000"])
        );
    }

    #[test]
    fn random_choices_become_what_was_chosen() {
        assert_eq!(
            shadow_form(
                &a(&["SPOP", "s", "2"]),
                &Value::Array(vec![
                    Value::Bytes(b"x".to_vec()),
                    Value::Bytes(b"y".to_vec())
                ]),
                0
            ),
            apply(&["SREM", "s", "x", "y"])
        );
        assert_eq!(
            shadow_form(
                &a(&["XADD", "s", "*", "f", "v"]),
                &Value::Bytes(b"5-0".to_vec()),
                0
            ),
            apply(&["XADD", "s", "5-0", "f", "v"])
        );
        assert_eq!(
            shadow_form(
                &a(&["BRPOP", "q", "0"]),
                &Value::Array(vec![
                    Value::Bytes(b"q".to_vec()),
                    Value::Bytes(b"e".to_vec())
                ]),
                0
            ),
            Action::Take(a(&["LREM", "q", "-1", "e"]))
        );
        assert_eq!(
            shadow_form(
                &a(&["BLPOP", "q", "0"]),
                &Value::Array(vec![
                    Value::Bytes(b"q".to_vec()),
                    Value::Bytes(b"e".to_vec())
                ]),
                0
            ),
            Action::Take(a(&["LREM", "q", "1", "e"]))
        );
        assert_eq!(
            shadow_form(
                &a(&["EVAL", "return 1", "2", "k1", "k2", "x"]),
                &Value::Int(1),
                0
            ),
            Action::Replay(
                a(&["EVAL", "return 1", "2", "k1", "k2", "x"]),
                Some(Value::Int(1))
            )
        );
        assert_eq!(
            shadow_form(&a(&["RPUSH", "l", "x"]), &Value::Int(1), 0),
            apply(&["RPUSH", "l", "x"])
        );
        assert_eq!(
            shadow_form(
                &a(&["RPUSH", "l", "x"]),
                &Value::Error("WRONGTYPE".into()),
                0
            ),
            Action::Skip
        );
    }

    #[test]
    fn replies_decode_in_both_protocols() {
        assert_eq!(Value::decode(b":5\r\n", 2), Some(Value::Int(5)));
        assert_eq!(Value::decode(b"*-1\r\n", 2), Some(Value::Nil));
        assert_eq!(
            Value::decode(b",1.5\r\n", 3),
            Some(Value::Bytes(b"1.5".to_vec()))
        );
        assert_eq!(Value::decode(b"_\r\n", 3), Some(Value::Nil));
        assert_eq!(
            Value::decode(b"~1\r\n$1\r\na\r\n", 3),
            Some(Value::Array(vec![Value::Bytes(b"a".to_vec())]))
        );
        assert_eq!(Value::decode(b"$3\r\nab", 2), None);
    }

    #[test]
    fn writes_that_need_no_reply_are_shadowed_as_they_are() {
        // The session sends these as the client's bytes without calling `shadow_form`: it
        // must agree.
        for name in WRITES.iter().filter(|n| !NEEDS_REPLY.contains(n)) {
            let args = a(&[name, "k", "1", "2"]);
            assert_eq!(
                shadow_form(&args, &Value::Int(1), 0),
                Action::Apply(vec![args.clone()]),
                "{name}"
            );
            assert!(!needs_reply(command_id(name.as_bytes())), "{name}");
        }
        assert!(needs_reply(command_id(b"incr")));
    }

    #[test]
    fn the_write_table_knows_writes_and_not_reads() {
        assert!(is_write(command_id(b"incr")));
        assert!(is_write(command_id(b"SET")));
        assert!(!is_write(command_id(b"get")));
        assert!(!is_write(command_id(b"eval_ro")));
    }

    proptest::proptest! {
        /// Whatever a client sends and a server answers, deriving the shadow form never
        /// panics, and a refused write is never shadowed.
        #[test]
        fn any_command_and_reply_is_handled(
            name in proptest::sample::select(WRITES),
            args in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..8),
            reply in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            resp in 2u8..=3,
        ) {
            let mut full = vec![name.as_bytes().to_vec()];
            full.extend(args);
            let value = Value::decode(&reply, resp).unwrap_or(Value::Nil);
            let _ = shadow_form(&full, &value, 1_700_000_000_000);
            assert_eq!(shadow_form(&full, &Value::Error("ERR x".into()), 0), Action::Skip);
        }
    }
}
