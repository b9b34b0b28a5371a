//! `cutover verify`: compare the source and the target like a careful operator would, fast
//! enough to run before every switch.
//!
//! ## How a run goes
//!
//! 1. `INFO keyspace` on both sides lists the databases that hold keys; the db map
//!    (`filter.rs`) pairs them up. The source's key count is the 100 % of the progress line.
//! 2. Two passes run in parallel, each on its own thread with its own two connections
//!    (`scan.rs`): the **source pass** checks every source key against the target (missing,
//!    type, value, TTL), the **target pass** looks for keys only the target has (extra).
//!    Both are pipelined a `SCAN` page (1000 keys) at a time; equal `MGET` values or `DUMP`
//!    payloads settle a key without more questions (`dump.rs`), anything else is compared by
//!    type, in chunks (`compare.rs`).
//! 3. **Re-check rounds.** Data is live: a write that reached the source but not yet the target
//!    looks like a difference. Every difference is compared again `rounds` times, `interval`
//!    apart; one that disappears is *transient* (counted, not reported), one that persists is
//!    reported with its latest detail. `--rounds 0` reports what the passes saw.
//! 4. The [`Report`]: keys checked per type, equal, each kind of difference (the summary
//!    table), and the differing keys as JSON lines (`db`, `target_db`, `key`, `kind`, `type`,
//!    `detail`).
//!
//! ## Decisions
//!
//! * **Blocking sockets on plain threads**, not tokio: each pass is one strictly sequential
//!   conversation (send a page, read a page), so threads are simpler and the same speed; two
//!   threads keep both servers busy at once.
//! * **`MGET` first, `DUMP` for the rest** (mode full). Measured on Redis 7.0 (perf): the
//!   servers' time goes to hash-table lookups and `SCAN` (memory latency), not to command
//!   parsing, so the number of *lookups per key* is what costs. A page of strings costs one
//!   `MGET` per side (one lookup per key) plus `PTTL` per key only on a side whose db has
//!   keys with a TTL (`INFO keyspace` `expires=`); keys that are not strings on both sides, or
//!   differ, get `DUMP` + `PTTL`. Payloads that differ are decoded in-process before any further
//!   round trip, so a Valkey 9.1 vs Redis 6.2 verify (where no payload is byte-identical) stays
//!   pipelined too.
//! * **Extra keys without asking the source about every target key**: the target pass only
//!   scans and digests the target's key set (`scan::KeySetDigest`); when it equals the digest
//!   of the keys the source pass found on both sides, there is no extra key. Otherwise (an extra
//!   key, or live writes) the exact pass asks `EXISTS` on the source, a page at a time.
//! * **Bounded memory**: one page of keys per pass, bulk strings up to 16 KiB in memory (bigger
//!   ones become digests, `client.rs`), collections in chunks, at most
//!   [`scan::MAX_CANDIDATES`] listed differences per pass.
//! * **One difference per key**, the first in this order: missing/extra, type, value, TTL.
//!   So a planted difference is reported exactly once.
//! * `cutover:position` in db 0 (the sync's bookkeeping) is never compared.
//! * The key count per type counts source keys (and extra keys by their target type).
//! * A verify is a check at a point in time: a write to a key after the key was compared is
//!   not seen (the same holds for a TTL set during the run on a db that had none).

pub mod client;
pub mod compare;
pub mod dump;
pub mod filter;
pub mod scan;
mod topology;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::config::RedisUrl;
use client::{Conn, Reply, VerifyError};
use compare::{CompareOpts, DiffKind, Mode, Outcome};
use filter::{DbMap, KeyFilter};
use scan::{Candidate, PassOpts, PassResult, Progress};

/// Everything a verify needs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub source: RedisUrl,
    pub target: RedisUrl,
    pub db_map: DbMap,
    pub filter: KeyFilter,
    pub mode: Mode,
    pub ttl_tolerance: Duration,
    /// Re-check rounds for differences (0: report what the passes saw).
    pub rounds: u32,
    /// Pause before each re-check round.
    pub interval: Duration,
    /// `SCAN … COUNT`, also the chunk size for collections.
    pub scan_count: usize,
    pub timeout: Duration,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// The sides as configured, when they may be clusters (several seed nodes, an address
    /// map); `None`: the one server of `source` / `target`. Either way a side that turns out
    /// to be a cluster node is verified across topologies (`topology.rs`).
    pub source_side: Option<crate::cluster::SideSpec>,
    pub target_side: Option<crate::cluster::SideSpec>,
}

