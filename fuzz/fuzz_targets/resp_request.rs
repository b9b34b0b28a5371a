//! Feeds arbitrary bytes, split at an arbitrary point, to the request framer: it must never
//! panic, and the commands it finds must not depend on where the input was split.
#![no_main]
use cutover::resp::{Request, RequestParser};
use libfuzzer_sys::fuzz_target;

fn frames(data: &[u8], split: usize) -> Vec<Result<(usize, Option<usize>), ()>> {
    let mut p = RequestParser::default();
    let mut out = Vec::new();
    let mut buf = data[..split].to_vec();
    let mut rest = &data[split..];
    loop {
        match p.parse(&buf) {
            Ok(Some(r)) => {
                let (len, argc) = match r {
                    Request::Array { len, argc, .. } => (len, Some(argc as usize)),
                    Request::Inline { len, args } => (len, Some(args.len())),
                    Request::Empty { len } => (len, None),
                };
                out.push(Ok((len, argc)));
                buf.drain(..len);
            }
            Ok(None) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(None) => return out,
            Err(_) => {
                out.push(Err(()));
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let whole = frames(&data[1..], 0);
    let pieces = frames(&data[1..], split.min(data.len() - 1));
    // Lengths may differ only when an error cut the input short.
    if !whole.iter().any(|r| r.is_err()) && !pieces.iter().any(|r| r.is_err()) {
        assert_eq!(
            whole.iter().map(|r| r.map(|x| x.1)).collect::<Vec<_>>(),
            pieces.iter().map(|r| r.map(|x| x.1)).collect::<Vec<_>>()
        );
    }
});
