//! Fixed-size records for the index pages: one heap TID plus its vector.
//!
//! ```text
//! offset  size     field
//!      0  4        block number (u32 LE)
//!      4  2        line pointer offset (u16 LE)
//!      6  2        flags (u16 LE), reserved: written as 0, ignored on read
//!      8  4 * dim  vector, f32 LE
//! ```
//!
//! Records have no alignment requirement: vectors are decoded with
//! `f32::from_le_bytes`, never by casting the page bytes.

/// Size in bytes of one record for vectors of `dim` floats.
pub const fn record_size(dim: usize) -> usize {
    8 + 4 * dim
}

/// Appends one record to `out`.
pub fn encode_record(block: u32, offset: u16, vector: &[f32], out: &mut Vec<u8>) {
    out.reserve(record_size(vector.len()));
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Decodes consecutive records of vectors of `dim` floats:
/// `(block, offset, vector)`. `bytes` should hold whole records; a trailing
/// partial record (fewer than [`record_size`] bytes) is ignored.
pub fn decode_records(bytes: &[u8], dim: usize) -> impl Iterator<Item = (u32, u16, Vec<f32>)> + '_ {
    bytes.chunks_exact(record_size(dim)).map(move |r| {
        let block = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        let offset = u16::from_le_bytes([r[4], r[5]]);
        let vector = r[8..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (block, offset, vector)
    })
}

/// Like [`decode_records`] but without a vector allocation per record: each
/// record's TID is pushed to `tids` and its floats to `vectors` (row-major,
/// ready for [`crate::VectorIndex::add`] after mapping TIDs with
/// [`crate::tid_to_id`]). Returns the number of records decoded.
pub fn decode_records_into(
    bytes: &[u8],
    dim: usize,
    tids: &mut Vec<(u32, u16)>,
    vectors: &mut Vec<f32>,
) -> usize {
    let mut n = 0;
    for r in bytes.chunks_exact(record_size(dim)) {
        tids.push((
            u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
            u16::from_le_bytes([r[4], r[5]]),
        ));
        vectors.extend(
            r[8..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        n += 1;
    }
    n
}
