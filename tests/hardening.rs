//! Regression tests for hostile and unusual input (issue 12), against real servers.
//!
//! Each test names the defect it guards. Every wait is bounded; each test starts its own
//! server(s) and `cutover run`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The process is alive and the proxy still answers a well-behaved client.
fn assert_serving(proxy: &mut Proxy) {
    assert!(
        proxy.is_running(),
        "the proxy process died; log:\n{}",
        tail(&proxy.log(), 4000)
    );
    let mut raw = Raw::connect(&proxy.addr());
    if let Some(auth) = proxy_auth(proxy) {
        assert_eq!(raw.cmd_str(&["AUTH", &auth]), "+OK\r\n");
    }
    assert_eq!(raw.cmd_str(&["PING"]), "+PONG\r\n");
    assert!(
        !proxy.log().contains("panicked at"),
        "the proxy logged a panic:\n{}",
        tail(&proxy.log(), 4000)
    );
}

fn proxy_auth(proxy: &Proxy) -> Option<String> {
    let url = proxy.url();
    let rest = url.strip_prefix("redis://")?;
    let (cred, _) = rest.rsplit_once('@')?;
    Some(cred.rsplit_once(':').map_or(cred, |(_, p)| p).to_string())
}

/// Writes `bytes` and then reads until the peer closes or `limit` passes; `(read, closed)`.
/// A write refused because the peer already closed counts as closed.
fn blast(addr: &str, bytes: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_write_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

// ----- 1: the admin listener's decoder --------------------------------------------------------

#[test]
fn admin_refuses_deeply_nested_frame_before_auth() {
    let server = Server::start(Version::Redis70);
    let mut proxy = Proxy::start(&server.url(), &["--admin-token", "tok"]);
    let (reply, closed) = blast(
        &proxy.admin_addr(),
        &b"*1\r\n".repeat(100_000),
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR Protocol error") && text.contains("nesting"),
        "{text}"
    );
    assert!(
        closed,
        "the admin connection stays open after a protocol error"
    );
    // A frame too big for an unauthenticated client is refused too, before it is buffered.
    let mut big = encode(&["AUTH", &"x".repeat(100_000)]);
    big.truncate(50_000);
    let (reply, closed) = blast(&proxy.admin_addr(), &big, Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&reply).contains("longer than"),
        "{}",
        show(&reply)
    );
    assert!(closed);
    assert_serving(&mut proxy);
    // The admin listener still works for the CLI.
    let mut admin = Raw::connect(&proxy.admin_addr());
    assert_eq!(admin.cmd_str(&["AUTH", "tok"]), "+OK\r\n");
    assert!(admin.cmd_str(&["STATUS"]).starts_with('$'));
}
