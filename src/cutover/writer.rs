//! The shadow writer: one task that drains the shadow queue into the old side, pipelined and
//! in queue order, on one connection (so the old side applies the writes in the order the
//! proxy saw them acknowledged).
//!
//! Each batch is written at once and its replies are read back; an error reply means the old
//! side now differs from the primary, so the rollback is marked unsafe (with the command and
//! the error). `CopyKeys` items read the keys' current state from the primary (type, value,
//! TTL, with plain commands that every version understands) and rewrite them on the old side
//! in one `MULTI … EXEC`.
//!
//! A reply showing that the old side lost a key on its own ([`Action::Expect`]) has the key
//! copied from the primary ([`super::shadow::repair`]) before the batch counts as applied
//! (so a move back waits for the copy), and the copy ([`Action::Repair`]) counts the key as
//! repaired once the old side took it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::control;
use super::order::KeyOrder;
use super::shadow::repair::Repairer;
use super::shadow::{Action, Args, ShadowItem, ShadowSink, Value};
use crate::client::Client;
use crate::resp::request::encode_command;
use crate::route::Backend;

/// Writes per pipeline round trip at most.
const BATCH: usize = 4096;
/// How long a `Take` (the shadow of a blocking pop) may wait for its element to arrive.
const TAKE_PATIENCE: Duration = Duration::from_secs(2);

