//! The replica link against real masters: full sync (disk and diskless), the command stream
//! with exact offsets, acknowledgements the master sees, and a partial resync that continues
//! where the link stopped.

mod common;

use std::time::{Duration, Instant};

use common::{Server, Version};
use cutover::config::RedisUrl;
use cutover::sync::replica::{ReplicaLink, SyncStart};
use redis::Commands;

fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} not in INFO {section}:\n{info}"))
        .trim()
        .to_string()
}

async fn full_sync_then_stream(version: Version, diskless: bool) {
    let mut extra = vec!["--repl-diskless-sync-delay", "0"];
    extra.extend(["--repl-diskless-sync", if diskless { "yes" } else { "no" }]);
    let server = Server::start_with(version, &extra);
    let mut conn = server.conn();
    for i in 0..500 {
        let _: () = conn.set(format!("key:{i}"), format!("value:{i}")).unwrap();
    }
    let url = RedisUrl::parse(&server.url()).unwrap();
    let (mut link, start) = ReplicaLink::connect(&url, None, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let SyncStart::FullResync { replid, offset } = start else {
        panic!("expected a full resync, got {start:?}")
    };
    assert_eq!(replid.len(), 40);
    let mut rdb = Vec::new();
    let size = link
        .receive_snapshot(|chunk| {
            rdb.extend_from_slice(chunk);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(size as usize, rdb.len());
    assert!(rdb.starts_with(b"REDIS"), "{:?}", &rdb[..rdb.len().min(16)]);
    // 0xFF (EOF opcode) then an 8-byte checksum ends every RDB since version 5.
    assert_eq!(rdb[rdb.len() - 9], 0xFF);
    assert_eq!(link.offset(), offset);

    // Live writes arrive in order, and the offsets add up to the master's.
    let _: () = conn.set("live", "1").unwrap();
    let _: i64 = conn.incr("counter", 5).unwrap();
    let _: i64 = conn.rpush("list", &["a", "b"]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|c: &String| c.contains("rpush") || c.contains("RPUSH"))
    {
        assert!(Instant::now() < deadline, "stream so far: {seen:?}");
        for cmd in link.next_commands(link.offset()).await.unwrap() {
            seen.push(String::from_utf8_lossy(&cmd.wire).replace("\r\n", " "));
        }
    }
    let text = seen.join(" | ").to_lowercase();
    let set = text.find("live").unwrap();
    let incr = text.find("counter").unwrap();
    let rpush = text.find("rpush").unwrap();
    assert!(set < incr && incr < rpush, "{text}");
    link.ack(link.offset()).await.unwrap();
    let master_offset: u64 = info_field(&mut conn, "replication", "master_repl_offset")
        .parse()
        .unwrap();
    assert_eq!(link.offset(), master_offset, "stream: {text}");

    // The master sees our acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let slave0 = info_field(&mut conn, "replication", "slave0");
        if slave0.contains(&format!("offset={master_offset}")) && slave0.contains("state=online") {
            break;
        }
        assert!(Instant::now() < deadline, "master's view: {slave0}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Drop the link, write more, and continue from where we stopped.
    let resume_at = link.offset();
    drop(link);
    let _: () = conn.set("after-drop", "x").unwrap();
    let (mut link, start) =
        ReplicaLink::connect(&url, Some((&replid, resume_at)), 1, Duration::from_secs(10))
            .await
            .unwrap();
    assert!(matches!(start, SyncStart::Continue { .. }), "{start:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = String::new();
    while !after.contains("after-drop") {
        assert!(Instant::now() < deadline, "stream after resume: {after}");
        for cmd in link.next_commands(link.offset()).await.unwrap() {
            after.push_str(&String::from_utf8_lossy(&cmd.wire));
        }
    }
}

#[tokio::test]
async fn redis70_disk_snapshot() {
    full_sync_then_stream(Version::Redis70, false).await;
}

#[tokio::test]
async fn redis70_diskless_snapshot() {
    full_sync_then_stream(Version::Redis70, true).await;
}

#[tokio::test]
async fn redis62_diskless_snapshot() {
    full_sync_then_stream(Version::Redis62, true).await;
}

#[tokio::test]
async fn valkey91_diskless_snapshot() {
    full_sync_then_stream(Version::Valkey91, true).await;
}

#[tokio::test]
async fn wrong_password_is_a_clear_error() {
    let server = Server::start_with(Version::Redis70, &["--requirepass", "right"]);
    let url = RedisUrl::parse(&format!("redis://:wrong@127.0.0.1:{}", server.port())).unwrap();
    let err = match ReplicaLink::connect(&url, None, 1, Duration::from_secs(5)).await {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("AUTH") && err.contains("WRONGPASS"), "{err}");
}

/// A peer that answers the handshake with an endless line (no CRLF) is refused once the line
/// passes the limit, instead of being buffered for as long as it sends.
#[tokio::test]
async fn an_endless_handshake_line_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        let chunk = vec![b'+'; 16 * 1024];
        // Far more than the limit, never a line end; stops when the link hangs up.
        for _ in 0..64 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
    let err = match ReplicaLink::connect(&url, None, 1, Duration::from_secs(5)).await {
        Ok(_) => panic!("an endless line was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("line end"), "{err}");
    peer.join().unwrap();
}
