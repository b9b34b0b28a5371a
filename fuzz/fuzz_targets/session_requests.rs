//! The client side of a proxy session without the network: arbitrary client bytes framed the
//! way `proxy::session` frames them — logged in or not (Redis' limits for unauthenticated
//! clients), huge commands handed on piecewise once their head is known, the captured
//! arguments classified. Nothing may panic, and nothing may be held beyond the limits.
#![no_main]
use cutover::proxy::command::{self, Kind};
use cutover::resp::request::{UNAUTH_MAX_ARGS, UNAUTH_MAX_BULK};
use cutover::resp::{Request, RequestParser};
use libfuzzer_sys::fuzz_target;

/// A smaller stand-in for the session's 256 KiB streaming threshold.
const STREAM_THRESHOLD: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let unauthenticated = control & 1 == 1;
    let piece = (control >> 1) as usize % 64 + 1;
    let mut p = RequestParser::default();
    p.set_unauthenticated(unauthenticated);
    let mut buf: Vec<u8> = Vec::new();
    let mut handed_on = 0usize;
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match p.parse(&buf) {
                Ok(Some(req)) => {
                    let len = match &req {
                        Request::Array { len, argc, args } => {
                            if unauthenticated {
                                assert!(*argc as i64 <= UNAUTH_MAX_ARGS);
                            }
                            if let Some(name) = args.get(&buf, 0) {
                                let kind = command::classify(
                                    name,
                                    args.get(&buf, 1),
                                    args.get(&buf, 2),
                                    *argc,
                                );
                                let id = command::command_id(name);
                                let _ = (kind == Kind::Plain, command::needs_own_connection(id));
                            }
                            *len
                        }
                        Request::Inline { len, args } => {
                            if let Some(name) = args.first() {
                                let _ = command::classify(
                                    name,
                                    args.get(1).map(|a| &a[..]),
                                    args.get(2).map(|a| &a[..]),
                                    args.len() as u64,
                                );
                            }
                            *len
                        }
                        Request::Empty { len } => *len,
                    };
                    assert!(len > 0 && len <= buf.len());
                    buf.drain(..len);
                    handed_on = 0;
                }
                Ok(None) => {
                    // Stream the head of a big command on, as the session does.
                    let scanned = p.scanned();
                    if scanned >= STREAM_THRESHOLD {
                        assert!(
                            !unauthenticated
                                || handed_on + scanned <= 11 * (UNAUTH_MAX_BULK as usize + 32)
                        );
                        buf.drain(..scanned);
                        p.forwarded(scanned);
                        handed_on += scanned;
                    }
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
