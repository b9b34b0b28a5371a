//! Streams written with plain commands (a stream type the target cannot `RESTORE`, or one
//! too big to have been kept raw): entries in order, then groups, consumers and pending
//! entries, with placeholder entries for pending entries whose message was deleted (see
//! [`StreamPlain`]).

use super::*;

/// Name of the consumer group that makes `XGROUP CREATE … MKSTREAM` create the (possibly empty)
/// stream before its entries are added; destroyed once they are.
pub(super) const TMP_GROUP: &[u8] = b"cutover:tmp-group";
/// Field and value of the placeholder entries (see [`StreamPlain`]).
const PLACEHOLDER: &[u8] = b"cutover:placeholder";

/// A stream written with plain commands:
///
/// ```text
/// DEL key
/// XGROUP CREATE key <tmp> 0 MKSTREAM        the stream exists even if it has no entry
/// XADD key <id> field value …               every live entry, in order (+ placeholders)
/// XGROUP DESTROY key <tmp>
/// per group:     XGROUP CREATE key g <last-delivered-id> [ENTRIESREAD n]
/// per consumer:  XGROUP CREATECONSUMER key g c
/// per pending:   XCLAIM key g c 0 <id> TIME <ms> RETRYCOUNT <n> FORCE JUSTID
/// XDEL key <placeholders>
/// XSETID key <last-id> [ENTRIESADDED n MAXDELETEDID id]   (7.0+ targets)
/// ```
///
/// `XCLAIM … FORCE` only creates a pending entry whose message is in the stream, but a pending
/// entry may name a message deleted since it was delivered. When the whole stream was held back
/// (see [`HOLD_BYTES`]), such ids are known before the entries are written: a placeholder entry
/// is added at the id, claimed, then deleted again. A stream bigger than that is written as it
/// arrives, and pending entries of deleted messages are lost (the server ignores them).
#[derive(Debug, Default)]
pub(super) struct StreamPlain {
    /// Ids to add as placeholder entries, in order; those not yet added.
    pub(super) placeholders: BTreeSet<StreamId>,
    /// Placeholders added (deleted at the end).
    pub(super) added: Vec<StreamId>,
    pub(super) meta: Option<StreamMeta>,
    /// The current group's name.
    pub(super) group: Vec<u8>,
    /// The current group's pending entries, by id.
    pub(super) pel: HashMap<StreamId, PendingEntry>,
    /// The current consumer's name.
    pub(super) consumer: Vec<u8>,
}

