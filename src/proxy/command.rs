//! What the proxy must know about a command before forwarding it.
//!
//! Almost every command is forwarded untouched and answered by exactly one reply. The few
//! exceptions are listed here: commands the proxy answers itself (`AUTH` when the proxy has its
//! own password, `QUIT`), commands it refuses (`MONITOR`, replication), commands that change the
//! per-connection state a session must carry across a route flip (`SELECT`, `HELLO`,
//! `CLIENT SETNAME`, `MULTI`…), and commands that are answered by more or fewer than one reply
//! (`SUBSCRIBE a b` → two confirmations, `CLIENT REPLY OFF` → none).

/// Pub/sub families: each has its own subscribe/unsubscribe pair and confirmation words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

impl SubKind {
    pub const ALL: [SubKind; 3] = [SubKind::Channel, SubKind::Pattern, SubKind::Shard];

    pub fn subscribe_word(self) -> &'static str {
        match self {
            SubKind::Channel => "subscribe",
            SubKind::Pattern => "psubscribe",
            SubKind::Shard => "ssubscribe",
        }
    }
    pub fn unsubscribe_word(self) -> &'static str {
        match self {
            SubKind::Channel => "unsubscribe",
            SubKind::Pattern => "punsubscribe",
            SubKind::Shard => "sunsubscribe",
        }
    }
    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The proxy's view of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Forward; one reply; no state change.
    Plain,
    Auth,
    Hello,
    Quit,
    /// Refused with this message; never forwarded.
    Refused(&'static str),
    Select,
    ClientSetName,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    ClientReply(ReplyMode),
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Reset,
    Subscribe(SubKind),
    Unsubscribe(SubKind),
    /// `MONITOR`: after its `+OK` the connection is a one-way feed of the server's commands;
    /// the session becomes a plain byte pipe.
    Monitor,
    /// An ordinary command that, with these arguments, changes the state of the connection it
    /// runs on (`SCRIPT DEBUG YES|SYNC`: every later `EVAL` on it is debugged): forwarded as it
    /// is, but never on the shared connection.
    OwnConnection,
    /// `CONFIG GET`: through a proxy with its own password, the backend's passwords in the
    /// reply are masked (see `resp::mask`).
    ConfigGet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    Skip,
}

/// Classifies a command from its (case-insensitive) name and the next argument.
pub fn classify(name: &[u8], arg1: Option<&[u8]>, arg2: Option<&[u8]>, argc: u64) -> Kind {
    let mut lower = [0u8; 16];
    if name.len() > lower.len() {
        return Kind::Plain;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let eq = |a: Option<&[u8]>, w: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()));
    match &lower[..name.len()] {
        b"auth" => Kind::Auth,
        b"hello" => Kind::Hello,
        b"quit" => Kind::Quit,
        b"monitor" => Kind::Monitor,
        b"sync" | b"psync" | b"replconf" => Kind::Refused(
            "ERR replication through the cutover proxy is not supported; replicate from the server directly",
        ),
        b"select" => Kind::Select,
        b"client" if eq(arg1, "setname") => Kind::ClientSetName,
        b"client" if eq(arg1, "reply") && argc == 3 => {
            if eq(arg2, "on") {
                Kind::ClientReply(ReplyMode::On)
            } else if eq(arg2, "off") {
                Kind::ClientReply(ReplyMode::Off)
            } else if eq(arg2, "skip") {
                Kind::ClientReply(ReplyMode::Skip)
            } else {
                Kind::Plain
            }
        }
        b"multi" => Kind::Multi,
        b"exec" => Kind::Exec,
        b"discard" => Kind::Discard,
        b"watch" => Kind::Watch,
        b"unwatch" => Kind::Unwatch,
        b"reset" => Kind::Reset,
        b"script" if eq(arg1, "debug") && !eq(arg2, "no") => Kind::OwnConnection,
        b"config" if eq(arg1, "get") => Kind::ConfigGet,
        b"subscribe" => Kind::Subscribe(SubKind::Channel),
        b"psubscribe" => Kind::Subscribe(SubKind::Pattern),
        b"ssubscribe" => Kind::Subscribe(SubKind::Shard),
        b"unsubscribe" => Kind::Unsubscribe(SubKind::Channel),
        b"punsubscribe" => Kind::Unsubscribe(SubKind::Pattern),
        b"sunsubscribe" => Kind::Unsubscribe(SubKind::Shard),
        _ => Kind::Plain,
    }
}

/// Whether an ordinary command (classified [`Kind::Plain`]) must run on the session's own
/// backend connection rather than the shared one: it blocks the connection (`BLPOP`, `WAIT`…),
/// reads or changes per-connection state (`CLIENT …`, `READONLY`), or is unknown to the proxy
/// (a module command might block).
pub fn needs_own_connection(cmd_id: usize) -> bool {
    flags(cmd_id) & OWN_CONNECTION != 0
}

