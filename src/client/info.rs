//! The one reader of `INFO` and `ROLE` replies.
//!
//! `INFO [section]` answers a bulk string of `field:value` lines grouped under `# Section`
//! headers (`\r\n` line ends; Redis 7+ separates sections with an empty line):
//!
//! ```text
//! # Replication
//! role:master
//! master_replid:8d7c…
//! master_repl_offset:1234
//! # Keyspace
//! db3:keys=10,expires=2,avg_ttl=0
//! ```
//!
//! [`Info`] keeps the text and reads the fields cutover uses through typed accessors; a field
//! that is missing or unreadable is `None`, never a panic (the text comes from the network).
//! The first line that names a field wins (a field is never repeated within a reply).
//!
//! `ROLE` answers an array whose first element says which: `master` (offset, replicas),
//! `slave` (primary's host and port, link state, offset) or `sentinel` ([`RoleReply`]).

use super::Value;

/// The text of an `INFO` reply, read through typed accessors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    text: String,
}

/// What a server says it is in `INFO replication` (`role:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoRole {
    /// `role:master`.
    Primary,
    /// `role:slave` (Redis' name for a replica).
    Replica,
}

/// One line of `INFO keyspace`: `db3:keys=10,expires=2,avg_ttl=0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbKeys {
    pub db: u32,
    pub keys: u64,
    /// Keys with a TTL (`None` when the line does not say).
    pub expires: Option<u64>,
}

impl Info {
    /// The text of an `INFO` reply (its bulk string's content).
    pub fn new(text: impl Into<String>) -> Info {
        Info { text: text.into() }
    }

    /// From the bytes of the bulk string (invalid UTF-8 is replaced, not refused).
    pub fn from_bytes(bytes: &[u8]) -> Info {
        Info::new(String::from_utf8_lossy(bytes).into_owned())
    }

    /// From a decoded reply: a string (RESP2 bulk, RESP3 verbatim); `None` for anything else.
    pub fn from_value(value: &Value) -> Option<Info> {
        match value {
            Value::Bytes(b) => Some(Info::from_bytes(b)),
            _ => None,
        }
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of `name` (trimmed), from its `name:value` line.
    pub fn field(&self, name: &str) -> Option<&str> {
        if name.is_empty() {
            return None;
        }
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    }

    /// A field read as an unsigned number.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.field(name)?.parse().ok()
    }

    /// `role` (`INFO replication`).
    pub fn role(&self) -> Option<InfoRole> {
        match self.field("role")? {
            "master" => Some(InfoRole::Primary),
            "slave" => Some(InfoRole::Replica),
            _ => None,
        }
    }

    /// `master_repl_offset` (`INFO replication`): the server's own replication offset.
    pub fn master_repl_offset(&self) -> Option<u64> {
        self.number("master_repl_offset")
    }

    /// `master_replid` (`INFO replication`): the id of the server's replication history.
    pub fn master_replid(&self) -> Option<&str> {
        self.field("master_replid")
    }

    /// `used_memory` (`INFO memory`), in bytes.
    pub fn used_memory(&self) -> Option<u64> {
        self.number("used_memory")
    }

    /// `maxmemory` (`INFO memory`), in bytes; 0 is no limit.
    pub fn maxmemory(&self) -> Option<u64> {
        self.number("maxmemory")
    }

    /// `maxmemory_policy` (`INFO memory`).
    pub fn maxmemory_policy(&self) -> Option<&str> {
        self.field("maxmemory_policy")
    }

    /// `evicted_keys` (`INFO stats`).
    pub fn evicted_keys(&self) -> Option<u64> {
        self.number("evicted_keys")
    }

    /// `number_of_cached_scripts` (`INFO memory`).
    pub fn cached_scripts(&self) -> Option<u64> {
        self.number("number_of_cached_scripts")
    }

    /// `cluster_enabled:1` (`INFO cluster`).
    pub fn cluster_enabled(&self) -> bool {
        self.field("cluster_enabled") == Some("1")
    }

    /// The server's version (`INFO server`): `(true, valkey_version)` for Valkey (which also
    /// reports a `redis_version` of 7.2.4 for compatibility), else `(false, redis_version)`.
    pub fn server_version(&self) -> Option<(bool, &str)> {
        match self.field("valkey_version") {
            Some(v) => Some((true, v)),
            None => self.field("redis_version").map(|v| (false, v)),
        }
    }

