//! `cluster::ClusterWriter` against a real cluster being resharded: single-slot transactions
//! (`INCR` of a counter + the slot's position key, hash-tagged into the slot) applied in
//! rounds while `redis-cli --cluster reshard` moves 1,000 slots (with their keys) from one
//! master to another. Every counter ends equal to the number of rounds and every position key
//! to the last round: no transaction lost, none applied twice, none split across two nodes,
//! positions never behind their data. Then connections killed mid-pipeline (`CLIENT KILL`)
//! and a `CLUSTER FAILOVER` of a master under the same load: each lost transaction is resolved
//! by its check (the position key), never applied twice. And a transaction of one command
//! goes without `MULTI`/`EXEC`, its reply shaped as `EXEC`'s.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Version;
use common::cluster::{Cluster, run_cli};
use cutover::cluster::slot::tag_for;
use cutover::cluster::writer::TxnResult;
use cutover::cluster::{ClusterWriter, SideSpec, SlotTxn, Topology};
use cutover::config::TlsOptions;

fn node_id(c: &Cluster, port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut c.node(port).conn())
        .expect("CLUSTER MYID")
}

/// A writer to the cluster at `url` (its slot map read through it).
fn writer_for(url: &str) -> ClusterWriter {
    let spec = SideSpec::parse(url, &TlsOptions::default(), &Default::default()).unwrap();
    let topo = Topology::discover(&spec.seeds, &spec.address_map, Duration::from_secs(5)).unwrap();
    ClusterWriter::new(topo, Duration::from_secs(5))
}

