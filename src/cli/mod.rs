//! The command line: flags, environment variables and the config file merged into
//! [`Settings`]; errors reported with context, one line each.
//!
//! - `args.rs`: the flags of each subcommand (clap), the per-side TLS flags, sync tuning;
//! - `settings.rs`: `cutover run`'s flags and env merged over the config file;
//! - this file: the subcommands themselves (run, status, switch/rollback/finish, sync, verify).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{
    self, AdminSettings, ClientAuth, ConfigError, FileConfig, ProxySettings, RedisUrl,
};
use crate::runtime::Settings;

mod args;
mod settings;

pub use args::*;
use settings::check_tls;
pub use settings::resolve_settings;

#[derive(Parser, Debug)]
#[command(
    name = "cutover",
    version,
    about = "Move a live Redis to another Redis without downtime and without losing a write"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (and the admin and metrics listeners).
    Run(RunArgs),
    /// Show the state of a running instance (through its admin listener).
    Status(StatusArgs),
    /// Move the clients to the target: hold commands for a moment, let the target catch up,
    /// flip the route, release them there. Writes are then shadowed to the source.
    Switch(MoveArgs),
    /// Move the clients back to the source (the target is kept in step from then on).
    Rollback(MoveArgs),
    /// End the migration: stop shadowing writes; the old side is detached.
    Finish(FinishArgs),
    /// Copy the source into the target (snapshot, then the live stream), without the proxy.
    ///
    /// The replication position is kept on the target, in the key `cutover:position` of db 0
    /// ("<replid> <offset>", written in the same MULTI/EXEC as the commands it covers), so a
    /// restart continues where the last one stopped (PSYNC) without applying anything twice. If
    /// the source cannot continue from there, the target is flushed (FLUSHALL) and copied anew.
    /// That key is never copied from a source. Ctrl-C / SIGTERM stop cleanly (exit 0).
    Sync(SyncArgs),
    /// Compare the source and the target: missing and extra keys, types, values, TTLs.
    ///
    /// Differences are re-checked --rounds times, --interval apart, and only those that persist
    /// are reported (live writes in flight are not differences). Prints a progress line and a
    /// summary table on stderr, and one JSON object per differing key on stdout (or into
    /// --json FILE). Exit code 0: equal; 1: differences; 2: error. With --admin, asks a running
    /// `cutover run` to verify its source and target in the background instead (see `cutover
    /// status`).
    Verify(VerifyArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Status(args) => status(args),
        Command::Switch(args) => move_primary("SWITCH", args),
        Command::Rollback(args) => move_primary("ROLLBACK", args),
        Command::Finish(args) => finish(args),
        Command::Sync(args) => sync(args),
        Command::Verify(args) => verify(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cutover: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The async runtime. `CUTOVER_THREADS` sets the number of worker threads; `1` (the default)
/// runs everything on one thread, which on small machines beats work-stealing: the proxy's
/// tasks hand work to each other constantly and cross-thread wake-ups cost more than they
/// gain when the server and the clients need the other cores.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let threads: usize = std::env::var("CUTOVER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = resolve_settings(&args)?;
    runtime()?.block_on(crate::runtime::run(settings))?;
    Ok(ExitCode::SUCCESS)
}

/// `switch` / `rollback`: one admin command; the reply is the move's report.
fn move_primary(verb: &str, args: MoveArgs) -> anyhow::Result<ExitCode> {
    let mut command = vec![verb.to_string()];
    if let Some(ms) = args.max_pause_ms {
        command.push("MAXPAUSE".into());
        command.push(ms.to_string());
    }
    if args.force {
        command.push("FORCE".into());
    }
    admin_move(&args.admin, &command, args.json)
}

fn finish(args: FinishArgs) -> anyhow::Result<ExitCode> {
    admin_move(&args.admin, &["FINISH".to_string()], args.json)
}

fn admin_move(admin: &AdminArgs, command: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let (addr, token) = admin.resolve()?;
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let reply = runtime()?.block_on(crate::admin::client::request_tls(
        &addr,
        admin.tls_ca.as_deref(),
        token.as_deref(),
        &args,
        Duration::from_secs(30),
    ));
    let reply = match reply {
        Ok(r) => r,
        Err(crate::admin::client::AdminError::Refused(msg)) => {
            // The move did not happen; the reason is the whole message.
            let msg = msg.strip_prefix("ERR ").unwrap_or(&msg);
            eprintln!("cutover: {msg}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let redis_protocol::resp2::types::BytesFrame::BulkString(body) = reply else {
        anyhow::bail!("unexpected reply from {addr}: {reply:?}");
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&body).context("the admin reply is not JSON")?;
    if json {
        println!("{doc}");
    } else {
        println!("{}", crate::status::render_step(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.watch {
        return watch_status(args);
    }
    let (addr, token) = args.admin.resolve()?;
    let reply = runtime()?.block_on(crate::admin::client::request_tls(
        &addr,
        args.admin.tls_ca.as_deref(),
        token.as_deref(),
        &["STATUS"],
        Duration::from_secs(5),
    ))?;
    let redis_protocol::resp2::types::BytesFrame::BulkString(body) = reply else {
        anyhow::bail!("unexpected STATUS reply from {addr}: {reply:?}");
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&body).context("the STATUS reply is not JSON")?;
    if args.json {
        println!("{doc}");
    } else {
        print!("{}", crate::status::render_text(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// One `STATUS` request, parsed.
async fn fetch_status(
    addr: &str,
    tls_ca: Option<&std::path::Path>,
    token: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let reply =
        crate::admin::client::request_tls(addr, tls_ca, token, &["STATUS"], Duration::from_secs(5))
            .await?;
    let redis_protocol::resp2::types::BytesFrame::BulkString(body) = reply else {
        anyhow::bail!("unexpected STATUS reply from {addr}: {reply:?}");
    };
    serde_json::from_slice(&body).context("the STATUS reply is not JSON")
}

/// `cutover status --watch`: a status every second until Ctrl-C, `--count` redraws, or an
/// error (the admin listener gone: exit 2 with the error).
fn watch_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let (addr, token) = args.admin.resolve()?;
    let tty = std::io::stdout().is_terminal();
    let rt = runtime()?;
    rt.block_on(async {
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        // (keys done, when) of the previous redraw, for the snapshot's rate and ETA.
        let mut prev: Option<(u64, std::time::Instant)> = None;
        let mut drawn = 0u64;
        loop {
            // (The error names the admin listener and says what to check.)
            let doc = fetch_status(&addr, args.admin.tls_ca.as_deref(), token.as_deref()).await?;
            let now = std::time::Instant::now();
            let done = doc["sync"]["keys_done"].as_u64().unwrap_or(0);
            let rate = prev.and_then(|(d, t)| {
                let secs = now.duration_since(t).as_secs_f64();
                (secs > 0.0 && done >= d).then(|| (done - d) as f64 / secs)
            });
            prev = Some((done, now));
            let mut out = std::io::stdout().lock();
            let text = if args.json {
                format!("{doc}\n")
            } else {
                crate::status::render_watch(&doc, rate, 40)
            };
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let written = if args.json {
                write!(out, "{text}")
            } else if tty {
                // Cursor home, clear the screen, then the view (as `watch` does).
                write!(
                    out,
                    "\x1b[H\x1b[2JEvery 1.0 s: cutover status --admin {addr}   (unix {stamp}; Ctrl-C ends)\n\n{text}"
                )
            } else {
                write!(out, "--- {addr} at unix {stamp} ---\n{text}")
            };
            // A closed pipe (`| head`) ends the watch quietly.
            if written.and_then(|_| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            drop(out);
            drawn += 1;
            if args.count.is_some_and(|c| drawn >= c) {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let target = args
        .target
        .clone()
        .or(file.target.url.clone())
        .ok_or(ConfigError::Missing("[target] url (--target)"))?;
    // The target may be a cluster, given by several seed nodes (`redis://a:7000,b:7001`):
    // the engine asks it what it is.
    let target_spec = crate::cluster::SideSpec::parse(
        &target,
        &args.target_tls.over(&file.target.tls),
        &file.target.address_map,
    )
    .context("--target")?;
    for seed in &target_spec.seeds {
        check_tls(seed, "target.tls")?;
    }
    let target = target_spec.first().clone();
    let target_side =
        (target_spec.seeds.len() > 1 || !target_spec.address_map.is_empty()).then_some(target_spec);
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let tuning = sync_tuning(&file.sync, &args.tuning)?;
    if let Some(m) = args.metrics_listen.clone().or(file.metrics.listen.clone()) {
        serve_metrics(crate::config::parse_addr("metrics.listen", &m)?)?;
    }
    if let Some(path) = args.from_rdb {
        let opts = crate::sync::engine::RdbLoadOptions {
            path,
            target,
            timeout,
            progress: !args.quiet,
            tuning,
            target_side,
        };
        return Ok(sync_summary(&crate::sync::engine::load_rdb(&opts)?));
    }
    let source = args
        .source
        .clone()
        .or(file.source.url.clone())
        .ok_or(ConfigError::Missing(
            "[source] url (--source), or --from-rdb FILE",
        ))?;
    // The source may be a cluster too: then one link per source master.
    let source_spec = crate::cluster::SideSpec::parse(
        &source,
        &args.source_tls.over(&file.source.tls),
        &file.source.address_map,
    )
    .context("--source")?;
    for seed in &source_spec.seeds {
        check_tls(seed, "source.tls")?;
    }
    let source = source_spec.first().clone();
    let source_cluster = match source_spec.resolve(timeout) {
        Ok(crate::cluster::Side::Cluster(topo)) => Some(topo),
        Ok(crate::cluster::Side::Standalone(_)) => None,
        // (One server that cannot be asked now: the sync's own retries report it.)
        Err(crate::cluster::SideError::Topology(_)) if source_spec.seeds.len() == 1 => None,
        Err(e) => return Err(anyhow::Error::new(e).context("--source")),
    };
    let opts = crate::sync::engine::SyncOptions {
        once: args.once,
        timeout,
        progress: !args.quiet,
        fresh: args.fresh,
        tuning,
        target_side,
        ..crate::sync::engine::SyncOptions::new(source, target)
    };
    // A target (or source) that goes away is waited for: the sync runs again with back-off
    // and resumes from the position stored on the target; what waiting cannot cure, or an
    // outage longer than five times --timeout-secs, ends it (exit code 2).
    let policy = crate::sync::retry::RetryPolicy {
        give_up_after: Some(timeout * crate::sync::engine::RECONNECT_TIMEOUTS),
        retry_permanent: false,
    };
    if let Some(topo) = source_cluster {
        let report = crate::sync::cluster::source::run(&opts, &topo, policy)?;
        return Ok(sync_summary(&report));
    }
    let ctx = crate::sync::engine::RunContext::new(&opts, true)?;
    let report = crate::sync::retry::run_retrying(&opts, policy, &ctx)?;
    Ok(sync_summary(&report))
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use crate::verify::{self, VerifyOptions, compare::Mode, filter};
    if let Some(addr) = &args.admin {
        runtime()?.block_on(crate::admin::client::request_tls(
            addr,
            args.admin_tls_ca.as_deref(),
            args.token.as_deref(),
            &["VERIFY"],
            Duration::from_secs(5),
        ))?;
        eprintln!(
            "cutover verify: started in the instance at {addr}; `cutover status --admin {addr}` shows the result"
        );
        return Ok(ExitCode::SUCCESS);
    }
    // A side may list several nodes of a cluster (`redis://a:7000,b:7001`).
    let url = |v: &Option<String>, flag: &str, tls| -> anyhow::Result<Vec<RedisUrl>> {
        let text = v
            .as_deref()
            .with_context(|| format!("{flag} is required"))?;
        let seeds = RedisUrl::parse_seeds(text, &tls).with_context(|| flag.to_string())?;
        for url in &seeds {
            check_tls(url, "tls")?;
        }
        Ok(seeds)
    };
    let none = config::TlsOptions::default();
    let source = url(&args.source, "--source", args.source_tls.over(&none))?;
    let target = url(&args.target, "--target", args.target_tls.over(&none))?;
    let mut opts = VerifyOptions::new(source[0].clone(), target[0].clone());
    let side = |seeds: Vec<RedisUrl>, map: &[String], flag: &str| {
        let mut pairs = std::collections::BTreeMap::new();
        for m in map {
            let (from, to) = m.split_once('=').with_context(|| {
                format!("{flag} {m:?}: write ANNOUNCED_HOST:PORT=REACHABLE_HOST:PORT")
            })?;
            pairs.insert(from.to_string(), to.to_string());
        }
        let address_map = crate::cluster::AddressMap::parse(&pairs).context(flag.to_string())?;
        anyhow::Ok(
            (seeds.len() > 1 || !address_map.is_empty())
                .then_some(crate::cluster::SideSpec { seeds, address_map }),
        )
    };
    opts.source_side = side(source, &args.source_address_map, "--source-address-map")?;
    opts.target_side = side(target, &args.target_address_map, "--target-address-map")?;
    opts.db_map = filter::DbMap::parse(&args.db_map)?;
    opts.filter = filter::KeyFilter::new(
        &args.include_prefix,
        &args.exclude_prefix,
        &args.include_regex,
        &args.exclude_regex,
    )?;
    opts.mode = Mode::parse(&args.mode).context("--mode")?;
    opts.ttl_tolerance = args.ttl_tolerance;
    opts.rounds = args.rounds;
    opts.interval = args.interval;
    opts.scan_count = args.scan_count.clamp(10, 100_000);
    opts.timeout = Duration::from_secs(args.timeout_secs.max(1));
    opts.progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = std::sync::Arc::new(verify::scan::Progress::default());
    let report = verify::run(&opts, &progress).context("verify failed")?;
    let mut lines = String::new();
    for line in report.json_lines() {
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    match &args.json {
        Some(path) => std::fs::write(path, &lines)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{lines}"),
    }
    eprint!("{}", report.summary_table());
    Ok(if report.is_equal() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints what a finished sync did; exit code 3 if something was not copied.
/// Serves the Prometheus page on `addr` from a thread of its own while a headless sync runs
/// (the engine publishes its `cutover_sync_*` series through the `metrics` facade).
fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("cutover-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let r = crate::telemetry::install_exporter(addr).await;
                let ok = r.is_ok();
                let _ = tx.send(r);
                if ok {
                    std::future::pending::<()>().await;
                }
            });
        })
        .context("cannot start the metrics thread")?;
    rx.recv_timeout(Duration::from_secs(10))
        .context("the metrics listener did not start")??;
    eprintln!("cutover sync: metrics at http://{addr}/metrics");
    Ok(())
}

fn sync_summary(report: &crate::sync::engine::SyncReport) -> ExitCode {
    let s = &report.stats;
    eprintln!(
        "cutover sync: done at offset {} into {}: {} keys ({} restored, {} plain, {} expired and skipped, {} not copied), {} functions, {} stream commands applied, {} skipped",
        report.offset,
        report.target,
        s.keys_done(),
        s.restored,
        s.plain,
        s.expired,
        s.unsupported,
        s.functions,
        report.commands,
        report.commands_skipped
    );
    if s.field_ttls_dropped > 0 {
        eprintln!(
            "cutover sync: {} hashes lost their field TTLs (the target cannot hold them)",
            s.field_ttls_dropped
        );
    }
    if s.unsupported > 0 {
        for p in &s.problems {
            eprintln!("cutover sync: not copied: {p}");
        }
        eprintln!(
            "cutover sync: {} items were NOT copied; the target is incomplete",
            s.unsupported
        );
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
