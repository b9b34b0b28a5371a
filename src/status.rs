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
            // The scripts the proxy loads into each new primary (`cutover::scripts`).
            "scripts": p.scripts.status(),
            "primary": route.primary.as_str(),
            "route_epoch": route.epoch,
            "uptime_secs": self.started.elapsed().as_secs(),
            "source": route.source.url.to_string(),
            "target": route.target.as_ref().map(|t| t.url.to_string()),
            "tls": {
                "source": tls_json(&route.source.url),
                "target": route.target.as_ref().map(|t| tls_json(&t.url)),
            },
            "proxy": {
                "listen": p.settings.listen.to_string(),
                "tls_listen": p.settings.tls.as_ref().map(|t| t.listen.to_string()),
                "tls_client_certificates": p.settings.tls.as_ref().map(|t| t.files.client_ca_file.is_some()),
                "client_connections": p.client_conns.load(Ordering::Relaxed),
                "backend_connections": route.source.connections()
                    + route.target.as_ref().map_or(0, |t| t.connections()),
                "clients_accepted": p.clients_accepted.load(Ordering::Relaxed),
            },
        })
    }
}

/// Whether a side is reached over TLS and whether its certificate is verified.
fn tls_json(url: &crate::config::RedisUrl) -> Value {
    serde_json::json!({
        "enabled": url.tls.is_some(),
        "verify": url.tls.is_some() && !url.tls_insecure(),
    })
}

/// ` (TLS)`, ` (TLS, certificate NOT verified)` or nothing, after a side's URL.
fn tls_note(tls: &Value) -> &'static str {
    match (tls["enabled"].as_bool(), tls["verify"].as_bool()) {
        (Some(true), Some(true)) => " (TLS)",
        (Some(true), _) => " (TLS, certificate NOT verified: insecure)",
        _ => "",
    }
}

/// `, TLS on 127.0.0.1:6401` (with `, client certificates required`) after the proxy's
/// plain listener, when it has a TLS listener too.
fn proxy_tls_note(proxy: &Value) -> String {
    match proxy["tls_listen"].as_str() {
        Some(addr) if proxy["tls_client_certificates"] == true => {
            format!(", TLS on {addr}, client certificates required")
        }
        Some(addr) => format!(", TLS on {addr}"),
        None => String::new(),
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
        s(&doc["source"]) + tls_note(&doc["tls"]["source"]),
        s(&doc["target"]) + tls_note(&doc["tls"]["target"]),
        s(&proxy["listen"]) + &proxy_tls_note(proxy),
        s(&proxy["client_connections"]),
        s(&proxy["backend_connections"]),
        sync_line(&doc["sync"]),
        verify_line(&doc["verify"]),
        s(&doc["uptime_secs"]),
    ) + &scripts_line(&doc["scripts"])
        + &holders_lines(&doc["cutover"])
        + &doc["cutover"]["switch_refused"]
            .as_str()
            .map(|why| format!("switch:    refused in this run: {why}\n"))
            .unwrap_or_default()
}

/// `scripts:   3 kept (1.2 KB) of 10000 / 64.0 MB, 0 dropped …`.
fn scripts_line(s: &Value) -> String {
    if s.is_null() {
        return String::new();
    }
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let mut line = format!(
        "scripts:   {} kept ({}) of {} / {}, {} dropped by the bound, {} loaded into new primaries",
        n("scripts"),
        human_bytes(n("bytes")),
        n("max_scripts"),
        human_bytes(n("max_bytes")),
        n("dropped"),
        n("loaded_by_moves"),
    );
    if let Some(called) = s["unknown_called"].as_array().filter(|l| !l.is_empty()) {
        let shas: Vec<&str> = called.iter().filter_map(|v| v.as_str()).collect();
        let more = n("unknown_called_more");
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        line.push_str(&format!(
            "\nWARN: clients call scripts by SHA that were not loaded through the proxy (loaded directly on the server; a move cannot copy them, their EVALSHA fails with NOSCRIPT on the new primary): {}{more}",
            shas.join(", ")
        ));
    }
    if let Some(u) = s["unknown_on_source"].as_u64().filter(|u| *u > 0) {
        line.push_str(&format!(
            "; {u} scripts cached on the source were not loaded through the proxy (their EVALSHA may fail with NOSCRIPT after the switch)"
        ));
    }
    line + "\n"
}

