//! A side a link writes to that is too small (issue 20, eviction): a real replica never
//! evicts, but a link writes into a primary, which evicts on its own when full.
//!
//! - A target whose `maxmemory` cannot hold what the source uses is refused at the start,
//!   with the numbers (status), and the switch with it.
//! - A target that evicts while the link writes (`maxmemory 8mb allkeys-lru`, 60,000 keys of
//!   200 B through the proxy): the evictions are counted (status, gauge), the first switch is
//!   refused naming them.
//! - An old side that fills up during the overlap (its `maxmemory` lowered mid-stream): the
//!   rollback is unsafe and refused.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, Server, Version, cli, step, wait_streaming};

/// `n` keys `prefix:i` of 200 bytes, in pipelines of 1,000.
fn fill(c: &mut redis::Connection, prefix: &str, n: usize) {
    let value = "v".repeat(200);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.cmd("SET")
                .arg(format!("{prefix}:{i}"))
                .arg(&value)
                .ignore();
        }
        let _: () = p.query(c).unwrap();
    }
}

fn wait_status(
    proxy: &Proxy,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = proxy.status_json();
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SMALL: &[&str] = &["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"];

#[test]
fn a_target_too_small_for_the_source_is_refused_at_the_start() {
    let source = Server::start(Version::Redis70);
    fill(&mut source.conn(), "k", 60_000);
    let target = Server::start_with(Version::Redis70, SMALL);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let s = wait_status(&proxy, "the start refused", |s| {
        s["sync"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no room"))
    });
    let e = s["sync"]["last_error"].as_str().unwrap();
    assert!(
        e.contains("8.0 MiB") && e.contains("allkeys-lru") && e.contains("evict"),
        "{e}"
    );
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut target.conn()).unwrap();
    assert_eq!(dbsize, 0, "nothing was written");
    let (code, _, err) = cli(&proxy, &["switch"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(proxy.status_json()["primary"], "source");
}

#[test]
fn a_target_that_evicts_while_the_link_writes_refuses_the_switch() {
    let source = Server::start(Version::Redis70);
    let target = Server::start_with(Version::Redis70, SMALL);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    fill(&mut proxy.conn(), "k", 60_000);
    wait_streaming(&proxy);
    let s = wait_status(&proxy, "evictions counted", |s| {
        s["sync"]["evicted_keys"].as_u64().unwrap_or(0) > 0
    });
    eprintln!("evicted: {}", s["sync"]["evicted_keys"]);
    let metrics = proxy.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("cutover_sync_evicted_keys{direction=\"forward\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
    for args in [&["switch"][..], &["switch", "--force"]] {
        let (code, _, err) = cli(&proxy, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("evicted"), "{err}");
    }
    assert_eq!(proxy.status_json()["primary"], "source");
}

#[test]
fn an_old_side_that_fills_up_during_the_overlap_makes_the_rollback_unsafe() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    step(&proxy, "switch");
    let mut c = proxy.conn();
    fill(&mut c, "a", 20_000);
    wait_status(&proxy, "caught up", |s| s["rollback_safe"] == true);
    let mut direct = source.conn();
    let info: String = redis::cmd("INFO").arg("memory").query(&mut direct).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    for (k, v) in [
        ("maxmemory-policy", "allkeys-lru".to_string()),
        ("maxmemory", (used * 3 / 4).to_string()),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut direct)
            .unwrap();
    }
    fill(&mut c, "b", 10_000);
    let s = wait_status(&proxy, "the rollback unsafe", |s| {
        s["rollback_safe"] == false
    });
    let why = s["cutover"]["rollback_unsafe_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("evicted"),
        "{s}\n{}",
        common::tail(&proxy.log(), 30000)
    );
    let (code, _, err) = cli(&proxy, &["rollback"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("evicted"), "{err}");
    assert_eq!(proxy.status_json()["primary"], "target");
}
