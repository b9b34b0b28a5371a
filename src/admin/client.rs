//! The CLI side of the admin protocol.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use redis_protocol::resp2::types::BytesFrame;
use tokio::net::TcpStream;
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
    #[error("{0}")]
    Refused(String),
}

/// Sends one admin command (after `AUTH <token>` when a token is given) and returns the reply.
pub async fn request(
    addr: &str,
    token: Option<&str>,
    command: &[&str],
    timeout: Duration,
) -> Result<BytesFrame, AdminError> {
    let work = async {
        let socket = TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let mut conn = Framed::new(socket, BoundedResp2::new(REPLIES));
        if let Some(t) = token {
            let reply = roundtrip(&mut conn, &["AUTH", t]).await?;
            if let BytesFrame::Error(e) = reply {
                return Err(AdminError::Refused(e.to_string()));
            }
        }
        match roundtrip(&mut conn, command).await? {
            BytesFrame::Error(e) => Err(AdminError::Refused(e.to_string())),
            other => Ok(other),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AdminError::Timeout {
            addr: addr.to_string(),
            secs: timeout.as_secs(),
        })?
}

async fn roundtrip(
    conn: &mut Framed<TcpStream, BoundedResp2>,
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
