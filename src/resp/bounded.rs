//! A bounded, non-recursive check of one RESP2 frame, run before a frame from an untrusted
//! peer is handed to a full decoder.
//!
//! The `redis-protocol` crate's decoder (used on the control plane, see `admin/`) descends
//! one stack frame per nesting level and re-parses the whole buffer on every call: 100,000
//! nested `*1\r\n` overflow the stack and abort the process, and a frame trickling in byte by
//! byte costs quadratic time. [`FrameCheck`] walks the frame with an explicit stack bounded by
//! [`Limits::max_depth`], remembers where it stopped (each byte is looked at once), and refuses
//! a frame deeper or longer than the limits before anything else sees it.

use super::request::{parse_int, read_line};

/// What a peer may send in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Aggregates open at once (`*1\r\n$1\r\nx\r\n` is depth 1).
    pub max_depth: usize,
    /// Bytes of one frame, headers included.
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Value,
    /// Inside a bulk body whose trailing CRLF ends at `end`.
    Bulk {
        end: usize,
    },
}

/// The resumable scanner: feed it the same buffer (grown at the end) until it returns the
/// frame's length, then drop that many bytes from the front (and call [`FrameCheck::reset`],
/// which a returned length does by itself).
#[derive(Debug)]
pub struct FrameCheck {
    state: State,
    cursor: usize,
    /// Elements still expected per open aggregate; never longer than `max_depth`.
    stack: Vec<u64>,
}

impl Default for FrameCheck {
    fn default() -> Self {
        FrameCheck {
            state: State::Value,
            cursor: 0,
            stack: Vec::new(),
        }
    }
}

impl FrameCheck {
    /// Forget a partly scanned frame.
    pub fn reset(&mut self) {
        *self = FrameCheck::default();
    }

    /// `Ok(Some(len))`: a complete frame of `len` bytes within the limits starts `buf`;
    /// `Ok(None)`: more bytes are needed (and may come); `Err`: refuse the peer.
    pub fn check(&mut self, buf: &[u8], limits: Limits) -> Result<Option<usize>, String> {
        let too_big = || {
            format!(
                "frame longer than {} bytes (this listener's limit)",
                limits.max_bytes
            )
        };
        loop {
            if self.cursor > limits.max_bytes {
                return Err(too_big());
            }
            match self.state {
                State::Bulk { end } => {
                    if end > limits.max_bytes {
                        return Err(too_big());
                    }
                    if buf.len() < end {
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err("bulk string not terminated by CRLF".into());
                    }
                    self.cursor = end;
                    self.state = State::Value;
                    if let Some(len) = self.element_done() {
                        return Ok(Some(len));
                    }
                }
                State::Value => {
                    let Some(&kind) = buf.get(self.cursor) else {
                        return Ok(None);
                    };
                    let room = limits.max_bytes.saturating_sub(self.cursor);
                    let Some((line, next)) =
                        read_line(buf, self.cursor + 1, room).map_err(|_| too_big())?
                    else {
                        return Ok(None);
                    };
                    match kind {
                        b'+' | b'-' | b':' => {
                            if kind == b':' && parse_int(line).is_none() {
                                return Err("invalid integer".into());
                            }
                            self.cursor = next;
                        }
                        b'$' => {
                            let n = parse_int(line).ok_or("invalid bulk length")?;
                            self.cursor = next;
                            if n >= 0 {
                                let end = (n as u64).saturating_add(next as u64 + 2);
                                if end > limits.max_bytes as u64 {
                                    return Err(too_big());
                                }
                                self.state = State::Bulk { end: end as usize };
                                continue;
                            } else if n != -1 {
                                return Err("invalid bulk length".into());
                            }
                        }
                        b'*' => {
                            let n = parse_int(line).ok_or("invalid multibulk length")?;
                            self.cursor = next;
                            if n > 0 {
                                if self.stack.len() >= limits.max_depth {
                                    return Err(format!(
                                        "nesting deeper than {} levels",
                                        limits.max_depth
                                    ));
                                }
                                // Each element takes at least 3 bytes ("+\r\n").
                                if (n as u64).saturating_mul(3) > limits.max_bytes as u64 {
                                    return Err(too_big());
                                }
                                self.stack.push(n as u64);
                                continue;
                            } else if n < -1 {
                                return Err("invalid multibulk length".into());
                            }
                        }
                        other => {
                            return Err(format!(
                                "unexpected type byte {:?} (expected a RESP2 frame)",
                                char::from(other)
                            ));
                        }
                    }
                    if let Some(len) = self.element_done() {
                        return Ok(Some(len));
                    }
                }
            }
        }
    }

    /// One value ended: close finished aggregates; the frame's length when it is complete.
    fn element_done(&mut self) -> Option<usize> {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return None;
            }
            self.stack.pop();
        }
        let len = self.cursor;
        self.reset();
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: Limits = Limits {
        max_depth: 4,
        max_bytes: 1024,
    };

    #[test]
    fn frames_and_their_lengths() {
        for w in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"$3\r\nabc\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$4\r\nAUTH\r\n$1\r\nt\r\n",
            b"*2\r\n*1\r\n:1\r\n$-1\r\n",
        ] {
            let mut c = FrameCheck::default();
            assert_eq!(c.check(w, L), Ok(Some(w.len())), "{w:?}");
            // Byte by byte: the same answer, each prefix incomplete.
            let mut c = FrameCheck::default();
            for i in 0..w.len() {
                assert_eq!(c.check(&w[..i], L), Ok(None), "{w:?} at {i}");
            }
            assert_eq!(c.check(w, L), Ok(Some(w.len())));
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = b"*1\r\n".repeat(100_000);
        let e = FrameCheck::default().check(&deep, L).unwrap_err();
        assert!(e.contains("nesting deeper than 4"), "{e}");
        let big = Limits {
            max_depth: 1_000_000,
            max_bytes: usize::MAX,
        };
        let mut deep = b"*1\r\n".repeat(500_000);
        deep.extend_from_slice(b":1\r\n");
        assert_eq!(
            FrameCheck::default().check(&deep, big),
            Ok(Some(deep.len()))
        );
    }

    #[test]
    fn size_limits() {
        let e = FrameCheck::default().check(b"$5000\r\n", L).unwrap_err();
        assert!(e.contains("longer than 1024"), "{e}");
        assert!(FrameCheck::default().check(b"*1000\r\n", L).is_err());
        assert!(FrameCheck::default().check(&[b'+'; 2000], L).is_err());
        assert!(FrameCheck::default().check(b"$-2\r\n", L).is_err());
        assert!(FrameCheck::default().check(b"?\r\n", L).is_err());
        assert!(FrameCheck::default().check(b"$1\r\nabc", L).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(12),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn garbage_is_bounded(data in proptest::collection::vec(any::<u8>(), 0..400), cut in 1usize..50) {
            let mut c = FrameCheck::default();
            let mut end = 0;
            while end < data.len() {
                end = (end + cut).min(data.len());
                match c.check(&data[..end], L) {
                    Ok(Some(len)) => { prop_assert!(len <= end && len <= L.max_bytes); break; }
                    Ok(None) => prop_assert!(c.stack.len() <= L.max_depth),
                    Err(_) => break,
                }
            }
        }
    }
}
