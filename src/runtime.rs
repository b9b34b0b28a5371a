//! `cutover run`: wires the listeners together and runs until Ctrl-C / SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::admin::AdminServer;
use crate::config::{AdminSettings, ProxySettings, RedisUrl};
use crate::cutover::Controller;
use crate::cutover::control;
use crate::cutover::overlap::{Links, OverlapMode};
use crate::proxy::{self, ProxyShared};
use crate::route::{Backend, Route, Side};
use crate::status::RunStatus;
use crate::sync::engine::{RunContext, SyncOptions, SyncProgress};
use crate::sync::handoff::Role;
use crate::sync::phase::SyncPhase;
use crate::sync::retry::{MAX_BACKOFF, RetryPolicy, run_retrying};

/// The whole resolved configuration of `cutover run` (built by `cli::resolve_settings`).
/// It lives here, not in [`crate::config`], so that `config` stays a leaf: the settings of
/// the cutover and of the sync are those modules' own types.
#[derive(Debug, Clone)]
pub struct Settings {
    pub proxy: ProxySettings,
    pub source: RedisUrl,
    pub target: Option<RedisUrl>,
    pub admin: Option<AdminSettings>,
    pub metrics: Option<std::net::SocketAddr>,
    pub cutover: crate::cutover::CutoverSettings,
    /// `[sync]`, for the background sync (when a target is set).
    pub sync: crate::sync::engine::SyncTuning,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(addr) = settings.metrics {
        crate::telemetry::install_exporter(addr).await?;
        tracing::info!(%addr, "metrics listener ready (Prometheus text at /metrics)");
    }
    // A cluster source is refused (the proxy would serve one node's slots); a cluster target
    // is synced into, with no switch in this run (`cluster_target`).
    let target_masters = match &settings.target {
        Some(t) => cluster_sides(&settings.source, t).await?,
        None => None,
    };
    let target_cluster = target_masters.is_some();
    let route = Route {
        epoch: 0,
        primary: Side::Source,
        source: Arc::new(Backend::new(Side::Source, settings.source.clone())),
        target: settings
            .target
            .clone()
            .map(|u| Arc::new(Backend::new(Side::Target, u))),
    };
    let shared = Arc::new(ProxyShared::new(
        settings.proxy.clone(),
        ArcSwap::from_pointee(route),
    ));
    shared.scripts.set_limits(
        settings.cutover.script_cache_scripts,
        settings.cutover.script_cache_bytes,
    );
    if let Some(target) = &settings.target
        && !target_cluster
    {
        // (A cluster target is never switched to in a run: no marker to look for.)
        let check = target.clone();
        let marker = tokio::task::spawn_blocking(move || {
            crate::sync::batch::switched_marker(&check, Duration::from_secs(5))
        })
        .await
        .context("cannot check the target")?;
        match marker {
            // (`cutover::flip::mark_primary`: "<unix ms> <offset> <primary>"; two fields from
            // an older version mean the target.)
            Ok(Some(value)) if value.split(' ').nth(2) == Some("source") => anyhow::bail!(
                "the source is the primary: an earlier `cutover run` switched to the target {target} and rolled the clients back to the source (key cutover:switched = {value:?} in db 0 of the target). The target was kept a copy only while that run lived; starting again would sync into it from a stale position and apply writes twice. Point the applications at the source (or at a proxy without [target]); to migrate again, delete that key and the target's data first (a new `cutover run` then copies from scratch)"
            ),
            Ok(Some(value)) => anyhow::bail!(
                "the target is the primary: the target {target} was switched to by an earlier `cutover run` (key cutover:switched = {value:?} in db 0), and starting again would send the clients back to the source and apply the shadowed writes a second time. Point the applications at the target (or at a proxy without [target]); to migrate into it from scratch, delete that key and its data first"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether the target was switched to already; the sync retries and checks again")
            }
        }
    }
    let links = match (&settings.target, settings.cutover.overlap) {
        (None, _) | (_, OverlapMode::Shadow) => None,
        // (No switch with a cluster target: no overlap to prepare.)
        (Some(_), _) if target_cluster => None,
        (Some(_), mode) if !settings.sync.filter.is_identity() => {
            if mode == OverlapMode::Replica {
                anyhow::bail!(
                    "[cutover] overlap = \"replica\" needs the whole source copied as it is: with [sync] filters or a db_map the old side could not be an exact replica of the target; remove them or set overlap = \"shadow\""
                );
            }
            tracing::warn!(
                "[sync] filters or a db_map are set: the overlap after the switch uses shadow writes (a replica overlap needs the whole source copied as it is)"
            );
            None
        }
        (Some(_), _) => Some(Arc::new(Links::new())),
    };
    let sync = links
        .as_ref()
        .map_or_else(|| Arc::new(SyncProgress::default()), |l| l.forward.clone());
    if settings.target.is_some() {
        let progress = sync.clone();
        crate::telemetry::on_scrape(move || progress.publish_metrics());
        if let Some(l) = &links {
            let l = l.clone();
            crate::telemetry::on_scrape(move || {
                l.reverse.publish_metrics();
                l.publish_metrics();
            });
        }
    }
    let sync_detached = Arc::new(AtomicBool::new(false));
    let mut cutover_settings = settings.cutover.clone();
    if target_cluster {
        cutover_settings.switch_refused = Some(CLUSTER_TARGET_NO_SWITCH.to_string());
    }
    let controller = settings.target.as_ref().map(|_| {
        Arc::new(Controller::new(
            shared.clone(),
            sync.clone(),
            sync_detached.clone(),
            cutover_settings,
            links.clone(),
        ))
    });
    if let Some(c) = &controller {
        // Before any link writes: the target in import mode where it has one
        // (`cutover::import`; not one node of a cluster target).
        if !target_cluster {
            c.enter_import_mode().await;
        }
        // The two sides' clocks, once at start (`cutover::clock`).
        let c = c.clone();
        tokio::spawn(async move { c.measure_clocks().await });
    }
    let listener = TcpListener::bind(settings.proxy.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} ([proxy] listen)",
                settings.proxy.listen
            )
        })?;
    tracing::info!(listen = %settings.proxy.listen, source = %settings.source, "proxy ready; forwarding to the source");
    tokio::spawn(proxy::listen(listener, shared.clone()));
    // The scripts called by SHA that the proxy never saw loaded, asked of the primary.
    tokio::spawn(crate::cutover::unknown_scripts::watch(shared.clone()));
    if let Some(tls) = &settings.proxy.tls {
        let acceptor = proxy::tls::acceptor(&tls.files).context("[proxy] TLS listener")?;
        let listener = TcpListener::bind(tls.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([proxy] tls_listen)", tls.listen))?;
        tracing::info!(listen = %tls.listen, client_certificates = tls.files.client_ca_file.is_some(), "proxy TLS listener ready");
        tokio::spawn(proxy::listen_tls(
            listener,
            shared.clone(),
            acceptor,
            tls.handshake_timeout,
        ));
    }

    let verify = settings.target.as_ref().map(|t| {
        Arc::new(crate::verify::VerifyTracker::new(
            crate::verify::VerifyOptions::new(settings.source.clone(), t.clone()),
        ))
    });
    if settings.metrics.is_some() {
        crate::telemetry::preregister(settings.target.is_some(), settings.proxy.max_clients);
        // The gauges derived from the status document, fresh at every scrape without anyone
        // asking for `STATUS`: `cutover_rollback_safe` (computed by the controller's status)
        // and the last verify's result (`cutover_verify_*`).
        let (c, v) = (controller.clone(), verify.clone());
        crate::telemetry::on_scrape(move || {
            if let Some(c) = &c {
                let _ = c.status();
            }
            if let Some(v) = &v {
                crate::telemetry::publish_verify(&v.status());
            }
        });
    }

    if let Some(admin) = &settings.admin {
        let listener = TcpListener::bind(admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([admin] listen)", admin.listen))?;
        let server = Arc::new(AdminServer {
            token: admin.token.clone(),
            status: Arc::new(RunStatus {
                proxy: shared.clone(),
                sync: settings.target.as_ref().map(|_| sync.clone()),
                cutover: controller.clone(),
                started: Instant::now(),
                verify: verify.clone(),
            }),
            cutover: controller.clone(),
            verify,
        });
        let acceptor = admin
            .tls
            .as_ref()
            .map(proxy::tls::acceptor)
            .transpose()
            .context("[admin] TLS")?;
        tracing::info!(listen = %admin.listen, token = admin.token.is_some(), tls = acceptor.is_some(), "admin listener ready");
        tokio::spawn(server.listen(listener, acceptor));
    }

    if let Some(target) = &settings.target {
        let forward_stop = links.as_ref().map_or_else(
            || Arc::new(AtomicBool::new(false)),
            |l| l.forward_stop.clone(),
        );
        if let Some(links) = &links {
            start_reverse_link(links, &settings, target).await?;
        }
        let opts = SyncOptions {
            shared: Some(sync.clone()),
            tuning: settings.sync.clone(),
            // A cluster target: the engine writes through its `ClusterSink`.
            target_side: target_cluster.then(|| crate::cluster::SideSpec::single(target.clone())),
            ..SyncOptions::new(settings.source.clone(), target.clone())
        };
        std::thread::Builder::new()
            .name("cutover-sync".into())
            .spawn(move || run_sync(opts, sync_detached, forward_stop))
            .context("cannot start the sync thread")?;
        let route = shared.route.load_full();
        tokio::spawn(poll_offsets(route.source.clone(), sync.clone()));
        if let Some(t) = &route.target
            && !target_cluster
        {
            tokio::spawn(crate::cutover::memory::watch_evictions(
                t.clone(),
                sync.clone(),
            ));
        }
        // A cluster target: each master's evictions (the masters at start).
        for url in target_masters.iter().flatten() {
            tokio::spawn(crate::cutover::memory::watch_evictions(
                Arc::new(Backend::new(Side::Target, url.clone())),
                sync.clone(),
            ));
        }
        if let (Some(links), Some(t)) = (&links, &route.target)
            && links.unavailable().is_none()
        {
            tokio::spawn(poll_offsets(t.clone(), links.reverse.clone()));
            tokio::spawn(crate::cutover::memory::watch_evictions(
                route.source.clone(),
                links.reverse.clone(),
            ));
        }
        tracing::info!(target = %target, "sync started in the background (snapshot, then the live stream)");
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}

/// Why `cutover switch` is refused in a run whose target is a cluster.
pub const CLUSTER_TARGET_NO_SWITCH: &str = "the target is a Redis Cluster: this run syncs into it (the proxy still serves the source), but the proxy cannot front a cluster yet (it reaches one server per side and does not route by slot), so no switch is possible; keep the sync running and compare with `cutover verify`, or move the applications to the cluster yourself once it is caught up";

/// Refuses a cluster source (the proxy and the cutover reach one server: only one node's
/// slots would be served and copied; `cutover sync` copies a cluster), and gives the
/// target's masters when it is a cluster (`None`: one server). A server that cannot be
/// asked now passes as one server (its connection reports the failure, with its retries).
async fn cluster_sides(
    source: &RedisUrl,
    target: &RedisUrl,
) -> anyhow::Result<Option<Vec<RedisUrl>>> {
    let (source, target) = (source.clone(), target.clone());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(5);
        crate::cluster::side::refuse_cluster(
            "source",
            &source,
            "`cutover run` (its proxy and its cutover)",
            timeout,
        )?;
        let masters = match crate::cluster::SideSpec::single(target.clone()).resolve(timeout) {
            Ok(crate::cluster::Side::Cluster(topo)) => Some(topo.master_urls()),
            _ => None,
        };
        if masters.is_some() {
            tracing::warn!(%target, "the target is a Redis Cluster: the background sync writes into it by slot; `cutover switch` is refused in this run (the proxy cannot front a cluster yet)");
        }
        anyhow::Ok(masters)
    })
    .await
    .context("cluster check")?
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Starts the reverse link of a replica overlap (a replica of the target that writes into
/// the source, following until the first switch), before the forward sync: connected while
/// the target is still empty, its one snapshot costs nothing. Waits (bounded) until it
/// streams. A target that does not offer `PSYNC` (renamed or disabled, as managed services
/// do) has no reverse link: the overlap falls back to shadow writes (`auto`), or the switch
/// says why it is refused (`replica`).
async fn start_reverse_link(
    links: &Arc<Links>,
    settings: &Settings,
    target: &crate::config::RedisUrl,
) -> anyhow::Result<()> {
    let probe_url = target.clone();
    let probe = tokio::task::spawn_blocking(move || {
        crate::client::BlockingClient::open_url(&probe_url, Duration::from_secs(5))
            .and_then(|mut c| c.call_raw(&[b"COMMAND", b"INFO", b"PSYNC"]))
    })
    .await
    .context("cannot probe the target")?;
    match probe {
        Ok(raw) if raw.starts_with(b"*1\r\n*-1") || raw.starts_with(b"*1\r\n_") => {
            let why = format!(
                "the target {target} does not offer PSYNC (renamed or disabled, as managed services do)"
            );
            tracing::warn!(
                "{why}: the overlap after the switch uses shadow writes (overlap = {})",
                settings.cutover.overlap.as_str()
            );
            links.set_unavailable(why);
            let _ = links.reverse.handoff.end_overlap();
            return Ok(());
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the target whether it offers PSYNC; starting the reverse link anyway")
        }
    }
    let mut tuning = settings.sync.clone();
    tuning.filter = crate::sync::filter::Filter::default();
    let opts = SyncOptions {
        shared: Some(links.reverse.clone()),
        tuning,
        ..SyncOptions::new(target.clone(), settings.source.clone())
    };
    let stop = links.reverse_stop.clone();
    std::thread::Builder::new()
        .name("cutover-reverse".into())
        .spawn(move || run_sync(opts, Arc::new(AtomicBool::new(false)), stop))
        .context("cannot start the reverse link thread")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while links.reverse.phase() != SyncPhase::Streaming && Instant::now() < deadline {
        if links.reverse.last_error.lock().is_ok_and(|e| e.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(
        phase = links.reverse.phase_name(),
        "reverse link started (a replica of the target; it follows until the first switch)"
    );
    Ok(())
}

/// Reads `server`'s `master_repl_offset` every half second into the link's progress, so
/// that its lag counts what the server has and the link has not yet read (a link that stops
/// reading — a frozen target behind it — would otherwise look caught up). Ends with the link.
///
/// Also sets `cutover_sync_server_up{direction}`: 1 while that server answers, 0 while it
/// does not (the link itself keeps reconnecting for minutes before its phase says so).
async fn poll_offsets(server: Arc<Backend>, link: Arc<SyncProgress>) {
    let timeout = Duration::from_secs(2);
    let mut conn = None;
    let up = metrics::gauge!("cutover_sync_server_up", "direction" => link.direction());
    while !link.ended.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if conn.is_none() {
            conn = tokio::time::timeout(timeout, control::connect(&server, timeout))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else {
            up.set(0.0);
            continue;
        };
        match tokio::time::timeout(timeout, c.info("replication")).await {
            Ok(Ok(info)) => {
                up.set(1.0);
                if let Some(off) = info.master_repl_offset() {
                    link.set_server_offset(off);
                }
            }
            _ => {
                up.set(0.0);
                conn = None;
            }
        }
    }
}

/// Runs the sync for as long as the process lives. A failure (source or target down, link
/// dropped) is reported in `status` and retried with back-off ([`crate::sync::retry`]; one
/// that waiting cannot cure at the longest back-off); every retry resumes from the position
/// stored on the target, so nothing is applied twice.
fn run_sync(opts: SyncOptions, detached: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let Some(progress) = opts.shared.clone() else {
        return;
    };
    let ctx = RunContext {
        progress: progress.clone(),
        // The process handles the signals; the sync ends with it, or at `finish` (a link of
        // a replica overlap).
        stop,
    };
    let policy = RetryPolicy {
        give_up_after: None,
        retry_permanent: true,
    };
    loop {
        let result = run_retrying(&opts, policy, &ctx);
        if ctx.stop.load(Ordering::Acquire) {
            tracing::info!(
                direction = progress.direction(),
                "link stopped: the migration is finished"
            );
            progress.ended.store(true, Ordering::Release);
            return;
        }
        match result {
            // Returns Ok only when the cutover barrier asked it to stop at an offset. Either
            // the switch went through (the sync is over for good) or it was aborted (go on
            // streaming from the stored position).
            Ok(_) => {
                // (Its role says: asked to stop or stopped at the barrier, until the switch
                // detaches it or cancels the stop, `Solo` again.)
                while matches!(
                    progress.handoff.role(),
                    Role::SoloStopRequested(_) | Role::SoloStopped(_)
                ) && !detached.load(Ordering::Acquire)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if detached.load(Ordering::Acquire) {
                    tracing::info!("sync stopped: the target is the primary now");
                    progress.ended.store(true, Ordering::Release);
                    return;
                }
            }
            // A stream command the side it writes to refused for good: the link stays
            // stopped (status and the moves say why) until `finish` or the process ends.
            Err(e) if progress.refusals.halted() => {
                tracing::error!(
                    direction = progress.direction(),
                    error = %format!("{e:#}"),
                    "link stopped: a stream command was not applied"
                );
                while !ctx.stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                progress.ended.store(true, Ordering::Release);
                return;
            }
            // (Not reached otherwise: every other failure is retried.)
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "sync failed");
                std::thread::sleep(MAX_BACKOFF);
            }
        }
    }
}
