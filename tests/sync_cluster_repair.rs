//! The early-expiry repair (`sync/engine/repair.rs`) on a link of a cluster source: the keys
//! a link copies back from its master are read one slot per transaction (a transaction
//! across slots is refused by a cluster node with `CROSSSLOT`, and the keys stayed
//! unrepaired).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::sync_cluster::{port_of, read_log, start_sync};
use common::{Server, Version};

/// Keys the target lost on its own (deleted there, as an early expiry would) and the source
/// then refreshes, several of them in one pipeline per master (so a link's stream batch holds
/// keys of several slots), are all copied back from the source.
#[test]
fn keys_of_several_slots_lost_on_the_target_are_copied_back_from_their_masters() {
    let cluster = Cluster::start(Version::Redis70, 3, 0);
    let keys: Vec<String> = (0..30).map(|i| format!("session:{i}")).collect();
    let pairs: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), format!("v-{k}"))).collect();
    cluster.set_many(&pairs);
    let target = Server::start(Version::Redis70);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sync.log");
    let mut sync = start_sync(&cluster.seeds_url(), &target.url(), &log, &[]);
    let mut t = target.conn();

    let present = |t: &mut redis::Connection| -> usize {
        keys.iter()
            .filter(|k| redis::cmd("EXISTS").arg(k).query::<i64>(t).unwrap() == 1)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while present(&mut t) < keys.len() {
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "the snapshot did not arrive; log:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Lost on the target (as a key its own clock expired first)…
    for k in &keys {
        let _: i64 = redis::cmd("DEL").arg(k).query(&mut t).unwrap();
    }
    // …then refreshed on the source: one pipeline per master.
    let mut by_master: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
    for k in &keys {
        by_master.entry(port_of(&cluster, k)).or_default().push(k);
    }
    assert!(
        by_master.values().any(|ks| ks.len() > 1),
        "some master serves several of the keys"
    );
    for (port, ks) in &by_master {
        let mut c = cluster.node(*port).conn();
        let mut pipe = redis::pipe();
        for k in ks {
            pipe.cmd("PEXPIRE").arg(k).arg(600_000);
        }
        let replies: Vec<i64> = pipe.query(&mut c).unwrap();
        assert!(
            replies.iter().all(|r| *r == 1),
            "source refreshed {replies:?}"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<String>>(&mut t)
                    .unwrap()
                    .as_deref()
                    != Some(format!("v-{k}").as_str())
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline && sync.try_wait().unwrap().is_none(),
            "{} keys not copied back: {missing:?}; log:\n{}",
            missing.len(),
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut t).unwrap();
        assert!(ttl > 500_000, "{k}: copied with its TTL, got {ttl}");
    }
    let text = read_log(&log);
    assert!(!text.contains("CROSSSLOT"), "log:\n{text}");
    sync.kill().unwrap();
    sync.wait().unwrap();
}
