//! Comparing one key on both sides, the careful way: by type, in chunks, with a detail that says
//! what differs.
//!
//! The scan (`scan.rs`) settles most keys without coming here: identical `DUMP` payloads, or
//! payloads that decode (with `crate::rdb`) to the same value, are equal. This module is for the
//! rest, and for the re-check rounds: [`compare_key`] asks both servers with commands, so it
//! works for any pair of versions and for values of any size.
//!
//! | type | length | values (mode full) |
//! |---|---|---|
//! | string | `STRLEN` | `GET`, or `GETRANGE` in 16 KiB pieces above that |
//! | list | `LLEN` | `LRANGE` in chunks, element by element |
//! | zset | `ZCARD` | `ZRANGE … WITHSCORES` in chunks (rank order is deterministic); scores compared as numbers, since servers print doubles differently |
//! | hash | `HLEN` | `HGETALL` when small; else `HSCAN` the source and `HMGET` the target |
//! | set | `SCARD` | `SMEMBERS` when small; else `SSCAN` the source and `SISMEMBER` on the target |
//! | stream | `XLEN` | `XRANGE` in chunks; `XINFO STREAM` last id; `XINFO GROUPS` name, last delivered id, PEL size |
//!
//! Same length plus "every source element is on the target with the same value" means equal,
//! which is why the unordered types need no memory beyond one chunk. Hash field TTLs are
//! compared (`HPTTL`) when both servers know the command.
//!
//! One key yields at most one difference, in this order: missing/extra, type, value, TTL.

use std::collections::BTreeMap;

use super::client::{Conn, Reply, VerifyError, show_bytes};

mod stream;
mod unordered;
use stream::*;
use unordered::*;

#[cfg(test)]
mod tests;

/// What a verify compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Existence and type only.
    Keys,
    /// Also lengths and TTLs.
    Length,
    /// Also values (the default).
    #[default]
    Full,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "keys" => Some(Mode::Keys),
            "length" => Some(Mode::Length),
            "full" => Some(Mode::Full),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Keys => "keys",
            Mode::Length => "length",
            Mode::Full => "full",
        }
    }
}

/// The kinds of difference, as written in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiffKind {
    /// On the source, not on the target.
    Missing,
    /// On the target, not on the source.
    Extra,
    /// Different types.
    Type,
    /// Different values (or lengths).
    Value,
    /// Both have a TTL, further apart than the tolerance.
    Ttl,
    /// Only one side has a TTL.
    TtlOneSide,
}

impl DiffKind {
    pub const ALL: [DiffKind; 6] = [
        DiffKind::Missing,
        DiffKind::Extra,
        DiffKind::Type,
        DiffKind::Value,
        DiffKind::Ttl,
        DiffKind::TtlOneSide,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Type => "type",
            DiffKind::Value => "value",
            DiffKind::Ttl => "ttl",
            DiffKind::TtlOneSide => "ttl_one_side",
        }
    }
}

/// One difference found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub kind: DiffKind,
    /// The key's type (the source's, or the target's for an extra key).
    pub key_type: String,
    /// What differs, for people.
    pub detail: String,
}

impl Diff {
    pub fn new(kind: DiffKind, key_type: &str, detail: impl Into<String>) -> Diff {
        Diff {
            kind,
            key_type: key_type.to_string(),
            detail: detail.into(),
        }
    }
}

/// The result of comparing one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// On neither side (deleted or expired since it was listed).
    Gone,
    /// Equal, of this type.
    Equal(String),
    Differs(Diff),
}

/// Comparison settings shared by the scan and the re-checks.
#[derive(Debug, Clone, Copy)]
pub struct CompareOpts {
    pub mode: Mode,
    /// TTLs further apart than this (ms) differ.
    pub ttl_tolerance_ms: i64,
    /// Elements per chunk for collections.
    pub chunk: usize,
    /// Both servers have `HPTTL`: compare hash field TTLs.
    pub field_ttls: bool,
}

/// Compares two `PTTL` answers (-1 none, -2 no key): the TTL difference, if any.
pub fn ttl_diff(key_type: &str, src: i64, tgt: i64, tolerance_ms: i64) -> Option<Diff> {
    let show = |t: i64| {
        if t < 0 {
            "none".to_string()
        } else {
            format!("{t} ms")
        }
    };
    match (src >= 0, tgt >= 0) {
        (false, false) => None,
        (true, true) if (src - tgt).abs() <= tolerance_ms => None,
        (true, true) => Some(Diff::new(
            DiffKind::Ttl,
            key_type,
            format!(
                "ttl {} vs {} (tolerance {tolerance_ms} ms)",
                show(src),
                show(tgt)
            ),
        )),
        _ => Some(Diff::new(
            DiffKind::TtlOneSide,
            key_type,
            format!(
                "ttl {} on the source, {} on the target",
                show(src),
                show(tgt)
            ),
        )),
    }
}

