//! Helpers for `tests/moves.rs`: values that do not compress, the writes of the matrix, and
//! where a write is expected after a move.

use std::time::{Duration, Instant};

use super::{Proxy, Raw, Server, differences, snapshot};

/// `len` printable bytes that LZF cannot compress (so a `DUMP` payload is as big as the
/// value), different for every `seed`.
pub fn value(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for i in 0..8 {
            if out.len() == len {
                break;
            }
            out.push(b'a' + ((x >> (i * 8)) as u8 % 26));
        }
    }
    out
}

/// The primary and the other side, as the proxy's status names them now.
pub fn sides<'a>(
    proxy: &Proxy,
    source: &'a Server,
    target: &'a Server,
) -> (&'a Server, &'a Server) {
    let status = proxy.status_json();
    if status["primary"] == "target" {
        (target, source)
    } else {
        (source, target)
    }
}

/// Waits (with a deadline) until both sides hold the same keys and values, `ignore`d keys
/// excepted; the differences otherwise.
pub fn wait_equal(
    source: &Server,
    target: &Server,
    ignore: &[String],
    limit: Duration,
) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + limit;
    loop {
        let mut a = snapshot(&mut source.conn());
        let mut b = snapshot(&mut target.conn());
        for k in ignore {
            a.remove(k);
            b.remove(k);
        }
        // (Values may be megabytes long: each difference is shown cut short.)
        let differ: Vec<String> = differences(&a, &b, 5)
            .into_iter()
            .map(|d| d.chars().take(300).collect())
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(differ);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection through the proxy that has been used before the move: on the shared
/// connection (`pin: None`) or pinned by `SELECT 0` / `CLIENT SETNAME` (its own connection).
pub fn warm_client(proxy: &Proxy, pin: Option<&str>, tag: &str) -> Raw {
    let mut c = Raw::connect(&proxy.addr());
    match pin {
        Some("select") => assert_eq!(c.cmd_str(&["SELECT", "0"]), "+OK\r\n"),
        Some(_) => assert_eq!(
            c.cmd_str(&["CLIENT", "SETNAME", &format!("w-{tag}")]),
            "+OK\r\n"
        ),
        None => {}
    }
    assert_eq!(c.cmd_str(&["SET", &format!("warm:{tag}"), "1"]), "+OK\r\n");
    c
}
