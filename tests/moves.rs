//! Moves under real clients (issue 18): every write a client sends after a `switch` or a
//! `rollback` lands on the primary of that moment, whatever its size (around the 256 KiB
//! streaming size and the 4 MiB buffer limit), its form (alone, head of a pipeline, inside
//! `MULTI`), its command and its session (the shared connection, or its own after `SELECT` /
//! `CLIENT SETNAME`), in both overlaps. Checked with an independent client on both servers.
//!
//! The defect these tests pin: a connection's first write above the streaming size after a
//! move went to the connection of the old epoch, was answered `+OK`, and was lost.

mod common;

use std::time::{Duration, Instant};

use common::moves::{sides, value, wait_equal, warm_client};
use common::{Proxy, Raw, Server, Version, cli, encode, show, step, wait_streaming};

const KB: usize = 1000;
const MB: usize = 1000 * 1000;

#[derive(Clone, Copy, Debug)]
enum Form {
    Alone,
    PipelineHead,
    InMulti,
}

/// One write of the matrix: the command, the reply it gets, and how the primary is probed.
struct Write {
    key: String,
    args: Vec<Vec<u8>>,
    reply: Vec<u8>,
    probe: Probe,
    /// The value's size (over the buffer limit: not shadowed in the shadow overlap).
    size: usize,
}

enum Probe {
    /// `GET key` returns this.
    String(Vec<u8>),
    /// `LINDEX key 0` returns this.
    ListHead(Vec<u8>),
    /// `HKEYS key` is this one field.
    HashField(Vec<u8>),
}

const SET_SCRIPT: &str = "redis.call('SET', KEYS[1], ARGV[1]) return 1";

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The write `kind` of `size` bytes to `key`. `restore_payload` makes a `RESTORE` payload of
/// a value (a `DUMP` taken on a server of the same version).
fn write(kind: &str, key: &str, size: usize, dump: &mut impl FnMut(&[u8]) -> Vec<u8>) -> Write {
    let v = value(key, size);
    let (args, reply, probe) = match kind {
        "SET" => (
            vec![b("SET"), b(key), v.clone()],
            b("+OK\r\n"),
            Probe::String(v),
        ),
        "APPEND" => (
            vec![b("APPEND"), b(key), v.clone()],
            format!(":{size}\r\n").into_bytes(),
            Probe::String(v),
        ),
        "RPUSH" => (
            vec![b("RPUSH"), b(key), v.clone()],
            b(":1\r\n"),
            Probe::ListHead(v),
        ),
        "HSET" => (
            vec![b("HSET"), b(key), v.clone(), b("1")],
            b(":1\r\n"),
            Probe::HashField(v),
        ),
        "EVAL" => (
            vec![b("EVAL"), b(SET_SCRIPT), b("1"), b(key), v.clone()],
            b(":1\r\n"),
            Probe::String(v),
        ),
        "RESTORE" => (
            vec![b("RESTORE"), b(key), b("0"), dump(&v)],
            b("+OK\r\n"),
            Probe::String(v),
        ),
        other => panic!("no write {other}"),
    };
    Write {
        key: key.to_string(),
        args,
        reply,
        probe,
        size,
    }
}

/// Sends `w` as its client's first command after the move, in `form`, and checks the
/// replies.
fn send_first(c: &mut Raw, w: &Write, form: Form) -> Result<(), String> {
    let mut wire = Vec::new();
    let mut want: Vec<Vec<u8>> = Vec::new();
    let count = format!("{}:n", w.key);
    match form {
        Form::Alone => {
            wire.extend(encode(&w.args));
            want.push(w.reply.clone());
        }
        Form::PipelineHead => {
            wire.extend(encode(&w.args));
            wire.extend(encode(&[b("INCR"), b(&count)]));
            wire.extend(encode(&[b("GET"), b(&count)]));
            want.push(w.reply.clone());
            want.push(b(":1\r\n"));
            want.push(b("$1\r\n1\r\n"));
        }
        Form::InMulti => {
            wire.extend(encode(&["MULTI"]));
            wire.extend(encode(&w.args));
            wire.extend(encode(&["EXEC"]));
            want.push(b("+OK\r\n"));
            want.push(b("+QUEUED\r\n"));
            let mut exec = b("*1\r\n");
            exec.extend_from_slice(&w.reply);
            want.push(exec);
        }
    }
    c.send(&wire);
    for (i, want) in want.iter().enumerate() {
        let got = c.read_reply_within(Duration::from_secs(20))?;
        if &got != want {
            return Err(format!(
                "reply {i} to {} ({form:?}): {} (wanted {})",
                w.key,
                show(&got),
                show(want)
            ));
        }
    }
    Ok(())
}

