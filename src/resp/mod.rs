//! RESP framing for the data path.
//!
//! The proxy never decodes a whole frame into values: it finds frame boundaries incrementally
//! ([`RequestParser`] for what clients send, [`ReplyParser`] for what servers answer) and passes
//! the original bytes on untouched, so a reply reaches the client byte for byte as the server
//! wrote it. The control plane (admin listener, handshakes) uses the `redis-protocol` crate's
//! full decoder instead, where frames are small and convenience matters more than copies.

pub mod bounded;
pub mod mask;
pub mod reply;
pub mod request;

pub use reply::{ReplyError, ReplyInfo, ReplyParser};
pub use request::{ProtocolError, Request, RequestParser};

/// Appends a RESP simple error line (`-<msg>\r\n`), flattening any CR/LF in `msg`.
pub fn push_error(out: &mut impl Extend<u8>, msg: &str) {
    out.extend([b'-']);
    out.extend(
        msg.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend(*b"\r\n");
}
