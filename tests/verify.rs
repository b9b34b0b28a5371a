//! `cutover verify` against real servers: planted differences of every kind and type are each
//! found exactly once, identical datasets report nothing, a write racing the first pass is
//! not reported after the re-check rounds, Valkey 9.1 vs Redis 6.2, the CLI's exit codes and
//! JSON lines, and the admin `VERIFY` command.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Proxy, Server, TIMEOUT, Version, wait_for};
use cutover::config::RedisUrl;
use cutover::verify::{self, Report, VerifyOptions, compare::Mode, scan::Progress};
use redis::Connection;

/// Runs one command (binary-safe arguments).
fn q(conn: &mut Connection, args: &[&[u8]]) {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd
        .query(conn)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])));
}

fn all(conns: &mut [&mut Connection], args: &[&[u8]]) {
    for c in conns.iter_mut() {
        q(c, args);
    }
}

fn both(a: &mut Connection, b: &mut Connection, args: &[&[u8]]) {
    q(a, args);
    q(b, args);
}

fn s(v: &str) -> &[u8] {
    v.as_bytes()
}

/// The same dataset on both sides: every type, small and big, TTLs, a stream with a group and
/// pending entries, binary keys, scores printed differently by different versions, db 3.
fn fill_identical(conns: &mut [&mut Connection]) {
    for i in 0..200 {
        let k = format!("str:{i}");
        all(conns, &[s("SET"), s(&k), s(&format!("value-{i}"))]);
    }
    all(conns, &[s("SET"), s("int"), s("12345")]);
    all(conns, &[s("SET"), s("bin:\x00\u{7f}"), b"\xff\xfe\x00"]);
    all(conns, &[s("SET"), b"key\xff\x00bin", s("v")]);
    all(
        conns,
        &[s("SET"), s("ttl:ok"), s("v"), s("PX"), s("500000")],
    );
    all(
        conns,
        &[s("RPUSH"), s("list:small"), s("a"), s("b"), s("c")],
    );
    all(conns, &[s("SADD"), s("set:small"), s("x"), s("y"), s("1")]);
    all(conns, &[s("SADD"), s("set:ints"), s("1"), s("2"), s("3")]);
    all(
        conns,
        &[
            s("ZADD"),
            s("zset:small"),
            s("1.1"),
            s("a"),
            s("2.5"),
            s("b"),
            s("inf"),
            s("c"),
        ],
    );
    all(
        conns,
        &[
            s("HSET"),
            s("hash:small"),
            s("f1"),
            s("v1"),
            s("f2"),
            s("v2"),
        ],
    );
    // Big ones (hashtable/quicklist/skiplist encodings, chunked comparison).
    for chunk in 0..5 {
        let mut hset: Vec<Vec<u8>> = vec![b"HSET".to_vec(), b"hash:big".to_vec()];
        let mut rpush: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"list:big".to_vec()];
        let mut sadd: Vec<Vec<u8>> = vec![b"SADD".to_vec(), b"set:big".to_vec()];
        let mut zadd: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), b"zset:big".to_vec()];
        for i in chunk * 1000..(chunk + 1) * 1000 {
            hset.push(format!("field:{i}").into_bytes());
            hset.push(format!("value:{i}").into_bytes());
            rpush.push(format!("element:{i}").into_bytes());
            sadd.push(format!("member:{i}").into_bytes());
            zadd.push(format!("{}", i as f64 / 10.0).into_bytes());
            zadd.push(format!("m:{i}").into_bytes());
        }
        for cmd in [&hset, &rpush, &sadd, &zadd] {
            let args: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
            all(conns, &args);
        }
    }
    all(conns, &[s("SET"), s("string:big"), &vec![b'x'; 200_000]]);
    for i in 1..=20 {
        let id = format!("{i}-1");
        all(
            conns,
            &[
                s("XADD"),
                s("stream:1"),
                s(&id),
                s("f"),
                s(&format!("v{i}")),
            ],
        );
        all(conns, &[s("XADD"), s("stream:2"), s(&id), s("f"), s("v")]);
    }
    for k in ["stream:1", "stream:2"] {
        all(conns, &[s("XGROUP"), s("CREATE"), s(k), s("g1"), s("0")]);
        all(
            conns,
            &[
                s("XREADGROUP"),
                s("GROUP"),
                s("g1"),
                s("c1"),
                s("COUNT"),
                s("3"),
                s("STREAMS"),
                s(k),
                s(">"),
            ],
        );
    }
    all(conns, &[s("SELECT"), s("3")]);
    all(conns, &[s("SET"), s("in-db3"), s("x")]);
    all(conns, &[s("SELECT"), s("0")]);
}

