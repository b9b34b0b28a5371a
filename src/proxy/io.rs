//! The proxy's data-path stream ([`Conn`]): plain TCP or TLS, read and written without
//! blocking, with readiness that never misses a wakeup.
//!
//! # Plain TCP
//! `TcpStream::try_read` leaves the socket marked readable after a short read, so the next
//! wait returns at once and the next read fails with `WouldBlock`: one wasted system call per
//! read. Reading through `AsyncRead::poll_read` instead lets tokio clear the readiness on a
//! short read (the kernel had no more), which saves that call on every request and reply.
//! Writes are `try_write`: tokio clears the write readiness on `WouldBlock`.
//!
//! # TLS
//! rustls sits between the socket and the plaintext, and holds bytes the socket's readiness
//! does not show:
//! * **decrypted plaintext** not yet taken: a read stops when the caller's buffer is full,
//!   which may leave plaintext (or whole records) in rustls while the socket has nothing
//!   more. So a read that stopped before the socket said `WouldBlock` sets [`Conn::more`],
//!   and [`Conn::readable`] returns at once while it is set. A read that ends in the
//!   socket's `WouldBlock` leaves rustls without plaintext (every complete record was
//!   decrypted, only a partial record waits for more bytes) and the socket's readiness
//!   cleared: waiting on the socket is then exact.
//! * **ciphertext not yet sent**: a write encrypts into rustls' send buffer and writes
//!   that to the socket; what the socket did not take stays there, and a read may queue
//!   records too (alerts, key updates). [`Conn::wants_flush`] says so; callers wait for
//!   writability while it holds and call [`Conn::flush_now`] (or any write) when writable.
//!
//! # Waiting: through `tokio::select!`
//! Reads with a no-op waker have one trap: under tokio's cooperative budget, once a task has
//! spent it, `poll_read` answers `Pending` without reading and without clearing the
//! readiness, while `readable()` (which does not consume budget) keeps answering at once. A
//! loop of `readable().await` and a read would spin forever without yielding. `select!`
//! returns `Pending` when the budget is spent, so the task yields and gets a new one: every
//! wait on a `Conn` goes through `select!` (the session's and the shared connection's loops
//! do).
//!
//! The handshake is done before a `Conn` is made (by the listener for clients, by the
//! connector for backends), with real wakers and a deadline. It may have read more than the
//! handshake (a TLS 1.3 client's first command travels with its `Finished`), so a new TLS
//! `Conn` starts with `more` set.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use rustls::ConnectionCommon;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// The transport of one proxied connection (client side or backend side).
pub enum Stream {
    Plain(TcpStream),
    /// A client that connected to the proxy's TLS listener.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A connection the proxy opened to a TLS backend.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A [`Stream`] and what the socket's readiness cannot tell about it.
pub struct Conn {
    stream: Stream,
    /// TLS only: the last read stopped before the socket ran dry (rustls may hold plaintext).
    more: bool,
}

impl From<TcpStream> for Conn {
    fn from(s: TcpStream) -> Self {
        Conn::new(Stream::Plain(s))
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Conn {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Conn::new(Stream::TlsServer(Box::new(s)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Conn {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Conn::new(Stream::TlsClient(Box::new(s)))
    }
}

impl Conn {
    pub fn new(stream: Stream) -> Self {
        // A fresh TLS stream may already hold application data: a TLS 1.3 client sends its
        // first command right behind its `Finished`, and the handshake read both from the
        // socket. So the first wait must not be on the socket, or that command is never read.
        let more = !matches!(stream, Stream::Plain(_));
        Conn { stream, more }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Stream::Plain(_))
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(s) => s,
            Stream::TlsServer(s) => s.get_ref().0,
            Stream::TlsClient(s) => s.get_ref().0,
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// Waits until a read may return something (at once while TLS plaintext may be buffered).
    pub async fn readable(&self) -> io::Result<()> {
        if self.more {
            return Ok(());
        }
        self.tcp().readable().await
    }

    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// TLS records are waiting to be written to the socket (always `false` for plain TCP).
    #[inline]
    pub fn wants_flush(&self) -> bool {
        match &self.stream {
            Stream::Plain(_) => false,
            Stream::TlsServer(s) => s.get_ref().1.wants_write(),
            Stream::TlsClient(s) => s.get_ref().1.wants_write(),
        }
    }

    /// Reads what is available now into `buf` (reserving `chunk` bytes first).
    /// `Ok(None)`: nothing to read yet; `Ok(Some(0))`: the peer closed its side.
    #[inline]
    pub fn read_now(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<Option<usize>> {
        match &mut self.stream {
            Stream::Plain(s) => read_now(s, buf, chunk),
            Stream::TlsServer(s) => {
                let (tcp, conn) = s.get_mut();
                tls_read(tcp, conn, buf, chunk, &mut self.more)
            }
            Stream::TlsClient(s) => {
                let (tcp, conn) = s.get_mut();
                tls_read(tcp, conn, buf, chunk, &mut self.more)
            }
        }
    }

    /// Writes what the socket takes now (`WouldBlock` when it takes nothing).
    #[inline]
    pub fn write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.try_write(data),
            Stream::TlsServer(s) => {
                let (tcp, conn) = s.get_mut();
                tls_write(tcp, conn, &[IoSlice::new(data)])
            }
            Stream::TlsClient(s) => {
                let (tcp, conn) = s.get_mut();
                tls_write(tcp, conn, &[IoSlice::new(data)])
            }
        }
    }

    /// [`Conn::write_now`] for several buffers at once (one `writev` on plain TCP).
    #[inline]
    pub fn write_vectored_now(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.try_write_vectored(bufs),
            Stream::TlsServer(s) => {
                let (tcp, conn) = s.get_mut();
                tls_write(tcp, conn, bufs)
            }
            Stream::TlsClient(s) => {
                let (tcp, conn) = s.get_mut();
                tls_write(tcp, conn, bufs)
            }
        }
    }

    /// Writes the TLS records rustls holds; `Ok(())` also when the socket is full (then
    /// [`Conn::wants_flush`] stays true and the caller waits for writability).
    pub fn flush_now(&mut self) -> io::Result<()> {
        let r = match &mut self.stream {
            Stream::Plain(_) => return Ok(()),
            Stream::TlsServer(s) => {
                let (tcp, conn) = s.get_mut();
                flush_tls(tcp, conn)
            }
            Stream::TlsClient(s) => {
                let (tcp, conn) = s.get_mut();
                flush_tls(tcp, conn)
            }
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }
}

/// Plain TCP: reads what is available now into `buf` (reserving `chunk` bytes first).
/// `Ok(None)`: nothing to read yet; `Ok(Some(0))`: the peer closed its side.
pub fn read_now(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
) -> io::Result<Option<usize>> {
    buf.reserve(chunk);
    let mut cx = Context::from_waker(Waker::noop());
    match tokio_util::io::poll_read_buf(Pin::new(stream), &mut cx, buf) {
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(None),
    }
}

/// The socket as rustls' `Read`: `poll_read` with a no-op waker, so tokio clears the read
/// readiness on a short read (see the module doc); `Pending` is `WouldBlock`.
struct SockRead<'a>(&'a mut TcpStream);

impl Read for SockRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.0).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The socket as rustls' `Write`.
struct SockWrite<'a>(&'a TcpStream);

impl Write for SockWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Takes decrypted plaintext into `buf`, reading and decrypting records from the socket
/// until `chunk` bytes were taken or the socket has no more (see the module doc for `more`).
fn tls_read<D>(
    tcp: &mut TcpStream,
    conn: &mut ConnectionCommon<D>,
    buf: &mut BytesMut,
    chunk: usize,
    more: &mut bool,
) -> io::Result<Option<usize>> {
    let mut taken = 0;
    loop {
        if taken >= chunk {
            // Stopped with the socket (or rustls) maybe holding more: read again first.
            *more = true;
            return Ok(Some(taken));
        }
        match conn.reader().into_first_chunk() {
            // The peer sent `close_notify`, and every byte before it was taken.
            Ok([]) => {
                *more = false;
                return Ok(Some(taken));
            }
            Ok(plain) => {
                let n = plain.len().min(chunk - taken);
                buf.extend_from_slice(&plain[..n]);
                std::io::BufRead::consume(&mut conn.reader(), n);
                taken += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A TCP close without `close_notify` (most Redis clients): an end like any other.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                *more = false;
                return Ok(Some(taken));
            }
            Err(e) => return Err(e),
        }
        // No plaintext left: decrypt what the socket has.
        match conn.read_tls(&mut SockRead(tcp)) {
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Tell the peer why (best effort), then fail the connection.
                    let _ = conn.write_tls(&mut SockWrite(tcp));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *more = false;
                return Ok((taken > 0).then_some(taken));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes rustls' pending records to the socket; `WouldBlock` when some are left.
fn flush_tls<D>(tcp: &TcpStream, conn: &mut ConnectionCommon<D>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut SockWrite(tcp))?;
    }
    Ok(())
}

/// Encrypts as much of `bufs` as the socket takes now. Pending records are written first, so
/// rustls' send buffer never holds more than one round of them.
fn tls_write<D>(
    tcp: &TcpStream,
    conn: &mut ConnectionCommon<D>,
    bufs: &[IoSlice<'_>],
) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut written = 0;
    loop {
        match flush_tls(tcp, conn) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && written > 0 => return Ok(written),
            Err(e) => return Err(e),
        }
        if written == total {
            return Ok(written);
        }
        let n = if written == 0 {
            conn.writer().write_vectored(bufs)?
        } else {
            // Rare (more than rustls' 64 KiB send buffer at once): the rest, one buffer at a time.
            let mut skip = written;
            let mut rest = &[][..];
            for b in bufs {
                if skip < b.len() {
                    rest = &b[skip..];
                    break;
                }
                skip -= b.len();
            }
            conn.writer().write(rest)?
        };
        if n == 0 {
            // Cannot happen with the send buffer just emptied; never spin.
            return if written > 0 {
                Ok(written)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        written += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS server `Conn` and a tokio-rustls client over loopback.
    async fn pair() -> (Conn, tokio_rustls::client::TlsStream<TcpStream>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = crate::proxy::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(s)
                .await
                .unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let c = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        (Conn::from(accept.await.unwrap()), c)
    }

    /// Reads `want` bytes the way the session does: wait for readiness, then read what is
    /// there, in small chunks (so rustls keeps plaintext between reads). A missed wakeup is a
    /// timeout here.
    async fn read_all(conn: &mut Conn, want: usize, chunk: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while buf.len() < want {
                // Through `select!`, as the session waits (see the module doc on the budget).
                tokio::select! { r = conn.readable() => r.unwrap() }
                if let Some(0) = conn.read_now(&mut buf, chunk).unwrap() {
                    panic!("EOF after {} bytes", buf.len());
                }
            }
        })
        .await
        .expect("a TLS read missed its wakeup");
        buf
    }

    #[tokio::test]
    async fn tls_reads_in_small_chunks_see_every_byte() {
        let (mut server, mut client) = pair().await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                // Also a first write right behind the handshake (it may be read with it).
                client.write_all(&data).await.unwrap();
                client.flush().await.unwrap();
                client
            })
        };
        let got = read_all(&mut server, data.len(), 1000).await;
        assert!(got[..] == data[..]);
        let mut client = writer.await.unwrap();

        // The other way: writes bigger than rustls' send buffer, flushed on writability.
        let reply: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut back = vec![0u8; 2_000_000];
            client.read_exact(&mut back).await.unwrap();
            back
        });
        let mut at = 0;
        tokio::time::timeout(Duration::from_secs(10), async {
            while at < reply.len() || server.wants_flush() {
                match server.write_now(&reply[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                if at == reply.len() {
                    server.flush_now().unwrap();
                }
                if at < reply.len() || server.wants_flush() {
                    tokio::select! { r = server.writable() => r.unwrap() }
                }
            }
        })
        .await
        .expect("a TLS write missed its wakeup");
        assert!(reader.await.unwrap() == reply);
    }
}
