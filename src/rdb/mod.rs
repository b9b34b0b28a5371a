//! A pure codec for the RDB format: the snapshot format Redis and Valkey write to disk, send to
//! replicas on a full sync, and use (one value at a time) in `DUMP`/`RESTORE`.
//!
//! Pure means bytes in, values or bytes out: no I/O, no async, no global state. Decoders never
//! panic on any input; they return an [`RdbError`] naming the byte offset and what was being read,
//! and they never allocate in proportion to a length read from the input before checking it
//! against the bytes actually there. The sync engine feeds this codec from a replication stream;
//! the converter uses both directions to move values between server versions.
//!
//! # The map of the format
//!
//! An RDB file, byte by byte (all of it documented in the modules named on the right):
//!
//! ```text
//! "REDIS0011" | "VALKEY080"                  9-byte header: magic + version      version
//! 0xFA <string key> <string value>           AUX field (redis-ver, ctime, ...)   primitives
//! 0xFE <len db>                              SELECTDB
//! 0xFB <len keys> <len expires>              RESIZEDB (a hint)
//! [0xFC <i64 LE ms> | 0xFD <i32 LE s>]       expiry of the next key              primitives
//! [0xF8 <len idle s>] [0xF9 <u8 freq>]       LRU idle time / LFU counter of the next key
//! <type: u8> <string key> <value>            one key; the value's layout depends on the type
//! ...                                        more keys, more databases
//! 0xFF                                       EOF
//! <crc64: u64 LE>                            CRC-64/REDIS of everything before (RDB >= 5) crc64
//! ```
//!
//! Everything is built from a few primitives ([`primitives`]):
//!
//! * **lengths**: 1, 2, 5 or 9 bytes; the top two bits of the first byte say which;
//! * **strings**: a length and raw bytes, or a small integer in 1/2/4 bytes, or LZF-compressed
//!   data ([`lzf`]);
//! * little-endian fixed-width integers, times and doubles, and the old text form of doubles.
//!
//! A value is either made of those directly (a plain list is a length and that many strings;
//! a ZSET_2 is a length and (string, f64) pairs) or is **one string holding a compact blob**, the
//! server's in-memory representation saved as-is: ziplist, listpack, intset or zipmap
//! ([`encodings`]). Which one depends on the type id, and type ids depend on the RDB version:
//! both servers agree up to RDB 11, then Redis and Valkey numbered new types differently
//! ([`version::Dialect`]).
//!
//! A DUMP payload ([`dump`]) is one value without key or header: `<type><value>`, then the
//! version as a u16 and a CRC-64 of it all.
//!
//! # Modules
//!
//! * [`error`]: [`RdbError`], with offset and context on every decoding error.
//! * [`primitives`]: [`Reader`] and [`Writer`] for lengths, strings, numbers and times.
//! * [`lzf`]: LZF decompression (bounded by the declared size) and compression.
//! * [`crc64`]: CRC-64/REDIS, one-shot and incremental.
//! * [`version`]: [`RdbVersion`], dialects, the file header.
//! * [`dump`]: split, verify, build and retarget DUMP payloads.
//! * [`encodings`]: ziplist, listpack, intset and zipmap decoders; listpack, ziplist and intset
//!   encoders.
//! * [`types`]: type ids and opcodes per dialect, module type names.
//! * [`event`]: what the parser reports ([`Event`]) and the records it carries.
//! * [`value`]: [`ValueDecoder`], the incremental decoder of one value (also for DUMP payloads:
//!   [`decode_dump`]), and [`Value`], a collected value.
//! * [`parser`]: [`RdbParser`], the push-style streaming parser of whole files.
//! * [`reencode`]: a value re-encoded for an older server (listpacks → ziplists/intsets,
//!   stream v2/v3 → v1), and which type ids a server of a given version loads.
//!
//! The reference for all of it is `shared/reference/rdb-and-replication.md` (sections 1–4),
//! collected from the Redis and Valkey sources.

pub mod crc64;
pub mod dump;
pub mod encodings;
pub mod error;
pub mod event;
pub mod lzf;
pub mod parser;
pub mod primitives;
pub mod reencode;
pub mod types;
pub mod value;
pub mod version;

pub use dump::{DumpPayload, build_dump};
pub use encodings::{Entry, Intset, ListpackBuilder, ZiplistBuilder};
pub use error::RdbError;
pub use event::{Event, KeyInfo};
pub use parser::{ParserOptions, RdbParser};
pub use primitives::{RdbString, Reader, Writer};
pub use types::{RdbType, ValueKind};
pub use value::{ChunkLimits, Value, ValueDecoder, decode_dump, decode_value};
pub use version::{Dialect, RdbVersion};
