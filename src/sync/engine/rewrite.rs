//! The stream rewrites: what happens to one command of the replication stream before it is
//! queued in the batch's transaction.
//!
//! In order: commands that carry no data (`PING`, `PUBLISH`, `REPLCONF`) are skipped;
//! `SELECT` is mapped through the db map (a database that is not copied skips everything up
//! to the next `SELECT`); excluded commands and commands whose keys are all excluded are
//! skipped; writes to cutover's own keys are never applied; then the command is rewritten
//! where the target lacks an argument or a command but has an equivalent (flags an older
//! server does not know, `MSETEX` as `SET`s…). What cannot be expressed is reported, and stops
//! the sync under `unsupported = fail`.
//!
//! The target's `COMMAND INFO` is asked once per command name: a command the target does not
//! know, or whose argument count is outside its arity, would be refused while queueing, so
//! its batch's `EXEC` waits for every `+QUEUED` (see [`crate::sync::batch`]).

use anyhow::Context;

use crate::sync::batch;
use crate::sync::convert::{Stats, UnsupportedPolicy};
use crate::sync::filter::command_keys;
use crate::sync::refusals::Unapplied;
use crate::sync::replica::StreamCommand;
use crate::sync::target::{Sink, Tag, TargetError, show_key};

use super::*;

