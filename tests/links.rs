//! The replication links under what real applications send (issue 19): clients that `WAIT`
//! (and `WAITAOF`), streams in several databases across restarts, foreign writes on the
//! old side during the overlap. Against real servers, checked with an independent client.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::links::{MixedLoad, assert_same_dbs};
use common::{Proxy, Server, Version, step, tail, wait_streaming};

/// A client that writes, then waits for its write to reach a replica (`WAIT 1 100`, or
/// `WAITAOF`), every ~100 ms; before the first switch the only replica is our forward link,
/// after it the reverse link. Every time the wait says the replica has the write, the test
/// checks that the other side (the one the applying link writes) holds it.
struct Waiter {
    stop: Arc<AtomicBool>,
    /// The port of the current primary (0 while a move runs: nothing is checked then).
    primary: Arc<AtomicU64>,
    /// (waits, waits that counted the replica, violations).
    counts: Arc<Mutex<(u64, u64, Vec<String>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Waiter {
    fn start(proxy: &Proxy, wait: &'static [&'static str], sides: [(u16, String); 2]) -> Waiter {
        let stop = Arc::new(AtomicBool::new(false));
        let primary = Arc::new(AtomicU64::new(sides[0].0 as u64));
        let counts = Arc::new(Mutex::new((0, 0, Vec::new())));
        let (s, p, c) = (stop.clone(), primary.clone(), counts.clone());
        let url = proxy.url();
        let thread = std::thread::spawn(move || {
            let mut conn = common::connect(&redis::Client::open(url.as_str()).unwrap());
            let started = Instant::now();
            let mut i = 0u64;
            while !s.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(120) {
                i += 1;
                let before = p.load(Ordering::Acquire);
                let set = redis::cmd("SET").arg("w:key").arg(i).query::<()>(&mut conn);
                let reply = redis::cmd(wait[0])
                    .arg(&wait[1..])
                    .query::<redis::Value>(&mut conn);
                let after = p.load(Ordering::Acquire);
                let mut c = c.lock().unwrap();
                c.0 += 1;
                let counted = match (&set, &reply) {
                    (Ok(()), Ok(redis::Value::Int(n))) => *n >= 1,
                    // WAITAOF: [local, replicas]
                    (Ok(()), Ok(redis::Value::Array(v))) => {
                        matches!(v.get(1), Some(redis::Value::Int(n)) if *n >= 1)
                            || matches!(v.first(), Some(redis::Value::Int(n)) if *n >= 1)
                    }
                    _ => {
                        c.2.push(format!("{i}: {set:?} / {reply:?}"));
                        false
                    }
                };
                if counted {
                    c.1 += 1;
                }
                if counted && before == after && before != 0 && wait[0] == "WAIT" {
                    // The replica acknowledged: the old side holds the write now.
                    let other = &sides.iter().find(|(port, _)| *port as u64 != before).unwrap().1;
                    let got: Option<u64> = redis::cmd("GET")
                        .arg("w:key")
                        .query(&mut common::connect(&redis::Client::open(other.as_str()).unwrap()))
                        .unwrap();
                    if got != Some(i) {
                        // (A later write may have landed already only if this one did.)
                        c.2.push(format!(
                            "WAIT said the replica has SET w:key {i}, but the other side holds {got:?}"
                        ));
                    }
                }
                drop(c);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Waiter {
            stop,
            primary,
            counts,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("waiter");
        }
        self.counts.lock().unwrap().clone()
    }
}

/// The overlap under a mixed load plus a client that writes and waits: switch → rollback →
/// switch → finish, each move within the pause limit, and the waits keep their meaning.
fn moves_with_a_waiting_client(version: Version, args: &[&str], wait: &'static [&'static str]) {
    let source = Server::start_with(version, args);
    let target = Server::start_with(version, args);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let load = MixedLoad::start(&proxy.url(), 4, &[0, 3]);
    let waiter = Waiter::start(
        &proxy,
        wait,
        [(source.port(), source.url()), (target.port(), target.url())],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut pauses = Vec::new();
    for (verb, new_primary) in [
        ("switch", &target),
        ("rollback", &source),
        ("switch", &target),
    ] {
        waiter.primary.store(0, Ordering::Release);
        let report = step(&proxy, verb);
        waiter
            .primary
            .store(new_primary.port() as u64, Ordering::Release);
        let pause = report["pause_ms"].as_f64().unwrap();
        assert!(pause < 100.0, "{verb}: paused {pause} ms: {report}");
        pauses.push(pause);
        std::thread::sleep(Duration::from_millis(1200));
    }
    waiter.primary.store(0, Ordering::Release);
    load.hold();
    let report = step(&proxy, "finish");
    assert_eq!(report["action"], "finish", "{report}");
    let (waits, counted, bad) = waiter.finish();
    assert_same_dbs(&source, &target, &[(0, 0), (3, 3)], "after finish");
    let errors = load.errors();
    load.finish();
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(bad.is_empty(), "waits went wrong: {bad:?}");
    assert!(waits >= 20, "the waiter ran: {waits}");
    if wait[0] == "WAIT" {
        // Our link acknowledges as soon as it has applied the write (a handful may miss the
        // 100 ms around a move).
        assert!(
            counted * 10 >= waits * 9,
            "WAIT counted the link {counted} times of {waits}\nproxy log:\n{}",
            tail(&proxy.log(), 3000)
        );
    }
    eprintln!("pauses (ms): {pauses:?}; {counted}/{waits} waits counted a replica");
}

#[test]
fn a_client_that_waits_does_not_block_the_moves_redis_7_0() {
    moves_with_a_waiting_client(Version::Redis70, &[], &["WAIT", "1", "100"]);
}

#[test]
fn a_client_that_waits_for_the_aof_does_not_block_the_moves_valkey_9_1() {
    moves_with_a_waiting_client(
        Version::Valkey91,
        &["--appendonly", "yes", "--appendfsync", "everysec"],
        &["WAITAOF", "1", "0", "100"],
    );
}
