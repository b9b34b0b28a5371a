//! A paced load: client threads that the test can hold between two commands (everything
//! they sent is answered, nothing is in flight) to compare the sides, and then release. One
//! harness for every load of the overlap and link tests (`tests/overlap.rs`,
//! `tests/links.rs`, `tests/restarts.rs`).
//!
//! Each thread spawned with [`Paced::spawn`] calls [`pause_point`] between two commands and
//! ends (bounded in count and time) once `stop` is set.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load's threads share with the test.
#[derive(Default)]
pub struct LoadShared {
    pub stop: AtomicBool,
    pub pause: AtomicBool,
    pub paused: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    pub ops: AtomicU64,
}

impl LoadShared {
    /// Records an error a client saw.
    pub fn error(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }

    /// Whether a thread started at `started` that has done `i` operations goes on.
    pub fn running(&self, started: Instant, i: u64) -> bool {
        !self.stop.load(Ordering::Acquire)
            && i < 200_000
            && started.elapsed() < Duration::from_secs(180)
    }
}

/// Waits here while the test holds the load.
pub fn pause_point(shared: &LoadShared) {
    if shared.pause.load(Ordering::Acquire) {
        shared.paused.fetch_add(1, Ordering::AcqRel);
        while shared.pause.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.paused.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The load's threads.
pub struct Paced {
    pub shared: Arc<LoadShared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Default for Paced {
    fn default() -> Self {
        Paced::new()
    }
}

impl Paced {
    pub fn new() -> Paced {
        Paced {
            shared: Arc::new(LoadShared::default()),
            threads: Vec::new(),
        }
    }

    /// Starts a thread of the load (it must call [`pause_point`] between two commands).
    pub fn spawn(&mut self, f: impl FnOnce(&LoadShared) + Send + 'static) {
        let shared = self.shared.clone();
        self.threads.push(std::thread::spawn(move || f(&shared)));
    }

    /// Holds every thread between two commands (everything sent is answered).
    pub fn hold(&self) {
        self.shared.pause.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.shared.paused.load(Ordering::Acquire) < self.threads.len() as u64 {
            assert!(Instant::now() < deadline, "the load did not pause");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn release(&self) {
        self.shared.pause.store(false, Ordering::Release);
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    pub fn ops(&self) -> u64 {
        self.shared.ops.load(Ordering::Relaxed)
    }

    /// Stops and joins every thread.
    pub fn finish(mut self) -> Arc<LoadShared> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.pause.store(false, Ordering::Release);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        self.shared.clone()
    }
}
