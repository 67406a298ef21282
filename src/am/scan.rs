//! Ordered scans: `ORDER BY col <=> query LIMIT k`. The first search asks FAISS for a first
//! batch of candidates; when the executor keeps asking (WHERE filters, dead or invisible
//! rows), the search is repeated deeper, skipping rows already returned, until the index is
//! exhausted.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::ColumnKind;
use semantic_index::{best_per_id, id_to_tid, SearchParams};

use super::build::relation_name;
use super::cache::with_index;
use super::storage::read_meta;
use super::vectors::{datum_text, query_vector};
use crate::errors::raise;
use crate::gucs;

struct Candidate {
    id: i64,
    distance: f64,
    /// Text indexes: the row's text hash.
    text_hash: Option<u64>,
}

struct ScanState {
    query: Option<Vec<f32>>,
    /// Text indexes: the query text, for [`returned_row_distance`].
    query_text: Option<String>,
    pending: VecDeque<Candidate>,
    returned: HashSet<i64>,
    /// Candidates asked of FAISS by the next search.
    k: usize,
    exhausted: bool,
}

/// The row a text index scan returned last: PostgreSQL evaluates the ORDER BY expression
/// `col <=> query` again on every returned row, and the operator answers from here instead of
/// embedding the row's text.
struct ReturnedRow {
    query: String,
    text_hash: u64,
    distance: f64,
}

thread_local! {
    static RETURNED: RefCell<Option<ReturnedRow>> = const { RefCell::new(None) };
}

/// The index distance of the row a scan just returned, when `text_hash`/`query` are that row's
/// text and the scan's query.
pub fn returned_row_distance(text_hash: u64, query: &str) -> Option<f64> {
    RETURNED.with(|r| {
        r.borrow()
            .as_ref()
            .filter(|r| r.text_hash == text_hash && r.query == query)
            .map(|r| r.distance)
    })
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
    // The executor reads the distances of returned rows from here; the AM allocates them.
    let n = norderbys.max(1) as usize;
    (*scan).xs_orderbyvals =
        pg_sys::palloc0(n * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum;
    (*scan).xs_orderbynulls = pg_sys::palloc(n * std::mem::size_of::<bool>()) as *mut bool;
    std::ptr::write_bytes((*scan).xs_orderbynulls, 1, n);
    let state = Box::new(ScanState {
        query: None,
        query_text: None,
        pending: VecDeque::new(),
        returned: HashSet::new(),
        k: 0,
        exhausted: true,
    });
    (*scan).opaque = Box::into_raw(state) as *mut std::ffi::c_void;
    scan
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    let state = &mut *((*scan).opaque as *mut ScanState);
    if !orderbys.is_null() && norderbys > 0 {
        std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
    }
    state.pending.clear();
    state.returned.clear();
    state.query = None;
    state.query_text = None;
    state.exhausted = true;
    if (*scan).numberOfOrderBys < 1 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "faiss indexes only answer ORDER BY column <=> query",
            None,
        );
    }
    let key = &*(*scan).orderByData;
    if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
        return; // ORDER BY col <=> NULL: nothing is near NULL
    }
    let index = (*scan).indexRelation;
    let meta = read_meta(index);
    if meta.kind == ColumnKind::Text {
        state.query_text = Some(datum_text(key.sk_argument));
    }
    state.query = Some(query_vector(&meta, &relation_name(index), key.sk_argument));
    state.k = gucs::scan_candidates();
    state.exhausted = false;
}

unsafe fn search_more(index: pg_sys::Relation, state: &mut ScanState) {
    let query = state.query.as_ref().expect("searching needs a query");
    let params = SearchParams {
        ef_search: gucs::hnsw_ef_search().max(state.k),
        nprobe: gucs::ivf_nprobe(),
    };
    let k = state.k;
    let returned = &state.returned;
    let (found, total, candidates) = with_index(index, |cached, meta| {
        let Some(faiss) = cached.faiss.as_ref() else {
            return (0, 0, Vec::new());
        };
        let hits = faiss.search(query, k, &params).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("faiss search failed: {e}"),
                None,
            )
        });
        // Chunks share their row's TID: keep each row's best chunk.
        let metric = meta.metric;
        let candidates: Vec<Candidate> =
            best_per_id(hits.iter().copied(), metric.faiss_metric(), hits.len())
                .into_iter()
                .filter(|(id, _)| !returned.contains(id))
                .map(|(id, score)| Candidate {
                    id,
                    distance: metric.distance(score),
                    text_hash: cached.text_hashes.get(&id).copied(),
                })
                .collect();
        (hits.len(), faiss.len(), candidates)
    });
    state.pending.extend(candidates);
    state.exhausted = found < k || k >= total;
    state.k = k.saturating_mul(4);
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    _direction: pg_sys::ScanDirection::Type,
) -> bool {
    let state = &mut *((*scan).opaque as *mut ScanState);
    if state.query.is_none() {
        return false;
    }
    loop {
        while let Some(candidate) = state.pending.pop_front() {
            if !state.returned.insert(candidate.id) {
                continue;
            }
            let (block, offset) = id_to_tid(candidate.id);
            let tid = &mut (*scan).xs_heaptid;
            tid.ip_blkid.bi_hi = (block >> 16) as u16;
            tid.ip_blkid.bi_lo = (block & 0xffff) as u16;
            tid.ip_posid = offset;
            (*scan).xs_recheck = false;
            (*scan).xs_recheckorderby = false;
            *(*scan).xs_orderbyvals = candidate.distance.into_datum().expect("a float8 datum");
            *(*scan).xs_orderbynulls = false;
            let returned = match (&state.query_text, candidate.text_hash) {
                (Some(query), Some(text_hash)) => Some(ReturnedRow {
                    query: query.clone(),
                    text_hash,
                    distance: candidate.distance,
                }),
                _ => None,
            };
            RETURNED.with(|r| *r.borrow_mut() = returned);
            return true;
        }
        if state.exhausted {
            return false;
        }
        pg_sys::check_for_interrupts!();
        search_more((*scan).indexRelation, state);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    let opaque = (*scan).opaque as *mut ScanState;
    if !opaque.is_null() {
        drop(Box::from_raw(opaque));
        (*scan).opaque = std::ptr::null_mut();
    }
    RETURNED.with(|r| *r.borrow_mut() = None);
}
