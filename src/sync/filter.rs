//! What to copy: database mapping, key include/exclude (prefixes and regular expressions) and
//! stream commands to leave out. Applied to the snapshot's keys ([`Filter::map_db`],
//! [`Filter::key_allowed`]) and to the live stream's commands ([`command_keys`]).
//!
//! Rules:
//!
//! * **Databases.** `db_map` sends source db *a* to target db *b*. A source db the map does not
//!   list is copied under its own number, unless `only_mapped_dbs`, which drops it (the sync
//!   prints the unlisted databases the source has at start, loudly, either way).
//! * **Keys.** With any include rule (prefix or regex), a key is copied only if it matches one
//!   of them; a key that matches an exclude rule is never copied. Regexes match anywhere in the
//!   key unless anchored (`^…$`); keys are bytes, so `.` matches any byte but a newline.
//! * **Stream commands with several keys** (`RENAME`, `MSET`, `SMOVE`, `*STORE`…) are applied
//!   when *any* of their keys is copied: a write to a copied key is never lost, at the price of
//!   an excluded key that may appear on the target as its side effect. Such commands are
//!   counted (`commands_mixed_keys`). Commands without keys (`FLUSHALL`, `FUNCTION`…) are
//!   always applied.

use std::collections::{BTreeMap, BTreeSet};

use regex_automata::meta::Regex;

/// A bad filter setting; each message says what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(
        "invalid db_map entry {0:?}: expected SOURCE=TARGET pairs of database numbers, e.g. \"0=1,3=3\""
    )]
    DbMap(String),
    #[error("db_map maps two source databases to target database {0}: each target db can take one")]
    DbMapCollision(u64),
    #[error("invalid key regex {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error(
        "the command {0} cannot be excluded: the stream's transactions and database changes depend on it"
    )]
    Command(String),
}

/// Compiled filter settings (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    db_map: BTreeMap<u64, u64>,
    only_mapped: bool,
    include_prefixes: Vec<Vec<u8>>,
    exclude_prefixes: Vec<Vec<u8>>,
    include_regex: Vec<Regex>,
    exclude_regex: Vec<Regex>,
    exclude_commands: BTreeSet<String>,
}

/// The settings as given (config `[sync]` or flags), before compiling.
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    /// `"0=1,3=3"`.
    pub db_map: Option<String>,
    pub only_mapped_dbs: bool,
    pub include_prefixes: Vec<String>,
    pub exclude_prefixes: Vec<String>,
    pub include_regex: Vec<String>,
    pub exclude_regex: Vec<String>,
    pub exclude_commands: Vec<String>,
}

impl Filter {
    pub fn new(spec: &FilterSpec) -> Result<Filter, FilterError> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| {
                    Regex::new(p).map_err(|e| FilterError::Regex {
                        pattern: p.clone(),
                        reason: e
                            .syntax_error()
                            .map_or_else(|| e.to_string(), ToString::to_string),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut exclude_commands = BTreeSet::new();
        for c in &spec.exclude_commands {
            let c = c.trim().to_ascii_uppercase();
            if matches!(c.as_str(), "MULTI" | "EXEC" | "SELECT" | "DISCARD") {
                return Err(FilterError::Command(c));
            }
            if !c.is_empty() {
                exclude_commands.insert(c);
            }
        }
        Ok(Filter {
            db_map: spec
                .db_map
                .as_deref()
                .map(parse_db_map)
                .transpose()?
                .unwrap_or_default(),
            only_mapped: spec.only_mapped_dbs,
            include_prefixes: spec
                .include_prefixes
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            exclude_prefixes: spec
                .exclude_prefixes
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            include_regex: compile(&spec.include_regex)?,
            exclude_regex: compile(&spec.exclude_regex)?,
            exclude_commands,
        })
    }

    /// True when nothing is filtered or mapped.
    pub fn is_identity(&self) -> bool {
        self.db_map.iter().all(|(a, b)| a == b)
            && !self.only_mapped
            && self.include_prefixes.is_empty()
            && self.exclude_prefixes.is_empty()
            && self.include_regex.is_empty()
            && self.exclude_regex.is_empty()
            && self.exclude_commands.is_empty()
    }

    /// The target database for source database `db`; `None`: not copied.
    pub fn map_db(&self, db: u64) -> Option<u64> {
        match self.db_map.get(&db) {
            Some(to) => Some(*to),
            None if self.only_mapped => None,
            None => Some(db),
        }
    }

    /// Whether a key is copied (include / exclude rules).
    pub fn key_allowed(&self, key: &[u8]) -> bool {
        let included = (self.include_prefixes.is_empty() && self.include_regex.is_empty())
            || self.include_prefixes.iter().any(|p| key.starts_with(p))
            || self.include_regex.iter().any(|r| r.is_match(key));
        included
            && !self.exclude_prefixes.iter().any(|p| key.starts_with(p))
            && !self.exclude_regex.iter().any(|r| r.is_match(key))
    }

    /// Whether the stream command `name` (upper case) is left out.
    pub fn command_excluded(&self, name: &str) -> bool {
        self.exclude_commands.contains(name)
    }

    /// The loud line about source databases `db_map` does not list (`None` when there is no
    /// map or it lists them all).
    pub fn unlisted_warning(&self, source_dbs: &[u64]) -> Option<String> {
        if self.db_map.is_empty() {
            return None;
        }
        let unlisted: Vec<String> = source_dbs
            .iter()
            .filter(|db| !self.db_map.contains_key(db))
            .map(u64::to_string)
            .collect();
        if unlisted.is_empty() {
            return None;
        }
        let list = unlisted.join(", ");
        Some(if self.only_mapped {
            format!(
                "WARNING: db_map does not list the source's databases {list}: they are NOT copied (--only-mapped-dbs)"
            )
        } else {
            format!(
                "WARNING: db_map does not list the source's databases {list}: they are copied as-is, to the same numbers on the target (add --only-mapped-dbs to leave them out)"
            )
        })
    }
}

/// `"0=1, 3=3"` → {0: 1, 3: 3}.
pub fn parse_db_map(text: &str) -> Result<BTreeMap<u64, u64>, FilterError> {
    let mut map = BTreeMap::new();
    let mut targets = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part
            .split_once('=')
            .ok_or_else(|| FilterError::DbMap(part.to_string()))?;
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| FilterError::DbMap(part.to_string()))
        };
        let (a, b) = (num(a)?, num(b)?);
        if !targets.insert(b) {
            return Err(FilterError::DbMapCollision(b));
        }
        if map.insert(a, b).is_some() {
            return Err(FilterError::DbMap(part.to_string()));
        }
    }
    Ok(map)
}