impl Applier<'_> {
    /// Forwards one command of the replication stream (inside a transaction): filtered
    /// (excluded commands, keys, databases), databases mapped, and rewritten where the target
    /// does not know an argument but has an equivalent; what it cannot express is reported
    /// (and stops the sync under `unsupported = fail`).
    pub(in crate::sync) fn forward<W: Sink>(
        &mut self,
        cmd: &StreamCommand,
        args: &[&[u8]],
        name: &str,
        w: &mut W,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let keys = command_keys(name, args);
        let first_key = keys.first().copied().unwrap_or(1);
        // A refresh or conditional update the primary applied to an existing key: answered
        // 0 or nil here, the key was missing on this side (expired early, issue 20).
        // (`RPUSHX`/`LPUSHX`/`LINSERT` reach the stream only when they pushed: the key was
        // there on the primary.)
        let must_change = matches!(
            name,
            "PEXPIREAT"
                | "PEXPIRE"
                | "EXPIREAT"
                | "EXPIRE"
                | "PERSIST"
                | "RPUSHX"
                | "LPUSHX"
                | "LINSERT"
        ) || (name == "SET"
            && args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"XX")));
        // A counter this side answers with the bare increment was missing here before it:
        // maybe a new counter, maybe one this side expired early while the primary still
        // counts (issue 20): a suspect, checked by a copy from the primary.
        let suspect_reply = match name {
            "INCR" => Some(b":1\r\n".to_vec().into_boxed_slice()),
            "DECR" => Some(b":-1\r\n".to_vec().into_boxed_slice()),
            "INCRBY" | "DECRBY" if args.len() == 3 => std::str::from_utf8(args[2])
                .ok()
                .and_then(|n| n.parse::<i64>().ok())
                .map(|n| {
                    let n = if name == "DECRBY" {
                        n.checked_neg().unwrap_or(n)
                    } else {
                        n
                    };
                    format!(":{n}\r\n").into_bytes().into_boxed_slice()
                }),
            // A write answered with the key's resulting size, equal to exactly what it
            // added: the key was missing here before it — a new list or string, or one this
            // side expired early while the primary's is longer (issue 20): a suspect too.
            _ => size_suspect(name, args),
        };
        // A write that sets the key whole repairs a key that expired early here (issue 20).
        if self.progress.refusals.any_unrepaired() {
            let whole = match name {
                "DEL" | "UNLINK" | "RESTORE" => true,
                "SET" => !args
                    .iter()
                    .skip(3)
                    .any(|a| a.eq_ignore_ascii_case(b"XX") || a.eq_ignore_ascii_case(b"KEEPTTL")),
                _ => false,
            };
            if whole {
                for i in &keys {
                    self.progress.refusals.repaired(&show_key(args[*i]));
                }
            }
        }
        let stream_db = self.stream_db;
        let tag = |what: &str| Tag {
            key: args.get(first_key).map(|k| k.to_vec()).unwrap_or_default(),
            what: format!("{what} (stream offset {})", cmd.end_offset).into(),
            replicated: true,
            must_change,
            suspect_reply: suspect_reply.clone(),
            stream_db,
            stream_end: cmd.end_offset,
            ..Tag::default()
        };
        let filter = &self.opts.tuning.filter;
        if matches!(name, "PING" | "PUBLISH" | "SPUBLISH" | "REPLCONF") {
            self.report.commands_skipped += 1;
            return Ok(());
        }
        if name == "SELECT" {
            let db = args
                .get(1)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                .context("SELECT without a database number in the replication stream")?;
            if let Some(to) = filter.map_db(db) {
                // A database the target lacks stops the sync here: never into another one.
                w.check_db(to)?;
            }
            match filter.map_db(db) {
                Some(to) if to == db => w.send_wire(&cmd.wire, tag(name))?,
                Some(to) => {
                    let n = to.to_string();
                    w.send(&[&b"SELECT"[..], n.as_bytes()], tag(name))?;
                }
                None => {
                    self.skip_db = true;
                    self.report.commands_skipped += 1;
                    return Ok(());
                }
            }
            self.skip_db = false;
            w.set_db(filter.map_db(db).unwrap_or(db));
            self.report.commands += 1;
            return Ok(());
        }
        if self.skip_db || filter.command_excluded(name) {
            self.report.commands_skipped += 1;
            return Ok(());
        }
        if !keys.is_empty() {
            let allowed = keys
                .iter()
                .filter(|i| filter.key_allowed(args[**i]))
                .count();
            if allowed == 0 {
                self.report.commands_skipped += 1;
                return Ok(());
            }
            if allowed < keys.len() {
                self.report.commands_mixed_keys += 1;
                tracing::debug!(
                    command = name,
                    "a stream command touches copied and excluded keys; applied"
                );
            }
        }
        if let Some(i) = keys.iter().find(|i| batch::is_own_key(w.db(), args[**i])) {
            if !self.progress.handoff.role().is_solo() {
                // (The other side's own bookkeeping, e.g. the switch marker: expected.)
                tracing::debug!(
                    "a write to {} in the replication stream is not applied (the key is cutover's own)",
                    show_key(args[*i])
                );
            } else {
                tracing::warn!(
                    "a write to {} in the replication stream is not applied (the key is cutover's own)",
                    show_key(args[*i])
                );
            }
            self.report.commands_skipped += 1;
            return Ok(());
        }
        match self.rewrite(name, args, stats)? {
            Rewrite::Skip => {
                self.report.commands_skipped += 1;
                return Ok(());
            }
            Rewrite::Same => {
                self.check_queueable(name, args.len());
                w.send_wire(&cmd.wire, tag(name))?
            }
            Rewrite::Args(new) => {
                self.check_rewritten(&new);
                w.send(&new, tag(name))?;
                self.report.commands_converted += 1;
            }
            Rewrite::Many(cmds) => {
                for new in &cmds {
                    self.check_rewritten(new);
                    let mut t = tag(name);
                    t.key = new.get(1).cloned().unwrap_or_default();
                    w.send(new, t)?;
                }
                self.report.commands_converted += 1;
            }
        }
        self.report.commands += 1;
        Ok(())
    }

    /// How a stream command must change for the target (see [`Applier::forward`]).
    fn rewrite(
        &mut self,
        name: &str,
        args: &[&[u8]],
        stats: &mut Stats,
    ) -> anyhow::Result<Rewrite> {
        // What a replica obeys from its master and a normal client may not send, in a form
        // a normal client may (`command::obey`: an exact XADD/XTRIM trim loses its LIMIT).
        if let Some(obeyed) = crate::command::obey::rewrite(args) {
            return Ok(Rewrite::Args(obeyed));
        }
        let filter = &self.opts.tuning.filter;
        let old_streams = !(self.info.valkey || self.info.version >= (7, 0, 0));
        Ok(match name {
            // A condition that held on the source holds on the target (same data): the flags
            // only decide whether to apply, and the source did.
            // (Redis 7.0 and Valkey propagate every EXPIRE as PEXPIREAT, flag included; other
            // sources may send the original command.)
            "PEXPIREAT" | "EXPIREAT" | "PEXPIRE" | "EXPIRE"
                if args.len() > 3 && !self.info.has_expire_flags() =>
            {
                Rewrite::Args(args[..3].iter().map(|a| a.to_vec()).collect())
            }
            // Valkey 9.1's MSETEX: one SET per key in the same transaction (atomic too), with
            // the expiry as PEXPIREAT (every target version has it). NX/XX held on the source.
            "MSETEX" if !self.target_knows(name) => match msetex_as_sets(args) {
                Some(cmds) => Rewrite::Many(cmds),
                None => {
                    self.unsupported(
                        stats,
                        format!(
                            "MSETEX on key '{}' in the replication stream cannot be read",
                            args.get(2).map(|k| show_key(k)).unwrap_or_default()
                        ),
                    )?;
                    Rewrite::Skip
                }
            },
            // Hash field TTLs (Valkey 9, Redis 7.4+) on a target without them: a field without
            // a TTL there stays without one (HPERSIST changes nothing); a TTL set cannot be
            // held (as for HSETEX and the snapshot's hashes).
            "HPERSIST" if !self.target_knows(name) => Rewrite::Skip,
            "HPEXPIREAT" | "HEXPIREAT" | "HPEXPIRE" | "HEXPIRE" if !self.target_knows(name) => {
                let what = format!(
                    "{name} on key '{}' in the replication stream: {} cannot hold hash field TTLs",
                    args.get(1).map(|k| show_key(k)).unwrap_or_default(),
                    self.info.describe()
                );
                if self.opts.tuning.unsupported == UnsupportedPolicy::Fail {
                    return Err(TargetError::CannotHold { what }.into());
                }
                stats.field_ttls_dropped += 1;
                tracing::warn!("{what}; the fields stay without a TTL");
                Rewrite::Skip
            }
            "SET" if !self.has_set_ifeq() => {
                match args.iter().position(|a| a.eq_ignore_ascii_case(b"IFEQ")) {
                    Some(i) if i >= 3 && i + 1 < args.len() => Rewrite::Args(
                        args.iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i && *j != i + 1)
                            .map(|(_, a)| a.to_vec())
                            .collect(),
                    ),
                    _ => Rewrite::Same,
                }
            }
            // Stream counters of Redis 7.0 (ENTRIESREAD, ENTRIESADDED, MAXDELETEDID) do not
            // exist before it; the rest of the command means the same.
            "XGROUP" | "XSETID" if old_streams => {
                let mut out = Vec::with_capacity(args.len());
                let mut i = 0;
                let mut changed = false;
                while i < args.len() {
                    if i >= 2
                        && ["ENTRIESREAD", "ENTRIESADDED", "MAXDELETEDID"]
                            .iter()
                            .any(|f| args[i].eq_ignore_ascii_case(f.as_bytes()))
                    {
                        i += 2;
                        changed = true;
                        continue;
                    }
                    out.push(args[i].to_vec());
                    i += 1;
                }
                if changed {
                    Rewrite::Args(out)
                } else {
                    Rewrite::Same
                }
            }
            "MOVE" => {
                let db = args
                    .get(2)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok());
                match db.map(|d| (d, filter.map_db(d))) {
                    Some((d, Some(to))) if to == d => Rewrite::Same,
                    Some((_, Some(to))) => Rewrite::Args(vec![
                        b"MOVE".to_vec(),
                        args[1].to_vec(),
                        to.to_string().into_bytes(),
                    ]),
                    // Moved into a database that is not copied: gone from this one.
                    Some((_, None)) => Rewrite::Args(vec![b"DEL".to_vec(), args[1].to_vec()]),
                    None => Rewrite::Same,
                }
            }
            "COPY" => match args.iter().position(|a| a.eq_ignore_ascii_case(b"DB")) {
                Some(i) if i + 1 < args.len() => {
                    let db = std::str::from_utf8(args[i + 1])
                        .ok()
                        .and_then(|d| d.parse::<u64>().ok());
                    match db.map(|d| (d, filter.map_db(d))) {
                        Some((d, Some(to))) if to == d => Rewrite::Same,
                        Some((_, Some(to))) => {
                            let mut out: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                            out[i + 1] = to.to_string().into_bytes();
                            Rewrite::Args(out)
                        }
                        Some((_, None)) => Rewrite::Skip,
                        None => Rewrite::Same,
                    }
                }
                _ => Rewrite::Same,
            },
            "SWAPDB" => {
                let db = |i: usize| {
                    args.get(i)
                        .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                };
                match (db(1), db(2)) {
                    (Some(a), Some(b)) => match (filter.map_db(a), filter.map_db(b)) {
                        (Some(x), Some(y)) if (x, y) == (a, b) => Rewrite::Same,
                        (Some(x), Some(y)) => Rewrite::Args(vec![
                            b"SWAPDB".to_vec(),
                            x.to_string().into_bytes(),
                            y.to_string().into_bytes(),
                        ]),
                        _ => {
                            self.unsupported(stats, format!(
                                "SWAPDB {a} {b} in the replication stream: a database is not copied (db_map), so the swap cannot be applied"
                            ))?;
                            Rewrite::Skip
                        }
                    },
                    _ => Rewrite::Same,
                }
            }
            // Valkey 9's conditional delete: the condition held on the source.
            "DELIFEQ" if args.len() == 3 && !self.target_knows(name) => {
                Rewrite::Args(vec![b"DEL".to_vec(), args[1].to_vec()])
            }
            // Valkey 9's hash field TTLs: the fields are kept, their TTLs cannot be (as in the
            // snapshot).
            "HSETEX" if !self.target_knows(name) => {
                let fields = args
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(b"FIELDS"))
                    .filter(|i| *i >= 2);
                match fields {
                    Some(i) if i + 2 < args.len() => {
                        if self.opts.tuning.unsupported == UnsupportedPolicy::Fail {
                            return Err(TargetError::CannotHold {
                                what: format!(
                                    "HSETEX on key '{}' in the replication stream: {} cannot hold hash field TTLs",
                                    show_key(args[1]),
                                    self.info.describe()
                                )
                                ,
                            }
                            .into());
                        }
                        stats.field_ttls_dropped += 1;
                        tracing::warn!(
                            key = %show_key(args[1]),
                            "HSETEX in the replication stream: applied as HSET; the target cannot hold hash field TTLs"
                        );
                        let mut out = vec![b"HSET".to_vec(), args[1].to_vec()];
                        out.extend(args[i + 2..].iter().map(|a| a.to_vec()));
                        Rewrite::Args(out)
                    }
                    _ => {
                        self.unsupported(
                            stats,
                            format!(
                                "HSETEX on key '{}' in the replication stream cannot be read",
                                args.get(1).map(|k| show_key(k)).unwrap_or_default()
                            ),
                        )?;
                        Rewrite::Skip
                    }
                }
            }
            "FUNCTION" if !self.info.has_functions() => {
                self.unsupported(stats, format!(
                    "a FUNCTION command in the replication stream cannot be applied to {} (no functions before Redis 7.0)",
                    self.info.describe()
                ))?;
                Rewrite::Skip
            }
            _ if !self.target_knows(name) => {
                self.unsupported(stats, format!(
                    "{name} on key '{}' in the replication stream: {} does not know the command",
                    args.get(1).map(|k| show_key(k)).unwrap_or_default(),
                    self.info.describe()
                ))?;
                Rewrite::Skip
            }
            _ => Rewrite::Same,
        })
    }

    /// Reports a stream command the target cannot express; an error under
    /// `unsupported = fail`.
    pub(in crate::sync) fn unsupported(
        &self,
        stats: &mut Stats,
        what: String,
    ) -> anyhow::Result<()> {
        self.not_applied(
            stats,
            Unapplied {
                command: what.clone(),
                key: String::new(),
                reason: String::new(),
            },
            what,
        )
    }

    /// A stream command the side this link writes to does not apply (`u`; `text` says it
    /// whole): recorded in [`crate::sync::refusals`] so that no move goes through in
    /// silence. Under `cutover run` the link then stops for good (an error no retry takes
    /// up); headless `cutover sync` keeps its `unsupported` policy.
    pub(in crate::sync) fn not_applied(
        &self,
        stats: &mut Stats,
        u: Unapplied,
        text: String,
    ) -> anyhow::Result<()> {
        self.progress.refusals.record(u);
        if self.opts.shared.is_some() {
            self.progress.refusals.halt();
            tracing::error!(direction = self.progress.direction(), "{text}");
            return Err(TargetError::Unapplied { what: text }.into());
        }
        self.plain_unsupported(stats, text)
    }

    /// The `unsupported` policy: an error under `fail`, else reported.
    fn plain_unsupported(&self, stats: &mut Stats, what: String) -> anyhow::Result<()> {
        if self.opts.tuning.unsupported == UnsupportedPolicy::Fail {
            return Err(TargetError::CannotHold { what }.into());
        }
        stats.problem(what);
        Ok(())
    }

    /// `SET … IFEQ` (Valkey 8.1+).
    fn has_set_ifeq(&self) -> bool {
        self.info.valkey && self.info.version >= (8, 1, 0)
    }

    /// Whether the target has the command `name` (`COMMAND INFO`, asked once per name on a
    /// connection of its own: the writer's is inside a transaction).
    fn target_knows(&mut self, name: &str) -> bool {
        self.command_shape(name).known
    }

    /// Notes a command `name` (upper case) with `argc` arguments (its name included) about
    /// to be queued: may the target refuse it while queueing?
    fn check_queueable(&mut self, name: &str, argc: usize) {
        let shape = self.command_shape(name);
        let argc = argc as i64;
        let fits = match shape.arity {
            Some(a) if a >= 0 => argc == a,
            Some(a) => argc >= -a,
            None => false,
        };
        if !(shape.known && fits) {
            self.txn_uncertain = true;
        }
    }

    /// [`Applier::check_queueable`] for a command the applier wrote itself.
    fn check_rewritten(&mut self, args: &[Vec<u8>]) {
        let name = args
            .first()
            .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
            .unwrap_or_default();
        self.check_queueable(&name, args.len());
    }

    /// `COMMAND INFO` of `name`, asked once.
    fn command_shape(&mut self, name: &str) -> CommandShape {
        if let Some(shape) = self.known_commands.get(name) {
            return *shape;
        }
        let asked = self
            .target_ctl
            .with(&self.opts.target, self.opts.timeout, |c| {
                c.call_raw(&[b"COMMAND", b"INFO", name.as_bytes()])
            });
        let shape = match asked {
            // An unknown command gives a nil entry; an error (COMMAND not allowed) says
            // nothing, so the command is tried.
            Ok(reply) => CommandShape {
                known: !(reply.starts_with(b"*1\r\n$-1\r\n")
                    || reply.starts_with(b"*1\r\n*-1\r\n")
                    || reply.starts_with(b"*1\r\n_\r\n")),
                arity: command_info_arity(&reply),
            },
            Err(e) => {
                tracing::warn!(error = %e, command = name, "cannot ask the target about a command; forwarding it");
                CommandShape {
                    known: true,
                    arity: None,
                }
            }
        };
        self.known_commands.insert(name.to_string(), shape);
        shape
    }
}

