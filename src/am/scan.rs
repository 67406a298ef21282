//! Ordered scans: `ORDER BY col <=> query LIMIT k`. The first search asks FAISS for a first
//! batch of candidates; when the executor keeps asking (WHERE filters, dead or invisible
//! rows), the search is repeated deeper, skipping rows already returned, until the index is
//! exhausted. Distances are exact for Flat and as FAISS computes them otherwise.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::{best_per_id, id_to_tid, SearchParams};

use super::build::relation_name;
use super::cache::with_index;
use super::storage::read_meta;
use super::vectors::query_vector;
use crate::errors::raise;
use crate::gucs;

struct ScanState {
    query: Option<Vec<f32>>,
    pending: VecDeque<(i64, f64)>,
    returned: HashSet<i64>,
    /// Candidates asked of FAISS by the next search.
    k: usize,
    exhausted: bool,
}

thread_local! {
    /// Distances of the rows the latest scans returned, by heap TID: semantic_search() reports
    /// them as scores without computing embeddings of the rows again.
    static LAST_DISTANCES: RefCell<HashMap<(u32, u16), f64>> = RefCell::new(HashMap::new());
}

/// The distance at which the latest index scan returned row `tid`.
pub fn last_distance(block: u32, offset: u16) -> Option<f64> {
    LAST_DISTANCES.with(|d| d.borrow().get(&(block, offset)).copied())
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
    state.exhausted = true;
    LAST_DISTANCES.with(|d| d.borrow_mut().clear());
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
    let (hits, metric, total) = with_index(index, |faiss, meta| match faiss {
        Some(faiss) => {
            let hits = faiss.search(query, k, &params).unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("faiss search failed: {e}"),
                    None,
                )
            });
            (hits, meta.metric, faiss.len())
        }
        None => (Vec::new(), meta.metric, 0),
    });
    // Chunks share their row's TID: keep each row's best chunk.
    for (id, score) in best_per_id(hits.iter().copied(), metric.faiss_metric(), hits.len()) {
        if !state.returned.contains(&id) {
            state.pending.push_back((id, metric.distance(score)));
        }
    }
    state.exhausted = hits.len() < k || k >= total;
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
        while let Some((id, distance)) = state.pending.pop_front() {
            if !state.returned.insert(id) {
                continue;
            }
            let (block, offset) = id_to_tid(id);
            let tid = &mut (*scan).xs_heaptid;
            tid.ip_blkid.bi_hi = (block >> 16) as u16;
            tid.ip_blkid.bi_lo = (block & 0xffff) as u16;
            tid.ip_posid = offset;
            (*scan).xs_recheck = false;
            (*scan).xs_recheckorderby = false;
            *(*scan).xs_orderbyvals = distance.into_datum().expect("a float8 datum");
            *(*scan).xs_orderbynulls = false;
            LAST_DISTANCES.with(|d| d.borrow_mut().insert((block, offset), distance));
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
}
