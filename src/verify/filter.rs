//! Which keys and databases a verify looks at: key filters, the db map, and the few option
//! parsers (`2s`, `0=1,2=2`) the CLI needs. Pure functions, unit-tested.
//!
//! * A key is checked when it matches an include rule (any `--include-prefix` /
//!   `--include-regex`; no include rules means every key) and no exclude rule. The same filter
//!   is applied to the keys of both sides, so a filtered-out key is never "missing" or "extra".
//! * `cutover:position` in db 0 is the sync's bookkeeping on the target; it is ignored on both
//!   sides, whatever the filters say.
//! * The db map sends source db `s` to target db `map(s)`; unlisted dbs keep their number.
//!   Two source dbs must not land in the same target db.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::bytes::Regex;

use super::client::VerifyError;

/// The sync's position key (db 0 of the target), never compared.
pub const POSITION_KEY: &[u8] = b"cutover:position";

/// Include/exclude rules on key names (binary-safe).
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub include_prefix: Vec<Vec<u8>>,
    pub exclude_prefix: Vec<Vec<u8>>,
    pub include_regex: Vec<Regex>,
    pub exclude_regex: Vec<Regex>,
}

impl KeyFilter {
    /// Builds a filter from the CLI's strings; a bad regex is an error naming it.
    pub fn new(
        include_prefix: &[String],
        exclude_prefix: &[String],
        include_regex: &[String],
        exclude_regex: &[String],
    ) -> Result<KeyFilter, VerifyError> {
        let re = |list: &[String]| {
            list.iter()
                .map(|r| {
                    Regex::new(r).map_err(|e| VerifyError::Invalid(format!("regex {r:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(KeyFilter {
            include_prefix: include_prefix
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            exclude_prefix: exclude_prefix
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            include_regex: re(include_regex)?,
            exclude_regex: re(exclude_regex)?,
        })
    }

    /// True when `key` of database `db` (on either side) is to be compared.
    pub fn wants(&self, db: u32, key: &[u8]) -> bool {
        if crate::sync::batch::is_own_key(u64::from(db), key) {
            return false;
        }
        let included = (self.include_prefix.is_empty() && self.include_regex.is_empty())
            || self.include_prefix.iter().any(|p| key.starts_with(p))
            || self.include_regex.iter().any(|r| r.is_match(key));
        included
            && !self.exclude_prefix.iter().any(|p| key.starts_with(p))
            && !self.exclude_regex.iter().any(|r| r.is_match(key))
    }
}

/// Source db → target db.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbMap {
    pub explicit: BTreeMap<u32, u32>,
}

impl DbMap {
    /// Parses `0=1,2=2` (also `0:1`); an empty string is the identity.
    pub fn parse(text: &str) -> Result<DbMap, VerifyError> {
        let mut explicit = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || VerifyError::Invalid(format!("--db-map entry {part:?}: expected SRC=DST"));
            let (s, t) = part.split_once(['=', ':']).ok_or_else(bad)?;
            let s: u32 = s.trim().parse().map_err(|_| bad())?;
            let t: u32 = t.trim().parse().map_err(|_| bad())?;
            if explicit.insert(s, t).is_some() {
                return Err(VerifyError::Invalid(format!(
                    "--db-map lists source db {s} twice"
                )));
            }
        }
        Ok(DbMap { explicit })
    }

    pub fn target_of(&self, source_db: u32) -> u32 {
        self.explicit.get(&source_db).copied().unwrap_or(source_db)
    }

    /// The pairs to compare for the source dbs that hold keys and the target dbs that hold
    /// keys: `(Some(src), tgt)` for mapped pairs, `(None, tgt)` for a target db no source db
    /// maps to (all its keys are extra). Errors when two source dbs map to one target db.
    pub fn pairs(
        &self,
        source_dbs: &[u32],
        target_dbs: &[u32],
    ) -> Result<Vec<(Option<u32>, u32)>, VerifyError> {
        let mut by_target: BTreeMap<u32, Option<u32>> = BTreeMap::new();
        for &s in source_dbs {
            let t = self.target_of(s);
            if let Some(Some(other)) = by_target.insert(t, Some(s)) {
                return Err(VerifyError::Invalid(format!(
                    "source dbs {other} and {s} both map to target db {t}; extend --db-map"
                )));
            }
        }
        for &t in target_dbs {
            by_target.entry(t).or_insert_with(|| {
                // A target db is the image of the source db of the same number unless that one
                // was mapped elsewhere.
                (!self.explicit.contains_key(&t) && !source_dbs.contains(&t)).then_some(t)
            });
        }
        Ok(by_target.into_iter().map(|(t, s)| (s, t)).collect())
    }
}

/// Parses `2s`, `500ms`, `1m`, `1.5s` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 2s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn durations_round_trip(ms in 0u64..10_000_000) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn db_maps_round_trip(pairs in proptest::collection::btree_map(0u32..16, 0u32..16, 0..6)) {
            let text: Vec<String> = pairs.iter().map(|(s, t)| format!("{s}={t}")).collect();
            let m = DbMap::parse(&text.join(",")).unwrap();
            for s in 0..16 {
                prop_assert_eq!(m.target_of(s), pairs.get(&s).copied().unwrap_or(s));
            }
        }

        /// Filters never panic on binary keys, and the position key of db 0 is always out.
        #[test]
        fn filters_on_binary_keys(key in proptest::collection::vec(any::<u8>(), 0..20)) {
            let f = KeyFilter::new(&[], &["x".into()], &["^a".into()], &[]).unwrap();
            prop_assert_eq!(f.wants(1, &key), key.starts_with(b"a"));
            prop_assert!(!f.wants(0, POSITION_KEY));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn filters() {
        let f = KeyFilter::new(
            &["user:".into()],
            &["user:tmp".into()],
            &["^order:[0-9]+$".into()],
            &[],
        )
        .unwrap();
        assert!(f.wants(0, b"user:1"));
        assert!(!f.wants(0, b"user:tmp1"));
        assert!(f.wants(3, b"order:12"));
        assert!(!f.wants(3, b"order:x"));
        assert!(!f.wants(0, b"other"));
        let all = KeyFilter::default();
        assert!(all.wants(0, b"\xff\x00"));
        assert!(!all.wants(0, POSITION_KEY));
        assert!(all.wants(1, POSITION_KEY));
        assert!(KeyFilter::new(&[], &[], &["(".into()], &[]).is_err());
    }

    #[test]
    fn db_maps() {
        let m = DbMap::parse("0=1, 2:2").unwrap();
        assert_eq!(m.target_of(0), 1);
        assert_eq!(m.target_of(5), 5);
        assert!(DbMap::parse("0=1,0=2").is_err());
        assert!(DbMap::parse("a=1").is_err());
        assert_eq!(DbMap::parse("").unwrap(), DbMap::default());
        // Source 0 → 1; target db 0 has keys but nothing maps there: all extra.
        assert_eq!(
            m.pairs(&[0], &[0, 1]).unwrap(),
            vec![(None, 0), (Some(0), 1)]
        );
        // Source dbs 0 and 1 both landing in target db 1.
        assert!(m.pairs(&[0, 1], &[]).is_err());
        let id = DbMap::default();
        assert_eq!(
            id.pairs(&[0, 3], &[0, 4]).unwrap(),
            vec![(Some(0), 0), (Some(3), 3), (Some(4), 4)]
        );
    }
}
