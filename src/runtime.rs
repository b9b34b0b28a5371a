//! `cutover run`: wires the listeners together and runs until Ctrl-C / SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::admin::AdminServer;
use crate::config::Settings;
use crate::cutover::Controller;
use crate::proxy::{self, ProxyShared};
use crate::route::{Backend, Route, Side};
use crate::status::RunStatus;
use crate::sync::engine::{RunContext, SyncOptions, SyncProgress};
use crate::sync::retry::{MAX_BACKOFF, RetryPolicy, run_retrying};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(addr) = settings.metrics {
        crate::telemetry::install_exporter(addr).await?;
        tracing::info!(%addr, "metrics listener ready (Prometheus text at /metrics)");
    }
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
    if let Some(target) = &settings.target {
        let check = target.clone();
        let marker = tokio::task::spawn_blocking(move || {
            crate::sync::position::switched_marker(&check, Duration::from_secs(5))
        })
        .await
        .context("cannot check the target")?;
        match marker {
            Ok(Some(value)) => anyhow::bail!(
                "the target {target} was switched to by an earlier `cutover run` (key cutover:switched = {value:?} in db 0): it is the primary, and starting again would send the clients back to the source and apply the shadowed writes a second time. Point the applications at the target (or at a proxy without [target]); to migrate into it from scratch, delete that key and its data first"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check whether the target was switched to already; the sync retries and checks again")
            }
        }
    }
    let sync = Arc::new(SyncProgress::default());
    let sync_detached = Arc::new(AtomicBool::new(false));
    let controller = settings.target.as_ref().map(|_| {
        Arc::new(Controller::new(
            shared.clone(),
            sync.clone(),
            sync_detached.clone(),
            settings.cutover.clone(),
        ))
    });
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

    if let Some(admin) = &settings.admin {
        let listener = TcpListener::bind(admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([admin] listen)", admin.listen))?;
        let verify = settings.target.as_ref().map(|t| {
            Arc::new(crate::verify::VerifyTracker::new(
                crate::verify::VerifyOptions::new(settings.source.clone(), t.clone()),
            ))
        });
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
        tracing::info!(listen = %admin.listen, token = admin.token.is_some(), "admin listener ready");
        tokio::spawn(server.listen(listener));
    }

    if let Some(target) = &settings.target {
        let opts = SyncOptions {
            shared: Some(sync.clone()),
            tuning: settings.sync.clone(),
            ..SyncOptions::new(settings.source.clone(), target.clone())
        };
        std::thread::Builder::new()
            .name("cutover-sync".into())
            .spawn(move || run_sync(opts, sync_detached))
            .context("cannot start the sync thread")?;
        tracing::info!(target = %target, "sync started in the background (snapshot, then the live stream)");
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
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

/// Runs the sync for as long as the process lives. A failure (source or target down, link
/// dropped) is reported in `status` and retried with back-off ([`crate::sync::retry`]; one
/// that waiting cannot cure at the longest back-off); every retry resumes from the position
/// stored on the target, so nothing is applied twice.
fn run_sync(opts: SyncOptions, detached: Arc<AtomicBool>) {
    let Some(progress) = opts.shared.clone() else {
        return;
    };
    let ctx = RunContext {
        progress: progress.clone(),
        // The process handles the signals; the sync just ends with it.
        stop: Arc::new(AtomicBool::new(false)),
    };
    let policy = RetryPolicy {
        give_up_after: None,
        retry_permanent: true,
    };
    loop {
        match run_retrying(&opts, policy, &ctx) {
            // Returns Ok only when the cutover barrier asked it to stop at an offset. Either
            // the switch went through (the sync is over for good) or it was aborted (go on
            // streaming from the stored position).
            Ok(_) => {
                while progress.stop_requested().is_some() && !detached.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if detached.load(Ordering::Acquire) {
                    tracing::info!("sync stopped: the target is the primary now");
                    return;
                }
                progress.stopped.store(false, Ordering::Release);
            }
            // (Not reached: every failure is retried.)
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "sync failed");
                std::thread::sleep(MAX_BACKOFF);
            }
        }
    }
}
