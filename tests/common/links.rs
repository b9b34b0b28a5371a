//! Helpers of the replication-link tests (`tests/links.rs`): a keyspace per database, and a
//! small mixed load through the proxy that can be held between two commands (on the paced
//! harness of `paced.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::paced::{LoadShared, Paced, pause_point};
use super::{Server, connect, differences, snapshot};

/// Every key of database `db` of `server` (cutover's own keys excepted), as [`snapshot`].
pub fn snapshot_db(server: &Server, db: u64) -> BTreeMap<String, (String, String, bool)> {
    let client = redis::Client::open(format!("{}/{db}", server.url())).unwrap();
    snapshot(&mut connect(&client))
}

/// Waits (bounded) until `a` and `b` hold the same keys in each of `dbs` (`map`: the
/// database of `b` that holds `a`'s database, when it differs); panics with the differences.
pub fn assert_same_dbs(a: &Server, b: &Server, dbs: &[(u64, u64)], label: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = Vec::new();
        for (da, db) in dbs {
            let sa = snapshot_db(a, *da);
            let sb = snapshot_db(b, *db);
            for d in differences(&sa, &sb, 5) {
                all.push(format!("db {da}->{db}: {d}"));
            }
        }
        if all.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the sides differ: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writer threads through the proxy: each writes its own counter and the shared keys of
/// each of `dbs` (even workers on their own backend connection, odd ones on the shared one),
/// on the one paced harness ([`Paced`]).
pub struct MixedLoad {
    pub paced: Paced,
}

impl MixedLoad {
    pub fn start(proxy_url: &str, workers: usize, dbs: &[u64]) -> MixedLoad {
        let mut paced = Paced::new();
        for w in 0..workers {
            let url = proxy_url.to_string();
            let dbs = dbs.to_vec();
            paced.spawn(move |shared| mixed_worker(w, &url, &dbs, shared));
        }
        MixedLoad { paced }
    }

    /// Holds every worker between two commands (everything sent is answered).
    pub fn hold(&self) {
        self.paced.hold()
    }

    pub fn release(&self) {
        self.paced.release()
    }

    pub fn errors(&self) -> Vec<String> {
        self.paced.errors()
    }

    pub fn finish(self) -> Arc<LoadShared> {
        self.paced.finish()
    }
}

fn mixed_worker(w: usize, url: &str, dbs: &[u64], shared: &LoadShared) {
    let client = redis::Client::open(url).unwrap();
    let mut c = connect(&client);
    if w % 2 == 0 {
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("worker-{w}"))
            .query(&mut c)
            .unwrap();
    }
    let mut db = 0;
    let started = Instant::now();
    let mut i: u64 = 0;
    while shared.running(started, i) {
        pause_point(shared);
        i += 1;
        let want = dbs[(i as usize / 7) % dbs.len()];
        if want != db {
            // (SELECT pins the session to its own backend connection.)
            if let Err(e) = redis::cmd("SELECT").arg(want).query::<()>(&mut c) {
                shared
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("worker {w} SELECT: {e}"));
                continue;
            }
            db = want;
        }
        let tag = format!("{w}:{i}");
        let cmd = match i % 6 {
            0 => redis::cmd("SET").arg("s:str").arg(&tag).clone(),
            1 => redis::cmd("RPUSH").arg("s:list").arg(&tag).clone(),
            2 => redis::cmd("LPOP").arg("s:list").clone(),
            3 => redis::cmd("HSET")
                .arg("s:hash")
                .arg(format!("f{}", i % 10))
                .arg(&tag)
                .clone(),
            4 => redis::cmd("INCR").arg(format!("ctr:{w}")).clone(),
            _ => redis::cmd("ZADD")
                .arg("s:zset")
                .arg((i % 50) as f64)
                .arg(format!("m{w}"))
                .clone(),
        };
        if let Err(e) = cmd.query::<redis::Value>(&mut c) {
            shared
                .errors
                .lock()
                .unwrap()
                .push(format!("worker {w}: {e}"));
        }
        shared.ops.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(300));
    }
}
