//! Slots moving on a cluster SOURCE during `cutover sync` (issue 21): `redis-cli --cluster
//! reshard` of 1,000 slots during the snapshot and again during the stream, under writes of
//! several clients on the same keys (with an exactly-once ledger), into a standalone target
//! and into a cluster target; the target compared key by key with the source by an
//! independent client: no key lost, none resurrected, no `INCR`/`RPUSH` applied twice.
//! And a `FLUSHALL` in one shard's stream clears only that shard's keys on the target.
//!
//! The exporting links are slowed (`CUTOVER_TEST_LINK_DELAY`, a test-only sleep before each
//! read of stream commands) so that the importing link reads the `RESTORE`s well before the
//! exporter reads its last writes and the migration's `DEL`s: without the ordering of
//! `sync::cluster::transit_run` the target then loses keys and counts twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::reshard::*;
use common::sync_cluster::*;
use common::{Server, Version, differences, snapshot};

type Data = BTreeMap<String, (String, String, bool)>;

fn start(source: &str, target: &str, log: &Path, delay: &str) -> Child {
    cutover()
        .args(["sync", "--source", source, "--target", target])
        .env("CUTOVER_TEST_LINK_DELAY", delay)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The log without the periodic status lines, its last 6,000 characters.
fn excerpt(log: &Path) -> String {
    let text: Vec<String> = read_log(log)
        .lines()
        .filter(|l| !l.starts_with("cutover sync: shard "))
        .map(String::from)
        .collect();
    common::tail(&text.join("\n"), 6000).to_string()
}

fn source_cluster(version: Version) -> Cluster {
    let cluster = Cluster::start(version, 3, 0);
    for n in &cluster.nodes {
        let mut c = n.conn();
        for (k, v) in [
            ("repl-diskless-sync-delay", "0"),
            ("repl-backlog-size", "64mb"),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query(&mut c)
                .unwrap();
        }
    }
    cluster
}

/// Waits until `got()` equals the source, else fails with the differences and the log.
fn wait_same(source: &Cluster, got: &dyn Fn() -> Data, log: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let want = data_of(source);
        let have = got();
        let diff = differences(&want, &have, 12);
        if diff.is_empty() {
            eprintln!("target equal to the source: {} keys", want.len());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the target differs from the source ({} vs {} keys):\n{}\nlog:\n{}",
            want.len(),
            have.len(),
            diff.iter()
                .map(|d| common::tail(d, 300))
                .collect::<Vec<_>>()
                .join("\n"),
            excerpt(log)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The whole scenario; `streaming()` says every link streams (its position is stored).
fn reshard_during_sync(
    mover: &dyn Fn(&Cluster, u16, u16),
    delay: &str,
    resync_allowed: bool,
    source: &Cluster,
    target_url: &str,
    target_data: &dyn Fn() -> Data,
    streaming: &dyn Fn() -> bool,
) {
    // Enough data that the snapshot lasts while the first reshard runs.
    let pairs: Vec<(String, String)> = (0..60_000)
        .map(|i| (format!("p:{i}"), format!("{i:0>100}")))
        .collect();
    source.set_many(&pairs);
    let ports = masters_by_slot(source);
    let stop = Arc::new(AtomicBool::new(false));
    let load = shared_load(source, 4, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    // The exporters' links lag (`delay`): link 0 exports in the first reshard, link 1 in the
    // second.
    let mut sync = start(&source.seeds_url(), target_url, &log, delay);
    // Reshard 1, during the snapshot: 1,000 slots (0-999) from the first master (link 0) to
    // the second.
    let t0 = Instant::now();
    mover(source, ports[0], ports[1]);
    eprintln!(
        "reshard 1 done in {:.1} s; log so far:\n{}",
        t0.elapsed().as_secs_f64(),
        common::tail(&read_log(&log), 1500)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !streaming() {
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "the links did not all stream; log:\n{}",
            excerpt(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Reshard 2, during the stream: 1,000 slots from the second master (0-999 first: the
    // slots just received) to the third.
    mover(source, ports[1], ports[2]);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let ledgers: Vec<Ledger> = load.into_iter().map(|h| h.join().unwrap()).collect();
    let ops: u64 = ledgers.iter().map(|l| l.ops).sum();
    check_ledgers(source, &ledgers);
    assert!(
        sync.try_wait().unwrap().is_none(),
        "cutover sync stopped; log:\n{}",
        common::tail(&read_log(&log), 4000)
    );
    wait_same(source, target_data, &log, Duration::from_secs(120));
    sync.kill().unwrap();
    sync.wait().unwrap();
    let text = read_log(&log);
    // (Valkey 9.1 drops a replica's link that is loading a snapshot while its master
    // imports slots: that shard's snapshot is sent again.)
    assert!(
        resync_allowed || !text.contains("full resync"),
        "{}",
        common::tail(&text, 4000)
    );
    eprintln!("{ops} client commands; log:\n{}", common::tail(&text, 3000));
}

/// 3-master Redis 7.0 → standalone Redis 7.0.
#[test]
fn source_reshard_into_standalone_is_exact() {
    reshard_into_standalone(Version::Redis70, &cli_reshard, "0:60,1:20", false);
}

/// A 3-master source of `version` into a standalone server of the same version, slots moved
/// by `mover` during the sync ([`reshard_during_sync`]).
fn reshard_into_standalone(
    version: Version,
    mover: &dyn Fn(&Cluster, u16, u16),
    delay: &str,
    resync_allowed: bool,
) {
    let source = source_cluster(version);
    let target = Server::start(version);
    let data = || {
        let mut got = snapshot(&mut target.conn());
        got.retain(|k, _| !k.starts_with("cutover:"));
        got
    };
    let streaming = || link_positions(&target).len() == 3;
    reshard_during_sync(
        mover,
        delay,
        resync_allowed,
        &source,
        &target.url(),
        &data,
        &streaming,
    );
}

/// `redis-cli --cluster reshard` of 1,000 slots (`MIGRATE`).
fn cli_reshard(source: &Cluster, from: u16, to: u16) {
    let (ok, out, err) = reshard(source, from, to, 1000).join().unwrap();
    assert!(ok, "reshard failed:\n{}\n{}", common::tail(&out, 2000), err);
}

/// Valkey 9 atomic slot migration of slots 0-999 (`CLUSTER MIGRATESLOTS`).
fn atomic_reshard(source: &Cluster, from: u16, to: u16) {
    atomic_migrate(source, from, to, 1000);
}

/// 3-master Valkey 9.1 → standalone Valkey 9.1, slots moved by atomic slot migration.
#[test]
fn source_atomic_slot_migration_into_standalone_is_exact() {
    reshard_into_standalone(Version::Valkey91, &atomic_reshard, "0:60,1:150", true);
}

/// 3-master Valkey 9.1 → 3-master Redis 7.0, slots moved by atomic slot migration.
#[test]
fn source_atomic_slot_migration_into_cluster_is_exact() {
    reshard_into_cluster(Version::Valkey91, &atomic_reshard, "0:60,1:150", true);
}

/// A 3-master source of `version` into a 3-master Redis 7.0 target, slots moved by `mover`
/// during the sync ([`reshard_during_sync`]).
fn reshard_into_cluster(
    version: Version,
    mover: &dyn Fn(&Cluster, u16, u16),
    delay: &str,
    resync_allowed: bool,
) {
    let source = source_cluster(version);
    let target = Cluster::start(Version::Redis70, 3, 0);
    let data = || data_of(&target);
    let streaming = || {
        let links = cluster_links(&target);
        links.len() == 3 && links.values().all(|(n, off)| *n == 16384 && *off > 0)
    };
    reshard_during_sync(
        mover,
        delay,
        resync_allowed,
        &source,
        &target.seeds_url(),
        &data,
        &streaming,
    );
}

/// 3-master Redis 7.0 → 3-master Redis 7.0.
#[test]
fn source_reshard_into_cluster_is_exact() {
    reshard_into_cluster(Version::Redis70, &cli_reshard, "0:60,1:20", false);
}

/// A `FLUSHALL` sent to one source master (as `redis-cli --cluster call … FLUSHALL` does on
/// each master in turn, or a client of that master) under writes on every master: on the
/// target only that shard's keys go, the other shards' stay (applied as is, it emptied the
/// whole target).
fn flush_one_shard(target_url: &str, target_data: &dyn Fn() -> Data, streaming: &dyn Fn() -> bool) {
    let source = source_cluster(Version::Redis70);
    let pairs: Vec<(String, String)> = (0..6_000)
        .map(|i| (format!("p:{i}"), format!("v{i}")))
        .collect();
    source.set_many(&pairs);
    let ports = source.master_ports();
    let stop = Arc::new(AtomicBool::new(false));
    let load = shared_load(&source, 2, Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut sync = start(&source.seeds_url(), target_url, &log, "");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !streaming() {
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "the links did not all stream; log:\n{}",
            excerpt(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = data_of(&source).len();
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut source.node(ports[1]).conn())
        .unwrap();
    let after = data_of(&source).len();
    assert!(after < before * 3 / 4, "{before} -> {after} keys");
    // Writes after the flush, on the flushed shard too.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.join().unwrap();
    }
    wait_same(&source, target_data, &log, Duration::from_secs(60));
    sync.kill().unwrap();
    sync.wait().unwrap();
    let text = read_log(&log);
    let flushed = format!("127.0.0.1:{} (offset", ports[1]);
    assert!(
        text.lines()
            .any(|l| l.contains("FLUSHALL/FLUSHDB in the stream of shard") && l.contains(&flushed)),
        "{}",
        common::tail(&text, 3000)
    );
}

#[test]
fn flushall_on_one_source_master_into_standalone_clears_only_its_shard() {
    let target = Server::start(Version::Redis70);
    let data = || {
        let mut got = snapshot(&mut target.conn());
        got.retain(|k, _| !k.starts_with("cutover:"));
        got
    };
    let streaming = || link_positions(&target).len() == 3;
    flush_one_shard(&target.url(), &data, &streaming);
}

#[test]
fn flushall_on_one_source_master_into_cluster_clears_only_its_shard() {
    let target = Cluster::start(Version::Redis70, 3, 0);
    let data = || data_of(&target);
    let streaming = || {
        let links = cluster_links(&target);
        links.len() == 3 && links.values().all(|(n, off)| *n == 16384 && *off > 0)
    };
    flush_one_shard(&target.seeds_url(), &data, &streaming);
}