fn opts(src: &Server, tgt: &Server) -> VerifyOptions {
    let mut o = VerifyOptions::new(
        RedisUrl::parse(&src.url()).unwrap(),
        RedisUrl::parse(&tgt.url()).unwrap(),
    );
    o.rounds = 1;
    o.interval = Duration::from_millis(50);
    o.scan_count = 100;
    o
}

fn run(o: &VerifyOptions) -> Report {
    verify::run(o, &Arc::new(Progress::default())).expect("verify runs")
}

/// key (escaped) → kind of every reported difference; panics if a key is reported twice.
fn kinds(report: &Report) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for c in &report.diffs {
        let prev = m.insert(
            c.key.escape_ascii().to_string(),
            c.diff.kind.name().to_string(),
        );
        assert!(
            prev.is_none(),
            "{:?} reported twice",
            String::from_utf8_lossy(&c.key)
        );
    }
    m
}

fn expect(pairs: &[(&[u8], &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.escape_ascii().to_string(), v.to_string()))
        .collect()
}

/// Plants one difference of every kind and type on the target of an identical pair.
fn plant(src: &mut Connection, tgt: &mut Connection) -> BTreeMap<String, String> {
    q(src, &[s("SET"), s("only:source"), s("1")]);
    q(tgt, &[s("SET"), s("only:target"), s("1")]);
    q(src, &[s("SET"), s("wrongtype"), s("1")]);
    q(tgt, &[s("RPUSH"), s("wrongtype"), s("1")]);
    q(tgt, &[s("HSET"), s("hash:small"), s("f2"), s("changed")]);
    q(
        tgt,
        &[s("HSET"), s("hash:big"), s("field:4321"), s("changed")],
    );
    q(tgt, &[s("LSET"), s("list:small"), s("1"), s("B")]);
    q(tgt, &[s("LSET"), s("list:big"), s("3500"), s("changed")]);
    q(tgt, &[s("ZADD"), s("zset:small"), s("2.6"), s("b")]);
    q(tgt, &[s("ZADD"), s("zset:big"), s("0.15"), s("m:1")]);
    q(tgt, &[s("SREM"), s("set:big"), s("member:777")]);
    q(tgt, &[s("SADD"), s("set:big"), s("member:new")]);
    q(tgt, &[s("SREM"), s("set:small"), s("y")]);
    q(tgt, &[s("SADD"), s("set:small"), s("z")]);
    q(tgt, &[s("SETRANGE"), s("string:big"), s("150000"), s("y")]);
    // Stream entry changed: same ids, entry 7-1 with another value (the stream is rebuilt on
    // the target, ids can only grow).
    q(tgt, &[s("DEL"), s("stream:1")]);
    for i in 1..=20 {
        let v = if i == 7 {
            "other".to_string()
        } else {
            format!("v{i}")
        };
        q(
            tgt,
            &[
                s("XADD"),
                s("stream:1"),
                s(&format!("{i}-1")),
                s("f"),
                s(&v),
            ],
        );
    }
    q(
        tgt,
        &[s("XGROUP"), s("CREATE"), s("stream:1"), s("g1"), s("0")],
    );
    q(
        tgt,
        &[
            s("XREADGROUP"),
            s("GROUP"),
            s("g1"),
            s("c1"),
            s("COUNT"),
            s("3"),
            s("STREAMS"),
            s("stream:1"),
            s(">"),
        ],
    );
    // Stream group: one pending entry fewer on the target.
    q(tgt, &[s("XACK"), s("stream:2"), s("g1"), s("2-1")]);
    // TTLs: 100 s apart (more than the 2 s tolerance), 0.5 s apart (less), one side only.
    q(src, &[s("SET"), s("ttl:more"), s("v"), s("EX"), s("1000")]);
    q(tgt, &[s("SET"), s("ttl:more"), s("v"), s("EX"), s("900")]);
    q(
        src,
        &[s("SET"), s("ttl:less"), s("v"), s("PX"), s("100000")],
    );
    q(tgt, &[s("SET"), s("ttl:less"), s("v"), s("PX"), s("99500")]);
    q(src, &[s("SET"), s("ttl:one"), s("v"), s("EX"), s("1000")]);
    q(tgt, &[s("SET"), s("ttl:one"), s("v")]);
    // A binary key with another value.
    q(tgt, &[s("SET"), s("bin:\x00\u{7f}"), b"\xff\xfe\x01"]);
    expect(&[
        (b"only:source", "missing"),
        (b"only:target", "extra"),
        (b"wrongtype", "type"),
        (b"hash:small", "value"),
        (b"hash:big", "value"),
        (b"list:small", "value"),
        (b"list:big", "value"),
        (b"zset:small", "value"),
        (b"zset:big", "value"),
        (b"set:big", "value"),
        (b"set:small", "value"),
        (b"string:big", "value"),
        (b"stream:1", "value"),
        (b"stream:2", "value"),
        (b"ttl:more", "ttl"),
        (b"ttl:one", "ttl_one_side"),
        (b"bin:\x00\x7f", "value"),
    ])
}