/// What the target's `COMMAND INFO` says of a command.
#[derive(Debug, Clone, Copy)]
pub(super) struct CommandShape {
    /// The target has it (also assumed when it could not be asked).
    known: bool,
    /// Its arity (`n`: exactly n arguments with the name; `-n`: at least n), when known.
    arity: Option<i64>,
}

/// The arity in a `COMMAND INFO name` reply: `*1 *N $len name :arity …`.
fn command_info_arity(reply: &[u8]) -> Option<i64> {
    let rest = reply.strip_prefix(b"*1\r\n*")?;
    let mut lines = rest.split(|b| *b == b'\n').skip(1);
    let len_line = lines.next()?;
    if len_line.first() != Some(&b'$') {
        return None;
    }
    let _name = lines.next()?;
    let arity = lines.next()?.strip_prefix(b":")?;
    let arity = arity.strip_suffix(b"\r").unwrap_or(arity);
    std::str::from_utf8(arity).ok()?.parse().ok()
}

/// What [`Applier::rewrite`] decided.
enum Rewrite {
    Same,
    Skip,
    Args(Vec<Vec<u8>>),
    /// Several commands (inside the batch's transaction, so as atomic as the original).
    Many(Vec<Vec<Vec<u8>>>),
}

/// `MSETEX numkeys key value … [NX|XX] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]` as `SET key value
/// [KEEPTTL]` per key, each followed by the expiry (`PEXPIREAT`/`PEXPIRE`). `None` when it
/// cannot be read.
fn msetex_as_sets(args: &[&[u8]]) -> Option<Vec<Vec<Vec<u8>>>> {
    let n: usize = std::str::from_utf8(args.get(1)?).ok()?.parse().ok()?;
    let pairs = args.get(2..2 + n.checked_mul(2)?)?;
    let mut keepttl = false;
    let mut expiry: Option<Vec<Vec<u8>>> = None;
    let mut rest = args[2 + 2 * n..].iter();
    while let Some(opt) = rest.next() {
        let upper = opt.to_ascii_uppercase();
        match upper.as_slice() {
            b"NX" | b"XX" => {}
            b"KEEPTTL" => keepttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let v: u64 = std::str::from_utf8(rest.next()?).ok()?.parse().ok()?;
                let (cmd, v) = match upper.as_slice() {
                    b"EX" => ("PEXPIRE", v.checked_mul(1000)?),
                    b"PX" => ("PEXPIRE", v),
                    b"EXAT" => ("PEXPIREAT", v.checked_mul(1000)?),
                    _ => ("PEXPIREAT", v),
                };
                expiry = Some(vec![cmd.as_bytes().to_vec(), v.to_string().into_bytes()]);
            }
            _ => return None,
        }
    }
    let mut out = Vec::with_capacity(n * 2);
    for kv in pairs.chunks(2) {
        let mut set = vec![b"SET".to_vec(), kv[0].to_vec(), kv[1].to_vec()];
        if keepttl {
            set.push(b"KEEPTTL".to_vec());
        }
        out.push(set);
        if let Some(e) = &expiry {
            out.push(vec![e[0].clone(), kv[0].to_vec(), e[1].clone()]);
        }
    }
    Some(out)
}

