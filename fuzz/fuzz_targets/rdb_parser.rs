//! Arbitrary bytes as an RDB file, fed in pieces: the parser must never panic, and splitting
//! the input differently must not change the events.
#![no_main]
use cutover::rdb::parser::{ParserOptions, RdbParser};
use cutover::rdb::version::Dialect;
use cutover::rdb::{ChunkLimits, Event, decode_value};
use libfuzzer_sys::fuzz_target;

/// Pieces of a big string follow the input's arrival; join adjacent ones.
fn push(events: &mut Vec<Event>, ev: Event) {
    if let (Some(Event::StringChunk(prev)), Event::StringChunk(next)) = (events.last_mut(), &ev) {
        prev.extend_from_slice(next);
        return;
    }
    events.push(ev);
}

fn run(data: &[u8], piece: usize, raw_strings: bool) -> (Vec<Event>, bool) {
    let mut p = RdbParser::with_options(ParserOptions {
        raw_limit: 4096,
        chunks: ChunkLimits {
            items: 3,
            bytes: 64,
        },
        verify_checksum: false,
        raw_strings_without_expiry: raw_strings,
    });
    let mut events = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        p.feed(chunk);
        loop {
            match p.next_event() {
                Ok(Some(ev)) => push(&mut events, ev),
                Ok(None) => break,
                Err(_) => return (events, false),
            }
        }
    }
    (events, p.finish().is_ok())
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    // Most inputs get a valid header so the fuzzer reaches the item parsers.
    let mut input = if piece & 0x80 == 0 {
        b"REDIS0011".to_vec()
    } else {
        b"VALKEY080".to_vec()
    };
    input.extend_from_slice(rest);
    let raw_strings = piece & 0x40 == 0;
    let whole = run(&input, input.len(), raw_strings);
    let pieces = run(&input, (piece & 0x1f) as usize + 1, raw_strings);
    // Compared as text: a NaN score is not equal to itself.
    assert_eq!(format!("{whole:?}"), format!("{pieces:?}"));
    // Raw value bodies must decode with the value decoder alone.
    let dialect = if piece & 0x80 == 0 {
        Dialect::Common
    } else {
        Dialect::Valkey
    };
    for ev in &whole.0 {
        if let Event::KeyEnd { raw: Some(raw) } = ev {
            assert!(decode_value(raw, dialect, ChunkLimits::UNLIMITED).is_ok());
        }
    }
});
