//! Single-slot transactions into a cluster: the target writer's primitive for a cluster
//! target (see ARCHITECTURE.md, *Clusters*).
//!
//! A [`SlotTxn`] is commands whose keys are all in one slot (a batch's writes for that slot
//! plus the slot's position key, hash-tagged into it). [`ClusterWriter::apply`] sends each as
//! `MULTI … EXEC` (a single command alone: it is atomic by itself, see [`is_bare`]) to the
//! master serving its slot, every node's share pipelined in one write, and follows the
//! cluster:
//!
//! * `MOVED` (at queue time; `EXEC` then aborts, nothing was applied) → the map is read again
//!   and the whole transaction goes to the new owner.
//! * `ASK` / `TRYAGAIN` (the slot is being migrated and this transaction's keys are split
//!   between the two nodes) → the transaction is **never split**: it waits (a short pause, then
//!   a fresh map) until the slot is whole on one node. A migration moves a slot's keys and
//!   then hands the slot over, so this ends; past the deadline it is an error with the reason.
//! * `CLUSTERDOWN` → pause, fresh map, again.
//!
//! * A node that cannot be reached (failover, restart) → pause, fresh map, again: nothing
//!   was sent.
//! * A connection lost after a transaction was written leaves its outcome unknown. A
//!   transaction that names its **check** (`SlotTxn::check`: a key it sets and the value it
//!   sets it to — the slot's position key and this batch's position) is resolved by reading
//!   that key on the slot's master once reachable again: equal → it applied
//!   ([`TxnResult::AppliedUnseen`]), otherwise it is sent again. Without a check the outcome
//!   is an error naming the slots.
//!
//! Any other refusal (at queue time or inside `EXEC`) is the caller's business: the reply is
//! handed back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::map::NodeAddr;
use super::redirect::Redirect;
use super::slot::Slot;
use super::topology::{Topology, TopologyError};
use crate::client::{BlockingClient, ClientError, Endpoint, connect_blocking};
use crate::resp::request::encode_command;

/// Commands whose keys all hash to `slot`, applied as one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTxn {
    pub slot: Slot,
    pub cmds: Vec<Vec<Vec<u8>>>,
    /// `(key, value)`: the transaction applied iff `GET key` is `value` afterwards (the slot's
    /// position key and this batch's position, unique per batch). Resolves a lost connection.
    pub check: Option<(Vec<u8>, Vec<u8>)>,
}

/// What became of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    /// `EXEC`'s reply (raw bytes: an array, or an error reply for a refusal that is not a
    /// redirect).
    Exec(Vec<u8>),
    /// Applied, but its reply was lost with the connection (found by its check).
    AppliedUnseen,
}

/// Why transactions could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(
        "the connection to {node} was lost with transactions of slots {slots:?} sent: whether they applied is unknown (read their position keys): {cause}"
    )]
    Unknown {
        node: String,
        slots: Vec<Slot>,
        cause: String,
    },
    #[error(transparent)]
    Connect(Box<ClientError>),
    #[error(
        "slot {slot} did not settle on one node within {waited:?} (last answer: {last}): a migration of the target cluster is stuck? check with redis-cli --cluster check"
    )]
    Stuck {
        slot: Slot,
        waited: Duration,
        last: String,
    },
    #[error("slot {0} is served by no master of the target cluster")]
    Unserved(Slot),
}

/// Writes single-slot transactions into a cluster, following its redirects.
pub struct ClusterWriter {
    topo: Topology,
    /// A connection per node, with its `CLIENT ID`.
    conns: HashMap<NodeAddr, (BlockingClient, i64)>,
    /// Connections lost with transactions written: killed on their node (`CLIENT KILL ID`)
    /// before any check is read, so a transaction still in the server's input buffer cannot
    /// apply after its check said it did not.
    orphans: Vec<(NodeAddr, i64)>,
    timeout: Duration,
    /// How long a slot may stay unsettled (migrating, cluster down) before `apply` fails.
    pub settle_limit: Duration,
    /// Redirects followed so far (`MOVED`, `ASK`/`TRYAGAIN`), for metrics and tests.
    pub moved: u64,
    pub waited: u64,
    /// Transactions whose connection was lost after they were written, and resolved by their
    /// check.
    pub resolved: u64,
}

enum Outcome {
    Done(TxnResult),
    Moved,
    Wait(String),
    /// Written, then the connection was lost before its reply.
    Lost(ClientError),
}

