//! How long a client through the proxy waits while something runs: a pinger on its own
//! connection, `PING` every 2 ms, the longest round trip kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Proxy;

/// Runs `f` while a client pings through `proxy`; returns what `f` returned and the longest
/// `PING` round trip seen meanwhile (a failed `PING` counts with the time it took).
pub fn longest_ping_during<T>(proxy: &Proxy, f: impl FnOnce() -> T) -> (T, Duration) {
    let client = redis::Client::open(proxy.url()).expect("proxy url");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = Arc::clone(&stop);
        let started = Arc::clone(&started);
        std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            let mut conn = client
                .get_connection_with_timeout(Duration::from_secs(5))
                .ok();
            let deadline = Instant::now() + Duration::from_secs(60);
            started.store(true, Ordering::Release);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let t = Instant::now();
                let ok = match conn.as_mut() {
                    Some(c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        redis::cmd("PING").query::<String>(c).is_ok()
                    }
                    None => false,
                };
                longest = longest.max(t.elapsed());
                if !ok {
                    conn = client
                        .get_connection_with_timeout(Duration::from_secs(5))
                        .ok();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            longest
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !started.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    let out = f();
    stop.store(true, Ordering::Release);
    let longest = pinger.join().expect("pinger");
    (out, longest)
}
