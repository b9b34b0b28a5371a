//! TLS on the proxy's listeners (the client-facing TLS listener, the admin listener).
//!
//! A TLS listener runs next to the plain one (like Redis' `tls-port` next to `port`); each
//! accepted socket is handshaken in its own task with a deadline, so a client that opens a
//! connection and never finishes (or never starts) the handshake is dropped when the deadline
//! passes and holds nothing after that. Failed handshakes are counted
//! (`cutover_tls_handshake_failures_total{listener, reason}`) and logged with the peer and
//! rustls' reason (certificates and keys are never logged).
//!
//! A plain RESP client on the TLS port is told so in RESP, not with a TLS alert it cannot
//! read: every TLS connection starts with a handshake record (first byte `0x16`), so a
//! first byte that is anything else gets `-ERR … this port expects TLS` and the connection is
//! closed.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ServerTlsFiles;

/// The first byte of a TLS record carrying a handshake message (a `ClientHello`).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {source}; check the path and its permissions")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form (expected a \"-----BEGIN {pem}-----\" block)")]
    Empty {
        what: &'static str,
        path: String,
        pem: &'static str,
    },
    #[error("{what} {path} is not valid: {reason}")]
    Invalid {
        what: &'static str,
        path: String,
        reason: String,
    },
}

fn read_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsSetupError {
    let path = path.display().to_string();
    move |source| TlsSetupError::Read { what, path, source }
}

/// Reads a PEM certificate chain (or CA bundle).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let file = File::open(path).map_err(read_err(what, path))?;
    let certs = CertificateDer::pem_reader_iter(BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Invalid {
            what,
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            what,
            path: path.display().to_string(),
            pem: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let file = File::open(path).map_err(read_err("private key", path))?;
    PrivateKeyDer::from_pem_reader(BufReader::new(file)).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsSetupError::Empty {
            what: "private key",
            path: path.display().to_string(),
            pem: "PRIVATE KEY",
        },
        other => TlsSetupError::Invalid {
            what: "private key",
            path: path.display().to_string(),
            reason: other.to_string(),
        },
    })
}

/// rustls with the ring provider (the only one built in: aws-lc needs cmake). rustls 0.23.48
/// deprecates ring's provider for lacking post-quantum key exchange; it is still supported.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for a TLS listener: its certificate and key, and (with a client CA) the
/// requirement that clients present a certificate signed by it.
pub fn acceptor(files: &ServerTlsFiles) -> Result<TlsAcceptor, TlsSetupError> {
    let certs = load_certs("certificate", &files.cert_file)?;
    let key = load_key(&files.key_file)?;
    let invalid =
        |what: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsSetupError::Invalid {
            what,
            path: path.display().to_string(),
            reason: e.to_string(),
        };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("certificate", &files.cert_file, &e))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("client CA", ca)? {
                roots.add(c).map_err(|e| invalid("client CA", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| invalid("client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &files.key_file, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why a handshake failed, as a short metric label.
fn reason_label(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "eof"
    } else if text.contains("certificate") || text.contains("Certificate") {
        "certificate"
    } else {
        "protocol"
    }
}

/// Handshakes one accepted socket within `deadline`; `None` (logged and counted) if it fails,
/// the peer is not speaking TLS, or the deadline passes.
pub async fn handshake(
    listener: &'static str,
    acceptor: &TlsAcceptor,
    mut socket: TcpStream,
    peer: std::net::SocketAddr,
    deadline: Duration,
) -> Option<TlsStream<TcpStream>> {
    let _ = socket.set_nodelay(true);
    let work = async {
        let mut first = [0u8; 1];
        match socket.peek(&mut first).await {
            Ok(0) => return Err(("eof", "closed before the handshake".to_string())),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                // Take what it sent first: closing a socket with unread bytes resets the
                // connection, and the reset can destroy the reply before the client reads it.
                let mut sink = [0u8; 4096];
                let _ = socket.try_read(&mut sink);
                let _ = socket
                    .write_all(b"-ERR cutover: this port expects TLS; connect with TLS (redis-cli --tls, rediss://) or use the plain port\r\n")
                    .await;
                let _ = socket.shutdown().await;
                // Until the client closes too (bounded by the deadline around this).
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                return Err((
                    "not_tls",
                    "a client without TLS on the TLS port".to_string(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(("io", e.to_string())),
        }
        acceptor
            .accept(socket)
            .await
            .map_err(|e| (reason_label(&e), e.to_string()))
    };
    let (reason, detail) = match tokio::time::timeout(deadline, work).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(e)) => e,
        Err(_) => (
            "timeout",
            format!(
                "the handshake did not finish within {} ms",
                deadline.as_millis()
            ),
        ),
    };
    crate::telemetry::error("tls_handshake");
    metrics::counter!("cutover_tls_handshake_failures_total", "listener" => listener, "reason" => reason)
        .increment(1);
    tracing::info!(%peer, listener, reason, error = %detail, "TLS handshake failed; connection closed");
    None
}
