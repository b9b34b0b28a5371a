//! Records inside values that are read whole: stream IDs (two lengths, or 16 raw big-endian
//! bytes), stream nodes (a 16-byte master ID and a listpack of entries whose IDs and fields
//! are deltas against the node's master entry), and the annotated items of a module value
//! (opcode, then a length, a double, a float or a string), which the file parser also reads
//! to skip a module's auxiliary data.

use super::*;

pub(super) fn read_stream_id_lens(r: &mut Reader<'_>, context: &'static str) -> Result<StreamId> {
    Ok(StreamId {
        ms: r.read_len(context)?,
        seq: r.read_len(context)?,
    })
}

pub(super) fn read_raw_id(r: &mut Reader<'_>, context: &'static str) -> Result<StreamId> {
    Ok(StreamId::from_be_bytes(&r.read_array::<16>(context)?))
}

/// Reads one annotated module item; `None` at the module EOF marker.
pub(crate) fn read_module_item(r: &mut Reader<'_>) -> Result<Option<ModuleItem>> {
    const CTX: &str = "module item";
    let at = r.offset();
    let mut t = r.clone();
    let item = match t.read_len(CTX)? {
        module_op::EOF => None,
        module_op::SINT => Some(ModuleItem::Sint(t.read_len(CTX)? as i64)),
        module_op::UINT => Some(ModuleItem::Uint(t.read_len(CTX)?)),
        module_op::FLOAT => Some(ModuleItem::Float(t.read_f32_le(CTX)?)),
        module_op::DOUBLE => Some(ModuleItem::Double(t.read_f64_le(CTX)?)),
        module_op::STRING => Some(ModuleItem::String(owned(t.read_string(CTX)?))),
        op => {
            return Err(RdbError::invalid(
                at,
                CTX,
                format!("unknown module opcode {op}"),
            ));
        }
    };
    *r = t;
    Ok(item)
}

pub(super) fn item_size(item: &ModuleItem) -> usize {
    match item {
        ModuleItem::String(s) => s.len(),
        _ => 8,
    }
}

/// Decodes the live entries of one stream node: its 16-byte key (the master ID) and its
/// listpack (a master entry with the shared field names, then entries with ID deltas).
pub fn decode_stream_node(node_key: &[u8], listpack: &[u8]) -> Result<Vec<StreamEntry>> {
    const CTX: &str = "stream node";
    let key: &[u8; 16] = node_key.try_into().map_err(|_| {
        RdbError::invalid(
            0,
            CTX,
            format!("node key has {} bytes, not 16", node_key.len()),
        )
    })?;
    let master = StreamId::from_be_bytes(key);
    let mut it = ListpackIter::new(listpack)?;
    let mut next = |what: &'static str| -> Result<Entry<'_>> {
        match it.next() {
            Some(e) => e,
            None => Err(RdbError::invalid(
                0,
                CTX,
                format!("listpack ends before the {what}"),
            )),
        }
    };
    fn int(e: Entry<'_>, what: &'static str) -> Result<i64> {
        e.as_int()
            .ok_or_else(|| RdbError::invalid(0, CTX, format!("the {what} is not an integer")))
    }
    let count = int(next("entry count")?, "entry count")?;
    let deleted = int(next("deleted count")?, "deleted count")?;
    let nfields = int(next("master field count")?, "master field count")?;
    if nfields < 0 || count < 0 || deleted < 0 {
        return Err(RdbError::invalid(
            0,
            CTX,
            "negative count in the master entry",
        ));
    }
    let mut master_fields = Vec::new();
    for _ in 0..nfields {
        master_fields.push(next("master field")?.to_bytes().into_owned());
    }
    int(next("master terminator")?, "master terminator")?;
    let mut entries = Vec::with_capacity(count.min(4096) as usize);
    let total = count.saturating_add(deleted);
    for _ in 0..total {
        let flags = int(next("entry flags")?, "entry flags")?;
        let ms = int(next("entry ms delta")?, "entry ms delta")?;
        let seq = int(next("entry seq delta")?, "entry seq delta")?;
        let id = StreamId {
            ms: master.ms.wrapping_add(ms as u64),
            seq: master.seq.wrapping_add(seq as u64),
        };
        let mut fields = Vec::new();
        if flags & 2 != 0 {
            for f in &master_fields {
                fields.push((f.clone(), next("entry value")?.to_bytes().into_owned()));
            }
        } else {
            let n = int(next("entry field count")?, "entry field count")?;
            for _ in 0..n.max(0) {
                let f = next("entry field")?.to_bytes().into_owned();
                let v = next("entry value")?.to_bytes().into_owned();
                fields.push((f, v));
            }
        }
        int(next("entry lp-count")?, "entry lp-count")?;
        if flags & 1 == 0 {
            entries.push(StreamEntry { id, fields });
        }
    }
    if let Some(extra) = it.next() {
        extra?;
        return Err(RdbError::invalid(
            0,
            CTX,
            "entries after the counted ones in the node",
        ));
    }
    Ok(entries)
}