impl VerifyOptions {
    /// Defaults for `source` → `target`: mode full, 2 s TTL tolerance, 3 re-check rounds 1 s
    /// apart.
    pub fn new(source: RedisUrl, target: RedisUrl) -> VerifyOptions {
        VerifyOptions {
            source,
            target,
            db_map: DbMap::default(),
            filter: KeyFilter::default(),
            mode: Mode::Full,
            ttl_tolerance: Duration::from_secs(2),
            rounds: 3,
            interval: Duration::from_secs(1),
            scan_count: 1000,
            timeout: Duration::from_secs(10),
            progress: false,
            source_side: None,
            target_side: None,
        }
    }
}

/// The result of a verify.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Keys compared, by type.
    pub checked: BTreeMap<String, u64>,
    /// The differences that persisted through the re-check rounds.
    pub diffs: Vec<Candidate>,
    /// Differences not listed (beyond the cap), by kind.
    pub unlisted: BTreeMap<DiffKind, u64>,
    /// Differences seen in a pass that were gone in a re-check.
    pub transient: u64,
    pub elapsed: Duration,
    /// Keys scanned on the source.
    pub source_keys: u64,
}

impl Report {
    /// No differences at all.
    pub fn is_equal(&self) -> bool {
        self.diffs.is_empty() && self.unlisted.values().all(|n| *n == 0)
    }

    /// Differences per kind (listed and unlisted).
    pub fn by_kind(&self) -> BTreeMap<DiffKind, u64> {
        let mut m = self.unlisted.clone();
        for d in &self.diffs {
            *m.entry(d.diff.kind).or_default() += 1;
        }
        m
    }

    /// Source keys per second.
    pub fn keys_per_sec(&self) -> f64 {
        self.source_keys as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary table: one row per type, a total, and the transient count.
    pub fn summary_table(&self) -> String {
        let mut rows: BTreeMap<String, BTreeMap<DiffKind, u64>> = BTreeMap::new();
        for t in self.checked.keys() {
            rows.entry(t.clone()).or_default();
        }
        for d in &self.diffs {
            *rows
                .entry(d.diff.key_type.clone())
                .or_default()
                .entry(d.diff.kind)
                .or_default() += 1;
        }
        let mut out = format!("{:<8} {:>10} {:>10}", "type", "checked", "equal");
        for k in DiffKind::ALL {
            out.push_str(&format!(" {:>12}", k.name()));
        }
        out.push('\n');
        let mut total = (0u64, 0u64, BTreeMap::<DiffKind, u64>::new());
        for (t, kinds) in &rows {
            let checked = self.checked.get(t).copied().unwrap_or(0);
            let differing: u64 = kinds.values().sum();
            let equal = checked.saturating_sub(differing);
            out.push_str(&format!("{t:<8} {checked:>10} {equal:>10}"));
            for k in DiffKind::ALL {
                let n = kinds.get(&k).copied().unwrap_or(0);
                *total.2.entry(k).or_default() += n;
                out.push_str(&format!(" {n:>12}"));
            }
            out.push('\n');
            total.0 += checked;
            total.1 += equal;
        }
        for (k, n) in &self.unlisted {
            *total.2.entry(*k).or_default() += n;
        }
        out.push_str(&format!("{:<8} {:>10} {:>10}", "total", total.0, total.1));
        for k in DiffKind::ALL {
            out.push_str(&format!(" {:>12}", total.2.get(&k).copied().unwrap_or(0)));
        }
        out.push('\n');
        let unlisted: u64 = self.unlisted.values().sum();
        out.push_str(&format!(
            "{} in {:.1} s ({:.0} keys/s); {} transient differences gone on re-check{}\n",
            if self.is_equal() {
                "EQUAL"
            } else {
                "DIFFERENT"
            },
            self.elapsed.as_secs_f64(),
            self.keys_per_sec(),
            self.transient,
            if unlisted > 0 {
                format!("; {unlisted} more differences not listed (cap)")
            } else {
                String::new()
            }
        ));
        out
    }

    /// One JSON object per differing key.
    pub fn json_lines(&self) -> impl Iterator<Item = Value> + '_ {
        self.diffs.iter().map(|c| {
            let mut v = json!({
                "db": c.source_db,
                "target_db": c.target_db,
                "key": String::from_utf8_lossy(&c.key),
                "kind": c.diff.kind.name(),
                "type": c.diff.key_type,
                "detail": c.diff.detail,
            });
            if std::str::from_utf8(&c.key).is_err() {
                v["key_hex"] = Value::String(c.key.iter().map(|b| format!("{b:02x}")).collect());
            }
            v
        })
    }

