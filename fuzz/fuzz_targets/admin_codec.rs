//! Arbitrary bytes from an admin client, in arbitrary pieces, to the admin listener's codec
//! (bounded pre-check + the `redis-protocol` decoder): it must never panic or recurse without
//! bound, never hold more than its limit, and find the same frames however the input is split.
#![no_main]
use bytes::BytesMut;
use cutover::admin::codec::{AFTER_AUTH, BEFORE_AUTH, BoundedResp2};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn frames(data: &[u8], piece: usize, before_auth: bool) -> (Vec<String>, bool) {
    let limits = if before_auth { BEFORE_AUTH } else { AFTER_AUTH };
    let mut codec = BoundedResp2::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => out.push(format!("{frame:?}")),
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
        // Nothing bigger than one frame's limit (plus the last read) is ever held.
        assert!(buf.len() <= limits.max_bytes + piece.max(1) + 2);
    }
    (out, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // A prefix of nested arrays reaches the depth limit quickly.
    let mut input = b"*1\r\n".repeat((control & 0x0f) as usize * 64);
    input.extend_from_slice(rest);
    let before_auth = control & 0x80 == 0;
    let whole = frames(&input, input.len(), before_auth);
    let pieces = frames(&input, ((control >> 4) & 0x07) as usize + 1, before_auth);
    assert_eq!(whole, pieces);
});
