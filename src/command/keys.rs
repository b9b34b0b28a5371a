//! Where a command's keys are, from its full argument vector.
//!
//! This follows what the servers do for `COMMAND GETKEYS` (Redis 7's
//! `getKeysFromCommandWithSpecs`):
//!
//! 1. Each **key spec** of the command (or of its subcommand: `OBJECT ENCODING key`) gives a
//!    start — an index (`GET key`: 1), or the argument after a keyword searched from a given
//!    position (`XREAD … STREAMS k1 k2 id1 id2`, `GEORADIUS … STORE k`) — and from there a
//!    **range** (`MSET k v k v`: every 2nd argument to the end; `XREAD`'s keys: the first half
//!    of what is left) or a **count** argument (`EVAL script numkeys k…`,
//!    `LMPOP numkeys k… LEFT`). Specs flagged `not_key` (shard channels) are skipped. A
//!    keyword that is absent gives nothing; a count that is not a number, or positions past
//!    the end, make the whole command's keys invalid ([`KeyError::Invalid`]), as the server
//!    answers "Invalid arguments".
//! 2. Where a spec is **incomplete** or unknown, the server uses the command's own key finder.
//!    Only `SORT`/`SORT_RO` (`SORT key … STORE dest`, skipping `BY`/`GET`/`LIMIT` operands) and
//!    `MIGRATE` (the key at 3, or the keys after `KEYS` when that key is empty) need one; they
//!    are written out below, as the servers do it.
//! 3. A command only Redis 6.2 knows has no specs: its first/last/step positions are used.
//!
//! Nothing here panics or allocates per argument: argv comes from the network. Positions are
//! reported in order, once per key occurrence (a key given twice is reported twice, as
//! `GETKEYS` does).

use super::{Begin, Command, F_NO_MANDATORY_KEYS, Find, KF_NOT_KEY, KeySpec};

/// Why a command's keys cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unknown command: its keys cannot be known")]
    Unknown,
    /// What the server answers as "Invalid arguments specified for command": a count that is
    /// not a number, or keys past the end of the arguments.
    #[error("the arguments do not say where the keys are")]
    Invalid,
}

/// Calls `f(position, key-spec flags)` for each key of `argv` (`argv[0]` is the command
/// name), for the already resolved command or subcommand `cmd` (see
/// [`super::lookup_argv`]). On [`KeyError::Invalid`], `f` may already have been called for
/// some positions: callers that need all-or-nothing collect first.
pub fn for_each_key(
    cmd: &Command,
    argv: &[&[u8]],
    mut f: impl FnMut(usize, u16),
) -> Result<(), KeyError> {
    let base = cmd.name.split('|').next().unwrap_or(cmd.name);
    match base {
        "sort" | "sort_ro" => return sort_keys(argv, base == "sort", &mut f),
        "migrate" => return migrate_keys(argv, &mut f),
        _ => {}
    }
    if cmd.key_specs.is_empty() {
        return legacy_keys(cmd, argv, &mut f);
    }
    for spec in cmd.key_specs {
        if spec.flags & KF_NOT_KEY != 0 {
            continue;
        }
        spec_keys(spec, cmd.any_flags & F_NO_MANDATORY_KEYS != 0, argv, &mut f)?;
    }
    Ok(())
}

/// The key positions of a whole argv (looked up in the table, subcommands resolved).
pub fn key_positions(argv: &[&[u8]]) -> Result<Vec<usize>, KeyError> {
    let cmd = super::lookup_argv(argv).ok_or(KeyError::Unknown)?;
    let mut out = Vec::new();
    for_each_key(cmd, argv, |i, _| out.push(i))?;
    Ok(out)
}