    /// The counts, for `STATUS` and `--json` summaries.
    pub fn counts_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = DiffKind::ALL
            .iter()
            .map(|k| {
                (
                    k.name().to_string(),
                    json!(self.by_kind().get(k).copied().unwrap_or(0)),
                )
            })
            .collect();
        json!({
            "equal": self.is_equal(),
            "checked": self.checked,
            "differences": kinds,
            "transient": self.transient,
            "source_keys": self.source_keys,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "keys_per_sec": self.keys_per_sec(),
        })
    }
}

/// The databases that hold keys, from `INFO keyspace` (`db3:keys=10,expires=0,…`), with their
/// key counts and the number of keys with a TTL.
/// An unknown number of keys with a TTL is `u64::MAX` (every key's TTL is asked for).
pub fn keyspace(info: &crate::client::Info) -> Vec<(u32, u64, u64)> {
    info.keyspace()
        .into_iter()
        .map(|d| (d.db, d.keys, d.expires.unwrap_or(u64::MAX)))
        .collect()
}

/// The databases holding keys. `INFO keyspace` first; if the server refuses it (renamed or
/// forbidden on some managed services) or lists nothing, every db is probed with `DBSIZE`, so
/// a missing `INFO` can never make a verify see an empty server and report "equal".
fn info_keyspace(conn: &mut Conn) -> Result<Vec<(u32, u64, u64)>, VerifyError> {
    match conn.call(&[b"INFO", b"keyspace"]) {
        Ok(Reply::Bulk(b)) => {
            let space = keyspace(&crate::client::Info::from_bytes(&b));
            if !space.is_empty() {
                return Ok(space);
            }
        }
        Ok(other) => return Err(conn.proto(format!("INFO answered {}", other.show()))),
        Err(VerifyError::Refused { .. }) => {}
        Err(e) => return Err(e),
    }
    let mut space = Vec::new();
    for db in 0..256u32 {
        match conn.select(db) {
            Ok(()) => {}
            // Past the last database (or a server with one only).
            Err(VerifyError::Refused { .. }) => break,
            Err(e) => return Err(e),
        }
        if let Some(n) = conn.call(&[b"DBSIZE"])?.as_int().filter(|n| *n > 0) {
            // Unknown number of keys with a TTL: ask for every key's TTL.
            space.push((db, n as u64, u64::MAX));
        }
    }
    conn.select(0)?;
    Ok(space)
}

/// True if the server knows `HPTTL` (hash field TTLs: Redis 7.4+, Valkey 9+).
fn has_field_ttls(conn: &mut Conn) -> Result<bool, VerifyError> {
    Ok(match conn.call(&[b"COMMAND", b"INFO", b"HPTTL"]) {
        Ok(Reply::Array(a)) => a.first().is_some_and(|r| *r != Reply::Nil),
        Ok(_) => false,
        // COMMAND INFO may be renamed/forbidden: treat as unknown.
        Err(VerifyError::Refused { .. }) => false,
        Err(e) => return Err(e),
    })
}