/// The reply of a write answered with its key's resulting size when the key was missing
/// before it (`RPUSH k a b` → `:2`, `APPEND k abc` → `:3`, `SETRANGE k 5 ab` → `:7`), and
/// `LINSERT`'s `:-1` (its pivot is missing here, though the primary found it): these reply
/// bytes make the command a suspect ([`Tag::suspect_reply`]).
fn size_suspect(name: &str, args: &[&[u8]]) -> Option<Box<[u8]>> {
    let size = match name {
        "RPUSH" | "LPUSH" if args.len() > 2 => (args.len() - 2) as u64,
        "APPEND" if args.len() == 3 => args[2].len() as u64,
        // An empty value changes nothing (and creates no key).
        "SETRANGE" if args.len() == 4 && !args[3].is_empty() => std::str::from_utf8(args[2])
            .ok()?
            .parse::<u64>()
            .ok()?
            .checked_add(args[3].len() as u64)?,
        "LINSERT" => return Some(b":-1\r\n".to_vec().into_boxed_slice()),
        _ => return None,
    };
    Some(format!(":{size}\r\n").into_bytes().into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_replies_of_a_key_missing_before() {
        let s = |a: &[&str]| {
            let args: Vec<&[u8]> = a.iter().map(|x| x.as_bytes()).collect();
            size_suspect(a[0], &args).map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        assert_eq!(s(&["RPUSH", "k", "a", "b"]).as_deref(), Some(":2\r\n"));
        assert_eq!(s(&["LPUSH", "k", "a"]).as_deref(), Some(":1\r\n"));
        assert_eq!(s(&["APPEND", "k", "abc"]).as_deref(), Some(":3\r\n"));
        assert_eq!(s(&["SETRANGE", "k", "5", "ab"]).as_deref(), Some(":7\r\n"));
        assert_eq!(s(&["SETRANGE", "k", "5", ""]), None);
        assert_eq!(s(&["SETRANGE", "k", "x", "ab"]), None);
        assert_eq!(
            s(&["LINSERT", "k", "BEFORE", "p", "e"]).as_deref(),
            Some(":-1\r\n")
        );
        assert_eq!(s(&["SADD", "k", "a"]), None);
    }

    #[test]
    fn arity_from_command_info() {
        // As Redis 7.0 and 6.2 answer `COMMAND INFO get` / `COMMAND INFO set`.
        let get = b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n";
        let set = b"*1\r\n*7\r\n$3\r\nset\r\n:-3\r\n*2\r\n+write\r\n+denyoom\r\n";
        assert_eq!(command_info_arity(get), Some(2));
        assert_eq!(command_info_arity(set), Some(-3));
        assert_eq!(command_info_arity(b"*1\r\n*-1\r\n"), None);
        assert_eq!(command_info_arity(b"-ERR unknown command\r\n"), None);
        assert_eq!(command_info_arity(b"*1\r\n*7\r\n$3\r\nset\r\n:x\r\n"), None);
    }

    #[test]
    fn msetex() {
        let a = |v: &[&str]| -> Vec<Vec<u8>> { v.iter().map(|s| s.as_bytes().to_vec()).collect() };
        let args: Vec<&[u8]> = ["MSETEX", "2", "a", "1", "b", "2", "NX", "PXAT", "99"]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        assert_eq!(
            msetex_as_sets(&args).unwrap(),
            vec![
                a(&["SET", "a", "1"]),
                a(&["PEXPIREAT", "a", "99"]),
                a(&["SET", "b", "2"]),
                a(&["PEXPIREAT", "b", "99"]),
            ]
        );
        let args: Vec<&[u8]> = ["msetex", "1", "a", "1", "KEEPTTL"]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        assert_eq!(
            msetex_as_sets(&args).unwrap(),
            vec![a(&["SET", "a", "1", "KEEPTTL"])]
        );
        for bad in [
            &["MSETEX", "2", "a", "1"][..],
            &["MSETEX", "1", "a", "1", "EX"],
            &["MSETEX", "1", "a", "1", "WAT"],
        ] {
            let args: Vec<&[u8]> = bad.iter().map(|s| s.as_bytes()).collect();
            assert!(msetex_as_sets(&args).is_none(), "{bad:?}");
        }
    }
}
