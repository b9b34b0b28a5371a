//! The overlap after a switch against real servers: eight clients write the **same** keys
//! (half on their own backend connection, half on the shared one) with strings, appends,
//! lists, hashes, sorted sets, sets, counters, floats, expiries, `SPOP`, `XADD *`, scripts,
//! transactions, blocking pops and keys that expire during the run, plus one client that
//! writes to the primary directly; through `switch` → `rollback` → `switch` → `finish`, the
//! old side must equal the primary key by key after every move (compared with an
//! independent client, in databases 0 and 3), and every acknowledged `INCR` must be on the
//! primary exactly once. Workers 6 and 7 write database 3; a client there writes and `WAIT`s
//! for a replica (our links); the workers' `XADD … MAXLEN ~ 20 LIMIT 10` is propagated as an
//! exact trim with `LIMIT`, which the links must rewrite (issue 19).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::links::snapshot_db;
use common::paced::{LoadShared, Paced, pause_point};
use common::{Proxy, Server, Version, cli, differences, snapshot, step, wait_streaming};

const WORKERS: usize = 8;
/// The databases the workers write (workers 6 and 7 write database 3).
const DBS: [u64; 2] = [0, 3];

fn db_of(w: usize) -> u64 {
    if w >= 6 { 3 } else { 0 }
}

/// What the test counts besides the paced harness' own state.
#[derive(Default)]
struct Counts {
    /// `INCR s:ctr` (alone or in a transaction) acknowledged, per database of [`DBS`].
    incr_acked: [AtomicU64; 2],
    /// Where the direct writer writes (`None`: it waits, its connection closed).
    direct_to: Mutex<Option<String>>,
    direct_acked: AtomicU64,
    /// `WAIT 1 100` calls, and those that counted a replica.
    waits: AtomicU64,
    waits_counted: AtomicU64,
}

struct Load {
    paced: Paced,
    counts: Arc<Counts>,
}

impl Load {
    /// `wait_ms`: the waiting client's `WAIT` timeout.
    fn start(proxy: &Proxy, primary: &Server, wait_ms: u64) -> Load {
        let counts = Arc::new(Counts::default());
        *counts.direct_to.lock().unwrap() = Some(primary.url());
        let mut paced = Paced::new();
        for w in 0..WORKERS {
            let url = format!("{}/{}", proxy.url(), db_of(w));
            let counts = counts.clone();
            paced.spawn(move |shared| worker(w, &url, shared, &counts));
        }
        let c = counts.clone();
        paced.spawn(move |shared| direct_writer(shared, &c));
        let c = counts.clone();
        let url = format!("{}/3", proxy.url());
        paced.spawn(move |shared| waiter(&url, wait_ms, shared, &c));
        Load { paced, counts }
    }

    /// Holds every client between two commands (everything sent is answered).
    fn hold(&self) {
        self.paced.hold()
    }

    fn release(&self) {
        self.paced.release()
    }

    /// Points the direct writer at `url` (`None`: it stops writing and disconnects).
    fn direct_to(&self, url: Option<String>) {
        *self.counts.direct_to.lock().unwrap() = url;
    }

    fn ops(&self) -> u64 {
        self.paced.ops()
    }

    fn finish(self) -> (Arc<LoadShared>, Arc<Counts>) {
        (self.paced.finish(), self.counts)
    }
}