/// The `TYPE` reply as text ("none" when the key does not exist).
fn type_name(conn: &Conn, r: Reply) -> Result<String, VerifyError> {
    match r {
        Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Reply::Error(e) => Err(conn.refused(&[b"TYPE"], e)),
        other => Err(conn.proto(format!("TYPE answered {}", other.show()))),
    }
}

fn int_reply(conn: &Conn, what: &str, r: Reply) -> Result<i64, VerifyError> {
    match r {
        Reply::Int(i) => Ok(i),
        Reply::Error(e) => Err(conn.refused(&[what.as_bytes()], e)),
        other => Err(conn.proto(format!("{what} answered {}", other.show()))),
    }
}

/// Sends the same command to both sides and returns both replies (errors as `Err`).
fn both(src: &mut Conn, tgt: &mut Conn, args: &[&[u8]]) -> Result<(Reply, Reply), VerifyError> {
    src.send(args)?;
    src.flush()?;
    tgt.send(args)?;
    let b = tgt.recv()?;
    let a = src.recv()?;
    if let Reply::Error(e) = a {
        return Err(src.refused(args, e));
    }
    if let Reply::Error(e) = b {
        return Err(tgt.refused(args, e));
    }
    Ok((a, b))
}

/// The length command of a type (`None` for a type without one).
pub(super) fn length_command(key_type: &str) -> Option<&'static [u8]> {
    Some(match key_type {
        "string" => b"STRLEN",
        "list" => b"LLEN",
        "set" => b"SCARD",
        "zset" => b"ZCARD",
        "hash" => b"HLEN",
        "stream" => b"XLEN",
        _ => return None,
    })
}

/// Compares `key` (source db and target db already selected on the connections).
pub fn compare_key(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    opts: &CompareOpts,
) -> Result<Outcome, VerifyError> {
    for c in [&mut *src, &mut *tgt] {
        c.send(&[b"TYPE", key])?;
        c.send(&[b"PTTL", key])?;
        c.flush()?;
    }
    let st = src.recv()?;
    let st = type_name(src, st)?;
    let sp = src.recv()?;
    let sp = int_reply(src, "PTTL", sp)?;
    let tt = tgt.recv()?;
    let tt = type_name(tgt, tt)?;
    let tp = tgt.recv()?;
    let tp = int_reply(tgt, "PTTL", tp)?;
    match (st.as_str(), tt.as_str()) {
        ("none", "none") => return Ok(Outcome::Gone),
        (_, "none") => {
            return Ok(Outcome::Differs(Diff::new(
                DiffKind::Missing,
                &st,
                "not on the target",
            )));
        }
        ("none", _) => {
            return Ok(Outcome::Differs(Diff::new(
                DiffKind::Extra,
                &tt,
                "not on the source",
            )));
        }
        (a, b) if a != b => {
            return Ok(Outcome::Differs(Diff::new(
                DiffKind::Type,
                &st,
                format!("{a} on the source, {b} on the target"),
            )));
        }
        _ => {}
    }
    if opts.mode == Mode::Keys {
        return Ok(Outcome::Equal(st));
    }
    let value = match opts.mode {
        Mode::Full => compare_value(src, tgt, key, &st, opts)?,
        _ => compare_length(src, tgt, key, &st)?,
    };
    if let Some(detail) = value {
        return Ok(Outcome::Differs(Diff::new(DiffKind::Value, &st, detail)));
    }
    if opts.mode == Mode::Full && st == "hash" && opts.field_ttls {
        if let Some(detail) = compare_field_ttls(src, tgt, key, opts)? {
            return Ok(Outcome::Differs(Diff::new(DiffKind::Ttl, &st, detail)));
        }
    }
    match ttl_diff(&st, sp, tp, opts.ttl_tolerance_ms) {
        Some(d) => Ok(Outcome::Differs(d)),
        None => Ok(Outcome::Equal(st)),
    }
}

/// Length comparison (`--mode length`): the detail if lengths differ.
pub fn compare_length(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    key_type: &str,
) -> Result<Option<String>, VerifyError> {
    let Some(cmd) = length_command(key_type) else {
        return Ok(None);
    };
    let (a, b) = both(src, tgt, &[cmd, key])?;
    let name = String::from_utf8_lossy(cmd).into_owned();
    let (a, b) = (int_reply(src, &name, a)?, int_reply(tgt, &name, b)?);
    Ok((a != b).then(|| format!("length {a} vs {b}")))
}

/// Value comparison by type: the detail of the first difference, if any.
fn compare_value(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    key_type: &str,
    opts: &CompareOpts,
) -> Result<Option<String>, VerifyError> {
    if let Some(d) = compare_length(src, tgt, key, key_type)? {
        return Ok(Some(d));
    }
    match key_type {
        "string" => compare_string(src, tgt, key),
        "list" => compare_ranges(src, tgt, key, b"LRANGE", false, opts.chunk),
        "zset" => compare_ranges(src, tgt, key, b"ZRANGE", true, opts.chunk),
        "hash" => compare_hash(src, tgt, key, opts.chunk),
        "set" => compare_set(src, tgt, key, opts.chunk),
        "stream" => compare_stream(src, tgt, key, opts.chunk),
        _ => {
            // Module types: the serialized form is all there is.
            let (a, b) = both(src, tgt, &[b"DUMP", key])?;
            Ok((a != b).then(|| format!("{key_type} values differ (DUMP payloads)")))
        }
    }
}

