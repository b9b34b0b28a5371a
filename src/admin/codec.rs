//! The admin protocol's codec: the `redis-protocol` crate's RESP2 codec behind a bounded,
//! non-recursive pre-check ([`crate::resp::bounded::FrameCheck`]).
//!
//! The crate's decoder recurses once per nesting level: unchecked, one unauthenticated packet
//! of 100,000 nested `*1\r\n` overflows the stack and aborts the whole proxy. Every frame is
//! therefore checked first against [`Limits`] (depth and size), and only a complete frame within
//! them reaches the crate. Admin commands are flat arrays of short strings, so the limits are
//! tight before `AUTH` and still small after.

use bytes::BytesMut;
use redis_protocol::codec::Resp2;
use redis_protocol::error::{RedisProtocolError, RedisProtocolErrorKind};
use redis_protocol::resp2::types::BytesFrame;
use tokio_util::codec::{Decoder, Encoder};

use crate::resp::bounded::{FrameCheck, Limits};

/// What a client that has not given the token may send in one frame.
pub const BEFORE_AUTH: Limits = Limits {
    max_depth: 2,
    max_bytes: 16 * 1024,
};
/// What an authenticated admin client may send in one frame.
pub const AFTER_AUTH: Limits = Limits {
    max_depth: 8,
    max_bytes: 1024 * 1024,
};
/// What the CLI accepts from the admin listener (a `STATUS` document is a few KB; a listener
/// that is not ours must not crash the CLI either).
pub const REPLIES: Limits = Limits {
    max_depth: 32,
    max_bytes: 64 * 1024 * 1024,
};

/// RESP2 frames, checked against `limits` before they are decoded.
#[derive(Debug)]
pub struct BoundedResp2 {
    inner: Resp2,
    check: FrameCheck,
    pub limits: Limits,
}

impl BoundedResp2 {
    pub fn new(limits: Limits) -> Self {
        BoundedResp2 {
            inner: Resp2::default(),
            check: FrameCheck::default(),
            limits,
        }
    }
}

impl Decoder for BoundedResp2 {
    type Item = BytesFrame;
    type Error = RedisProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesFrame>, RedisProtocolError> {
        if src.is_empty() {
            return Ok(None);
        }
        match self.check.check(src, self.limits) {
            Ok(None) => Ok(None),
            Ok(Some(len)) => {
                // Exactly the checked frame goes to the crate's decoder.
                let mut frame = src.split_to(len);
                match self.inner.decode(&mut frame)? {
                    Some(f) if frame.is_empty() => Ok(Some(f)),
                    _ => Err(RedisProtocolError::new(
                        RedisProtocolErrorKind::DecodeError,
                        "frame could not be decoded",
                    )),
                }
            }
            Err(reason) => {
                self.check.reset();
                Err(RedisProtocolError::new(
                    RedisProtocolErrorKind::DecodeError,
                    reason,
                ))
            }
        }
    }
}

impl Encoder<BytesFrame> for BoundedResp2 {
    type Error = RedisProtocolError;

    fn encode(&mut self, item: BytesFrame, dst: &mut BytesMut) -> Result<(), RedisProtocolError> {
        self.inner.encode(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nested_frames_are_refused_before_auth() {
        let mut codec = BoundedResp2::new(BEFORE_AUTH);
        let mut buf = BytesMut::from(&b"*1\r\n".repeat(100_000)[..]);
        let e = codec.decode(&mut buf).unwrap_err();
        assert!(e.to_string().contains("nesting deeper"), "{e}");
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$3\r\ntok\r\n+PING\r\n"[..]);
        let f = codec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(f, BytesFrame::Array(ref a) if a.len() == 2));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(BytesFrame::SimpleString("PING".into()))
        );
        assert!(buf.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 1024,
            rng_seed: proptest::test_runner::RngSeed::Fixed(1),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Arbitrary bytes in arbitrary pieces: no panic, nothing buffered past the limit.
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            nest in 0usize..20_000,
            cut in 1usize..300,
        ) {
            let mut codec = BoundedResp2::new(Limits { max_depth: 2, max_bytes: 512 });
            let mut wire = b"*1\r\n".repeat(nest);
            wire.extend_from_slice(&data);
            let mut buf = BytesMut::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(buf.len() <= 512 + cut);
            }
        }
    }
}