/// Runs a verify. `progress` is shared so a caller can watch (or stop) it.
pub fn run(opts: &VerifyOptions, progress: &Arc<Progress>) -> Result<Report, VerifyError> {
    if let Some((src, tgt)) = topology::sides(opts)? {
        return topology::run(opts, src, tgt, progress);
    }
    let started = Instant::now();
    let connect = |url: &RedisUrl, side| Conn::connect(url, side, opts.timeout);
    let mut src = connect(&opts.source, "source")?;
    let mut tgt = connect(&opts.target, "target")?;
    let src_space = info_keyspace(&mut src)?;
    let tgt_space = info_keyspace(&mut tgt)?;
    let total: u64 = src_space.iter().map(|(_, n, _)| n).sum();
    let pairs = opts.db_map.pairs(
        &src_space.iter().map(|(d, _, _)| *d).collect::<Vec<_>>(),
        &tgt_space.iter().map(|(d, _, _)| *d).collect::<Vec<_>>(),
    )?;
    let has_ttls =
        |space: &[(u32, u64, u64)], db: u32| space.iter().any(|(d, _, e)| *d == db && *e > 0);
    let pass = PassOpts {
        compare: CompareOpts {
            mode: opts.mode,
            ttl_tolerance_ms: opts.ttl_tolerance.as_millis() as i64,
            chunk: opts.scan_count.max(10),
            field_ttls: has_field_ttls(&mut src)? && has_field_ttls(&mut tgt)?,
        },
        filter: opts.filter.clone(),
        scan_count: opts.scan_count.max(10),
        slots: None,
        per_key: false,
    };
    let (a, mut b) = {
        let (pass, pairs) = (&pass, &pairs);
        let (src_space, tgt_space) = (&src_space, &tgt_space);
        run_passes(
            opts,
            progress,
            total,
            started,
            || {
                let mut out = PassResult::default();
                let mut src = connect(&opts.source, "source")?;
                let mut tgt = connect(&opts.target, "target")?;
                let mut scanner = connect(&opts.source, "source")?;
                for (sdb, tdb) in pairs {
                    if let Some(sdb) = sdb {
                        let ttls = (has_ttls(src_space, *sdb), has_ttls(tgt_space, *tdb));
                        scan::source_pass(
                            &mut src,
                            &mut tgt,
                            &mut scanner,
                            *sdb,
                            *tdb,
                            ttls,
                            pass,
                            progress,
                            &mut out,
                        )?;
                    }
                }
                Ok(out)
            },
            || {
                let mut out = PassResult::default();
                let mut tgt = connect(&opts.target, "target")?;
                for (sdb, tdb) in pairs {
                    scan::target_digest(&mut tgt, *sdb, *tdb, pass, progress, &mut out)?;
                }
                Ok(out)
            },
        )?
    };
    // Extra keys: where the target's key set is not the set of keys found on both sides, the
    // exact check runs (see `scan::KeySetDigest`).
    for (sdb, tdb) in &pairs {
        let on_both = a.key_sets.get(tdb).copied().unwrap_or_default();
        let target = b.key_sets.get(tdb).copied().unwrap_or_default();
        if target != on_both && !progress.stop.load(Ordering::Relaxed) {
            tracing::debug!(
                tdb,
                ?on_both,
                ?target,
                "key sets differ: looking for extra keys"
            );
            scan::target_pass(&mut src, &mut tgt, *sdb, *tdb, &pass, progress, &mut b)?;
        }
    }
    let (mut report, mut candidates) = merge_passes(a, b, progress);
    let seen_first = candidates.len() as u64;
    for _ in 0..opts.rounds {
        if candidates.is_empty() || progress.stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(opts.interval);
        candidates = recheck(&mut src, &mut tgt, candidates, &pass.compare)?;
    }
    report.transient = seen_first - candidates.len() as u64;
    report.diffs = candidates;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Compares each candidate again; keeps those still different, with their latest detail.
fn recheck(
    src: &mut Conn,
    tgt: &mut Conn,
    candidates: Vec<Candidate>,
    opts: &CompareOpts,
) -> Result<Vec<Candidate>, VerifyError> {
    let mut still = Vec::new();
    for mut c in candidates {
        tgt.select(c.target_db)?;
        let outcome = match c.source_db {
            Some(sdb) => {
                src.select(sdb)?;
                compare::compare_key(src, tgt, &c.key, opts)?
            }
            None => match tgt.call(&[b"TYPE", &c.key])? {
                Reply::Bulk(t) if t != b"none" => Outcome::Differs(compare::Diff::new(
                    DiffKind::Extra,
                    &String::from_utf8_lossy(&t),
                    "not on the source",
                )),
                _ => Outcome::Gone,
            },
        };
        if let Outcome::Differs(d) = outcome {
            c.diff = d;
            still.push(c);
        }
    }
    Ok(still)
}

/// Runs the source pass and the target pass on two threads, with the progress line on a
/// third when asked; an error in either stops the other (`progress.stop`). Shared by the
/// standalone verify and the one across topologies.
pub(super) fn run_passes(
    opts: &VerifyOptions,
    progress: &Progress,
    total: u64,
    started: Instant,
    source: impl FnOnce() -> Result<PassResult, VerifyError> + Send,
    target: impl FnOnce() -> Result<PassResult, VerifyError> + Send,
) -> Result<(PassResult, PassResult), VerifyError> {
    let done = AtomicBool::new(false);
    let (a, b) = std::thread::scope(|s| {
        let stop_on_error = |r: Result<PassResult, VerifyError>| {
            if r.is_err() {
                progress.stop.store(true, Ordering::Relaxed);
            }
            r
        };
        let source = s.spawn(move || stop_on_error(source()));
        let target = s.spawn(move || stop_on_error(target()));
        if opts.progress {
            let done = &done;
            s.spawn(move || progress_line(progress, total, started, done));
        }
        let a = source.join();
        let b = target.join();
        done.store(true, Ordering::Relaxed);
        (a, b)
    });
    let join = |r: std::thread::Result<Result<PassResult, VerifyError>>| {
        r.unwrap_or_else(|_| Err(VerifyError::Invalid("a verify thread panicked".into())))
    };
    Ok((join(a)?, join(b)?))
}

fn progress_line(progress: &Progress, total: u64, started: Instant, done: &AtomicBool) {
    let mut err = std::io::stderr();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let n = progress.source_keys.load(Ordering::Relaxed);
        let t = progress.target_keys.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = n as f64 / secs;
        let pct = if total > 0 {
            (n as f64 * 100.0 / total as f64).min(100.0)
        } else {
            100.0
        };
        let eta = if rate > 0.0 && total > n {
            format!("{:.0} s", (total - n) as f64 / rate)
        } else {
            "-".into()
        };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let _ = write!(
            err,
            "\r[{}{}] {pct:5.1}% {n}/{total} source keys, {t} target keys, {rate:.0} keys/s, ETA {eta}   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
        );
        let _ = err.flush();
    }
    let _ = writeln!(err);
}

