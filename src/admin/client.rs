//! The CLI side of the admin protocol.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use redis_protocol::resp2::types::BytesFrame;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use super::codec::{BoundedResp2, REPLIES};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the cutover admin listener at {addr}: {source} (is `cutover run` running? check --admin / [admin] listen)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("admin protocol error: {0}")]
    Protocol(String),
    #[error(
        "the connection to `cutover run` at {addr} was lost during `{command}` ({detail}): its outcome is unknown. Run `cutover status` (restart `cutover run` first if it stopped) to see which side is the primary before trying again"
    )]
    Lost {
        addr: String,
        command: String,
        detail: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Tls(String),
}

/// Sends one admin command (after `AUTH <token>` when a token is given) and returns the reply.
pub async fn request(
    addr: &str,
    token: Option<&str>,
    command: &[&str],
    timeout: Duration,
) -> Result<BytesFrame, AdminError> {
    request_tls(addr, None, token, command, timeout).await
}

/// [`request`] to an admin listener that speaks TLS when `tls_ca` is given: its certificate
/// must be signed by a CA in that PEM file and name the host of `addr`.
pub async fn request_tls(
    addr: &str,
    tls_ca: Option<&Path>,
    token: Option<&str>,
    command: &[&str],
    timeout: Duration,
) -> Result<BytesFrame, AdminError> {
    let connector = tls_ca.map(|ca| connector(addr, ca)).transpose()?;
    let work = async {
        let socket = TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        match connector {
            None => {
                exchange(
                    Framed::new(socket, BoundedResp2::new(REPLIES)),
                    addr,
                    token,
                    command,
                )
                .await
            }
            Some((connector, name)) => {
                let stream = connector.connect(name, socket).await.map_err(|e| {
                    AdminError::Tls(format!(
                        "the TLS handshake with the admin listener at {addr} failed: {e} (is it a TLS listener, and is its certificate signed by --admin-tls-ca?)"
                    ))
                })?;
                exchange(
                    Framed::new(stream, BoundedResp2::new(REPLIES)),
                    addr,
                    token,
                    command,
                )
                .await
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AdminError::Timeout {
            addr: addr.to_string(),
            secs: timeout.as_secs(),
        })?
}

/// A TLS connector trusting the CAs in `ca`, and the name `addr`'s host must have.
fn connector(addr: &str, ca: &Path) -> Result<(TlsConnector, ServerName<'static>), AdminError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = crate::proxy::tls::load_certs("admin CA", ca)
        .map_err(|e| AdminError::Tls(e.to_string()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| AdminError::Tls(format!("{}: {e}", ca.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AdminError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| AdminError::Tls(format!("{host} is not a valid TLS server name: {e}")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Framed<S, BoundedResp2>,
    addr: &str,
    token: Option<&str>,
    command: &[&str],
) -> Result<BytesFrame, AdminError> {
    {
        if let Some(t) = token {
            let reply = roundtrip(&mut conn, &["AUTH", t]).await?;
            if let BytesFrame::Error(e) = reply {
                return Err(AdminError::Refused(e.to_string()));
            }
        }
        // Once the command is sent, a lost connection leaves its outcome unknown (a move may
        // have happened): say so, and where to look.
        let reply = roundtrip(&mut conn, command).await.map_err(|e| match e {
            AdminError::Protocol(detail) => AdminError::Lost {
                addr: addr.to_string(),
                command: command
                    .first()
                    .copied()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                detail,
            },
            other => other,
        })?;
        match reply {
            BytesFrame::Error(e) => Err(AdminError::Refused(e.to_string())),
            other => Ok(other),
        }
    }
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<S, BoundedResp2>,
    args: &[&str],
) -> Result<BytesFrame, AdminError> {
    let frame = BytesFrame::Array(
        args.iter()
            .map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a.as_bytes())))
            .collect(),
    );
    conn.send(frame)
        .await
        .map_err(|e| AdminError::Protocol(e.to_string()))?;
    match conn.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(AdminError::Protocol(e.to_string())),
        None => Err(AdminError::Protocol("connection closed".into())),
    }
}
