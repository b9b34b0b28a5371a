//! The status document shared by `cutover status --json`, the admin listener and (as gauges)
//! Prometheus. Later issues add the sync and cutover sections; fields are only ever added.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};

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
    pub started: Instant,
}

impl StatusSource for RunStatus {
    fn status(&self) -> Value {
        let route = self.proxy.route.load();
        let p = &self.proxy;
        let sync = self.sync.as_ref().map(|s| s.to_json());
        // Without a target the proxy only forwards to the source.
        let phase = self.sync.as_ref().map_or("proxying", |s| s.phase_name());
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "phase": phase,
            "lag_bytes": self.sync.as_ref().map(|s| s.lag_bytes()),
            "lag_ms": self.sync.as_ref().map(|s| s.lag_ms()),
            "sync": sync,
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
        "phase:     {}\nprimary:   {}\nsource:    {}\ntarget:    {}\nproxy:     {} ({} clients, {} backend connections)\nsync:      {}\nuptime:    {} s\n",
        s(&doc["phase"]),
        s(&doc["primary"]),
        s(&doc["source"]),
        s(&doc["target"]),
        s(&proxy["listen"]),
        s(&proxy["client_connections"]),
        s(&proxy["backend_connections"]),
        sync_line(&doc["sync"]),
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
    line
}
