//! Arbitrary bytes from a "server": the reply framer must never panic.
#![no_main]
use cutover::resp::ReplyParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = ReplyParser::default();
    p.capture_arrays = data.first().is_some_and(|b| b & 1 == 1);
    let mut buf = data.to_vec();
    for _ in 0..64 {
        match p.parse(&buf) {
            Ok(Some(info)) => {
                assert!(info.len > 0 && info.len <= buf.len());
                buf.drain(..info.len);
            }
            _ => break,
        }
    }
});
