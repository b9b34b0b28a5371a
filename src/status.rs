//! The status document shared by `cutover status --json`, the admin listener and (as gauges)
//! Prometheus. Later issues add the sync and cutover sections; fields are only ever added.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};

use crate::cutover::Controller;
use crate::proxy::ProxyShared;
use crate::sync::engine::SyncProgress;

/// Anything that can describe itself for `STATUS`.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> Value;
}

/// The status of a running `cutover run`.
pub struct RunStatus {
    pub proxy: Arc<ProxyShared>,
    /// The background sync, when a target is configured.
    pub sync: Option<Arc<SyncProgress>>,
    /// The switch/rollback controller, when a target is configured.
    pub cutover: Option<Arc<Controller>>,
    pub started: Instant,
    /// The last verify started with the admin `VERIFY` command (when a target is configured).
    pub verify: Option<Arc<crate::verify::VerifyTracker>>,
}

impl StatusSource for RunStatus {
    fn status(&self) -> Value {
        let route = self.proxy.route.load();
        let p = &self.proxy;
        let switched = self.cutover.as_ref().is_some_and(|c| c.phase().is_some());
        // In a replica overlap both links run until `finish`; the lag is the applying one's.
        let overlap_lag = self.cutover.as_ref().and_then(|c| c.overlap_lag());
        let sync = self.sync.as_ref().map(|s| {
            let mut doc = s.to_json();
            if switched && overlap_lag.is_none() {
                // The first switch stops the sync for good (shadow overlap), and so does
                // `finish`.
                doc["phase"] = json!("stopped");
            }
            doc
        });
        // Without a target the proxy only forwards to the source; once switched, the
        // cutover's phase replaces the sync's.
        let cutover = self.cutover.as_ref().map(|c| c.status());
        let cutover_phase = cutover
            .as_ref()
            .and_then(|c| c["phase"].as_str().map(str::to_string));
        let phase = cutover_phase.unwrap_or_else(|| {
            self.sync
                .as_ref()
                .map_or("proxying", |s| s.phase_name())
                .to_string()
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "phase": phase,
            // After the switch the sync is stopped: the target has everything (lag 0).
            "lag_bytes": self.sync.as_ref().map(|s| match overlap_lag {
                Some((bytes, _)) => bytes,
                None if switched => 0,
                None => s.lag_bytes(),
            }),
            "lag_ms": self.sync.as_ref().map(|s| match overlap_lag {
                Some((_, ms)) => ms,
                None if switched => 0,
                None => s.lag_ms(),
            }),
            "rollback_safe": cutover.as_ref().is_some_and(|c| c["rollback_safe"].as_bool().unwrap_or(false)),
            "shadow_queue": cutover.as_ref().map_or(0, |c| c["shadow_queue"].as_u64().unwrap_or(0)),
            "cutover": cutover,
            "sync": sync,
            "verify": self.verify.as_ref().map(|v| v.status()),
            "primary": route.primary.as_str(),
            "route_epoch": route.epoch,
            "uptime_secs": self.started.elapsed().as_secs(),
            "source": route.source.url.to_string(),
            "target": route.target.as_ref().map(|t| t.url.to_string()),
            "proxy": {
                "listen": p.settings.listen.to_string(),
                "client_connections": p.client_conns.load(Ordering::Relaxed),
                "backend_connections": route.source.connections()
                    + route.target.as_ref().map_or(0, |t| t.connections()),
                "clients_accepted": p.clients_accepted.load(Ordering::Relaxed),
            },
        })
    }
}

/// The readable summary `cutover status` prints without `--json`.
pub fn render_text(doc: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let proxy = &doc["proxy"];
    format!(
        "phase:     {}\nprimary:   {}\nrollback:  {}\noverlap:   {}\nsource:    {}\ntarget:    {}\nproxy:     {} ({} clients, {} backend connections)\nsync:      {}\nverify:    {}\nuptime:    {} s\n",
        s(&doc["phase"]),
        s(&doc["primary"]),
        rollback_line(doc),
        overlap_line(&doc["cutover"]),
        s(&doc["source"]),
        s(&doc["target"]),
        s(&proxy["listen"]),
        s(&proxy["client_connections"]),
        s(&proxy["backend_connections"]),
        sync_line(&doc["sync"]),
        verify_line(&doc["verify"]),
        s(&doc["uptime_secs"]),
    )
}