/// Piece size for strings: at most a [`super::client::BIG_BULK`], so pieces arrive as bytes
/// (not digests) and the first differing byte can be named.
const STRING_PIECE: usize = super::client::BIG_BULK;

fn compare_string(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
) -> Result<Option<String>, VerifyError> {
    let (len, _) = both(src, tgt, &[b"STRLEN", key])?;
    let len = int_reply(src, "STRLEN", len)?.max(0) as usize;
    let mut at = 0usize;
    loop {
        let (a, b) = if len <= STRING_PIECE {
            both(src, tgt, &[b"GET", key])?
        } else {
            let start = at.to_string();
            let end = (at + STRING_PIECE - 1).to_string();
            both(
                src,
                tgt,
                &[b"GETRANGE", key, start.as_bytes(), end.as_bytes()],
            )?
        };
        if a != b {
            let (x, y) = (a.as_bytes().unwrap_or(b""), b.as_bytes().unwrap_or(b""));
            let first = x.iter().zip(y).position(|(p, q)| p != q).unwrap_or(0) + at;
            return Ok(Some(if len <= 64 {
                format!("value {} vs {}", a.show(), b.show())
            } else {
                format!("values differ from byte {first} on")
            }));
        }
        at += STRING_PIECE;
        if len <= STRING_PIECE || at >= len {
            return Ok(None);
        }
    }
}

/// `LRANGE`/`ZRANGE WITHSCORES` chunk by chunk, element by element.
fn compare_ranges(
    src: &mut Conn,
    tgt: &mut Conn,
    key: &[u8],
    cmd: &[u8],
    scores: bool,
    chunk: usize,
) -> Result<Option<String>, VerifyError> {
    let mut start = 0usize;
    loop {
        let (s, e) = (start.to_string(), (start + chunk - 1).to_string());
        let mut args: Vec<&[u8]> = vec![cmd, key, s.as_bytes(), e.as_bytes()];
        if scores {
            args.push(b"WITHSCORES");
        }
        let (a, b) = both(src, tgt, &args)?;
        let (a, b) = (array(src, a)?, array(tgt, b)?);
        let step = if scores { 2 } else { 1 };
        for i in (0..a.len().max(b.len())).step_by(step) {
            let rank = start + i / step;
            let (x, y) = (a.get(i), b.get(i));
            if x != y {
                return Ok(Some(format!(
                    "{} {rank}: {} vs {}",
                    if scores { "rank" } else { "index" },
                    x.map_or("(none)".into(), Reply::show),
                    y.map_or("(none)".into(), Reply::show)
                )));
            }
            if scores {
                let (x, y) = (a.get(i + 1), b.get(i + 1));
                if !same_score(x, y) {
                    return Ok(Some(format!(
                        "member {}: score {} vs {}",
                        a.get(i).map_or("?".into(), Reply::show),
                        show_score(x),
                        show_score(y)
                    )));
                }
            }
        }
        if a.len() < chunk * step {
            return Ok(None);
        }
        start += chunk;
    }
}

/// Scores compare as numbers: Redis 7 prints `1.1`, Redis 6.2 `1.1000000000000001`.
fn same_score(a: Option<&Reply>, b: Option<&Reply>) -> bool {
    let num = |r: Option<&Reply>| -> Option<f64> {
        std::str::from_utf8(r?.as_bytes()?).ok()?.parse().ok()
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// A score as the shortest decimal that reads back as the same double (servers print `2.6`
/// or `2.6000000000000001`).
fn show_score(r: Option<&Reply>) -> String {
    let Some(r) = r else {
        return "(none)".into();
    };
    match r
        .as_bytes()
        .and_then(|b| std::str::from_utf8(b).ok()?.parse::<f64>().ok())
    {
        Some(f) => f.to_string(),
        None => r.show(),
    }
}

fn array(conn: &Conn, r: Reply) -> Result<Vec<Reply>, VerifyError> {
    match r {
        Reply::Array(a) => Ok(a),
        other => Err(conn.proto(format!("expected an array, got {}", other.show()))),
    }
}

fn pairs(conn: &Conn, r: Reply) -> Result<BTreeMap<Vec<u8>, Reply>, VerifyError> {
    let items = array(conn, r)?;
    let mut map = BTreeMap::new();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k {
            Reply::Bulk(k) => {
                map.insert(k, v);
            }
            other => return Err(conn.proto(format!("expected a field, got {}", other.show()))),
        }
    }
    Ok(map)
}