/// Is `w` on `server`, with its value? (And its pipeline's counter, for that form.)
fn holds(server: &Server, w: &Write, form: Form) -> bool {
    let mut c = server.conn();
    let ok = match &w.probe {
        Probe::String(v) => redis::cmd("GET")
            .arg(&w.key)
            .query::<Option<Vec<u8>>>(&mut c)
            .unwrap()
            .is_some_and(|got| got == *v),
        Probe::ListHead(v) => redis::cmd("LINDEX")
            .arg(&w.key)
            .arg(0)
            .query::<Option<Vec<u8>>>(&mut c)
            .unwrap()
            .is_some_and(|got| got == *v),
        Probe::HashField(f) => {
            redis::cmd("HKEYS")
                .arg(&w.key)
                .query::<Vec<Vec<u8>>>(&mut c)
                .unwrap()
                == vec![f.clone()]
        }
    };
    let counter_ok = !matches!(form, Form::PipelineHead)
        || redis::cmd("GET")
            .arg(format!("{}:n", w.key))
            .query::<Option<String>>(&mut c)
            .unwrap()
            .as_deref()
            == Some("1");
    ok && counter_ok
}

/// One case of the matrix: a client used before the move, and its first write after it.
struct Case {
    client: Raw,
    write: Write,
    form: Form,
    label: String,
}

/// Every case of the matrix for one move: sizes × forms × sessions with `SET`, plus the
/// other writes (alone) at 300 KB and 5 MB on both kinds of session.
fn cases(proxy: &Proxy, tag: &str, dump: &mut impl FnMut(&[u8]) -> Vec<u8>) -> Vec<Case> {
    let mut out = Vec::new();
    let sizes = [10, 200 * KB, 300 * KB, 5 * MB, 16 * MB];
    let mut n = 0;
    let mut add = |kind: &str, size: usize, form: Form, pin: Option<&str>, out: &mut Vec<Case>| {
        n += 1;
        let session = pin.unwrap_or("shared");
        let key = format!("{tag}:{kind}:{size}:{form:?}:{session}");
        let client = warm_client(proxy, pin, &format!("{tag}-{n}"));
        out.push(Case {
            client,
            write: write(kind, &key, size, dump),
            form,
            label: key,
        });
    };
    for (i, &size) in sizes.iter().enumerate() {
        let pinned = if i % 2 == 0 { "select" } else { "setname" };
        for form in [Form::Alone, Form::PipelineHead, Form::InMulti] {
            for pin in [None, Some(pinned)] {
                add("SET", size, form, pin, &mut out);
            }
        }
    }
    for kind in ["APPEND", "RPUSH", "HSET", "EVAL", "RESTORE"] {
        for size in [300 * KB, 5 * MB] {
            for pin in [None, Some("setname")] {
                add(kind, size, Form::Alone, pin, &mut out);
            }
        }
    }
    out
}

/// A `DUMP` of `v` taken on `server` (a scratch key, removed again).
fn dumper(server: &Server) -> impl FnMut(&[u8]) -> Vec<u8> + '_ {
    move |v: &[u8]| {
        let mut c = server.conn();
        let _: () = redis::cmd("SET")
            .arg("scratch:dump")
            .arg(v)
            .query(&mut c)
            .unwrap();
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg("scratch:dump")
            .query(&mut c)
            .unwrap();
        let _: i64 = redis::cmd("DEL").arg("scratch:dump").query(&mut c).unwrap();
        payload
    }
}

