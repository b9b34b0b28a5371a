//! Single-slot transactions into a cluster: the target writer's primitive for a cluster
//! target (see ARCHITECTURE.md, *Clusters*).
//!
//! A [`SlotTxn`] is commands whose keys are all in one slot (a batch's writes for that slot
//! plus the slot's position key, hash-tagged into it). [`ClusterWriter::apply`] sends each as
//! `MULTI … EXEC` to the master serving its slot, every node's share pipelined in one write,
//! and follows the cluster:
//!
//! * `MOVED` (at queue time; `EXEC` then aborts, nothing was applied) → the map is read again
//!   and the whole transaction goes to the new owner.
//! * `ASK` / `TRYAGAIN` (the slot is being migrated and this transaction's keys are split
//!   between the two nodes) → the transaction is **never split**: it waits (a short pause, then
//!   a fresh map) until the slot is whole on one node. A migration moves a slot's keys and
//!   then hands the slot over, so this ends; past the deadline it is an error with the reason.
//! * `CLUSTERDOWN` → pause, fresh map, again.
//!
//! Any other refusal (at queue time or inside `EXEC`) is the caller's business: the reply is
//! handed back. A connection lost after `EXEC` was written leaves the outcome unknown: the
//! error names the slots, and the caller reads their position keys to learn what applied.

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
}

/// What became of a transaction: `EXEC`'s reply (raw bytes: an array, or an error reply for a
/// refusal that is not a redirect).
pub type TxnReply = Vec<u8>;

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
        cause: ClientError,
    },
    #[error(transparent)]
    Connect(ClientError),
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
    conns: HashMap<NodeAddr, BlockingClient>,
    timeout: Duration,
    /// How long a slot may stay unsettled (migrating, cluster down) before `apply` fails.
    pub settle_limit: Duration,
    /// Redirects followed so far (`MOVED`, `ASK`/`TRYAGAIN`), for metrics and tests.
    pub moved: u64,
    pub waited: u64,
}

enum Outcome {
    Done(TxnReply),
    Moved,
    Wait(String),
}

impl ClusterWriter {
    pub fn new(topo: Topology, timeout: Duration) -> ClusterWriter {
        ClusterWriter {
            topo,
            conns: HashMap::new(),
            timeout,
            settle_limit: Duration::from_secs(30),
            moved: 0,
            waited: 0,
        }
    }

    /// The topology (its map is refreshed on `MOVED`).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    fn conn(&mut self, addr: &NodeAddr) -> Result<&mut BlockingClient, WriterError> {
        if !self.conns.contains_key(addr) {
            let url = self.topo.url_at(addr);
            let endpoint = Endpoint::new(&url).map_err(WriterError::Connect)?;
            let c = connect_blocking(&endpoint, self.timeout).map_err(WriterError::Connect)?;
            self.conns.insert(addr.clone(), c);
        }
        Ok(self.conns.get_mut(addr).expect("inserted"))
    }

    /// Applies every transaction, each atomically on the master of its slot; returns `EXEC`'s
    /// reply per transaction, in order. Transactions of one slot keep their order.
    pub fn apply(&mut self, txns: &[SlotTxn]) -> Result<Vec<TxnReply>, WriterError> {
        let mut results: Vec<Option<TxnReply>> = vec![None; txns.len()];
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
                if results[i].is_some() || !taken.insert(t.slot) {
                    continue;
                }
                let node = self
                    .topo
                    .map()
                    .master_of(t.slot)
                    .ok_or(WriterError::Unserved(t.slot))?;
                per_node.entry(node.addr.clone()).or_default().push(i);
            }
            if per_node.is_empty() {
                return Ok(results.into_iter().map(|r| r.expect("done")).collect());
            }
            let (mut refresh, mut wait) = (false, None::<(Slot, String)>);
            let mut progressed = false;
            for (addr, idx) in per_node {
                let outcomes = self.send_node(&addr, txns, &idx)?;
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
                    }
                }
            }
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

    /// Writes the transactions `idx` to `addr` in one pipeline and reads their outcomes.
    fn send_node(
        &mut self,
        addr: &NodeAddr,
        txns: &[SlotTxn],
        idx: &[usize],
    ) -> Result<Vec<Outcome>, WriterError> {
        let mut wire = Vec::new();
        for &i in idx {
            encode_command(&[b"MULTI"], &mut wire);
            for c in &txns[i].cmds {
                let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                encode_command(&args, &mut wire);
            }
            encode_command(&[b"EXEC"], &mut wire);
        }
        let slots: Vec<Slot> = idx.iter().map(|&i| txns[i].slot).collect();
        let node = addr.to_string();
        let lost = |cause| WriterError::Unknown {
            node: node.clone(),
            slots: slots.clone(),
            cause,
        };
        let conn = self.conn(addr)?;
        let r = (|| -> Result<Vec<Outcome>, ClientError> {
            conn.write(&wire)?;
            let mut out = Vec::with_capacity(idx.len());
            for &i in idx {
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
                    None => Outcome::Done(exec),
                    Some(Redirect::Moved { .. }) => Outcome::Moved,
                    Some(r) => Outcome::Wait(format!("{r:?}")),
                });
            }
            Ok(out)
        })();
        match r {
            Ok(out) => Ok(out),
            Err(e) => {
                self.conns.remove(addr);
                Err(lost(e))
            }
        }
    }
}
