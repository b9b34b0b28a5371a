//! LZF, the compression Redis applies to strings and blobs in an RDB file.
//!
//! An RDB string whose first byte is `0xC3` is LZF-compressed:
//! `0xC3 <len: compressed size> <len: uncompressed size> <compressed bytes>`. Redis writes it
//! only with `rdbcompression yes`, only for strings over 20 bytes, and only when compression saves
//! at least 4 bytes. Quicklist nodes may also be compressed in memory (`list-compress-depth`) and
//! are then saved as-is in this form.
//!
//! # The format
//!
//! The compressed stream is a sequence of *chunks*; each starts with a control byte `ctrl`:
//!
//! ```text
//! ctrl < 0x20  (000LLLLL)          literal run: copy the next LLLLL + 1 bytes (1..=32) to the output
//! ctrl >= 0x20 (LLLooooo) [n] oo   back reference:
//!                                    length  = LLL + 2, or when LLL == 7: 7 + n + 2 (n is an extra byte)
//!                                    distance = (ooooo << 8 | oo) + 1 bytes back from the output's end
//! ```
//!
//! so a back reference copies 3..=264 bytes from up to 8192 bytes back. The copy goes byte by
//! byte and may overlap the bytes it produces (distance 1, length 10 repeats the last byte ten
//! times). There is no header, no end marker and no checksum: the stream ends with the input, and
//! the uncompressed size is known from the RDB string header. The output must come out at exactly
//! that size.
//!
//! # Bounds
//!
//! One input byte can produce at most 88 output bytes (a 3-byte back reference of 264 bytes), so
//! [`decompress`] rejects a declared size above `88 × compressed size` before allocating: a
//! corrupt or hostile header cannot make it reserve more memory than the input justifies.

use super::error::{RdbError, Result};

/// The largest output one compressed byte can produce (a 3-byte reference copying 264 bytes).
pub const MAX_EXPANSION: usize = 88;

/// Longest literal run one control byte can announce.
const MAX_LITERAL: usize = 32;
/// Longest back reference (`7 + 255 + 2`).
const MAX_MATCH: usize = 264;
/// Shortest back reference worth encoding.
const MIN_MATCH: usize = 3;
/// Farthest a back reference can reach (13-bit distance − 1).
const MAX_DISTANCE: usize = 8192;

/// Decompresses an LZF stream whose uncompressed size is declared to be `expected_len`.
///
/// Errors (offsets relative to the start of `input`) if the stream is malformed (a chunk runs
/// past the input, a back reference points before the start of the output), if it would produce
/// more than `expected_len` bytes or fewer, or if `expected_len` is impossible for the input's
/// size (see [`MAX_EXPANSION`]).
pub fn decompress(input: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    const CTX: &str = "LZF data";
    if expected_len > input.len().saturating_mul(MAX_EXPANSION) {
        return Err(RdbError::invalid(
            0,
            CTX,
            format!(
                "declared uncompressed size {expected_len} is impossible for {} compressed byte(s)",
                input.len()
            ),
        ));
    }
    let mut out: Vec<u8> = Vec::with_capacity(expected_len);
    let mut ip = 0usize;
    while ip < input.len() {
        let chunk_at = ip;
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 0x20 {
            let run = ctrl + 1;
            let Some(literal) = input.get(ip..ip + run) else {
                return Err(RdbError::invalid(
                    chunk_at as u64,
                    CTX,
                    format!(
                        "literal run of {run} byte(s) but only {} left in the input",
                        input.len() - ip
                    ),
                ));
            };
            if out.len() + run > expected_len {
                return Err(overflow(chunk_at, expected_len));
            }
            out.extend_from_slice(literal);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                let Some(&extra) = input.get(ip) else {
                    return Err(cut_reference(chunk_at));
                };
                len += extra as usize;
                ip += 1;
            }
            let Some(&low) = input.get(ip) else {
                return Err(cut_reference(chunk_at));
            };
            ip += 1;
            let distance = (((ctrl & 0x1f) << 8) | low as usize) + 1;
            let count = len + 2;
            if distance > out.len() {
                return Err(RdbError::invalid(
                    chunk_at as u64,
                    CTX,
                    format!(
                        "back reference {distance} byte(s) back, but only {} decompressed so far",
                        out.len()
                    ),
                ));
            }
            if out.len() + count > expected_len {
                return Err(overflow(chunk_at, expected_len));
            }
            let start = out.len() - distance;
            if distance >= count {
                out.extend_from_within(start..start + count);
            } else {
                // Overlapping copy: each byte may be one this very reference produced, so the
                // output from `start` on repeats with period `distance`. Copy it in doubling
                // pieces (each a whole number of periods), not byte by byte: runs of one byte
                // (distance 1, e.g. zero padding) are the common case.
                let mut left = count;
                let mut window = distance;
                while left > 0 {
                    let piece = left.min(window);
                    out.extend_from_within(start..start + piece);
                    left -= piece;
                    window += piece;
                }
            }
        }
    }
    if out.len() != expected_len {
        return Err(RdbError::invalid(
            input.len() as u64,
            CTX,
            format!(
                "decompressed to {} byte(s), but {expected_len} were declared",
                out.len()
            ),
        ));
    }
    Ok(out)
}

