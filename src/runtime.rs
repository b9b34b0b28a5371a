//! `cutover run`: wires the listeners together and runs until Ctrl-C / SIGTERM.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::admin::AdminServer;
use crate::config::Settings;
use crate::proxy::{self, ProxyShared};
use crate::route::{Backend, Route, Side};
use crate::status::RunStatus;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(addr) = settings.metrics {
        crate::telemetry::install_exporter(addr)?;
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
        let server = Arc::new(AdminServer {
            token: admin.token.clone(),
            status: Arc::new(RunStatus {
                proxy: shared.clone(),
                started: Instant::now(),
            }),
        });
        tracing::info!(listen = %admin.listen, token = admin.token.is_some(), "admin listener ready");
        tokio::spawn(server.listen(listener));
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