/// The key arguments of a write command from the replication stream (by index in `args`,
/// `args[0]` being the name; `name` is unused and kept for the callers), from the command
/// table's key specs ([`crate::command::keys`]). Unknown commands (a module's) are taken to
/// have their key first, as nearly all do; commands without keys, and arguments that do not
/// say where the keys are, give none.
pub fn command_keys(_name: &str, args: &[&[u8]]) -> Vec<usize> {
    let Some(cmd) = crate::command::lookup_argv(args) else {
        return if args.len() > 1 { vec![1] } else { Vec::new() };
    };
    let mut keys = Vec::new();
    match crate::command::for_each_key(cmd, args, |i, _| keys.push(i)) {
        Ok(()) => keys,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_map() {
        assert_eq!(
            parse_db_map("0=1, 3=3").unwrap(),
            BTreeMap::from([(0, 1), (3, 3)])
        );
        assert!(parse_db_map("0=1,2=1").is_err());
        assert!(parse_db_map("0:1").is_err());
        assert!(parse_db_map("x=1").is_err());
        let f = Filter::new(&FilterSpec {
            db_map: Some("0=1".into()),
            ..FilterSpec::default()
        })
        .unwrap();
        assert_eq!(f.map_db(0), Some(1));
        assert_eq!(f.map_db(2), Some(2));
        assert!(
            f.unlisted_warning(&[0, 2])
                .unwrap()
                .contains("copied as-is")
        );
        assert!(f.unlisted_warning(&[0]).is_none());
        let f = Filter::new(&FilterSpec {
            db_map: Some("0=1".into()),
            only_mapped_dbs: true,
            ..FilterSpec::default()
        })
        .unwrap();
        assert_eq!(f.map_db(2), None);
        assert!(f.unlisted_warning(&[0, 2]).unwrap().contains("NOT copied"));
    }

    #[test]
    fn keys() {
        let f = Filter::new(&FilterSpec {
            include_prefixes: vec!["user:".into()],
            include_regex: vec!["^session:[0-9]+$".into()],
            exclude_prefixes: vec!["user:tmp:".into()],
            exclude_regex: vec!["secret".into()],
            ..FilterSpec::default()
        })
        .unwrap();
        assert!(f.key_allowed(b"user:1"));
        assert!(f.key_allowed(b"session:42"));
        assert!(!f.key_allowed(b"session:x"));
        assert!(!f.key_allowed(b"user:tmp:1"));
        assert!(!f.key_allowed(b"user:secret"));
        assert!(!f.key_allowed(b"other"));
        assert!(Filter::default().key_allowed(b"\xff\x00"));
        assert!(
            Filter::new(&FilterSpec {
                exclude_regex: vec!["(".into()],
                ..FilterSpec::default()
            })
            .is_err()
        );
        assert!(
            Filter::new(&FilterSpec {
                exclude_commands: vec!["exec".into()],
                ..FilterSpec::default()
            })
            .is_err()
        );
    }

    #[test]
    fn command_key_positions() {
        fn a(s: &str) -> Vec<&[u8]> {
            s.split(' ').map(str::as_bytes).collect()
        }
        assert_eq!(command_keys("SET", &a("SET k v")), vec![1]);
        assert_eq!(command_keys("MSET", &a("MSET a 1 b 2")), vec![1, 3]);
        assert_eq!(command_keys("DEL", &a("DEL a b c")), vec![1, 2, 3]);
        assert_eq!(command_keys("RENAME", &a("RENAME a b")), vec![1, 2]);
        assert_eq!(
            command_keys("ZUNIONSTORE", &a("ZUNIONSTORE d 2 a b WEIGHTS 1 2")),
            vec![1, 3, 4]
        );
        assert_eq!(command_keys("EVAL", &a("EVAL s 1 k arg")), vec![3]);
        assert_eq!(
            command_keys("FLUSHALL", &a("FLUSHALL")),
            Vec::<usize>::new()
        );
        assert_eq!(command_keys("BITOP", &a("BITOP AND d a b")), vec![2, 3, 4]);
        // Subcommands and keyword-started keys (the hand-kept list this replaced took the
        // first argument).
        assert_eq!(command_keys("XGROUP", &a("XGROUP CREATE s g $")), vec![2]);
        assert_eq!(
            command_keys("GEORADIUS", &a("GEORADIUS g 0 0 1 km STORE d")),
            vec![1, 7]
        );
        assert_eq!(command_keys("SORT", &a("SORT k STORE d")), vec![1, 3]);
        assert_eq!(command_keys("MODULE.CMD", &a("module.cmd k")), vec![1]);
        assert_eq!(
            command_keys("PUBLISH", &a("PUBLISH c m")),
            Vec::<usize>::new()
        );
    }
}
