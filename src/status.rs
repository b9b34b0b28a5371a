//! The status document shared by `cutover status --json`, the admin listener and (as gauges)
//! Prometheus. Later issues add the sync and cutover sections; fields are only ever added.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};

use crate::proxy::ProxyShared;

/// Anything that can describe itself for `STATUS`.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> Value;
}

/// The status of a running `cutover run`.
pub struct RunStatus {
    pub proxy: Arc<ProxyShared>,
    pub started: Instant,
}

impl StatusSource for RunStatus {
    fn status(&self) -> Value {
        let route = self.proxy.route.load();
        let p = &self.proxy;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            // Until the sync engine runs, the proxy only forwards to the source.
            "phase": "proxying",
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
        "phase:     {}\nprimary:   {}\nsource:    {}\ntarget:    {}\nproxy:     {} ({} clients, {} backend connections)\nuptime:    {} s\n",
        s(&doc["phase"]),
        s(&doc["primary"]),
        s(&doc["source"]),
        s(&doc["target"]),
        s(&proxy["listen"]),
        s(&proxy["client_connections"]),
        s(&proxy["backend_connections"]),
        s(&doc["uptime_secs"]),
    )
}