impl ClusterWriter {
    pub fn new(topo: Topology, timeout: Duration) -> ClusterWriter {
        ClusterWriter {
            topo,
            conns: HashMap::new(),
            orphans: Vec::new(),
            timeout,
            settle_limit: Duration::from_secs(30),
            moved: 0,
            waited: 0,
            resolved: 0,
        }
    }

    /// The topology (its map is refreshed on `MOVED`).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    fn conn(&mut self, addr: &NodeAddr) -> Result<&mut BlockingClient, WriterError> {
        if !self.conns.contains_key(addr) {
            let url = self.topo.url_at(addr);
            let endpoint = Endpoint::new(&url).map_err(|e| WriterError::Connect(Box::new(e)))?;
            let mut c = connect_blocking(&endpoint, self.timeout)
                .map_err(|e| WriterError::Connect(Box::new(e)))?;
            let id = c
                .call(&[b"CLIENT", b"ID"])
                .map_err(|e| WriterError::Connect(Box::new(e)))?;
            let id = std::str::from_utf8(id.get(1..id.len().saturating_sub(2)).unwrap_or(b""))
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            self.conns.insert(addr.clone(), (c, id));
        }
        Ok(&mut self.conns.get_mut(addr).expect("inserted").0)
    }

    /// Kills the lost connections still known to their nodes (a node that cannot be reached
    /// is not serving the slots any more, or will be asked again next round).
    fn kill_orphans(&mut self) -> bool {
        let mut left = Vec::new();
        for (addr, id) in std::mem::take(&mut self.orphans) {
            let id_text = id.to_string();
            let killed = self.conn(&addr).and_then(|c| {
                c.call(&[b"CLIENT", b"KILL", b"ID", id_text.as_bytes()])
                    .map(|_| ())
                    .or_else(|e| match e {
                        // Gone already: what it had sent was applied or dropped.
                        ClientError::Refused { .. } => Ok(()),
                        e => Err(WriterError::Connect(Box::new(e))),
                    })
            });
            if killed.is_err() {
                self.conns.remove(&addr);
                if self
                    .topo
                    .map()
                    .shards()
                    .iter()
                    .any(|s| s.master.addr == addr)
                {
                    left.push((addr, id));
                }
            }
        }
        self.orphans = left;
        self.orphans.is_empty()
    }

    /// Applies every transaction, each atomically on the master of its slot; returns `EXEC`'s
    /// reply per transaction, in order. Transactions of one slot keep their order.
    pub fn apply(&mut self, txns: &[SlotTxn]) -> Result<Vec<TxnResult>, WriterError> {
        let mut results: Vec<Option<TxnResult>> = vec![None; txns.len()];
        // Transactions written on a connection that was lost before their reply.
        let mut unsure: Vec<usize> = Vec::new();
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            // The pending transactions, per node, in order; of each slot only the first
            // pending one: a later one of the same slot must not apply before it (a slot's
            // position key would go backwards), and it could, when the first is refused by
            // `ASK` for a key already moved while the second's keys are still here.
            let mut per_node: BTreeMap<NodeAddr, Vec<usize>> = BTreeMap::new();
            let mut taken: HashSet<Slot> = HashSet::new();
            for (i, t) in txns.iter().enumerate() {
                if results[i].is_some() || unsure.contains(&i) || !taken.insert(t.slot) {
                    continue;
                }
                let node = self
                    .topo
                    .map()
                    .master_of(t.slot)
                    .ok_or(WriterError::Unserved(t.slot))?;
                per_node.entry(node.addr.clone()).or_default().push(i);
            }
            if per_node.is_empty() && unsure.is_empty() {
                return Ok(results.into_iter().map(|r| r.expect("done")).collect());
            }
            let (mut refresh, mut wait) = (false, None::<(Slot, String)>);
            let mut progressed = false;
            // Every node's pipeline is written first, then each node's replies are read: the
            // nodes work in parallel (a server reads its input and buffers its replies, so
            // writing before reading cannot deadlock).
            let mut done: Vec<(NodeAddr, Vec<usize>, Vec<Outcome>)> = Vec::new();
            let mut reading: Vec<(NodeAddr, Vec<usize>)> = Vec::new();
            for (addr, idx) in per_node {
                match self.write_node(&addr, txns, &idx)? {
                    Some(outcomes) => done.push((addr, idx, outcomes)),
                    None => reading.push((addr, idx)),
                }
            }
            for (addr, idx) in reading {
                let outcomes = self.read_node(&addr, txns, &idx);
                done.push((addr, idx, outcomes));
            }
            for (addr, idx, outcomes) in done {
                for (i, o) in idx.iter().zip(outcomes) {
                    match o {
                        Outcome::Done(r) => {
                            results[*i] = Some(r);
                            progressed = true;
                        }
                        Outcome::Moved => {
                            self.moved += 1;
                            refresh = true;
                        }
                        Outcome::Wait(why) => {
                            self.waited += 1;
                            wait.get_or_insert((txns[*i].slot, why));
                        }
                        Outcome::Lost(cause) => {
                            if txns[*i].check.is_none() {
                                return Err(WriterError::Unknown {
                                    node: addr.to_string(),
                                    slots: vec![txns[*i].slot],
                                    cause: cause.to_string(),
                                });
                            }
                            unsure.push(*i);
                            refresh = true;
                        }
                    }
                }
            }
            // Resolve the lost ones by their checks, on the slot's master now, once their
            // connections are dead on the server too.
            let mut still = Vec::new();
            let orphans_gone = self.kill_orphans();
            for i in std::mem::take(&mut unsure) {
                if !orphans_gone {
                    wait.get_or_insert((
                        txns[i].slot,
                        "a lost connection is still open on its node".into(),
                    ));
                    still.push(i);
                    continue;
                }
                match self.check(&txns[i]) {
                    Ok(true) => {
                        self.resolved += 1;
                        results[i] = Some(TxnResult::AppliedUnseen);
                        progressed = true;
                    }
                    // Not applied: sent again in the next round.
                    Ok(false) => self.resolved += 1,
                    Err(why) => {
                        wait.get_or_insert((txns[i].slot, why));
                        still.push(i);
                    }
                }
            }
            unsure = still;
            if progressed {
                pause = Duration::from_millis(5);
                if wait.is_none() && !refresh {
                    continue;
                }
            }
            if let Some((slot, last)) = &wait {
                if started.elapsed() > self.settle_limit {
                    return Err(WriterError::Stuck {
                        slot: *slot,
                        waited: started.elapsed(),
                        last: last.clone(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
                refresh = true;
            }
            if refresh {
                if let Err(e) = self.topo.refresh() {
                    tracing::warn!(error = %e, "cannot refresh the target cluster's map; retrying");
                    if started.elapsed() > self.settle_limit {
                        return Err(e.into());
                    }
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// Reads a transaction's check on its slot's master: `Ok(true)` applied, `Ok(false)` not,
    /// `Err` the master cannot be asked now.
    fn check(&mut self, txn: &SlotTxn) -> Result<bool, String> {
        let (key, value) = txn.check.as_ref().expect("only checked transactions");
        let Some(node) = self.topo.map().master_of(txn.slot) else {
            return Err(format!("slot {} unserved", txn.slot));
        };
        let addr = node.addr.clone();
        let conn = self.conn(&addr).map_err(|e| e.to_string())?;
        let mut wire = Vec::new();
        encode_command(&[&b"GET"[..], key], &mut wire);
        let reply = conn.write(&wire).and_then(|_| conn.read_reply());
        match reply {
            Ok(r) if r.first() == Some(&b'-') => {
                // MOVED/ASK: the map is old; the next round refreshes it.
                Err(String::from_utf8_lossy(&r).trim_end().to_string())
            }
            Ok(r) => {
                let mut want = format!("${}\r\n", value.len()).into_bytes();
                want.extend_from_slice(value);
                want.extend_from_slice(b"\r\n");
                Ok(r == want)
            }
            Err(e) => {
                if let Some((_, id)) = self.conns.remove(&addr) {
                    self.orphans.push((addr, id));
                }
                Err(e.to_string())
            }
        }
    }

    /// Writes the transactions `idx` to `addr` in one pipeline. `Some(outcomes)` when nothing
    /// is to be read: a node that cannot be reached makes every one `Wait` (nothing was
    /// sent), a write that failed makes every one `Lost`.
    fn write_node(
        &mut self,
        addr: &NodeAddr,
        txns: &[SlotTxn],
        idx: &[usize],
    ) -> Result<Option<Vec<Outcome>>, WriterError> {
        let mut wire = Vec::new();
        for &i in idx {
            let bare = is_bare(&txns[i]);
            if !bare {
                encode_command(&[b"MULTI"], &mut wire);
            }
            for c in &txns[i].cmds {
                let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                encode_command(&args, &mut wire);
            }
            if !bare {
                encode_command(&[b"EXEC"], &mut wire);
            }
        }
        let conn = match self.conn(addr) {
            Ok(c) => c,
            Err(WriterError::Connect(e)) if e.retryable() => {
                let why = format!("{addr} unreachable: {e}");
                return Ok(Some(
                    idx.iter().map(|_| Outcome::Wait(why.clone())).collect(),
                ));
            }
            Err(e) => return Err(e),
        };
        match conn.write(&wire) {
            Ok(()) => Ok(None),
            Err(e) => Ok(Some(self.lost(addr, &e, idx.len(), Vec::new()))),
        }
    }

    /// Reads the outcomes of the transactions `idx` written to `addr`; a connection lost
    /// midway makes the unread ones `Lost`.
    fn read_node(&mut self, addr: &NodeAddr, txns: &[SlotTxn], idx: &[usize]) -> Vec<Outcome> {
        let Some((conn, _)) = self.conns.get_mut(addr) else {
            let e = ClientError::Protocol {
                endpoint: addr.to_string(),
                detail: "connection gone".into(),
            };
            return self.lost(addr, &e, idx.len(), Vec::new());
        };
        let mut out = Vec::with_capacity(idx.len());
        let r = (|| -> Result<(), ClientError> {
            for &i in idx {
                if is_bare(&txns[i]) {
                    let r = conn.read_reply()?;
                    let redirect = if r.first() == Some(&b'-') {
                        Redirect::parse(&r)
                    } else {
                        None
                    };
                    out.push(match redirect {
                        // As `EXEC` would have answered: an array of the one reply.
                        None => Outcome::Done(TxnResult::Exec([&b"*1\r\n"[..], &r].concat())),
                        Some(Redirect::Moved { .. }) => Outcome::Moved,
                        Some(r) => Outcome::Wait(format!("{r:?}")),
                    });
                    continue;
                }
                let _multi = conn.read_reply()?;
                let mut redirect: Option<Redirect> = None;
                for _ in &txns[i].cmds {
                    let r = conn.read_reply()?;
                    if r.first() == Some(&b'-') && redirect.is_none() {
                        redirect = Redirect::parse(&r);
                    }
                }
                let exec = conn.read_reply()?;
                // EXEC itself may be redirected (its keys checked again at EXEC time).
                if exec.first() == Some(&b'-') && redirect.is_none() {
                    redirect = Redirect::parse(&exec);
                }
                out.push(match redirect {
                    None => Outcome::Done(TxnResult::Exec(exec)),
                    Some(Redirect::Moved { .. }) => Outcome::Moved,
                    Some(r) => Outcome::Wait(format!("{r:?}")),
                });
            }
            Ok(())
        })();
        match r {
            Ok(()) => out,
            Err(e) => self.lost(addr, &e, idx.len(), out),
        }
    }

    /// The connection to `addr` was lost with transactions written: it becomes an orphan
    /// (killed on its node before any check is read); the unanswered ones are `Lost`.
    fn lost(
        &mut self,
        addr: &NodeAddr,
        e: &ClientError,
        total: usize,
        mut out: Vec<Outcome>,
    ) -> Vec<Outcome> {
        if let Some((_, id)) = self.conns.remove(addr) {
            self.orphans.push((addr.clone(), id));
        }
        tracing::debug!(node = %addr, error = %e, "connection to a cluster node lost");
        while out.len() < total {
            out.push(Outcome::Lost(clone_error(e)));
        }
        out
    }
}

/// A transaction of one command is sent without `MULTI`/`EXEC`: one command is atomic by
/// itself, and it is refused by a redirect (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) exactly
/// as its transaction would have been (nothing applied), so the same rules follow. Its reply
/// is handed back as `EXEC`'s would be (`*1` and the reply). A refusal that `MULTI` would have
/// turned into `-EXECABORT` (unknown command, wrong arity, `OOM`) is then that element's
/// error: the caller sees which command it was. This is most of a snapshot (a key per slot
/// per batch, keys come in hash order) and every all-slot position write: `MULTI` and `EXEC`
/// around one command cost the target ~65% more CPU than the command alone (measured on
/// Redis 7.0, `SET` of 100 B pipelined).
fn is_bare(txn: &SlotTxn) -> bool {
    txn.cmds.len() == 1
}

/// `ClientError` is not `Clone` (it holds `io::Error`s): the same message, as a protocol error.
fn clone_error(e: &ClientError) -> ClientError {
    ClientError::Protocol {
        endpoint: String::new(),
        detail: e.to_string(),
    }
}