/// The sessions that would hold a move now, one per line.
fn holders_lines(cutover: &Value) -> String {
    let Some(list) = cutover["would_hold_move"]
        .as_array()
        .filter(|l| !l.is_empty())
    else {
        return String::new();
    };
    let mut out = format!("stalled:   {} sessions would hold a move now\n", list.len());
    for h in list {
        out.push_str(&format!(
            "           {} — {}\n",
            h["text"].as_str().unwrap_or("-"),
            h["at_move"].as_str().unwrap_or("-")
        ));
    }
    out
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
    if let Some(w) = sync["waiting_on_refusal"].as_str() {
        line.push_str(&format!(
            "; the target refuses its writes for now, retried in order: {w}"
        ));
    }
    let evicted = n("evicted_keys");
    if evicted > 0 {
        line.push_str(&format!(
            "; the target EVICTED {evicted} key(s) (maxmemory): they are missing there"
        ));
    }
    let early = n("expired_early_keys");
    if early > 0 {
        line.push_str(&format!(
            "; {early} key(s) EXPIRED EARLY on the target and could not be copied from the source (missing there), e.g. '{}'",
            sync["expired_early"][0].as_str().unwrap_or("")
        ));
    }
    let unapplied = n("unapplied_commands");
    if unapplied > 0 {
        let first = &sync["unapplied"][0];
        line.push_str(&format!(
            "; {unapplied} stream command(s) NOT APPLIED, the link stopped (first: {} on key '{}': {})",
            first["command"].as_str().unwrap_or("-"),
            first["key"].as_str().unwrap_or(""),
            first["reason"].as_str().unwrap_or("")
        ));
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
    if let Some(cost) = cutover["overlap_cost"].as_str() {
        out.push_str(&format!("\n           cost: {cost}"));
    }
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
        (_, Some(why)) => {
            let mut line = format!("NOT safe: {why}");
            // Keys the old side of a shadow overlap expired on its own (issue 20).
            if let Some(names) = doc["cutover"]["shadow_keys_lost_names"].as_array()
                && !names.is_empty()
            {
                let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                line.push_str(&format!(
                    "; keys lost on the {}: {}",
                    doc["cutover"]["shadow_side"].as_str().unwrap_or("old side"),
                    names.join(", ")
                ));
            }
            line
        }
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

/// The live view of `cutover status --watch`: a progress bar for the sync's snapshot (with
/// an ETA when `keys_per_sec`, measured by the caller between two redraws, is known), the lag
/// of each link, then the usual summary ([`render_text`]). `width` is the bar's width in
/// characters.
pub fn render_watch(doc: &Value, keys_per_sec: Option<f64>, width: usize) -> String {
    let mut out = String::new();
    let sync = &doc["sync"];
    if !sync.is_null() {
        let n = |k: &str| sync[k].as_u64().unwrap_or(0);
        let (done, total) = (n("keys_done"), n("keys_total"));
        let phase = sync["phase"].as_str().unwrap_or("-");
        // The snapshot is over once the link streams (the total is an estimate: keys that
        // expired meanwhile were counted).
        let finished = matches!(phase, "streaming" | "stopped");
        let fraction = if finished {
            1.0
        } else if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64).clamp(0.0, 1.0)
        };
        let bytes = match sync["snapshot_bytes_total"].as_u64() {
            Some(t) if t > 0 => {
                format!("{} / {}", human_bytes(n("snapshot_bytes")), human_bytes(t))
            }
            _ => human_bytes(n("snapshot_bytes")),
        };
        let eta = match keys_per_sec {
            _ if finished => String::new(),
            Some(rate) if rate > 0.0 && total > done => {
                format!(", ETA {}", human_secs((total - done) as f64 / rate))
            }
            _ if phase == "syncing" => ", ETA -".to_string(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "snapshot  {} {:5.1}%  {done}/{total} keys, {bytes}{eta} ({phase})\n",
            bar(fraction, width),
            fraction * 100.0,
        ));
    }
    match doc["cutover"]["links"].as_array() {
        Some(links) => {
            for l in links {
                out.push_str(&format!(
                    "lag       {:<17} {:>10} / {} ms ({}, {})\n",
                    l["direction"].as_str().unwrap_or("-"),
                    human_bytes(l["lag_bytes"].as_u64().unwrap_or(0)),
                    l["lag_ms"].as_u64().unwrap_or(0),
                    l["role"].as_str().unwrap_or("-"),
                    l["phase"].as_str().unwrap_or("-"),
                ));
            }
        }
        None if !doc["lag_bytes"].is_null() => out.push_str(&format!(
            "lag       {} / {} ms\n",
            human_bytes(doc["lag_bytes"].as_u64().unwrap_or(0)),
            doc["lag_ms"].as_u64().unwrap_or(0),
        )),
        None => {}
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&render_text(doc));
    out
}

/// `[#########-----------]`, `fraction` in 0..=1.
fn bar(fraction: f64, width: usize) -> String {
    let width = width.max(1);
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn the_watch_view_draws_the_snapshot_bar_and_the_lag() {
        let doc = json!({
            "phase": "syncing", "primary": "source", "lag_bytes": 2500, "lag_ms": 12,
            "sync": {"phase": "syncing", "keys_done": 250, "keys_total": 1000,
                     "snapshot_bytes": 1_500_000, "snapshot_bytes_total": 6_000_000},
            "proxy": {}
        });
        let text = render_watch(&doc, Some(50.0), 20);
        assert!(
            text.contains("snapshot  [#####---------------]  25.0%  250/1000 keys, 1.5 MB / 6.0 MB, ETA 15 s (syncing)"),
            "{text}"
        );
        assert!(text.contains("lag       2.5 KB / 12 ms"), "{text}");
        assert!(text.contains("phase:     syncing"), "{text}");

        // Streaming: the bar is full; the links of a replica overlap get a lag line each.
        let doc = json!({
            "phase": "switched",
            "sync": {"phase": "streaming", "keys_done": 7, "keys_total": 9},
            "cutover": {"links": [
                {"direction": "source_to_target", "role": "following", "phase": "streaming", "lag_bytes": 0, "lag_ms": 0},
                {"direction": "target_to_source", "role": "applying", "phase": "streaming", "lag_bytes": 12_345_678, "lag_ms": 3}
            ]}
        });
        let text = render_watch(&doc, None, 10);
        assert!(
            text.contains("[##########] 100.0%  7/9 keys, 0 B (streaming)"),
            "{text}"
        );
        assert!(
            text.contains("target_to_source     12.3 MB / 3 ms (applying, streaming)"),
            "{text}"
        );

        // Garbage never panics.
        for doc in [
            json!(null),
            json!({"sync": {"keys_done": 5, "keys_total": 1}}),
            json!([1]),
        ] {
            let _ = render_watch(&doc, Some(f64::NAN), 0);
        }
        assert_eq!(human_secs(f64::INFINITY), "-");
        assert_eq!(human_secs(3725.0), "1 h 2 min");
    }
}
