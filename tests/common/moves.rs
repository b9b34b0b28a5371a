//! Helpers for `tests/moves.rs`: values that do not compress, the writes of the matrix and
//! how the primary is probed for them, clients used before a move, moves retried on a loaded
//! machine, and the mixed load's client.

use std::time::{Duration, Instant};

use super::{Proxy, Raw, Server, cli, differences, encode, show, snapshot};

/// `len` printable bytes that LZF cannot compress (so a `DUMP` payload is as big as the
/// value), different for every `seed`.
pub fn value(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for i in 0..8 {
            if out.len() == len {
                break;
            }
            out.push(b'a' + ((x >> (i * 8)) as u8 % 26));
        }
    }
    out
}

/// The primary and the other side, as the proxy's status names them now.
pub fn sides<'a>(
    proxy: &Proxy,
    source: &'a Server,
    target: &'a Server,
) -> (&'a Server, &'a Server) {
    let status = proxy.status_json();
    if status["primary"] == "target" {
        (target, source)
    } else {
        (source, target)
    }
}

/// Waits (with a deadline) until both sides hold the same keys and values, `ignore`d keys
/// excepted; the differences otherwise.
pub fn wait_equal(
    source: &Server,
    target: &Server,
    ignore: &[String],
    limit: Duration,
) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + limit;
    loop {
        let mut a = snapshot(&mut source.conn());
        let mut b = snapshot(&mut target.conn());
        for k in ignore {
            a.remove(k);
            b.remove(k);
        }
        // (Values may be megabytes long: each difference is shown cut short.)
        let differ: Vec<String> = differences(&a, &b, 5)
            .into_iter()
            .map(|d| d.chars().take(300).collect())
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(differ);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection through the proxy that has been used before the move: on the shared
/// connection (`pin: None`) or pinned by `SELECT 0` / `CLIENT SETNAME` (its own connection).
pub fn warm_client(proxy: &Proxy, pin: Option<&str>, tag: &str) -> Raw {
    let mut c = Raw::connect(&proxy.addr());
    match pin {
        Some("select") => assert_eq!(c.cmd_str(&["SELECT", "0"]), "+OK\r\n"),
        Some(_) => assert_eq!(
            c.cmd_str(&["CLIENT", "SETNAME", &format!("w-{tag}")]),
            "+OK\r\n"
        ),
        None => {}
    }
    assert_eq!(c.cmd_str(&["SET", &format!("warm:{tag}"), "1"]), "+OK\r\n");
    c
}

pub const KB: usize = 1000;

/// The proxy (a debug build in tests) asserts that no write reaches a connection of an older
/// route epoch; a session that broke it panicked, and its panic is in the log.
pub fn no_assertion_failed(proxy: &Proxy) {
    let log = proxy.log();
    assert!(
        !log.contains("panicked"),
        "a session panicked:\n{}",
        super::tail(&log, 3000)
    );
}
pub const MB: usize = 1000 * 1000;

#[derive(Clone, Copy, Debug)]
pub enum Form {
    Alone,
    PipelineHead,
    InMulti,
}

/// One write of the matrix: the command, the reply it gets, and how the primary is probed.
pub struct Write {
    pub key: String,
    pub args: Vec<Vec<u8>>,
    pub reply: Vec<u8>,
    pub probe: Probe,
    /// The value's size (over the buffer limit: not shadowed in the shadow overlap).
    pub size: usize,
}

pub enum Probe {
    /// `GET key` returns this.
    String(Vec<u8>),
    /// `LINDEX key 0` returns this.
    ListHead(Vec<u8>),
    /// `HKEYS key` is this one field.
    HashField(Vec<u8>),
}

pub const SET_SCRIPT: &str = "redis.call('SET', KEYS[1], ARGV[1]) return 1";

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The write `kind` of `size` bytes to `key`. `restore_payload` makes a `RESTORE` payload of
/// a value (a `DUMP` taken on a server of the same version).
pub fn write(kind: &str, key: &str, size: usize, dump: &mut impl FnMut(&[u8]) -> Vec<u8>) -> Write {
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
pub fn send_first(c: &mut Raw, w: &Write, form: Form) -> Result<(), String> {
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
pub fn holds(server: &Server, w: &Write, form: Form) -> bool {
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

/// A `DUMP` of `v` taken on `server` (a scratch key, removed again).
pub fn dumper(server: &Server) -> impl FnMut(&[u8]) -> Vec<u8> + '_ {
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

/// The next move from the proxy's phase (`switch` while the source is primary, else
/// `rollback`).
pub fn next_move(proxy: &Proxy) {
    let verb = if proxy.status_json()["primary"] == "target" {
        "rollback"
    } else {
        "switch"
    };
    move_retrying(proxy, verb, false);
}

/// `cutover <verb> --json` (with `--force`), tried again for a few seconds: with other tests'
/// big writes on this small machine, a link may lag or a server answer `INFO` late for a
/// moment, and the move is refused (changing nothing). The report.
pub fn move_retrying(proxy: &Proxy, verb: &str, force: bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut args = vec![verb, "--json"];
    if force {
        args.push("--force");
    }
    loop {
        let (code, out, err) = cli(proxy, &args);
        if code == 0 {
            return serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("{verb} printed no JSON ({e}): {out}"));
        }
        assert!(
            Instant::now() < deadline,
            "{verb} kept failing: {err}\nproxy log:\n{}",
            super::tail(&proxy.log(), 2000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub const LOAD_CLIENTS: usize = 6;

/// What one load client saw acknowledged.
#[derive(Default, Debug)]
pub struct Acked {
    pub incr: u64,
    pub pushed: u64,
    pub errors: Vec<String>,
}

/// One client of the mixed load: its own counter, list and values (10 B to 300 KB), sent
/// plain, pipelined or in `MULTI`, in random order. An `INCR` reply is checked against the
/// count acknowledged so far: a write that went to the wrong side answers another number.
pub fn load_client(w: usize, addr: String, stop: &std::sync::atomic::AtomicBool) -> Acked {
    use std::sync::atomic::Ordering;
    let mut c = Raw::connect(&addr);
    if w % 2 == 0 {
        assert_eq!(
            c.cmd_str(&["CLIENT", "SETNAME", &format!("load-{w}")]),
            "+OK\r\n"
        );
    }
    let (ctr, list) = (format!("ml:{w}:ctr"), format!("ml:{w}:list"));
    let mut acked = Acked::default();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ (w as u64 + 1);
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let started = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(120) {
        i += 1;
        let size = [10, 1000, 100 * KB, 200 * KB, 300 * KB, 300 * KB, 300 * KB][rnd(7) as usize];
        let vkey = format!("ml:{w}:v{}", rnd(8));
        let v = value(&format!("{w}:{i}"), size);
        let set = encode(&[b"SET".to_vec(), vkey.clone().into_bytes(), v]);
        let incr = encode(&["INCR", ctr.as_str()]);
        let item = format!("{i}");
        let push = encode(&["RPUSH", list.as_str(), item.as_str()]);
        let form = rnd(3);
        let mut wire = Vec::new();
        match form {
            0 => match rnd(3) {
                0 => wire.extend(&set),
                1 => wire.extend(&incr),
                _ => wire.extend(&push),
            },
            1 => {
                wire.extend(&set);
                wire.extend(&incr);
                wire.extend(&push);
            }
            _ => {
                wire.extend(encode(&["MULTI"]));
                wire.extend(&incr);
                wire.extend(&set);
                wire.extend(&push);
                wire.extend(encode(&["EXEC"]));
            }
        }
        c.send(&wire);
        let replies = match form {
            0 => 1,
            1 => 3,
            _ => 5,
        };
        let mut got = Vec::new();
        for _ in 0..replies {
            match c.read_reply_within(Duration::from_secs(20)) {
                Ok(r) => got.push(r),
                Err(e) => {
                    acked.errors.push(format!("client {w} op {i}: {e}"));
                    return acked;
                }
            }
        }
        let text: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        let incr_want = format!(":{}\r\n", acked.incr + 1);
        let push_want = format!(":{}\r\n", acked.pushed + 1);
        let ok = match (form, wire.len()) {
            (0, _) if wire == set => text[0] == "+OK\r\n",
            (0, _) if wire == incr => text[0] == incr_want,
            (0, _) => text[0] == push_want,
            (1, _) => text[0] == "+OK\r\n" && text[1] == incr_want && text[2] == push_want,
            _ => {
                text[0] == "+OK\r\n"
                    && text[1..4].iter().all(|t| t == "+QUEUED\r\n")
                    && text[4] == format!("*3\r\n{incr_want}+OK\r\n{push_want}")
            }
        };
        if !ok {
            acked.errors.push(format!(
                "client {w} op {i} (form {form}): replies {text:?} (acknowledged so far: {} INCR, {} RPUSH)",
                acked.incr, acked.pushed
            ));
            return acked;
        }
        if form != 0 || wire == incr {
            acked.incr += 1;
        }
        if form != 0 || wire == push {
            acked.pushed += 1;
        }
    }
    acked
}

/// Tries a move a few times (under load the pause limit or the lag check may refuse one).
pub fn move_under_load(proxy: &Proxy, verb: &str) -> bool {
    for _ in 0..5 {
        let (code, _, _) = cli(proxy, &[verb, "--json", "--max-pause-ms", "500"]);
        if code == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
