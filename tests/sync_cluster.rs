//! `cutover sync` into a Redis Cluster target (issue 21), against real servers: clusters
//! started by the tests (`tests/common/cluster.rs`), writes during the sync, the result
//! compared key by key with an independent client (the servers route the keys:
//! `CLUSTER KEYSLOT`, never the crate's own slot function). Cluster sources:
//! `tests/sync_cluster_source.rs`.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::sync_cluster::*;
use common::{Server, Version, differences, snapshot};

/// Standalone 7.0 → 3-master 7.0 under writes, `cutover sync` SIGKILLed mid-stream and
/// started again: it continues (`+CONTINUE`) from the smallest of the per-slot positions,
/// each slot skips what it holds, and the cluster ends equal to the source key by key (the
/// counters are the source's: no doubled INCR; the lists too: no doubled RPUSH).
#[test]
fn standalone_into_cluster_killed_and_resumed_is_exact() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    let source = Server::start_with(
        Version::Redis70,
        &[
            "--repl-diskless-sync-delay",
            "0",
            "--repl-backlog-size",
            "64mb",
        ],
    );
    let mut src = source.conn();
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(20000)
        .arg("pop")
        .arg(50)
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg("set")
        .arg("a")
        .arg("b")
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("z")
        .arg(1)
        .arg("a")
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("ttl")
        .arg("x")
        .arg("EX")
        .arg(1000)
        .query(&mut src)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = app_load(source.conn(), Arc::clone(&stop));

    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("first.log");
    let seeds = cluster.seeds_url();
    let mut first = start_sync(&source.url(), &seeds, &log1, &[]);
    // Mid-stream: the snapshot is in and stream batches have been applied since.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0i64;
    loop {
        let c0 = match cluster.cmd(&[b"GET", b"c:0"]) {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).parse::<i64>().unwrap_or(0),
            _ => 0,
        };
        // Every slot has a position, and the slots' positions were moved past the
        // snapshot's at least once (the every-2-s write of all of them): the restart resumes
        // mid-stream, with slots ahead of the smallest position skipping what they hold.
        let (n, min) = positions(&cluster, "0");
        let done = n == 16384 && min.is_some_and(|m| m > 0);
        if done && c0 > seen + 300 {
            if seen > 0 {
                break;
            }
            seen = c0;
        }
        assert!(
            Instant::now() < deadline && first.try_wait().unwrap().is_none(),
            "no stream progress (c:0 = {c0}); log:\n{}",
            read_log(&log1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let (n, killed_at) = positions(&cluster, "0");
    assert_eq!(n, 16384, "a position per slot");

    let log2 = dir.path().join("second.log");
    let mut second = start_sync(&source.url(), &seeds, &log2, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log(&log2).contains("+CONTINUE") {
        assert!(
            Instant::now() < deadline && second.try_wait().unwrap().is_none(),
            "no partial resync; log:\n{}",
            read_log(&log2)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    wait_equal(&source, &cluster, Duration::from_secs(60), &log2);
    let (_, end_at) = positions(&cluster, "0");
    second.kill().unwrap();
    second.wait().unwrap();
    let log = read_log(&log2);
    assert!(!log.contains("FLUSHALL"), "{log}");
    assert!(
        killed_at < end_at,
        "the restart resumed nothing: {killed_at:?} {end_at:?}"
    );
    eprintln!("{rounds} rounds of writes; killed at {killed_at:?}, ended at {end_at:?}\n{log}");
    // Counters and lists, read directly from the masters holding them.
    for k in ["c:0", "c:3", "l:1", "l:2"] {
        let mut s = source.conn();
        let ty: String = redis::cmd("TYPE").arg(k).query(&mut s).unwrap();
        let cmd: &[&[u8]] = if ty == "list" {
            &[b"LLEN", k.as_bytes()]
        } else {
            &[b"GET", k.as_bytes()]
        };
        let mut c = redis::cmd(std::str::from_utf8(cmd[0]).unwrap());
        c.arg(cmd[1]);
        let want: redis::Value = c.query(&mut s).unwrap();
        assert_eq!(cluster.cmd(cmd), want, "{k}");
    }
}

/// A source with keys in database 3 into a cluster (only database 0): refused before
/// anything is written, with the reason and the `db_map` that fixes it; with
/// `--db-map 3=0` it is copied.
#[test]
fn source_db_above_zero_into_cluster_needs_a_db_map() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    let source = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let mut src = source.conn();
    let _: () = redis::cmd("SET")
        .arg("zero")
        .arg("0")
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut src).unwrap();
    let _: () = redis::cmd("SET")
        .arg("three")
        .arg("3")
        .query(&mut src)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("refused.log");
    let child = start_sync(&source.url(), &cluster.seeds_url(), &log, &["--once"]);
    let out = wait_exit(child, Duration::from_secs(60));
    let text = read_log(&log);
    assert!(!out.success(), "{text}");
    assert!(
        text.contains("database(s) 3") && text.contains("only database 0") && text.contains("3=0"),
        "{text}"
    );
    assert!(data_of(&cluster).is_empty(), "nothing written");
    let log = dir.path().join("mapped.log");
    let child = start_sync(
        &source.url(),
        &cluster.seeds_url(),
        &log,
        &["--once", "--db-map", "3=0"],
    );
    let out = wait_exit(child, Duration::from_secs(60));
    assert!(out.success(), "{}", read_log(&log));
    let got = data_of(&cluster);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["three", "zero"]
    );
}

/// `cutover sync --from-rdb` into a cluster: the file's keys, routed by slot, equal to the
/// server that wrote the file.
#[test]
fn from_rdb_into_cluster() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    let source = Server::start(Version::Redis70);
    let mut src = source.conn();
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(5000)
        .arg("k")
        .arg(20)
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("list")
        .arg("a")
        .arg("b")
        .query(&mut src)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query(&mut src)
        .unwrap();
    let dir: String = {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("dir")
            .query(&mut src)
            .unwrap();
        v[1].clone()
    };
    let file: String = {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("dbfilename")
            .query(&mut src)
            .unwrap();
        v[1].clone()
    };
    let _: () = redis::cmd("SAVE").query(&mut src).unwrap();
    let path = format!("{dir}/{file}");
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("rdb.log");
    let child = cutover()
        .args([
            "sync",
            "--from-rdb",
            &path,
            "--target",
            &cluster.seeds_url(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let out = wait_exit(child, Duration::from_secs(60));
    assert!(out.success(), "{}", read_log(&log));
    let want = snapshot(&mut src);
    let got = data_of(&cluster);
    assert!(
        differences(&want, &got, 10).is_empty(),
        "{:?}",
        differences(&want, &got, 10)
    );
}

/// Standalone 7.0 → 3-master 7.0 while `redis-cli --cluster reshard` moves 1,000 slots (with
/// their keys, and the per-slot positions stored in them) between target masters, started
/// with the sync (during the snapshot and the stream), under writes; then `cutover sync` is
/// SIGKILLed and started again, resuming from the positions where the reshard left them:
/// the cluster ends equal to the source key by key.
#[test]
fn standalone_into_cluster_during_a_target_reshard_is_exact() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    let source = Server::start_with(
        Version::Redis70,
        &[
            "--repl-diskless-sync-delay",
            "0",
            "--repl-backlog-size",
            "64mb",
        ],
    );
    let mut src = source.conn();
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(30000)
        .arg("pop")
        .arg(50)
        .query(&mut src)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = app_load(source.conn(), Arc::clone(&stop));
    let ranges = cluster.slot_ranges();
    let owner = |slot: i64| {
        ranges
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .unwrap()
            .2
    };
    let id = |port: u16| -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut cluster.node(port).conn())
            .unwrap()
    };
    let (from, to) = (id(owner(0)), id(owner(16383)));
    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("first.log");
    let seeds = cluster.seeds_url();
    let mut first = start_sync(&source.url(), &seeds, &log1, &[]);
    let seed = cluster.nodes[0].addr();
    let resharder = std::thread::spawn(move || {
        let args: Vec<String> = [
            "--cluster",
            "reshard",
            &seed,
            "--cluster-from",
            &from,
            "--cluster-to",
            &to,
            "--cluster-slots",
            "1000",
            "--cluster-yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        common::cluster::run_cli(&args, Duration::from_secs(180))
    });
    let (ok, out, err) = resharder.join().unwrap();
    assert!(
        ok,
        "reshard failed:\n{}\n{}",
        common::tail(&out, 2000),
        common::tail(&err, 2000)
    );
    assert_ne!(cluster.slot_ranges(), ranges, "the slots moved");
    assert!(first.try_wait().unwrap().is_none(), "{}", read_log(&log1));
    // Stream batches applied after the reshard too.
    std::thread::sleep(Duration::from_millis(1000));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert_eq!(
        positions(&cluster, "0").0,
        16384,
        "every slot's position, moved with its slot"
    );
    let log2 = dir.path().join("second.log");
    let mut second = start_sync(&source.url(), &seeds, &log2, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log(&log2).contains("+CONTINUE") {
        assert!(
            Instant::now() < deadline && second.try_wait().unwrap().is_none(),
            "no partial resync; log:\n{}\nfirst log:\n{}",
            read_log(&log2),
            common::tail(&read_log(&log1), 3000)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    wait_equal(&source, &cluster, Duration::from_secs(60), &log2);
    second.kill().unwrap();
    second.wait().unwrap();
    let log = read_log(&log2);
    assert!(!log.contains("FLUSHALL"), "{log}");
    eprintln!(
        "{rounds} rounds of writes\n{}",
        common::tail(&read_log(&log1), 3000)
    );
}

/// A cluster that holds the positions of an earlier sync from another source (far ahead in
/// its stream), synced again with `--fresh` from a new source under writes: the old
/// per-slot positions are not used to skip the new source's stream (its offsets start low),
/// and the cluster ends equal to the new source.
#[test]
fn fresh_sync_from_another_source_skips_nothing() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    let old = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let mut o = old.conn();
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(2000)
        .arg("old")
        .arg(10)
        .query(&mut o)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("old.log");
    let first = start_sync(&old.url(), &cluster.seeds_url(), &log, &[]);
    common::wait_for("the snapshot applied", Duration::from_secs(60), || {
        (positions(&cluster, "0").0 == 16384).then_some(())
    });
    // Stream far ahead: ~4 MB of writes on the old source, applied.
    for i in 0..400 {
        let big = "x".repeat(10_000);
        let _: () = redis::cmd("SET")
            .arg(format!("big:{}", i % 20))
            .arg(&big)
            .query(&mut o)
            .unwrap();
    }
    wait_equal(&old, &cluster, Duration::from_secs(60), &log);
    // One more write more than 2 s later: its batch writes every slot's position.
    std::thread::sleep(Duration::from_millis(2100));
    let _: () = redis::cmd("SET").arg("last").arg(1).query(&mut o).unwrap();
    common::wait_for(
        "every slot's position past 1 MB",
        Duration::from_secs(30),
        || positions(&cluster, "0").1.filter(|m| *m > 1_000_000),
    );
    let mut first = first;
    first.kill().unwrap();
    first.wait().unwrap();
    let (_, old_min) = positions(&cluster, "0");
    assert!(old_min.is_some_and(|m| m > 1_000_000), "{old_min:?}");

    let new = Server::start_with(Version::Redis70, &["--repl-diskless-sync-delay", "0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = app_load(new.conn(), Arc::clone(&stop));
    let log2 = dir.path().join("new.log");
    let mut second = start_sync(&new.url(), &cluster.seeds_url(), &log2, &["--fresh"]);
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    wait_equal(&new, &cluster, Duration::from_secs(60), &log2);
    second.kill().unwrap();
    second.wait().unwrap();
}