/// The last verify started through the admin listener, for `STATUS`.
pub struct VerifyTracker {
    /// Source and target of the running instance (the rest is default).
    template: VerifyOptions,
    state: Mutex<Value>,
    running: AtomicBool,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl VerifyTracker {
    pub fn new(template: VerifyOptions) -> VerifyTracker {
        VerifyTracker {
            template,
            state: Mutex::new(Value::Null),
            running: AtomicBool::new(false),
        }
    }

    /// The `verify` section of `STATUS`: null before the first run.
    pub fn status(&self) -> Value {
        self.state.lock().map(|s| s.clone()).unwrap_or(Value::Null)
    }

    fn set(&self, v: Value) {
        if let Ok(mut s) = self.state.lock() {
            *s = v;
        }
    }

    /// Starts a verify on a thread of its own; `Err` if one is running.
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err("a verify is already running".into());
        }
        let started = unix_secs();
        self.set(json!({"state": "running", "started": started}));
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cutover-verify".into())
            .spawn(move || {
                let progress = Arc::new(Progress::default());
                let result = run(&me.template, &progress);
                let finished = unix_secs();
                let v = match result {
                    Ok(r) => {
                        tracing::info!(equal = r.is_equal(), differences = r.diffs.len(), "verify done");
                        let mut v = json!({"state": "done", "started": started, "finished": finished});
                        if let (Value::Object(o), Value::Object(c)) = (&mut v, r.counts_json()) {
                            o.extend(c);
                        }
                        v
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "verify failed");
                        json!({"state": "error", "started": started, "finished": finished, "error": e.to_string()})
                    }
                };
                me.set(v);
                me.running.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.running.store(false, Ordering::SeqCst);
            return Err(format!("cannot start the verify thread: {e}"));
        }
        Ok(())
    }
}

/// The two passes' results as one report (keys checked, differences beyond the list) and the
/// candidates to re-check; a key both passes flagged (deleted from the source during the scan)
/// is listed once.
pub(crate) fn merge_passes(
    a: PassResult,
    b: PassResult,
    progress: &Progress,
) -> (Report, Vec<Candidate>) {
    let mut report = Report {
        checked: a.checked,
        source_keys: progress.source_keys.load(Ordering::Relaxed),
        ..Report::default()
    };
    for (t, n) in b.checked {
        *report.checked.entry(t).or_default() += n;
    }
    for (k, n) in a.overflow.into_iter().chain(b.overflow) {
        *report.unlisted.entry(k).or_default() += n;
    }
    let mut seen = HashSet::new();
    let candidates = a
        .candidates
        .into_iter()
        .chain(b.candidates)
        .filter(|c| seen.insert((c.target_db, c.key.clone())))
        .collect();
    (report, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyspace() {
        let info = "# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\ndb3:keys=4,expires=0,avg_ttl=0,subexpiry=0\r\n";
        let keyspace = |text: &str| keyspace(&crate::client::Info::new(text));
        assert_eq!(keyspace(info), vec![(0, 12, 1), (3, 4, 0)]);
        assert_eq!(keyspace("# Keyspace\r\n"), vec![]);
    }

    #[test]
    fn summary_counts() {
        let mut r = Report::default();
        r.checked.insert("string".into(), 10);
        r.diffs.push(Candidate {
            source_db: Some(0),
            target_db: 0,
            key: b"\xffk".to_vec(),
            diff: compare::Diff::new(DiffKind::Value, "string", "x"),
        });
        assert!(!r.is_equal());
        let t = r.summary_table();
        assert!(t.contains("string           10          9"), "{t}");
        let lines: Vec<Value> = r.json_lines().collect();
        assert_eq!(lines[0]["kind"], "value");
        assert_eq!(lines[0]["key_hex"], "ff6b");
        assert_eq!(r.counts_json()["differences"]["value"], 1);
    }
}