fn parse_count(a: &[u8]) -> Option<i64> {
    // Like the server's string2ll: an optional '-' and digits, no spaces, no '+'.
    let s = std::str::from_utf8(a).ok()?;
    if s.is_empty() || s.starts_with('+') || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn spec_keys(
    spec: &KeySpec,
    no_mandatory_keys: bool,
    argv: &[&[u8]],
    f: &mut impl FnMut(usize, u16),
) -> Result<(), KeyError> {
    let argc = argv.len() as i64;
    let first: i64 = match spec.begin {
        Begin::Index(i) => i64::from(i),
        Begin::Keyword(word, startfrom) => {
            let startfrom = i64::from(startfrom);
            let (start, end) = if startfrom > 0 {
                (startfrom, argc - 1)
            } else {
                (argc + startfrom, 0)
            };
            let mut found = 0;
            let mut i = start;
            while i != end {
                if i < 0 || i >= argc {
                    break;
                }
                if argv[i as usize].eq_ignore_ascii_case(word.as_bytes()) {
                    found = i + 1;
                    break;
                }
                i += if start <= end { 1 } else { -1 };
            }
            if found == 0 {
                return Ok(());
            }
            found
        }
        Begin::Unknown => return Err(KeyError::Invalid),
    };
    let (first, last, step) = match spec.find {
        Find::Range { last, step, limit } => {
            let (lastkey, limit) = (i64::from(last), i64::from(limit));
            let last = if lastkey >= 0 {
                first + lastkey
            } else if limit == 0 {
                argc + lastkey
            } else {
                first + ((argc - first) / limit + lastkey)
            };
            (first, last, i64::from(step))
        }
        Find::Keynum {
            index,
            first: fk,
            step,
        } => {
            let at = first + i64::from(index);
            if at >= argc || at < 0 {
                return Err(KeyError::Invalid);
            }
            let n = parse_count(argv[at as usize]).ok_or(KeyError::Invalid)?;
            if n < 0 {
                return Err(KeyError::Invalid);
            }
            if n == 0 && no_mandatory_keys {
                // `EVAL script 0`: the server's own key finder accepts it, without keys.
                return Ok(());
            }
            let first = first + i64::from(fk);
            (first, first.saturating_add(n) - 1, i64::from(step))
        }
        Find::Unknown => return Err(KeyError::Invalid),
    };
    if last >= argc || last < first || first >= argc || first < 0 || step <= 0 {
        return Err(KeyError::Invalid);
    }
    let mut i = first;
    while i <= last {
        f(i as usize, spec.flags);
        i += step;
    }
    Ok(())
}

/// 6.2's positions: `first..=last` every `step` (`last` negative: from the end).
fn legacy_keys(
    cmd: &Command,
    argv: &[&[u8]],
    f: &mut impl FnMut(usize, u16),
) -> Result<(), KeyError> {
    let (first, last, step) = cmd.legacy;
    if first <= 0 || step <= 0 {
        return Ok(());
    }
    let argc = argv.len() as i64;
    let last = if last < 0 {
        argc + i64::from(last)
    } else {
        i64::from(last)
    };
    let mut i = i64::from(first);
    while i <= last && i < argc {
        f(i as usize, 0);
        i += i64::from(step);
    }
    Ok(())
}

/// `SORT key [BY pattern] [LIMIT offset count] [GET pattern …] [ASC|DESC] [ALPHA]
/// [STORE dest]`: the key, and the last `STORE`'s destination (the server's `sortGetKeys`;
/// `SORT_RO` has no `STORE`).
fn sort_keys(
    argv: &[&[u8]],
    may_store: bool,
    f: &mut impl FnMut(usize, u16),
) -> Result<(), KeyError> {
    if argv.len() < 2 {
        return Err(KeyError::Invalid);
    }
    f(1, super::KF_RO | super::KF_ACCESS);
    if !may_store {
        return Ok(());
    }
    let mut store = None;
    let mut i = 2;
    while i < argv.len() {
        let a = argv[i];
        let skip = if a.eq_ignore_ascii_case(b"limit") {
            2
        } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
            1
        } else if a.eq_ignore_ascii_case(b"store") {
            // The server takes STORE's operand even when it is the last argument's
            // neighbour; a STORE without an operand is not a key.
            if i + 1 < argv.len() {
                store = Some(i + 1);
            }
            1
        } else {
            0
        };
        i += skip + 1;
    }
    if let Some(s) = store {
        f(s, super::KF_OW | super::KF_UPDATE);
    }
    Ok(())
}

/// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw] [AUTH2 user pw]
/// [KEYS k…]`: every argument after `KEYS`, or else the key at 3 (the server's
/// `migrateGetKeys`; the `AUTH`/`AUTH2` operands are skipped while looking for `KEYS`).
fn migrate_keys(argv: &[&[u8]], f: &mut impl FnMut(usize, u16)) -> Result<(), KeyError> {
    const FLAGS: u16 = super::KF_RW | super::KF_ACCESS | super::KF_DELETE;
    if argv.len() < 6 {
        return Err(KeyError::Invalid);
    }
    let mut i = 6;
    while i < argv.len() {
        let a = argv[i];
        if a.eq_ignore_ascii_case(b"auth") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"auth2") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"keys") {
            if !argv[3].is_empty() {
                // The server refuses `KEYS` unless the key argument is empty.
                return Err(KeyError::Invalid);
            }
            for k in i + 1..argv.len() {
                f(k, FLAGS);
            }
            return Ok(());
        }
        i += 1;
    }
    // The obvious form: the key at 3 (even empty, as the server reports it).
    f(3, FLAGS);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(line: &str) -> Result<Vec<usize>, KeyError> {
        let argv: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        key_positions(&argv)
    }

    #[test]
    fn fixed_and_movable_positions() {
        assert_eq!(keys("GET k"), Ok(vec![1]));
        assert_eq!(keys("MSET a 1 b 2"), Ok(vec![1, 3]));
        assert_eq!(keys("DEL a b c"), Ok(vec![1, 2, 3]));
        assert_eq!(keys("EVAL s 2 a b x"), Ok(vec![3, 4]));
        assert_eq!(keys("EVAL s 0 x"), Ok(vec![]));
        assert_eq!(keys("ZUNIONSTORE d 0 x"), Err(KeyError::Invalid));
        assert_eq!(keys("EVAL s x"), Err(KeyError::Invalid));
        assert_eq!(keys("FCALL f 1 k"), Ok(vec![3]));
        assert_eq!(keys("XREAD COUNT 2 STREAMS a b 0 0"), Ok(vec![4, 5]));
        assert_eq!(keys("XREADGROUP GROUP g c STREAMS s >"), Ok(vec![5]));
        assert_eq!(keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"), Ok(vec![1, 3, 4]));
        assert_eq!(keys("ZINTER 2 a b"), Ok(vec![2, 3]));
        assert_eq!(keys("LMPOP 2 a b LEFT"), Ok(vec![2, 3]));
        assert_eq!(keys("BLMPOP 0 2 a b LEFT"), Ok(vec![3, 4]));
        assert_eq!(keys("ZMPOP 1 a MIN"), Ok(vec![2]));
        assert_eq!(keys("BZMPOP 1 1 a MIN"), Ok(vec![3]));
        assert_eq!(keys("SORT k BY w GET store STORE d"), Ok(vec![1, 7]));
        assert_eq!(keys("SORT k LIMIT 0 1"), Ok(vec![1]));
        assert_eq!(keys("SORT_RO k STORE d"), Ok(vec![1]));
        assert_eq!(keys("MIGRATE h 1 k 0 5"), Ok(vec![3]));
        assert_eq!(
            keys("MIGRATE h 1  0 5 COPY AUTH keys KEYS a b"),
            Ok(vec![10, 11])
        );
        assert_eq!(keys("GEORADIUS g 0 0 1 km STORE d"), Ok(vec![1, 7]));
        assert_eq!(
            keys("GEORADIUSBYMEMBER g m 1 km STOREDIST d"),
            Ok(vec![1, 6])
        );
        assert_eq!(keys("OBJECT ENCODING k"), Ok(vec![2]));
        assert_eq!(keys("MEMORY USAGE k SAMPLES 5"), Ok(vec![2]));
        assert_eq!(keys("XGROUP CREATE s g $"), Ok(vec![2]));
        assert_eq!(keys("FLUSHALL"), Ok(vec![]));
        assert_eq!(keys("PING"), Ok(vec![]));
        assert_eq!(keys("SPUBLISH ch m"), Ok(vec![]));
        assert_eq!(keys("NOPE k"), Err(KeyError::Unknown));
        assert_eq!(keys("BITOP AND d a b"), Ok(vec![2, 3, 4]));
    }

    proptest::proptest! {
        /// Any argv, for any known command: never a panic, and every position is inside argv.
        #[test]
        fn any_argv_is_handled(
            id in 0usize..super::super::NAMES.len(),
            args in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::num::u8::ANY, 0..6),
                    proptest::sample::select(vec![
                        b"STREAMS".to_vec(), b"KEYS".to_vec(), b"STORE".to_vec(), b"2".to_vec(),
                        b"-1".to_vec(), b"99999999999".to_vec(), b"1".to_vec(), b"0".to_vec(),
                        b"ENCODING".to_vec(), b"USAGE".to_vec(), b"LIMIT".to_vec(), b"".to_vec(),
                    ]),
                ],
                0..10,
            ),
        ) {
            let name = super::super::NAMES[id].as_bytes();
            let mut argv: Vec<&[u8]> = vec![name];
            argv.extend(args.iter().map(|a| &a[..]));
            for cut in 0..=argv.len() {
                if let Ok(pos) = key_positions(&argv[..cut]) {
                    assert!(pos.iter().all(|&p| p > 0 && p < cut), "{argv:?} {pos:?}");
                }
            }
        }
    }
}
