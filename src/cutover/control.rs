//! The cutover's control connections to a side (barrier queries, shadow writes, status
//! polls): a [`Client`] opened with the side's back-off respected.
//!
//! A backend in back-off (its last connection failed moments ago) is not tried again before
//! the back-off ends; a failure here starts or lengthens it, as the proxy's own connections
//! do.

use std::time::Duration;

use crate::client::{Client, Endpoint};
use crate::route::Backend;

/// Connects and logs in (AUTH and SELECT from the backend's URL) within `timeout`; every
/// exchange on the connection is bounded by `timeout` too.
pub async fn connect(backend: &Backend, timeout: Duration) -> Result<Client, String> {
    if let Some(wait) = backend.backoff_remaining() {
        return Err(format!(
            "{} is down ({}); next connection attempt in {} ms",
            backend.describe(),
            backend
                .last_error()
                .unwrap_or_else(|| "connection failed".into()),
            wait.as_millis()
        ));
    }
    let opened = match Endpoint::new(&backend.url) {
        Ok(endpoint) => Client::open(&endpoint, timeout).await,
        Err(e) => Err(e),
    };
    match opened {
        Ok(c) => {
            backend.connect_succeeded();
            Ok(c)
        }
        Err(e) => {
            backend.connect_failed(&e.to_string());
            Err(e.to_string())
        }
    }
}
