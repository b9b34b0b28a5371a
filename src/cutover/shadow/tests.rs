//! Tests of the shadow forms.
use super::*;
use crate::command::id as command_id;

fn a(parts: &[&str]) -> Args {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// The writes of the command table (what [`is_write`] says yes to).
fn writes() -> Vec<&'static str> {
    crate::command::NAMES
        .iter()
        .copied()
        .filter(|n| is_write(command_id(n.as_bytes())))
        .collect()
}

#[test]
fn the_table_knows_every_write_of_the_old_hand_kept_list() {
    // The list this module kept before the command table existed: none may be lost.
    let old = "append bitfield bitop blmove blmpop blpop brpop brpoplpush bzmpop bzpopmax \
        bzpopmin copy decr decrby del eval evalsha expire expireat fcall flushall flushdb \
        function geoadd georadius georadiusbymember geosearchstore getdel getex getset hdel \
        hincrby hincrbyfloat hmset hset hsetnx incr incrby incrbyfloat linsert lmove lmpop lpop \
        lpush lpushx lrem lset ltrim migrate move mset msetnx persist pexpire pexpireat pfadd \
        pfmerge psetex rename renamenx restore rpop rpoplpush rpush rpushx sadd script \
        sdiffstore set setbit setex setnx setrange sinterstore smove sort spop srem sunionstore \
        swapdb unlink xack xadd xautoclaim xclaim xdel xgroup xreadgroup xsetid xtrim zadd \
        zdiffstore zincrby zinterstore zmpop zpopmax zpopmin zrangestore zrem zremrangebylex \
        zremrangebyrank zremrangebyscore zunionstore hexpire hpexpire hexpireat hpexpireat \
        hpersist hsetex hgetex hgetdel delifeq";
    for name in old.split_whitespace() {
        assert!(is_write(command_id(name.as_bytes())), "{name}");
    }
    for name in [
        "get",
        "eval_ro",
        "fcall_ro",
        "evalsha_ro",
        "cluster",
        "publish",
        "pfcount",
    ] {
        assert!(!is_write(command_id(name.as_bytes())), "{name}");
    }
    for name in NEEDS_REPLY {
        assert!(crate::command::lookup(name.as_bytes()).is_some(), "{name}");
    }
}

fn apply(parts: &[&str]) -> Action {
    Action::Apply(vec![a(parts)])
}

/// A write the old side must not answer with `lost` (its key would be gone there).
fn expect(parts: &[&str], lost: Value) -> Action {
    Action::Expect(a(parts), lost)
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
        expect(&["INCRBY", "c", "1"], Value::Int(1))
    );
    assert_eq!(
        shadow_form(&a(&["DECRBY", "c", "5"]), &Value::Int(2), 0),
        expect(&["INCRBY", "c", "-5"], Value::Int(-5))
    );
    // Started from nothing on the primary: the old side must start from nothing too.
    assert_eq!(
        shadow_form(&a(&["INCR", "c"]), &Value::Int(1), 0),
        Action::Exact(a(&["INCRBY", "c", "1"]), Value::Int(1))
    );
    assert_eq!(
        shadow_form(
            &a(&["incrbyfloat", "c", "0.5"]),
            &Value::Bytes(b"1.5".to_vec()),
            0
        ),
        expect(&["SET", "c", "1.5", "KEEPTTL", "XX"], Value::Nil)
    );
    // A float counter started from nothing: nothing to check.
    assert_eq!(
        shadow_form(
            &a(&["incrbyfloat", "c", "0.5"]),
            &Value::Bytes(b"0.5".to_vec()),
            0
        ),
        apply(&["SET", "c", "0.5", "KEEPTTL"])
    );
    assert_eq!(
        shadow_form(&a(&["HINCRBY", "h", "f", "2"]), &Value::Int(4), 0),
        expect(&["HINCRBY", "h", "f", "2"], Value::Int(2))
    );
    assert_eq!(
        shadow_form(&a(&["HINCRBY", "h", "f", "2"]), &Value::Int(2), 0),
        Action::Exact(a(&["HINCRBY", "h", "f", "2"]), Value::Int(2))
    );
    assert_eq!(
        shadow_form(
            &a(&["HINCRBYFLOAT", "h", "f", "0.5"]),
            &Value::Bytes(b"4.5".to_vec()),
            0
        ),
        expect(&["HSET", "h", "f", "4.5"], Value::Int(1))
    );
    assert_eq!(
        shadow_form(
            &a(&["ZINCRBY", "z", "2", "m"]),
            &Value::Bytes(b"3".to_vec()),
            0
        ),
        expect(&["ZADD", "z", "3", "m"], Value::Int(1))
    );
    assert_eq!(
        shadow_form(
            &a(&["ZINCRBY", "z", "2", "m"]),
            &Value::Bytes(b"2".to_vec()),
            0
        ),
        apply(&["ZADD", "z", "2", "m"])
    );
}