    /// The databases listed in `INFO keyspace` (those holding keys), in the order listed.
    pub fn keyspace(&self) -> Vec<DbKeys> {
        self.text
            .lines()
            .filter_map(|l| {
                let (db, rest) = l.trim().strip_prefix("db")?.split_once(':')?;
                let field = |name: &str| -> Option<u64> {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                        .parse()
                        .ok()
                };
                Some(DbKeys {
                    db: db.parse().ok()?,
                    keys: field("keys")?,
                    expires: field("expires"),
                })
            })
            .collect()
    }
}

/// A `ROLE` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleReply {
    /// `["master", offset, [[host, port, offset], …]]`.
    Primary {
        offset: u64,
        /// Each replica's `(host, port, acknowledged offset)`.
        replicas: Vec<(String, u16, u64)>,
    },
    /// `["slave", host, port, state, offset]` (offset -1 before the first sync: `None`).
    Replica {
        host: String,
        port: u16,
        /// `connect`, `connecting`, `sync`, `connected` (or `handshake`).
        state: String,
        offset: Option<u64>,
    },
    /// `["sentinel", [primary names]]`.
    Sentinel,
}

impl RoleReply {
    /// Reads a decoded `ROLE` reply; `None` for any other shape.
    pub fn from_value(value: &Value) -> Option<RoleReply> {
        let Value::Array(items) = value else {
            return None;
        };
        let text = |v: &Value| v.text().map(|b| String::from_utf8_lossy(&b).into_owned());
        let int = |v: &Value| -> Option<i64> { String::from_utf8(v.text()?).ok()?.parse().ok() };
        match text(items.first()?)?.as_str() {
            "master" => {
                let offset = u64::try_from(int(items.get(1)?)?).ok()?;
                let mut replicas = Vec::new();
                if let Some(Value::Array(list)) = items.get(2) {
                    for r in list {
                        let Value::Array(r) = r else { return None };
                        let host = text(r.first()?)?;
                        let port = u16::try_from(int(r.get(1)?)?).ok()?;
                        let acked = u64::try_from(int(r.get(2)?)?).ok()?;
                        replicas.push((host, port, acked));
                    }
                }
                Some(RoleReply::Primary { offset, replicas })
            }
            "slave" | "replica" => Some(RoleReply::Replica {
                host: text(items.get(1)?)?,
                port: u16::try_from(int(items.get(2)?)?).ok()?,
                state: text(items.get(3)?)?,
                offset: items
                    .get(4)
                    .and_then(int)
                    .and_then(|o| u64::try_from(o).ok()),
            }),
            "sentinel" => Some(RoleReply::Sentinel),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REPLICATION: &str = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_replid:8d7c1b\r\nmaster_replid2:0000\r\nmaster_repl_offset:1234\r\n";

    #[test]
    fn reads_the_fields_cutover_uses() {
        let info = Info::new(REPLICATION);
        assert_eq!(info.role(), Some(InfoRole::Primary));
        assert_eq!(info.master_replid(), Some("8d7c1b"));
        assert_eq!(info.field("master_replid2"), Some("0000"));
        assert_eq!(info.master_repl_offset(), Some(1234));
        assert_eq!(Info::new("role:master\r\n").master_repl_offset(), None);
        assert_eq!(Info::new("role:slave\r\n").role(), Some(InfoRole::Replica));
        let mem = Info::new(
            "# Memory\r\nused_memory:1000\r\nused_memory_human:1K\r\nmaxmemory:8388608\r\nmaxmemory_policy:allkeys-lru\r\nnumber_of_cached_scripts:3\r\n\r\n# Stats\r\nevicted_keys:42\r\n",
        );
        assert_eq!(mem.used_memory(), Some(1000));
        assert_eq!(mem.maxmemory(), Some(8 << 20));
        assert_eq!(mem.maxmemory_policy(), Some("allkeys-lru"));
        assert_eq!(mem.cached_scripts(), Some(3));
        assert_eq!(mem.evicted_keys(), Some(42));
        // A field is matched whole, not as the prefix of a longer name.
        assert_eq!(
            Info::new("cluster_enabled_x:1\r\n").field("cluster_enabled"),
            None
        );
        assert!(Info::new("# Cluster\r\ncluster_enabled:1\r\n").cluster_enabled());
        assert!(!Info::new("cluster_enabled:0\r\n").cluster_enabled());
        assert!(!Info::new("").cluster_enabled());
    }

    #[test]
    fn server_version_prefers_valkey() {
        let valkey = Info::new("redis_version:7.2.4\r\nvalkey_version:8.1.1\r\n");
        assert_eq!(valkey.server_version(), Some((true, "8.1.1")));
        let redis = Info::new("# Server\r\nredis_version:7.0.15\r\n");
        assert_eq!(redis.server_version(), Some((false, "7.0.15")));
        assert_eq!(Info::new("# Server\r\n").server_version(), None);
    }

    #[test]
    fn keyspace_lines() {
        let info = Info::new(
            "# Keyspace\r\ndb0:keys=5,expires=0,avg_ttl=0\r\ndb3:keys=10,expires=2,avg_ttl=7\r\ndbx:keys=1\r\ndb4:expires=1\r\ndb5:keys=2\r\n",
        );
        assert_eq!(
            info.keyspace(),
            vec![
                DbKeys {
                    db: 0,
                    keys: 5,
                    expires: Some(0)
                },
                DbKeys {
                    db: 3,
                    keys: 10,
                    expires: Some(2)
                },
                DbKeys {
                    db: 5,
                    keys: 2,
                    expires: None
                },
            ]
        );
    }

    #[test]
    fn role_replies() {
        let b = |s: &str| Value::Bytes(s.as_bytes().to_vec());
        let primary = Value::Array(vec![
            b("master"),
            Value::Int(3129659),
            Value::Array(vec![Value::Array(vec![
                b("127.0.0.1"),
                b("9001"),
                b("3129242"),
            ])]),
        ]);
        assert_eq!(
            RoleReply::from_value(&primary),
            Some(RoleReply::Primary {
                offset: 3129659,
                replicas: vec![("127.0.0.1".into(), 9001, 3129242)],
            })
        );
        let replica = Value::Array(vec![
            b("slave"),
            b("127.0.0.1"),
            Value::Int(9000),
            b("connected"),
            Value::Int(-1),
        ]);
        assert_eq!(
            RoleReply::from_value(&replica),
            Some(RoleReply::Replica {
                host: "127.0.0.1".into(),
                port: 9000,
                state: "connected".into(),
                offset: None,
            })
        );
        let sentinel = Value::Array(vec![b("sentinel"), Value::Array(vec![])]);
        assert_eq!(RoleReply::from_value(&sentinel), Some(RoleReply::Sentinel));
        assert_eq!(RoleReply::from_value(&Value::Nil), None);
        assert_eq!(
            RoleReply::from_value(&Value::Array(vec![b("master")])),
            None
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![
                Just(b"master".to_vec()),
                Just(b"slave".to_vec()),
                Just(b"sentinel".to_vec()),
                Just(b"-1".to_vec()),
                Just(b"70000".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..12),
            ]
            .prop_map(Value::Bytes),
            ".{0,8}".prop_map(Value::Error),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest! {
        /// Hostile `INFO` text: every accessor answers, none panics.
        #[test]
        fn info_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                             lines in proptest::collection::vec(
                                 "(role|master_repl_offset|master_replid|maxmemory|db[0-9x]{0,3}|valkey_version|redis_version|cluster_enabled|)[:=,]{0,2}[-0-9a-z.,=:]{0,20}", 0..12)) {
            for info in [Info::from_bytes(&bytes), Info::new(lines.join("\r\n"))] {
                let _ = info.role();
                let _ = info.master_repl_offset();
                let _ = info.master_replid();
                let _ = (info.used_memory(), info.maxmemory(), info.maxmemory_policy());
                let _ = (info.evicted_keys(), info.cached_scripts(), info.cluster_enabled());
                let _ = info.server_version();
                let _ = info.keyspace();
                let _ = info.field("");
            }
        }

        /// Hostile `ROLE` replies: read or refused, never a panic.
        #[test]
        fn role_never_panics(v in value()) {
            let _ = RoleReply::from_value(&v);
        }
    }
}
