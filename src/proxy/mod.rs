//! The transparent RESP proxy: listener → session → route → upstream.
//!
//! * [`listen`] accepts client connections (refusing beyond `max_clients` the way Redis does);
//! * [`session::Session`] serves one client: frames commands, keeps its connection state,
//!   pairs replies with commands;
//! * the route table ([`crate::route`]) says which backend is primary, read once per batch;
//! * [`upstream`] opens and authenticates backend connections, with a shared back-off;
//! * [`io::Conn`] is the stream of both hops (plain TCP or TLS), [`tls`] the TLS listener's
//!   set-up and handshake;
//! * [`mux::SharedLinks`] holds the shared backend connections, one per side.

pub mod command;
pub mod io;
pub mod mux;
pub mod session;
pub mod tls;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use arc_swap::ArcSwapOption;

use crate::config::ProxySettings;
use crate::cutover::gate::Gate;
use crate::cutover::shadow::ShadowSink;
use crate::route::RouteTable;

/// State shared by all sessions and read by the admin listener.
pub struct ProxyShared {
    pub settings: ProxySettings,
    pub route: RouteTable,
    pub client_conns: AtomicUsize,
    pub clients_accepted: AtomicU64,
    /// The cutover barrier's gate, consulted by every session before it dispatches.
    pub gate: Gate,
    /// Where acknowledged writes are copied while the old side is kept in step (after a
    /// switch, until `finish`); empty otherwise.
    pub shadow: ArcSwapOption<ShadowSink>,
    /// While writes are shadowed: the keys with a write in flight to the primary, so that
    /// no two writes to one key are in flight at once ([`crate::cutover::order`]).
    pub key_order: Arc<crate::cutover::order::KeyOrder>,
    /// The shared backend connections, one per side ([`mux::SharedLinks`]).
    pub links: mux::SharedLinks,
    /// The scripts clients loaded (`SCRIPT LOAD`, `EVAL` bodies), loaded into the new
    /// primary by each move ([`crate::cutover::scripts`]).
    pub scripts: crate::cutover::scripts::Scripts,
    /// What each session would hold a move up with ([`crate::cutover::holders`]).
    pub clients: crate::cutover::holders::Clients,
}

impl ProxyShared {
    pub fn new(settings: ProxySettings, route: RouteTable) -> Self {
        ProxyShared {
            settings,
            route,
            client_conns: AtomicUsize::new(0),
            clients_accepted: AtomicU64::new(0),
            gate: Gate::default(),
            shadow: ArcSwapOption::empty(),
            key_order: Arc::default(),
            links: mux::SharedLinks::default(),
            scripts: Default::default(),
            clients: Default::default(),
        }
    }
}

impl crate::cutover::ProxyHandle for ProxyShared {
    fn route(&self) -> &RouteTable {
        &self.route
    }
    fn gate(&self) -> &Gate {
        &self.gate
    }
    fn shadow(&self) -> &ArcSwapOption<ShadowSink> {
        &self.shadow
    }
    fn scripts(&self) -> &crate::cutover::scripts::Scripts {
        &self.scripts
    }
    fn clients(&self) -> &crate::cutover::holders::Clients {
        &self.clients
    }
    fn key_order(&self) -> &Arc<crate::cutover::order::KeyOrder> {
        &self.key_order
    }
}

/// Accepts clients forever, one task per connection.
pub async fn listen(listener: TcpListener, shared: Arc<ProxyShared>) {
    loop {
        let Some((socket, peer)) = accept(&listener, &shared).await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            session::Session::new(shared.clone(), io::Conn::from(socket), peer)
                .run()
                .await;
            client_left(&shared);
        });
    }
}

/// The TLS listener: like [`listen`], each client handshaken first (within
/// `handshake_timeout`, see [`tls::handshake`]). A client counts against `max_clients` from
/// the moment it is accepted, so a flood of unfinished handshakes cannot exceed it, and it is
/// let go when the handshake fails or its deadline passes.
pub async fn listen_tls(
    listener: TcpListener,
    shared: Arc<ProxyShared>,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
) {
    loop {
        let Some((socket, peer)) = accept(&listener, &shared).await else {
            continue;
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Some(stream) =
                tls::handshake("proxy", &acceptor, socket, peer, handshake_timeout).await
            {
                session::Session::new(shared.clone(), io::Conn::from(stream), peer)
                    .run()
                    .await;
            }
            client_left(&shared);
        });
    }
}

/// Accepts one client and counts it, or refuses it beyond `max_clients` (`None`).
async fn accept(
    listener: &TcpListener,
    shared: &ProxyShared,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    let (mut socket, peer) = match listener.accept().await {
        Ok(c) => c,
        Err(e) => {
            // Out of file descriptors and similar: wait instead of spinning.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return None;
        }
    };
    if shared.client_conns.load(Ordering::Relaxed) >= shared.settings.max_clients {
        crate::telemetry::error("max_clients");
        tokio::spawn(async move {
            let _ = socket
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
        });
        return None;
    }
    shared.client_conns.fetch_add(1, Ordering::Relaxed);
    shared.clients_accepted.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("cutover_client_connections").increment(1.0);
    metrics::counter!("cutover_client_connections_total").increment(1);
    Some((socket, peer))
}

fn client_left(shared: &ProxyShared) {
    shared.client_conns.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!("cutover_client_connections").decrement(1.0);
}
