//! Non-blocking socket reads that keep tokio's readiness exact.
//!
//! `TcpStream::try_read` leaves the socket marked readable after a short read, so the next
//! wait returns at once and the next read fails with `WouldBlock`: one wasted system call per
//! read. Reading through `AsyncRead::poll_read` instead lets tokio clear the readiness on a
//! short read (the kernel had no more), which saves that call on every request and reply.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Reads what is available now into `buf` (reserving `chunk` bytes first).
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