fn reshard_under_load(version: Version) {
    let c = Cluster::start(version, 3, 0);
    let mut writer = writer_for(&c.seeds_url());
    // 100 slots among the first 1,000 (the ones the reshard moves) and 50 spread everywhere.
    let mut slots: Vec<u16> = (0..100).map(|i| i * 10).collect();
    slots.extend((0..50u32).map(|i| ((i * 327 + 1500) % 16384) as u16));
    slots.sort_unstable();
    slots.dedup();
    let keys: Vec<(u16, String, String)> = slots
        .iter()
        .map(|&s| {
            let tag = tag_for(s);
            (
                s,
                format!("{{{tag}}}:counter"),
                format!("cutover:position:{{{tag}}}"),
            )
        })
        .collect();

    let ranges = c.slot_ranges();
    let owner = |slot: i64| {
        ranges
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .unwrap()
            .2
    };
    let (from, to) = (node_id(&c, owner(0)), node_id(&c, owner(16383)));
    let stop = Arc::new(AtomicBool::new(false));
    let seed = c.nodes[0].addr();
    let resharder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Let a few rounds apply first.
            std::thread::sleep(Duration::from_millis(300));
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
                    vec![
                        b"SET".to_vec(),
                        pos.clone().into_bytes(),
                        rounds.to_string().into_bytes(),
                    ],
                ],
                check: None,
            })
            .collect();
        let replies = writer
            .apply(&txns)
            .unwrap_or_else(|e| panic!("round {rounds}: {e}"));
        for (r, (_, counter, _)) in replies.iter().zip(&keys) {
            let expect = format!("*2\r\n:{rounds}\r\n+OK\r\n");
            assert_eq!(
                r,
                &TxnResult::Exec(expect.into_bytes()),
                "{counter} in round {rounds}"
            );
        }
        if stop.load(Ordering::SeqCst) {
            after_stop += 1;
        }
    }
    let (ok, out, err) = resharder.join().unwrap();
    assert!(
        ok,
        "reshard failed:\n{}\n{}",
        common::tail(&out, 3000),
        common::tail(&err, 3000)
    );
    assert!(
        after_stop >= 20,
        "the writer stopped early: {rounds} rounds"
    );
    c.wait_ok(Duration::from_secs(30));
    // The reshard happened while the writer ran, and it was redirected.
    assert_eq!(
        c.slot_ranges()
            .iter()
            .find(|r| r.0 <= 500 && 500 <= r.1)
            .unwrap()
            .2,
        owner(16383)
    );
    assert!(
        writer.moved > 0,
        "no MOVED seen: the test did not exercise a reshard"
    );
    eprintln!(
        "{rounds} rounds of {} transactions; MOVED {} times, waited {} times",
        keys.len(),
        writer.moved,
        writer.waited
    );
    // Independent check, each key read from the master the servers name.
    for (_, counter, pos) in &keys {
        let n: u64 = redis::cmd("GET")
            .arg(counter)
            .query(&mut c.conn_for(counter.as_bytes()))
            .unwrap();
        assert_eq!(n, rounds, "{counter}");
        let p: u64 = redis::cmd("GET")
            .arg(pos)
            .query(&mut c.conn_for(pos.as_bytes()))
            .unwrap();
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

/// The load of one round: `INCR` + position, with the position as the check.
fn round(keys: &[(u16, String, String)], n: u64) -> Vec<SlotTxn> {
    keys.iter()
        .map(|(s, counter, pos)| SlotTxn {
            slot: *s,
            cmds: vec![
                vec![b"INCR".to_vec(), counter.clone().into_bytes()],
                vec![
                    b"SET".to_vec(),
                    pos.clone().into_bytes(),
                    n.to_string().into_bytes(),
                ],
            ],
            check: Some((pos.clone().into_bytes(), n.to_string().into_bytes())),
        })
        .collect()
}

#[test]
fn lost_connections_and_a_failover_apply_exactly_once() {
    let c = Cluster::start(Version::Redis70, 3, 1);
    let mut writer = writer_for(&c.url());
    let keys: Vec<(u16, String, String)> = (0..120u32)
        .map(|i| {
            let s = ((i * 137) % 16384) as u16;
            let tag = tag_for(s);
            (
                s,
                format!("{{{tag}}}:counter"),
                format!("cutover:position:{{{tag}}}"),
            )
        })
        .collect();
    let masters = c.master_ports();
    let stop = Arc::new(AtomicBool::new(false));
    // Kill every normal connection of the masters (the writer's), every 30 ms, for 2 s.
    let killer = {
        let stop = Arc::clone(&stop);
        let addrs: Vec<String> = masters.iter().map(|p| c.node(*p).url()).collect();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut kills = 0;
            while started.elapsed() < Duration::from_secs(2) && !stop.load(Ordering::SeqCst) {
                for a in &addrs {
                    let mut k = common::connect(&redis::Client::open(a.as_str()).unwrap());
                    let n: i64 = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg("normal")
                        .arg("SKIPME")
                        .arg("yes")
                        .query(&mut k)
                        .unwrap();
                    kills += n;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            kills
        })
    };
    let mut rounds = 0u64;
    let started = Instant::now();
    while !killer.is_finished() && started.elapsed() < Duration::from_secs(30) {
        rounds += 1;
        writer
            .apply(&round(&keys, rounds))
            .unwrap_or_else(|e| panic!("round {rounds}: {e}"));
    }
    let kills = killer.join().unwrap();
    assert!(kills > 0, "no connection was killed");
    let resolved_by_kill = writer.resolved;

    // A graceful failover of the master of the first key's slot, under the same load.
    let ranges = c.slot_ranges();
    let slot = keys[0].0 as i64;
    let old = ranges
        .iter()
        .find(|r| r.0 <= slot && slot <= r.1)
        .unwrap()
        .2;
    let replica = c
        .nodes
        .iter()
        .find(|n| {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut n.conn())
                .unwrap();
            info.contains(&format!("master_port:{old}\r"))
        })
        .expect("a replica of the master")
        .port();
    let failover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let url = format!("redis://127.0.0.1:{replica}");
        let mut r = common::connect(&redis::Client::open(url).unwrap());
        let _: () = redis::cmd("CLUSTER").arg("FAILOVER").query(&mut r).unwrap();
    });
    let mut after = 0;
    let started = Instant::now();
    while after < 30 && started.elapsed() < Duration::from_secs(60) {
        rounds += 1;
        writer
            .apply(&round(&keys, rounds))
            .unwrap_or_else(|e| panic!("round {rounds}: {e}"));
        if failover.is_finished() && c.master_ports().contains(&replica) {
            after += 1;
        }
    }
    failover.join().unwrap();
    assert!(
        c.master_ports().contains(&replica),
        "the failover did not happen"
    );
    eprintln!(
        "{rounds} rounds; {kills} connections killed; resolved by check {} ({} during the kills); MOVED {}, waited {}",
        writer.resolved, resolved_by_kill, writer.moved, writer.waited
    );
    assert!(writer.moved > 0, "the failover did not redirect the writer");
    c.wait_ok(Duration::from_secs(30));
    for (_, counter, pos) in &keys {
        let n: u64 = redis::cmd("GET")
            .arg(counter)
            .query(&mut c.conn_for(counter.as_bytes()))
            .unwrap();
        assert_eq!(n, rounds, "{counter}");
        let p: u64 = redis::cmd("GET")
            .arg(pos)
            .query(&mut c.conn_for(pos.as_bytes()))
            .unwrap();
        assert_eq!(p, rounds, "{pos}");
    }
}