#[test]
fn identical_datasets_report_nothing() {
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    fill_identical(&mut [&mut src.conn(), &mut tgt.conn()]);
    // The sync's bookkeeping key on the target is not an extra key.
    q(
        &mut tgt.conn(),
        &[s("SET"), s("cutover:position"), s("abc 123")],
    );
    for mode in [Mode::Full, Mode::Length, Mode::Keys] {
        let mut o = opts(&src, &tgt);
        o.mode = mode;
        let r = run(&o);
        assert!(
            r.is_equal(),
            "{mode:?}: {:?}\n{}",
            kinds(&r),
            r.summary_table()
        );
        assert_eq!(r.checked.get("string"), Some(&206), "{}", r.summary_table());
        assert_eq!(r.checked.get("hash"), Some(&2));
        assert_eq!(r.checked.get("stream"), Some(&2));
        assert_eq!(r.checked.values().sum::<u64>(), 206 + 2 + 2 + 3 + 2 + 2);
        assert_eq!(r.source_keys, 217);
    }
}

#[test]
fn planted_differences_are_each_found_once() {
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    fill_identical(&mut [&mut a, &mut b]);
    let want = plant(&mut a, &mut b);
    let r = run(&opts(&src, &tgt));
    assert_eq!(kinds(&r), want, "{}", r.summary_table());
    let by_kind = r.by_kind();
    assert_eq!(by_kind.values().sum::<u64>(), want.len() as u64);
    // Details say what differs.
    let detail = |k: &[u8]| {
        r.diffs
            .iter()
            .find(|c| c.key == k)
            .map(|c| c.diff.detail.clone())
            .unwrap()
    };
    assert_eq!(
        detail(b"hash:big"),
        "field \"field:4321\": \"value:4321\" vs \"changed\""
    );
    assert_eq!(detail(b"list:small"), "index 1: \"b\" vs \"B\"");
    assert_eq!(detail(b"string:big"), "values differ from byte 150000 on");
    assert_eq!(detail(b"zset:small"), "member \"b\": score 2.5 vs 2.6");
    let one = detail(b"ttl:one");
    assert!(
        one.starts_with("ttl 99") && one.ends_with(" ms on the source, none on the target"),
        "{one}"
    );
    assert_eq!(detail(b"stream:1"), "entry \"7-1\": fields differ");
    assert!(
        detail(b"stream:2").contains("pending"),
        "{}",
        detail(b"stream:2")
    );

    // Mode keys sees only existence and types.
    let mut o = opts(&src, &tgt);
    o.mode = Mode::Keys;
    assert_eq!(
        kinds(&run(&o)),
        expect(&[
            (b"only:source", "missing"),
            (b"only:target", "extra"),
            (b"wrongtype", "type")
        ])
    );
    // Mode length: lengths and TTLs, not values.
    o.mode = Mode::Length;
    assert_eq!(
        kinds(&run(&o)),
        expect(&[
            (b"only:source", "missing"),
            (b"only:target", "extra"),
            (b"wrongtype", "type"),
            (b"ttl:more", "ttl"),
            (b"ttl:one", "ttl_one_side"),
        ])
    );
    // Filters apply to both sides.
    let mut o = opts(&src, &tgt);
    o.filter = verify::filter::KeyFilter::new(
        &["ttl:".into(), "only:".into()],
        &["only:target".into()],
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(
        kinds(&run(&o)),
        expect(&[
            (b"only:source", "missing"),
            (b"ttl:more", "ttl"),
            (b"ttl:one", "ttl_one_side")
        ])
    );
}

#[test]
fn a_write_racing_the_first_pass_is_not_reported() {
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    fill_identical(&mut [&mut a, &mut b]);
    // In flight: on the source, not yet on the target; another key updated on the source only.
    q(&mut a, &[s("SET"), s("race:new"), s("v")]);
    q(&mut a, &[s("SET"), s("str:5"), s("updated")]);
    let mut o = opts(&src, &tgt);
    o.rounds = 2;
    o.interval = Duration::from_millis(700);
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let runner = std::thread::spawn(move || verify::run(&o, &p));
    // Once the source pass has seen every key, the "sync" catches up.
    wait_for("the first pass", TIMEOUT, || {
        (progress.source_keys.load(Ordering::Relaxed) >= 218).then_some(())
    });
    q(&mut b, &[s("SET"), s("race:new"), s("v")]);
    q(&mut b, &[s("SET"), s("str:5"), s("updated")]);
    let r = runner.join().unwrap().unwrap();
    assert!(r.is_equal(), "{:?}", kinds(&r));
    assert_eq!(r.transient, 2, "{}", r.summary_table());

    // Without re-checks the same race is reported.
    q(&mut a, &[s("SET"), s("race:two"), s("v")]);
    let mut o = opts(&src, &tgt);
    o.rounds = 0;
    assert_eq!(kinds(&run(&o)), expect(&[(b"race:two", "missing")]));
}

#[test]
fn valkey_91_against_redis_62() {
    let (src, tgt) = (
        Server::start(Version::Valkey91),
        Server::start(Version::Redis62),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    fill_identical(&mut [&mut a, &mut b]);
    let r = run(&opts(&src, &tgt));
    assert!(r.is_equal(), "{:?}\n{}", kinds(&r), r.summary_table());
    assert_eq!(r.source_keys, 217);
    let want = plant(&mut a, &mut b);
    let r = run(&opts(&src, &tgt));
    assert_eq!(kinds(&r), want, "{}", r.summary_table());
}

#[test]
fn hash_field_ttls_where_both_sides_have_them() {
    let (src, tgt) = (
        Server::start(Version::Valkey91),
        Server::start(Version::Valkey91),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    both(
        &mut a,
        &mut b,
        &[s("HSET"), s("h:ok"), s("f"), s("v"), s("g"), s("w")],
    );
    both(
        &mut a,
        &mut b,
        &[s("HSET"), s("h:ttl"), s("f"), s("v"), s("g"), s("w")],
    );
    both(
        &mut a,
        &mut b,
        &[
            s("HPEXPIRE"),
            s("h:ok"),
            s("100000"),
            s("FIELDS"),
            s("1"),
            s("f"),
        ],
    );
    q(
        &mut a,
        &[
            s("HPEXPIRE"),
            s("h:ttl"),
            s("100000"),
            s("FIELDS"),
            s("1"),
            s("g"),
        ],
    );
    q(
        &mut b,
        &[
            s("HPEXPIRE"),
            s("h:ttl"),
            s("50000"),
            s("FIELDS"),
            s("1"),
            s("g"),
        ],
    );
    let r = run(&opts(&src, &tgt));
    assert_eq!(
        kinds(&r),
        expect(&[(b"h:ttl", "ttl")]),
        "{}",
        r.summary_table()
    );
    assert!(
        r.diffs[0].diff.detail.contains("field \"g\""),
        "{}",
        r.diffs[0].diff.detail
    );
}

#[test]
fn db_map_pairs_databases() {
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    q(&mut a, &[s("SET"), s("k"), s("v")]);
    q(&mut b, &[s("SELECT"), s("2")]);
    q(&mut b, &[s("SET"), s("k"), s("v")]);
    let mut o = opts(&src, &tgt);
    o.db_map = verify::filter::DbMap::parse("0=2").unwrap();
    assert!(run(&o).is_equal());
    // Without the map: missing in db 0, extra in db 2.
    let r = run(&opts(&src, &tgt));
    let got: Vec<_> = r
        .diffs
        .iter()
        .map(|c| (c.source_db, c.target_db, c.diff.kind.name()))
        .collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&(Some(0), 0, "missing")), "{got:?}");
    assert!(got.contains(&(Some(2), 2, "extra")), "{got:?}");
}

fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cutover")
}

