//! Commands a replica obeys from its master that a normal client may not send, and what a
//! link (which writes as a normal client) does instead.
//!
//! A Redis replica applies its master's stream through a client flagged `CLIENT_MASTER`;
//! the server's `mustObeyClient()` lets such a client (and the AOF loader) past checks that
//! every other client meets. Our links write into a *primary* as an ordinary client, so each
//! of those checks can refuse a command the source propagated. They fall in three kinds:
//!
//! - **Argument checks a propagated form fails** — rewritten here ([`rewrite`]) into a form a
//!   normal client may send, with the same effect:
//!   - `XADD`/`XTRIM` with an exact trim and `LIMIT` (`t_stream.c`,
//!     `streamParseAddOrTrimArgsOrReply`): a primary propagates `MAXLEN ~ n LIMIT l` as
//!     `MAXLEN = <length after the trim> LIMIT l` and its replica ignores `LIMIT`; a normal
//!     client gets `ERR syntax error, LIMIT cannot be used without the special ~ option`.
//!     Without `LIMIT` an exact trim is not limited either: the same effect.
//! - **Server states that refuse every write for a while** (`processCommand`): `OOM` under
//!   `maxmemory`, `NOREPLICAS` under `min-replicas-to-write`, `BUSY` while a script or a
//!   module runs, `LOADING`, `MASTERDOWN`, `TRYAGAIN`; a `CLIENT PAUSE WRITE` does not refuse
//!   but holds the link's commands until it ends. These are [`RefusalKind::Transient`]: the
//!   batch is applied again, in order, until the target takes it.
//! - **Limits and permissions that will not change by waiting** — `proto-max-bulk-len`
//!   (`SETRANGE`/`APPEND`/`SETBIT` past it), an ACL `NOPERM`, a renamed command, the
//!   `FUNCTION LOAD` time limit, `WRONGTYPE` (the data already differs), `MISCONF`, a
//!   read-only replica: [`RefusalKind::Permanent`]. The command cannot be applied; the link
//!   stops with the reason rather than skip it.
//!
//! `tests/command_table.rs` checks every rewrite against each server (the original form is
//! refused by a normal client, the rewritten one accepted and equal in effect).

/// How long a refusal lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The server refuses every write for now (out of memory, a running script, not enough
    /// replicas, loading): apply it again later, in order.
    Transient,
    /// Waiting does not change it (syntax, permissions, a limit, the data differs).
    Permanent,
}

/// Error codes (the reply's first word) that say "not now" rather than "no".
pub const TRANSIENT_CODES: &[&str] = &[
    "OOM",
    "NOREPLICAS",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
];

/// The kind of an error reply (its text without the leading `-`). `EXECABORT` (a
/// transaction refused because a command in it was) is neither: look at the command's own
/// refusal.
pub fn refusal_kind(error: &str) -> RefusalKind {
    let code = error.split([' ', '\r']).next().unwrap_or("");
    if TRANSIENT_CODES.contains(&code) || error.starts_with("ERR max number of clients") {
        RefusalKind::Transient
    } else {
        RefusalKind::Permanent
    }
}

/// A rewrite: the new argv, or `None` when the argv needs none.
pub type RewriteFn = fn(&[&[u8]]) -> Option<Vec<Vec<u8>>>;

/// One rewrite: a command a master's client may send and a normal one may not.
pub struct Rule {
    /// The command (upper case).
    pub command: &'static str,
    /// What a normal client is answered for the propagated form (a prefix of the error).
    pub refused_with: &'static str,
    /// Why the rewritten form has the same effect.
    pub why: &'static str,
    /// The rewritten argv, or `None` when this argv needs no rewrite.
    pub apply: RewriteFn,
    /// A propagated form, as a primary sends it, applied to the stream `s` holding the
    /// entries `1-1` … `10-1` (`tests/command_table.rs` runs it on each server).
    pub example: &'static str,
    /// `XLEN s` after the example, as a replica applies it.
    pub example_len: i64,
}

/// Every rewrite (see the module doc).
pub static RULES: &[Rule] = &[
    Rule {
        command: "XADD",
        refused_with: "ERR syntax error, LIMIT cannot be used without the special ~ option",
        why: "a replica ignores LIMIT; an exact trim without LIMIT is not limited either",
        apply: xadd_without_limit,
        example: "XADD s MAXLEN = 3 LIMIT 2 11-1 f v",
        example_len: 3,
    },
    Rule {
        command: "XTRIM",
        refused_with: "ERR syntax error, LIMIT cannot be used without the special ~ option",
        why: "a replica ignores LIMIT; an exact trim without LIMIT is not limited either",
        apply: xtrim_without_limit,
        example: "XTRIM s MINID = 8-0 LIMIT 2",
        example_len: 3,
    },
];

