//! Appended rows whose insert stored no terms entry (an index written before 0.6.0 keeps only
//! their key, TID and text hash) are read back from the table and analysed where they lie.

use std::collections::HashMap;

use pgrx::pg_sys;
use semantic_index::records::{text_hash, RecordKey};
use semantic_index::tid_to_id;

use super::analyze::lexemes;
use crate::am::vectors::datum_text;

/// Terms entries by row id and text hash, waiting for their records.
pub type Entries = HashMap<(u64, u64), Vec<(String, u32)>>;

/// The lexemes of the appended row `key`: its entry in `entries` (taken out), else its text
/// read back from `heap` (the column `index` indexes) and analysed under `config`; None when
/// the row's slot no longer holds its text.
pub unsafe fn appended_lexemes(
    entries: &mut Entries,
    key: &RecordKey,
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    config: pg_sys::Oid,
) -> Option<Vec<(String, u32)>> {
    let id = tid_to_id(key.block, key.offset) as u64;
    if let Some(lexemes) = entries.remove(&(id, key.text_hash)) {
        return Some(lexemes);
    }
    // SAFETY: the caller's open bm25 index and its heap.
    unsafe { row_text(heap, super::build::indexed_column(index), key) }
        .map(|text| lexemes(config, &text))
}

/// The indexed text of the row at `key` in `heap` (column `attnum`), whatever its visibility
/// (the executor checks that), or None when the slot no longer holds that text.
unsafe fn row_text(heap: pg_sys::Relation, attnum: i16, key: &RecordKey) -> Option<String> {
    // SAFETY: a heap relation the caller holds open; the tuple is read while its buffer is
    // pinned, and the buffer released on every path.
    unsafe {
        let blocks =
            pg_sys::RelationGetNumberOfBlocksInFork(heap, pg_sys::ForkNumber::MAIN_FORKNUM);
        if key.block >= blocks {
            return None;
        }
        let mut tuple = pg_sys::HeapTupleData::default();
        tuple.t_self.ip_blkid.bi_hi = (key.block >> 16) as u16;
        tuple.t_self.ip_blkid.bi_lo = (key.block & 0xffff) as u16;
        tuple.t_self.ip_posid = key.offset;
        let mut buffer: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        let found = pg_sys::heap_fetch(
            heap,
            &raw mut pg_sys::SnapshotAnyData,
            &mut tuple,
            &mut buffer,
            false,
        );
        if !found {
            return None;
        }
        let mut isnull = false;
        let datum = pg_sys::heap_getattr(&mut tuple, attnum as i32, (*heap).rd_att, &mut isnull);
        let text = (!isnull).then(|| datum_text(datum));
        pg_sys::ReleaseBuffer(buffer);
        text.filter(|t| text_hash(t) == key.text_hash)
    }
}
