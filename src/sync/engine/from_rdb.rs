//! `cutover sync --from-rdb FILE`: an RDB file loaded into the target through the same
//! parser → converter → writer path as a source's snapshot.
//!
//! The file is read twice, in 1 MiB pieces (never whole): a first pass checks it to its end
//! (checksum included) and collects its databases, so a corrupt or truncated file, or a
//! database the target lacks, is refused before anything is written; the second pass writes.
//! A position left on the target by an earlier sync is removed (its data now comes from the
//! file).

use std::io::{Read, Seek};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::sync::batch::{self, Stored};
use crate::sync::convert::Converter;
use crate::sync::target::{Sink, TargetWriter};

use super::bar::human_bytes;
use super::*;

/// Loads an RDB file into the target: the file is read in pieces (never whole) and goes
/// through the same parser → converter → writer path as a source's snapshot.
pub fn load_rdb(opts: &RdbLoadOptions) -> anyhow::Result<SyncReport> {
    let path = opts.path.display().to_string();
    let file = std::fs::File::open(&opts.path)
        .with_context(|| format!("cannot open the RDB file {path}"))?;
    if let Some(topo) = target_cluster(opts.target_side.as_ref(), &opts.target, opts.timeout)? {
        let sink = crate::sync::cluster::ClusterSink::connect(
            topo,
            crate::sync::cluster::STANDALONE_LINK,
            opts.timeout,
            opts.tuning.pipeline,
        )?;
        return load_into(opts, file, sink, true);
    }
    let mut w = TargetWriter::connect(&opts.target, opts.timeout)?;
    w.set_window(opts.tuning.pipeline);
    load_into(opts, file, w, false)
}

/// [`load_rdb`] into one server, or a cluster (`cluster`).
fn load_into<W: Sink>(
    opts: &RdbLoadOptions,
    mut file: std::fs::File,
    mut w: W,
    cluster: bool,
) -> anyhow::Result<SyncReport> {
    let path = opts.path.display().to_string();
    let mut report = SyncReport {
        target: w.info().describe(),
        ..SyncReport::default()
    };
    if batch::read(&mut w)? != Stored::None {
        say(&format!(
            "cutover sync: the target held the position of an earlier sync; removed (its data now comes from {path})"
        ));
        batch::queue_del(&mut w)?;
    }
    let sync = SyncOptions {
        tuning: opts.tuning.clone(),
        ..SyncOptions::new(opts.target.clone(), opts.target.clone())
    };
    // A first pass reads the whole file without writing anything: a corrupt or truncated
    // file (its checksum is at the end) and a database the target lacks are refused before
    // the target is touched, instead of leaving a partial copy there.
    let dbs = prescan_rdb(&mut file, &sync, &path)?;
    if cluster {
        check_cluster_databases(&opts.tuning.filter, w.addr(), &dbs)?;
    }
    check_databases(&w, &opts.tuning.filter, &dbs)?;
    file.seek(std::io::SeekFrom::Start(0))
        .with_context(|| format!("cannot read the RDB file {path} again"))?;
    let mut conv = Converter::with_options(&w, sync.convert_options());
    let started = Instant::now();
    let mut last_progress = Instant::now();
    report.snapshot_bytes = read_rdb_file(
        &mut file,
        &sync,
        &path,
        "it changed after it was checked; the target holds part of it: flush it before loading again",
        |step| {
            match step {
                RdbStep::Event(ev) => conv.apply(ev, &mut w)?,
                RdbStep::Read(bytes) => {
                    if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                        last_progress = Instant::now();
                        eprintln!(
                            "cutover sync: {path}: {} read, {} keys",
                            human_bytes(bytes),
                            conv.stats.keys_seen
                        );
                    }
                }
            }
            Ok(())
        },
    )?;
    conv.finish(&mut w)?;
    w.drain()?;
    if opts.progress {
        eprintln!(
            "cutover sync: {path} loaded: {} in {:.1} s",
            human_bytes(report.snapshot_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    report.stats = conv.stats;
    Ok(report)
}

/// Reads an RDB file to its end (checksum included) without writing anything; the databases
/// that hold keys.
fn prescan_rdb(
    file: &mut std::fs::File,
    sync: &SyncOptions,
    path: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut dbs = std::collections::BTreeSet::new();
    read_rdb_file(
        file,
        sync,
        path,
        "nothing was written to the target",
        |step| {
            if let RdbStep::Event(crate::rdb::Event::SelectDb { db }) = step {
                dbs.insert(db);
            }
            Ok(())
        },
    )?;
    Ok(dbs.into_iter().collect())
}

/// What [`read_rdb_file`] hands on: an event of the file, or how many bytes it has read.
enum RdbStep {
    Event(crate::rdb::Event),
    Read(u64),
}

/// Reads an RDB file from where it stands to its end through the parser (checksum included),
/// handing every event and, after each chunk, the bytes read so far to `step`; the bytes
/// read. Errors name the file and the byte, followed by `state` (what the target holds then).
fn read_rdb_file(
    file: &mut std::fs::File,
    sync: &SyncOptions,
    path: &str,
    state: &str,
    mut step: impl FnMut(RdbStep) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut parser = sync.parser();
    let mut chunk = vec![0u8; 1024 * 1024];
    let mut read = 0u64;
    let bad = |e: crate::rdb::RdbError| {
        anyhow::anyhow!("the RDB file {path} cannot be loaded: {e}; {state}")
    };
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the RDB file {path} at byte {read}; {state}")
                });
            }
        };
        read += n as u64;
        parser.feed(&chunk[..n]);
        while let Some(ev) = parser.next_event().map_err(bad)? {
            step(RdbStep::Event(ev))?;
        }
        step(RdbStep::Read(read))?;
    }
    parser.finish().map_err(bad)?;
    Ok(read)
}