fn sync_line(sync: &Value) -> String {
    if sync.is_null() {
        return "- (no target configured)".into();
    }
    let n = |k: &str| sync[k].as_u64().unwrap_or(0);
    let mut line = format!(
        "{}: {}/{} keys done ({} not copied), {} snapshot bytes, offset {} applied, lag {} bytes / {} ms, {} reconnects",
        sync["phase"].as_str().unwrap_or("-"),
        n("keys_done"),
        n("keys_total"),
        n("keys_not_copied"),
        n("snapshot_bytes"),
        n("applied_offset"),
        n("lag_bytes"),
        n("lag_ms"),
        n("reconnects"),
    );
    if let Some(e) = sync["last_error"].as_str() {
        line.push_str(&format!(" (last error: {e})"));
    }
    if let Some(s) = sync["retry_in_s"].as_u64() {
        line.push_str(&format!("; retrying in {s} s"));
    }
    line
}

/// The overlap mode and, in a replica overlap, both links: role, offsets, lag.
fn overlap_line(cutover: &Value) -> String {
    let mode = cutover["overlap"].as_str().unwrap_or("-").to_string();
    let Some(links) = cutover["links"].as_array() else {
        return mode;
    };
    let mut out = mode;
    for l in links {
        let n = |k: &str| l[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "\n           {} link {} ({}): offset {} received, {} applied, lag {} bytes / {} ms, {} reconnects, {} full resyncs",
            l["direction"].as_str().unwrap_or("-"),
            l["role"].as_str().unwrap_or("-"),
            l["phase"].as_str().unwrap_or("-"),
            n("received_offset"),
            n("applied_offset"),
            n("lag_bytes"),
            n("lag_ms"),
            n("reconnects"),
            n("full_resyncs"),
        ));
        if let Some(e) = l["last_error"].as_str() {
            out.push_str(&format!(" (last error: {e})"));
        }
    }
    out
}

fn rollback_line(doc: &Value) -> String {
    let queue = doc["shadow_queue"].as_u64().unwrap_or(0);
    match (
        doc["rollback_safe"].as_bool(),
        doc["cutover"]["rollback_unsafe_reason"].as_str(),
    ) {
        (Some(true), _) => format!("safe ({queue} shadow writes queued)"),
        (_, Some(why)) => format!("NOT safe: {why}"),
        _ => "-".into(),
    }
}

/// The readable form of a `switch`/`rollback`/`finish` report.
pub fn render_step(doc: &Value) -> String {
    let action = doc["action"].as_str().unwrap_or("-");
    let primary = doc["primary"].as_str().unwrap_or("-");
    match action {
        "finish" => format!(
            "finished: the {primary} is the primary; shadowing stopped after {} writes; the other side is detached",
            doc["shadow_writes"].as_u64().unwrap_or(0)
        ),
        _ => format!(
            "{action}: the {primary} is the primary now; commands were held {:.2} ms ({} sessions waiting, {} blocking calls moved){}",
            doc["pause_ms"].as_f64().unwrap_or(0.0),
            doc["held_sessions"].as_u64().unwrap_or(0),
            doc["unblocked"].as_u64().unwrap_or(0),
            if doc["forced"].as_bool() == Some(true) {
                " [forced]"
            } else {
                ""
            }
        ),
    }
}

fn verify_line(v: &Value) -> String {
    match v["state"].as_str() {
        None => "- (none run; `cutover verify --admin ADDR` starts one)".into(),
        Some("done") => {
            let kinds = v["differences"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                        .map(|(k, n)| format!("{n} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!(
                "{} ({} source keys, finished at unix {}){}",
                if v["equal"] == Value::Bool(true) {
                    "equal"
                } else {
                    "DIFFERENT"
                },
                v["source_keys"],
                v["finished"],
                if kinds.is_empty() {
                    String::new()
                } else {
                    format!(": {kinds}")
                }
            )
        }
        Some("error") => format!("error: {}", v["error"].as_str().unwrap_or("?")),
        Some(other) => format!("{other} (since unix {})", v["started"]),
    }
}
