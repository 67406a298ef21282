//! INSERT and UPDATE: the new row's key goes to the records chain; scans read its text back
//! from the table and score it exactly until VACUUM folds it into the snapshot.

use pgrx::pg_sys;
use pgrx::prelude::*;
use semantic_index::records::{text_hash, RecordKey};

use super::storage::{append_record, lock_meta, Index};
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
        let key = RecordKey {
            block,
            offset,
            text_hash: text_hash(&datum_text(*values)),
        };
        let rel = Index(index);
        let mut guard = lock_meta(&rel);
        guard.meta.rows += 1; // written with the record
        append_record(&rel, &mut guard, &key, &[]);
        let due = guard.meta.appended() > super::vacuum::fold_threshold(&guard.meta);
        let generation = guard.meta.generation;
        drop(guard);
        if due {
            crate::am::fold_worker::request(index, generation);
        }
    }
    false
}
