//! The one control client (`client::Client`, `client::BlockingClient`, `client::Kept`)
//! against real servers: every exchange ends within its time limit, a connection that ran
//! out of time is not used again, a kept connection is opened again after a failure, and
//! `INFO`/`ROLE` are read by the one reader.

mod common;

use std::time::{Duration, Instant};

use common::{Server, Version};
use cutover::client::{
    BlockingClient, Client, ClientError, Endpoint, Info, InfoRole, Kept, RoleReply,
};
use cutover::config::RedisUrl;

fn url(server: &Server) -> RedisUrl {
    RedisUrl::parse(&server.url()).unwrap()
}

/// Pauses every client of `server` for `ms` (our call then waits for the server).
fn pause_clients(server: &Server, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query(&mut server.conn())
        .unwrap();
}

#[tokio::test]
async fn async_calls_end_within_their_time_limit() {
    let server = Server::start(Version::Redis70);
    let endpoint = Endpoint::new(&url(&server)).unwrap();
    let mut c = Client::open(&endpoint, Duration::from_secs(2))
        .await
        .unwrap();
    let info = c.info("replication").await.unwrap();
    assert_eq!(info.role(), Some(InfoRole::Primary));
    assert!(info.master_repl_offset().is_some());
    assert!(info.master_replid().is_some_and(|id| id.len() == 40));
    let role = RoleReply::from_value(&c.query(&[b"ROLE"]).await.unwrap());
    assert!(matches!(role, Some(RoleReply::Primary { .. })), "{role:?}");
    // An error reply is a typed refusal for `call`, a value for `query`.
    let refused = c.call(&[b"NOSUCHCOMMAND"]).await.unwrap_err();
    assert!(matches!(refused, ClientError::Refused { .. }), "{refused}");

    c.set_time_limit(Duration::from_millis(200));
    pause_clients(&server, 1000);
    let started = Instant::now();
    let late = c.call(&[b"PING"]).await.unwrap_err();
    assert!(matches!(late, ClientError::Deadline { .. }), "{late}");
    assert!(started.elapsed() < Duration::from_millis(800));
    // The late reply would be taken for the next command's: the connection is done.
    let after = c.call(&[b"PING"]).await.unwrap_err();
    assert!(matches!(after, ClientError::Unusable { .. }), "{after}");
    assert!(after.retryable());

    // A deadline bounds an exchange below the time limit.
    let mut c = Client::open(&endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pause_clients(&server, 1000);
    c.set_deadline(Some(Instant::now() + Duration::from_millis(150)));
    let started = Instant::now();
    let late = c.query(&[b"PING"]).await.unwrap_err();
    assert!(matches!(late, ClientError::Deadline { .. }), "{late}");
    assert!(started.elapsed() < Duration::from_millis(800));
}

#[test]
fn blocking_calls_end_within_their_time_limit_and_kept_reconnects() {
    let server = Server::start(Version::Redis70);
    let u = url(&server);
    let mut c = BlockingClient::open_url(&u, Duration::from_secs(2)).unwrap();
    let info: Info = c.info("memory").unwrap();
    assert!(info.used_memory().is_some_and(|n| n > 0));
    assert_eq!(info.maxmemory(), Some(0));

    c.set_time_limit(Duration::from_millis(200));
    pause_clients(&server, 1000);
    let started = Instant::now();
    let late = c.call(&[b"PING"]).unwrap_err();
    assert!(matches!(late, ClientError::Deadline { .. }), "{late}");
    assert!(started.elapsed() < Duration::from_millis(800));
    let after = c.call(&[b"PING"]).unwrap_err();
    assert!(matches!(after, ClientError::Unusable { .. }), "{after}");
    std::thread::sleep(Duration::from_millis(1100));

    // A kept connection survives between calls, and is opened again after a failure.
    let mut kept = Kept::default();
    let timeout = Duration::from_secs(2);
    let id = |c: &mut BlockingClient| c.query(&[b"CLIENT", b"ID"]);
    let first = kept.with(&u, timeout, id).unwrap();
    assert_eq!(kept.with(&u, timeout, id).unwrap(), first);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(match &first {
            cutover::client::Value::Int(n) => n.to_string(),
            other => panic!("CLIENT ID answered {other:?}"),
        })
        .query(&mut server.conn())
        .unwrap();
    assert!(kept.with(&u, timeout, id).is_err());
    let again = kept.with(&u, timeout, id).unwrap();
    assert_ne!(again, first);
}