#[test]
fn cli_exit_codes_and_json_lines() {
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    both(&mut a, &mut b, &[s("SET"), s("same"), s("1")]);
    let (su, tu) = (src.url(), tgt.url());
    let base = [
        "verify",
        "--source",
        &su,
        "--target",
        &tu,
        "--rounds",
        "1",
        "--interval",
        "50ms",
    ];
    let out = cutover(&base);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EQUAL"));

    q(&mut b, &[s("SET"), b"bin\xff", s("1")]);
    q(&mut a, &[s("HSET"), s("h"), s("f"), s("1")]);
    q(&mut b, &[s("HSET"), s("h"), s("f"), s("2")]);
    let out = cutover(&base);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let h = lines.iter().find(|l| l["key"] == "h").unwrap();
    assert_eq!(h["kind"], "value");
    assert_eq!(h["type"], "hash");
    assert_eq!(h["db"], 0);
    assert_eq!(h["detail"], "field \"f\": \"1\" vs \"2\"");
    let x = lines.iter().find(|l| l["kind"] == "extra").unwrap();
    assert_eq!(x["key_hex"], "62696eff");
    let table = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(table.contains("DIFFERENT"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("hash ")), "{table}");

    // --json FILE, filters.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("diffs.jsonl");
    let mut args = base.to_vec();
    let file_s = file.display().to_string();
    args.extend(["--json", &file_s, "--exclude-regex", "^bin"]);
    let out = cutover(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"key\":\"h\""));

    // Errors: exit 2.
    let dead = format!("redis://127.0.0.1:{}", common::free_port());
    let out = cutover(&["verify", "--source", &su, "--target", &dead]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to target"));
    let out = cutover(&[
        "verify",
        "--source",
        &su,
        "--target",
        &tu,
        "--include-regex",
        "(",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn admin_verify_shows_in_status() {
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    both(&mut a, &mut b, &[s("SET"), s("same"), s("1")]);
    // No sync here: the proxy gets a target the test fills by hand.
    let proxy = Proxy::start(&src.url(), &["--target", &tgt.url()]);
    wait_for("the sync to settle", TIMEOUT, || {
        (proxy.status_json()["sync"]["phase"] == "streaming").then_some(())
    });
    q(&mut a, &[s("SET"), s("later"), s("1")]);
    q(&mut b, &[s("SET"), s("only:target"), s("1")]);
    let out = cutover(&["verify", "--admin", &proxy.admin_addr()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The extra key keeps it busy with re-check rounds (1 s apart): a second one is refused.
    let again = cutover(&["verify", "--admin", &proxy.admin_addr()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let v = wait_for("the verify to finish", Duration::from_secs(30), || {
        let v = proxy.status_json()["verify"].clone();
        (v["state"] == "done").then_some(v)
    });
    // `later` reached the target through the sync; `only:target` is extra.
    assert_eq!(v["differences"]["extra"], 1, "{v}");
    assert_eq!(v["differences"]["missing"], 0, "{v}");
    assert_eq!(v["equal"], false);
    assert!(v["finished"].as_u64().is_some());
    let out = cutover(&["status", "--admin", &proxy.admin_addr()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verify:    DIFFERENT"), "{text}");
    assert!(text.contains("1 extra"), "{text}");
}

#[test]
fn ttl_on_a_target_whose_source_has_no_ttls_at_all() {
    // The source's db has no key with a TTL, so it is not asked for every key's TTL: the
    // target's side still is.
    let (src, tgt) = (
        Server::start(Version::Redis70),
        Server::start(Version::Redis70),
    );
    let (mut a, mut b) = (src.conn(), tgt.conn());
    for i in 0..50 {
        both(&mut a, &mut b, &[s("SET"), s(&format!("k{i}")), s("v")]);
    }
    q(&mut b, &[s("EXPIRE"), s("k7"), s("1000")]);
    let r = run(&opts(&src, &tgt));
    assert_eq!(kinds(&r), expect(&[(b"k7", "ttl_one_side")]));
    assert_eq!(
        r.diffs[0].diff.detail.split(", ").next(),
        Some("ttl none on the source")
    );
}

#[test]
fn a_synced_target_verifies_equal_valkey_91_to_redis_70() {
    // The real pipeline: `cutover sync --once` copies a Valkey 9.1 source into Redis 7.0, and
    // verify finds them equal (including the sync's own `cutover:position` key, ignored).
    let (src, tgt) = (
        Server::start(Version::Valkey91),
        Server::start(Version::Redis70),
    );
    fill_identical(&mut [&mut src.conn()]);
    let out = cutover(&[
        "sync",
        "--once",
        "--quiet",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = run(&opts(&src, &tgt));
    assert!(r.is_equal(), "{:?}\n{}", kinds(&r), r.summary_table());
    assert_eq!(r.source_keys, 217);
    // And a change made behind the sync's back is seen.
    q(
        &mut tgt.conn(),
        &[s("LSET"), s("list:big"), s("10"), s("x")],
    );
    assert_eq!(
        kinds(&run(&opts(&src, &tgt))),
        expect(&[(b"list:big", "value")])
    );
}

#[test]
fn a_server_without_info_is_probed_db_by_db() {
    // Some managed services rename or forbid INFO: an empty keyspace must not mean "equal".
    let src = Server::start(Version::Redis70);
    let tgt = Server::start_with(Version::Redis70, &["--rename-command", "INFO", ""]);
    let (mut a, mut b) = (src.conn(), tgt.conn());
    both(&mut a, &mut b, &[s("SET"), s("same"), s("1")]);
    q(&mut a, &[s("SET"), s("only:source"), s("1")]);
    q(&mut b, &[s("SELECT"), s("5")]);
    q(&mut b, &[s("SET"), s("only:target:db5"), s("1")]);
    q(&mut b, &[s("EXPIRE"), s("only:target:db5"), s("100")]);
    let r = run(&opts(&src, &tgt));
    assert_eq!(
        kinds(&r),
        expect(&[(b"only:source", "missing"), (b"only:target:db5", "extra")]),
        "{}",
        r.summary_table()
    );
}
