//! Redis Cluster: the slot of a key, the slot map of a cluster and how it is read and
//! refreshed, and the redirects a node answers with.
//!
//! A Redis Cluster splits its keys into 16384 hash slots ([`slot`]); each slot is served by one
//! master (and copied to its replicas). A client reads which master serves which slot from any
//! node ([`SlotMap`], from `CLUSTER SHARDS` or `CLUSTER SLOTS`), sends each command to the
//! master of its keys' slot, and is redirected (`MOVED`, `ASK`: [`Redirect`]) when the map it
//! holds is out of date. A side of a migration is one server or a cluster ([`side::Side`]);
//! this module is where the difference lives, above `client/` (which reaches one server) and
//! below `sync/` and `verify/` (which ask a side for the node they need).
//!
//! * `slot.rs`: CRC16 with hash tags. Pure.
//! * `redirect.rs`: `MOVED`/`ASK`/`TRYAGAIN`/`CLUSTERDOWN` replies. Pure.
//! * `value.rs`: a bounded RESP decoder for the topology replies. Pure.
//! * `map.rs`: the slot map, from either reply, with announced hostnames and the address map.
//!   Pure.
//! * `topology.rs`: detection (`INFO cluster`), reading and refreshing the map over `client::`.
//! * `side.rs`: what a side is (one server or a cluster), built from its URL(s).
//! * `writer.rs`: single-slot transactions into a cluster, following `MOVED`/`ASK`/`TRYAGAIN`
//!   (the target writer's primitive for a cluster target).
//!
//! The pure parts are property-tested: they never panic on any input.

pub mod map;
pub mod redirect;
pub mod side;
pub mod slot;
pub mod topology;
pub mod value;
pub mod writer;

pub use map::{AddressMap, MapError, Node, NodeAddr, Shard, SlotMap};
pub use redirect::Redirect;
pub use side::{Side, SideError, SideSpec};
pub use slot::{SLOTS, Slot, SlotSet, slot};
pub use topology::{Topology, TopologyError};
pub use writer::{ClusterWriter, SlotTxn, WriterError};