#[test]
fn relative_expiry_becomes_absolute() {
    let now = 1_000_000;
    assert_eq!(
        shadow_form(&a(&["EXPIRE", "k", "10"]), &Value::Int(1), now),
        expect(&["PEXPIREAT", "k", "1010000"], Value::Int(0))
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
        expect(&["PEXPIREAT", "k", "1001000"], Value::Int(0))
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
        Action::Exact(a(&["RPUSH", "l", "x"]), Value::Int(1))
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
    for name in writes().into_iter().filter(|n| !NEEDS_REPLY.contains(n)) {
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
        name in proptest::sample::select(writes()),
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

/// Forms that would silently create a key without its TTL, or do nothing, where the old side
/// lost the key (issue 20): sent so that the old side's reply shows it, or so that they give
/// the primary's result anyway.
#[test]
fn forms_that_show_a_key_lost_on_the_old_side() {
    let ok = Value::Bytes(b"OK".to_vec());
    assert_eq!(
        shadow_form(&a(&["SET", "k", "v", "KEEPTTL"]), &ok, 0),
        expect(&["SET", "k", "v", "KEEPTTL", "XX"], Value::Nil)
    );
    assert_eq!(
        shadow_form(&a(&["SET", "k", "v", "XX", "KEEPTTL"]), &ok, 0),
        expect(&["SET", "k", "v", "KEEPTTL", "XX"], Value::Nil)
    );
    // New on the primary: no TTL to keep.
    assert_eq!(
        shadow_form(&a(&["SET", "k", "v", "NX", "KEEPTTL"]), &ok, 0),
        apply(&["SET", "k", "v"])
    );
    assert_eq!(
        shadow_form(&a(&["SET", "k", "v", "KEEPTTL", "GET"]), &Value::Nil, 0),
        apply(&["SET", "k", "v"])
    );
    assert_eq!(
        shadow_form(
            &a(&["SET", "k", "v", "KEEPTTL", "GET"]),
            &Value::Bytes(b"old".to_vec()),
            0
        ),
        expect(&["SET", "k", "v", "KEEPTTL", "XX"], Value::Nil)
    );
    assert_eq!(
        shadow_form(&a(&["PERSIST", "k"]), &Value::Int(1), 0),
        expect(&["PERSIST", "k"], Value::Int(0))
    );
    assert_eq!(
        shadow_form(&a(&["PERSIST", "k"]), &Value::Int(0), 0),
        Action::Skip
    );
    assert_eq!(
        shadow_form(
            &a(&["GETEX", "k", "PERSIST"]),
            &Value::Bytes(b"v".to_vec()),
            0
        ),
        apply(&["SET", "k", "v"])
    );
}

#[test]
fn size_replies_must_be_equal_on_the_old_side() {
    // The old side must answer the primary's size exactly (a shorter list there is lost).
    assert_eq!(
        shadow_form(&a(&["RPUSH", "l", "x", "y"]), &Value::Int(7), 0),
        Action::Exact(a(&["RPUSH", "l", "x", "y"]), Value::Int(7))
    );
    assert_eq!(
        shadow_form(&a(&["APPEND", "s", "abc"]), &Value::Int(3), 0),
        Action::Exact(a(&["APPEND", "s", "abc"]), Value::Int(3))
    );
    assert_eq!(
        shadow_form(&a(&["LPUSHX", "l", "x"]), &Value::Int(2), 0),
        Action::Exact(a(&["LPUSHX", "l", "x"]), Value::Int(2))
    );
    // Nothing changed on the primary.
    assert_eq!(
        shadow_form(&a(&["RPUSHX", "l", "x"]), &Value::Int(0), 0),
        Action::Skip
    );
    assert_eq!(
        shadow_form(
            &a(&["LINSERT", "l", "BEFORE", "p", "x"]),
            &Value::Int(-1),
            0
        ),
        Action::Skip
    );
    assert_eq!(
        shadow_form(&a(&["SETRANGE", "s", "0", ""]), &Value::Int(0), 0),
        Action::Apply(vec![a(&["SETRANGE", "s", "0", ""])])
    );
    assert!(needs_reply(command_id(b"rpush")));
    assert!(!needs_reply(command_id(b"mset")));
}

#[test]
fn member_counts_must_be_equal_on_the_old_side() {
    // A set or hash the old side lost answers every member new (or none removed).
    for (cmd, n) in [
        (&["SADD", "s", "a", "b"][..], 1),
        (&["HSET", "h", "f", "v"][..], 0),
        (&["SREM", "s", "a"][..], 1),
        (&["ZADD", "z", "1", "m"][..], 0),
    ] {
        assert_eq!(
            shadow_form(&a(cmd), &Value::Int(n), 0),
            Action::Exact(a(cmd), Value::Int(n))
        );
    }
    // `ZADD … INCR` answers a score: sent as it is.
    assert_eq!(
        shadow_form(
            &a(&["ZADD", "z", "INCR", "1", "m"]),
            &Value::Bytes(b"2".to_vec()),
            0
        ),
        Action::Apply(vec![a(&["ZADD", "z", "INCR", "1", "m"])])
    );
    assert!(needs_reply(command_id(b"sadd")));
    assert!(needs_reply(command_id(b"hset")));
}
