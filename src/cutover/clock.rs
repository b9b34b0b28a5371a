//! The clocks of the two sides (issue 20): how far each server's clock is from ours, and so
//! from the other's.
//!
//! Every side a link writes to is a primary that expires keys on its own clock. A key whose
//! TTL the primary refreshed just before it ran out is already gone on a side whose clock runs
//! ahead (the refresh then finds nothing there), so the loss grows with the skew between the
//! two sides: the issue measured 1 key in 250 lost on one clock and 225 in 263 with the target
//! 50 ms ahead, for sessions of `PX 100`. The skew is measured at start: `TIME` on each server,
//! compared with our clock at the middle of the round trip (the error is at most half the
//! round trip, shown with it); the best of five samples (the shortest round trip) counts.
//! Beyond `[sync] max_clock_skew_ms` (default [`DEFAULT_MAX_SKEW_MS`]) it is a warning in
//! the log and in `status`, and `cutover_clock_skew_exceeded` raises an alert.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::control;
use super::shadow::Value;
use crate::route::Backend;

/// Default bound between the two sides' clocks: NTP or chrony keep hosts of one network
/// within a few milliseconds (and the measurement's own error, half a LAN round trip, is
/// well below 1 ms), while at 50 ms most short sliding TTLs were lost (see the module doc).
/// 20 ms is far above what a synchronised clock shows and well below where losses dominate.
pub const DEFAULT_MAX_SKEW_MS: u64 = 20;

/// One server's clock against ours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Server minus local clock, in ms (positive: the server is ahead).
    pub skew_ms: f64,
    /// The round trip of the sample used (the error is at most half of it).
    pub rtt_ms: f64,
}

/// Both sides' clocks, as measured at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClockReport {
    pub source: Option<Skew>,
    pub target: Option<Skew>,
    pub limit_ms: u64,
    /// Why a side could not be measured.
    pub errors: Vec<String>,
}

impl ClockReport {
    /// Target minus source, in ms.
    pub fn between_ms(&self) -> Option<f64> {
        Some(self.target?.skew_ms - self.source?.skew_ms)
    }

    /// The skew between the sides is beyond the bound (by more than the measurement's error).
    pub fn exceeded(&self) -> bool {
        let (Some(s), Some(t), Some(b)) = (self.source, self.target, self.between_ms()) else {
            return false;
        };
        b.abs() - (s.rtt_ms + t.rtt_ms) / 2.0 > self.limit_ms as f64
    }

    /// The warning, when [`Self::exceeded`].
    pub fn warning(&self) -> Option<String> {
        if !self.exceeded() {
            return None;
        }
        Some(format!(
            "the target's clock is {:+.1} ms from the source's (bound [sync] max_clock_skew_ms = {}): keys whose TTL is refreshed shortly before it runs out can expire on the side a link writes to before the refresh arrives; synchronise the clocks (NTP/chrony)",
            self.between_ms().unwrap_or(0.0),
            self.limit_ms
        ))
    }

    /// The `clock_skew` object of `status`.
    pub fn to_json(&self) -> serde_json::Value {
        let side = |s: &Option<Skew>| {
            s.map(|s| json!({"skew_ms": round(s.skew_ms), "rtt_ms": round(s.rtt_ms)}))
        };
        json!({
            "source": side(&self.source),
            "target": side(&self.target),
            "between_ms": self.between_ms().map(round),
            "limit_ms": self.limit_ms,
            "exceeded": self.exceeded(),
            "warning": self.warning(),
            "errors": self.errors,
        })
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The server's `TIME` reply in ms since the epoch.
fn time_ms(v: &Value) -> Option<f64> {
    let Value::Array(parts) = v else {
        return None;
    };
    let num = |v: &Value| match v {
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse::<f64>().ok(),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    };
    Some(num(parts.first()?)? * 1000.0 + num(parts.get(1)?)? / 1000.0)
}

/// Measures `b`'s clock against ours: the best of five `TIME` round trips.
pub async fn measure(b: &Backend, timeout: Duration) -> Result<Skew, String> {
    let mut conn = tokio::time::timeout(timeout, control::connect(b, timeout))
        .await
        .map_err(|_| "connect timed out".to_string())??;
    let mut best: Option<Skew> = None;
    for _ in 0..5 {
        let before = now_ms();
        let reply = tokio::time::timeout(timeout, conn.query(&[b"TIME"]))
            .await
            .map_err(|_| "TIME timed out".to_string())??;
        let after = now_ms();
        let server = time_ms(&reply).ok_or_else(|| format!("TIME answered {reply:?}"))?;
        let s = Skew {
            skew_ms: server - (before + after) / 2.0,
            rtt_ms: after - before,
        };
        if best.is_none_or(|b| s.rtt_ms < b.rtt_ms) {
            best = Some(s);
        }
    }
    best.ok_or_else(|| "no sample".into())
}

/// Measures both sides (a side that cannot be measured is named in `errors`).
pub async fn measure_both(
    source: &Backend,
    target: &Backend,
    limit_ms: u64,
    timeout: Duration,
) -> ClockReport {
    let mut r = ClockReport {
        limit_ms,
        ..ClockReport::default()
    };
    match measure(source, timeout).await {
        Ok(s) => r.source = Some(s),
        Err(e) => r.errors.push(format!("source: {e}")),
    }
    match measure(target, timeout).await {
        Ok(s) => r.target = Some(s),
        Err(e) => r.errors.push(format!("target: {e}")),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew() {
        let t = Value::Array(vec![
            Value::Bytes(b"1700000000".to_vec()),
            Value::Bytes(b"250000".to_vec()),
        ]);
        assert_eq!(time_ms(&t), Some(1_700_000_000_250.0));
        assert_eq!(time_ms(&Value::Nil), None);
        let mut r = ClockReport {
            source: Some(Skew {
                skew_ms: 1.0,
                rtt_ms: 0.2,
            }),
            target: Some(Skew {
                skew_ms: 61.0,
                rtt_ms: 0.2,
            }),
            limit_ms: 20,
            errors: vec![],
        };
        assert_eq!(r.between_ms(), Some(60.0));
        assert!(r.exceeded());
        assert!(r.warning().unwrap().contains("+60.0 ms"));
        r.limit_ms = 100;
        assert!(!r.exceeded());
        assert_eq!(r.to_json()["between_ms"], 60.0);
    }
}
