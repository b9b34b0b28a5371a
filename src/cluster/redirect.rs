//! Cluster error replies that tell a client where to go, or to wait.
//!
//! * `-MOVED <slot> <host>:<port>`: the slot is served by that node now; send the command
//!   there and refresh the slot map (the topology changed).
//! * `-ASK <slot> <host>:<port>`: the slot is being migrated and this key is already on the
//!   importing node; send `ASKING` and then the command to that node, *once*: the map is not
//!   changed (the slot still belongs to the exporting node until the migration ends).
//! * `-TRYAGAIN …`: a multi-key command whose keys are split between the two nodes of a slot
//!   being migrated; retry after a short pause.
//! * `-CLUSTERDOWN …`: the cluster cannot serve the slot (no quorum, slot unassigned, failover
//!   under way); retry after a pause and refresh the map.
//!
//! The host may be empty (`-MOVED 3999 :6380`), which means "the host you asked", when the node
//! does not know its own address to announce (`cluster-preferred-endpoint-type unknown-endpoint`
//! or `?`); an IPv6 address is written without brackets (`::1:6380`: the port follows the last
//! colon). [`Redirect::parse`] is a pure function of the reply's bytes and never panics
//! (property test).

use super::map::NodeAddr;
use super::slot::{SLOTS, Slot};

/// A cluster redirection or retry request read from an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot lives at `addr` now: re-send there and refresh the map.
    Moved { slot: Slot, addr: NodeAddr },
    /// This once, ask `addr` (after `ASKING`); the map is unchanged.
    Ask { slot: Slot, addr: NodeAddr },
    /// Retry later (keys of one command split by a slot migration).
    TryAgain,
    /// The cluster cannot serve this now; the server's message.
    ClusterDown(String),
}

impl Redirect {
    /// Reads a redirect from an error reply: the raw frame (`-MOVED …\r\n`) or its text.
    /// `None` for any other reply, and for a malformed `MOVED`/`ASK` (bad slot or address).
    pub fn parse(reply: &[u8]) -> Option<Redirect> {
        let text = reply.strip_prefix(b"-").unwrap_or(reply);
        let end = text
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(text.len());
        let text = std::str::from_utf8(&text[..end]).ok()?;
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        match word {
            "MOVED" | "ASK" => {
                let mut parts = rest.split(' ');
                let slot: usize = parts.next()?.parse().ok()?;
                let addr = NodeAddr::parse(parts.next()?)?;
                if slot >= SLOTS || parts.next().is_some() {
                    return None;
                }
                let slot = slot as Slot;
                Some(if word == "MOVED" {
                    Redirect::Moved { slot, addr }
                } else {
                    Redirect::Ask { slot, addr }
                })
            }
            "TRYAGAIN" => Some(Redirect::TryAgain),
            "CLUSTERDOWN" => Some(Redirect::ClusterDown(rest.to_string())),
            _ => None,
        }
    }

    /// True when the slot map should be fetched again (`MOVED`, `CLUSTERDOWN`).
    pub fn refresh_map(&self) -> bool {
        matches!(self, Redirect::Moved { .. } | Redirect::ClusterDown(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(h: &str, p: u16) -> NodeAddr {
        NodeAddr {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn parses_the_server_forms() {
        assert_eq!(
            Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: addr("127.0.0.1", 6381)
            })
        );
        assert_eq!(
            Redirect::parse(b"ASK 0 node-2.example:7000"),
            Some(Redirect::Ask {
                slot: 0,
                addr: addr("node-2.example", 7000)
            })
        );
        assert_eq!(
            Redirect::parse(b"-MOVED 16383 ::1:6380\r\n"),
            Some(Redirect::Moved {
                slot: 16383,
                addr: addr("::1", 6380)
            })
        );
        assert_eq!(
            Redirect::parse(b"-MOVED 12 :6380\r\n"),
            Some(Redirect::Moved {
                slot: 12,
                addr: addr("", 6380)
            })
        );
        assert_eq!(
            Redirect::parse(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            Redirect::parse(b"-CLUSTERDOWN Hash slot not served\r\n"),
            Some(Redirect::ClusterDown("Hash slot not served".into()))
        );
        assert!(Redirect::parse(b"-MOVED 16384 a:1\r\n").is_none());
        assert!(Redirect::parse(b"-MOVED 1 a:99999\r\n").is_none());
        assert!(Redirect::parse(b"-MOVED 1\r\n").is_none());
        assert!(Redirect::parse(b"-MOVED x a:1\r\n").is_none());
        assert!(Redirect::parse(b"-ERR unknown command\r\n").is_none());
        assert!(Redirect::parse(b"+OK\r\n").is_none());
        assert!(Redirect::parse(b"").is_none());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Redirect::parse(&bytes);
        }

        #[test]
        fn round_trips(slot in 0u16..16384, host in "[a-z0-9.:-]{0,20}", port in any::<u16>(), ask in any::<bool>()) {
            let word = if ask { "ASK" } else { "MOVED" };
            let line = format!("-{word} {slot} {host}:{port}\r\n");
            let got = Redirect::parse(line.as_bytes()).unwrap();
            let a = addr(&host, port);
            prop_assert_eq!(got, if ask { Redirect::Ask { slot, addr: a } } else { Redirect::Moved { slot, addr: a } });
        }
    }
}
