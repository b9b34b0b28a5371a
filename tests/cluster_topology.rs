//! The `cluster` module against real clusters: the slot map read from Redis 6.2 (`CLUSTER
//! SLOTS`), 7.0 and Valkey 9.1 (`CLUSTER SHARDS`) is the one the servers announce, detection of
//! cluster mode, seeds that are down, the address map, and `cluster::slot` agreeing with
//! `CLUSTER KEYSLOT` for random keys with and without hash tags.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::Cluster;
use common::{Server, Version};
use cutover::cluster::{Side, SideError, SideSpec, slot};
use cutover::config::TlsOptions;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const LIMIT: Duration = Duration::from_secs(5);

fn spec(url: &str) -> SideSpec {
    SideSpec::parse(url, &TlsOptions::default(), &BTreeMap::new()).expect("side URL")
}

/// Every slot's master port, from the servers' `CLUSTER SLOTS`.
fn expected_owners(c: &Cluster) -> Vec<u16> {
    let mut owner = vec![0u16; 16384];
    for (a, b, port) in c.slot_ranges() {
        for s in a..=b {
            owner[s as usize] = port;
        }
    }
    owner
}

fn check_map(version: Version, masters: usize) {
    let c = Cluster::start(version, masters, 0);
    let side = spec(&c.seeds_url()).resolve(LIMIT).expect("resolve");
    let Side::Cluster(topo) = &side else {
        panic!("{version:?}: a cluster node was taken for {side:?}")
    };
    let map = topo.map();
    assert!(map.is_complete(), "{map:?}");
    assert_eq!(map.shards().len(), masters);
    let owners = expected_owners(&c);
    for s in 0..16384u16 {
        let n = map.master_of(s).expect("served");
        assert_eq!(n.addr.port, owners[s as usize], "{version:?} slot {s}");
        assert_eq!(n.addr.host, "127.0.0.1");
        assert_eq!(n.id.len(), 40, "node id {:?}", n.id);
    }
    assert_eq!(side.masters().len(), masters);
    // 6.2 has no CLUSTER SHARDS: the map came from CLUSTER SLOTS.
    let shards: redis::RedisResult<redis::Value> = redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query(&mut c.nodes[0].conn());
    assert_eq!(shards.is_err(), version == Version::Redis62, "{shards:?}");

    // slot() == CLUSTER KEYSLOT, for random keys with and without hash tags.
    let conn = std::cell::RefCell::new(c.nodes[0].conn());
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let key = proptest::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            1 => Just(b'{'),
            1 => Just(b'}'),
        ],
        0..24,
    );
    runner
        .run(&proptest::collection::vec(key, 50), |keys| {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("CLUSTER").arg("KEYSLOT").arg(k.as_slice());
            }
            let server: Vec<u16> = p.query(&mut *conn.borrow_mut()).expect("KEYSLOT");
            for (k, s) in keys.iter().zip(server) {
                prop_assert_eq!(slot(k), s, "key {:?}", String::from_utf8_lossy(k));
            }
            Ok(())
        })
        .unwrap();
    for k in [
        &b"foo"[..],
        b"{user1000}.following",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"{}",
        b"",
    ] {
        let s: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut *conn.borrow_mut())
            .unwrap();
        assert_eq!(slot(k), s);
    }
    // The side routes a key to the master the server names.
    for i in 0..50 {
        let key = format!("route:{i}");
        let url = side.node_for_key(key.as_bytes()).expect("served");
        let mut direct = c.conn_for(key.as_bytes());
        let port: u16 = redis::cmd("CONFIG")
            .arg("GET")
            .arg("port")
            .query::<Vec<String>>(&mut direct)
            .unwrap()[1]
            .parse()
            .unwrap();
        assert_eq!(url.port, port, "{key}");
    }
}

#[test]
fn map_of_redis_6_2_via_cluster_slots() {
    check_map(Version::Redis62, 3);
}

#[test]
fn map_of_redis_7_0_via_cluster_shards() {
    check_map(Version::Redis70, 4);
}

#[test]
fn map_of_valkey_9_1_via_cluster_shards() {
    check_map(Version::Valkey91, 3);
}

#[test]
fn detection_seeds_and_refusals() {
    let standalone = Server::start(Version::Redis70);
    let side = spec(&standalone.url()).resolve(LIMIT).unwrap();
    assert!(matches!(side, Side::Standalone(_)), "{side:?}");

    let other = Server::start(Version::Redis70);
    let two = format!("redis://{},{}", standalone.addr(), other.addr());
    let e = spec(&two).resolve(LIMIT).unwrap_err();
    assert!(matches!(e, SideError::NotACluster { .. }), "{e}");
    assert!(e.to_string().contains("not a cluster node"), "{e}");

    let c = Cluster::start(Version::Valkey91, 3, 0);
    // The first seed is down: the next one answers.
    let dead = common::cluster::cluster_port();
    let url = format!("redis://127.0.0.1:{dead},{}", c.nodes[1].addr());
    let side = spec(&url).resolve(LIMIT).unwrap();
    assert!(side.is_cluster());
    assert_eq!(side.masters().len(), 3);

    // A cluster has only db 0.
    let e = spec(&format!("{}/2", c.url())).resolve(LIMIT).unwrap_err();
    assert!(matches!(e, SideError::ClusterDb { db: 2, .. }), "{e}");

    // The address map: every announced 127.0.0.1:P is reached as localhost:P.
    let map: BTreeMap<String, String> = c
        .nodes
        .iter()
        .map(|n| (n.addr(), format!("localhost:{}", n.port())))
        .collect();
    let side = SideSpec::parse(&c.url(), &TlsOptions::default(), &map)
        .unwrap()
        .resolve(LIMIT)
        .unwrap();
    let Side::Cluster(mut topo) = side else {
        panic!("not a cluster")
    };
    for s in topo.map().shards() {
        assert_eq!(s.master.addr.host, "localhost");
        assert_eq!(s.master.announced.host, "127.0.0.1");
        assert_eq!(s.master.addr.port, s.master.announced.port);
    }
    // A refresh reads the same map again, through the mapped addresses.
    let before = topo.map().clone();
    topo.refresh().unwrap();
    assert_eq!(&before, topo.map());
}

/// `cutover run` (proxy + cutover) refuses a cluster source (it would serve and copy one
/// node's slots), with the reason and the way to copy a cluster (`cutover sync`), before
/// writing anything (exit 2). (`cutover sync` takes clusters: tests/sync_cluster.rs; a cluster
/// target in `cutover run`: tests/sync_cluster_shards.rs.)
#[test]
fn run_refuses_a_cluster_until_the_proxy_knows_clusters() {
    let c = Cluster::start(Version::Redis70, 3, 0);
    c.set_many(&[("k".into(), "v".into())]);
    let plain = Server::start(Version::Redis70);
    let run = |source: &str, target: &str| {
        let port = |_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string()
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args([
                "run",
                "--source",
                source,
                "--target",
                target,
                "--proxy-listen",
                &port(0),
                "--admin-listen",
                &port(1),
                "--metrics-listen",
                &port(2),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run cutover");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("cutover run did not refuse the cluster within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    let out = run(&c.url(), &plain.url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the source") && err.contains("Redis Cluster") && err.contains("cutover sync"),
        "{err}"
    );
    let n: i64 = redis::cmd("DBSIZE").query(&mut plain.conn()).unwrap();
    assert_eq!(n, 0, "nothing was written");
}