/// The matrix through `switch` then `rollback` in one overlap. `shadow`: the shadow overlap,
/// where a write over the 4 MiB buffer limit reaches the primary unshadowed (the rollback
/// then needs `--force`, and the old side lacks exactly those keys).
fn matrix(shadow: bool) {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    // The RESTORE payloads, made on a third server of the same version (nothing of it on
    // either side).
    let scratch = Server::start(Version::Redis70);
    let mut args = vec!["--target".to_string(), target.url()];
    if shadow {
        args.extend(["--overlap".to_string(), "shadow".to_string()]);
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let proxy = Proxy::start(&source.url(), &args);
    wait_streaming(&proxy);
    let limit = 4 * 1024 * 1024;
    let mut misses = Vec::new();
    for verb in ["switch", "rollback"] {
        let tag = format!("{}{verb}", if shadow { "s" } else { "r" });
        let mut cases = cases(&proxy, &tag, &mut dumper(&scratch));
        let report = if verb == "rollback" && shadow {
            // The switch's writes over the buffer limit made the rollback unsafe (checked
            // below); it is forced.
            let (code, out, err) = cli(&proxy, &[verb, "--json", "--force"]);
            assert_eq!(code, 0, "{verb} --force: {err}");
            serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
        } else {
            step(&proxy, verb)
        };
        assert_eq!(report["action"], verb, "{report}");
        let (primary, old) = sides(&proxy, &source, &target);
        for case in &mut cases {
            if let Err(e) = send_first(&mut case.client, &case.write, case.form) {
                misses.push(format!("{verb}: {}: {e}", case.label));
            }
        }
        let mut unshadowed = Vec::new();
        for case in &cases {
            if !holds(primary, &case.write, case.form) {
                let where_ = if holds(old, &case.write, case.form) {
                    "on the old side instead"
                } else {
                    "nowhere"
                };
                misses.push(format!("{verb}: {} missed the primary ({where_})", case.label));
            }
            if shadow && case.write.size > limit {
                unshadowed.push(case.write.key.clone());
                unshadowed.push(format!("{}:n", case.write.key));
            }
        }
        // Both sides equal (in the shadow overlap but for the writes over the limit, which
        // the old side cannot have).
        if let Err(differ) = wait_equal(&source, &target, &unshadowed, Duration::from_secs(20)) {
            misses.push(format!("{verb}: the sides differ: {differ:?}"));
        }
        let status = proxy.status_json();
        if shadow && verb == "switch" {
            assert_eq!(status["rollback_safe"], false, "{status}");
            assert!(
                status.to_string().contains("buffer_limit_bytes"),
                "the rollback is unsafe for the writes over the limit: {status}"
            );
        } else if !shadow {
            assert_eq!(status["rollback_safe"], true, "{verb}: {status}");
        }
        // The big values go (through the proxy, so on both sides): the next move's snapshot
        // stays small.
        let mut c = Raw::connect(&proxy.addr());
        for case in &cases {
            let n = format!("{}:n", case.write.key);
            c.cmd(&["DEL", case.write.key.as_str(), n.as_str()]);
        }
        if let Err(differ) = wait_equal(&source, &target, &[], Duration::from_secs(20)) {
            misses.push(format!("{verb}: after the clean-up the sides differ: {differ:?}"));
        }
    }
    assert!(
        misses.is_empty(),
        "{} writes went wrong:\n{}\nproxy log:\n{}",
        misses.len(),
        misses.join("\n"),
        common::tail(&proxy.log(), 2000)
    );
}

#[test]
fn every_first_write_after_a_move_lands_on_the_primary_replica_overlap() {
    let started = Instant::now();
    matrix(false);
    eprintln!("replica overlap matrix: {:?}", started.elapsed());
}

#[test]
fn every_first_write_after_a_move_lands_on_the_primary_shadow_overlap() {
    let started = Instant::now();
    matrix(true);
    eprintln!("shadow overlap matrix: {:?}", started.elapsed());
}
