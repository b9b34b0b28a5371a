//! `cutover finish` in the replica overlap returns only once both links have stopped
//! writing (issue 19, part 3): an applying link blocked inside a write to a paused old side
//! when `finish` comes must not write `cutover:position` back after `finish` removed it.

mod common;

use std::time::{Duration, Instant};

use common::sides::{counters_then_switch, incr_counters};
use common::{Proxy, Server, Version, step};

/// How long the old side holds the applying link's writes (`CLIENT PAUSE … WRITE`): longer
/// than `finish`'s own wait for the link to catch up (the controller's 5 s timeout), so that
/// `finish` stops the link while its write is still in flight.
const PAUSE_MS: u64 = 7000;

fn exists(server: &Server, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query(&mut server.conn())
        .unwrap();
    n == 1
}

/// Clients of `server` named `cutover-sync` (the links' writers).
fn sync_writers(server: &Server) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.conn())
        .unwrap();
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == "name=cutover-sync"))
        .count()
}

#[test]
fn finish_returns_only_once_both_links_stopped_writing() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let mut c = counters_then_switch(&proxy);
    // The reverse link now applies into the source (the old side): hold its writes there.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE_MS)
        .arg("WRITE")
        .query(&mut source.conn())
        .unwrap();
    let paused_at = Instant::now();
    incr_counters(&mut c, 50);
    // (The link has a batch in flight to the paused source now.)
    std::thread::sleep(Duration::from_millis(200));
    let report = step(&proxy, "finish");
    assert_eq!(report["action"], "finish", "{report}");
    let finished_after = paused_at.elapsed();
    eprintln!("finish returned {finished_after:?} after the pause began");
    assert!(
        finished_after >= Duration::from_millis(PAUSE_MS),
        "finish returned {finished_after:?} after the pause began, before the paused write of the link could end"
    );
    // Nothing of cutover's comes back: no link writes any more.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        for (name, server) in [("source", &source), ("target", &target)] {
            assert!(
                !exists(server, "cutover:position"),
                "cutover:position is on the {name} after finish returned (a link wrote after it)"
            );
            assert!(
                !exists(server, "cutover:switched"),
                "cutover:switched is on the {name} after finish returned"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, server) in [("source", &source), ("target", &target)] {
        assert_eq!(
            sync_writers(server),
            0,
            "a link's writer is still connected to the {name} after finish"
        );
    }
    // The clients go on writing to the target alone.
    let _: i64 = redis::cmd("INCR").arg("after").query(&mut c).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !exists(&source, "after"),
        "the source got a write after finish"
    );
}