fn overflow(at: usize, expected_len: usize) -> RdbError {
    RdbError::invalid(
        at as u64,
        "LZF data",
        format!("output would exceed the declared {expected_len} byte(s)"),
    )
}

fn cut_reference(at: usize) -> RdbError {
    RdbError::invalid(
        at as u64,
        "LZF data",
        "back reference cut off by the end of the input",
    )
}

/// Compresses `input` into an LZF stream that [`decompress`] (and Redis' `lzf_decompress`)
/// restores exactly.
///
/// A greedy compressor: at each position it looks up the last position whose next three bytes
/// hashed the same, and if those bytes really match within reach, it emits the longest back
/// reference it can; otherwise the byte joins a literal run. Its output may differ from liblzf's
/// byte for byte (any valid stream is accepted by every reader), and can be slightly larger than
/// the input for incompressible data (one control byte per 32 literals).
pub fn compress(input: &[u8]) -> Vec<u8> {
    let n = input.len();
    let mut out = Vec::with_capacity(n + n / MAX_LITERAL + 1);
    if n < MIN_MATCH {
        push_literals(&mut out, input);
        return out;
    }
    // Hash table size grows with the input (small strings are the common case in an RDB), from
    // 2^8 to 2^14 slots. Slots hold position + 1, 0 meaning empty.
    let bits = (usize::BITS - n.leading_zeros()).clamp(8, 14);
    let mut table = vec![0usize; 1 << bits];
    let hash = |p: usize| -> usize {
        let v = (input[p] as u32) << 16 | (input[p + 1] as u32) << 8 | input[p + 2] as u32;
        (v.wrapping_mul(2_654_435_761) >> (32 - bits)) as usize
    };
    let mut literal_start = 0usize;
    let mut i = 0usize;
    while i + MIN_MATCH <= n {
        let h = hash(i);
        let candidate = table[h];
        table[h] = i + 1;
        if candidate != 0 {
            let cand = candidate - 1;
            let distance = i - cand;
            if distance <= MAX_DISTANCE && input[cand..cand + MIN_MATCH] == input[i..i + MIN_MATCH]
            {
                let max = MAX_MATCH.min(n - i);
                let mut len = MIN_MATCH;
                while len < max && input[cand + len] == input[i + len] {
                    len += 1;
                }
                push_literals(&mut out, &input[literal_start..i]);
                push_reference(&mut out, distance, len);
                // Remember the positions inside the match too: later data often repeats them.
                let end = i + len;
                let mut p = i + 1;
                while p < end && p + MIN_MATCH <= n {
                    let h = hash(p);
                    table[h] = p + 1;
                    p += 1;
                }
                i = end;
                literal_start = i;
                continue;
            }
        }
        i += 1;
    }
    push_literals(&mut out, &input[literal_start..]);
    out
}

/// Compresses `input` only if that saves at least 4 bytes, as Redis' `rdbSaveLzfStringObject`
/// requires (it gives liblzf an output buffer of `len - 4` bytes). `None` means "store it raw".
pub fn compress_if_smaller(input: &[u8]) -> Option<Vec<u8>> {
    if input.len() <= 4 {
        return None;
    }
    let compressed = compress(input);
    (compressed.len() <= input.len() - 4).then_some(compressed)
}

