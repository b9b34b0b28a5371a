//! A cluster source's shards (issue 21): a link's position found by replication id after a
//! failover while cutover was stopped, per-shard status and metrics, and the room check of
//! a cluster side; real clusters, checked with an independent client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::shards::*;
use common::sync_cluster::*;
use common::{Server, Version, differences, snapshot};

/// `cutover sync` from a 3-master cluster (a replica each) into a standalone target, killed
/// (SIGKILL) mid-stream; while it is stopped, `CLUSTER FAILOVER` promotes one shard's replica
/// (a new node id) under writes. A new `cutover sync` finds that shard's position by the new
/// master's `master_replid2` and continues all three links with `PSYNC` (no full resync, no
/// new position key), and the target ends equal to the source: every counter `INCR`ed
/// exactly once (the source's counters are the ledger). Without the replication-id match the
/// promoted master is a new link: only 2 links continue.
#[test]
fn failover_while_stopped_continues_by_replid2() {
    let mut f = FollowedSync::start("first.log");
    wait_stream_progress(&f.target, 3, &mut f.sync, &f.log, Duration::from_secs(60));
    f.kill();
    let killed_at = link_positions(&f.target);

    let master = port_of(&f.cluster, "f:0");
    let promoted = fail_over(&f.cluster, master);
    std::thread::sleep(Duration::from_millis(500)); // writes on the new master

    f.log = f.dir.path().join("second.log");
    let seeds = f.cluster.seeds_url();
    f.sync = start_continued(&seeds, &f.target.url(), &f.log, 3, Duration::from_secs(30));
    let log = read_log(&f.log);
    assert!(log.contains("through its master_replid2"), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    let (rounds, log) = f.finish(Duration::from_secs(60));
    let end_at = link_positions(&f.target);
    eprintln!("{rounds} INCRs; promoted {promoted}; {killed_at:?} -> {end_at:?}\n{log}");
    assert!(!log.contains("full resync"), "{log}");
    assert!(!log.contains("matches no source master"), "{log}");
    // The same three links, each further on.
    assert_eq!(
        killed_at.keys().collect::<Vec<_>>(),
        end_at.keys().collect::<Vec<_>>()
    );
    for (k, o) in &killed_at {
        assert!(end_at[k] > *o, "{k}: {o} -> {}", end_at[k]);
    }
}

/// Per-shard status of a 3-master source into a standalone target: `cutover sync
/// --metrics-listen` serves every `cutover_sync_*` series once per source shard (label
/// `shard` = the shard's slots, 3 values); each shard's keys are its master's keys, each
/// shard streams with its own offsets (applied = received, > 0 after writes), its lag is
/// small, and the headless log prints a line per shard.
#[test]
fn three_shards_have_their_own_status_and_metrics() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    set_numbered(&cluster, 3000);
    let mut want_keys: std::collections::BTreeMap<String, f64> = Default::default();
    for (a, b, port) in cluster.slot_ranges() {
        let n: i64 = redis::cmd("DBSIZE")
            .query(&mut cluster.node(port).conn())
            .unwrap();
        want_keys.insert(format!("{a}-{b}"), n as f64);
    }
    assert_eq!(want_keys.len(), 3);
    let target = Server::start(Version::Redis70);
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut sync = start_sync(
        &cluster.seeds_url(),
        &target.url(),
        &log,
        &["--metrics-listen", &metrics],
    );
    let gauge = |m: &std::collections::BTreeMap<(String, String), f64>, name: &str, shard: &str| {
        m.get(&(format!("cutover_sync_{name}"), shard.to_string()))
            .copied()
    };
    // Every shard streaming, with all its keys.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = if sync.try_wait().unwrap().is_none()
            && std::net::TcpStream::connect(&metrics).is_ok()
        {
            shard_series(&common::http_get(&metrics, "/metrics"))
        } else {
            Default::default()
        };
        let ok = want_keys.iter().all(|(shard, n)| {
            gauge(&m, "phase", shard) == Some(2.0) && gauge(&m, "keys_done", shard) == Some(*n)
        });
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "not every shard streams with its keys: {m:?}\nlog:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Writes on every master (bounded): each shard's offsets move on its own.
    let stop = Arc::new(AtomicBool::new(false));
    let load = cluster_load(&cluster, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    wait_same(
        || cluster.snapshot(),
        || server_data(&target),
        Some(&mut sync),
        &log,
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = shard_series(&common::http_get(&metrics, "/metrics"));
        let settled = want_keys.keys().all(|shard| {
            let applied = gauge(&m, "applied_offset", shard).unwrap_or(0.0);
            applied > 0.0
                && gauge(&m, "received_offset", shard) == Some(applied)
                && gauge(&m, "lag_bytes", shard) == Some(0.0)
                && gauge(&m, "commands_applied", shard).unwrap_or(0.0) > 0.0
        });
        if settled {
            break m;
        }
        assert!(Instant::now() < deadline, "shards not caught up: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Three shards, no other shard series; offsets are each master's own.
    let shards: std::collections::BTreeSet<&String> = m.keys().map(|(_, s)| s).collect();
    assert_eq!(shards.len(), 3, "{m:?}");
    for (a, b, port) in cluster.slot_ranges() {
        let master_offset =
            info_number(cluster.node(port), "replication", "master_repl_offset") as f64;
        let applied = gauge(&m, "applied_offset", &format!("{a}-{b}")).unwrap();
        assert!(
            applied <= master_offset && applied > 0.0,
            "shard {a}-{b}: applied {applied}, master at {master_offset}"
        );
    }
    // The headless log's line per shard.
    let deadline = Instant::now() + Duration::from_secs(15);
    while want_keys
        .keys()
        .any(|s| !read_log(&log).contains(&format!("cutover sync: shard {s} ")))
    {
        assert!(Instant::now() < deadline, "{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(200));
    }
    sync.kill().unwrap();
    sync.wait().unwrap();
    eprintln!("{rounds} rounds; {m:?}");
}

/// Total keys of every master of a cluster.
fn dbsize(c: &Cluster) -> i64 {
    c.master_ports()
        .iter()
        .map(|p| {
            redis::cmd("DBSIZE")
                .query::<i64>(&mut c.node(*p).conn())
                .unwrap()
        })
        .sum()
}

fn refused(source: &str, target: &Cluster, full: u16, dir: &std::path::Path, name: &str) -> String {
    let log = dir.join(name);
    let child = start_sync(source, &target.seeds_url(), &log, &[]);
    let status = wait_exit(child, Duration::from_secs(60));
    let text = read_log(&log);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("has no room for the copy")
            && text.contains(&format!("127.0.0.1:{full}"))
            && text.contains("of 16384 slots")
            && text.contains("maxmemory is 4.0 MiB"),
        "{text}"
    );
    assert_eq!(dbsize(target), 0, "written before the refusal: {text}");
    text
}

/// The room check with a cluster on either side: a 3-master source (~20 MB) into a 3-master
/// target whose one master has `maxmemory 4mb` (`allkeys-lru`: it would evict in silence)
/// is refused before anything is written, naming that master, its limit, its share of the
/// source (its slots' part of each source master's `used_memory`) and the total; a
/// standalone source of the same size too (the target's share check runs in the engine).
/// With the limit raised, the same sync copies everything.
#[test]
fn a_full_target_master_is_refused_with_the_numbers() {
    let source = Cluster::start(Version::Redis70, 3, 0);
    let value = "x".repeat(1000);
    let pairs: Vec<(String, String)> = (0..20_000)
        .map(|i| (format!("k:{i}"), value.clone()))
        .collect();
    source.set_many(&pairs);
    let single = Server::start(Version::Redis70);
    {
        let mut c = single.conn();
        for chunk in pairs.chunks(2000) {
            let mut p = redis::pipe();
            for (k, v) in chunk {
                p.cmd("SET").arg(k).arg(v).ignore();
            }
            let _: () = p.query(&mut c).unwrap();
        }
    }
    let target = Cluster::start(Version::Redis70, 3, 0);
    let full = target.master_ports()[1];
    config_set(
        target.node(full),
        &[("maxmemory-policy", "allkeys-lru"), ("maxmemory", "4mb")],
    );
    let dir = tempfile::tempdir().unwrap();
    let from_cluster = refused(
        &source.seeds_url(),
        &target,
        full,
        dir.path(),
        "cluster.log",
    );
    let from_single = refused(&single.url(), &target, full, dir.path(), "single.log");
    eprintln!("{from_cluster}\n{from_single}");
    // Room enough: the copy is made.
    config_set(target.node(full), &[("maxmemory", "0")]);
    let log = dir.path().join("ok.log");
    let mut sync = start_sync(&source.seeds_url(), &target.seeds_url(), &log, &[]);
    wait_running(
        &mut sync,
        &log,
        Duration::from_secs(60),
        "not every key copied",
        || dbsize(&target) >= 20_000 + 3 * 16384,
    );
    sync.kill().unwrap();
    sync.wait().unwrap();
}

/// `cutover run` with a standalone source and a 3-master cluster target: the proxy serves the
/// source as always, the background sync fills the cluster by slot (per-slot positions of
/// the standalone link `0`) under writes through the proxy on the same keys (counters,
/// lists, `MULTI`), the cluster ends equal to the source key by key, and `cutover switch` is
/// refused with the reason (the proxy cannot front a cluster yet) while the sync goes on.
#[test]
fn run_syncs_into_a_cluster_target_and_refuses_the_switch() {
    let source = Server::start(Version::Redis70);
    {
        let mut c = source.conn();
        let mut p = redis::pipe();
        for i in 0..2000 {
            p.cmd("SET").arg(format!("k:{i}")).arg(i).ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    let target = Cluster::start(Version::Redis70, 3, 0);
    let proxy = common::Proxy::start(&source.url(), &["--target", &target.url()]);
    let writes = |rounds: u64| {
        let mut a = proxy.conn();
        let mut b = proxy.conn();
        for i in 0..rounds {
            let _: i64 = redis::cmd("INCR")
                .arg(format!("c:{}", i % 8))
                .query(&mut a)
                .unwrap();
            let _: i64 = redis::cmd("RPUSH")
                .arg(format!("l:{}", i % 4))
                .arg(i)
                .query(&mut b)
                .unwrap();
            if i % 10 == 0 {
                let _: (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("c:0")
                    .cmd("RPUSH")
                    .arg("l:1")
                    .arg("m")
                    .query(&mut b)
                    .unwrap();
            }
        }
    };
    let equal = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let want = snapshot(&mut source.conn());
            let got = data_of(&target);
            let diff = differences(&want, &got, 10);
            if diff.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the cluster differs ({} vs {} keys):\n{}\nlog:\n{}",
                want.len(),
                got.len(),
                diff.join("\n"),
                common::tail(&proxy.log(), 4000)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    writes(500);
    common::wait_streaming(&proxy);
    writes(500);
    equal("after the snapshot and stream");
    let (n, _) = positions(&target, "0");
    assert_eq!(n, 16384, "one position per slot");
    let (code, _, err) = common::cli(&proxy, &["switch", "--json"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("Redis Cluster") && err.contains("no switch is possible"),
        "{err}"
    );
    // Nothing moved: the proxy still serves the source, and the sync goes on.
    writes(300);
    equal("after the refused switch");
    let status = proxy.status_json();
    assert_eq!(status["phase"], "streaming", "{status}");
    assert!(
        status["cutover"]["switch_refused"]
            .as_str()
            .is_some_and(|w| w.contains("Redis Cluster")),
        "{status}"
    );
    // The run's own verify compares the source with the cluster (by slot, per master).
    let (code, out, err) = common::cli(&proxy, &["verify"]);
    assert_eq!(code, 0, "cutover verify --admin: {out}{err}");
    let verify = common::wait_for("the run's verify", Duration::from_secs(60), || {
        let v = proxy.status_json()["verify"].clone();
        (v["state"] == "done" || v["state"] == "error").then_some(v)
    });
    assert_eq!(verify["equal"], true, "{verify}");
    assert_eq!(verify["source_keys"], 2000 + 8 + 4, "{verify}");
    let log = proxy.log();
    eprintln!("{}", common::tail(&log, 6000));
    assert!(!log.contains(" ERROR "), "{log}");

    // A target master that evicts (a small maxmemory set after the start): counted.
    let full = target.master_ports()[2];
    let used = info_number(target.node(full), "memory", "used_memory");
    config_set(
        target.node(full),
        &[
            ("maxmemory-policy", "allkeys-random"),
            ("maxmemory", &(used + (512 << 10)).to_string()),
        ],
    );
    let big = "x".repeat(1000);
    let mut c = proxy.conn();
    for chunk in 0..30 {
        let mut p = redis::pipe();
        for i in 0..200 {
            p.cmd("SET")
                .arg(format!("big:{chunk}:{i}"))
                .arg(&big)
                .ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    common::wait_for("the evictions counted", Duration::from_secs(30), || {
        (proxy.status_json()["sync"]["evicted_keys"]
            .as_u64()
            .unwrap_or(0)
            > 0)
        .then_some(())
    });
}

/// A source failover mid-stream into a cluster target, then cutover stopped (SIGKILL) before
/// every slot's position carried the promoted master's new replication id (the time when
/// they differ widened by the test-only `CUTOVER_TEST_ALL_SLOTS_EVERY_MS`): the per-slot
/// positions of that link name two ids of one history (older id: smaller offsets). A new
/// `cutover sync` continues every link with `PSYNC` (no full resync) and the target ends
/// equal to the source, every counter exact. Without taking ordered ids as one history,
/// the shard is copied again in full.
#[test]
fn positions_under_two_ids_of_one_history_continue() {
    let source = Cluster::start(Version::Redis70, 3, 1);
    configure_for_psync(&source);
    set_numbered(&source, 2000);
    let target = Cluster::start(Version::Redis70, 3, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let load = following_load(&source, Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("first.log");
    let mut first = cutover()
        .args([
            "sync",
            "--source",
            &source.seeds_url(),
            "--target",
            &target.seeds_url(),
        ])
        .env("CUTOVER_TEST_ALL_SLOTS_EVERY_MS", "120000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log1).unwrap())
        .spawn()
        .unwrap();
    wait_log(&mut first, &log1, "streaming", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1000));
    let master = port_of(&source, "f:0");
    fail_over(&source, master);
    wait_log(
        &mut first,
        &log1,
        "reconnected; the source continued (+CONTINUE)",
        1,
        Duration::from_secs(30),
    );
    // Batches under the new id reach some slots of that shard.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !link_replids(&target).values().any(|ids| ids.len() > 1) {
        assert!(
            Instant::now() < deadline,
            "no link's positions under two ids: {:?}\n{}",
            link_replids(&target),
            read_log(&log1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let mixed = link_replids(&target);

    let log2 = dir.path().join("second.log");
    let second = start_continued(
        &source.seeds_url(),
        &target.seeds_url(),
        &log2,
        3,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().unwrap();
    let log = stop_when_same(
        || data_of(&source),
        || data_of(&target),
        second,
        &log2,
        Duration::from_secs(60),
    );
    eprintln!("{rounds} INCRs; positions' ids {mixed:?}\n{log}");
    assert!(!log.contains("full resync"), "{log}");
}

/// Positions no source master continues (orphans): a target synced from cluster A (3
/// masters), then `cutover sync` from another cluster B into it. A's three positions are
/// reported as orphaned and left; B's links, without positions of their own on a target
/// holding an earlier sync's keys, clear their slots before their snapshots, so the target
/// ends equal to B key by key — A's keys that B lacks are gone (they stayed without the
/// clearing).
#[test]
fn orphaned_positions_are_reported_and_their_slots_copied_again() {
    let a = Cluster::start(Version::Redis70, 3, 0);
    set_range(&a, 0..1500, "a");
    let target = Server::start(Version::Redis70);
    let dir = tempfile::tempdir().unwrap();
    let log1 = dir.path().join("a.log");
    let mut first = start_sync(&a.seeds_url(), &target.url(), &log1, &[]);
    wait_running(
        &mut first,
        &log1,
        Duration::from_secs(60),
        "A not copied",
        || link_positions(&target).len() >= 3 && dbsize_of(&target) >= 1500 + 3,
    );
    wait_log(&mut first, &log1, "streaming", 1, Duration::from_secs(30));
    first.kill().unwrap();
    first.wait().unwrap();
    let a_links = link_positions(&target);

    // B: half of A's keys (other values), and keys of its own.
    let b = Cluster::start(Version::Redis70, 3, 0);
    set_range(&b, 750..2250, "b");
    let log2 = dir.path().join("b.log");
    let second = start_sync(&b.seeds_url(), &target.url(), &log2, &[]);
    let log = stop_when_same(
        || data_of(&b),
        || server_data(&target),
        second,
        &log2,
        Duration::from_secs(60),
    );
    eprintln!("{log}");
    for link in a_links.keys() {
        let name = link.trim_start_matches("cutover:position:");
        assert!(
            log.contains(&format!("the stored position of link {name} ")),
            "orphan {name} not reported: {log}"
        );
    }
    assert_eq!(
        log.matches("matches no source master now").count(),
        3,
        "{log}"
    );
    // A's positions stay; B's three are new.
    assert_eq!(link_positions(&target).len(), 6);
}

fn dbsize_of(s: &Server) -> i64 {
    redis::cmd("DBSIZE").query(&mut s.conn()).unwrap()
}
