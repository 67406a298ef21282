//! INSERT and UPDATE: embed the new value outside any lock, then append its record(s) to the
//! records chain under the metapage lock. Other backends add it to their FAISS cache on their
//! next search; the executor's visibility check hides it until the inserting transaction
//! commits (and forever if it rolls back).

use pgrx::pg_sys;
use pgrx::prelude::*;
use semantic_index::chain::MetaLock;
use semantic_index::layout::{ColumnKind, Meta};
use semantic_index::records::{text_hash, RecordKey};

use super::build::{relation_name, tid_parts};
use super::storage::{append_record, check_dimension, lock_meta, read_meta, Index};
use super::vectors::{column_vector, datum_text, embed_passages, prepare};

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
    // SAFETY: PostgreSQL's index AM interface calls this with the open index and heap, the row's values and its TID.
    unsafe {
        if *isnull {
            return false;
        }
        let meta = read_meta(index);
        let (block, offset) = tid_parts(heap_tid);
        let (vectors, key) = match meta.kind {
            ColumnKind::Text => {
                let text = datum_text(*values);
                let key = RecordKey {
                    block,
                    offset,
                    text_hash: text_hash(&text),
                };
                let vectors = embed_passages(&meta, &relation_name(index), &[text], |_| {})
                    .pop()
                    .unwrap_or_default();
                (vectors, key)
            }
            ColumnKind::Vector => {
                let v = column_vector(index, *values);
                // The index's own dimension was checked when it was fixed (at the build or
                // the first insert): no FAISS index made per insert to ask again.
                if v.len() != meta.dim as usize {
                    check_dimension(&meta, v.len());
                }
                (
                    vec![v],
                    RecordKey {
                        block,
                        offset,
                        text_hash: 0,
                    },
                )
            }
        };
        append_row(index, super::vacuum::fold_threshold, |rel, guard| {
            if guard.meta.kind == ColumnKind::Vector && guard.meta.dim == 0 {
                // The first vector of a real[] index built on an empty table fixes its dimension.
                guard.meta.dim = vectors[0].len() as u32;
            }
            let vectors: Vec<Vec<f32>> = vectors
                .into_iter()
                .map(|v| prepare(&guard.meta, v))
                .collect();
            for v in &vectors {
                append_record(rel, guard, &key, v);
            }
        });
        false
    }
}

/// Appends one row to a faiss or bm25 index under the metapage lock: `append` writes its
/// entries with the metapage the lock holds, and the row is counted with the last of them;
/// past `fold_threshold` appended rows, a fold worker is asked for (see fold_worker.rs).
///
/// # Safety
/// `index` is an open index of the kind whose threshold and entries these are.
pub unsafe fn append_row(
    index: pg_sys::Relation,
    fold_threshold: fn(&Meta) -> u64,
    append: impl FnOnce(&Index, &mut MetaLock<'_, Index>),
) {
    let rel = Index(index);
    let mut guard = lock_meta(&rel);
    guard.meta.rows += 1; // written with the entries
    append(&rel, &mut guard);
    let due = guard.meta.appended() > fold_threshold(&guard.meta);
    let generation = guard.meta.generation;
    drop(guard);
    if due {
        // SAFETY: the caller's open index.
        unsafe { super::fold_worker::request(index, generation) };
    }
}
