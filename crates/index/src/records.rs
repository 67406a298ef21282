//! Fixed-size records for the index pages: one heap TID, a hash of the row's indexed text, and
//! one vector.
//!
//! ```text
//! offset  size     field
//!      0  4        block number (u32 LE)
//!      4  2        line pointer offset (u16 LE)
//!      6  2        flags (u16 LE): DEAD (1) once VACUUM found the row dead; other bits 0
//!      8  8        text hash (u64 LE): xxh3 of the row's indexed text, 0 for real[] rows
//!     16  4 * dim  vector, f32 LE
//! ```
//!
//! The text hash lets a scan recognise the row it just returned when the `<=>` operator is
//! evaluated on it (PostgreSQL computes ORDER BY expressions for every returned row), so the
//! operator answers with the index's distance instead of embedding the row again.
//!
//! A dead record stays where it is until the next rewrite of the chain: VACUUM sets its flag in
//! place (one small WAL record per page), and every decoder here skips it, so that a scan never
//! returns a TID that the table may already have given to a new row.
//!
//! Records have no alignment requirement: vectors are decoded with `f32::from_le_bytes`, never
//! by casting the page bytes.

/// Where a record's vector comes from: the row's TID and its text hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordKey {
    pub block: u32,
    pub offset: u16,
    pub text_hash: u64,
}

const HEADER: usize = 16;
/// Where the flags are, and the flag of a dead record.
pub(crate) const FLAGS_AT: usize = 6;
const DEAD: u16 = 1;

fn is_dead(record: &[u8]) -> bool {
    u16::from_le_bytes([record[FLAGS_AT], record[FLAGS_AT + 1]]) & DEAD != 0
}

/// Live records of `bytes` (whole records of `dim` floats; a trailing partial one is ignored).
fn live(bytes: &[u8], dim: usize) -> impl Iterator<Item = &[u8]> + '_ {
    bytes.chunks_exact(record_size(dim)).filter(|r| !is_dead(r))
}

/// The slots of the live records of `bytes` whose key `dead` says is dead.
pub fn live_slots_where(
    bytes: &[u8],
    dim: usize,
    mut dead: impl FnMut(&RecordKey) -> bool,
) -> Vec<usize> {
    bytes
        .chunks_exact(record_size(dim))
        .enumerate()
        .filter(|(_, r)| !is_dead(r) && dead(&decode_key(r)))
        .map(|(slot, _)| slot)
        .collect()
}

/// Flags the record in `slot` of `bytes` dead.
pub fn flag_dead(bytes: &mut [u8], dim: usize, slot: usize) {
    let at = slot * record_size(dim) + FLAGS_AT;
    let flags = u16::from_le_bytes([bytes[at], bytes[at + 1]]) | DEAD;
    bytes[at..at + 2].copy_from_slice(&flags.to_le_bytes());
}

/// Flags dead the record whose flags start at `flags` (its first, low byte: where the DEAD bit
/// is; for records that span pages, which VACUUM flags a byte at a time).
pub(crate) fn set_dead_flag(flags: &mut u8) {
    *flags |= DEAD as u8;
}

/// Size in bytes of one record for vectors of `dim` floats.
pub const fn record_size(dim: usize) -> usize {
    HEADER + 4 * dim
}

/// The hash stored with text rows (stable across builds and platforms: it is on disk).
pub fn text_hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Appends one record to `out`.
pub fn encode_record(key: &RecordKey, vector: &[f32], out: &mut Vec<u8>) {
    out.reserve(record_size(vector.len()));
    out.extend_from_slice(&key.block.to_le_bytes());
    out.extend_from_slice(&key.offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&key.text_hash.to_le_bytes());
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn decode_key(r: &[u8]) -> RecordKey {
    RecordKey {
        block: u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
        offset: u16::from_le_bytes([r[4], r[5]]),
        text_hash: u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
    }
}

/// Decodes the live records of consecutive records of vectors of `dim` floats. `bytes` should
/// hold whole records; a trailing partial record is ignored.
pub fn decode_records(
    bytes: &[u8],
    dim: usize,
) -> impl Iterator<Item = (RecordKey, Vec<f32>)> + '_ {
    live(bytes, dim).map(|r| {
        let vector = r[HEADER..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (decode_key(r), vector)
    })
}

/// Like [`decode_records`] without an allocation per record: keys are pushed to `keys` and the
/// floats to `vectors` (row-major, ready for [`crate::VectorIndex::add`]). Returns the number
/// of (live) records decoded.
pub fn decode_records_into(
    bytes: &[u8],
    dim: usize,
    keys: &mut Vec<RecordKey>,
    vectors: &mut Vec<f32>,
) -> usize {
    let mut n = 0;
    for r in live(bytes, dim) {
        keys.push(decode_key(r));
        vectors.extend(
            r[HEADER..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        n += 1;
    }
    n
}