/// Commands that may wait on the server for a long time (or forever) before replying: those
/// the command table flags `blocking` on any server ([`crate::command::F_BLOCKING`]).
pub fn may_block(cmd_id: usize) -> bool {
    flags(cmd_id) & MAY_BLOCK != 0
}

/// Whether [`classify`] can say anything but [`Kind::Plain`] for this command: the data path
/// skips the name comparisons for every other command.
pub fn has_own_kind(cmd_id: usize) -> bool {
    flags(cmd_id) & OWN_KIND != 0
}

/// Ordinary commands that read or change the connection's own state (the proxy's policy:
/// the command table has no flag for it; a test checks each is in the table).
const CONNECTION_STATE: &[&str] = &["client", "debug", "readonly", "readwrite", "asking", "auth"];

const MAY_BLOCK: u8 = 1;
const OWN_CONNECTION: u8 = 2;
const OWN_KIND: u8 = 4;
const LEARNS_SCRIPT: u8 = 8;
const CALLS_SCRIPT: u8 = 16;

/// `EVALSHA` and `EVALSHA_RO`: a SHA the script registry does not know is noted
/// ([`crate::cutover::unknown_scripts`]); they stay on the hot path.
pub fn calls_script(cmd_id: usize) -> bool {
    flags(cmd_id) & CALLS_SCRIPT != 0
}

/// The SHA argument of an `EVALSHA` in RESP form (`*N`, `$len name`, `$40 sha`): a cheap
/// look at the bytes of a whole frame; `None` for anything else (an inline command).
pub fn evalsha_sha(wire: &[u8]) -> Option<&[u8]> {
    let line_end = |from: usize| -> Option<usize> {
        wire.get(from..)?
            .windows(2)
            .take(24)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    if wire.first() != Some(&b'*') {
        return None;
    }
    let after_count = line_end(0)? + 2;
    if wire.get(after_count) != Some(&b'$') {
        return None;
    }
    let len_end = line_end(after_count)?;
    let name_len: usize = std::str::from_utf8(&wire[after_count + 1..len_end])
        .ok()?
        .parse()
        .ok()?;
    let sha_head = len_end + 2 + name_len + 2;
    let sha = wire.get(sha_head..)?.strip_prefix(b"$40\r\n")?;
    sha.get(..40)
}

/// `EVAL`, `EVAL_RO` and `SCRIPT`: the proxy keeps the script bodies they carry
/// ([`crate::cutover::scripts`]), so they leave the hot path for [`Session`]'s `command`.
///
/// [`Session`]: super::session::Session
pub fn learns_script(cmd_id: usize) -> bool {
    flags(cmd_id) & LEARNS_SCRIPT != 0
}

/// Per-command flags, indexed by command id (the last slot is `other`: an unknown command
/// might be a blocking module command, so it gets its own connection). Built once from the
/// command table.
fn flags(cmd_id: usize) -> u8 {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t: Vec<u8> = crate::command::COMMANDS
            .iter()
            .map(|c| {
                let mut f = 0;
                if c.has_flag(crate::command::F_BLOCKING) {
                    f |= MAY_BLOCK | OWN_CONNECTION;
                }
                if CONNECTION_STATE.contains(&c.name) {
                    f |= OWN_CONNECTION;
                }
                if matches!(c.name, "eval" | "eval_ro" | "script") {
                    f |= LEARNS_SCRIPT;
                }
                if matches!(c.name, "evalsha" | "evalsha_ro") {
                    f |= CALLS_SCRIPT;
                }
                // CLIENT's and SCRIPT's kinds depend on their subcommands.
                if matches!(c.name, "client" | "script" | "config")
                    || classify(c.name.as_bytes(), None, None, 0) != Kind::Plain
                {
                    f |= OWN_KIND;
                }
                f
            })
            .collect();
        t.push(OWN_CONNECTION);
        t
    });
    table.get(cmd_id).copied().unwrap_or(OWN_CONNECTION)
}

pub use crate::command::flags_where;

/// Commands known by name, for per-command metrics: every top-level command of the command
/// table ([`crate::command::NAMES`]). Anything else is counted as `other`, so a client
/// sending garbage names cannot blow up the metric cardinality.
pub use crate::command::NAMES as KNOWN_COMMANDS;

