//! `cluster::ClusterWriter` against a real cluster being resharded: single-slot transactions
//! (`INCR` of a counter + the slot's position key, hash-tagged into the slot) applied in
//! rounds while `redis-cli --cluster reshard` moves 1,000 slots (with their keys) from one
//! master to another. Every counter ends equal to the number of rounds and every position key
//! to the last round: no transaction lost, none applied twice, none split across two nodes,
//! positions never behind their data.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Version;
use common::cluster::{Cluster, run_cli};
use cutover::cluster::slot::tag_for;
use cutover::cluster::{ClusterWriter, SideSpec, SlotTxn, Topology};
use cutover::config::TlsOptions;

fn node_id(c: &Cluster, port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut c.node(port).conn())
        .expect("CLUSTER MYID")
}

fn reshard_under_load(version: Version) {
    let c = Cluster::start(version, 3, 0);
    let spec = SideSpec::parse(&c.seeds_url(), &TlsOptions::default(), &Default::default()).unwrap();
    let topo = Topology::discover(&spec.seeds, &spec.address_map, Duration::from_secs(5)).unwrap();
    let mut writer = ClusterWriter::new(topo, Duration::from_secs(5));
    // 100 slots among the first 1,000 (the ones the reshard moves) and 50 spread everywhere.
    let mut slots: Vec<u16> = (0..100).map(|i| i * 10).collect();
    slots.extend((0..50u32).map(|i| ((i * 327 + 1500) % 16384) as u16));
    slots.sort_unstable();
    slots.dedup();
    let keys: Vec<(u16, String, String)> = slots
        .iter()
        .map(|&s| {
            let tag = tag_for(s);
            (s, format!("{{{tag}}}:counter"), format!("cutover:position:{{{tag}}}"))
        })
        .collect();

    let ranges = c.slot_ranges();
    let owner = |slot: i64| ranges.iter().find(|r| r.0 <= slot && slot <= r.1).unwrap().2;
    let (from, to) = (node_id(&c, owner(0)), node_id(&c, owner(16383)));
    let stop = Arc::new(AtomicBool::new(false));
    let seed = c.nodes[0].addr();
    let resharder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Let a few rounds apply first.
            std::thread::sleep(Duration::from_millis(300));
            let args: Vec<String> = [
                "--cluster", "reshard", &seed, "--cluster-from", &from, "--cluster-to", &to,
                "--cluster-slots", "1000", "--cluster-yes",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let out = run_cli(&args, Duration::from_secs(180));
            stop.store(true, Ordering::SeqCst);
            out
        })
    };
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut after_stop = 0;
    while after_stop < 20 && rounds < 20_000 && started.elapsed() < Duration::from_secs(200) {
        rounds += 1;
        let txns: Vec<SlotTxn> = keys
            .iter()
            .map(|(s, counter, pos)| SlotTxn {
                slot: *s,
                cmds: vec![
                    vec![b"INCR".to_vec(), counter.clone().into_bytes()],
                    vec![b"SET".to_vec(), pos.clone().into_bytes(), rounds.to_string().into_bytes()],
                ],
            })
            .collect();
        let replies = writer.apply(&txns).unwrap_or_else(|e| panic!("round {rounds}: {e}"));
        for (r, (_, counter, _)) in replies.iter().zip(&keys) {
            let expect = format!("*2\r\n:{rounds}\r\n+OK\r\n");
            assert_eq!(String::from_utf8_lossy(r), expect, "{counter} in round {rounds}");
        }
        if stop.load(Ordering::SeqCst) {
            after_stop += 1;
        }
    }
    let (ok, out, err) = resharder.join().unwrap();
    assert!(ok, "reshard failed:\n{}\n{}", common::tail(&out, 3000), common::tail(&err, 3000));
    assert!(after_stop >= 20, "the writer stopped early: {rounds} rounds");
    c.wait_ok(Duration::from_secs(30));
    // The reshard happened while the writer ran, and it was redirected.
    assert_eq!(c.slot_ranges().iter().find(|r| r.0 <= 500 && 500 <= r.1).unwrap().2, owner(16383));
    assert!(writer.moved > 0, "no MOVED seen: the test did not exercise a reshard");
    eprintln!(
        "{rounds} rounds of {} transactions; MOVED {} times, waited {} times",
        keys.len(),
        writer.moved,
        writer.waited
    );
    // Independent check, each key read from the master the servers name.
    for (_, counter, pos) in &keys {
        let n: u64 = redis::cmd("GET").arg(counter).query(&mut c.conn_for(counter.as_bytes())).unwrap();
        assert_eq!(n, rounds, "{counter}");
        let p: u64 = redis::cmd("GET").arg(pos).query(&mut c.conn_for(pos.as_bytes())).unwrap();
        assert_eq!(p, rounds, "{pos}");
    }
}

#[test]
fn single_slot_transactions_survive_a_target_reshard_7_0() {
    reshard_under_load(Version::Redis70);
}

#[test]
fn single_slot_transactions_survive_a_target_reshard_valkey_9_1() {
    reshard_under_load(Version::Valkey91);
}