/// The calls of `cmd` on every master so far (`INFO commandstats`).
fn calls(c: &Cluster, cmd: &str) -> u64 {
    c.master_ports()
        .iter()
        .map(|p| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut c.node(*p).conn())
                .expect("INFO commandstats");
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// A transaction of one command goes without `MULTI`/`EXEC` (one command is atomic by itself;
/// `MULTI` + `EXEC` around it cost the target ~65% more CPU, and a snapshot is mostly such
/// transactions), its reply handed back as `EXEC`'s (`*1` + the reply), a refusal as that
/// element's error; a transaction of two commands still goes in `MULTI … EXEC`.
#[test]
fn single_command_transactions_are_sent_without_multi() {
    let c = Cluster::start(Version::Redis70, 3, 0);
    let mut writer = writer_for(&c.url());
    let one = |s: u16, cmd: &[&[u8]]| SlotTxn {
        slot: s,
        cmds: vec![cmd.iter().map(|a| a.to_vec()).collect()],
        check: None,
    };
    let multi_before = calls(&c, "multi");
    // 300 slots spread over the three masters: a SET each, then a GET, an INCR of a string
    // (an error inside the "transaction") and an unknown command (refused at queue time).
    let slots: Vec<u16> = (0..300u32).map(|i| ((i * 547) % 16384) as u16).collect();
    let key = |s: u16| format!("{{{}}}:k", tag_for(s)).into_bytes();
    let sets: Vec<SlotTxn> = slots
        .iter()
        .map(|s| one(*s, &[b"SET", &key(*s), format!("v{s}").as_bytes()]))
        .collect();
    let replies = writer.apply(&sets).expect("apply");
    assert!(
        replies
            .iter()
            .all(|r| *r == TxnResult::Exec(b"*1\r\n+OK\r\n".to_vec())),
        "{replies:?}"
    );
    let s = slots[7];
    let k = key(s);
    let replies = writer
        .apply(&[
            one(s, &[b"GET", &k]),
            one(slots[8], &[b"INCR", &key(slots[8])]),
            one(slots[9], &[b"NOSUCHCOMMAND", &key(slots[9])]),
        ])
        .expect("apply");
    assert_eq!(
        replies[0],
        TxnResult::Exec(format!("*1\r\n$5\r\nv{s}\r\n").into_bytes())
    );
    for (r, want) in replies[1..].iter().zip([
        "*1\r\n-ERR value is not an integer",
        "*1\r\n-ERR unknown command",
    ]) {
        let TxnResult::Exec(r) = r else {
            panic!("{r:?}")
        };
        assert!(
            r.starts_with(want.as_bytes()),
            "{}",
            String::from_utf8_lossy(r)
        );
    }
    assert_eq!(
        calls(&c, "multi"),
        multi_before,
        "a single command was sent in MULTI"
    );
    // Two commands: still one transaction.
    let replies = writer
        .apply(&[SlotTxn {
            slot: s,
            cmds: vec![
                vec![b"APPEND".to_vec(), k.clone(), b"!".to_vec()],
                vec![b"GET".to_vec(), k.clone()],
            ],
            check: None,
        }])
        .expect("apply");
    let want = format!("v{s}!");
    assert_eq!(
        replies[0],
        TxnResult::Exec(
            format!("*2\r\n:{}\r\n${}\r\n{want}\r\n", want.len(), want.len()).into_bytes()
        )
    );
    assert_eq!(calls(&c, "multi"), multi_before + 1);
    for s in &slots[10..] {
        let mut conn = c.conn_for(&key(*s));
        let v: String = redis::cmd("GET").arg(key(*s)).query(&mut conn).unwrap();
        assert_eq!(v, format!("v{s}"));
    }
}