/// The form of `argv` a normal client may send, when the propagated one would be refused
/// (`None`: send it as it is).
pub fn rewrite(argv: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    let name = argv.first()?;
    RULES
        .iter()
        .find(|r| name.eq_ignore_ascii_case(r.command.as_bytes()))
        .and_then(|r| (r.apply)(argv))
}

fn xadd_without_limit(argv: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    trim_without_limit(argv, true)
}

fn xtrim_without_limit(argv: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    trim_without_limit(argv, false)
}

/// `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] n] [LIMIT l] id field value …` and `XTRIM key
/// MAXLEN|MINID [=|~] n [LIMIT l]`, options in any order as the server parses them: without
/// `LIMIT l` when the trim is exact. Stops at `XADD`'s id (field names after it may read
/// `LIMIT`).
fn trim_without_limit(argv: &[&[u8]], xadd: bool) -> Option<Vec<Vec<u8>>> {
    let mut approx = false;
    let mut limit_at = None;
    let mut i = 2;
    while i < argv.len() {
        let more = argv.len() - 1 - i;
        let opt = argv[i];
        if xadd && opt == b"*" {
            break;
        }
        if (opt.eq_ignore_ascii_case(b"MAXLEN") || opt.eq_ignore_ascii_case(b"MINID")) && more > 0 {
            let next = argv[i + 1];
            if more >= 2 && (next == b"~" || next == b"=") {
                approx = next == b"~";
                i += 1;
            }
            i += 2;
        } else if opt.eq_ignore_ascii_case(b"LIMIT") && more > 0 {
            limit_at = Some(i);
            i += 2;
        } else if xadd && opt.eq_ignore_ascii_case(b"NOMKSTREAM") {
            i += 1;
        } else {
            // XADD's id (the options end there), or something the server will refuse
            // anyway: left as it is.
            break;
        }
    }
    let at = limit_at.filter(|_| !approx)?;
    Some(
        argv.iter()
            .enumerate()
            .filter(|(j, _)| *j != at && *j != at + 1)
            .map(|(_, a)| a.to_vec())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(cmd: &str) -> Option<String> {
        let argv: Vec<&[u8]> = cmd.split(' ').map(|a| a.as_bytes()).collect();
        rewrite(&argv).map(|v| {
            v.iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    #[test]
    fn exact_trims_lose_their_limit() {
        assert_eq!(
            rw("XADD s MAXLEN = 50 LIMIT 20 1-1 f v").as_deref(),
            Some("XADD s MAXLEN = 50 1-1 f v")
        );
        assert_eq!(
            rw("xadd s LIMIT 20 minid = 5-0 * f v").as_deref(),
            Some("xadd s minid = 5-0 * f v")
        );
        assert_eq!(
            rw("XADD s NOMKSTREAM MAXLEN 3 LIMIT 1 7-0 f v").as_deref(),
            Some("XADD s NOMKSTREAM MAXLEN 3 7-0 f v")
        );
        assert_eq!(
            rw("XTRIM s MINID = 9-0 LIMIT 100").as_deref(),
            Some("XTRIM s MINID = 9-0")
        );
        assert_eq!(
            rw("XTRIM s MAXLEN 0 LIMIT 0").as_deref(),
            Some("XTRIM s MAXLEN 0")
        );
    }

    #[test]
    fn what_a_client_may_send_is_left_alone() {
        for cmd in [
            "XADD s MAXLEN ~ 50 LIMIT 20 * f v",
            "XADD s MAXLEN = 50 1-1 f v",
            "XADD s 1-1 LIMIT 5",
            "XADD s * LIMIT 5",
            "XTRIM s MAXLEN ~ 10 LIMIT 5",
            "XTRIM s MINID 5-0",
            "SET k v",
            "XADD s",
        ] {
            assert_eq!(rw(cmd), None, "{cmd}");
        }
    }

    #[test]
    fn kinds() {
        for e in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "NOREPLICAS Not enough good replicas to write.",
            "BUSY Redis is busy running a script.",
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down",
            "TRYAGAIN",
        ] {
            assert_eq!(refusal_kind(e), RefusalKind::Transient, "{e}");
        }
        for e in [
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOPERM this user has no permissions",
            "MISCONF errors writing to disk",
            "READONLY You can't write against a read only replica.",
            "BUSYKEY Target key name already exists.",
        ] {
            assert_eq!(refusal_kind(e), RefusalKind::Permanent, "{e}");
        }
    }
}
