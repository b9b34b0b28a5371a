//! Arbitrary bytes as a `CONFIG GET` reply to be masked: never a panic, and a masked reply is
//! still exactly one well-formed reply with no secret value left after a secret name.
#![no_main]
use cutover::resp::ReplyParser;
use cutover::resp::mask::{SECRET_CONFIGS, mask_values_after};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(masked) = mask_values_after(data, SECRET_CONFIGS) else {
        return;
    };
    let info = ReplyParser::default()
        .parse(&masked)
        .expect("a masked reply frames")
        .expect("a masked reply is complete");
    assert_eq!(info.len, masked.len());
    // Masking is idempotent.
    assert_eq!(
        mask_values_after(&masked, SECRET_CONFIGS).as_deref(),
        Some(&masked[..])
    );
});