/// A client that writes, then `WAIT 1 100`s (database 3, its own backend connection): before
/// the switch the forward link is the replica it waits for, after it the reverse link. A
/// link that does not acknowledge what it skipped or applied holds every move up.
fn waiter(url: &str, wait_ms: u64, shared: &LoadShared, counts: &Counts) {
    let mut c = common::connect(&redis::Client::open(url).unwrap());
    let started = Instant::now();
    let mut i = 0u64;
    while shared.running(started, i) {
        pause_point(shared);
        i += 1;
        let r = redis::cmd("SET")
            .arg("w:key")
            .arg(i)
            .query::<()>(&mut c)
            .and_then(|()| redis::cmd("WAIT").arg(1).arg(wait_ms).query::<i64>(&mut c));
        match r {
            Ok(n) => {
                counts.waits.fetch_add(1, Ordering::Relaxed);
                if n >= 1 {
                    counts.waits_counted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => shared.error(format!("waiter: {e}")),
        }
        shared.ops.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn worker(w: usize, url: &str, shared: &LoadShared, counts: &Counts) {
    let db_slot = usize::from(db_of(w) == 3);
    let client = redis::Client::open(url).unwrap();
    let mut c = common::connect(&client);
    let pinned = w % 2 == 0;
    if pinned {
        // `CLIENT …` gives this client its own backend connection for good.
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("worker-{w}"))
            .query(&mut c)
            .unwrap();
    }
    let script = "redis.call('INCR', KEYS[1]); redis.call('RPUSH', KEYS[2], ARGV[1]); return 1";
    let started = Instant::now();
    let mut i: u64 = 0;
    while shared.running(started, i) {
        pause_point(shared);
        i += 1;
        let tag = format!("{w}:{i}");
        let mut cmd = match i % 16 {
            0 => redis::cmd("SET").arg("s:str").arg(&tag).clone(),
            1 => redis::cmd("APPEND")
                .arg("s:app")
                .arg(format!("{tag},"))
                .clone(),
            2 => redis::cmd("RPUSH").arg("s:list").arg(&tag).clone(),
            3 => redis::cmd("LPOP").arg("s:list").clone(),
            4 => redis::cmd("HSET")
                .arg("s:hash")
                .arg(format!("f{}", i % 10))
                .arg(&tag)
                .clone(),
            5 => redis::cmd("ZADD")
                .arg("s:zset")
                .arg((i % 50) as f64 / 2.0)
                .arg(format!("m{w}"))
                .clone(),
            6 => redis::cmd("SADD")
                .arg("s:set")
                .arg(format!("m{}", i % 20))
                .clone(),
            7 => redis::cmd("SREM")
                .arg("s:set")
                .arg(format!("m{}", (i + 7) % 20))
                .clone(),
            8 => redis::cmd("INCR").arg("s:ctr").clone(),
            9 => redis::cmd("INCRBYFLOAT").arg("s:flt").arg("0.5").clone(),
            10 => redis::cmd("EXPIRE").arg("s:hash").arg(1000).clone(),
            11 => redis::cmd("SPOP").arg("s:set").clone(),
            12 if i % 32 == 12 => redis::cmd("XADD")
                .arg("s:stream")
                .arg("*")
                .arg("f")
                .arg(&tag)
                .clone(),
            // Propagated as an exact trim with `LIMIT`, which a normal client may not send
            // (issue 19 part 4): the link must rewrite it.
            12 => redis::cmd("XADD")
                .arg("s:capped")
                .arg("MAXLEN")
                .arg("~")
                .arg(20)
                .arg("LIMIT")
                .arg(10)
                .arg("*")
                .arg("f")
                .arg(&tag)
                .clone(),
            13 => redis::cmd("EVAL")
                .arg(script)
                .arg(2)
                .arg("s:ectr")
                .arg("s:elist")
                .arg(&tag)
                .clone(),
            14 => redis::cmd("SET")
                .arg(format!("exp:{w}:{}", i % 50))
                .arg(&tag)
                .arg("PX")
                .arg(50 + (i % 5) * 50)
                .clone(),
            _ if pinned && i % 32 == 15 => {
                // A transaction on the shared counter and list.
                let r: redis::RedisResult<(i64, i64)> = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("s:ctr")
                    .cmd("RPUSH")
                    .arg("s:list")
                    .arg(format!("tx:{tag}"))
                    .query(&mut c);
                match r {
                    Ok(_) => {
                        counts.incr_acked[db_slot].fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => shared.error(format!("worker {w} MULTI: {e}")),
                }
                shared.ops.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            _ if pinned => redis::cmd("BLPOP").arg("s:list").arg("0.01").clone(),
            _ => redis::cmd("GET").arg("s:str").clone(),
        };
        match cmd.query::<redis::Value>(&mut c) {
            Ok(_) => {
                if i % 16 == 8 {
                    counts.incr_acked[db_slot].fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(e) => shared.error(format!("worker {w} op {}: {e}", i % 16)),
        }
        shared.ops.fetch_add(1, Ordering::Relaxed);
        let _ = &mut cmd;
    }
}

/// A client of the application that was never repointed to the proxy: it writes to the
/// primary directly (the test moves it along with each move).
fn direct_writer(shared: &LoadShared, counts: &Counts) {
    let mut conn: Option<(String, redis::Connection)> = None;
    let started = Instant::now();
    while shared.running(started, 0) {
        pause_point(shared);
        let want = counts.direct_to.lock().unwrap().clone();
        let Some(url) = want else {
            conn = None;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        if conn.as_ref().is_none_or(|(u, _)| *u != url) {
            conn = Some((
                url.clone(),
                common::connect(&redis::Client::open(url.as_str()).unwrap()),
            ));
        }
        let (_, c) = conn.as_mut().unwrap();
        match redis::cmd("INCR").arg("d:ctr").query::<i64>(c) {
            Ok(_) => {
                counts.direct_acked.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => shared.error(format!("direct writer: {e}")),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn int(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<u64>>(conn)
        .unwrap()
        .unwrap_or(0)
}

/// With the load held: the primary has every acknowledged `INCR` exactly once (in each
/// database), and the old side (while overlapping) converges to a key-by-key copy of it in
/// every database (compared with an independent client).
fn checkpoint(proxy: &Proxy, load: &Load, source: &Server, target: &Server, label: &str) {
    load.hold();
    let errors = load.paced.errors();
    assert!(errors.is_empty(), "{label}: clients saw errors: {errors:?}");
    let status = proxy.status_json();
    let primary = if status["primary"] == "target" {
        target
    } else {
        source
    };
    for (slot, db) in DBS.iter().enumerate() {
        let mut p =
            common::connect(&redis::Client::open(format!("{}/{db}", primary.url())).unwrap());
        assert_eq!(
            int(&mut p, "s:ctr"),
            load.counts.incr_acked[slot].load(Ordering::Acquire),
            "{label}: s:ctr of db {db} holds every acknowledged INCR once"
        );
    }
    let mut p = primary.conn();
    assert_eq!(
        int(&mut p, "d:ctr"),
        load.counts.direct_acked.load(Ordering::Acquire),
        "{label}: d:ctr (the direct writer's) holds every acknowledged INCR once"
    );
    // Keys written with a short expiry are gone on both sides by now.
    std::thread::sleep(Duration::from_millis(400));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut differ = Vec::new();
        let mut sizes = Vec::new();
        for db in DBS {
            let a = snapshot_db(source, db);
            let b = snapshot_db(target, db);
            sizes.push(a.len());
            differ.extend(
                differences(&a, &b, 5)
                    .into_iter()
                    .map(|d| format!("db {db}: {d}")),
            );
        }
        if differ.is_empty() {
            // (Lists and sets may be empty at any moment: pops take what pushes add.)
            assert!(
                sizes.iter().all(|n| *n >= 6),
                "{label}: the shared keys exist in every database: {sizes:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: source and target differ: {differ:?}\nstatus: {}",
            proxy.status_json()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    load.release();
}

/// A target as managed services offer it: replication commands renamed away.
const NO_REPLICATION: &[&str] = &[
    "--rename-command",
    "PSYNC",
    "",
    "--rename-command",
    "SYNC",
    "",
];

fn the_overlap_keeps_the_old_side_an_exact_copy(from: Version, to: Version) {
    overlap_story(from, to, &[]);
}

/// The story under load; with `target_args` that forbid replication, `auto` must choose the
/// shadow overlap (and the direct writer, whose writes shadow mode cannot see, stays out).
fn overlap_story(from: Version, to: Version, target_args: &[&str]) {
    let shadow = !target_args.is_empty();
    let source = Server::start(from);
    let target = Server::start_with(to, target_args);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let status = proxy.status_json();
    let overlap = status["cutover"]["overlap"].as_str().unwrap_or_default();
    if shadow {
        assert!(
            overlap.starts_with("auto (not ready:") && overlap.contains("PSYNC"),
            "{status}"
        );
    } else {
        assert_eq!(overlap, "replica (at the first switch)", "{status}");
    }
    // (In the shadow overlap the primary has no replica after the switch: each `WAIT`
    // lasts its whole timeout, 100 ms, the pause limit. A move cancels one in flight on the
    // old side, as it does a blocking call, so it never holds the move up.)
    let load = Load::start(&proxy, &source, 100);
    if shadow {
        load.direct_to(None);
    }
    // Every worker has been through all its kinds of writes (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.ops() < 40 * WORKERS as u64 {
        assert!(Instant::now() < deadline, "the load does not run");
        std::thread::sleep(Duration::from_millis(20));
    }
    checkpoint(&proxy, &load, &source, &target, "before");
    let mut pauses = Vec::new();
    for (verb, new_primary) in [
        ("switch", &target),
        ("rollback", &source),
        ("switch", &target),
    ] {
        // The direct writer is repointed with the applications (the move would otherwise be
        // refused: its writes to the old primary would be lost).
        load.direct_to(None);
        std::thread::sleep(Duration::from_millis(20));
        let report = step(&proxy, verb);
        if !shadow {
            load.direct_to(Some(new_primary.url()));
        }
        pauses.push(report["pause_ms"].as_f64().unwrap());
        let status = proxy.status_json();
        std::thread::sleep(Duration::from_millis(700));
        checkpoint(&proxy, &load, &source, &target, verb);
        let status_after = proxy.status_json();
        assert_eq!(
            status_after["rollback_safe"], true,
            "{verb}: {status_after}"
        );
        if shadow {
            assert_eq!(status["cutover"]["overlap"], "shadow", "{status}");
            assert!(status["cutover"]["links"].is_null(), "{status}");
            continue;
        }
        assert_eq!(status["cutover"]["overlap"], "replica", "{status}");
        assert_eq!(status["cutover"]["shadow_queue"], 0, "{status}");
        let status = status_after;
        let links = status["cutover"]["links"].as_array().unwrap().clone();
        let applying: Vec<_> = links.iter().filter(|l| l["role"] == "applying").collect();
        assert_eq!(applying.len(), 1, "exactly one link applies: {links:?}");
        let want = if new_primary.port() == target.port() {
            "target_to_source"
        } else {
            "source_to_target"
        };
        assert_eq!(applying[0]["direction"], want, "{links:?}");
        for l in &links {
            assert_eq!(l["full_resyncs"], 0, "no link needed a new snapshot: {l}");
        }
    }
    load.hold();
    let waits = load.counts.waits.load(Ordering::Relaxed);
    let counted = load.counts.waits_counted.load(Ordering::Relaxed);
    assert!(waits >= 20, "the waiting client ran: {waits}");
    if !shadow {
        // Before the switch the forward link, after it the reverse one, acknowledges the
        // write it applied (a few waits may miss their 100 ms around a move).
        assert!(
            counted * 10 >= waits * 8,
            "WAIT counted a replica {counted} times of {waits}"
        );
    }
    load.direct_to(None);
    let report = step(&proxy, "finish");
    assert_eq!(report["action"], "finish", "{report}");
    load.release();
    load.hold();
    // After `finish`: equal (once the keys written with a short expiry are gone on both
    // sides: the two snapshots are taken one after the other), and no key of cutover's left
    // on either side.
    std::thread::sleep(Duration::from_millis(400));
    for db in DBS {
        let a = snapshot_db(&source, db);
        let b = snapshot_db(&target, db);
        let differ = differences(&a, &b, 5);
        assert!(differ.is_empty(), "after finish, db {db}: {differ:?}");
    }
    for server in [&source, &target] {
        let n: i64 = redis::cmd("EXISTS")
            .arg("cutover:position")
            .arg("cutover:switched")
            .query(&mut server.conn())
            .unwrap();
        assert_eq!(n, 0, "cutover's keys are removed from {}", server.port());
    }
    let (shared, _) = load.finish();
    assert!(shared.errors.lock().unwrap().is_empty());
    assert!(shared.ops.load(Ordering::Relaxed) > 1000, "the load ran");
    let status = proxy.status_json();
    assert_eq!(status["phase"], "finished", "{status}");
    eprintln!(
        "pauses (ms): {pauses:?}; {} operations; {counted}/{waits} waits counted a replica",
        shared.ops.load(Ordering::Relaxed)
    );
}

#[test]
fn replica_overlap_redis_7_0_to_redis_7_0() {
    the_overlap_keeps_the_old_side_an_exact_copy(Version::Redis70, Version::Redis70);
}

#[test]
fn replica_overlap_valkey_9_1_to_redis_6_2() {
    the_overlap_keeps_the_old_side_an_exact_copy(Version::Valkey91, Version::Redis62);
}

#[test]
fn replica_overlap_redis_7_0_to_redis_6_2() {
    the_overlap_keeps_the_old_side_an_exact_copy(Version::Redis70, Version::Redis62);
}

#[test]
fn replica_overlap_redis_6_2_to_valkey_9_1() {
    the_overlap_keeps_the_old_side_an_exact_copy(Version::Redis62, Version::Valkey91);
}

#[test]
fn auto_overlap_falls_back_to_shadow_writes_when_the_target_forbids_replication() {
    overlap_story(Version::Redis70, Version::Redis70, NO_REPLICATION);
}

/// `[cutover] max_lag_bytes` in a config file of its own (the directory lives as long as the
/// returned guard).
fn config_with_max_lag(bytes: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, format!("[cutover]\nmax_lag_bytes = {bytes}\n")).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

fn reverse_link(proxy: &Proxy) -> serde_json::Value {
    let status = proxy.status_json();
    status["cutover"]["links"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["direction"] == "target_to_source")
                .cloned()
        })
        .unwrap_or_else(|| panic!("no reverse link in {status}"))
}

fn wait_rollback_safe(proxy: &Proxy, limit: Duration) {
    let deadline = Instant::now() + limit;
    while proxy.status_json()["rollback_safe"] != true {
        assert!(
            Instant::now() < deadline,
            "the rollback never became safe: {}",
            proxy.status_json()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_equal(source: &Server, target: &Server, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let differ = differences(
            &snapshot(&mut source.conn()),
            &snapshot(&mut target.conn()),
            5,
        );
        if differ.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{label}: {differ:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_reverse_link_continues_and_a_lagging_one_blocks_the_rollback() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let (_dir, config) = config_with_max_lag(10_000);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--config", &config],
    );
    wait_streaming(&proxy);
    step(&proxy, "switch");
    let mut c = proxy.conn();
    let mut t = target.conn();
    for i in 0..100 {
        let _: i64 = redis::cmd("RPUSH").arg("l").arg(i).query(&mut c).unwrap();
    }
    // The link is cut on the primary, mid-overlap: it connects again and continues.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut t)
        .unwrap();
    assert_eq!(killed, 1, "the reverse link is the target's one replica");
    for i in 100..200 {
        let _: i64 = redis::cmd("RPUSH").arg("l").arg(i).query(&mut c).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while reverse_link(&proxy)["reconnects"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "{}", reverse_link(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_rollback_safe(&proxy, Duration::from_secs(10));
    assert_equal(&source, &target, "after the link was cut");
    assert_eq!(reverse_link(&proxy)["full_resyncs"], 0, "PSYNC continued");

    // The source is frozen: the link cannot apply and lags (counted up to the target's own
    // offset, although the link stops reading), and the rollback is refused until it has
    // caught up.
    source.signal("STOP");
    let value = "x".repeat(4096);
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("big:{i}"))
            .arg(&value)
            .query(&mut c)
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.status_json()["rollback_safe"] != false {
        assert!(Instant::now() < deadline, "{}", proxy.status_json());
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_eq!(code, 1, "a rollback while the link lags is refused: {err}");
    assert!(err.contains("lags"), "{err}");
    let (code, _, err) = cli(&proxy, &["rollback", "--force"]);
    assert_eq!(
        code, 1,
        "a forced rollback to a frozen source is refused: {err}"
    );
    assert!(err.contains("does not answer"), "{err}");
    assert_eq!(proxy.status_json()["primary"], "target");
    source.signal("CONT");
    wait_rollback_safe(&proxy, Duration::from_secs(10));
    let report = step(&proxy, "rollback");
    assert_eq!(report["primary"], "source", "{report}");
    assert_equal(&source, &target, "after the rollback");
    let l: Vec<i64> = redis::cmd("LRANGE")
        .arg("l")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(l, (0..200).collect::<Vec<_>>());
}

#[test]
fn a_reverse_link_that_lost_its_backlog_resyncs_and_says_so() {
    let source = Server::start(Version::Redis70);
    let target = Server::start_with(Version::Redis70, &["--repl-backlog-size", "16384"]);
    // Enough data that the new snapshot takes a moment to load into the source.
    let mut s = source.conn();
    for chunk in 0..20 {
        let mut p = redis::pipe();
        for i in 0..5000 {
            p.cmd("SET").arg(format!("k:{chunk}:{i}")).arg(i).ignore();
        }
        let _: () = p.query(&mut s).unwrap();
    }
    drop(s);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    step(&proxy, "switch");
    let mut c = proxy.conn();
    let _: () = redis::cmd("SET")
        .arg("before-cut")
        .arg(1)
        .query(&mut c)
        .unwrap();
    wait_rollback_safe(&proxy, Duration::from_secs(10));
    let resyncs_before = reverse_link(&proxy)["full_resyncs"].as_u64().unwrap_or(0);
    // Cut the link and write more than the backlog holds before it can come back.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut target.conn())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("burst")
        .arg("y".repeat(256 * 1024))
        .query(&mut c)
        .unwrap();
    // The source is frozen, so the new snapshot cannot be loaded into it yet: the link is
    // resyncing, and says so.
    source.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let status = proxy.status_json();
        if status["rollback_safe"] == false {
            break status["cutover"]["rollback_unsafe_reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(Instant::now() < deadline, "never reported unsafe: {status}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(reason.contains("reverse link"), "{reason}");
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_eq!(code, 1, "no rollback while the old side is reloaded: {err}");
    source.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = proxy.status_json();
        if reverse_link(&proxy)["full_resyncs"].as_u64().unwrap_or(0) > resyncs_before
            && status["rollback_safe"] == true
        {
            break;
        }
        assert!(Instant::now() < deadline, "never resynced: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        proxy.log().contains("FLUSHALL") || proxy.log().contains("full resync"),
        "the resync is in the log"
    );
    assert_equal(&source, &target, "after the resync");
    let report = step(&proxy, "rollback");
    assert_eq!(report["primary"], "source", "{report}");
    assert_eq!(
        redis::cmd("STRLEN")
            .arg("burst")
            .query::<i64>(&mut c)
            .unwrap(),
        256 * 1024
    );
}
