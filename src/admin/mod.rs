//! The admin listener: a small RESP server the CLI (and `redis-cli -p <admin port>`) talks to.
//!
//! Commands: `AUTH <token>`, `PING`, `STATUS` (a JSON document as a bulk string),
//! `SWITCH [MAXPAUSE <ms>] [FORCE]`, `ROLLBACK [MAXPAUSE <ms>] [FORCE]`, `FINISH` (each answers
//! the move's report as JSON, or an error whose text is the reason nothing changed), `VERIFY`
//! (starts a verify of the source against the target in the background and answers at once;
//! `STATUS` shows it under `verify`). When a token is configured, every command but
//! `AUTH`/`PING` needs it first.

pub mod client;
pub mod codec;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use self::codec::BoundedResp2;
use crate::config::constant_time_eq;
use crate::cutover::Controller;
use crate::status::StatusSource;

/// How long a peer that has not sent `AUTH` yet may take to send its next command.
const PRE_AUTH_IDLE: Duration = Duration::from_secs(10);

pub struct AdminServer {
    pub token: Option<String>,
    pub status: Arc<dyn StatusSource>,
    /// The cutover controller, when a target is configured.
    pub cutover: Option<Arc<Controller>>,
    /// Runs `VERIFY` (None: no target configured).
    pub verify: Option<Arc<crate::verify::VerifyTracker>>,
}

impl AdminServer {
    /// Serves admin clients; with `tls`, each connection is a TLS one (handshaken within
    /// [`PRE_AUTH_IDLE`]).
    pub async fn listen(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            match listener.accept().await {
                Ok((socket, peer)) => {
                    let me = self.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _ = socket.set_nodelay(true);
                        let codec = BoundedResp2::new(if me.token.is_some() {
                            codec::BEFORE_AUTH
                        } else {
                            codec::AFTER_AUTH
                        });
                        let ended = match tls {
                            None => me.serve(Framed::new(socket, codec)).await,
                            Some(acceptor) => {
                                let handshake = crate::proxy::tls::handshake(
                                    "admin",
                                    &acceptor,
                                    socket,
                                    peer,
                                    PRE_AUTH_IDLE,
                                );
                                match handshake.await {
                                    Some(stream) => me.serve(Framed::new(stream, codec)).await,
                                    None => Ok(()),
                                }
                            }
                        };
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "admin connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut conn: Framed<S, BoundedResp2>,
    ) -> Result<(), redis_protocol::error::RedisProtocolError> {
        let mut authed = self.token.is_none();
        loop {
            // Before AUTH a peer gets a few seconds per command: an idle or half-sent
            // connection of somebody without the token is closed, not kept.
            let next = if authed {
                conn.next().await
            } else {
                match tokio::time::timeout(PRE_AUTH_IDLE, conn.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        crate::telemetry::error("admin_idle");
                        return Ok(());
                    }
                }
            };
            let Some(frame) = next else { break };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    // Malformed, too deep or too big: say why and close, as Redis does with a
                    // protocol error (bounded: a peer that does not read cannot hold us).
                    crate::telemetry::error("admin_protocol");
                    let reply = BytesFrame::Error(
                        format!(
                            "ERR Protocol error: {}; closing the connection",
                            e.details()
                        )
                        .into(),
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(reply)).await;
                    return Err(e);
                }
            };
            let args = match frame {
                BytesFrame::Array(items) => items
                    .into_iter()
                    .map(|f| match f {
                        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b),
                        _ => None,
                    })
                    .collect::<Option<Vec<Bytes>>>()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let reply = self.handle(&args, &mut authed).await;
            if authed {
                conn.codec_mut().limits = codec::AFTER_AUTH;
            }
            // (A peer that does not read its replies cannot hold the task forever.)
            match tokio::time::timeout(Duration::from_secs(30), conn.send(reply)).await {
                Ok(sent) => sent?,
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    async fn handle(&self, args: &[Bytes], authed: &mut bool) -> BytesFrame {
        let err = |m: &str| BytesFrame::Error(m.to_string().into());
        let Some(name) = args.first() else {
            return err("ERR expected a command as an array of strings");
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        match name.as_str() {
            "PING" => BytesFrame::SimpleString(Bytes::from_static(b"PONG")),
            "AUTH" => {
                let given = args.last().filter(|_| args.len() >= 2);
                match (&self.token, given) {
                    (Some(t), Some(g)) if constant_time_eq(t.as_bytes(), g) => {
                        *authed = true;
                        BytesFrame::SimpleString(Bytes::from_static(b"OK"))
                    }
                    (None, _) => BytesFrame::SimpleString(Bytes::from_static(b"OK")),
                    _ => {
                        crate::telemetry::error("admin_auth");
                        err("WRONGPASS invalid admin token")
                    }
                }
            }
            _ if !*authed => {
                err("NOAUTH this admin listener needs its token: pass --token or --config")
            }
            "STATUS" => {
                let doc = self.status.status();
                BytesFrame::BulkString(Bytes::from(doc.to_string()))
            }
            "SWITCH" | "ROLLBACK" | "FINISH" => {
                let Some(c) = &self.cutover else {
                    return err("ERR no [target] is configured: there is nothing to switch to");
                };
                let (max_pause, force) = match move_options(&args[1..]) {
                    Ok(o) => o,
                    Err(e) => return err(&format!("ERR {e}")),
                };
                let result = match name.as_str() {
                    "SWITCH" => c.switch(max_pause, force).await,
                    "ROLLBACK" => c.rollback(max_pause, force).await,
                    _ => c.finish().await,
                };
                match result {
                    Ok(report) => BytesFrame::BulkString(Bytes::from(
                        serde_json::to_string(&report).unwrap_or_default(),
                    )),
                    Err(e) => {
                        tracing::warn!(command = %name, reason = %e, "cutover move refused");
                        err(&format!("ERR {e}"))
                    }
                }
            }
            "VERIFY" => match &self.verify {
                None => err("ERR no target configured: nothing to verify"),
                Some(v) => match v.start() {
                    Ok(()) => BytesFrame::SimpleString(Bytes::from_static(b"STARTED")),
                    Err(e) => err(&format!("ERR {e}")),
                },
            },
            other => err(&format!(
                "ERR unknown admin command '{other}'; try STATUS, SWITCH, ROLLBACK, FINISH, VERIFY"
            )),
        }
    }
}

/// `[MAXPAUSE <ms>] [FORCE]`.
fn move_options(args: &[Bytes]) -> Result<(Option<Duration>, bool), String> {
    let mut max_pause = None;
    let mut force = false;
    let mut i = 0;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        match opt.as_str() {
            "FORCE" => force = true,
            "MAXPAUSE" => {
                let ms: u64 = args
                    .get(i + 1)
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or("MAXPAUSE needs a number of milliseconds above 0")?;
                max_pause = Some(Duration::from_millis(ms));
                i += 1;
            }
            other => {
                return Err(format!(
                    "unknown option '{other}' (expected MAXPAUSE <ms> or FORCE)"
                ));
            }
        }
        i += 1;
    }
    Ok((max_pause, force))
}