impl Converter {
    pub(super) fn stream_event<W: Sink>(
        &self,
        key: &[u8],
        st: &mut StreamPlain,
        ev: Event,
        w: &mut W,
    ) -> Result<(), TargetError> {
        match ev {
            Event::StreamEntries(entries) => {
                for entry in entries {
                    add_placeholders(key, st, Some(entry.id), w)?;
                    let id = entry.id.to_string();
                    let mut args: Vec<&[u8]> = vec![b"XADD", key, id.as_bytes()];
                    for (f, v) in &entry.fields {
                        args.push(f);
                        args.push(v);
                    }
                    w.send(&args, Tag::key("XADD", key))?;
                }
            }
            Event::StreamMeta(meta) => {
                add_placeholders(key, st, None, w)?;
                w.send(
                    &[&b"XGROUP"[..], b"DESTROY", key, TMP_GROUP],
                    Tag::key("XGROUP DESTROY", key),
                )?;
                st.meta = Some(meta);
            }
            Event::StreamGroup(group) => {
                let id = group.last_id.to_string();
                let read = group
                    .entries_read
                    .filter(|n| self.stream_v2_args && *n != u64::MAX)
                    .map(|n| n.to_string());
                let mut args: Vec<&[u8]> = vec![b"XGROUP", b"CREATE", key, &group.name];
                args.push(id.as_bytes());
                if let Some(n) = &read {
                    args.push(b"ENTRIESREAD");
                    args.push(n.as_bytes());
                }
                w.send(&args, Tag::key("XGROUP CREATE", key))?;
                st.group = group.name;
                st.pel.clear();
            }
            Event::StreamGroupPel(pel) => {
                st.pel.extend(pel.into_iter().map(|p| (p.id, p)));
            }
            Event::StreamConsumer(consumer) => {
                if self.create_consumer {
                    w.send(
                        &[
                            &b"XGROUP"[..],
                            b"CREATECONSUMER",
                            key,
                            &st.group,
                            &consumer.name,
                        ],
                        Tag::key("XGROUP CREATECONSUMER", key),
                    )?;
                }
                st.consumer = consumer.name;
            }
            Event::StreamConsumerPel(ids) => {
                for id in ids {
                    // A consumer's pending id is always in its group's PEL; if not (a corrupt
                    // file), it is claimed as delivered once, now.
                    let (time, count) = st
                        .pel
                        .get(&id)
                        .map_or((self.now_ms, 1), |p| (p.delivery_time_ms, p.delivery_count));
                    let (id, time, count) = (id.to_string(), time.to_string(), count.to_string());
                    w.send(
                        &[
                            &b"XCLAIM"[..],
                            key,
                            &st.group,
                            &st.consumer,
                            b"0",
                            id.as_bytes(),
                            b"TIME",
                            time.as_bytes(),
                            b"RETRYCOUNT",
                            count.as_bytes(),
                            b"FORCE",
                            b"JUSTID",
                        ],
                        Tag::key("XCLAIM", key),
                    )?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of a plain stream: placeholders deleted, the last id (and on 7.0+ targets the
    /// counters) set.
    pub(super) fn finish_stream<W: Sink>(
        &self,
        key: &[u8],
        st: &mut StreamPlain,
        w: &mut W,
    ) -> Result<(), TargetError> {
        for part in st.added.chunks(PLAIN_BATCH) {
            let ids: Vec<String> = part.iter().map(ToString::to_string).collect();
            let mut args: Vec<&[u8]> = vec![b"XDEL", key];
            args.extend(ids.iter().map(String::as_bytes));
            w.send(&args, Tag::key("XDEL", key))?;
        }
        let Some(meta) = &st.meta else {
            return Ok(());
        };
        let last = meta.last_id.to_string();
        let mut extra = Vec::new();
        if self.stream_v2_args
            && let (Some(added), Some(max_deleted)) = (meta.entries_added, meta.max_deleted_id)
        {
            extra = vec![
                "ENTRIESADDED".to_string(),
                added.to_string(),
                "MAXDELETEDID".to_string(),
                max_deleted.to_string(),
            ];
        }
        let mut args: Vec<&[u8]> = vec![b"XSETID", key, last.as_bytes()];
        args.extend(extra.iter().map(String::as_bytes));
        w.send(&args, Tag::key("XSETID", key))
    }
}

/// Adds the placeholders below `before` (all of them if `None`).
fn add_placeholders<W: Sink>(
    key: &[u8],
    st: &mut StreamPlain,
    before: Option<StreamId>,
    w: &mut W,
) -> Result<(), TargetError> {
    while let Some(&id) = st.placeholders.first() {
        if before.is_some_and(|b| id >= b) {
            break;
        }
        st.placeholders.pop_first();
        let text = id.to_string();
        w.send(
            &[&b"XADD"[..], key, text.as_bytes(), PLACEHOLDER, PLACEHOLDER],
            Tag::key("XADD", key),
        )?;
        st.added.push(id);
    }
    Ok(())
}

/// Ids of a held-back stream's pending entries whose message is not in the stream any more.
pub(super) fn orphan_pending_ids(held: &[Event]) -> BTreeSet<StreamId> {
    let mut pending = BTreeSet::new();
    for ev in held {
        if let Event::StreamGroupPel(pel) = ev {
            pending.extend(pel.iter().map(|p| p.id));
        }
    }
    for ev in held {
        if let Event::StreamEntries(entries) = ev {
            for e in entries {
                pending.remove(&e.id);
            }
        }
    }
    pending
}
