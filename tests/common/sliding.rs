//! The sliding-TTL workload of issue 20 (`tests/ttl.rs`, `tests/shadow_ttl.rs`): sessions
//! `sess:<i>` with `PX 100`, four clients on the same keys refreshing random ones
//! (`PEXPIRE k 100`, `GETEX k PX 100`, `SET k v XX KEEPTTL`, each followed by `SET k v PX
//! 100` when the key had expired), and optionally rate-limit counters `ctr:<i>` (`INCR` +
//! `PEXPIRE k 150 NX`).

use std::time::{Duration, Instant};

use super::Proxy;

/// One client of the workload on `url` for `run` (at most 2,000,000 commands); `seed`
/// picks the keys. With `counters` > 0 every fourth command is a counter's, else the
/// client only refreshes sessions. Returns the commands sent.
pub fn sliding_client(url: String, seed: u64, keys: u64, counters: u64, run: Duration) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let started = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    let mut n = 0u64;
    let cycle = if counters > 0 { 4 } else { 3 };
    while started.elapsed() < run && n < 2_000_000 {
        n += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if n % cycle == 3 {
            let k = format!("ctr:{}", x % counters);
            let _: i64 = redis::cmd("INCR").arg(&k).query(&mut c).unwrap();
            let _: i64 = redis::cmd("PEXPIRE")
                .arg(&k)
                .arg(150)
                .arg("NX")
                .query(&mut c)
                .unwrap();
            continue;
        }
        let k = format!("sess:{}", x % keys);
        touch_session(&mut c, &k, &format!("v{seed}-{n}"), n % cycle);
    }
    n
}

/// One session step on `k`: refreshed by `op % 3` (`PEXPIRE k 100`, `GETEX k PX 100`, `SET k
/// v XX KEEPTTL`), and set again with `PX 100` when it had expired.
pub fn touch_session(c: &mut redis::Connection, k: &str, v: &str, op: u64) {
    let alive = match op % 3 {
        0 => {
            redis::cmd("PEXPIRE")
                .arg(k)
                .arg(100)
                .query::<i64>(c)
                .unwrap()
                == 1
        }
        1 => redis::cmd("GETEX")
            .arg(k)
            .arg("PX")
            .arg(100)
            .query::<Option<String>>(c)
            .unwrap()
            .is_some(),
        // A new value, the TTL kept (`XX`: only a session still alive).
        _ => redis::cmd("SET")
            .arg(k)
            .arg(v)
            .arg("XX")
            .arg("KEEPTTL")
            .query::<Option<String>>(c)
            .unwrap()
            .is_some(),
    };
    if !alive {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(v)
            .arg("PX")
            .arg(100)
            .query(c)
            .unwrap();
    }
}

/// The workload through `proxy`: the `keys` sessions set with `PX 100`, then four
/// [`sliding_client`]s for `run`; returns the commands they sent.
pub fn sliding_workload(proxy: &Proxy, keys: u64, counters: u64, run: Duration) -> u64 {
    let mut c = proxy.conn();
    for i in 0..keys {
        let _: () = redis::cmd("SET")
            .arg(format!("sess:{i}"))
            .arg("v0")
            .arg("PX")
            .arg(100)
            .query(&mut c)
            .unwrap();
    }
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let url = proxy.url();
            std::thread::spawn(move || sliding_client(url, t, keys, counters, run))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}
