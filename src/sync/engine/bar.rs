//! The progress output of headless `cutover sync`: a bar redrawn in place on a terminal, a
//! line every few seconds otherwise, and [`say`] for message lines (which clears the bar
//! first). It only reads [`SyncProgress`]; nothing here changes what the engine does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sync::phase::SyncPhase;

use super::*;

/// A progress line is on the terminal (cleared before other messages).
static BAR_SHOWN: AtomicBool = AtomicBool::new(false);

/// Prints a message line on stderr (after clearing a progress bar, if one is shown).
pub fn say(line: &str) {
    if BAR_SHOWN.swap(false, Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
    eprintln!("{line}");
}

/// The progress display of `cutover sync`: on a terminal, one line redrawn in place (a bar of
/// the snapshot's bytes or keys, keys/s, ETA; then the streaming lag); otherwise a plain line
/// every few seconds, for logs.
pub(super) struct Bar {
    enabled: bool,
    tty: bool,
    last: Instant,
    /// Keys and bytes done at `last` and the smoothed rates since.
    last_keys: u64,
    last_bytes: u64,
    keys_rate: f64,
    bytes_rate: f64,
}

impl Bar {
    pub(super) fn new(enabled: bool) -> Bar {
        use std::io::IsTerminal;
        Bar {
            enabled,
            tty: std::io::stderr().is_terminal()
                && std::env::var_os("TERM").is_some_and(|t| t != "dumb"),
            last: Instant::now(),
            last_keys: 0,
            last_bytes: 0,
            keys_rate: 0.0,
            bytes_rate: 0.0,
        }
    }

    pub(super) fn say(&self, line: &str) {
        if self.enabled {
            say(line);
        } else {
            tracing::info!("{line}");
        }
    }

    /// Redraws (at most 5 times a second on a terminal, every 5 s otherwise).
    pub(super) fn tick(&mut self, p: &SyncProgress) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !self.enabled || self.last.elapsed() < every {
            return;
        }
        let secs = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let keys = p.keys_done.load(Ordering::Relaxed);
        let bytes = p.snapshot_bytes.load(Ordering::Relaxed);
        let smooth = |old: f64, new: f64| {
            if old == 0.0 {
                new
            } else {
                0.7 * old + 0.3 * new
            }
        };
        self.keys_rate = smooth(
            self.keys_rate,
            keys.saturating_sub(self.last_keys) as f64 / secs,
        );
        self.bytes_rate = smooth(
            self.bytes_rate,
            bytes.saturating_sub(self.last_bytes) as f64 / secs,
        );
        if keys < self.last_keys || bytes < self.last_bytes {
            // A new snapshot (full resync).
            self.keys_rate = 0.0;
            self.bytes_rate = 0.0;
        }
        self.last_keys = keys;
        self.last_bytes = bytes;
        let line = render_line(p, self.keys_rate, self.bytes_rate, self.tty);
        if self.tty {
            eprint!("\r\x1b[K{line}");
            BAR_SHOWN.store(true, Ordering::Relaxed);
        } else {
            eprintln!("{line}");
        }
    }

    /// Leaves the bar's last state on its own line.
    pub(super) fn finish(&mut self) {
        if BAR_SHOWN.swap(false, Ordering::Relaxed) {
            eprintln!();
        }
    }
}

/// One progress line (see [`Bar`]).
pub(super) fn render_line(p: &SyncProgress, keys_rate: f64, bytes_rate: f64, bar: bool) -> String {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    match p.phase() {
        SyncPhase::Connecting => {
            "cutover sync: connecting; waiting for the source's snapshot".into()
        }
        SyncPhase::Snapshot => {
            let (bytes, total) = (n(&p.snapshot_bytes), n(&p.snapshot_bytes_total));
            let (keys, keys_total) = (n(&p.keys_done), n(&p.keys_total));
            // Bytes tell progress exactly when the size is known (disk snapshots); keys
            // otherwise (estimated from INFO keyspace).
            let (frac, eta) = if total > 0 {
                let left = total.saturating_sub(bytes) as f64;
                (
                    bytes as f64 / total as f64,
                    (bytes_rate > 0.0).then(|| left / bytes_rate),
                )
            } else if keys_total > 0 {
                let left = keys_total.saturating_sub(keys) as f64;
                (
                    keys as f64 / keys_total as f64,
                    (keys_rate > 0.0).then(|| left / keys_rate),
                )
            } else {
                (0.0, None)
            };
            let frac = frac.clamp(0.0, 1.0);
            let gauge = if bar {
                let full = (frac * 24.0) as usize;
                format!("[{}{}] ", "#".repeat(full), "-".repeat(24 - full))
            } else {
                String::new()
            };
            let size = if total > 0 {
                format!("{}/{}", human_bytes(bytes), human_bytes(total))
            } else {
                human_bytes(bytes)
            };
            let keys_of = if keys_total > 0 {
                format!("{keys}/{keys_total} keys")
            } else {
                format!("{keys} keys")
            };
            let eta = eta.map_or_else(|| "?".into(), |s| format!("{:.0} s", s.ceil()));
            format!(
                "cutover sync: snapshot {gauge}{:.0}% {size}, {keys_of}, {:.0} keys/s, ETA {eta}",
                frac * 100.0,
                keys_rate
            )
        }
        SyncPhase::Streaming => format!(
            "cutover sync: streaming: offset {} applied, lag {} bytes / {} ms, {} commands ({} skipped), {} reconnects{}",
            n(&p.applied_offset),
            p.lag_bytes(),
            p.lag_ms(),
            n(&p.commands_applied),
            n(&p.commands_skipped),
            n(&p.reconnects),
            match n(&p.starts) {
                0 | 1 => String::new(),
                s => format!(", {} restarts", s - 1),
            } + &match n(&p.non_atomic_txns) {
                0 => String::new(),
                t => format!(", {t} transactions applied per slot (not atomic on the cluster)"),
            },
        ),
        SyncPhase::Error => format!(
            "cutover sync: failed ({}); retrying in {} s",
            p.last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default(),
            n(&p.retry_in_s)
        ),
    }
}

/// `1536` → `1.5 KiB`.
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        let p = SyncProgress::default();
        assert!(render_line(&p, 0.0, 0.0, true).contains("connecting"));
        p.set_phase(SyncPhase::Snapshot);
        p.snapshot_bytes.store(512, Ordering::Relaxed);
        p.snapshot_bytes_total.store(1024, Ordering::Relaxed);
        p.keys_done.store(10, Ordering::Relaxed);
        p.keys_total.store(20, Ordering::Relaxed);
        let line = render_line(&p, 5.0, 256.0, true);
        assert!(line.contains("[############------------] 50%"), "{line}");
        assert!(
            line.contains("512 B/1.0 KiB, 10/20 keys, 5 keys/s, ETA 2 s"),
            "{line}"
        );
        // Diskless: progress by keys.
        p.snapshot_bytes_total.store(0, Ordering::Relaxed);
        let line = render_line(&p, 5.0, 256.0, false);
        assert!(line.contains("snapshot 50% 512 B, 10/20 keys"), "{line}");
        p.set_phase(SyncPhase::Streaming);
        p.received_offset.store(100, Ordering::Relaxed);
        p.applied_offset.store(90, Ordering::Relaxed);
        assert!(render_line(&p, 0.0, 0.0, true).contains("lag 10 bytes"));
        let doc = p.to_json();
        assert_eq!(doc["snapshot_bytes_total"], serde_json::Value::Null);
        assert_eq!(doc["keys_by_type"]["hash"], 0);
    }
}
