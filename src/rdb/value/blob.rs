//! Compact blobs: a whole ziplist, listpack, intset or zipmap value, decoded at once. The
//! servers' `*-max-listpack-*` limits keep these small, so no chunking is needed inside one.

use super::{ValueDecoder, blob_error};
use crate::rdb::encodings::{Entry, Intset, ListpackIter, ZiplistIter, ZipmapIter};
use crate::rdb::error::{RdbError, Result};
use crate::rdb::event::{Event, HashField};
use crate::rdb::types::RdbType;

fn entry_score(e: &Entry<'_>, at: u64) -> Result<f64> {
    match e {
        Entry::Int(i) => Ok(*i as f64),
        Entry::Bytes(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| {
                RdbError::invalid(
                    at,
                    "zset score",
                    format!("{:?} is not a number", String::from_utf8_lossy(b)),
                )
            }),
    }
}

impl ValueDecoder {
    pub(super) fn push_listpack_list(
        &mut self,
        blob: &[u8],
        at: u64,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let it = ListpackIter::new(blob).map_err(|e| blob_error(at, "list listpack", e))?;
        for e in it {
            let e = e.map_err(|e| blob_error(at, "list listpack", e))?;
            self.push_list(e.to_bytes().into_owned(), out);
        }
        Ok(())
    }

    /// Decodes a whole compact blob value.
    pub(super) fn blob(&mut self, blob: &[u8], at: u64, out: &mut Vec<Event>) -> Result<()> {
        use RdbType as T;
        let ctx: &'static str = match self.ty {
            T::HashZipmap => "zipmap",
            T::ListZiplist | T::ZsetZiplist | T::HashZiplist => "ziplist",
            T::SetIntset => "intset",
            _ => "listpack",
        };
        let wrap = |e: RdbError| blob_error(at, ctx, e);
        let entries: Vec<Entry<'_>> = match self.ty {
            T::HashZipmap => {
                for pair in ZipmapIter::new(blob).map_err(wrap)? {
                    let (f, v) = pair.map_err(wrap)?;
                    self.push_hash(
                        HashField {
                            field: f.to_vec(),
                            value: v.to_vec(),
                            expire_ms: None,
                        },
                        out,
                    );
                }
                return Ok(());
            }
            T::SetIntset => {
                for v in Intset::parse(blob).map_err(wrap)?.iter() {
                    self.push_set(v.to_string().into_bytes(), out);
                }
                return Ok(());
            }
            T::ListZiplist | T::ZsetZiplist | T::HashZiplist => ZiplistIter::new(blob)
                .map_err(wrap)?
                .collect::<Result<_>>()
                .map_err(wrap)?,
            _ => ListpackIter::new(blob)
                .map_err(wrap)?
                .collect::<Result<_>>()
                .map_err(wrap)?,
        };
        let tuple = match self.ty {
            T::ListZiplist | T::SetListpack => 1,
            T::ZsetZiplist | T::ZsetListpack | T::HashZiplist | T::HashListpack => 2,
            _ => 3,
        };
        if entries.len() % tuple != 0 {
            return Err(RdbError::invalid(
                at,
                ctx,
                format!("{} entries do not form groups of {tuple}", entries.len()),
            ));
        }
        for group in entries.chunks_exact(tuple) {
            match self.ty {
                T::ListZiplist => self.push_list(group[0].to_bytes().into_owned(), out),
                T::SetListpack => self.push_set(group[0].to_bytes().into_owned(), out),
                T::ZsetZiplist | T::ZsetListpack => {
                    let score = entry_score(&group[1], at)?;
                    self.push_zset(group[0].to_bytes().into_owned(), score, out);
                }
                T::HashZiplist | T::HashListpack => self.push_hash(
                    HashField {
                        field: group[0].to_bytes().into_owned(),
                        value: group[1].to_bytes().into_owned(),
                        expire_ms: None,
                    },
                    out,
                ),
                _ => {
                    let ttl = group[2].as_int().ok_or_else(|| {
                        RdbError::invalid(at, ctx, "hash field TTL is not an integer")
                    })?;
                    self.push_hash(
                        HashField {
                            field: group[0].to_bytes().into_owned(),
                            value: group[1].to_bytes().into_owned(),
                            expire_ms: (ttl != 0).then_some(ttl),
                        },
                        out,
                    );
                }
            }
        }
        Ok(())
    }
}
