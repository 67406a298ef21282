//! INSERT and UPDATE: the new row is analysed here, outside any lock; its lexemes go to the
//! terms chain and its key to the records chain, both under one hold of the metapage lock.
//! Scans score it exactly from its entry until a fold takes it into the snapshot.

use pgrx::pg_sys;
use pgrx::prelude::*;
use semantic_index::records::{text_hash, RecordKey};
use semantic_index::tid_to_id;
use semantic_lexical::tail::encode_entry;

use super::analyze::lexemes;
use super::storage::{append_record, append_terms, read_meta};
use crate::am::append_row;
use crate::am::build::tid_parts;
use crate::am::vectors::datum_text;

#[pg_guard]
#[allow(clippy::too_many_arguments)] // the signature PostgreSQL calls
pub unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _check_unique: pg_sys::IndexUniqueCheck::Type,
    _unchanged: bool,
    _index_info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: one value of the one column, and its row's TID.
    unsafe {
        if *isnull {
            return false;
        }
        let (block, offset) = tid_parts(heap_tid);
        let text = datum_text(*values);
        let key = RecordKey {
            block,
            offset,
            text_hash: text_hash(&text),
        };
        let config = pg_sys::Oid::from(super::settings(&read_meta(index)).config_oid);
        let mut entry = Vec::new();
        encode_entry(
            tid_to_id(block, offset) as u64,
            key.text_hash,
            &lexemes(config, &text),
            &mut entry,
        );
        append_row(index, super::vacuum::fold_threshold, |rel, guard| {
            append_terms(rel, guard, &entry);
            append_record(rel, guard, &key, &[]);
        });
    }
    false
}