/// Index of `name` in [`KNOWN_COMMANDS`], or `KNOWN_COMMANDS.len()` for `other`: the command
/// table's id ([`crate::command::id`], one hash probe, no allocation).
#[inline]
pub fn command_id(name: &[u8]) -> usize {
    crate::command::id(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sha_of_an_evalsha() {
        let sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
        let wire = format!("*4\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n0\r\n$1\r\nx\r\n");
        assert_eq!(evalsha_sha(wire.as_bytes()), Some(sha.as_bytes()));
        let ro = format!("*3\r\n$10\r\nevalsha_ro\r\n$40\r\n{sha}\r\n$1\r\n0\r\n");
        assert_eq!(evalsha_sha(ro.as_bytes()), Some(sha.as_bytes()));
        for bad in [
            &b"EVALSHA abc 0\r\n"[..],
            b"*3\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n0\r\n",
            b"*3\r\n$7\r\nEVALSHA\r\n$40\r\nshort",
            b"*3\r\n$x\r\n",
            b"*",
            b"",
        ] {
            assert_eq!(evalsha_sha(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(calls_script(command_id(b"evalsha")));
        assert!(calls_script(command_id(b"EVALSHA_RO")));
        assert!(!calls_script(command_id(b"eval")));
    }

    #[test]
    fn every_command_with_a_kind_of_its_own_is_flagged() {
        // The data path calls `classify` only for flagged commands: every name it treats
        // specially must be a known command with the flag.
        let special = [
            "auth",
            "hello",
            "quit",
            "monitor",
            "sync",
            "psync",
            "replconf",
            "select",
            "client",
            "multi",
            "exec",
            "discard",
            "watch",
            "unwatch",
            "reset",
            "subscribe",
            "psubscribe",
            "ssubscribe",
            "unsubscribe",
            "punsubscribe",
            "sunsubscribe",
            "script",
            "config",
        ];
        for name in special {
            let id = command_id(name.as_bytes());
            assert!(id < KNOWN_COMMANDS.len(), "{name} is not a known command");
            assert!(has_own_kind(id), "{name} is not flagged");
        }
        let get = command_id(b"get");
        assert!(!has_own_kind(get) && !needs_own_connection(get) && !may_block(get));
        for name in CONNECTION_STATE {
            assert!(crate::command::lookup(name.as_bytes()).is_some(), "{name}");
        }
        // The blocking commands the proxy knew before the table, and the table's own.
        for name in [
            "blpop",
            "brpop",
            "brpoplpush",
            "blmove",
            "blmpop",
            "bzpopmin",
            "bzpopmax",
            "bzmpop",
            "xread",
            "xreadgroup",
            "wait",
            "waitaof",
        ] {
            assert!(may_block(command_id(name.as_bytes())), "{name}");
        }
        let blpop = command_id(b"blpop");
        assert!(may_block(blpop) && needs_own_connection(blpop));
        assert!(needs_own_connection(command_id(b"readonly")));
        let other = command_id(b"module.cmd");
        assert!(needs_own_connection(other) && !may_block(other) && !has_own_kind(other));
        // Anything `classify` does not recognise is Plain, whatever its arguments.
        for name in KNOWN_COMMANDS.iter().filter(|n| !special.contains(n)) {
            assert_eq!(
                classify(name.as_bytes(), Some(b"setname"), Some(b"on"), 3),
                Kind::Plain,
                "{name}"
            );
        }
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for w in KNOWN_COMMANDS.windows(2) {
            assert!(w[0] < w[1], "{} >= {}", w[0], w[1]);
        }
        assert_eq!(KNOWN_COMMANDS[command_id(b"GeT")], "get");
        assert_eq!(command_id(b"nonsense"), KNOWN_COMMANDS.len());
        assert_eq!(command_id(&[b'x'; 100]), KNOWN_COMMANDS.len());
        for (i, name) in KNOWN_COMMANDS.iter().enumerate() {
            assert_eq!(command_id(name.to_uppercase().as_bytes()), i);
        }
    }

    #[test]
    fn classifies_state_changing_commands() {
        assert_eq!(classify(b"SELECT", Some(b"1"), None, 2), Kind::Select);
        assert_eq!(
            classify(b"client", Some(b"SETNAME"), Some(b"x"), 3),
            Kind::ClientSetName
        );
        assert_eq!(
            classify(b"client", Some(b"reply"), Some(b"Off"), 3),
            Kind::ClientReply(ReplyMode::Off)
        );
        assert_eq!(classify(b"client", Some(b"id"), None, 2), Kind::Plain);
        assert_eq!(
            classify(b"PSUBSCRIBE", Some(b"a*"), None, 2),
            Kind::Subscribe(SubKind::Pattern)
        );
        assert_eq!(classify(b"monitor", None, None, 1), Kind::Monitor);
        assert!(matches!(
            classify(b"psync", None, None, 1),
            Kind::Refused(_)
        ));
        assert_eq!(classify(b"get", Some(b"k"), None, 2), Kind::Plain);
        for mode in [&b"YES"[..], b"sync"] {
            assert_eq!(
                classify(b"SCRIPT", Some(b"debug"), Some(mode), 3),
                Kind::OwnConnection
            );
        }
        assert_eq!(
            classify(b"script", Some(b"debug"), Some(b"no"), 3),
            Kind::Plain
        );
        assert_eq!(
            classify(b"script", Some(b"load"), Some(b"return 1"), 3),
            Kind::Plain
        );
        // Commands that change their connection's state run on the session's own one.
        for name in [
            "client",
            "readonly",
            "readwrite",
            "asking",
            "debug",
            "wait",
            "waitaof",
        ] {
            assert!(needs_own_connection(command_id(name.as_bytes())), "{name}");
        }
    }
}

/// `WAIT` or `WAITAOF`: blocks until replicas acknowledge. A move cancels it on the old side
/// like a blocking call (`CLIENT UNBLOCK`), and the server then answers what was acknowledged
/// so far, which is the reply the client gets (it is not sent again: the new primary's
/// replicas never saw the client's writes as theirs to acknowledge).
pub fn is_replica_wait(args: &[&[u8]]) -> bool {
    args.first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"wait") || n.eq_ignore_ascii_case(b"waitaof"))
}

/// A blocking call, cancelled on the old side by a route flip, sent again with what is left
/// of its timeout. `None`: the command does not block (no timeout argument, `WAIT`) and must
/// not be re-sent; `Some(None)`: its time is up (the client gets the nil it was given);
/// `Some(Some(args))`: the command to send to the new primary.
///
/// Timeouts are seconds (a decimal) for the list/zset calls, the last argument except for
/// `BLMPOP`/`BZMPOP` (the first); milliseconds after `BLOCK` for `XREAD`/`XREADGROUP`.
/// 0 means "forever" and stays 0.
pub fn reissue_blocking(
    args: &[&[u8]],
    elapsed: std::time::Duration,
) -> Option<Option<Vec<Vec<u8>>>> {
    let name = String::from_utf8_lossy(args.first()?).to_ascii_lowercase();
    let (index, millis) = match name.as_str() {
        "blpop" | "brpop" | "brpoplpush" | "blmove" | "bzpopmin" | "bzpopmax" => {
            (args.len().checked_sub(1)?, false)
        }
        "blmpop" | "bzmpop" => (1, false),
        "xread" | "xreadgroup" => {
            let pos = args.iter().position(|a| a.eq_ignore_ascii_case(b"BLOCK"))?;
            (pos + 1, true)
        }
        _ => return None,
    };
    let given: f64 = std::str::from_utf8(args.get(index)?).ok()?.parse().ok()?;
    let given_ms = if millis { given } else { given * 1000.0 };
    let mut out: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
    if given_ms > 0.0 {
        let left = given_ms - elapsed.as_secs_f64() * 1000.0;
        if left < 1.0 {
            return Some(None);
        }
        out[index] = if millis {
            format!("{}", left.ceil() as u64).into_bytes()
        } else {
            format!("{:.3}", left / 1000.0).into_bytes()
        };
    }
    Some(Some(out))
}

#[cfg(test)]
mod reissue_tests {
    use super::reissue_blocking;
    use std::time::Duration;

    #[test]
    fn blocking_calls_keep_what_is_left_of_their_timeout() {
        let args: Vec<&[u8]> = vec![b"BLPOP", b"q", b"10"];
        let again = reissue_blocking(&args, Duration::from_millis(2500))
            .unwrap()
            .unwrap();
        assert_eq!(again[2], b"7.500");
        let forever: Vec<&[u8]> = vec![b"BLPOP", b"q", b"0"];
        assert_eq!(
            reissue_blocking(&forever, Duration::from_secs(99))
                .unwrap()
                .unwrap()[2],
            b"0"
        );
        let xread: Vec<&[u8]> = vec![b"XREAD", b"BLOCK", b"1000", b"STREAMS", b"s", b"$"];
        assert_eq!(
            reissue_blocking(&xread, Duration::from_millis(400))
                .unwrap()
                .unwrap()[2],
            b"600"
        );
        assert_eq!(
            reissue_blocking(&xread, Duration::from_millis(1400)),
            Some(None)
        );
        let plain: Vec<&[u8]> = vec![b"XREAD", b"STREAMS", b"s", b"0"];
        assert_eq!(reissue_blocking(&plain, Duration::ZERO), None);
        let mpop: Vec<&[u8]> = vec![b"BLMPOP", b"2", b"1", b"q", b"LEFT"];
        assert_eq!(
            reissue_blocking(&mpop, Duration::ZERO).unwrap().unwrap()[1],
            b"2.000"
        );
        let wait: Vec<&[u8]> = vec![b"WAIT", b"1", b"100"];
        assert_eq!(reissue_blocking(&wait, Duration::ZERO), None);
        assert!(super::is_replica_wait(&wait));
        assert!(super::is_replica_wait(&[b"waitaof", b"0", b"1", b"0"]));
        assert!(!super::is_replica_wait(&plain));
    }
}
