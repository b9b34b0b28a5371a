//! Helpers for tests that move the clients (`switch`, `rollback`) under real clients:
//! a config file of one's own, and both sides compared with an independent client.

use std::time::{Duration, Instant};

use super::{Server, differences, snapshot};

/// A `cutover.toml` with `text` (the directory lives as long as the returned guard).
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

/// Both sides hold the same data (db 0, cutover's keys excepted), within 10 s (the link
/// keeping the old side in step applies asynchronously).
pub fn assert_sides_equal(source: &Server, target: &Server, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let differ = differences(
            &snapshot(&mut source.conn()),
            &snapshot(&mut target.conn()),
            5,
        );
        if differ.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{label}: {differ:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SHA1 Redis names a script by (what `SCRIPT LOAD` answers), computed independently
/// of the proxy (`sha1sum`), for a script the test only ever sent as an `EVAL` body.
pub fn sha1_of(body: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha1sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The value of one series (`name{labels}` exactly as exposed) on a metrics page; 0 when absent.
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

/// `INCR n<i>` for `i` in `0..count` on `c` (a client's counters).
pub fn incr_counters(c: &mut redis::Connection, count: usize) {
    for i in 0..count {
        let _: i64 = redis::cmd("INCR").arg(format!("n{i}")).query(c).unwrap();
    }
}

/// Waits until `proxy` streams, writes 50 counters through it, and switches; returns the
/// client's connection.
pub fn counters_then_switch(proxy: &super::Proxy) -> redis::Connection {
    super::wait_streaming(proxy);
    let mut c = proxy.conn();
    incr_counters(&mut c, 50);
    super::step(proxy, "switch");
    c
}
