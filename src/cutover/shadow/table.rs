//! Which writes the proxy captures for the shadow, and which of them have a shadow form
//! that depends on their reply (by command id, from the command table).

use std::sync::OnceLock;

use crate::command::flags_where;

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

/// The writes [`super::shadow_form`] rewrites (everything else there is "itself").
pub(super) const NEEDS_REPLY: &[&str] = &[
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "hincrby",
    "hincrbyfloat",
    "zincrby",
    "expire",
    "pexpire",
    "persist",
    "expireat",
    "pexpireat",
    "setex",
    "psetex",
    "set",
    "getex",
    "getdel",
    "spop",
    "xadd",
    "rpush",
    "lpush",
    "rpushx",
    "lpushx",
    "linsert",
    "append",
    "setrange",
    "sadd",
    "srem",
    "hset",
    "hsetnx",
    "hdel",
    "zadd",
    "zrem",
    "lrem",
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
