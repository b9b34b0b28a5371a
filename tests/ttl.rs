//! Keys the side a link writes to expires on its own (issue 20): the two sides' clocks.
//!
//! - The skew between the sides is measured at start (`TIME` against the local clock, half
//!   the round trip as the error) and shown in `status` (`cutover.clock_skew`); with the
//!   target's clock 50 ms ahead (libfaketime) it is beyond the default bound: a warning in
//!   status and the log, and `cutover_clock_skew_exceeded` for the alert. On one clock it is
//!   within.

mod common;

use std::time::{Duration, Instant};

use common::faketime::SkewedServer;
use common::{Proxy, Server, Version};

fn clock(proxy: &Proxy) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = proxy.status_json();
        if !s["cutover"]["clock_skew"].is_null() {
            return s["cutover"]["clock_skew"].clone();
        }
        assert!(Instant::now() < deadline, "no clock_skew in {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_target_clock_50_ms_ahead_is_measured_and_warned_about() {
    let source = Server::start(Version::Valkey91);
    let target = SkewedServer::start("valkey-9.1-server", "+0.05", &[]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let c = clock(&proxy);
    let between = c["between_ms"].as_f64().unwrap_or_else(|| panic!("{c}"));
    assert!((40.0..60.0).contains(&between), "{c}");
    assert_eq!(c["exceeded"], true, "{c}");
    assert_eq!(c["limit_ms"], 20, "{c}");
    assert!(
        c["warning"].as_str().unwrap().contains("max_clock_skew_ms"),
        "{c}"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("cutover_clock_skew_exceeded 1"),
        "{metrics}"
    );
    assert!(
        proxy.log().contains("max_clock_skew_ms"),
        "a WARN in the log"
    );
}

#[test]
fn one_clock_is_within_the_bound() {
    let source = Server::start(Version::Valkey91);
    let target = Server::start(Version::Redis62);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let c = clock(&proxy);
    let between = c["between_ms"].as_f64().unwrap_or_else(|| panic!("{c}"));
    assert!(between.abs() < 5.0, "{c}");
    assert_eq!(c["exceeded"], false, "{c}");
    assert!(c["warning"].is_null(), "{c}");
    assert!(c["source"]["rtt_ms"].as_f64().unwrap() < 50.0, "{c}");
}