/// What a reply in a shadow batch answers.
enum Answer {
    /// SELECT, MULTI.
    Control(&'static str),
    /// The EXEC of item `i`.
    Exec(usize),
    /// Command `n` of item `i` of the batch.
    Item(usize, usize),
    /// A command rebuilding a copied key.
    Copy(String),
}

impl Answer {
    /// The command's name, for the message when the old side refused it.
    fn describe(&self, items: &[ShadowItem]) -> String {
        let name = |args: &[&[u8]]| {
            args.first()
                .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
                .unwrap_or_default()
        };
        match self {
            Answer::Control(c) => (*c).to_string(),
            Answer::Exec(_) => "EXEC".to_string(),
            Answer::Copy(c) => format!("{c} of a copied key"),
            Answer::Item(i, n) => match items.get(*i).map(|it| &it.action) {
                Some(Action::Raw(raw)) => crate::sync::engine::split_args(raw)
                    .map(|a| name(&a))
                    .unwrap_or_default(),
                Some(Action::Apply(cmds) | Action::Repair { commands: cmds, .. }) => cmds
                    .get(*n)
                    .map(|c| name(&c.iter().map(|a| &a[..]).collect::<Vec<_>>()))
                    .unwrap_or_default(),
                Some(
                    Action::Take(c)
                    | Action::Replay(c, _)
                    | Action::Expect(c, _)
                    | Action::Exact(c, _),
                ) => name(&c.iter().map(|a| &a[..]).collect::<Vec<_>>()),
                _ => String::new(),
            },
        }
    }
}

/// A `Take` that found nothing to take yet.
struct Deferred {
    db: u32,
    cmd: Args,
    since: std::time::Instant,
}

/// Drains `rx` into `old` until the queue is closed (every sender dropped).
pub async fn run(
    sink: Arc<ShadowSink>,
    mut rx: mpsc::Receiver<ShadowItem>,
    old: Arc<Backend>,
    primary: Arc<Backend>,
    order: Arc<KeyOrder>,
    timeout: Duration,
) {
    let mut repairer = Repairer::new(order, primary.clone(), timeout);
    let mut conn: Option<Client> = None;
    let mut source_conn: Option<Client> = None;
    let mut items = Vec::with_capacity(BATCH);
    let mut deferred: Vec<Deferred> = Vec::new();
    loop {
        items.clear();
        let closed = if deferred.is_empty() {
            rx.recv_many(&mut items, BATCH).await == 0
        } else {
            // Retry the waiting takes soon even if nothing else arrives.
            let wait = rx.recv_many(&mut items, BATCH);
            matches!(
                tokio::time::timeout(Duration::from_millis(5), wait).await,
                Ok(0)
            )
        };
        if closed {
            for d in deferred.drain(..) {
                sink.mark_unsafe(&format!(
                    "a shadowed pop never found its element: {}",
                    show(&d.cmd)
                ));
                sink.applied(1);
            }
            tracing::info!(side = old.side.as_str(), "shadow writer stopped");
            return;
        }
        let n = items.len() as u64;
        if conn.is_none() {
            match control::connect(&old, timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    sink.mark_unsafe(&format!("cannot reach the {}: {e}", old.describe()));
                    sink.applied(n);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut waiting = 0;
        match write_batch(c, &mut source_conn, &items, &sink, &primary, timeout).await {
            Ok(done) => {
                waiting = done.deferred.len() as u64;
                deferred.extend(done.deferred);
                let lost = repairer.after_batch(&items, done.lost);
                if !lost.is_empty() {
                    // Before the batch counts as applied: a move back waits for the copies.
                    repairer.repair(&sink, c, lost).await;
                }
            }
            Err(e) => {
                sink.mark_unsafe(&format!(
                    "shadow writes to the {} failed: {e}",
                    old.describe()
                ));
                conn = None;
                repairer.after_batch(&items, Vec::new());
            }
        }
        sink.applied(n - waiting);
        if deferred.is_empty() {
            continue;
        }
        if let Some(c) = conn.as_mut() {
            match retry_takes(c, &mut deferred).await {
                Ok(done) => sink.applied(done),
                Err(e) => {
                    sink.mark_unsafe(&format!(
                        "shadow writes to the {} failed: {e}",
                        old.describe()
                    ));
                    conn = None;
                }
            }
        }
        let before = deferred.len();
        deferred.retain(|d| {
            let keep = d.since.elapsed() < TAKE_PATIENCE;
            if !keep {
                sink.mark_unsafe(&format!(
                    "a shadowed pop never found its element on the {}: {}",
                    old.describe(),
                    show(&d.cmd)
                ));
            }
            keep
        });
        sink.applied((before - deferred.len()) as u64);
    }
}

fn show(cmd: &Args) -> String {
    cmd.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends every waiting take again; removes (and counts) those that succeeded.
async fn retry_takes(c: &mut Client, deferred: &mut Vec<Deferred>) -> Result<u64, String> {
    let mut wire = Vec::new();
    let mut selects = Vec::with_capacity(deferred.len());
    for d in deferred.iter() {
        let select = c.db() != d.db;
        if select {
            encode_command(&[&b"SELECT"[..], d.db.to_string().as_bytes()], &mut wire);
            c.set_db(d.db);
        }
        selects.push(select);
        let refs: Vec<&[u8]> = d.cmd.iter().map(|a| &a[..]).collect();
        encode_command(&refs, &mut wire);
    }
    c.write(&wire).await?;
    let mut done = Vec::with_capacity(deferred.len());
    for select in selects {
        if select {
            c.read_reply().await?;
        }
        let reply = Value::decode(&c.read_reply().await?, 2);
        done.push(matches!(reply, Some(Value::Int(n)) if n >= 1));
    }
    let before = deferred.len();
    let mut flags = done.into_iter();
    deferred.retain(|_| !flags.next().unwrap_or(false));
    Ok((before - deferred.len()) as u64)
}

/// What a batch left to do.
#[derive(Default)]
struct Done {
    /// Takes that found nothing to take yet.
    deferred: Vec<Deferred>,
    /// Keys the old side answered as lost, to copy (with the index of the item that
    /// found it).
    lost: Vec<(usize, u32, Vec<u8>)>,
}

/// Writes one batch, pipelined, and checks every reply.
async fn write_batch(
    c: &mut Client,
    primary_conn: &mut Option<Client>,
    items: &[ShadowItem],
    sink: &ShadowSink,
    primary: &Backend,
    timeout: Duration,
) -> Result<Done, String> {
    let mut wire = Vec::with_capacity(items.len() * 64);
    // What each reply answers (to name it when it is an error), and whether it is a take's.
    let mut expect: Vec<(Answer, bool)> = Vec::with_capacity(items.len());
    let mut copied: Vec<Args> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let commands: &[Args] = match &item.action {
            Action::Apply(cmds) | Action::Repair { commands: cmds, .. } => cmds,
            Action::Take(cmd)
            | Action::Replay(cmd, _)
            | Action::Expect(cmd, _)
            | Action::Exact(cmd, _) => std::slice::from_ref(cmd),
            Action::Raw(_) => &[],
            Action::CopyKeys(keys) => {
                if primary_conn.is_none() {
                    *primary_conn = Some(control::connect(primary, timeout).await?);
                }
                let Some(p) = primary_conn.as_mut() else {
                    continue;
                };
                p.select(item.db).await?;
                copied.clear();
                for key in keys {
                    copied.extend(copy_key(p, key).await?);
                }
                &copied
            }
            Action::Skip | Action::Unsupported(_) => continue,
        };
        if commands.is_empty() && !matches!(item.action, Action::Raw(_)) {
            continue;
        }
        if c.db() != item.db {
            encode_command(&[&b"SELECT"[..], item.db.to_string().as_bytes()], &mut wire);
            expect.push((Answer::Control("SELECT"), false));
            c.set_db(item.db);
        }
        if let Action::Raw(raw) = &item.action {
            wire.extend_from_slice(raw);
            expect.push((Answer::Item(index, 0), false));
            continue;
        }
        let atomic = commands.len() > 1;
        if atomic {
            encode_command(&[&b"MULTI"[..]], &mut wire);
            expect.push((Answer::Control("MULTI"), false));
        }
        let take = matches!(item.action, Action::Take(_));
        for (i, cmd) in commands.iter().enumerate() {
            let refs: Vec<&[u8]> = cmd.iter().map(|a| &a[..]).collect();
            encode_command(&refs, &mut wire);
            let answer = match &item.action {
                Action::CopyKeys(_) => Answer::Copy(String::from_utf8_lossy(&cmd[0]).into_owned()),
                _ => Answer::Item(index, i),
            };
            expect.push((answer, take));
        }
        if atomic {
            encode_command(&[&b"EXEC"[..]], &mut wire);
            expect.push((Answer::Exec(index), false));
        }
    }
    let mut done = Done::default();
    if wire.is_empty() {
        return Ok(done);
    }
    c.write(&wire).await?;
    for (answer, take) in expect {
        // Only errors, transaction results, takes and replays are looked at; the rest is
        // skipped.
        let replay = match &answer {
            Answer::Item(i, _) => match &items[*i].action {
                Action::Replay(_, Some(expected)) => Some(expected),
                _ => None,
            },
            _ => None,
        };
        let lost_if = match &answer {
            Answer::Item(i, _) => match &items[*i].action {
                // (The reply that shows the loss; `false`: any reply but this one.)
                Action::Expect(_, lost) => Some((lost, true)),
                Action::Exact(_, wanted) => Some((wanted, false)),
                _ => None,
            },
            _ => None,
        };
        // The copy of a lost key: its reply says whether it is repaired.
        // (Several commands: the EXEC's; one: its own.)
        let repair = match &answer {
            Answer::Item(i, _) | Answer::Exec(i) => match &items[*i].action {
                Action::Repair { key, commands }
                    if (commands.len() > 1) == matches!(answer, Answer::Exec(_)) =>
                {
                    Some((items[*i].db, key))
                }
                _ => None,
            },
            _ => None,
        };
        let wanted = take
            || replay.is_some()
            || lost_if.is_some()
            || repair.is_some()
            || matches!(answer, Answer::Exec(_));
        let Some(raw) = c.read_if(wanted).await? else {
            continue;
        };
        let value = Value::decode(&raw, 2);
        if let (Some((lost, equal)), Some(got), Answer::Item(i, _)) = (lost_if, &value, &answer)
            && !matches!(got, Value::Error(_))
            && (got == lost) == equal
            && let Action::Expect(cmd, _) | Action::Exact(cmd, _) = &items[*i].action
        {
            let key = cmd.get(1).map(Vec::as_slice).unwrap_or_default();
            sink.lost_key(items[*i].db, key, &show(cmd));
            done.lost.push((*i, items[*i].db, key.to_vec()));
        }
        if let (true, Answer::Item(i, _), Some(Value::Int(0))) = (take, &answer, &value)
            && let Action::Take(cmd) = &items[*i].action
        {
            done.deferred.push(Deferred {
                db: items[*i].db,
                cmd: cmd.clone(),
                since: std::time::Instant::now(),
            });
            continue;
        }
        if let (Some(expected), Some(got)) = (replay, &value)
            && !matches!(got, Value::Error(_))
            && !same_reply(expected, got)
        {
            sink.mark_unsafe(&format!(
                "{} gave another result on the {} than on the primary (a script that is not deterministic, or that writes keys it does not declare): {got:?} instead of {expected:?}",
                answer.describe(items),
                sink.side.as_str()
            ));
        }
        let failed = match value {
            Some(Value::Error(e)) => Some(e),
            Some(Value::Array(items)) if matches!(answer, Answer::Exec(_)) => {
                items.into_iter().find_map(|v| match v {
                    Value::Error(e) => Some(e),
                    _ => None,
                })
            }
            _ => None,
        };
        if let Some((db, key)) = repair {
            match &failed {
                Some(e) => sink.unrepaired(db, key, &format!("the old side refused the copy: {e}")),
                None => sink.repaired(db, key),
            }
            continue;
        }
        if let Some(e) = failed {
            sink.mark_unsafe(&format!(
                "the {} refused a shadow write ({}): {e}",
                sink.side.as_str(),
                answer.describe(items)
            ));
        }
    }
    Ok(done)
}

/// Whether a replayed script answered the old side as it answered the primary (the
/// primary's reply may have been decoded from RESP3, where Lua's `false` is a boolean, and
/// RESP2's is a nil).
fn same_reply(primary: &Value, old: &Value) -> bool {
    // (Iterative: both were decoded, so they are shallow, but no recursion is needed.)
    let mut todo = vec![(primary, old)];
    while let Some(pair) = todo.pop() {
        match pair {
            (Value::Int(0), Value::Nil) | (Value::Nil, Value::Int(0)) => {}
            (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
                todo.extend(a.iter().zip(b))
            }
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    true
}

/// The commands that make `key` on the old side what it is on the primary now.
pub(super) async fn copy_key(p: &mut Client, key: &[u8]) -> Result<Vec<Args>, String> {
    let ty = match p.query(&[b"TYPE", key]).await? {
        Value::Bytes(t) => t,
        other => return Err(format!("TYPE answered {other:?}")),
    };
    let k = key.to_vec();
    let del = vec![b"DEL".to_vec(), k.clone()];
    let flat = |v: Value| -> Vec<Vec<u8>> {
        match v {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|i| match i {
                    Value::Bytes(b) => Some(b),
                    Value::Int(n) => Some(n.to_string().into_bytes()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut rebuild: Vec<Args> = vec![del];
    match ty.as_slice() {
        b"none" => return Ok(rebuild),
        b"string" => {
            if let Value::Bytes(v) = p.query(&[b"GET", key]).await? {
                rebuild.push(vec![b"SET".to_vec(), k.clone(), v]);
            }
        }
        b"list" => {
            let items = flat(p.query(&[b"LRANGE", key, b"0", b"-1"]).await?);
            for chunk in items.chunks(1000) {
                let mut c = vec![b"RPUSH".to_vec(), k.clone()];
                c.extend_from_slice(chunk);
                rebuild.push(c);
            }
        }
        b"set" => {
            let items = flat(p.query(&[b"SMEMBERS", key]).await?);
            for chunk in items.chunks(1000) {
                let mut c = vec![b"SADD".to_vec(), k.clone()];
                c.extend_from_slice(chunk);
                rebuild.push(c);
            }
        }
        b"zset" => {
            let items = flat(
                p.query(&[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"])
                    .await?,
            );
            for chunk in items.chunks(2000) {
                let mut c = vec![b"ZADD".to_vec(), k.clone()];
                for pair in chunk.chunks(2) {
                    if let [m, s] = pair {
                        c.push(s.clone());
                        c.push(m.clone());
                    }
                }
                rebuild.push(c);
            }
        }
        b"hash" => {
            let items = flat(p.query(&[b"HGETALL", key]).await?);
            for chunk in items.chunks(2000) {
                let mut c = vec![b"HSET".to_vec(), k.clone()];
                c.extend_from_slice(chunk);
                rebuild.push(c);
            }
        }
        other => {
            return Err(format!(
                "cannot copy key {} of type {} to the old side",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(other)
            ));
        }
    }
    if let Value::Int(ms) = p.query(&[b"PTTL", key]).await?
        && ms > 0
    {
        let at = crate::cutover::unix_ms() + ms as u64;
        rebuild.push(vec![b"PEXPIREAT".to_vec(), k, at.to_string().into_bytes()]);
    }
    Ok(rebuild)
}