fn push_literals(out: &mut Vec<u8>, mut literals: &[u8]) {
    while !literals.is_empty() {
        let run = literals.len().min(MAX_LITERAL);
        out.push((run - 1) as u8);
        out.extend_from_slice(&literals[..run]);
        literals = &literals[run..];
    }
}

/// `distance` is 1..=8192 bytes back, `len` 3..=264 bytes.
fn push_reference(out: &mut Vec<u8>, distance: usize, len: usize) {
    let off = distance - 1;
    let l = len - 2;
    let high = (off >> 8) as u8;
    if l < 7 {
        out.push(((l as u8) << 5) | high);
    } else {
        out.push((7 << 5) | high);
        out.push((l - 7) as u8);
    }
    out.push((off & 0xff) as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_built_streams() {
        // Literal "abc", then a reference 3 back, length 6 (overlapping): "abcabcabc".
        let stream = [0x02, b'a', b'b', b'c', (4 << 5), 0x02];
        assert_eq!(decompress(&stream, 9).unwrap(), b"abcabcabc");
        // A long reference: "a" then 7+10+2 = 19 more 'a's from distance 1.
        let stream = [0x00, b'a', (7 << 5), 10, 0x00];
        assert_eq!(decompress(&stream, 20).unwrap(), vec![b'a'; 20]);
        assert_eq!(decompress(&[], 0).unwrap(), b"");
    }

    #[test]
    fn malformed_streams_are_errors() {
        // Literal run longer than the input.
        assert!(decompress(&[0x05, b'a'], 6).is_err());
        // Reference before anything was produced.
        assert!(decompress(&[0x20, 0x00], 3).is_err());
        // Reference reaching too far back.
        assert!(decompress(&[0x00, b'a', 0x20, 0x01], 4).is_err());
        // Cut-off references.
        assert!(decompress(&[0x00, b'a', 0x20], 4).is_err());
        assert!(decompress(&[0x00, b'a', 0xe0], 40).is_err());
        assert!(decompress(&[0x00, b'a', 0xe0, 0x01], 40).is_err());
        // Too long, too short.
        assert!(decompress(&[0x02, b'a', b'b', b'c'], 2).is_err());
        assert!(decompress(&[0x02, b'a', b'b', b'c'], 4).is_err());
        // Impossible declared size: refused before allocating.
        let e = decompress(&[0x00, b'a'], usize::MAX).unwrap_err();
        assert!(e.to_string().contains("impossible"), "{e}");
    }

    #[test]
    fn compresses_repetitive_data() {
        let data = b"hello hello hello hello hello hello hello hello".repeat(20);
        let c = compress(&data);
        assert!(c.len() < data.len() / 5, "{} -> {}", data.len(), c.len());
        assert_eq!(decompress(&c, data.len()).unwrap(), data);
        assert!(compress_if_smaller(&data).is_some());
        assert!(compress_if_smaller(b"abcdefgh").is_none());
        assert!(compress_if_smaller(b"").is_none());
    }

    #[test]
    fn max_expansion_is_reachable() {
        // 1 literal then references of 264 bytes: ratio tends to 88.
        let data = vec![7u8; 1 + 264 * 50];
        let c = compress(&data);
        assert_eq!(c.len(), 2 + 3 * 50);
        assert_eq!(decompress(&c, data.len()).unwrap(), data);
    }

    proptest! {
        #[test]
        fn round_trip_arbitrary(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let c = compress(&data);
            prop_assert_eq!(decompress(&c, data.len()).unwrap(), data);
        }

        #[test]
        fn round_trip_repetitive(
            alphabet in proptest::collection::vec(any::<u8>(), 1..4),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..20000),
        ) {
            let data: Vec<u8> = picks.iter().map(|i| alphabet[i.index(alphabet.len())]).collect();
            let c = compress(&data);
            prop_assert_eq!(decompress(&c, data.len()).unwrap(), data);
        }

        #[test]
        fn garbage_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            len in 0usize..30000,
        ) {
            let _ = decompress(&data, len);
        }
    }
}
