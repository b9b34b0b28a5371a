//! `cutover sync` from a Redis Cluster source (issue 21): one link per source master, into a
//! standalone server or another cluster, with writes during the sync, `cutover` killed and
//! started again, and source failovers; the result compared key by key with an independent
//! client.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::sync_cluster::*;
use common::{Server, Version, differences, snapshot};

/// 3-master Valkey 9.1 → standalone Redis 6.2 (a downgrade) under writes on every master:
/// one link per master in parallel, each with its own position `cutover:position:<node id>`;
/// `cutover sync` SIGKILLed mid-stream and started again continues every link
/// (`+CONTINUE`), and the target ends equal to the cluster key by key.
#[test]
fn cluster_into_standalone_killed_and_resumed_is_exact() {
    let cluster = Cluster::start(Version::Valkey91, 3, 0);
    for n in &cluster.nodes {
        let mut c = n.conn();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-sync-delay")
            .arg(0)
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-backlog-size")
            .arg("64mb")
            .query(&mut c)
            .unwrap();
    }
    let pairs: Vec<(String, String)> = (0..6000)
        .map(|i| (format!("k:{i}"), format!("v{i}")))
        .collect();
    cluster.set_many(&pairs);
    cluster.cmd(&[b"HSET", b"h", b"f", b"v"]);
    cluster.cmd(&[b"SADD", b"set", b"a", b"b"]);
    cluster.cmd(&[b"ZADD", b"z", b"1", b"a"]);
    let target = Server::start(Version::Redis62);
    let stop = Arc::new(AtomicBool::new(false));
    let load = cluster_load(&cluster, Arc::clone(&stop));

    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("first.log");
    let seeds = cluster.seeds_url();
    let mut first = start_sync(&seeds, &target.url(), &log1, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Option<BTreeMap<String, u64>> = None;
    loop {
        let pos = link_positions(&target);
        if pos.len() == 3 {
            match &seen {
                // Every link has applied stream batches since it was first seen.
                Some(before)
                    if pos
                        .iter()
                        .all(|(k, o)| before.get(k).is_some_and(|b| o > b)) =>
                {
                    break;
                }
                Some(_) => {}
                None => seen = Some(pos),
            }
        }
        assert!(
            Instant::now() < deadline && first.try_wait().unwrap().is_none(),
            "no stream progress on every link; log:\n{}",
            read_log(&log1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let killed_at = link_positions(&target);

    let log2 = dir.path().join("second.log");
    let mut second = start_sync(&seeds, &target.url(), &log2, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_log(&log2).matches("continued (+CONTINUE)").count() < 3 {
        assert!(
            Instant::now() < deadline && second.try_wait().unwrap().is_none(),
            "not every link continued; log:\n{}",
            read_log(&log2)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = cluster.snapshot();
        let mut got = snapshot(&mut target.conn());
        got.retain(|k, _| !k.starts_with("cutover:"));
        let diff = differences(&want, &got, 10);
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target differs from the cluster ({} vs {} keys):\n{}\nlog:\n{}",
            want.len(),
            got.len(),
            diff.iter()
                .map(|d| common::tail(d, 300))
                .collect::<Vec<_>>()
                .join("\n"),
            common::tail(&read_log(&log2), 4000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let end_at = link_positions(&target);
    second.kill().unwrap();
    second.wait().unwrap();
    let log = read_log(&log2);
    assert!(!log.contains("full resync"), "{log}");
    assert_eq!(killed_at.len(), 3);
    for (k, o) in &killed_at {
        assert!(end_at[k] >= *o, "{k}: {o} -> {}", end_at[k]);
    }
    eprintln!("{rounds} rounds; positions {killed_at:?} -> {end_at:?}\n{log}");
}

/// 3-master Redis 7.0 → 4-master Valkey 9.1 under writes on every source master: a link per
/// source master, each writing per-slot transactions and positions
/// (`cutover:position:{tag}:<node id>`) into the target cluster; SIGKILL mid-stream and a
/// restart continue every link, and the target ends equal to the source key by key.
#[test]
fn cluster_into_cluster_killed_and_resumed_is_exact() {
    cluster_into_cluster((Version::Redis70, 3), (Version::Valkey91, 4));
}

/// 4-master Redis 7.0 → 3-master Redis 6.2 (a downgrade; the target's map from `CLUSTER
/// SLOTS`), as above.
#[test]
fn cluster_into_older_smaller_cluster_killed_and_resumed_is_exact() {
    cluster_into_cluster((Version::Redis70, 4), (Version::Redis62, 3));
}

fn cluster_into_cluster(from: (Version, usize), to: (Version, usize)) {
    let links = from.1;
    let source = Cluster::start(from.0, from.1, 0);
    for n in &source.nodes {
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
    let pairs: Vec<(String, String)> = (0..6000)
        .map(|i| (format!("k:{i}"), format!("v{i}")))
        .collect();
    source.set_many(&pairs);
    source.cmd(&[b"HSET", b"h", b"f", b"v"]);
    source.cmd(&[b"RPUSH", b"list", b"a", b"b"]);
    let target = Cluster::start(to.0, to.1, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let load = cluster_load(&source, Arc::clone(&stop));

    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("first.log");
    let mut first = start_sync(&source.seeds_url(), &target.seeds_url(), &log1, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let links_now = cluster_links(&target);
        let c0 = match target.cmd(&[b"GET", b"c:0"]) {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).parse::<i64>().unwrap_or(0),
            _ => 0,
        };
        if links_now.len() == links && links_now.values().all(|(n, _)| *n == 16384) && c0 > 300 {
            break;
        }
        assert!(
            Instant::now() < deadline && first.try_wait().unwrap().is_none(),
            "no stream progress on every link ({links_now:?}); log:\n{}",
            common::tail(&read_log(&log1), 4000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let killed_at = cluster_links(&target);

    let log2 = dir.path().join("second.log");
    let mut second = start_sync(&source.seeds_url(), &target.seeds_url(), &log2, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_log(&log2).matches("continued (+CONTINUE)").count() < links {
        assert!(
            Instant::now() < deadline && second.try_wait().unwrap().is_none(),
            "not every link continued; log:\n{}",
            common::tail(&read_log(&log2), 4000)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let want = source.snapshot();
        let got = data_of(&target);
        let diff = differences(&want, &got, 10);
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target differs from the source ({} vs {} keys):\n{}\nlog:\n{}",
            want.len(),
            got.len(),
            diff.iter()
                .map(|d| common::tail(d, 300))
                .collect::<Vec<_>>()
                .join("\n"),
            common::tail(&read_log(&log2), 4000)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let log = read_log(&log2);
    assert!(!log.contains("full resync"), "{log}");
    eprintln!("{rounds} rounds; positions at the kill {killed_at:?}");
}

/// A source failover mid-stream (3 masters with a replica each, `CLUSTER FAILOVER` on one
/// replica) into a standalone target, under writes that follow the cluster: the demoted
/// master drops the link, which connects again to it (`PSYNC` continue: it now relays the new
/// master's stream), and the target ends equal to the source, without a full resync of the
/// shard. (A master that dies: `cluster_source_master_killed_mid_stream_is_followed`.)
#[test]
fn cluster_source_failover_mid_stream_is_exact() {
    let cluster = Cluster::start(Version::Redis70, 3, 1);
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
    let pairs: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("k:{i}"), format!("v{i}")))
        .collect();
    cluster.set_many(&pairs);
    let target = Server::start(Version::Redis70);
    let stop = Arc::new(AtomicBool::new(false));
    let load = following_load(&cluster, Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("sync.log");
    let mut sync = start_sync(&cluster.seeds_url(), &target.url(), &log1, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while link_positions(&target).len() < 3 {
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "{}",
            read_log(&log1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // The replica of the master serving slot 0 takes over.
    let master = port_of(&cluster, "f:0");
    let replica = cluster
        .nodes
        .iter()
        .find(|n| {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut n.conn())
                .unwrap();
            info.contains(&format!("master_port:{master}\r"))
        })
        .expect("a replica of that master");
    // A manual failover needs the replica caught up; on a loaded machine one can time out
    // (`Manual failover timed out`): asked again, up to 3 times.
    common::wait_for("the replica's link up", Duration::from_secs(30), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    });
    let mut promoted = false;
    for _ in 0..3 {
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut replica.conn())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.conn())
                .unwrap_or_default();
            if info.contains("role:master") {
                promoted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if promoted {
            break;
        }
    }
    assert!(promoted, "CLUSTER FAILOVER did not promote the replica");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = cluster.snapshot();
        let mut got = snapshot(&mut target.conn());
        got.retain(|k, _| !k.starts_with("cutover:"));
        let diff = differences(&want, &got, 10);
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "the target differs ({} vs {} keys):\n{}\nlog:\n{}",
            want.len(),
            got.len(),
            diff.iter()
                .map(|d| common::tail(d, 300))
                .collect::<Vec<_>>()
                .join("\n"),
            common::tail(&read_log(&log1), 4000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sync.kill().unwrap();
    sync.wait().unwrap();
    let log = read_log(&log1);
    eprintln!("{rounds} INCRs\n{}", common::tail(&log, 3000));
    assert!(!log.contains("full resync"), "{log}");
    // The demoted master dropped the link and served it again (as a replica of the new master).
    assert!(
        log.contains("reconnected; the source continued (+CONTINUE)"),
        "the failover did not reach the link: {log}"
    );
}

/// A source master dies mid-stream (SIGKILL; 3 masters with a replica each): the cluster
/// promotes its replica, the link finds the shard's new master in the topology and continues
/// there (`PSYNC` continue through `replid2`, or — when the dead master had sent the link
/// writes its replica never got — a full resync of that shard only, reported), and the
/// target ends equal to the source.
#[test]
fn cluster_source_master_killed_mid_stream_is_followed() {
    let mut cluster = Cluster::start(Version::Redis70, 3, 1);
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
    let pairs: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("k:{i}"), format!("v{i}")))
        .collect();
    cluster.set_many(&pairs);
    let target = Server::start(Version::Redis70);
    let stop = Arc::new(AtomicBool::new(false));
    let load = following_load(&cluster, Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("sync.log");
    let mut sync = start_sync(&cluster.seeds_url(), &target.url(), &log1, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while link_positions(&target).len() < 3 {
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "{}",
            read_log(&log1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // A master other than the first node (the rig reads the cluster through it).
    let first = cluster.nodes[0].port();
    let victim = *cluster
        .master_ports()
        .iter()
        .find(|p| **p != first)
        .unwrap();
    let idx = cluster
        .nodes
        .iter()
        .position(|n| n.port() == victim)
        .unwrap();
    cluster.nodes[idx].kill();
    common::wait_for("the failover", Duration::from_secs(60), || {
        let ports = cluster.master_ports();
        (ports.len() == 3 && !ports.contains(&victim)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let want = cluster.snapshot();
        let mut got = snapshot(&mut target.conn());
        got.retain(|k, _| !k.starts_with("cutover:"));
        let diff = differences(&want, &got, 10);
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "the target differs ({} vs {} keys):\n{}\nlog:\n{}",
            want.len(),
            got.len(),
            diff.iter()
                .map(|d| common::tail(d, 300))
                .collect::<Vec<_>>()
                .join("\n"),
            common::tail(&read_log(&log1), 4000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sync.kill().unwrap();
    sync.wait().unwrap();
    let log = read_log(&log1);
    eprintln!("{rounds} INCRs\n{}", common::tail(&log, 4000));
    assert!(
        log.contains("the shard's master changed; the link follows it"),
        "the link did not follow the new master: {log}"
    );
}
