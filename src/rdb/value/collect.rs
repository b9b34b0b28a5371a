//! Whole values: [`decode_value`] and [`decode_dump`] run the decoder over a complete body or
//! DUMP payload, and [`Value`] collects the events of one value into a plain structure (for
//! verify's comparisons, tests and small keys; a big value is consumed chunk by chunk).

use super::*;

/// A value decoded from a DUMP payload.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpValue {
    /// The RDB version in the footer.
    pub version: RdbVersion,
    /// The value's type.
    pub rdb_type: RdbType,
    /// The value events, as the file parser would emit them between `KeyStart` and `KeyEnd`.
    pub events: Vec<Event>,
}

/// Decodes a value body (`type byte + value`, as in a DUMP payload or [`Event::KeyEnd`]'s
/// `raw`) of the given dialect into value events. Every byte must belong to the value.
pub fn decode_value(
    body: &[u8],
    dialect: Dialect,
    limits: ChunkLimits,
) -> Result<(RdbType, Vec<Event>)> {
    let mut r = Reader::new(body);
    let id = r.read_u8("value type")?;
    let ty = RdbType::from_id(id, dialect).ok_or_else(|| {
        RdbError::invalid(
            0,
            "value type",
            format!("unknown type id {id} in the {dialect:?} dialect"),
        )
    })?;
    let mut dec = ValueDecoder::new(ty, limits).map_err(|e| e.rebased(0))?;
    let mut events = Vec::new();
    while !dec.step(&mut r, &mut events)? {}
    if !r.is_empty() {
        return Err(r.invalid(
            "value",
            format!("{} byte(s) after the value", r.remaining()),
        ));
    }
    Ok((ty, events))
}

/// Verifies a DUMP payload's CRC and decodes its value with the dialect of its version.
pub fn decode_dump(payload: &[u8]) -> Result<DumpValue> {
    let dump = DumpPayload::parse(payload)?;
    if dump.type_byte() == crate::rdb::types::OP_KEY_META_OR_SLOT_IMPORT
        && dump.version.dialect() == Dialect::Redis
    {
        return Err(RdbError::invalid(
            0,
            "DUMP payload",
            "KEY_META blocks (Redis 8.6+) are not supported",
        ));
    }
    let (rdb_type, events) =
        decode_value(dump.value, dump.version.dialect(), ChunkLimits::UNLIMITED)?;
    Ok(DumpValue {
        version: dump.version,
        rdb_type,
        events,
    })
}

/// A consumer group of a collected [`Value::Stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The header.
    pub group: StreamGroup,
    /// Its pending entries.
    pub pel: Vec<PendingEntry>,
    /// Its consumers with their pending IDs.
    pub consumers: Vec<(StreamConsumer, Vec<StreamId>)>,
}

/// A whole value, collected from its events (convenient for small values and tests; a big
/// value should be consumed chunk by chunk instead).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    String(Vec<u8>),
    /// A list.
    List(Vec<Vec<u8>>),
    /// A set, in file order.
    Set(Vec<Vec<u8>>),
    /// A sorted set, in file order.
    Zset(Vec<(Vec<u8>, f64)>),
    /// A hash, in file order.
    Hash(Vec<HashField>),
    /// A stream.
    Stream {
        /// Live entries.
        entries: Vec<StreamEntry>,
        /// Metadata.
        meta: Option<StreamMeta>,
        /// Consumer groups.
        groups: Vec<Group>,
    },
    /// A module value.
    Module {
        /// Module type id.
        module_id: u64,
        /// Its items.
        items: Vec<ModuleItem>,
    },
}

impl Value {
    /// An empty value of the given kind.
    pub fn empty(kind: crate::rdb::types::ValueKind) -> Value {
        use crate::rdb::types::ValueKind as K;
        match kind {
            K::String => Value::String(Vec::new()),
            K::List => Value::List(Vec::new()),
            K::Set => Value::Set(Vec::new()),
            K::Zset => Value::Zset(Vec::new()),
            K::Hash => Value::Hash(Vec::new()),
            K::Stream => Value::Stream {
                entries: Vec::new(),
                meta: None,
                groups: Vec::new(),
            },
            K::Module => Value::Module {
                module_id: 0,
                items: Vec::new(),
            },
        }
    }

    /// Adds one value event; returns false (and changes nothing) if the event is not a value
    /// event of this kind.
    pub fn push(&mut self, ev: Event) -> bool {
        match (self, ev) {
            (Value::String(s), Event::StringChunk(d)) => s.extend_from_slice(&d),
            (Value::List(l), Event::ListChunk(d)) => l.extend(d),
            (Value::Set(l), Event::SetChunk(d)) => l.extend(d),
            (Value::Zset(l), Event::ZsetChunk(d)) => l.extend(d),
            (Value::Hash(l), Event::HashChunk(d)) => l.extend(d),
            (Value::Stream { entries, .. }, Event::StreamEntries(d)) => entries.extend(d),
            (Value::Stream { meta, .. }, Event::StreamMeta(m)) => *meta = Some(m),
            (Value::Stream { groups, .. }, Event::StreamGroup(g)) => groups.push(Group {
                group: g,
                pel: Vec::new(),
                consumers: Vec::new(),
            }),
            (Value::Stream { groups, .. }, Event::StreamGroupPel(p)) => match groups.last_mut() {
                Some(g) => g.pel.extend(p),
                None => return false,
            },
            (Value::Stream { groups, .. }, Event::StreamConsumer(c)) => match groups.last_mut() {
                Some(g) => g.consumers.push((c, Vec::new())),
                None => return false,
            },
            (Value::Stream { groups, .. }, Event::StreamConsumerPel(p)) => {
                match groups.last_mut().and_then(|g| g.consumers.last_mut()) {
                    Some(c) => c.1.extend(p),
                    None => return false,
                }
            }
            (Value::Module { module_id, .. }, Event::ModuleValue { module_id: id, .. }) => {
                *module_id = id
            }
            (Value::Module { items, .. }, Event::ModuleItems(d)) => items.extend(d),
            _ => return false,
        }
        true
    }

    /// Collects the value events of one value of type `ty`.
    pub fn collect(ty: RdbType, events: impl IntoIterator<Item = Event>) -> Result<Value> {
        let mut v = Value::empty(ty.kind());
        for ev in events {
            let name = format!("{ev:?}");
            if !v.push(ev) {
                return Err(RdbError::invalid(
                    0,
                    "value events",
                    format!("unexpected event for a {}: {:.60}", ty.kind().name(), name),
                ));
            }
        }
        Ok(v)
    }
}
