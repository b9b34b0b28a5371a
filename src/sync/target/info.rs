//! What the target is: its server and version from `INFO server`, and the newest RDB version
//! its `RESTORE` accepts.

use crate::client::Info;
use crate::rdb::RdbVersion;

/// What the target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// True for Valkey.
    pub valkey: bool,
    /// `(major, minor, patch)` of the server (Valkey's own numbering for Valkey).
    pub version: (u32, u32, u32),
    /// The newest RDB version its `RESTORE` accepts.
    pub max_rdb: RdbVersion,
}

impl TargetInfo {
    /// Reads `INFO server`.
    pub fn from_info(info: &Info) -> Result<TargetInfo, String> {
        let (valkey, text) = info
            .server_version()
            .ok_or("INFO server has no redis_version")?;
        let version = parse_version(text).ok_or_else(|| format!("unreadable version {text:?}"))?;
        let max_rdb = max_rdb_version(valkey, version)
            .ok_or_else(|| format!("version {text} is older than Redis 2.6"))?;
        Ok(TargetInfo {
            valkey,
            version,
            max_rdb,
        })
    }

    /// The server name and version, for messages: "Redis 7.0.15".
    pub fn describe(&self) -> String {
        let (a, b, c) = self.version;
        let name = if self.valkey { "Valkey" } else { "Redis" };
        format!("{name} {a}.{b}.{c}")
    }

    /// True if the server has functions (`FUNCTION LOAD`): Redis 7.0+, every Valkey.
    pub fn has_functions(&self) -> bool {
        self.valkey || self.version.0 >= 7
    }

    /// True if `PEXPIREAT` takes `NX|XX|GT|LT` (Redis 7.0+, every Valkey).
    pub fn has_expire_flags(&self) -> bool {
        self.valkey || self.version.0 >= 7
    }
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// The newest RDB version a server of this version loads (reference §1.1, §1.2):
/// Redis 2.6–3.0 → 6 (exactly), 3.2 → 7, 4.0 → 8, 5.0–6.2 → 9, 7.0 → 10, 7.2 → 11,
/// 7.4–8.4 → 12, 8.6 → 13, 8.8+ → 14; Valkey 7.2–8.1 → 11, 9.x+ → 80.
pub fn max_rdb_version(valkey: bool, (major, minor, _): (u32, u32, u32)) -> Option<RdbVersion> {
    let v = if valkey {
        if major >= 9 { 80 } else { 11 }
    } else {
        match (major, minor) {
            (0..=1, _) | (2, 0..=5) => return None,
            (2, _) | (3, 0..=1) => 6,
            (3, _) => 7,
            (4, _) => 8,
            (5..=6, _) => 9,
            (7, 0..=1) => 10,
            (7, 2..=3) => 11,
            (7, _) | (8, 0..=5) => 12,
            (8, 6..=7) => 13,
            _ => 14,
        }
    };
    Some(RdbVersion(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let redis = |s: &str| {
            TargetInfo::from_info(&Info::new(format!("# Server\r\nredis_version:{s}\r\n")))
        };
        assert_eq!(redis("6.2.14").unwrap().max_rdb, RdbVersion(9));
        assert_eq!(redis("7.0.15").unwrap().max_rdb, RdbVersion(10));
        assert_eq!(redis("7.2.4").unwrap().max_rdb, RdbVersion(11));
        assert_eq!(redis("7.4.0").unwrap().max_rdb, RdbVersion(12));
        assert_eq!(redis("8.4.0").unwrap().max_rdb, RdbVersion(12));
        assert_eq!(redis("8.6.0").unwrap().max_rdb, RdbVersion(13));
        assert_eq!(redis("8.8.1").unwrap().max_rdb, RdbVersion(14));
        assert_eq!(redis("3.0.7").unwrap().max_rdb, RdbVersion(6));
        assert_eq!(redis("4.0.14").unwrap().max_rdb, RdbVersion(8));
        assert!(redis("2.4.0").is_err());
        let valkey = TargetInfo::from_info(&Info::new(
            "redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.0\r\n",
        ))
        .unwrap();
        assert!(valkey.valkey);
        assert_eq!(valkey.max_rdb, RdbVersion(80));
        assert_eq!(valkey.describe(), "Valkey 9.1.0");
        let v8 = TargetInfo::from_info(&Info::new(
            "redis_version:7.2.4\r\nvalkey_version:8.1.1\r\n",
        ))
        .unwrap();
        assert_eq!(v8.max_rdb, RdbVersion(11));
        assert!(!redis("6.2.0").unwrap().has_expire_flags());
    }
}
