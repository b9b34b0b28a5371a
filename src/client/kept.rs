//! [`Kept`]: a blocking control connection kept between occasional calls (a poll every
//! second, a lookup now and then), opened on first use and opened again after a failure,
//! instead of a connection per call.

use std::time::Duration;

use super::{BlockingClient, ClientError};
use crate::config::RedisUrl;

/// A [`BlockingClient`] to one server, opened when first needed.
#[derive(Default)]
pub struct Kept {
    conn: Option<BlockingClient>,
}

impl Kept {
    /// Runs `f` on the connection to `url` (opened within `timeout` if there is none), with
    /// every read and write bounded by `timeout`. A failure other than a refused command
    /// drops the connection: the next call opens a new one.
    pub fn with<T>(
        &mut self,
        url: &RedisUrl,
        timeout: Duration,
        f: impl FnOnce(&mut BlockingClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(BlockingClient::open_url(url, timeout)?),
        };
        conn.set_time_limit(timeout);
        let r = f(conn);
        if matches!(&r, Err(e) if !matches!(e, ClientError::Refused { .. })) {
            self.conn = None;
        }
        r
    }
}
