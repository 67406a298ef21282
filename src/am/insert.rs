//! INSERT and UPDATE: embed the new value outside any lock, then append its record(s) to the
//! records chain under the metapage lock. Other backends add it to their FAISS cache on their
//! next search; the executor's visibility check hides it until the inserting transaction
//! commits (and forever if it rolls back).

use pgrx::pg_sys;
use pgrx::prelude::*;
use semantic_index::layout::ColumnKind;
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
                check_dimension(v.len());
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
        let rel = Index(index);
        let mut guard = lock_meta(&rel);
        if guard.meta.kind == ColumnKind::Vector && guard.meta.dim == 0 {
            // The first vector of a real[] index built on an empty table fixes its dimension.
            guard.meta.dim = vectors[0].len() as u32;
        }
        let vectors: Vec<Vec<f32>> = vectors
            .into_iter()
            .map(|v| prepare(&guard.meta, v))
            .collect();
        guard.meta.rows += 1; // written with the first record
        for v in &vectors {
            append_record(&rel, &mut guard, &key, v);
        }
        let due = guard.meta.appended() > super::vacuum::fold_threshold(&guard.meta);
        let generation = guard.meta.generation;
        drop(guard);
        if due {
            super::fold_worker::request(index, generation);
        }
        false
    }
}
